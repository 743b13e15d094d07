//! The PostgreSQL backend's tests: the conformance suite every backend runs,
//! and two stores on one database (two processes' pools) racing each other.
//!
//! They need a PostgreSQL server (see `tests/common/pg.rs`). With
//! `TASKMINT_TEST_POSTGRES_URL` set (a
//! URL whose user may create databases) they use it; otherwise they start a
//! throwaway cluster with `initdb` and `pg_ctl` in a temporary directory, one
//! per test process, stopped by a watcher once the process exits. Each test
//! gets a database of its own. With neither, each test says it was skipped
//! — unless `TASKMINT_REQUIRE_POSTGRES=1`, when it fails.

use std::sync::Arc;

use tokio::sync::OnceCell;

use super::*;
// The throwaway cluster, shared with the integration tests.
#[path = "../../../tests/common/pg.rs"]
mod cluster;
use crate::store::conformance::Harness as _;
use crate::store::{CredentialKind, RevokeScope, TaskState};

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
                match cluster::server_from_env() {
                    Some(url) => Some(url),
                    None => tokio::task::spawn_blocking(cluster::Cluster::start)
                        .await
                        .expect("starting PostgreSQL panicked")
                        // Lives as long as this test process.
                        .map(|c| Box::leak(Box::new(c)).url()),
                }
            })
            .await;
        let Some(server) = server else {
            cluster::skip();
            return None;
        };
        Some(Self {
            url: cluster::fresh_database(server).await,
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
        cluster::with_database("postgres://p@127.0.0.1:5/postgres", "t_1"),
        "postgres://p@127.0.0.1:5/t_1"
    );
    assert_eq!(
        cluster::with_database("postgres://p@h?sslmode=disable", "t_1"),
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
    s.seal_audit().await.unwrap();
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

/// Two replicas (two pools) racing to store the next CRL, over and over:
/// every stored number is one more than the one before, no number is
/// stored twice, and a reader never sees the number go backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_racing_to_store_crls_number_them_once_each() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let (a, b) = (Arc::new(h.store().await), Arc::new(h.store().await));
    const ROUNDS: usize = 40;
    let replica = |s: Arc<PgStore>, name: &'static str| {
        tokio::spawn(async move {
            let mut won = Vec::new();
            for i in 0..ROUNDS {
                let seen = s.stored_crl().await.unwrap().number;
                let crl = StoredCrl {
                    number: seen + 1,
                    content_hash: format!("{name}-{i}"),
                    der: format!("{name}-{i}").into_bytes(),
                    this_update: i as i64,
                    next_update: i as i64 + 60,
                };
                if s.store_crl(seen, &crl).await.unwrap() {
                    won.push(crl);
                }
            }
            won
        })
    };
    let reader = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for _ in 0..4 * ROUNDS {
                let n = a.stored_crl().await.unwrap().number;
                assert!(n >= last, "the CRL number went back from {last} to {n}");
                last = n;
            }
        })
    };
    let (wa, wb) = (replica(a.clone(), "a"), replica(b.clone(), "b"));
    let mut won = wa.await.unwrap();
    won.extend(wb.await.unwrap());
    reader.await.unwrap();
    let mut numbers: Vec<u64> = won.iter().map(|c| c.number).collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (1..=won.len() as u64).collect::<Vec<_>>(),
        "each number stored once, none skipped"
    );
    let last = won.iter().max_by_key(|c| c.number).unwrap();
    assert_eq!(&b.stored_crl().await.unwrap(), last);
}

/// Two replicas serving the same bundle keep its sequence; a new bundle
/// raises it by one, once, even when every replica asks at the same moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_agree_on_the_bundle_sequence() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let (a, b) = (Arc::new(h.store().await), Arc::new(h.store().await));
    let first = a.bundle_sequence("h1").await.unwrap();
    for i in 0..50 {
        let s = if i % 2 == 0 { &a } else { &b };
        assert_eq!(s.bundle_sequence("h1").await.unwrap(), first, "call {i}");
    }
    const N: usize = 16;
    let asked = Arc::new(tokio::sync::Barrier::new(N));
    let calls: Vec<_> = (0..N)
        .map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            let asked = asked.clone();
            tokio::spawn(async move {
                asked.wait().await;
                s.bundle_sequence("h2").await.unwrap()
            })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap(), first + 1);
    }
    for s in [&a, &b] {
        assert_eq!(s.bundle_sequence("h2").await.unwrap(), first + 1);
    }
}

mod audit_chain;
