//! Issuer-wide values in PostgreSQL: the stored CRL and the trust bundle's
//! sequence, each one row updated in place (its row lock orders concurrent
//! updates from every process).

use sqlx::postgres::PgPool;
use sqlx::{PgConnection, Row};

use super::Pg;
use crate::store::{StoreError, StoredCrl};

/// The stored CRL.
pub(super) async fn stored_crl(pool: &PgPool) -> Result<StoredCrl, StoreError> {
    let r = sqlx::query(
        "SELECT number, content_hash, der, this_update, next_update FROM crl WHERE id = 1",
    )
    .fetch_one(pool)
    .await
    .pg()?;
    let get = |r: &sqlx::postgres::PgRow| -> Result<StoredCrl, sqlx::Error> {
        Ok(StoredCrl {
            number: r.try_get::<i64, _>("number")? as u64,
            content_hash: r.try_get("content_hash")?,
            der: r.try_get("der")?,
            this_update: r.try_get("this_update")?,
            next_update: r.try_get("next_update")?,
        })
    };
    get(&r).pg()
}

/// Replaces the stored CRL with `crl` if its number is still `expected`
/// and lower than `crl`'s; whether it did. Of two replicas racing, the
/// second waits on the row lock and then finds the number changed.
pub(super) async fn store_crl(
    conn: &mut PgConnection,
    expected: u64,
    crl: &StoredCrl,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE crl SET number = $1, content_hash = $2, der = $3, this_update = $4, \
         next_update = $5 WHERE id = 1 AND number = $6 AND number < $1",
    )
    .bind(crl.number as i64)
    .bind(&crl.content_hash)
    .bind(&crl.der)
    .bind(crl.this_update)
    .bind(crl.next_update)
    .bind(expected as i64)
    .execute(conn)
    .await
    .pg()?;
    Ok(done.rows_affected() == 1)
}

/// The bundle sequence for content with this hash: the same while the
/// content is, one more when it changes.
pub(super) async fn bundle_sequence(
    conn: &mut PgConnection,
    content_hash: &str,
) -> Result<u64, StoreError> {
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO bundle_sequence (id, content_hash, sequence) VALUES (1, $1, 1) \
         ON CONFLICT (id) DO UPDATE SET \
           sequence = CASE WHEN bundle_sequence.content_hash = excluded.content_hash \
                           THEN bundle_sequence.sequence ELSE bundle_sequence.sequence + 1 END, \
           content_hash = excluded.content_hash \
         RETURNING sequence",
    )
    .bind(content_hash)
    .fetch_one(conn)
    .await
    .pg()?;
    Ok(seq as u64)
}
