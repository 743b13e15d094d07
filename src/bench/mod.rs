//! `taskmint bench`: measurements that ship with the binary, so users can
//! measure their own deployment. One run covers the in-process signing
//! ceiling, mint throughput and latency over mTLS at several concurrencies,
//! server CPU per credential, revocation delivery to many subscribers and
//! their memory, a large store against an empty one, and cold start.
//! `hostile.rs` measures instead what one hostile caller can do to an
//! issuer on its default configuration.
//!
//! The issuer under test is a child process (`taskmint serve` on a fresh
//! dev trust domain, durable SQLite store, policy and audit on), so its CPU
//! and memory are read from `/proc` apart from the load generator's.
//!
//! This module belongs to the binary, not the library (behind the default
//! `bench` feature): its load generator and plotting dependencies stay out
//! of every program that links `taskmint` as a library. It reaches the
//! library through its public API only.

pub mod cfssl;
mod command;
pub mod crypto;
pub mod enforce;
pub mod env;
pub mod hostile;
pub mod load;
pub mod plot;
pub mod proc_stats;
pub mod replicas;
pub mod revocation;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use command::run;
pub use revocation::{LatencyRow, RevocationBench, revocation_latency, table};

use env::BenchEnv;
use load::{Kind, LoadRow};
use proc_stats::{ServerProc, free_addr};
use taskmint::client::Client;
use taskmint::config::Config;

/// Settings of a full run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `taskmint` executable to start as the issuer.
    pub exe: PathBuf,
    /// Concurrencies for the mint load.
    pub concurrency: Vec<usize>,
    /// Measured window per load step.
    pub window: Duration,
    /// Time per ceiling figure.
    pub ceiling_window: Duration,
    /// Subscriber counts for revocation delivery.
    pub subscribers: Vec<usize>,
    /// Revocations per subscriber count.
    pub events: usize,
    /// Credentials in the large store.
    pub stored: u64,
    /// Concurrency of the large-store comparison.
    pub stored_concurrency: usize,
    /// Measure an issuer started elsewhere instead of starting one.
    pub target: Option<Target>,
    /// Run the issuer on this PostgreSQL database instead of SQLite.
    pub store_url: Option<String>,
}

/// An issuer started elsewhere.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its address.
    pub addr: String,
    /// Its trust domain directory (see [`BenchEnv::existing`]).
    pub dir: PathBuf,
    /// Its pid, if on this machine: server CPU and memory are read then.
    pub pid: Option<u32>,
}

/// Where the run happened.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// `available_parallelism`.
    pub cpus: usize,
    /// From `/proc/cpuinfo`.
    pub cpu_model: String,
    /// `uname -r`-like, from `/proc/sys/kernel/osrelease`.
    pub kernel: String,
    /// taskmint version.
    pub taskmint: String,
}

/// Start-up figures.
#[derive(Debug, Clone, Serialize)]
pub struct Startup {
    /// Spawn of a fresh issuer (new store: migrations, keys, policy) to its
    /// first answered request over mTLS, milliseconds.
    pub cold_start_ms: f64,
    /// Resident memory one second after that, MiB.
    pub idle_rss_mib: f64,
}

/// The large-store comparison.
#[derive(Debug, Clone, Serialize)]
pub struct LargeStore {
    /// Credentials stored before the measured window.
    pub stored: u64,
    /// Seconds the seeding took.
    pub seed_seconds: f64,
    /// The same load on an empty store.
    pub empty: LoadRow,
    /// On the large store.
    pub large: LoadRow,
    /// `large.throughput / empty.throughput`.
    pub ratio: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The machine.
    pub machine: Machine,
    /// In-process signing ceilings.
    pub ceilings: Vec<crypto::Ceiling>,
    /// Mint load steps.
    pub load: Vec<LoadRow>,
    /// Revocation delivery.
    pub revocation: Vec<LatencyRow>,
    /// Large store against empty (not with `--server`).
    pub large_store: Option<LargeStore>,
    /// Cold start and idle memory (not with `--server`).
    pub startup: Option<Startup>,
}

fn machine() -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    Machine {
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu_model,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        taskmint: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// `n` P-256 CSRs, made before any measurement.
pub fn csrs(n: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    (0..n)
        .map(|_| Ok(taskmint::client::new_key_and_csr()?.0))
        .collect()
}

fn material(env: &BenchEnv, csrs: Vec<Vec<u8>>) -> anyhow::Result<crypto::Material> {
    let cfg = Config::load(&env.config)?;
    let pem = std::fs::read(&cfg.jwt.key)?;
    let der = taskmint::pem::pkcs8_key(&pem).map_err(anyhow::Error::msg)?;
    let raw = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &der,
    )
    .map_err(|e| anyhow::anyhow!("JWT key: {e}"))?;
    Ok(crypto::Material {
        jwt: taskmint::jwt::JwtSigner::load(&cfg.jwt.key)?,
        ca: taskmint::ca::SigningCa::load(&cfg.ca)?,
        raw,
        csrs,
    })
}

async fn connect_all(env: &BenchEnv, addr: &str, n: usize) -> anyhow::Result<Vec<Client>> {
    let mut out = Vec::with_capacity(n);
    for id in env.callers(n)? {
        out.push(env.connect(addr, id).await?);
    }
    Ok(out)
}

/// The ceiling a load row is compared with: the bare ES256 signature for
/// JWTs (and for the transport floor, to show what it alone costs), the
/// CSR -> leaf work (without the post-signing check) for X.509.
fn ceiling_for(kind: Kind, ceilings: &[crypto::Ceiling]) -> f64 {
    let idx = match kind {
        Kind::Jwt | Kind::Health => 0,
        Kind::X509 => 2,
    };
    ceilings.get(idx).map(|c| c.us_per_op).unwrap_or(f64::NAN)
}

async fn start(env: &BenchEnv, exe: &Path) -> anyhow::Result<ServerProc> {
    let addr = free_addr()?;
    ServerProc::start(exe, &env.config, &addr, || env.probe(&addr)).await
}

/// Runs everything and returns the report; `progress` gets a line per step.
pub async fn run_all(o: &Options, progress: impl Fn(&str)) -> anyhow::Result<Report> {
    let max_c = o.concurrency.iter().copied().max().unwrap_or(1);
    let csrs = Arc::new(csrs(64)?);

    // 1. The ceiling, on a quiet machine.
    let env = match &o.target {
        None => BenchEnv::create("main")?,
        Some(t) => BenchEnv::existing(&t.dir)?,
    };
    if let Some(url) = &o.store_url {
        env.use_store_url(url)?;
    }
    progress("in-process signing ceiling");
    let m = Arc::new(material(&env, csrs.to_vec())?);
    let window = o.ceiling_window;
    let ceilings = tokio::task::spawn_blocking(move || crypto::ceilings(m, window)).await?;

    // 2. Cold start of a fresh issuer, then idle memory.
    let (child, addr, proc_, startup) = match &o.target {
        None => {
            progress("cold start");
            let server = start(&env, &o.exe).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let startup = Startup {
                cold_start_ms: server.first_request.as_secs_f64() * 1e3,
                idle_rss_mib: server.proc().rss_mib(),
            };
            let (addr, p) = (server.addr.clone(), server.proc());
            (Some(server), addr, Some(p), Some(startup))
        }
        Some(t) => (None, t.addr.clone(), t.pid.map(proc_stats::Proc), None),
    };

    // 3. Mint load.
    let clients = connect_all(&env, &addr, max_c).await?;
    let mut rows = Vec::new();
    for kind in [Kind::Jwt, Kind::X509, Kind::Health] {
        // Warm-up: connections, caches, the store's first pages.
        load::warm(kind, &clients[..max_c.min(8)], csrs.clone()).await?;
        for &c in &o.concurrency {
            progress(&format!("{} at concurrency {c}", kind.rpc()));
            let row = load::run(
                kind,
                &clients[..c],
                csrs.clone(),
                o.window,
                proc_,
                ceiling_for(kind, &ceilings),
                &format!("{}-{c}", kind.rpc()),
            )
            .await?;
            rows.push(row);
        }
    }
    drop(clients);

    // 4. Revocation delivery and idle subscriber memory.
    progress("revocation delivery");
    let revocation = revocation::latency_at(
        &env,
        std::slice::from_ref(&addr),
        proc_,
        &RevocationBench {
            subscribers: o.subscribers.clone(),
            events: o.events,
            gap: Duration::from_millis(5),
            streams_per_connection: 1,
        },
    )
    .await?;
    drop(child);

    // 5. A large store against an empty one, same load.
    let large_store = if o.stored > 0 && o.target.is_none() && o.store_url.is_none() {
        progress("empty store");
        let env = BenchEnv::create("store")?;
        let c = o.stored_concurrency;
        let ceiling = ceiling_for(Kind::Jwt, &ceilings);
        let measure = |label: &'static str| {
            let (env, exe, csrs) = (&env, &o.exe, csrs.clone());
            async move {
                // A fresh issuer over the store as it is, warmed up, then measured.
                let server = start(env, exe).await?;
                let clients = connect_all(env, &server.addr, c).await?;
                load::warm(Kind::Jwt, &clients, csrs.clone()).await?;
                let p = Some(server.proc());
                load::run(Kind::Jwt, &clients, csrs, o.window, p, ceiling, label).await
            }
        };
        let empty = measure("empty").await?;
        progress(&format!("seeding {} credentials", o.stored));
        let started = std::time::Instant::now();
        let store = taskmint::store::SqliteStore::open(&env.store_path()).await?;
        store
            .seed_credentials(o.stored, taskmint::clock::now_unix())
            .await?;
        store.close().await;
        let seed_seconds = started.elapsed().as_secs_f64();
        progress("large store");
        let large = measure("large").await?;
        Some(LargeStore {
            stored: o.stored,
            seed_seconds,
            ratio: large.throughput / empty.throughput,
            empty,
            large,
        })
    } else {
        None
    };

    Ok(Report {
        machine: machine(),
        ceilings,
        load: rows,
        revocation,
        large_store,
        startup,
    })
}

/// The report as Markdown tables.
pub fn render(r: &Report) -> String {
    let mut out = format!(
        "machine: {} x {} (Linux {}), taskmint {}\n\n",
        r.machine.cpus, r.machine.cpu_model, r.machine.kernel, r.machine.taskmint
    );
    out.push_str(
        "| in-process ceiling | us/op (1 core) | ops/s (1 core) | ops/s (all cores) |\n|---|---:|---:|---:|\n",
    );
    for c in &r.ceilings {
        out.push_str(&format!(
            "| {} | {:.1} | {:.0} | {:.0} ({} threads) |\n",
            c.what, c.us_per_op, c.per_core_per_s, c.all_cores_per_s, c.threads
        ));
    }
    out.push_str(
        "\n| RPC | concurrency | calls/s | p50 ms | p99 ms | p99.9 ms | server CPU us/call | / in-process ceiling | server peak RSS MiB | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for l in &r.load {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {:.2}x | {:.1} | {} |\n",
            l.rpc,
            l.concurrency,
            l.throughput,
            l.p50_ms,
            l.p99_ms,
            l.p999_ms,
            l.server_cpu_us,
            l.cpu_ratio,
            l.server_peak_rss_mib,
            l.errors
        ));
    }
    if r.load.iter().any(|l| l.rpc == Kind::Health.rpc()) {
        out.push_str(
            "\nHealth.Check is the transport floor: the same callers and connections (mTLS, HTTP/2, \
             gRPC) with no work behind the call; its ratio is to the ES256 signature.\n",
        );
    }
    out.push('\n');
    out.push_str(&table(&r.revocation));
    if let Some(s) = &r.large_store {
        out.push_str(&format!(
            "\nlarge store: {} credentials (seeded in {:.1} s): {} at concurrency {}: {:.0}/s against {:.0}/s empty = {:.1}% (p99 {:.2} ms against {:.2} ms)\n",
            s.stored,
            s.seed_seconds,
            s.large.rpc,
            s.large.concurrency,
            s.large.throughput,
            s.empty.throughput,
            s.ratio * 100.0,
            s.large.p99_ms,
            s.empty.p99_ms
        ));
    }
    if let Some(st) = &r.startup {
        out.push_str(&format!(
            "\ncold start to first served request: {:.0} ms; idle RSS: {:.1} MiB\n",
            st.cold_start_ms, st.idle_rss_mib
        ));
    }
    out
}

/// Settings of the cfssl comparison.
#[derive(Debug, Clone)]
pub struct CfsslOptions {
    /// cfssl's API base URL.
    pub url: String,
    /// cfssl's pid (for its CPU time).
    pub pid: Option<u32>,
    /// cfssl signing profile.
    pub profile: String,
    /// Concurrencies.
    pub concurrency: Vec<usize>,
    /// Window per step.
    pub window: Duration,
    /// Rounds (taskmint then cfssl at each concurrency, per round).
    pub rounds: usize,
}

/// One side-by-side step.
#[derive(Debug, Clone, Serialize)]
pub struct CompareRow {
    /// Round number, from 1.
    pub round: usize,
    /// Concurrency of both.
    pub concurrency: usize,
    /// taskmint `MintX509`.
    pub taskmint: LoadRow,
    /// cfssl sign.
    pub cfssl: cfssl::CfsslRow,
    /// `taskmint.throughput / cfssl.throughput`.
    pub ratio: f64,
}

/// Drives a fresh taskmint (child process) and a running `cfssl serve` with
/// the same CSRs at the same concurrencies, alternating, `rounds` times.
pub async fn compare_cfssl(exe: &Path, o: &CfsslOptions) -> anyhow::Result<Vec<CompareRow>> {
    let csrs = Arc::new(csrs(64)?);
    let env = BenchEnv::create("cfssl")?;
    let server = start(&env, exe).await?;
    let max_c = o.concurrency.iter().copied().max().unwrap_or(1);
    let clients = connect_all(&env, &server.addr, max_c).await?;
    // Warm both up (and fail early if cfssl refuses the CSRs).
    load::warm(Kind::X509, &clients[..max_c.min(8)], csrs.clone()).await?;
    let warm = cfssl::run(
        &o.url,
        &o.profile,
        csrs.clone(),
        2,
        Duration::from_millis(500),
        None,
    )
    .await?;
    if warm.certificates == 0 {
        anyhow::bail!(
            "cfssl signed nothing at {} (profile `{}`)",
            o.url,
            o.profile
        );
    }
    let mut rows = Vec::new();
    for round in 1..=o.rounds {
        for &c in &o.concurrency {
            let t = load::run(
                Kind::X509,
                &clients[..c],
                csrs.clone(),
                o.window,
                Some(server.proc()),
                f64::NAN,
                &format!("cmp-{round}-{c}"),
            )
            .await?;
            let f = cfssl::run(&o.url, &o.profile, csrs.clone(), c, o.window, o.pid).await?;
            rows.push(CompareRow {
                round,
                concurrency: c,
                ratio: t.throughput / f.throughput,
                taskmint: t,
                cfssl: f,
            });
        }
    }
    Ok(rows)
}

/// The comparison as a Markdown table, with the median ratio per concurrency.
pub fn cfssl_table(rows: &[CompareRow]) -> String {
    let mut out = String::from(
        "| round | concurrency | taskmint MintX509/s | p50 ms | p99 ms | server CPU us | cfssl sign/s | p50 ms | p99 ms | cfssl CPU us | taskmint/cfssl |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.1} | {:.0} | {:.2} | {:.2} | {:.1} | {:.2}x |\n",
            r.round,
            r.concurrency,
            r.taskmint.throughput,
            r.taskmint.p50_ms,
            r.taskmint.p99_ms,
            r.taskmint.server_cpu_us,
            r.cfssl.throughput,
            r.cfssl.p50_ms,
            r.cfssl.p99_ms,
            r.cfssl.server_cpu_us,
            r.ratio
        ));
    }
    let mut cs: Vec<usize> = rows.iter().map(|r| r.concurrency).collect();
    cs.sort_unstable();
    cs.dedup();
    for c in cs {
        let mut ratios: Vec<f64> = rows
            .iter()
            .filter(|r| r.concurrency == c)
            .map(|r| r.ratio)
            .collect();
        ratios.sort_by(f64::total_cmp);
        out.push_str(&format!(
            "\nmedian taskmint/cfssl at concurrency {c}: {:.2}x ({} rounds)",
            load::percentile(&ratios, 0.5),
            ratios.len()
        ));
    }
    out.push('\n');
    out
}
