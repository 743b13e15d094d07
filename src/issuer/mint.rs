//! Minting: first X.509- and JWT-SVIDs for a task, and the steps every
//! issuance shares (validity window, sign, record) that renewals use too.
//!
//! Order for every mint: validate the request, find or implicitly begin the
//! task, decide the validity window (requested ttl, configured max, task
//! deadline, caller SVID notAfter, CA notAfter), sign, record (refused if the
//! task ended meanwhile), return. A failure at any step stores nothing.

use std::time::Duration;

use super::validate::{ensure_active, validate_audience};
use super::{Issuer, facts, random_bytes, secs};
use crate::Error;
use crate::audit::{AuditDraft, decision, kind};
use crate::ca::{self, X509Template};
use crate::clock::{now_unix, rfc3339};
use crate::identity::{Caller, TaskId};
use crate::jwt::{self, Actor, Claims, Confirmation};
use crate::policy::{BeginContext, MintContext, Request, Resource};
use crate::store::{CredentialKind, CredentialRecord, RecordRefusal, TaskRecord};

/// Clock-skew allowance: X.509 notBefore and JWT nbf are set this far back
/// (SPIRE does the same), so a relying party slightly behind accepts a fresh
/// credential.
pub const BACKDATE_SECS: i64 = 10;

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

// First mints.
impl Issuer {
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
            Err(e) => Err(self.gate.refuse(draft, decision::REFUSED, e).await),
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
            Err(e) => Err(self.gate.refuse(draft, decision::REFUSED, e).await),
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
        self.gate.mintable(&caller.spiffe_id, &draft).await?;
        match self.ttl(ttl) {
            Ok(t) => Ok(t),
            Err(e) => Err(self.gate.refuse(draft, decision::REFUSED, e).await),
        }
    }

    pub(super) fn ttl(&self, requested: Option<Duration>) -> Result<i64, Error> {
        let ttl = requested.unwrap_or(self.limits.default_ttl);
        if ttl > self.limits.max_ttl {
            return Err(Error::InvalidArgument(format!(
                "requested ttl {} exceeds the configured maximum {} (limits.max_ttl)",
                humantime::format_duration(ttl),
                humantime::format_duration(self.limits.max_ttl)
            )));
        }
        Ok(secs(ttl))
    }

    /// Everything a first mint does before signing (its rate limit was
    /// taken before the request was decoded): find (or prepare to begin) the
    /// task, ask the policy, check the limits beside it, begin the task if
    /// new. Returns the task and the audit draft the
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
        let event_kind = match audience {
            Some(_) => kind::MINT_JWT,
            None => kind::MINT_X509,
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
                t.owner = self.mapped_owner(&holder).unwrap_or_default().to_owned();
                t
            }
        };
        let draft =
            AuditDraft::new(event_kind, &holder, now).task(&holder, task.as_str(), t.break_glass);
        // A first mint begins the task: that is a `begin_task` decision too.
        let begin_decision = match &existing {
            Some(_) => None,
            None => {
                let begin_draft = AuditDraft::new(kind::TASK_BEGIN, &holder, now).task(
                    &holder,
                    task.as_str(),
                    false,
                );
                let request = Request::BeginTask(BeginContext {
                    lifetime_seconds: secs(self.limits.default_task_lifetime),
                    owner: t.owner.clone(),
                    owner_requested: false,
                    justification: String::new(),
                    ticket: String::new(),
                });
                Some(
                    self.gate
                        .authorize(caller, request, &Resource::Task(facts(&t)), &begin_draft)
                        .await?,
                )
            }
        };
        let resource = match audience {
            Some(aud) => Resource::Audience(aud.to_owned()),
            None => Resource::Task(facts(&t)),
        };
        let context = MintContext {
            task_id: task.as_str().to_owned(),
            ttl_seconds: ttl,
            break_glass: t.break_glass,
            depth: t.depth,
        };
        let request = match audience {
            Some(_) => Request::MintJwt(context),
            None => Request::MintX509(context),
        };
        let d = self
            .gate
            .authorize(caller, request, &resource, &draft)
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
                        t.owner
                    ));
                    begin.kind = kind::TASK_BEGIN.into();
                    begin.policies = begun
                        .as_ref()
                        .map(|d| d.policies.clone())
                        .unwrap_or_default();
                    let began = self
                        .store
                        .begin_task_within(&t, self.limits.max_active_tasks, &[begin])
                        .await;
                    self.within_caps(caller, began).await?.0
                }
            };
            ensure_active(&t, now)?;
            self.tasks.put(&t);
            Ok(t)
        }
        .await;
        match result {
            Ok(t) => Ok((t, draft)),
            Err(e) => Err(self.gate.refuse(draft, decision::REFUSED, e).await),
        }
    }
}

// Issuance, shared by first mints and renewals: window, sign, record.
impl Issuer {
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
                self.tasks.forget(&record.task_holder, &record.task_id);
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
    pub(super) async fn issue_x509(
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
            task_holder: &task.holder,
            owner: &task.owner,
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
            task_holder: task.holder.clone(),
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
        crate::ops::metrics::get().credential_issued("x509");
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
    pub(super) async fn issue_jwt(
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
            task_holder: task.holder.clone(),
            owner: task.owner.clone(),
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
            task_holder: task.holder.clone(),
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
        crate::ops::metrics::get().credential_issued("jwt");
        Ok(Minted {
            record,
            chain: Vec::new(),
            token,
            task: task.clone(),
        })
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
}
