//! The revocation log in SQLite: the `revocations` table and the counters
//! that number it. A revocation runs on the writer thread, which hands out
//! its sequence numbers inside the transaction that commits it: gap-free, in
//! commit order, never twice (a rolled-back revocation takes its number back
//! with it).

use rusqlite::{Connection, params};
use sqlx::SqlitePool;

use super::writer::Write;
use super::{credentials, tasks};
use crate::store::revoking;
use crate::store::{RevocationEvent, RevokeRequest, RevokeScope, SetSigner, StoreError};

const COLUMNS: &str = "seq, kind, credential_ids, task_holder, task_id, spiffe_id, \
     trust_domain, reason, revoked_at, expires_at, set_jwt";

use crate::store::rows::revocation_event as from_row;

/// A counter's value, in the writer's transaction.
pub(super) fn counter(conn: &Connection, name: &str) -> Result<u64, StoreError> {
    let v: i64 = conn
        .prepare_cached("SELECT value FROM counters WHERE name = ?1")?
        .query_row([name], |r| r.get(0))?;
    Ok(v as u64)
}

/// Raises a counter by one and returns the new value.
pub(super) fn bump(conn: &Connection, name: &str) -> Result<u64, StoreError> {
    let v: i64 = conn
        .prepare_cached("UPDATE counters SET value = value + 1 WHERE name = ?1 RETURNING value")?
        .query_row([name], |r| r.get(0))?;
    Ok(v as u64)
}

/// Revokes every credential in scope, one event per task, each signed by
/// `sign`; optionally ends the task and its descendants. All in the batch's
/// transaction.
pub(super) fn revoke(
    w: &mut Write<'_>,
    req: &RevokeRequest,
    sign: &SetSigner,
) -> Result<Vec<RevocationEvent>, StoreError> {
    // Ending a task that already ended (a concurrent completion, or a
    // delegated task the reaper lists but a cascade ended first) does and
    // records nothing.
    if let (Some(_), RevokeScope::Task { holder, task_id }) = (req.end_task, &req.scope)
        && tasks::state_in(w.conn, holder, task_id)? != Some(crate::store::TaskState::Active)
    {
        return Ok(Vec::new());
    }
    let (filter, binds) = revoking::scope_filter(&req.scope, '?');
    let binds: Vec<&str> = binds.iter().map(String::as_str).collect();
    // Tasks delegated from the ones in scope get the same treatment.
    let cascaded = match (&req.scope, req.cascade) {
        (RevokeScope::Task { holder, task_id }, true) => {
            tasks::descendants(w.conn, "SELECT ?1, ?2", &[holder, task_id])?
        }
        (RevokeScope::Workload(id), true) => tasks::descendants(
            w.conn,
            "SELECT holder, task_id FROM tasks WHERE holder = ?1",
            &[id],
        )?,
        _ => Vec::new(),
    };
    // Ending a task closes out every credential it ever had, expired or not,
    // so each one's record says how it ended; a plain revocation touches only
    // what is still valid.
    let valid_at = req.end_task.is_none().then_some(req.now);
    let mut creds = credentials::unrevoked_in(w.conn, &filter, &binds, valid_at)?;
    for (h, t) in &cascaded {
        creds.extend(credentials::unrevoked_in(
            w.conn,
            "task_holder = ?1 AND task_id = ?2",
            &[h, t],
            valid_at,
        )?);
    }
    let by_task = revoking::by_task(creds);
    let mut audit_events = Vec::new();
    if !req.audit.kind.is_empty() {
        let mut a = req.audit.clone();
        if !a.task_id.is_empty() {
            let key = (a.task_holder.clone(), a.task_id.clone());
            a.break_glass |= tasks::break_glass_of(w.conn, &key)?;
        }
        audit_events.push(a);
    }
    let mut events = Vec::with_capacity(by_task.len());
    for ((holder, task_id), creds) in by_task {
        let seq = bump(w.conn, "revocation_seq")?;
        let mut event = revoking::event(req, seq, (holder, task_id), &creds);
        event.set_jwt = sign(&event).map_err(StoreError::Corrupt)?;
        insert(w.conn, &event)?;
        for c in &creds {
            credentials::mark_revoked(w.conn, &c.id, req.now, &req.reason, seq)?;
        }
        let key = (event.task_holder.clone(), event.task_id.clone());
        let break_glass = tasks::break_glass_of(w.conn, &key)?;
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
            let changed = tasks::end(w.conn, holder, task_id, state, req.now)?;
            if changed && cascaded.contains(key) {
                let break_glass = tasks::break_glass_of(w.conn, key)?;
                audit_events.push(revoking::ended_audit(req, key, state, break_glass));
            }
        }
    }
    w.append(audit_events)?;
    Ok(events)
}

fn insert(conn: &Connection, e: &RevocationEvent) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "INSERT INTO revocations ({COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
    ))?
    .execute(params![
        e.seq as i64,
        e.kind,
        serde_json::to_string(&e.credential_ids).expect("ids serialise"),
        e.task_holder,
        e.task_id,
        e.spiffe_id,
        e.trust_domain,
        e.reason,
        e.revoked_at,
        e.expires_at,
        e.set_jwt,
    ])?;
    Ok(())
}

/// Deletes a prefix of the log: events that expired before `before`, up to
/// the first one still retained (a cursor is valid iff it is at or after
/// `pruned_through`, so nothing after a retained event may go).
pub(super) fn prune(w: &mut Write<'_>, before: i64) -> Result<u64, StoreError> {
    let first_kept: Option<i64> = w
        .conn
        .prepare_cached("SELECT MIN(seq) FROM revocations WHERE expires_at >= ?1")?
        .query_row([before], |r| r.get(0))?;
    let current = counter(w.conn, "revocation_seq")? as i64;
    let through = first_kept.map(|s| s - 1).unwrap_or(current);
    let pruned = counter(w.conn, "pruned_through")? as i64;
    if through <= pruned {
        return Ok(0);
    }
    let n = w
        .conn
        .prepare_cached("DELETE FROM revocations WHERE seq <= ?1")?
        .execute([through])?;
    w.conn
        .prepare_cached("UPDATE counters SET value = ?1 WHERE name = 'pruned_through'")?
        .execute([through])?;
    Ok(n as u64)
}

/// Events with `seq > after`, in order, at most `limit`.
pub(super) async fn after(
    pool: &SqlitePool,
    after: u64,
    limit: u32,
) -> Result<Vec<RevocationEvent>, StoreError> {
    super::seq_page(pool, (COLUMNS, "revocations"), after, limit, from_row).await
}

/// Events in `(after, through]` whose revoked credentials have not all
/// expired at `now`, in order, at most `limit`.
pub(super) async fn unexpired(
    pool: &SqlitePool,
    now: i64,
    (after, through): (u64, u64),
    limit: u32,
) -> Result<Vec<RevocationEvent>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM revocations WHERE seq > ? AND seq <= ? AND expires_at > ? \
         ORDER BY seq LIMIT ?"
    );
    let rows = sqlx::query(&sql)
        .bind(after.min(i64::MAX as u64) as i64)
        .bind(through.min(i64::MAX as u64) as i64)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
    rows.iter().map(from_row).collect()
}

/// A counter's committed value.
pub(super) async fn read_counter(pool: &SqlitePool, name: &str) -> Result<u64, StoreError> {
    let v: i64 = sqlx::query_scalar("SELECT value FROM counters WHERE name = ?")
        .bind(name)
        .fetch_one(pool)
        .await?;
    Ok(v as u64)
}
