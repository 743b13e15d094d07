//! Issuer-wide values in SQLite: the stored CRL, the trust bundle's
//! sequence, and the bench's seeding of a large store. Writes run on the
//! writer thread.

use rand::RngCore;
use rusqlite::params;
use sqlx::Row;
use sqlx::SqlitePool;

use super::writer::Write;
use super::{credentials, tasks};
use crate::audit::{self, AuditDraft};
use crate::store::{StoreError, StoredCrl, TaskRecord};

/// The stored CRL.
pub(super) async fn stored_crl(pool: &SqlitePool) -> Result<StoredCrl, StoreError> {
    let r = sqlx::query(
        "SELECT number, content_hash, der, this_update, next_update FROM crl WHERE id = 1",
    )
    .fetch_one(pool)
    .await?;
    Ok(StoredCrl {
        number: r.try_get::<i64, _>("number")? as u64,
        content_hash: r.try_get("content_hash")?,
        der: r.try_get("der")?,
        this_update: r.try_get("this_update")?,
        next_update: r.try_get("next_update")?,
    })
}

/// Replaces the stored CRL with `crl` if its number is still `expected`
/// and lower than `crl`'s; whether it did.
pub(super) fn store_crl(
    w: &mut Write<'_>,
    expected: u64,
    crl: &StoredCrl,
) -> Result<bool, StoreError> {
    let n = w
        .conn
        .prepare_cached(
            "UPDATE crl SET number = ?1, content_hash = ?2, der = ?3, this_update = ?4, \
             next_update = ?5 WHERE id = 1 AND number = ?6 AND number < ?1",
        )?
        .execute(params![
            crl.number as i64,
            crl.content_hash,
            crl.der,
            crl.this_update,
            crl.next_update,
            expected as i64,
        ])?;
    Ok(n == 1)
}

/// The bundle sequence for content with this hash: the same while the
/// content is, one more when it changes.
pub(super) fn bundle_sequence(w: &mut Write<'_>, content_hash: &str) -> Result<u64, StoreError> {
    let seq: i64 = w
        .conn
        .prepare_cached(
            "INSERT INTO bundle_sequence (id, content_hash, sequence) VALUES (1, ?1, 1) \
             ON CONFLICT (id) DO UPDATE SET \
               sequence = CASE WHEN bundle_sequence.content_hash = excluded.content_hash \
                               THEN bundle_sequence.sequence ELSE bundle_sequence.sequence + 1 END, \
               content_hash = excluded.content_hash \
             RETURNING sequence",
        )?
        .query_row([content_hash], |r| r.get(0))?;
    Ok(seq as u64)
}

/// `n` active JWT credentials over 1000 workloads (one task each), with
/// their audit events chained like real ones: the "large store" of
/// `taskmint bench`. Not for production data.
pub(super) fn seed(w: &mut Write<'_>, n: u64, now: i64) -> Result<(), StoreError> {
    const WORKLOADS: u64 = 1000;
    for i in 0..WORKLOADS.min(n.max(1)) {
        let mut t = TaskRecord::new(
            &format!("spiffe://example.org/workload/seed-{i}"),
            "seed",
            now,
            now + 8 * 3600,
        );
        t.owner = "team-seed".into();
        tasks::begin(w, &t, u32::MAX, Vec::new())?;
    }
    let mut rng = rand::rng();
    let conn = w.conn;
    let mut insert = conn.prepare_cached(credentials::INSERT)?;
    let mut drafts = Vec::with_capacity(1000);
    for i in 0..n {
        let mut jti = [0u8; 16];
        rng.fill_bytes(&mut jti);
        let id = hex::encode(jti);
        let holder = format!("spiffe://example.org/workload/seed-{}", i % WORKLOADS);
        insert.execute(params![
            id,
            "jwt",
            holder,
            holder,
            "seed",
            "db",
            now - 10,
            now + 3600,
            "00".repeat(32),
            now,
            None::<String>,
            0i64,
        ])?;
        drafts.push(
            AuditDraft::new(audit::kind::MINT_JWT, &holder, now)
                .task(&holder, "seed", false)
                .decided(audit::decision::ALLOW, &["seed".to_owned()])
                .credential(&id)
                .because("seeded by taskmint bench"),
        );
        if drafts.len() == 1000 {
            w.append(drafts.drain(..))?;
        }
    }
    w.append(drafts)?;
    Ok(())
}
