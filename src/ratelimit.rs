//! Per-workload token buckets for the calls that mint (MintX509, MintJwt,
//! Renew): a retrying agent gets `RESOURCE_EXHAUSTED` with the time until its
//! next token, not another credential.
//!
//! The buckets live in this process. With several replicas each keeps its
//! own, so the budget is per replica (documented, and logged at start): a
//! shared bucket would cost a database write per mint, and splitting the
//! budget N ways would starve a workload whose HTTP/2 connection (and so
//! every call) lands on one replica.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
