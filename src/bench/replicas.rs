//! `taskmint bench replicas`: the issuer on PostgreSQL against the issuer on
//! SQLite, and two replicas on one PostgreSQL database, side by side in one
//! run, round after round (each round measures every setup once, so a
//! noisy machine affects them alike); then revocation delivery with the
//! subscribers and the revocations spread over two replicas.
//!
//! Server CPU per credential is the issuer processes' own CPU time. With
//! PostgreSQL part of the work moves into the database server, so its CPU
//! (every process named `postgres` on this machine) is reported beside it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::env::BenchEnv;
use super::load::{self, Kind};
use super::proc_stats::{self, Proc, ServerProc, free_addr};
use super::revocation::{self, LatencyRow, RevocationBench};
use taskmint::client::Client;

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct ReplicasBench {
    /// The PostgreSQL database the replicas share.
    pub store_url: String,
    /// Concurrent callers, spread over the replicas.
    pub concurrency: usize,
    /// Measured window per setup and round.
    pub window: Duration,
    /// Rounds.
    pub rounds: usize,
    /// Subscribers of the delivery measurement, spread over two replicas.
    pub subscribers: usize,
    /// Revocations of the delivery measurement.
    pub events: usize,
}

/// The setups measured side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Setup {
    /// One issuer on its embedded SQLite store.
    Sqlite,
    /// One issuer on PostgreSQL.
    Postgres,
    /// Two issuer replicas on one PostgreSQL database.
    PostgresTwoReplicas,
}

impl Setup {
    const ALL: [Setup; 3] = [Self::Sqlite, Self::Postgres, Self::PostgresTwoReplicas];

    fn label(self) -> &'static str {
        match self {
            Self::Sqlite => "SQLite, 1 replica",
            Self::Postgres => "PostgreSQL, 1 replica",
            Self::PostgresTwoReplicas => "PostgreSQL, 2 replicas",
        }
    }

    fn replicas(self) -> usize {
        match self {
            Self::PostgresTwoReplicas => 2,
            _ => 1,
        }
    }
}

/// One setup in one round.
#[derive(Debug, Clone, Serialize)]
pub struct SetupRow {
    /// What was measured.
    pub setup: Setup,
    /// Which round.
    pub round: usize,
    /// MintJwt over mTLS, credentials per second, all replicas together.
    pub throughput: f64,
    /// Latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 99th.
    pub p99_ms: f64,
    /// Failed calls.
    pub errors: u64,
    /// Issuer CPU (every replica) per credential, microseconds.
    pub server_cpu_us: f64,
    /// PostgreSQL server CPU per credential, microseconds (0 for SQLite).
    pub database_cpu_us: f64,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicasReport {
    /// Every setup in every round.
    pub rows: Vec<SetupRow>,
    /// Delivery: one SQLite issuer, then two PostgreSQL replicas.
    pub delivery: Vec<LatencyRow>,
}

/// Runs every setup `rounds` times, then the delivery measurement.
pub async fn run(
    exe: &Path,
    b: &ReplicasBench,
    progress: impl Fn(&str),
) -> anyhow::Result<ReplicasReport> {
    let sqlite = BenchEnv::create("replicas-sqlite")?;
    let pg = BenchEnv::create("replicas-pg")?;
    pg.use_store_url(&b.store_url)?;
    let csrs = Arc::new(super::csrs(8)?);
    let mut rows = Vec::new();
    for round in 1..=b.rounds {
        for setup in Setup::ALL {
            progress(&format!("round {round}: {}", setup.label()));
            let env = if setup == Setup::Sqlite { &sqlite } else { &pg };
            let servers = start(env, exe, setup.replicas()).await?;
            let addrs: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
            let clients = connect_spread(env, &addrs, b.concurrency).await?;
            load::warm(Kind::Jwt, &clients, csrs.clone()).await?;
            let procs: Vec<Proc> = servers.iter().map(ServerProc::proc).collect();
            let cpu0: f64 = procs.iter().map(Proc::cpu).sum();
            let db0 = postgres_cpu();
            let label = format!("r{round}-{setup:?}");
            let row = load::run(
                Kind::Jwt,
                &clients,
                csrs.clone(),
                b.window,
                None,
                1.0,
                &label,
            )
            .await?;
            let cpu = procs.iter().map(Proc::cpu).sum::<f64>() - cpu0;
            let db = if setup == Setup::Sqlite {
                0.0
            } else {
                postgres_cpu() - db0
            };
            let n = row.credentials.max(1) as f64;
            rows.push(SetupRow {
                setup,
                round,
                throughput: row.throughput,
                p50_ms: row.p50_ms,
                p99_ms: row.p99_ms,
                errors: row.errors,
                server_cpu_us: cpu * 1e6 / n,
                database_cpu_us: db * 1e6 / n,
            });
        }
    }

    let delivery_bench = RevocationBench {
        subscribers: vec![b.subscribers],
        events: b.events,
        gap: Duration::from_millis(5),
        streams_per_connection: 1,
    };
    let mut delivery = Vec::new();
    for (env, replicas) in [(&sqlite, 1), (&pg, 2)] {
        progress(&format!(
            "revocation delivery: {} subscribers over {replicas} replica(s)",
            b.subscribers
        ));
        let servers = start(env, exe, replicas).await?;
        let addrs: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
        let proc0 = servers.first().map(ServerProc::proc);
        delivery.extend(revocation::latency_at(env, &addrs, proc0, &delivery_bench).await?);
    }
    Ok(ReplicasReport { rows, delivery })
}

async fn start(env: &BenchEnv, exe: &Path, n: usize) -> anyhow::Result<Vec<ServerProc>> {
    let mut servers = Vec::with_capacity(n);
    for _ in 0..n {
        let addr = free_addr()?;
        servers.push(ServerProc::start(exe, &env.config, &addr, || env.probe(&addr)).await?);
    }
    Ok(servers)
}

/// `n` agent connections, the `i`th to replica `i % len`.
async fn connect_spread(env: &BenchEnv, addrs: &[String], n: usize) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        clients.push(
            env.connect(&addrs[i % addrs.len()], env.identity("agent")?)
                .await?,
        );
    }
    Ok(clients)
}

/// CPU seconds used so far by every process named `postgres` (the server
/// and its backends) on this machine.
fn postgres_cpu() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return f64::NAN;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .filter_map(proc_stats::cpu_seconds)
        .sum()
}

/// The medians over rounds, and each setup against SQLite, as Markdown.
pub fn render(r: &ReplicasReport) -> String {
    let median = |setup: Setup, f: fn(&SetupRow) -> f64| {
        let mut v: Vec<f64> = r.rows.iter().filter(|x| x.setup == setup).map(f).collect();
        v.sort_by(f64::total_cmp);
        load::percentile(&v, 0.5)
    };
    let base = median(Setup::Sqlite, |x| x.throughput);
    let base_cpu = median(Setup::Sqlite, |x| x.server_cpu_us + x.database_cpu_us);
    let rounds = r.rows.iter().map(|x| x.round).max().unwrap_or(0);
    let mut out = format!(
        "MintJwt over mTLS, medians of {rounds} round(s); every setup measured once per round.\n\n\
         | setup | calls/s | vs SQLite | p50 ms | p99 ms | issuer CPU µs/credential | PostgreSQL CPU µs/credential | total CPU vs SQLite | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for setup in Setup::ALL {
        let t = median(setup, |x| x.throughput);
        let cpu = median(setup, |x| x.server_cpu_us);
        let db = median(setup, |x| x.database_cpu_us);
        let errors: u64 = r
            .rows
            .iter()
            .filter(|x| x.setup == setup)
            .map(|x| x.errors)
            .sum();
        out.push_str(&format!(
            "| {} | {t:.0} | {:.2} | {:.2} | {:.2} | {cpu:.0} | {db:.0} | {:.2} | {errors} |\n",
            setup.label(),
            t / base,
            median(setup, |x| x.p50_ms),
            median(setup, |x| x.p99_ms),
            (cpu + db) / base_cpu,
        ));
    }
    out.push_str("\nRevocation delivery, Revoke RPC returned -> event received:\n\n");
    out.push_str(&revocation::table(&r.delivery));
    out
}
