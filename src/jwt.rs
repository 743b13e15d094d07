//! JWT-SVIDs: the claim set, ES256 signing with a `kid` (RFC 7638 thumbprint),
//! post-signing validation, and the public JWK that the trust bundle serves.
//!
//! JOSE is the `jsonwebtoken` crate's; this module decides what is signed.

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why the JWT key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// The key file or key is unusable.
    #[error("cannot load JWT signing key: {0}")]
    Load(String),
    /// Signing failed.
    #[error("JWT signing failed: {0}")]
    Sign(String),
    /// The signed token failed post-signing validation.
    #[error("signed JWT failed validation: {0}")]
    Validate(String),
}

/// RFC 8705 confirmation claim: binds the token to the caller's mTLS certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// base64url-nopad(SHA-256(leaf certificate DER)).
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

/// The claim set of a per-task JWT-SVID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The caller's SPIFFE ID.
    pub sub: String,
    /// The single audience that was requested and allowed.
    pub aud: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Not before, Unix seconds.
    pub nbf: i64,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// 128-bit random id, hex; the credential id.
    pub jti: String,
    /// The issuer.
    pub iss: String,
    /// The task the token is for.
    pub task_id: String,
    /// SPIFFE ID of the workload holding the task.
    pub task_holder: String,
    /// The task's accountable owner (team or person), when it has one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// Present (true) when the task was begun through break-glass.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
    /// For a task delegated to this workload: the delegation chain (RFC 8693
    /// section 4.1), the workload that delegated outermost, earlier ones nested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    /// Proof-of-possession binding to the caller's mTLS leaf.
    pub cnf: Confirmation,
}

/// An RFC 8693 actor claim: who acted, and (nested) who acted before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The actor's SPIFFE ID.
    pub sub: String,
    /// The actor before this one in the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

impl Actor {
    /// Nests `chain` (nearest delegator first) into an `act` claim.
    pub fn chain(chain: &[String]) -> Option<Actor> {
        chain.iter().rev().fold(None, |inner, sub| {
            Some(Actor {
                sub: sub.clone(),
                act: inner.map(Box::new),
            })
        })
    }
}

/// The ES256 signer. The key is parsed once, at load: signing never
/// re-reads PKCS#8.
pub struct JwtSigner {
    pair: EcdsaKeyPair,
    rng: aws_lc_rs::rand::SystemRandom,
    kid: String,
    x: String,
    y: String,
}

impl std::fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSigner")
            .field("kid", &self.kid)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl JwtSigner {
    /// Loads a PEM PKCS#8 P-256 key.
    pub fn load(path: &std::path::Path) -> Result<Self, JwtError> {
        let pem = std::fs::read(path)
            .map_err(|e| JwtError::Load(format!("`{}`: {e}", path.display())))?;
        let der = crate::pem::pkcs8_key(&pem)
            .map_err(|e| JwtError::Load(format!("`{}`: {e}", path.display())))?;
        Self::from_pkcs8(&der)
    }

    /// Builds the signer from PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, JwtError> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|_| JwtError::Load("not a PKCS#8 P-256 (ES256) key".into()))?;
        let point = pair.public_key().as_ref();
        // Uncompressed SEC1 point: 0x04 || X (32) || Y (32).
        if point.len() != 65 || point[0] != 4 {
            return Err(JwtError::Load(
                "unexpected P-256 public key encoding".into(),
            ));
        }
        let x = B64URL.encode(&point[1..33]);
        let y = B64URL.encode(&point[33..]);
        // RFC 7638 thumbprint: members in lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = B64URL.encode(Sha256::digest(canonical.as_bytes()));
        let signer = Self {
            pair,
            rng: aws_lc_rs::rand::SystemRandom::new(),
            kid,
            x,
            y,
        };
        signer.self_test()?;
        Ok(signer)
    }

    /// Signs a probe token and verifies it end to end with `jsonwebtoken`
    /// against the public key as the JWKS publishes it: the key pair, the
    /// served key and this serialisation agree before anything is issued.
    fn self_test(&self) -> Result<(), JwtError> {
        let probe = Claims {
            sub: "spiffe://self-test.invalid/probe".into(),
            aud: "self-test".into(),
            iat: 0,
            nbf: 0,
            exp: 1,
            jti: "00".repeat(16),
            iss: "spiffe://self-test.invalid/taskmint".into(),
            task_id: "self-test".into(),
            task_holder: "spiffe://self-test.invalid/probe".into(),
            owner: String::new(),
            break_glass: false,
            act: None,
            cnf: Confirmation {
                x5t_s256: x5t_s256(&[0; 32]),
            },
        };
        let token = self.sign(&probe)?;
        let key = DecodingKey::from_ec_components(&self.x, &self.y)
            .map_err(|e| JwtError::Load(format!("public key: {e}")))?;
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&[&probe.aud]);
        v.set_issuer(&[&probe.iss]);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.required_spec_claims.clear();
        let back = jsonwebtoken::decode::<Claims>(&token, &key, &v)
            .map_err(|e| JwtError::Load(format!("self-test token does not verify: {e}")))?;
        if back.claims != probe {
            return Err(JwtError::Load("self-test token claims differ".into()));
        }
        Ok(())
    }

    /// The key id carried in every token header and in the JWKS.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a SPIFFE bundle JWK (`use: jwt-svid`).
    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": self.x,
            "y": self.y,
            "kid": self.kid,
            "use": "jwt-svid",
            "alg": "ES256",
        })
    }

    /// The JWS compact serialisation (RFC 7515 section 7.1) of `claims`
    /// under an ES256 header of type `typ`, signed with the parsed key.
    /// `jsonwebtoken::encode` would parse the PKCS#8 key again on every call
    /// (about as costly as the signature itself); what this produces is
    /// verified by `jsonwebtoken::decode` when the key is loaded.
    fn compact<T: Serialize>(&self, typ: &str, claims: &T) -> Result<String, JwtError> {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some(typ.into());
        header.kid = Some(self.kid.clone());
        let mut token = B64URL.encode(to_json(&header)?);
        token.push('.');
        token.push_str(&B64URL.encode(to_json(claims)?));
        let sig = self
            .pair
            .sign(&self.rng, token.as_bytes())
            .map_err(|_| JwtError::Sign("ECDSA signing failed".into()))?;
        token.push('.');
        token.push_str(&B64URL.encode(sig.as_ref()));
        Ok(token)
    }

    /// Signs `claims`, then re-reads what was signed: the header must be
    /// ES256 with this key's `kid` and type `JWT`, the claims exactly those
    /// asked for, the signature 64 bytes. As in SPIRE's credential validator,
    /// the signature is not verified again per token (it was 70 us of every
    /// mint): the self-test at load verified the key pair and this
    /// serialisation end to end. The key is always P-256 ECDSA, whose
    /// random nonce means a faulty signature gives nothing away; relying
    /// parties refuse it.
    pub fn sign(&self, claims: &Claims) -> Result<String, JwtError> {
        let token = self.compact("JWT", claims)?;
        let bad = |m: String| JwtError::Validate(m);
        let header = jsonwebtoken::decode_header(&token).map_err(|e| bad(e.to_string()))?;
        if header.alg != Algorithm::ES256
            || header.kid.as_deref() != Some(self.kid.as_str())
            || header.typ.as_deref() != Some("JWT")
        {
            return Err(bad("header is not ES256 / JWT with this key's kid".into()));
        }
        let mut parts = token.split('.');
        let (Some(_), Some(payload), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not a three-part compact JWS".into()));
        };
        if B64URL.decode(sig).map(|s| s.len()) != Ok(64) {
            return Err(bad("signature is not 64 bytes".into()));
        }
        let back: Claims = B64URL
            .decode(payload)
            .map_err(|e| bad(e.to_string()))
            .and_then(|p| serde_json::from_slice(&p).map_err(|e| bad(e.to_string())))?;
        if &back != claims {
            return Err(bad("claims changed in signing".into()));
        }
        Ok(token)
    }
}

impl JwtSigner {
    /// Signs a Security Event Token (RFC 8417): `typ: secevent+jwt`, same key
    /// and `kid` as JWT-SVIDs, so relays verify it with the served JWKS.
    pub fn sign_set(&self, claims: &serde_json::Value) -> Result<String, JwtError> {
        self.compact("secevent+jwt", claims)
    }
}

fn to_json<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, JwtError> {
    serde_json::to_vec(v).map_err(|e| JwtError::Sign(e.to_string()))
}

/// `cnf.x5t#S256` for a certificate digest.
pub fn x5t_s256(cert_sha256: &[u8; 32]) -> String {
    B64URL.encode(cert_sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_binds() {
        let key = rcgen::KeyPair::generate().unwrap();
        let signer = JwtSigner::from_pkcs8(&key.serialize_der()).unwrap();
        let claims = Claims {
            sub: "spiffe://example.org/workload/agent".into(),
            aud: "db".into(),
            iat: 1_700_000_000,
            nbf: 1_700_000_000,
            exp: 1_700_000_300,
            jti: "00".repeat(16),
            iss: "spiffe://example.org/taskmint".into(),
            task_id: "build-42".into(),
            task_holder: "spiffe://example.org/workload/agent".into(),
            owner: String::new(),
            break_glass: false,
            act: None,
            cnf: Confirmation {
                x5t_s256: x5t_s256(&[7; 32]),
            },
        };
        let token = signer.sign(&claims).unwrap();
        // Verifies with the JWK the bundle serves.
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(signer.jwk()).unwrap();
        let key = DecodingKey::from_jwk(&jwk).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&["db"]);
        v.validate_exp = false;
        let back = jsonwebtoken::decode::<Claims>(&token, &key, &v).unwrap();
        assert_eq!(back.claims, claims);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(signer.kid()));
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        assert_eq!(signer.kid().len(), 43);
        assert!(!format!("{signer:?}").contains(&signer.x));
    }

    #[test]
    fn refuses_non_p256_keys() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert!(JwtSigner::from_pkcs8(&key.serialize_der()).is_err());
    }
}
