//! The archive on its own: written durably, verified from the genesis to a
//! checkpoint, and any edit, gap, missing file or moved checkpoint found.

use super::*;
use crate::audit::{kind, seal};

fn chain(n: u64) -> Vec<AuditEvent> {
    let mut out: Vec<AuditEvent> = Vec::new();
    for i in 0..n {
        let (s, h) = out
            .last()
            .map(|e| (e.seq, e.hash.clone()))
            .unwrap_or((0, GENESIS.to_owned()));
        let mut d = AuditDraft::new(kind::MINT_JWT, "spiffe://example.org/a", 100 + i as i64)
            .credential(&format!("c{i}"))
            .decided("allow", &["p1".into(), "p2".into()]);
        d.ref_seq = (i % 2 == 0).then_some(i);
        out.push(seal(s, &h, d));
    }
    out
}

fn cp(e: &AuditEvent) -> AuditCheckpoint {
    AuditCheckpoint {
        seq: e.seq,
        hash: e.hash.clone(),
        archiving_to: None,
    }
}

#[test]
fn archived_events_read_back_as_they_were() {
    let events = chain(3);
    for e in &events {
        let line = serde_json::to_string(&ArchivedEvent::from(e)).unwrap();
        let back: ArchivedEvent = serde_json::from_str(&line).unwrap();
        assert_eq!(AuditEvent::from(back), *e);
    }
    assert_eq!(
        archive_file_name(1, 500),
        "audit-00000000000000000001-00000000000000000500.jsonl"
    );
    assert_eq!(parse_file_name(&archive_file_name(7, 9)), Some((7, 9)));
    assert_eq!(parse_file_name(".audit-1-2.jsonl.1-ab.tmp"), None);
}

#[test]
fn an_archive_verifies_from_the_genesis_to_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let events = chain(10);
    write_archive(dir.path(), &events[0..4]).unwrap();
    write_archive(dir.path(), &events[4..7]).unwrap();
    // A batch archived whose prune has not committed: past the checkpoint.
    write_archive(dir.path(), &events[7..10]).unwrap();
    let ok = verify_archive(dir.path(), &cp(&events[6])).unwrap();
    assert_eq!(
        ok,
        ArchiveVerified {
            events: 7,
            files: 2
        }
    );
    // Written again (a resumed claim): the same file, still verifies.
    write_archive(dir.path(), &events[4..7]).unwrap();
    assert_eq!(
        verify_archive(dir.path(), &cp(&events[6])).unwrap().events,
        7
    );
    // Nothing pruned: nothing to check.
    assert_eq!(
        verify_archive(dir.path(), &no_checkpoint()).unwrap().events,
        0
    );
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n.ends_with(".jsonl") && !n.starts_with('.')),
        "{names:?}"
    );
}

#[test]
fn tampering_with_the_archive_or_the_checkpoint_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let events = chain(6);
    let first = write_archive(dir.path(), &events[0..3]).unwrap();
    let second = write_archive(dir.path(), &events[3..6]).unwrap();
    let checkpoint = cp(&events[5]);
    verify_archive(dir.path(), &checkpoint).unwrap();

    // An edited event.
    let original = std::fs::read_to_string(&first).unwrap();
    std::fs::write(&first, original.replacen("\"c1\"", "\"c9\"", 1)).unwrap();
    let err = verify_archive(dir.path(), &checkpoint)
        .unwrap_err()
        .to_string();
    assert!(err.contains("seq 2") && err.contains("edited"), "{err}");
    std::fs::write(&first, &original).unwrap();

    // A deleted event inside a file.
    let lines: Vec<&str> = original.lines().collect();
    std::fs::write(&first, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
    let err = verify_archive(dir.path(), &checkpoint)
        .unwrap_err()
        .to_string();
    assert!(err.contains("seq 2"), "{err}");
    std::fs::write(&first, &original).unwrap();

    // A missing file: the archive has a gap.
    let kept = std::fs::read(&first).unwrap();
    std::fs::remove_file(&first).unwrap();
    let err = verify_archive(dir.path(), &checkpoint)
        .unwrap_err()
        .to_string();
    assert!(err.contains("broken at seq 1"), "{err}");
    std::fs::write(&first, kept).unwrap();

    // The last file gone: the archive stops short of the checkpoint.
    std::fs::remove_file(&second).unwrap();
    let err = verify_archive(dir.path(), &checkpoint)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not reach the checkpoint"), "{err}");
    write_archive(dir.path(), &events[3..6]).unwrap();

    // A checkpoint moved or rewritten: the archive does not end there.
    let mut moved = checkpoint.clone();
    moved.hash = events[4].hash.clone();
    assert!(verify_archive(dir.path(), &moved).is_err());
    verify_archive(dir.path(), &checkpoint).unwrap();
}

#[test]
fn an_archive_file_of_another_history_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let events = chain(6);
    write_archive(dir.path(), &events[0..4]).unwrap();
    // The same range with the same content: fine (a resumed claim).
    write_archive(dir.path(), &events[0..4]).unwrap();
    // Another history of the same numbers (a database restored to an
    // earlier point, then written again): refused, the file kept.
    let mut other = chain(6);
    other[2].body.reason = "another history".into();
    let err = write_archive(dir.path(), &other[0..4])
        .unwrap_err()
        .to_string();
    assert!(err.contains("restored to an earlier point"), "{err}");
    let err = write_archive(dir.path(), &events[2..6])
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds other events than 3..=6"), "{err}");
    write_archive(dir.path(), &events[4..6]).unwrap();
    assert_eq!(
        verify_archive(dir.path(), &cp(&events[5])).unwrap().events,
        6
    );
}

/// A leader's round on a store: windows of repeated events closed with
/// their counts, aged-out records deleted, the audit trail archived and
/// pruned in batches, and what is left verifying from the checkpoint.
#[tokio::test]
async fn a_round_closes_windows_and_prunes_records_and_the_trail() {
    use crate::store::{SqliteStore, TaskRecord};

    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let cfg: StoreConfig = toml::from_str(&format!(
        "path = \"x.db\"\nuse_interval = \"1m\"\nretention = \"1h\"\naudit_archive = {:?}",
        archive.display().to_string()
    ))
    .unwrap();
    let retention = Retention::new(&cfg, "spiffe://example.org/taskmint");
    let store = SqliteStore::open(&dir.path().join("x.db")).await.unwrap();
    let s: &dyn Store = &store;
    let now = 1_000_000;
    let old = now - 2 * 3600;
    let holder = "spiffe://example.org/workload/agent";
    // More old events than one batch, and an ended task with nothing left.
    let drafts: Vec<_> = (0..BATCH as i64 + 20)
        .map(|n| AuditDraft::new(kind::TASK_READ, holder, old + n / 100))
        .collect();
    s.append_audit(&drafts).await.unwrap();
    let mut t = TaskRecord::new(holder, "done", old, old + 60);
    t.state = crate::store::TaskState::Completed;
    t.ended_at = Some(old + 60);
    s.begin_task(&t, &[]).await.unwrap();
    // A window with repeats, opened two minutes ago.
    let check = |time| AuditDraft::new(kind::STATUS_CHECK, holder, time).credential("ab");
    assert!(s.append_audit_repeated(check(now - 120), 60).await.unwrap());
    assert!(!s.append_audit_repeated(check(now - 100), 60).await.unwrap());

    assert_eq!(retention.close_windows(s, now).await.unwrap(), 1);
    let report = retention.prune(s, now).await.unwrap();
    assert_eq!(report.records.tasks, 1);
    assert_eq!(report.audit_events, u64::from(BATCH) + 20);
    let cp = s.audit_checkpoint().await.unwrap();
    assert_eq!(cp.seq, u64::from(BATCH) + 20);
    // Two batches, two files, two records of the prune.
    let verified = verify_archive(&archive, &cp).unwrap();
    assert_eq!((verified.events, verified.files), (cp.seq, 2));
    let stored = s.audit_after(0, 100).await.unwrap();
    let kinds: Vec<_> = stored.iter().map(|e| e.body.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            kind::STATUS_CHECK,
            kind::STATUS_CHECK,
            kind::AUDIT_PRUNED,
            kind::AUDIT_PRUNED
        ]
    );
    assert!(stored[1].body.reason.starts_with("repeated 1 more time"));
    let mut v = Verifier::resume(cp.seq, &cp.hash);
    for e in &stored {
        v.check(e).unwrap();
    }
    v.finish(s.audit_head().await.unwrap()).unwrap();
    // Nothing more to do.
    assert_eq!(
        retention.prune(s, now).await.unwrap(),
        RoundReport::default()
    );
    store.close().await;
}
