//! `taskmint policy check|eval|status`: policies are checked and tried
//! offline, against the same schema and engine the server uses.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use super::{ConnArgs, rfc3339, status_line};
use crate::config::Config;
use crate::policy::{Engine, Groups, PolicyDoc, schema};

/// `policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Parse a policy file and validate it against the schema.
    Check(CheckArgs),
    /// Decide one request offline and name the deciding policies.
    Eval(EvalArgs),
    /// The policy in force on a running issuer (admin).
    Status(StatusArgs),
    /// Print the Cedar schema policies are validated against.
    Schema,
}

/// Arguments of `policy check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The Cedar policy file.
    pub file: PathBuf,
}

/// Arguments of `policy eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The caller's SPIFFE ID.
    #[arg(long)]
    pub principal: String,
    /// Action id, e.g. `mint_jwt`.
    #[arg(long)]
    pub action: String,
    /// Resource entity, e.g. `Audience::"db"` or `Task::"spiffe://td/agent#build-42"`.
    #[arg(long)]
    pub resource: String,
    /// Context as a JSON object (the action's context type; see `policy schema`).
    #[arg(long)]
    pub context: Option<String>,
    /// Policy file [default: the config's policy.file].
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Config for groups and the default policy file.
    #[arg(long, default_value = super::serve::DEFAULT_CONFIG)]
    pub config: PathBuf,
}

/// Arguments of `policy status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub(super) async fn run(cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Check(a) => {
            let doc = PolicyDoc::load(&a.file, &schema())?;
            println!(
                "{}: {} policies valid against the schema ({})",
                a.file.display(),
                doc.ids.len(),
                doc.ids.join(", ")
            );
        }
        PolicyCommand::Eval(a) => {
            // Groups come from the config when there is one; a policy file
            // alone still evaluates (with no groups but `admins`).
            let cfg = if a.config.exists() {
                Some(Config::load(&a.config)?)
            } else if a.policy.is_some() {
                None
            } else {
                anyhow::bail!(
                    "no config at `{}` and no --policy: say which policy to evaluate",
                    a.config.display()
                );
            };
            let (groups, file) = match &cfg {
                Some(c) => (crate::server::policy_groups(c), c.policy.file.clone()),
                None => (Groups::new(Vec::new(), &[]), PathBuf::new()),
            };
            let file = a.policy.unwrap_or(file);
            let schema = schema();
            let doc = PolicyDoc::load(&file, &schema)?;
            let engine = Engine::with_doc(schema, doc, groups, &file, 0);
            let context = a
                .context
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--context is not JSON: {e}"))?;
            let d = engine.eval_text(&a.principal, &a.action, &a.resource, context)?;
            println!(
                "{}",
                json!({
                    "decision": if d.allowed { "allow" } else { "deny" },
                    "policies": d.policies,
                    "reason": d.describe(),
                    "errors": d.errors,
                })
            );
            if !d.allowed {
                std::process::exit(2);
            }
        }
        PolicyCommand::Status(a) => {
            let mut c = a.conn.connect().await?;
            let s = c.policy_status().await.map_err(|s| status_line(&s))?;
            let v = json!({
                "path": s.path,
                "sha256": s.sha256,
                "policies": s.policy_ids,
                "loaded_at": rfc3339(s.loaded_at),
                "last_error": (!s.last_error.is_empty()).then_some(&s.last_error),
                "last_error_at": (s.last_error_at != 0).then(|| rfc3339(s.last_error_at)),
            });
            if a.json {
                println!("{v}");
            } else {
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
        }
        PolicyCommand::Schema => print!("{}", crate::policy::SCHEMA),
    }
    Ok(())
}
