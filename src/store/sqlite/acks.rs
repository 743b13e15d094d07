//! Subscriber acknowledgements in SQLite: the highest sequence each
//! subscriber enforced. An acknowledgement runs on the writer thread,
//! never lowers what is stored, and never moves a name to another SPIFFE ID
//! unless told to.

use rusqlite::{OptionalExtension, params};
use sqlx::SqlitePool;

use super::writer::Write;
use crate::audit::AuditDraft;
use crate::store::{AckRecord, StoreError};

use crate::store::rows::ack as from_row;

/// Raises a subscriber's acknowledged sequence; writes `audit` (with
/// `ref_seq` set) when it rose.
pub(super) fn ack(
    w: &mut Write<'_>,
    a: &AckRecord,
    rebind: bool,
    max_names: u32,
    mut audit: AuditDraft,
) -> Result<AckRecord, StoreError> {
    let stored: Option<(i64, String)> = w
        .conn
        .prepare_cached("SELECT acked_seq, spiffe_id FROM subscriber_acks WHERE subscriber = ?1")?
        .query_row([&a.subscriber], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if stored.is_none() && max_names != u32::MAX {
        let names: i64 = w
            .conn
            .prepare_cached("SELECT count(*) FROM subscriber_acks WHERE spiffe_id = ?1")?
            .query_row([&a.spiffe_id], |r| r.get(0))?;
        if names >= i64::from(max_names) {
            return Err(StoreError::TooManySubscriberNames { max: max_names });
        }
    }
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
    w.conn
        .prepare_cached(
            "INSERT INTO subscriber_acks (subscriber, spiffe_id, acked_seq, acked_at) \
             VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (subscriber) DO UPDATE SET \
               spiffe_id = excluded.spiffe_id, \
               acked_at = excluded.acked_at, \
               acked_seq = MAX(subscriber_acks.acked_seq, excluded.acked_seq)",
        )?
        .execute(params![
            a.subscriber,
            a.spiffe_id,
            a.acked_seq.min(i64::MAX as u64) as i64,
            a.acked_at
        ])?;
    let mut stmt = w.conn.prepare_cached(
        "SELECT subscriber, spiffe_id, acked_seq, acked_at FROM subscriber_acks \
         WHERE subscriber = ?1",
    )?;
    let mut rows = stmt.query([&a.subscriber])?;
    let row = rows
        .next()?
        .ok_or_else(|| StoreError::Corrupt(format!("ack of `{}` vanished", a.subscriber)))?;
    let after = from_row(row)?;
    if before.is_none_or(|b| (b as u64) < after.acked_seq) {
        audit.ref_seq = Some(after.acked_seq);
        w.append([audit])?;
    }
    Ok(after)
}

/// Every acknowledgement, by subscriber name.
pub(super) async fn all(pool: &SqlitePool) -> Result<Vec<AckRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT subscriber, spiffe_id, acked_seq, acked_at FROM subscriber_acks \
         ORDER BY subscriber",
    )
    .fetch_all(pool)
    .await?;
    rows.iter().map(from_row).collect()
}
