//! Tasks in SQLite: the `tasks` table, keyed by (holder, task id). Begins
//! and reviews run on the writer thread; the rest are reads.

use rusqlite::{Connection, OptionalExtension, params};
use sqlx::SqlitePool;

use super::Cols;
use super::writer::Write;
use crate::audit::AuditDraft;
use crate::store::{
    BreakGlassKey, GrantFilter, PrunedRecords, Review, ReviewOutcome, StoreError, TaskRecord,
    TaskState,
};

pub(super) const COLUMNS: &str = "holder, task_id, created_at, purpose, ticket, labels, \
     implicit, deadline, state, ended_at, owner, break_glass, justification, reviewed_by, \
     reviewed_at, review_note, parent_holder, parent_task_id, depth, audiences";

const INSERT: &str = "INSERT INTO tasks (holder, task_id, created_at, purpose, ticket, \
     labels, implicit, deadline, state, ended_at, owner, break_glass, justification, \
     reviewed_by, reviewed_at, review_note, parent_holder, parent_task_id, depth, audiences) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
     ?19, ?20)";

pub(super) use crate::store::rows::task as from_row;

/// Creates a task (with its audit events) unless it exists; whether it did.
/// Active tasks a workload caused: those it holds that were not delegated
/// to it, and those it delegated. So a delegator cannot fill another
/// workload's `limits.max_active_tasks`.
const ACTIVE_CAUSED: &str = "SELECT count(*) FROM tasks \
     WHERE state = 'active' AND deadline > ?2 \
       AND ((holder = ?1 AND parent_holder IS NULL) OR parent_holder = ?1)";

pub(super) fn begin(
    w: &mut Write<'_>,
    t: &TaskRecord,
    max_active: u32,
    audit: Vec<AuditDraft>,
) -> Result<bool, StoreError> {
    if get_in(w.conn, &t.holder, &t.task_id)?.is_some() {
        return Ok(false);
    }
    // Counted on the one writer: no other begin can slip in between. A
    // delegated task counts for the delegator, who chose to create it.
    if max_active != u32::MAX {
        let active: i64 = w
            .conn
            .prepare_cached(ACTIVE_CAUSED)?
            .query_row(params![t.counts_against(), t.created_at], |r| r.get(0))?;
        if active >= i64::from(max_active) {
            return Err(StoreError::TooManyTasks { max: max_active });
        }
    }
    // A delegation is begun only while its parent is active, checked here,
    // on the one writer, so a completion cannot slip in between.
    if let Some((holder, task_id)) = &t.parent {
        match state_in(w.conn, holder, task_id)? {
            Some(TaskState::Active) => {}
            Some(ended) => return Err(StoreError::ParentEnded(ended)),
            None => {
                return Err(StoreError::Corrupt(format!(
                    "parent task `{task_id}` missing"
                )));
            }
        }
    }
    let labels = serde_json::to_string(&t.labels).expect("labels serialise");
    let audiences = serde_json::to_string(&t.audiences).expect("audiences serialise");
    w.conn.prepare_cached(INSERT)?.execute(params![
        t.holder,
        t.task_id,
        t.created_at,
        t.purpose,
        t.ticket,
        labels,
        t.implicit,
        t.deadline,
        t.state.as_str(),
        t.ended_at,
        t.owner,
        t.break_glass,
        t.justification,
        t.review.as_ref().map(|r| &r.by),
        t.review.as_ref().map(|r| r.at),
        t.review.as_ref().map(|r| &r.note),
        t.parent.as_ref().map(|p| &p.0),
        t.parent.as_ref().map(|p| &p.1),
        i64::from(t.depth),
        audiences,
    ])?;
    w.append(audit)?;
    Ok(true)
}

/// One task, read inside the writer's transaction.
pub(super) fn get_in(
    conn: &Connection,
    holder: &str,
    task_id: &str,
) -> Result<Option<TaskRecord>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM tasks WHERE holder = ?1 AND task_id = ?2");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params![holder, task_id])?;
    rows.next()?.map(from_row).transpose()
}

/// Marks a break-glass task reviewed, with its audit event.
pub(super) fn mark_reviewed(
    w: &mut Write<'_>,
    holder: &str,
    task_id: &str,
    review: &Review,
    audit: AuditDraft,
) -> Result<ReviewOutcome, StoreError> {
    let Some(t) = get_in(w.conn, holder, task_id)? else {
        return Ok(ReviewOutcome::NotFound);
    };
    if !t.break_glass {
        return Ok(ReviewOutcome::NotBreakGlass);
    }
    if t.review.is_some() {
        return Ok(ReviewOutcome::AlreadyReviewed(t));
    }
    w.conn
        .prepare_cached(
            "UPDATE tasks SET reviewed_by = ?1, reviewed_at = ?2, review_note = ?3 \
             WHERE holder = ?4 AND task_id = ?5",
        )?
        .execute(params![review.by, review.at, review.note, holder, task_id])?;
    w.append([audit])?;
    let t = get_in(w.conn, holder, task_id)?
        .ok_or_else(|| StoreError::Corrupt(format!("task `{task_id}` vanished")))?;
    Ok(ReviewOutcome::Reviewed(t))
}

/// Whether a task was begun through break-glass (false if it has no row).
pub(super) fn break_glass_of(
    conn: &Connection,
    (holder, task_id): &(String, String),
) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT break_glass FROM tasks WHERE holder = ?1 AND task_id = ?2")?
        .query_row(params![holder, task_id], |r| r.get::<_, bool>(0))
        .optional()?
        .unwrap_or(false))
}

/// A task's state, read inside the writer's transaction.
pub(super) fn state_in(
    conn: &Connection,
    holder: &str,
    task_id: &str,
) -> Result<Option<TaskState>, StoreError> {
    conn.prepare_cached("SELECT state FROM tasks WHERE holder = ?1 AND task_id = ?2")?
        .query_row(params![holder, task_id], |r| r.get::<_, String>(0))
        .optional()?
        .map(|s| TaskState::parse(&s))
        .transpose()
}

/// Tasks delegated (transitively) from the tasks `roots_sql` selects (a
/// query yielding `holder, task_id` with its parameters in `binds`).
pub(super) fn descendants(
    conn: &Connection,
    roots_sql: &str,
    binds: &[&str],
) -> Result<Vec<(String, String)>, StoreError> {
    let sql = format!(
        "WITH RECURSIVE roots(holder, task_id) AS ({roots_sql}), \
         sub(holder, task_id) AS ( \
           SELECT t.holder, t.task_id FROM tasks t JOIN roots r \
             ON t.parent_holder = r.holder AND t.parent_task_id = r.task_id \
           UNION \
           SELECT t.holder, t.task_id FROM tasks t JOIN sub s \
             ON t.parent_holder = s.holder AND t.parent_task_id = s.task_id) \
         SELECT holder, task_id FROM sub ORDER BY holder, task_id"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(binds), |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Ends a task that is still active; whether it did.
pub(super) fn end(
    conn: &Connection,
    holder: &str,
    task_id: &str,
    state: TaskState,
    at: i64,
) -> Result<bool, StoreError> {
    let changed = conn
        .prepare_cached(
            "UPDATE tasks SET state = ?1, ended_at = ?2 \
             WHERE holder = ?3 AND task_id = ?4 AND state = 'active'",
        )?
        .execute(params![state.as_str(), at, holder, task_id])?;
    Ok(changed > 0)
}

/// One task by holder and id.
pub(super) async fn get(
    pool: &SqlitePool,
    holder: &str,
    task_id: &str,
) -> Result<Option<TaskRecord>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM tasks WHERE holder = ? AND task_id = ?");
    let row = sqlx::query(&sql)
        .bind(holder)
        .bind(task_id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Active tasks whose deadline is at or before `now`.
pub(super) async fn due(pool: &SqlitePool, now: i64) -> Result<Vec<(String, String)>, StoreError> {
    let rows = sqlx::query(
        "SELECT holder, task_id FROM tasks WHERE state = 'active' AND deadline <= ? \
         ORDER BY deadline",
    )
    .bind(now)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.text("holder")?, r.text("task_id")?)))
        .collect()
}

/// Active tasks matching `filter`, a page at a time.
pub(super) async fn active(
    pool: &SqlitePool,
    filter: &GrantFilter,
    now: i64,
    after: Option<(String, String)>,
    limit: u32,
) -> Result<Vec<TaskRecord>, StoreError> {
    let (after_holder, after_task) = after.unwrap_or_default();
    let sql = format!(
        "SELECT {COLUMNS} FROM tasks \
         WHERE state = 'active' AND deadline > ? \
           AND (? IS NULL OR holder = ?) \
           AND (? IS NULL OR owner = ?) \
           AND (? IS NULL OR task_id = ?) \
           AND (? = 0 OR break_glass) \
           AND (holder > ? OR (holder = ? AND task_id > ?)) \
         ORDER BY holder, task_id LIMIT ?"
    );
    let rows = sqlx::query(&sql)
        .bind(now)
        .bind(&filter.holder)
        .bind(&filter.holder)
        .bind(&filter.owner)
        .bind(&filter.owner)
        .bind(&filter.task_id)
        .bind(&filter.task_id)
        .bind(filter.break_glass_only)
        .bind(&after_holder)
        .bind(&after_holder)
        .bind(&after_task)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
    rows.iter().map(from_row).collect()
}

/// Break-glass tasks, newest first, a page at a time.
pub(super) async fn break_glass(
    pool: &SqlitePool,
    include_reviewed: bool,
    after: Option<BreakGlassKey>,
    limit: u32,
) -> Result<Vec<TaskRecord>, StoreError> {
    // The first page starts after a key that sorts before every task.
    let (at, holder, task_id) = after.unwrap_or((i64::MAX, String::new(), String::new()));
    let sql = format!(
        "SELECT {COLUMNS} FROM tasks \
         WHERE break_glass AND (? OR reviewed_at IS NULL) \
           AND (created_at < ? OR (created_at = ? AND (holder > ? OR (holder = ? AND task_id > ?)))) \
         ORDER BY created_at DESC, holder, task_id LIMIT ?"
    );
    let rows = sqlx::query(&sql)
        .bind(include_reviewed)
        .bind(at)
        .bind(at)
        .bind(&holder)
        .bind(&holder)
        .bind(&task_id)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
    rows.iter().map(from_row).collect()
}

/// Deletes at most `limit` credentials that expired before `before`, then
/// at most `limit` tasks that ended before it and hold no credential (a
/// break-glass task awaiting review stays).
pub(super) fn prune(
    conn: &Connection,
    before: i64,
    limit: u32,
) -> Result<PrunedRecords, StoreError> {
    let credentials = conn
        .prepare_cached(
            "DELETE FROM credentials WHERE id IN ( \
               SELECT id FROM credentials WHERE not_after < ?1 ORDER BY not_after, id LIMIT ?2)",
        )?
        .execute(params![before, i64::from(limit)])?;
    let tasks = conn
        .prepare_cached(
            "DELETE FROM tasks WHERE (holder, task_id) IN ( \
               SELECT t.holder, t.task_id FROM tasks t \
               WHERE t.state != 'active' AND t.ended_at < ?1 \
                 AND NOT (t.break_glass AND t.reviewed_at IS NULL) \
                 AND NOT EXISTS (SELECT 1 FROM credentials c \
                                 WHERE c.task_holder = t.holder AND c.task_id = t.task_id) \
               ORDER BY t.ended_at, t.holder, t.task_id LIMIT ?2)",
        )?
        .execute(params![before, i64::from(limit)])?;
    Ok(PrunedRecords {
        credentials: credentials as u64,
        tasks: tasks as u64,
    })
}
