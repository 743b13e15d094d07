//! Renewal: a new credential for the same task and audience, linked to its
//! predecessor, bounded by `max_renewals`, optionally superseding it.

use std::time::Duration;

use super::revoke::REASON_SUPERSEDED;
use super::validate::ensure_active;
use super::{Issuer, Minted, credential_not_found, facts};
use crate::Error;
use crate::audit::{AuditDraft, decision, kind};
use crate::ca;
use crate::clock::{now_unix, rfc3339};
use crate::identity::Caller;
use crate::policy::{RenewContext, Request, Resource};
use crate::store::{CredentialKind, RevokeRequest, RevokeScope};

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

impl Issuer {
    /// Renews a credential: same task, same audience, linked, bounded.
    pub async fn renew(&self, caller: &Caller, req: Renew) -> Result<(Minted, Option<u64>), Error> {
        let now = now_unix();
        let me = caller.spiffe_id.to_string();
        check_credential_id(&req.credential_id)?;
        let ttl = super::validate::duration("ttl_seconds", req.ttl)?;
        let pred = self
            .store
            .credential(&req.credential_id)
            .await?
            .ok_or_else(|| credential_not_found(&req.credential_id))?;
        let task = self
            .store
            .task(&pred.task_holder, &pred.task_id)
            .await?
            .ok_or_else(|| credential_not_found(&req.credential_id))?;
        let draft = AuditDraft::new(kind::RENEW, &me, now)
            .task(&task.holder, &task.task_id, task.break_glass)
            .subject(&pred.id);
        if pred.spiffe_id != me {
            // The credential is bound to its workload's key: no policy can
            // hand it to another. Answered as if it did not exist (the
            // trail records why), so the answer names no other workload
            // and confirms no credential id.
            let precise = format!(
                "credential `{}` names `{}`; only that workload may renew it",
                pred.id, pred.spiffe_id
            );
            let e = credential_not_found(&pred.id);
            return Err(self.gate.refuse_as(draft, decision::DENY, precise, e).await);
        }
        self.gate.mintable(&caller.spiffe_id, &draft).await?;
        let ttl = match self.ttl(ttl) {
            Ok(t) => t,
            Err(e) => return Err(self.gate.refuse(draft, decision::REFUSED, e).await),
        };
        let request = Request::Renew(RenewContext {
            ttl_seconds: ttl,
            renewal_count: i64::from(pred.renewal_count) + 1,
            kind: pred.kind.as_str(),
            audience: pred.audience.clone().unwrap_or_default(),
        });
        let d = self
            .gate
            .authorize(caller, request, &Resource::Task(facts(&task)), &draft)
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
                    "credential `{}` has been renewed {} times; limits.max_renewals is {}",
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
            Err(e) => return Err(self.gate.refuse(draft, decision::REFUSED, e).await),
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
                        .task(&task.holder, &task.task_id, task.break_glass)
                        .credential(&pred.id)
                        .decided(decision::ALLOW, &d.policies)
                        .because(format!("superseded by renewal `{}`", minted.record.id)),
                })
                .await?;
            superseded = events.first().map(|e| e.seq);
        }
        Ok((minted, superseded))
    }
}

/// Credential ids are lowercase hex (38 digits for a serial, 32 for a jti):
/// anything else is refused before it is looked up or reaches the trail (a
/// token pasted in by mistake must not be stored).
pub(super) fn check_credential_id(id: &str) -> Result<(), Error> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidArgument(
            "credential_id must be 1-64 hex digits (a certificate serial or a JWT jti)".into(),
        ));
    }
    Ok(())
}
