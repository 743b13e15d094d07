//! Several `taskmint serve` processes on one PostgreSQL database behaving as
//! one issuer: replicas started together on an empty database migrate it
//! once; a revocation committed through any replica reaches watchers
//! on every replica in order; a replica killed with SIGKILL under load loses
//! nothing it acknowledged while the others keep serving; the deadline
//! reaper moves to another replica when its leader dies; replicas report
//! `NOT_SERVING` and refuse calls while PostgreSQL is down, and recover by
//! themselves when it returns.
//!
//! Each test runs real processes on a throwaway cluster of its own (see
//! `common/pg.rs`); without PostgreSQL they say they were skipped.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::pg::{self, Cluster};
use common::{TD, eventually};
use taskmint::client::{Client, ClientConfig, WatchItem};
use taskmint::grpc::pb;
use tonic_health::ServingStatus;

const BIN: &str = env!("CARGO_BIN_EXE_taskmint");
const AGENT: &str = "spiffe://example.org/workload/agent";

/// A database, and the config every replica shares.
struct Fleet {
    dir: tempfile::TempDir,
    /// `None` when the tests use an outside server (which they cannot restart).
    cluster: Option<Cluster>,
    replicas: Vec<Replica>,
    /// The database the replicas share.
    url: String,
}

/// One `taskmint serve` process.
struct Replica {
    child: Option<Child>,
    addr: String,
    log: PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Replica {
    /// SIGKILL: no shutdown, no goodbye to the database.
    fn kill(&mut self) {
        let mut c = self.child.take().expect("replica running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Fleet {
    /// A fresh database and dev trust domain; no replica started yet.
    async fn new() -> Option<Self> {
        let (cluster, server) = match pg::server_from_env() {
            Some(url) => (None, url),
            None => match tokio::task::spawn_blocking(Cluster::start).await.unwrap() {
                Some(c) => {
                    let url = c.url();
                    (Some(c), url)
                }
                None => {
                    pg::skip();
                    return None;
                }
            },
        };
        let url = pg::fresh_database(&server).await;
        let dir = tempfile::tempdir().unwrap();
        let workloads: Vec<String> = ["agent", "sidecar", "admin"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        taskmint::devca::init(dir.path(), TD, &workloads, "127.0.0.1:0", false).unwrap();
        let path = dir.path().join("taskmint.toml");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(
                taskmint::devca::SQLITE_STORE_LINE,
                &format!("url = \"{url}\"\nacquire_timeout = \"3s\""),
            )
            .replace("reaper_interval = \"1s\"", "reaper_interval = \"200ms\"")
            // One agent plays many callers under load: no token bucket in the way.
            .replace(
                "rate = { per_second = 100.0, burst = 200 }",
                "rate = { per_second = 100000.0, burst = 100000 }",
            )
            .replace(
                "heartbeat_interval = \"10s\"",
                "heartbeat_interval = \"1s\"",
            );
        std::fs::write(&path, common::raise_call_limits(text)).unwrap();
        Some(Self {
            dir,
            cluster,
            replicas: Vec::new(),
            url,
        })
    }

    /// Starts a replica and waits until it serves; its index.
    async fn start(&mut self) -> usize {
        let i = self.spawn();
        self.wait_up(i).await;
        i
    }

    /// Starts a replica without waiting for it; its index.
    fn spawn(&mut self) -> usize {
        let i = self.replicas.len();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = self.dir.path().join(format!("replica-{i}.log"));
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(self.dir.path().join("taskmint.toml"))
            .args(["--listen", &addr])
            .env("RUST_LOG", "taskmint=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        self.replicas.push(Replica {
            child: Some(child),
            addr,
            log,
        });
        i
    }

    /// Waits until replica `i` serves.
    async fn wait_up(&self, i: usize) {
        let up = eventually(Duration::from_secs(20), || async {
            match self.try_client(i, "agent").await {
                Some(mut c) => c.health("").await.ok() == Some(ServingStatus::Serving),
                None => false,
            }
        })
        .await;
        assert!(
            up,
            "replica {i} did not start:\n{}",
            self.replicas[i].log_text()
        );
    }

    async fn try_client(&self, i: usize, name: &str) -> Option<Client> {
        Client::connect(&self.client_config(i, name)).await.ok()
    }

    fn client_config(&self, i: usize, name: &str) -> ClientConfig {
        let d = self.dir.path();
        ClientConfig {
            server: self.replicas[i].addr.clone(),
            svid: d.join(format!("{name}.pem")),
            svid_key: d.join(format!("{name}.key")),
            bundle: d.join("bundle.pem"),
            server_id: None,
        }
    }

    async fn client(&self, i: usize, name: &str) -> Client {
        Client::connect(&self.client_config(i, name)).await.unwrap()
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An enforcer following replicas 0 then 1, caught up.
    async fn enforcer(
        &self,
        state: &Path,
        max_staleness: &str,
    ) -> (taskmint::enforce::Enforcer, tokio::task::JoinHandle<()>) {
        let text = format!(
            "issuers = [\"{}\", \"{}\"]\nsvid = \"sidecar.pem\"\nsvid_key = \"sidecar.key\"\n\
             bundle = \"bundle.pem\"\nsubscriber = \"sidecar\"\nlisten = \"127.0.0.1:0\"\n\
             audiences = [\"db\"]\nmax_staleness = \"{max_staleness}\"\nstate_dir = \"{}\"\n",
            self.replicas[0].addr,
            self.replicas[1].addr,
            state.display()
        );
        let cfg = taskmint::enforce::EnforceConfig::from_toml(&text, self.dir()).unwrap();
        let (enforcer, follower) = taskmint::enforce::Enforcer::start(&cfg).unwrap();
        assert!(
            eventually(Duration::from_secs(10), || async {
                enforcer.freshness() == taskmint::enforce::Freshness::Fresh
            })
            .await
        );
        (enforcer, follower)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn watch_all() -> pb::WatchRevocationsRequest {
    pb::WatchRevocationsRequest {
        after_seq: None,
        subscriber: "ha-test".into(),
        ..Default::default()
    }
}

/// The next revocation event, skipping heartbeats and reconnects.
async fn next_event(w: &mut taskmint::client::Watcher, limit: Duration) -> pb::RevocationEvent {
    let until = Instant::now() + limit;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, w.next()).await {
            Ok(Ok(WatchItem::Event(e))) => return e,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("watch failed: {e}"),
            Err(_) => panic!("no revocation event within {limit:?}"),
        }
    }
}

/// Waits until the watcher has taken its snapshot.
async fn synced(w: &mut taskmint::client::Watcher) -> u64 {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Ok(WatchItem::Synced(s))) => return s,
            Ok(Ok(_)) => {}
            other => panic!("no snapshot: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_on_any_replica_reaches_watchers_on_every_replica_in_order() {
    let Some(mut fleet) = Fleet::new().await else {
        return;
    };
    // All three at once on an empty database: one of them migrates it.
    for _ in 0..3 {
        fleet.spawn();
    }
    for i in 0..3 {
        fleet.wait_up(i).await;
    }
    // Watchers on C and on A.
    let mut on_c = fleet.client(2, "sidecar").await.watcher(watch_all());
    let mut on_a = fleet.client(0, "sidecar").await.watcher(watch_all());
    let mut filtered = fleet
        .client(2, "sidecar")
        .await
        .watcher(pb::WatchRevocationsRequest {
            task_id: "no-such-task".into(),
            ..watch_all()
        });
    assert_eq!(synced(&mut on_c).await, 0);
    assert_eq!(synced(&mut on_a).await, 0);
    assert_eq!(synced(&mut filtered).await, 0);

    // Mint on A; complete on A and on B, at the same time.
    let mut a = fleet.client(0, "agent").await;
    let tasks: Vec<String> = (0..12).map(|i| format!("ha-{i}")).collect();
    for t in &tasks {
        a.mint_jwt(t, "db", None).await.unwrap();
    }
    let mut ends = Vec::new();
    for (n, t) in tasks.iter().enumerate() {
        let mut c = fleet.client(n % 2, "agent").await;
        let t = t.clone();
        ends.push(tokio::spawn(
            async move { c.complete_task(&t).await.unwrap() },
        ));
    }
    for e in ends {
        e.await.unwrap();
    }
    for w in [&mut on_c, &mut on_a] {
        let mut seen = BTreeSet::new();
        for expected in 1..=tasks.len() as u64 {
            let e = next_event(w, Duration::from_secs(5)).await;
            assert_eq!(
                e.seq, expected,
                "events arrive in sequence, no gap, no duplicate"
            );
            assert!(seen.insert(e.task_id.clone()));
        }
        assert_eq!(seen, tasks.iter().cloned().collect());
    }

    // A heartbeat carries the global head, whoever committed it: also to a
    // watcher whose filter let none of the events through. One sent while
    // the completions were still arriving may be queued with an older head:
    // heads never go back, and the last event's arrives.
    let mut last = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while last < tasks.len() as u64 {
        match tokio::time::timeout_at(deadline, filtered.next()).await {
            Ok(Ok(WatchItem::Heartbeat(s))) => {
                assert!(s >= last, "a heartbeat went back from {last} to {s}");
                last = s;
            }
            Ok(Ok(WatchItem::Event(e))) => panic!("unexpected event {}", e.seq),
            Ok(Ok(_)) => {}
            other => panic!("no heartbeat with head {}: {other:?}", tasks.len()),
        }
    }
    assert_eq!(last, tasks.len() as u64);

    // Relying parties see one CRL, whichever replica they ask.
    let mut admin_a = fleet.client(0, "admin").await;
    let mut admin_b = fleet.client(1, "admin").await;
    let crl_a = admin_a.crl().await.unwrap();
    let crl_b = admin_b.crl().await.unwrap();
    assert_eq!(
        (crl_a.crl_number, &crl_a.crl),
        (crl_b.crl_number, &crl_b.crl)
    );
    // The trail written by three replicas is one chain that verifies.
    let verify = Command::new(BIN)
        .args(["audit", "verify", "--config"])
        .arg(fleet.dir().join("taskmint.toml"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
    let said = String::from_utf8_lossy(&verify.stdout).to_string()
        + &String::from_utf8_lossy(&verify.stderr);
    assert!(said.contains("intact"), "{said}");

    // A resume on another replica replays from the log.
    let mut resumed = fleet
        .client(1, "sidecar")
        .await
        .watcher(pb::WatchRevocationsRequest {
            after_seq: Some(5),
            ..watch_all()
        });
    for expected in 6..=tasks.len() as u64 {
        assert_eq!(
            next_event(&mut resumed, Duration::from_secs(5)).await.seq,
            expected
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_under_load_loses_nothing_it_acknowledged() {
    let Some(mut fleet) = Fleet::new().await else {
        return;
    };
    fleet.start().await;
    fleet.start().await;
    // Eight agents mint as fast as they can through A until it dies, each
    // on a task of its own; every acknowledged credential is recorded.
    let stop_at = Instant::now() + Duration::from_secs(30);
    let mut load = Vec::new();
    for n in 0..8 {
        let mut c = fleet.client(0, "agent").await;
        load.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut cut_off = 0;
            while Instant::now() < stop_at && cut_off < 3 {
                // A task per 50 mints: the limit on active credentials.
                let task = format!("load-{n}-{}", acked.len() / 50);
                match c.mint_jwt(&task, "db", None).await {
                    Ok(r) => acked.push(r.credential.unwrap().id),
                    Err(e) => {
                        // The connection died under the call: no answer
                        // from the issuer, so nothing was acknowledged.
                        assert!(
                            matches!(
                                e.code(),
                                tonic::Code::Unavailable
                                    | tonic::Code::Unknown
                                    | tonic::Code::Cancelled
                            ),
                            "{e:?}"
                        );
                        cut_off += 1;
                    }
                }
            }
            (acked, cut_off)
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    fleet.replicas[0].kill();
    let mut acked = Vec::new();
    for l in load {
        let (ids, cut_off) = l.await.unwrap();
        // Still minting when the replica died: the kill hit calls in flight.
        assert!(cut_off > 0, "a loader stopped before the kill");
        acked.extend(ids);
    }
    assert!(
        acked.len() > 20,
        "the load ran before the kill ({} mints)",
        acked.len()
    );

    // B serves on, and holds every credential A acknowledged.
    let mut b = fleet.client(1, "agent").await;
    b.mint_jwt("after-kill", "db", None).await.unwrap();
    let mut admin = fleet.client(1, "admin").await;
    for id in &acked {
        let status = admin.check_status(id).await.unwrap_or_else(|e| {
            panic!("credential {id} acknowledged by the killed replica is lost: {e}")
        });
        assert_eq!(
            status.state(),
            pb::CredentialState::Active,
            "credential {id}: {status:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_deadline_reaper_moves_to_another_replica_when_its_leader_dies() {
    let Some(mut fleet) = Fleet::new().await else {
        return;
    };
    let a = fleet.start().await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            fleet.replicas[a]
                .log_text()
                .contains("leading the background duties")
        })
        .await,
        "the first replica leads"
    );
    let b = fleet.start().await;
    let mut watch = fleet.client(b, "sidecar").await.watcher(watch_all());
    synced(&mut watch).await;

    let mut agent = fleet.client(b, "agent").await;
    let begun = Instant::now();
    agent
        .begin_task(pb::BeginTaskRequest {
            task_id: "short".into(),
            lifetime_seconds: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    agent.mint_jwt("short", "db", None).await.unwrap();
    fleet.replicas[a].kill();

    let e = next_event(&mut watch, Duration::from_secs(10)).await;
    let after = begun.elapsed();
    assert_eq!(e.task_id, "short");
    assert_eq!(e.reason, "task_deadline");
    assert!(
        after <= Duration::from_secs(5),
        "a 3 s deadline was enforced only after {after:?}"
    );
    assert!(
        fleet.replicas[b]
            .log_text()
            .contains("leading the background duties")
    );
    let t = agent.get_task("short", "").await.unwrap();
    assert_eq!(t.task.unwrap().state(), pb::TaskState::Expired);
    // Reaped once: one event, one expiry in the task's trail.
    let mut admin = fleet.client(b, "admin").await;
    let timeline = admin.task_timeline("short", AGENT).await.unwrap();
    let expiries = timeline
        .events
        .iter()
        .filter(|e| e.kind() == pb::AuditKind::TaskExpired)
        .count();
    assert_eq!(expiries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_refuse_calls_while_postgresql_is_down_and_recover_by_themselves() {
    let Some(mut fleet) = Fleet::new().await else {
        return;
    };
    if fleet.cluster.is_none() {
        eprintln!("skipped: restarting PostgreSQL needs the tests' own cluster");
        return;
    }
    fleet.start().await;
    fleet.start().await;
    let mut agent = fleet.client(0, "agent").await;
    agent.mint_jwt("before", "db", None).await.unwrap();
    let mut watch = fleet.client(1, "sidecar").await.watcher(watch_all());
    synced(&mut watch).await;

    fleet.cluster.as_ref().unwrap().stop();
    for i in 0..2 {
        let mut c = fleet.client(i, "agent").await;
        let down = eventually(Duration::from_secs(15), || {
            let mut c = c.clone();
            async move { c.health("").await.ok() == Some(ServingStatus::NotServing) }
        })
        .await;
        assert!(
            down,
            "replica {i} still reports SERVING without its database"
        );
        let e = c.mint_jwt("during", "db", None).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert!(
            e.message().contains("database"),
            "the refusal names the database: {}",
            e.message()
        );
    }

    fleet.cluster.as_ref().unwrap().start_again();
    for i in 0..2 {
        let mut c = fleet.client(i, "agent").await;
        let up = eventually(Duration::from_secs(20), || {
            let mut c = c.clone();
            async move { c.health("").await.ok() == Some(ServingStatus::Serving) }
        })
        .await;
        assert!(
            up,
            "replica {i} did not recover:\n{}",
            fleet.replicas[i].log_text()
        );
        c.mint_jwt("after", "db", None).await.unwrap();
    }
    // The watcher on B was cut off while the log could not be read; it
    // resumes and gets what A commits now.
    agent.complete_task("before").await.unwrap();
    let e = next_event(&mut watch, Duration::from_secs(15)).await;
    assert_eq!(e.task_id, "before");
    assert_eq!(e.seq, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn feeds_resync_when_the_log_goes_back() {
    let Some(mut fleet) = Fleet::new().await else {
        return;
    };
    fleet.start().await;
    let mut agent = fleet.client(0, "agent").await;
    for t in ["r1", "r2", "r3"] {
        agent.mint_jwt(t, "db", None).await.unwrap();
        agent.complete_task(t).await.unwrap();
    }
    let mut watch = fleet
        .client(0, "sidecar")
        .await
        .watch_once(pb::WatchRevocationsRequest {
            after_seq: Some(3),
            ..watch_all()
        })
        .await
        .unwrap();
    // Synced at the head, 3.
    let first = watch.message().await.unwrap().unwrap();
    assert!(matches!(
        first.msg,
        Some(pb::watch_revocations_response::Msg::Synced(ref s)) if s.seq == 3
    ));

    // A restore to a point before the last revocation: 3 will be handed out
    // again, so a feed that has passed it must start afresh.
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(&fleet.url).await.unwrap();
    sqlx::query("DELETE FROM revocations WHERE seq = 3")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("UPDATE counters SET value = 2 WHERE name = 'revocation_seq'")
        .execute(&mut db)
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the feed ended without saying why"),
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("the feed went on past a log that went back");
    assert_eq!(ended.code(), tonic::Code::OutOfRange, "{ended:?}");
    assert!(
        ended.message().contains("ahead of the log"),
        "{}",
        ended.message()
    );

    // Publishing goes on from the new head: the next revocation, numbered 3
    // again, reaches a fresh watcher live.
    let mut fresh = fleet
        .client(0, "sidecar")
        .await
        .watcher(pb::WatchRevocationsRequest {
            after_seq: Some(2),
            ..watch_all()
        });
    assert_eq!(synced(&mut fresh).await, 2);
    agent.mint_jwt("r4", "db", None).await.unwrap();
    agent.complete_task("r4").await.unwrap();
    let e = next_event(&mut fresh, Duration::from_secs(5)).await;
    assert_eq!((e.seq, e.task_id.as_str()), (3, "r4"));
}

/// `taskmint enforce` given two replicas follows one; when it is killed,
/// the enforcer goes on from the other, resuming from its cursor, and
/// misses no revocation committed in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_enforcer_fails_over_to_another_replica_from_its_cursor() {
    let Some(mut fleet) = Fleet::new().await else {
        return;
    };
    fleet.start().await;
    fleet.start().await;
    let state = tempfile::tempdir().unwrap();
    let (enforcer, follower) = fleet.enforcer(state.path(), "5s").await;
    let mut b = fleet.client(1, "agent").await;
    let first = b.mint_jwt("failover-1", "db", None).await.unwrap();
    let second = b.mint_jwt("failover-2", "db", None).await.unwrap();
    let (first, second) = (first.credential.unwrap().id, second.credential.unwrap().id);
    // Committed through B, delivered by A (the replica followed first).
    b.revoke(
        pb::revoke_request::Target::CredentialId(first.clone()),
        "done",
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            enforcer.is_denied(&first)
        })
        .await
    );
    let cursor = enforcer.cursor().expect("a cursor after an event");

    fleet.replicas[0].kill();
    b.revoke(
        pb::revoke_request::Target::CredentialId(second.clone()),
        "done",
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(15), || async {
            enforcer.is_denied(&second)
        })
        .await,
        "the revocation committed after the failover never arrived"
    );
    match enforcer.resumed_from() {
        Some(Some(from)) => assert!(from >= cursor, "resumed from {from}, before {cursor}"),
        other => panic!("the session on B did not resume from a cursor: {other:?}"),
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            enforcer.freshness() == taskmint::enforce::Freshness::Fresh
        })
        .await
    );
    follower.abort();
}

/// A replica that stops answering without closing its connections (here
/// SIGSTOP: a hung process, a partition that drops packets) is left for
/// the next one once nothing has come for `max_staleness`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_enforcer_leaves_a_replica_that_stalls() {
    let Some(mut fleet) = Fleet::new().await else {
        return;
    };
    fleet.start().await;
    fleet.start().await;
    let state = tempfile::tempdir().unwrap();
    let (enforcer, follower) = fleet.enforcer(state.path(), "3s").await;
    let pid = fleet.replicas[0].child.as_ref().unwrap().id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut b = fleet.client(1, "agent").await;
    let id = b
        .mint_jwt("stalled-1", "db", None)
        .await
        .unwrap()
        .credential
        .unwrap()
        .id;
    b.revoke(pb::revoke_request::Target::CredentialId(id.clone()), "done")
        .await
        .unwrap();
    let moved = eventually(Duration::from_secs(20), || async {
        enforcer.is_denied(&id) && enforcer.freshness() == taskmint::enforce::Freshness::Fresh
    })
    .await;
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    assert!(moved, "the enforcer stayed on the stalled replica");
    follower.abort();
}
