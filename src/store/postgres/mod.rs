//! PostgreSQL backend: the store several issuer processes can share. Every
//! write is one transaction at PostgreSQL's default isolation (READ
//! COMMITTED), made correct across processes by row locks rather than by a
//! single writer:
//!
//! - every check against a task is made on its row, locked (`SELECT ... FOR
//!   UPDATE`) inside the transaction that acts: a mint, a completion, a
//!   review;
//! - a task is begun once (`INSERT ... ON CONFLICT DO NOTHING`, then read);
//! - one renewal per credential (a partial unique index on `predecessor`);
//! - revocation sequence numbers come from `UPDATE counters ... RETURNING`,
//!   whose row lock serialises revocations until commit: gap-free, in commit
//!   order;
//! - acknowledgements never move backwards (`GREATEST`);
//! - audit events are inserted pending in the transaction they describe,
//!   without a shared lock, and chained after commit by short sealing
//!   transactions that alone lock the audit head row (see [`audit`]), so
//!   writers do not queue on it.
//!
//! Locks are taken kind by kind in one order (task rows, credential rows,
//! counters; the audit head by sealers only), which keeps most transactions from
//! deadlocking; within a kind, a cascading revocation locks several sets one
//! after another, so two overlapping cascades can still deadlock. PostgreSQL
//! then aborts one of them, and a deadlock or serialization failure is
//! retried a few times here (the whole transaction, from the start, so no
//! step is applied twice). Migrations run at open; sqlx takes an advisory lock around them, so
//! replicas starting together migrate once.
//!
//! One file per record kind — [`tasks`], [`credentials`], [`revocations`],
//! [`audit`], [`acks`], [`meta`] — like the SQLite backend, and [`fleet`]:
//! the revocation wake-ups and the leader's lock of a fleet of replicas.

mod acks;
mod audit;
mod credentials;
mod fleet;
mod meta;
mod revocations;
mod tasks;

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, Row};

use super::{
    AckRecord, AuditCheckpoint, BreakGlassKey, Condition, CredentialRecord, CrlEntry, GrantFilter,
    PrunedRecords, RecordRefusal, Review, ReviewOutcome, RevocationEvent, RevokeRequest, SetSigner,
    Store, StoreError, StoredCrl, TaskRecord,
};
use crate::audit::{AuditDraft, AuditEvent};

use self::audit::append;
pub use self::fleet::{CommitListener, Leader};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/postgres/migrations");

/// How often a transaction PostgreSQL aborted as a deadlock or a
/// serialization failure is tried in all.
const ATTEMPTS: u32 = 5;

/// Connection pool settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgPoolConfig {
    /// Most connections the pool opens.
    pub max_connections: u32,
    /// How long a query waits for a free connection.
    pub acquire_timeout: Duration,
    /// How long opening the store waits for its first connection.
    pub connect_timeout: Duration,
}

impl Default for PgPoolConfig {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The PostgreSQL store. Its `Debug` names the pool only: the connect
/// options hold the password.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// For telling an unreachable database from a busy one, and for the
    /// sessions of their own that the listener and the leader keep.
    opts: PgConnectOptions,
    connect_timeout: Duration,
    /// Opened for a tool beside the issuer: reads never seal (a write).
    read_only: bool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool_size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host:port/db`)
    /// and migrates it.
    pub async fn open(url: &str, cfg: &PgPoolConfig) -> Result<Self, StoreError> {
        let store = Self::connect(url, cfg).await?;
        if let Err(e) = MIGRATOR.run(&store.pool).await {
            store.pool.close().await;
            return Err(StoreError::Open {
                path: redact(url),
                reason: format!("migration failed: {e}"),
            });
        }
        Ok(store)
    }

    /// Connects to an existing database without migrating it, for tools
    /// that run beside an issuer; a schema other than the one this build
    /// knows is refused, naming both versions.
    pub async fn open_read_only(url: &str, cfg: &PgPoolConfig) -> Result<Self, StoreError> {
        let mut store = Self::connect(url, cfg).await?;
        store.read_only = true;
        let expected = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        let found: Option<i64> =
            match sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&store.pool)
                .await
            {
                Ok(v) => v,
                // No migration table: not a taskmint database (yet).
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => None,
                Err(e) => {
                    store.pool.close().await;
                    return Err(store_error(e));
                }
            };
        if found != Some(expected) {
            store.pool.close().await;
            let found = found.map_or("none".to_owned(), |v| v.to_string());
            return Err(StoreError::Open {
                path: redact(url),
                reason: format!(
                    "its schema version is {found}, this taskmint reads version {expected}: \
                     use the taskmint that runs on it (starting the issuer migrates it)"
                ),
            });
        }
        Ok(store)
    }

    async fn connect(url: &str, cfg: &PgPoolConfig) -> Result<Self, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: redact(url),
            reason,
        };
        let opts = PgConnectOptions::from_str(url).map_err(|e| open_err(e.to_string()))?;
        // One connection first, bounded, outside the pool (which retries
        // until its timeout and forgets why): a database that does not
        // answer fails the start with the reason rather than hanging it.
        match tokio::time::timeout(cfg.connect_timeout, PgConnection::connect_with(&opts)).await {
            Ok(Ok(c)) => {
                let _ = c.close().await;
            }
            Ok(Err(e)) => return Err(open_err(e.to_string())),
            Err(_) => {
                return Err(open_err(format!(
                    "no connection within {}",
                    humantime::format_duration(cfg.connect_timeout)
                )));
            }
        }
        // A replica that stalls or is cut off while holding a row lock (a
        // task, a counter, a sealer's audit head) must not hold every other
        // replica's writes: the server ends a transaction left idle, and a
        // lock wait gives up after the same time a caller waits for a
        // connection.
        let lock_ms = cfg.acquire_timeout.as_millis().max(1).to_string();
        let opts = opts.options([
            ("idle_in_transaction_session_timeout", "30000"),
            ("lock_timeout", lock_ms.as_str()),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(cfg.max_connections)
            .acquire_timeout(cfg.acquire_timeout)
            .connect_lazy_with(opts.clone());
        Ok(Self {
            pool,
            opts,
            connect_timeout: cfg.connect_timeout,
            read_only: false,
        })
    }

    /// Wake-ups whenever a revocation commits, from any process.
    pub fn commit_listener(&self) -> CommitListener {
        CommitListener::new(self.opts.clone(), self.connect_timeout)
    }

    /// This process's claim on leading the background duties.
    pub fn leader(&self) -> Leader {
        Leader::new(self.opts.clone(), self.connect_timeout)
    }

    /// How many committed audit events wait for their seal: not yet covered
    /// by the chain (`taskmint audit verify` reports them).
    pub async fn pending_audit_events(&self) -> Result<u64, StoreError> {
        self.refine(audit::count_pending(&self.pool).await).await
    }

    /// Seals what is pending before a read of the trail, so the reader sees
    /// every event committed before it asked; a read-only store leaves it.
    async fn seal_for_read(&self) -> Result<(), StoreError> {
        if !self.read_only {
            self.seal_audit().await?;
        }
        Ok(())
    }

    /// Waits for the connections in use to be returned and closes them all;
    /// later calls fail with [`StoreError::Closed`].
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs `work` in a transaction and commits it; a deadlock or
    /// serialization failure (which rolled the transaction back) runs it
    /// again, a few times, after a short pause.
    async fn write<T, F, Fut>(&self, mut work: F) -> Result<T, StoreError>
    where
        F: FnMut(sqlx::Transaction<'static, sqlx::Postgres>) -> Fut,
        Fut: Future<Output = Result<(T, sqlx::Transaction<'static, sqlx::Postgres>), StoreError>>,
    {
        let mut attempt = 1;
        loop {
            let result: Result<T, StoreError> = async {
                let started = std::time::Instant::now();
                let tx = self.pool.begin().await.pg()?;
                let (out, tx) = work(tx).await?;
                tx.commit().await.map_err(|e| match store_error(e) {
                    // PostgreSQL rolls back what a lost connection left
                    // open, but a connection lost during COMMIT may have
                    // lost only the answer.
                    StoreError::Unavailable {
                        condition: Condition::Unreachable,
                        detail,
                    } => StoreError::Unavailable {
                        condition: Condition::LostAtCommit,
                        detail,
                    },
                    other => other,
                })?;
                crate::ops::metrics::get().store_commit("postgres", started.elapsed());
                Ok(out)
            }
            .await;
            let result = match result {
                Err(e) => Err(self.refine_err(e).await),
                ok => ok,
            };
            match result {
                Err(e) if e.unavailable() == Some(Condition::Conflict) && attempt < ATTEMPTS => {
                    tracing::debug!(error = %e, attempt, "retrying a conflicting transaction");
                    let pause = 5 * u64::from(attempt) + rand::random_range(0..10);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

impl PgStore {
    /// A pool that timed out waiting for a connection cannot tell a busy
    /// database from one it cannot reach: one direct connection attempt
    /// tells them apart.
    async fn refine_err(&self, e: StoreError) -> StoreError {
        let StoreError::Unavailable {
            condition: Condition::Busy,
            detail,
        } = &e
        else {
            return e;
        };
        if *detail != sqlx::Error::PoolTimedOut.to_string() {
            return e;
        }
        match self.connect_probe().await {
            Ok(()) => e,
            Err(unreachable) => unreachable,
        }
    }

    /// One direct connection, bounded by a second.
    async fn connect_probe(&self) -> Result<(), StoreError> {
        let probe = PgConnection::connect_with(&self.opts);
        match tokio::time::timeout(Duration::from_secs(1), probe).await {
            Ok(Ok(c)) => {
                let _ = c.close().await;
                Ok(())
            }
            Ok(Err(probe)) => Err(StoreError::Unavailable {
                condition: Condition::Unreachable,
                detail: probe.to_string(),
            }),
            Err(_) => Err(StoreError::Unavailable {
                condition: Condition::Unreachable,
                detail: "no answer to a connection attempt within 1s".into(),
            }),
        }
    }

    async fn refine<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        match r {
            Err(e) => Err(self.refine_err(e).await),
            ok => ok,
        }
    }
}

/// `url` without its password, for messages and logs.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{user}{hidden}@{host}")
        }
        None => authority.to_owned(),
    };
    // A password may also ride in the query string (`?password=...`).
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _))
                        if k.eq_ignore_ascii_case("password")
                            || k.eq_ignore_ascii_case("sslpassword") =>
                    {
                        format!("{k}=***")
                    }
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// Rows of `table` (an append-only log numbered by `seq`) after `after`, in
/// order, at most `limit`, read with `map`.
async fn seq_page<T>(
    pool: &PgPool,
    (columns, table): (&str, &str),
    after: u64,
    limit: u32,
    map: fn(&PgRow) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let sql = format!("SELECT {columns} FROM {table} WHERE seq > $1 ORDER BY seq LIMIT $2");
    let rows = sqlx::query(&sql)
        .bind(after.min(i64::MAX as u64) as i64)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .pg()?;
    rows.iter().map(map).collect()
}

use crate::store::rows::Cols;

impl Cols for PgRow {
    fn text(&self, col: &str) -> Result<String, StoreError> {
        self.try_get(col).pg()
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
        self.try_get(col).pg()
    }
    fn int(&self, col: &str) -> Result<i64, StoreError> {
        self.try_get(col).pg()
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        self.try_get(col).pg()
    }
    fn flag(&self, col: &str) -> Result<bool, StoreError> {
        self.try_get(col).pg()
    }
}

/// Maps the driver's errors to [`StoreError`] the PostgreSQL way (the
/// SQLite backend's `From<sqlx::Error>` reads SQLite's result codes).
trait Pg<T> {
    fn pg(self) -> Result<T, StoreError>;
}

impl<T> Pg<T> for Result<T, sqlx::Error> {
    fn pg(self) -> Result<T, StoreError> {
        self.map_err(store_error)
    }
}

fn store_error(e: sqlx::Error) -> StoreError {
    let condition = match &e {
        sqlx::Error::Database(db) => db.code().as_deref().and_then(classify),
        sqlx::Error::PoolTimedOut => Some(Condition::Busy),
        sqlx::Error::PoolClosed => return StoreError::Closed,
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => Some(Condition::Unreachable),
        _ => None,
    };
    match condition {
        Some(condition) => StoreError::Unavailable {
            condition,
            detail: e.to_string(),
        },
        None => StoreError::Query(e.to_string()),
    }
}

/// The conditions of PostgreSQL's SQLSTATE codes that a later retry may get
/// past.
fn classify(sqlstate: &str) -> Option<Condition> {
    match sqlstate {
        // serialization_failure, deadlock_detected
        "40001" | "40P01" => Some(Condition::Conflict),
        // disk_full
        "53100" => Some(Condition::DiskFull),
        // out_of_memory
        "53200" => Some(Condition::OutOfMemory),
        // too_many_connections, lock_not_available, query_canceled
        "53300" | "55P03" | "57014" => Some(Condition::Busy),
        // admin_shutdown, crash_shutdown, cannot_connect_now
        "57P01" | "57P02" | "57P03" => Some(Condition::Unreachable),
        // read_only_sql_transaction
        "25006" => Some(Condition::ReadOnly),
        // system_error, io_error and friends; data_corrupted, index_corrupted
        c if c.starts_with("58") || c == "XX001" || c == "XX002" => Some(Condition::Io),
        // connection_exception and its subclasses
        c if c.starts_with("08") => Some(Condition::Unreachable),
        _ => None,
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn begin_task_within(
        &self,
        t: &TaskRecord,
        max_active: u32,
        audit: &[AuditDraft],
    ) -> Result<(TaskRecord, bool), StoreError> {
        self.write(|mut tx| async move {
            if tasks::begin(&mut tx, t, max_active, audit).await? {
                return Ok(((t.clone(), true), tx));
            }
            let existing = tasks::get_in(&mut tx, &t.holder, &t.task_id, false)
                .await?
                .ok_or_else(|| StoreError::Corrupt(format!("task `{}` vanished", t.task_id)))?;
            Ok(((existing, false), tx))
        })
        .await
    }

    async fn record_credential(
        &self,
        c: &CredentialRecord,
        max_active: u32,
        audit: &[AuditDraft],
    ) -> Result<Result<(), RecordRefusal>, StoreError> {
        self.write(|mut tx| async move {
            let out = credentials::record(&mut tx, c, max_active, audit).await?;
            Ok((out, tx))
        })
        .await
    }

    async fn credential(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        self.refine(credentials::get(&self.pool, id).await).await
    }

    async fn task_credentials(
        &self,
        holder: &str,
        task_id: &str,
    ) -> Result<Vec<CredentialRecord>, StoreError> {
        self.refine(credentials::of_task(&self.pool, holder, task_id).await)
            .await
    }

    async fn task(&self, holder: &str, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        self.refine(tasks::get(&self.pool, holder, task_id).await)
            .await
    }

    async fn count_credentials(&self) -> Result<u64, StoreError> {
        self.refine(credentials::count(&self.pool).await).await
    }

    async fn revoke(
        &self,
        req: &RevokeRequest,
        sign: SetSigner,
    ) -> Result<Vec<RevocationEvent>, StoreError> {
        let sign = &sign;
        self.write(|mut tx| async move {
            let out = revocations::revoke(&mut tx, req, sign).await?;
            Ok((out, tx))
        })
        .await
    }

    async fn due_tasks(&self, now: i64) -> Result<Vec<(String, String)>, StoreError> {
        self.refine(tasks::due(&self.pool, now).await).await
    }

    async fn events_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<RevocationEvent>, StoreError> {
        self.refine(revocations::after(&self.pool, after, limit).await)
            .await
    }

    async fn unexpired_events(
        &self,
        now: i64,
        after: u64,
        through: u64,
        limit: u32,
    ) -> Result<Vec<RevocationEvent>, StoreError> {
        self.refine(revocations::unexpired(&self.pool, now, (after, through), limit).await)
            .await
    }

    async fn current_seq(&self) -> Result<u64, StoreError> {
        self.refine(revocations::read_counter(&self.pool, "revocation_seq").await)
            .await
    }

    async fn pruned_through(&self) -> Result<u64, StoreError> {
        self.refine(revocations::read_counter(&self.pool, "pruned_through").await)
            .await
    }

    async fn prune_events(&self, before: i64) -> Result<u64, StoreError> {
        self.write(|mut tx| async move {
            let out = revocations::prune(&mut tx, before).await?;
            Ok((out, tx))
        })
        .await
    }

    async fn ack_within(
        &self,
        a: &AckRecord,
        rebind: bool,
        max_names: u32,
        audit: AuditDraft,
    ) -> Result<AckRecord, StoreError> {
        let audit = &audit;
        self.write(|mut tx| async move {
            let out = acks::ack(&mut tx, a, rebind, max_names, audit.clone()).await?;
            Ok((out, tx))
        })
        .await
    }

    async fn acks(&self) -> Result<Vec<AckRecord>, StoreError> {
        self.refine(acks::all(&self.pool).await).await
    }

    async fn crl_entries(&self, now: i64) -> Result<Vec<CrlEntry>, StoreError> {
        self.refine(credentials::crl_entries(&self.pool, now).await)
            .await
    }

    async fn bundle_sequence(&self, content_hash: &str) -> Result<u64, StoreError> {
        // The common case changes nothing: answer it without a write.
        let current: Result<Option<(String, i64)>, _> =
            sqlx::query_as("SELECT content_hash, sequence FROM bundle_sequence WHERE id = 1")
                .fetch_optional(&self.pool)
                .await
                .pg();
        let current = self.refine(current).await?;
        if let Some((hash, seq)) = current
            && hash == content_hash
        {
            return Ok(seq as u64);
        }
        self.write(|mut tx| async move {
            let out = meta::bundle_sequence(&mut tx, content_hash).await?;
            Ok((out, tx))
        })
        .await
    }

    async fn append_audit(&self, events: &[AuditDraft]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        // Pending, like every other writer's events: no head lock here.
        self.write(|mut tx| async move {
            append(&mut tx, events.iter().cloned()).await?;
            Ok(((), tx))
        })
        .await
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.connect_probe().await
    }

    async fn append_audit_once(&self, event: AuditDraft) -> Result<bool, StoreError> {
        self.write(|mut tx| {
            let event = event.clone();
            async move {
                // Two processes checking at once would both find nothing:
                // the check and the append hold one lock per fact.
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))")
                    .bind(&event.kind)
                    .bind(&event.subject)
                    .execute(&mut *tx)
                    .await
                    .pg()?;
                let found: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM audit WHERE kind = $1 AND subject = $2 \
                       AND ref_seq IS NOT DISTINCT FROM $3)",
                )
                .bind(&event.kind)
                .bind(&event.subject)
                .bind(event.ref_seq.map(|s| s as i64))
                .fetch_one(&mut *tx)
                .await
                .pg()?;
                if !found {
                    append(&mut tx, [event]).await?;
                }
                Ok((!found, tx))
            }
        })
        .await
    }

    async fn audit_after(&self, after: u64, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        self.seal_for_read().await?;
        self.refine(audit::after(&self.pool, after, limit).await)
            .await
    }

    async fn audit_head(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.seal_for_read().await?;
        self.refine(audit::head(&self.pool).await).await
    }

    async fn task_audit(
        &self,
        holder: &str,
        task_id: &str,
        since: i64,
        after: u64,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        self.seal_for_read().await?;
        self.refine(audit::of_task(&self.pool, (holder, task_id), since, after, limit).await)
            .await
    }

    async fn acks_covering(&self, seq: u64) -> Result<Vec<AuditEvent>, StoreError> {
        self.seal_for_read().await?;
        self.refine(audit::acks_covering(&self.pool, seq).await)
            .await
    }

    async fn active_tasks(
        &self,
        filter: &GrantFilter,
        now: i64,
        after: Option<(String, String)>,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        self.refine(tasks::active(&self.pool, filter, now, after, limit).await)
            .await
    }

    async fn break_glass_tasks(
        &self,
        include_reviewed: bool,
        after: Option<BreakGlassKey>,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        self.refine(tasks::break_glass(&self.pool, include_reviewed, after, limit).await)
            .await
    }

    async fn mark_reviewed(
        &self,
        holder: &str,
        task_id: &str,
        review: &Review,
        audit: AuditDraft,
    ) -> Result<ReviewOutcome, StoreError> {
        let audit = &audit;
        self.write(|mut tx| async move {
            let out = tasks::mark_reviewed(&mut tx, holder, task_id, review, audit.clone()).await?;
            Ok((out, tx))
        })
        .await
    }

    async fn stored_crl(&self) -> Result<StoredCrl, StoreError> {
        self.refine(meta::stored_crl(&self.pool).await).await
    }

    async fn store_crl(&self, expected: u64, crl: &StoredCrl) -> Result<bool, StoreError> {
        self.write(|mut tx| async move {
            let out = meta::store_crl(&mut tx, expected, crl).await?;
            Ok((out, tx))
        })
        .await
    }

    /// One short transaction per page of pending transactions' events;
    /// nothing pending costs one index probe and no lock. A read-only store
    /// seals nothing.
    async fn seal_audit(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        while !self.read_only
            && self
                .refine(audit::anything_pending(&self.pool).await)
                .await?
        {
            let (n, full) = self
                .write(|mut tx| async move {
                    let out = audit::seal_page(&mut tx).await?;
                    Ok((out, tx))
                })
                .await?;
            total += n;
            if !full {
                break;
            }
        }
        Ok(total)
    }

    async fn append_audit_repeated(
        &self,
        event: AuditDraft,
        window: i64,
    ) -> Result<bool, StoreError> {
        let event = &event;
        self.write(|mut tx| async move {
            let out = audit::append_repeated(&mut tx, event, window).await?;
            Ok((out, tx))
        })
        .await
    }

    async fn close_repeat_windows(&self, before: i64, limit: u32) -> Result<u64, StoreError> {
        self.write(|mut tx| async move {
            let out = audit::close_windows(&mut tx, before, limit).await?;
            Ok((out, tx))
        })
        .await
    }

    async fn audit_checkpoint(&self) -> Result<AuditCheckpoint, StoreError> {
        self.refine(audit::checkpoint(&self.pool).await).await
    }

    async fn claim_audit_prune(&self, at: u64, to: u64) -> Result<bool, StoreError> {
        self.write(|mut tx| async move {
            let out = audit::claim_prune(&mut tx, at, to).await?;
            Ok((out, tx))
        })
        .await
    }

    async fn commit_audit_prune(
        &self,
        at: u64,
        to: u64,
        hash: &str,
        record: AuditDraft,
    ) -> Result<bool, StoreError> {
        let record = &record;
        self.write(|mut tx| async move {
            let done = audit::commit_prune(&mut tx, at, to, hash).await?;
            if done {
                append(&mut tx, [record.clone()]).await?;
            }
            Ok((done, tx))
        })
        .await
    }

    async fn prune_records(&self, before: i64, limit: u32) -> Result<PrunedRecords, StoreError> {
        self.write(|mut tx| async move {
            let out = tasks::prune(&mut tx, before, limit).await?;
            Ok((out, tx))
        })
        .await
    }
}

#[cfg(test)]
mod tests;
