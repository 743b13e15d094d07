//! One subscriber's view of the revocation log: snapshot or replay, then live
//! events and heartbeats, pushed into a bounded per-subscriber buffer. The
//! snapshot and the replay read the log a page ([`SNAPSHOT_PAGE`]) at a time
//! while they stream, so a watcher never holds more than a page and its
//! buffer, however many revocations are in force. The
//! live events come from the hub, which the follower feeds from the log
//! whichever replica committed them; a heartbeat carries the last sequence
//! considered, which is the log's head as this process last read it.
//!
//! The forwarder subscribes to the hub *before* reading the log and drops
//! live events it has already sent (by sequence), so the hand-over from log
//! to live has no gap and no duplicate. If the live stream skips ahead, the
//! gap is read from the log. A forwarder that lags the hub, or a subscriber
//! that lets its buffer fill, is ended with [`FeedError::Behind`] naming the
//! cursor to resume from: an event is never silently skipped.

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_stream::Stream;

use super::Revocations;
use crate::clock::now_unix;
use crate::store::{RevocationEvent, StoreError};

/// Most revocation events a snapshot or a replay reads from the store at
/// once: what one watcher holds in memory, whatever the size of the log.
pub const SNAPSHOT_PAGE: u32 = 512;

/// What a subscriber wants to see. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this trust domain.
    pub trust_domain: Option<String>,
    /// Only credentials naming this SPIFFE ID.
    pub spiffe_id: Option<String>,
    /// Only this task id.
    pub task_id: Option<String>,
}

impl Filter {
    /// Whether `e` passes.
    pub fn matches(&self, e: &RevocationEvent) -> bool {
        self.trust_domain
            .as_ref()
            .is_none_or(|t| *t == e.trust_domain)
            && self.spiffe_id.as_ref().is_none_or(|s| *s == e.spiffe_id)
            && self.task_id.as_ref().is_none_or(|t| *t == e.task_id)
    }
}

/// A message of the feed.
#[derive(Debug, Clone)]
pub enum FeedItem {
    /// A revocation.
    Event(Arc<RevocationEvent>),
    /// Snapshot or replay complete, caught up to this sequence.
    Synced(u64),
    /// Heartbeat: caught up to this sequence, at this time.
    Heartbeat(u64, i64),
}

/// Why a feed ended.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The cursor is older than the retained log.
    #[error(
        "cursor {cursor} is older than the retained log (pruned through {pruned}): resync by watching without a cursor"
    )]
    Resync {
        /// The cursor given.
        cursor: u64,
        /// The highest pruned sequence.
        pruned: u64,
    },
    /// The cursor is ahead of the log (e.g. the database was restored).
    #[error(
        "cursor {cursor} is ahead of the log (current sequence {current}): resync by watching without a cursor"
    )]
    Ahead {
        /// The cursor given.
        cursor: u64,
        /// The current sequence.
        current: u64,
    },
    /// The subscriber fell behind its buffer, or the forwarder lagged the hub.
    #[error("subscriber fell behind the feed; resume with after_seq={resume_from}")]
    Behind {
        /// Everything up to this sequence was delivered.
        resume_from: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Feed settings.
#[derive(Debug, Clone, Copy)]
pub struct FeedOptions {
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Per-subscriber buffer, in messages.
    pub buffer: usize,
}

/// The feed of one subscriber: items, then (if the feed was cut) the error
/// that ended it.
#[derive(Debug)]
pub struct FeedStream {
    rx: mpsc::Receiver<FeedItem>,
    err: Option<oneshot::Receiver<FeedError>>,
}

impl Stream for FeedStream {
    type Item = Result<FeedItem, FeedError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(Ok(item))),
            Poll::Pending => Poll::Pending,
            // The forwarder is gone; it sent its error (if any) before that.
            Poll::Ready(None) => match self.err.take() {
                None => Poll::Ready(None),
                Some(mut err) => match Pin::new(&mut err).poll(cx) {
                    Poll::Ready(Ok(e)) => Poll::Ready(Some(Err(e))),
                    Poll::Ready(Err(_)) => Poll::Ready(None),
                    Poll::Pending => {
                        self.err = Some(err);
                        Poll::Pending
                    }
                },
            },
        }
    }
}

/// Starts a forwarder for one subscriber.
pub fn watch(
    revs: Arc<Revocations>,
    after: Option<u64>,
    filter: Filter,
    opts: FeedOptions,
) -> FeedStream {
    let (tx, rx) = mpsc::channel(opts.buffer);
    let (err_tx, err_rx) = oneshot::channel();
    let hub = revs.subscribe();
    let closing = revs.closing();
    tokio::spawn(async move {
        let mut fwd = Forwarder {
            revs,
            filter,
            tx,
            closing,
            last: 0,
        };
        if let Err(e) = fwd.run(hub, after, opts.heartbeat).await {
            let _ = err_tx.send(e);
        }
    });
    FeedStream {
        rx,
        err: Some(err_rx),
    }
}

struct Forwarder {
    revs: Arc<Revocations>,
    filter: Filter,
    tx: mpsc::Sender<FeedItem>,
    closing: watch::Receiver<bool>,
    /// Every event up to here has been considered (sent or filtered out).
    last: u64,
}

/// Why [`Forwarder::send`] could not send.
enum Stop {
    /// The subscriber went away.
    Gone,
    /// It must be cut off.
    Feed(FeedError),
}

impl From<FeedError> for Stop {
    fn from(e: FeedError) -> Self {
        Stop::Feed(e)
    }
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Stop::Feed(e.into())
    }
}

impl Forwarder {
    async fn run(
        &mut self,
        hub: broadcast::Receiver<Arc<RevocationEvent>>,
        after: Option<u64>,
        heartbeat: Duration,
    ) -> Result<(), FeedError> {
        match self.run_inner(hub, after, heartbeat).await {
            Ok(()) | Err(Stop::Gone) => Ok(()),
            Err(Stop::Feed(e)) => Err(e),
        }
    }

    /// Queues `item`. From the log (snapshot, replay: `paced`) it waits for
    /// room, since the subscriber sets the pace of reading the log. Live, it
    /// must keep up with the hub, so a full buffer cuts the subscriber off
    /// with the cursor to resume from.
    async fn send(&mut self, item: FeedItem, paced: bool) -> Result<(), Stop> {
        if paced {
            // A slow reader must not hold a shutting-down server open.
            let mut closing = self.closing.clone();
            return tokio::select! {
                r = self.tx.send(item) => r.map_err(|_| Stop::Gone),
                _ = async { closing.wait_for(|c| *c).await.map(|_| ()) } => Err(Stop::Gone),
            };
        }
        match self.tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(Stop::Feed(FeedError::Behind {
                resume_from: self.last,
            })),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Stop::Gone),
        }
    }

    async fn consider(&mut self, e: Arc<RevocationEvent>, paced: bool) -> Result<(), Stop> {
        if self.filter.matches(&e) {
            // `last` moves only once the event is queued, so a cut-off
            // subscriber resumes at the first event it did not get.
            self.send(FeedItem::Event(e.clone()), paced).await?;
        }
        self.last = e.seq;
        Ok(())
    }

    /// Reads the log after `self.last` up to the current end, in pages.
    async fn replay(&mut self) -> Result<(), Stop> {
        let store = self.revs.store().clone();
        loop {
            let page = store.events_after(self.last, SNAPSHOT_PAGE).await?;
            if page.is_empty() {
                // Empty because caught up, or because pruning removed what
                // follows the cursor since it was checked: tell them apart.
                let pruned = store.pruned_through().await?;
                if pruned > self.last {
                    return Err(FeedError::Resync {
                        cursor: self.last,
                        pruned,
                    }
                    .into());
                }
                return Ok(());
            }
            for e in page {
                if e.seq != self.last + 1 {
                    // Pruned under our feet.
                    return Err(FeedError::Resync {
                        cursor: self.last,
                        pruned: e.seq - 1,
                    }
                    .into());
                }
                self.consider(Arc::new(e), true).await?;
            }
        }
    }

    async fn run_inner(
        &mut self,
        mut hub: broadcast::Receiver<Arc<RevocationEvent>>,
        after: Option<u64>,
        heartbeat: Duration,
    ) -> Result<(), Stop> {
        let store = self.revs.store().clone();
        match after {
            None => {
                // The snapshot is read a page at a time, each page sent
                // before the next is read, so a watcher holds one page in
                // memory however many revocations are in force. It covers
                // the log through the sequence read first; anything
                // committed since is live, or read from the log by the
                // loop below when the hub skips ahead.
                let current = store.current_seq().await?;
                let now = now_unix();
                let mut after = 0;
                loop {
                    let page = store
                        .unexpired_events(now, after, current, SNAPSHOT_PAGE)
                        .await?;
                    let full = page.len() as u32 == SNAPSHOT_PAGE;
                    for e in page {
                        after = e.seq;
                        if self.filter.matches(&e) {
                            self.send(FeedItem::Event(Arc::new(e)), true).await?;
                        }
                    }
                    if !full {
                        break;
                    }
                }
                self.last = current;
            }
            Some(cursor) => {
                let pruned = store.pruned_through().await?;
                if cursor < pruned {
                    return Err(FeedError::Resync { cursor, pruned }.into());
                }
                let current = store.current_seq().await?;
                if cursor > current {
                    return Err(FeedError::Ahead { cursor, current }.into());
                }
                self.last = cursor;
                self.replay().await?;
            }
        }
        self.send(FeedItem::Synced(self.last), true).await?;

        let mut closing = self.closing.clone();
        let mut rewound = self.revs.rewound();
        rewound.mark_unchanged();
        let mut tick = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate
        loop {
            tokio::select! {
                msg = hub.recv() => match msg {
                    Ok(e) if e.seq <= self.last => {}
                    Ok(e) if e.seq == self.last + 1 => self.consider(e, false).await?,
                    Ok(e) => {
                        // Something between was committed but not seen live:
                        // read it from the log (which includes `e`).
                        let _ = e;
                        self.replay().await?;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Err(FeedError::Behind { resume_from: self.last }.into());
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                _ = tick.tick() => {
                    // A heartbeat vouches that nothing past `last` was
                    // committed: not while the log cannot be read (another
                    // replica may be revoking). The subscriber reconnects,
                    // to a replica that can read it.
                    if let Some(e) = self.revs.unavailable() {
                        return Err(FeedError::Store(e).into());
                    }
                    self.send(FeedItem::Heartbeat(self.last, now_unix()), false).await?
                }
                _ = self.tx.closed() => return Err(Stop::Gone),
                // The log went back: numbers this feed has passed will be
                // given out again, so the subscriber must start afresh.
                Ok(()) = rewound.changed() => {
                    let current = *rewound.borrow_and_update();
                    return Err(FeedError::Ahead { cursor: self.last, current }.into());
                }
                // Server shutdown: end the stream so the subscriber resumes
                // elsewhere from its cursor.
                // `wait_for` also sees a close that happened before this
                // stream started.
                _ = async { closing.wait_for(|c| *c).await.map(|_| ()) } => return Ok(()),
            }
        }
    }
}
