//! The audit trail in SQLite: the append-only `audit` table, chained by
//! hash, and its head record (seq and hash of the newest event, written in
//! the same transaction); the windows of repeated events
//! (`audit_repeats`); and the checkpoint the trail is pruned behind
//! (`audit_checkpoint`). Writes run on the writer thread only.

use rusqlite::{Connection, OptionalExtension, params};
use sqlx::SqlitePool;

use super::Cols;
use super::writer::Write;
use crate::audit::{self, AuditDraft, AuditEvent};
use crate::store::rows::{self, repeat_window};
use crate::store::{AuditCheckpoint, StoreError, repeats};

const COLUMNS: &str = "seq, time, prev_hash, hash, kind, actor, task_holder, task_id, \
     credential_id, decision, policies, reason, break_glass, ref_seq, subject, trace";

const INSERT: &str = "INSERT INTO audit (seq, time, prev_hash, hash, kind, actor, \
     task_holder, task_id, credential_id, decision, policies, reason, break_glass, ref_seq, \
     subject, trace) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)";

/// The chain's head as the writer sees it inside a transaction.
#[derive(Debug, Clone)]
pub(super) struct Head {
    seq: u64,
    hash: String,
    dirty: bool,
}

pub(super) fn load_head(conn: &Connection) -> Result<Head, StoreError> {
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

pub(super) fn store_head(conn: &Connection, head: &Head) -> Result<(), StoreError> {
    if head.dirty {
        conn.prepare_cached(
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2) \
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        )?
        .execute(params![head.seq as i64, head.hash])?;
    }
    Ok(())
}

/// Chains `drafts` after `head` and inserts them; the batch stores the head.
pub(super) fn append(
    conn: &Connection,
    head: &mut Head,
    drafts: impl IntoIterator<Item = AuditDraft>,
) -> Result<Vec<AuditEvent>, StoreError> {
    let mut insert = conn.prepare_cached(INSERT)?;
    let mut out = Vec::new();
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
            b.task_holder,
            b.task_id,
            b.credential_id,
            b.decision,
            b.policies.join(","),
            b.reason,
            b.break_glass,
            b.ref_seq.map(|s| s as i64),
            b.subject,
            b.trace,
        ])?;
        head.seq = e.seq;
        head.hash.clone_from(&e.hash);
        head.dirty = true;
        out.push(e);
    }
    Ok(out)
}

use crate::store::rows::audit_event as from_row;

/// Events with `seq > after`, in order, at most `limit`.
pub(super) async fn after(
    pool: &SqlitePool,
    after: u64,
    limit: u32,
) -> Result<Vec<AuditEvent>, StoreError> {
    super::seq_page(pool, (COLUMNS, "audit"), after, limit, from_row).await
}

/// The head record.
pub(super) async fn head(pool: &SqlitePool) -> Result<Option<(u64, String)>, StoreError> {
    let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_optional(pool)
        .await?;
    row.map(|r| Ok((r.int("seq")? as u64, r.text("hash")?)))
        .transpose()
}

/// Events about one task at or after `since`, after `after`, in order, at
/// most `limit`.
pub(super) async fn of_task(
    pool: &SqlitePool,
    (holder, task_id): (&str, &str),
    since: i64,
    after: u64,
    limit: u32,
) -> Result<Vec<AuditEvent>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM audit WHERE task_holder = ? AND task_id = ? AND seq > ? \
           AND time >= ? ORDER BY seq LIMIT ?"
    );
    let rows = sqlx::query(&sql)
        .bind(holder)
        .bind(task_id)
        .bind(after.min(i64::MAX as u64) as i64)
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
    rows.iter().map(from_row).collect()
}

/// For each subscriber, its first acknowledgement event covering `seq`.
pub(super) async fn acks_covering(
    pool: &SqlitePool,
    seq: u64,
) -> Result<Vec<AuditEvent>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM audit WHERE seq IN ( \
           SELECT MIN(seq) FROM audit WHERE kind = 'ack' AND ref_seq >= ? GROUP BY subject) \
         ORDER BY seq"
    );
    let rows = sqlx::query(&sql)
        .bind(seq.min(i64::MAX as u64) as i64)
        .fetch_all(pool)
        .await?;
    rows.iter().map(from_row).collect()
}

/// Whether the trail holds an event of `d`'s kind, subject and `ref_seq`.
pub(super) fn has_event(conn: &Connection, d: &AuditDraft) -> Result<bool, StoreError> {
    let found = conn
        .prepare_cached(
            "SELECT 1 FROM audit WHERE kind = ?1 AND subject = ?2 AND ref_seq IS ?3 LIMIT 1",
        )?
        .query_row(
            params![d.kind, d.subject, d.ref_seq.map(|s| s as i64)],
            |_| Ok(()),
        )
        .optional()?;
    Ok(found.is_some())
}

const WINDOW_COLUMNS: &str = "window_start, repeats, first_repeat, last_repeat, last_reason, \
     kind, actor, task_holder, task_id, credential_id, decision, policies, break_glass, subject";

/// Appends a repeated event (see [`Store::append_audit_repeated`]);
/// whether it was chained.
///
/// [`Store::append_audit_repeated`]: crate::store::Store::append_audit_repeated
pub(super) fn append_repeated(
    w: &mut Write<'_>,
    d: AuditDraft,
    window: i64,
) -> Result<bool, StoreError> {
    let key = repeats::key(&d);
    let open = w
        .conn
        .prepare_cached(&format!(
            "SELECT {WINDOW_COLUMNS} FROM audit_repeats WHERE key = ?1"
        ))?
        .query_row([&key], |r| Ok(repeat_window(r)))
        .optional()?
        .transpose()?;
    match open {
        Some(o) if o.covers(d.time, window) => {
            w.conn
                .prepare_cached(
                    "UPDATE audit_repeats SET repeats = repeats + 1, \
                     first_repeat = COALESCE(first_repeat, ?2), last_repeat = ?2, \
                     last_reason = ?3 WHERE key = ?1",
                )?
                .execute(params![key, d.time, d.reason])?;
            Ok(false)
        }
        Some(o) => {
            w.append(o.summary())?;
            w.conn
                .prepare_cached(
                    "UPDATE audit_repeats SET window_start = ?2, repeats = 0, \
                     first_repeat = NULL, last_repeat = NULL, last_reason = ?3 WHERE key = ?1",
                )?
                .execute(params![key, d.time, d.reason])?;
            w.append([d])?;
            Ok(true)
        }
        None => {
            w.conn
                .prepare_cached(
                    "INSERT INTO audit_repeats (key, window_start, repeats, last_reason, kind, \
                     actor, task_holder, task_id, credential_id, decision, policies, \
                     break_glass, subject) \
                     VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )?
                .execute(params![
                    key,
                    d.time,
                    d.reason,
                    d.kind,
                    d.actor,
                    d.task_holder,
                    d.task_id,
                    d.credential_id,
                    d.decision,
                    d.policies.join(","),
                    d.break_glass,
                    d.subject,
                ])?;
            w.append([d])?;
            Ok(true)
        }
    }
}

/// Closes at most `limit` windows opened at or before `before`, chaining
/// each one's summary; how many it closed.
pub(super) fn close_windows(w: &mut Write<'_>, before: i64, limit: u32) -> Result<u64, StoreError> {
    let closing: Vec<(String, repeats::Window)> = {
        let mut stmt = w.conn.prepare_cached(&format!(
            "SELECT key, {WINDOW_COLUMNS} FROM audit_repeats WHERE window_start <= ?1 \
             ORDER BY window_start, key LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![before, i64::from(limit)], |r| {
            Ok((r.get::<_, String>("key")?, repeat_window(r)))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (key, window) = row?;
            out.push((key, window?));
        }
        out
    };
    for (key, window) in &closing {
        w.append(window.summary())?;
        w.conn
            .prepare_cached("DELETE FROM audit_repeats WHERE key = ?1")?
            .execute([key])?;
    }
    Ok(closing.len() as u64)
}

const CHECKPOINT: &str = "SELECT seq, hash, archiving_to FROM audit_checkpoint WHERE id = 1";

/// The checkpoint.
pub(super) async fn checkpoint(pool: &SqlitePool) -> Result<AuditCheckpoint, StoreError> {
    let row = sqlx::query(CHECKPOINT).fetch_one(pool).await?;
    rows::checkpoint(&row)
}

fn checkpoint_in(conn: &Connection) -> Result<AuditCheckpoint, StoreError> {
    conn.prepare_cached(CHECKPOINT)?
        .query_row([], |r| Ok(rows::checkpoint(r)))?
}

/// Claims the prune of `(at, to]`; whether the claim stands.
pub(super) fn claim_prune(conn: &Connection, at: u64, to: u64) -> Result<bool, StoreError> {
    let cp = checkpoint_in(conn)?;
    if cp.seq != at || to <= at || cp.archiving_to.is_some_and(|t| t != to) {
        return Ok(false);
    }
    conn.prepare_cached("UPDATE audit_checkpoint SET archiving_to = ?1 WHERE id = 1")?
        .execute([to as i64])?;
    Ok(true)
}

/// Moves the checkpoint to `to` (whose event must have `hash`) and deletes
/// the events through it, if the claim of `(at, to]` stands.
pub(super) fn commit_prune(
    conn: &Connection,
    at: u64,
    to: u64,
    hash: &str,
) -> Result<bool, StoreError> {
    let cp = checkpoint_in(conn)?;
    if cp.seq != at || cp.archiving_to != Some(to) {
        return Ok(false);
    }
    let stored: Option<String> = conn
        .prepare_cached("SELECT hash FROM audit WHERE seq = ?1")?
        .query_row([to as i64], |r| r.get(0))
        .optional()?;
    if stored.as_deref() != Some(hash) {
        return Err(StoreError::Corrupt(format!(
            "audit event {to} is not the one archived (its hash changed): nothing pruned"
        )));
    }
    // The checkpoint first: the trigger lets only events behind it go.
    conn.prepare_cached(
        "UPDATE audit_checkpoint SET seq = ?1, hash = ?2, archiving_to = NULL WHERE id = 1",
    )?
    .execute(params![to as i64, hash])?;
    conn.prepare_cached("DELETE FROM audit WHERE seq <= ?1")?
        .execute([to as i64])?;
    Ok(true)
}
