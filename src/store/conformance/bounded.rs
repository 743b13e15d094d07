//! Conformance: repeated events chained once per window, paged reads
//! (snapshot, timeline, break-glass list), and retention (records, and the
//! audit trail pruned behind its checkpoint).

use super::*;

fn status(credential: &str, time: i64, reason: &str) -> AuditDraft {
    AuditDraft::new(kind::STATUS_CHECK, HOLDER, time)
        .credential(credential)
        .because(reason)
}

/// The stored trail verifies from the checkpoint through the head.
async fn assert_chain_after_checkpoint(s: &dyn Store) {
    let cp = s.audit_checkpoint().await.unwrap();
    let mut v = Verifier::resume(cp.seq, &cp.hash);
    for e in s.audit_after(0, 10_000).await.unwrap() {
        v.check(&e).unwrap();
    }
    v.finish(s.audit_head().await.unwrap()).unwrap();
}

/// The whole trail verifies as one chain from the genesis.
async fn assert_chain_verifies(s: &dyn Store) -> Vec<crate::audit::AuditEvent> {
    let trail = s.audit_after(0, 10_000).await.unwrap();
    let mut v = Verifier::default();
    for e in &trail {
        v.check(e).unwrap();
    }
    v.finish(s.audit_head().await.unwrap()).unwrap();
    trail
}

/// A repeated event is chained once per key and window: its repeats are
/// counted (on every handle, racing included, none lost) and chained as one
/// summary when the window closes — at the key's next event after it, or by
/// the sweep. The chain verifies throughout.
pub async fn repeated_events_are_chained_once_per_window(h: &dyn Harness) {
    let s = h.open().await;
    assert!(
        s.append_audit_repeated(status("c1", 1000, "active"), 60)
            .await
            .unwrap()
    );
    for t in 1001..=1005 {
        let reason = if t == 1005 { "revoked" } else { "active" };
        assert!(
            !s.append_audit_repeated(status("c1", t, reason), 60)
                .await
                .unwrap()
        );
    }
    // Another key opens its own window; another checker too.
    assert!(
        s.append_audit_repeated(status("c2", 1002, "active"), 60)
            .await
            .unwrap()
    );
    let mut other = status("c1", 1003, "active");
    other.actor = "spiffe://example.org/workload/other".into();
    assert!(s.append_audit_repeated(other, 60).await.unwrap());
    assert_eq!(assert_chain_verifies(s.as_ref()).await.len(), 3);

    // The key's next event after the window: the summary, then the event.
    assert!(
        s.append_audit_repeated(status("c1", 1070, "revoked"), 60)
            .await
            .unwrap()
    );
    let trail = assert_chain_verifies(s.as_ref()).await;
    assert_eq!(trail.len(), 5);
    let summary = &trail[3].body;
    assert_eq!((summary.credential_id.as_str(), summary.time), ("c1", 1005));
    assert!(
        summary.reason.starts_with("repeated 5 more times from ")
            && summary.reason.ends_with("; last: revoked"),
        "{}",
        summary.reason
    );
    assert_eq!(trail[4].body.time, 1070);

    // The sweep: windows opened at or before `before` close; one without
    // repeats closes without an event, one with repeats chains its count.
    assert!(
        !s.append_audit_repeated(status("c1", 1080, "revoked"), 60)
            .await
            .unwrap()
    );
    assert_eq!(s.close_repeat_windows(1042, 100).await.unwrap(), 2);
    assert_eq!(assert_chain_verifies(s.as_ref()).await.len(), 5);
    assert_eq!(s.close_repeat_windows(1070, 100).await.unwrap(), 1);
    let trail = assert_chain_verifies(s.as_ref()).await;
    assert_eq!(trail.len(), 6);
    assert!(
        trail[5]
            .body
            .reason
            .starts_with("repeated 1 more time from ")
    );
    assert_eq!(s.close_repeat_windows(5000, 100).await.unwrap(), 0);
    // Closed: the key's next event opens a window afresh.
    assert!(
        s.append_audit_repeated(status("c1", 1090, "revoked"), 60)
            .await
            .unwrap()
    );

    // Many handles (replicas) repeating one key at once: one opens the
    // window, every other repeat is counted.
    const N: usize = 16;
    let mut handles = Vec::new();
    for _ in 0..N {
        handles.push(h.open().await);
    }
    let calls: Vec<_> = handles
        .into_iter()
        .map(|r| {
            tokio::spawn(async move {
                r.append_audit_repeated(status("c3", 2000, "active"), 60)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut chained = 0;
    for c in calls {
        chained += usize::from(c.await.unwrap());
    }
    assert_eq!(chained, 1, "one of the racing events opens the window");
    let before = assert_chain_verifies(s.as_ref()).await.len();
    // The sweep takes at most `limit` windows per call.
    assert_eq!(s.close_repeat_windows(2000, 1).await.unwrap(), 1);
    assert_eq!(s.close_repeat_windows(2000, 100).await.unwrap(), 1);
    let trail = assert_chain_verifies(s.as_ref()).await;
    let last = &trail.last().unwrap().body;
    assert_eq!(trail.len(), before + 1);
    assert!(
        last.credential_id == "c3"
            && last
                .reason
                .starts_with(&format!("repeated {} more times", N - 1)),
        "{last:?}"
    );
}

/// Begins task `id` with one credential expiring at `not_after`, and ends
/// it (closing out the credential): one revocation event expiring then.
async fn ended_task_with(s: &dyn Store, id: &str, not_after: i64) -> u64 {
    s.begin_task(&task(id), &[]).await.unwrap();
    let mut c = cred(&format!("c-{id}"), id);
    c.not_after = not_after;
    s.record_credential(&c, 10, &[]).await.unwrap().unwrap();
    let scope = RevokeScope::Task {
        holder: HOLDER.into(),
        task_id: id.into(),
    };
    let events = s
        .revoke(&revoke_req(scope, Some(TaskState::Completed)), signer())
        .await
        .unwrap();
    events[0].seq
}

/// A watcher's snapshot is read a page at a time: the unexpired events of
/// `(after, through]`, in order, at most `limit` each.
pub async fn snapshot_is_read_in_pages(h: &dyn Harness) {
    let s = h.open().await;
    for (id, not_after) in [("a", FAR), ("b", FAR), ("c", 150), ("d", FAR), ("e", FAR)] {
        ended_task_with(s.as_ref(), id, not_after).await;
    }
    let seqs = |events: Vec<crate::store::RevocationEvent>| {
        events.iter().map(|e| e.seq).collect::<Vec<_>>()
    };
    // Event 3 revoked a credential that had expired: not in the snapshot.
    assert_eq!(
        seqs(s.unexpired_events(200, 0, 5, 2).await.unwrap()),
        [1, 2]
    );
    assert_eq!(
        seqs(s.unexpired_events(200, 2, 5, 2).await.unwrap()),
        [4, 5]
    );
    assert_eq!(
        seqs(s.unexpired_events(200, 5, 5, 2).await.unwrap()),
        [] as [u64; 0]
    );
    // Bounded above by the sequence the snapshot was taken at.
    assert_eq!(
        seqs(s.unexpired_events(200, 0, 4, 10).await.unwrap()),
        [1, 2, 4]
    );
    // A huge cursor reads as the end, not as a wrap to the start.
    assert!(
        s.unexpired_events(200, u64::MAX, u64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A task's timeline and the break-glass list are read a page at a time,
/// in their order, with no row twice or missed at the page boundaries; the
/// timeline starts at the task's begin.
pub async fn timeline_and_break_glass_are_paged(h: &dyn Harness) {
    let s = h.open().await;
    let mut old = AuditDraft::new(kind::TASK_BEGIN, HOLDER, 50).task(HOLDER, "t", false);
    old.reason = "an older task of the same name".into();
    s.append_audit(&[old]).await.unwrap();
    let about = |n: usize| {
        AuditDraft::new(kind::TASK_READ, HOLDER, 100 + n as i64)
            .task(HOLDER, "t", false)
            .because(format!("read {n}"))
    };
    s.begin_task(&task("t"), &[about(0)]).await.unwrap();
    for n in 1..7 {
        s.append_audit(&[about(n), draft(n)]).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = s.task_audit(HOLDER, "t", 100, after, 3).await.unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = last.seq;
        seen.extend(page.into_iter().map(|e| e.body.reason));
    }
    let want: Vec<String> = (0..7).map(|n| format!("read {n}")).collect();
    assert_eq!(seen, want);
    assert_eq!(s.task_audit(HOLDER, "t", 0, 0, 100).await.unwrap().len(), 8);

    // Break-glass tasks, newest first; ties broken by holder and task id.
    for (id, created, reviewed) in [
        ("bg-1", 300, false),
        ("bg-2", 500, false),
        ("bg-3", 400, true),
        ("bg-4", 500, false),
        ("bg-5", 200, false),
        ("plain", 600, false),
    ] {
        let mut t = task(id);
        t.created_at = created;
        t.break_glass = id != "plain";
        s.begin_task(&t, &[]).await.unwrap();
        if reviewed {
            let review = crate::store::Review {
                by: "spiffe://example.org/admin".into(),
                at: 700,
                note: String::new(),
            };
            let event = AuditDraft::new(kind::REVIEW, HOLDER, 700);
            s.mark_reviewed(HOLDER, id, &review, event).await.unwrap();
        }
    }
    let list = |include: bool| {
        let s = s.clone();
        async move {
            let mut ids = Vec::new();
            let mut after = None;
            loop {
                let page = s
                    .break_glass_tasks(include, after.clone(), 2)
                    .await
                    .unwrap();
                assert!(page.len() <= 2);
                let Some(last) = page.last() else { break };
                after = Some((last.created_at, last.holder.clone(), last.task_id.clone()));
                ids.extend(page.into_iter().map(|t| t.task_id));
            }
            ids
        }
    };
    assert_eq!(list(true).await, ["bg-2", "bg-4", "bg-3", "bg-1", "bg-5"]);
    assert_eq!(list(false).await, ["bg-2", "bg-4", "bg-1", "bg-5"]);
}

/// Retention deletes credentials that expired before the cutoff and tasks
/// that ended before it and hold no credential, a bounded batch at a time;
/// active tasks, recent ones and break-glass tasks awaiting review stay.
pub async fn retention_prunes_aged_out_records(h: &dyn Harness) {
    let s = h.open().await;
    // Ended at 200 (revoke_req's time) with a credential expiring at 300.
    for id in ["old-1", "old-2", "old-3"] {
        ended_task_with(s.as_ref(), id, 300).await;
    }
    // Ended, but its credential expires late.
    ended_task_with(s.as_ref(), "late", 5_000).await;
    // Active, with an expired credential and a live one.
    s.begin_task(&task("active"), &[]).await.unwrap();
    let mut expired = cred("c-active-old", "active");
    expired.not_after = 300;
    s.record_credential(&expired, 10, &[])
        .await
        .unwrap()
        .unwrap();
    s.record_credential(&cred("c-active-new", "active"), 10, &[])
        .await
        .unwrap()
        .unwrap();
    // A break-glass task, ended, never reviewed.
    let mut bg = task("bg");
    bg.break_glass = true;
    s.begin_task(&bg, &[]).await.unwrap();
    let scope = RevokeScope::Task {
        holder: HOLDER.into(),
        task_id: "bg".into(),
    };
    s.revoke(&revoke_req(scope, Some(TaskState::Completed)), signer())
        .await
        .unwrap();

    // Nothing is older than the cutoff yet.
    let none = s.prune_records(200, 100).await.unwrap();
    assert_eq!((none.credentials, none.tasks), (0, 0));
    // Batches of two: the credentials first, then tasks left empty.
    let first = s.prune_records(1000, 2).await.unwrap();
    assert_eq!((first.credentials, first.tasks), (2, 1));
    let second = s.prune_records(1000, 2).await.unwrap();
    assert_eq!((second.credentials, second.tasks), (2, 2));
    let third = s.prune_records(1000, 2).await.unwrap();
    assert_eq!((third.credentials, third.tasks), (0, 0));
    for gone in ["old-1", "old-2", "old-3"] {
        assert!(s.task(HOLDER, gone).await.unwrap().is_none(), "{gone}");
        assert!(s.credential(&format!("c-{gone}")).await.unwrap().is_none());
    }
    assert!(s.credential("c-active-old").await.unwrap().is_none());
    for kept in ["late", "active", "bg"] {
        assert!(s.task(HOLDER, kept).await.unwrap().is_some(), "{kept}");
    }
    assert!(s.credential("c-late").await.unwrap().is_some());
    assert!(s.credential("c-active-new").await.unwrap().is_some());
    // Once reviewed, the break-glass task ages out like any other.
    let review = crate::store::Review {
        by: "spiffe://example.org/admin".into(),
        at: 700,
        note: String::new(),
    };
    s.mark_reviewed(
        HOLDER,
        "bg",
        &review,
        AuditDraft::new(kind::REVIEW, HOLDER, 700),
    )
    .await
    .unwrap();
    assert_eq!(s.prune_records(1000, 10).await.unwrap().tasks, 1);
    assert!(s.task(HOLDER, "bg").await.unwrap().is_none());
}

/// The audit trail is pruned a prefix at a time behind a checkpoint: a
/// range is claimed (one range at a time), archived, then the checkpoint
/// moves and the range is deleted in one transaction — only if the claim
/// stands and the last event is the one archived. What is stored verifies
/// from the checkpoint, the archive from the genesis to it.
pub async fn audit_is_pruned_behind_a_checkpoint(h: &dyn Harness) {
    let s = h.open().await;
    let drafts: Vec<_> = (0..12)
        .map(|n| AuditDraft::new(kind::STATUS_CHECK, HOLDER, 100 + n).because(format!("event {n}")))
        .collect();
    s.append_audit(&drafts).await.unwrap();
    let all = assert_chain_verifies(s.as_ref()).await;
    let cp0 = s.audit_checkpoint().await.unwrap();
    assert_eq!(cp0, crate::retention::no_checkpoint());

    // One batch, as the leader runs it: events older than 105.
    let dir = tempfile::tempdir().unwrap();
    let prune = |before: i64| {
        let (s, dir) = (s.clone(), dir.path().to_owned());
        async move {
            crate::retention::prune_audit_batch(s.as_ref(), &dir, before, HOLDER)
                .await
                .unwrap()
        }
    };
    let record = |text: &str| AuditDraft::new(kind::AUDIT_PRUNED, HOLDER, 300).because(text);
    assert_eq!(prune(105).await, 5);
    let cp = s.audit_checkpoint().await.unwrap();
    assert_eq!(
        (cp.seq, cp.hash.as_str(), cp.archiving_to),
        (5, all[4].hash.as_str(), None)
    );
    let stored = h.open().await.audit_after(0, 100).await.unwrap();
    assert_eq!(stored.first().map(|e| e.seq), Some(6));
    let mut v = Verifier::resume(cp.seq, &cp.hash);
    for e in &stored {
        v.check(e).unwrap();
    }
    // The prune itself is chained, naming the range and the file.
    assert_eq!(v.finish(s.audit_head().await.unwrap()), Ok(13));
    let pruned = &stored.last().unwrap().body;
    assert_eq!(pruned.kind, kind::AUDIT_PRUNED);
    assert!(
        pruned
            .reason
            .starts_with("events 1..=5 archived to `audit-")
            && pruned
                .reason
                .contains(&format!("checkpoint 5:{}", all[4].hash)),
        "{}",
        pruned.reason
    );
    let archived = crate::retention::verify_archive(dir.path(), &cp).unwrap();
    assert_eq!(archived.events, 5);
    // Nothing else is old enough.
    assert_eq!(prune(105).await, 0);

    // Claims: from the checkpoint only, one range at a time.
    assert!(!s.claim_audit_prune(0, 7).await.unwrap());
    assert!(!s.claim_audit_prune(5, 5).await.unwrap());
    assert!(s.claim_audit_prune(5, 7).await.unwrap());
    assert!(!s.claim_audit_prune(5, 8).await.unwrap());
    assert!(s.claim_audit_prune(5, 7).await.unwrap());
    assert_eq!(s.audit_checkpoint().await.unwrap().archiving_to, Some(7));
    // A commit for another range, or for an event whose hash changed,
    // deletes nothing.
    assert!(
        !s.commit_audit_prune(5, 8, &all[7].hash, record("x"))
            .await
            .unwrap()
    );
    assert!(
        s.commit_audit_prune(5, 7, &all[5].hash, record("x"))
            .await
            .is_err()
    );
    assert_eq!(s.audit_after(0, 1).await.unwrap()[0].seq, 6);
    // A leader that claimed and died: its successor resumes the claimed
    // range (not the older-than cutoff it would pick itself).
    assert_eq!(prune(0).await, 2);
    let cp = s.audit_checkpoint().await.unwrap();
    assert_eq!((cp.seq, cp.archiving_to), (7, None));
    assert_eq!(
        crate::retention::verify_archive(dir.path(), &cp)
            .unwrap()
            .events,
        7
    );
    assert!(
        !s.commit_audit_prune(5, 7, &all[6].hash, record("x"))
            .await
            .unwrap()
    );

    // Pruned without the archive (a claim committed by hand): the archive
    // no longer reaches the checkpoint, which verify reports.
    assert!(s.claim_audit_prune(7, 8).await.unwrap());
    assert!(
        s.commit_audit_prune(7, 8, &all[7].hash, record("by hand"))
            .await
            .unwrap()
    );
    let cp = s.audit_checkpoint().await.unwrap();
    let err = crate::retention::verify_archive(dir.path(), &cp).unwrap_err();
    assert!(
        err.to_string().contains("does not reach the checkpoint"),
        "{err}"
    );

    // Everything pruned up to the head: the record of the prune is then
    // the only stored event, chained to the checkpoint.
    let (head, head_hash) = s.audit_head().await.unwrap().unwrap();
    assert_eq!(head, 15);
    assert!(s.claim_audit_prune(8, head).await.unwrap());
    assert!(
        s.commit_audit_prune(8, head, &head_hash, record("all"))
            .await
            .unwrap()
    );
    let stored = s.audit_after(0, 100).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (
            stored[0].seq,
            stored[0].prev_hash.as_str(),
            stored[0].body.reason.as_str()
        ),
        (16, head_hash.as_str(), "all")
    );
    assert_chain_after_checkpoint(s.as_ref()).await;
}
