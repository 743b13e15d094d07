//! The audit chain on PostgreSQL: events inserted pending by writers on
//! several replicas and sealed after commit into one chain, what the
//! triggers refuse and what verification detects when they are bypassed,
//! and the migration of a chain written the 0001 way.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::*;
use crate::audit::{AuditEvent, Verifier, kind};
use crate::cli::{ExpectedHead, PgVerified, verify_audit_pg_store};

const FAR: i64 = 4_000_000_000;

fn draft(reason: &str) -> AuditDraft {
    AuditDraft::new(kind::STATUS_CHECK, HOLDER, 100).because(reason)
}

fn mint_draft(credential: &str, reason: &str) -> AuditDraft {
    AuditDraft::new(kind::MINT_JWT, HOLDER, 100)
        .task(HOLDER, "t", false)
        .credential(credential)
        .because(reason)
}

/// What `audit verify` finds: the last verified seq and how many pending.
async fn verify(h: &Harness) -> anyhow::Result<(u64, u64)> {
    let v = verify_expecting(h, None).await?;
    Ok((v.through, v.pending))
}

async fn verify_expecting(h: &Harness, expect: Option<&str>) -> anyhow::Result<PgVerified> {
    let expect: Option<ExpectedHead> = expect.map(|x| x.parse().unwrap());
    verify_audit_pg_store(&h.url, &PgPoolConfig::default(), expect.as_ref()).await
}

/// Two replicas mint concurrently (each mint's events pending in its own
/// transaction) while both seal, as the leader's loop and readers do: one
/// linear chain that verifies, every event in it once, a mint's events
/// next to each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_append_concurrently_into_one_chain() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let (a, b) = (Arc::new(h.store().await), Arc::new(h.store().await));
    const N: usize = 200;
    const APPENDS: usize = 20;
    let stop = Arc::new(AtomicBool::new(false));
    let sealers: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|s| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut sealed = 0;
                while !stop.load(Ordering::Relaxed) {
                    sealed += s.seal_audit().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                sealed
            })
        })
        .collect();
    let mints: Vec<_> = (0..2 * N)
        .map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                // A task each: mints of one task would queue on its row.
                let (id, task) = (format!("c{i}"), format!("t{i}"));
                s.begin_task(&TaskRecord::new(HOLDER, &task, 100, FAR), &[])
                    .await
                    .unwrap();
                let audit = [mint_draft(&id, "decided"), mint_draft(&id, "issued")];
                s.record_credential(&cred(&id, &task), 10, &audit)
                    .await
                    .unwrap()
                    .unwrap();
            })
        })
        .collect();
    let appends: Vec<_> = (0..APPENDS)
        .map(|i| {
            let s = if i % 2 == 0 { b.clone() } else { a.clone() };
            tokio::spawn(async move { s.append_audit(&[draft(&format!("append {i}"))]).await })
        })
        .collect();
    for m in mints {
        m.await.unwrap();
    }
    for x in appends {
        x.await.unwrap().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for s in sealers {
        s.await.unwrap();
    }
    a.seal_audit().await.unwrap();

    let total = (4 * N + APPENDS) as u64;
    assert_eq!(verify(&h).await.unwrap(), (total, 0));
    let events = b.audit_after(0, 10_000).await.unwrap();
    let mut v = Verifier::default();
    for e in &events {
        v.check(e).unwrap();
    }
    assert_eq!(v.finish(a.audit_head().await.unwrap()).unwrap(), total);
    // Every event once; a mint's two events next to each other, in order.
    let mut by_credential: HashMap<&str, Vec<(u64, &str)>> = HashMap::new();
    for e in events.iter().filter(|e| e.body.kind == kind::MINT_JWT) {
        by_credential
            .entry(&e.body.credential_id)
            .or_default()
            .push((e.seq, &e.body.reason));
    }
    assert_eq!(by_credential.len(), 2 * N);
    for (id, seen) in &by_credential {
        assert_eq!(seen.len(), 2, "{id}: {seen:?}");
        assert_eq!(seen[0].1, "decided", "{id}: {seen:?}");
        assert_eq!(seen[1], (seen[0].0 + 1, "issued"), "{id}: {seen:?}");
    }
    let mut appended: Vec<&str> = events
        .iter()
        .filter(|e| e.body.kind == kind::STATUS_CHECK)
        .map(|e| e.body.reason.as_str())
        .collect();
    appended.sort_unstable();
    appended.dedup();
    assert_eq!(appended.len(), APPENDS);
}

/// A mint whose transaction is still open (its audit event inserted, not
/// committed) holds nothing another replica's mint, append or seal waits
/// for; once committed, the event is pending until the next seal, and a
/// read-only verification counts it without sealing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_mint_blocks_no_other_replica() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let (a, b) = (h.store().await, h.store().await);
    a.begin_task(&TaskRecord::new(HOLDER, "t", 100, FAR), &[])
        .await
        .unwrap();
    b.begin_task(&TaskRecord::new(HOLDER, "u", 100, FAR), &[])
        .await
        .unwrap();
    let mut held = a.pool.begin().await.unwrap();
    credentials::record(
        &mut held,
        &cred("held", "t"),
        10,
        &[mint_draft("held", "held")],
    )
    .await
    .unwrap()
    .unwrap();
    let other = async {
        b.record_credential(&cred("other", "u"), 10, &[mint_draft("other", "other")])
            .await
            .unwrap()
            .unwrap();
        b.append_audit(&[draft("appended")]).await.unwrap();
        b.seal_audit().await.unwrap();
        b.audit_head().await.unwrap()
    };
    let head = tokio::time::timeout(Duration::from_secs(3), other)
        .await
        .expect("another replica's writes waited for an open mint transaction");
    assert_eq!(head.map(|h| h.0), Some(2));

    held.commit().await.unwrap();
    assert_eq!(verify(&h).await.unwrap(), (2, 1));
    // Verifying wrote nothing: the event is still pending.
    assert_eq!(a.pending_audit_events().await.unwrap(), 1);
    let trail = a.audit_after(0, 10).await.unwrap();
    let ids: Vec<&str> = trail
        .iter()
        .map(|e| e.body.credential_id.as_str())
        .collect();
    assert_eq!(ids, ["other", "", "held"]);
    assert_eq!(verify(&h).await.unwrap(), (3, 0));
}

/// Every read of the trail seals what is pending first, so it sees every
/// event committed before it asked.
#[tokio::test]
async fn every_read_of_the_trail_seals_first() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let (w, r) = (h.store().await, h.store().await);
    w.begin_task(
        &TaskRecord::new(HOLDER, "t", 100, FAR),
        &[mint_draft("", "begun")],
    )
    .await
    .unwrap();
    let head = r.audit_head().await.unwrap();
    assert_eq!(head.map(|h| h.0), Some(1));

    w.record_credential(&cred("c", "t"), 10, &[mint_draft("c", "issued")])
        .await
        .unwrap()
        .unwrap();
    let timeline = r.task_audit(HOLDER, "t", 0, 0, 100).await.unwrap();
    assert_eq!(timeline.len(), 2);

    let ack = AckRecord {
        subscriber: "sidecar".into(),
        spiffe_id: HOLDER.into(),
        acked_seq: 4,
        acked_at: 300,
    };
    w.ack(
        &ack,
        false,
        AuditDraft::new(kind::ACK, HOLDER, 300).subject("sidecar"),
    )
    .await
    .unwrap();
    let acks = r.acks_covering(4).await.unwrap();
    assert_eq!(acks.iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);

    w.record_credential(&cred("d", "t"), 10, &[mint_draft("d", "issued")])
        .await
        .unwrap()
        .unwrap();
    let page = r.audit_after(3, 10).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].body.credential_id, "d");
    assert_eq!(r.pending_audit_events().await.unwrap(), 0);
}

/// The triggers refuse every change but a seal; with them bypassed (as the
/// table's owner or a superuser can), verification names where the chain
/// breaks. A deleted tail with its head rolled back to match is the one
/// change only a head kept outside the database exposes.
#[tokio::test]
async fn tampering_is_refused_and_otherwise_detected() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let s = h.store().await;
    let drafts: Vec<_> = (1..=6).map(|i| draft(&format!("event {i}"))).collect();
    s.append_audit(&drafts).await.unwrap();
    s.seal_audit().await.unwrap();
    // One more, committed and pending.
    let mut tx = s.pool.begin().await.unwrap();
    audit::append(&mut tx, [draft("pending")]).await.unwrap();
    tx.commit().await.unwrap();

    for sql in [
        "UPDATE audit SET reason = 'x' WHERE seq = 3",
        "UPDATE audit SET seq = 9 WHERE seq = 3",
        "UPDATE audit SET hash = prev_hash WHERE seq = 3",
        "UPDATE audit SET reason = 'x' WHERE seq IS NULL",
        "UPDATE audit SET seq = 7 WHERE seq IS NULL",
        "UPDATE audit SET seq = 7, prev_hash = 'p', hash = 'h', reason = 'x' WHERE seq IS NULL",
        "DELETE FROM audit WHERE seq = 6",
        "DELETE FROM audit WHERE seq IS NULL",
        "TRUNCATE audit",
    ] {
        let err = sqlx::query(sql).execute(&s.pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    for sql in [
        "UPDATE audit_head SET seq = 5",
        "DELETE FROM audit_head",
        "TRUNCATE audit_head",
    ] {
        let err = sqlx::query(sql).execute(&s.pool).await.unwrap_err();
        assert!(
            err.to_string().contains("only moves forward"),
            "{sql}: {err}"
        );
    }
    assert_eq!(verify(&h).await.unwrap(), (6, 1));
    assert_eq!(s.seal_audit().await.unwrap(), 1);

    let exec = |sql: &'static str| {
        let pool = s.pool.clone();
        async move { sqlx::query(sql).execute(&pool).await.unwrap() }
    };
    let broken = |e: anyhow::Error| e.to_string();
    // Content edited.
    exec("ALTER TABLE audit DISABLE TRIGGER audit_no_update").await;
    exec("UPDATE audit SET reason = 'nothing to see' WHERE seq = 3").await;
    let err = broken(verify(&h).await.unwrap_err());
    assert!(
        err.contains("broken at seq 3") && err.contains("edited"),
        "{err}"
    );
    exec("UPDATE audit SET reason = 'event 3' WHERE seq = 3").await;
    // Reordered: two rows swap their numbers.
    exec("UPDATE audit SET seq = -1 WHERE seq = 4").await;
    exec("UPDATE audit SET seq = 4 WHERE seq = 5").await;
    exec("UPDATE audit SET seq = 5 WHERE seq = -1").await;
    let err = broken(verify(&h).await.unwrap_err());
    assert!(err.contains("broken at seq 4"), "{err}");
    exec("UPDATE audit SET seq = -1 WHERE seq = 4").await;
    exec("UPDATE audit SET seq = 4 WHERE seq = 5").await;
    exec("UPDATE audit SET seq = 5 WHERE seq = -1").await;
    assert_eq!(verify(&h).await.unwrap().0, 7);
    // A row deleted inside the chain.
    exec("ALTER TABLE audit DISABLE TRIGGER audit_no_delete").await;
    exec("DELETE FROM audit WHERE seq = 2").await;
    let err = broken(verify(&h).await.unwrap_err());
    assert!(
        err.contains("broken at seq 2") && err.contains("missing"),
        "{err}"
    );
}

/// Deleting the newest events is exposed by the head row; deleting them
/// and rolling the head back (both guards bypassed) verifies, unless the
/// head an earlier verify printed was kept and is passed back
/// (`--expect-head`).
#[tokio::test]
async fn a_deleted_tail_is_seen_against_the_head_only() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let s = h.store().await;
    let drafts: Vec<_> = (1..=4).map(|i| draft(&format!("event {i}"))).collect();
    s.append_audit(&drafts).await.unwrap();
    let sealed = s.audit_after(0, 100).await.unwrap();
    // The head verify prints, kept: the chain holds it, and not another.
    let kept = format!("4:{}", sealed[3].hash);
    let v = verify_expecting(&h, Some(&kept)).await.unwrap();
    assert_eq!(
        (v.through, v.head_hash.as_str()),
        (4, sealed[3].hash.as_str())
    );
    let other = format!("2:{}", sealed[3].hash);
    let err = verify_expecting(&h, Some(&other))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("broken at seq 2") && err.contains("rewritten"),
        "{err}"
    );
    for sql in [
        "ALTER TABLE audit DISABLE TRIGGER audit_no_delete",
        "DELETE FROM audit WHERE seq = 4",
    ] {
        sqlx::query(sql).execute(&s.pool).await.unwrap();
    }
    let err = verify(&h).await.unwrap_err().to_string();
    assert!(
        err.contains("broken at seq 4") && err.contains("deleted from the end"),
        "{err}"
    );
    sqlx::query("ALTER TABLE audit_head DISABLE TRIGGER audit_head_forward")
        .execute(&s.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_head SET seq = 3, hash = $1")
        .bind(&sealed[2].hash)
        .execute(&s.pool)
        .await
        .unwrap();
    assert_eq!(verify(&h).await.unwrap().0, 3);
    let err = verify_expecting(&h, Some(&kept))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("deleted from the end"), "{err}");
}

/// Chains `d` after the head and inserts it numbered, as the 0001 schema's
/// code did (and a replica not yet upgraded still does).
async fn append_the_0001_way(pool: &sqlx::PgPool, d: AuditDraft) -> AuditEvent {
    let mut tx = pool.begin().await.unwrap();
    let (seq, hash): (i64, String) =
        sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    let e = crate::audit::seal(seq as u64, &hash, d);
    let b = &e.body;
    sqlx::query(
        "INSERT INTO audit (seq, time, prev_hash, hash, kind, actor, task_holder, task_id, \
         credential_id, decision, policies, reason, break_glass, ref_seq, subject) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
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
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(e.seq as i64)
        .bind(&e.hash)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    e
}

/// A database with a chain written under 0001 migrates with its events'
/// numbers and hashes unchanged; sealing continues the chain after them,
/// also when a replica not yet upgraded appends the old way in between.
#[tokio::test]
async fn migration_keeps_a_chain_written_under_0001() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/postgres/migrations");
    std::fs::copy(src.join("0001_init.sql"), dir.path().join("0001_init.sql")).unwrap();
    let pool = sqlx::PgPool::connect(&h.url).await.unwrap();
    sqlx::migrate::Migrator::new(dir.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    let mut old = Vec::new();
    for i in 1..=3 {
        old.push(append_the_0001_way(&pool, draft(&format!("old {i}"))).await);
    }

    let s = h.store().await;
    s.begin_task(&TaskRecord::new(HOLDER, "t", 100, FAR), &[draft("new 1")])
        .await
        .unwrap();
    // Not yet sealed, so this one chains right after the old rows.
    old.push(append_the_0001_way(&pool, draft("old 4")).await);
    s.append_audit(&[draft("new 2")]).await.unwrap();
    s.seal_audit().await.unwrap();

    assert_eq!(verify(&h).await.unwrap(), (6, 0));
    let trail = s.audit_after(0, 10).await.unwrap();
    assert_eq!(trail[..4], old[..]);
    let reasons: Vec<&str> = trail.iter().map(|e| e.body.reason.as_str()).collect();
    assert_eq!(
        reasons,
        ["old 1", "old 2", "old 3", "old 4", "new 1", "new 2"]
    );
    pool.close().await;
}

/// The trail pruned behind its checkpoint on PostgreSQL: the triggers let
/// only events behind the checkpoint be deleted and the checkpoint only
/// move forward; `audit verify` proves the archive and the stored trail
/// together, and an event edited after pruning is found.
#[tokio::test]
async fn a_pruned_trail_verifies_with_its_archive() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let s = h.store().await;
    let drafts: Vec<_> = (0..12)
        .map(|i| {
            let mut d = draft(&format!("event {i}"));
            d.time = 100 + i;
            d
        })
        .collect();
    s.append_audit(&drafts).await.unwrap();
    let archive = tempfile::tempdir().unwrap();
    let pruned = crate::retention::prune_audit_batch(&s, archive.path(), 108, HOLDER)
        .await
        .unwrap();
    assert_eq!(pruned, 8);
    // The record of the prune is pending until sealed (verify only reads).
    assert_eq!(s.seal_audit().await.unwrap(), 1);
    for sql in [
        "DELETE FROM audit WHERE seq = 9",
        "UPDATE audit_checkpoint SET seq = 2",
        "DELETE FROM audit_checkpoint",
        "TRUNCATE audit_checkpoint",
    ] {
        let err = sqlx::query(sql).execute(&s.pool).await.unwrap_err();
        assert!(
            err.to_string().contains("append-only")
                || err.to_string().contains("only moves forward"),
            "{sql}: {err}"
        );
    }
    let verify = |dir: std::path::PathBuf| {
        let url = h.url.clone();
        async move {
            crate::cli::verify_pg_store_with_archive(
                &url,
                &PgPoolConfig::default(),
                None,
                Some(&dir),
            )
            .await
        }
    };
    let v = verify(archive.path().to_owned()).await.unwrap();
    // 12 events and the record of the prune.
    assert_eq!((v.through, v.verified.checkpoint.seq), (13, 8));
    assert_eq!(v.verified.archive.as_ref().map(|a| a.events), Some(8));
    // Without the archive, the stored trail still verifies from the
    // checkpoint.
    let live = verify_audit_pg_store(&h.url, &PgPoolConfig::default(), None)
        .await
        .unwrap();
    assert_eq!((live.through, live.verified.archive), (13, None));

    sqlx::query("ALTER TABLE audit DISABLE TRIGGER audit_no_update")
        .execute(&s.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE audit SET reason = 'nothing to see' WHERE seq = 10")
        .execute(&s.pool)
        .await
        .unwrap();
    let err = verify(archive.path().to_owned())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("broken at seq 10") && err.contains("edited"),
        "{err}"
    );
}
