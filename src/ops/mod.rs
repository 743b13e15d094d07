//! Operations: what an operator, an orchestrator and a relying party see
//! of a running issuer, apart from the mTLS gRPC API (none of it needs an
//! SVID).
//!
//! - [`discovery`]: the optional HTTPS listener for relying parties (OpenID
//!   Connect discovery, the JWKS, the SPIFFE bundle endpoint).
//! - [`metrics`]: the Prometheus metrics, updated where things happen.
//! - [`logging`]: the log format (text or JSON lines) and colour rules.
//! - [`trace`]: the caller's W3C `traceparent`, carried with each request
//!   to its log line and audit events.
//! - [`serve`]: the operations listener (`[ops] listen`, plain HTTP,
//!   loopback by default): `GET /metrics`, `GET /healthz` (the process
//!   answers), `GET /readyz` (see [`Readiness`]; 503 with the reasons,
//!   one per line, otherwise).
//!
//! The HTTPS discovery listener for relying parties (OIDC discovery, JWKS,
//! SPIFFE bundle endpoint) is a separate listener with its own config
//! section; it lives beside this one as `ops::discovery`.

pub mod discovery;
pub mod logging;
pub mod metrics;
pub mod trace;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::issuer::Issuer;
use crate::tls::TlsMaterial;

/// How long `/readyz` waits for the database to answer.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one connection to the operations listener may stay open.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// At most this many connections to the operations listener at once.
const MAX_CONNECTIONS: usize = 64;

/// What `/readyz` checks: the store is reachable (the revocation log can be
/// read and the database answers a fresh connection), the serving SVID is
/// in date, and every trust source loaded at its last reload (a source that
/// failed keeps its previous, possibly stale, version).
#[derive(Debug, Clone)]
pub struct Readiness {
    issuer: Arc<Issuer>,
    material: Arc<TlsMaterial>,
}

impl Readiness {
    /// Readiness of the issuer built from `issuer` and `material`.
    pub fn new(issuer: Arc<Issuer>, material: Arc<TlsMaterial>) -> Self {
        Self { issuer, material }
    }

    /// Why the issuer is not ready, one reason a line; empty when it is.
    pub async fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(e) = self.issuer.revocations().unavailable() {
            out.push(format!("store: cannot read the revocation log: {e}"));
        } else {
            match tokio::time::timeout(STORE_PROBE_TIMEOUT, self.issuer.store().probe()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => out.push(format!("store: {e}")),
                Err(_) => out.push(format!(
                    "store: no answer within {}",
                    humantime::format_duration(STORE_PROBE_TIMEOUT)
                )),
            }
        }
        match self.material.server_not_after() {
            Some(t) if t <= crate::clock::now_unix() => out.push(format!(
                "keys: the serving SVID expired at {}",
                crate::clock::rfc3339(t)
            )),
            Some(_) => {}
            None => out.push("keys: the serving SVID cannot be read".into()),
        }
        for e in self.material.reload_errors() {
            out.push(format!("trust: stale, the last reload failed: {e}"));
        }
        out
    }
}

/// What the operations listener serves: the metrics exposition and the
/// readiness problems. The issuer's is [`Readiness`]; the enforcer has its
/// own.
pub trait Endpoints: Send + Sync + 'static {
    /// The OpenMetrics text of `/metrics`.
    fn metrics(&self) -> String;
    /// Why the process is not ready, one reason a line; empty when it is.
    fn problems(&self) -> impl Future<Output = Vec<String>> + Send;
}

impl Endpoints for Readiness {
    fn metrics(&self) -> String {
        metrics::get().encode()
    }

    async fn problems(&self) -> Vec<String> {
        Readiness::problems(self).await
    }
}

async fn answer<E: Endpoints>(
    endpoints: &E,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .header("cache-control", "no-store")
            .body(Full::new(Bytes::from(body)))
            .expect("static headers are valid")
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
        r.headers_mut().insert(
            "allow",
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    match req.uri().path() {
        "/metrics" => Response::builder()
            .header(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .header("cache-control", "no-store")
            .body(Full::new(Bytes::from(endpoints.metrics())))
            .expect("static headers are valid"),
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let problems = endpoints.problems().await;
            if problems.is_empty() {
                text(StatusCode::OK, "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    problems.iter().map(|p| format!("{p}\n")).collect(),
                )
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` (plain HTTP/1.1)
/// until `shutdown` resolves.
pub async fn serve<E: Endpoints>(
    listener: TcpListener,
    endpoints: E,
    shutdown: impl Future<Output = ()> + Send,
) {
    let endpoints = Arc::new(endpoints);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "operations listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        // A scraper or probe that holds connections open cannot take them all.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let endpoints = endpoints.clone();
                async move { Ok::<_, Infallible>(answer(&*endpoints, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(permit);
        });
    }
}
