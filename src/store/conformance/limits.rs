//! Conformance: the holding caps (a workload's active tasks and subscriber
//! names), counted in the transaction that adds one, across handles.

use super::*;

/// A holder's active tasks are capped in the transaction that begins one:
/// many handles beginning tasks for one holder at once never exceed it, an
/// existing task is still found, and an ended task frees its place.
pub async fn holding_caps_hold_across_handles(h: &dyn Harness) {
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(h.open().await);
    }
    let mut racers = Vec::new();
    for i in 0..20 {
        let s = handles[i % handles.len()].clone();
        racers.push(tokio::spawn(async move {
            s.begin_task_within(&task(&format!("cap-{i}")), 5, &[])
                .await
        }));
    }
    let (mut begun, mut refused) = (0, 0);
    for r in racers {
        match r.await.unwrap() {
            Ok((_, true)) => begun += 1,
            Err(crate::store::StoreError::TooManyTasks { max: 5 }) => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((begun, refused), (5, 15));
    let s = &handles[0];
    // At the cap, an existing task is still answered, not refused.
    let active = s
        .active_tasks(&Default::default(), 200, None, 100)
        .await
        .unwrap();
    assert_eq!(active.len(), 5);
    let (_, created) = s.begin_task_within(&active[0], 5, &[]).await.unwrap();
    assert!(!created);
    // Another holder is not affected.
    let other = TaskRecord::new("spiffe://example.org/workload/other", "cap-x", 100, FAR);
    assert!(s.begin_task_within(&other, 5, &[]).await.unwrap().1);
    // An ended task no longer counts.
    let victim = active
        .iter()
        .find(|t| t.holder == HOLDER)
        .unwrap()
        .task_id
        .clone();
    s.revoke(
        &revoke_req(
            RevokeScope::Task {
                holder: HOLDER.into(),
                task_id: victim,
            },
            Some(TaskState::Completed),
        ),
        signer(),
    )
    .await
    .unwrap();
    assert!(
        s.begin_task_within(&task("cap-after"), 5, &[])
            .await
            .unwrap()
            .1
    );

    // Delegated tasks count for the delegator, not the delegate: no
    // workload can fill another's cap by delegating to it.
    let delegator = "spiffe://example.org/workload/delegator";
    let victim = "spiffe://example.org/workload/victim";
    assert!(
        s.begin_task_within(&TaskRecord::new(delegator, "parent", 100, FAR), 3, &[])
            .await
            .unwrap()
            .1
    );
    let child = |i: u32| {
        let mut c = TaskRecord::new(victim, &format!("child-{i}"), 100, FAR);
        c.parent = Some((delegator.into(), "parent".into()));
        c.depth = 1;
        c
    };
    for i in 0..2 {
        assert!(s.begin_task_within(&child(i), 3, &[]).await.unwrap().1);
    }
    assert!(matches!(
        s.begin_task_within(&child(2), 3, &[]).await,
        Err(crate::store::StoreError::TooManyTasks { max: 3 })
    ));
    assert!(
        s.begin_task_within(&TaskRecord::new(victim, "own", 100, FAR), 1, &[])
            .await
            .unwrap()
            .1,
        "the delegate's own cap is untouched"
    );

    // Subscriber names: one workload racing for new names from many handles
    // gets at most the cap; an existing name of its own is still acked.
    let mut racers = Vec::new();
    for i in 0..12 {
        let s = handles[i % handles.len()].clone();
        racers.push(tokio::spawn(async move {
            let r = AckRecord {
                subscriber: format!("name-{i}"),
                spiffe_id: HOLDER.into(),
                acked_seq: 0,
                acked_at: 300,
            };
            s.ack_within(&r, false, 3, AuditDraft::new(kind::ACK, HOLDER, 300))
                .await
        }));
    }
    let mut taken = Vec::new();
    for r in racers {
        match r.await.unwrap() {
            Ok(a) => taken.push(a.subscriber),
            Err(crate::store::StoreError::TooManySubscriberNames { max: 3 }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(taken.len(), 3, "{taken:?}");
    let again = AckRecord {
        subscriber: taken[0].clone(),
        spiffe_id: HOLDER.into(),
        acked_seq: 0,
        acked_at: 301,
    };
    s.ack_within(&again, false, 3, AuditDraft::new(kind::ACK, HOLDER, 301))
        .await
        .unwrap();
}
