//! The revocation feed: gap-free ordering under concurrent revokers, resume
//! across a restart, a slow subscriber cut off and resumed with nothing
//! lost, snapshot contents, signed SETs, and delivery evidence.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use taskmint::client::{Client, WatchItem};
use taskmint::grpc::pb::{self, revoke_request::Target, watch_revocations_response::Msg};
use taskmint::store::Store;
use tonic::Code;

fn watch_req(after: Option<u64>) -> pb::WatchRevocationsRequest {
    pb::WatchRevocationsRequest {
        after_seq: after,
        ..Default::default()
    }
}

/// Mints `n` JWTs as `c`, one task each, and returns their ids.
async fn mint_many(c: &mut Client, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let r = c
            .mint_jwt(&format!("{prefix}-{i}"), "db", None)
            .await
            .unwrap();
        ids.push(r.credential.unwrap().id);
    }
    ids
}

/// Reads a raw stream until an event with `seq >= last` arrives; returns
/// every event seq seen, in order.
async fn collect_until(
    stream: &mut tonic::Streaming<pb::WatchRevocationsResponse>,
    last: u64,
) -> Vec<u64> {
    let mut seen = Vec::new();
    let read = async {
        while let Some(m) = stream.message().await.unwrap() {
            if let Some(Msg::Event(e)) = m.msg {
                seen.push(e.seq);
                if e.seq >= last {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("watcher stalled");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_revokers_three_watchers_every_seq_once_in_order() {
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    let ids = mint_many(&mut agent, "conc", 80).await;

    let mut watchers = Vec::new();
    for _ in 0..3 {
        let mut c = s.client("sidecar").await;
        let mut stream = c.watch_once(watch_req(Some(0))).await.unwrap();
        // Wait for `synced` so the watcher is live before revocations start.
        let first = stream.message().await.unwrap().unwrap();
        assert!(matches!(
            first.msg,
            Some(Msg::Synced(pb::Synced { seq: 0 }))
        ));
        watchers.push(tokio::spawn(
            async move { collect_until(&mut stream, 80).await },
        ));
    }
    let mut revokers = Vec::new();
    for chunk in ids.chunks(10) {
        let mut c = agent.clone();
        let chunk = chunk.to_vec();
        revokers.push(tokio::spawn(async move {
            for id in chunk {
                let r = c
                    .revoke(Target::CredentialId(id), "concurrency")
                    .await
                    .unwrap();
                assert_eq!(r.seqs.len(), 1);
            }
        }));
    }
    for r in revokers {
        r.await.unwrap();
    }
    let expected: Vec<u64> = (1..=80).collect();
    for w in watchers {
        assert_eq!(w.await.unwrap(), expected);
    }
    s.stop().await;
}

#[tokio::test]
async fn a_watcher_resumes_across_a_server_restart_without_gap_or_duplicate() {
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    let ids = mint_many(&mut agent, "restart", 5).await;
    let watcher_client = s.client("sidecar").await;
    let mut w = watcher_client.watcher(watch_req(None));
    assert_eq!(w.next().await.unwrap(), WatchItem::Synced(0));
    for id in &ids[..3] {
        agent
            .revoke(Target::CredentialId(id.clone()), "")
            .await
            .unwrap();
    }
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        if let WatchItem::Event(e) = w.next().await.unwrap() {
            seqs.push(e.seq);
        }
    }
    s.restart().await;
    let mut agent = s.client("agent").await;
    for id in &ids[3..] {
        agent
            .revoke(Target::CredentialId(id.clone()), "")
            .await
            .unwrap();
    }
    let mut reconnected = false;
    let next = async {
        while seqs.len() < 5 {
            match w.next().await.unwrap() {
                WatchItem::Event(e) => seqs.push(e.seq),
                WatchItem::Reconnecting { after_seq, .. } => {
                    assert_eq!(after_seq, Some(3));
                    reconnected = true;
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), next)
        .await
        .expect("never resumed");
    assert!(reconnected);
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    s.stop().await;
}

#[tokio::test]
async fn a_slow_subscriber_is_cut_off_and_resumes_with_nothing_lost() {
    let mut s =
        start_with(|t| t.replace("subscriber_buffer = 1024", "subscriber_buffer = 4")).await;
    let mut agent = s.client("agent").await;
    let n = 150;
    mint_many(&mut agent, "slow", n).await;
    let mut slow = s.client("sidecar").await;
    let mut stream = slow.watch_once(watch_req(Some(0))).await.unwrap();
    // One revocation of the workload: one event per task, 150 events at once,
    // far more than the HTTP/2 window plus the 4-message buffer.
    let mut admin = s.client("admin").await;
    let r = admin
        .revoke(
            Target::SpiffeId("spiffe://example.org/workload/agent".into()),
            "",
        )
        .await
        .unwrap();
    assert_eq!(r.seqs.len(), n);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut seen = BTreeSet::new();
    let mut last = 0;
    let cut = loop {
        match stream.message().await {
            Ok(Some(m)) => {
                if let Some(Msg::Event(e)) = m.msg {
                    assert_eq!(e.seq, last + 1, "in order, no gap");
                    last = e.seq;
                    assert!(seen.insert(e.seq));
                }
            }
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(cut.code(), Code::Aborted, "{cut:?}");
    let resume: u64 = cut
        .message()
        .rsplit("after_seq=")
        .next()
        .and_then(|n| n.parse().ok())
        .expect("the status names the cursor");
    assert_eq!(
        resume, last,
        "resume exactly after the last delivered event"
    );
    assert!(last < n as u64, "the subscriber was cut off before the end");

    let mut rest = slow.watch_once(watch_req(Some(resume))).await.unwrap();
    for seq in collect_until(&mut rest, n as u64).await {
        assert!(seen.insert(seq), "duplicate {seq}");
    }
    assert_eq!(seen, (1..=n as u64).collect(), "nothing lost");
    s.stop().await;
}

#[tokio::test]
async fn the_snapshot_holds_exactly_the_unexpired_revocations() {
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    let brief = agent
        .mint_jwt("snap-1", "db", Some(Duration::from_secs(1)))
        .await
        .unwrap()
        .credential
        .unwrap();
    let long = agent
        .mint_jwt("snap-2", "db", None)
        .await
        .unwrap()
        .credential
        .unwrap();
    agent
        .revoke(Target::CredentialId(brief.id.clone()), "")
        .await
        .unwrap();
    agent
        .revoke(Target::CredentialId(long.id.clone()), "")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let mut sidecar = s.client("sidecar").await;
    let mut stream = sidecar.watch_once(watch_req(None)).await.unwrap();
    let mut events = Vec::new();
    let synced = loop {
        match stream.message().await.unwrap().unwrap().msg {
            Some(Msg::Event(e)) => events.push(e),
            Some(Msg::Synced(s)) => break s.seq,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(synced, 2);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].credential_ids, vec![long.id]);
    assert_eq!(events[0].seq, 2);

    // A cursor older than the retained log asks for a resync.
    let store = s.store().await;
    store.prune_events(i64::MAX).await.unwrap();
    let err = sidecar.watch_once(watch_req(Some(0))).await;
    let err = match err {
        Err(e) => e,
        Ok(mut st) => st.message().await.unwrap_err(),
    };
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.message().contains("resync"), "{}", err.message());
    s.stop().await;
}

#[tokio::test]
async fn each_event_carries_a_set_verifiable_with_the_served_jwks() {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::Jwk};
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    let one = agent
        .mint_jwt("set-1", "db", None)
        .await
        .unwrap()
        .credential
        .unwrap();
    agent.mint_jwt("set-2", "db", None).await.unwrap();
    agent
        .revoke(Target::CredentialId(one.id.clone()), "leaked")
        .await
        .unwrap();
    agent.complete_task("set-2").await.unwrap();

    let bundle = agent.trust_bundle().await.unwrap();
    let jwks: serde_json::Value = serde_json::from_str(&bundle.spiffe_bundle_jwks).unwrap();
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["use"] == "jwt-svid")
        .unwrap();
    let jwk: Jwk = serde_json::from_value(key.clone()).unwrap();
    let dk = DecodingKey::from_jwk(&jwk).unwrap();
    let mut v = Validation::new(Algorithm::ES256);
    v.validate_exp = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();

    let mut stream = agent.watch_once(watch_req(Some(0))).await.unwrap();
    let mut events = Vec::new();
    while events.len() < 2 {
        if let Some(Msg::Event(e)) = stream.message().await.unwrap().unwrap().msg {
            events.push(e);
        }
    }
    let caep = "https://schemas.openid.net/secevent/caep/event-type/";
    let mut jtis = Vec::new();
    for (e, event_type) in events.iter().zip(["credential-change", "session-revoked"]) {
        let header = jsonwebtoken::decode_header(&e.set).unwrap();
        assert_eq!(header.typ.as_deref(), Some("secevent+jwt"));
        assert_eq!(header.kid.as_deref(), key["kid"].as_str());
        let claims = jsonwebtoken::decode::<serde_json::Value>(&e.set, &dk, &v)
            .unwrap()
            .claims;
        assert_eq!(claims["iss"], "spiffe://example.org/taskmint");
        assert_eq!(claims["sub_id"]["uri"], e.spiffe_id.as_str());
        assert_eq!(claims["taskmint"]["seq"], e.seq);
        // 128 random bits: unique across replicas and deployments.
        let jti = claims["jti"].as_str().unwrap().to_owned();
        assert!(jti.len() == 32 && hex::decode(&jti).is_ok(), "{jti}");
        jtis.push(jti);
        assert_eq!(
            claims["taskmint"]["credential_ids"],
            serde_json::json!(e.credential_ids)
        );
        assert!(
            claims["events"][format!("{caep}{event_type}")].is_object(),
            "{claims}"
        );
    }
    assert_ne!(jtis[0], jtis[1]);
    assert_eq!(events[0].kind, pb::RevocationKind::Credential as i32);
    assert_eq!(events[0].reason, "leaked");
    assert_eq!(events[1].kind, pb::RevocationKind::Task as i32);
    assert_eq!(events[1].reason, "task_completed");
    s.stop().await;
}

#[tokio::test]
async fn an_unacknowledged_revocation_is_reported_overdue_then_cleared() {
    // Times are whole seconds: a 3 s deadline cannot pass by rounding alone
    // between the revoke and the first status call.
    let mut s = start_with(|t| t.replace("ack_deadline = \"30s\"", "ack_deadline = \"3s\"")).await;
    let mut agent = s.client("agent").await;
    let mut sidecar = s.client("sidecar").await;
    let mut admin = s.client("admin").await;
    let c = agent
        .mint_jwt("ack-1", "db", None)
        .await
        .unwrap()
        .credential
        .unwrap();
    let seq = agent
        .revoke(Target::CredentialId(c.id), "")
        .await
        .unwrap()
        .seqs[0];

    let status = admin.delivery_status().await.unwrap();
    assert_eq!(status.current_seq, seq);
    assert!(!status.subscribers[0].overdue, "not yet past the deadline");
    tokio::time::sleep(Duration::from_millis(4100)).await;
    let status = admin.delivery_status().await.unwrap();
    let sub = &status.subscribers[0];
    assert_eq!(sub.name, "sidecar");
    assert!(sub.overdue);
    assert_eq!(sub.oldest_unacked_seq, seq);

    // Only the configured SPIFFE ID may acknowledge for `sidecar`.
    let err = agent.ack("sidecar", seq).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = sidecar.ack("sidecar", seq + 10).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(sidecar.ack("sidecar", seq).await.unwrap(), seq);
    assert_eq!(
        sidecar.ack("sidecar", 0).await.unwrap(),
        seq,
        "never lowers"
    );
    let status = admin.delivery_status().await.unwrap();
    assert!(!status.subscribers[0].overdue);
    assert_eq!(status.subscribers[0].acked_seq, seq);

    let err = agent.delivery_status().await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // An unlisted name belongs to the first workload that acknowledged under it.
    agent.ack("agent-local", seq).await.unwrap();
    let err = sidecar.ack("agent-local", seq).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    s.stop().await;
}

/// A snapshot and a replay larger than a page of the log (512 events):
/// every event once, in order, across the page boundaries, then `synced`.
#[tokio::test]
async fn a_snapshot_and_a_replay_larger_than_a_page_miss_nothing() {
    const TASKS: u64 = 1000;
    let mut s = start().await;
    let store = s.store().await;
    store.seed_credentials(1100, now()).await.unwrap();
    store.close().await;
    let mut admin = s.client("admin").await;
    let r = admin
        .revoke(Target::TrustDomain(TD.into()), "incident")
        .await
        .unwrap();
    assert_eq!(r.seqs.len() as u64, TASKS, "one event per seeded task");

    let read = |after: Option<u64>| {
        let s = &s;
        async move {
            let mut sidecar = s.client("sidecar").await;
            let mut stream = sidecar.watch_once(watch_req(after)).await.unwrap();
            let mut seqs = Vec::new();
            let synced = loop {
                match stream.message().await.unwrap().unwrap().msg {
                    Some(Msg::Event(e)) => seqs.push(e.seq),
                    Some(Msg::Synced(s)) => break s.seq,
                    other => panic!("unexpected {other:?}"),
                }
            };
            (seqs, synced)
        }
    };
    let (seqs, synced) = read(None).await;
    assert_eq!(synced, TASKS);
    assert_eq!(seqs, (1..=TASKS).collect::<Vec<_>>());
    let (seqs, synced) = read(Some(511)).await;
    assert_eq!(synced, TASKS);
    assert_eq!(seqs, (512..=TASKS).collect::<Vec<_>>());
    s.stop().await;
}
