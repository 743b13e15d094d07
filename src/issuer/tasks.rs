//! Tasks: begin (plainly or through break-glass), delegate, complete, read;
//! their request types, and the cache of tasks seen active.

use std::collections::BTreeMap;
use std::time::Duration;

use super::revoke::{outcome, state_of};
use super::validate::{self, check_text, ensure_active, validate_audiences};
use super::{
    CredentialState, Issuer, MAX_JUSTIFICATION_LEN, REASON_COMPLETED, RevokeOutcome, facts,
    random_bytes, secs,
};
use crate::Error;
use crate::audit::{AuditDraft, decision, kind};
use crate::clock::{now_unix, rfc3339};
use crate::identity::{Caller, TaskId};
use crate::policy::{BeginContext, DelegateContext, Request, Resource};
use crate::store::{
    CredentialRecord, RevokeRequest, RevokeScope, StoreError, TaskRecord, TaskState,
};

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

impl BeginTask {
    /// Checks the free-form fields; returns the audiences (deduplicated)
    /// and the owner asked for, if any.
    fn checked(&self) -> Result<(Vec<String>, Option<String>), Error> {
        check_text("purpose", &self.purpose, 1024)?;
        check_text("ticket", &self.ticket, 256)?;
        check_text("justification", &self.justification, MAX_JUSTIFICATION_LEN)?;
        if self.labels.len() > 32 {
            return Err(Error::InvalidArgument(format!(
                "{} labels given; at most 32 are allowed",
                self.labels.len()
            )));
        }
        for (k, v) in &self.labels {
            check_text("label key", k, 256)?;
            check_text("label value", v, 256)?;
            if k.is_empty() {
                return Err(Error::InvalidArgument("label key is empty".into()));
            }
        }
        let audiences = validate_audiences(&self.audiences)?;
        let requested_owner = match self.owner.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(o) => {
                check_text("owner", o, 256)?;
                Some(o.to_owned())
            }
        };
        if self.break_glass {
            if self.justification.trim().is_empty() {
                return Err(Error::InvalidArgument(
                    "break-glass needs a justification: say why normal access is not enough".into(),
                ));
            }
            if self.ticket.trim().is_empty() {
                return Err(Error::InvalidArgument(
                    "break-glass needs a ticket (incident or change reference)".into(),
                ));
            }
        }
        Ok((audiences, requested_owner))
    }
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

/// A task named by id and (optionally) holder.
#[derive(Debug, Clone)]
pub struct TaskRef {
    /// Raw task id.
    pub task_id: String,
    /// The holder's SPIFFE ID; `None` = the caller.
    pub holder: Option<String>,
}

/// Tasks seen active, by (holder, task id): what policies read of a task
/// (holder, owner, break-glass, depth, audiences, deadline) never changes
/// once it is begun, so a mint need not read it again. Its state may: the
/// store checks that in the transaction that records the credential, so a
/// stale entry costs a refused mint, never a wrong one.
#[derive(Debug, Default)]
pub(super) struct TaskCache(
    std::sync::Mutex<std::collections::HashMap<(String, String), TaskRecord>>,
);

/// Entries kept before the cache starts over.
const TASK_CACHE_MAX: usize = 100_000;

impl TaskCache {
    pub(super) fn get(&self, holder: &str, task_id: &str) -> Option<TaskRecord> {
        let key = (holder.to_owned(), task_id.to_owned());
        self.0.lock().expect("task cache").get(&key).cloned()
    }

    pub(super) fn put(&self, t: &TaskRecord) {
        if t.state != TaskState::Active {
            return;
        }
        let mut m = self.0.lock().expect("task cache");
        if m.len() >= TASK_CACHE_MAX {
            m.clear();
        }
        m.insert((t.holder.clone(), t.task_id.clone()), t.clone());
    }

    pub(super) fn forget(&self, holder: &str, task_id: &str) {
        let key = (holder.to_owned(), task_id.to_owned());
        self.0.lock().expect("task cache").remove(&key);
    }
}

// Beginning tasks: explicitly, through break-glass, or by delegation.
impl Issuer {
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
        self.gate.mintable(&caller.spiffe_id, &early).await?;
        let (audiences, requested_owner) = req.checked()?;
        let requested_lifetime = validate::duration("lifetime_seconds", req.lifetime)?;
        let (max, what, key) = if req.break_glass {
            (
                self.limits.break_glass_max_lifetime,
                "break-glass maximum",
                "limits.break_glass_max_lifetime",
            )
        } else {
            (
                self.limits.max_task_lifetime,
                "configured maximum",
                "limits.max_task_lifetime",
            )
        };
        let lifetime = match requested_lifetime {
            Some(l) => l,
            None => self.limits.default_task_lifetime.min(max),
        };
        if lifetime > max {
            let e = Error::InvalidArgument(format!(
                "requested task lifetime {} exceeds the {what} {} ({key})",
                humantime::format_duration(lifetime),
                humantime::format_duration(max)
            ));
            return Err(self.gate.refuse(early, decision::REFUSED, e).await);
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
        record.owner = owner;
        record.break_glass = req.break_glass;
        record.justification = req.justification;
        record.audiences = audiences;
        let event_kind = if req.break_glass {
            kind::BREAK_GLASS
        } else {
            kind::TASK_BEGIN
        };
        let draft =
            AuditDraft::new(event_kind, &holder, now).task(&holder, task.as_str(), req.break_glass);
        let context = BeginContext {
            lifetime_seconds: secs(lifetime),
            owner: record.owner.clone(),
            owner_requested: requested_owner.is_some(),
            justification: record.justification.clone(),
            ticket: record.ticket.clone(),
        };
        let request = if req.break_glass {
            Request::BreakGlass(context)
        } else {
            Request::BeginTask(context)
        };
        let d = self
            .gate
            .authorize(caller, request, &Resource::Task(facts(&record)), &draft)
            .await?;
        let draft = draft.decided(decision::ALLOW, &d.policies);
        let result = async {
            self.check_owned(&record)?;
            // Emergency access is answered for by someone: a break-glass task
            // with no accountable owner would have no one to review it with.
            if record.break_glass && record.owner.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "break-glass task `{task}` would have no accountable owner: no ownership rule \
                     matches `{holder}`; begin it with an owner"
                )));
            }
            let mut event = draft.clone().because(format!(
                "begun until {}; owner `{}`",
                rfc3339(record.deadline),
                record.owner
            ));
            if req.break_glass {
                event.reason = format!(
                    "{}; ticket `{}`; justification: {}",
                    event.reason, record.ticket, record.justification
                );
            }
            let began = self
                .store
                .begin_task_within(&record, self.limits.max_active_tasks, &[event])
                .await;
            let (stored, created) = self.within_caps(caller, began).await?;
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
            Err(e) => return Err(self.gate.refuse(draft, decision::REFUSED, e).await),
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
        let delegate_id = validate::spiffe_id("delegate", &req.delegate)?;
        let delegate = delegate_id.to_string();
        let requested_lifetime = validate::duration("lifetime_seconds", req.lifetime)?;
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
        let now = now_unix();
        let me = caller.spiffe_id.to_string();
        // A delegation hands work to another workload: to the delegator it
        // would only add a depth and a narrower copy of what it holds. (The
        // parent's holder is checked once the caller may see the parent.)
        if delegate == me {
            return Err(Error::InvalidArgument(format!(
                "a task is delegated to another workload, not to `{delegate}`, which delegates it"
            )));
        }
        // Checked before the parent is looked up: the answer depends on the
        // delegate alone, so it tells nothing about the parent.
        let early = AuditDraft::new(kind::TASK_DELEGATE, &me, now)
            .task(&parent_holder, parent_id.as_str(), false)
            .subject(delegate.as_str());
        self.gate.mintable(&delegate_id, &early).await?;
        let parent = self.find_task(&parent_holder, &parent_id).await?;
        let depth = parent.depth + 1;
        let left = (parent.deadline - now).max(0);
        // Bounded by `MAX_REQUEST_DURATION`, so exact in seconds; checked
        // against the parent's deadline once the caller may see the parent.
        let lifetime = match requested_lifetime {
            None => left,
            Some(d) => secs(d),
        };
        let draft = AuditDraft::new(kind::TASK_DELEGATE, &me, now)
            .task(&parent.holder, &parent.task_id, parent.break_glass)
            .subject(delegate.as_str());
        let request = Request::Delegate(DelegateContext {
            delegate: delegate_id.clone(),
            task_id: child_id.as_str().to_owned(),
            audiences: audiences.clone(),
            lifetime_seconds: lifetime,
            depth,
        });
        let d = self
            .authorize_task(caller, request, &parent, &draft)
            .await?;
        let draft = draft.decided(decision::ALLOW, &d.policies);
        let result = async {
            if delegate == parent.holder {
                return Err(Error::InvalidArgument(format!(
                    "a task is delegated to another workload, not to `{delegate}`, which holds it"
                )));
            }
            ensure_active(&parent, now)?;
            if depth > self.limits.max_delegation_depth {
                return Err(Error::FailedPrecondition(format!(
                    "task `{}` is {} delegations deep; limits.max_delegation_depth is {}",
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
            child.purpose = format!("delegated by `{}` from task `{}`", parent.holder, parent.task_id);
            child.ticket = parent.ticket.clone();
            child.owner = parent.owner.clone();
            child.break_glass = parent.break_glass;
            child.justification = parent.justification.clone();
            child.parent = Some((parent.holder.clone(), parent.task_id.clone()));
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
            on_child.task_holder = child.holder.clone();
            on_child.task_id = child.task_id.clone();
            let began = self
                .store
                .begin_task_within(&child, self.limits.max_active_tasks, &[on_parent, on_child])
                .await;
            let (stored, created) = match began {
                Err(e @ StoreError::TooManyTasks { .. }) => {
                    return self.within_caps(caller, Err(e)).await;
                }
                // The parent ended between the checks above and the begin.
                Err(StoreError::ParentEnded(state)) => {
                    return Err(Error::FailedPrecondition(format!(
                        "task `{}` is {}; it cannot be delegated any more",
                        parent.task_id,
                        state.as_str()
                    )));
                }
                other => other?,
            };
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
            Err(e) => Err(self.gate.refuse(draft, decision::REFUSED, e).await),
        }
    }
}

// Ending and reading tasks.
impl Issuer {
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
            &t.holder,
            &t.task_id,
            t.break_glass,
        );
        let d = self
            .authorize_task(caller, Request::CompleteTask, &t, &draft)
            .await?;
        let draft = draft.decided(decision::ALLOW, &d.policies);
        if t.state != TaskState::Active {
            let message = format!(
                "task `{task}` already {} at {}; nothing to revoke",
                t.state.as_str(),
                rfc3339(t.ended_at.unwrap_or(t.deadline))
            );
            // Nothing changes: repeats are counted, not chained each.
            self.gate.record(draft.because(message.clone())).await?;
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
                    holder: holder.clone(),
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

    pub(super) async fn read_task(
        &self,
        caller: &Caller,
        t: &TaskRecord,
        what: &str,
    ) -> Result<(), Error> {
        let draft = AuditDraft::new(kind::TASK_READ, &caller.spiffe_id.to_string(), now_unix())
            .task(&t.holder, &t.task_id, t.break_glass)
            .because(what);
        let d = self
            .authorize_task(caller, Request::ReadTask, t, &draft)
            .await?;
        // A read changes nothing: repeats are counted, not chained each.
        self.gate
            .record(draft.decided(decision::ALLOW, &d.policies))
            .await?;
        Ok(())
    }
}
