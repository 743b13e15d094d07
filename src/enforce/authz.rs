//! Envoy's external authorization (`envoy.service.auth.v3.Authorization`)
//! over an [`Enforcer`], and the sidecar's gRPC server with
//! `grpc.health.v1` (NOT_SERVING while the feed is stale).
//!
//! What is read from a `CheckRequest`, as Envoy's ext_authz filter builds it
//! (`source/extensions/filters/common/ext_authz/check_request_utils.cc`):
//! - `attributes.request.http.headers["authorization"]` (header names in
//!   lower case), or the same header in `attributes.request.http.header_map`
//!   when the filter sets `encode_raw_headers`;
//! - `attributes.source.certificate`: the downstream peer's leaf
//!   certificate, PEM then URL-encoded, present when the filter sets
//!   `include_peer_certificate: true` and the connection is mTLS.
//!
//! What goes back: `OkHttpResponse` with `x-taskmint-spiffe-id`,
//! `x-taskmint-task`, `x-taskmint-holder` and `x-taskmint-owner` set
//! (overwriting any the client sent; removed when empty) and, with
//! `strip_bearer`, `authorization` removed; or `DeniedHttpResponse` with
//! 401, 403 or 503, `x-taskmint-deny-reason`, and for 401 an RFC 6750
//! `www-authenticate`. The `status` carries the matching gRPC code.

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse,
    HeaderAppendAction, HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;

use super::{Allowed, Denial, EnforceConfig, EnforceError, Enforcer, Freshness};

/// The service name Envoy's gRPC health check asks about.
pub const SERVICE: &str = "envoy.service.auth.v3.Authorization";

/// The ext_authz service.
#[derive(Debug, Clone)]
pub struct ExtAuthz {
    enforcer: Enforcer,
    strip_bearer: bool,
}

impl ExtAuthz {
    /// The service over `enforcer`.
    pub fn new(enforcer: Enforcer, strip_bearer: bool) -> Self {
        Self {
            enforcer,
            strip_bearer,
        }
    }

    /// The decision on `req`, as Envoy reads it.
    pub async fn decide(&self, req: &CheckRequest) -> CheckResponse {
        let out = self.judge(req).await;
        self.enforcer.count(&out);
        match out {
            Ok(a) => self.allow(a),
            Err(d) => deny(&d),
        }
    }

    async fn judge(&self, req: &CheckRequest) -> Result<Allowed, Denial> {
        // Nothing is decided while the feed is stale, a malformed request
        // included.
        self.enforcer.gate()?;
        let attrs = req.attributes.as_ref();
        let http = attrs
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let authorization = http.and_then(|h| {
            h.headers.get("authorization").cloned().or_else(|| {
                h.header_map.as_ref().and_then(|m| {
                    m.headers
                        .iter()
                        .find(|v| v.key.eq_ignore_ascii_case("authorization"))
                        .map(|v| {
                            if v.raw_value.is_empty() {
                                v.value.clone()
                            } else {
                                String::from_utf8_lossy(&v.raw_value).into_owned()
                            }
                        })
                })
            })
        });
        let peer = match attrs
            .and_then(|a| a.source.as_ref())
            .map(|s| s.certificate.as_str())
            .filter(|c| !c.is_empty())
        {
            Some(encoded) => Some(peer_certificate(encoded).map_err(Denial::Unauthenticated)?),
            None => None,
        };
        match (authorization, peer) {
            (Some(value), peer) => {
                let token = bearer(&value).ok_or_else(|| {
                    Denial::Unauthenticated("authorization is not a bearer token".into())
                })?;
                self.enforcer.bearer(token, peer.as_deref()).await
            }
            (None, Some(der)) => self.enforcer.certificate(&der),
            (None, None) => Err(Denial::Unauthenticated("no bearer token".into())),
        }
    }

    fn allow(&self, a: Allowed) -> CheckResponse {
        let mut headers = Vec::new();
        let mut remove = Vec::new();
        for (name, value) in [
            ("x-taskmint-spiffe-id", a.spiffe_id),
            ("x-taskmint-task", a.task_id),
            ("x-taskmint-holder", a.holder),
            ("x-taskmint-owner", a.owner),
        ] {
            if value.is_empty() {
                // A client must not be able to supply what we left out.
                remove.push(name.to_owned());
            } else {
                headers.push(overwrite(name, value));
            }
        }
        if self.strip_bearer {
            remove.push("authorization".into());
        }
        CheckResponse {
            status: Some(rpc::Status {
                code: tonic::Code::Ok as i32,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers,
                headers_to_remove: remove,
                ..Default::default()
            })),
            ..Default::default()
        }
    }
}

/// A `CheckRequest` for `GET path` as Envoy's ext_authz filter sends it:
/// `authorization: Bearer <token>` if given, and the peer certificate (PEM)
/// URL-encoded in `source.certificate`, as with `include_peer_certificate`.
/// For `enforce check`, the benchmark and tools that ask an enforcer
/// without Envoy.
pub fn envoy_request(path: &str, token: Option<&str>, peer_pem: Option<&str>) -> CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Peer, Request,
    };
    let mut headers = std::collections::HashMap::from([
        (":method".to_owned(), "GET".to_owned()),
        (":path".to_owned(), path.to_owned()),
    ]);
    if let Some(t) = token {
        headers.insert("authorization".into(), format!("Bearer {t}"));
    }
    let certificate = peer_pem
        .map(|p| {
            percent_encoding::utf8_percent_encode(p, percent_encoding::NON_ALPHANUMERIC).to_string()
        })
        .unwrap_or_default();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                certificate,
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: path.into(),
                    headers,
                    protocol: "HTTP/2".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// The token of an RFC 6750 `Bearer` credential (scheme case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

/// The DER of the URL-encoded PEM certificate Envoy passes.
fn peer_certificate(encoded: &str) -> Result<Vec<u8>, String> {
    let bad = || "the peer certificate the proxy passed does not parse".to_owned();
    if encoded.len() > 64 * 1024 {
        return Err(bad());
    }
    let pem = percent_encoding::percent_decode_str(encoded).collect::<Vec<u8>>();
    let certs = crate::pem::certs(&pem).map_err(|_| bad())?;
    certs.into_iter().next().map(|c| c.to_vec()).ok_or_else(bad)
}

fn overwrite(name: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.into(),
            value,
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn deny(d: &Denial) -> CheckResponse {
    let (http, code) = match d {
        Denial::Unauthenticated(_) => (401, tonic::Code::Unauthenticated),
        Denial::Forbidden(_) => (403, tonic::Code::PermissionDenied),
        Denial::Unavailable(_) => (503, tonic::Code::Unavailable),
    };
    let mut headers = vec![overwrite("x-taskmint-deny-reason", d.reason().to_owned())];
    if http == 401 {
        headers.push(overwrite(
            "www-authenticate",
            r#"Bearer error="invalid_token""#.to_owned(),
        ));
    }
    CheckResponse {
        status: Some(rpc::Status {
            code: code as i32,
            message: d.reason().to_owned(),
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http }),
            headers,
            body: format!("{}\n", d.reason()),
        })),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(&self, req: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(self.decide(req.get_ref()).await))
    }
}

/// Runs the sidecar: loads the state, follows the feed, and serves `Check`
/// and health on `listener` until `shutdown` resolves.
pub async fn serve(
    cfg: &EnforceConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), EnforceError> {
    let (enforcer, follower) = Enforcer::start(cfg)?;
    let _follower = super::follower::AbortOnDrop(follower);
    let _ops = match cfg.ops_listen {
        Some(addr) => {
            let l =
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| EnforceError::Listen {
                        addr: format!("{addr} (ops_listen)"),
                        reason: e.to_string(),
                    })?;
            tracing::info!(%addr, "operations listener: /metrics /healthz /readyz");
            Some(super::follower::AbortOnDrop(tokio::spawn(
                crate::ops::serve(
                    l,
                    super::ops::EnforcerOps::new(enforcer.clone()),
                    std::future::pending(),
                ),
            )))
        }
        None => None,
    };
    serve_enforcer(enforcer, cfg.strip_bearer, listener, shutdown).await
}

/// Serves `Check` (and health) for an enforcer already started, e.g. one a
/// process also checks with in-process.
pub async fn serve_enforcer(
    enforcer: Enforcer,
    strip_bearer: bool,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), EnforceError> {
    let addr: SocketAddr = listener.local_addr().map_err(|e| EnforceError::Listen {
        addr: "ext_authz".into(),
        reason: e.to_string(),
    })?;
    let (reporter, health) = tonic_health::server::health_reporter();
    let watched = enforcer.clone();
    let _health = super::follower::AbortOnDrop(tokio::spawn(async move {
        let mut last = None;
        loop {
            let serving = matches!(watched.freshness(), Freshness::Fresh);
            if last != Some(serving) {
                let status = if serving {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                reporter.set_service_status(SERVICE, status).await;
                reporter.set_service_status("", status).await;
                if last.is_some() {
                    if serving {
                        tracing::info!("revocation feed current; checks decided again");
                    } else {
                        tracing::warn!("revocation feed stale; every check refused (503)");
                    }
                }
                last = Some(serving);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }));
    tracing::info!(%addr, "ext_authz listening");
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(1024)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(health)
        .add_service(AuthorizationServer::new(ExtAuthz::new(
            enforcer,
            strip_bearer,
        )))
        .serve_with_incoming_shutdown(
            // Small answers on a long-lived connection: without NODELAY,
            // Nagle holds one back for the peer's delayed ACK (~40 ms).
            tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                |s| {
                    if let Ok(s) = &s {
                        let _ = s.set_nodelay(true);
                    }
                    s
                },
            ),
            shutdown,
        )
        .await
        .map_err(|e| EnforceError::Listen {
            addr: addr.to_string(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearer a b"), None);
    }

    #[test]
    fn denials_map_to_http_and_grpc() {
        for (d, http, grpc) in [
            (Denial::Unauthenticated("x".into()), 401, 16),
            (Denial::Forbidden("x".into()), 403, 7),
            (Denial::Unavailable("x".into()), 503, 14),
        ] {
            let r = deny(&d);
            assert_eq!(r.status.unwrap().code, grpc);
            let Some(HttpResponse::DeniedResponse(h)) = r.http_response else {
                panic!("not a denial")
            };
            assert_eq!(h.status.unwrap().code, http);
            assert_eq!(
                h.headers[0].header.as_ref().unwrap().key,
                "x-taskmint-deny-reason"
            );
        }
    }
}
