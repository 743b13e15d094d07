//! Revocation: the ordered log, the live hub, the watch feed, delivery
//! evidence, the deadline reaper and the CRL.
//!
//! Every revocation is committed through [`Revocations::revoke`], by this
//! process or by another replica on the same database. The hub is fed by one
//! follower per process ([`Revocations::follow`]) that reads the log table
//! in sequence order after every wake-up — a local commit, a PostgreSQL
//! notification of another replica's commit, a listener reconnect — and at
//! least every [`POLL`]. Sequence numbers are gap-free in commit order
//! (see the store), so publishing what the log holds past the last published
//! number gives every watcher, on every replica, every revocation once and
//! in order, whichever replica committed it. A watcher subscribes before
//! reading the log, so the hand-over from log to hub has no gap either.
//!
//! The follower's reads are also this process's view of the database's
//! health: when the log cannot be read, [`Revocations::unavailable`] says
//! why, health checks report `NOT_SERVING`, calls are refused, and feeds
//! end rather than send heartbeats for a head they cannot see.

pub mod delivery;
pub mod feed;
pub mod reaper;
mod set;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, broadcast, watch};

use crate::jwt::JwtSigner;
use crate::store::{CommitWakes, Condition, RevocationEvent, RevokeRequest, Store, StoreError};

pub use set::set_claims;

/// Capacity of the hub's broadcast ring. A forwarder that falls this far
/// behind is cut off (and resumes from the log), never silently skipped.
pub const HUB_CAPACITY: usize = 4096;

/// The follower reads the log at least this often, whether or not it was
/// woken: it bounds how late a revocation whose notification was lost is
/// published, and how soon a lost database is noticed.
pub const POLL: Duration = Duration::from_millis(500);

/// A read of the log that takes longer than this counts as the database
/// being unreachable (the pool would otherwise wait its whole acquire
/// timeout on a database that refuses connections).
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Events read per query while catching up.
const PAGE: u32 = 512;

/// A read of the log, bounded by [`READ_TIMEOUT`] (which counts as busy:
/// the caller tells busy from unreachable).
async fn read<T>(
    query: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(READ_TIMEOUT, query)
        .await
        .map_err(|_| StoreError::Unavailable {
            condition: Condition::Busy,
            detail: format!(
                "no answer to a read of the revocation log within {}",
                humantime::format_duration(READ_TIMEOUT)
            ),
        })?
}

/// The revocation log's writer and live hub.
pub struct Revocations {
    store: Arc<dyn Store>,
    signer: Arc<JwtSigner>,
    iss: String,
    /// The X.509 CA's subject, for CAEP `x509_issuer`.
    x509_issuer: String,
    tx: broadcast::Sender<Arc<RevocationEvent>>,
    /// Wakes the follower: a local commit, or a notification of another
    /// replica's.
    committed: Notify,
    /// `None` while the follower reads the log; otherwise why it cannot.
    health: watch::Sender<Option<StoreError>>,
    /// The log's head, sent when the log was found to have gone back.
    rewound: watch::Sender<u64>,
    closing: watch::Sender<bool>,
    /// Whether this process leads the background duties (set by the
    /// reaper).
    leading: watch::Sender<bool>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("iss", &self.iss)
            .finish_non_exhaustive()
    }
}

impl Revocations {
    /// Builds the hub over `store`; SETs are signed with `signer` as `iss`.
    pub fn new(store: Arc<dyn Store>, signer: Arc<JwtSigner>, iss: String) -> Self {
        let (tx, _) = broadcast::channel(HUB_CAPACITY);
        Self {
            store,
            signer,
            iss,
            x509_issuer: String::new(),
            tx,
            committed: Notify::new(),
            health: watch::channel(None).0,
            rewound: watch::channel(0).0,
            closing: watch::channel(false).0,
            leading: watch::channel(false).0,
        }
    }

    /// Names the X.509 CA (its subject, RFC 4514) in the SETs of X.509
    /// credential revocations.
    pub fn with_x509_issuer(mut self, name: &str) -> Self {
        self.x509_issuer = name.to_owned();
        self
    }

    /// The store behind the log.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Commits a revocation and wakes the follower, which publishes its
    /// events. Returns the events written (none when nothing in scope was
    /// still active).
    ///
    /// The work runs in its own task: a caller that goes away mid-call (a
    /// cancelled RPC) cannot cut a commit short and leave its outcome
    /// unknown to the log.
    pub async fn revoke(
        self: &Arc<Self>,
        req: &RevokeRequest,
    ) -> Result<Vec<RevocationEvent>, StoreError> {
        let this = self.clone();
        let req = req.clone();
        tokio::spawn(async move { this.commit(&req).await })
            .await
            .map_err(|e| StoreError::Corrupt(format!("revocation task failed: {e}")))?
    }

    async fn commit(&self, req: &RevokeRequest) -> Result<Vec<RevocationEvent>, StoreError> {
        let (signer, iss) = (self.signer.clone(), self.iss.clone());
        let x509_issuer = self.x509_issuer.clone();
        let sign: crate::store::SetSigner = Arc::new(move |e: &RevocationEvent| {
            signer
                .sign_set(&set_claims(&iss, &x509_issuer, e))
                .map_err(|e| e.to_string())
        });
        let events = self.store.revoke(req, sign).await?;
        // The reason a caller gives is free text: only the issuer's own
        // reasons are label values.
        let reason = match req.reason.as_str() {
            reaper::REASON_DEADLINE => reaper::REASON_DEADLINE,
            crate::issuer::REASON_COMPLETED => crate::issuer::REASON_COMPLETED,
            crate::issuer::REASON_SUPERSEDED => crate::issuer::REASON_SUPERSEDED,
            _ => "requested",
        };
        crate::ops::metrics::get().revoked(reason, req.scope.kind(), events.len());
        for e in &events {
            tracing::info!(
                seq = e.seq,
                kind = %e.kind,
                task = %e.task_id,
                spiffe_id = %e.spiffe_id,
                reason = %e.reason,
                credentials = e.credential_ids.len(),
                "revoked"
            );
        }
        if !events.is_empty() {
            self.committed.notify_one();
        }
        Ok(events)
    }

    /// Publishes the log to the hub, in sequence order, from `after` on,
    /// until [`Revocations::close`]: after every local commit, every
    /// wake-up from `wakes`, and every [`POLL`].
    pub async fn follow(self: Arc<Self>, mut after: u64, wakes: CommitWakes) {
        let mut closing = self.closing();
        // The listener runs on its own: a wait for it (a reconnect above
        // all) must not be cut short by every local commit.
        let listener = tokio::spawn(self.clone().listen(wakes));
        loop {
            match self.catch_up(after).await {
                Ok(last) => {
                    after = last;
                    crate::ops::metrics::get().feed_head(last);
                    self.health.send_if_modified(|h| h.take().is_some());
                }
                Err(e) => self.read_failed(e).await,
            }
            tokio::select! {
                _ = self.committed.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = async { closing.wait_for(|c| *c).await.map(|_| ()) } => break,
            }
        }
        listener.abort();
    }

    /// Wakes the follower on every notification or reconnect of `wakes`;
    /// while the listener is down, retries it every [`POLL`].
    async fn listen(self: Arc<Self>, mut wakes: CommitWakes) {
        let mut down = false;
        loop {
            match wakes.next().await {
                Ok(()) => {
                    down = false;
                    self.committed.notify_one();
                }
                Err(e) => {
                    if !down {
                        tracing::warn!(error = %e, "revocation notifications are down; reading the log on every poll");
                        down = true;
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }

    /// Publishes what follows `after`; returns the new last sequence. When
    /// nothing follows, checks that the log did not go back (a database
    /// restored, or failed over to a replica that lacked the newest
    /// commits): then the numbers after its head will be given out again,
    /// so every open feed is ended with a resync and publishing restarts at
    /// the head.
    async fn catch_up(&self, after: u64) -> Result<u64, StoreError> {
        let last = self.publish_after(after).await?;
        if last > after {
            return Ok(last);
        }
        let head = read(self.store.current_seq()).await?;
        if head < after {
            tracing::error!(
                published = after,
                head,
                "the revocation log went back (restored or failed over): ending every feed with a resync"
            );
            self.rewound.send_replace(head);
            return Ok(head);
        }
        Ok(after)
    }

    /// A read of the log failed: unless a fresh connection shows the
    /// database is only busy (a full pool, a slow query), calls are refused
    /// until the log can be read.
    async fn read_failed(&self, e: StoreError) {
        if e.unavailable() == Some(Condition::Busy) && self.store.probe().await.is_ok() {
            tracing::warn!(error = %e, "the revocation log is slow to read; the database answers");
            return;
        }
        if self.health.borrow().is_none() {
            tracing::error!(error = %e, "cannot read the revocation log: refusing calls until it can be read");
        }
        self.health.send_replace(Some(e));
    }

    /// Publishes every event of the log after `after`; returns the last
    /// sequence published.
    async fn publish_after(&self, mut after: u64) -> Result<u64, StoreError> {
        loop {
            let page = read(self.store.events_after(after, PAGE)).await?;
            let full = page.len() == PAGE as usize;
            for e in page {
                after = e.seq;
                // No receiver is fine: nobody is watching.
                let _ = self.tx.send(Arc::new(e));
            }
            if !full {
                return Ok(after);
            }
        }
    }

    /// Resolves with the log's head each time it is found to have gone
    /// back; feeds then end with a resync.
    pub fn rewound(&self) -> watch::Receiver<u64> {
        self.rewound.subscribe()
    }

    /// Why the log cannot be read now, if it cannot: calls are refused with
    /// this rather than answered from what may be stale.
    pub fn unavailable(&self) -> Option<StoreError> {
        self.health.borrow().clone()
    }

    /// Changes of [`Revocations::unavailable`], for health checks.
    pub fn health(&self) -> watch::Receiver<Option<StoreError>> {
        self.health.subscribe()
    }

    /// Ends every watch stream (at shutdown), so subscribers reconnect to
    /// the next server instead of holding a draining one open.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`Revocations::close`] was called.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Records whether this process leads the background duties.
    pub fn set_leading(&self, leading: bool) {
        self.leading
            .send_if_modified(|l| std::mem::replace(l, leading) != leading);
    }

    /// Whether this process leads the background duties, and its changes:
    /// leader-only work (SSF pushes) runs while it is true.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// A live receiver; subscribe before reading the log.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RevocationEvent>> {
        self.tx.subscribe()
    }
}
