//! The gate every capability goes through: who is calling -> rate limit ->
//! policy decision -> audit of the decision -> refusal with the right error.
//!
//! The rate limit and the watch-stream cap are taken by the gRPC guard
//! before a request is decoded ([`Gate::admit`], [`Gate::watch_slot`]);
//! their refusals, and those of the other holding caps, are audited in
//! aggregate ([`Gate::refuse_limit`]): one event per workload and limit per
//! interval, carrying the count, so a caller over its limit cannot fill the
//! disk with refusals.
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
use crate::config::Config;
use crate::identity::{Caller, SpiffeId, TrustDomain};
use crate::policy::{AdminContext, Decision, Engine, Request, Resource};
use crate::ratelimit::{Class, ClassLimits, RefusalBatch, Refusals, StreamCounter, StreamSlot};
use crate::store::Store;
use crate::tls::TlsMaterial;

/// How often refusals by a limit are written, per workload and limit.
pub const REFUSAL_AUDIT_INTERVAL: Duration = Duration::from_secs(60);

/// The shared gate: the policy engine, the limits and the audit trail.
pub(super) struct Gate {
    trust_domain: TrustDomain,
    policy: Arc<Engine>,
    limits: ClassLimits,
    watchers: StreamCounter,
    refusals: Refusals,
    store: Arc<dyn Store>,
    material: Arc<TlsMaterial>,
    /// `store.use_interval`, in seconds.
    repeat_window: i64,
}

impl Gate {
    /// The gate of the issuer configured by `cfg`.
    pub(super) fn new(
        cfg: &Config,
        policy: Arc<Engine>,
        store: Arc<dyn Store>,
        material: Arc<TlsMaterial>,
    ) -> Self {
        // Buckets live in this process: replicas do not share them, so the
        // fleet allows N times this. Said once at start so an operator
        // sizing the fleet sees it.
        let limits = ClassLimits::new(&cfg.limits);
        tracing::info!(
            buckets = %limits.describe(),
            max_watch_streams = cfg.limits.max_watch_streams,
            "rate limits per workload on this replica (not shared: N replicas allow N times as much)"
        );
        Self {
            trust_domain: TrustDomain::new(&cfg.trust_domain).expect("validated at config load"),
            policy,
            limits,
            watchers: StreamCounter::new(cfg.limits.max_watch_streams),
            refusals: Refusals::new(REFUSAL_AUDIT_INTERVAL),
            store,
            material,
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
    /// Nor does the issuer itself: its serving SVID (as reloaded) holds no
    /// tasks, so a leaked serving key cannot be turned into credentials.
    /// A refusal is audited as a `deny` with `draft`.
    pub(super) async fn mintable(&self, id: &SpiffeId, draft: &AuditDraft) -> Result<(), Error> {
        if self
            .material
            .server_spiffe_id()
            .is_some_and(|own| own == id.to_string())
        {
            let e = Error::PermissionDenied(format!(
                "`{id}` is the issuer's own serving identity; it holds no tasks and mints nothing"
            ));
            return Err(self.refuse(draft.clone(), decision::DENY, e).await);
        }
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

    /// Takes a token of `class` for the caller, or refuses (audited in
    /// aggregate).
    pub(super) async fn admit(&self, caller: &Caller, class: Class) -> Result<(), Error> {
        let id = caller.spiffe_id.to_string();
        match self.limits.check(class, &id) {
            Ok(()) => Ok(()),
            Err(over) => {
                let label = match class {
                    Class::Mint => "rate:mint",
                    Class::TaskWrite => "rate:task",
                    Class::Read => "rate:read",
                    Class::Watch => "rate:watch",
                    Class::Admin => "rate:admin",
                };
                let message = over.to_string();
                Err(self
                    .refuse_limit(&id, label, message, over.retry_after)
                    .await)
            }
        }
    }

    /// A slot among the caller's concurrent watch streams, or a refusal
    /// (audited in aggregate).
    pub(super) async fn watch_slot(&self, caller: &Caller) -> Result<StreamSlot, Error> {
        let id = caller.spiffe_id.to_string();
        match self.watchers.acquire(&id) {
            Some(slot) => Ok(slot),
            None => {
                let message = format!(
                    "at most {} concurrent watch streams per workload (limits.max_watch_streams); \
                     retry after one of yours ends",
                    self.watchers.max()
                );
                Err(self
                    .refuse_limit(&id, "max_watch_streams", message, Duration::from_secs(1))
                    .await)
            }
        }
    }

    /// Refuses a call over a limit with RESOURCE_EXHAUSTED and a retry
    /// hint; the refusal reaches the audit trail in aggregate. A failure to
    /// write that event is logged, never turned into another answer: the
    /// refusal stands.
    pub(super) async fn refuse_limit(
        &self,
        workload: &str,
        limit: &'static str,
        message: String,
        retry_after: Duration,
    ) -> Error {
        crate::ops::metrics::get().limit_refused(limit);
        if let Some(batch) = self.refusals.record(workload, limit, &message) {
            self.write_refusals(&[batch]).await;
        }
        Error::ResourceExhausted {
            message,
            retry_after,
        }
    }

    /// Writes the refusal counts whose interval has passed.
    pub(super) async fn flush_refusals(&self) {
        let due = self.refusals.due();
        if !due.is_empty() {
            self.write_refusals(&due).await;
        }
    }

    /// Writes every count still pending.
    pub(super) async fn flush_refusals_all(&self) {
        let all = self.refusals.drain();
        if !all.is_empty() {
            self.write_refusals(&all).await;
        }
    }

    async fn write_refusals(&self, batches: &[RefusalBatch]) {
        let now = now_unix();
        let events: Vec<AuditDraft> = batches
            .iter()
            .map(|b| {
                let calls = if b.count == 1 { "call" } else { "calls" };
                let verdict = if b.limit.starts_with("rate:") {
                    decision::RATE_LIMITED
                } else {
                    decision::REFUSED
                };
                AuditDraft::new(kind::LIMIT, &b.workload, now)
                    .subject(b.limit)
                    .decided(verdict, &[])
                    .because(format!("{} {calls} refused: {}", b.count, b.message))
            })
            .collect();
        if let Err(e) = self.store.append_audit(&events).await {
            tracing::warn!(error = %e, "could not audit refusals by a limit");
        }
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
        let probe = request.clone();
        let d = self
            .policy
            .authorize(&caller.spiffe_id, request, resource)?;
        for e in &d.errors {
            tracing::warn!(action = action.as_str(), error = %e, "a policy failed to evaluate");
        }
        if !d.allowed {
            let message = self.denial(caller, &probe, resource, &d);
            let event = draft
                .clone()
                .decided(decision::DENY, &d.policies)
                .because(message.clone());
            self.record(event).await?;
            tracing::debug!(spiffe_id = %caller.spiffe_id, action = action.as_str(), %resource, policies = %d.policies.join(","), "denied");
            return Err(Error::PermissionDenied(message));
        }
        Ok(d)
    }

    /// Authorizes a read that is not audited either way (the CRL, public to
    /// whoever the policy lets read it): a flood of reads, allowed or
    /// denied, must not write a row per call. A denial is logged.
    pub(super) fn authorize_unaudited(
        &self,
        caller: &Caller,
        request: Request,
        resource: &Resource,
    ) -> Result<Decision, Error> {
        let action = request.action();
        let probe = request.clone();
        let d = self
            .policy
            .authorize(&caller.spiffe_id, request, resource)?;
        for e in &d.errors {
            tracing::warn!(action = action.as_str(), error = %e, "a policy failed to evaluate");
        }
        if !d.allowed {
            tracing::debug!(spiffe_id = %caller.spiffe_id, action = action.as_str(), %resource, policies = %d.policies.join(","), "denied (not audited)");
            return Err(Error::PermissionDenied(
                self.denial(caller, &probe, resource, &d),
            ));
        }
        Ok(d)
    }

    /// The message of a denial: who may not do what, and which policies
    /// decided it; when none did (nothing permits), the likely cause if one
    /// of the request's own caps is it (`ttl_seconds 1800 is more than the
    /// policy permits here: ...`). Callers answer a denial on another
    /// workload's task as "not found", so the hint only ever describes the
    /// caller's own request.
    fn denial(
        &self,
        caller: &Caller,
        request: &Request,
        resource: &Resource,
        d: &Decision,
    ) -> String {
        let mut message = format!(
            "`{}` may not {} {resource}: {}",
            caller.spiffe_id,
            request.action().as_str(),
            d.describe()
        );
        if d.policies.is_empty()
            && d.errors.is_empty()
            && let Some(hint) = self.policy.hint(&caller.spiffe_id, request, resource)
        {
            message.push_str("; ");
            message.push_str(&hint);
        }
        message
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
    pub(super) async fn refuse(&self, draft: AuditDraft, verdict: &str, e: Error) -> Error {
        let reason = e.to_string();
        self.refuse_as(draft, verdict, reason, e).await
    }

    /// Like [`Gate::refuse`], but the trail records `reason` while the caller
    /// is answered `e`: a refusal that would name another workload, or tell
    /// "not yours" from "does not exist", is answered vaguely and audited
    /// precisely.
    pub(super) async fn refuse_as(
        &self,
        mut draft: AuditDraft,
        verdict: &str,
        reason: String,
        e: Error,
    ) -> Error {
        // A limit's refusals are audited in aggregate (`refuse_limit`).
        if e.is_internal() || matches!(e, Error::ResourceExhausted { .. }) {
            return e;
        }
        draft.decision = verdict.into();
        draft.reason = reason;
        match self.record(draft).await {
            Ok(()) => e,
            Err(se) => se,
        }
    }
}
