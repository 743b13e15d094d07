//! The mint load: many concurrent callers, each on its own persistent mTLS
//! connection, calling `MintJwt` or `MintX509` back to back (a new task
//! every [`PER_TASK`] credentials, begun implicitly by the first mint)
//! for a fixed time (CSRs are prepared ahead, so the client's key generation
//! is not measured). Latency per call; throughput; and, when the issuer is a
//! child process, its CPU time per credential.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::proc_stats::Proc;
use taskmint::client::Client;

/// Credentials a caller mints per task before it moves to the next task.
pub const PER_TASK: usize = 50;

/// What to mint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `MintJwt`.
    Jwt,
    /// `MintX509`.
    X509,
    /// `grpc.health.v1.Health/Check`: the same connections, mTLS, HTTP/2
    /// and gRPC framing with no work behind them, the floor under every call.
    Health,
}

impl Kind {
    /// The RPC name.
    pub fn rpc(self) -> &'static str {
        match self {
            Self::Jwt => "MintJwt",
            Self::X509 => "MintX509",
            Self::Health => "Health.Check",
        }
    }
}

/// One measured load step.
#[derive(Debug, Clone, Serialize)]
pub struct LoadRow {
    /// The RPC.
    pub rpc: &'static str,
    /// Concurrent callers (one connection each).
    pub concurrency: usize,
    /// Credentials minted in the window.
    pub credentials: u64,
    /// Calls that failed.
    pub errors: u64,
    /// The window, seconds.
    pub seconds: f64,
    /// Credentials per second.
    pub throughput: f64,
    /// Latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 99th.
    pub p99_ms: f64,
    /// 99.9th.
    pub p999_ms: f64,
    /// Server CPU (user + system) per credential, microseconds.
    pub server_cpu_us: f64,
    /// `server_cpu_us` over the in-process signing cost of the same kind.
    pub cpu_ratio: f64,
    /// Server peak RSS so far, MiB.
    pub server_peak_rss_mib: f64,
}

/// Percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Drives `clients.len()` callers for `window` and reports.
pub async fn run(
    kind: Kind,
    clients: &[Client],
    csrs: Arc<Vec<Vec<u8>>>,
    window: Duration,
    server: Option<Proc>,
    ceiling_us: f64,
    label: &str,
) -> anyhow::Result<LoadRow> {
    let cpu0 = server.map(|s| s.cpu());
    let started = Instant::now();
    let deadline = started + window;
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut c = c.clone();
            let csrs = csrs.clone();
            let label = format!("{label}-{i}");
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(4096);
                let mut errors = 0u64;
                let mut n = i;
                while Instant::now() < deadline {
                    let task = format!("{label}-{}", (n - i) / PER_TASK);
                    let t0 = Instant::now();
                    let ok = match kind {
                        Kind::Jwt => c.mint_jwt(&task, "db", None).await.is_ok(),
                        Kind::X509 => c
                            .mint_x509(&task, csrs[n % csrs.len()].clone(), None)
                            .await
                            .is_ok(),
                        Kind::Health => c.health("").await.is_ok(),
                    };
                    n += 1;
                    if ok {
                        lat.push(t0.elapsed().as_secs_f64() * 1e3);
                    } else {
                        errors += 1;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = match (server, cpu0) {
        (Some(s), Some(c0)) => s.cpu() - c0,
        _ => f64::NAN,
    };
    lat.sort_by(f64::total_cmp);
    let n = lat.len() as u64;
    let server_cpu_us = cpu * 1e6 / n.max(1) as f64;
    Ok(LoadRow {
        rpc: kind.rpc(),
        concurrency: clients.len(),
        credentials: n,
        errors,
        seconds,
        throughput: n as f64 / seconds,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        p999_ms: percentile(&lat, 0.999),
        server_cpu_us,
        cpu_ratio: server_cpu_us / ceiling_us,
        server_peak_rss_mib: server.map(|s| s.peak_rss_mib()).unwrap_or(f64::NAN),
    })
}

/// Half a second of unmeasured load: connections, caches, the store's first
/// pages.
pub async fn warm(kind: Kind, clients: &[Client], csrs: Arc<Vec<Vec<u8>>>) -> anyhow::Result<()> {
    let warm = Duration::from_millis(500);
    run(kind, clients, csrs, warm, None, f64::NAN, "warm").await?;
    Ok(())
}
