//! `taskmint health`, `taskmint delivery` and `taskmint completions`: the
//! operator's checks (is the issuer serving; did every expected subscriber
//! acknowledge its revocations) and shell completion scripts.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use super::out::{self, Exit, code};
use super::{ConnArgs, parse_duration, rfc3339, status_line};

/// Arguments of `health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// A service (e.g. `taskmint.v1.Issuer`) [default: the server as a whole].
    #[arg(long, default_value = "")]
    pub service: String,
    /// Keep asking (connecting again if need be) until it is serving, for at
    /// most this long, e.g. 30s.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub wait: Option<Duration>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: ConnArgs,
}

fn serving_text(s: tonic_health::ServingStatus) -> &'static str {
    match s {
        tonic_health::ServingStatus::Serving => "serving",
        tonic_health::ServingStatus::NotServing => "not_serving",
        tonic_health::ServingStatus::Unknown => "unknown",
    }
}

pub(super) async fn health(a: HealthArgs) -> anyhow::Result<()> {
    let deadline = a.wait.map(|w| Instant::now() + w);
    let status = loop {
        let attempt = async {
            let mut c = a.conn.connect().await?;
            c.health(&a.service).await.map_err(|s| status_line(&s))
        }
        .await;
        match (attempt, deadline) {
            (Ok(tonic_health::ServingStatus::Serving), _) => {
                break tonic_health::ServingStatus::Serving;
            }
            (Ok(s), Some(d)) if Instant::now() < d => {
                tracing::debug!(status = serving_text(s), "not serving yet");
            }
            (Err(e), Some(d)) if Instant::now() < d => {
                tracing::debug!(error = %format!("{e:#}"), "not reachable yet");
            }
            (Ok(s), _) => break s,
            (Err(e), _) => return Err(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let text = serving_text(status);
    if a.json {
        out::json(&json!({ "service": a.service, "status": text }))?;
    } else {
        out::line(text)?;
    }
    if status == tonic_health::ServingStatus::Serving {
        Ok(())
    } else {
        Err(Exit(code::NOT_SERVING).into())
    }
}

/// Arguments of `delivery`.
#[derive(Debug, Args)]
pub struct DeliveryArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub(super) async fn delivery(a: DeliveryArgs) -> anyhow::Result<()> {
    let mut c = a.conn.connect().await?;
    let d = c.delivery_status().await.map_err(|s| status_line(&s))?;
    let when = |t: i64| (t != 0).then(|| rfc3339(t));
    if a.json {
        let subscribers: Vec<_> = d
            .subscribers
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "spiffe_id": s.spiffe_id,
                    "acked_seq": s.acked_seq,
                    "acked_at": when(s.acked_at),
                    "overdue": s.overdue,
                    "oldest_unacked_seq": (s.oldest_unacked_seq != 0).then_some(s.oldest_unacked_seq),
                    "overdue_since": when(s.overdue_since),
                    "ssf_delivery": (!s.ssf_delivery.is_empty()).then_some(&s.ssf_delivery),
                })
            })
            .collect();
        out::json(&json!({ "current_seq": d.current_seq, "subscribers": subscribers }))?;
    } else {
        out::line(format_args!(
            "revocation feed at seq {}; {} expected subscriber(s)",
            d.current_seq,
            d.subscribers.len()
        ))?;
        for s in &d.subscribers {
            let acked = match when(s.acked_at) {
                Some(at) => format!("acknowledged through seq {} at {at}", s.acked_seq),
                None => "never acknowledged".to_owned(),
            };
            let state = if s.overdue {
                format!(
                    "OVERDUE since {}: seq {} not acknowledged within feed.ack_deadline",
                    when(s.overdue_since).unwrap_or_else(|| "-".into()),
                    s.oldest_unacked_seq
                )
            } else {
                "ok".to_owned()
            };
            let who = if s.ssf_delivery.is_empty() {
                s.spiffe_id.clone()
            } else {
                format!("SSF {} receiver", s.ssf_delivery)
            };
            out::line(format_args!("  {} ({who}): {acked}; {state}", s.name))?;
        }
    }
    if d.subscribers.iter().any(|s| s.overdue) {
        return Err(Exit(code::OVERDUE).into());
    }
    Ok(())
}

/// Arguments of `completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

pub(super) fn completions(a: CompletionsArgs) -> anyhow::Result<()> {
    use clap::CommandFactory as _;
    // Rendered in memory: the generator panics on a failed write.
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut super::Cli::command(), "taskmint", &mut script);
    out::bytes(&script)
}
