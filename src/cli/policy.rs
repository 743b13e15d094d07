//! `taskmint policy check|eval|status`: policies are checked and tried
//! offline, against the same schema and engine the server uses.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use super::out::{self, Exit, code};
use super::{ConnArgs, rfc3339, status_line};
use crate::config::Config;
use crate::policy::{Action, ContextDefaults, Engine, Groups, PolicyDoc, schema};

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
    /// Context as a JSON object (the action's context type; see `policy
    /// schema`); attributes left out take the values of a plain request
    /// under the config's defaults.
    #[arg(long)]
    pub context: Option<String>,
    /// Policy file [default: the config's policy.file].
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Config for groups, the default policy file and the context defaults.
    #[arg(long, default_value = super::serve::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
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
            out::line(format_args!(
                "{}: {} policies valid against the schema ({})",
                a.file.display(),
                doc.ids.len(),
                doc.ids.join(", ")
            ))?;
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
            let limits = cfg.as_ref().map(|c| c.limits.clone()).unwrap_or_default();
            let defaults = ContextDefaults {
                ttl_seconds: limits.default_ttl.as_secs() as i64,
                lifetime_seconds: limits.default_task_lifetime.as_secs() as i64,
            };
            let context =
                context_with_defaults(&a.action, &a.resource, a.context.as_deref(), &defaults)?;
            let d = engine.eval_text(&a.principal, &a.action, &a.resource, context)?;
            let decision = if d.allowed { "allow" } else { "deny" };
            if a.json {
                out::json(&json!({
                    "decision": decision,
                    "policies": d.policies,
                    "reason": d.describe(),
                    "errors": d.errors,
                }))?;
            } else {
                out::line(format_args!("{decision}: {}", d.describe()))?;
                for e in &d.errors {
                    out::line(format_args!("  {e}"))?;
                }
            }
            if !d.allowed {
                return Err(Exit(code::DENIED).into());
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
                out::json(&v)?;
            } else {
                out::line(format_args!(
                    "policy {} (sha256 {}), loaded {}: {} policies ({})",
                    s.path,
                    s.sha256,
                    rfc3339(s.loaded_at),
                    s.policy_ids.len(),
                    s.policy_ids.join(", ")
                ))?;
                if !s.last_error.is_empty() {
                    out::line(format_args!(
                        "last reload refused at {} (the policy above stays in force): {}",
                        rfc3339(s.last_error_at),
                        s.last_error
                    ))?;
                }
            }
        }
        PolicyCommand::Schema => out::text(crate::policy::SCHEMA)?,
    }
    Ok(())
}

/// The context `policy eval` evaluates: the action's defaults (see
/// [`Action::default_context`]), overridden by what `--context` gives.
fn context_with_defaults(
    action: &str,
    resource: &str,
    given: Option<&str>,
    defaults: &ContextDefaults,
) -> anyhow::Result<Option<serde_json::Value>> {
    let given: Option<serde_json::Value> = given
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--context is not JSON: {e}"))?;
    // An unknown action is named by the engine, with the list of actions.
    let Some(action) = Action::parse(action.trim()) else {
        return Ok(given);
    };
    let given = match given {
        None => serde_json::Map::new(),
        Some(serde_json::Value::Object(m)) => m,
        Some(_) => anyhow::bail!("--context is not a JSON object"),
    };
    // `Type::"id"`: the type decides defaults such as a revocation's scope;
    // a task's id (`<holder>#<task id>`) names the task.
    let (ty, id) = resource
        .trim()
        .split_once("::")
        .map(|(t, id)| (t.trim(), id.trim().trim_matches('"')))
        .unwrap_or(("", ""));
    let task_id = id.split_once('#').map(|(_, t)| t).unwrap_or("");
    let mut context = action.default_context(defaults, ty, task_id);
    for (k, v) in given {
        context.insert(k, v);
    }
    // A delegate may be given as its SPIFFE ID alone.
    if let Some(serde_json::Value::String(id)) = context.get("delegate") {
        let entity = json!({ "__entity": { "type": "Workload", "id": id } });
        context.insert("delegate".into(), entity);
    }
    let missing: Vec<&str> = action
        .required_context()
        .iter()
        .copied()
        .filter(|k| !context.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "action `{}` needs {} in --context: it has no default (see `taskmint policy schema`)",
            action.as_str(),
            missing
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(Some(serde_json::Value::Object(context)))
}
