//! The decision on one request, independent of Envoy: a bearer JWT-SVID
//! (signature by `kid`, `typ`, `exp`/`nbf` with leeway, `aud`, `iss`, its
//! `cnf.x5t#S256` against the peer certificate, the deny set), or, without
//! one, a per-task X.509-SVID as the peer certificate (task extension,
//! validity, serial against the deny set).
//!
//! The peer certificate's chain and the peer's possession of its key are
//! proven by the proxy's TLS handshake before the request reaches here;
//! what the enforcer adds is revocation and the binding of token to
//! connection and of credential to task.

use jsonwebtoken::Validation;
use jsonwebtoken::errors::ErrorKind;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::deny::DenySet;
use super::keys::KeySet;

/// Longest bearer token looked at; a JWT-SVID is well under 2 KiB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// An allowed request: who, for which task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// The credential's SPIFFE ID (`sub`, or the certificate's URI SAN).
    pub spiffe_id: String,
    /// Its task.
    pub task_id: String,
    /// The task's holder.
    pub holder: String,
    /// The task's accountable owner; empty when none.
    pub owner: String,
    /// `jti` or serial (hex).
    pub credential_id: String,
}

/// Why a request is refused, in the three classes Envoy answers with
/// different HTTP statuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// 401: no credential, or one that is not valid.
    Unauthenticated(String),
    /// 403: a valid credential that may not be used here: revoked, for
    /// another audience, or not bound to this connection.
    Forbidden(String),
    /// 503: the enforcer cannot tell (the revocation feed is stale).
    Unavailable(String),
}

impl Denial {
    /// The reason, as sent in `x-taskmint-deny-reason`.
    pub fn reason(&self) -> &str {
        match self {
            Self::Unauthenticated(r) | Self::Forbidden(r) | Self::Unavailable(r) => r,
        }
    }
}

/// What every decision needs from the configuration.
#[derive(Debug, Clone)]
pub struct Rules {
    /// `aud` must name one of these.
    pub audiences: Vec<String>,
    /// Seconds of skew on `exp`/`nbf` (and on certificate validity).
    pub leeway: u64,
    /// Tokens must be bound to the peer certificate.
    pub require_cnf: bool,
}

#[derive(Debug, Deserialize)]
struct TokenClaims {
    sub: String,
    jti: Option<String>,
    #[serde(default)]
    task_id: String,
    #[serde(default)]
    task_holder: String,
    #[serde(default)]
    owner: String,
    cnf: Option<Cnf>,
}

#[derive(Debug, Deserialize)]
struct Cnf {
    #[serde(rename = "x5t#S256")]
    x5t_s256: Option<String>,
}

/// `cnf.x5t#S256` of a certificate (RFC 8705 section 3.1).
pub fn thumbprint(der: &[u8]) -> String {
    crate::jwt::x5t_s256(&Sha256::digest(der).into())
}

/// The `kid` a token's header names, if it is a JWT with one.
pub fn kid_of(token: &str) -> Option<String> {
    if token.len() > MAX_TOKEN_BYTES {
        return None;
    }
    jsonwebtoken::decode_header(token).ok()?.kid
}

/// What a bearer token proved once its signature, type, `iss`, `aud` and
/// claims were checked: everything but the checks that depend on the time,
/// the connection and the deny set, which [`Rules::admit`] makes on every
/// request. Safe to cache by the token's exact bytes.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    sub: String,
    jti: String,
    task_id: String,
    holder: String,
    owner: String,
    cnf: Option<String>,
    exp: i64,
    nbf: Option<i64>,
}

/// The task extension of a per-task X.509-SVID.
fn task_binding(cert: &X509Certificate<'_>) -> Option<crate::ca::TaskBinding> {
    cert.extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == crate::ca::TASK_EXTENSION_OID_STR)
        .and_then(|e| crate::ca::parse_task_extension(e.value))
}

impl VerifiedToken {
    /// Whether it can no longer pass at `now`.
    pub fn expired(&self, now: i64, leeway: i64) -> bool {
        now > self.exp.saturating_add(leeway)
    }
}

#[derive(Debug, Deserialize)]
struct Times {
    exp: i64,
    nbf: Option<i64>,
}

impl Rules {
    /// Checks a bearer token's signature (by `kid`), type, `iss`, `aud` and
    /// claims; not its times.
    pub fn verify(&self, token: &str, keys: &KeySet) -> Result<VerifiedToken, Denial> {
        let invalid = |m: String| Denial::Unauthenticated(m);
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid(format!(
                "bearer token longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("bearer token is not a JWT".into()))?;
        match header.typ.as_deref() {
            None | Some("JWT") | Some("JOSE") => {}
            Some(t) => {
                // The caller's text goes back in a header: printable ASCII
                // only, and short.
                let shown: String = t
                    .chars()
                    .filter(|c| c.is_ascii_graphic())
                    .take(40)
                    .collect();
                return Err(invalid(format!("token type `{shown}` is not a JWT-SVID")));
            }
        }
        let kid = header
            .kid
            .ok_or_else(|| invalid("token has no `kid`".into()))?;
        let (key, alg) = keys
            .get(&kid)
            .ok_or_else(|| invalid("token `kid` is not a key of the issuer's bundle".into()))?;
        if header.alg != *alg {
            return Err(invalid("token `alg` does not match its key".into()));
        }
        let mut v = Validation::new(*alg);
        // The times are checked per request, by `admit`.
        v.validate_exp = false;
        v.validate_nbf = false;
        v.set_audience(&self.audiences);
        v.set_issuer(&[&keys.iss]);
        v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        let malformed = || invalid("token claims are malformed".into());
        let data =
            jsonwebtoken::decode::<serde_json::Value>(token, key, &v).map_err(|e| {
                match e.kind() {
                    ErrorKind::InvalidSignature => {
                        invalid("token signature does not verify".into())
                    }
                    ErrorKind::InvalidIssuer => invalid("token issuer is not this issuer".into()),
                    ErrorKind::InvalidAudience => {
                        Denial::Forbidden("token audience is not accepted here".into())
                    }
                    ErrorKind::MissingRequiredClaim(c) => invalid(format!("token has no `{c}`")),
                    _ => malformed(),
                }
            })?;
        let times = Times::deserialize(&data.claims).map_err(|_| malformed())?;
        let claims = TokenClaims::deserialize(data.claims).map_err(|_| malformed())?;
        let jti = claims
            .jti
            .filter(|j| !j.is_empty())
            .ok_or_else(|| invalid("token has no `jti`".into()))?;
        if spiffe::SpiffeId::new(&claims.sub).is_err() {
            return Err(invalid("token `sub` is not a SPIFFE ID".into()));
        }
        if claims.task_id.is_empty() {
            return Err(invalid("token is not bound to a task".into()));
        }
        Ok(VerifiedToken {
            sub: claims.sub,
            jti,
            task_id: claims.task_id,
            holder: claims.task_holder,
            owner: claims.owner,
            cnf: claims.cnf.and_then(|c| c.x5t_s256),
            exp: times.exp,
            nbf: times.nbf,
        })
    }

    /// The checks of a verified token that hold for one request: `exp` and
    /// `nbf` at `now` with the leeway, the binding to the peer certificate,
    /// the deny set.
    pub fn admit(
        &self,
        t: &VerifiedToken,
        peer: Option<&[u8]>,
        now: i64,
        deny: &DenySet,
    ) -> Result<Allowed, Denial> {
        let leeway = self.leeway as i64;
        if now > t.exp.saturating_add(leeway) {
            return Err(Denial::Unauthenticated("token expired".into()));
        }
        if t.nbf.is_some_and(|nbf| now.saturating_add(leeway) < nbf) {
            return Err(Denial::Unauthenticated("token not yet valid (nbf)".into()));
        }
        // A bound token is only ever accepted from the certificate it is
        // bound to (RFC 8705 section 3); `require_cnf` decides whether an
        // unbound one is accepted at all.
        let unbound = match (&t.cnf, peer) {
            (Some(want), Some(der)) if thumbprint(der) != *want => {
                Some("token is bound to another certificate (cnf)")
            }
            (Some(_), None) => {
                Some("no peer certificate to check the token's binding (cnf) against")
            }
            (None, _) if self.require_cnf => Some("token is not bound to a certificate (no cnf)"),
            _ => None,
        };
        if let Some(why) = unbound {
            return Err(Denial::Forbidden(why.into()));
        }
        if deny.contains(&t.jti) {
            return Err(Denial::Forbidden("credential revoked".into()));
        }
        // A token presented over a per-task X.509-SVID that was revoked by
        // itself is refused with it (only looked at once a serial is
        // denied: the parse costs more than the rest of the check).
        if let Some(der) = peer
            && deny.has_serials()
            && let Ok((_, cert)) = X509Certificate::from_der(der)
            && task_binding(&cert).is_some()
            && deny.contains(&hex::encode(cert.raw_serial()))
        {
            return Err(Denial::Forbidden(
                "the peer certificate is a revoked credential".into(),
            ));
        }
        Ok(Allowed {
            spiffe_id: t.sub.clone(),
            task_id: t.task_id.clone(),
            holder: t.holder.clone(),
            owner: t.owner.clone(),
            credential_id: t.jti.clone(),
        })
    }

    /// Decides on a request without a bearer token from its peer
    /// certificate: it must be a per-task X.509-SVID, valid now, whose
    /// serial is not denied.
    pub fn certificate(
        &self,
        der: &[u8],
        now: i64,
        deny: &DenySet,
        trust_domain: &str,
    ) -> Result<Allowed, Denial> {
        let none = || Denial::Unauthenticated("no bearer token".into());
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| none())?;
        let binding = task_binding(&cert).ok_or_else(|| {
            Denial::Unauthenticated(
                "no bearer token, and the peer certificate is not a per-task credential".into(),
            )
        })?;
        let spiffe_id = crate::identity::spiffe_id_of_leaf(&cert).map_err(|_| {
            Denial::Unauthenticated("the peer certificate has no single SPIFFE ID".into())
        })?;
        // The proxy may trust other CAs (federation): a per-task
        // certificate is this issuer's only in its trust domain.
        if spiffe_id.trust_domain().to_string() != trust_domain {
            return Err(Denial::Unauthenticated(
                "the peer certificate is not of the issuer's trust domain".into(),
            ));
        }
        let spiffe_id = spiffe_id.to_string();
        let leeway = self.leeway as i64;
        let validity = cert.validity();
        if now > validity.not_after.timestamp() + leeway {
            return Err(Denial::Unauthenticated("peer certificate expired".into()));
        }
        if now + leeway < validity.not_before.timestamp() {
            return Err(Denial::Unauthenticated(
                "peer certificate not yet valid".into(),
            ));
        }
        let serial = hex::encode(cert.raw_serial());
        if deny.contains(&serial) {
            return Err(Denial::Forbidden("credential revoked".into()));
        }
        Ok(Allowed {
            spiffe_id,
            task_id: binding.task_id,
            holder: binding.holder,
            owner: binding.owner,
            credential_id: serial,
        })
    }
}
