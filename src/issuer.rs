//! Minting: turns an authenticated caller and a validated request into a
//! signed credential that is durable before it is returned.
//!
//! Order for every mint: validate the request, decide the validity window
//! (requested ttl, configured max, caller SVID notAfter, CA notAfter), sign,
//! record, return. A failure at any step stores nothing.

use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;

use crate::Error;
use crate::ca::{self, SigningCa, X509Template};
use crate::config::{Config, LimitsConfig};
use crate::identity::{Caller, TaskId};
use crate::jwt::{self, Claims, Confirmation, JwtSigner};
use crate::store::{CredentialKind, CredentialRecord, Store};
use crate::tls::TlsMaterial;
use crate::trust::{self, TrustBundleDoc};

/// X.509 notBefore is set this far in the past to absorb clock skew between
/// the issuer and relying parties (SPIRE does the same).
pub const X509_BACKDATE_SECS: i64 = 10;

/// Longest audience accepted, in bytes.
pub const MAX_AUDIENCE_LEN: usize = 256;

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

/// A minted X.509-SVID.
#[derive(Debug, Clone)]
pub struct MintedX509 {
    /// What was stored.
    pub record: CredentialRecord,
    /// Leaf first, then the signing CA chain.
    pub chain: Vec<Vec<u8>>,
}

/// A minted JWT-SVID.
#[derive(Debug, Clone)]
pub struct MintedJwt {
    /// What was stored.
    pub record: CredentialRecord,
    /// The compact JWT.
    pub token: String,
}

/// The minting service.
pub struct Issuer {
    trust_domain: String,
    jwt_issuer: String,
    limits: LimitsConfig,
    ca: SigningCa,
    jwt: JwtSigner,
    store: Arc<dyn Store>,
    material: Arc<TlsMaterial>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill_bytes(&mut b);
    b
}

impl Issuer {
    /// Assembles the issuer from loaded parts.
    pub fn new(
        cfg: &Config,
        ca: SigningCa,
        jwt: JwtSigner,
        store: Arc<dyn Store>,
        material: Arc<TlsMaterial>,
    ) -> Self {
        Self {
            trust_domain: cfg.trust_domain.clone(),
            jwt_issuer: cfg.jwt_issuer(),
            limits: cfg.limits.clone(),
            ca,
            jwt,
            store,
            material,
        }
    }

    /// The store (for status and tests).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
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

    /// notAfter / exp: the earliest of every bound that applies.
    fn expiry(
        &self,
        caller: &Caller,
        now: i64,
        ttl: i64,
        ca_bound: Option<i64>,
    ) -> Result<i64, Error> {
        let mut exp = (now + ttl).min(caller.svid_not_after);
        if let Some(b) = ca_bound {
            exp = exp.min(b);
        }
        if exp <= now {
            return Err(Error::FailedPrecondition(
                "no validity left: the caller's SVID or the signing CA expires now".into(),
            ));
        }
        Ok(exp)
    }

    /// Mints a per-task X.509-SVID from a CSR.
    pub async fn mint_x509(&self, caller: &Caller, req: MintX509) -> Result<MintedX509, Error> {
        let task = TaskId::parse(&req.task_id)?;
        let ttl = self.ttl(req.ttl)?;
        let key = ca::parse_csr(&req.csr)?;
        let now = now_unix();
        let not_after = self.expiry(caller, now, ttl, Some(self.ca.not_after()))?;
        let not_before = now - X509_BACKDATE_SECS;

        // 19 random bytes with the top bit cleared and the next set: a
        // positive, fixed-length 150-bit serial.
        let mut serial = random_bytes::<19>();
        serial[0] = (serial[0] & 0x7f) | 0x40;
        let owner = caller.spiffe_id.to_string();
        let template = X509Template {
            spiffe_id: &caller.spiffe_id,
            task_id: &task,
            task_owner: &owner,
            serial: &serial,
            not_before,
            not_after,
        };
        let leaf = self.ca.issue(&template, &key)?;
        let record = CredentialRecord {
            id: hex::encode(serial),
            kind: CredentialKind::X509,
            spiffe_id: owner.clone(),
            task_owner: owner,
            task_id: task.to_string(),
            audience: None,
            not_before,
            not_after,
            caller_cert_sha256: hex::encode(caller.cert_sha256),
            issued_at: now,
        };
        self.store.record_credential(&record).await?;
        let mut chain = vec![leaf];
        chain.extend(self.ca.chain().iter().map(|c| c.to_vec()));
        Ok(MintedX509 { record, chain })
    }

    /// Mints a per-task JWT-SVID for one audience.
    pub async fn mint_jwt(&self, caller: &Caller, req: MintJwt) -> Result<MintedJwt, Error> {
        let task = TaskId::parse(&req.task_id)?;
        validate_audience(&req.audience)?;
        let ttl = self.ttl(req.ttl)?;
        let now = now_unix();
        let exp = self.expiry(caller, now, ttl, None)?;
        let owner = caller.spiffe_id.to_string();
        let jti = hex::encode(random_bytes::<16>());
        let claims = Claims {
            sub: owner.clone(),
            aud: req.audience.clone(),
            iat: now,
            nbf: now,
            exp,
            jti: jti.clone(),
            iss: self.jwt_issuer.clone(),
            task_id: task.to_string(),
            task_owner: owner.clone(),
            cnf: Confirmation {
                x5t_s256: jwt::x5t_s256(&caller.cert_sha256),
            },
        };
        let token = self.jwt.sign(&claims)?;
        let record = CredentialRecord {
            id: jti,
            kind: CredentialKind::Jwt,
            spiffe_id: owner.clone(),
            task_owner: owner,
            task_id: task.to_string(),
            audience: Some(req.audience),
            not_before: now,
            not_after: exp,
            caller_cert_sha256: hex::encode(caller.cert_sha256),
            issued_at: now,
        };
        self.store.record_credential(&record).await?;
        Ok(MintedJwt { record, token })
    }

    /// The bundle served by `GetTrustBundle`.
    pub fn trust_bundle(&self) -> TrustBundleDoc {
        let bundles = self.material.bundles();
        let td = spiffe::TrustDomain::new(&self.trust_domain).expect("validated at config load");
        let roots = bundles
            .get(&td)
            .map(|b| b.roots().to_vec())
            .unwrap_or_default();
        trust::build(
            &self.trust_domain,
            &roots,
            &[self.jwt.jwk()],
            self.material.generation(),
        )
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
