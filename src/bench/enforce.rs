//! `taskmint bench enforce`: the enforcement sidecar's three figures.
//!
//! 1. `Check` throughput and latency: a `taskmint enforce` child (one tokio
//!    worker, pinned to CPU 0 with `taskset` when it is installed) answers
//!    Envoy-shaped `CheckRequest`s over gRPC on loopback, each an allowed
//!    bearer JWT-SVID with its peer certificate (the costliest path: an
//!    ES256 verification and the cnf digest), from `c` concurrent callers,
//!    one HTTP/2 connection per 8 of them (as Envoy opens one per worker).
//!    The key cache is warm (a second of checks first). The enforcer's CPU
//!    per check is read from `/proc`.
//! 2. Revocation to denial: the `Revoke` RPC returns -> each of `n`
//!    enforcers (in this process, each with its own mTLS feed connection,
//!    state directory and acknowledgements) has the event in its deny set
//!    and its `Check` denies the token. One revocation at a time.
//! 3. Deny-set memory: a million entries, as the tables' size and as the
//!    resident memory they added, per entry; and the state file per entry.
//!
//! The issuer is a child `taskmint serve` on a fresh dev trust domain.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use serde::Serialize;

use super::env::BenchEnv;
use super::load::percentile;
use super::proc_stats::{Proc, ServerProc, cpu_seconds, free_addr};
use taskmint::enforce::deny::DenySet;
use taskmint::enforce::{Denial, EnforceConfig, Enforcer, Freshness};
use taskmint::grpc::pb::revoke_request::Target;

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct EnforceBench {
    /// Concurrent callers of `Check`.
    pub concurrency: Vec<usize>,
    /// Measured window per concurrency.
    pub window: Duration,
    /// Enforcer counts for revocation -> denial.
    pub enforcers: Vec<usize>,
    /// Revocations per enforcer count.
    pub events: usize,
    /// Deny-set entries for the memory figure.
    pub entries: usize,
}

/// `Check` at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct CheckRow {
    /// The token was remembered after its first verification (the
    /// default); otherwise every check verified its signature.
    pub remembered: bool,
    /// Concurrent callers.
    pub concurrency: usize,
    /// HTTP/2 connections they used.
    pub connections: usize,
    /// Checks answered in the window.
    pub checks: usize,
    /// Checks per second.
    pub per_second: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// Worst, microseconds.
    pub max_us: f64,
    /// Enforcer CPU (user + system) per check, microseconds.
    pub enforcer_cpu_us: f64,
}

/// Revocation -> denial with `enforcers` connected.
#[derive(Debug, Clone, Serialize)]
pub struct DenyRow {
    /// Enforcers following the feed.
    pub enforcers: usize,
    /// Revocations measured.
    pub events: usize,
    /// Denials measured (enforcers x events).
    pub denials: usize,
    /// Median from the Revoke RPC's return to a denying Check, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Worst, ms.
    pub max_ms: f64,
    /// Median of the Revoke RPC itself, ms.
    pub revoke_rpc_p50_ms: f64,
}

/// Deny-set memory.
#[derive(Debug, Clone, Serialize)]
pub struct DenyMemory {
    /// Entries inserted (of each kind).
    pub entries: usize,
    /// `jti` entries: table bytes per entry.
    pub jti_table_bytes: f64,
    /// `jti` entries: resident memory added per entry.
    pub jti_rss_bytes: f64,
    /// Serial entries: table bytes per entry.
    pub serial_table_bytes: f64,
    /// Serial entries: resident memory added per entry.
    pub serial_rss_bytes: f64,
    /// State file bytes per entry (one `E` line).
    pub state_file_bytes: f64,
}

/// The decision alone: `Enforcer::check_bearer` in process, one thread.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// Microseconds per check, token remembered.
    pub remembered_us: f64,
    /// Microseconds per check, signature verified every time.
    pub verifying_us: f64,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct EnforceReport {
    /// How the enforcer child was placed (`taskset -c 0`, or not pinned).
    pub placement: String,
    /// CPUs this (load generating) process may run on.
    pub generator_cpus: String,
    /// `Check`.
    pub checks: Vec<CheckRow>,
    /// The decision alone.
    pub decision: Decision,
    /// Revocation -> denial.
    pub denials: Vec<DenyRow>,
    /// Deny-set memory.
    pub memory: DenyMemory,
}

/// The enforcer child, killed on drop.
struct EnforcerProc(Child);

impl Drop for EnforcerProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn enforcer_config(env: &BenchEnv, issuer: &str, listen: &str, state: &Path) -> String {
    format!(
        "issuers = [\"{issuer}\"]\nsvid = \"sidecar.pem\"\nsvid_key = \"sidecar.key\"\n\
         bundle = \"bundle.pem\"\nsubscriber = \"sidecar\"\nlisten = \"{listen}\"\n\
         audiences = [\"bench\"]\nstate_dir = \"{}\"\n# {}\n",
        state.display(),
        env.dir.display()
    )
}

/// `Cpus_allowed_list` of this process.
fn own_cpus() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Cpus_allowed_list:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

fn check_request(token: &str, peer_pem: &str) -> CheckRequest {
    taskmint::enforce::authz::envoy_request("/rows", Some(token), Some(peer_pem))
}

/// Runs the three parts with a child issuer started from `exe`.
pub async fn run(
    exe: &Path,
    b: &EnforceBench,
    progress: impl Fn(&str),
) -> anyhow::Result<EnforceReport> {
    let env = BenchEnv::create("enforce")?;
    // The bench config's minute-long heartbeat would outlast the
    // enforcers' 30 s staleness bound.
    let text = std::fs::read_to_string(&env.config)?.replace(
        "heartbeat_interval = \"60s\"",
        "heartbeat_interval = \"5s\"",
    );
    std::fs::write(&env.config, text)?;
    let addr = free_addr()?;
    let _issuer = ServerProc::start(exe, &env.config, &addr, || env.probe(&addr)).await?;
    let mut agent = env.connect(&addr, env.identity("agent")?).await?;
    let peer_pem = std::fs::read_to_string(env.dir.join("agent.pem"))?;

    // 1. Check: the token remembered after its first verification (a
    // workload presents one token many times), then verified every time.
    let token = agent
        .mint_jwt("bench-enforce", "bench", None)
        .await
        .map_err(|s| anyhow::anyhow!("mint: {}", s.message()))?
        .token;
    progress("Check throughput and latency, token remembered");
    let (placement, mut checks) =
        check_rows(exe, &env, &addr, &token, &peer_pem, 16_384, b).await?;
    progress("Check throughput and latency, every check verifying the signature");
    checks.extend(
        check_rows(exe, &env, &addr, &token, &peer_pem, 0, b)
            .await?
            .1,
    );
    progress("the decision alone, in process");
    let decision = decision_cost(&env, &addr, &token, &peer_pem).await?;

    // 2. Revocation -> denial.
    let mut denials = Vec::new();
    for &n in &b.enforcers {
        progress(&format!("revocation -> denial with {n} enforcer(s)"));
        denials.push(revoke_to_deny(&env, &addr, &mut agent, &peer_pem, n, b.events).await?);
    }

    // 3. Memory.
    progress(&format!("deny-set memory at {} entries", b.entries));
    let memory = deny_memory(b.entries, &env.dir.join("memory-state"))?;
    Ok(EnforceReport {
        placement,
        generator_cpus: own_cpus(),
        checks,
        decision,
        denials,
        memory,
    })
}

/// `Check` over gRPC against a `taskmint enforce` child with
/// `verified_token_cache = cache`, at each concurrency.
async fn check_rows(
    exe: &Path,
    env: &BenchEnv,
    addr: &str,
    token: &str,
    peer_pem: &str,
    cache: usize,
    b: &EnforceBench,
) -> anyhow::Result<(String, Vec<CheckRow>)> {
    let listen = free_addr()?;
    let state = env.dir.join(format!("enforce-state-child-{cache}"));
    let cfg_path = env.dir.join(format!("enforce-{cache}.toml"));
    std::fs::write(
        &cfg_path,
        format!(
            "{}verified_token_cache = {cache}\n",
            enforcer_config(env, addr, &listen, &state)
        ),
    )?;
    let taskset = Command::new("taskset").arg("--version").output().is_ok();
    let mut cmd = if taskset {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(exe);
        c
    } else {
        Command::new(exe)
    };
    let child = cmd
        .args(["enforce", "--config"])
        .arg(&cfg_path)
        .env("TOKIO_WORKER_THREADS", "1")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start the enforcer: {e}"))?;
    let enforcer = EnforcerProc(child);
    let pid = Proc(enforcer.0.id());
    let placement = if taskset {
        "taskset -c 0, TOKIO_WORKER_THREADS=1".to_owned()
    } else {
        "not pinned (no taskset), TOKIO_WORKER_THREADS=1".to_owned()
    };
    let req = check_request(token, peer_pem);
    let connect = || async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{listen}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        Ok::<_, anyhow::Error>(AuthorizationClient::new(ch))
    };
    // Serving: connected, caught up, and allowing the token.
    let started = Instant::now();
    loop {
        if let Ok(mut c) = connect().await
            && let Ok(r) = c.check(req.clone()).await
            && r.get_ref().status.as_ref().map(|s| s.code) == Some(0)
        {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the enforcer did not allow a valid token within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Warm: a second of checks.
    let mut c = connect().await?;
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(1) {
        c.check(req.clone()).await?;
    }
    let mut checks = Vec::new();
    for &n in &b.concurrency {
        let connections = n.div_ceil(8);
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections {
            clients.push(connect().await?);
        }
        let cpu0 = cpu_seconds(pid.0).unwrap_or(f64::NAN);
        let t0 = Instant::now();
        let until = t0 + b.window;
        let mut set = tokio::task::JoinSet::new();
        for k in 0..n {
            let mut c = clients[k % connections].clone();
            let req = req.clone();
            set.spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < until {
                    let s = Instant::now();
                    let r = c.check(req.clone()).await?;
                    anyhow::ensure!(
                        r.get_ref().status.as_ref().map(|s| s.code) == Some(0),
                        "a check was not allowed"
                    );
                    lat.push(s.elapsed().as_secs_f64() * 1e6);
                }
                Ok(lat)
            });
        }
        let mut lat = Vec::new();
        while let Some(r) = set.join_next().await {
            lat.extend(r??);
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds(pid.0).unwrap_or(f64::NAN) - cpu0;
        lat.sort_by(f64::total_cmp);
        checks.push(CheckRow {
            remembered: cache > 0,
            concurrency: n,
            connections,
            checks: lat.len(),
            per_second: lat.len() as f64 / elapsed,
            p50_us: percentile(&lat, 0.50),
            p99_us: percentile(&lat, 0.99),
            max_us: lat.last().copied().unwrap_or(f64::NAN),
            enforcer_cpu_us: cpu * 1e6 / lat.len().max(1) as f64,
        });
    }
    drop(enforcer);
    Ok((placement, checks))
}

/// Microseconds per in-process `check_bearer` (no gRPC), remembered and
/// verifying, on one thread.
async fn decision_cost(
    env: &BenchEnv,
    addr: &str,
    token: &str,
    peer_pem: &str,
) -> anyhow::Result<Decision> {
    let peer = taskmint::pem::certs(peer_pem.as_bytes()).map_err(anyhow::Error::msg)?[0].to_vec();
    let mut out = [0.0; 2];
    for (i, cache) in [16_384usize, 0].into_iter().enumerate() {
        let state = env.dir.join(format!("enforce-decision-{cache}"));
        let text = format!(
            "{}verified_token_cache = {cache}\n",
            enforcer_config(env, addr, "127.0.0.1:0", &state)
        );
        let cfg = EnforceConfig::from_toml(&text, &env.dir)?;
        let (e, f) = Enforcer::start(&cfg)?;
        let started = Instant::now();
        while e.freshness() != Freshness::Fresh {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "no sync");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for _ in 0..100 {
            e.check_bearer(token, Some(&peer))
                .await
                .map_err(|d| anyhow::anyhow!("{d:?}"))?;
        }
        let n = 20_000;
        let t0 = Instant::now();
        for _ in 0..n {
            e.check_bearer(token, Some(&peer))
                .await
                .map_err(|d| anyhow::anyhow!("{d:?}"))?;
        }
        out[i] = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
        f.abort();
    }
    Ok(Decision {
        remembered_us: out[0],
        verifying_us: out[1],
    })
}

async fn revoke_to_deny(
    env: &BenchEnv,
    addr: &str,
    agent: &mut taskmint::client::Client,
    peer_pem: &str,
    n: usize,
    events: usize,
) -> anyhow::Result<DenyRow> {
    let peer = taskmint::pem::certs(peer_pem.as_bytes()).map_err(anyhow::Error::msg)?[0].to_vec();
    let mut tokens = Vec::with_capacity(events);
    for i in 0..events {
        let r = agent
            .mint_jwt(&format!("bench-deny-{n}-{i}"), "bench", None)
            .await
            .map_err(|s| anyhow::anyhow!("mint: {}", s.message()))?;
        tokens.push((r.credential.map(|c| c.id).unwrap_or_default(), r.token));
    }
    let mut enforcers = Vec::with_capacity(n);
    let mut followers = Vec::with_capacity(n);
    for k in 0..n {
        let state = env.dir.join(format!("enforce-{n}-{k}"));
        let text = enforcer_config(env, addr, "127.0.0.1:0", &state);
        let cfg = EnforceConfig::from_toml(&text, &env.dir)?;
        let (e, f) = Enforcer::start(&cfg)?;
        enforcers.push(e);
        followers.push(f);
    }
    let started = Instant::now();
    while !enforcers.iter().all(|e| e.freshness() == Freshness::Fresh) {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "not every enforcer caught up within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let peer = Arc::new(peer);
    let mut lat = Vec::with_capacity(n * events);
    let mut rpc = Vec::with_capacity(events);
    for (jti, token) in &tokens {
        // Every enforcer waits for its deny set to move, then checks.
        let mut waiters = tokio::task::JoinSet::new();
        let (go_tx, _) = tokio::sync::broadcast::channel::<(u64, Instant)>(1);
        for e in &enforcers {
            let (e, token, peer) = (e.clone(), token.clone(), peer.clone());
            let mut go = go_tx.subscribe();
            let mut applied = e.applied();
            waiters.spawn(async move {
                let (seq, returned) = go.recv().await?;
                applied.wait_for(|s| *s >= seq).await?;
                match e.check_bearer(&token, Some(&peer)).await {
                    Err(Denial::Forbidden(r)) if r == "credential revoked" => {}
                    other => anyhow::bail!("not denied after the event: {other:?}"),
                }
                Ok(Instant::now().saturating_duration_since(returned))
            });
        }
        let t0 = Instant::now();
        let r = agent
            .revoke(Target::CredentialId(jti.clone()), "bench")
            .await
            .map_err(|s| anyhow::anyhow!("revoke: {}", s.message()))?;
        let t1 = Instant::now();
        rpc.push(t1.duration_since(t0).as_secs_f64() * 1e3);
        let seq = *r.seqs.first().ok_or_else(|| anyhow::anyhow!("no event"))?;
        go_tx.send((seq, t1))?;
        while let Some(d) = waiters.join_next().await {
            lat.push(d??.as_secs_f64() * 1e3);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for f in followers {
        f.abort();
    }
    lat.sort_by(f64::total_cmp);
    rpc.sort_by(f64::total_cmp);
    Ok(DenyRow {
        enforcers: n,
        events,
        denials: lat.len(),
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        max_ms: lat.last().copied().unwrap_or(f64::NAN),
        revoke_rpc_p50_ms: percentile(&rpc, 0.50),
    })
}

fn rss_bytes() -> f64 {
    Proc(std::process::id()).rss_mib() * 1024.0 * 1024.0
}

fn deny_memory(entries: usize, state_dir: &Path) -> anyhow::Result<DenyMemory> {
    use rand::RngCore;
    let until = taskmint::clock::now_unix() + 3600;
    let mut rng = rand::rng();
    let mut fill = |len: usize| {
        let before = rss_bytes();
        let mut d = DenySet::new();
        let mut id = vec![0u8; len];
        for _ in 0..entries {
            rng.fill_bytes(&mut id);
            d.insert(&hex::encode(&id), until);
        }
        let rss = (rss_bytes() - before) / entries as f64;
        let table = d.table_bytes() as f64 / entries as f64;
        (d, table, rss)
    };
    let (jti, jti_table, jti_rss) = fill(16);
    drop(jti);
    let (serial, serial_table, serial_rss) = fill(19);
    taskmint::enforce::state::State::rewrite(state_dir, &serial, Some(1))?;
    let file = std::fs::metadata(state_dir.join("feed.log"))?.len() as f64 / entries as f64;
    Ok(DenyMemory {
        entries,
        jti_table_bytes: jti_table,
        jti_rss_bytes: jti_rss,
        serial_table_bytes: serial_table,
        serial_rss_bytes: serial_rss,
        state_file_bytes: file,
    })
}

/// The report as Markdown.
pub fn render(r: &EnforceReport) -> String {
    let mut out = format!(
        "## Check (enforcer: {}; load generator on CPUs {})\n\n\
         | token | concurrency | connections | checks | checks/s | p50 us | p99 us | max us | enforcer CPU us/check |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        r.placement, r.generator_cpus
    );
    for c in &r.checks {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} |\n",
            if c.remembered {
                "remembered"
            } else {
                "verified each time"
            },
            c.concurrency,
            c.connections,
            c.checks,
            c.per_second,
            c.p50_us,
            c.p99_us,
            c.max_us,
            c.enforcer_cpu_us
        ));
    }
    out.push_str(&format!(
        "\nThe decision alone (`Enforcer::check_bearer` in process, one thread): \
         {:.1} us remembered, {:.1} us verifying the signature.\n",
        r.decision.remembered_us, r.decision.verifying_us
    ));
    out.push_str(
        "\n## Revoke RPC returned -> Check denies\n\n\
         | enforcers | events | denials | p50 ms | p99 ms | max ms | Revoke RPC p50 ms |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for d in &r.denials {
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            d.enforcers, d.events, d.denials, d.p50_ms, d.p99_ms, d.max_ms, d.revoke_rpc_p50_ms
        ));
    }
    let m = &r.memory;
    out.push_str(&format!(
        "\n## Deny set at {} entries\n\n\
         | kind | table bytes/entry | resident bytes/entry |\n|---|---:|---:|\n\
         | jti (16 bytes) | {:.1} | {:.1} |\n| X.509 serial (19 bytes) | {:.1} | {:.1} |\n\n\
         State file: {:.1} bytes/entry.\n",
        m.entries,
        m.jti_table_bytes,
        m.jti_rss_bytes,
        m.serial_table_bytes,
        m.serial_rss_bytes,
        m.state_file_bytes
    ));
    out
}
