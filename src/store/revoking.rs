//! The parts of a revocation that do not depend on the database, shared by
//! every backend: which credentials a scope selects, how they group into
//! one event per task, what each event says, and the audit events that
//! record it. Each backend does the locking, numbering and writing.

use std::collections::BTreeMap;

use super::{CredentialRecord, RevocationEvent, RevokeRequest, RevokeScope, TaskState};
use crate::audit::{self, AuditDraft};

/// The SQL condition over `credentials` that selects a scope, with its
/// parameters numbered from 1 behind `mark` (`?` for SQLite, `$` for
/// PostgreSQL).
pub(crate) fn scope_filter(scope: &RevokeScope, mark: char) -> (String, Vec<String>) {
    match scope {
        RevokeScope::Credential(id) => (format!("id = {mark}1"), vec![id.clone()]),
        RevokeScope::Task { holder, task_id } => (
            format!("task_holder = {mark}1 AND task_id = {mark}2"),
            vec![holder.clone(), task_id.clone()],
        ),
        RevokeScope::Workload(id) => (format!("spiffe_id = {mark}1"), vec![id.clone()]),
        RevokeScope::TrustDomain(td) => (
            format!("(spiffe_id = {mark}1 OR spiffe_id LIKE {mark}2 ESCAPE '\\')"),
            vec![
                format!("spiffe://{td}"),
                format!("spiffe://{}/%", like_escape(td)),
            ],
        ),
    }
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

fn trust_domain_of(spiffe_id: &str) -> String {
    spiffe_id
        .strip_prefix("spiffe://")
        .and_then(|r| r.split('/').next())
        .unwrap_or_default()
        .to_owned()
}

/// The credentials to revoke, each once, grouped by task in a stable order:
/// one event per task.
pub(crate) fn by_task(
    mut creds: Vec<CredentialRecord>,
) -> BTreeMap<(String, String), Vec<CredentialRecord>> {
    creds.sort_by(|a, b| a.id.cmp(&b.id));
    creds.dedup_by(|a, b| a.id == b.id);
    let mut by_task: BTreeMap<(String, String), Vec<CredentialRecord>> = BTreeMap::new();
    for c in creds {
        by_task
            .entry((c.task_holder.clone(), c.task_id.clone()))
            .or_default()
            .push(c);
    }
    by_task
}

/// The event numbered `seq` for one task's credentials (`creds` is not
/// empty), before it is signed.
pub(crate) fn event(
    req: &RevokeRequest,
    seq: u64,
    (task_holder, task_id): (String, String),
    creds: &[CredentialRecord],
) -> RevocationEvent {
    let spiffe_id = creds[0].spiffe_id.clone();
    RevocationEvent {
        seq,
        kind: req.scope.kind().to_owned(),
        credential_ids: creds.iter().map(|c| c.id.clone()).collect(),
        task_holder,
        task_id,
        trust_domain: trust_domain_of(&spiffe_id),
        spiffe_id,
        reason: req.reason.clone(),
        revoked_at: req.now,
        expires_at: creds.iter().map(|c| c.not_after).max().unwrap_or(req.now),
        set_jwt: String::new(),
    }
}

/// The `revoked` audit event of one revocation event; `cascaded` when its
/// task was reached through a delegation.
pub(crate) fn revoked_audit(
    req: &RevokeRequest,
    e: &RevocationEvent,
    break_glass: bool,
    cascaded: bool,
) -> AuditDraft {
    let mut a = AuditDraft::new(audit::kind::REVOKED, &req.audit.actor, req.now)
        .task(&e.task_holder, &e.task_id, break_glass)
        .decided(&req.audit.decision, &req.audit.policies)
        .credential(&e.credential_ids.join(","))
        .because(if cascaded {
            format!("{} (cascaded to a delegated task)", req.reason)
        } else {
            req.reason.clone()
        });
    a.ref_seq = Some(e.seq);
    // Built in the store's own task: the request's trace comes with it.
    a.trace.clone_from(&req.audit.trace);
    a
}

/// The audit event of a delegated task ended because its parent ended.
pub(crate) fn ended_audit(
    req: &RevokeRequest,
    (holder, task_id): &(String, String),
    state: TaskState,
    break_glass: bool,
) -> AuditDraft {
    let mut a = AuditDraft::new(&req.audit.kind, &req.audit.actor, req.now)
        .task(holder, task_id, break_glass)
        .decided(&req.audit.decision, &req.audit.policies)
        .because(format!(
            "{}: its parent task `{}` of `{}` ended",
            state.as_str(),
            req.audit.task_id,
            req.audit.task_holder
        ));
    a.trace.clone_from(&req.audit.trace);
    a
}
