//! SQLite backend, the embedded default: WAL journal, `synchronous=FULL` (a
//! commit is on disk before it returns), versioned migrations run at open.
//!
//! One write path: every write goes through the [`writer`] thread, which owns
//! the only connection that writes and group-commits whole batches. Nothing
//! else writes (migrations run on a connection that is closed before the
//! writer starts), so there is no lock to share between writers and none to
//! leave held: a revocation's sequence number is taken inside the
//! transaction that commits it, a mint cannot slip in between a task's
//! completion and its cascade, and a write that fails is rolled back before
//! the next one runs. Reads use a read-only pool and never wait for the
//! writer (WAL).
//!
//! One file per record kind — [`tasks`], [`credentials`], [`revocations`],
//! [`audit`], [`acks`], [`meta`] — each holding that kind's SQL, its writes
//! (run on the writer thread) and its reads.

mod acks;
mod audit;
mod credentials;
mod meta;
mod revocations;
mod tasks;
mod writer;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use self::writer::Writer;
use super::{
    AckRecord, CredentialRecord, CrlEntry, GrantFilter, RecordRefusal, Review, ReviewOutcome,
    RevocationEvent, RevokeRequest, SetSigner, Store, StoreError, TaskRecord,
};
use crate::audit::{AuditDraft, AuditEvent};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations");

/// The embedded SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    reader: SqlitePool,
    /// `None` for a store opened read-only.
    writer: Option<Writer>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `path` and migrates it.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        }
        let opts = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| open_err(e.to_string()))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // Migrations run on a connection of their own, closed before the
        // writer starts: from then on the writer is the only one that writes.
        let migrate = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await
            .map_err(|e| open_err(e.to_string()))?;
        let migrated = MIGRATOR.run(&migrate).await;
        migrate.close().await;
        migrated.map_err(|e| open_err(format!("migration failed: {e}")))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.read_only(true))
            .await
            .map_err(|e| open_err(e.to_string()))?;
        let writer =
            Writer::start(path).map_err(|e| open_err(format!("cannot start the writer: {e}")))?;
        Ok(Self {
            reader,
            writer: Some(writer),
        })
    }

    /// Opens an existing database for reading only, beside a running issuer:
    /// no migration runs and no writer starts, so a tool of another version
    /// cannot change the schema under the issuer. A database whose schema is
    /// not the one this build knows is refused, naming both versions.
    pub async fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
        };
        if !path.exists() {
            return Err(open_err("no such file".into()));
        }
        let opts = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| open_err(e.to_string()))?
            .filename(path)
            .read_only(true)
            .busy_timeout(Duration::from_secs(10));
        let reader = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        let expected = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        let found: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&reader)
                .await
                .unwrap_or(None);
        if found != Some(expected) {
            reader.close().await;
            let found = found.map_or("none".to_owned(), |v| v.to_string());
            return Err(open_err(format!(
                "its schema version is {found}, this taskmint reads version {expected}: \
                 use the taskmint that runs on it (starting the issuer migrates it)"
            )));
        }
        Ok(Self {
            reader,
            writer: None,
        })
    }

    fn writer(&self) -> Result<&Writer, StoreError> {
        self.writer.as_ref().ok_or(StoreError::Unavailable {
            condition: super::Condition::ReadOnly,
            detail: "the store was opened read-only".into(),
        })
    }

    /// Caps the database at `pages` pages (SQLite's `max_page_count`; a page
    /// is 4 KiB by default), or lifts the cap with `None`. A write that would
    /// grow the file past the cap fails as "disk full" and stores nothing,
    /// exactly as a full disk does; the tests use it to fill the store
    /// without a small filesystem.
    pub async fn set_max_pages(&self, pages: Option<u32>) -> Result<u32, StoreError> {
        self.writer()?.set_max_pages(pages).await
    }

    /// Fills the store with `n` active JWT credentials (1000 workloads, one
    /// task each) and their audit events, chained like real ones, in one
    /// transaction: the "large store" of `taskmint bench`. Not for production
    /// data.
    pub async fn seed_credentials(&self, n: u64, now: i64) -> Result<(), StoreError> {
        self.writer()?.run(move |w| meta::seed(w, n, now)).await
    }

    /// Finishes the queued writes and closes the writer's connection, then
    /// the readers (waiting for their connections to be returned). Writes
    /// submitted afterwards fail with [`StoreError::Closed`].
    pub async fn close(&self) {
        if let Some(w) = &self.writer {
            w.close().await;
        }
        self.reader.close().await;
    }
}

/// Rows of `table` (an append-only log numbered by `seq`) after `after`, in
/// order, at most `limit`, read with `map`. Cursors above `i64::MAX` (never
/// handed out) read as the end of the log rather than wrapping.
async fn seq_page<T>(
    pool: &SqlitePool,
    (columns, table): (&str, &str),
    after: u64,
    limit: u32,
    map: fn(&SqliteRow) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let sql = format!("SELECT {columns} FROM {table} WHERE seq > ? ORDER BY seq LIMIT ?");
    let rows = sqlx::query(&sql)
        .bind(after.min(i64::MAX as u64) as i64)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
    rows.iter().map(map).collect()
}

/// Reading a row by column name, the same for the readers' rows (sqlx) and
/// the writer's (rusqlite), so each record kind has one mapping.
trait Cols {
    fn text(&self, col: &str) -> Result<String, StoreError>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, col: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError>;
    fn flag(&self, col: &str) -> Result<bool, StoreError>;
}

impl Cols for SqliteRow {
    fn text(&self, col: &str) -> Result<String, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn int(&self, col: &str) -> Result<i64, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn flag(&self, col: &str) -> Result<bool, StoreError> {
        Ok(self.try_get(col)?)
    }
}

impl Cols for rusqlite::Row<'_> {
    fn text(&self, col: &str) -> Result<String, StoreError> {
        Ok(self.get(col)?)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
        Ok(self.get(col)?)
    }
    fn int(&self, col: &str) -> Result<i64, StoreError> {
        Ok(self.get(col)?)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.get(col)?)
    }
    fn flag(&self, col: &str) -> Result<bool, StoreError> {
        Ok(self.get(col)?)
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let condition = match &e {
            sqlx::Error::Database(db) => db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .and_then(writer::classify),
            sqlx::Error::PoolTimedOut => Some(super::Condition::Busy),
            sqlx::Error::Io(_) => Some(super::Condition::Io),
            _ => None,
        };
        match condition {
            Some(condition) => Self::Unavailable {
                condition,
                detail: e.to_string(),
            },
            None => Self::Query(e.to_string()),
        }
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn begin_task(
        &self,
        t: &TaskRecord,
        audit: &[AuditDraft],
    ) -> Result<(TaskRecord, bool), StoreError> {
        let (task, audit) = (t.clone(), audit.to_vec());
        self.writer()?
            .run(move |w| {
                if tasks::begin(w, &task, audit)? {
                    return Ok((task, true));
                }
                let existing = tasks::get_in(w.conn, &task.holder, &task.task_id)?;
                existing
                    .map(|t| (t, false))
                    .ok_or_else(|| StoreError::Corrupt(format!("task `{}` vanished", task.task_id)))
            })
            .await
    }

    async fn record_credential(
        &self,
        c: &CredentialRecord,
        max_active: u32,
        audit: &[AuditDraft],
    ) -> Result<Result<(), RecordRefusal>, StoreError> {
        let (c, audit) = (c.clone(), audit.to_vec());
        self.writer()?
            .run(move |w| credentials::record(w, &c, max_active, audit))
            .await
    }

    async fn credential(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        credentials::get(&self.reader, id).await
    }

    async fn task_credentials(
        &self,
        holder: &str,
        task_id: &str,
    ) -> Result<Vec<CredentialRecord>, StoreError> {
        credentials::of_task(&self.reader, holder, task_id).await
    }

    async fn task(&self, holder: &str, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        tasks::get(&self.reader, holder, task_id).await
    }

    async fn count_credentials(&self) -> Result<u64, StoreError> {
        credentials::count(&self.reader).await
    }

    async fn revoke(
        &self,
        req: &RevokeRequest,
        sign: SetSigner,
    ) -> Result<Vec<RevocationEvent>, StoreError> {
        let req = req.clone();
        self.writer()?
            .run(move |w| revocations::revoke(w, &req, &sign))
            .await
    }

    async fn due_tasks(&self, now: i64) -> Result<Vec<(String, String)>, StoreError> {
        tasks::due(&self.reader, now).await
    }

    async fn events_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<RevocationEvent>, StoreError> {
        revocations::after(&self.reader, after, limit).await
    }

    async fn unexpired_events(&self, now: i64) -> Result<Vec<RevocationEvent>, StoreError> {
        revocations::unexpired(&self.reader, now).await
    }

    async fn current_seq(&self) -> Result<u64, StoreError> {
        revocations::read_counter(&self.reader, "revocation_seq").await
    }

    async fn pruned_through(&self) -> Result<u64, StoreError> {
        revocations::read_counter(&self.reader, "pruned_through").await
    }

    async fn prune_events(&self, before: i64) -> Result<u64, StoreError> {
        self.writer()?
            .run(move |w| revocations::prune(w, before))
            .await
    }

    async fn ack(&self, a: &AckRecord, audit: AuditDraft) -> Result<AckRecord, StoreError> {
        let a = a.clone();
        self.writer()?.run(move |w| acks::ack(w, &a, audit)).await
    }

    async fn acks(&self) -> Result<Vec<AckRecord>, StoreError> {
        acks::all(&self.reader).await
    }

    async fn crl_entries(&self, now: i64) -> Result<Vec<CrlEntry>, StoreError> {
        credentials::crl_entries(&self.reader, now).await
    }

    async fn next_crl_number(&self) -> Result<u64, StoreError> {
        self.writer()?.run(meta::next_crl_number).await
    }

    async fn bundle_sequence(&self, content_hash: &str) -> Result<u64, StoreError> {
        // The common case changes nothing: answer it from a reader.
        let current =
            sqlx::query("SELECT content_hash, sequence FROM bundle_sequence WHERE id = 1")
                .fetch_optional(&self.reader)
                .await?;
        if let Some(r) = &current
            && r.text("content_hash")? == content_hash
        {
            return Ok(r.int("sequence")? as u64);
        }
        let hash = content_hash.to_owned();
        self.writer()?
            .run(move |w| meta::bundle_sequence(w, &hash))
            .await
    }

    async fn append_audit(&self, events: &[AuditDraft]) -> Result<Vec<AuditEvent>, StoreError> {
        let events = events.to_vec();
        self.writer()?.run(move |w| w.append(events)).await
    }

    async fn audit_after(&self, after: u64, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        audit::after(&self.reader, after, limit).await
    }

    async fn audit_head(&self) -> Result<Option<(u64, String)>, StoreError> {
        audit::head(&self.reader).await
    }

    async fn task_audit(&self, holder: &str, task_id: &str) -> Result<Vec<AuditEvent>, StoreError> {
        audit::of_task(&self.reader, holder, task_id).await
    }

    async fn acks_covering(&self, seq: u64) -> Result<Vec<AuditEvent>, StoreError> {
        audit::acks_covering(&self.reader, seq).await
    }

    async fn active_tasks(
        &self,
        filter: &GrantFilter,
        now: i64,
        after: Option<(String, String)>,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        tasks::active(&self.reader, filter, now, after, limit).await
    }

    async fn break_glass_tasks(
        &self,
        include_reviewed: bool,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        tasks::break_glass(&self.reader, include_reviewed).await
    }

    async fn mark_reviewed(
        &self,
        holder: &str,
        task_id: &str,
        review: &Review,
        audit: AuditDraft,
    ) -> Result<ReviewOutcome, StoreError> {
        let (holder, task_id, review) = (holder.to_owned(), task_id.to_owned(), review.clone());
        self.writer()?
            .run(move |w| tasks::mark_reviewed(w, &holder, &task_id, &review, audit))
            .await
    }
}

#[cfg(test)]
mod tests {
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
        let old = dir.path().join("migrations-0005");
        std::fs::create_dir(&old).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/migrations");
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            if name.as_str() < "0006" {
                std::fs::copy(e.path(), old.join(&name)).unwrap();
            }
        }
        let db = dir.path().join("old.db");
        let opts = SqliteConnectOptions::from_str("sqlite:")
            .unwrap()
            .filename(&db)
            .create_if_missing(true)
            .foreign_keys(true);
        let pool = SqlitePool::connect_with(opts.clone()).await.unwrap();
        sqlx::migrate::Migrator::new(old.as_path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
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
        assert_eq!(store.task_audit(a, "t").await.unwrap().len(), 1);
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
}
