//! Record <-> protobuf conversion. The wire and the domain use the same
//! words: `holder` is the SPIFFE ID holding a task, `owner` the accountable
//! team or person.

use std::time::Duration;

use super::pb;
use crate::Error;
use crate::audit::{self, AuditDraft, AuditEvent};
use crate::issuer::{CredentialState, RevokeOutcome, TaskRef};
use crate::store::{CredentialKind, CredentialRecord, RevocationEvent, TaskRecord, TaskState};

/// `None` for 0 (the wire's "not set").
pub(super) fn ttl(seconds: u64) -> Option<Duration> {
    (seconds != 0).then(|| Duration::from_secs(seconds))
}

/// `None` for the empty string (the wire's "not set").
pub(super) fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Converts a stored record (and its task, when at hand) to its wire form.
pub fn credential_pb(r: &CredentialRecord, task: Option<&TaskRecord>) -> pb::Credential {
    pb::Credential {
        id: r.id.clone(),
        kind: match r.kind {
            CredentialKind::X509 => pb::CredentialKind::X509,
            CredentialKind::Jwt => pb::CredentialKind::Jwt,
        } as i32,
        spiffe_id: r.spiffe_id.clone(),
        task_id: r.task_id.clone(),
        audience: r.audience.clone().unwrap_or_default(),
        issued_at: r.issued_at,
        not_before: r.not_before,
        expires_at: r.not_after,
        task_holder: r.task_holder.clone(),
        owner: task.map(|t| t.owner.clone()).unwrap_or_default(),
        break_glass: task.is_some_and(|t| t.break_glass),
    }
}

/// Converts a task record to its wire form.
pub(super) fn task_pb(t: &TaskRecord) -> pb::Task {
    pb::Task {
        task_id: t.task_id.clone(),
        holder: t.holder.clone(),
        purpose: t.purpose.clone(),
        ticket: t.ticket.clone(),
        labels: t.labels.clone().into_iter().collect(),
        implicit: t.implicit,
        created_at: t.created_at,
        deadline: t.deadline,
        state: match t.state {
            TaskState::Active => pb::TaskState::Active,
            TaskState::Completed => pb::TaskState::Completed,
            TaskState::Expired => pb::TaskState::Expired,
        } as i32,
        ended_at: t.ended_at.unwrap_or(0),
        owner: t.owner.clone(),
        break_glass: t.break_glass,
        justification: t.justification.clone(),
        reviewed_by: t.review.as_ref().map(|r| r.by.clone()).unwrap_or_default(),
        reviewed_at: t.review.as_ref().map(|r| r.at).unwrap_or(0),
        review_note: t
            .review
            .as_ref()
            .map(|r| r.note.clone())
            .unwrap_or_default(),
        parent: t.parent.as_ref().map(|(holder, task_id)| pb::TaskRef {
            task_id: task_id.clone(),
            holder: holder.clone(),
        }),
        depth: t.depth,
        audiences: t.audiences.clone(),
    }
}

/// Decodes a task reference; the holder defaults to the caller.
pub(super) fn task_ref(r: Option<pb::TaskRef>) -> Result<TaskRef, Error> {
    let r = r.ok_or_else(|| Error::InvalidArgument("task is required".into()))?;
    Ok(TaskRef {
        task_id: r.task_id,
        holder: non_empty(r.holder),
    })
}

/// The task id a request names, for the request log line.
pub(super) fn task_id_of(r: Option<&pb::TaskRef>) -> String {
    r.map(|t| t.task_id.clone()).unwrap_or_default()
}

/// The audit kinds, wire value and stored text, in one table so that the
/// two directions cannot disagree.
const AUDIT_KINDS: [(pb::AuditKind, &str); 20] = [
    (pb::AuditKind::MintX509, audit::kind::MINT_X509),
    (pb::AuditKind::MintJwt, audit::kind::MINT_JWT),
    (pb::AuditKind::Renew, audit::kind::RENEW),
    (pb::AuditKind::TaskBegin, audit::kind::TASK_BEGIN),
    (pb::AuditKind::BreakGlass, audit::kind::BREAK_GLASS),
    (pb::AuditKind::TaskComplete, audit::kind::TASK_COMPLETE),
    (pb::AuditKind::TaskDelegate, audit::kind::TASK_DELEGATE),
    (pb::AuditKind::TaskRead, audit::kind::TASK_READ),
    (pb::AuditKind::TaskExpired, audit::kind::TASK_EXPIRED),
    (pb::AuditKind::Revoke, audit::kind::REVOKE),
    (pb::AuditKind::Revoked, audit::kind::REVOKED),
    (pb::AuditKind::StatusCheck, audit::kind::STATUS_CHECK),
    (pb::AuditKind::Watch, audit::kind::WATCH),
    (pb::AuditKind::Ack, audit::kind::ACK),
    (pb::AuditKind::Admin, audit::kind::ADMIN),
    (pb::AuditKind::BreakGlassReview, audit::kind::REVIEW),
    (pb::AuditKind::PolicyReload, audit::kind::POLICY_RELOAD),
    (
        pb::AuditKind::DeliveryOverdue,
        audit::kind::DELIVERY_OVERDUE,
    ),
    (pb::AuditKind::AuditPruned, audit::kind::AUDIT_PRUNED),
    (pb::AuditKind::Limit, audit::kind::LIMIT),
];

const AUDIT_DECISIONS: [(pb::AuditDecision, &str); 5] = [
    (pb::AuditDecision::None, audit::decision::NONE),
    (pb::AuditDecision::Allow, audit::decision::ALLOW),
    (pb::AuditDecision::Deny, audit::decision::DENY),
    (pb::AuditDecision::Refused, audit::decision::REFUSED),
    (
        pb::AuditDecision::RateLimited,
        audit::decision::RATE_LIMITED,
    ),
];

const REVOCATION_KINDS: [(pb::RevocationKind, &str); 4] = [
    (pb::RevocationKind::Credential, "credential"),
    (pb::RevocationKind::Task, "task"),
    (pb::RevocationKind::Workload, "workload"),
    (pb::RevocationKind::TrustDomain, "trust_domain"),
];

fn to_wire<E: Copy + Into<i32>>(table: &[(E, &str)], text: &str, what: &str) -> i32 {
    match table.iter().find(|(_, t)| *t == text) {
        Some((e, _)) => (*e).into(),
        None => {
            // A stored text outside the closed set is a bug in whoever wrote
            // it; say so rather than guess.
            tracing::warn!(
                what,
                text,
                "no wire value for stored text; sent as unspecified"
            );
            0
        }
    }
}

fn from_wire<E: Copy + Into<i32>>(table: &[(E, &'static str)], wire: i32) -> &'static str {
    table
        .iter()
        .find(|(e, _)| (*e).into() == wire)
        .map(|(_, t)| *t)
        .unwrap_or("")
}

/// The stored text of a wire audit kind (`mint_x509`, ...); empty for
/// UNSPECIFIED or an unknown value.
pub fn audit_kind_text(kind: i32) -> &'static str {
    from_wire(&AUDIT_KINDS, kind)
}

/// The stored text of a wire audit decision (`allow`, ...); empty for NONE
/// (as stored), UNSPECIFIED or an unknown value.
pub fn audit_decision_text(decision: i32) -> &'static str {
    from_wire(&AUDIT_DECISIONS, decision)
}

/// The text of a wire revocation kind (`credential`, `task`, `workload`,
/// `trust_domain`); empty for UNSPECIFIED or an unknown value.
pub fn revocation_kind_text(kind: i32) -> &'static str {
    from_wire(&REVOCATION_KINDS, kind)
}

/// Converts an audit event to its wire form.
pub(super) fn audit_pb(e: &AuditEvent) -> pb::AuditEvent {
    let b = &e.body;
    pb::AuditEvent {
        seq: e.seq,
        time: b.time,
        prev_hash: e.prev_hash.clone(),
        hash: e.hash.clone(),
        kind: to_wire(&AUDIT_KINDS, &b.kind, "audit kind"),
        actor: b.actor.clone(),
        task_holder: b.task_holder.clone(),
        task_id: b.task_id.clone(),
        credential_id: b.credential_id.clone(),
        decision: to_wire(&AUDIT_DECISIONS, &b.decision, "audit decision"),
        policies: b.policies.clone(),
        reason: b.reason.clone(),
        break_glass: b.break_glass,
        ref_seq: b.ref_seq.unwrap_or(0),
        subject: b.subject.clone(),
        trace: b.trace.clone(),
    }
}

/// Converts a wire audit event back (for `audit verify` over exports): the
/// enums become the stored text again, so the hash chain can be checked.
pub fn audit_from_pb(e: pb::AuditEvent) -> AuditEvent {
    AuditEvent {
        seq: e.seq,
        prev_hash: e.prev_hash,
        hash: e.hash,
        body: AuditDraft {
            time: e.time,
            kind: audit_kind_text(e.kind).to_owned(),
            actor: e.actor,
            task_holder: e.task_holder,
            task_id: e.task_id,
            credential_id: e.credential_id,
            decision: audit_decision_text(e.decision).to_owned(),
            policies: e.policies,
            reason: e.reason,
            break_glass: e.break_glass,
            ref_seq: (e.ref_seq != 0).then_some(e.ref_seq),
            subject: e.subject,
            trace: e.trace,
        },
    }
}

/// Converts a credential state to its wire form.
pub(super) fn status_pb(s: &CredentialState) -> pb::CheckStatusResponse {
    use pb::CredentialState as S;
    match s {
        CredentialState::Active { expires_at } => pb::CheckStatusResponse {
            state: S::Active as i32,
            expires_at: *expires_at,
            ..Default::default()
        },
        CredentialState::Revoked {
            reason,
            revoked_at,
            expires_at,
        } => pb::CheckStatusResponse {
            state: S::Revoked as i32,
            reason: reason.clone(),
            revoked_at: *revoked_at,
            expires_at: *expires_at,
        },
        CredentialState::Expired { expires_at } => pb::CheckStatusResponse {
            state: S::Expired as i32,
            expires_at: *expires_at,
            ..Default::default()
        },
        CredentialState::Unknown => pb::CheckStatusResponse {
            state: S::Unknown as i32,
            ..Default::default()
        },
    }
}

/// Converts what a revocation did to its wire form.
pub(super) fn outcome_pb(o: RevokeOutcome) -> pb::RevokeResponse {
    pb::RevokeResponse {
        revoked: o.revoked,
        seqs: o.seqs,
        message: o.message,
    }
}

/// Converts a log entry to its wire form.
pub fn event_pb(e: &RevocationEvent) -> pb::RevocationEvent {
    pb::RevocationEvent {
        seq: e.seq,
        kind: to_wire(&REVOCATION_KINDS, &e.kind, "revocation kind"),
        credential_ids: e.credential_ids.clone(),
        task_id: e.task_id.clone(),
        task_holder: e.task_holder.clone(),
        spiffe_id: e.spiffe_id.clone(),
        trust_domain: e.trust_domain.clone(),
        reason: e.reason.clone(),
        revoked_at: e.revoked_at,
        expires_at: e.expires_at,
        set: e.set_jwt.clone(),
    }
}

/// Converts the trust bundle document to its wire form; `jwt_issuer` is the
/// `iss` of the JWT-SVIDs the keys in it sign.
pub(super) fn bundle_pb(
    b: crate::trust::TrustBundleDoc,
    jwt_issuer: &str,
) -> pb::GetTrustBundleResponse {
    pb::GetTrustBundleResponse {
        trust_domain: b.trust_domain,
        x509_authorities: b.x509_authorities,
        x509_authorities_pem: b.pem,
        spiffe_bundle_jwks: b.jwks,
        sequence: b.sequence,
        refresh_hint_seconds: crate::trust::REFRESH_HINT_SECS,
        jwt_issuer: jwt_issuer.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stored_text_round_trips_through_the_wire() {
        for (_, text) in AUDIT_KINDS {
            let wire = to_wire(&AUDIT_KINDS, text, "audit kind");
            assert_ne!(wire, 0, "{text}");
            assert_eq!(audit_kind_text(wire), text);
        }
        for (_, text) in AUDIT_DECISIONS {
            let wire = to_wire(&AUDIT_DECISIONS, text, "audit decision");
            assert_ne!(wire, 0, "{text:?}");
            assert_eq!(audit_decision_text(wire), text);
        }
        for (_, text) in REVOCATION_KINDS {
            let wire = to_wire(&REVOCATION_KINDS, text, "revocation kind");
            assert_ne!(wire, 0, "{text}");
            assert_eq!(revocation_kind_text(wire), text);
        }
        assert_eq!(to_wire(&AUDIT_KINDS, "no_such_kind", "audit kind"), 0);
    }
}
