//! Revocation delivery: from the moment a `Revoke` RPC returns to the moment
//! each subscriber receives the event, for several subscriber counts, against
//! a real issuer (mTLS, a durable store, SET signing, policy and audit) on
//! loopback — or against several replicas of one, with subscribers and
//! revocations spread over them; and the server memory each idle subscriber
//! costs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Notify, mpsc};

use super::env::BenchEnv;
use super::load::percentile;
use super::proc_stats::{Proc, ServerProc, free_addr};
use taskmint::client::Client;
use taskmint::grpc::pb::{self, revoke_request::Target, watch_revocations_response::Msg};

/// Settings of one revocation-latency run.
#[derive(Debug, Clone)]
pub struct RevocationBench {
    /// Subscriber counts to measure, in order.
    pub subscribers: Vec<usize>,
    /// Revocations per subscriber count.
    pub events: usize,
    /// Pause after every subscriber has a revocation, before the next.
    pub gap: Duration,
    /// At most this many subscribers share one connection (HTTP/2 streams).
    pub streams_per_connection: usize,
}

/// The figures of one subscriber count.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyRow {
    /// Issuer replicas the subscribers and the revocations were spread over.
    pub replicas: usize,
    /// Subscribers watching.
    pub subscribers: usize,
    /// Connections they used.
    pub connections: usize,
    /// Revocations measured.
    pub events: usize,
    /// Deliveries measured (subscribers x events).
    pub deliveries: usize,
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Worst, milliseconds.
    pub max_ms: f64,
    /// Median latency of the Revoke RPC itself (commit + publish), ms.
    pub revoke_rpc_p50_ms: f64,
    /// Median from the moment the Revoke RPC was *sent* to receipt, ms.
    pub from_sent_p50_ms: f64,
    /// 99th percentile of the same, ms.
    pub from_sent_p99_ms: f64,
    /// Server RSS growth per idle subscriber, KiB (NaN without a child
    /// server to read).
    pub idle_kib_per_subscriber: f64,
    /// Median of the deliveries to a subscriber of another replica than the
    /// one that committed the revocation, ms (NaN with one replica).
    pub cross_p50_ms: f64,
    /// 99th percentile of the same, ms.
    pub cross_p99_ms: f64,
}

/// Runs the revocation benchmark against the issuer at `addrs` (replicas
/// of one issuer: subscriber `s` watches `addrs[s % len]`, revocation `i`
/// goes through `addrs[i % len]`); `server` is the first replica's process,
/// whose RSS is then read.
pub async fn latency_at(
    env: &BenchEnv,
    addrs: &[String],
    server: Option<Proc>,
    b: &RevocationBench,
) -> anyhow::Result<Vec<LatencyRow>> {
    let mut agents = Vec::with_capacity(addrs.len());
    for addr in addrs {
        agents.push(env.connect(addr, env.identity("agent")?).await?);
    }
    let mut rows = Vec::new();
    for &n in &b.subscribers {
        // Credentials to revoke, one task each, minted before anyone watches.
        let mut ids = Vec::with_capacity(b.events);
        for i in 0..b.events {
            let r = agents[0]
                .mint_jwt(&format!("bench-{n}-{i}"), "bench", None)
                .await
                .map_err(|s| anyhow::anyhow!("mint: {}", s.message()))?;
            ids.push(r.credential.map(|c| c.id).unwrap_or_default());
        }
        let start_seq = current_seq(&mut agents[0]).await?;

        let rss_before = server.map(|s| s.rss_mib());
        // At least one connection per replica.
        let connections = n.div_ceil(b.streams_per_connection.max(1)).max(addrs.len());
        let mut clients = Vec::with_capacity(connections);
        // Handshakes in parallel, a bounded number at a time.
        for chunk in (0..connections).collect::<Vec<_>>().chunks(64) {
            let mut set = tokio::task::JoinSet::new();
            for &k in chunk {
                let id = env.identity("sidecar")?;
                let server_id = spiffe::SpiffeId::new("spiffe://example.org/taskmint")?;
                let (addr, roots) = (addrs[k % addrs.len()].clone(), env.roots().to_vec());
                set.spawn(async move {
                    (
                        k,
                        Client::connect_with(&addr, Some(id), roots, server_id).await,
                    )
                });
            }
            while let Some(c) = set.join_next().await {
                let (k, c) = c?;
                clients.push((k, c?));
            }
        }
        // In order: connection `k` is to replica `k % len`.
        clients.sort_by_key(|(k, _)| *k);
        let clients: Vec<Client> = clients.into_iter().map(|(_, c)| c).collect();
        // Each watcher keeps its own arrival times (handed back at the end)
        // and counts arrivals per sequence number; the last arrival of an
        // event wakes the revoker. Nothing per delivery crosses tasks but the
        // count. Slots to spare: another event (the reaper expiring a task)
        // may take a sequence number between two revocations.
        let slots = 2 * b.events + 64;
        let arrived: Arc<Vec<AtomicUsize>> =
            Arc::new((0..slots).map(|_| AtomicUsize::new(0)).collect());
        let all_arrived = Arc::new(Notify::new());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
        let mut watchers = Vec::with_capacity(n);
        for s in 0..n {
            let mut c = clients[s % connections].clone();
            let ready_tx = ready_tx.clone();
            let (arrived, all_arrived) = (arrived.clone(), all_arrived.clone());
            let events = b.events;
            let mut stop = stop_rx.clone();
            watchers.push(tokio::spawn(async move {
                let req = pb::WatchRevocationsRequest {
                    after_seq: Some(start_seq),
                    subscriber: format!("bench-{s}"),
                    ..Default::default()
                };
                let mut times = Vec::with_capacity(events);
                let mut stream = c.watch_once(req).await?;
                loop {
                    let m = tokio::select! {
                        m = stream.message() => m?,
                        _ = stop.wait_for(|s| *s) => break,
                    };
                    let Some(m) = m else { break };
                    match m.msg {
                        Some(Msg::Synced(_)) => {
                            let _ = ready_tx.send(());
                        }
                        Some(Msg::Event(e)) => {
                            let at = Instant::now();
                            times.push((e.seq, at));
                            let slot = e.seq.saturating_sub(start_seq + 1) as usize;
                            if let Some(count) = arrived.get(slot)
                                && count.fetch_add(1, Ordering::AcqRel) + 1 == n
                            {
                                all_arrived.notify_one();
                            }
                        }
                        _ => {}
                    }
                }
                Ok::<_, tonic::Status>(times)
            }));
        }
        drop(ready_tx);
        for _ in 0..n {
            ready_rx
                .recv()
                .await
                .ok_or_else(|| anyhow::anyhow!("a subscriber failed before it was live"))?;
        }
        // Idle: every subscriber connected and synced, nothing to send.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_idle = server.map(|s| s.rss_mib());
        let kib_per_subscriber = match (rss_before, rss_idle) {
            (Some(a), Some(b)) => (b - a) * 1024.0 / n as f64,
            _ => f64::NAN,
        };

        // One revocation at a time: the next is sent once every subscriber
        // has the last (then `gap` later), so each delivery is measured
        // alone rather than queued behind the previous fan-out.
        let mut rpc = Vec::with_capacity(b.events);
        let mut sent = HashMap::with_capacity(b.events);
        for (i, id) in ids.iter().enumerate() {
            let replica = i % agents.len();
            let t0 = Instant::now();
            let r = agents[replica]
                .revoke(Target::CredentialId(id.clone()), "bench")
                .await
                .map_err(|s| anyhow::anyhow!("revoke: {}", s.message()))?;
            let t1 = Instant::now();
            rpc.push(t1.duration_since(t0).as_secs_f64() * 1e3);
            let [seq] = r.seqs[..] else {
                anyhow::bail!(
                    "revoke of `{id}` published {} events, not one",
                    r.seqs.len()
                );
            };
            let Some(count) = arrived.get(seq.saturating_sub(start_seq + 1) as usize) else {
                anyhow::bail!("event {seq} is beyond the {slots} sequence numbers counted");
            };
            sent.insert(seq, (t0, t1, replica));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while count.load(Ordering::Acquire) < n {
                if tokio::time::timeout_at(deadline, all_arrived.notified())
                    .await
                    .is_err()
                {
                    anyhow::bail!(
                        "event {seq}: only {} of {n} deliveries arrived",
                        count.load(Ordering::Acquire)
                    );
                }
            }
            tokio::time::sleep(b.gap).await;
        }
        let _ = stop_tx.send(true);
        let mut lat = Vec::with_capacity(n * b.events);
        let mut from_sent = Vec::with_capacity(n * b.events);
        let mut cross = Vec::new();
        for (s, w) in watchers.into_iter().enumerate() {
            let watching = (s % connections) % addrs.len();
            for (seq, at) in w.await?? {
                // Only the revocations sent here are measured.
                let Some((t0, t1, committed_on)) = sent.get(&seq) else {
                    continue;
                };
                if *committed_on != watching {
                    cross.push(at.saturating_duration_since(*t1).as_secs_f64() * 1e3);
                }
                // The event is published before the reply is written, so it
                // often reaches a subscriber before the reply reaches the
                // revoker: that counts as zero, not negative.
                lat.push(at.saturating_duration_since(*t1).as_secs_f64() * 1e3);
                from_sent.push(at.saturating_duration_since(*t0).as_secs_f64() * 1e3);
            }
        }
        drop(clients);
        lat.sort_by(f64::total_cmp);
        from_sent.sort_by(f64::total_cmp);
        rpc.sort_by(f64::total_cmp);
        cross.sort_by(f64::total_cmp);
        rows.push(LatencyRow {
            replicas: addrs.len(),
            subscribers: n,
            connections,
            events: b.events,
            deliveries: lat.len(),
            p50_ms: percentile(&lat, 0.50),
            p99_ms: percentile(&lat, 0.99),
            max_ms: lat.last().copied().unwrap_or(f64::NAN),
            revoke_rpc_p50_ms: percentile(&rpc, 0.50),
            from_sent_p50_ms: percentile(&from_sent, 0.50),
            from_sent_p99_ms: percentile(&from_sent, 0.99),
            idle_kib_per_subscriber: kib_per_subscriber,
            cross_p50_ms: percentile(&cross, 0.50),
            cross_p99_ms: percentile(&cross, 0.99),
        });
    }
    Ok(rows)
}

/// Runs the revocation benchmark on its own: a fresh trust domain and a
/// child issuer started from `exe`.
pub async fn revocation_latency(
    exe: &std::path::Path,
    b: &RevocationBench,
) -> anyhow::Result<Vec<LatencyRow>> {
    let env = BenchEnv::create("revocation")?;
    let addr = free_addr()?;
    let server = ServerProc::start(exe, &env.config, &addr, || env.probe(&addr)).await?;
    latency_at(&env, &[addr], Some(server.proc()), b).await
}

async fn current_seq(c: &mut Client) -> anyhow::Result<u64> {
    let mut s = c.watch_once(pb::WatchRevocationsRequest::default()).await?;
    while let Some(m) = s.message().await? {
        if let Some(Msg::Synced(x)) = m.msg {
            return Ok(x.seq);
        }
    }
    anyhow::bail!("feed ended before it synced")
}

/// Renders rows as a Markdown table.
pub fn table(rows: &[LatencyRow]) -> String {
    let mut out = String::from(
        "| replicas | subscribers | connections | events | deliveries | p50 ms | p99 ms | max ms | Revoke RPC p50 ms | sent->received p50 ms | sent->received p99 ms | other replica p50 ms | other replica p99 ms | idle KiB/subscriber |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} |\n",
            r.replicas,
            r.subscribers,
            r.connections,
            r.events,
            r.deliveries,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.revoke_rpc_p50_ms,
            r.from_sent_p50_ms,
            r.from_sent_p99_ms,
            r.cross_p50_ms,
            r.cross_p99_ms,
            r.idle_kib_per_subscriber
        ));
    }
    out
}
