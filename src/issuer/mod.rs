//! The domain service: tasks, minting, renewal, revocation, status and CRL,
//! from an authenticated caller and a decoded request to durable state.
//!
//! Every capability goes through one gate (`gate.rs`): who is calling ->
//! rate limit -> policy decision -> audit of the decision -> refusal with the
//! right error. Then the capability does its work, one file each:
//!
//! - `tasks.rs`: begin (plain or break-glass), delegate, complete and read
//!   tasks; [`BeginTask`], [`Delegate`], [`TaskRef`]; the cache of tasks
//!   seen active.
//! - `mint.rs`: first mints ([`MintX509`], [`MintJwt`], [`Minted`]) and the
//!   issuance steps they share with renewals (window, sign, record).
//! - `renew.rs`: renewals ([`Renew`]).
//! - `revoke.rs`: revocation, credential status and the CRL
//!   ([`RevokeTarget`], [`RevokeOutcome`], [`CredentialState`], [`Crl`]).
//! - `feed.rs`: opening and acknowledging the revocation feed, delivery
//!   state.
//! - `admin.rs`: inventory, audit export, timelines, break-glass review and
//!   the policy in force ([`Grant`], [`Timeline`]).
//! - `bundle.rs`: the trust bundle.
//! - `validate.rs`: input checks the capabilities share.
//!
//! This file holds the [`Issuer`] itself and the helpers several
//! capabilities use (who holds a task, its accountable owner).

use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;

use crate::Error;
use crate::audit::AuditDraft;
use crate::ca::SigningCa;
pub use crate::clock::now_unix;
use crate::config::{Config, FeedConfig, LimitsConfig};
use crate::identity::{Caller, SpiffePattern, TaskId, TrustDomain};
use crate::jwt::JwtSigner;
use crate::policy::{Decision, Engine, Request, Resource, TaskFacts};
use crate::revocation::Revocations;
use crate::store::{Store, StoreError, TaskRecord};
use crate::tls::TlsMaterial;

mod admin;
mod bundle;
mod feed;
mod gate;
mod mint;
mod renew;
mod revoke;
mod tasks;
mod validate;

pub use admin::{Grant, MAX_EXPORT_LIMIT, MAX_PAGE_SIZE, Timeline};
pub use mint::{BACKDATE_SECS, MintJwt, MintX509, Minted};
pub use renew::Renew;
pub use revoke::{
    CredentialState, Crl, REASON_COMPLETED, REASON_SUPERSEDED, RevokeOutcome, RevokeTarget,
};
pub use tasks::{BeginTask, Delegate, TaskRef};
pub use validate::{
    MAX_AUDIENCE_LEN, MAX_JUSTIFICATION_LEN, MAX_REQUEST_DURATION, MAX_SEQ, MAX_SUBSCRIBER_LEN,
};

use gate::Gate;
use tasks::TaskCache;

/// The issuer.
pub struct Issuer {
    trust_domain: TrustDomain,
    jwt_issuer: String,
    limits: LimitsConfig,
    feed: FeedConfig,
    /// `[[ssf.receivers]]`: expected to acknowledge too (by the
    /// transmitter), and their names are not the workloads'.
    ssf_receivers: Vec<crate::config::ReceiverConfig>,
    crl_validity: Duration,
    ca: SigningCa,
    jwt: Arc<JwtSigner>,
    store: Arc<dyn Store>,
    revocations: Arc<Revocations>,
    material: Arc<TlsMaterial>,
    gate: Gate,
    owner_rules: Vec<(SpiffePattern, String)>,
    require_owner: bool,
    tasks: TaskCache,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// `N` bytes from the thread's CSPRNG: serials, `jti`s, delegation
/// suffixes, SET ids.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill_bytes(&mut b);
    b
}

/// What policies see of a task.
fn facts(t: &TaskRecord) -> TaskFacts {
    TaskFacts {
        holder: t.holder.clone(),
        task_id: t.task_id.clone(),
        owner: t.owner.clone(),
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
            ssf_receivers: cfg.ssf_receivers().to_vec(),
            crl_validity: cfg.ca.crl_validity,
            ca,
            jwt,
            store: revocations.store().clone(),
            gate: Gate::new(cfg, policy, revocations.store().clone(), material.clone()),
            revocations,
            material,
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
            tasks: TaskCache::default(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Admits a call of `class` from `caller` by its rate limit (taken
    /// before the request is decoded); a refusal is RESOURCE_EXHAUSTED,
    /// audited in aggregate.
    pub async fn admit(
        &self,
        caller: &Caller,
        class: crate::ratelimit::Class,
    ) -> Result<(), Error> {
        self.gate.admit(caller, class).await
    }

    /// A slot among the caller's concurrent watch streams
    /// (`limits.max_watch_streams`), held until the stream ends.
    pub async fn watch_slot(&self, caller: &Caller) -> Result<crate::ratelimit::StreamSlot, Error> {
        self.gate.watch_slot(caller).await
    }

    /// Refuses a call on a connection opened past the caller's
    /// `listen.max_connections_per_workload` (audited in aggregate).
    pub async fn refuse_connection(&self, caller: &Caller, max: u32) -> Error {
        let id = caller.spiffe_id.to_string();
        let message = format!(
            "`{id}` already holds {max} connections to this replica \
             (listen.max_connections_per_workload); reuse one of them"
        );
        self.gate
            .refuse_limit(
                &id,
                "max_connections_per_workload",
                message,
                Duration::from_secs(1),
            )
            .await
    }

    /// Writes the aggregated refusal counts that are due (called by the
    /// server every few seconds).
    pub async fn flush_refusals(&self) {
        self.gate.flush_refusals().await
    }

    /// Writes every aggregated refusal count, due or not (at shutdown).
    pub async fn flush_refusals_now(&self) {
        self.gate.flush_refusals_all().await
    }

    /// Passes a store result on, turning a holding cap the store enforced
    /// into RESOURCE_EXHAUSTED for `caller` (audited in aggregate).
    async fn within_caps<T>(
        &self,
        caller: &Caller,
        stored: Result<T, StoreError>,
    ) -> Result<T, Error> {
        let (limit, message) = match stored {
            Err(StoreError::TooManyTasks { max }) => (
                "max_active_tasks",
                format!(
                    "`{}` already has {max} active tasks it began or delegated \
                     (limits.max_active_tasks); complete one or wait for one to end, then retry",
                    caller.spiffe_id
                ),
            ),
            Err(StoreError::TooManySubscriberNames { max }) => (
                "max_subscriber_names",
                format!(
                    "`{}` already acknowledges under {max} subscriber names \
                     (limits.max_subscriber_names); reuse one of them",
                    caller.spiffe_id
                ),
            ),
            other => return Ok(other?),
        };
        let id = caller.spiffe_id.to_string();
        Err(self
            .gate
            .refuse_limit(&id, limit, message, Duration::from_secs(1))
            .await)
    }

    /// The revocation hub.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// Feed settings.
    pub fn feed_config(&self) -> &FeedConfig {
        &self.feed
    }

    /// The `iss` of the JWT-SVIDs it mints.
    pub fn jwt_issuer(&self) -> &str {
        &self.jwt_issuer
    }

    /// The issuer's own name in the audit trail (expiry, reloads).
    pub fn system_actor(&self) -> &str {
        &self.jwt_issuer
    }

    /// The accountable owner the config maps `holder` to.
    fn mapped_owner(&self, holder: &str) -> Option<&str> {
        self.owner_rules
            .iter()
            .find(|(p, _)| p.matches(holder))
            .map(|(_, o)| o.as_str())
    }

    fn check_owned(&self, t: &TaskRecord) -> Result<(), Error> {
        if self.require_owner && t.owner.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "task `{}` would have no accountable owner: no ownership rule matches `{}` and \
                 require_owner is set; begin it with an owner",
                t.task_id, t.holder
            )));
        }
        Ok(())
    }

    /// The task's holder: the caller, or someone else if the policy allows.
    fn holder_of(&self, caller: &Caller, r: &TaskRef) -> Result<(TaskId, String), Error> {
        let task = TaskId::parse(&r.task_id)?;
        let holder = match r.holder.as_deref().filter(|o| !o.is_empty()) {
            None => caller.spiffe_id.to_string(),
            Some(o) => validate::spiffe_id("task holder", o)?.to_string(),
        };
        Ok((task, holder))
    }

    async fn find_task(&self, holder: &str, task: &TaskId) -> Result<TaskRecord, Error> {
        self.store
            .task(holder, task.as_str())
            .await?
            .ok_or_else(|| task_not_found(task.as_str()))
    }

    /// Authorizes `request` on task `t`. A denial on a task the caller does
    /// not hold is answered exactly as a task that does not exist: task ids
    /// are names a caller can guess, and "not yours" would confirm that one
    /// is in use. The audit trail records the denial as it was decided.
    async fn authorize_task(
        &self,
        caller: &Caller,
        request: Request,
        t: &TaskRecord,
        draft: &AuditDraft,
    ) -> Result<Decision, Error> {
        let resource = Resource::Task(facts(t));
        match self.gate.authorize(caller, request, &resource, draft).await {
            Err(Error::PermissionDenied(_)) if t.holder != caller.spiffe_id.to_string() => {
                Err(task_not_found(&t.task_id))
            }
            other => other,
        }
    }
}

/// The one answer for a task that does not exist and for a task of another
/// workload that the caller may not see.
pub(crate) fn task_not_found(task_id: &str) -> Error {
    Error::NotFound(format!("task `{task_id}` not found"))
}

/// The one answer for a credential that does not exist and for a credential
/// of another workload that the caller may not act on.
pub(crate) fn credential_not_found(id: &str) -> Error {
    Error::NotFound(format!("credential `{id}` not found"))
}
