//! RFC 8935 push delivery: one task per push receiver, on the replica that
//! leads the background duties ([`Revocations::leading`]).
//!
//! The task sends every SET after the receiver's durable cursor, one at a
//! time and in order: `POST` to its `url` with
//! `Content-Type: application/secevent+jwt`, its bearer token and/or a
//! client certificate. 202 (or 200) means delivered: the cursor is moved
//! durably, then the next is sent. A 400 with an RFC 8935 error body means
//! the receiver has the SET and refuses it: logged (the `err` code) and
//! counted as delivered. Anything else — a refused connection, a timeout,
//! a 5xx, a 401 — is retried, the same SET, with exponential backoff and
//! jitter ([`BACKOFF_FIRST`] doubling to [`BACKOFF_MAX`]); a SET is never
//! skipped. A new revocation wakes the task, and it also looks every
//! [`FALLBACK_POLL`].

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{PrivateKeyDer, ServerName, pem::PemObject};
use tokio::sync::{broadcast, watch};
use tokio_rustls::TlsConnector;

use super::{SsfError, ack_through, cursor};
use crate::config::{Config, ReceiverConfig, SsfDelivery};
use crate::revocation::Revocations;
use crate::store::StoreError;

/// First wait after a failed push.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// Longest wait between two attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often the log is looked at without a wake-up.
pub const FALLBACK_POLL: Duration = Duration::from_secs(5);
/// Longest a TCP connection and TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one push may take, from sending to the end of the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer body read (an RFC 8935 error is a small JSON object).
const MAX_ANSWER: usize = 64 * 1024;
/// SETs read from the log at a time.
const PAGE: u32 = 64;

/// What became of one push.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// 202 or 200.
    Delivered,
    /// 400 with an RFC 8935 error: the receiver refuses this SET.
    Rejected { err: String, description: String },
    /// Anything else: try again.
    Failed(String),
}

/// Why a run of deliveries ended.
enum Stop {
    /// Shutting down.
    Shutdown,
    /// Another replica leads now.
    LostLead,
}

/// One push receiver's client.
pub struct Pusher {
    name: String,
    url: String,
    path: String,
    authority: String,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    /// `Bearer <token>`, marked sensitive.
    authorization: Option<HeaderValue>,
    tls: TlsConnector,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl std::fmt::Debug for Pusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Pusher {
    /// The client of push receiver `r`: its URL, roots and client
    /// certificate, read now so a bad file stops the start.
    pub fn new(r: &ReceiverConfig) -> Result<Self, SsfError> {
        let fail = |reason: String| SsfError::Receiver {
            receiver: r.name.clone(),
            reason,
        };
        let url = r
            .url
            .clone()
            .ok_or_else(|| fail("a push receiver needs a url".into()))?;
        let uri: Uri = url.parse().map_err(|e| fail(format!("url `{url}`: {e}")))?;
        let authority = uri
            .authority()
            .ok_or_else(|| fail(format!("url `{url}` names no host")))?
            .to_string();
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| fail(format!("url `{url}`: host `{host}`: {e}")))?;
        let mut roots = rustls::RootCertStore::empty();
        match &r.ca {
            Some(ca) => {
                let pem =
                    std::fs::read(ca).map_err(|e| fail(format!("ca `{}`: {e}", ca.display())))?;
                let certs = crate::pem::certs(&pem)
                    .map_err(|e| fail(format!("ca `{}`: {e}", ca.display())))?;
                if certs.is_empty() {
                    return Err(fail(format!(
                        "ca `{}`: no CERTIFICATE in the file",
                        ca.display()
                    )));
                }
                for c in certs {
                    roots
                        .add(c)
                        .map_err(|e| fail(format!("ca `{}`: {e}", ca.display())))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(e.to_string()))?
            .with_root_certificates(roots);
        let mut tls = match (&r.client_cert, &r.client_key) {
            (Some(cert), Some(key)) => {
                let pem = std::fs::read(cert)
                    .map_err(|e| fail(format!("client_cert `{}`: {e}", cert.display())))?;
                let chain = crate::pem::certs(&pem)
                    .map_err(|e| fail(format!("client_cert `{}`: {e}", cert.display())))?;
                let key_pem = zeroize::Zeroizing::new(
                    std::fs::read(key)
                        .map_err(|e| fail(format!("client_key `{}`: {e}", key.display())))?,
                );
                let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                    fail(format!(
                        "client_key `{}`: no usable private key: {e}",
                        key.display()
                    ))
                })?;
                builder
                    .with_client_auth_cert(chain, der)
                    .map_err(|e| fail(format!("client_cert `{}`: {e}", cert.display())))?
            }
            _ => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let authorization = match &r.token {
            Some(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {}", t.expose()))
                    .map_err(|_| fail("token must be printable ASCII without spaces".into()))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Self {
            name: r.name.clone(),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.to_string()),
            port: uri.port_u16().unwrap_or(443),
            url,
            authority,
            host,
            server_name,
            authorization,
            tls: TlsConnector::from(Arc::new(tls)),
            conn: None,
        })
    }

    /// A connection to the receiver: the open one when it is still usable.
    async fn connection(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, String> {
        let reusable = match &mut self.conn {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            self.conn = None;
            let connect = async {
                let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                    .await
                    .map_err(|e| format!("cannot connect: {e}"))?;
                let tls = self
                    .tls
                    .connect(self.server_name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| format!("HTTP: {e}"))
            };
            let (send, conn) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| "no connection within the connect timeout".to_owned())??;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.conn = Some(send);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Pushes one SET.
    async fn send(&mut self, set_jwt: &str) -> Outcome {
        let mut req = Request::post(self.path.as_str())
            .header(header::HOST, self.authority.as_str())
            .header(header::CONTENT_TYPE, "application/secevent+jwt")
            .header(header::ACCEPT, "application/json");
        if let Some(v) = &self.authorization {
            req = req.header(header::AUTHORIZATION, v.clone());
        }
        let req = req
            .body(Full::new(Bytes::copy_from_slice(set_jwt.as_bytes())))
            .expect("a valid request");
        let exchange = async {
            let resp = self
                .connection()
                .await?
                .send_request(req)
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
            let status = resp.status();
            // Read to the end, so the connection can carry the next one.
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, String>((status, body))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(Ok((status, body))) => outcome(status, &body),
            Ok(Err(e)) => {
                self.conn = None;
                Outcome::Failed(e)
            }
            Err(_) => {
                self.conn = None;
                Outcome::Failed("no answer within the request timeout".into())
            }
        }
    }
}

/// What an answer means (RFC 8935 §2.2, §2.3).
fn outcome(status: StatusCode, body: &[u8]) -> Outcome {
    match status {
        StatusCode::ACCEPTED | StatusCode::OK => Outcome::Delivered,
        StatusCode::BAD_REQUEST => {
            let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
            match parsed.as_ref().and_then(|v| v["err"].as_str()) {
                Some(err) => Outcome::Rejected {
                    err: err.chars().take(64).collect(),
                    description: parsed
                        .as_ref()
                        .and_then(|v| v["description"].as_str())
                        .unwrap_or_default()
                        .chars()
                        .take(256)
                        .collect(),
                },
                None => Outcome::Failed("answered 400 without an RFC 8935 error".into()),
            }
        }
        s => Outcome::Failed(format!("answered {}", s.as_u16())),
    }
}

/// The wait before attempt `failures + 1`: doubling from
/// [`BACKOFF_FIRST`] up to [`BACKOFF_MAX`], the upper half randomised so
/// replicas and receivers do not retry in step.
pub fn backoff(failures: u32) -> Duration {
    let full = BACKOFF_FIRST
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    let half = full / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// Builds a client for every push receiver of `cfg` (failing the start on
/// unusable TLS material) and starts its task, which runs until `stop`
/// changes.
pub fn spawn_all(
    cfg: &Config,
    revs: &Arc<Revocations>,
    actor: &str,
    stop: &watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, SsfError> {
    let pushers = cfg
        .ssf_receivers()
        .iter()
        .filter(|r| r.delivery == SsfDelivery::Push)
        .map(Pusher::new)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(pushers
        .into_iter()
        .map(|p| tokio::spawn(run(p, revs.clone(), actor.to_owned(), stop.clone())))
        .collect())
}

/// Delivers to one receiver while this process leads, until `stop`.
async fn run(
    mut p: Pusher,
    revs: Arc<Revocations>,
    actor: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut leading = revs.leading();
    let mut hub = revs.subscribe();
    loop {
        if !*leading.borrow_and_update() {
            tokio::select! {
                changed = leading.changed() => if changed.is_err() { return },
                _ = stop.changed() => return,
            }
            continue;
        }
        // What is queued is in the log read below; what is published
        // after this wakes the wait.
        while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) = hub.try_recv() {}
        match deliver_pending(&mut p, &revs, &actor, &mut stop, &mut leading).await {
            Ok(()) => {}
            Err(Some(Stop::Shutdown)) => return,
            Err(Some(Stop::LostLead)) => continue,
            Err(None) => {}
        }
        tokio::select! {
            r = hub.recv() => if matches!(r, Err(broadcast::error::RecvError::Closed)) { return },
            _ = tokio::time::sleep(FALLBACK_POLL) => {}
            _ = leading.changed() => {}
            _ = stop.changed() => return,
        }
    }
}

/// Sends every SET after the receiver's cursor. `Err(None)`: the log could
/// not be read (logged; the caller tries again later).
async fn deliver_pending(
    p: &mut Pusher,
    revs: &Revocations,
    actor: &str,
    stop: &mut watch::Receiver<bool>,
    leading: &mut watch::Receiver<bool>,
) -> Result<(), Option<Stop>> {
    let name = p.name.clone();
    let read_failed = |e: StoreError| {
        tracing::warn!(receiver = %name, error = %e, "ssf push: cannot read the revocation log; trying again");
        None
    };
    loop {
        let from = cursor(revs, &name).await.map_err(read_failed)?;
        let page = revs
            .store()
            .events_after(from, PAGE)
            .await
            .map_err(read_failed)?;
        if page.is_empty() {
            return Ok(());
        }
        for e in page {
            deliver_one(p, e.seq, &e.set_jwt, stop, leading).await?;
            // Durable before the next: a restart or a new leader resumes
            // after it, never before.
            let mut failures = 0;
            while let Err(err) =
                ack_through(revs, actor, &name, e.seq, "accepted the push of").await
            {
                failures += 1;
                tracing::warn!(receiver = %name, seq = e.seq, error = %err, "ssf push: delivered, but the cursor cannot be stored; retrying");
                wait(backoff(failures), stop, leading).await?;
            }
        }
    }
}

/// Pushes one SET until the receiver has it.
async fn deliver_one(
    p: &mut Pusher,
    seq: u64,
    set_jwt: &str,
    stop: &mut watch::Receiver<bool>,
    leading: &mut watch::Receiver<bool>,
) -> Result<(), Option<Stop>> {
    let mut failures = 0;
    loop {
        // A push in flight does not hold up a shutdown.
        let sent = tokio::select! {
            o = p.send(set_jwt) => o,
            _ = stop.changed() => return Err(Some(Stop::Shutdown)),
        };
        match sent {
            Outcome::Delivered => {
                if failures > 0 {
                    tracing::info!(receiver = %p.name, seq, attempts = failures + 1, "ssf push: delivered after retries");
                }
                return Ok(());
            }
            Outcome::Rejected { err, description } => {
                tracing::warn!(receiver = %p.name, seq, err = %err, description = %description, "ssf push: the receiver refused the SET (counted as delivered)");
                return Ok(());
            }
            Outcome::Failed(why) => {
                failures += 1;
                let delay = backoff(failures);
                tracing::warn!(receiver = %p.name, url = %p.url, seq, attempt = failures, error = %why, retry_in = ?delay, "ssf push failed; retrying the same SET");
                wait(delay, stop, leading).await?;
            }
        }
    }
}

/// Sleeps `d`, unless shutdown comes first or the lead is lost.
async fn wait(
    d: Duration,
    stop: &mut watch::Receiver<bool>,
    leading: &mut watch::Receiver<bool>,
) -> Result<(), Option<Stop>> {
    tokio::select! {
        _ = tokio::time::sleep(d) => Ok(()),
        _ = stop.changed() => Err(Some(Stop::Shutdown)),
        _ = leading.wait_for(|l| !*l) => Err(Some(Stop::LostLead)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretToken;

    #[test]
    fn answers_map_to_delivered_refused_or_retry() {
        assert_eq!(outcome(StatusCode::ACCEPTED, b""), Outcome::Delivered);
        assert_eq!(outcome(StatusCode::OK, b"{}"), Outcome::Delivered);
        assert_eq!(
            outcome(
                StatusCode::BAD_REQUEST,
                br#"{"err": "invalid_issuer", "description": "unknown iss"}"#
            ),
            Outcome::Rejected {
                err: "invalid_issuer".into(),
                description: "unknown iss".into()
            }
        );
        assert!(matches!(
            outcome(StatusCode::BAD_REQUEST, b"<html>bad</html>"),
            Outcome::Failed(_)
        ));
        assert_eq!(
            outcome(StatusCode::SERVICE_UNAVAILABLE, b""),
            Outcome::Failed("answered 503".into())
        );
        assert!(matches!(
            outcome(StatusCode::UNAUTHORIZED, b""),
            Outcome::Failed(_)
        ));
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_in_the_upper_half() {
        for (failures, full) in [
            (1, BACKOFF_FIRST),
            (2, BACKOFF_FIRST * 2),
            (3, BACKOFF_FIRST * 4),
            (10, BACKOFF_MAX),
            (60, BACKOFF_MAX),
        ] {
            for _ in 0..50 {
                let d = backoff(failures);
                assert!(d >= full / 2 && d <= full, "{failures}: {d:?} vs {full:?}");
            }
        }
    }

    #[test]
    fn a_push_receiver_needs_usable_tls_material() {
        let r = ReceiverConfig {
            name: "siem".into(),
            delivery: SsfDelivery::Push,
            url: Some("https://[::1]:8443/events".into()),
            token: Some(SecretToken::new("0123456789abcdef")),
            ca: None,
            client_cert: None,
            client_key: None,
        };
        let p = Pusher::new(&r).unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.path.as_str()),
            ("::1", 8443, "/events")
        );
        let mut bad = r.clone();
        bad.ca = Some("/nonexistent/ca.pem".into());
        let e = Pusher::new(&bad).unwrap_err().to_string();
        assert!(
            e.contains("ssf.receivers `siem`: ca `/nonexistent/ca.pem`"),
            "{e}"
        );
    }
}
