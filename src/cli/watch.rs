//! `taskmint watch`: one JSON line per revocation, acknowledged as printed,
//! resuming by itself after a disconnect.

use clap::Args;
use serde_json::json;

use super::{ConnArgs, out, rfc3339, status_line};
use crate::client::WatchItem;
use crate::grpc::{pb, revocation_kind_text};

/// Arguments of `watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Resume after this sequence [default: start with a snapshot].
    #[arg(long)]
    pub after: Option<u64>,
    /// Subscriber name to acknowledge under.
    #[arg(long)]
    pub subscriber: Option<String>,
    /// Only this task id.
    #[arg(long)]
    pub task: Option<String>,
    /// Only this SPIFFE ID.
    #[arg(long)]
    pub spiffe_id: Option<String>,
    /// Only this trust domain.
    #[arg(long)]
    pub trust_domain: Option<String>,
    /// Print JSON lines (the only output; accepted for symmetry).
    #[arg(long)]
    pub json: bool,
    /// Stop after printing this many events (and acknowledging them).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Connection.
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub(super) async fn run(a: WatchArgs) -> anyhow::Result<()> {
    let client = a.conn.connect().await?;
    let mut acker = client.clone();
    let mut w = client.watcher(pb::WatchRevocationsRequest {
        after_seq: a.after,
        trust_domain: a.trust_domain.unwrap_or_default(),
        spiffe_id: a.spiffe_id.unwrap_or_default(),
        task_id: a.task.unwrap_or_default(),
        subscriber: a.subscriber.clone().unwrap_or_default(),
    });
    let mut acked = 0u64;
    let mut printed = 0u64;
    loop {
        let item = w.next().await.map_err(|s| status_line(&s))?;
        let ack_to = match item {
            WatchItem::Event(e) => {
                let line = json!({
                    "seq": e.seq,
                    "kind": revocation_kind_text(e.kind),
                    "credential_ids": e.credential_ids,
                    "task_id": e.task_id,
                    "task_holder": e.task_holder,
                    "spiffe_id": e.spiffe_id,
                    "reason": e.reason,
                    "revoked_at": rfc3339(e.revoked_at),
                    "expires_at": rfc3339(e.expires_at),
                    "set": e.set,
                });
                out::json(&line)?;
                printed += 1;
                w.cursor()
            }
            WatchItem::Synced(seq) | WatchItem::Heartbeat(seq) => Some(seq),
            WatchItem::Reconnecting { after_seq, reason } => {
                tracing::warn!(?after_seq, %reason, "watch stream broke; resuming");
                None
            }
        };
        if let (Some(name), Some(seq)) = (&a.subscriber, ack_to)
            && seq > acked
        {
            match acker.ack(name, seq).await {
                Ok(s) => acked = s,
                Err(e) => {
                    tracing::warn!(error = %e.message(), "acknowledgement failed; will retry")
                }
            }
        }
        if a.count.is_some_and(|n| printed >= n) {
            // Acknowledged above when a subscriber is named; a failed
            // acknowledgement is retried by the next watch.
            return Ok(());
        }
    }
}
