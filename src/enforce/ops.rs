//! The enforcer's operations listener (`ops_listen`, plain HTTP, off unless
//! set): `/metrics` (its own registry, `taskmint_enforce_*`), `/healthz`,
//! and `/readyz`, which is 503 while the revocation feed is stale, for
//! orchestrators that probe over HTTP rather than `grpc.health.v1`.

use std::sync::atomic::Ordering;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Enforcer, Freshness};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
}

/// What the operations listener reads of an enforcer.
#[derive(Debug, Clone)]
pub struct EnforcerOps {
    enforcer: Enforcer,
}

impl EnforcerOps {
    /// Over `enforcer`.
    pub fn new(enforcer: Enforcer) -> Self {
        Self { enforcer }
    }
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

impl crate::ops::Endpoints for EnforcerOps {
    fn metrics(&self) -> String {
        // Built per scrape from the enforcer's own counters: a handful of
        // values, and no second set of atomics on the check path.
        let e = &self.enforcer;
        let s = e.stats();
        let mut r = Registry::with_prefix("taskmint_enforce");
        let checks = Family::<DecisionLabels, Counter>::default();
        for (decision, n) in [
            ("allowed", &s.allowed),
            ("unauthenticated", &s.unauthenticated),
            ("forbidden", &s.forbidden),
            ("unavailable", &s.unavailable),
        ] {
            checks
                .get_or_create(&DecisionLabels { decision })
                .inc_by(n.load(Ordering::Relaxed));
        }
        r.register(
            "checks",
            "Check decisions: allowed, 401 unauthenticated, 403 forbidden, 503 unavailable",
            checks,
        );
        let events = Counter::<u64>::default();
        events.inc_by(s.events.load(Ordering::Relaxed));
        r.register("feed_events", "Revocation events applied", events);
        gauge(
            &mut r,
            "deny_entries",
            "Revoked credential ids held until their expiry",
            e.deny_len() as i64,
        );
        gauge(
            &mut r,
            "feed_cursor_seq",
            "Every event up to this sequence is applied and on disk",
            e.cursor().unwrap_or(0) as i64,
        );
        gauge(
            &mut r,
            "feed_acked_seq",
            "Highest sequence the issuer recorded as acknowledged",
            s.acked_seq.load(Ordering::Relaxed) as i64,
        );
        let (fresh, age) = match e.freshness() {
            Freshness::Fresh => (1, 0),
            Freshness::Stale { since: Some(d) } => (0, d.as_secs() as i64),
            Freshness::Stale { since: None } => (0, -1),
        };
        gauge(
            &mut r,
            "feed_fresh",
            "1 while the feed is current; 0 while every check is refused as stale",
            fresh,
        );
        gauge(
            &mut r,
            "feed_stale_seconds",
            "Seconds since the feed was last current, while stale (-1: never since start)",
            age,
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r)
            .expect("writing to a String cannot fail");
        out
    }

    async fn problems(&self) -> Vec<String> {
        match self.enforcer.freshness() {
            Freshness::Fresh => vec![],
            Freshness::Stale { since: None } => {
                vec!["revocation feed: not caught up since start".into()]
            }
            Freshness::Stale { since: Some(d) } => vec![format!(
                "revocation feed stale: last current {}s ago",
                d.as_secs()
            )],
        }
    }
}
