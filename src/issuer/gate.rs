//! The gate every capability goes through: who is calling -> rate limit ->
//! policy decision -> audit of the decision -> refusal with the right error.
//!
//! Denials are audited here, with the policies that decided them; refusals
//! of an allowed call (a limit, the state of a task) are audited through
//! [`Gate::refuse`] with the policies that had allowed it. Internal failures
//! are never audited: the store may be what failed. Every event the gate
//! writes changes no state, so each is written as a repeated event
//! ([`Gate::record`]): once per key per `store.use_interval`, its repeats
//! counted, so no caller grows the trail at its call rate.

use std::sync::Arc;
use std::time::Duration;

use crate::Error;
use crate::audit::{AuditDraft, decision, kind};
use crate::clock::now_unix;
use crate::config::{Config, RateConfig};
use crate::identity::{Caller, SpiffeId, TrustDomain};
use crate::policy::{AdminContext, Decision, Engine, Request, Resource};
use crate::ratelimit::RateLimiter;
use crate::store::Store;

/// The shared gate: the policy engine, the rate limiter and the audit trail.
pub(super) struct Gate {
    trust_domain: TrustDomain,
    policy: Arc<Engine>,
    limiter: RateLimiter,
    rate: RateConfig,
    store: Arc<dyn Store>,
    /// `store.use_interval`, in seconds.
    repeat_window: i64,
}

impl Gate {
    /// The gate of the issuer configured by `cfg`.
    pub(super) fn new(cfg: &Config, policy: Arc<Engine>, store: Arc<dyn Store>) -> Self {
        // Buckets live in this process: replicas do not share them, so the
        // fleet allows N times this. Said once at start so an operator
        // sizing the fleet sees it.
        tracing::info!(
            per_second = cfg.limits.rate.per_second,
            burst = cfg.limits.rate.burst,
            "rate limit per workload on this replica (not shared: N replicas allow N times as much)"
        );
        Self {
            trust_domain: TrustDomain::new(&cfg.trust_domain).expect("validated at config load"),
            policy,
            limiter: RateLimiter::new(cfg.limits.rate.per_second, cfg.limits.rate.burst),
            rate: cfg.limits.rate.clone(),
            store,
            repeat_window: cfg.store.use_interval.as_secs() as i64,
        }
    }

    /// Records an event that changes no state (a read, a status check, a
    /// denial, a refusal): chained once per key per `store.use_interval`,
    /// its repeats counted and chained as one summary when the window
    /// closes.
    pub(super) async fn record(&self, event: AuditDraft) -> Result<(), Error> {
        self.store
            .append_audit_repeated(event, self.repeat_window)
            .await?;
        Ok(())
    }

    /// The policy engine (status and reload).
    pub(super) fn policy(&self) -> &Engine {
        &self.policy
    }

    /// Credentials are minted only for workloads of the issuer's own trust
    /// domain: its CA and JWT key speak for that trust domain alone.
    /// Federated workloads may authenticate (watch, check status), not mint.
    /// A refusal is audited as a `deny` with `draft`.
    pub(super) async fn mintable(&self, id: &SpiffeId, draft: &AuditDraft) -> Result<(), Error> {
        if id.trust_domain() != &self.trust_domain {
            let e = Error::PermissionDenied(format!(
                "credentials are minted only for workloads of trust domain `{}`; `{id}` belongs to `{}`",
                self.trust_domain,
                id.trust_domain()
            ));
            return Err(self.refuse(draft.clone(), decision::DENY, e).await);
        }
        Ok(())
    }

    /// Takes a mint token for the caller, or audits and refuses.
    pub(super) async fn rate_limit(
        &self,
        caller: &Caller,
        draft: &AuditDraft,
    ) -> Result<(), Error> {
        let id = caller.spiffe_id.to_string();
        if let Err(wait) = self.limiter.check(&id) {
            let retry_ms = wait.as_millis().max(1) as u64;
            let message = format!(
                "rate limit for `{id}` exceeded ({}/s, burst {}); retry after {retry_ms} ms",
                self.rate.per_second, self.rate.burst
            );
            let event = draft
                .clone()
                .decided(decision::RATE_LIMITED, &[])
                .because(message.clone());
            self.record(event).await?;
            return Err(Error::ResourceExhausted {
                message,
                retry_after: Duration::from_millis(retry_ms),
            });
        }
        Ok(())
    }

    /// Evaluates the policy; a denial is audited and becomes PERMISSION_DENIED
    /// naming the deciding policies (never their text). An allow is not
    /// audited here: the capability records it with what it did.
    pub(super) async fn authorize(
        &self,
        caller: &Caller,
        request: Request,
        resource: &Resource,
        draft: &AuditDraft,
    ) -> Result<Decision, Error> {
        let action = request.action();
        let d = self
            .policy
            .authorize(&caller.spiffe_id, request, resource)?;
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
            self.record(event).await?;
            tracing::info!(spiffe_id = %caller.spiffe_id, action = action.as_str(), %resource, policies = ?d.policies, "denied");
            return Err(Error::PermissionDenied(message));
        }
        Ok(d)
    }

    /// Authorizes a call that changes nothing and records the allow (a
    /// denial is recorded by [`Gate::authorize`]).
    pub(super) async fn authorize_recorded(
        &self,
        caller: &Caller,
        request: Request,
        resource: &Resource,
        draft: AuditDraft,
    ) -> Result<Decision, Error> {
        let d = self.authorize(caller, request, resource, &draft).await?;
        self.record(draft.decided(decision::ALLOW, &d.policies))
            .await?;
        Ok(d)
    }

    /// Authorizes an administrative call and audits it.
    pub(super) async fn admin(
        &self,
        caller: &Caller,
        operation: &'static str,
    ) -> Result<Decision, Error> {
        let draft = AuditDraft::new(kind::ADMIN, &caller.spiffe_id.to_string(), now_unix())
            .subject(operation);
        let request = Request::Admin(AdminContext { operation });
        self.authorize_recorded(caller, request, &Resource::Issuer, draft)
            .await
    }

    /// Audits a refused request and passes the error on: `deny` for a
    /// structural rule, `refused` for a limit or the state (the draft keeps
    /// the ids of the policies that had allowed it, if any). Internal failures
    /// are not audited (the store may be what failed); they are logged where
    /// they are mapped.
    pub(super) async fn refuse(&self, mut draft: AuditDraft, verdict: &str, e: Error) -> Error {
        if e.is_internal() {
            return e;
        }
        draft.decision = verdict.into();
        draft.reason = e.to_string();
        match self.record(draft).await {
            Ok(()) => e,
            Err(se) => se,
        }
    }
}
