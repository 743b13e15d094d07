//! Credentials in PostgreSQL: every credential ever minted, committed before
//! it is returned. Recording locks its task's row first, so the task's state,
//! its count of active credentials and the insert are one decision however
//! many replicas record at once.

use sqlx::postgres::PgArguments;
use sqlx::{Arguments, PgConnection, PgPool};

use super::{Cols, Pg, append};
use crate::audit::AuditDraft;
use crate::store::{CredentialRecord, CrlEntry, RecordRefusal, StoreError, TaskState};

pub(super) const COLUMNS: &str = "id, kind, spiffe_id, task_holder, task_id, audience, \
     not_before, not_after, caller_cert_sha256, issued_at, predecessor, renewal_count, \
     revoked_at, revoke_reason, revocation_seq";

const INSERT: &str = "INSERT INTO credentials (id, kind, spiffe_id, task_holder, \
     task_id, audience, not_before, not_after, caller_cert_sha256, issued_at, predecessor, \
     renewal_count) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
     ON CONFLICT DO NOTHING";

pub(super) use crate::store::rows::credential as from_row;

/// Records a credential (with its audit events) if its task allows it. The
/// task row is locked (`FOR UPDATE`) before anything is read, so a
/// completion or another mint of the same task waits for this transaction.
pub(super) async fn record(
    conn: &mut PgConnection,
    c: &CredentialRecord,
    max_active: u32,
    audit: &[AuditDraft],
) -> Result<Result<(), RecordRefusal>, StoreError> {
    let Some(state) = super::tasks::lock_state(conn, &c.task_holder, &c.task_id).await? else {
        return Err(StoreError::Corrupt(format!(
            "task `{}` has no row",
            c.task_id
        )));
    };
    match state {
        TaskState::Active => {}
        ended => return Ok(Err(RecordRefusal::TaskEnded(ended))),
    }
    // Counted up to the limit only, so a task with many credentials costs
    // no more.
    let active: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT 1 FROM credentials \
           WHERE task_holder = $1 AND task_id = $2 AND revoked_at IS NULL AND not_after > $3 \
           LIMIT $4) AS a",
    )
    .bind(&c.task_holder)
    .bind(&c.task_id)
    .bind(c.issued_at)
    .bind(i64::from(max_active))
    .fetch_one(&mut *conn)
    .await
    .pg()?;
    if let Some(pred) = &c.predecessor {
        // Locked too: a revocation of the predecessor either committed
        // before (and is seen here) or waits for this renewal.
        let revoked: Option<Option<i64>> =
            sqlx::query_scalar("SELECT revoked_at FROM credentials WHERE id = $1 FOR UPDATE")
                .bind(pred)
                .fetch_optional(&mut *conn)
                .await
                .pg()?;
        match revoked {
            None => return Err(StoreError::Corrupt(format!("predecessor `{pred}` missing"))),
            Some(Some(_)) => return Ok(Err(RecordRefusal::PredecessorRevoked)),
            Some(None) => {}
        }
    }
    if active >= i64::from(max_active) {
        return Ok(Err(RecordRefusal::TooManyActive(max_active)));
    }
    // A taken id or an already renewed predecessor inserts nothing rather
    // than failing, which would abort the transaction (a savepoint around
    // the insert would cost two more round trips on every mint).
    let inserted = sqlx::query(INSERT)
        .bind(&c.id)
        .bind(c.kind.as_str())
        .bind(&c.spiffe_id)
        .bind(&c.task_holder)
        .bind(&c.task_id)
        .bind(&c.audience)
        .bind(c.not_before)
        .bind(c.not_after)
        .bind(&c.caller_cert_sha256)
        .bind(c.issued_at)
        .bind(&c.predecessor)
        .bind(i64::from(c.renewal_count))
        .execute(&mut *conn)
        .await
        .pg()?;
    if inserted.rows_affected() == 0 {
        if let Some(pred) = &c.predecessor {
            let renewed: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM credentials WHERE predecessor = $1)",
            )
            .bind(pred)
            .fetch_one(&mut *conn)
            .await
            .pg()?;
            if renewed {
                return Ok(Err(RecordRefusal::AlreadyRenewed(pred.clone())));
            }
        }
        return Err(StoreError::Duplicate(c.id.clone()));
    }
    append(conn, audit.iter().cloned()).await?;
    Ok(Ok(()))
}

/// Unrevoked credentials matching `filter` (an SQL condition over
/// `credentials` with `$1..` parameters in `binds`), locked for the rest of
/// the transaction; only those still valid at `valid_at`, when given. A row
/// another transaction revoked while this one waited for its lock is
/// re-checked and left out, so no credential is revoked twice.
pub(super) async fn unrevoked_in(
    conn: &mut PgConnection,
    filter: &str,
    binds: &[&str],
    valid_at: Option<i64>,
) -> Result<Vec<CredentialRecord>, StoreError> {
    let n = binds.len();
    let still_valid = match valid_at {
        Some(_) => format!("AND not_after > ${}", n + 1),
        None => String::new(),
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM credentials WHERE {filter} AND revoked_at IS NULL {still_valid} \
         ORDER BY id FOR UPDATE"
    );
    let mut args = PgArguments::default();
    for b in binds {
        args.add(*b).map_err(|e| StoreError::Query(e.to_string()))?;
    }
    if let Some(t) = valid_at {
        args.add(t).map_err(|e| StoreError::Query(e.to_string()))?;
    }
    let rows = sqlx::query_with(&sql, args).fetch_all(conn).await.pg()?;
    rows.iter().map(from_row).collect()
}

/// Marks a credential revoked by event `seq`.
pub(super) async fn mark_revoked(
    conn: &mut PgConnection,
    id: &str,
    at: i64,
    reason: &str,
    seq: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE credentials SET revoked_at = $1, revoke_reason = $2, revocation_seq = $3 \
         WHERE id = $4",
    )
    .bind(at)
    .bind(reason)
    .bind(seq as i64)
    .bind(id)
    .execute(conn)
    .await
    .pg()?;
    Ok(())
}

/// One credential by id.
pub(super) async fn get(pool: &PgPool, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM credentials WHERE id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await.pg()?;
    row.as_ref().map(from_row).transpose()
}

/// Credentials of one task, oldest first.
pub(super) async fn of_task(
    pool: &PgPool,
    holder: &str,
    task_id: &str,
) -> Result<Vec<CredentialRecord>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM credentials WHERE task_holder = $1 AND task_id = $2 \
         ORDER BY issued_at, id"
    );
    let rows = sqlx::query(&sql)
        .bind(holder)
        .bind(task_id)
        .fetch_all(pool)
        .await
        .pg()?;
    rows.iter().map(from_row).collect()
}

/// How many credentials are stored.
pub(super) async fn count(pool: &PgPool) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM credentials")
        .fetch_one(pool)
        .await
        .pg()?;
    Ok(n as u64)
}

/// Revoked X.509 credentials that have not expired at `now`.
pub(super) async fn crl_entries(pool: &PgPool, now: i64) -> Result<Vec<CrlEntry>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, revoked_at, revoke_reason FROM credentials \
         WHERE kind = 'x509' AND revoked_at IS NOT NULL AND not_after > $1 \
         ORDER BY revoked_at, id",
    )
    .bind(now)
    .fetch_all(pool)
    .await
    .pg()?;
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
