//! Revocation, credential status and the CRL: what to revoke, what a
//! revocation did, and the state of a credential now.

use super::validate::check_text;
use super::{Issuer, TaskRef, facts};
use crate::Error;
use crate::audit::{AuditDraft, decision, kind};
use crate::clock::{now_unix, rfc3339};
use crate::identity::{Caller, SpiffeId, TrustDomain};
use crate::policy::{Request, Resource, RevokeContext};
use crate::store::{CredentialRecord, RevokeRequest, RevokeScope};

/// Reason recorded when a task is completed.
pub const REASON_COMPLETED: &str = "task_completed";

/// Reason recorded when a renewal replaces its predecessor.
pub const REASON_SUPERSEDED: &str = "superseded";

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

impl Issuer {
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
                    .task(&c.task_holder, &c.task_id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("task `{}` is unknown", c.task_id)))?;
                draft = draft
                    .task(&t.holder, &t.task_id, t.break_glass)
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
                draft = draft.task(&t.holder, &t.task_id, t.break_glass);
                (
                    RevokeScope::Task {
                        holder,
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
        let request = Request::Revoke(RevokeContext {
            scope: scope.kind(),
            reason: reason.to_owned(),
        });
        let d = self
            .gate
            .authorize(caller, request, &resource, &draft)
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
            let task = match self.tasks.get(&c.task_holder, &c.task_id) {
                Some(t) => Some(t),
                None => self.store.task(&c.task_holder, &c.task_id).await?,
            };
            let bg = task.is_some_and(|t| t.break_glass);
            event = event.task(&c.task_holder, &c.task_id, bg);
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
}

pub(super) fn state_of(c: &CredentialRecord, now: i64) -> CredentialState {
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

pub(super) fn outcome(events: &[crate::store::RevocationEvent], what: &str) -> RevokeOutcome {
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
