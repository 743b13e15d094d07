//! `taskmint bench hostile`: what one caller holding a valid SVID (or none)
//! can do to an issuer running on its **default** dev configuration, as
//! figures. It writes a dev trust domain with the given executable's own
//! `dev init`, starts that executable's `serve`, and attacks it over the
//! public API only, so an older build can be measured the same way and the
//! two compared side by side.
//!
//! Every attack is bounded in count and time and targets loopback only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use serde::Serialize;
use taskmint::client::Client;
use taskmint::grpc::pb;

use super::env::BenchEnv;
use super::proc_stats::{ServerProc, free_addr};

/// Sizes of the attacks.
#[derive(Debug, Clone)]
pub struct HostileBench {
    /// The `taskmint` executable under attack.
    pub exe: PathBuf,
    /// TLS connections opened without a client certificate and held.
    pub connections: usize,
    /// How long they are held before counting what is still open.
    pub hold: Duration,
    /// Watch streams opened on one connection.
    pub streams: usize,
    /// How long `BeginTask` is flooded.
    pub flood: Duration,
    /// `CheckStatus` / `GetCrl` calls.
    pub reads: usize,
    /// New subscriber names acknowledged under.
    pub names: usize,
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// The attack.
    pub attack: &'static str,
    /// What was measured.
    pub measure: &'static str,
    /// The value.
    pub value: String,
}

/// Runs every attack against a fresh issuer; returns the figures.
pub async fn run(b: &HostileBench, progress: impl Fn(&str)) -> anyhow::Result<Vec<Figure>> {
    let dir = std::env::temp_dir().join(format!(
        "taskmint-hostile-{}-{}",
        std::process::id(),
        taskmint::clock::now_unix()
    ));
    let init = Command::new(&b.exe)
        .args(["dev", "init", "--force", "--dir"])
        .arg(&dir)
        .output()?;
    anyhow::ensure!(
        init.status.success(),
        "`{} dev init` failed: {}",
        b.exe.display(),
        String::from_utf8_lossy(&init.stderr)
    );
    let env = BenchEnv::existing(&dir)?;
    let addr = free_addr()?;
    let server = ServerProc::start(&b.exe, &dir.join("taskmint.toml"), &addr, || {
        env.probe(&addr)
    })
    .await?;
    let proc = server.proc();
    let mut out = Vec::new();
    let mut fig = |attack, measure, value: String| {
        out.push(Figure {
            attack,
            measure,
            value,
        })
    };

    progress("unauthenticated garbage");
    let (code, message) = unauthenticated_garbage(&env, &addr).await?;
    fig(
        "a CSR that is not DER, without a certificate",
        "answer",
        format!("{code:?}: {}", first_chars(&message, 90)),
    );

    progress("connections without a certificate");
    let fds_before = open_fds(proc.0);
    let conns = open_without_certificate(&env, &addr, b.connections).await?;
    let fds_during = open_fds(proc.0);
    tokio::time::sleep(b.hold).await;
    let still_open = count_open(conns).await;
    fig(
        "connections without a certificate",
        "opened",
        b.connections.to_string(),
    );
    fig(
        "connections without a certificate",
        "issuer fds while held (before)",
        format!("{fds_during} ({fds_before})"),
    );
    fig(
        "connections without a certificate",
        "still open after hold",
        format!("{still_open} after {}", humantime::format_duration(b.hold)),
    );

    progress("watch streams on one connection");
    let rss_before = proc.rss_mib();
    let (live, refused, stuck) = many_watches(&env, &addr, b.streams).await?;
    let rss_during = proc.rss_mib();
    fig(
        "watch streams on one connection",
        "opened / refused / not answered in 5 s",
        format!("{live} / {refused} / {stuck} of {}", b.streams),
    );
    fig(
        "watch streams on one connection",
        "issuer RSS MiB before -> during",
        format!("{rss_before:.0} -> {rss_during:.0}"),
    );

    progress("BeginTask flood");
    let db_before = db_bytes(&env.store_path());
    let (begun, refused) = begin_flood(&env, &addr, b.flood).await?;
    let db_after = db_bytes(&env.store_path());
    fig(
        "BeginTask flood with large fields",
        "begun / refused",
        format!(
            "{begun} / {refused} in {}",
            humantime::format_duration(b.flood)
        ),
    );
    fig(
        "BeginTask flood with large fields",
        "store growth MB",
        format!("{:.1}", (db_after as f64 - db_before as f64) / 1e6),
    );

    progress("CheckStatus flood");
    let mut admin = env.connect(&addr, env.identity("admin")?).await?;
    let mut agent = env.connect(&addr, env.identity("agent")?).await?;
    let mut sidecar = env.connect(&addr, env.identity("sidecar")?).await?;
    let minted = agent.mint_jwt("hostile-use", "db", None).await?;
    let id = minted.credential.map(|c| c.id).unwrap_or_default();
    let head = |r: pb::ExportAuditResponse| r.head_seq;
    let audit_before = head(admin.export_audit(0, 1).await?);
    let (ok, limited) = repeat(b.reads, || {
        let mut c = sidecar.clone();
        let id = id.clone();
        async move { c.check_status(&id).await.map(|_| ()) }
    })
    .await;
    let audit_after = head(admin.export_audit(0, 1).await?);
    fig(
        "CheckStatus on one credential",
        "answered / rate limited",
        format!("{ok} / {limited} of {}", b.reads),
    );
    fig(
        "CheckStatus on one credential",
        "audit events written",
        (audit_after.saturating_sub(audit_before)).to_string(),
    );
    let agent_id = format!("spiffe://{}/workload/agent", super::env::TD);
    let timeline = admin.task_timeline("hostile-use", &agent_id).await;
    fig(
        "CheckStatus on one credential",
        "its task's timeline (owner)",
        match timeline {
            Ok(t) => format!(
                "OK, {} events, {} bytes",
                t.events.len(),
                prost::Message::encoded_len(&t)
            ),
            Err(e) => format!("{:?}: {}", e.code(), first_chars(e.message(), 60)),
        },
    );

    progress("GetCrl flood");
    // Read before and after by the admin, whose read bucket the flood does
    // not spend.
    let crl_before = admin.crl().await.map(|c| c.crl_number);
    let (ok, refused) = repeat(b.reads, || {
        let mut c = sidecar.clone();
        async move { c.crl().await.map(|_| ()) }
    })
    .await;
    let crl_after = admin.crl().await.map(|c| c.crl_number);
    fig(
        "GetCrl",
        "answered / refused",
        format!("{ok} / {refused} of {}", b.reads),
    );
    fig(
        "GetCrl",
        "CRL number before -> after",
        match (crl_before, crl_after) {
            (Ok(a), Ok(b)) => format!("{a} -> {b}"),
            (Err(e), _) | (_, Err(e)) => format!("{:?}", e.code()),
        },
    );

    progress("subscriber names");
    let mut taken = 0;
    let mut refused = 0;
    for i in 0..b.names {
        match sidecar.ack(&format!("hostile-name-{i}"), 0).await {
            Ok(_) => taken += 1,
            Err(_) => refused += 1,
        }
    }
    let mut lat = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let _ = sidecar.ack("hostile-name-0", 0).await;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    fig(
        "acks under new subscriber names",
        "names taken / refused",
        format!("{taken} / {refused} of {}", b.names),
    );
    fig(
        "acks under new subscriber names",
        "ack p50 ms afterwards",
        format!("{:.2}", super::load::percentile(&lat, 0.5)),
    );

    progress("oracles");
    let other = agent.get_task("hostile-use", "").await.is_ok();
    let theirs = sidecar.get_task("hostile-use", &agent_id).await;
    let nothing = sidecar.get_task("no-such-task", &agent_id).await;
    let describe = |r: &Result<pb::GetTaskResponse, tonic::Status>| match r {
        Ok(_) => "OK".to_owned(),
        Err(e) => format!("{:?}: {}", e.code(), first_chars(e.message(), 70)),
    };
    if other {
        fig("GetTask of another's task", "answer", describe(&theirs));
        fig(
            "GetTask of a task that does not exist",
            "answer",
            describe(&nothing),
        );
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

fn first_chars(s: &str, n: usize) -> String {
    let t: String = s.chars().take(n).collect();
    if t.len() < s.len() {
        format!("{t}...")
    } else {
        t
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn db_bytes(path: &Path) -> u64 {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    [path.to_owned(), PathBuf::from(wal)]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

fn tls_without_certificate(env: &BenchEnv) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for r in env.roots() {
        roots.add(r.clone())?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(taskmint::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

async fn open_without_certificate(
    env: &BenchEnv,
    addr: &str,
    n: usize,
) -> anyhow::Result<Vec<Tls>> {
    let connector = tls_without_certificate(env)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        if let Ok(Ok(tls)) = tokio::time::timeout(
            Duration::from_secs(5),
            connector.connect(ServerName::try_from("localhost")?, tcp),
        )
        .await
        {
            out.push(tls);
        }
    }
    Ok(out)
}

/// Connections the server has not closed: a read that would block.
async fn count_open(conns: Vec<Tls>) -> usize {
    use tokio::io::AsyncReadExt;
    let mut open = 0;
    for mut c in conns {
        let mut buf = [0u8; 64];
        let closed = loop {
            match tokio::time::timeout(Duration::from_millis(20), c.read(&mut buf)).await {
                Err(_) => break false,
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                // Server SETTINGS or GOAWAY bytes: read on to see an end.
                Ok(Ok(_)) => continue,
            }
        };
        if !closed {
            open += 1;
        }
    }
    open
}

async fn unauthenticated_garbage(
    env: &BenchEnv,
    addr: &str,
) -> anyhow::Result<(tonic::Code, String)> {
    let server_id = spiffe::SpiffeId::new(format!("spiffe://{}/taskmint", super::env::TD))?;
    let mut c = Client::connect_with(addr, None, env.roots().to_vec(), server_id).await?;
    // A CSR that is not DER: decoded and parsed before the caller was
    // checked on older builds.
    let r = c
        .mint_x509("garbage", vec![0x30, 0x82, 0xff, 0xff, 0x01], None)
        .await;
    Ok(match r {
        Ok(_) => (tonic::Code::Ok, String::new()),
        Err(e) => (e.code(), e.message().to_owned()),
    })
}

async fn many_watches(
    env: &BenchEnv,
    addr: &str,
    n: usize,
) -> anyhow::Result<(usize, usize, usize)> {
    let c = env.connect(addr, env.identity("sidecar")?).await?;
    let mut tasks = Vec::new();
    for _ in 0..n {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let open = async {
                let mut s = c.watch_once(Default::default()).await?;
                s.message().await?;
                Ok::<_, tonic::Status>(s)
            };
            match tokio::time::timeout(Duration::from_secs(5), open).await {
                Ok(Ok(s)) => (Some(s), false),
                Ok(Err(_)) => (None, true),
                Err(_) => (None, false),
            }
        }));
    }
    let (mut live, mut refused, mut stuck) = (Vec::new(), 0, 0);
    for t in tasks {
        match t.await? {
            (Some(s), _) => live.push(s),
            (None, true) => refused += 1,
            (None, false) => stuck += 1,
        }
    }
    let n_live = live.len();
    // Measured while they are open; dropped after.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok((n_live, refused, stuck))
}

async fn begin_flood(
    env: &BenchEnv,
    addr: &str,
    window: Duration,
) -> anyhow::Result<(usize, usize)> {
    let c = env.connect(addr, env.identity("agent")?).await?;
    let until = Instant::now() + window;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut refused, mut i) = (0, 0, 0);
            while Instant::now() < until {
                i += 1;
                let labels = (0..16)
                    .map(|l| (format!("k{l}-{}", "x".repeat(60)), "v".repeat(256)))
                    .collect();
                let req = pb::BeginTaskRequest {
                    task_id: format!("flood-{w}-{i}-{}", "t".repeat(100)),
                    purpose: "p".repeat(1024),
                    ticket: "T".repeat(128),
                    lifetime_seconds: 8 * 3600,
                    labels,
                    ..Default::default()
                };
                match c.begin_task(req).await {
                    Ok(_) => ok += 1,
                    Err(_) => refused += 1,
                }
            }
            (ok, refused)
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let (o, r) = t.await?;
        ok += o;
        refused += r;
    }
    Ok((ok, refused))
}

/// Runs `call` `n` times, 8 at a time; counts successes and failures.
async fn repeat<F, Fut>(n: usize, call: F) -> (usize, usize)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    let (mut ok, mut failed) = (0, 0);
    let mut left = n;
    while left > 0 {
        let batch = left.min(8);
        let handles: Vec<_> = (0..batch).map(|_| tokio::spawn(call())).collect();
        for h in handles {
            match h.await {
                Ok(Ok(())) => ok += 1,
                _ => failed += 1,
            }
        }
        left -= batch;
    }
    (ok, failed)
}

/// Two runs side by side: attack, measure, then one column per run.
pub fn table(labels: &[String], runs: &[Vec<Figure>]) -> String {
    let mut s = format!("| attack | measure | {} |\n|---|---|", labels.join(" | "));
    for _ in labels {
        s.push_str("---|");
    }
    s.push('\n');
    let Some(first) = runs.first() else {
        return s;
    };
    for f in first {
        s.push_str(&format!("| {} | {} |", f.attack, f.measure));
        for r in runs {
            let v = r
                .iter()
                .find(|g| g.attack == f.attack && g.measure == f.measure)
                .map(|g| g.value.replace('|', "/"))
                .unwrap_or_else(|| "-".into());
            s.push_str(&format!(" {v} |"));
        }
        s.push('\n');
    }
    s
}
