//! Durable state behind one [`Store`] trait. Only this module knows SQL; the
//! rest of the crate sees records. Nothing is returned to a caller before the
//! store has committed it, and nothing that failed to commit is ever
//! acknowledged.
//!
//! # Layout
//!
//! - [`records`](self): the records every backend keeps (re-exported here).
//! - `rows`: one row-to-record mapping per kind, shared by the backends.
//! - `repeats`: the database-free part of repeated events (key, window,
//!   summary), shared by the backends.
//! - `revoking`: the database-free parts of a revocation (scope filter,
//!   one event per task, its audit events), shared by the backends.
//! - `conformance` (test builds): the behaviour every backend must have,
//!   written once and run in each backend's own tests.
//! - [`SqliteStore`]: the embedded default; one writer thread owns every
//!   write.
//! - [`PgStore`]: PostgreSQL; row locks inside each transaction keep it
//!   correct when several processes write.
//! - [`open`] / [`AnyStore`]: the backend the config names.
//! - `fleet`: what several processes on one store need — revocation
//!   wake-ups ([`CommitWakes`]), one leader ([`Leadership`]) — and the lock
//!   that keeps a second process off a SQLite store ([`ProcessLock`]).
//!
//! Timestamps are Unix seconds in `BIGINT` columns and conflicts use
//! `ON CONFLICT`, so the schema carries over to PostgreSQL.

#[cfg(test)]
pub mod conformance;
mod fleet;
mod postgres;
mod records;
mod repeats;
mod revoking;
mod rows;
mod sqlite;

use std::sync::Arc;

pub use fleet::{CommitWakes, Leadership, ProcessLock};
pub(crate) use postgres::redact as redact_url;
pub use postgres::{CommitListener, Leader, PgPoolConfig, PgStore};
pub use records::*;
pub use sqlite::SqliteStore;

use crate::config::StoreConfig;

use crate::audit::{AuditDraft, AuditEvent};

/// A storage failure. The message is for logs; callers see only "internal",
/// except for [`StoreError::Unavailable`], whose condition they are told.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or migrated.
    #[error("cannot open store `{path}`: {reason}")]
    Open {
        /// Where.
        path: String,
        /// Why.
        reason: String,
    },
    /// A query failed.
    #[error("store query failed: {0}")]
    Query(String),
    /// A credential id was recorded twice (a random id collided).
    #[error("credential `{0}` already exists")]
    Duplicate(String),
    /// A stored value could not be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The database cannot take the write now: the disk is full, an I/O
    /// error, a lock that did not clear in time. The transaction was rolled
    /// back, so nothing of it was stored; the same write may succeed later.
    #[error("store unavailable: {condition}")]
    Unavailable {
        /// What happened, in words a caller may read (`the database disk is
        /// full`); never a path or SQL.
        condition: Condition,
        /// The driver's own text, for the log.
        detail: String,
    },
    /// The store was closed (the server is shutting down).
    #[error("the store is closed")]
    Closed,
    /// An acknowledgement under a subscriber name that belongs to another
    /// SPIFFE ID (checked in the transaction that would have written it).
    #[error("subscriber `{subscriber}` acknowledges as `{bound_to}`")]
    SubscriberBound {
        /// The name.
        subscriber: String,
        /// The SPIFFE ID it belongs to.
        bound_to: String,
    },
    /// A task was not begun: its holder has the most active tasks allowed.
    #[error("the holder already has {max} active tasks")]
    TooManyTasks {
        /// The cap.
        max: u32,
    },
    /// A new subscriber name was not taken: its SPIFFE ID acknowledges under
    /// the most names allowed.
    #[error("the workload already acknowledges under {max} subscriber names")]
    TooManySubscriberNames {
        /// The cap.
        max: u32,
    },
    /// A delegated task was not begun: its parent task had ended (checked
    /// in the transaction that would have begun it).
    #[error("the parent task is {}", .0.as_str())]
    ParentEnded(TaskState),
}

/// Why the store could not take a write (see [`StoreError::Unavailable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// No space left, or the configured size cap was reached.
    DiskFull,
    /// The operating system reported an I/O error.
    Io,
    /// The database stayed locked by another writer past the busy timeout.
    Busy,
    /// The database file cannot be written (permissions, read-only mount).
    ReadOnly,
    /// Out of memory.
    OutOfMemory,
    /// The database server cannot be reached, or the connection to it was
    /// lost before the commit (the server rolls such a transaction back).
    Unreachable,
    /// The connection to the database was lost during the commit: the
    /// server may have committed and only the answer was lost.
    LostAtCommit,
    /// The database aborted the transaction in favour of a concurrent one
    /// (a deadlock or serialization failure), more often than retried.
    Conflict,
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::DiskFull => "the database disk is full",
            Self::Io => "the database reported an I/O error",
            Self::Busy => "the database is busy (locked, or no connection free in time)",
            Self::ReadOnly => "the database is read-only",
            Self::OutOfMemory => "the database ran out of memory",
            Self::Unreachable => "the database cannot be reached",
            Self::LostAtCommit => "the connection to the database was lost during the commit",
            Self::Conflict => "the database kept aborting the write for concurrent ones",
        })
    }
}

impl Condition {
    /// Whether a write that failed this way certainly stored nothing. An
    /// I/O error may strike after the commit reached the disk (a failed
    /// fsync), and a connection may be lost after the server committed but
    /// before it said so, so a caller cannot be told it did not happen.
    pub fn nothing_stored(self) -> bool {
        !matches!(self, Self::Io | Self::LostAtCommit)
    }
}

impl StoreError {
    /// The condition, when the failure is one the same write may get past
    /// later (as opposed to a bug or a corrupt row).
    pub fn unavailable(&self) -> Option<Condition> {
        match self {
            Self::Unavailable { condition, .. } => Some(*condition),
            _ => None,
        }
    }
}

/// Durable state. Implementations commit before they return `Ok`; a write
/// that returns an error stored nothing of itself (its transaction was rolled
/// back before any other write ran). Revocation sequence numbers are gap-free
/// in commit order and never handed out twice: SQLite has one writer,
/// PostgreSQL serialises revocations on the counter's row lock.
/// `conformance/` (test builds) holds the behaviour every implementation must pass.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a task and writes `audit` with it; returns the existing row
    /// instead (writing nothing) if there is one. No cap on the holder's
    /// active tasks: see [`Store::begin_task_within`].
    async fn begin_task(
        &self,
        task: &TaskRecord,
        audit: &[AuditDraft],
    ) -> Result<(TaskRecord, bool), StoreError> {
        self.begin_task_within(task, u32::MAX, audit).await
    }

    /// [`Store::begin_task`], refusing with [`StoreError::TooManyTasks`] a
    /// new task whose holder already has `max_active` active tasks (not
    /// ended, deadline after the new task's `created_at`), counted in the
    /// transaction that would insert it, so that replicas racing cannot
    /// exceed it together.
    async fn begin_task_within(
        &self,
        task: &TaskRecord,
        max_active: u32,
        audit: &[AuditDraft],
    ) -> Result<(TaskRecord, bool), StoreError>;

    /// Records a credential and its audit events if its task is active, has
    /// fewer than `max_active` active credentials (and, for a renewal, its
    /// predecessor is still active and unrenewed), in one transaction.
    async fn record_credential(
        &self,
        cred: &CredentialRecord,
        max_active: u32,
        audit: &[AuditDraft],
    ) -> Result<Result<(), RecordRefusal>, StoreError>;

    /// One credential by id.
    async fn credential(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError>;

    /// Credentials of one task, oldest first.
    async fn task_credentials(
        &self,
        holder: &str,
        task_id: &str,
    ) -> Result<Vec<CredentialRecord>, StoreError>;

    /// One task by holder and id.
    async fn task(&self, holder: &str, task_id: &str) -> Result<Option<TaskRecord>, StoreError>;

    /// How many credentials are stored.
    async fn count_credentials(&self) -> Result<u64, StoreError>;

    /// Revokes every active credential in scope (when ending a task: every
    /// unrevoked credential of it, expired or not, so each record says how it
    /// ended), one event per task, each signed by `sign`, and optionally ends
    /// the task; all in one transaction.
    async fn revoke(
        &self,
        req: &RevokeRequest,
        sign: SetSigner,
    ) -> Result<Vec<RevocationEvent>, StoreError>;

    /// Active tasks whose deadline is at or before `now`.
    async fn due_tasks(&self, now: i64) -> Result<Vec<(String, String)>, StoreError>;

    /// Events with `seq > after`, in order, at most `limit`.
    async fn events_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<RevocationEvent>, StoreError>;

    /// Events with `seq` in `(after, through]` whose revoked credentials
    /// have not all expired at `now`, in order, at most `limit`: a page of a
    /// watcher's snapshot (never the whole of it at once).
    async fn unexpired_events(
        &self,
        now: i64,
        after: u64,
        through: u64,
        limit: u32,
    ) -> Result<Vec<RevocationEvent>, StoreError>;

    /// The last sequence handed out (0 if none).
    async fn current_seq(&self) -> Result<u64, StoreError>;

    /// The highest sequence pruned from the log (0 if none).
    async fn pruned_through(&self) -> Result<u64, StoreError>;

    /// Deletes events that expired before `before`; returns how many.
    async fn prune_events(&self, before: i64) -> Result<u64, StoreError>;

    /// Raises a subscriber's acknowledged sequence (never lowers it); writes
    /// `audit` (with `ref_seq` set to the new sequence) when it rose.
    /// A subscriber name belongs to the SPIFFE ID of its first
    /// acknowledgement: another ID is refused with
    /// [`StoreError::SubscriberBound`], checked against the stored row in
    /// the transaction that writes, unless `rebind` (the name is configured
    /// for the new ID).
    async fn ack(
        &self,
        ack: &AckRecord,
        rebind: bool,
        audit: AuditDraft,
    ) -> Result<AckRecord, StoreError> {
        self.ack_within(ack, rebind, u32::MAX, audit).await
    }

    /// [`Store::ack`], refusing with [`StoreError::TooManySubscriberNames`]
    /// a name new to the store when its SPIFFE ID already acknowledges under
    /// `max_names` names (counted in the transaction that would insert it).
    async fn ack_within(
        &self,
        ack: &AckRecord,
        rebind: bool,
        max_names: u32,
        audit: AuditDraft,
    ) -> Result<AckRecord, StoreError>;

    /// Every acknowledgement.
    async fn acks(&self) -> Result<Vec<AckRecord>, StoreError>;

    /// Revoked X.509 credentials that have not expired at `now`.
    async fn crl_entries(&self, now: i64) -> Result<Vec<CrlEntry>, StoreError>;

    /// The trust bundle sequence for content with this hash: unchanged if
    /// the content is the last one seen, otherwise one more.
    async fn bundle_sequence(&self, content_hash: &str) -> Result<u64, StoreError>;

    /// Appends events that describe no other change of state (decisions
    /// that were denied, reads, reloads), in one transaction, together in
    /// the chain. Their numbers are not returned: on PostgreSQL they are
    /// given when the events are sealed, later, so that refused calls
    /// (which retry storms are made of) never wait for the chain's head.
    async fn append_audit(&self, events: &[AuditDraft]) -> Result<(), StoreError>;

    /// Audit events with `seq > after`, in order, at most `limit`.
    async fn audit_after(&self, after: u64, limit: u32) -> Result<Vec<AuditEvent>, StoreError>;

    /// The head record: seq and hash of the newest event.
    async fn audit_head(&self) -> Result<Option<(u64, String)>, StoreError>;

    /// Audit events about one task, in order: those at or after `since`
    /// (the task's begin: an older task of the same name, pruned since, was
    /// another) with `seq > after`, at most `limit`.
    async fn task_audit(
        &self,
        holder: &str,
        task_id: &str,
        since: i64,
        after: u64,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError>;

    /// For each subscriber, its first acknowledgement event covering `seq`.
    async fn acks_covering(&self, seq: u64) -> Result<Vec<AuditEvent>, StoreError>;

    /// Active tasks (deadline after `now`) matching `filter`, ordered by
    /// (holder, task id) and starting after `after`; at most `limit`.
    async fn active_tasks(
        &self,
        filter: &GrantFilter,
        now: i64,
        after: Option<(String, String)>,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, StoreError>;

    /// Break-glass tasks, newest first (ordered by creation time
    /// descending, then holder and task id), starting after `after`;
    /// reviewed ones too if asked; at most `limit`.
    async fn break_glass_tasks(
        &self,
        include_reviewed: bool,
        after: Option<BreakGlassKey>,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, StoreError>;

    /// Marks a break-glass task reviewed, with its audit event.
    async fn mark_reviewed(
        &self,
        holder: &str,
        task_id: &str,
        review: &Review,
        audit: AuditDraft,
    ) -> Result<ReviewOutcome, StoreError>;

    /// Appends `event` unless the trail already holds an event of the same
    /// kind, subject and `ref_seq` (checked and appended in one transaction,
    /// serialised with every other such append), so a fact that several
    /// processes may observe — a subscriber overdue on one revocation — is
    /// recorded once. Returns whether it appended.
    async fn append_audit_once(&self, event: AuditDraft) -> Result<bool, StoreError>;

    /// Whether the database answers a fresh connection now, bypassing any
    /// pool: tells a busy database (a full pool, a slow query) from one
    /// that cannot be reached.
    async fn probe(&self) -> Result<(), StoreError>;

    /// The stored CRL (number and empty DER when none has been stored yet).
    async fn stored_crl(&self) -> Result<StoredCrl, StoreError>;

    /// Stores `crl` in place of the stored CRL if that one's number is still
    /// `expected` and `crl.number` is greater (a compare-and-set, so of
    /// several replicas signing the same change one wins); `false`, storing
    /// nothing, when another CRL was stored first.
    async fn store_crl(&self, expected: u64, crl: &StoredCrl) -> Result<bool, StoreError>;

    /// Numbers and chains audit events that were committed unchained; how
    /// many. Backends that chain at write time (SQLite: one writer) have
    /// nothing to do. On PostgreSQL, state-changing transactions insert
    /// their events pending, and this seals them in short transactions of
    /// its own; reads of the trail call it first, and the leader calls it
    /// periodically so the chain covers new events within a moment.
    async fn seal_audit(&self) -> Result<u64, StoreError>;

    /// Appends `event`, which changes no state (a status check, a read, a
    /// refusal), as a repeated event (see `repeats`): chained now if it
    /// opens a window of `window` seconds for its key — after the summary
    /// of the key's previous window, if that one saw repeats — otherwise
    /// only counted in the open window. Whether it was chained.
    async fn append_audit_repeated(
        &self,
        event: AuditDraft,
        window: i64,
    ) -> Result<bool, StoreError>;

    /// Closes at most `limit` windows of repeated events opened at or
    /// before `before`, chaining the summary of each that saw repeats (the
    /// leader's sweep, so a count is chained within a window and a sweep of
    /// its last repeat); how many it closed.
    async fn close_repeat_windows(&self, before: i64, limit: u32) -> Result<u64, StoreError>;

    /// The audit checkpoint: where the stored trail starts.
    async fn audit_checkpoint(&self) -> Result<AuditCheckpoint, StoreError>;

    /// Claims the prune of audit events `(at, to]`: succeeds if the
    /// checkpoint is still at `at` and no other range is claimed (or this
    /// very one is), so two processes pruning at once archive the same
    /// range. Whether the claim stands.
    async fn claim_audit_prune(&self, at: u64, to: u64) -> Result<bool, StoreError>;

    /// Moves the checkpoint from `at` to `to` — whose event must have hash
    /// `hash`, checked in the transaction — deletes the events through
    /// `to` and appends `audit` (the record of the prune), in one
    /// transaction, if the claim of `(at, to]` still stands. Call it only
    /// once those events are durably archived. Whether it did.
    async fn commit_audit_prune(
        &self,
        at: u64,
        to: u64,
        hash: &str,
        audit: AuditDraft,
    ) -> Result<bool, StoreError>;

    /// Deletes at most `limit` credentials that expired before `before`,
    /// then at most `limit` tasks that ended before `before` and hold no
    /// credential any more (break-glass tasks awaiting review stay), in one
    /// short transaction.
    async fn prune_records(&self, before: i64, limit: u32) -> Result<PrunedRecords, StoreError>;
}

/// Where a page of the break-glass list ends: (creation time, holder, task
/// id) of its last task.
pub type BreakGlassKey = (i64, String, String);

/// The store the config names, opened (and migrated).
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// The embedded SQLite store (`[store] path`), and the lock that keeps
    /// a second issuer off it.
    Sqlite(Arc<SqliteStore>, Arc<ProcessLock>),
    /// A PostgreSQL database (`[store] url`).
    Postgres(Arc<PgStore>),
}

impl AnyStore {
    /// The store behind the [`Store`] trait.
    pub fn as_dyn(&self) -> Arc<dyn Store> {
        match self {
            Self::Sqlite(s, _) => s.clone(),
            Self::Postgres(s) => s.clone(),
        }
    }

    /// The SQLite store, if that is the backend (for what only it has, such
    /// as [`SqliteStore::set_max_pages`]).
    pub fn sqlite(&self) -> Option<&Arc<SqliteStore>> {
        match self {
            Self::Sqlite(s, _) => Some(s),
            Self::Postgres(_) => None,
        }
    }

    /// Wake-ups for the readers of the revocation log when another process
    /// may have committed to it.
    pub fn commit_wakes(&self) -> CommitWakes {
        match self {
            Self::Sqlite(..) => CommitWakes::Local,
            Self::Postgres(s) => CommitWakes::Postgres(Box::new(s.commit_listener())),
        }
    }

    /// This process's claim on leading the background duties.
    pub fn leadership(&self) -> Leadership {
        match self {
            Self::Sqlite(..) => Leadership::Sole,
            Self::Postgres(s) => Leadership::Postgres(Box::new(s.leader())),
        }
    }

    /// Finishes or waits for the writes in flight and closes the store.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(s, _) => s.close().await,
            Self::Postgres(s) => s.close().await,
        }
    }
}

/// Opens the backend `cfg` names: PostgreSQL when it has a URL, otherwise
/// the SQLite file at its path.
pub async fn open(cfg: &StoreConfig) -> Result<AnyStore, StoreError> {
    match (&cfg.url, &cfg.path) {
        (Some(url), _) => Ok(AnyStore::Postgres(Arc::new(
            PgStore::open(url, &cfg.pool()).await?,
        ))),
        (None, Some(path)) => {
            // Before opening: a second issuer must not migrate or write it.
            let lock = ProcessLock::take(path)?;
            Ok(AnyStore::Sqlite(
                Arc::new(SqliteStore::open(path).await?),
                Arc::new(lock),
            ))
        }
        (None, None) => Err(StoreError::Open {
            path: String::new(),
            reason: "the config names no store (`store.path` or `store.url`)".into(),
        }),
    }
}
