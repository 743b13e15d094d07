//! Policy-as-code with Cedar. This module alone knows Cedar: it turns a
//! caller, a typed request (an action with its context) and a resource into a
//! [`Decision`] that names the policies that decided it.
//!
//! Deny by default: a call is allowed only when a `permit` matches and no
//! `forbid` does. Every policy file is parsed and validated (strict mode)
//! against the schema shipped in the binary before it is put in force; a file
//! that fails either step is refused and the policy in force stays. The
//! entity model is documented in `taskmint.cedarschema`.
//!
//! # Layout
//!
//! - `mod.rs`: the schema and default policy, [`PolicyError`], [`Decision`]
//!   and the [`Engine`] itself.
//! - `action.rs`: [`Action`] and [`Request`], one typed context per action
//!   (the only place a context becomes a Cedar value).
//! - `entities.rs`: [`Groups`], [`TaskFacts`], [`Resource`] and the Cedar
//!   entities built from them.
//! - `document.rs`: [`PolicyDoc`] (parse, validate, load) and the engine's
//!   file reload ([`Engine::attempt`], [`Engine::apply`], [`PolicyStatus`]).
//! - `eval.rs`: evaluation ([`Engine::authorize`], and
//!   [`Engine::eval_text`] for `taskmint policy eval`).
//! - `explain.rs`: the hint of a denial no policy decided
//!   ([`Engine::hint`]).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};

use cedar_policy::{Authorizer, EntityId, EntityTypeName, EntityUid, Schema};

mod action;
mod document;
mod entities;
mod eval;
mod explain;
#[cfg(test)]
mod tests;

pub use action::{
    Action, AdminContext, BeginContext, ContextDefaults, DelegateContext, MintContext,
    RenewContext, Request, RevokeContext, WatchContext, WatchOperation,
};
use document::Seen;
pub use document::{Attempt, PolicyDoc, PolicyStatus, Reload};
pub use entities::{Groups, Resource, TaskFacts};

/// The Cedar schema every policy is validated against.
pub const SCHEMA: &str = include_str!("taskmint.cedarschema");

/// The default policy `dev init` writes (with `TRUST_DOMAIN` filled in).
pub const DEFAULT_POLICY: &str = include_str!("default.cedar");

/// The group every configured admin belongs to.
pub const ADMINS_GROUP: &str = "admins";

/// Why a policy text was refused, or a request could not be evaluated.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file `{path}`: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Cedar could not parse the text.
    #[error("policy does not parse: {0}")]
    Parse(String),
    /// The text parses but does not validate against the schema.
    #[error("policy does not validate against the schema: {0}")]
    Validate(String),
    /// A request (from `policy eval`) is malformed.
    #[error("{0}")]
    Request(String),
}

/// The outcome of one authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed?
    pub allowed: bool,
    /// Ids of the policies that decided it: the matching permits for an
    /// allow, the matching forbids for an explicit deny, the policies that
    /// failed to evaluate when one did, none when nothing permits. Sorted.
    pub policies: Vec<String>,
    /// Policies that failed to evaluate; any makes the decision a deny.
    pub errors: Vec<String>,
}

impl Decision {
    /// The "decided by" part of a message or audit record.
    pub fn describe(&self) -> String {
        if !self.errors.is_empty() {
            let ids: Vec<String> = self.policies.iter().map(|p| format!("`{p}`")).collect();
            return format!(
                "denied because policy {} failed to evaluate",
                ids.join(", ")
            );
        }
        if self.policies.is_empty() {
            "no policy permits".to_owned()
        } else {
            let ids: Vec<String> = self.policies.iter().map(|p| format!("`{p}`")).collect();
            let verb = if self.allowed {
                "permitted by"
            } else {
                "denied by"
            };
            format!("{verb} policy {}", ids.join(", "))
        }
    }
}

fn uid(ty: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(
        EntityTypeName::from_str(ty).expect("static type name"),
        EntityId::new(id),
    )
}

/// The shipped schema, parsed.
pub fn schema() -> Schema {
    let (schema, _warnings) =
        Schema::from_cedarschema_str(SCHEMA).expect("the shipped schema parses");
    schema
}

/// The first line of a Cedar message (the rest repeats the input).
fn render(e: &impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_owned()
}

/// The policy decision point.
pub struct Engine {
    schema: Schema,
    groups: Groups,
    path: PathBuf,
    current: RwLock<Arc<PolicyDoc>>,
    status: Mutex<PolicyStatus>,
    seen: Mutex<Seen>,
    authorizer: Authorizer,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Loads the policy at `path`; fails if it does not parse or validate.
    pub fn load(path: &Path, groups: Groups, now: i64) -> Result<Self, PolicyError> {
        let schema = schema();
        let doc = PolicyDoc::load(path, &schema)?;
        Ok(Self::with_doc(schema, doc, groups, path, now))
    }

    /// An engine over an already parsed document (tests, `policy eval`).
    pub fn with_doc(schema: Schema, doc: PolicyDoc, groups: Groups, path: &Path, now: i64) -> Self {
        let status = PolicyStatus {
            path: path.display().to_string(),
            sha256: doc.sha256.clone(),
            ids: doc.ids.clone(),
            loaded_at: now,
            last_error: None,
            last_error_at: None,
        };
        Self {
            schema,
            groups,
            path: path.to_owned(),
            current: RwLock::new(Arc::new(doc)),
            status: Mutex::new(status),
            seen: Mutex::new(Seen::default()),
            authorizer: Authorizer::new(),
        }
    }
}
