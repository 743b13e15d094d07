//! The PostgreSQL backend's tests: the conformance suite every backend runs,
//! and two stores on one database (two processes' pools) racing each other.
//!
//! They need a PostgreSQL server. With `TASKMINT_TEST_POSTGRES_URL` set (a
//! URL whose user may create databases) they use it; otherwise they start a
//! throwaway cluster with `initdb` and `pg_ctl` in a temporary directory, one
//! per test process, stopped by a watcher once the process exits. Each test
//! gets a database of its own. With neither, each test says it was skipped
//! — unless `TASKMINT_REQUIRE_POSTGRES=1`, when it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use sqlx::Connection;
use tokio::sync::OnceCell;

use super::*;
use crate::store::conformance::Harness as _;
use crate::store::{CredentialKind, RevokeScope, TaskState};

const SKIPPED: &str =
    "skipped: PostgreSQL not available (install postgresql or set TASKMINT_TEST_POSTGRES_URL)";

/// The server the tests use: a URL to its maintenance database, or `None`.
static SERVER: OnceCell<Option<String>> = OnceCell::const_new();

/// A fresh database per test; every `open` is a new `PgStore` (its own
/// pool, as another process would have) on it.
struct Harness {
    url: String,
}

impl Harness {
    /// A new database, or `None` (after saying so) when there is no server.
    async fn new() -> Option<Self> {
        let server = SERVER
            .get_or_init(|| async {
                match std::env::var("TASKMINT_TEST_POSTGRES_URL") {
                    Ok(url) if !url.is_empty() => Some(url),
                    _ => tokio::task::spawn_blocking(start_cluster)
                        .await
                        .expect("starting PostgreSQL panicked"),
                }
            })
            .await;
        let Some(server) = server else {
            if std::env::var("TASKMINT_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("{}", SKIPPED.replace("skipped: ", ""));
            }
            eprintln!("{SKIPPED}");
            return None;
        };
        let name = format!("t_{:016x}", rand::random::<u64>());
        let mut admin = sqlx::PgConnection::connect(server).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        Some(Self {
            url: with_database(server, &name),
        })
    }

    async fn store(&self) -> PgStore {
        let pool = PgPoolConfig {
            max_connections: 8,
            ..PgPoolConfig::default()
        };
        PgStore::open(&self.url, &pool).await.unwrap()
    }
}

#[async_trait::async_trait]
impl crate::store::conformance::Harness for Harness {
    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(self.store().await)
    }
}

/// `url` with its database replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    if query.is_empty() {
        format!("{base}/{db}")
    } else {
        format!("{base}/{db}?{query}")
    }
}

/// Where `initdb` and `pg_ctl` are: on `PATH`, or where Debian and a source
/// build put them.
fn pg_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/local/bin".into());
    dirs.push("/usr/local/pgsql/bin".into());
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        dirs.extend(versions.into_iter().rev());
    }
    dirs.into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
}

/// Runs a PostgreSQL tool, as the `postgres` user when this process is
/// root (the server refuses to run as root).
fn pg_command(as_postgres: bool, program: &Path) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut c: Command, what: &str) {
    let out = c
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts a cluster for this test process and a watcher that stops it
/// (and removes its directory) once the process has exited: statics are
/// never dropped, so nothing in the process could.
#[allow(
    clippy::zombie_processes,
    reason = "the watcher must outlive this process, so it is never waited for"
)]
fn start_cluster() -> Option<String> {
    let bin = pg_bin_dir()?;
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let dir = std::env::temp_dir().join(format!(
        "taskmint-pg-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    if root {
        run(
            {
                let mut c = Command::new("chown");
                c.arg("postgres").arg(&dir);
                c
            },
            "chown",
        );
    }
    let data = dir.join("data");
    let mut initdb = pg_command(root, &bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
        .args(["--locale", "C"]);
    run(initdb, "initdb");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pg_ctl = bin.join("pg_ctl");
    let mut start = pg_command(root, &pg_ctl);
    start
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("log"))
        .args(["-w", "-o"])
        .arg(format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c max_connections=300 -c fsync=off",
            dir.display()
        ))
        .arg("start");
    run(start, "pg_ctl start");
    // The watcher: polls for this process and stops the cluster after it.
    let stop = format!(
        "{} -D '{}' stop -m immediate",
        pg_ctl.display(),
        data.display()
    );
    let stop = if root {
        format!("runuser -u postgres -- {stop}")
    } else {
        stop
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; {stop}; rm -rf '{dir}'",
        pid = std::process::id(),
        dir = dir.display()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start the cluster's watcher");
    Some(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
}

crate::store::conformance::store_conformance!(match Harness::new().await {
    Some(h) => h,
    None => return,
});

fn cred(id: &str, task: &str) -> CredentialRecord {
    CredentialRecord {
        id: id.into(),
        kind: CredentialKind::Jwt,
        spiffe_id: HOLDER.into(),
        task_holder: HOLDER.into(),
        task_id: task.into(),
        audience: Some("db".into()),
        not_before: 100,
        not_after: 4_000_000_000,
        caller_cert_sha256: "ab".repeat(32),
        issued_at: 100,
        predecessor: None,
        renewal_count: 0,
        revocation: None,
    }
}

const HOLDER: &str = "spiffe://example.org/workload/agent";

fn signer() -> SetSigner {
    Arc::new(|e: &RevocationEvent| Ok(format!("set-{}", e.seq)))
}

fn revoke_req(scope: RevokeScope, end_task: Option<TaskState>) -> RevokeRequest {
    RevokeRequest {
        scope,
        reason: "test".into(),
        now: 200,
        end_task,
        cascade: true,
        audit: AuditDraft::new(crate::audit::kind::REVOKE, HOLDER, 200),
    }
}

/// Two stores on one database, as two replicas would have: mints through
/// both race the task's completion through one, and revocations through both
/// race each other. The same invariants hold as inside one process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_race_like_two_replicas() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let (a, b) = (Arc::new(h.store().await), Arc::new(h.store().await));
    a.begin_task(&TaskRecord::new(HOLDER, "race", 100, 4_000_000_000), &[])
        .await
        .unwrap();
    let mints: Vec<_> = (0..40)
        .map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                s.record_credential(&cred(&format!("m{i}"), "race"), 1000, &[])
                    .await
                    .unwrap()
            })
        })
        .collect();
    let complete = {
        let b = b.clone();
        tokio::spawn(async move {
            let scope = RevokeScope::Task {
                holder: HOLDER.into(),
                task_id: "race".into(),
            };
            b.revoke(&revoke_req(scope, Some(TaskState::Completed)), signer())
                .await
                .unwrap()
        })
    };
    let mut recorded = 0;
    for m in mints {
        match m.await.unwrap() {
            Ok(()) => recorded += 1,
            Err(RecordRefusal::TaskEnded(TaskState::Completed)) => {}
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }
    let events = complete.await.unwrap();
    let revoked: usize = events.iter().map(|e| e.credential_ids.len()).sum();
    assert_eq!(revoked, recorded);
    let creds = a.task_credentials(HOLDER, "race").await.unwrap();
    assert_eq!(creds.len(), recorded);
    assert!(creds.iter().all(|c| c.revocation.is_some()));

    // Revocations through both stores: every number once, in commit order.
    const N: usize = 20;
    for i in 0..N {
        let t = format!("t{i}");
        a.begin_task(&TaskRecord::new(HOLDER, &t, 100, 4_000_000_000), &[])
            .await
            .unwrap();
        a.record_credential(&cred(&format!("c{i}"), &t), 10, &[])
            .await
            .unwrap()
            .unwrap();
    }
    let base = a.current_seq().await.unwrap();
    let calls: Vec<_> = (0..N)
        .map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let scope = RevokeScope::Credential(format!("c{i}"));
                s.revoke(&revoke_req(scope, None), signer()).await.unwrap()
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for c in calls {
        seqs.extend(c.await.unwrap().iter().map(|e| e.seq));
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (base + 1..=base + N as u64).collect::<Vec<_>>());
    // One audit chain across both stores.
    let head = b.audit_head().await.unwrap();
    let mut v = crate::audit::Verifier::default();
    for e in a.audit_after(0, 10_000).await.unwrap() {
        v.check(&e).unwrap();
    }
    v.finish(head).unwrap();
}

/// Several stores opening one new database at once migrate it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_opens_migrate_once() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let h = Arc::new(h);
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.open().await })
        })
        .collect();
    for o in opens {
        o.await.unwrap();
    }
    let s = h.store().await;
    assert_eq!(s.current_seq().await.unwrap(), 0);
    assert_eq!(s.audit_head().await.unwrap(), None);
}

#[test]
fn urls_lose_their_password_and_change_database() {
    assert_eq!(
        redact("postgres://tm:s3cret@db:5432/taskmint?sslmode=require"),
        "postgres://tm:***@db:5432/taskmint?sslmode=require"
    );
    assert_eq!(redact("postgres://tm@db/x"), "postgres://tm@db/x");
    assert_eq!(
        redact("postgres://tm@db/x?sslmode=require&password=s3cret&sslpassword=k"),
        "postgres://tm@db/x?sslmode=require&password=***&sslpassword=***"
    );
    assert_eq!(
        with_database("postgres://p@127.0.0.1:5/postgres", "t_1"),
        "postgres://p@127.0.0.1:5/t_1"
    );
    assert_eq!(
        with_database("postgres://p@h?sslmode=disable", "t_1"),
        "postgres://p@h/t_1?sslmode=disable"
    );
}

#[test]
fn sqlstates_map_to_conditions() {
    assert_eq!(classify("40P01"), Some(Condition::Conflict));
    assert_eq!(classify("53100"), Some(Condition::DiskFull));
    assert_eq!(classify("57P01"), Some(Condition::Unreachable));
    assert_eq!(classify("08006"), Some(Condition::Unreachable));
    assert_eq!(classify("23505"), None);
    assert!(Condition::Unreachable.nothing_stored());
    assert!(!Condition::LostAtCommit.nothing_stored());
}

/// The trail refuses updates and deletes in PostgreSQL too (the triggers),
/// and a read-only open checks the schema version instead of migrating.
#[tokio::test]
async fn audit_is_append_only_and_read_only_opens_check_the_schema() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let s = h.store().await;
    s.append_audit(&[AuditDraft::new(crate::audit::kind::STATUS_CHECK, HOLDER, 1)])
        .await
        .unwrap();
    for sql in [
        "UPDATE audit SET reason = 'x'",
        "DELETE FROM audit",
        "TRUNCATE audit",
    ] {
        let err = sqlx::query(sql).execute(&s.pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    let ro = PgStore::open_read_only(&h.url, &PgPoolConfig::default())
        .await
        .unwrap();
    assert_eq!(ro.audit_head().await.unwrap().map(|h| h.0), Some(1));
    // A database never migrated is refused, naming the version.
    let Some(empty) = Harness::new().await else {
        return;
    };
    let err = PgStore::open_read_only(&empty.url, &PgPoolConfig::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("schema version is none"), "{err}");
}

/// A server that does not answer fails the open within the connect timeout
/// with the URL's password hidden.
#[tokio::test]
async fn an_unreachable_server_fails_the_open_without_the_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://tm:s3cret@127.0.0.1:{port}/taskmint");
    let cfg = PgPoolConfig {
        connect_timeout: std::time::Duration::from_secs(2),
        ..PgPoolConfig::default()
    };
    let err = PgStore::open(&url, &cfg).await.unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("refused"), "{err}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
    // A failure of a running store's connection is "unreachable".
    let e = store_error(sqlx::Error::Io(std::io::Error::from(
        std::io::ErrorKind::ConnectionReset,
    )));
    assert_eq!(e.unavailable(), Some(Condition::Unreachable));
    assert_eq!(
        store_error(sqlx::Error::PoolTimedOut).unavailable(),
        Some(Condition::Busy)
    );
}

mod audit_chain;
