//! The actions policies speak about and the typed context of each.
//!
//! A [`Request`] pairs an action with its context, so a context can never be
//! sent with the wrong action, and a misspelt or mistyped context key is a
//! compile error rather than a production-wide denial. This is the only place
//! a context becomes a Cedar value; the conversion builds Cedar values
//! directly (Cedar's generic JSON reader was 40% of the policy cost per mint).
//! A unit test checks one sample of every action against the shipped schema.

use cedar_policy::{Context, EntityUid, RestrictedExpression};

use super::{PolicyError, render, uid};
use crate::identity::SpiffeId;

/// The actions policies speak about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Mint an X.509-SVID (resource: Task).
    MintX509,
    /// Mint a JWT-SVID (resource: Audience).
    MintJwt,
    /// Renew a credential (resource: Task).
    Renew,
    /// Begin a task (resource: Task).
    BeginTask,
    /// Begin a break-glass task (resource: Task).
    BreakGlass,
    /// Delegate part of a task (resource: the parent Task).
    Delegate,
    /// Complete a task.
    CompleteTask,
    /// Read a task and its credentials.
    ReadTask,
    /// Revoke (resource: Task, Workload or TrustDomain).
    Revoke,
    /// Watch and acknowledge the revocation feed.
    Watch,
    /// Administrative calls (resource: Issuer).
    Admin,
    /// Read the CRL (resource: Issuer).
    ReadCrl,
}

impl Action {
    /// Every action, in schema order.
    pub const ALL: [Action; 12] = [
        Self::MintX509,
        Self::MintJwt,
        Self::Renew,
        Self::BeginTask,
        Self::BreakGlass,
        Self::Delegate,
        Self::CompleteTask,
        Self::ReadTask,
        Self::Revoke,
        Self::Watch,
        Self::Admin,
        Self::ReadCrl,
    ];

    /// The Cedar action id.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MintX509 => "mint_x509",
            Self::MintJwt => "mint_jwt",
            Self::Renew => "renew",
            Self::BeginTask => "begin_task",
            Self::BreakGlass => "break_glass",
            Self::Delegate => "delegate",
            Self::CompleteTask => "complete_task",
            Self::ReadTask => "read_task",
            Self::Revoke => "revoke",
            Self::Watch => "watch",
            Self::Admin => "admin",
            Self::ReadCrl => "read_crl",
        }
    }

    /// Parses a Cedar action id (with or without `Action::"…"`).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s
            .strip_prefix("Action::\"")
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or(s);
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    pub(super) fn uid(self) -> EntityUid {
        uid("Action", self.as_str())
    }
}

/// What `taskmint policy eval` fills in for context attributes it is not
/// given: what the issuer sends for a plain request under the configured
/// defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextDefaults {
    /// `limits.default_ttl`, in seconds.
    pub ttl_seconds: i64,
    /// `limits.default_task_lifetime`, in seconds.
    pub lifetime_seconds: i64,
}

impl Action {
    /// The context of a plain request of this action, as Cedar JSON, for a
    /// resource of type `resource_type` whose task id (for a `Task`) is
    /// `task_id`. Attributes with no sensible default (`delegate` of
    /// `delegate`, `operation` of `admin`) are left out: they must be given.
    pub fn default_context(
        self,
        d: &ContextDefaults,
        resource_type: &str,
        task_id: &str,
    ) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::json;
        let v = match self {
            Self::MintX509 | Self::MintJwt => json!({
                "task_id": task_id, "ttl_seconds": d.ttl_seconds, "renewal_count": 0,
                "break_glass": false, "depth": 0,
            }),
            Self::Renew => json!({
                "ttl_seconds": d.ttl_seconds, "renewal_count": 1, "kind": "jwt", "audience": "",
            }),
            Self::BeginTask | Self::BreakGlass => json!({
                "lifetime_seconds": d.lifetime_seconds, "owner": "", "owner_requested": false,
                "justification": "", "ticket": "",
            }),
            Self::Delegate => json!({
                "task_id": format!("{task_id}.sub"), "audiences": [],
                "lifetime_seconds": d.lifetime_seconds, "depth": 1,
            }),
            Self::Revoke => json!({
                "scope": match resource_type {
                    "Workload" => "workload",
                    "TrustDomain" => "trust_domain",
                    _ => "task",
                },
                "reason": "",
            }),
            Self::Watch => json!({ "operation": "watch", "subscriber": "" }),
            Self::Admin | Self::CompleteTask | Self::ReadTask | Self::ReadCrl => json!({}),
        };
        v.as_object().cloned().unwrap_or_default()
    }

    /// The context attributes that have no default for this action.
    pub fn required_context(self) -> &'static [&'static str] {
        match self {
            Self::Delegate => &["delegate"],
            Self::Admin => &["operation"],
            _ => &[],
        }
    }
}

/// An action with its context, as the issuer asks it: the action is the
/// variant, the context the typed value it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// [`Action::MintX509`].
    MintX509(MintContext),
    /// [`Action::MintJwt`].
    MintJwt(MintContext),
    /// [`Action::Renew`].
    Renew(RenewContext),
    /// [`Action::BeginTask`] (explicitly, or implicitly by a first mint).
    BeginTask(BeginContext),
    /// [`Action::BreakGlass`].
    BreakGlass(BeginContext),
    /// [`Action::Delegate`].
    Delegate(DelegateContext),
    /// [`Action::CompleteTask`]: no context.
    CompleteTask,
    /// [`Action::ReadTask`]: no context.
    ReadTask,
    /// [`Action::Revoke`].
    Revoke(RevokeContext),
    /// [`Action::Watch`].
    Watch(WatchContext),
    /// [`Action::Admin`].
    Admin(AdminContext),
    /// [`Action::ReadCrl`]: no context.
    ReadCrl,
}

/// Context of a first mint (schema type `Mint`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintContext {
    /// The task the credential is for.
    pub task_id: String,
    /// The lifetime asked for (or the default), in seconds.
    pub ttl_seconds: i64,
    /// The task was begun through break-glass.
    pub break_glass: bool,
    /// The task's delegation depth.
    pub depth: u32,
}

/// Context of a renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewContext {
    /// The lifetime asked for (or the default), in seconds.
    pub ttl_seconds: i64,
    /// The renewal count the new credential will have.
    pub renewal_count: i64,
    /// Kind of the credential renewed (`x509` or `jwt`).
    pub kind: &'static str,
    /// Its audience (empty for X.509).
    pub audience: String,
}

/// Context of beginning a task, plain or break-glass (schema type `Begin`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginContext {
    /// The task's lifetime, in seconds.
    pub lifetime_seconds: i64,
    /// The accountable owner the task will have (empty if none).
    pub owner: String,
    /// The caller named the owner itself (rather than the config mapping it).
    pub owner_requested: bool,
    /// Why break-glass is needed (empty for a plain task).
    pub justification: String,
    /// Ticket reference.
    pub ticket: String,
}

/// Context of a delegation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelegateContext {
    /// The workload the child task is for; the engine adds its entity, so
    /// policies can read its attributes.
    pub delegate: SpiffeId,
    /// The child task's id (always `<parent id>.<suffix>`).
    pub task_id: String,
    /// The child's audiences.
    pub audiences: Vec<String>,
    /// The child's lifetime, in seconds.
    pub lifetime_seconds: i64,
    /// The depth the child task will have.
    pub depth: u32,
}

/// Context of a revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeContext {
    /// `credential`, `task`, `workload` or `trust_domain`.
    pub scope: &'static str,
    /// The reason given.
    pub reason: String,
}

/// What a [`WatchContext`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchOperation {
    /// Opening a revocation feed.
    Watch,
    /// Acknowledging it.
    Ack,
}

impl WatchOperation {
    /// The value policies see.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Watch => "watch",
            Self::Ack => "ack",
        }
    }
}

/// Context of a feed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchContext {
    /// Watch or acknowledge.
    pub operation: WatchOperation,
    /// The subscriber named.
    pub subscriber: String,
}

/// Context of an administrative call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminContext {
    /// The call, e.g. `list_grants`, `audit_export`, `mark_reviewed`.
    pub operation: &'static str,
}

fn string(s: impl Into<String>) -> RestrictedExpression {
    RestrictedExpression::new_string(s.into())
}

fn long(n: impl Into<i64>) -> RestrictedExpression {
    RestrictedExpression::new_long(n.into())
}

fn strings(items: Vec<String>) -> RestrictedExpression {
    RestrictedExpression::new_set(items.into_iter().map(RestrictedExpression::new_string))
}

impl Request {
    /// The action asked for.
    pub fn action(&self) -> Action {
        match self {
            Self::MintX509(_) => Action::MintX509,
            Self::MintJwt(_) => Action::MintJwt,
            Self::Renew(_) => Action::Renew,
            Self::BeginTask(_) => Action::BeginTask,
            Self::BreakGlass(_) => Action::BreakGlass,
            Self::Delegate(_) => Action::Delegate,
            Self::CompleteTask => Action::CompleteTask,
            Self::ReadTask => Action::ReadTask,
            Self::Revoke(_) => Action::Revoke,
            Self::Watch(_) => Action::Watch,
            Self::Admin(_) => Action::Admin,
            Self::ReadCrl => Action::ReadCrl,
        }
    }

    /// The numeric attributes of this request that policies cap (a ttl, a
    /// lifetime, a count), with their values: what a denial's hint tries
    /// lower values of ([`Engine::hint`](super::Engine::hint)).
    pub(super) fn bounds(&self) -> Vec<(&'static str, i64)> {
        match self {
            Self::MintX509(c) | Self::MintJwt(c) => vec![("ttl_seconds", c.ttl_seconds)],
            Self::Renew(c) => vec![
                ("ttl_seconds", c.ttl_seconds),
                ("renewal_count", c.renewal_count),
            ],
            Self::BeginTask(c) | Self::BreakGlass(c) => {
                vec![("lifetime_seconds", c.lifetime_seconds)]
            }
            Self::Delegate(c) => vec![
                ("lifetime_seconds", c.lifetime_seconds),
                ("depth", i64::from(c.depth)),
            ],
            _ => Vec::new(),
        }
    }

    /// This request with the attribute `name` (one of [`Request::bounds`])
    /// set to `value`.
    pub(super) fn with_bound(&self, name: &str, value: i64) -> Self {
        let mut r = self.clone();
        match (&mut r, name) {
            (Self::MintX509(c) | Self::MintJwt(c), "ttl_seconds") => c.ttl_seconds = value,
            (Self::Renew(c), "ttl_seconds") => c.ttl_seconds = value,
            (Self::Renew(c), "renewal_count") => c.renewal_count = value,
            (Self::BeginTask(c) | Self::BreakGlass(c), "lifetime_seconds") => {
                c.lifetime_seconds = value
            }
            (Self::Delegate(c), "lifetime_seconds") => c.lifetime_seconds = value,
            (Self::Delegate(c), "depth") => c.depth = u32::try_from(value).unwrap_or(u32::MAX),
            _ => {}
        }
        r
    }

    /// A workload the context refers to, whose entity the request must carry.
    pub(super) fn referenced_workload(&self) -> Option<String> {
        match self {
            Self::Delegate(c) => Some(c.delegate.to_string()),
            _ => None,
        }
    }

    /// The context as a Cedar value: the same value Cedar's JSON reader gives
    /// the equivalent JSON object.
    pub(super) fn into_context(self) -> Result<Context, PolicyError> {
        let pairs: Vec<(&str, RestrictedExpression)> = match self {
            Self::MintX509(c) | Self::MintJwt(c) => vec![
                ("task_id", string(c.task_id)),
                ("ttl_seconds", long(c.ttl_seconds)),
                // A first mint: renewals are asked as `renew`.
                ("renewal_count", long(0)),
                ("break_glass", RestrictedExpression::new_bool(c.break_glass)),
                ("depth", long(c.depth)),
            ],
            Self::Renew(c) => vec![
                ("ttl_seconds", long(c.ttl_seconds)),
                ("renewal_count", long(c.renewal_count)),
                ("kind", string(c.kind)),
                ("audience", string(c.audience)),
            ],
            Self::BeginTask(c) | Self::BreakGlass(c) => vec![
                ("lifetime_seconds", long(c.lifetime_seconds)),
                ("owner", string(c.owner)),
                (
                    "owner_requested",
                    RestrictedExpression::new_bool(c.owner_requested),
                ),
                ("justification", string(c.justification)),
                ("ticket", string(c.ticket)),
            ],
            Self::Delegate(c) => vec![
                (
                    "delegate",
                    RestrictedExpression::new_entity_uid(uid("Workload", &c.delegate.to_string())),
                ),
                ("task_id", string(c.task_id)),
                ("audiences", strings(c.audiences)),
                ("lifetime_seconds", long(c.lifetime_seconds)),
                ("depth", long(c.depth)),
            ],
            Self::CompleteTask | Self::ReadTask | Self::ReadCrl => Vec::new(),
            Self::Revoke(c) => vec![("scope", string(c.scope)), ("reason", string(c.reason))],
            Self::Watch(c) => vec![
                ("operation", string(c.operation.as_str())),
                ("subscriber", string(c.subscriber)),
            ],
            Self::Admin(c) => vec![("operation", string(c.operation))],
        };
        Context::from_pairs(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)))
            .map_err(|e| PolicyError::Request(format!("context: {}", render(&e))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::schema;

    /// One request of every action, with a resource of a type the action
    /// applies to.
    fn samples() -> Vec<(Request, EntityUid)> {
        let task = uid("Task", "spiffe://example.org/agent#t");
        let mint = MintContext {
            task_id: "t".into(),
            ttl_seconds: 300,
            break_glass: false,
            depth: 0,
        };
        let begin = BeginContext {
            lifetime_seconds: 3600,
            owner: "team-a".into(),
            owner_requested: true,
            justification: "incident".into(),
            ticket: "INC-1".into(),
        };
        vec![
            (Request::MintX509(mint.clone()), task.clone()),
            (Request::MintJwt(mint), uid("Audience", "db")),
            (
                Request::Renew(RenewContext {
                    ttl_seconds: 300,
                    renewal_count: 1,
                    kind: "jwt",
                    audience: "db".into(),
                }),
                task.clone(),
            ),
            (Request::BeginTask(begin.clone()), task.clone()),
            (Request::BreakGlass(begin), task.clone()),
            (
                Request::Delegate(DelegateContext {
                    delegate: SpiffeId::new("spiffe://example.org/sidecar").unwrap(),
                    task_id: "t.sub".into(),
                    audiences: vec!["db".into()],
                    lifetime_seconds: 60,
                    depth: 1,
                }),
                task.clone(),
            ),
            (Request::CompleteTask, task.clone()),
            (Request::ReadTask, task.clone()),
            (
                Request::Revoke(RevokeContext {
                    scope: "task",
                    reason: "revoked".into(),
                }),
                task,
            ),
            (
                Request::Watch(WatchContext {
                    operation: WatchOperation::Ack,
                    subscriber: "enforcer".into(),
                }),
                uid("Issuer", "taskmint"),
            ),
            (
                Request::Admin(AdminContext {
                    operation: "list_grants",
                }),
                uid("Issuer", "taskmint"),
            ),
            (Request::ReadCrl, uid("Issuer", "taskmint")),
        ]
    }

    /// Runs in every build (the per-request check is debug-only): a context
    /// that drifts from the schema would otherwise ship and be denied.
    #[test]
    fn every_action_context_matches_the_shipped_schema() {
        let schema = schema();
        let principal = uid("Workload", "spiffe://example.org/agent");
        let samples = samples();
        for action in Action::ALL {
            let (request, resource) = samples
                .iter()
                .find(|(r, _)| r.action() == action)
                .unwrap_or_else(|| panic!("no sample context for action `{}`", action.as_str()));
            let context = request.clone().into_context().unwrap();
            if let Err(e) = cedar_policy::Request::new(
                principal.clone(),
                action.uid(),
                resource.clone(),
                context,
                Some(&schema),
            ) {
                panic!(
                    "the context of `{}` does not match the schema: {e}",
                    action.as_str()
                );
            }
        }
        // The check has teeth: a misspelt key is refused.
        let misspelt = Context::from_pairs([
            ("operation".to_owned(), string("watch")),
            ("subscribr".to_owned(), string("enforcer")),
        ])
        .unwrap();
        assert!(
            cedar_policy::Request::new(
                principal,
                Action::Watch.uid(),
                uid("Issuer", "taskmint"),
                misspelt,
                Some(&schema),
            )
            .is_err()
        );
    }
}
