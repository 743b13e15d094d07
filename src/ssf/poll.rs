//! RFC 8936 poll delivery at [`super::POLL_PATH`]: a receiver `POST`s
//! `{"maxEvents", "returnImmediately", "ack", "setErrs"}` with its bearer
//! token and gets `{"sets": {jti: SET}, "moreAvailable"}`.
//!
//! A receiver is known by its token alone; a missing or wrong one gets the
//! same 401 whichever receivers exist. Tokens are compared as SHA-256
//! digests in constant time, against every receiver each time.
//!
//! The SETs returned are the oldest not acknowledged, from the receiver's
//! durable cursor on: one not acknowledged is returned again by the next
//! poll. Acknowledgements (and `setErrs`, which count as delivered: the
//! receiver has the SET and said why it could not use it) move the cursor
//! over the contiguous acknowledged prefix; one acknowledged past a gap is
//! remembered by this replica until the gap closes (elsewhere, or after a
//! restart, it is sent again, and the receiver deduplicates on `jti`).
//!
//! Bounded: the body ([`MAX_BODY`]), `maxEvents` ([`MAX_EVENTS`]), the SETs
//! scanned per poll, and a long poll (`returnImmediately: false`, the
//! default), which waits at most [`LONG_POLL`] for a revocation to commit.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use super::{ack_through, cursor, set_jti};
use crate::config::{DiscoveryConfig, ReceiverConfig, SsfDelivery};
use crate::revocation::Revocations;
use crate::store::{RevocationEvent, StoreError};

/// Largest poll request body.
pub const MAX_BODY: usize = 256 * 1024;
/// Most SETs returned by one poll (a larger `maxEvents` is capped).
pub const MAX_EVENTS: usize = 500;
/// SETs returned when the request does not say.
pub const DEFAULT_EVENTS: usize = 100;
/// Longest a long poll waits for a revocation.
pub const LONG_POLL: Duration = Duration::from_secs(30);
/// Acknowledgements past a gap remembered per receiver; more are dropped
/// (their SETs are sent again).
const MAX_PENDING_ACKS: usize = 10_000;
/// `setErrs` logged one by one per poll.
const LOGGED_SET_ERRS: usize = 10;
/// SETs after the cursor read per query.
const PAGE: u32 = 512;
/// SETs after the cursor looked at per poll, to match acknowledgements or
/// find the next to send.
const SCAN: usize = 20_000;

/// The bounds that follow from the discovery listener's.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long the body may take to arrive.
    pub body_timeout: Duration,
    /// How long a long poll waits.
    pub long_poll: Duration,
}

impl Limits {
    /// A long poll ends well inside the listener's connection timeout.
    pub fn for_listener(d: &DiscoveryConfig) -> Self {
        Self {
            body_timeout: d.request_timeout,
            long_poll: LONG_POLL.min(d.connection_timeout / 2),
        }
    }
}

/// A poll request (RFC 8936 §2.4).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PollRequest {
    #[serde(default)]
    max_events: Option<u64>,
    #[serde(default)]
    return_immediately: bool,
    #[serde(default)]
    ack: Vec<String>,
    #[serde(default)]
    set_errs: HashMap<String, SetErr>,
}

/// Why a receiver could not use a SET (RFC 8935 §2.3 error codes).
#[derive(Debug, Default, Deserialize)]
struct SetErr {
    #[serde(default)]
    err: String,
    #[serde(default)]
    description: String,
}

struct Receiver {
    name: String,
    digest: [u8; 32],
    /// Sequences acknowledged past a gap after the cursor; also serialises
    /// this receiver's polls on this replica.
    pending: Mutex<BTreeSet<u64>>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Answers the polls of every poll receiver.
#[derive(Debug)]
pub struct Poller {
    revs: Arc<Revocations>,
    actor: String,
    receivers: Vec<Receiver>,
    limits: Limits,
}

/// What one poll hands back.
struct Batch {
    sets: serde_json::Map<String, serde_json::Value>,
    more: bool,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Poller {
    /// The poll receivers among `receivers`.
    pub fn new(
        revs: Arc<Revocations>,
        actor: &str,
        receivers: &[ReceiverConfig],
        limits: Limits,
    ) -> Self {
        let receivers = receivers
            .iter()
            .filter(|r| r.delivery == SsfDelivery::Poll)
            .filter_map(|r| {
                Some(Receiver {
                    name: r.name.clone(),
                    digest: digest(r.token.as_ref()?.expose().as_bytes()),
                    pending: Mutex::new(BTreeSet::new()),
                })
            })
            .collect();
        Self {
            revs,
            actor: actor.to_owned(),
            receivers,
            limits,
        }
    }

    /// The receiver whose token `req` presents.
    fn authenticate<B>(&self, req: &Request<B>) -> Option<&Receiver> {
        let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let presented = digest(token.trim().as_bytes());
        // Every receiver is compared, so the time taken says nothing of
        // which one (if any) matched.
        let mut found = None;
        for r in &self.receivers {
            if aws_lc_rs::constant_time::verify_slices_are_equal(&presented, &r.digest).is_ok() {
                found = Some(r);
            }
        }
        found
    }

    /// The answer to one request at the poll path.
    pub async fn respond(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::POST {
            let mut r = super::text(StatusCode::METHOD_NOT_ALLOWED, "poll with POST\n");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return r;
        }
        let Some(receiver) = self.authenticate(&req) else {
            let challenge = if req.headers().contains_key(header::AUTHORIZATION) {
                "Bearer realm=\"taskmint-ssf\", error=\"invalid_token\""
            } else {
                "Bearer realm=\"taskmint-ssf\""
            };
            let mut r = super::text(
                StatusCode::UNAUTHORIZED,
                "a receiver's bearer token is required\n",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
            return r;
        };
        let body = match tokio::time::timeout(
            self.limits.body_timeout,
            Limited::new(req.into_body(), MAX_BODY).collect(),
        )
        .await
        {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(_)) => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request",
                    &format!("the body could not be read or exceeds {MAX_BODY} bytes"),
                );
            }
            Err(_) => {
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    "invalid_request",
                    "the body did not arrive in time",
                );
            }
        };
        let poll: PollRequest = if body.iter().all(u8::is_ascii_whitespace) {
            PollRequest::default()
        } else {
            match serde_json::from_slice(&body) {
                Ok(p) => p,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        &format!("the body is not a poll request: {e}"),
                    );
                }
            }
        };
        match self.poll(receiver, poll).await {
            Ok(b) => {
                let body = serde_json::json!({ "sets": b.sets, "moreAvailable": b.more });
                super::json(
                    StatusCode::OK,
                    Bytes::from(serde_json::to_vec(&body).expect("JSON serialises")),
                )
            }
            Err(e) => {
                tracing::warn!(receiver = %receiver.name, error = %e, "ssf poll: cannot read the revocation log");
                let mut r = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "the revocation log cannot be read right now; poll again",
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                r
            }
        }
    }

    /// Records the acknowledgements of `poll`, then returns what is due,
    /// waiting for it when asked to.
    async fn poll(&self, r: &Receiver, poll: PollRequest) -> Result<Batch, StoreError> {
        let max = poll
            .max_events
            .map_or(DEFAULT_EVENTS, |m| (m.min(MAX_EVENTS as u64)) as usize);
        // A receiver chooses how many errors it reports: a few are logged
        // each, the rest counted.
        for (jti, e) in poll.set_errs.iter().take(LOGGED_SET_ERRS) {
            tracing::warn!(
                receiver = %r.name,
                jti = %truncate(jti, 64),
                err = %truncate(&e.err, 64),
                description = %truncate(&e.description, 256),
                "ssf poll: the receiver could not use a SET (counted as delivered)"
            );
        }
        if poll.set_errs.len() > LOGGED_SET_ERRS {
            tracing::warn!(
                receiver = %r.name,
                more = poll.set_errs.len() - LOGGED_SET_ERRS,
                "ssf poll: the receiver could not use more SETs (counted as delivered)"
            );
        }
        let delivered: HashSet<&str> = poll
            .ack
            .iter()
            .map(String::as_str)
            .chain(poll.set_errs.keys().map(String::as_str))
            .collect();
        // Subscribed before the log is read: a revocation committed after
        // the read wakes the wait below.
        let mut hub = self.revs.subscribe();
        let mut closing = self.revs.closing();
        let deadline = tokio::time::Instant::now() + self.limits.long_poll;
        let mut first = true;
        loop {
            let batch = {
                let mut pending = r.pending.lock().await;
                if first && !delivered.is_empty() {
                    self.acknowledge(r, &mut pending, &delivered).await?;
                }
                first = false;
                if max == 0 {
                    return Ok(Batch {
                        sets: Default::default(),
                        more: false,
                    });
                }
                self.due(r, &mut pending, max).await?
            };
            if !batch.sets.is_empty() || poll.return_immediately {
                return Ok(batch);
            }
            tokio::select! {
                // A revocation was published (or the hub lagged: read
                // again either way).
                _ = hub.recv() => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(batch),
                _ = closing.wait_for(|c| *c) => return Ok(batch),
            }
        }
    }

    /// Marks the SETs whose `jti` is in `delivered` as delivered and moves
    /// the durable cursor over the contiguous delivered prefix.
    async fn acknowledge(
        &self,
        r: &Receiver,
        pending: &mut BTreeSet<u64>,
        delivered: &HashSet<&str>,
    ) -> Result<(), StoreError> {
        let from = cursor(&self.revs, &r.name).await?;
        pending.retain(|s| *s > from);
        let mut through = from;
        let mut contiguous = true;
        let mut matched = 0;
        let mut after = from;
        let mut scanned = 0;
        'pages: loop {
            let page = self.revs.store().events_after(after, PAGE).await?;
            let full = page.len() == PAGE as usize;
            for e in &page {
                after = e.seq;
                scanned += 1;
                let done = match set_jti(&e.set_jwt) {
                    Some(jti) if delivered.contains(jti.as_str()) => {
                        matched += 1;
                        true
                    }
                    Some(_) => pending.contains(&e.seq),
                    None => unreadable(r, e),
                };
                if done && contiguous {
                    through = e.seq;
                    pending.remove(&e.seq);
                } else if done {
                    if pending.len() < MAX_PENDING_ACKS {
                        pending.insert(e.seq);
                    }
                } else {
                    contiguous = false;
                }
                // Done when every acknowledgement is placed and nothing
                // remembered further on can extend the prefix.
                let settled = matched == delivered.len()
                    && (!contiguous || pending.range(e.seq + 1..).next().is_none());
                if settled || scanned >= SCAN {
                    break 'pages;
                }
            }
            if !full {
                break;
            }
        }
        if through > from {
            ack_through(
                &self.revs,
                &self.actor,
                &r.name,
                through,
                "acknowledged by poll",
            )
            .await?;
        }
        Ok(())
    }

    /// Up to `max` SETs after the cursor that are not yet delivered, and
    /// whether more are.
    async fn due(
        &self,
        r: &Receiver,
        pending: &mut BTreeSet<u64>,
        max: usize,
    ) -> Result<Batch, StoreError> {
        let mut after = cursor(&self.revs, &r.name).await?;
        pending.retain(|s| *s > after);
        let mut sets = serde_json::Map::new();
        let mut scanned = 0;
        loop {
            let page = self.revs.store().events_after(after, PAGE).await?;
            let full = page.len() == PAGE as usize;
            for e in page {
                after = e.seq;
                scanned += 1;
                if pending.contains(&e.seq) {
                    continue;
                }
                let Some(jti) = set_jti(&e.set_jwt) else {
                    unreadable(r, &e);
                    continue;
                };
                if sets.len() == max {
                    return Ok(Batch { sets, more: true });
                }
                sets.insert(jti, serde_json::Value::String(e.set_jwt));
            }
            if !full || scanned >= SCAN {
                return Ok(Batch {
                    sets,
                    more: full && scanned >= SCAN,
                });
            }
        }
    }
}

/// A stored SET without a readable `jti` cannot be sent or acknowledged by
/// `jti`: it is passed over, loudly.
fn unreadable(r: &Receiver, e: &RevocationEvent) -> bool {
    tracing::error!(receiver = %r.name, seq = e.seq, "ssf: the stored SET has no readable jti; passed over");
    true
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// An RFC 8936 error answer.
fn error(status: StatusCode, err: &str, description: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "err": err, "description": description });
    super::json(
        status,
        Bytes::from(serde_json::to_vec(&body).expect("JSON serialises")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_request_reads_rfc_8936_names_and_defaults() {
        let p: PollRequest = serde_json::from_str(
            r#"{"maxEvents": 3, "returnImmediately": true, "ack": ["a", "b"],
                "setErrs": {"c": {"err": "invalid_key", "description": "kid unknown"}}}"#,
        )
        .unwrap();
        assert_eq!(p.max_events, Some(3));
        assert!(p.return_immediately);
        assert_eq!(p.ack, ["a", "b"]);
        assert_eq!(p.set_errs["c"].err, "invalid_key");
        let p: PollRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(p.max_events, None);
        assert!(!p.return_immediately, "long poll is the default");
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("abcdef", 3), "abc");
        assert_eq!(truncate("ab", 3), "ab");
        assert_eq!(truncate("ééé", 2), "éé");
    }
}
