//! The one write path: a thread that owns the only connection that writes
//! (rusqlite, on the same libsqlite3 as the readers) and runs every write of
//! the store — credentials, tasks, audit appends, revocations, acks, reviews,
//! CRL numbers, the bundle sequence, pruning — as a job.
//!
//! Every queued job (up to [`MAX_BATCH`]) goes into one transaction, each in
//! its own savepoint so one refused job does not undo the others; the batch
//! commits once (one fsync) and only then is each job answered. While a batch
//! commits the next one queues, so the busier the issuer, the larger the
//! batches.
//!
//! A failure of the database itself (disk full, I/O error, a lock that did
//! not clear) rolls the whole batch back at once, before anything else runs,
//! and answers every job of it with that failure: SQLite may already have
//! rolled the transaction back on its own after such an error, so no job of
//! the batch can be trusted to be stored. Nothing is answered as done that
//! was not committed, and the next batch starts from a clean connection, so
//! writes resume by themselves once the condition clears.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::audit::Head;
use crate::audit::{AuditDraft, AuditEvent};
use crate::store::{Condition, StoreError};

/// Most jobs one transaction takes.
pub(super) const MAX_BATCH: usize = 256;

/// What a job sees while it runs: the writer's connection, inside the
/// batch's transaction, and the audit chain's head as of its savepoint.
pub(super) struct Write<'a> {
    /// The writer's connection.
    pub conn: &'a Connection,
    head: &'a mut Head,
}

impl Write<'_> {
    /// Chains `drafts` after the head and inserts them, in this transaction.
    pub fn append(
        &mut self,
        drafts: impl IntoIterator<Item = AuditDraft>,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        super::audit::append(self.conn, self.head, drafts)
    }
}

/// A write queued for the writer thread, holding its own result until the
/// batch's fate is known.
trait Job: Send {
    /// Runs the write; on error the job keeps the error for its answer.
    fn run(&mut self, w: &mut Write<'_>) -> Result<(), StoreError>;
    /// Answers with the job's own result (its batch committed).
    fn answer(self: Box<Self>);
    /// Answers with `e` (its batch did not commit).
    fn fail(self: Box<Self>, e: StoreError);
}

struct Typed<T, F> {
    work: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Typed<T, F>
where
    T: Send,
    F: FnOnce(&mut Write<'_>) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, w: &mut Write<'_>) -> Result<(), StoreError> {
        let Some(work) = self.work.take() else {
            return Err(StoreError::Corrupt("a write job ran twice".into()));
        };
        let r = work(w);
        let out = r.as_ref().map(|_| ()).map_err(Clone::clone);
        self.result = Some(r);
        out
    }

    fn answer(self: Box<Self>) {
        // A receiver that went away (a cancelled call) is fine to ignore:
        // the write is committed either way.
        let r = self.result.unwrap_or(Err(StoreError::Closed));
        let _ = self.reply.send(r);
    }

    fn fail(self: Box<Self>, e: StoreError) {
        let _ = self.reply.send(Err(e));
    }
}

enum Msg {
    Job(Box<dyn Job>),
    /// Set the connection's page cap (`None`: lift it), between batches;
    /// answered with the cap in force.
    MaxPages(Option<u32>, oneshot::Sender<Result<u32, StoreError>>),
    /// Finish the jobs queued before this, close the connection and stop;
    /// answered once the connection is closed.
    Close(oneshot::Sender<()>),
}

/// The handle the store submits writes through.
#[derive(Debug, Clone)]
pub(super) struct Writer {
    tx: mpsc::Sender<Msg>,
}

impl Writer {
    /// Opens the writer's connection to the (already migrated) database at
    /// `path` and starts its thread; the thread ends when every handle is
    /// gone or [`Writer::close`] is called.
    pub fn start(path: &Path) -> Result<Self, String> {
        let conn = connect(path).map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let path = path.to_owned();
        std::thread::Builder::new()
            .name("taskmint-writer".into())
            .spawn(move || run(conn, &path, rx))
            .map_err(|e| e.to_string())?;
        Ok(Self { tx })
    }

    /// Caps the database at `pages` pages (`None`: no cap); see
    /// [`super::SqliteStore::set_max_pages`]. Applied between batches.
    pub async fn set_max_pages(&self, pages: Option<u32>) -> Result<u32, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::MaxPages(pages, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `work` on the writer thread inside a batch's transaction and
    /// returns its result once the batch has committed — or the batch's
    /// failure, in which case nothing of `work` was stored.
    pub async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Write<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = Typed {
            work: Some(work),
            result: None,
            reply,
        };
        self.tx
            .send(Msg::Job(Box::new(job)))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Finishes the queued writes and closes the connection; later writes
    /// fail with [`StoreError::Closed`].
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.tx.send(Msg::Close(reply)).await.is_ok() {
            let _ = done.await;
        }
    }
}

/// The writer's connection: WAL, and a commit on disk before any job is
/// answered.
fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}

fn run(mut conn: Connection, path: &Path, mut rx: mpsc::Receiver<Msg>) {
    // Set once the loop must end: with the reply of a `Close`, or with
    // `None` when every sender is gone.
    let mut closed = None;
    // The page cap in force, set again on a reopened connection.
    let mut cap: Option<u32> = None;
    while closed.is_none() {
        let mut jobs = Vec::new();
        // A control message ends the batch; it runs once the batch is done.
        let mut control = None;
        while jobs.len() < MAX_BATCH {
            let next = if jobs.is_empty() {
                rx.blocking_recv()
            } else {
                rx.try_recv().ok()
            };
            match next {
                Some(Msg::Job(j)) => jobs.push(j),
                Some(other) => {
                    control = Some(other);
                    break;
                }
                None if jobs.is_empty() => {
                    closed = Some(None);
                    break;
                }
                None => break,
            }
        }
        if !jobs.is_empty() {
            if let Err(e) = ensure_clean(&mut conn, path, cap) {
                log_failure(&e, jobs.len());
                jobs.into_iter().for_each(|j| j.fail(e.clone()));
            } else {
                run_batch(&conn, jobs);
            }
        }
        match control {
            Some(Msg::Close(reply)) => closed = Some(Some(reply)),
            Some(Msg::MaxPages(pages, reply)) => {
                let r = apply_cap(&conn, pages);
                if r.is_ok() {
                    cap = pages;
                }
                let _ = reply.send(r);
            }
            Some(Msg::Job(_)) | None => {}
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

/// Makes sure no transaction is left open from a batch whose rollback
/// failed: rolls it back, or, if even that fails, opens the connection
/// afresh. A writer that cannot get a clean connection fails the batch with
/// the condition and tries again with the next one.
fn ensure_clean(conn: &mut Connection, path: &Path, cap: Option<u32>) -> Result<(), StoreError> {
    if conn.is_autocommit() {
        return Ok(());
    }
    if conn.execute_batch("ROLLBACK").is_ok() && conn.is_autocommit() {
        return Ok(());
    }
    tracing::warn!("the writer's connection was left inside a transaction; reopening it");
    let fresh = connect(path)?;
    if cap.is_some() {
        apply_cap(&fresh, cap)?;
    }
    // The old connection is closed by the drop, which rolls back what it
    // held.
    *conn = fresh;
    Ok(())
}

/// Sets the connection's page cap (`None`: none); the cap now in force.
fn apply_cap(conn: &Connection, pages: Option<u32>) -> Result<u32, StoreError> {
    let n = pages.unwrap_or(u32::MAX - 1);
    Ok(
        conn.query_row(&format!("PRAGMA max_page_count = {n}"), [], |r| {
            r.get::<_, i64>(0)
        })? as u32,
    )
}

/// Runs one batch; every job is answered before this returns.
fn run_batch(conn: &Connection, jobs: Vec<Box<dyn Job>>) {
    let started = std::time::Instant::now();
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let e = StoreError::from(e);
        log_failure(&e, jobs.len());
        jobs.into_iter().for_each(|j| j.fail(e.clone()));
        return;
    }
    let mut head = match super::audit::load_head(conn) {
        Ok(h) => h,
        Err(e) => return abort(conn, jobs, e),
    };
    let mut ran: Vec<Box<dyn Job>> = Vec::with_capacity(jobs.len());
    let mut pending = jobs.into_iter();
    while let Some(mut job) = pending.next() {
        let before = head.clone();
        if let Err(e) = conn.execute_batch("SAVEPOINT job") {
            ran.push(job);
            ran.extend(pending);
            return abort(conn, ran, e.into());
        }
        let outcome = job.run(&mut Write {
            conn,
            head: &mut head,
        });
        ran.push(job);
        // After a failure of the database itself SQLite may have rolled the
        // whole transaction back already; nothing of the batch is certain.
        let failed = match outcome {
            Ok(()) => conn
                .execute_batch("RELEASE job")
                .err()
                .map(StoreError::from),
            Err(e) if e.unavailable().is_some() => Some(e),
            Err(_) => {
                head = before;
                conn.execute_batch("ROLLBACK TO job; RELEASE job")
                    .err()
                    .map(StoreError::from)
            }
        };
        let failed = failed.or_else(|| {
            conn.is_autocommit().then(|| StoreError::Unavailable {
                condition: Condition::Io,
                detail: "the transaction ended before its commit".into(),
            })
        });
        if let Some(e) = failed {
            ran.extend(pending);
            return abort(conn, ran, e);
        }
    }
    let committed = super::audit::store_head(conn, &head)
        .and_then(|()| conn.execute_batch("COMMIT").map_err(StoreError::from));
    match committed {
        Ok(()) => {
            crate::ops::metrics::get().store_commit("sqlite", started.elapsed());
            ran.into_iter().for_each(|j| j.answer())
        }
        Err(e) => abort(conn, ran, e),
    }
}

/// Rolls the transaction back (if SQLite has not already) and answers every
/// job with `e`.
fn abort(conn: &Connection, jobs: Vec<Box<dyn Job>>, e: StoreError) {
    if !conn.is_autocommit()
        && let Err(rb) = conn.execute_batch("ROLLBACK")
    {
        tracing::error!(error = %rb, "rolling back a failed batch failed");
    }
    log_failure(&e, jobs.len());
    jobs.into_iter().for_each(|j| j.fail(e.clone()));
}

fn log_failure(e: &StoreError, jobs: usize) {
    match e {
        StoreError::Unavailable { condition, detail } => tracing::error!(
            %condition, %detail, jobs,
            "a write batch was rolled back; nothing of it was stored"
        ),
        other => tracing::error!(error = %other, jobs, "a write batch was rolled back"),
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            rusqlite::Error::SqliteFailure(f, _) => match classify(f.extended_code) {
                Some(condition) => Self::Unavailable {
                    condition,
                    detail: e.to_string(),
                },
                None => Self::Query(e.to_string()),
            },
            _ => Self::Query(e.to_string()),
        }
    }
}

/// The conditions of SQLite's result codes that a later retry may get past.
pub(super) fn classify(extended_code: i32) -> Option<Condition> {
    use rusqlite::ffi;
    match extended_code & 0xff {
        ffi::SQLITE_FULL => Some(Condition::DiskFull),
        ffi::SQLITE_IOERR | ffi::SQLITE_CANTOPEN | ffi::SQLITE_PROTOCOL => Some(Condition::Io),
        ffi::SQLITE_BUSY | ffi::SQLITE_LOCKED => Some(Condition::Busy),
        ffi::SQLITE_READONLY => Some(Condition::ReadOnly),
        ffi::SQLITE_NOMEM => Some(Condition::OutOfMemory),
        _ => None,
    }
}
