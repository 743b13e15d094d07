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
    AckRecord, AuditCheckpoint, BreakGlassKey, CredentialRecord, CrlEntry, GrantFilter,
    PrunedRecords, RecordRefusal, Review, ReviewOutcome, RevocationEvent, RevokeRequest, SetSigner,
    Store, StoreError, StoredCrl, TaskRecord,
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

use crate::store::rows::Cols;

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
    async fn begin_task_within(
        &self,
        t: &TaskRecord,
        max_active: u32,
        audit: &[AuditDraft],
    ) -> Result<(TaskRecord, bool), StoreError> {
        let (task, audit) = (t.clone(), audit.to_vec());
        self.writer()?
            .run(move |w| {
                if tasks::begin(w, &task, max_active, audit)? {
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

    async fn unexpired_events(
        &self,
        now: i64,
        after: u64,
        through: u64,
        limit: u32,
    ) -> Result<Vec<RevocationEvent>, StoreError> {
        revocations::unexpired(&self.reader, now, (after, through), limit).await
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

    async fn ack_within(
        &self,
        a: &AckRecord,
        rebind: bool,
        max_names: u32,
        audit: AuditDraft,
    ) -> Result<AckRecord, StoreError> {
        let a = a.clone();
        self.writer()?
            .run(move |w| acks::ack(w, &a, rebind, max_names, audit))
            .await
    }

    async fn acks(&self) -> Result<Vec<AckRecord>, StoreError> {
        acks::all(&self.reader).await
    }

    async fn crl_entries(&self, now: i64) -> Result<Vec<CrlEntry>, StoreError> {
        credentials::crl_entries(&self.reader, now).await
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

    async fn append_audit(&self, events: &[AuditDraft]) -> Result<(), StoreError> {
        let events = events.to_vec();
        self.writer()?
            .run(move |w| w.append(events).map(|_| ()))
            .await
    }

    /// The file is local: there is nothing to reach.
    async fn probe(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn append_audit_once(&self, event: AuditDraft) -> Result<bool, StoreError> {
        self.writer()?
            .run(move |w| {
                if audit::has_event(w.conn, &event)? {
                    return Ok(false);
                }
                w.append([event])?;
                Ok(true)
            })
            .await
    }

    async fn audit_after(&self, after: u64, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        audit::after(&self.reader, after, limit).await
    }

    async fn audit_head(&self) -> Result<Option<(u64, String)>, StoreError> {
        audit::head(&self.reader).await
    }

    async fn task_audit(
        &self,
        holder: &str,
        task_id: &str,
        since: i64,
        after: u64,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        audit::of_task(&self.reader, (holder, task_id), since, after, limit).await
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
        after: Option<BreakGlassKey>,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        tasks::break_glass(&self.reader, include_reviewed, after, limit).await
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

    async fn stored_crl(&self) -> Result<StoredCrl, StoreError> {
        meta::stored_crl(&self.reader).await
    }

    async fn store_crl(&self, expected: u64, crl: &StoredCrl) -> Result<bool, StoreError> {
        let crl = crl.clone();
        self.writer()?
            .run(move |w| meta::store_crl(w, expected, &crl))
            .await
    }

    /// The writer chains every event as it appends it: nothing is pending.
    async fn seal_audit(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn append_audit_repeated(
        &self,
        event: AuditDraft,
        window: i64,
    ) -> Result<bool, StoreError> {
        self.writer()?
            .run(move |w| audit::append_repeated(w, event, window))
            .await
    }

    async fn close_repeat_windows(&self, before: i64, limit: u32) -> Result<u64, StoreError> {
        self.writer()?
            .run(move |w| audit::close_windows(w, before, limit))
            .await
    }

    async fn audit_checkpoint(&self) -> Result<AuditCheckpoint, StoreError> {
        audit::checkpoint(&self.reader).await
    }

    async fn claim_audit_prune(&self, at: u64, to: u64) -> Result<bool, StoreError> {
        self.writer()?
            .run(move |w| audit::claim_prune(w.conn, at, to))
            .await
    }

    async fn commit_audit_prune(
        &self,
        at: u64,
        to: u64,
        hash: &str,
        record: AuditDraft,
    ) -> Result<bool, StoreError> {
        let hash = hash.to_owned();
        self.writer()?
            .run(move |w| {
                let done = audit::commit_prune(w.conn, at, to, &hash)?;
                if done {
                    w.append([record])?;
                }
                Ok(done)
            })
            .await
    }

    async fn prune_records(&self, before: i64, limit: u32) -> Result<PrunedRecords, StoreError> {
        self.writer()?
            .run(move |w| tasks::prune(w.conn, before, limit))
            .await
    }
}

#[cfg(test)]
mod tests;
