//! Per-workload limits on calls: a token bucket per class of call, a count
//! of open watch streams, and the aggregation of refusals for the audit
//! trail.
//!
//! Every call takes a token from its class's bucket before its body is
//! decoded (`grpc/guard.rs`), refused calls included, so a retry storm or a
//! flood of bad requests spends the caller's own budget and nobody else's. A
//! refused call gets `RESOURCE_EXHAUSTED` with the time until its next token.
//!
//! Refusals are audited, but not a row per refusal: a caller over its limit
//! would otherwise write as fast as it can call. [`Refusals`] lets the first
//! refusal of a (workload, limit) through at once and counts the rest, to be
//! written as one event per interval.
//!
//! Everything here lives in this process. With several replicas each keeps
//! its own, so the budget is per replica (documented, and logged at start): a
//! shared bucket would cost a database write per call, and splitting the
//! budget N ways would starve a workload whose HTTP/2 connection (and so
//! every call) lands on one replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{LimitsConfig, RateConfig};

/// Buckets kept before idle (full) ones are dropped.
const PRUNE_AT: usize = 10_000;

/// A token bucket per key.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `burst` tokens, refilled at `per_second`.
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self {
            per_second,
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key`, or says how long until one is available.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        if buckets.len() >= PRUNE_AT && !buckets.contains_key(key) {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_second)
            .min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            // A rate the config accepts may be so small that the wait does
            // not fit a Duration (`per_second = 1e-300`): the wait is then
            // "never", not a panic.
            let wait = (1.0 - *tokens) / self.per_second;
            Err(Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX))
        }
    }
}

/// The classes of call, each with its own bucket per workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// `MintX509`, `MintJwt`, `Renew`.
    Mint,
    /// `BeginTask`, `CompleteTask`, `DelegateTask`, `Revoke`.
    TaskWrite,
    /// `GetTask`, `CheckStatus`, `GetCrl`, `GetTrustBundle`, health checks
    /// and anything not named (an unknown method is answered UNIMPLEMENTED,
    /// but only after it paid).
    Read,
    /// `WatchRevocations`, `AckRevocations`.
    Watch,
    /// Every call of the `Admin` service.
    Admin,
}

impl Class {
    /// The class of a gRPC method, from its request path
    /// (`/taskmint.v1.Issuer/MintJwt`).
    pub fn of_path(path: &str) -> Self {
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("", ""));
        match (service, method) {
            ("taskmint.v1.Admin", _) => Self::Admin,
            ("taskmint.v1.Issuer", "MintX509" | "MintJwt" | "Renew") => Self::Mint,
            ("taskmint.v1.Issuer", "BeginTask" | "CompleteTask" | "DelegateTask" | "Revoke") => {
                Self::TaskWrite
            }
            ("taskmint.v1.Revocations", "WatchRevocations" | "AckRevocations") => Self::Watch,
            _ => Self::Read,
        }
    }

    /// The name used in config keys, messages and the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mint => "mint",
            Self::TaskWrite => "task",
            Self::Read => "read",
            Self::Watch => "watch",
            Self::Admin => "admin",
        }
    }

    /// The config key of its bucket.
    pub fn config_key(self) -> &'static str {
        match self {
            Self::Mint => "limits.rate",
            Self::TaskWrite => "limits.task_rate",
            Self::Read => "limits.read_rate",
            Self::Watch => "limits.watch_rate",
            Self::Admin => "limits.admin_rate",
        }
    }
}

/// One bucket per class, per workload.
#[derive(Debug)]
pub struct ClassLimits {
    classes: [(Class, RateConfig, RateLimiter); 5],
}

/// A call refused by its class's bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct OverLimit {
    /// The class whose bucket was empty.
    pub class: Class,
    /// When the next token comes.
    pub retry_after: Duration,
    /// The bucket's rate.
    pub per_second: f64,
    /// The bucket's burst.
    pub burst: u32,
}

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rate limit for {} calls exceeded ({}: {}/s, burst {}); retry after {} ms",
            self.class.as_str(),
            self.class.config_key(),
            self.per_second,
            self.burst,
            self.retry_after.as_millis().max(1)
        )
    }
}

impl ClassLimits {
    /// The buckets configured in `limits`.
    pub fn new(limits: &LimitsConfig) -> Self {
        let one =
            |class, r: &RateConfig| (class, r.clone(), RateLimiter::new(r.per_second, r.burst));
        Self {
            classes: [
                one(Class::Mint, &limits.rate),
                one(Class::TaskWrite, &limits.task_rate),
                one(Class::Read, &limits.read_rate),
                one(Class::Watch, &limits.watch_rate),
                one(Class::Admin, &limits.admin_rate),
            ],
        }
    }

    /// Takes a token of `class` for `workload`.
    pub fn check(&self, class: Class, workload: &str) -> Result<(), OverLimit> {
        let (_, cfg, limiter) = self
            .classes
            .iter()
            .find(|(c, _, _)| *c == class)
            .expect("every class has a bucket");
        limiter.check(workload).map_err(|retry_after| OverLimit {
            class,
            retry_after,
            per_second: cfg.per_second,
            burst: cfg.burst,
        })
    }

    /// Each class and its bucket, for the start-up log line.
    pub fn describe(&self) -> String {
        self.classes
            .iter()
            .map(|(c, r, _)| format!("{} {}/s burst {}", c.as_str(), r.per_second, r.burst))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Open watch streams per workload, capped. A slot is held by its
/// [`StreamSlot`] and given back when that is dropped (the stream ended).
#[derive(Debug, Clone)]
pub struct StreamCounter {
    max: u32,
    open: Arc<Mutex<HashMap<String, u32>>>,
}

/// One open stream of one workload.
#[derive(Debug)]
pub struct StreamSlot {
    key: String,
    open: Arc<Mutex<HashMap<String, u32>>>,
}

impl StreamCounter {
    /// At most `max` open streams per workload.
    pub fn new(max: u32) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    /// The cap.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// A slot for `workload`, or `None` when it holds `max` already.
    pub fn acquire(&self, workload: &str) -> Option<StreamSlot> {
        let mut open = self.open.lock().expect("stream counter lock");
        let n = open.entry(workload.to_owned()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            key: workload.to_owned(),
            open: self.open.clone(),
        })
    }

    /// Streams `workload` holds open now.
    pub fn open(&self, workload: &str) -> u32 {
        let open = self.open.lock().expect("stream counter lock");
        open.get(workload).copied().unwrap_or(0)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("stream counter lock");
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Refusals counted per (workload, limit) between audit events.
#[derive(Debug)]
pub struct Refusals {
    interval: Duration,
    pending: Mutex<HashMap<(String, &'static str), Pending>>,
}

#[derive(Debug)]
struct Pending {
    /// Refusals not yet written.
    count: u64,
    /// When the last event for this key was written.
    written: Instant,
    /// The last refusal's message, written with the count.
    message: String,
}

/// A batch of refusals to write as one audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalBatch {
    /// The refused workload.
    pub workload: String,
    /// Which limit (`rate:mint`, `max_active_tasks`, ...).
    pub limit: &'static str,
    /// How many calls were refused since the last event.
    pub count: u64,
    /// The last refusal's message.
    pub message: String,
}

impl Refusals {
    /// At most one event per (workload, limit) per `interval`, plus the
    /// first one at once.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a refusal; returns the batch to write now, if one is due (the
    /// first refusal of a key, or the first after `interval`).
    pub fn record(
        &self,
        workload: &str,
        limit: &'static str,
        message: &str,
    ) -> Option<RefusalBatch> {
        self.record_at(workload, limit, message, Instant::now())
    }

    fn record_at(
        &self,
        workload: &str,
        limit: &'static str,
        message: &str,
        now: Instant,
    ) -> Option<RefusalBatch> {
        let mut pending = self.pending.lock().expect("refusals lock");
        let key = (workload.to_owned(), limit);
        match pending.get_mut(&key) {
            None => {
                pending.insert(
                    key,
                    Pending {
                        count: 0,
                        written: now,
                        message: String::new(),
                    },
                );
                Some(RefusalBatch {
                    workload: workload.to_owned(),
                    limit,
                    count: 1,
                    message: message.to_owned(),
                })
            }
            Some(p) => {
                p.count += 1;
                message.clone_into(&mut p.message);
                if now.saturating_duration_since(p.written) >= self.interval {
                    p.written = now;
                    let count = std::mem::take(&mut p.count);
                    Some(RefusalBatch {
                        workload: workload.to_owned(),
                        limit,
                        count,
                        message: std::mem::take(&mut p.message),
                    })
                } else {
                    None
                }
            }
        }
    }

    /// Takes every count whose interval has passed, and forgets keys quiet
    /// for a whole interval (their next refusal is written at once again).
    pub fn due(&self) -> Vec<RefusalBatch> {
        self.due_at(Instant::now())
    }

    /// Takes every pending count, due or not.
    pub fn drain(&self) -> Vec<RefusalBatch> {
        let mut pending = self.pending.lock().expect("refusals lock");
        pending
            .drain()
            .filter(|(_, p)| p.count > 0)
            .map(|((workload, limit), p)| RefusalBatch {
                workload,
                limit,
                count: p.count,
                message: p.message,
            })
            .collect()
    }

    fn due_at(&self, now: Instant) -> Vec<RefusalBatch> {
        let mut pending = self.pending.lock().expect("refusals lock");
        let mut out = Vec::new();
        pending.retain(|(workload, limit), p| {
            if now.saturating_duration_since(p.written) < self.interval {
                return true;
            }
            if p.count == 0 {
                return false;
            }
            out.push(RefusalBatch {
                workload: workload.clone(),
                limit,
                count: std::mem::take(&mut p.count),
                message: std::mem::take(&mut p.message),
            });
            p.written = now;
            true
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_per_key() {
        let l = RateLimiter::new(10.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check_at("a", t0).is_ok());
        }
        let wait = l.check_at("a", t0).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        assert!(l.check_at("b", t0).is_ok(), "buckets are per workload");
        assert!(l.check_at("a", t0 + Duration::from_millis(100)).is_ok());
        assert!(l.check_at("a", t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn every_method_has_its_class() {
        for (path, class) in [
            ("/taskmint.v1.Issuer/MintX509", Class::Mint),
            ("/taskmint.v1.Issuer/MintJwt", Class::Mint),
            ("/taskmint.v1.Issuer/Renew", Class::Mint),
            ("/taskmint.v1.Issuer/BeginTask", Class::TaskWrite),
            ("/taskmint.v1.Issuer/CompleteTask", Class::TaskWrite),
            ("/taskmint.v1.Issuer/DelegateTask", Class::TaskWrite),
            ("/taskmint.v1.Issuer/Revoke", Class::TaskWrite),
            ("/taskmint.v1.Issuer/GetTask", Class::Read),
            ("/taskmint.v1.Issuer/GetTrustBundle", Class::Read),
            ("/taskmint.v1.Revocations/CheckStatus", Class::Read),
            ("/taskmint.v1.Revocations/GetCrl", Class::Read),
            ("/taskmint.v1.Revocations/WatchRevocations", Class::Watch),
            ("/taskmint.v1.Revocations/AckRevocations", Class::Watch),
            ("/taskmint.v1.Admin/ExportAudit", Class::Admin),
            ("/grpc.health.v1.Health/Check", Class::Read),
            ("/nonsense", Class::Read),
            ("", Class::Read),
        ] {
            assert_eq!(Class::of_path(path), class, "{path}");
        }
    }

    #[test]
    fn classes_have_separate_buckets() {
        let limits = LimitsConfig {
            rate: RateConfig {
                per_second: 1.0,
                burst: 1,
            },
            ..Default::default()
        };
        let l = ClassLimits::new(&limits);
        l.check(Class::Mint, "a").unwrap();
        let e = l.check(Class::Mint, "a").unwrap_err();
        assert_eq!(e.class, Class::Mint);
        assert!(e.to_string().contains("limits.rate: 1/s, burst 1"), "{e}");
        l.check(Class::Read, "a")
            .expect("another class is not affected");
    }

    #[test]
    fn stream_slots_are_capped_and_given_back() {
        let c = StreamCounter::new(2);
        let a = c.acquire("w").unwrap();
        let _b = c.acquire("w").unwrap();
        assert!(c.acquire("w").is_none());
        assert!(c.acquire("other").is_some(), "per workload");
        drop(a);
        assert_eq!(c.open("w"), 1);
        assert!(c.acquire("w").is_some());
    }

    #[test]
    fn refusals_are_written_once_per_interval_with_a_count() {
        let r = Refusals::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let first = r.record_at("w", "rate:mint", "m1", t0).unwrap();
        assert_eq!(first.count, 1);
        for i in 0..999 {
            assert!(
                r.record_at("w", "rate:mint", &format!("m{i}"), t0)
                    .is_none()
            );
        }
        assert!(r.due_at(t0 + Duration::from_secs(1)).is_empty());
        let later = t0 + Duration::from_secs(61);
        let due = r.due_at(later);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].count, 999);
        assert_eq!(due[0].message, "m998");
        // Quiet for an interval: forgotten, so the next refusal is at once.
        assert!(r.due_at(later + Duration::from_secs(61)).is_empty());
        assert!(r.due_at(later + Duration::from_secs(61)).is_empty());
        assert_eq!(
            r.record_at("w", "rate:mint", "again", later + Duration::from_secs(200))
                .unwrap()
                .count,
            1
        );
        // A refusal after the interval is written with the count it ends.
        let t1 = later + Duration::from_secs(200);
        r.record_at("w", "rate:mint", "x", t1 + Duration::from_secs(1));
        let b = r
            .record_at("w", "rate:mint", "y", t1 + Duration::from_secs(61))
            .unwrap();
        assert_eq!(b.count, 2);
    }

    /// Found while writing the `config` fuzz target (which checks it since):
    /// `limits.rate.per_second = 1e-300` passes config validation, and the
    /// wait for the next token (1e300 s) panicked converting to a Duration.
    #[test]
    fn a_vanishing_rate_refuses_without_panicking() {
        let l = RateLimiter::new(1e-300, 1);
        let t0 = Instant::now();
        assert!(l.check_at("a", t0).is_ok());
        assert_eq!(l.check_at("a", t0), Err(Duration::MAX));
        let l = RateLimiter::new(f64::MIN_POSITIVE, 1);
        assert!(l.check_at("a", t0).is_ok());
        assert_eq!(l.check_at("a", t0), Err(Duration::MAX));
    }
}
