//! Policy-as-code with Cedar. This module alone knows Cedar: it turns a
//! caller, an action, a resource and a context into a [`Decision`] that names
//! the policies that decided it.
//!
//! Deny by default: a call is allowed only when a `permit` matches and no
//! `forbid` does. Every policy file is parsed and validated (strict mode)
//! against the schema shipped in the binary before it is put in force; a file
//! that fails either step is refused and the policy in force stays. The
//! entity model is documented in `taskmint.cedarschema`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::identity::{SpiffeId, SpiffePattern};

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
}

impl Action {
    /// Every action, in schema order.
    pub const ALL: [Action; 11] = [
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

    fn uid(self) -> EntityUid {
        uid("Action", self.as_str())
    }
}

/// What a policy needs to know about a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFacts {
    /// SPIFFE ID of the workload holding the task.
    pub holder: String,
    /// The task id.
    pub task_id: String,
    /// Accountable owner; empty if none.
    pub owner: String,
    /// Begun through break-glass.
    pub break_glass: bool,
    /// Delegation depth (0 = begun directly).
    pub depth: u32,
    /// Declared audiences (empty = not restricted).
    pub audiences: Vec<String>,
}

impl TaskFacts {
    /// The Cedar entity id: `<holder>#<task id>` (task ids are scoped to their holder).
    pub fn entity_id(&self) -> String {
        format!("{}#{}", self.holder, self.task_id)
    }
}

/// The resource of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// A task.
    Task(TaskFacts),
    /// A JWT audience.
    Audience(String),
    /// A workload (revocation of all its credentials).
    Workload(String),
    /// A trust domain.
    TrustDomain(String),
    /// The issuer itself (watch, admin).
    Issuer,
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Task(t) => write!(f, "Task::{:?}", t.entity_id()),
            Self::Audience(a) => write!(f, "Audience::{a:?}"),
            Self::Workload(w) => write!(f, "Workload::{w:?}"),
            Self::TrustDomain(t) => write!(f, "TrustDomain::{t:?}"),
            Self::Issuer => f.write_str("Issuer::\"taskmint\""),
        }
    }
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

/// A parsed, validated policy set with its ids.
#[derive(Debug, Clone)]
pub struct PolicyDoc {
    set: PolicySet,
    /// Policy ids, in file order.
    pub ids: Vec<String>,
    /// Lowercase hex SHA-256 of the text.
    pub sha256: String,
}

fn uid(ty: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(
        EntityTypeName::from_str(ty).expect("static type name"),
        EntityId::new(id),
    )
}

/// Parses a Cedar entity reference such as `Task::"x"`.
fn parse_uid(text: &str) -> Result<EntityUid, PolicyError> {
    EntityUid::from_str(text.trim()).map_err(|e| {
        PolicyError::Request(format!(
            "`{text}` is not an entity reference like Audience::\"db\": {e}"
        ))
    })
}

/// The shipped schema, parsed.
pub fn schema() -> Schema {
    let (schema, _warnings) =
        Schema::from_cedarschema_str(SCHEMA).expect("the shipped schema parses");
    schema
}

impl PolicyDoc {
    /// Parses and validates policy text. Each policy is named by its `@id`
    /// annotation (or `policyN` by position); ids must be unique, and
    /// templates are refused (nothing here links them).
    pub fn parse(text: &str, schema: &Schema) -> Result<Self, PolicyError> {
        let parsed = PolicySet::from_str(text).map_err(|e| PolicyError::Parse(render(&e)))?;
        if parsed.templates().next().is_some() {
            return Err(PolicyError::Parse(
                "policy templates (with ?principal / ?resource slots) are not supported".into(),
            ));
        }
        // `policies()` has no defined order; the parser's ids (`policyN`)
        // number them in file order.
        let mut policies: Vec<_> = parsed.policies().collect();
        policies.sort_by_key(|p| {
            p.id()
                .to_string()
                .trim_start_matches("policy")
                .parse::<usize>()
                .unwrap_or(usize::MAX)
        });
        let mut set = PolicySet::new();
        let mut ids = Vec::new();
        for (i, p) in policies.into_iter().enumerate() {
            let id = p
                .annotation("id")
                .map(str::to_owned)
                .unwrap_or_else(|| format!("policy{i}"));
            if ids.contains(&id) {
                return Err(PolicyError::Parse(format!(
                    "policy id `{id}` is used twice"
                )));
            }
            set.add(p.new_id(PolicyId::new(&id)))
                .map_err(|e| PolicyError::Parse(e.to_string()))?;
            ids.push(id);
        }
        if ids.is_empty() {
            // Deny by default would refuse every call: almost surely a file
            // caught empty or truncated, not an intent.
            return Err(PolicyError::Parse(
                "the file holds no policies (it would deny every call)".into(),
            ));
        }
        let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
        if !result.validation_passed() {
            let errors: Vec<String> = result
                .validation_errors()
                .map(|e| format!("policy `{}`: {e}", e.policy_id()))
                .collect();
            return Err(PolicyError::Validate(errors.join("; ")));
        }
        Ok(Self {
            set,
            ids,
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
        })
    }

    /// Reads and parses a policy file.
    pub fn load(path: &Path, schema: &Schema) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, schema)
    }
}

fn render(e: &impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_owned()
}

/// Group membership from config: a workload is in every group one of whose
/// patterns matches its SPIFFE ID.
#[derive(Debug, Clone, Default)]
pub struct Groups(Vec<(String, Vec<SpiffePattern>)>);

impl Groups {
    /// Groups from `(name, patterns)` pairs plus the admins group.
    pub fn new(groups: Vec<(String, Vec<SpiffePattern>)>, admins: &[String]) -> Self {
        let mut all = groups;
        let admin_patterns: Vec<_> = admins
            .iter()
            .filter_map(|a| SpiffePattern::parse(a).ok())
            .collect();
        if let Some((_, p)) = all.iter_mut().find(|(n, _)| n == ADMINS_GROUP) {
            p.extend(admin_patterns);
        } else {
            all.push((ADMINS_GROUP.to_owned(), admin_patterns));
        }
        Self(all)
    }

    /// The groups `id` is in.
    pub fn of(&self, id: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(_, ps)| ps.iter().any(|p| p.matches(id)))
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

/// Status of the policy in force, for the status call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyStatus {
    /// The file.
    pub path: String,
    /// SHA-256 of the text in force.
    pub sha256: String,
    /// Ids of the policies in force.
    pub ids: Vec<String>,
    /// Unix seconds: when the policy in force was loaded.
    pub loaded_at: i64,
    /// The last reload failure (cleared by a successful reload).
    pub last_error: Option<String>,
    /// Unix seconds: when the last reload failed.
    pub last_error_at: Option<i64>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The file is unchanged.
    Unchanged,
    /// A new policy is in force.
    Loaded {
        /// Its hash.
        sha256: String,
        /// Its ids.
        ids: Vec<String>,
    },
    /// The file was refused; the previous policy stays in force.
    Refused(PolicyError),
}

/// What the file watcher has seen: content attempted (loaded or refused),
/// so a bad file is reported once and not on every poll; content seen once
/// and waiting for a second look.
#[derive(Debug, Default)]
struct Seen {
    attempted: Option<String>,
    pending: Option<String>,
}

/// What a look at the policy file found (see [`Engine::attempt`]).
#[derive(Debug)]
pub enum Attempt {
    /// Nothing to do.
    Unchanged,
    /// A valid new policy, not yet in force.
    Load(Box<PolicyDoc>),
    /// The file was refused.
    Refuse(PolicyError),
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

    /// Looks at the policy file and says what a reload would do, without
    /// changing anything: the caller records the outcome (audit) and then
    /// [`Engine::apply`]s it, so a change is never in force unrecorded.
    ///
    /// A poll (`force = false`) acts on new content only once two polls in a
    /// row have seen it, so a file caught half-written is not loaded (write
    /// policy files by atomic rename all the same); content already
    /// attempted is not attempted again. `force` (SIGHUP) attempts at once.
    pub fn attempt(&self, force: bool) -> Attempt {
        let (fingerprint, text) = match std::fs::read_to_string(&self.path) {
            Ok(t) => (hex::encode(Sha256::digest(t.as_bytes())), Ok(t)),
            Err(e) => (
                format!("unreadable: {e}"),
                Err(PolicyError::Read {
                    path: self.path.display().to_string(),
                    reason: e.to_string(),
                }),
            ),
        };
        let mut seen = self.seen.lock().expect("policy reload lock");
        {
            let mut status = self.status.lock().expect("policy status lock");
            if fingerprint == status.sha256 {
                // Back to the text in force: nothing to load, no error left.
                status.last_error = None;
                status.last_error_at = None;
                seen.attempted = None;
                seen.pending = None;
                return Attempt::Unchanged;
            }
        }
        if !force {
            if seen.attempted.as_deref() == Some(fingerprint.as_str()) {
                return Attempt::Unchanged;
            }
            if seen.pending.as_deref() != Some(fingerprint.as_str()) {
                seen.pending = Some(fingerprint);
                return Attempt::Unchanged;
            }
        }
        seen.pending = None;
        seen.attempted = Some(fingerprint);
        match text.and_then(|t| PolicyDoc::parse(&t, &self.schema)) {
            Ok(doc) => Attempt::Load(Box::new(doc)),
            Err(e) => Attempt::Refuse(e),
        }
    }

    /// Puts an [`Engine::attempt`] into effect: a loaded policy replaces the
    /// one in force; a refusal leaves it and is kept for [`Engine::status`].
    pub fn apply(&self, attempt: Attempt, now: i64) -> Reload {
        match attempt {
            Attempt::Unchanged => Reload::Unchanged,
            Attempt::Load(doc) => {
                let mut status = self.status.lock().expect("policy status lock");
                status.sha256 = doc.sha256.clone();
                status.ids = doc.ids.clone();
                status.loaded_at = now;
                status.last_error = None;
                status.last_error_at = None;
                let out = Reload::Loaded {
                    sha256: doc.sha256.clone(),
                    ids: doc.ids.clone(),
                };
                *self.current.write().expect("policy lock") = Arc::from(doc);
                out
            }
            Attempt::Refuse(e) => {
                let mut status = self.status.lock().expect("policy status lock");
                status.last_error = Some(e.to_string());
                status.last_error_at = Some(now);
                Reload::Refused(e)
            }
        }
    }

    /// Forgets the last attempt, so the next poll tries the same content
    /// again (after its outcome could not be recorded).
    pub fn forget_attempt(&self) {
        let mut seen = self.seen.lock().expect("policy reload lock");
        seen.attempted = None;
    }

    /// Attempts and applies at once (no audit): for tests and tools.
    pub fn reload(&self, force: bool, now: i64) -> Reload {
        let a = self.attempt(force);
        self.apply(a, now)
    }

    /// The policy in force and the last reload error.
    pub fn status(&self) -> PolicyStatus {
        self.status.lock().expect("policy status lock").clone()
    }

    fn workload_entity(&self, id: &str) -> Entity {
        let (td, path) = split_spiffe(id);
        let segments = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| RestrictedExpression::new_string(s.to_owned()));
        let attrs = HashMap::from([
            (
                "trust_domain".to_owned(),
                RestrictedExpression::new_string(td.to_owned()),
            ),
            (
                "path".to_owned(),
                RestrictedExpression::new_string(path.to_owned()),
            ),
            (
                "segments".to_owned(),
                RestrictedExpression::new_set(segments),
            ),
        ]);
        let parents: HashSet<EntityUid> = self
            .groups
            .of(id)
            .into_iter()
            .map(|g| uid("Group", g))
            .collect();
        Entity::new(uid("Workload", id), attrs, parents).expect("literal attributes")
    }

    fn task_entity(t: &TaskFacts) -> Entity {
        let attrs = HashMap::from([
            (
                "task_id".to_owned(),
                RestrictedExpression::new_string(t.task_id.clone()),
            ),
            (
                "holder".to_owned(),
                RestrictedExpression::new_entity_uid(uid("Workload", &t.holder)),
            ),
            (
                "owner".to_owned(),
                RestrictedExpression::new_string(t.owner.clone()),
            ),
            (
                "break_glass".to_owned(),
                RestrictedExpression::new_bool(t.break_glass),
            ),
            (
                "depth".to_owned(),
                RestrictedExpression::new_long(i64::from(t.depth)),
            ),
            (
                "audiences".to_owned(),
                RestrictedExpression::new_set(
                    t.audiences
                        .iter()
                        .map(|a| RestrictedExpression::new_string(a.clone())),
                ),
            ),
        ]);
        Entity::new(uid("Task", &t.entity_id()), attrs, HashSet::new()).expect("literal attributes")
    }

    /// Decides whether `principal` may do `action` on `resource` with
    /// `context` (a JSON object matching the action's context type; entity
    /// references as `{"__entity": {"type": "Workload", "id": "…"}}`).
    /// `extra` names further workloads whose attributes policies may read
    /// (a delegate).
    pub fn authorize(
        &self,
        principal: &SpiffeId,
        action: Action,
        resource: &Resource,
        context: serde_json::Value,
        extra: &[&str],
    ) -> Result<Decision, PolicyError> {
        self.authorize_checked(principal, action, resource, context, extra, false)
    }

    fn authorize_checked(
        &self,
        principal: &SpiffeId,
        action: Action,
        resource: &Resource,
        context: serde_json::Value,
        extra: &[&str],
        checked: bool,
    ) -> Result<Decision, PolicyError> {
        let principal = principal.to_string();
        let mut entities = vec![self.workload_entity(&principal)];
        for w in extra {
            if *w != principal {
                entities.push(self.workload_entity(w));
            }
        }
        let resource_uid = match resource {
            Resource::Task(t) => {
                if t.holder != principal && !extra.contains(&t.holder.as_str()) {
                    entities.push(self.workload_entity(&t.holder));
                }
                entities.push(Self::task_entity(t));
                uid("Task", &t.entity_id())
            }
            Resource::Audience(a) => uid("Audience", a),
            Resource::Workload(w) => {
                if *w != principal && !extra.contains(&w.as_str()) {
                    entities.push(self.workload_entity(w));
                }
                uid("Workload", w)
            }
            Resource::TrustDomain(td) => uid("TrustDomain", td),
            Resource::Issuer => uid("Issuer", "taskmint"),
        };
        self.decide(
            uid("Workload", &principal),
            action,
            resource_uid,
            context,
            entities,
            checked,
        )
    }

    fn decide(
        &self,
        principal: EntityUid,
        action: Action,
        resource: EntityUid,
        context: serde_json::Value,
        entities: Vec<Entity>,
        checked: bool,
    ) -> Result<Decision, PolicyError> {
        let action_uid = action.uid();
        // Requests the server builds are schema-checked in debug builds
        // (every test); release builds skip the per-request check, which
        // costs more than the evaluation. Text from `policy eval` is always
        // checked (`checked`).
        let schema = (checked || cfg!(debug_assertions)).then_some(&self.schema);
        // Text from `policy eval` goes through Cedar's JSON parser for its
        // messages; contexts the server builds are converted directly (Cedar's
        // generic JSON path was 40% of the policy cost per mint in the
        // profile). `Request::new` checks either against the schema when one
        // is given (always for `policy eval`, in debug builds for the rest).
        let context = if checked {
            Context::from_json_value(context, schema.map(|s| (s, &action_uid)))
                .map_err(|e| PolicyError::Request(format!("context: {}", render(&e))))?
        } else {
            context_of(context)?
        };
        let entities = Entities::from_entities(entities, schema)
            .map_err(|e| PolicyError::Request(format!("entities: {}", render(&e))))?;
        let request = Request::new(principal, action_uid, resource, context, schema)
            .map_err(|e| PolicyError::Request(render(&e)))?;
        let doc = self.current.read().expect("policy lock").clone();
        let response = self.authorizer.is_authorized(&request, &doc.set, &entities);
        let mut policies: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|p| p.to_string())
            .collect();
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        // Fail closed: Cedar skips a policy that errors, so an erroring
        // `forbid` would let the call through. Any error denies, and the
        // erroring policies are the ones that decided.
        let allowed = response.decision() == cedar_policy::Decision::Allow && errors.is_empty();
        if !errors.is_empty() {
            policies = response
                .diagnostics()
                .errors()
                .map(|e| match e {
                    cedar_policy::AuthorizationError::PolicyEvaluationError(e) => {
                        e.policy_id().to_string()
                    }
                })
                .collect();
        }
        policies.sort();
        policies.dedup();
        Ok(Decision {
            allowed,
            policies,
            errors,
        })
    }

    /// Evaluates a request given as text (for `taskmint policy eval`): the
    /// resource as an entity reference; a `Task::"<holder>#<id>"` gets the
    /// attributes of a plain task of that holder unless `task` is given.
    pub fn eval_text(
        &self,
        principal: &str,
        action: &str,
        resource: &str,
        context: Option<serde_json::Value>,
    ) -> Result<Decision, PolicyError> {
        let principal = SpiffeId::new(principal.trim()).map_err(|e| {
            PolicyError::Request(format!("principal `{principal}` is not a SPIFFE ID: {e}"))
        })?;
        let action = Action::parse(action.trim()).ok_or_else(|| {
            let all: Vec<_> = Action::ALL.iter().map(|a| a.as_str()).collect();
            PolicyError::Request(format!(
                "unknown action `{action}`; one of: {}",
                all.join(", ")
            ))
        })?;
        let r = parse_uid(resource)?;
        let id = r.id().unescaped().to_owned();
        let resource = match r.type_name().to_string().as_str() {
            "Task" => {
                let (holder, task_id) = id.split_once('#').ok_or_else(|| {
                    PolicyError::Request(format!(
                        "a Task id is `<holder SPIFFE ID>#<task id>`, not `{id}`"
                    ))
                })?;
                Resource::Task(TaskFacts {
                    holder: holder.to_owned(),
                    task_id: task_id.to_owned(),
                    owner: String::new(),
                    break_glass: action == Action::BreakGlass,
                    depth: 0,
                    audiences: Vec::new(),
                })
            }
            "Audience" => Resource::Audience(id),
            "Workload" => Resource::Workload(id),
            "TrustDomain" => Resource::TrustDomain(id),
            "Issuer" => Resource::Issuer,
            other => {
                return Err(PolicyError::Request(format!(
                    "unknown resource type `{other}`; one of Task, Audience, Workload, TrustDomain, Issuer"
                )));
            }
        };
        let context = context.unwrap_or_else(|| json!({}));
        let extra: Vec<String> = context
            .as_object()
            .into_iter()
            .flat_map(|o| o.values())
            .filter_map(|v| v.pointer("/__entity/id").and_then(|id| id.as_str()))
            .map(str::to_owned)
            .collect();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        self.authorize_checked(&principal, action, &resource, context, &extra, true)
    }
}

/// A context object as Cedar values: strings, 64-bit integers, booleans,
/// sets, records and `{"__entity": {"type", "id"}}` references, the same
/// reading Cedar's JSON format gives them.
fn context_of(context: serde_json::Value) -> Result<Context, PolicyError> {
    let serde_json::Value::Object(fields) = context else {
        return Err(PolicyError::Request("context: not a JSON object".into()));
    };
    let pairs = fields
        .into_iter()
        .map(|(k, v)| Ok((k, restricted(v)?)))
        .collect::<Result<Vec<_>, PolicyError>>()?;
    Context::from_pairs(pairs).map_err(|e| PolicyError::Request(format!("context: {}", render(&e))))
}

fn restricted(v: serde_json::Value) -> Result<RestrictedExpression, PolicyError> {
    use serde_json::Value as J;
    let bad = |what: String| PolicyError::Request(format!("context: {what}"));
    Ok(match v {
        J::Bool(b) => RestrictedExpression::new_bool(b),
        J::Number(n) => RestrictedExpression::new_long(
            n.as_i64()
                .ok_or_else(|| bad(format!("{n} is not a 64-bit integer")))?,
        ),
        J::String(s) => RestrictedExpression::new_string(s),
        J::Array(items) => RestrictedExpression::new_set(
            items
                .into_iter()
                .map(restricted)
                .collect::<Result<Vec<_>, _>>()?,
        ),
        J::Object(mut o) => match o.remove("__entity") {
            Some(e) => {
                let field = |f: &str| e.get(f).and_then(|v| v.as_str());
                let (Some(ty), Some(id), true) = (field("type"), field("id"), o.is_empty()) else {
                    return Err(bad(format!("malformed entity reference {e}")));
                };
                let ty = EntityTypeName::from_str(ty)
                    .map_err(|err| bad(format!("entity type `{ty}`: {}", render(&err))))?;
                RestrictedExpression::new_entity_uid(EntityUid::from_type_name_and_id(
                    ty,
                    EntityId::new(id),
                ))
            }
            None => RestrictedExpression::new_record(
                o.into_iter()
                    .map(|(k, v)| Ok((k, restricted(v)?)))
                    .collect::<Result<Vec<_>, PolicyError>>()?,
            )
            .map_err(|e| bad(render(&e)))?,
        },
        J::Null => return Err(bad("null has no Cedar value".into())),
    })
}

/// An entity reference JSON for a workload, for contexts.
pub fn workload_ref(id: &str) -> serde_json::Value {
    json!({"__entity": {"type": "Workload", "id": id}})
}

fn split_spiffe(id: &str) -> (&str, &str) {
    let rest = id.strip_prefix("spiffe://").unwrap_or(id);
    match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(text: &str) -> Engine {
        let schema = schema();
        let doc = PolicyDoc::parse(text, &schema).unwrap();
        let groups = Groups::new(
            vec![(
                "ci".into(),
                vec![SpiffePattern::parse("spiffe://example.org/ci/*").unwrap()],
            )],
            &["spiffe://example.org/admin".into()],
        );
        Engine::with_doc(schema, doc, groups, Path::new("p.cedar"), 0)
    }

    #[test]
    fn default_policy_validates_and_decides_with_ids() {
        let e = engine(&DEFAULT_POLICY.replace("TRUST_DOMAIN", "example.org"));
        let ctx = |ttl: i64| {
            json!({"task_id": "t", "ttl_seconds": ttl, "renewal_count": 0,
                   "break_glass": false, "depth": 0})
        };
        let agent = SpiffeId::new("spiffe://example.org/agent").unwrap();
        let d = e
            .authorize(
                &agent,
                Action::MintJwt,
                &Resource::Audience("db".into()),
                ctx(300),
                &[],
            )
            .unwrap();
        assert!(d.allowed);
        assert_eq!(d.policies, vec!["workloads-mint-own-tasks".to_owned()]);
        let d = e
            .authorize(
                &agent,
                Action::MintJwt,
                &Resource::Audience("db".into()),
                ctx(901),
                &[],
            )
            .unwrap();
        assert!(!d.allowed);
        assert!(d.policies.is_empty());
        assert_eq!(d.describe(), "no policy permits");
        let d = e
            .eval_text(
                "spiffe://example.org/admin",
                "admin",
                "Issuer::\"taskmint\"",
                Some(json!({"operation": "list_grants"})),
            )
            .unwrap();
        assert_eq!(d.policies, vec!["admins-administer".to_owned()]);
        // An explicit forbid names itself.
        let d = e
            .eval_text(
                "spiffe://example.org/agent",
                "delegate",
                "Task::\"spiffe://example.org/agent#t\"",
                Some(json!({"delegate": workload_ref("spiffe://other.org/x"),
                            "task_id": "t.sub", "audiences": ["db"],
                            "lifetime_seconds": 60, "depth": 1})),
            )
            .unwrap();
        assert!(!d.allowed);
        assert_eq!(
            d.policies,
            vec!["delegates-stay-in-trust-domain".to_owned()]
        );
    }

    #[test]
    fn server_contexts_are_converted_like_cedar_json_and_schema_checked() {
        let e = engine(&DEFAULT_POLICY.replace("TRUST_DOMAIN", "example.org"));
        let agent = SpiffeId::new("spiffe://example.org/agent").unwrap();
        let task = Resource::Task(TaskFacts {
            holder: agent.to_string(),
            task_id: "t".into(),
            owner: String::new(),
            break_glass: false,
            depth: 0,
            audiences: vec!["db".into()],
        });
        // Entity references, sets and integers: the direct conversion and
        // Cedar's own JSON reading must decide alike.
        for (delegate, allowed) in [
            ("spiffe://example.org/sidecar", true),
            ("spiffe://other.org/x", false),
        ] {
            let ctx = json!({"delegate": workload_ref(delegate), "task_id": "t.sub",
                             "audiences": ["db"], "lifetime_seconds": 60, "depth": 1});
            let direct = e
                .authorize(&agent, Action::Delegate, &task, ctx.clone(), &[delegate])
                .unwrap();
            let text = e
                .eval_text(
                    &agent.to_string(),
                    "delegate",
                    "Task::\"spiffe://example.org/agent#t\"",
                    Some(ctx),
                )
                .unwrap();
            assert_eq!(direct.allowed, allowed, "{delegate}: {}", direct.describe());
            assert_eq!(direct.policies, text.policies, "{delegate}");
        }
        // Debug builds check what the server builds against the schema
        // (release builds skip that per-request check).
        let wrong = json!({"task_id": "t", "ttl_seconds": "300", "renewal_count": 0,
                           "break_glass": false, "depth": 0});
        let r = e.authorize(
            &agent,
            Action::MintJwt,
            &Resource::Audience("db".into()),
            wrong,
            &[],
        );
        if cfg!(debug_assertions) {
            assert!(matches!(r, Err(PolicyError::Request(_))), "{r:?}");
        }
        for bad in [
            json!({"x": null}),
            json!({"x": 1.5}),
            json!({"x": {"__entity": {"type": "Workload"}}}),
        ] {
            let r = e.authorize(&agent, Action::Watch, &Resource::Issuer, bad.clone(), &[]);
            assert!(matches!(r, Err(PolicyError::Request(_))), "{bad}: {r:?}");
        }
    }

    #[test]
    fn groups_and_refusals() {
        let e = engine(
            r#"@id("ci-watch") permit(principal in Group::"ci", action == Action::"watch", resource);"#,
        );
        let ctx = json!({"operation": "watch", "subscriber": ""});
        let ci = SpiffeId::new("spiffe://example.org/ci/runner").unwrap();
        let other = SpiffeId::new("spiffe://example.org/web").unwrap();
        assert!(
            e.authorize(&ci, Action::Watch, &Resource::Issuer, ctx.clone(), &[])
                .unwrap()
                .allowed
        );
        assert!(
            !e.authorize(&other, Action::Watch, &Resource::Issuer, ctx, &[])
                .unwrap()
                .allowed
        );
        let schema = schema();
        assert!(matches!(
            PolicyDoc::parse("permit(principal, action, resource", &schema),
            Err(PolicyError::Parse(_))
        ));
        let bad = r#"@id("typo") permit(principal, action == Action::"mint_jwt", resource) when { context.tll_seconds < 5 };"#;
        match PolicyDoc::parse(bad, &schema) {
            Err(PolicyError::Validate(m)) => assert!(m.contains("typo"), "{m}"),
            other => panic!("{other:?}"),
        }
        let dup = r#"@id("a") permit(principal, action, resource); @id("a") forbid(principal, action, resource);"#;
        assert!(matches!(
            PolicyDoc::parse(dup, &schema),
            Err(PolicyError::Parse(_))
        ));
    }

    #[test]
    fn an_erroring_policy_denies_and_empty_files_are_refused() {
        let e = engine(
            r#"@id("mint") permit(principal, action == Action::"mint_jwt", resource);
               @id("overflowing-forbid") forbid(principal, action == Action::"mint_jwt", resource)
               when { context.ttl_seconds * 4611686018427387904 > 0 };"#,
        );
        let agent = SpiffeId::new("spiffe://example.org/agent").unwrap();
        let ctx = json!({"task_id": "t", "ttl_seconds": 300, "renewal_count": 0,
                         "break_glass": false, "depth": 0});
        let d = e
            .authorize(
                &agent,
                Action::MintJwt,
                &Resource::Audience("db".into()),
                ctx,
                &[],
            )
            .unwrap();
        assert!(!d.allowed, "fail closed");
        assert_eq!(d.policies, vec!["overflowing-forbid".to_owned()]);
        assert!(
            d.describe().contains("failed to evaluate"),
            "{}",
            d.describe()
        );
        for text in ["", "// nothing but a comment\n"] {
            assert!(matches!(
                PolicyDoc::parse(text, &schema()),
                Err(PolicyError::Parse(m)) if m.contains("no policies")
            ));
        }
    }

    #[test]
    fn polls_wait_for_stable_content_and_report_a_bad_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.cedar");
        let good = r#"@id("a") permit(principal, action == Action::"watch", resource);"#;
        std::fs::write(&path, good).unwrap();
        let e = Engine::load(&path, Groups::default(), 0).unwrap();
        assert_eq!(e.reload(false, 1), Reload::Unchanged);
        std::fs::write(&path, "permit (principal, action").unwrap();
        assert_eq!(e.reload(false, 2), Reload::Unchanged, "seen once: wait");
        assert!(matches!(e.reload(false, 3), Reload::Refused(_)));
        assert_eq!(e.reload(false, 4), Reload::Unchanged, "reported once");
        assert!(e.status().last_error.is_some());
        // SIGHUP reports it again.
        assert!(matches!(e.reload(true, 5), Reload::Refused(_)));
        // A missing file is refused (once) too; the policy in force stays.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            e.reload(true, 6),
            Reload::Refused(PolicyError::Read { .. })
        ));
        assert_eq!(e.reload(false, 7), Reload::Unchanged);
        assert_eq!(e.status().ids, vec!["a".to_owned()]);
        let better =
            format!("{good}\n@id(\"b\") permit(principal, action == Action::\"admin\", resource);");
        std::fs::write(&path, &better).unwrap();
        assert_eq!(e.reload(false, 8), Reload::Unchanged);
        assert!(matches!(e.reload(false, 9), Reload::Loaded { ids, .. } if ids.len() == 2));
        assert_eq!(e.status().last_error, None);
    }
}
