//! Issuer-wide values in SQLite: the CRL number, the trust bundle's
//! sequence, and the bench's seeding of a large store. Writes run on the
//! writer thread.

use rand::RngCore;
use rusqlite::params;

use super::revocations::bump;
use super::writer::Write;
use super::{credentials, tasks};
use crate::audit::{self, AuditDraft};
use crate::store::{StoreError, TaskRecord};

/// The next CRL number.
pub(super) fn next_crl_number(w: &mut Write<'_>) -> Result<u64, StoreError> {
    bump(w.conn, "crl_number")
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
        tasks::begin(w, &t, Vec::new())?;
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
