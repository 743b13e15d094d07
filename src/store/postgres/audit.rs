//! The audit trail in PostgreSQL: the append-only `audit` table (plpgsql
//! triggers refuse updates and deletes), chained by hash, and its head row.
//! Every transaction that appends locks the head row first (`FOR UPDATE`),
//! so appends from every process form one linear chain.

use sqlx::{PgConnection, PgPool};

use super::Pg;
use crate::audit::{self, AuditDraft, AuditEvent};
use crate::store::StoreError;

const COLUMNS: &str = "seq, time, prev_hash, hash, kind, actor, task_holder, task_id, \
     credential_id, decision, policies, reason, break_glass, ref_seq, subject";

const INSERT: &str = "INSERT INTO audit (seq, time, prev_hash, hash, kind, actor, \
     task_holder, task_id, credential_id, decision, policies, reason, break_glass, ref_seq, \
     subject) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)";

/// Chains `drafts` after the head and inserts them, moving the head, in the
/// caller's transaction. The head row stays locked until that transaction
/// ends: a later append of another transaction chains after this one's
/// events, or, if this one rolls back, after what was there before.
pub(super) async fn append(
    conn: &mut PgConnection,
    drafts: impl IntoIterator<Item = AuditDraft>,
) -> Result<Vec<AuditEvent>, StoreError> {
    let mut drafts = drafts.into_iter().peekable();
    if drafts.peek().is_none() {
        return Ok(Vec::new());
    }
    let (seq, hash): (i64, String) =
        sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
            .fetch_optional(&mut *conn)
            .await
            .pg()?
            .ok_or_else(|| StoreError::Corrupt("the audit head row is missing".into()))?;
    let (mut seq, mut hash) = (seq as u64, hash);
    let mut out = Vec::new();
    for d in drafts {
        let e = audit::seal(seq, &hash, d);
        let b = &e.body;
        sqlx::query(INSERT)
            .bind(e.seq as i64)
            .bind(b.time)
            .bind(&e.prev_hash)
            .bind(&e.hash)
            .bind(&b.kind)
            .bind(&b.actor)
            .bind(&b.task_holder)
            .bind(&b.task_id)
            .bind(&b.credential_id)
            .bind(&b.decision)
            .bind(b.policies.join(","))
            .bind(&b.reason)
            .bind(b.break_glass)
            .bind(b.ref_seq.map(|s| s as i64))
            .bind(&b.subject)
            .execute(&mut *conn)
            .await
            .pg()?;
        seq = e.seq;
        hash.clone_from(&e.hash);
        out.push(e);
    }
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(seq as i64)
        .bind(&hash)
        .execute(conn)
        .await
        .pg()?;
    Ok(out)
}

use crate::store::rows::audit_event as from_row;

/// Events with `seq > after`, in order, at most `limit`.
pub(super) async fn after(
    pool: &PgPool,
    after: u64,
    limit: u32,
) -> Result<Vec<AuditEvent>, StoreError> {
    super::seq_page(pool, (COLUMNS, "audit"), after, limit, from_row).await
}

/// The head record; `None` before the first event (the row exists from the
/// start, at sequence 0, so appends can lock it).
pub(super) async fn head(pool: &PgPool) -> Result<Option<(u64, String)>, StoreError> {
    let row: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1 AND seq > 0")
            .fetch_optional(pool)
            .await
            .pg()?;
    Ok(row.map(|(s, h)| (s as u64, h)))
}

/// Every event about one task, in order.
pub(super) async fn of_task(
    pool: &PgPool,
    holder: &str,
    task_id: &str,
) -> Result<Vec<AuditEvent>, StoreError> {
    let sql =
        format!("SELECT {COLUMNS} FROM audit WHERE task_holder = $1 AND task_id = $2 ORDER BY seq");
    let rows = sqlx::query(&sql)
        .bind(holder)
        .bind(task_id)
        .fetch_all(pool)
        .await
        .pg()?;
    rows.iter().map(from_row).collect()
}

/// For each subscriber, its first acknowledgement event covering `seq`.
pub(super) async fn acks_covering(pool: &PgPool, seq: u64) -> Result<Vec<AuditEvent>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM audit WHERE seq IN ( \
           SELECT MIN(seq) FROM audit WHERE kind = 'ack' AND ref_seq >= $1 GROUP BY subject) \
         ORDER BY seq"
    );
    let rows = sqlx::query(&sql)
        .bind(seq.min(i64::MAX as u64) as i64)
        .fetch_all(pool)
        .await
        .pg()?;
    rows.iter().map(from_row).collect()
}
