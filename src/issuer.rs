//! The domain service: tasks, minting, renewal, revocation, status and CRL,
//! from an authenticated caller and a decoded request to durable state.
//!
//! Order for every mint: validate the request, find or implicitly begin the
//! task, decide the validity window (requested ttl, configured max, task
//! deadline, caller SVID notAfter, CA notAfter), sign, record (refused if the
//! task ended meanwhile), return. A failure at any step stores nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use rand::RngCore;
use serde_json::json;

use crate::Error;
use crate::audit::{AuditDraft, AuditEvent, decision, kind};
use crate::ca::{self, SigningCa, X509Template};
pub use crate::clock::now_unix;
use crate::clock::rfc3339;
use crate::config::{Config, FeedConfig, LimitsConfig};
use crate::identity::{Caller, SpiffeId, SpiffePattern, TaskId, TrustDomain};
use crate::jwt::{self, Actor, Claims, Confirmation, JwtSigner};
use crate::policy::{self, Action, Decision, Engine, PolicyStatus, Reload, Resource, TaskFacts};
use crate::ratelimit::RateLimiter;
use crate::revocation::Revocations;
use crate::store::{
    CredentialKind, CredentialRecord, GrantFilter, RecordRefusal, Review, ReviewOutcome,
    RevokeRequest, RevokeScope, Store, TaskRecord, TaskState,
};
use crate::tls::TlsMaterial;
use crate::trust::{self, TrustBundleDoc};

/// Clock-skew allowance: X.509 notBefore and JWT nbf are set this far back
/// (SPIRE does the same), so a relying party slightly behind accepts a fresh
/// credential.
pub const BACKDATE_SECS: i64 = 10;

/// Longest audience accepted, in bytes.
pub const MAX_AUDIENCE_LEN: usize = 256;

/// Reason recorded when a task is completed.
pub const REASON_COMPLETED: &str = "task_completed";
/// Reason recorded when a renewal replaces its predecessor.
pub const REASON_SUPERSEDED: &str = "superseded";

/// A request for an X.509-SVID, already decoded from the wire.
#[derive(Debug, Clone)]
pub struct MintX509 {
    /// Raw task id (validated here).
    pub task_id: String,
    /// DER PKCS#10.
    pub csr: Vec<u8>,
    /// `None` = configured default.
    pub ttl: Option<Duration>,
}

/// A request for a JWT-SVID, already decoded from the wire.
#[derive(Debug, Clone)]
pub struct MintJwt {
    /// Raw task id (validated here).
    pub task_id: String,
    /// Requested audience.
    pub audience: String,
    /// `None` = configured default.
    pub ttl: Option<Duration>,
}

/// A minted credential.
#[derive(Debug, Clone)]
pub struct Minted {
    /// What was stored.
    pub record: CredentialRecord,
    /// X.509: leaf first, then the signing CA chain. Empty for JWT.
    pub chain: Vec<Vec<u8>>,
    /// JWT: the compact token. Empty for X.509.
    pub token: String,
    /// The task it was minted for.
    pub task: TaskRecord,
}

/// `BeginTask`, decoded.
#[derive(Debug, Clone, Default)]
pub struct BeginTask {
    /// Raw task id.
    pub task_id: String,
    /// Purpose.
    pub purpose: String,
    /// Ticket reference.
    pub ticket: String,
    /// `None` = default task lifetime.
    pub lifetime: Option<Duration>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Accountable owner asked for (policy must allow naming one).
    pub owner: Option<String>,
    /// Audiences the task's JWTs are restricted to (empty = unrestricted).
    pub audiences: Vec<String>,
    /// Emergency access: needs a justification and a ticket.
    pub break_glass: bool,
    /// Why break-glass is needed.
    pub justification: String,
}

/// `DelegateTask`, decoded.
#[derive(Debug, Clone)]
pub struct Delegate {
    /// The parent task (the caller's, unless the policy allows otherwise).
    pub parent: TaskRef,
    /// SPIFFE ID of the workload the child task is for.
    pub delegate: String,
    /// Audiences: a non-empty subset of the parent's.
    pub audiences: Vec<String>,
    /// `None` = until the parent's deadline.
    pub lifetime: Option<Duration>,
    /// Child task id; `None` = derived from the parent's.
    pub task_id: Option<String>,
}

/// An active task and its active credentials (the inventory).
#[derive(Debug, Clone)]
pub struct Grant {
    /// The task.
    pub task: TaskRecord,
    /// Its unrevoked, unexpired credentials.
    pub credentials: Vec<CredentialRecord>,
    /// Seconds until the task's deadline.
    pub remaining: i64,
}

/// A task's story from the audit trail.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// The task now.
    pub task: TaskRecord,
    /// Every audit event about it, in order.
    pub events: Vec<AuditEvent>,
    /// For each revocation of it (by sequence): the first acknowledgement of
    /// each subscriber that covers it.
    pub acks: Vec<(u64, Vec<AuditEvent>)>,
}

/// A task named by id and (optionally) owner.
#[derive(Debug, Clone)]
pub struct TaskRef {
    /// Raw task id.
    pub task_id: String,
    /// Owner SPIFFE ID; `None` = the caller.
    pub owner: Option<String>,
}

/// What a revocation call did.
#[derive(Debug, Clone, Default)]
pub struct RevokeOutcome {
    /// Credentials revoked.
    pub revoked: u32,
    /// Events written.
    pub seqs: Vec<u64>,
    /// Human-readable outcome.
    pub message: String,
}

/// What to revoke, decoded.
#[derive(Debug, Clone)]
pub enum RevokeTarget {
    /// One credential.
    Credential(String),
    /// A task.
    Task(TaskRef),
    /// A workload.
    Workload(String),
    /// A trust domain.
    TrustDomain(String),
}

/// `Renew`, decoded.
#[derive(Debug, Clone)]
pub struct Renew {
    /// The predecessor.
    pub credential_id: String,
    /// New CSR for X.509.
    pub csr: Vec<u8>,
    /// `None` = default.
    pub ttl: Option<Duration>,
    /// Revoke the predecessor at once.
    pub revoke_previous: bool,
}

/// State of a credential now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialState {
    /// Valid.
    Active {
        /// Unix seconds.
        expires_at: i64,
    },
    /// Revoked.
    Revoked {
        /// Reason.
        reason: String,
        /// Unix seconds.
        revoked_at: i64,
        /// Unix seconds.
        expires_at: i64,
    },
    /// Expired.
    Expired {
        /// Unix seconds.
        expires_at: i64,
    },
    /// Not issued here.
    Unknown,
}

/// Longest justification accepted, in bytes.
pub const MAX_JUSTIFICATION_LEN: usize = 1024;

/// Largest inventory page.
pub const MAX_PAGE_SIZE: u32 = 500;

/// A signed CRL.
#[derive(Debug, Clone)]
pub struct Crl {
    /// DER.
    pub der: Vec<u8>,
    /// CRL number.
    pub number: u64,
    /// Unix seconds.
    pub this_update: i64,
    /// Unix seconds.
    pub next_update: i64,
}

/// The issuer.
pub struct Issuer {
    trust_domain: TrustDomain,
    jwt_issuer: String,
    limits: LimitsConfig,
    feed: FeedConfig,
    crl_validity: Duration,
    ca: SigningCa,
    jwt: Arc<JwtSigner>,
    store: Arc<dyn Store>,
    revocations: Arc<Revocations>,
    material: Arc<TlsMaterial>,
    policy: Arc<Engine>,
    owner_rules: Vec<(SpiffePattern, String)>,
    require_owner: bool,
    limiter: RateLimiter,
    tasks: TaskCache,
}

/// Tasks seen active, by (holder, task id): what policies read of a task
/// (holder, owner, break-glass, depth, audiences, deadline) never changes
/// once it is begun, so a mint need not read it again. Its state may: the
/// store checks that in the transaction that records the credential, so a
/// stale entry costs a refused mint, never a wrong one.
#[derive(Debug, Default)]
struct TaskCache(std::sync::Mutex<std::collections::HashMap<(String, String), TaskRecord>>);

/// Entries kept before the cache starts over.
const TASK_CACHE_MAX: usize = 100_000;

impl TaskCache {
    fn get(&self, holder: &str, task_id: &str) -> Option<TaskRecord> {
        let key = (holder.to_owned(), task_id.to_owned());
        self.0.lock().expect("task cache").get(&key).cloned()
    }

    fn put(&self, t: &TaskRecord) {
        if t.state != TaskState::Active {
            return;
        }
        let mut m = self.0.lock().expect("task cache");
        if m.len() >= TASK_CACHE_MAX {
            m.clear();
        }
        m.insert((t.owner.clone(), t.task_id.clone()), t.clone());
    }

    fn forget(&self, holder: &str, task_id: &str) {
        let key = (holder.to_owned(), task_id.to_owned());
        self.0.lock().expect("task cache").remove(&key);
    }
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill_bytes(&mut b);
    b
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.len() > max {
        return Err(Error::InvalidArgument(format!(
            "{field} is {} bytes long; at most {max} are allowed",
            value.len()
        )));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(Error::InvalidArgument(format!(
            "{field} contains control characters"
        )));
    }
    Ok(())
}

/// What policies see of a task.
fn facts(t: &TaskRecord) -> TaskFacts {
    TaskFacts {
        holder: t.owner.clone(),
        task_id: t.task_id.clone(),
        owner: t.accountable_owner.clone(),
        break_glass: t.break_glass,
        depth: t.depth,
        audiences: t.audiences.clone(),
    }
}

fn secs(d: Duration) -> i64 {
    d.as_secs() as i64
}

impl Issuer {
    /// Assembles the issuer from loaded parts.
    pub fn new(
        cfg: &Config,
        ca: SigningCa,
        jwt: Arc<JwtSigner>,
        revocations: Arc<Revocations>,
        material: Arc<TlsMaterial>,
        policy: Arc<Engine>,
    ) -> Self {
        Self {
            trust_domain: TrustDomain::new(&cfg.trust_domain).expect("validated at config load"),
            jwt_issuer: cfg.jwt_issuer(),
            limits: cfg.limits.clone(),
            feed: cfg.feed.clone(),
            crl_validity: cfg.ca.crl_validity,
            ca,
            jwt,
            store: revocations.store().clone(),
            revocations,
            material,
            policy,
            owner_rules: cfg
                .ownership
                .rules
                .iter()
                .map(|r| {
                    (
                        SpiffePattern::parse(&r.pattern).expect("validated at config load"),
                        r.owner.clone(),
                    )
                })
                .collect(),
            require_owner: cfg.ownership.require_owner,
            limiter: RateLimiter::new(cfg.limits.rate.per_second, cfg.limits.rate.burst),
            tasks: TaskCache::default(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The revocation hub.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// Feed settings.
    pub fn feed_config(&self) -> &FeedConfig {
        &self.feed
    }

    /// The issuer's own name in the audit trail (expiry, reloads).
    pub fn system_actor(&self) -> &str {
        &self.jwt_issuer
    }

    /// Credentials are minted only for workloads of the issuer's own trust
    /// domain: its CA and JWT key speak for that trust domain alone.
    /// Federated workloads may authenticate (watch, check status), not mint.
    fn check_mintable(&self, id: &SpiffeId) -> Result<(), Error> {
        if id.trust_domain() != &self.trust_domain {
            return Err(Error::PermissionDenied(format!(
                "credentials are minted only for workloads of trust domain `{}`; `{id}` belongs to `{}`",
                self.trust_domain,
                id.trust_domain()
            )));
        }
        Ok(())
    }

    fn ttl(&self, requested: Option<Duration>) -> Result<i64, Error> {
        let ttl = requested.unwrap_or(self.limits.default_ttl);
        if ttl > self.limits.max_ttl {
            return Err(Error::InvalidArgument(format!(
                "requested ttl {} exceeds the configured maximum {}",
                humantime::format_duration(ttl),
                humantime::format_duration(self.limits.max_ttl)
            )));
        }
        Ok(secs(ttl))
    }

    /// The accountable owner the config maps `holder` to.
    fn mapped_owner(&self, holder: &str) -> Option<&str> {
        self.owner_rules
            .iter()
            .find(|(p, _)| p.matches(holder))
            .map(|(_, o)| o.as_str())
    }

    fn check_owned(&self, t: &TaskRecord) -> Result<(), Error> {
        if self.require_owner && t.accountable_owner.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "task `{}` would have no accountable owner: no ownership rule matches `{}` and \
                 require_owner is set; begin it with an owner",
                t.task_id, t.owner
            )));
        }
        Ok(())
    }

    /// Evaluates the policy; a denial is audited and becomes PERMISSION_DENIED
    /// naming the deciding policies (never their text).
    async fn authorize(
        &self,
        caller: &Caller,
        action: Action,
        resource: &Resource,
        context: serde_json::Value,
        extra: &[&str],
        draft: &AuditDraft,
    ) -> Result<Decision, Error> {
        let d = self
            .policy
            .authorize(&caller.spiffe_id, action, resource, context, extra)?;
        for e in &d.errors {
            tracing::warn!(action = action.as_str(), error = %e, "a policy failed to evaluate");
        }
        if !d.allowed {
            let message = format!(
                "`{}` may not {} {resource}: {}",
                caller.spiffe_id,
                action.as_str(),
                d.describe()
            );
            let event = draft
                .clone()
                .decided(decision::DENY, &d.policies)
                .because(message.clone());
            self.store.append_audit(&[event]).await?;
            tracing::info!(spiffe_id = %caller.spiffe_id, action = action.as_str(), %resource, policies = ?d.policies, "denied");
            return Err(Error::PermissionDenied(message));
        }
        Ok(d)
    }

    /// Audits a refused request and passes the error on: `deny` for a
    /// structural rule, `refused` for a limit or the state (the draft keeps
    /// the ids of the policies that had allowed it, if any). Internal failures
    /// are not audited (the store may be what failed); they are logged where
    /// they are mapped.
    async fn refuse(&self, mut draft: AuditDraft, verdict: &str, e: Error) -> Error {
        if e.is_internal() {
            return e;
        }
        draft.decision = verdict.into();
        draft.reason = e.to_string();
        match self.store.append_audit(&[draft]).await {
            Ok(_) => e,
            Err(se) => se.into(),
        }
    }

    /// Takes a mint token for the caller, or audits and refuses.
    async fn rate_limit(&self, caller: &Caller, draft: &AuditDraft) -> Result<(), Error> {
        let id = caller.spiffe_id.to_string();
        if let Err(wait) = self.limiter.check(&id) {
            let retry_ms = wait.as_millis().max(1) as u64;
            let message = format!(
                "rate limit for `{id}` exceeded ({}/s, burst {}); retry after {retry_ms} ms",
                self.limits.rate.per_second, self.limits.rate.burst
            );
            let event = draft
                .clone()
                .decided(decision::RATE_LIMITED, &[])
                .because(message.clone());
            self.store.append_audit(&[event]).await?;
            return Err(Error::ResourceExhausted {
                message,
                retry_after: Duration::from_millis(retry_ms),
            });
        }
        Ok(())
    }

    /// Authorizes a call that changes nothing and records the allow (a
    /// denial is recorded by [`Issuer::authorize`]).
    async fn authorize_recorded(
        &self,
        caller: &Caller,
        action: Action,
        resource: &Resource,
        context: serde_json::Value,
        draft: AuditDraft,
    ) -> Result<Decision, Error> {
        let d = self
            .authorize(caller, action, resource, context, &[], &draft)
            .await?;
        self.store
            .append_audit(&[draft.decided(decision::ALLOW, &d.policies)])
            .await?;
        Ok(d)
    }

    /// Authorizes an administrative call and audits it.
    async fn admin(&self, caller: &Caller, operation: &str) -> Result<Decision, Error> {
        let draft = AuditDraft::new(kind::ADMIN, &caller.spiffe_id.to_string(), now_unix())
            .subject(operation);
        let context = json!({ "operation": operation });
        self.authorize_recorded(caller, Action::Admin, &Resource::Issuer, context, draft)
            .await
    }

    /// The task's holder: the caller, or someone else if the policy allows.
    fn holder_of(&self, caller: &Caller, r: &TaskRef) -> Result<(TaskId, String), Error> {
        let task = TaskId::parse(&r.task_id)?;
        let holder = match r.owner.as_deref().filter(|o| !o.is_empty()) {
            None => caller.spiffe_id.to_string(),
            Some(o) => SpiffeId::new(o)
                .map_err(|e| Error::InvalidArgument(format!("task owner `{o}`: {e}")))?
                .to_string(),
        };
        Ok((task, holder))
    }

    async fn find_task(&self, holder: &str, task: &TaskId) -> Result<TaskRecord, Error> {
        self.store
            .task(holder, task.as_str())
            .await?
            .ok_or_else(|| Error::NotFound(format!("task `{task}` of `{holder}` is unknown")))
    }

    /// Begins a task explicitly (break-glass too).
    pub async fn begin_task(&self, caller: &Caller, req: BeginTask) -> Result<TaskRecord, Error> {
        let task = TaskId::parse(&req.task_id)?;
        let early = AuditDraft::new(
            if req.break_glass {
                kind::BREAK_GLASS
            } else {
                kind::TASK_BEGIN
            },
            &caller.spiffe_id.to_string(),
            now_unix(),
        )
        .task(
            &caller.spiffe_id.to_string(),
            task.as_str(),
            req.break_glass,
        );
        if let Err(e) = self.check_mintable(&caller.spiffe_id) {
            return Err(self.refuse(early, decision::DENY, e).await);
        }
        check_text("purpose", &req.purpose, 1024)?;
        check_text("ticket", &req.ticket, 256)?;
        check_text("justification", &req.justification, MAX_JUSTIFICATION_LEN)?;
        if req.labels.len() > 32 {
            return Err(Error::InvalidArgument(format!(
                "{} labels given; at most 32 are allowed",
                req.labels.len()
            )));
        }
        for (k, v) in &req.labels {
            check_text("label key", k, 256)?;
            check_text("label value", v, 256)?;
            if k.is_empty() {
                return Err(Error::InvalidArgument("label key is empty".into()));
            }
        }
        let audiences = validate_audiences(&req.audiences)?;
        let requested_owner = match req.owner.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(o) => {
                check_text("owner", o, 256)?;
                Some(o.to_owned())
            }
        };
        if req.break_glass {
            if req.justification.trim().is_empty() {
                return Err(Error::InvalidArgument(
                    "break-glass needs a justification: say why normal access is not enough".into(),
                ));
            }
            if req.ticket.trim().is_empty() {
                return Err(Error::InvalidArgument(
                    "break-glass needs a ticket (incident or change reference)".into(),
                ));
            }
        }
        let (max, what) = if req.break_glass {
            (self.limits.break_glass_max_lifetime, "break-glass maximum")
        } else {
            (self.limits.max_task_lifetime, "configured maximum")
        };
        let lifetime = match req.lifetime {
            Some(l) => l,
            None => self.limits.default_task_lifetime.min(max),
        };
        if lifetime > max {
            let e = Error::InvalidArgument(format!(
                "requested task lifetime {} exceeds the {what} {}",
                humantime::format_duration(lifetime),
                humantime::format_duration(max)
            ));
            return Err(self.refuse(early, decision::REFUSED, e).await);
        }
        if lifetime.is_zero() {
            return Err(Error::InvalidArgument(
                "task lifetime must be positive".into(),
            ));
        }
        let now = now_unix();
        let holder = caller.spiffe_id.to_string();
        let owner = requested_owner
            .clone()
            .or_else(|| self.mapped_owner(&holder).map(str::to_owned))
            .unwrap_or_default();
        let mut record = TaskRecord::new(&holder, task.as_str(), now, now + secs(lifetime));
        record.purpose = req.purpose;
        record.ticket = req.ticket;
        record.labels = req.labels;
        record.implicit = false;
        record.accountable_owner = owner;
        record.break_glass = req.break_glass;
        record.justification = req.justification;
        record.audiences = audiences;
        let (action, event_kind) = if req.break_glass {
            (Action::BreakGlass, kind::BREAK_GLASS)
        } else {
            (Action::BeginTask, kind::TASK_BEGIN)
        };
        let draft =
            AuditDraft::new(event_kind, &holder, now).task(&holder, task.as_str(), req.break_glass);
        let context = json!({
            "lifetime_seconds": secs(lifetime),
            "owner": record.accountable_owner,
            "owner_requested": requested_owner.is_some(),
            "justification": record.justification,
            "ticket": record.ticket,
        });
        let d = self
            .authorize(
                caller,
                action,
                &Resource::Task(facts(&record)),
                context,
                &[],
                &draft,
            )
            .await?;
        let draft = draft.decided(decision::ALLOW, &d.policies);
        let result = async {
            self.check_owned(&record)?;
            let mut event = draft.clone().because(format!(
                "begun until {}; owner `{}`",
                rfc3339(record.deadline),
                record.accountable_owner
            ));
            if req.break_glass {
                event.reason = format!(
                    "{}; ticket `{}`; justification: {}",
                    event.reason, record.ticket, record.justification
                );
            }
            let (stored, created) = self.store.begin_task(&record, &[event]).await?;
            if !created {
                return Err(Error::AlreadyExists(format!(
                    "task `{task}` was already begun at {} ({}, deadline {})",
                    rfc3339(stored.created_at),
                    stored.state.as_str(),
                    rfc3339(stored.deadline)
                )));
            }
            Ok(stored)
        }
        .await;
        let stored = match result {
            Ok(t) => t,
            Err(e) => return Err(self.refuse(draft, decision::REFUSED, e).await),
        };
        if stored.break_glass {
            tracing::warn!(
                spiffe_id = %holder,
                task = %stored.task_id,
                ticket = %stored.ticket,
                deadline = %rfc3339(stored.deadline),
                "BREAK-GLASS task begun; it stays on the review list until an admin marks it reviewed"
            );
        }
        Ok(stored)
    }

    /// Hands part of a task to another workload: a child task held by the
    /// delegate, with a subset of the parent's audiences, ending no later
    /// than the parent, at most `max_delegation_depth` deep.
    pub async fn delegate(&self, caller: &Caller, req: Delegate) -> Result<TaskRecord, Error> {
        let (parent_id, parent_holder) = self.holder_of(caller, &req.parent)?;
        let delegate_id = SpiffeId::new(req.delegate.trim()).map_err(|e| {
            Error::InvalidArgument(format!(
                "delegate `{}` is not a SPIFFE ID: {e}",
                req.delegate
            ))
        })?;
        let delegate = delegate_id.to_string();
        let audiences = validate_audiences(&req.audiences)?;
        if audiences.is_empty() {
            return Err(Error::InvalidArgument(
                "a delegation names at least one audience".into(),
            ));
        }
        // Child ids extend the parent's, so a delegator cannot take over an
        // id the delegate uses (or will use) for a task of its own.
        let prefix = format!("{}.", parent_id.as_str());
        let child_id = match &req.task_id {
            Some(id) if !id.is_empty() => {
                let id = TaskId::parse(id)?;
                if !id.as_str().starts_with(&prefix) || id.as_str().len() == prefix.len() {
                    return Err(Error::InvalidArgument(format!(
                        "a delegated task's id extends its parent's: `{prefix}<suffix>`, not `{id}`"
                    )));
                }
                id
            }
            _ => {
                let suffix = format!(".d{}", hex::encode(random_bytes::<4>()));
                let base: String = parent_id
                    .as_str()
                    .chars()
                    .take(TaskId::MAX_LEN - suffix.len())
                    .collect();
                TaskId::parse(&format!("{base}{suffix}"))?
            }
        };
        let parent = self.find_task(&parent_holder, &parent_id).await?;
        let now = now_unix();
        let me = caller.spiffe_id.to_string();
        let depth = parent.depth + 1;
        let left = (parent.deadline - now).max(0);
        // Compared as durations first: a huge request cannot overflow.
        let lifetime = match req.lifetime {
            None => left,
            Some(d) if d > Duration::from_secs(left as u64) => {
                return Err(Error::InvalidArgument(format!(
                    "a delegation must end by the parent's deadline {} ({left}s from now); {}s was asked",
                    rfc3339(parent.deadline),
                    d.as_secs()
                )));
            }
            Some(d) => secs(d),
        };
        let draft = AuditDraft::new(kind::TASK_DELEGATE, &me, now)
            .task(&parent.owner, &parent.task_id, parent.break_glass)
            .subject(delegate.as_str());
        if let Err(e) = self.check_mintable(&delegate_id) {
            return Err(self.refuse(draft, decision::DENY, e).await);
        }
        let context = json!({
            "delegate": policy::workload_ref(delegate.as_str()),
            "task_id": child_id.as_str(),
            "audiences": audiences,
            "lifetime_seconds": lifetime,
            "depth": depth,
        });
        let d = self
            .authorize(
                caller,
                Action::Delegate,
                &Resource::Task(facts(&parent)),
                context,
                &[delegate.as_str()],
                &draft,
            )
            .await?;
        let draft = draft.decided(decision::ALLOW, &d.policies);
        let result = async {
            ensure_active(&parent, now)?;
            if depth > self.limits.max_delegation_depth {
                return Err(Error::FailedPrecondition(format!(
                    "task `{}` is {} delegations deep; max_delegation_depth is {}",
                    parent.task_id, parent.depth, self.limits.max_delegation_depth
                )));
            }
            if parent.audiences.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "task `{}` declares no audiences, so there is nothing to delegate a subset of; \
                     begin it with its audiences",
                    parent.task_id
                )));
            }
            if let Some(a) = audiences.iter().find(|a| !parent.audiences.contains(a)) {
                return Err(Error::InvalidArgument(format!(
                    "audience `{a}` is not among the parent task's audiences ({})",
                    parent.audiences.join(", ")
                )));
            }
            if lifetime == 0 || lifetime > left {
                return Err(Error::InvalidArgument(format!(
                    "a delegation must end by the parent's deadline {} ({}s from now); {}s was asked",
                    rfc3339(parent.deadline),
                    parent.deadline - now,
                    lifetime
                )));
            }
            let mut child = TaskRecord::new(delegate.as_str(), child_id.as_str(), now, now + lifetime);
            child.implicit = false;
            child.purpose = format!("delegated by `{}` from task `{}`", parent.owner, parent.task_id);
            child.ticket = parent.ticket.clone();
            child.accountable_owner = parent.accountable_owner.clone();
            child.break_glass = parent.break_glass;
            child.justification = parent.justification.clone();
            child.parent = Some((parent.owner.clone(), parent.task_id.clone()));
            child.depth = depth;
            child.audiences = audiences.clone();
            self.check_owned(&child)?;
            let reason = format!(
                "task `{}` delegated to `{delegate}` until {} for {}",
                child.task_id,
                rfc3339(child.deadline),
                audiences.join(", ")
            );
            let on_parent = draft.clone().because(reason.clone());
            let mut on_child = draft.clone().because(reason);
            on_child.kind = kind::TASK_BEGIN.into();
            on_child.task_owner = child.owner.clone();
            on_child.task_id = child.task_id.clone();
            let (stored, created) = self.store.begin_task(&child, &[on_parent, on_child]).await?;
            if !created {
                return Err(Error::AlreadyExists(format!(
                    "`{delegate}` already has a task `{}`",
                    child.task_id
                )));
            }
            Ok(stored)
        }
        .await;
        match result {
            Ok(t) => Ok(t),
            Err(e) => Err(self.refuse(draft, decision::REFUSED, e).await),
        }
    }

    /// The delegation chain of a task, nearest delegator first.
    async fn delegation_chain(&self, task: &TaskRecord) -> Result<Vec<String>, Error> {
        let mut chain = Vec::new();
        let mut next = task.parent.clone();
        // Depth is capped by config; the bound also guards a corrupt cycle.
        while let Some((holder, id)) = next {
            if chain.len() > self.limits.max_delegation_depth as usize + 1 {
                break;
            }
            chain.push(holder.clone());
            next = self.store.task(&holder, &id).await?.and_then(|t| t.parent);
        }
        Ok(chain)
    }

    fn expiry(
        &self,
        caller: &Caller,
        task: &TaskRecord,
        now: i64,
        ttl: i64,
        kind: CredentialKind,
    ) -> Result<i64, Error> {
        let mut exp = (now + ttl).min(caller.svid_not_after).min(task.deadline);
        if kind == CredentialKind::X509 {
            exp = exp.min(self.ca.not_after());
        }
        if exp <= now {
            return Err(Error::FailedPrecondition(
                "no validity left: the caller's SVID, the task or the signing CA ends now".into(),
            ));
        }
        Ok(exp)
    }

    async fn record(
        &self,
        record: &CredentialRecord,
        max_active: u32,
        audit: AuditDraft,
    ) -> Result<(), Error> {
        let what = match &record.audience {
            Some(aud) => format!("JWT for `{aud}`"),
            None => "X.509-SVID".to_owned(),
        };
        let mut event = audit.credential(&record.id).because(format!(
            "issued {what} valid until {}",
            rfc3339(record.not_after)
        ));
        if let Some(p) = &record.predecessor {
            event.subject = p.clone();
            event.reason = format!(
                "{} (renewal {} of `{p}`)",
                event.reason, record.renewal_count
            );
        }
        match self
            .store
            .record_credential(record, max_active, &[event])
            .await?
        {
            Ok(()) => Ok(()),
            Err(RecordRefusal::TaskEnded(state)) => {
                self.tasks.forget(&record.task_owner, &record.task_id);
                Err(Error::FailedPrecondition(format!(
                    "task `{}` is {}; no more credentials are minted for it",
                    record.task_id,
                    state.as_str()
                )))
            }
            Err(RecordRefusal::AlreadyRenewed(pred)) => Err(Error::FailedPrecondition(format!(
                "credential `{pred}` was already renewed; renew its successor instead"
            ))),
            Err(RecordRefusal::PredecessorRevoked) => Err(Error::FailedPrecondition(
                "the credential to renew was revoked meanwhile".into(),
            )),
            Err(RecordRefusal::TooManyActive(n)) => Err(Error::FailedPrecondition(format!(
                "task `{}` already has {n} active credentials (limits.max_active_credentials); \
                 revoke some or let them expire",
                record.task_id
            ))),
        }
    }

    /// Signs an X.509-SVID for `task`, optionally as a renewal of `pred`.
    async fn issue_x509(
        &self,
        caller: &Caller,
        task: &TaskRecord,
        key: &ca::CsrKey,
        ttl: i64,
        pred: Option<&CredentialRecord>,
        (max_active, audit): (u32, AuditDraft),
    ) -> Result<Minted, Error> {
        let now = now_unix();
        let not_after = self.expiry(caller, task, now, ttl, CredentialKind::X509)?;
        let not_before = now - BACKDATE_SECS;
        // 19 random bytes with the top bit cleared and the next set: a
        // positive, fixed-length 150-bit serial.
        let mut serial = random_bytes::<19>();
        serial[0] = (serial[0] & 0x7f) | 0x40;
        let task_id = TaskId::parse(&task.task_id)?;
        let template = X509Template {
            spiffe_id: &caller.spiffe_id,
            task_id: &task_id,
            task_owner: &task.owner,
            accountable_owner: &task.accountable_owner,
            break_glass: task.break_glass,
            serial: &serial,
            not_before,
            not_after,
        };
        let leaf = self.ca.issue(&template, key)?;
        let record = CredentialRecord {
            id: hex::encode(serial),
            kind: CredentialKind::X509,
            spiffe_id: caller.spiffe_id.to_string(),
            task_owner: task.owner.clone(),
            task_id: task.task_id.clone(),
            audience: None,
            not_before,
            not_after,
            caller_cert_sha256: hex::encode(caller.cert_sha256),
            issued_at: now,
            predecessor: pred.map(|p| p.id.clone()),
            renewal_count: pred.map(|p| p.renewal_count + 1).unwrap_or(0),
            revocation: None,
        };
        self.record(&record, max_active, audit).await?;
        let mut chain = vec![leaf];
        chain.extend(self.ca.chain().iter().map(|c| c.to_vec()));
        Ok(Minted {
            record,
            chain,
            token: String::new(),
            task: task.clone(),
        })
    }

    /// Signs a JWT-SVID for `task`, optionally as a renewal of `pred`.
    async fn issue_jwt(
        &self,
        caller: &Caller,
        task: &TaskRecord,
        audience: &str,
        ttl: i64,
        pred: Option<&CredentialRecord>,
        (max_active, audit): (u32, AuditDraft),
    ) -> Result<Minted, Error> {
        let now = now_unix();
        let exp = self.expiry(caller, task, now, ttl, CredentialKind::Jwt)?;
        let nbf = now - BACKDATE_SECS;
        let jti = hex::encode(random_bytes::<16>());
        let act = if task.parent.is_some() {
            Actor::chain(&self.delegation_chain(task).await?)
        } else {
            None
        };
        let claims = Claims {
            sub: caller.spiffe_id.to_string(),
            aud: audience.to_owned(),
            iat: now,
            nbf,
            exp,
            jti: jti.clone(),
            iss: self.jwt_issuer.clone(),
            task_id: task.task_id.clone(),
            task_owner: task.owner.clone(),
            owner: task.accountable_owner.clone(),
            break_glass: task.break_glass,
            act,
            cnf: Confirmation {
                x5t_s256: jwt::x5t_s256(&caller.cert_sha256),
            },
        };
        let token = self.jwt.sign(&claims)?;
        let record = CredentialRecord {
            id: jti,
            kind: CredentialKind::Jwt,
            spiffe_id: caller.spiffe_id.to_string(),
            task_owner: task.owner.clone(),
            task_id: task.task_id.clone(),
            audience: Some(audience.to_owned()),
            not_before: nbf,
            not_after: exp,
            caller_cert_sha256: hex::encode(caller.cert_sha256),
            issued_at: now,
            predecessor: pred.map(|p| p.id.clone()),
            renewal_count: pred.map(|p| p.renewal_count + 1).unwrap_or(0),
            revocation: None,
        };
        self.record(&record, max_active, audit).await?;
        Ok(Minted {
            record,
            chain: Vec::new(),
            token,
            task: task.clone(),
        })
    }

    /// Everything a first mint does before signing: rate limit, find (or
    /// prepare to begin) the task, ask the policy, check the limits beside
    /// it, begin the task if new. Returns the task and the audit draft the
    /// issuance is recorded with.
    async fn prepare_mint(
        &self,
        caller: &Caller,
        task: &TaskId,
        ttl: i64,
        audience: Option<&str>,
    ) -> Result<(TaskRecord, AuditDraft), Error> {
        let now = now_unix();
        let holder = caller.spiffe_id.to_string();
        let (action, event_kind) = match audience {
            Some(_) => (Action::MintJwt, kind::MINT_JWT),
            None => (Action::MintX509, kind::MINT_X509),
        };
        // Most mints name an existing task: from the cache, or read without
        // the writer.
        let existing = match self.tasks.get(&holder, task.as_str()) {
            Some(t) => Some(t),
            None => self.store.task(&holder, task.as_str()).await?,
        };
        let t = match &existing {
            Some(t) => t.clone(),
            None => {
                let mut t = TaskRecord::new(
                    &holder,
                    task.as_str(),
                    now,
                    now + secs(self.limits.default_task_lifetime),
                );
                t.accountable_owner = self.mapped_owner(&holder).unwrap_or_default().to_owned();
                t
            }
        };
        let draft =
            AuditDraft::new(event_kind, &holder, now).task(&holder, task.as_str(), t.break_glass);
        self.rate_limit(caller, &draft).await?;
        // A first mint begins the task: that is a `begin_task` decision too.
        let begin_decision = match &existing {
            Some(_) => None,
            None => {
                let begin_draft = AuditDraft::new(kind::TASK_BEGIN, &holder, now).task(
                    &holder,
                    task.as_str(),
                    false,
                );
                let context = json!({
                    "lifetime_seconds": secs(self.limits.default_task_lifetime),
                    "owner": t.accountable_owner,
                    "owner_requested": false,
                    "justification": "",
                    "ticket": "",
                });
                Some(
                    self.authorize(
                        caller,
                        Action::BeginTask,
                        &Resource::Task(facts(&t)),
                        context,
                        &[],
                        &begin_draft,
                    )
                    .await?,
                )
            }
        };
        let resource = match audience {
            Some(aud) => Resource::Audience(aud.to_owned()),
            None => Resource::Task(facts(&t)),
        };
        let context = json!({
            "task_id": task.as_str(),
            "ttl_seconds": ttl,
            "renewal_count": 0,
            "break_glass": t.break_glass,
            "depth": t.depth,
        });
        let d = self
            .authorize(caller, action, &resource, context, &[], &draft)
            .await?;
        let draft = draft.decided(decision::ALLOW, &d.policies);
        let result = async {
            if let Some(aud) = audience
                && !t.audiences.is_empty()
                && !t.audiences.iter().any(|a| a == aud)
            {
                return Err(Error::FailedPrecondition(format!(
                    "audience `{aud}` is not among task `{}`'s audiences ({})",
                    t.task_id,
                    t.audiences.join(", ")
                )));
            }
            let t = match (existing, &begin_decision) {
                (Some(t), _) => t,
                (None, begun) => {
                    self.check_owned(&t)?;
                    let mut begin = draft.clone().because(format!(
                        "begun implicitly by a mint, until {}; owner `{}`",
                        rfc3339(t.deadline),
                        t.accountable_owner
                    ));
                    begin.kind = kind::TASK_BEGIN.into();
                    begin.policies = begun
                        .as_ref()
                        .map(|d| d.policies.clone())
                        .unwrap_or_default();
                    self.store.begin_task(&t, &[begin]).await?.0
                }
            };
            ensure_active(&t, now)?;
            self.tasks.put(&t);
            Ok(t)
        }
        .await;
        match result {
            Ok(t) => Ok((t, draft)),
            Err(e) => Err(self.refuse(draft, decision::REFUSED, e).await),
        }
    }

    /// The structural rule (own trust domain) and the ttl limit of a mint,
    /// audited when they refuse. Returns the ttl in seconds.
    async fn mint_gate(
        &self,
        caller: &Caller,
        event_kind: &str,
        task: &TaskId,
        ttl: Option<Duration>,
    ) -> Result<i64, Error> {
        let me = caller.spiffe_id.to_string();
        let draft = AuditDraft::new(event_kind, &me, now_unix()).task(&me, task.as_str(), false);
        if let Err(e) = self.check_mintable(&caller.spiffe_id) {
            return Err(self.refuse(draft, decision::DENY, e).await);
        }
        match self.ttl(ttl) {
            Ok(t) => Ok(t),
            Err(e) => Err(self.refuse(draft, decision::REFUSED, e).await),
        }
    }

    /// Mints a per-task X.509-SVID from a CSR.
    pub async fn mint_x509(&self, caller: &Caller, req: MintX509) -> Result<Minted, Error> {
        let task = TaskId::parse(&req.task_id)?;
        // The CSR is checked before the task is touched: a bad request
        // begins nothing.
        let key = ca::parse_csr(&req.csr)?;
        let ttl = self
            .mint_gate(caller, kind::MINT_X509, &task, req.ttl)
            .await?;
        let (t, draft) = self.prepare_mint(caller, &task, ttl, None).await?;
        let limits = (self.limits.max_active_credentials, draft.clone());
        match self.issue_x509(caller, &t, &key, ttl, None, limits).await {
            Ok(m) => Ok(m),
            Err(e) => Err(self.refuse(draft, decision::REFUSED, e).await),
        }
    }

    /// Mints a per-task JWT-SVID for one audience.
    pub async fn mint_jwt(&self, caller: &Caller, req: MintJwt) -> Result<Minted, Error> {
        let task = TaskId::parse(&req.task_id)?;
        validate_audience(&req.audience)?;
        let ttl = self
            .mint_gate(caller, kind::MINT_JWT, &task, req.ttl)
            .await?;
        let (t, draft) = self
            .prepare_mint(caller, &task, ttl, Some(&req.audience))
            .await?;
        let limits = (self.limits.max_active_credentials, draft.clone());
        match self
            .issue_jwt(caller, &t, &req.audience, ttl, None, limits)
            .await
        {
            Ok(m) => Ok(m),
            Err(e) => Err(self.refuse(draft, decision::REFUSED, e).await),
        }
    }

    /// Renews a credential: same task, same audience, linked, bounded.
    pub async fn renew(&self, caller: &Caller, req: Renew) -> Result<(Minted, Option<u64>), Error> {
        let now = now_unix();
        let me = caller.spiffe_id.to_string();
        let pred = self
            .store
            .credential(&req.credential_id)
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!("credential `{}` is unknown", req.credential_id))
            })?;
        let task = self
            .store
            .task(&pred.task_owner, &pred.task_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("task `{}` is unknown", pred.task_id)))?;
        let draft = AuditDraft::new(kind::RENEW, &me, now)
            .task(&task.owner, &task.task_id, task.break_glass)
            .subject(&pred.id);
        if pred.spiffe_id != me {
            // The credential is bound to its workload's key: no policy can
            // hand it to another.
            let e = Error::PermissionDenied(format!(
                "credential `{}` names `{}`; only that workload may renew it",
                pred.id, pred.spiffe_id
            ));
            return Err(self.refuse(draft, decision::DENY, e).await);
        }
        if let Err(e) = self.check_mintable(&caller.spiffe_id) {
            return Err(self.refuse(draft, decision::DENY, e).await);
        }
        let ttl = match self.ttl(req.ttl) {
            Ok(t) => t,
            Err(e) => return Err(self.refuse(draft, decision::REFUSED, e).await),
        };
        self.rate_limit(caller, &draft).await?;
        let context = json!({
            "ttl_seconds": ttl,
            "renewal_count": i64::from(pred.renewal_count) + 1,
            "kind": pred.kind.as_str(),
            "audience": pred.audience.clone().unwrap_or_default(),
        });
        let d = self
            .authorize(
                caller,
                Action::Renew,
                &Resource::Task(facts(&task)),
                context,
                &[],
                &draft,
            )
            .await?;
        let draft = draft.decided(decision::ALLOW, &d.policies);
        let result = async {
            if let Some(r) = &pred.revocation {
                return Err(Error::FailedPrecondition(format!(
                    "credential `{}` was revoked at {} ({}); it cannot be renewed",
                    pred.id,
                    rfc3339(r.revoked_at),
                    r.reason
                )));
            }
            if pred.not_after <= now {
                return Err(Error::FailedPrecondition(format!(
                    "credential `{}` expired at {}; it cannot be renewed",
                    pred.id,
                    rfc3339(pred.not_after)
                )));
            }
            if pred.renewal_count + 1 > self.limits.max_renewals {
                return Err(Error::FailedPrecondition(format!(
                    "credential `{}` has been renewed {} times; max_renewals is {}",
                    pred.id, pred.renewal_count, self.limits.max_renewals
                )));
            }
            ensure_active(&task, now)?;
            // A renewal that revokes its predecessor replaces it, so the
            // predecessor (still active while the successor is recorded)
            // does not count against the limit.
            let max_active = self.limits.max_active_credentials + u32::from(req.revoke_previous);
            match pred.kind {
                CredentialKind::X509 => {
                    if req.csr.is_empty() {
                        return Err(Error::InvalidArgument(
                            "renewing an X.509 credential needs a new CSR".into(),
                        ));
                    }
                    let key = ca::parse_csr(&req.csr)?;
                    self.issue_x509(
                        caller,
                        &task,
                        &key,
                        ttl,
                        Some(&pred),
                        (max_active, draft.clone()),
                    )
                    .await
                }
                CredentialKind::Jwt => {
                    let aud = pred.audience.clone().unwrap_or_default();
                    self.issue_jwt(
                        caller,
                        &task,
                        &aud,
                        ttl,
                        Some(&pred),
                        (max_active, draft.clone()),
                    )
                    .await
                }
            }
        }
        .await;
        let minted = match result {
            Ok(m) => m,
            Err(e) => return Err(self.refuse(draft, decision::REFUSED, e).await),
        };
        let mut superseded = None;
        if req.revoke_previous {
            let now = now_unix();
            let events = self
                .revocations
                .revoke(&RevokeRequest {
                    scope: RevokeScope::Credential(pred.id.clone()),
                    reason: REASON_SUPERSEDED.into(),
                    now,
                    end_task: None,
                    cascade: false,
                    audit: AuditDraft::new(kind::REVOKE, &me, now)
                        .task(&task.owner, &task.task_id, task.break_glass)
                        .credential(&pred.id)
                        .decided(decision::ALLOW, &d.policies)
                        .because(format!("superseded by renewal `{}`", minted.record.id)),
                })
                .await?;
            superseded = events.first().map(|e| e.seq);
        }
        Ok((minted, superseded))
    }

    /// Completes a task, revoking every credential of it and of every task
    /// delegated from it.
    pub async fn complete_task(
        &self,
        caller: &Caller,
        r: TaskRef,
    ) -> Result<(TaskRecord, RevokeOutcome), Error> {
        let (task, holder) = self.holder_of(caller, &r)?;
        let t = self.find_task(&holder, &task).await?;
        let now = now_unix();
        let draft = AuditDraft::new(kind::TASK_COMPLETE, &caller.spiffe_id.to_string(), now).task(
            &t.owner,
            &t.task_id,
            t.break_glass,
        );
        let d = self
            .authorize(
                caller,
                Action::CompleteTask,
                &Resource::Task(facts(&t)),
                json!({}),
                &[],
                &draft,
            )
            .await?;
        let draft = draft.decided(decision::ALLOW, &d.policies);
        if t.state != TaskState::Active {
            let message = format!(
                "task `{task}` already {} at {}; nothing to revoke",
                t.state.as_str(),
                rfc3339(t.ended_at.unwrap_or(t.deadline))
            );
            self.store
                .append_audit(&[draft.because(message.clone())])
                .await?;
            return Ok((
                t,
                RevokeOutcome {
                    message,
                    ..Default::default()
                },
            ));
        }
        let events = self
            .revocations
            .revoke(&RevokeRequest {
                scope: RevokeScope::Task {
                    owner: holder.clone(),
                    task_id: task.to_string(),
                },
                reason: REASON_COMPLETED.into(),
                now,
                end_task: Some(TaskState::Completed),
                cascade: true,
                audit: draft.because("task completed"),
            })
            .await?;
        self.tasks.forget(&holder, task.as_str());
        let outcome = outcome(&events, "task completed");
        Ok((self.find_task(&holder, &task).await?, outcome))
    }

    /// A task and its credentials.
    pub async fn get_task(
        &self,
        caller: &Caller,
        r: TaskRef,
    ) -> Result<(TaskRecord, Vec<(CredentialRecord, CredentialState)>), Error> {
        let (task, holder) = self.holder_of(caller, &r)?;
        let t = self.find_task(&holder, &task).await?;
        self.read_task(caller, &t, "task and credentials read")
            .await?;
        let now = now_unix();
        let creds = self
            .store
            .task_credentials(&holder, task.as_str())
            .await?
            .into_iter()
            .map(|c| {
                let s = state_of(&c, now);
                (c, s)
            })
            .collect();
        Ok((t, creds))
    }

    async fn read_task(&self, caller: &Caller, t: &TaskRecord, what: &str) -> Result<(), Error> {
        let draft = AuditDraft::new(kind::TASK_READ, &caller.spiffe_id.to_string(), now_unix())
            .task(&t.owner, &t.task_id, t.break_glass)
            .because(what);
        let resource = Resource::Task(facts(t));
        self.authorize_recorded(caller, Action::ReadTask, &resource, json!({}), draft)
            .await?;
        Ok(())
    }

    /// Revokes by credential, task, workload or trust domain. Task and
    /// workload revocations reach every task delegated from the ones named.
    pub async fn revoke(
        &self,
        caller: &Caller,
        target: RevokeTarget,
        reason: &str,
    ) -> Result<RevokeOutcome, Error> {
        let reason = if reason.is_empty() { "revoked" } else { reason };
        check_text("reason", reason, 256)?;
        let me = caller.spiffe_id.to_string();
        let now = now_unix();
        let mut draft = AuditDraft::new(kind::REVOKE, &me, now).because(reason);
        let mut already = None;
        let (scope, resource, cascade) = match target {
            RevokeTarget::Credential(id) => {
                let c = self
                    .store
                    .credential(&id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("credential `{id}` is unknown")))?;
                let t = self
                    .store
                    .task(&c.task_owner, &c.task_id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("task `{}` is unknown", c.task_id)))?;
                draft = draft
                    .task(&t.owner, &t.task_id, t.break_glass)
                    .credential(&id);
                if let Some(r) = &c.revocation {
                    already = Some(format!(
                        "credential `{id}` was already revoked at {} ({}); nothing to do",
                        rfc3339(r.revoked_at),
                        r.reason
                    ));
                } else if c.not_after <= now {
                    already = Some(format!(
                        "credential `{id}` already expired at {}; nothing to do",
                        rfc3339(c.not_after)
                    ));
                }
                (
                    RevokeScope::Credential(id),
                    Resource::Task(facts(&t)),
                    false,
                )
            }
            RevokeTarget::Task(r) => {
                let (task, holder) = self.holder_of(caller, &r)?;
                let t = self.find_task(&holder, &task).await?;
                draft = draft.task(&t.owner, &t.task_id, t.break_glass);
                (
                    RevokeScope::Task {
                        owner: holder,
                        task_id: task.to_string(),
                    },
                    Resource::Task(facts(&t)),
                    true,
                )
            }
            RevokeTarget::Workload(id) => {
                let id = SpiffeId::new(&id)
                    .map_err(|e| Error::InvalidArgument(format!("SPIFFE ID `{id}`: {e}")))?
                    .to_string();
                draft = draft.subject(&id);
                (
                    RevokeScope::Workload(id.clone()),
                    Resource::Workload(id),
                    true,
                )
            }
            RevokeTarget::TrustDomain(td) => {
                let td = TrustDomain::new(&td)
                    .map_err(|e| Error::InvalidArgument(format!("trust domain `{td}`: {e}")))?
                    .to_string();
                draft = draft.subject(&td);
                (
                    RevokeScope::TrustDomain(td.clone()),
                    Resource::TrustDomain(td),
                    false,
                )
            }
        };
        let context = json!({ "scope": scope.kind(), "reason": reason });
        let d = self
            .authorize(caller, Action::Revoke, &resource, context, &[], &draft)
            .await?;
        let draft = draft.decided(decision::ALLOW, &d.policies);
        if let Some(message) = already {
            self.store
                .append_audit(&[draft.because(message.clone())])
                .await?;
            return Ok(RevokeOutcome {
                message,
                ..Default::default()
            });
        }
        let events = self
            .revocations
            .revoke(&RevokeRequest {
                scope,
                reason: reason.to_owned(),
                now,
                end_task: None,
                cascade,
                audit: draft,
            })
            .await?;
        Ok(outcome(&events, "revoked"))
    }

    /// The state of a credential. Audited: a status check is the "use"
    /// signal of the credential's task.
    pub async fn check_status(&self, caller: &Caller, id: &str) -> Result<CredentialState, Error> {
        // Ids are lowercase hex (38 for a serial, 32 for a jti): anything
        // else is refused before it can reach the trail (a token pasted in
        // by mistake must not be stored).
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidArgument(
                "credential_id must be 1-64 hex digits (a certificate serial or a JWT jti)".into(),
            ));
        }
        let c = self.store.credential(id).await?;
        let now = now_unix();
        let state = match &c {
            None => CredentialState::Unknown,
            Some(c) => state_of(c, now),
        };
        let mut event = AuditDraft::new(kind::STATUS_CHECK, &caller.spiffe_id.to_string(), now)
            .credential(id)
            .because(match &state {
                CredentialState::Active { .. } => "active",
                CredentialState::Revoked { .. } => "revoked",
                CredentialState::Expired { .. } => "expired",
                CredentialState::Unknown => "unknown",
            });
        if let Some(c) = &c {
            // The break-glass flag never changes: the cache serves most checks.
            let task = match self.tasks.get(&c.task_owner, &c.task_id) {
                Some(t) => Some(t),
                None => self.store.task(&c.task_owner, &c.task_id).await?,
            };
            let bg = task.is_some_and(|t| t.break_glass);
            event = event.task(&c.task_owner, &c.task_id, bg);
        }
        self.store.append_audit(&[event]).await?;
        Ok(state)
    }

    /// Signs a CRL of revoked, unexpired X.509 credentials.
    pub async fn crl(&self) -> Result<Crl, Error> {
        let now = now_unix();
        let entries = self.store.crl_entries(now).await?;
        let number = self.store.next_crl_number().await?;
        let revoked: Vec<_> = entries
            .into_iter()
            .map(|e| {
                let reason = match e.reason.as_str() {
                    REASON_SUPERSEDED => rcgen::RevocationReason::Superseded,
                    REASON_COMPLETED | crate::revocation::reaper::REASON_DEADLINE => {
                        rcgen::RevocationReason::CessationOfOperation
                    }
                    _ => rcgen::RevocationReason::Unspecified,
                };
                (e.serial_hex, e.revoked_at, reason)
            })
            .collect();
        let next = now + self.crl_validity.as_secs() as i64;
        let der = self.ca.sign_crl(&revoked, number, now, next)?;
        Ok(Crl {
            der,
            number,
            this_update: now,
            next_update: next,
        })
    }

    /// Authorizes opening a revocation feed (and audits it).
    pub async fn authorize_watch(
        &self,
        caller: &Caller,
        after: Option<u64>,
        subscriber: &str,
    ) -> Result<(), Error> {
        let me = caller.spiffe_id.to_string();
        let mut draft = AuditDraft::new(kind::WATCH, &me, now_unix())
            .subject(subscriber)
            .because(match after {
                Some(s) => format!("resume after seq {s}"),
                None => "snapshot".to_owned(),
            });
        draft.ref_seq = after;
        let context = json!({ "operation": "watch", "subscriber": subscriber });
        self.authorize_recorded(caller, Action::Watch, &Resource::Issuer, context, draft)
            .await?;
        Ok(())
    }

    /// Records a subscriber's acknowledgement.
    pub async fn ack(&self, caller: &Caller, subscriber: &str, up_to: u64) -> Result<u64, Error> {
        check_text("subscriber", subscriber, 128)?;
        if subscriber.is_empty() {
            return Err(Error::InvalidArgument("subscriber name is empty".into()));
        }
        let me = caller.spiffe_id.to_string();
        let draft = AuditDraft::new(kind::ACK, &me, now_unix()).subject(subscriber);
        let d = self
            .authorize(
                caller,
                Action::Watch,
                &Resource::Issuer,
                json!({ "operation": "ack", "subscriber": subscriber }),
                &[],
                &draft,
            )
            .await?;
        // A configured name belongs to its configured SPIFFE ID; any other
        // name belongs to the first workload that acknowledged under it.
        let owner = match self.feed.subscribers.iter().find(|s| s.name == subscriber) {
            Some(s) => Some(s.spiffe_id.clone()),
            None => self
                .store
                .acks()
                .await?
                .into_iter()
                .find(|a| a.subscriber == subscriber)
                .map(|a| a.spiffe_id),
        };
        if let Some(owner) = owner
            && owner != me
        {
            let e = Error::PermissionDenied(format!(
                "subscriber `{subscriber}` acknowledges as `{owner}`, not `{me}`"
            ));
            return Err(self.refuse(draft, decision::DENY, e).await);
        }
        let current = self.store.current_seq().await?;
        if up_to > current {
            let e = Error::InvalidArgument(format!(
                "cannot acknowledge up to {up_to}: the current sequence is {current}"
            ));
            return Err(self
                .refuse(
                    draft.decided(decision::ALLOW, &d.policies),
                    decision::REFUSED,
                    e,
                )
                .await);
        }
        let a = self
            .store
            .ack(
                &crate::store::AckRecord {
                    subscriber: subscriber.to_owned(),
                    spiffe_id: me,
                    acked_seq: up_to,
                    acked_at: now_unix(),
                },
                draft.decided(decision::ALLOW, &d.policies).because(format!(
                    "`{subscriber}` enforced every revocation through seq {up_to}"
                )),
            )
            .await?;
        Ok(a.acked_seq)
    }

    /// Delivery state of every expected subscriber.
    pub async fn delivery_status(
        &self,
        caller: &Caller,
    ) -> Result<(u64, Vec<crate::revocation::delivery::SubscriberDelivery>), Error> {
        self.admin(caller, "delivery_status").await?;
        let current = self.store.current_seq().await?;
        let s = crate::revocation::delivery::status(self.store.as_ref(), &self.feed, now_unix())
            .await?;
        Ok((current, s))
    }

    /// The inventory: active tasks with their active credentials, a page at a
    /// time (`page_token` is the last page's `next`).
    pub async fn list_grants(
        &self,
        caller: &Caller,
        filter: GrantFilter,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<Grant>, String), Error> {
        self.admin(caller, "list_grants").await?;
        let limit = match page_size {
            0 => 100,
            n => n.min(MAX_PAGE_SIZE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            let bad = || {
                Error::InvalidArgument(
                    "page_token is not one this server returned; start again without one".into(),
                )
            };
            let raw = B64URL.decode(page_token).map_err(|_| bad())?;
            let text = String::from_utf8(raw).map_err(|_| bad())?;
            let (o, t) = text.split_once('\n').ok_or_else(bad)?;
            Some((o.to_owned(), t.to_owned()))
        };
        let now = now_unix();
        let tasks = self.store.active_tasks(&filter, now, after, limit).await?;
        let next = match tasks.last() {
            Some(t) if tasks.len() as u32 == limit => {
                B64URL.encode(format!("{}\n{}", t.owner, t.task_id))
            }
            _ => String::new(),
        };
        let mut grants = Vec::with_capacity(tasks.len());
        for t in tasks {
            let credentials = self
                .store
                .task_credentials(&t.owner, &t.task_id)
                .await?
                .into_iter()
                .filter(|c| c.revocation.is_none() && c.not_after > now)
                .collect();
            grants.push(Grant {
                remaining: t.deadline - now,
                task: t,
                credentials,
            });
        }
        Ok((grants, next))
    }

    /// The audit trail after `after`, at most `limit` events, with the head.
    pub async fn audit_export(
        &self,
        caller: &Caller,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<AuditEvent>, Option<(u64, String)>), Error> {
        self.admin(caller, "audit_export").await?;
        let limit = limit.clamp(1, 1000);
        let events = self.store.audit_after(after, limit).await?;
        Ok((events, self.store.audit_head().await?))
    }

    /// A task's timeline: every audit event about it, and who acknowledged
    /// each of its revocations.
    pub async fn timeline(&self, caller: &Caller, r: TaskRef) -> Result<Timeline, Error> {
        let (task, holder) = self.holder_of(caller, &r)?;
        let t = self.find_task(&holder, &task).await?;
        self.read_task(caller, &t, "timeline read").await?;
        let events = self.store.task_audit(&holder, task.as_str()).await?;
        let mut acks = Vec::new();
        for e in &events {
            if e.body.kind == kind::REVOKED
                && let Some(seq) = e.body.ref_seq
            {
                acks.push((seq, self.store.acks_covering(seq).await?));
            }
        }
        Ok(Timeline {
            task: t,
            events,
            acks,
        })
    }

    /// Break-glass tasks awaiting review (or all of them).
    pub async fn break_glass_list(
        &self,
        caller: &Caller,
        include_reviewed: bool,
    ) -> Result<Vec<TaskRecord>, Error> {
        self.admin(caller, "review_list").await?;
        Ok(self.store.break_glass_tasks(include_reviewed).await?)
    }

    /// Marks a break-glass task reviewed.
    pub async fn mark_reviewed(
        &self,
        caller: &Caller,
        r: TaskRef,
        note: &str,
    ) -> Result<TaskRecord, Error> {
        check_text("note", note, 1024)?;
        let (task, holder) = self.holder_of(caller, &r)?;
        let d = self.admin(caller, "mark_reviewed").await?;
        let now = now_unix();
        let me = caller.spiffe_id.to_string();
        let review = Review {
            by: me.clone(),
            at: now,
            note: note.to_owned(),
        };
        let event = AuditDraft::new(kind::REVIEW, &me, now)
            .task(&holder, task.as_str(), true)
            .decided(decision::ALLOW, &d.policies)
            .because(if note.is_empty() {
                "marked reviewed".to_owned()
            } else {
                format!("marked reviewed: {note}")
            });
        match self
            .store
            .mark_reviewed(&holder, task.as_str(), &review, event)
            .await?
        {
            ReviewOutcome::Reviewed(t) => Ok(t),
            ReviewOutcome::AlreadyReviewed(t) => Err(Error::FailedPrecondition(format!(
                "task `{task}` was already reviewed by `{}` at {}",
                t.review.as_ref().map(|r| r.by.as_str()).unwrap_or_default(),
                rfc3339(t.review.as_ref().map(|r| r.at).unwrap_or_default())
            ))),
            ReviewOutcome::NotBreakGlass => Err(Error::FailedPrecondition(format!(
                "task `{task}` of `{holder}` was not begun through break-glass"
            ))),
            ReviewOutcome::NotFound => Err(Error::NotFound(format!(
                "task `{task}` of `{holder}` is unknown"
            ))),
        }
    }

    /// The policy in force and the last reload error.
    pub async fn policy_status(&self, caller: &Caller) -> Result<PolicyStatus, Error> {
        self.admin(caller, "policy_status").await?;
        Ok(self.policy.status())
    }

    /// Re-reads the policy file (`force`: now, as on SIGHUP; otherwise once
    /// new content is seen twice). A change is audited before it is put in
    /// force; a refusal is logged at error and audited, and the policy in
    /// force stays.
    pub async fn reload_policy(&self, force: bool) -> Result<Reload, Error> {
        let now = now_unix();
        let attempt = self.policy.attempt(force);
        let event = AuditDraft::new(kind::POLICY_RELOAD, &self.jwt_issuer, now);
        let event = match &attempt {
            policy::Attempt::Unchanged => return Ok(Reload::Unchanged),
            policy::Attempt::Load(doc) => event
                .decided(decision::ALLOW, &doc.ids)
                .because(format!("policy sha256 {} in force", doc.sha256)),
            policy::Attempt::Refuse(e) => event
                .decided(decision::REFUSED, &[])
                .because(format!("{e}; the previous policy stays in force")),
        };
        if let Err(e) = self.store.append_audit(&[event]).await {
            // Not recorded, so not applied: the next poll tries again.
            self.policy.forget_attempt();
            return Err(e.into());
        }
        let r = self.policy.apply(attempt, now);
        match &r {
            Reload::Loaded { sha256, ids } => {
                tracing::info!(%sha256, policies = ids.len(), "policy reloaded")
            }
            Reload::Refused(e) => {
                tracing::error!(error = %e, "policy file refused; the previous policy stays in force")
            }
            Reload::Unchanged => {}
        }
        Ok(r)
    }

    /// Records the policy in force at start (a file edited while the issuer
    /// was down shows up in the trail by its hash).
    pub async fn audit_policy_in_force(&self) -> Result<(), crate::store::StoreError> {
        let st = self.policy.status();
        let event = AuditDraft::new(kind::POLICY_RELOAD, &self.jwt_issuer, now_unix())
            .decided(decision::ALLOW, &st.ids)
            .because(format!("policy sha256 {} in force at start", st.sha256));
        self.store.append_audit(&[event]).await?;
        Ok(())
    }

    /// The bundle served by `GetTrustBundle`. Its sequence is persisted and
    /// raised only when the served roots or JWT keys change.
    pub async fn trust_bundle(&self) -> Result<TrustBundleDoc, Error> {
        use sha2::{Digest, Sha256};
        let bundles = self.material.bundles();
        let roots = bundles
            .get(&self.trust_domain)
            .map(|b| b.roots().to_vec())
            .unwrap_or_default();
        let jwks = [self.jwt.jwk()];
        let mut h = Sha256::new();
        for r in &roots {
            h.update((r.len() as u64).to_be_bytes());
            h.update(r.as_ref());
        }
        h.update(serde_json::to_vec(&jwks).expect("JWK serialises"));
        let seq = self
            .store
            .bundle_sequence(&hex::encode(h.finalize()))
            .await?;
        Ok(trust::build(self.trust_domain.as_str(), &roots, &jwks, seq))
    }
}

fn validate_audiences(auds: &[String]) -> Result<Vec<String>, Error> {
    if auds.len() > 32 {
        return Err(Error::InvalidArgument(format!(
            "{} audiences given; at most 32 are allowed",
            auds.len()
        )));
    }
    let mut out: Vec<String> = Vec::new();
    for a in auds {
        validate_audience(a)?;
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    Ok(out)
}

fn ensure_active(t: &TaskRecord, now: i64) -> Result<(), Error> {
    if t.state != TaskState::Active {
        return Err(Error::FailedPrecondition(format!(
            "task `{}` is {}; no more credentials are minted for it",
            t.task_id,
            t.state.as_str()
        )));
    }
    if t.deadline <= now {
        return Err(Error::FailedPrecondition(format!(
            "task `{}` reached its deadline at {}",
            t.task_id,
            rfc3339(t.deadline)
        )));
    }
    Ok(())
}

fn state_of(c: &CredentialRecord, now: i64) -> CredentialState {
    match &c.revocation {
        Some(r) => CredentialState::Revoked {
            reason: r.reason.clone(),
            revoked_at: r.revoked_at,
            expires_at: c.not_after,
        },
        None if c.not_after <= now => CredentialState::Expired {
            expires_at: c.not_after,
        },
        None => CredentialState::Active {
            expires_at: c.not_after,
        },
    }
}

fn outcome(events: &[crate::store::RevocationEvent], what: &str) -> RevokeOutcome {
    let revoked: usize = events.iter().map(|e| e.credential_ids.len()).sum();
    RevokeOutcome {
        revoked: revoked as u32,
        seqs: events.iter().map(|e| e.seq).collect(),
        message: if revoked == 0 {
            format!("{what}: no active credentials left to revoke (already revoked or expired)")
        } else {
            format!("{what}: {revoked} credential(s) revoked")
        },
    }
}

fn validate_audience(aud: &str) -> Result<(), Error> {
    if aud.is_empty() {
        return Err(Error::InvalidArgument("audience is empty".into()));
    }
    if aud.len() > MAX_AUDIENCE_LEN {
        return Err(Error::InvalidArgument(format!(
            "audience is {} bytes long; at most {MAX_AUDIENCE_LEN} are allowed",
            aud.len()
        )));
    }
    if aud.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::InvalidArgument(
            "audience contains whitespace or control characters".into(),
        ));
    }
    Ok(())
}
