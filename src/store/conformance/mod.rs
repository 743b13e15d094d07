//! The behaviour every [`Store`] backend must have, written once: commit
//! before reply, gap-free revocation sequence in commit order, a mint racing
//! its task's completion, one renewal per credential, the active-credential
//! limit, a task begun once, the audit chain and its head, acknowledgements
//! that never move backwards, pruning, failed writes that store nothing,
//! the stored CRL replaced only by compare-and-set, repeated events chained
//! once per window, paged reads (snapshot, timeline, break-glass list), and
//! retention (records, and the audit trail behind its checkpoint).
//!
//! A backend's tests instantiate the suite with `store_conformance!`, giving
//! it a [`Harness`] that opens handles on one fresh database. It is compiled
//! into test builds only. The races run many calls at once through separate
//! tasks on a multi-threaded runtime, so a backend that checks outside the
//! transaction that acts, or numbers outside its commit, fails them.

use std::sync::Arc;

use super::{
    AckRecord, CredentialKind, CredentialRecord, RecordRefusal, RevokeRequest, RevokeScope,
    SetSigner, Store, StoredCrl, TaskRecord, TaskState,
};
use crate::audit::{AuditDraft, Verifier, kind};

mod bounded;
mod limits;

pub use bounded::*;
pub use limits::*;

/// Opens handles on one database that a test owns.
#[async_trait::async_trait]
pub trait Harness: Send + Sync {
    /// A new handle on the same database: its own connections, seeing only
    /// what other handles have committed.
    async fn open(&self) -> Arc<dyn Store>;
}

const HOLDER: &str = "spiffe://example.org/workload/agent";
const FAR: i64 = 4_000_000_000;

fn task(id: &str) -> TaskRecord {
    TaskRecord::new(HOLDER, id, 100, FAR)
}

fn cred(id: &str, task_id: &str) -> CredentialRecord {
    CredentialRecord {
        id: id.into(),
        kind: CredentialKind::Jwt,
        spiffe_id: HOLDER.into(),
        task_holder: HOLDER.into(),
        task_id: task_id.into(),
        audience: Some("db".into()),
        not_before: 100,
        not_after: FAR,
        caller_cert_sha256: "ab".repeat(32),
        issued_at: 100,
        predecessor: None,
        renewal_count: 0,
        revocation: None,
    }
}

fn signer() -> SetSigner {
    Arc::new(|e| Ok(format!("set-{}", e.seq)))
}

fn revoke_req(scope: RevokeScope, end_task: Option<TaskState>) -> RevokeRequest {
    RevokeRequest {
        scope,
        reason: "test".into(),
        now: 200,
        end_task,
        cascade: true,
        audit: AuditDraft::new(kind::REVOKE, HOLDER, 200),
    }
}

fn draft(n: usize) -> AuditDraft {
    AuditDraft::new(kind::STATUS_CHECK, HOLDER, 100).because(format!("event {n}"))
}

/// Everything a call returned OK for is visible to a fresh handle.
pub async fn commit_before_reply(h: &dyn Harness) {
    let s = h.open().await;
    assert!(s.begin_task(&task("t"), &[draft(0)]).await.unwrap().1);
    s.record_credential(&cred("c1", "t"), 10, &[draft(1)])
        .await
        .unwrap()
        .unwrap();
    let events = s
        .revoke(
            &revoke_req(RevokeScope::Credential("c1".into()), None),
            signer(),
        )
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    let ack = AckRecord {
        subscriber: "sidecar".into(),
        spiffe_id: HOLDER.into(),
        acked_seq: 1,
        acked_at: 300,
    };
    s.ack(&ack, false, AuditDraft::new(kind::ACK, HOLDER, 300))
        .await
        .unwrap();
    s.append_audit(&[draft(2)]).await.unwrap();

    let fresh = h.open().await;
    assert_eq!(fresh.task(HOLDER, "t").await.unwrap().unwrap().task_id, "t");
    let c = fresh.credential("c1").await.unwrap().unwrap();
    assert_eq!(c.revocation.map(|r| r.seq), Some(1));
    assert_eq!(fresh.current_seq().await.unwrap(), 1);
    assert_eq!(fresh.events_after(0, 10).await.unwrap(), events);
    assert_eq!(fresh.acks().await.unwrap(), vec![ack]);
    let head = fresh.audit_head().await.unwrap().unwrap();
    let trail = fresh.audit_after(0, 100).await.unwrap();
    let last = trail.last().unwrap();
    assert_eq!(last.body.reason, "event 2");
    assert_eq!(head, (last.seq, last.hash.clone()));
}

/// Revocations from many concurrent calls get every number from 1 to n once,
/// in the order they were committed (the log's order is the order the
/// numbers were handed out), each event signed with its own number.
pub async fn revocation_sequence_is_gap_free(h: &dyn Harness) {
    const N: usize = 24;
    let s = h.open().await;
    for i in 0..N {
        let t = format!("t{i}");
        s.begin_task(&task(&t), &[]).await.unwrap();
        s.record_credential(&cred(&format!("c{i}"), &t), 10, &[])
            .await
            .unwrap()
            .unwrap();
    }
    let calls: Vec<_> = (0..N)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let scope = RevokeScope::Credential(format!("c{i}"));
                s.revoke(&revoke_req(scope, None), signer()).await.unwrap()
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for c in calls {
        let events = c.await.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].set_jwt, format!("set-{}", events[0].seq));
        seqs.push(events[0].seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=N as u64).collect::<Vec<_>>());
    let log = h.open().await.events_after(0, 1000).await.unwrap();
    let logged: Vec<u64> = log.iter().map(|e| e.seq).collect();
    assert_eq!(logged, (1..=N as u64).collect::<Vec<_>>());
    for e in &log {
        let c = s.credential(&e.credential_ids[0]).await.unwrap().unwrap();
        assert_eq!(c.revocation.map(|r| r.seq), Some(e.seq));
    }
    // The trail records them in commit order too: each `revoked` event's
    // sequence rises with its place in the chain.
    let trail = h.open().await.audit_after(0, 1000).await.unwrap();
    let refs: Vec<u64> = trail
        .iter()
        .filter(|e| e.body.kind == kind::REVOKED)
        .filter_map(|e| e.body.ref_seq)
        .collect();
    assert_eq!(refs, (1..=N as u64).collect::<Vec<_>>());
    // Revoking again is a no-op: no event, no number.
    let again = s
        .revoke(
            &revoke_req(RevokeScope::Credential("c0".into()), None),
            signer(),
        )
        .await
        .unwrap();
    assert!(again.is_empty());
    assert_eq!(s.current_seq().await.unwrap(), N as u64);
}

/// Mints racing the completion of their task: every credential recorded
/// before the completion is revoked by it, every later one is refused, and
/// none is left active on the ended task.
pub async fn mint_racing_complete_leaves_nothing_active(h: &dyn Harness) {
    const N: usize = 40;
    let s = h.open().await;
    s.begin_task(&task("race"), &[]).await.unwrap();
    let mint = |i: usize| {
        let s = s.clone();
        tokio::spawn(async move {
            s.record_credential(&cred(&format!("m{i}"), "race"), 1000, &[])
                .await
                .unwrap()
        })
    };
    // Mints before, around and after the completion is sent.
    let mut mints: Vec<_> = (0..N / 2).map(mint).collect();
    let complete = {
        let s = s.clone();
        tokio::spawn(async move {
            let scope = RevokeScope::Task {
                holder: HOLDER.into(),
                task_id: "race".into(),
            };
            s.revoke(&revoke_req(scope, Some(TaskState::Completed)), signer())
                .await
                .unwrap()
        })
    };
    mints.extend((N / 2..N).map(mint));
    let mut recorded = 0;
    for m in mints {
        match m.await.unwrap() {
            Ok(()) => recorded += 1,
            Err(RecordRefusal::TaskEnded(TaskState::Completed)) => {}
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }
    let events = complete.await.unwrap();
    // Whatever came first, a mint after the completion is refused.
    assert_eq!(
        mint(N).await.unwrap(),
        Err(RecordRefusal::TaskEnded(TaskState::Completed))
    );
    let revoked: usize = events.iter().map(|e| e.credential_ids.len()).sum();
    assert_eq!(
        revoked, recorded,
        "the completion revokes exactly what was recorded"
    );
    let fresh = h.open().await;
    assert_eq!(
        fresh.task(HOLDER, "race").await.unwrap().unwrap().state,
        TaskState::Completed
    );
    let creds = fresh.task_credentials(HOLDER, "race").await.unwrap();
    assert_eq!(creds.len(), recorded);
    assert!(creds.iter().all(|c| c.revocation.is_some()));
}

/// Of many concurrent renewals of one credential, exactly one is recorded.
pub async fn one_renewal_per_credential(h: &dyn Harness) {
    let s = h.open().await;
    s.begin_task(&task("t"), &[]).await.unwrap();
    s.record_credential(&cred("base", "t"), 1000, &[])
        .await
        .unwrap()
        .unwrap();
    let calls: Vec<_> = (0..12)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut c = cred(&format!("r{i}"), "t");
                c.predecessor = Some("base".into());
                c.renewal_count = 1;
                s.record_credential(&c, 1000, &[]).await.unwrap()
            })
        })
        .collect();
    let mut ok = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(()) => ok += 1,
            Err(RecordRefusal::AlreadyRenewed(p)) => assert_eq!(p, "base"),
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(s.task_credentials(HOLDER, "t").await.unwrap().len(), 2);
}

/// Concurrent mints never exceed a task's active-credential limit.
pub async fn active_credential_limit_holds(h: &dyn Harness) {
    const LIMIT: u32 = 5;
    let s = h.open().await;
    s.begin_task(&task("t"), &[]).await.unwrap();
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.record_credential(&cred(&format!("c{i}"), "t"), LIMIT, &[])
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut ok = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(()) => ok += 1,
            Err(RecordRefusal::TooManyActive(n)) => assert_eq!(n, LIMIT),
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }
    assert_eq!(ok, LIMIT);
}

/// Of many concurrent begins of one task, exactly one creates it; the others
/// get the stored row.
pub async fn task_is_begun_once(h: &dyn Harness) {
    let s = h.open().await;
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut t = task("once");
                t.purpose = format!("attempt {i}");
                s.begin_task(&t, &[]).await.unwrap()
            })
        })
        .collect();
    let mut created = Vec::new();
    let mut seen = Vec::new();
    for c in calls {
        let (t, new) = c.await.unwrap();
        if new {
            created.push(t.purpose.clone());
        }
        seen.push(t.purpose);
    }
    assert_eq!(created.len(), 1);
    assert!(seen.iter().all(|p| *p == created[0]), "{seen:?}");
}

/// Appends from concurrent calls form one chain that verifies, with the
/// head on its newest event.
pub async fn audit_chain_and_head(h: &dyn Harness) {
    let s = h.open().await;
    let calls: Vec<_> = (0..30)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.append_audit(&[draft(i), draft(100 + i)]).await.unwrap() })
        })
        .collect();
    for c in calls {
        c.await.unwrap();
    }
    let fresh = h.open().await;
    let trail = fresh.audit_after(0, 100).await.unwrap();
    for i in 0..30 {
        let at = trail
            .iter()
            .position(|e| e.body.reason == format!("event {i}"))
            .unwrap();
        let next = &trail[at + 1];
        assert_eq!(
            next.body.reason,
            format!("event {}", 100 + i),
            "one call's events stay together"
        );
        assert_eq!(next.prev_hash, trail[at].hash);
    }
    let head = fresh.audit_head().await.unwrap();
    let mut v = Verifier::default();
    let mut after = 0;
    loop {
        let page = fresh.audit_after(after, 7).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in &page {
            v.check(e).unwrap();
        }
    }
    assert_eq!(v.finish(head.clone()).unwrap(), 60);
    assert_eq!(head.map(|h| h.0), Some(60));
}

/// An acknowledgement never lowers what is stored, and is audited only when
/// it rises.
pub async fn acks_never_move_backwards(h: &dyn Harness) {
    let s = h.open().await;
    let ack = |seq| AckRecord {
        subscriber: "sidecar".into(),
        spiffe_id: HOLDER.into(),
        acked_seq: seq,
        acked_at: 300,
    };
    let audit = || AuditDraft::new(kind::ACK, HOLDER, 300).subject("sidecar");
    assert_eq!(s.ack(&ack(5), false, audit()).await.unwrap().acked_seq, 5);
    assert_eq!(s.ack(&ack(3), false, audit()).await.unwrap().acked_seq, 5);
    assert_eq!(s.ack(&ack(5), false, audit()).await.unwrap().acked_seq, 5);
    assert_eq!(s.ack(&ack(7), false, audit()).await.unwrap().acked_seq, 7);
    let acks = h.open().await.audit_after(0, 100).await.unwrap();
    let refs: Vec<_> = acks.iter().map(|e| e.body.ref_seq).collect();
    assert_eq!(refs, vec![Some(5), Some(7)]);
}

/// Pruning removes a prefix of expired events only and remembers where it
/// stopped; numbering goes on after it.
pub async fn pruning_takes_an_expired_prefix(h: &dyn Harness) {
    let s = h.open().await;
    for (i, exp) in [(0, 300), (1, 900), (2, 300)] {
        let t = format!("t{i}");
        s.begin_task(&task(&t), &[]).await.unwrap();
        let mut c = cred(&format!("c{i}"), &t);
        c.not_after = exp;
        s.record_credential(&c, 10, &[]).await.unwrap().unwrap();
        let scope = RevokeScope::Credential(format!("c{i}"));
        s.revoke(&revoke_req(scope, None), signer()).await.unwrap();
    }
    // seq 1 expired at 300, seq 2 at 900, seq 3 at 300: only seq 1 may go.
    assert_eq!(s.prune_events(500).await.unwrap(), 1);
    assert_eq!(s.pruned_through().await.unwrap(), 1);
    assert_eq!(s.prune_events(500).await.unwrap(), 0);
    let left: Vec<u64> = s
        .events_after(0, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(left, vec![2, 3]);
    assert_eq!(s.prune_events(1000).await.unwrap(), 2);
    assert_eq!(s.pruned_through().await.unwrap(), 3);
    assert_eq!(s.current_seq().await.unwrap(), 3);
}

/// A write that fails stores nothing of itself and leaves the others alone.
pub async fn failed_writes_store_nothing(h: &dyn Harness) {
    let s = h.open().await;
    s.begin_task(&task("t"), &[]).await.unwrap();
    s.record_credential(&cred("c", "t"), 10, &[draft(0)])
        .await
        .unwrap()
        .unwrap();
    let head = s.audit_head().await.unwrap();
    // The same id again (a random id colliding) fails with its audit event.
    assert!(
        s.record_credential(&cred("c", "t"), 10, &[draft(1)])
            .await
            .is_err()
    );
    // A credential for a task that does not exist fails too.
    assert!(
        s.record_credential(&cred("d", "missing"), 10, &[draft(2)])
            .await
            .is_err()
    );
    let fresh = h.open().await;
    assert_eq!(fresh.audit_head().await.unwrap(), head);
    assert_eq!(fresh.count_credentials().await.unwrap(), 1);
    // And the store goes on.
    fresh
        .record_credential(&cred("e", "t"), 10, &[draft(3)])
        .await
        .unwrap()
        .unwrap();
}

/// A revocation that fails part-way (here: its second event cannot be
/// signed) stores nothing — no event, no revoked credential, no audit event —
/// and gives its sequence numbers back: the next revocation gets number 1.
pub async fn failed_revocation_hands_its_numbers_back(h: &dyn Harness) {
    let s = h.open().await;
    for t in ["a", "b"] {
        s.begin_task(&task(t), &[]).await.unwrap();
        s.record_credential(&cred(&format!("c-{t}"), t), 10, &[])
            .await
            .unwrap()
            .unwrap();
    }
    let head = s.audit_head().await.unwrap();
    let failing: SetSigner = Arc::new(|e| {
        if e.seq >= 2 {
            Err("signer failed".into())
        } else {
            Ok(format!("set-{}", e.seq))
        }
    });
    let scope = RevokeScope::Workload(HOLDER.into());
    assert!(s.revoke(&revoke_req(scope, None), failing).await.is_err());
    let fresh = h.open().await;
    assert_eq!(fresh.current_seq().await.unwrap(), 0);
    assert!(fresh.events_after(0, 10).await.unwrap().is_empty());
    assert_eq!(fresh.audit_head().await.unwrap(), head);
    for t in ["a", "b"] {
        let c = fresh.credential(&format!("c-{t}")).await.unwrap().unwrap();
        assert_eq!(c.revocation, None);
    }
    let scope = RevokeScope::Credential("c-b".into());
    let events = fresh
        .revoke(&revoke_req(scope, None), signer())
        .await
        .unwrap();
    assert_eq!(events[0].seq, 1);
}

/// Delegations begun while their parent task completes: each child is
/// either refused (the parent had ended) or begun and then ended by the
/// completion's cascade — none is left active under an ended parent.
pub async fn delegation_racing_complete_leaves_no_active_child(h: &dyn Harness) {
    const N: usize = 16;
    let s = h.open().await;
    s.begin_task(&task("parent"), &[]).await.unwrap();
    let child = |i: usize| {
        let s = s.clone();
        tokio::spawn(async move {
            let mut t = task(&format!("parent.c{i}"));
            t.parent = Some((HOLDER.into(), "parent".into()));
            t.depth = 1;
            s.begin_task(&t, &[]).await
        })
    };
    let mut begins: Vec<_> = (0..N / 2).map(child).collect();
    let complete = {
        let s = s.clone();
        tokio::spawn(async move {
            let scope = RevokeScope::Task {
                holder: HOLDER.into(),
                task_id: "parent".into(),
            };
            s.revoke(&revoke_req(scope, Some(TaskState::Completed)), signer())
                .await
                .unwrap()
        })
    };
    begins.extend((N / 2..N).map(child));
    let mut begun = Vec::new();
    for (i, b) in begins.into_iter().enumerate() {
        match b.await.unwrap() {
            Ok((t, true)) => begun.push(t.task_id),
            Err(super::StoreError::ParentEnded(TaskState::Completed)) => {}
            other => panic!("child {i}: {other:?}"),
        }
    }
    complete.await.unwrap();
    // Whatever came first, a delegation after the completion is refused.
    assert!(matches!(
        child(N).await.unwrap(),
        Err(super::StoreError::ParentEnded(TaskState::Completed))
    ));
    let fresh = h.open().await;
    for id in &begun {
        let t = fresh.task(HOLDER, id).await.unwrap().unwrap();
        assert_eq!(
            t.state,
            TaskState::Completed,
            "child `{id}` outlived its parent"
        );
    }
}

/// A subscriber name belongs to the first SPIFFE ID that acknowledged under
/// it, also when two race for it from two handles; only a rebind moves it.
pub async fn a_subscriber_name_cannot_be_taken_over(h: &dyn Harness) {
    let ack = |who: &str, seq| AckRecord {
        subscriber: "new-name".into(),
        spiffe_id: format!("spiffe://example.org/{who}"),
        acked_seq: seq,
        acked_at: 300,
    };
    let audit = || AuditDraft::new(kind::ACK, HOLDER, 300).subject("new-name");
    let (a, b) = (h.open().await, h.open().await);
    let (ra, rb) = tokio::join!(
        tokio::spawn({
            let (a, r, d) = (a.clone(), ack("x", 1), audit());
            async move { a.ack(&r, false, d).await }
        }),
        tokio::spawn({
            let (b, r, d) = (b.clone(), ack("y", 1), audit());
            async move { b.ack(&r, false, d).await }
        })
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let winner = match (&ra, &rb) {
        (Ok(w), Err(super::StoreError::SubscriberBound { bound_to, .. }))
        | (Err(super::StoreError::SubscriberBound { bound_to, .. }), Ok(w)) => {
            assert_eq!(*bound_to, w.spiffe_id);
            w.spiffe_id.clone()
        }
        other => panic!("one of two racing workloads gets the name: {other:?}"),
    };
    let loser = if winner.ends_with("/x") { "y" } else { "x" };
    assert!(matches!(
        a.ack(&ack(loser, 2), false, audit()).await,
        Err(super::StoreError::SubscriberBound { .. })
    ));
    let acks = h.open().await.acks().await.unwrap();
    assert_eq!(acks.len(), 1);
    assert_eq!(
        (acks[0].spiffe_id.as_str(), acks[0].acked_seq),
        (winner.as_str(), 1)
    );
    // A configured name moves to its configured ID.
    let moved = b.ack(&ack(loser, 2), true, audit()).await.unwrap();
    assert_eq!(moved.spiffe_id, format!("spiffe://example.org/{loser}"));
}

/// A fact appended "once" from many handles at the same time is recorded
/// once; another `ref_seq` or subject is another fact.
pub async fn audit_once_records_a_fact_once(h: &dyn Harness) {
    let fact = |subject: &str, seq: u64| {
        let mut d = AuditDraft::new(kind::DELIVERY_OVERDUE, HOLDER, 300).subject(subject);
        d.ref_seq = Some(seq);
        d
    };
    let mut calls = Vec::new();
    for _ in 0..2 {
        let s = h.open().await;
        for _ in 0..8 {
            let (s, d) = (s.clone(), fact("sidecar", 4));
            calls.push(tokio::spawn(async move {
                s.append_audit_once(d).await.unwrap()
            }));
        }
    }
    let mut appended = 0;
    for c in calls {
        appended += usize::from(c.await.unwrap());
    }
    assert_eq!(appended, 1, "one of the racing appends records the fact");
    let s = h.open().await;
    assert!(s.append_audit_once(fact("sidecar", 5)).await.unwrap());
    assert!(s.append_audit_once(fact("other", 4)).await.unwrap());
    assert!(!s.append_audit_once(fact("other", 4)).await.unwrap());
    let trail = s.audit_after(0, 100).await.unwrap();
    let facts: Vec<_> = trail
        .iter()
        .map(|e| (e.body.subject.as_str(), e.body.ref_seq))
        .collect();
    assert_eq!(
        facts,
        vec![
            ("sidecar", Some(4)),
            ("sidecar", Some(5)),
            ("other", Some(4))
        ]
    );
}

fn crl(number: u64, content: &str) -> StoredCrl {
    StoredCrl {
        number,
        content_hash: content.into(),
        der: format!("der {number} {content}").into_bytes(),
        this_update: 100,
        next_update: 200,
    }
}

/// The stored CRL is replaced only by compare-and-set on its number: a
/// stale expected number or a number that does not rise stores nothing, and
/// of replicas racing to store the next number exactly one wins.
pub async fn crl_is_replaced_by_compare_and_set(h: &dyn Harness) {
    let s = h.open().await;
    let none = s.stored_crl().await.unwrap();
    assert_eq!((none.number, none.der.len()), (0, 0));
    assert!(s.store_crl(0, &crl(1, "a")).await.unwrap());
    assert_eq!(h.open().await.stored_crl().await.unwrap(), crl(1, "a"));
    // A replica that read number 0 lost: nothing changes.
    assert!(!s.store_crl(0, &crl(1, "b")).await.unwrap());
    // Numbers never repeat or go backwards, even with the right expectation.
    assert!(!s.store_crl(1, &crl(1, "b")).await.unwrap());
    assert!(!s.store_crl(1, &crl(0, "b")).await.unwrap());
    assert_eq!(s.stored_crl().await.unwrap(), crl(1, "a"));
    assert!(s.store_crl(1, &crl(2, "b")).await.unwrap());

    const N: usize = 8;
    let mut replicas = Vec::new();
    for _ in 0..N {
        replicas.push(h.open().await);
    }
    // Every replica reads before any stores, as replicas that saw the same
    // change at once would.
    let read = Arc::new(tokio::sync::Barrier::new(N));
    let calls: Vec<_> = replicas
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let read = read.clone();
            tokio::spawn(async move {
                let seen = r.stored_crl().await.unwrap().number;
                read.wait().await;
                let mine = crl(seen + 1, &format!("r{i}"));
                r.store_crl(seen, &mine).await.unwrap().then_some(mine)
            })
        })
        .collect();
    let mut won = Vec::new();
    for c in calls {
        won.extend(c.await.unwrap());
    }
    assert_eq!(won.len(), 1, "exactly one replica stores number 3");
    assert_eq!(won[0].number, 3);
    assert_eq!(h.open().await.stored_crl().await.unwrap(), won[0]);
}

/// Instantiates the suite as `#[tokio::test]`s in the calling module, each
/// with a new harness from `$harness` (an expression evaluated per test).
macro_rules! store_conformance {
    ($harness:expr) => {
        $crate::store::conformance::store_conformance!(@tests $harness;
            commit_before_reply,
            revocation_sequence_is_gap_free,
            mint_racing_complete_leaves_nothing_active,
            one_renewal_per_credential,
            active_credential_limit_holds,
            task_is_begun_once,
            audit_chain_and_head,
            acks_never_move_backwards,
            pruning_takes_an_expired_prefix,
            failed_writes_store_nothing,
            failed_revocation_hands_its_numbers_back,
            delegation_racing_complete_leaves_no_active_child,
            audit_once_records_a_fact_once,
            a_subscriber_name_cannot_be_taken_over,
            crl_is_replaced_by_compare_and_set,
            holding_caps_hold_across_handles,
            repeated_events_are_chained_once_per_window,
            snapshot_is_read_in_pages,
            timeline_and_break_glass_are_paged,
            retention_prunes_aged_out_records,
            audit_is_pruned_behind_a_checkpoint
        );
    };
    (@tests $harness:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let h = $harness;
                $crate::store::conformance::$name(&h).await;
            }
        )*
    };
}

pub(crate) use store_conformance;
