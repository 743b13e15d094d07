//! Subscriber acknowledgements in PostgreSQL: the highest sequence each
//! subscriber enforced. The subscriber's row is locked before it is read, so
//! of concurrent acknowledgements each sees the one before it, the stored
//! value never moves backwards (`GREATEST`), a name stays with the SPIFFE ID
//! that first used it, and only a rise is audited.

use sqlx::{PgConnection, PgPool};

use super::{Pg, append};
use crate::audit::AuditDraft;
use crate::store::{AckRecord, StoreError};

use crate::store::rows::ack as from_row;

async fn locked(
    conn: &mut PgConnection,
    subscriber: &str,
) -> Result<Option<(i64, String)>, StoreError> {
    sqlx::query_as(
        "SELECT acked_seq, spiffe_id FROM subscriber_acks WHERE subscriber = $1 FOR UPDATE",
    )
    .bind(subscriber)
    .fetch_optional(conn)
    .await
    .pg()
}

/// Raises a subscriber's acknowledged sequence; writes `audit` (with
/// `ref_seq` set) when it rose.
pub(super) async fn ack(
    conn: &mut PgConnection,
    a: &AckRecord,
    rebind: bool,
    max_names: u32,
    mut audit: AuditDraft,
) -> Result<AckRecord, StoreError> {
    let seq = a.acked_seq.min(i64::MAX as u64) as i64;
    let mut stored = locked(conn, &a.subscriber).await?;
    let mut inserted = false;
    if stored.is_none() && max_names != u32::MAX {
        // One workload's new names are counted one transaction at a time.
        super::tasks::holder_lock(conn, "subscribers", &a.spiffe_id).await?;
        let names: i64 =
            sqlx::query_scalar("SELECT count(*) FROM subscriber_acks WHERE spiffe_id = $1")
                .bind(&a.spiffe_id)
                .fetch_one(&mut *conn)
                .await
                .pg()?;
        if names >= i64::from(max_names) {
            return Err(StoreError::TooManySubscriberNames { max: max_names });
        }
    }
    if stored.is_none() {
        // The first acknowledgement: of two racing ones, one inserts and the
        // other waits for it, then finds (and locks) its row.
        inserted = sqlx::query(
            "INSERT INTO subscriber_acks (subscriber, spiffe_id, acked_seq, acked_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (subscriber) DO NOTHING",
        )
        .bind(&a.subscriber)
        .bind(&a.spiffe_id)
        .bind(seq)
        .bind(a.acked_at)
        .execute(&mut *conn)
        .await
        .pg()?
        .rows_affected()
            == 1;
        if !inserted {
            stored = locked(conn, &a.subscriber).await?;
        }
    }
    // Checked on the locked row: of two workloads racing for a new name,
    // the second finds the first's row and is refused.
    if let Some((_, bound_to)) = &stored
        && *bound_to != a.spiffe_id
        && !rebind
    {
        return Err(StoreError::SubscriberBound {
            subscriber: a.subscriber.clone(),
            bound_to: bound_to.clone(),
        });
    }
    let before = stored.map(|(seq, _)| seq);
    if !inserted {
        sqlx::query(
            "UPDATE subscriber_acks SET spiffe_id = $2, acked_at = $4, \
               acked_seq = GREATEST(acked_seq, $3) \
             WHERE subscriber = $1",
        )
        .bind(&a.subscriber)
        .bind(&a.spiffe_id)
        .bind(seq)
        .bind(a.acked_at)
        .execute(&mut *conn)
        .await
        .pg()?;
    }
    let row = sqlx::query(
        "SELECT subscriber, spiffe_id, acked_seq, acked_at FROM subscriber_acks \
         WHERE subscriber = $1",
    )
    .bind(&a.subscriber)
    .fetch_optional(&mut *conn)
    .await
    .pg()?
    .ok_or_else(|| StoreError::Corrupt(format!("ack of `{}` vanished", a.subscriber)))?;
    let after = from_row(&row)?;
    if before.is_none_or(|b| (b as u64) < after.acked_seq) {
        audit.ref_seq = Some(after.acked_seq);
        append(conn, [audit]).await?;
    }
    Ok(after)
}

/// Every acknowledgement, by subscriber name.
pub(super) async fn all(pool: &PgPool) -> Result<Vec<AckRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT subscriber, spiffe_id, acked_seq, acked_at FROM subscriber_acks \
         ORDER BY subscriber",
    )
    .fetch_all(pool)
    .await
    .pg()?;
    rows.iter().map(from_row).collect()
}
