//! Issuer-wide values in PostgreSQL: the CRL number and the trust bundle's
//! sequence, each one row updated in place (its row lock orders concurrent
//! updates from every process).

use sqlx::PgConnection;

use super::Pg;
use super::revocations::bump;
use crate::store::StoreError;

/// The next CRL number.
pub(super) async fn next_crl_number(conn: &mut PgConnection) -> Result<u64, StoreError> {
    bump(conn, "crl_number").await
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
