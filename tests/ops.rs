//! The operations surface of a running `taskmint serve`: the metrics move
//! with traffic and name no workload or task, the probes answer (and
//! `/readyz` fails when trust goes stale or the store goes away), log lines
//! are JSON or plain text without colour codes, one per call, and a
//! caller's `traceparent` reaches the log line and the audit trail.

mod common;

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use taskmint::client::{Client, ClientConfig};
use taskmint::grpc::pb;

const BIN: &str = env!("CARGO_BIN_EXE_taskmint");
const TD: &str = "example.org";
const AGENT: &str = "spiffe://example.org/workload/agent";
const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `taskmint serve` in a child process, on a fresh dev trust domain.
struct Serve {
    child: Child,
    dir: tempfile::TempDir,
    grpc: String,
    ops: String,
    log: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// Starts one with the dev config edited by `edit`, and `extra` flags;
    /// waits until `/healthz` answers.
    async fn start(edit: impl FnOnce(String) -> String, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let workloads: Vec<String> = ["agent", "sidecar", "admin"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        taskmint::devca::init(dir.path(), TD, &workloads, "127.0.0.1:0", false).unwrap();
        let path = dir.path().join("taskmint.toml");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("reload_interval = \"5s\"", "reload_interval = \"200ms\"");
        std::fs::write(&path, edit(common::raise_call_limits(text))).unwrap();
        let grpc = format!("127.0.0.1:{}", free_port());
        let ops = format!("127.0.0.1:{}", free_port());
        let log = dir.path().join("serve.log");
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .args(["--listen", &grpc, "--ops-listen", &ops])
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("TASKMINT_LOG_FORMAT")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let s = Self {
            child,
            dir,
            grpc,
            ops,
            log,
        };
        let up = common::eventually(Duration::from_secs(60), || async {
            get(&s.ops, "/healthz").is_some_and(|(code, _)| code == 200)
        })
        .await;
        assert!(up, "serve did not come up:\n{}", s.log_text());
        s
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    async fn client(&self, name: &str) -> Client {
        Client::connect(&ClientConfig {
            server: self.grpc.clone(),
            svid: self.path(&format!("{name}.pem")),
            svid_key: self.path(&format!("{name}.key")),
            bundle: self.path("bundle.pem"),
            server_id: None,
        })
        .await
        .unwrap()
    }

    fn scrape(&self) -> Scrape {
        let (code, body) = get(&self.ops, "/metrics").expect("the metrics answer");
        assert_eq!(code, 200, "{body}");
        Scrape::parse(&body)
    }
}

/// `GET path` over plain HTTP/1.1: the status code and the body.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut tcp = std::net::TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

/// One scrape: every sample by its name and labels as written.
#[derive(Debug)]
struct Scrape {
    text: String,
    samples: HashMap<String, f64>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_owned(), v.parse::<f64>().unwrap())
            })
            .collect();
        Self {
            text: text.to_owned(),
            samples,
        }
    }

    /// The sample's value; 0 when absent (a labelled counter not yet
    /// touched).
    fn get(&self, sample: &str) -> f64 {
        self.samples.get(sample).copied().unwrap_or(0.0)
    }
}

fn requests(method_service: (&str, &str), code: &str) -> String {
    let (service, method) = method_service;
    format!("taskmint_requests_total{{service=\"{service}\",method=\"{method}\",code=\"{code}\"}}")
}

const MINT_JWT: (&str, &str) = ("taskmint.v1.Issuer", "MintJwt");
const WATCH: (&str, &str) = ("taskmint.v1.Revocations", "WatchRevocations");

#[tokio::test]
async fn metrics_move_with_traffic_and_name_no_workload_or_task() {
    let s = Serve::start(|t| t, &[]).await;
    let mut agent = s.client("agent").await;
    let mut sidecar = s.client("sidecar").await;
    let issued = "taskmint_credentials_issued_total{kind=\"jwt\"}";
    let minted_ok = requests(MINT_JWT, "OK");
    let minted_count = "taskmint_request_duration_seconds_count{service=\"taskmint.v1.Issuer\",method=\"MintJwt\"}";
    let commits = "taskmint_store_commit_duration_seconds_count{backend=\"sqlite\"}";

    let before = s.scrape();
    assert!(
        before.text.contains(&format!(
            "taskmint_build_info{{version=\"{}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{}",
        before.text
    );
    agent.mint_jwt("metrics-1", "db", None).await.unwrap();
    agent.mint_jwt("metrics-2", "db", None).await.unwrap();
    let after_mint = s.scrape();
    assert_eq!(after_mint.get(issued) - before.get(issued), 2.0);
    assert_eq!(after_mint.get(&minted_ok) - before.get(&minted_ok), 2.0);
    assert_eq!(after_mint.get(minted_count) - before.get(minted_count), 2.0);
    assert!(after_mint.get(commits) >= before.get(commits) + 2.0);
    assert_eq!(
        after_mint.get("taskmint_credentials_issued_total{kind=\"x509\"}"),
        0.0
    );

    // A refusal is counted under its code, and issues nothing.
    let err = agent
        .mint_jwt("metrics-3", "db", Some(Duration::from_secs(100 * 3600)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let refused = s.scrape();
    assert_eq!(
        refused.get(&requests(MINT_JWT, "INVALID_ARGUMENT"))
            - after_mint.get(&requests(MINT_JWT, "INVALID_ARGUMENT")),
        1.0
    );
    assert_eq!(refused.get(issued), after_mint.get(issued));

    // A watch counts as a subscriber while it is open.
    let mut stream = sidecar
        .watch_once(pb::WatchRevocationsRequest {
            after_seq: Some(0),
            ..Default::default()
        })
        .await
        .unwrap();
    let watching = s.scrape();
    assert_eq!(
        watching.get("taskmint_feed_subscribers"),
        1.0,
        "{}",
        watching.text
    );

    let seqs = agent
        .revoke(
            pb::revoke_request::Target::Task(pb::TaskRef {
                task_id: "metrics-1".into(),
                holder: String::new(),
            }),
            "rotating",
        )
        .await
        .unwrap()
        .seqs;
    assert_eq!(seqs.len(), 1);
    // The watcher sees the revocation: the feed published it.
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(pb::watch_revocations_response::Msg::Event(e)) = msg.msg {
            assert_eq!(e.seq, seqs[0]);
            break;
        }
    }
    let by_request = "taskmint_revocations_total{reason=\"requested\",scope=\"task\"}";
    assert_eq!(s.scrape().get(by_request) - watching.get(by_request), 1.0);
    let published = common::eventually(Duration::from_secs(5), || async {
        s.scrape().get("taskmint_feed_head_seq") == seqs[0] as f64
    })
    .await;
    assert!(published, "{}", s.scrape().text);

    // Closing the stream ends the call: counted once, and no longer a
    // subscriber.
    drop(stream);
    drop(sidecar);
    let mut last = None;
    let closed = common::eventually(Duration::from_secs(10), || {
        let m = s.scrape();
        let done = m.get("taskmint_feed_subscribers") == 0.0;
        last = Some(m);
        async move { done }
    })
    .await;
    let closed_scrape = last.unwrap();
    assert!(closed, "{}", closed_scrape.text);
    let watch_calls: f64 = closed_scrape
        .samples
        .iter()
        .filter(|(k, _)| k.starts_with(&requests(WATCH, "").replace("code=\"\"}", "")))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(watch_calls, 1.0, "{}", closed_scrape.text);
    // Streams are not timed.
    assert!(
        !closed_scrape
            .text
            .contains("taskmint_request_duration_seconds_count{service=\"taskmint.v1.Revocations\",method=\"WatchRevocations\"}")
    );

    // Nothing a caller chose, and nobody's identity, is a label.
    for secret in ["spiffe://", "metrics-1", "rotating", "example.org"] {
        assert!(
            !closed_scrape.text.contains(secret),
            "`{secret}` in the exposition:\n{}",
            closed_scrape.text
        );
    }
}

#[tokio::test]
async fn probes_answer_and_readyz_fails_while_a_trust_bundle_is_stale() {
    let s = Serve::start(|t| t, &[]).await;
    assert_eq!(get(&s.ops, "/healthz").unwrap(), (200, "ok\n".into()));
    assert_eq!(get(&s.ops, "/readyz").unwrap(), (200, "ready\n".into()));
    assert_eq!(get(&s.ops, "/nope").unwrap().0, 404);

    // A bundle file that no longer parses: the issuer keeps the previous
    // bundle, and says it is not ready until the file is fixed.
    let bundle = s.path("bundle.pem");
    let good = std::fs::read(&bundle).unwrap();
    std::fs::write(&bundle, b"-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    let mut last = (0, String::new());
    let stale = common::eventually(Duration::from_secs(10), || {
        last = get(&s.ops, "/readyz").unwrap();
        let code = last.0;
        async move { code == 503 }
    })
    .await;
    assert!(stale, "{last:?}");
    assert!(last.1.starts_with("trust: stale"), "{}", last.1);
    assert!(last.1.contains("bundle.pem"), "{}", last.1);
    // Liveness is not readiness: the process still answers.
    assert_eq!(get(&s.ops, "/healthz").unwrap().0, 200);
    let errors = s.scrape().get("taskmint_trust_reload_errors_total");
    assert!(errors >= 1.0);

    std::fs::write(&bundle, good).unwrap();
    let ready = common::eventually(Duration::from_secs(10), || async {
        get(&s.ops, "/readyz").unwrap().0 == 200
    })
    .await;
    assert!(ready);

    // Text logs to a file carry no colour codes.
    let mut agent = s.client("agent").await;
    agent.mint_jwt("text-1", "db", None).await.unwrap();
    let found = common::eventually(Duration::from_secs(5), || {
        let text = s.log_text();
        async move { text.contains("method=\"MintJwt\"") || text.contains("method=MintJwt") }
    })
    .await;
    let text = s.log_text();
    assert!(found, "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escape in a piped log:\n{text}"
    );
    assert!(!text.contains("Some("), "Debug text in the log:\n{text}");
}

/// The lines of a JSON log, each parsed.
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

fn request_lines(lines: &[serde_json::Value], method: &str, task: &str) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter(|l| l["message"] == "request" && l["method"] == method && l["task"] == task)
        .cloned()
        .collect()
}

/// The whole trail up to the head when the export began (each export is
/// itself audited).
async fn audit_events(s: &Serve) -> Vec<pb::AuditEvent> {
    let mut admin = s.client("admin").await;
    let mut out: Vec<pb::AuditEvent> = Vec::new();
    let mut head = None;
    loop {
        let after = out.last().map(|e| e.seq).unwrap_or(0);
        let page = admin.export_audit(after, 1000).await.unwrap();
        let head = *head.get_or_insert(page.head_seq);
        out.extend(page.events.into_iter().filter(|e| e.seq <= head));
        if out.last().map(|e| e.seq).unwrap_or(0) >= head {
            return out;
        }
    }
}

#[tokio::test]
async fn json_logs_one_line_per_call_with_the_trace_which_reaches_the_audit_trail() {
    let s = Serve::start(|t| t, &["--log-format", "json"]).await;
    let agent = s.client("agent").await;
    let mut traced = agent.clone().with_traceparent(Some(TRACE)).unwrap();
    let mut untraced = agent.with_traceparent(Some("00-not-a-trace-01")).unwrap();
    let minted = traced.mint_jwt("traced-1", "db", None).await.unwrap();
    untraced.mint_jwt("untraced-1", "db", None).await.unwrap();
    traced
        .revoke(
            pb::revoke_request::Target::Task(pb::TaskRef {
                task_id: "traced-1".into(),
                holder: String::new(),
            }),
            "done",
        )
        .await
        .unwrap();

    let mut lines = Vec::new();
    let logged = common::eventually(Duration::from_secs(5), || {
        lines = json_lines(&s.log_text());
        let n = request_lines(&lines, "Revoke", "traced-1").len();
        async move { n == 1 }
    })
    .await;
    let raw = s.log_text();
    assert!(logged, "{raw}");
    assert!(!raw.contains('\u{1b}'), "ANSI escape in a JSON log");

    let mint = request_lines(&lines, "MintJwt", "traced-1");
    assert_eq!(mint.len(), 1, "exactly one line per call: {mint:?}");
    let m = &mint[0];
    assert_eq!(m["level"], "INFO");
    assert_eq!(m["service"], "taskmint.v1.Issuer");
    assert_eq!(m["caller"], AGENT);
    assert_eq!(m["code"], "OK");
    assert_eq!(m["trace_id"], TRACE_ID);
    assert_eq!(
        m["credential_id"],
        minted.credential.as_ref().unwrap().id.as_str()
    );
    assert!(m["duration_ms"].as_f64().unwrap() > 0.0, "{m}");
    assert!(m["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{m}");
    // An invalid traceparent is ignored.
    let plain = request_lines(&lines, "MintJwt", "untraced-1");
    assert_eq!(plain.len(), 1);
    assert_eq!(plain[0]["trace_id"], "");
    assert_eq!(
        request_lines(&lines, "Revoke", "traced-1")[0]["trace_id"],
        TRACE_ID
    );
    // No Rust Debug text in any field.
    assert!(!raw.contains("Some("), "{raw}");

    // The audit events those calls wrote carry the trace, and the chain
    // still verifies.
    let events = audit_events(&s).await;
    let mut verifier = taskmint::audit::Verifier::default();
    for e in &events {
        verifier
            .check(&taskmint::grpc::audit_from_pb(e.clone()))
            .unwrap();
    }
    let of = |kind: &str, task: &str| -> Vec<&pb::AuditEvent> {
        events
            .iter()
            .filter(|e| taskmint::grpc::audit_kind_text(e.kind) == kind && e.task_id == task)
            .collect()
    };
    for (kind, task, trace) in [
        ("task_begin", "traced-1", TRACE),
        ("mint_jwt", "traced-1", TRACE),
        ("revoke", "traced-1", TRACE),
        ("revoked", "traced-1", TRACE),
        ("mint_jwt", "untraced-1", ""),
    ] {
        let found = of(kind, task);
        assert_eq!(found.len(), 1, "{kind} {task}: {events:?}");
        assert_eq!(found[0].trace, trace, "{kind} {task}");
    }

    // `taskmint audit export` shows it.
    let export = Command::new(BIN)
        .args(["audit", "export"])
        .env_remove("TRACEPARENT")
        .args(conn_args(&s, "admin"))
        .output()
        .unwrap();
    assert!(export.status.success(), "{export:?}");
    let exported = String::from_utf8(export.stdout).unwrap();
    let traced_lines = exported
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["trace"] == TRACE)
        .count();
    assert_eq!(traced_lines, 4, "{exported}");

    // And the task's timeline.
    let timeline = Command::new(BIN)
        .args(["audit", "task", "--task", "traced-1", "--holder", AGENT])
        .env_remove("TRACEPARENT")
        .args(conn_args(&s, "admin"))
        .output()
        .unwrap();
    assert!(timeline.status.success(), "{timeline:?}");
    let text = String::from_utf8(timeline.stdout).unwrap();
    assert_eq!(text.matches(&format!("trace {TRACE}")).count(), 4, "{text}");
}

fn conn_args(s: &Serve, name: &str) -> Vec<String> {
    vec![
        "--server".into(),
        s.grpc.clone(),
        "--svid".into(),
        s.path(&format!("{name}.pem")).display().to_string(),
        "--svid-key".into(),
        s.path(&format!("{name}.key")).display().to_string(),
        "--bundle".into(),
        s.path("bundle.pem").display().to_string(),
    ]
}

#[tokio::test]
async fn the_cli_sends_traceparent_from_the_environment() {
    let s = Serve::start(|t| t, &["--log-format", "json"]).await;
    let out = Command::new(BIN)
        .args(["mint", "jwt", "--task", "env-1", "--aud", "db"])
        .args(conn_args(&s, "agent"))
        .env("TRACEPARENT", TRACE)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let found = common::eventually(Duration::from_secs(5), || {
        let lines = json_lines(&s.log_text());
        async move {
            request_lines(&lines, "MintJwt", "env-1")
                .first()
                .is_some_and(|l| l["trace_id"] == TRACE_ID)
        }
    })
    .await;
    assert!(found, "{}", s.log_text());
}

/// `/readyz` on PostgreSQL: 503 naming the store while the database is down,
/// ready again once it is back; the trace column works there too.
#[tokio::test]
async fn readyz_follows_the_database_and_traces_are_stored_on_postgresql() {
    use common::pg::{self, Cluster};
    let Some(cluster) = tokio::task::spawn_blocking(Cluster::start).await.unwrap() else {
        pg::skip();
        return;
    };
    let url = pg::fresh_database(&cluster.url()).await;
    let s = Serve::start(
        |t| {
            t.replace(
                taskmint::devca::SQLITE_STORE_LINE,
                &format!("url = \"{url}\"\nacquire_timeout = \"2s\""),
            )
        },
        &[],
    )
    .await;
    assert_eq!(get(&s.ops, "/readyz").unwrap(), (200, "ready\n".into()));
    let mut traced = s
        .client("agent")
        .await
        .with_traceparent(Some(TRACE))
        .unwrap();
    traced.mint_jwt("pg-traced", "db", None).await.unwrap();
    let events = audit_events(&s).await;
    let mint: Vec<_> = events
        .iter()
        .filter(|e| {
            e.task_id == "pg-traced" && taskmint::grpc::audit_kind_text(e.kind) == "mint_jwt"
        })
        .collect();
    assert_eq!(mint.len(), 1);
    assert_eq!(mint[0].trace, TRACE);
    let mut verifier = taskmint::audit::Verifier::default();
    for e in &events {
        verifier
            .check(&taskmint::grpc::audit_from_pb(e.clone()))
            .unwrap();
    }
    let commits = s
        .scrape()
        .get("taskmint_store_commit_duration_seconds_count{backend=\"postgres\"}");
    assert!(commits >= 1.0);

    cluster.stop();
    let mut last = (0, String::new());
    let down = common::eventually(Duration::from_secs(30), || {
        last = get(&s.ops, "/readyz").unwrap();
        let code = last.0;
        async move { code == 503 }
    })
    .await;
    assert!(down, "{last:?}");
    assert!(last.1.starts_with("store: "), "{}", last.1);
    assert_eq!(get(&s.ops, "/healthz").unwrap().0, 200);

    cluster.start_again();
    let back = common::eventually(Duration::from_secs(60), || async {
        get(&s.ops, "/readyz").unwrap().0 == 200
    })
    .await;
    assert!(back, "{:?}", get(&s.ops, "/readyz"));
    drop(s);
    drop(cluster);
}
