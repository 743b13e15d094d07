//! The revocation feed from the client's side: a [`Watcher`] that follows
//! `Revocations.WatchRevocations` across disconnects, resuming from the last
//! sequence it delivered.

use std::time::Duration;

use super::Client;
use crate::grpc::pb;

/// What a [`Watcher`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchItem {
    /// A revocation event.
    Event(pb::RevocationEvent),
    /// Caught up (after snapshot or replay) to this sequence.
    Synced(u64),
    /// Heartbeat with the current sequence.
    Heartbeat(u64),
    /// The stream broke; the watcher will resume after this sequence.
    Reconnecting {
        /// Cursor it resumes from (`None`: a fresh snapshot).
        after_seq: Option<u64>,
        /// Why.
        reason: String,
    },
}

/// A `WatchRevocations` subscription that survives disconnects: on any
/// retryable failure (server restart, network, "fell behind") it waits with
/// exponential backoff and resumes from the last sequence it delivered, so
/// the caller sees every event exactly once, in order. A cursor older than
/// the retained log (OUT_OF_RANGE) and authentication or permission failures
/// are returned to the caller.
#[derive(Debug)]
pub struct Watcher {
    client: Client,
    req: pb::WatchRevocationsRequest,
    cursor: Option<u64>,
    stream: Option<tonic::Streaming<pb::WatchRevocationsResponse>>,
    backoff: Duration,
    /// Highest event delivered from a snapshot that broke before `synced`:
    /// the next snapshot skips what was already delivered.
    snapshot_high: u64,
}

impl Watcher {
    const MIN_BACKOFF: Duration = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(5);

    /// A watcher for `req` over `client`'s channel.
    pub(super) fn new(client: Client, req: pb::WatchRevocationsRequest) -> Self {
        Self {
            client,
            cursor: req.after_seq,
            req,
            stream: None,
            backoff: Self::MIN_BACKOFF,
            snapshot_high: 0,
        }
    }

    /// The sequence everything up to which has been delivered.
    pub fn cursor(&self) -> Option<u64> {
        self.cursor
    }

    fn fatal(code: tonic::Code) -> bool {
        use tonic::Code::*;
        matches!(
            code,
            OutOfRange | Unauthenticated | PermissionDenied | InvalidArgument | Unimplemented
        )
    }

    /// The next item; reconnects as needed.
    pub async fn next(&mut self) -> Result<WatchItem, tonic::Status> {
        use pb::watch_revocations_response::Msg;
        loop {
            let stream = match self.stream.as_mut() {
                Some(s) => s,
                None => {
                    let mut req = self.req.clone();
                    req.after_seq = self.cursor;
                    match self.client.watch_once(req).await {
                        Ok(s) => self.stream.insert(s),
                        Err(e) if Self::fatal(e.code()) => return Err(e),
                        Err(e) => return Ok(self.broke(e.message().to_owned()).await),
                    }
                }
            };
            match stream.message().await {
                Ok(Some(m)) => match m.msg {
                    Some(Msg::Event(e)) => {
                        // Snapshot events are not contiguous: the cursor moves
                        // only once the stream is synced (`cursor` is set).
                        if self.cursor.is_some() {
                            self.cursor = Some(e.seq);
                        } else if e.seq <= self.snapshot_high {
                            continue; // re-sent by a restarted snapshot
                        } else {
                            self.snapshot_high = e.seq;
                        }
                        return Ok(WatchItem::Event(e));
                    }
                    Some(Msg::Synced(s)) => {
                        self.cursor = Some(s.seq);
                        self.backoff = Self::MIN_BACKOFF;
                        return Ok(WatchItem::Synced(s.seq));
                    }
                    Some(Msg::Heartbeat(h)) => {
                        if self.cursor.is_some() {
                            self.cursor = Some(h.seq);
                        }
                        return Ok(WatchItem::Heartbeat(h.seq));
                    }
                    None => continue,
                },
                Ok(None) => return Ok(self.broke("stream ended".into()).await),
                Err(e) if Self::fatal(e.code()) => return Err(e),
                Err(e) => return Ok(self.broke(e.message().to_owned()).await),
            }
        }
    }

    async fn broke(&mut self, reason: String) -> WatchItem {
        self.stream = None;
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(Self::MAX_BACKOFF);
        WatchItem::Reconnecting {
            after_seq: self.cursor,
            reason,
        }
    }
}
