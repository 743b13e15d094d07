//! The feed follower: one session at a time with one issuer replica,
//! failing over to the next when it is lost, each session resuming from the
//! cursor (a snapshot only when there is none, or the issuer no longer
//! holds it).
//!
//! Every event goes into the deny set first (enforced from that moment),
//! then to the state file; once a batch is synced to disk the cursor it
//! reaches is acknowledged to the issuer under the subscriber name, so the
//! issuer's delivery evidence says what this enforcer can no longer lose.
//! Writes are batched (a replay of thousands of events is a few syncs, not
//! thousands); a disk that refuses a write stops the acknowledgements, never
//! the enforcement.
//!
//! The feed is current ("fresh") from the moment a session is caught up
//! (`synced`) and for `max_staleness` after each event or heartbeat; a
//! session's replay does not count until it has caught up.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::time::sleep;

use super::deny::DenySet;
use super::keys::KeySet;
use super::state::{DirLock, State, StateError};
use super::{EnforceConfig, Enforcer, Shared};
use crate::client::{Client, IdentitySource, WatchItem};
use crate::grpc::pb;

/// Pending deny entries are written at most this long after the first.
const FLUSH_AFTER: Duration = Duration::from_millis(50);
/// ... or when this many are pending.
const FLUSH_ENTRIES: usize = 4096;
/// A heartbeat's cursor is written (and acknowledged) at most this often.
const IDLE_CURSOR_EVERY: Duration = Duration::from_secs(10);
/// Expired deny entries are dropped this often.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Waits between sessions grow to this.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Follows the feed for an [`Enforcer`]; [`Follower::run`] never returns.
#[derive(Debug)]
pub struct Follower {
    shared: Arc<Shared>,
    issuers: Vec<String>,
    identity: IdentitySource,
    issuer_id: Option<String>,
    subscriber: String,
    leeway: i64,
    state: Arc<Mutex<State>>,
    /// Held for the follower's life.
    _lock: DirLock,
    /// Every event up to it is in the state file.
    cursor: Option<u64>,
    /// A write failed: the file may lack entries (or end mid-line), so the
    /// next write rewrites it whole from the deny set.
    must_rewrite: bool,
    /// A session that hears nothing (no event, no heartbeat) for this long
    /// is given up for the next replica.
    silence: Duration,
}

/// How a session ended.
enum Ended {
    /// The issuer could not be reached or the stream broke: try the next.
    Lost(String),
    /// The issuer refused (authentication, permission): try the next, but
    /// say so loudly.
    Refused(tonic::Status),
}

/// What is waiting to be written.
#[derive(Default)]
struct Pending {
    entries: Vec<(String, i64)>,
    since: Option<Instant>,
    cursor_dirty: bool,
}

impl Follower {
    /// Loads the state of `cfg.state_dir` into a new [`Enforcer`] and the
    /// follower that keeps it current.
    pub fn new(cfg: &EnforceConfig) -> Result<(Enforcer, Self), StateError> {
        let leeway = cfg.leeway.as_secs() as i64;
        let lock = DirLock::take(&cfg.state_dir)?;
        let loaded = match State::load(&cfg.state_dir) {
            Ok(l) => l,
            Err(e @ StateError::Corrupt { .. }) => {
                // Never trust a cursor from a damaged file: start over from
                // a snapshot, which holds every revocation still in force,
                // and keep the damaged file for a look.
                let aside = State::set_aside(&cfg.state_dir);
                tracing::warn!(error = %e, kept = %aside.display(), "enforcer state unreadable; starting from a snapshot");
                Default::default()
            }
            Err(e) => return Err(e),
        };
        let mut deny = DenySet::new();
        for (id, until) in &loaded.entries {
            deny.insert(id, *until);
        }
        deny.expire(crate::clock::now_unix());
        let state = State::rewrite(&cfg.state_dir, &deny, loaded.cursor)?;
        tracing::info!(
            entries = deny.len(),
            cursor = loaded
                .cursor
                .map(|c| c.to_string())
                .unwrap_or_else(|| "none".into()),
            "enforcer state loaded"
        );
        let enforcer = Enforcer::new(cfg, deny);
        enforcer.shared.session.lock().expect("session lock").1 = loaded.cursor;
        let follower = Self {
            shared: enforcer.shared.clone(),
            issuers: cfg.issuers.clone(),
            identity: cfg.identity(),
            issuer_id: cfg.issuer_id.clone(),
            subscriber: cfg.subscriber.clone(),
            leeway,
            state: Arc::new(Mutex::new(state)),
            _lock: lock,
            cursor: loaded.cursor,
            must_rewrite: false,
            silence: cfg.max_staleness,
        };
        Ok((enforcer, follower))
    }

    /// Follows the feed, across issuers and failures, forever.
    pub async fn run(mut self) {
        let sweeper = tokio::spawn(sweep(self.shared.clone()));
        let _sweeper = AbortOnDrop(sweeper);
        let mut backoff = Duration::from_millis(100);
        for i in 0.. {
            let addr = self.issuers[i % self.issuers.len()].clone();
            let started = Instant::now();
            match self.session(&addr).await {
                Ended::Lost(reason) => {
                    tracing::warn!(issuer = %addr, %reason, "revocation feed lost")
                }
                Ended::Refused(s) => tracing::error!(
                    issuer = %addr,
                    code = crate::grpc::code_name(s.code()),
                    message = s.message(),
                    "issuer refused the enforcer"
                ),
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(100);
            }
            sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn session(&mut self, addr: &str) -> Ended {
        let client =
            match Client::connect_source(addr, &self.identity, self.issuer_id.clone()).await {
                Ok(c) => c,
                Err(e) => return Ended::Lost(e.to_string()),
            };
        if let Err(e) = fetch_keys(&self.shared, client.clone()).await {
            return e;
        }
        let _keys = AbortOnDrop(tokio::spawn(refresh_keys(
            self.shared.clone(),
            client.clone(),
        )));
        let mut ack_client = client.clone();
        self.shared.session.lock().expect("session lock").0 = Some(self.cursor);
        let mut watcher = client.watcher(pb::WatchRevocationsRequest {
            after_seq: self.cursor,
            subscriber: self.subscriber.clone(),
            ..Default::default()
        });
        // The watcher is read in a task of its own, so the timers below
        // never cancel it mid-step (a reconnect it made by itself would
        // otherwise go unseen); it ends with the first item that ends the
        // session.
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let _reader = AbortOnDrop(tokio::spawn(async move {
            loop {
                let item = watcher.next().await;
                let last = !matches!(
                    item,
                    Ok(WatchItem::Event(_) | WatchItem::Synced(_) | WatchItem::Heartbeat(_))
                );
                if tx.send((item, watcher.cursor())).await.is_err() || last {
                    break;
                }
            }
        }));
        let mut cursor_now = self.cursor;
        let mut in_sync = false;
        let mut pending = Pending::default();
        let mut last_written = Instant::now();
        let mut last_heard = Instant::now();
        let mut acked: Option<u64> = None;
        loop {
            let flush_at = pending.since.map(|t| t + FLUSH_AFTER);
            let silent_at = last_heard + self.silence;
            let got = tokio::select! {
                got = rx.recv() => got,
                () = sleep_until(flush_at) => {
                    self.flush(&mut pending, cursor_now).await;
                    last_written = Instant::now();
                    self.ack(&mut ack_client, &mut acked).await;
                    continue;
                }
                () = tokio::time::sleep_until(silent_at.into()) => {
                    // A replica that stalls without closing the connection
                    // sends nothing; the next one may.
                    self.flush(&mut pending, cursor_now).await;
                    return Ended::Lost(format!(
                        "no event or heartbeat within {}",
                        humantime::format_duration(self.silence)
                    ));
                }
            };
            let Some((item, cursor)) = got else {
                self.flush(&mut pending, cursor_now).await;
                return Ended::Lost("the feed reader ended".into());
            };
            last_heard = Instant::now();
            cursor_now = cursor;
            match item {
                Ok(WatchItem::Event(e)) => {
                    let until = e.expires_at.saturating_add(self.leeway);
                    {
                        let mut deny = self.shared.deny.write().expect("deny set lock");
                        for id in &e.credential_ids {
                            deny.insert(id, until);
                        }
                    }
                    self.shared.applied.send_replace(e.seq);
                    self.shared.stats.events.fetch_add(1, Ordering::Relaxed);
                    if in_sync {
                        self.fresh();
                    }
                    pending
                        .entries
                        .extend(e.credential_ids.iter().map(|id| (id.clone(), until)));
                    pending.since.get_or_insert_with(Instant::now);
                    pending.cursor_dirty = true;
                    if pending.entries.len() >= FLUSH_ENTRIES {
                        self.flush(&mut pending, cursor_now).await;
                        last_written = Instant::now();
                    }
                }
                Ok(WatchItem::Synced(seq)) => {
                    in_sync = true;
                    self.fresh();
                    tracing::info!(issuer = %addr, seq, "revocation feed caught up");
                    pending.cursor_dirty = true;
                    self.flush(&mut pending, Some(seq)).await;
                    last_written = Instant::now();
                    self.ack(&mut ack_client, &mut acked).await;
                }
                Ok(WatchItem::Heartbeat(_)) => {
                    if in_sync {
                        self.fresh();
                    }
                    if cursor_now != self.cursor && last_written.elapsed() >= IDLE_CURSOR_EVERY {
                        pending.cursor_dirty = true;
                        self.flush(&mut pending, cursor_now).await;
                        last_written = Instant::now();
                        self.ack(&mut ack_client, &mut acked).await;
                    }
                }
                Ok(WatchItem::Reconnecting { reason, .. }) => {
                    self.flush(&mut pending, cursor_now).await;
                    return Ended::Lost(reason);
                }
                Err(s) if s.code() == tonic::Code::OutOfRange => {
                    // The issuer no longer holds the cursor: start over
                    // from a snapshot (the deny set keeps what it has).
                    tracing::warn!(issuer = %addr, "cursor no longer retained; resyncing from a snapshot");
                    self.flush(&mut pending, None).await;
                    self.cursor = None;
                    return Ended::Lost("cursor older than the issuer's log (resync)".into());
                }
                Err(s) => {
                    self.flush(&mut pending, cursor_now).await;
                    return Ended::Refused(s);
                }
            }
        }
    }

    /// The feed is current as of now.
    fn fresh(&self) {
        let ms = self.shared.epoch.elapsed().as_millis().max(1) as u64;
        self.shared.fresh_at_ms.store(ms, Ordering::Release);
    }

    /// Writes what is pending with `cursor` and syncs it; on success the
    /// cursor is the follower's (and will be acknowledged).
    async fn flush(&mut self, pending: &mut Pending, cursor: Option<u64>) {
        if pending.entries.is_empty() && !pending.cursor_dirty {
            return;
        }
        let entries = std::mem::take(&mut pending.entries);
        pending.since = None;
        pending.cursor_dirty = false;
        let state = self.state.clone();
        let (live, whole) = {
            let deny = self.shared.deny.read().expect("deny set lock");
            let live = deny.len();
            let wants =
                self.must_rewrite || self.state.lock().expect("state lock").wants_rewrite(live);
            // Copied under the lock, written outside it: checks read the
            // deny set while the file is synced.
            (live, wants.then(|| deny.entries().collect::<Vec<_>>()))
        };
        let result = tokio::task::spawn_blocking(move || {
            let mut st = state.lock().expect("state lock");
            match whole {
                // The deny set holds every entry ever received (that has not
                // expired), so it repairs whatever a failed write left out.
                Some(all) => *st = State::rewrite_entries(st.dir(), &all, cursor)?,
                None => st.append(&entries, cursor)?,
            }
            Ok::<_, StateError>(())
        })
        .await
        .expect("state writer panicked");
        match result {
            Ok(()) => {
                self.must_rewrite = false;
                if cursor.is_some() {
                    self.cursor = cursor;
                }
                self.shared.session.lock().expect("session lock").1 = self.cursor;
                tracing::trace!(live, "enforcer state written");
            }
            Err(e) => {
                // Enforced in memory, not durable: not acknowledged, and the
                // next write rewrites the whole file, so nothing received
                // is left out of it.
                self.must_rewrite = true;
                tracing::error!(error = %e, "cannot write the enforcer state; not acknowledging");
            }
        }
    }

    /// Acknowledges the durable cursor if it moved.
    async fn ack(&self, client: &mut Client, acked: &mut Option<u64>) {
        let Some(seq) = self.cursor else { return };
        if *acked == Some(seq) {
            return;
        }
        match tokio::time::timeout(Duration::from_secs(5), client.ack(&self.subscriber, seq)).await
        {
            Ok(Ok(n)) => {
                *acked = Some(seq);
                self.shared.stats.acked_seq.store(n, Ordering::Relaxed);
            }
            Ok(Err(s)) => tracing::warn!(
                subscriber = %self.subscriber,
                code = crate::grpc::code_name(s.code()),
                message = s.message(),
                "acknowledgement refused"
            ),
            Err(_) => tracing::warn!(subscriber = %self.subscriber, "acknowledgement timed out"),
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Fetches the bundle's keys into `shared`.
async fn fetch_keys(shared: &Shared, mut client: Client) -> Result<(), Ended> {
    let b = match tokio::time::timeout(Duration::from_secs(10), client.trust_bundle()).await {
        Ok(Ok(b)) => b,
        Ok(Err(s)) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown) => {
            return Err(Ended::Lost(s.message().to_owned()));
        }
        Ok(Err(s)) => return Err(Ended::Refused(s)),
        Err(_) => return Err(Ended::Lost("no trust bundle within 10s".into())),
    };
    match KeySet::from_bundle(&b) {
        Ok((set, skipped)) => {
            for s in skipped {
                tracing::warn!(skipped = %s, "JWT key not used");
            }
            *shared.keys_fetched.lock().expect("keys lock") = Some(Instant::now());
            let changed = {
                let held = shared.keys.borrow();
                held.sequence != set.sequence || held.is_empty()
            };
            if changed {
                // A token verified with a key that is gone must not pass
                // from the cache.
                let mut cache = shared.verified.lock().expect("token cache lock");
                cache.clear();
                shared.keys_generation.fetch_add(1, Ordering::AcqRel);
                drop(cache);
                tracing::info!(keys = set.len(), sequence = set.sequence, iss = %set.iss, "JWT keys loaded");
            }
            shared.keys.send_replace(Arc::new(set));
            Ok(())
        }
        Err(e) => Err(Ended::Lost(e)),
    }
}

/// Fetches the keys again on the bundle's hint, and when asked.
async fn refresh_keys(shared: Arc<Shared>, client: Client) {
    loop {
        let every = shared.keys.borrow().refresh;
        tokio::select! {
            () = sleep(every) => {}
            () = shared.refresh_keys.notified() => {}
        }
        if let Err(e) = fetch_keys(&shared, client.clone()).await {
            tracing::warn!(reason = %e, "JWT key refresh failed; keeping the keys held");
        }
    }
}

/// Drops expired deny entries.
async fn sweep(shared: Arc<Shared>) {
    loop {
        sleep(SWEEP_EVERY).await;
        let n = shared
            .deny
            .write()
            .expect("deny set lock")
            .expire(crate::clock::now_unix());
        if n > 0 {
            tracing::debug!(expired = n, "deny entries past their expiry dropped");
        }
    }
}

pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Lost(r) => write!(f, "lost: {r}"),
            Ended::Refused(s) => write!(f, "refused: {}", s.message()),
        }
    }
}
