//! Rows to records: one mapping per record kind, shared by every backend.
//! Both schemas use the same column names, and each driver's row type
//! (sqlx's SQLite and PostgreSQL rows, rusqlite's) reads a column by name
//! through [`Cols`], so a record is read the same way wherever it is stored.

use super::{
    AckRecord, CredentialKind, CredentialRecord, Review, Revocation, RevocationEvent, StoreError,
    TaskRecord, TaskState,
};
use crate::audit::{AuditDraft, AuditEvent};

/// Reading a row by column name; each backend implements it for its
/// drivers' row types, mapping the driver's errors its own way.
pub(crate) trait Cols {
    /// A non-null text column.
    fn text(&self, col: &str) -> Result<String, StoreError>;
    /// A nullable text column.
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError>;
    /// A non-null integer column.
    fn int(&self, col: &str) -> Result<i64, StoreError>;
    /// A nullable integer column.
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError>;
    /// A boolean column.
    fn flag(&self, col: &str) -> Result<bool, StoreError>;
}

/// A `TaskRecord` from its row.
pub(crate) fn task(r: &impl Cols) -> Result<TaskRecord, StoreError> {
    Ok(TaskRecord {
        holder: r.text("holder")?,
        task_id: r.text("task_id")?,
        created_at: r.int("created_at")?,
        purpose: r.text("purpose")?,
        ticket: r.text("ticket")?,
        labels: serde_json::from_str(&r.text("labels")?)
            .map_err(|e| StoreError::Corrupt(format!("task labels: {e}")))?,
        implicit: r.flag("implicit")?,
        deadline: r.int("deadline")?,
        state: TaskState::parse(&r.text("state")?)?,
        ended_at: r.opt_int("ended_at")?,
        owner: r.text("owner")?,
        break_glass: r.flag("break_glass")?,
        justification: r.text("justification")?,
        review: match r.opt_text("reviewed_by")? {
            None => None,
            Some(by) => Some(Review {
                by,
                at: r.opt_int("reviewed_at")?.unwrap_or(0),
                note: r.opt_text("review_note")?.unwrap_or_default(),
            }),
        },
        parent: match (r.opt_text("parent_holder")?, r.opt_text("parent_task_id")?) {
            (Some(h), Some(t)) => Some((h, t)),
            _ => None,
        },
        depth: r.int("depth")? as u32,
        audiences: serde_json::from_str(&r.text("audiences")?)
            .map_err(|e| StoreError::Corrupt(format!("task audiences: {e}")))?,
    })
}

/// A `CredentialRecord` from its row.
pub(crate) fn credential(r: &impl Cols) -> Result<CredentialRecord, StoreError> {
    let revocation = match r.opt_int("revoked_at")? {
        None => None,
        Some(revoked_at) => Some(Revocation {
            revoked_at,
            reason: r.opt_text("revoke_reason")?.unwrap_or_default(),
            seq: r.opt_int("revocation_seq")?.unwrap_or(0) as u64,
        }),
    };
    Ok(CredentialRecord {
        id: r.text("id")?,
        kind: CredentialKind::parse(&r.text("kind")?)?,
        spiffe_id: r.text("spiffe_id")?,
        task_holder: r.text("task_holder")?,
        task_id: r.text("task_id")?,
        audience: r.opt_text("audience")?,
        not_before: r.int("not_before")?,
        not_after: r.int("not_after")?,
        caller_cert_sha256: r.text("caller_cert_sha256")?,
        issued_at: r.int("issued_at")?,
        predecessor: r.opt_text("predecessor")?,
        renewal_count: r.int("renewal_count")? as u32,
        revocation,
    })
}

/// A `RevocationEvent` from its row.
pub(crate) fn revocation_event(r: &impl Cols) -> Result<RevocationEvent, StoreError> {
    Ok(RevocationEvent {
        seq: r.int("seq")? as u64,
        kind: r.text("kind")?,
        credential_ids: serde_json::from_str(&r.text("credential_ids")?)
            .map_err(|e| StoreError::Corrupt(format!("credential_ids: {e}")))?,
        task_holder: r.text("task_holder")?,
        task_id: r.text("task_id")?,
        spiffe_id: r.text("spiffe_id")?,
        trust_domain: r.text("trust_domain")?,
        reason: r.text("reason")?,
        revoked_at: r.int("revoked_at")?,
        expires_at: r.int("expires_at")?,
        set_jwt: r.text("set_jwt")?,
    })
}

/// A `AuditEvent` from its row.
pub(crate) fn audit_event(r: &impl Cols) -> Result<AuditEvent, StoreError> {
    let policies = r.text("policies")?;
    Ok(AuditEvent {
        seq: r.int("seq")? as u64,
        prev_hash: r.text("prev_hash")?,
        hash: r.text("hash")?,
        body: AuditDraft {
            time: r.int("time")?,
            kind: r.text("kind")?,
            actor: r.text("actor")?,
            task_holder: r.text("task_holder")?,
            task_id: r.text("task_id")?,
            credential_id: r.text("credential_id")?,
            decision: r.text("decision")?,
            policies: if policies.is_empty() {
                Vec::new()
            } else {
                policies.split(',').map(str::to_owned).collect()
            },
            reason: r.text("reason")?,
            break_glass: r.flag("break_glass")?,
            ref_seq: r.opt_int("ref_seq")?.map(|s| s as u64),
            subject: r.text("subject")?,
            trace: r.text("trace")?,
        },
    })
}

/// A `AckRecord` from its row.
pub(crate) fn ack(r: &impl Cols) -> Result<AckRecord, StoreError> {
    Ok(AckRecord {
        subscriber: r.text("subscriber")?,
        spiffe_id: r.text("spiffe_id")?,
        acked_seq: r.int("acked_seq")? as u64,
        acked_at: r.int("acked_at")?,
    })
}

/// An open window of repeated events from its `audit_repeats` row.
pub(crate) fn repeat_window(r: &impl Cols) -> Result<super::repeats::Window, StoreError> {
    let policies = r.text("policies")?;
    Ok(super::repeats::Window {
        window_start: r.int("window_start")?,
        repeats: r.int("repeats")? as u64,
        first_repeat: r.opt_int("first_repeat")?,
        last_repeat: r.opt_int("last_repeat")?,
        last_reason: r.text("last_reason")?,
        event: AuditDraft {
            kind: r.text("kind")?,
            actor: r.text("actor")?,
            task_holder: r.text("task_holder")?,
            task_id: r.text("task_id")?,
            credential_id: r.text("credential_id")?,
            decision: r.text("decision")?,
            policies: if policies.is_empty() {
                Vec::new()
            } else {
                policies.split(',').map(str::to_owned).collect()
            },
            break_glass: r.flag("break_glass")?,
            subject: r.text("subject")?,
            ..Default::default()
        },
    })
}

/// The audit checkpoint from its row.
pub(crate) fn checkpoint(r: &impl Cols) -> Result<super::AuditCheckpoint, StoreError> {
    Ok(super::AuditCheckpoint {
        seq: r.int("seq")? as u64,
        hash: r.text("hash")?,
        archiving_to: r.opt_int("archiving_to")?.map(|s| s as u64),
    })
}
