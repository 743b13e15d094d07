//! Credentials in SQLite: every credential ever minted, committed before it
//! is returned. Recording runs on the writer thread; the rest are reads.

use rusqlite::{Connection, OptionalExtension, params};
use sqlx::SqlitePool;

use super::Cols;
use super::writer::Write;
use crate::audit::AuditDraft;
use crate::store::{CredentialRecord, CrlEntry, RecordRefusal, StoreError, TaskState};

pub(super) const COLUMNS: &str = "id, kind, spiffe_id, task_holder, task_id, audience, \
     not_before, not_after, caller_cert_sha256, issued_at, predecessor, renewal_count, \
     revoked_at, revoke_reason, revocation_seq";

pub(super) const INSERT: &str = "INSERT INTO credentials (id, kind, spiffe_id, task_holder, \
     task_id, audience, not_before, not_after, caller_cert_sha256, issued_at, predecessor, \
     renewal_count) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

pub(super) use crate::store::rows::credential as from_row;

/// Records a credential (with its audit events) if its task allows it. The
/// task's state and the count are read in the same transaction as the
/// insert, on the one writer, so a completion cannot slip in between.
pub(super) fn record(
    w: &mut Write<'_>,
    c: &CredentialRecord,
    max_active: u32,
    audit: Vec<AuditDraft>,
) -> Result<Result<(), RecordRefusal>, StoreError> {
    // The task's state and its active credentials (counted up to the limit
    // only, so a task with many credentials costs no more) in one query.
    let row = w
        .conn
        .prepare_cached(
            "SELECT state, (SELECT COUNT(*) FROM (SELECT 1 FROM credentials \
                WHERE task_holder = ?1 AND task_id = ?2 AND revoked_at IS NULL AND not_after > ?3 \
                LIMIT ?4)) AS active \
             FROM tasks WHERE holder = ?1 AND task_id = ?2",
        )?
        .query_row(
            params![c.task_holder, c.task_id, c.issued_at, i64::from(max_active)],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
        )
        .optional()?;
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
        let revoked = w
            .conn
            .prepare_cached("SELECT revoked_at FROM credentials WHERE id = ?1")?
            .query_row([pred], |r| r.get::<_, Option<i64>>(0))
            .optional()?;
        match revoked {
            None => return Err(StoreError::Corrupt(format!("predecessor `{pred}` missing"))),
            Some(Some(_)) => return Ok(Err(RecordRefusal::PredecessorRevoked)),
            Some(None) => {}
        }
    }
    if active >= i64::from(max_active) {
        return Ok(Err(RecordRefusal::TooManyActive(max_active)));
    }
    let inserted = w.conn.prepare_cached(INSERT)?.execute(params![
        c.id,
        c.kind.as_str(),
        c.spiffe_id,
        c.task_holder,
        c.task_id,
        c.audience,
        c.not_before,
        c.not_after,
        c.caller_cert_sha256,
        c.issued_at,
        c.predecessor,
        i64::from(c.renewal_count),
    ]);
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
            other?;
        }
    }
    w.append(audit)?;
    Ok(Ok(()))
}

/// Unrevoked credentials matching `filter` (an SQL condition over
/// `credentials` with its parameters in `binds`), read in the writer's
/// transaction; only those still valid at `valid_at`, when given.
pub(super) fn unrevoked_in(
    conn: &Connection,
    filter: &str,
    binds: &[&str],
    valid_at: Option<i64>,
) -> Result<Vec<CredentialRecord>, StoreError> {
    let n = binds.len();
    let still_valid = match valid_at {
        Some(_) => format!("AND not_after > ?{}", n + 1),
        None => String::new(),
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM credentials WHERE {filter} AND revoked_at IS NULL {still_valid}"
    );
    let mut values: Vec<rusqlite::types::Value> = binds
        .iter()
        .map(|b| rusqlite::types::Value::Text((*b).to_owned()))
        .collect();
    if let Some(t) = valid_at {
        values.push(rusqlite::types::Value::Integer(t));
    }
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(values))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(from_row(r)?);
    }
    Ok(out)
}

/// Marks a credential revoked by event `seq`.
pub(super) fn mark_revoked(
    conn: &Connection,
    id: &str,
    at: i64,
    reason: &str,
    seq: u64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE credentials SET revoked_at = ?1, revoke_reason = ?2, revocation_seq = ?3 \
         WHERE id = ?4",
    )?
    .execute(params![at, reason, seq as i64, id])?;
    Ok(())
}

/// One credential by id.
pub(super) async fn get(
    pool: &SqlitePool,
    id: &str,
) -> Result<Option<CredentialRecord>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM credentials WHERE id = ?");
    let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await?;
    row.as_ref().map(from_row).transpose()
}

/// Credentials of one task, oldest first.
pub(super) async fn of_task(
    pool: &SqlitePool,
    holder: &str,
    task_id: &str,
) -> Result<Vec<CredentialRecord>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM credentials WHERE task_holder = ? AND task_id = ? \
         ORDER BY issued_at, id"
    );
    let rows = sqlx::query(&sql)
        .bind(holder)
        .bind(task_id)
        .fetch_all(pool)
        .await?;
    rows.iter().map(from_row).collect()
}

/// How many credentials are stored.
pub(super) async fn count(pool: &SqlitePool) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM credentials")
        .fetch_one(pool)
        .await?;
    Ok(n as u64)
}

/// Revoked X.509 credentials that have not expired at `now`.
pub(super) async fn crl_entries(pool: &SqlitePool, now: i64) -> Result<Vec<CrlEntry>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, revoked_at, revoke_reason FROM credentials \
         WHERE kind = 'x509' AND revoked_at IS NOT NULL AND not_after > ? ORDER BY revoked_at, id",
    )
    .bind(now)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(CrlEntry {
                serial_hex: r.text("id")?,
                revoked_at: r.int("revoked_at")?,
                reason: r.opt_text("revoke_reason")?.unwrap_or_default(),
            })
        })
        .collect()
}
