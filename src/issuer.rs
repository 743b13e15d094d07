//! The domain service: tasks, minting, renewal, revocation, status and CRL,
//! from an authenticated caller and a decoded request to durable state.
//!
//! Order for every mint: validate the request, find or implicitly begin the
//! task, decide the validity window (requested ttl, configured max, task
//! deadline, caller SVID notAfter, CA notAfter), sign, record (refused if the
//! task ended meanwhile), return. A failure at any step stores nothing.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;

use crate::Error;
use crate::ca::{self, SigningCa, X509Template};
pub use crate::clock::now_unix;
use crate::clock::rfc3339;
use crate::config::{Config, FeedConfig, LimitsConfig};
use crate::identity::{Caller, SpiffeId, TaskId, TrustDomain};
use crate::jwt::{self, Claims, Confirmation, JwtSigner};
use crate::revocation::Revocations;
use crate::store::{
    CredentialKind, CredentialRecord, RecordRefusal, RevokeRequest, RevokeScope, Store, TaskRecord,
    TaskState,
};
use crate::tls::TlsMaterial;
use crate::trust::{self, TrustBundleDoc};

/// Clock-skew allowance: X.509 notBefore and JWT nbf are set this far back
/// (SPIRE does the same), so a relying party slightly behind accepts a fresh
/// credential.
pub const BACKDATE_SECS: i64 = 10;

/// Longest audience accepted, in bytes.
pub const MAX_AUDIENCE_LEN: usize = 256;

/// Reason recorded when a task is completed.
pub const REASON_COMPLETED: &str = "task_completed";
/// Reason recorded when a renewal replaces its predecessor.
pub const REASON_SUPERSEDED: &str = "superseded";

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
}

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
}

/// A task named by id and (optionally) owner.
#[derive(Debug, Clone)]
pub struct TaskRef {
    /// Raw task id.
    pub task_id: String,
    /// Owner SPIFFE ID; `None` = the caller.
    pub owner: Option<String>,
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

/// The issuer.
pub struct Issuer {
    trust_domain: TrustDomain,
    jwt_issuer: String,
    limits: LimitsConfig,
    feed: FeedConfig,
    crl_validity: Duration,
    admins: HashSet<String>,
    ca: SigningCa,
    jwt: Arc<JwtSigner>,
    store: Arc<dyn Store>,
    revocations: Arc<Revocations>,
    material: Arc<TlsMaterial>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill_bytes(&mut b);
    b
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.len() > max {
        return Err(Error::InvalidArgument(format!(
            "{field} is {} bytes long; at most {max} are allowed",
            value.len()
        )));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(Error::InvalidArgument(format!(
            "{field} contains control characters"
        )));
    }
    Ok(())
}

impl Issuer {
    /// Assembles the issuer from loaded parts.
    pub fn new(
        cfg: &Config,
        ca: SigningCa,
        jwt: Arc<JwtSigner>,
        revocations: Arc<Revocations>,
        material: Arc<TlsMaterial>,
    ) -> Self {
        Self {
            trust_domain: TrustDomain::new(&cfg.trust_domain).expect("validated at config load"),
            jwt_issuer: cfg.jwt_issuer(),
            limits: cfg.limits.clone(),
            feed: cfg.feed.clone(),
            crl_validity: cfg.ca.crl_validity,
            admins: cfg.admins.iter().cloned().collect(),
            ca,
            jwt,
            store: revocations.store().clone(),
            revocations,
            material,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The revocation hub.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// Feed settings.
    pub fn feed_config(&self) -> &FeedConfig {
        &self.feed
    }

    fn is_admin(&self, caller: &Caller) -> bool {
        self.admins.contains(&caller.spiffe_id.to_string())
    }

    /// Credentials are minted only for workloads of the issuer's own trust
    /// domain: its CA and JWT key speak for that trust domain alone.
    /// Federated workloads may authenticate (watch, check status), not mint.
    fn check_mintable(&self, caller: &Caller) -> Result<(), Error> {
        if caller.spiffe_id.trust_domain() != &self.trust_domain {
            return Err(Error::PermissionDenied(format!(
                "credentials are minted only for workloads of trust domain `{}`; `{}` belongs to `{}`",
                self.trust_domain,
                caller.spiffe_id,
                caller.spiffe_id.trust_domain()
            )));
        }
        Ok(())
    }

    fn ttl(&self, requested: Option<Duration>) -> Result<i64, Error> {
        let ttl = requested.unwrap_or(self.limits.default_ttl);
        if ttl > self.limits.max_ttl {
            return Err(Error::InvalidArgument(format!(
                "requested ttl {} exceeds the configured maximum {}",
                humantime::format_duration(ttl),
                humantime::format_duration(self.limits.max_ttl)
            )));
        }
        Ok(ttl.as_secs() as i64)
    }

    /// The task's owner: the caller, or (for admins) someone else.
    fn owner_of(&self, caller: &Caller, r: &TaskRef) -> Result<(TaskId, String), Error> {
        let task = TaskId::parse(&r.task_id)?;
        let me = caller.spiffe_id.to_string();
        let owner = match r.owner.as_deref().filter(|o| !o.is_empty()) {
            None => me,
            Some(o) => {
                let o = SpiffeId::new(o)
                    .map_err(|e| Error::InvalidArgument(format!("task owner `{o}`: {e}")))?
                    .to_string();
                if o != me && !self.is_admin(caller) {
                    return Err(Error::PermissionDenied(format!(
                        "task `{task}` of `{o}` belongs to another workload; only admins may act on it"
                    )));
                }
                o
            }
        };
        Ok((task, owner))
    }

    /// Begins a task explicitly.
    pub async fn begin_task(&self, caller: &Caller, req: BeginTask) -> Result<TaskRecord, Error> {
        let task = TaskId::parse(&req.task_id)?;
        check_text("purpose", &req.purpose, 1024)?;
        check_text("ticket", &req.ticket, 256)?;
        if req.labels.len() > 32 {
            return Err(Error::InvalidArgument(format!(
                "{} labels given; at most 32 are allowed",
                req.labels.len()
            )));
        }
        for (k, v) in &req.labels {
            check_text("label key", k, 256)?;
            check_text("label value", v, 256)?;
            if k.is_empty() {
                return Err(Error::InvalidArgument("label key is empty".into()));
            }
        }
        let lifetime = req.lifetime.unwrap_or(self.limits.default_task_lifetime);
        if lifetime > self.limits.max_task_lifetime {
            return Err(Error::InvalidArgument(format!(
                "requested task lifetime {} exceeds the configured maximum {}",
                humantime::format_duration(lifetime),
                humantime::format_duration(self.limits.max_task_lifetime)
            )));
        }
        if lifetime.is_zero() {
            return Err(Error::InvalidArgument(
                "task lifetime must be positive".into(),
            ));
        }
        let now = now_unix();
        let record = TaskRecord {
            owner: caller.spiffe_id.to_string(),
            task_id: task.to_string(),
            created_at: now,
            purpose: req.purpose,
            ticket: req.ticket,
            labels: req.labels,
            implicit: false,
            deadline: now + lifetime.as_secs() as i64,
            state: TaskState::Active,
            ended_at: None,
        };
        let (stored, created) = self.store.begin_task(&record).await?;
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

    /// The caller's task, begun implicitly if new; refused if it has ended.
    async fn active_task(
        &self,
        caller: &Caller,
        task: &TaskId,
        now: i64,
    ) -> Result<TaskRecord, Error> {
        let record = TaskRecord {
            owner: caller.spiffe_id.to_string(),
            task_id: task.to_string(),
            created_at: now,
            purpose: String::new(),
            ticket: String::new(),
            labels: BTreeMap::new(),
            implicit: true,
            deadline: now + self.limits.default_task_lifetime.as_secs() as i64,
            state: TaskState::Active,
            ended_at: None,
        };
        // Most mints name an existing task: read it without the writer.
        let t = match self.store.task(&record.owner, &record.task_id).await? {
            Some(t) => t,
            None => self.store.begin_task(&record).await?.0,
        };
        ensure_active(&t, now)?;
        Ok(t)
    }

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

    async fn record(&self, record: &CredentialRecord) -> Result<(), Error> {
        match self.store.record_credential(record).await? {
            Ok(()) => Ok(()),
            Err(RecordRefusal::TaskEnded(state)) => Err(Error::FailedPrecondition(format!(
                "task `{}` is {}; no more credentials are minted for it",
                record.task_id,
                state.as_str()
            ))),
            Err(RecordRefusal::AlreadyRenewed(pred)) => Err(Error::FailedPrecondition(format!(
                "credential `{pred}` was already renewed; renew its successor instead"
            ))),
            Err(RecordRefusal::PredecessorRevoked) => Err(Error::FailedPrecondition(
                "the credential to renew was revoked meanwhile".into(),
            )),
        }
    }

    /// Signs an X.509-SVID for `task`, optionally as a renewal of `pred`.
    async fn issue_x509(
        &self,
        caller: &Caller,
        task: &TaskRecord,
        key: &ca::CsrKey,
        ttl: i64,
        pred: Option<&CredentialRecord>,
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
            task_owner: &task.owner,
            serial: &serial,
            not_before,
            not_after,
        };
        let leaf = self.ca.issue(&template, key)?;
        let record = CredentialRecord {
            id: hex::encode(serial),
            kind: CredentialKind::X509,
            spiffe_id: caller.spiffe_id.to_string(),
            task_owner: task.owner.clone(),
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
        self.record(&record).await?;
        let mut chain = vec![leaf];
        chain.extend(self.ca.chain().iter().map(|c| c.to_vec()));
        Ok(Minted {
            record,
            chain,
            token: String::new(),
        })
    }

    /// Signs a JWT-SVID for `task`, optionally as a renewal of `pred`.
    async fn issue_jwt(
        &self,
        caller: &Caller,
        task: &TaskRecord,
        audience: &str,
        ttl: i64,
        pred: Option<&CredentialRecord>,
    ) -> Result<Minted, Error> {
        let now = now_unix();
        let exp = self.expiry(caller, task, now, ttl, CredentialKind::Jwt)?;
        let nbf = now - BACKDATE_SECS;
        let jti = hex::encode(random_bytes::<16>());
        let claims = Claims {
            sub: caller.spiffe_id.to_string(),
            aud: audience.to_owned(),
            iat: now,
            nbf,
            exp,
            jti: jti.clone(),
            iss: self.jwt_issuer.clone(),
            task_id: task.task_id.clone(),
            task_owner: task.owner.clone(),
            cnf: Confirmation {
                x5t_s256: jwt::x5t_s256(&caller.cert_sha256),
            },
        };
        let token = self.jwt.sign(&claims)?;
        let record = CredentialRecord {
            id: jti,
            kind: CredentialKind::Jwt,
            spiffe_id: caller.spiffe_id.to_string(),
            task_owner: task.owner.clone(),
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
        self.record(&record).await?;
        Ok(Minted {
            record,
            chain: Vec::new(),
            token,
        })
    }

    /// Mints a per-task X.509-SVID from a CSR.
    pub async fn mint_x509(&self, caller: &Caller, req: MintX509) -> Result<Minted, Error> {
        self.check_mintable(caller)?;
        let task = TaskId::parse(&req.task_id)?;
        let ttl = self.ttl(req.ttl)?;
        // The CSR is checked before the task is touched: a bad request
        // begins nothing.
        let key = ca::parse_csr(&req.csr)?;
        let t = self.active_task(caller, &task, now_unix()).await?;
        self.issue_x509(caller, &t, &key, ttl, None).await
    }

    /// Mints a per-task JWT-SVID for one audience.
    pub async fn mint_jwt(&self, caller: &Caller, req: MintJwt) -> Result<Minted, Error> {
        self.check_mintable(caller)?;
        let task = TaskId::parse(&req.task_id)?;
        validate_audience(&req.audience)?;
        let ttl = self.ttl(req.ttl)?;
        let t = self.active_task(caller, &task, now_unix()).await?;
        self.issue_jwt(caller, &t, &req.audience, ttl, None).await
    }

    /// Renews a credential: same task, same audience, linked, bounded.
    pub async fn renew(&self, caller: &Caller, req: Renew) -> Result<(Minted, Option<u64>), Error> {
        self.check_mintable(caller)?;
        let ttl = self.ttl(req.ttl)?;
        let now = now_unix();
        let pred = self
            .store
            .credential(&req.credential_id)
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!("credential `{}` is unknown", req.credential_id))
            })?;
        if pred.spiffe_id != caller.spiffe_id.to_string() {
            return Err(Error::PermissionDenied(format!(
                "credential `{}` names `{}`; only that workload may renew it",
                pred.id, pred.spiffe_id
            )));
        }
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
                "credential `{}` has been renewed {} times; max_renewals is {}",
                pred.id, pred.renewal_count, self.limits.max_renewals
            )));
        }
        let task = self
            .store
            .task(&pred.task_owner, &pred.task_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("task `{}` is unknown", pred.task_id)))?;
        ensure_active(&task, now)?;
        let minted = match pred.kind {
            CredentialKind::X509 => {
                if req.csr.is_empty() {
                    return Err(Error::InvalidArgument(
                        "renewing an X.509 credential needs a new CSR".into(),
                    ));
                }
                let key = ca::parse_csr(&req.csr)?;
                self.issue_x509(caller, &task, &key, ttl, Some(&pred))
                    .await?
            }
            CredentialKind::Jwt => {
                let aud = pred.audience.clone().unwrap_or_default();
                self.issue_jwt(caller, &task, &aud, ttl, Some(&pred))
                    .await?
            }
        };
        let mut superseded = None;
        if req.revoke_previous {
            let events = self
                .revocations
                .revoke(&RevokeRequest {
                    scope: RevokeScope::Credential(pred.id.clone()),
                    reason: REASON_SUPERSEDED.into(),
                    now: now_unix(),
                    end_task: None,
                })
                .await?;
            superseded = events.first().map(|e| e.seq);
        }
        Ok((minted, superseded))
    }

    /// Completes a task, revoking every credential of it.
    pub async fn complete_task(
        &self,
        caller: &Caller,
        r: TaskRef,
    ) -> Result<(TaskRecord, RevokeOutcome), Error> {
        let (task, owner) = self.owner_of(caller, &r)?;
        let t = self.find_task(&owner, &task).await?;
        if t.state != TaskState::Active {
            let message = format!(
                "task `{task}` already {} at {}; nothing to revoke",
                t.state.as_str(),
                rfc3339(t.ended_at.unwrap_or(t.deadline))
            );
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
                    owner: owner.clone(),
                    task_id: task.to_string(),
                },
                reason: REASON_COMPLETED.into(),
                now: now_unix(),
                end_task: Some(TaskState::Completed),
            })
            .await?;
        let outcome = outcome(&events, "task completed");
        Ok((self.find_task(&owner, &task).await?, outcome))
    }

    async fn find_task(&self, owner: &str, task: &TaskId) -> Result<TaskRecord, Error> {
        self.store
            .task(owner, task.as_str())
            .await?
            .ok_or_else(|| Error::NotFound(format!("task `{task}` of `{owner}` is unknown")))
    }

    /// A task and its credentials.
    pub async fn get_task(
        &self,
        caller: &Caller,
        r: TaskRef,
    ) -> Result<(TaskRecord, Vec<(CredentialRecord, CredentialState)>), Error> {
        let (task, owner) = self.owner_of(caller, &r)?;
        let t = self.find_task(&owner, &task).await?;
        let now = now_unix();
        let creds = self
            .store
            .task_credentials(&owner, task.as_str())
            .await?
            .into_iter()
            .map(|c| {
                let s = state_of(&c, now);
                (c, s)
            })
            .collect();
        Ok((t, creds))
    }

    /// Revokes by credential, task, workload or trust domain.
    pub async fn revoke(
        &self,
        caller: &Caller,
        target: RevokeTarget,
        reason: &str,
    ) -> Result<RevokeOutcome, Error> {
        let reason = if reason.is_empty() { "revoked" } else { reason };
        check_text("reason", reason, 256)?;
        let me = caller.spiffe_id.to_string();
        let admin = self.is_admin(caller);
        let now = now_unix();
        let scope = match target {
            RevokeTarget::Credential(id) => {
                let c = self
                    .store
                    .credential(&id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("credential `{id}` is unknown")))?;
                if c.spiffe_id != me && c.task_owner != me && !admin {
                    return Err(Error::PermissionDenied(format!(
                        "credential `{id}` belongs to another workload; only its holder, its task owner or an admin may revoke it"
                    )));
                }
                if let Some(r) = &c.revocation {
                    return Ok(RevokeOutcome {
                        message: format!(
                            "credential `{id}` was already revoked at {} ({}); nothing to do",
                            rfc3339(r.revoked_at),
                            r.reason
                        ),
                        ..Default::default()
                    });
                }
                if c.not_after <= now {
                    return Ok(RevokeOutcome {
                        message: format!(
                            "credential `{id}` already expired at {}; nothing to do",
                            rfc3339(c.not_after)
                        ),
                        ..Default::default()
                    });
                }
                RevokeScope::Credential(id)
            }
            RevokeTarget::Task(r) => {
                let (task, owner) = self.owner_of(caller, &r)?;
                self.find_task(&owner, &task).await?;
                RevokeScope::Task {
                    owner,
                    task_id: task.to_string(),
                }
            }
            RevokeTarget::Workload(id) => {
                let id = SpiffeId::new(&id)
                    .map_err(|e| Error::InvalidArgument(format!("SPIFFE ID `{id}`: {e}")))?
                    .to_string();
                if id != me && !admin {
                    return Err(Error::PermissionDenied(format!(
                        "only admins may revoke the credentials of another workload (`{id}`)"
                    )));
                }
                RevokeScope::Workload(id)
            }
            RevokeTarget::TrustDomain(td) => {
                let td = TrustDomain::new(&td)
                    .map_err(|e| Error::InvalidArgument(format!("trust domain `{td}`: {e}")))?
                    .to_string();
                if !admin {
                    return Err(Error::PermissionDenied(
                        "only admins may revoke a whole trust domain".into(),
                    ));
                }
                RevokeScope::TrustDomain(td)
            }
        };
        let events = self
            .revocations
            .revoke(&RevokeRequest {
                scope,
                reason: reason.to_owned(),
                now,
                end_task: None,
            })
            .await?;
        Ok(outcome(&events, "revoked"))
    }

    /// The state of a credential.
    pub async fn check_status(&self, id: &str) -> Result<CredentialState, Error> {
        Ok(match self.store.credential(id).await? {
            None => CredentialState::Unknown,
            Some(c) => state_of(&c, now_unix()),
        })
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

    /// Records a subscriber's acknowledgement.
    pub async fn ack(&self, caller: &Caller, subscriber: &str, up_to: u64) -> Result<u64, Error> {
        check_text("subscriber", subscriber, 128)?;
        if subscriber.is_empty() {
            return Err(Error::InvalidArgument("subscriber name is empty".into()));
        }
        let me = caller.spiffe_id.to_string();
        // A configured name belongs to its configured SPIFFE ID; any other
        // name belongs to the first workload that acknowledged under it.
        let owner = match self.feed.subscribers.iter().find(|s| s.name == subscriber) {
            Some(s) => Some(s.spiffe_id.clone()),
            None => self
                .store
                .acks()
                .await?
                .into_iter()
                .find(|a| a.subscriber == subscriber)
                .map(|a| a.spiffe_id),
        };
        if let Some(owner) = owner
            && owner != me
        {
            return Err(Error::PermissionDenied(format!(
                "subscriber `{subscriber}` acknowledges as `{owner}`, not `{me}`"
            )));
        }
        let current = self.store.current_seq().await?;
        if up_to > current {
            return Err(Error::InvalidArgument(format!(
                "cannot acknowledge up to {up_to}: the current sequence is {current}"
            )));
        }
        let a = self
            .store
            .ack(&crate::store::AckRecord {
                subscriber: subscriber.to_owned(),
                spiffe_id: me,
                acked_seq: up_to,
                acked_at: now_unix(),
            })
            .await?;
        Ok(a.acked_seq)
    }

    /// Delivery state of every expected subscriber; admins only.
    pub async fn delivery_status(
        &self,
        caller: &Caller,
    ) -> Result<(u64, Vec<crate::revocation::delivery::SubscriberDelivery>), Error> {
        if !self.is_admin(caller) {
            return Err(Error::PermissionDenied(
                "delivery status is for admins".into(),
            ));
        }
        let current = self.store.current_seq().await?;
        let s = crate::revocation::delivery::status(self.store.as_ref(), &self.feed, now_unix())
            .await?;
        Ok((current, s))
    }

    /// The bundle served by `GetTrustBundle`. Its sequence is persisted and
    /// raised only when the served roots or JWT keys change.
    pub async fn trust_bundle(&self) -> Result<TrustBundleDoc, Error> {
        use sha2::{Digest, Sha256};
        let bundles = self.material.bundles();
        let roots = bundles
            .get(&self.trust_domain)
            .map(|b| b.roots().to_vec())
            .unwrap_or_default();
        let jwks = [self.jwt.jwk()];
        let mut h = Sha256::new();
        for r in &roots {
            h.update((r.len() as u64).to_be_bytes());
            h.update(r.as_ref());
        }
        h.update(serde_json::to_vec(&jwks).expect("JWK serialises"));
        let seq = self
            .store
            .bundle_sequence(&hex::encode(h.finalize()))
            .await?;
        Ok(trust::build(self.trust_domain.as_str(), &roots, &jwks, seq))
    }
}

fn ensure_active(t: &TaskRecord, now: i64) -> Result<(), Error> {
    if t.state != TaskState::Active {
        return Err(Error::FailedPrecondition(format!(
            "task `{}` is {}; no more credentials are minted for it",
            t.task_id,
            t.state.as_str()
        )));
    }
    if t.deadline <= now {
        return Err(Error::FailedPrecondition(format!(
            "task `{}` reached its deadline at {}",
            t.task_id,
            rfc3339(t.deadline)
        )));
    }
    Ok(())
}

fn state_of(c: &CredentialRecord, now: i64) -> CredentialState {
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

fn outcome(events: &[crate::store::RevocationEvent], what: &str) -> RevokeOutcome {
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

fn validate_audience(aud: &str) -> Result<(), Error> {
    if aud.is_empty() {
        return Err(Error::InvalidArgument("audience is empty".into()));
    }
    if aud.len() > MAX_AUDIENCE_LEN {
        return Err(Error::InvalidArgument(format!(
            "audience is {} bytes long; at most {MAX_AUDIENCE_LEN} are allowed",
            aud.len()
        )));
    }
    if aud.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::InvalidArgument(
            "audience contains whitespace or control characters".into(),
        ));
    }
    Ok(())
}
