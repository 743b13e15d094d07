//! Revocation: the ordered log, the live hub, the watch feed, delivery
//! evidence, the deadline reaper and the CRL.
//!
//! Every revocation goes through [`Revocations::revoke`], which holds one
//! lock across "commit to the store" and "publish to the hub". Commit order,
//! sequence order and publish order are therefore the same, and a watcher
//! that subscribed before reading the log sees every event exactly once.

pub mod delivery;
pub mod feed;
pub mod reaper;
mod set;

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::jwt::JwtSigner;
use crate::store::{RevocationEvent, RevokeRequest, Store, StoreError};

pub use set::set_claims;

/// Capacity of the hub's broadcast ring. A forwarder that falls this far
/// behind is cut off (and resumes from the log), never silently skipped.
pub const HUB_CAPACITY: usize = 4096;

/// The revocation log's writer and live hub.
pub struct Revocations {
    store: Arc<dyn Store>,
    signer: Arc<JwtSigner>,
    iss: String,
    tx: broadcast::Sender<Arc<RevocationEvent>>,
    write: tokio::sync::Mutex<()>,
    closing: tokio::sync::watch::Sender<bool>,
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
            tx,
            write: tokio::sync::Mutex::new(()),
            closing: tokio::sync::watch::channel(false).0,
        }
    }

    /// The store behind the log.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Commits a revocation and publishes its events, in order. Returns the
    /// events written (none when nothing in scope was still active).
    ///
    /// The work runs in its own task: a caller that goes away mid-call (a
    /// cancelled RPC) cannot leave an event committed but never published.
    pub async fn revoke(
        self: &Arc<Self>,
        req: &RevokeRequest,
    ) -> Result<Vec<RevocationEvent>, StoreError> {
        let this = self.clone();
        let req = req.clone();
        tokio::spawn(async move { this.commit_and_publish(&req).await })
            .await
            .map_err(|e| StoreError::Corrupt(format!("revocation task failed: {e}")))?
    }

    async fn commit_and_publish(
        &self,
        req: &RevokeRequest,
    ) -> Result<Vec<RevocationEvent>, StoreError> {
        let _order = self.write.lock().await;
        let (signer, iss) = (self.signer.clone(), self.iss.clone());
        let sign: crate::store::SetSigner = Arc::new(move |e: &RevocationEvent| {
            signer
                .sign_set(&set_claims(&iss, e))
                .map_err(|e| e.to_string())
        });
        let events = self.store.revoke(req, sign).await?;
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
            // No receiver is fine: nobody is watching.
            let _ = self.tx.send(Arc::new(e.clone()));
        }
        Ok(events)
    }

    /// Ends every watch stream (at shutdown), so subscribers reconnect to
    /// the next server instead of holding a draining one open.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`Revocations::close`] was called.
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// A live receiver; subscribe before reading the log.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RevocationEvent>> {
        self.tx.subscribe()
    }
}
