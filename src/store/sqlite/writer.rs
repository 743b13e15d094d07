//! The group-commit writer: a thread that owns its own connection to the
//! database (rusqlite, on the same libsqlite3 as sqlx) and runs the hot
//! writes — recording a credential, beginning a task, appending audit
//! events — a whole batch at a time.
//!
//! Every queued job (up to [`MAX_BATCH`]) goes into one transaction, each in
//! its own savepoint so one failure does not undo the others; the batch
//! commits once (one fsync) and only then is each job answered. While a batch
//! commits the next one queues, so the busier the issuer, the larger the
//! batches. Running the statements on the thread that owns the connection
//! keeps the per-statement cost at SQLite's own: the profile had a
//! cross-thread hand-off per statement through sqlx's worker as the largest
//! share of the issuer's CPU after signing.
//!
//! The writer takes the store's write turn for each batch, so it and the
//! other writes (sqlx, on the `writer` pool) never hold a write transaction
//! at the same time: writes stay serialised, as the store promises.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{AUDIT_INSERT, Head, TASK_INSERT};
use crate::audit::{self, AuditDraft, AuditEvent};
use crate::store::{CredentialRecord, RecordRefusal, StoreError, TaskRecord, TaskState};

/// Most jobs one transaction takes.
pub(super) const MAX_BATCH: usize = 256;

/// A write that rides the group commit.
pub(super) enum Job {
    /// Record a credential if its task allows it.
    Record {
        cred: CredentialRecord,
        max_active: u32,
        audit: Vec<AuditDraft>,
        reply: oneshot::Sender<Result<Result<(), RecordRefusal>, StoreError>>,
    },
    /// Create a task unless it exists; answers whether it was created.
    Begin {
        task: TaskRecord,
        audit: Vec<AuditDraft>,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    /// Append audit events.
    Append {
        events: Vec<AuditDraft>,
        reply: oneshot::Sender<Result<Vec<AuditEvent>, StoreError>>,
    },
}

/// What the writer thread receives. (Jobs travel by value, as before this
/// wrapper; boxing them would add an allocation to every mint for the sake
/// of one message per store.)
#[allow(clippy::large_enum_variant)]
pub(super) enum Msg {
    /// A write to batch.
    Job(Job),
    /// Finish the jobs queued before this, close the connection and stop;
    /// answered once the connection is closed.
    Close(oneshot::Sender<()>),
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Record { .. } => "Job::Record",
            Self::Begin { .. } => "Job::Begin",
            Self::Append { .. } => "Job::Append",
        })
    }
}

/// Opens the writer's connection to the (already migrated) database at
/// `path` and starts its thread; the thread ends when every sender is gone.
pub(super) fn start(path: &Path, turn: Arc<Mutex<()>>) -> Result<mpsc::Sender<Msg>, String> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())?;
    // The same durability as the sqlx connections: a commit is on disk
    // before any job is answered.
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
        .map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
    std::thread::Builder::new()
        .name("taskmint-writer".into())
        .spawn(move || run(conn, rx, &turn))
        .map_err(|e| e.to_string())?;
    Ok(tx)
}

fn run(mut conn: Connection, mut rx: mpsc::Receiver<Msg>, turn: &Mutex<()>) {
    // Set once the loop must end: with the reply of a `Close`, or with
    // `None` when every sender is gone.
    let mut closed = None;
    while closed.is_none() {
        let mut jobs = Vec::new();
        while jobs.len() < MAX_BATCH {
            let next = if jobs.is_empty() {
                rx.blocking_recv()
            } else {
                rx.try_recv().ok()
            };
            match next {
                Some(Msg::Close(reply)) => {
                    closed = Some(Some(reply));
                    break;
                }
                Some(Msg::Job(j)) => jobs.push(j),
                None if jobs.is_empty() => {
                    closed = Some(None);
                    break;
                }
                None => break,
            }
        }
        if jobs.is_empty() {
            continue;
        }
        let mut done = Vec::with_capacity(jobs.len());
        let commit = {
            let _turn = turn.blocking_lock();
            run_batch(&mut conn, jobs, &mut done)
        };
        for d in done {
            d.send(&commit);
        }
    }
    // Later submissions fail at the channel: the store is closed.
    rx.close();
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the writer's connection failed");
    }
    if let Some(Some(reply)) = closed {
        let _ = reply.send(());
    }
}

/// Job results held until their transaction commits. (A batch holds a few
/// hundred at most; boxing a variant would only add an allocation.)
enum Done {
    Record(
        oneshot::Sender<Result<Result<(), RecordRefusal>, StoreError>>,
        Result<Result<(), RecordRefusal>, StoreError>,
    ),
    Begin(
        oneshot::Sender<Result<bool, StoreError>>,
        Result<bool, StoreError>,
    ),
    Append(
        oneshot::Sender<Result<Vec<AuditEvent>, StoreError>>,
        Result<Vec<AuditEvent>, StoreError>,
    ),
}

impl Done {
    fn is_ok(&self) -> bool {
        match self {
            Self::Record(_, r) => r.is_ok(),
            Self::Begin(_, r) => r.is_ok(),
            Self::Append(_, r) => r.is_ok(),
        }
    }

    fn send(self, commit: &Result<(), String>) {
        let fail = |e: &String| StoreError::Batch(e.clone());
        // Receivers that went away (cancelled RPCs) are fine to ignore: the
        // write is committed either way.
        match (self, commit) {
            (Self::Record(tx, r), Ok(())) => drop(tx.send(r)),
            (Self::Record(tx, _), Err(e)) => drop(tx.send(Err(fail(e)))),
            (Self::Begin(tx, r), Ok(())) => drop(tx.send(r)),
            (Self::Begin(tx, _), Err(e)) => drop(tx.send(Err(fail(e)))),
            (Self::Append(tx, r), Ok(())) => drop(tx.send(r)),
            (Self::Append(tx, _), Err(e)) => drop(tx.send(Err(fail(e)))),
        }
    }
}

fn failed(job: Job, e: &str) -> Done {
    let err = || StoreError::Batch(e.to_owned());
    match job {
        Job::Record { reply, .. } => Done::Record(reply, Err(err())),
        Job::Begin { reply, .. } => Done::Begin(reply, Err(err())),
        Job::Append { reply, .. } => Done::Append(reply, Err(err())),
    }
}

fn sql_err(e: rusqlite::Error) -> StoreError {
    StoreError::Batch(e.to_string())
}

fn run_batch(conn: &mut Connection, jobs: Vec<Job>, done: &mut Vec<Done>) -> Result<(), String> {
    let fail_all = |jobs: Vec<Job>, done: &mut Vec<Done>, e: String| {
        done.extend(jobs.into_iter().map(|j| failed(j, &e)));
        Err(e)
    };
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return fail_all(jobs, done, e.to_string()),
    };
    let mut head = match load_head(&tx) {
        Ok(h) => h,
        Err(e) => return fail_all(jobs, done, e.to_string()),
    };
    let mut jobs = jobs.into_iter();
    while let Some(job) = jobs.next() {
        let before = head.clone();
        let sp = match tx.savepoint() {
            Ok(sp) => sp,
            Err(e) => {
                done.push(failed(job, &e.to_string()));
                continue;
            }
        };
        let d = match job {
            Job::Record {
                cred,
                max_active,
                audit,
                reply,
            } => Done::Record(reply, record_in(&sp, &mut head, &cred, max_active, audit)),
            Job::Begin { task, audit, reply } => {
                Done::Begin(reply, begin_in(&sp, &mut head, &task, audit))
            }
            Job::Append { events, reply } => {
                Done::Append(reply, append_in(&sp, &mut head, events).map_err(sql_err))
            }
        };
        // A savepoint dropped without commit rolls back to where it began.
        let end = if d.is_ok() {
            sp.commit()
        } else {
            head = before;
            sp.finish()
        };
        done.push(d);
        if let Err(e) = end {
            // The transaction is in an unknown state: fail the batch,
            // including the jobs it had not reached.
            return fail_all(jobs.collect(), done, e.to_string());
        }
    }
    store_head(&tx, &head).map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())
}

fn load_head(conn: &Connection) -> rusqlite::Result<Head> {
    let head = conn
        .prepare_cached("SELECT seq, hash FROM audit_head WHERE id = 1")?
        .query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
        .optional()?;
    Ok(match head {
        Some((seq, hash)) => Head {
            seq: seq as u64,
            hash,
            dirty: false,
        },
        None => Head {
            seq: 0,
            hash: audit::GENESIS.to_owned(),
            dirty: false,
        },
    })
}

fn store_head(conn: &Connection, head: &Head) -> rusqlite::Result<()> {
    if head.dirty {
        conn.prepare_cached(super::HEAD_UPSERT)?
            .execute(params![head.seq as i64, head.hash])?;
    }
    Ok(())
}

/// Chains `drafts` after `head` and inserts them.
fn append_in(
    conn: &Connection,
    head: &mut Head,
    drafts: Vec<AuditDraft>,
) -> rusqlite::Result<Vec<AuditEvent>> {
    let mut insert = conn.prepare_cached(AUDIT_INSERT)?;
    let mut out = Vec::with_capacity(drafts.len());
    for d in drafts {
        let e = audit::seal(head.seq, &head.hash, d);
        let b = &e.body;
        insert.execute(params![
            e.seq as i64,
            b.time,
            e.prev_hash,
            e.hash,
            b.kind,
            b.actor,
            b.task_owner,
            b.task_id,
            b.credential_id,
            b.decision,
            b.policies.join(","),
            b.reason,
            b.break_glass,
            b.ref_seq.map(|s| s as i64),
            b.subject,
        ])?;
        head.seq = e.seq;
        head.hash.clone_from(&e.hash);
        head.dirty = true;
        out.push(e);
    }
    Ok(out)
}

/// Creates a task (with its audit events) unless it exists.
fn begin_in(
    conn: &Connection,
    head: &mut Head,
    t: &TaskRecord,
    audit: Vec<AuditDraft>,
) -> Result<bool, StoreError> {
    let exists = conn
        .prepare_cached("SELECT 1 FROM tasks WHERE owner = ?1 AND task_id = ?2")
        .and_then(|mut s| s.exists(params![t.owner, t.task_id]))
        .map_err(sql_err)?;
    if exists {
        return Ok(false);
    }
    let labels = serde_json::to_string(&t.labels).expect("labels serialise");
    let audiences = serde_json::to_string(&t.audiences).expect("audiences serialise");
    conn.prepare_cached(TASK_INSERT)
        .and_then(|mut s| {
            s.execute(params![
                t.owner,
                t.task_id,
                t.created_at,
                t.purpose,
                t.ticket,
                labels,
                t.implicit,
                t.deadline,
                t.state.as_str(),
                t.ended_at,
                t.accountable_owner,
                t.break_glass,
                t.justification,
                t.review.as_ref().map(|r| &r.by),
                t.review.as_ref().map(|r| r.at),
                t.review.as_ref().map(|r| &r.note),
                t.parent.as_ref().map(|p| &p.0),
                t.parent.as_ref().map(|p| &p.1),
                i64::from(t.depth),
                audiences,
            ])
        })
        .map_err(sql_err)?;
    append_in(conn, head, audit).map_err(sql_err)?;
    Ok(true)
}

/// Records a credential (with its audit events) if its task allows it.
fn record_in(
    conn: &Connection,
    head: &mut Head,
    c: &CredentialRecord,
    max_active: u32,
    audit: Vec<AuditDraft>,
) -> Result<Result<(), RecordRefusal>, StoreError> {
    // The task's state and its active credentials (counted up to the limit
    // only, so a task with many credentials costs no more) in one query.
    let row = conn
        .prepare_cached(
            "SELECT state, (SELECT COUNT(*) FROM (SELECT 1 FROM credentials \
                WHERE task_owner = ?1 AND task_id = ?2 AND revoked_at IS NULL AND not_after > ?3 \
                LIMIT ?4)) AS active \
             FROM tasks WHERE owner = ?1 AND task_id = ?2",
        )
        .and_then(|mut s| {
            s.query_row(
                params![c.task_owner, c.task_id, c.issued_at, i64::from(max_active)],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()
        })
        .map_err(sql_err)?;
    let Some((state, active)) = row else {
        return Err(StoreError::Corrupt(format!(
            "task `{}` has no row",
            c.task_id
        )));
    };
    match TaskState::parse(&state)? {
        TaskState::Active => {}
        ended => return Ok(Err(RecordRefusal::TaskEnded(ended))),
    }
    if let Some(pred) = &c.predecessor {
        let revoked = conn
            .prepare_cached("SELECT revoked_at FROM credentials WHERE id = ?1")
            .and_then(|mut s| {
                s.query_row([pred], |r| r.get::<_, Option<i64>>(0))
                    .optional()
            })
            .map_err(sql_err)?;
        match revoked {
            None => return Err(StoreError::Corrupt(format!("predecessor `{pred}` missing"))),
            Some(Some(_)) => return Ok(Err(RecordRefusal::PredecessorRevoked)),
            Some(None) => {}
        }
    }
    if active >= i64::from(max_active) {
        return Ok(Err(RecordRefusal::TooManyActive(max_active)));
    }
    let inserted = conn
        .prepare_cached(super::CREDENTIAL_INSERT)
        .and_then(|mut s| {
            s.execute(params![
                c.id,
                c.kind.as_str(),
                c.spiffe_id,
                c.task_owner,
                c.task_id,
                c.audience,
                c.not_before,
                c.not_after,
                c.caller_cert_sha256,
                c.issued_at,
                c.predecessor,
                c.renewal_count as i64,
            ])
        });
    match inserted {
        Err(rusqlite::Error::SqliteFailure(e, msg))
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
        {
            // The partial unique index on `predecessor` is what makes a
            // renewal single-use; any other uniqueness is the id.
            if msg.as_deref().is_some_and(|m| m.contains("predecessor")) {
                let pred = c.predecessor.clone().unwrap_or_default();
                return Ok(Err(RecordRefusal::AlreadyRenewed(pred)));
            }
            return Err(StoreError::Duplicate(c.id.clone()));
        }
        other => {
            other.map_err(sql_err)?;
        }
    }
    append_in(conn, head, audit).map_err(sql_err)?;
    Ok(Ok(()))
}
