//! The process's Prometheus metrics: one registry, built once, updated where
//! things happen (the gRPC edge, the issuer, the revocation log, the store)
//! and encoded by the operations listener.
//!
//! A labelled metric shows up in the exposition once it has a first label
//! set (after the first event of its kind), except `credentials_issued`,
//! whose two kinds start at 0.
//!
//! Labels are bounded sets chosen by the code, never by a caller: no task
//! id, SPIFFE ID, reason text or unknown method path ever becomes a label
//! (a method the issuer does not serve is counted as `unknown`).

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// `kind` of an issued credential.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// One gRPC method and its outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: &'static str,
    method: &'static str,
    code: &'static str,
}

/// One gRPC method.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    service: &'static str,
    method: &'static str,
}

/// Why, and how widely, credentials were revoked.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevocationLabels {
    reason: &'static str,
    scope: &'static str,
}

/// Which limit refused a call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

/// Which store backend committed.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: &'static str,
}

/// Every metric of the process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    credentials_issued: Family<KindLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
    revocations: Family<RevocationLabels, Counter>,
    limit_refusals: Family<LimitLabels, Counter>,
    feed_subscribers: Gauge,
    feed_head_seq: Gauge,
    delivery_overdue: Gauge,
    store_commit: Family<BackendLabels, Histogram, fn() -> Histogram>,
    policy_reload_errors: Counter,
    trust_reload_errors: Counter,
}

/// Request latencies: 0.5 ms to ~16 s.
fn request_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Commit latencies (an fsync, a round trip): 0.1 ms to ~3 s.
fn commit_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("taskmint");
        let m = Self {
            credentials_issued: Family::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(request_buckets),
            revocations: Family::default(),
            limit_refusals: Family::default(),
            feed_subscribers: Gauge::default(),
            feed_head_seq: Gauge::default(),
            delivery_overdue: Gauge::default(),
            store_commit: Family::new_with_constructor(commit_buckets),
            policy_reload_errors: Counter::default(),
            trust_reload_errors: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "credentials_issued",
            "Credentials minted or renewed and committed, by kind (x509, jwt)",
            m.credentials_issued.clone(),
        );
        registry.register(
            "requests",
            "gRPC calls answered, by service, method and status code",
            m.requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time to answer a unary gRPC call (streams are not timed), by service and method",
            prometheus_client::registry::Unit::Seconds,
            m.request_duration.clone(),
        );
        registry.register(
            "revocations",
            "Revocation log events committed by this replica (one per task revoked), by reason and scope",
            m.revocations.clone(),
        );
        registry.register(
            "limit_refusals",
            "Calls refused by a rate limit or a holding cap, by limit",
            m.limit_refusals.clone(),
        );
        registry.register(
            "feed_subscribers",
            "Revocation feed (WatchRevocations) streams open on this replica",
            m.feed_subscribers.clone(),
        );
        registry.register(
            "feed_head_seq",
            "Sequence of the newest revocation this replica has published to its feed",
            m.feed_head_seq.clone(),
        );
        registry.register(
            "delivery_overdue_subscribers",
            "Expected subscribers that have not acknowledged a revocation within the ack deadline (set by the leader)",
            m.delivery_overdue.clone(),
        );
        registry.register_with_unit(
            "store_commit_duration",
            "Time of one write transaction, begin to durable commit (a SQLite batch), by backend",
            prometheus_client::registry::Unit::Seconds,
            m.store_commit.clone(),
        );
        registry.register(
            "policy_reload_errors",
            "Policy files refused at reload (the previous policy stayed in force)",
            m.policy_reload_errors.clone(),
        );
        registry.register(
            "trust_reload_errors",
            "Trust bundle or serving SVID sources that failed to reload (the previous version stayed in force)",
            m.trust_reload_errors.clone(),
        );
        registry.register(
            "build",
            "The running build",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                (
                    "profile",
                    if cfg!(debug_assertions) {
                        "debug"
                    } else {
                        "release"
                    },
                ),
            ]),
        );
        // Both kinds exist from the start (at 0), so a rate over them is
        // defined before the first mint of each.
        for kind in ["x509", "jwt"] {
            let _ = m.credentials_issued.get_or_create(&KindLabels { kind });
        }
        Self { registry, ..m }
    }

    /// The exposition, in the OpenMetrics text format (which Prometheus
    /// scrapes natively).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// A credential of `kind` (`x509` or `jwt`) was committed.
    pub fn credential_issued(&self, kind: &'static str) {
        self.credentials_issued
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// A gRPC call ended with `code`; `duration` is recorded for unary calls.
    pub fn request(
        &self,
        service: &'static str,
        method: &'static str,
        code: &'static str,
        duration: Option<std::time::Duration>,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                service,
                method,
                code,
            })
            .inc();
        if let Some(d) = duration {
            self.request_duration
                .get_or_create(&MethodLabels { service, method })
                .observe(d.as_secs_f64());
        }
    }

    /// `events` revocation log events were committed for `reason` over `scope`.
    pub fn revoked(&self, reason: &'static str, scope: &'static str, events: usize) {
        self.revocations
            .get_or_create(&RevocationLabels { reason, scope })
            .inc_by(events as u64);
    }

    /// A call was refused by `limit`.
    pub fn limit_refused(&self, limit: &'static str) {
        self.limit_refusals
            .get_or_create(&LimitLabels { limit })
            .inc();
    }

    /// A watch stream opened; it counts until the returned guard drops.
    pub fn feed_subscriber(&'static self) -> FeedSubscriber {
        self.feed_subscribers.inc();
        FeedSubscriber(self)
    }

    /// The feed published through `seq`.
    pub fn feed_head(&self, seq: u64) {
        self.feed_head_seq.set(seq as i64);
    }

    /// `n` expected subscribers are overdue.
    pub fn delivery_overdue(&self, n: usize) {
        self.delivery_overdue.set(n as i64);
    }

    /// A write transaction on `backend` took `d`.
    pub fn store_commit(&self, backend: &'static str, d: std::time::Duration) {
        self.store_commit
            .get_or_create(&BackendLabels { backend })
            .observe(d.as_secs_f64());
    }

    /// A policy file was refused at reload.
    pub fn policy_reload_error(&self) {
        self.policy_reload_errors.inc();
    }

    /// `n` trust sources failed to reload.
    pub fn trust_reload_errors(&self, n: usize) {
        self.trust_reload_errors.inc_by(n as u64);
    }
}

/// Holds one count of `taskmint_feed_subscribers` while a stream is open.
#[derive(Debug)]
pub struct FeedSubscriber(&'static Metrics);

impl Drop for FeedSubscriber {
    fn drop(&mut self) {
        self.0.feed_subscribers.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed_with_its_type() {
        let m = Metrics::new();
        m.credential_issued("jwt");
        m.request(
            "taskmint.v1.Issuer",
            "MintJwt",
            "OK",
            Some(std::time::Duration::from_millis(3)),
        );
        m.revoked("requested", "task", 2);
        m.store_commit("sqlite", std::time::Duration::from_micros(300));
        let text = m.encode();
        for line in [
            "# TYPE taskmint_credentials_issued counter",
            "taskmint_credentials_issued_total{kind=\"jwt\"} 1",
            "taskmint_credentials_issued_total{kind=\"x509\"} 0",
            "taskmint_requests_total{service=\"taskmint.v1.Issuer\",method=\"MintJwt\",code=\"OK\"} 1",
            "# TYPE taskmint_request_duration_seconds histogram",
            "taskmint_request_duration_seconds_count{service=\"taskmint.v1.Issuer\",method=\"MintJwt\"} 1",
            "taskmint_revocations_total{reason=\"requested\",scope=\"task\"} 2",
            "# TYPE taskmint_feed_subscribers gauge",
            "# TYPE taskmint_feed_head_seq gauge",
            "# TYPE taskmint_delivery_overdue_subscribers gauge",
            "# TYPE taskmint_store_commit_duration_seconds histogram",
            "taskmint_store_commit_duration_seconds_bucket{le=\"0.0004\",backend=\"sqlite\"} 1",
            "taskmint_policy_reload_errors_total 0",
            "taskmint_trust_reload_errors_total 0",
            "# TYPE taskmint_build info",
        ] {
            assert!(text.contains(line), "missing `{line}` in\n{text}");
        }
        assert!(text.contains(&format!(
            "taskmint_build_info{{version=\"{}\"",
            env!("CARGO_PKG_VERSION")
        )));
    }
}
