//! Enforcement: `taskmint enforce`, the sidecar that makes a revocation
//! refuse the next request, and the same [`Enforcer`] as a library for
//! services that check tokens in process.
//!
//! - [`config`]: the enforcer's TOML file.
//! - [`follower`]: follows an issuer's revocation feed (failing over
//!   between replicas), applies every event to the deny set, persists it
//!   with the cursor, acknowledges what it persisted, keeps the JWT keys
//!   fresh, and keeps the clock that says how stale the feed is.
//! - [`deny`]: the deny set, compact, until each credential's expiry.
//! - [`state`]: the deny set and cursor on disk, so a restart resumes.
//! - [`keys`]: the issuer's JWT keys, by `kid`.
//! - [`verify`]: the decision on a bearer JWT-SVID or a per-task
//!   X.509-SVID.
//! - [`authz`]: Envoy's ext_authz v3 `Check` on top of it, and the
//!   sidecar's gRPC server (with `grpc.health.v1`).
//! - [`ops`]: its metrics and probes on the optional `ops_listen`.
//!
//! The enforcer fails closed: until it has caught up with the feed, and
//! whenever it has heard nothing from it (no event, no heartbeat) for
//! `max_staleness`, every check is refused as unavailable, unless the
//! configuration names the insecure opposite.

pub mod authz;
pub mod config;
pub mod deny;
pub mod follower;
pub mod keys;
pub mod ops;
pub mod state;
pub mod verify;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sha2::Digest as _;
use tokio::sync::{Notify, watch};

pub use config::EnforceConfig;
pub use verify::{Allowed, Denial};

use deny::DenySet;
use keys::KeySet;
use verify::{Rules, VerifiedToken};

/// Why the enforcer could not start.
#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    /// The state directory could not be read or written.
    #[error("enforcer state: {0}")]
    State(#[from] state::StateError),
    /// The ext_authz listener could not be bound or served.
    #[error("ext_authz listener `{addr}`: {reason}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
}

/// How current the enforcer's view of revocations is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Caught up with the feed, heard from it within `max_staleness`.
    Fresh,
    /// Not caught up since start, or silent for longer than
    /// `max_staleness`: `since` is how long ago it last was fresh.
    Stale {
        /// `None`: never caught up since start.
        since: Option<Duration>,
    },
}

/// Counts since start, for logs, tests and the benchmark.
#[derive(Debug, Default)]
pub struct Stats {
    /// Checks allowed.
    pub allowed: AtomicU64,
    /// Checks refused: 401, 403, 503.
    pub unauthenticated: AtomicU64,
    /// See `unauthenticated`.
    pub forbidden: AtomicU64,
    /// See `unauthenticated`.
    pub unavailable: AtomicU64,
    /// Revocation events applied.
    pub events: AtomicU64,
    /// Highest sequence acknowledged to the issuer.
    pub acked_seq: AtomicU64,
}

/// What the enforcer knows, shared by the follower and the checks.
#[derive(Debug)]
struct Shared {
    rules: Rules,
    max_staleness: Duration,
    fail_open: bool,
    deny: RwLock<DenySet>,
    keys: watch::Sender<Arc<KeySet>>,
    /// Asks the follower to fetch the keys again (a token named an unknown
    /// `kid`).
    refresh_keys: Notify,
    /// When the keys were last fetched, or a fetch was asked for.
    keys_fetched: Mutex<Option<Instant>>,
    /// Raised (under the token cache's lock) whenever the keys change, so
    /// a token verified with the old keys is not cached after the clear.
    keys_generation: AtomicU64,
    /// Milliseconds after `epoch` when the feed was last known current;
    /// 0: never since start.
    fresh_at_ms: AtomicU64,
    epoch: Instant,
    /// The cursor the last session started from (`None`: a snapshot), and
    /// the cursor now.
    session: Mutex<(Option<Option<u64>>, Option<u64>)>,
    /// The sequence of the last event in the deny set.
    applied: watch::Sender<u64>,
    /// Tokens whose signature and claims verified, by SHA-256 of the token:
    /// a workload presents one token for many requests, and the signature
    /// is most of a check's cost. Emptied when the keys change.
    verified: Mutex<HashMap<[u8; 32], Arc<VerifiedToken>>>,
    cache_entries: usize,
    stats: Stats,
}

/// A token naming an unknown `kid` makes the enforcer fetch the bundle
/// again at most this often (so random `kid`s cannot make it hammer the
/// issuer), and waits this long for the answer.
const KID_REFRESH_EVERY: Duration = Duration::from_secs(5);
const KID_REFRESH_WAIT: Duration = Duration::from_secs(2);

/// The enforcer: checks against the deny set and keys the follower keeps.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Enforcer {
    shared: Arc<Shared>,
}

impl Enforcer {
    /// Loads the state `cfg.state_dir` holds and starts following the feed
    /// in the background (until the returned handle is aborted or the
    /// runtime ends). Checks are refused as unavailable until the follower
    /// has caught up.
    pub fn start(cfg: &EnforceConfig) -> Result<(Self, tokio::task::JoinHandle<()>), EnforceError> {
        let (enforcer, follower) = follower::Follower::new(cfg)?;
        let handle = tokio::spawn(follower.run());
        Ok((enforcer, handle))
    }

    fn new(cfg: &EnforceConfig, deny: DenySet) -> Self {
        Self {
            shared: Arc::new(Shared {
                rules: Rules {
                    audiences: cfg.audiences.clone(),
                    leeway: cfg.leeway.as_secs(),
                    require_cnf: cfg.require_cnf,
                },
                max_staleness: cfg.max_staleness,
                fail_open: cfg.insecure_fail_open_when_stale,
                deny: RwLock::new(deny),
                keys: watch::channel(Arc::new(KeySet::default())).0,
                refresh_keys: Notify::new(),
                keys_fetched: Mutex::new(None),
                keys_generation: AtomicU64::new(0),
                fresh_at_ms: AtomicU64::new(0),
                epoch: Instant::now(),
                session: Mutex::new((None, None)),
                applied: watch::channel(0).0,
                verified: Mutex::new(HashMap::new()),
                cache_entries: cfg.verified_token_cache,
                stats: Stats::default(),
            }),
        }
    }

    /// How current the view of revocations is.
    pub fn freshness(&self) -> Freshness {
        let at = self.shared.fresh_at_ms.load(Ordering::Acquire);
        if at == 0 {
            return Freshness::Stale { since: None };
        }
        let age = self
            .shared
            .epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(at));
        if age > self.shared.max_staleness {
            Freshness::Stale { since: Some(age) }
        } else {
            Freshness::Fresh
        }
    }

    /// Refused as unavailable when stale (unless configured to fail open).
    fn gate(&self) -> Result<(), Denial> {
        match self.freshness() {
            Freshness::Fresh => Ok(()),
            Freshness::Stale { .. } if self.shared.fail_open => Ok(()),
            Freshness::Stale { .. } => Err(Denial::Unavailable("revocation feed stale".into())),
        }
    }

    /// Decides on a bearer JWT-SVID presented over a connection whose peer
    /// certificate (DER) is `peer`, if known.
    pub async fn check_bearer(&self, token: &str, peer: Option<&[u8]>) -> Result<Allowed, Denial> {
        let out = self.bearer(token, peer).await;
        self.count(&out);
        out
    }

    async fn bearer(&self, token: &str, peer: Option<&[u8]>) -> Result<Allowed, Denial> {
        self.gate()?;
        let now = crate::clock::now_unix();
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let cached = self
            .shared
            .verified
            .lock()
            .expect("token cache lock")
            .get(&digest)
            .cloned();
        let verified = match cached {
            Some(v) => v,
            None => {
                let generation = self.shared.keys_generation.load(Ordering::Acquire);
                let mut keys = self.shared.keys.borrow().clone();
                if let Some(kid) = verify::kid_of(token)
                    && keys.get(&kid).is_none()
                    && self.refresh_keys().await
                {
                    keys = self.shared.keys.borrow().clone();
                }
                let v = Arc::new(self.shared.rules.verify(token, &keys)?);
                self.remember(digest, v.clone(), now, generation);
                v
            }
        };
        let deny = self.shared.deny.read().expect("deny set lock");
        self.shared.rules.admit(&verified, peer, now, &deny)
    }

    /// Caches a verified token; when the cache is full, drops what expired,
    /// and if that is not enough, everything.
    fn remember(&self, digest: [u8; 32], v: Arc<VerifiedToken>, now: i64, generation: u64) {
        let cap = self.shared.cache_entries;
        if cap == 0 {
            return;
        }
        let mut cache = self.shared.verified.lock().expect("token cache lock");
        if self.shared.keys_generation.load(Ordering::Acquire) != generation {
            return;
        }
        if cache.len() >= cap {
            let leeway = self.shared.rules.leeway as i64;
            cache.retain(|_, t| !t.expired(now, leeway));
            if cache.len() >= cap {
                cache.clear();
            }
        }
        cache.insert(digest, v);
    }

    /// Asks for the keys again if they were not fetched within
    /// [`KID_REFRESH_EVERY`], and waits for them; whether new keys came.
    async fn refresh_keys(&self) -> bool {
        {
            // Counted when asked, not when fetched: an issuer that fails to
            // answer is not asked again at every unknown `kid`.
            let mut fetched = self.shared.keys_fetched.lock().expect("keys lock");
            if fetched.is_some_and(|t| t.elapsed() < KID_REFRESH_EVERY) {
                return false;
            }
            *fetched = Some(Instant::now());
        }
        let mut rx = self.shared.keys.subscribe();
        rx.mark_unchanged();
        self.shared.refresh_keys.notify_one();
        matches!(
            tokio::time::timeout(KID_REFRESH_WAIT, rx.changed()).await,
            Ok(Ok(()))
        )
    }

    /// Decides on a request without a bearer token from the peer's per-task
    /// X.509-SVID (DER).
    pub fn check_certificate(&self, der: &[u8]) -> Result<Allowed, Denial> {
        let out = self.certificate(der);
        self.count(&out);
        out
    }

    fn certificate(&self, der: &[u8]) -> Result<Allowed, Denial> {
        self.gate()?;
        let keys = self.shared.keys.borrow().clone();
        let deny = self.shared.deny.read().expect("deny set lock");
        self.shared
            .rules
            .certificate(der, crate::clock::now_unix(), &deny, &keys.trust_domain)
    }

    fn count(&self, out: &Result<Allowed, Denial>) {
        let s = &self.shared.stats;
        let c = match out {
            Ok(_) => &s.allowed,
            Err(Denial::Unauthenticated(_)) => &s.unauthenticated,
            Err(Denial::Forbidden(_)) => &s.forbidden,
            Err(Denial::Unavailable(_)) => &s.unavailable,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether `id` (a `jti` or serial, hex) is denied.
    pub fn is_denied(&self, id: &str) -> bool {
        self.shared.deny.read().expect("deny set lock").contains(id)
    }

    /// Entries in the deny set.
    pub fn deny_len(&self) -> usize {
        self.shared.deny.read().expect("deny set lock").len()
    }

    /// The feed cursor: every event up to it is applied.
    pub fn cursor(&self) -> Option<u64> {
        self.shared.session.lock().expect("session lock").1
    }

    /// The cursor the current (or last) session with an issuer resumed
    /// from: `Some(None)` a snapshot, `None` no session yet.
    pub fn resumed_from(&self) -> Option<Option<u64>> {
        self.shared.session.lock().expect("session lock").0
    }

    /// A receiver of the sequence of the last event applied to the deny set
    /// (checks deny its credentials from then on).
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.shared.applied.subscribe()
    }

    /// Counts since start.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// A receiver that changes whenever the JWT keys are fetched.
    pub fn keys_watch(&self) -> watch::Receiver<Arc<KeySet>> {
        self.shared.keys.subscribe()
    }
}
