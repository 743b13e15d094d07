//! The store fills up under mixed mints and revocations, then gets room
//! again: every revocation answered OK is committed (present after a
//! restart, with contiguous, never-reused sequence numbers), every failure is
//! UNAVAILABLE naming the condition, nothing uncommitted reaches a watcher,
//! and writes resume by themselves once there is room.
//!
//! The store is capped with SQLite's `max_page_count` on the writer's
//! connection, which fails a write exactly as a full disk does ("database or
//! disk is full"), so no small filesystem is needed.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use taskmint::client::WatchItem;
use taskmint::grpc::pb;
use taskmint::server::Server;
use taskmint::store::{SqliteStore, Store};

/// Runs the real server on the test server's address and config, keeping a
/// handle on its store.
async fn boot(
    s: &common::TestServer,
) -> (
    Arc<SqliteStore>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind(s.addr).await.unwrap();
    let server = Server::build(s.cfg.clone()).await.unwrap();
    let store = server.sqlite_store().expect("a SQLite store").clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let join = tokio::spawn(async move {
        server
            .run(listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (store, tx, join)
}

/// Concurrent callers filling the store.
const WORKERS: usize = 4;

/// What one caller got through, and what was refused.
#[derive(Default)]
struct Filled {
    calls: usize,
    acked: BTreeMap<u64, String>,
    minted: Vec<String>,
    refusals: usize,
    revoke_refusals: usize,
}

fn revoke_target(id: &str) -> pb::revoke_request::Target {
    pb::revoke_request::Target::CredentialId(id.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_acknowledges_nothing_it_did_not_commit_and_recovers() {
    let mut s = common::start().await;
    s.stop().await;
    let (store, stop, join) = boot(&s).await;

    let mut agent = s.client("agent").await;
    let mut watcher = s
        .client("sidecar")
        .await
        .watcher(pb::WatchRevocationsRequest {
            after_seq: Some(0),
            ..Default::default()
        });
    assert_eq!(watcher.next().await.unwrap(), WatchItem::Synced(0));
    // Collects what the watcher sees live, up to the revocation made once
    // the store has room again (reason `after`).
    let live = tokio::spawn(async move {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let item = tokio::time::timeout_at(deadline, watcher.next()).await;
            if let Ok(Ok(WatchItem::Event(e))) = item {
                let last = e.reason == "after";
                seen.push((e.seq, e.credential_ids));
                if last {
                    return seen;
                }
            } else if item.is_err() {
                return seen;
            }
        }
    });

    // Room for a little more than what is there now.
    let pages = store.set_max_pages(Some(1)).await.unwrap();
    store.set_max_pages(Some(pages + 16)).await.unwrap();

    // Mixed mints and revocations from several callers at once (so the
    // writer's batches hold several jobs, and a batch that fails takes
    // others' work with it) until the store has refused for a while.
    let refused = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for w in 0..WORKERS {
        let mut agent = s.client("agent").await;
        let refused = refused.clone();
        callers.push(tokio::spawn(async move {
            let mut out = Filled::default();
            let mut minted: Vec<String> = Vec::new();
            let mut i = 0;
            while refused.load(Ordering::SeqCst) < 30 {
                assert!(i < 5000, "the capped store never filled");
                i += 1;
                out.calls += 1;
                let result = if i % 3 == 0 && !minted.is_empty() {
                    let id = minted.remove(0);
                    match agent.revoke(revoke_target(&id), "full-test").await {
                        Ok(r) => {
                            assert_eq!(r.seqs.len(), 1, "{r:?}");
                            out.acked.insert(r.seqs[0], id);
                            Ok(())
                        }
                        Err(st) => {
                            // Not revoked: it stays on the list to try again.
                            minted.push(id);
                            out.revoke_refusals += 1;
                            Err(st)
                        }
                    }
                } else {
                    agent
                        .mint_jwt(&format!("full-{w}-{}", i % 7), "db", None)
                        .await
                        .map(|m| {
                            let id = m.credential.unwrap().id;
                            out.minted.push(id.clone());
                            minted.push(id)
                        })
                };
                if let Err(st) = result {
                    assert_eq!(st.code(), tonic::Code::Unavailable, "{st:?}");
                    assert!(
                        st.message().contains("the database disk is full"),
                        "{}",
                        st.message()
                    );
                    out.refusals += 1;
                    refused.fetch_add(1, Ordering::SeqCst);
                }
            }
            out
        }));
    }
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut all_minted = Vec::new();
    let (mut calls, mut refusals, mut revoke_refusals) = (0, 0, 0);
    for c in callers {
        let f = c.await.unwrap();
        acked.extend(f.acked);
        all_minted.extend(f.minted);
        calls += f.calls;
        refusals += f.refusals;
        revoke_refusals += f.revoke_refusals;
    }
    assert!(
        !acked.is_empty(),
        "no revocation got through before the store filled"
    );
    assert!(
        revoke_refusals >= 5,
        "only {revoke_refusals} revocations were refused"
    );
    eprintln!(
        "capped at {} pages, {WORKERS} callers: {calls} calls, {} mints and {} revocations \
         answered OK, {refusals} refused UNAVAILABLE ({revoke_refusals} of them revocations)",
        pages + 16,
        all_minted.len(),
        acked.len()
    );
    let last_ok = *acked.keys().last().unwrap();
    let seqs: Vec<u64> = acked.keys().copied().collect();
    assert_eq!(
        seqs,
        (1..=last_ok).collect::<Vec<_>>(),
        "OK'd sequence numbers are contiguous"
    );

    // The server is still up, and once there is room again writes succeed
    // without a restart; the next sequence number follows the last OK'd one.
    assert_eq!(
        agent.health("").await.unwrap(),
        tonic_health::ServingStatus::Serving
    );
    store.set_max_pages(None).await.unwrap();
    let m = agent.mint_jwt("after-full", "db", None).await.unwrap();
    let id = m.credential.unwrap().id;
    let r = agent.revoke(revoke_target(&id), "after").await.unwrap();
    assert_eq!(
        r.seqs,
        vec![last_ok + 1],
        "a sequence number is never handed out twice"
    );
    acked.insert(last_ok + 1, id);

    // Everything the watcher saw live was committed, in order.
    let seen = live.await.unwrap();
    let seen_seqs: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
    assert_eq!(seen_seqs, (1..=last_ok + 1).collect::<Vec<_>>());
    for (seq, ids) in &seen {
        assert_eq!(ids, &vec![acked[seq].clone()]);
    }

    // After a restart every OK'd revocation is there, with its number.
    stop.send(()).unwrap();
    join.await.unwrap();
    let reopened = SqliteStore::open(s.cfg.store.path.as_deref().unwrap())
        .await
        .unwrap();
    let log = reopened.events_after(0, 10_000).await.unwrap();
    let logged: BTreeMap<u64, String> = log
        .iter()
        .map(|e| (e.seq, e.credential_ids.join(",")))
        .collect();
    assert_eq!(logged, acked);
    for (seq, id) in &acked {
        let c = reopened.credential(id).await.unwrap().unwrap();
        assert_eq!(c.revocation.map(|r| r.seq), Some(*seq));
    }
    // And every mint that was answered OK is stored.
    for id in &all_minted {
        assert!(reopened.credential(id).await.unwrap().is_some(), "{id}");
    }
    reopened.close().await;
    let n = taskmint::cli::verify_audit_store(s.cfg.store.path.as_deref().unwrap())
        .await
        .unwrap();
    assert!(n > 0);
}
