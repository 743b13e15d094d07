//! `taskmint task begin|complete|show`.

use std::collections::HashMap;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::out;
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
    /// Hand part of a task to another workload (a sub-agent).
    Delegate(DelegateArgs),
}

/// Arguments of `task delegate`.
#[derive(Debug, Args)]
pub struct DelegateArgs {
    /// The parent task (yours).
    #[arg(long)]
    pub task: String,
    /// SPIFFE ID of the delegate.
    #[arg(long)]
    pub to: String,
    /// Audience for the child task (repeatable; a subset of the parent's).
    #[arg(long = "aud", required = true)]
    pub audiences: Vec<String>,
    /// Lifetime, e.g. 5m [default: until the parent's deadline].
    #[arg(long, value_parser = parse_duration)]
    pub lifetime: Option<Duration>,
    /// Child task id [default: the parent's plus a random suffix].
    #[arg(long)]
    pub child: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: ConnArgs,
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
    #[arg(long)]
    pub ticket: Option<String>,
    /// Lifetime, e.g. 15m [default: the issuer's].
    #[arg(long, value_parser = parse_duration)]
    pub lifetime: Option<Duration>,
    /// Label KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Accountable owner (team or person) [default: from the ownership rules].
    #[arg(long)]
    pub owner: Option<String>,
    /// Restrict the task's JWTs to this audience (repeatable).
    #[arg(long = "aud")]
    pub audiences: Vec<String>,
    /// Emergency access: needs --justification and --ticket.
    #[arg(long, requires_all = ["justification", "ticket"])]
    pub break_glass: bool,
    /// Why break-glass is needed.
    #[arg(long)]
    pub justification: Option<String>,
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
    /// SPIFFE ID holding the task (another's: admins only) [default: you].
    #[arg(long, default_value = "")]
    pub holder: String,
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
        "holder": t.holder,
        "state": state.as_str_name().trim_start_matches("TASK_STATE_").to_lowercase(),
        "purpose": t.purpose,
        "ticket": t.ticket,
        "labels": t.labels,
        "implicit": t.implicit,
        "created_at": rfc3339(t.created_at),
        "deadline": rfc3339(t.deadline),
        "ended_at": (t.ended_at != 0).then(|| rfc3339(t.ended_at)),
        "owner": t.owner,
        "audiences": t.audiences,
        "break_glass": t.break_glass,
        "justification": t.justification,
        "reviewed_by": (!t.reviewed_by.is_empty()).then_some(&t.reviewed_by),
        "reviewed_at": (t.reviewed_at != 0).then(|| rfc3339(t.reviewed_at)),
        "parent": t.parent.as_ref().map(|p| json!({"task_id": p.task_id, "holder": p.holder})),
        "depth": t.depth,
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
                    ticket: a.ticket.unwrap_or_default(),
                    lifetime_seconds: a.lifetime.map(|d| d.as_secs()).unwrap_or(0),
                    labels,
                    owner: a.owner.unwrap_or_default(),
                    audiences: a.audiences,
                    break_glass: a.break_glass,
                    justification: a.justification.unwrap_or_default(),
                })
                .await
                .map_err(|s| status_line(&s))?;
            if a.json {
                out::json(&task_json(&t))?;
            } else {
                out::line(format_args!(
                    "task {} begun, deadline {}, owner {}{}",
                    t.task_id,
                    rfc3339(t.deadline),
                    if t.owner.is_empty() { "-" } else { &t.owner },
                    if t.break_glass {
                        " (BREAK-GLASS: on the review list until an admin marks it reviewed)"
                    } else {
                        ""
                    }
                ))?;
            }
        }
        TaskCommand::Delegate(a) => {
            let mut c = a.conn.connect().await?;
            let t = c
                .delegate_task(pb::DelegateTaskRequest {
                    parent: Some(pb::TaskRef {
                        task_id: a.task,
                        holder: String::new(),
                    }),
                    delegate: a.to,
                    audiences: a.audiences,
                    lifetime_seconds: a.lifetime.map(|d| d.as_secs()).unwrap_or(0),
                    task_id: a.child.unwrap_or_default(),
                })
                .await
                .map_err(|s| status_line(&s))?;
            if a.json {
                out::json(&task_json(&t))?;
            } else {
                out::line(format_args!(
                    "task {} delegated to {} (depth {}), audiences [{}], deadline {}",
                    t.task_id,
                    t.holder,
                    t.depth,
                    t.audiences.join(", "),
                    rfc3339(t.deadline)
                ))?;
            }
        }
        TaskCommand::Complete(a) => {
            let mut c = a.conn.connect().await?;
            let task = Some(pb::TaskRef {
                task_id: a.task,
                holder: a.holder,
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
                out::json(&v)?;
            } else {
                out::line(&revoked.message)?;
            }
        }
        TaskCommand::Show(a) => {
            let mut c = a.conn.connect().await?;
            let r = c
                .get_task(&a.task, &a.holder)
                .await
                .map_err(|s| status_line(&s))?;
            let task = r.task.unwrap_or_default();
            if !a.json {
                return out::text(&show_text(&task, &r.credentials));
            }
            let mut v = task_json(&task);
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
            out::json(&v)?;
        }
    }
    Ok(())
}

/// `task show` for a human: the task, then one line per credential.
fn show_text(t: &pb::Task, credentials: &[pb::CredentialStatus]) -> String {
    use std::fmt::Write;
    let state = pb::TaskState::try_from(t.state).unwrap_or(pb::TaskState::Unspecified);
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    let mut o = String::new();
    let _ = writeln!(
        o,
        "task {} held by {}: {}{}",
        t.task_id,
        t.holder,
        state
            .as_str_name()
            .trim_start_matches("TASK_STATE_")
            .to_lowercase(),
        if t.break_glass { " BREAK-GLASS" } else { "" }
    );
    let _ = writeln!(o, "  owner     {}", or_dash(&t.owner));
    let _ = writeln!(o, "  purpose   {}", or_dash(&t.purpose));
    let _ = writeln!(o, "  ticket    {}", or_dash(&t.ticket));
    let _ = writeln!(o, "  created   {}", rfc3339(t.created_at));
    let _ = writeln!(o, "  deadline  {}", rfc3339(t.deadline));
    if t.ended_at != 0 {
        let _ = writeln!(o, "  ended     {}", rfc3339(t.ended_at));
    }
    if !t.audiences.is_empty() {
        let _ = writeln!(o, "  audiences {}", t.audiences.join(", "));
    }
    if let Some(p) = &t.parent {
        let _ = writeln!(
            o,
            "  delegated from task {} of {} (depth {})",
            p.task_id, p.holder, t.depth
        );
    }
    let mut labels: Vec<_> = t.labels.iter().collect();
    labels.sort();
    for (k, v) in labels {
        let _ = writeln!(o, "  label     {k}={v}");
    }
    let _ = writeln!(o, "  {} credential(s)", credentials.len());
    for cs in credentials {
        let cred = cs.credential.clone().unwrap_or_default();
        let kind = if cred.kind == pb::CredentialKind::X509 as i32 {
            "x509".to_owned()
        } else {
            format!("jwt aud {}", cred.audience)
        };
        let renewed = if cs.renewal_count > 0 {
            format!(", renewal {} of {}", cs.renewal_count, cs.predecessor)
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "    {} {kind}: {}{renewed}",
            cred.id,
            super::status::status_text(&cs.status.clone().unwrap_or_default())
        );
    }
    o
}
