//! The audit trail in SQLite: the append-only `audit` table, chained by
//! hash, and its head record (seq and hash of the newest event, written in
//! the same transaction). Appends run on the writer thread only.

use rusqlite::{Connection, OptionalExtension, params};
use sqlx::SqlitePool;

use super::Cols;
use crate::audit::{self, AuditDraft, AuditEvent};
use crate::store::StoreError;

const COLUMNS: &str = "seq, time, prev_hash, hash, kind, actor, task_holder, task_id, \
     credential_id, decision, policies, reason, break_glass, ref_seq, subject";

const INSERT: &str = "INSERT INTO audit (seq, time, prev_hash, hash, kind, actor, \
     task_holder, task_id, credential_id, decision, policies, reason, break_glass, ref_seq, \
     subject) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";

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

/// Every event about one task, in order.
pub(super) async fn of_task(
    pool: &SqlitePool,
    holder: &str,
    task_id: &str,
) -> Result<Vec<AuditEvent>, StoreError> {
    let sql =
        format!("SELECT {COLUMNS} FROM audit WHERE task_holder = ? AND task_id = ? ORDER BY seq");
    let rows = sqlx::query(&sql)
        .bind(holder)
        .bind(task_id)
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
