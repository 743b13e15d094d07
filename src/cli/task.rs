//! `taskmint task begin|complete|show`.

use std::collections::HashMap;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{ConnArgs, parse_duration, rfc3339, status_line};
use crate::grpc::pb;

/// `task` subcommands.
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Begin a task with a hard deadline.
    Begin(BeginArgs),
    /// Complete a task, revoking every credential of it.
    Complete(RefArgs),
    /// Show a task and its credentials.
    Show(RefArgs),
}

/// Arguments of `task begin`.
#[derive(Debug, Args)]
pub struct BeginArgs {
    /// Task id.
    #[arg(long)]
    pub task: String,
    /// What the task is for.
    #[arg(long, default_value = "")]
    pub purpose: String,
    /// Ticket or change reference.
    #[arg(long, default_value = "")]
    pub ticket: String,
    /// Lifetime, e.g. 15m [default: the issuer's].
    #[arg(long, value_parser = parse_duration)]
    pub lifetime: Option<Duration>,
    /// Label KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Arguments naming a task.
#[derive(Debug, Args)]
pub struct RefArgs {
    /// Task id.
    #[arg(long)]
    pub task: String,
    /// Owner SPIFFE ID (admins only) [default: you].
    #[arg(long, default_value = "")]
    pub owner: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// A task as JSON.
pub fn task_json(t: &pb::Task) -> Value {
    let state = pb::TaskState::try_from(t.state).unwrap_or(pb::TaskState::Unspecified);
    json!({
        "task_id": t.task_id,
        "owner": t.owner,
        "state": state.as_str_name().trim_start_matches("TASK_STATE_").to_lowercase(),
        "purpose": t.purpose,
        "ticket": t.ticket,
        "labels": t.labels,
        "implicit": t.implicit,
        "created_at": rfc3339(t.created_at),
        "deadline": rfc3339(t.deadline),
        "ended_at": (t.ended_at != 0).then(|| rfc3339(t.ended_at)),
    })
}

pub(super) async fn run(cmd: TaskCommand) -> anyhow::Result<()> {
    match cmd {
        TaskCommand::Begin(a) => {
            let mut labels = HashMap::new();
            for l in &a.labels {
                let (k, v) = l
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--label `{l}` is not KEY=VALUE"))?;
                labels.insert(k.to_owned(), v.to_owned());
            }
            let mut c = a.conn.connect().await?;
            let t = c
                .begin_task(pb::BeginTaskRequest {
                    task_id: a.task,
                    purpose: a.purpose,
                    ticket: a.ticket,
                    lifetime_seconds: a.lifetime.map(|d| d.as_secs()).unwrap_or(0),
                    labels,
                })
                .await
                .map_err(|s| status_line(&s))?;
            if a.json {
                println!("{}", task_json(&t));
            } else {
                println!("task {} begun, deadline {}", t.task_id, rfc3339(t.deadline));
            }
        }
        TaskCommand::Complete(a) => {
            let mut c = a.conn.connect().await?;
            let task = Some(pb::TaskRef {
                task_id: a.task,
                owner: a.owner,
            });
            let r = c
                .complete_task_ref(task)
                .await
                .map_err(|s| status_line(&s))?;
            let revoked = r.revoked.unwrap_or_default();
            if a.json {
                let mut v = task_json(&r.task.unwrap_or_default());
                v["revoked"] = json!(revoked.revoked);
                v["seqs"] = json!(revoked.seqs);
                v["message"] = json!(revoked.message);
                println!("{v}");
            } else {
                println!("{}", revoked.message);
            }
        }
        TaskCommand::Show(a) => {
            let mut c = a.conn.connect().await?;
            let r = c
                .get_task(&a.task, &a.owner)
                .await
                .map_err(|s| status_line(&s))?;
            let mut v = task_json(&r.task.unwrap_or_default());
            v["credentials"] = r
                .credentials
                .iter()
                .map(|cs| {
                    let cred = cs.credential.clone().unwrap_or_default();
                    let mut j = super::status::status_json(&cs.status.clone().unwrap_or_default());
                    j["credential_id"] = json!(cred.id);
                    j["kind"] = json!(if cred.kind == pb::CredentialKind::X509 as i32 {
                        "x509"
                    } else {
                        "jwt"
                    });
                    j["audience"] = json!(cred.audience);
                    j["predecessor"] = json!(cs.predecessor);
                    j["renewal_count"] = json!(cs.renewal_count);
                    j
                })
                .collect();
            if a.json {
                println!("{v}");
            } else {
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
        }
    }
    Ok(())
}
