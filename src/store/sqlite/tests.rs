//! The SQLite backend's tests: the conformance suite every backend runs,
//! and what only SQLite has (reopening, the renaming migration, the stored
//! CRL taking over the old CRL numbers, a failed commit).

use super::*;
use crate::store::{CredentialKind, RevokeScope, TaskState};

fn task(holder: &str, id: &str, deadline: i64) -> TaskRecord {
    TaskRecord::new(holder, id, 100, deadline)
}

fn record(id: &str, holder: &str, task: &str) -> CredentialRecord {
    CredentialRecord {
        id: id.into(),
        kind: CredentialKind::Jwt,
        spiffe_id: holder.into(),
        task_holder: holder.into(),
        task_id: task.into(),
        audience: Some("db".into()),
        not_before: 100,
        not_after: 400,
        caller_cert_sha256: "ab".repeat(32),
        issued_at: 100,
        predecessor: None,
        renewal_count: 0,
        revocation: None,
    }
}

fn sign() -> SetSigner {
    std::sync::Arc::new(|e: &RevocationEvent| Ok(format!("set-{}", e.seq)))
}

/// A fresh database per test; every `open` is a new `SqliteStore` (its
/// own writer thread and readers) on it.
struct Harness {
    dir: tempfile::TempDir,
}

#[async_trait::async_trait]
impl crate::store::conformance::Harness for Harness {
    async fn open(&self) -> std::sync::Arc<dyn Store> {
        std::sync::Arc::new(
            SqliteStore::open(&self.dir.path().join("conformance.db"))
                .await
                .unwrap(),
        )
    }
}

crate::store::conformance::store_conformance!(Harness {
    dir: tempfile::tempdir().unwrap()
});

#[tokio::test]
async fn records_survive_reopen_and_tasks_are_scoped_to_holder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/taskmint.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let a = "spiffe://example.org/workload/a";
    let b = "spiffe://example.org/workload/b";
    store
        .begin_task(&task(a, "build-42", 1000), &[])
        .await
        .unwrap();
    store
        .begin_task(&task(b, "build-42", 1000), &[])
        .await
        .unwrap();
    let (again, created) = store
        .begin_task(&task(a, "build-42", 5), &[])
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(again.deadline, 1000);
    store
        .record_credential(&record("1", a, "build-42"), 100, &[])
        .await
        .unwrap()
        .unwrap();
    store
        .record_credential(&record("2", b, "build-42"), 100, &[])
        .await
        .unwrap()
        .unwrap();
    store
        .record_credential(&record("3", a, "build-42"), 100, &[])
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        store
            .record_credential(&record("3", a, "build-42"), 100, &[])
            .await,
        Err(StoreError::Duplicate(_))
    ));
    store.close().await;
    // Closed means closed: the writer is gone, nothing more is written.
    assert!(matches!(
        store
            .record_credential(&record("4", a, "build-42"), 100, &[])
            .await,
        Err(StoreError::Closed)
    ));

    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.count_credentials().await.unwrap(), 3);
    assert_eq!(
        store.task_credentials(a, "build-42").await.unwrap().len(),
        2
    );
    assert_eq!(
        store.task_credentials(b, "build-42").await.unwrap().len(),
        1
    );
    assert_eq!(
        store.credential("2").await.unwrap(),
        Some(record("2", b, "build-42"))
    );
}

#[tokio::test]
async fn revocation_is_per_task_gap_free_and_ends_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
    let a = "spiffe://example.org/workload/a";
    for t in ["t1", "t2"] {
        store.begin_task(&task(a, t, 1000), &[]).await.unwrap();
    }
    for (id, t) in [("1", "t1"), ("2", "t1"), ("3", "t2")] {
        store
            .record_credential(&record(id, a, t), 100, &[])
            .await
            .unwrap()
            .unwrap();
    }
    let req = |scope, end_task| RevokeRequest {
        scope,
        reason: "r".into(),
        now: 200,
        end_task,
        cascade: true,
        audit: AuditDraft::default(),
    };
    let ev = store
        .revoke(&req(RevokeScope::Credential("1".into()), None), sign())
        .await
        .unwrap();
    assert_eq!(
        (ev[0].seq, ev[0].credential_ids.clone()),
        (1, vec!["1".to_owned()])
    );
    // Revoking again is a no-op: no event.
    assert!(
        store
            .revoke(&req(RevokeScope::Credential("1".into()), None), sign())
            .await
            .unwrap()
            .is_empty()
    );
    let ev = store
        .revoke(&req(RevokeScope::Workload(a.into()), None), sign())
        .await
        .unwrap();
    assert_eq!(ev.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(ev[0].credential_ids, vec!["2".to_owned()]);
    assert_eq!(ev[1].set_jwt, "set-3");
    let scope = RevokeScope::Task {
        holder: a.into(),
        task_id: "t1".into(),
    };
    assert!(
        store
            .revoke(&req(scope, Some(TaskState::Completed)), sign())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.task(a, "t1").await.unwrap().unwrap().state,
        TaskState::Completed
    );
    assert_eq!(
        store
            .record_credential(&record("9", a, "t1"), 100, &[])
            .await
            .unwrap(),
        Err(RecordRefusal::TaskEnded(TaskState::Completed))
    );
    assert_eq!(store.current_seq().await.unwrap(), 3);
    assert_eq!(store.events_after(1, 10).await.unwrap().len(), 2);
    // Pruning takes a prefix and remembers where it stopped.
    assert_eq!(store.prune_events(500).await.unwrap(), 3);
    assert_eq!(store.pruned_through().await.unwrap(), 3);
    assert_eq!(store.current_seq().await.unwrap(), 3);
}

/// A database written before the holder/owner renaming (schema 0005),
/// with rows in every renamed table, opens with its data intact and its
/// keys pointing at the renamed columns.
#[tokio::test]
async fn renaming_migration_keeps_rows_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    let (pool, opts) = migrated_before(&db, "0006").await;
    let a = "spiffe://example.org/workload/a";
    for q in [
        format!(
            "INSERT INTO tasks (owner, task_id, created_at, deadline, accountable_owner) \
             VALUES ('{a}', 't', 1, 1000, 'team-a')"
        ),
        format!(
            "INSERT INTO credentials (id, kind, spiffe_id, task_owner, task_id, audience, \
             not_before, not_after, caller_cert_sha256, issued_at) \
             VALUES ('c1', 'jwt', '{a}', '{a}', 't', 'db', 1, 900, '00', 1)"
        ),
        format!(
            "INSERT INTO revocations (seq, kind, credential_ids, task_owner, task_id, \
             spiffe_id, trust_domain, reason, revoked_at, expires_at, set_jwt) \
             VALUES (1, 'task', '[\"c1\"]', '{a}', 't', '{a}', 'example.org', 'r', 2, 900, 's')"
        ),
        format!(
            "INSERT INTO audit (seq, time, prev_hash, hash, kind, actor, task_owner, task_id, \
             credential_id, decision, policies, reason, break_glass, subject) \
             VALUES (1, 1, 'p', 'h', 'revoked', '{a}', '{a}', 't', 'c1', '', '', '', 0, '')"
        ),
    ] {
        sqlx::query(&q).execute(&pool).await.unwrap();
    }
    pool.close().await;

    let store = SqliteStore::open(&db).await.unwrap();
    let t = store.task(a, "t").await.unwrap().unwrap();
    assert_eq!((t.holder.as_str(), t.owner.as_str()), (a, "team-a"));
    let c = store.credential("c1").await.unwrap().unwrap();
    assert_eq!(c.task_holder, a);
    assert_eq!(store.events_after(0, 10).await.unwrap()[0].task_holder, a);
    assert_eq!(
        store.audit_after(0, 10).await.unwrap()[0].body.task_holder,
        a
    );
    assert_eq!(store.task_audit(a, "t", 0, 0, 100).await.unwrap().len(), 1);
    // The credential's foreign key follows the renamed columns, and
    // still refuses a credential of a task that does not exist.
    assert!(
        store
            .record_credential(&record("c2", a, "missing"), 10, &[])
            .await
            .is_err()
    );
    store.close().await;
    let pool = SqlitePool::connect_with(opts).await.unwrap();
    let broken = sqlx::query("PRAGMA foreign_key_check")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(broken.is_empty());
    let keys = sqlx::query("PRAGMA foreign_key_list(credentials)")
        .fetch_all(&pool)
        .await
        .unwrap();
    let to: Vec<String> = keys.iter().map(|r| r.get::<String, _>("to")).collect();
    assert_eq!(to, vec!["holder".to_owned(), "task_id".to_owned()]);
    pool.close().await;
}

/// A batch whose COMMIT fails (here a deferred foreign key, checked only
/// at commit) is rolled back whole: every job of it fails, none of it is
/// stored, and the next batch commits normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_fails_the_whole_batch_and_the_next_one_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
    let a = "spiffe://example.org/workload/a";
    store.begin_task(&task(a, "t", 1000), &[]).await.unwrap();
    let orphan = store.writer().unwrap().run(|w| {
        w.conn.execute_batch(
            "PRAGMA defer_foreign_keys = ON; \
             INSERT INTO credentials (id, kind, spiffe_id, task_holder, task_id, \
               not_before, not_after, caller_cert_sha256, issued_at) \
             VALUES ('orphan', 'jwt', 'x', 'nobody', 'none', 1, 2, '00', 1)",
        )?;
        Ok(())
    });
    let n = record("n", a, "t");
    let neighbour = store.record_credential(&n, 100, &[]);
    let (orphan, neighbour) = tokio::join!(orphan, neighbour);
    assert!(orphan.is_err(), "{orphan:?}");
    assert!(store.credential("orphan").await.unwrap().is_none());
    // Its neighbour either rode the same batch and failed with it, or
    // committed in a batch of its own: never answered OK and missing.
    let stored = store.credential("n").await.unwrap().is_some();
    assert_eq!(neighbour.is_ok(), stored, "{neighbour:?}");
    store
        .record_credential(&record("after", a, "t"), 100, &[])
        .await
        .unwrap()
        .unwrap();
    assert!(store.credential("after").await.unwrap().is_some());
    store.close().await;
}

/// A database whose CRL numbers came from the per-request counter keeps
/// numbering from there once the CRL is stored: a relying party never sees
/// the number go backwards across the upgrade.
#[tokio::test]
async fn the_stored_crl_continues_the_old_crl_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    let (pool, _) = migrated_before(&db, "0007").await;
    sqlx::query("UPDATE counters SET value = 41 WHERE name = 'crl_number'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let store = SqliteStore::open(&db).await.unwrap();
    let stored = store.stored_crl().await.unwrap();
    assert_eq!((stored.number, stored.der.len()), (41, 0));
    let next = StoredCrl {
        number: 42,
        content_hash: "h".into(),
        der: vec![0x30],
        this_update: 1,
        next_update: 2,
    };
    assert!(store.store_crl(41, &next).await.unwrap());
    assert_eq!(store.stored_crl().await.unwrap(), next);
}

/// A database at `db` migrated with the migrations before version `upto`
/// only (as an older taskmint left it), and the options to reopen it.
async fn migrated_before(db: &Path, upto: &str) -> (SqlitePool, SqliteConnectOptions) {
    let old = db.with_extension(format!("migrations-before-{upto}"));
    std::fs::create_dir(&old).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/migrations");
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if name.as_str() < upto {
            std::fs::copy(e.path(), old.join(&name)).unwrap();
        }
    }
    let opts = SqliteConnectOptions::from_str("sqlite:")
        .unwrap()
        .filename(db)
        .create_if_missing(true)
        .foreign_keys(true);
    let pool = SqlitePool::connect_with(opts.clone()).await.unwrap();
    sqlx::migrate::Migrator::new(old.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    (pool, opts)
}
