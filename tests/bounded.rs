//! Bounded storage: a flood of every cheap call grows the database by a
//! bounded amount, by the design of the store (repeated events are chained
//! once per window with a count), not by the rate limiter, which this test
//! opens wide. The figures are printed for the README's "Bounded storage".

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use sqlx::Row;

/// How long each call is flooded.
const FLOOD: Duration = Duration::from_secs(10);
/// `store.use_interval` in this test: short, so windows close during the
/// flood and their summaries are part of what is measured.
const USE_INTERVAL_SECS: u64 = 2;

/// The database as a reader sees it: its size in bytes (pages in use,
/// WAL included, whatever was checkpointed) and the rows of each table.
async fn measure(db: &std::path::Path) -> (u64, Vec<(&'static str, i64)>) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}?mode=ro", db.display()))
        .await
        .unwrap();
    let pages: i64 = sqlx::query("PRAGMA page_count")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    let page_size: i64 = sqlx::query("PRAGMA page_size")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    let mut rows = Vec::new();
    for table in [
        "audit",
        "audit_repeats",
        "tasks",
        "credentials",
        "revocations",
        "subscriber_acks",
        "crl",
    ] {
        let n: i64 = sqlx::query(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
        rows.push((table, n));
    }
    pool.close().await;
    ((pages * page_size) as u64, rows)
}

fn rows_of(rows: &[(&str, i64)], table: &str) -> i64 {
    rows.iter().find(|(t, _)| *t == table).unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_cheap_calls_grows_the_store_by_a_bounded_amount() {
    let mut s = start_with(|t| {
        t.replace(
            "rate = { per_second = 100.0, burst = 200 }",
            "rate = { per_second = 1000000.0, burst = 1000000 }",
        )
        .replace(
            "[store]\n",
            &format!("[store]\nuse_interval = \"{USE_INTERVAL_SECS}s\"\n"),
        )
    })
    .await;
    assert_eq!(s.cfg.store.use_interval.as_secs(), USE_INTERVAL_SECS);
    let mut agent = s.client("agent").await;
    let minted = agent.mint_jwt("flood", "db", None).await.unwrap();
    let cred = minted.credential.unwrap().id;
    let mut sidecar = s.client("sidecar").await;
    sidecar.ack("sidecar", 0).await.unwrap();
    let crl_before = agent.crl().await.unwrap();
    let db = s.cfg.store.path.clone().unwrap();
    // Let the reaper's first rounds (and the CRL's first store) settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (size_before, rows_before) = measure(&db).await;

    type Client = taskmint::client::Client;
    type Call =
        fn(Client, String) -> std::pin::Pin<Box<dyn Future<Output = Client> + Send + 'static>>;
    let calls: Vec<(&str, &str, Call)> = vec![
        ("CheckStatus", "agent", |mut c, id| {
            Box::pin(async move {
                c.check_status(&id).await.unwrap();
                c
            })
        }),
        ("CheckStatus of unknown ids", "agent", |mut c, _| {
            Box::pin(async move {
                let guess = hex::encode(rand::random::<[u8; 16]>());
                c.check_status(&guess).await.unwrap();
                c
            })
        }),
        ("GetTask", "agent", |mut c, _| {
            Box::pin(async move {
                c.get_task("flood", "").await.unwrap();
                c
            })
        }),
        ("GetTaskTimeline", "agent", |mut c, _| {
            Box::pin(async move {
                c.task_timeline_page("flood", "", 10, "").await.unwrap();
                c
            })
        }),
        ("GetCrl", "agent", |mut c, _| {
            Box::pin(async move {
                c.crl().await.unwrap();
                c
            })
        }),
        ("GetTrustBundle", "agent", |mut c, _| {
            Box::pin(async move {
                c.trust_bundle().await.unwrap();
                c
            })
        }),
        ("AckRevocations", "sidecar", |mut c, _| {
            Box::pin(async move {
                c.ack("sidecar", 0).await.unwrap();
                c
            })
        }),
        ("MintJwt denied by policy", "agent", |mut c, _| {
            Box::pin(async move {
                // The dev policy permits at most 900 s. A new task id
                // each call: what the caller chooses opens no new window.
                let task = format!(
                    "flood-{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_nanos()
                );
                let err = c
                    .mint_jwt(&task, "db", Some(Duration::from_secs(1200)))
                    .await
                    .unwrap_err();
                assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
                c
            })
        }),
    ];
    let counts: Vec<Arc<AtomicU64>> = calls.iter().map(|_| Arc::default()).collect();
    let deadline = Instant::now() + FLOOD;
    let mut floods = Vec::new();
    for ((_, who, call), count) in calls.iter().zip(&counts) {
        // Two connections per call, each calling back to back.
        for _ in 0..2 {
            let (call, count, id) = (*call, count.clone(), cred.clone());
            let mut c = s.client(who).await;
            floods.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    c = call(c, id.clone()).await;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    for f in floods {
        f.await.unwrap();
    }
    let (size_after, rows_after) = measure(&db).await;

    let total: u64 = counts.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    eprintln!(
        "flood of {}s, use_interval {USE_INTERVAL_SECS}s:",
        FLOOD.as_secs()
    );
    for ((name, _, _), n) in calls.iter().zip(&counts) {
        eprintln!("  {name}: {} calls", n.load(Ordering::Relaxed));
        assert!(n.load(Ordering::Relaxed) >= 20, "{name} was hardly called");
    }
    eprintln!(
        "  {total} calls; database {size_before} -> {size_after} bytes (+{})",
        size_after.saturating_sub(size_before)
    );
    for ((table, before), (_, after)) in rows_before.iter().zip(&rows_after) {
        eprintln!("  {table}: {before} -> {after} rows");
    }

    // The bound, by design: each key (caller, kind, task, credential,
    // decision, policies, subject) chains at most two events per window
    // (its first, and the count of its repeats) and keeps one row of
    // `audit_repeats` while its window is open. This flood has 4 keys:
    // status checks of the credential, checks of unknown ids (one key per
    // checker, whatever the id), task reads (GetTask and GetTaskTimeline
    // alike), and the denial; GetCrl, GetTrustBundle and an ack that does
    // not advance write nothing.
    let windows = FLOOD.as_secs() / USE_INTERVAL_SECS + 2;
    let keys = 4;
    let audit_growth = rows_of(&rows_after, "audit") - rows_of(&rows_before, "audit");
    assert!(
        audit_growth as u64 <= keys * 2 * windows,
        "{audit_growth} audit rows for {total} calls"
    );
    assert!(rows_of(&rows_after, "audit_repeats") <= keys as i64);
    for table in [
        "tasks",
        "credentials",
        "revocations",
        "subscriber_acks",
        "crl",
    ] {
        assert_eq!(
            rows_of(&rows_after, table),
            rows_of(&rows_before, table),
            "{table} grew"
        );
    }
    assert!(
        size_after <= size_before + 256 * 1024,
        "the database grew from {size_before} to {size_after} bytes"
    );

    // The CRL is signed once per change: a flood of GetCrl signed nothing.
    let crl_after = agent.crl().await.unwrap();
    assert_eq!(crl_after.crl_number, crl_before.crl_number);
    assert_eq!(crl_after.crl, crl_before.crl);

    // The use signal is still there, with its count, and the timeline is
    // short enough to read in one page.
    let timeline = agent.task_timeline("flood", "").await.unwrap();
    assert!(timeline.events.len() < 100, "{}", timeline.events.len());
    assert!(
        timeline
            .events
            .iter()
            .any(|e| e.credential_id == cred && e.reason.starts_with("repeated ")),
        "no count of the repeated status checks in the timeline"
    );
    s.stop().await;
    let n = taskmint::cli::verify_audit_store(&db).await.unwrap();
    assert!(n > 0);
}
