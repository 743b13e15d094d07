//! The Shared Signals Framework transmitter (`[ssf]`): the revocation log's
//! SETs for receivers outside the mesh, over plain HTTPS.
//!
//! - `/.well-known/ssf-configuration` (and, when `ssf.issuer` has a path,
//!   `/.well-known/ssf-configuration<path>`) on the discovery listener: SSF
//!   1.0 transmitter metadata ([`metadata`]). Its `issuer` is `ssf.issuer`,
//!   which every SET carries as `iss`; its `jwks_uri` is the discovery
//!   listener's `/keys`.
//! - [`POLL_PATH`]: RFC 8936 poll delivery ([`poll`]), one bearer token per
//!   receiver.
//! - RFC 8935 push ([`push`]): one task per push receiver, on the leader.
//!
//! Receivers are configured, not created through a stream management API:
//! each one's stream is every SET of the log, in order. What a receiver
//! acknowledged is its cursor, stored as a feed subscriber's acknowledgement
//! under its name ([`ack_through`]), so it survives restarts, is shared by
//! every replica, and shows in the delivery evidence (`GetDeliveryStatus`,
//! the overdue metric and log) like a subscriber's.
//!
//! SETs are signed once, when the revocation commits; the transmitter sends
//! the stored `set_jwt`, whose random `jti` receivers deduplicate on.

pub mod poll;
pub mod push;

use std::sync::Arc;

use base64::Engine;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

use crate::audit::{AuditDraft, kind};
use crate::clock::now_unix;
use crate::config::{Config, SsfConfig};
use crate::revocation::Revocations;
use crate::store::{AckRecord, StoreError};

/// The path of the transmitter metadata (before the issuer's path, if any).
pub const METADATA_PATH: &str = "/.well-known/ssf-configuration";
/// The RFC 8936 poll endpoint on the discovery listener.
pub const POLL_PATH: &str = "/ssf/poll";
/// RFC 8935 (push) and RFC 8936 (poll), as SSF names delivery methods.
pub const PUSH_METHOD: &str = "urn:ietf:rfc:8935";
/// See [`PUSH_METHOD`].
pub const POLL_METHOD: &str = "urn:ietf:rfc:8936";

/// Why the transmitter could not start.
#[derive(Debug, thiserror::Error)]
pub enum SsfError {
    /// A push receiver's TLS material is unusable.
    #[error("ssf.receivers `{receiver}`: {reason}")]
    Receiver {
        /// The receiver's name.
        receiver: String,
        /// Why.
        reason: String,
    },
}

/// The SSF 1.0 transmitter metadata for `ssf`, whose JWKS and poll endpoint
/// are on the discovery listener at `base_url`.
pub fn metadata(ssf: &SsfConfig, base_url: &str) -> serde_json::Value {
    serde_json::json!({
        "spec_version": "1_0",
        "issuer": ssf.issuer,
        "jwks_uri": format!("{base_url}{}", crate::ops::discovery::JWKS_PATH),
        "delivery_methods_supported": [PUSH_METHOD, POLL_METHOD],
        // Poll receivers present a bearer token (RFC 6750).
        "authorization_schemes": [{ "spec_urn": "urn:ietf:rfc:6750" }],
        // Every SET of the log goes to every receiver.
        "default_subjects": "ALL",
        // Streams are configured, not created over a management API, so no
        // stream configuration carries the poll URL (`endpoint_url`): it is
        // named here, an extension SSF allows ("Other Claims MAY also be
        // returned").
        "taskmint_poll_endpoint": format!("{base_url}{POLL_PATH}"),
    })
}

/// Records that receiver `name` has everything through `seq`: its durable
/// cursor, and the delivery evidence. `actor` (the issuer itself, which
/// delivered) is recorded in the trail with `how`.
pub async fn ack_through(
    revs: &Revocations,
    actor: &str,
    name: &str,
    seq: u64,
    how: &str,
) -> Result<(), StoreError> {
    let now = now_unix();
    revs.store()
        .ack(
            &AckRecord {
                subscriber: name.to_owned(),
                spiffe_id: actor.to_owned(),
                acked_seq: seq,
                acked_at: now,
            },
            // The name is the operator's (configured), whoever held it.
            true,
            AuditDraft::new(kind::ACK, actor, now)
                .subject(name)
                .because(format!(
                    "SSF receiver `{name}` {how} every revocation through seq {seq}"
                )),
        )
        .await?;
    Ok(())
}

/// The receiver's cursor: the highest sequence it acknowledged (0 if none).
pub async fn cursor(revs: &Revocations, name: &str) -> Result<u64, StoreError> {
    Ok(revs
        .store()
        .acks()
        .await?
        .into_iter()
        .find(|a| a.subscriber == name)
        .map_or(0, |a| a.acked_seq))
}

/// The `jti` of a stored SET (its payload is read, not verified: the issuer
/// signed it).
pub fn set_jti(set_jwt: &str) -> Option<String> {
    let payload = set_jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims["jti"].as_str().map(str::to_owned)
}

/// The transmitter's HTTP side, on the discovery listener: metadata and
/// polls.
#[derive(Debug)]
pub struct Transmitter {
    metadata: Bytes,
    /// `/.well-known/ssf-configuration`, and its issuer-path-suffixed form.
    metadata_paths: Vec<String>,
    poller: poll::Poller,
}

impl Transmitter {
    /// The transmitter of `cfg` (which has `[ssf]` and `[discovery]`) on a
    /// discovery listener reached at `base_url`; `None` without `[ssf]`.
    pub fn new(cfg: &Config, revs: Arc<Revocations>, actor: &str, base_url: &str) -> Option<Self> {
        let ssf = cfg.ssf.as_ref()?;
        let discovery = cfg.discovery.as_ref()?;
        let mut metadata_paths = vec![METADATA_PATH.to_owned()];
        if !ssf.issuer_path().is_empty() {
            metadata_paths.push(format!("{METADATA_PATH}{}", ssf.issuer_path()));
        }
        Some(Self {
            metadata: Bytes::from(
                serde_json::to_vec_pretty(&metadata(ssf, base_url)).expect("JSON serialises"),
            ),
            metadata_paths,
            poller: poll::Poller::new(
                revs,
                actor,
                &ssf.receivers,
                poll::Limits::for_listener(discovery),
            ),
        })
    }

    /// Whether `path` is the transmitter's to answer.
    pub fn serves(&self, path: &str) -> bool {
        path == POLL_PATH || self.metadata_paths.iter().any(|p| p == path)
    }

    /// The answer to a request for one of its paths.
    pub async fn respond(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() == POLL_PATH {
            return self.poller.respond(req).await;
        }
        if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and HEAD are served\n",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let mut r = json(StatusCode::OK, self.metadata.clone());
        // The metadata changes only with the config: cacheable for a while.
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        );
        r
    }
}

/// A JSON answer, not cached unless the caller says so.
fn json(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_names_the_issuer_keys_methods_and_poll_endpoint() {
        let ssf = SsfConfig {
            issuer: "https://ssf.example.org/t1".into(),
            receivers: vec![],
        };
        let m = metadata(&ssf, "https://keys.example.org");
        assert_eq!(m["spec_version"], "1_0");
        assert_eq!(m["issuer"], "https://ssf.example.org/t1");
        assert_eq!(m["jwks_uri"], "https://keys.example.org/keys");
        assert_eq!(
            m["delivery_methods_supported"],
            serde_json::json!(["urn:ietf:rfc:8935", "urn:ietf:rfc:8936"])
        );
        assert_eq!(
            m["authorization_schemes"],
            serde_json::json!([{ "spec_urn": "urn:ietf:rfc:6750" }])
        );
        assert_eq!(m["default_subjects"], "ALL");
        assert_eq!(
            m["taskmint_poll_endpoint"],
            "https://keys.example.org/ssf/poll"
        );
    }

    #[test]
    fn the_jti_is_read_from_the_payload() {
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let set = format!(
            "{}.{}.sig",
            b64(serde_json::json!({"alg": "ES256"})),
            b64(serde_json::json!({"jti": "abc123", "iss": "https://x"}))
        );
        assert_eq!(set_jti(&set).as_deref(), Some("abc123"));
        assert_eq!(set_jti("not-a-jwt"), None);
        assert_eq!(
            set_jti(&format!("h.{}.s", b64(serde_json::json!({})))),
            None
        );
    }
}
