//! Tasks in PostgreSQL: the `tasks` table, keyed by (holder, task id). A
//! task row is the lock every write about its task takes first (`FOR
//! UPDATE`), so checks against it hold until the acting transaction commits.

use sqlx::PgConnection;
use sqlx::PgPool;

use super::{Pg, append};
use crate::audit::AuditDraft;
use crate::store::{
    BreakGlassKey, GrantFilter, PrunedRecords, Review, ReviewOutcome, StoreError, TaskRecord,
    TaskState,
};

pub(super) const COLUMNS: &str = "holder, task_id, created_at, purpose, ticket, labels, \
     implicit, deadline, state, ended_at, owner, break_glass, justification, reviewed_by, \
     reviewed_at, review_note, parent_holder, parent_task_id, depth, audiences";

pub(super) use crate::store::rows::task as from_row;

/// Creates a task (with its audit events) unless it exists; whether it did.
/// `ON CONFLICT DO NOTHING` waits for a concurrent insert of the same key to
/// commit or roll back, so of racing begins exactly one creates the row.
pub(super) async fn begin(
    conn: &mut PgConnection,
    t: &TaskRecord,
    max_active: u32,
    audit: &[AuditDraft],
) -> Result<bool, StoreError> {
    if max_active != u32::MAX {
        // Replicas beginning tasks for one holder at once take turns here
        // (a lock per holder, released at commit), so each counts the
        // others' committed tasks and the cap holds across the fleet.
        // A delegated task counts for the delegator, who chose to create it.
        let causer = t.counts_against();
        holder_lock(conn, "tasks", causer).await?;
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM tasks WHERE holder = $1 AND task_id = $2)",
        )
        .bind(&t.holder)
        .bind(&t.task_id)
        .fetch_one(&mut *conn)
        .await
        .pg()?;
        if !exists {
            let active: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM tasks WHERE state = 'active' AND deadline > $2 \
                 AND ((holder = $1 AND parent_holder IS NULL) OR parent_holder = $1)",
            )
            .bind(causer)
            .bind(t.created_at)
            .fetch_one(&mut *conn)
            .await
            .pg()?;
            if active >= i64::from(max_active) {
                return Err(StoreError::TooManyTasks { max: max_active });
            }
        }
    }
    // A delegation is begun only while its parent is active. The parent's
    // row is held FOR SHARE until commit, so a completion (which locks it
    // FOR UPDATE) either comes first and is seen here, or waits and then
    // finds this child in the tree it ends.
    if let Some((holder, task_id)) = &t.parent {
        let state: Option<String> = sqlx::query_scalar(
            "SELECT state FROM tasks WHERE holder = $1 AND task_id = $2 FOR SHARE",
        )
        .bind(holder)
        .bind(task_id)
        .fetch_optional(&mut *conn)
        .await
        .pg()?;
        match state.as_deref().map(TaskState::parse).transpose()? {
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
    let inserted = sqlx::query(
        "INSERT INTO tasks (holder, task_id, created_at, purpose, ticket, labels, implicit, \
         deadline, state, ended_at, owner, break_glass, justification, reviewed_by, \
         reviewed_at, review_note, parent_holder, parent_task_id, depth, audiences) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
         $18, $19, $20) ON CONFLICT (holder, task_id) DO NOTHING",
    )
    .bind(&t.holder)
    .bind(&t.task_id)
    .bind(t.created_at)
    .bind(&t.purpose)
    .bind(&t.ticket)
    .bind(labels)
    .bind(t.implicit)
    .bind(t.deadline)
    .bind(t.state.as_str())
    .bind(t.ended_at)
    .bind(&t.owner)
    .bind(t.break_glass)
    .bind(&t.justification)
    .bind(t.review.as_ref().map(|r| &r.by))
    .bind(t.review.as_ref().map(|r| r.at))
    .bind(t.review.as_ref().map(|r| &r.note))
    .bind(t.parent.as_ref().map(|p| &p.0))
    .bind(t.parent.as_ref().map(|p| &p.1))
    .bind(i64::from(t.depth))
    .bind(audiences)
    .execute(&mut *conn)
    .await
    .pg()?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    append(conn, audit.iter().cloned()).await?;
    Ok(true)
}

/// One task, read in the transaction; locked until it ends when `lock`.
pub(super) async fn get_in(
    conn: &mut PgConnection,
    holder: &str,
    task_id: &str,
    lock: bool,
) -> Result<Option<TaskRecord>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM tasks WHERE holder = $1 AND task_id = $2{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let row = sqlx::query(&sql)
        .bind(holder)
        .bind(task_id)
        .fetch_optional(conn)
        .await
        .pg()?;
    row.as_ref().map(from_row).transpose()
}

/// Locks a task's row for the rest of the transaction; its state (`None` if
/// it has no row).
pub(super) async fn lock_state(
    conn: &mut PgConnection,
    holder: &str,
    task_id: &str,
) -> Result<Option<TaskState>, StoreError> {
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM tasks WHERE holder = $1 AND task_id = $2 FOR UPDATE")
            .bind(holder)
            .bind(task_id)
            .fetch_optional(conn)
            .await
            .pg()?;
    state.map(|s| TaskState::parse(&s)).transpose()
}

/// Locks the rows of `keys` in key order (so two transactions locking
/// overlapping sets cannot deadlock on them).
pub(super) async fn lock_all(
    conn: &mut PgConnection,
    keys: &[(String, String)],
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let (holders, ids): (Vec<&str>, Vec<&str>) =
        keys.iter().map(|(h, t)| (h.as_str(), t.as_str())).unzip();
    sqlx::query(
        "SELECT 1 FROM tasks t JOIN UNNEST($1::text[], $2::text[]) AS k(holder, task_id) \
           ON t.holder = k.holder AND t.task_id = k.task_id \
         ORDER BY t.holder, t.task_id FOR UPDATE OF t",
    )
    .bind(holders)
    .bind(ids)
    .fetch_all(conn)
    .await
    .pg()?;
    Ok(())
}

/// Marks a break-glass task reviewed, with its audit event; the task row is
/// locked first so two reviews cannot both succeed.
pub(super) async fn mark_reviewed(
    conn: &mut PgConnection,
    holder: &str,
    task_id: &str,
    review: &Review,
    audit: AuditDraft,
) -> Result<ReviewOutcome, StoreError> {
    let Some(t) = get_in(conn, holder, task_id, true).await? else {
        return Ok(ReviewOutcome::NotFound);
    };
    if !t.break_glass {
        return Ok(ReviewOutcome::NotBreakGlass);
    }
    if t.review.is_some() {
        return Ok(ReviewOutcome::AlreadyReviewed(t));
    }
    sqlx::query(
        "UPDATE tasks SET reviewed_by = $1, reviewed_at = $2, review_note = $3 \
         WHERE holder = $4 AND task_id = $5",
    )
    .bind(&review.by)
    .bind(review.at)
    .bind(&review.note)
    .bind(holder)
    .bind(task_id)
    .execute(&mut *conn)
    .await
    .pg()?;
    append(conn, [audit]).await?;
    let t = get_in(conn, holder, task_id, false)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("task `{task_id}` vanished")))?;
    Ok(ReviewOutcome::Reviewed(t))
}

/// Whether a task was begun through break-glass (false if it has no row).
pub(super) async fn break_glass_of(
    conn: &mut PgConnection,
    (holder, task_id): &(String, String),
) -> Result<bool, StoreError> {
    let flag: Option<bool> =
        sqlx::query_scalar("SELECT break_glass FROM tasks WHERE holder = $1 AND task_id = $2")
            .bind(holder)
            .bind(task_id)
            .fetch_optional(conn)
            .await
            .pg()?;
    Ok(flag.unwrap_or(false))
}

/// Tasks delegated (transitively) from the tasks `roots_sql` selects (a
/// query yielding `holder, task_id` with its parameters in `binds`).
pub(super) async fn descendants(
    conn: &mut PgConnection,
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
    let mut q = sqlx::query_as::<_, (String, String)>(&sql);
    for b in binds {
        q = q.bind(*b);
    }
    q.fetch_all(conn).await.pg()
}

/// Ends a task that is still active; whether it did.
pub(super) async fn end(
    conn: &mut PgConnection,
    holder: &str,
    task_id: &str,
    state: TaskState,
    at: i64,
) -> Result<bool, StoreError> {
    let changed = sqlx::query(
        "UPDATE tasks SET state = $1, ended_at = $2 \
         WHERE holder = $3 AND task_id = $4 AND state = 'active'",
    )
    .bind(state.as_str())
    .bind(at)
    .bind(holder)
    .bind(task_id)
    .execute(conn)
    .await
    .pg()?;
    Ok(changed.rows_affected() > 0)
}

/// One task by holder and id.
pub(super) async fn get(
    pool: &PgPool,
    holder: &str,
    task_id: &str,
) -> Result<Option<TaskRecord>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM tasks WHERE holder = $1 AND task_id = $2");
    let row = sqlx::query(&sql)
        .bind(holder)
        .bind(task_id)
        .fetch_optional(pool)
        .await
        .pg()?;
    row.as_ref().map(from_row).transpose()
}

/// Active tasks whose deadline is at or before `now`.
pub(super) async fn due(pool: &PgPool, now: i64) -> Result<Vec<(String, String)>, StoreError> {
    sqlx::query_as(
        "SELECT holder, task_id FROM tasks WHERE state = 'active' AND deadline <= $1 \
         ORDER BY deadline",
    )
    .bind(now)
    .fetch_all(pool)
    .await
    .pg()
}

/// Active tasks matching `filter`, a page at a time.
pub(super) async fn active(
    pool: &PgPool,
    filter: &GrantFilter,
    now: i64,
    after: Option<(String, String)>,
    limit: u32,
) -> Result<Vec<TaskRecord>, StoreError> {
    let (after_holder, after_task) = after.unwrap_or_default();
    let sql = format!(
        "SELECT {COLUMNS} FROM tasks \
         WHERE state = 'active' AND deadline > $1 \
           AND ($2::text IS NULL OR holder = $2) \
           AND ($3::text IS NULL OR owner = $3) \
           AND ($4::text IS NULL OR task_id = $4) \
           AND (NOT $5 OR break_glass) \
           AND (holder > $6 OR (holder = $6 AND task_id > $7)) \
         ORDER BY holder, task_id LIMIT $8"
    );
    let rows = sqlx::query(&sql)
        .bind(now)
        .bind(&filter.holder)
        .bind(&filter.owner)
        .bind(&filter.task_id)
        .bind(filter.break_glass_only)
        .bind(&after_holder)
        .bind(&after_task)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .pg()?;
    rows.iter().map(from_row).collect()
}

/// Break-glass tasks, newest first, a page at a time.
pub(super) async fn break_glass(
    pool: &PgPool,
    include_reviewed: bool,
    after: Option<BreakGlassKey>,
    limit: u32,
) -> Result<Vec<TaskRecord>, StoreError> {
    // The first page starts after a key that sorts before every task.
    let (at, holder, task_id) = after.unwrap_or((i64::MAX, String::new(), String::new()));
    let sql = format!(
        "SELECT {COLUMNS} FROM tasks \
         WHERE break_glass AND ($1 OR reviewed_at IS NULL) \
           AND (created_at < $2 OR (created_at = $2 AND (holder, task_id) > ($3, $4))) \
         ORDER BY created_at DESC, holder, task_id LIMIT $5"
    );
    let rows = sqlx::query(&sql)
        .bind(include_reviewed)
        .bind(at)
        .bind(&holder)
        .bind(&task_id)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .pg()?;
    rows.iter().map(from_row).collect()
}

/// A transaction-scoped advisory lock on one SPIFFE ID for one purpose:
/// transactions counting what that ID holds before adding to it run one
/// after the other.
pub(super) async fn holder_lock(
    conn: &mut PgConnection,
    purpose: &str,
    spiffe_id: &str,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("taskmint:{purpose}:{spiffe_id}"))
        .execute(conn)
        .await
        .pg()?;
    Ok(())
}

/// Deletes at most `limit` credentials that expired before `before`, then
/// at most `limit` tasks that ended before it and hold no credential (a
/// break-glass task awaiting review stays). Rows another transaction holds
/// are skipped, not waited for: the next round takes them.
pub(super) async fn prune(
    conn: &mut PgConnection,
    before: i64,
    limit: u32,
) -> Result<PrunedRecords, StoreError> {
    let credentials = sqlx::query(
        "DELETE FROM credentials WHERE id IN ( \
           SELECT id FROM credentials WHERE not_after < $1 ORDER BY not_after, id LIMIT $2 \
           FOR UPDATE SKIP LOCKED)",
    )
    .bind(before)
    .bind(i64::from(limit))
    .execute(&mut *conn)
    .await
    .pg()?
    .rows_affected();
    let tasks = sqlx::query(
        "DELETE FROM tasks WHERE (holder, task_id) IN ( \
           SELECT t.holder, t.task_id FROM tasks t \
           WHERE t.state <> 'active' AND t.ended_at < $1 \
             AND NOT (t.break_glass AND t.reviewed_at IS NULL) \
             AND NOT EXISTS (SELECT 1 FROM credentials c \
                             WHERE c.task_holder = t.holder AND c.task_id = t.task_id) \
           ORDER BY t.ended_at, t.holder, t.task_id LIMIT $2 FOR UPDATE OF t SKIP LOCKED)",
    )
    .bind(before)
    .bind(i64::from(limit))
    .execute(&mut *conn)
    .await
    .pg()?
    .rows_affected();
    Ok(PrunedRecords { credentials, tasks })
}
