//! The revocation log in PostgreSQL: the `revocations` table and the
//! counters that number it. A revocation takes its sequence number with
//! `UPDATE counters ... RETURNING`, whose row lock is held until the
//! transaction ends: revocations from every process are numbered one at a
//! time, gap-free, in commit order, and a rolled-back revocation takes its
//! number back with it.

use sqlx::{PgConnection, PgPool};

use super::{Pg, append, credentials, tasks};
use crate::store::revoking;
use crate::store::{RevocationEvent, RevokeRequest, RevokeScope, SetSigner, StoreError, TaskState};

const COLUMNS: &str = "seq, kind, credential_ids, task_holder, task_id, spiffe_id, \
     trust_domain, reason, revoked_at, expires_at, set_jwt";

pub(super) use crate::store::rows::revocation_event as from_row;

/// Raises a counter by one and returns the new value; the counter's row
/// stays locked until the transaction ends.
pub(super) async fn bump(conn: &mut PgConnection, name: &str) -> Result<u64, StoreError> {
    let v: i64 =
        sqlx::query_scalar("UPDATE counters SET value = value + 1 WHERE name = $1 RETURNING value")
            .bind(name)
            .fetch_one(conn)
            .await
            .pg()?;
    Ok(v as u64)
}

/// Revokes every credential in scope, one event per task, each signed by
/// `sign`; optionally ends the task and its descendants. All in one
/// transaction. Lock order, the same in every write: task rows, then
/// credential rows, then the sequence counter (audit events are inserted
/// pending, without a lock: sealers alone take the audit head).
pub(super) async fn revoke(
    conn: &mut PgConnection,
    req: &RevokeRequest,
    sign: &SetSigner,
) -> Result<Vec<RevocationEvent>, StoreError> {
    // The task's row is locked before its state is read: a mint of the task
    // either committed before (and its credential is revoked here) or waits
    // and then sees the task ended.
    if let RevokeScope::Task { holder, task_id } = &req.scope {
        let state = tasks::lock_state(conn, holder, task_id).await?;
        // Ending a task that already ended (a concurrent completion, or a
        // delegated task the reaper lists but a cascade ended first) does
        // and records nothing.
        if req.end_task.is_some() && state != Some(TaskState::Active) {
            return Ok(Vec::new());
        }
    }
    let (filter, binds) = revoking::scope_filter(&req.scope, '$');
    let binds: Vec<&str> = binds.iter().map(String::as_str).collect();
    // Tasks delegated from the ones in scope get the same treatment.
    let roots: Option<(&str, Vec<&str>)> = match (&req.scope, req.cascade) {
        (RevokeScope::Task { holder, task_id }, true) => {
            Some(("SELECT $1::text, $2::text", vec![holder, task_id]))
        }
        (RevokeScope::Workload(id), true) => Some((
            "SELECT holder, task_id FROM tasks WHERE holder = $1",
            vec![id],
        )),
        _ => None,
    };
    let mut cascaded = Vec::new();
    if let Some((roots_sql, binds)) = &roots {
        cascaded = tasks::descendants(conn, roots_sql, binds).await?;
        // A delegation begun while this transaction read the tree (a begin
        // holds its parent's row FOR SHARE) commits before the parent's row
        // can be locked here: read the tree again after locking what is
        // known, until nothing new appears. Later begins wait for these
        // locks and then see their parent ended.
        while req.end_task.is_some() {
            tasks::lock_all(conn, &cascaded).await?;
            let again = tasks::descendants(conn, roots_sql, binds).await?;
            if again == cascaded {
                break;
            }
            cascaded = again;
        }
    }
    // Ending a task closes out every credential it ever had, expired or not,
    // so each one's record says how it ended; a plain revocation touches only
    // what is still valid.
    let valid_at = req.end_task.is_none().then_some(req.now);
    let mut creds = credentials::unrevoked_in(conn, &filter, &binds, valid_at).await?;
    for (h, t) in &cascaded {
        creds.extend(
            credentials::unrevoked_in(conn, "task_holder = $1 AND task_id = $2", &[h, t], valid_at)
                .await?,
        );
    }
    let by_task = revoking::by_task(creds);
    let mut audit_events = Vec::new();
    if !req.audit.kind.is_empty() {
        let mut a = req.audit.clone();
        if !a.task_id.is_empty() {
            let key = (a.task_holder.clone(), a.task_id.clone());
            a.break_glass |= tasks::break_glass_of(conn, &key).await?;
        }
        audit_events.push(a);
    }
    let mut events = Vec::with_capacity(by_task.len());
    for ((holder, task_id), creds) in by_task {
        let seq = bump(conn, "revocation_seq").await?;
        let mut event = revoking::event(req, seq, (holder, task_id), &creds);
        event.set_jwt = sign(&event).map_err(StoreError::Corrupt)?;
        insert(conn, &event).await?;
        for c in &creds {
            credentials::mark_revoked(conn, &c.id, req.now, &req.reason, seq).await?;
        }
        let key = (event.task_holder.clone(), event.task_id.clone());
        let break_glass = tasks::break_glass_of(conn, &key).await?;
        let a = revoking::revoked_audit(req, &event, break_glass, cascaded.contains(&key));
        audit_events.push(a);
        events.push(event);
    }
    if let Some(state) = req.end_task {
        let mut ended: Vec<(String, String)> = Vec::new();
        if let RevokeScope::Task { holder, task_id } = &req.scope {
            ended.push((holder.clone(), task_id.clone()));
        }
        ended.extend(cascaded.iter().cloned());
        for key @ (holder, task_id) in &ended {
            let changed = tasks::end(conn, holder, task_id, state, req.now).await?;
            if changed && cascaded.contains(key) {
                let break_glass = tasks::break_glass_of(conn, key).await?;
                audit_events.push(revoking::ended_audit(req, key, state, break_glass));
            }
        }
    }
    if !events.is_empty() {
        // Delivered to every replica's listener when this commits.
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(super::fleet::CHANNEL)
            .execute(&mut *conn)
            .await
            .pg()?;
    }
    append(conn, audit_events).await?;
    Ok(events)
}

async fn insert(conn: &mut PgConnection, e: &RevocationEvent) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO revocations ({COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    ))
    .bind(e.seq as i64)
    .bind(&e.kind)
    .bind(serde_json::to_string(&e.credential_ids).expect("ids serialise"))
    .bind(&e.task_holder)
    .bind(&e.task_id)
    .bind(&e.spiffe_id)
    .bind(&e.trust_domain)
    .bind(&e.reason)
    .bind(e.revoked_at)
    .bind(e.expires_at)
    .bind(&e.set_jwt)
    .execute(conn)
    .await
    .pg()?;
    Ok(())
}

/// Deletes a prefix of the log: events that expired before `before`, up to
/// the first one still retained (a cursor is valid iff it is at or after
/// `pruned_through`, so nothing after a retained event may go). The
/// `pruned_through` row is locked first, so prunes run one at a time.
pub(super) async fn prune(conn: &mut PgConnection, before: i64) -> Result<u64, StoreError> {
    let pruned: i64 =
        sqlx::query_scalar("SELECT value FROM counters WHERE name = 'pruned_through' FOR UPDATE")
            .fetch_one(&mut *conn)
            .await
            .pg()?;
    // The revocation counter is locked before the log is read: a
    // revocation committing between the two reads (each statement sees its
    // own snapshot under READ COMMITTED) could otherwise fall inside the
    // pruned prefix unread. Revocations take the same row lock, so none
    // commits while this prune decides.
    let current: i64 =
        sqlx::query_scalar("SELECT value FROM counters WHERE name = 'revocation_seq' FOR UPDATE")
            .fetch_one(&mut *conn)
            .await
            .pg()?;
    let first_kept: Option<i64> =
        sqlx::query_scalar("SELECT MIN(seq) FROM revocations WHERE expires_at >= $1")
            .bind(before)
            .fetch_one(&mut *conn)
            .await
            .pg()?;
    let through = first_kept.map(|s| s - 1).unwrap_or(current);
    if through <= pruned {
        return Ok(0);
    }
    let n = sqlx::query("DELETE FROM revocations WHERE seq <= $1")
        .bind(through)
        .execute(&mut *conn)
        .await
        .pg()?;
    sqlx::query("UPDATE counters SET value = $1 WHERE name = 'pruned_through'")
        .bind(through)
        .execute(conn)
        .await
        .pg()?;
    Ok(n.rows_affected())
}

/// Events with `seq > after`, in order, at most `limit`.
pub(super) async fn after(
    pool: &PgPool,
    after: u64,
    limit: u32,
) -> Result<Vec<RevocationEvent>, StoreError> {
    super::seq_page(pool, (COLUMNS, "revocations"), after, limit, from_row).await
}

/// Events in `(after, through]` whose revoked credentials have not all
/// expired at `now`, in order, at most `limit`.
pub(super) async fn unexpired(
    pool: &PgPool,
    now: i64,
    (after, through): (u64, u64),
    limit: u32,
) -> Result<Vec<RevocationEvent>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM revocations WHERE seq > $1 AND seq <= $2 AND expires_at > $3 \
         ORDER BY seq LIMIT $4"
    );
    let rows = sqlx::query(&sql)
        .bind(after.min(i64::MAX as u64) as i64)
        .bind(through.min(i64::MAX as u64) as i64)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .pg()?;
    rows.iter().map(from_row).collect()
}

/// A counter's committed value.
pub(super) async fn read_counter(pool: &PgPool, name: &str) -> Result<u64, StoreError> {
    let v: i64 = sqlx::query_scalar("SELECT value FROM counters WHERE name = $1")
        .bind(name)
        .fetch_one(pool)
        .await
        .pg()?;
    Ok(v as u64)
}
