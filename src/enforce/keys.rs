//! The JWT keys a bearer token is verified with, as the issuer's trust
//! bundle lists them (`use: jwt-svid`, by `kid`), and the `iss` its tokens
//! carry. Fetched from the issuer the feed follows, refreshed on the
//! bundle's hint and when a token names a `kid` not yet known.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::grpc::pb;

/// The keys of one bundle.
#[derive(Clone, Default)]
pub struct KeySet {
    by_kid: HashMap<String, (DecodingKey, Algorithm)>,
    /// The `iss` tokens must carry.
    pub iss: String,
    /// The issuer's trust domain.
    pub trust_domain: String,
    /// The bundle's sequence.
    pub sequence: u64,
    /// How soon to fetch it again.
    pub refresh: Duration,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<_> = self.by_kid.keys().collect();
        kids.sort();
        f.debug_struct("KeySet")
            .field("kids", &kids)
            .field("iss", &self.iss)
            .field("sequence", &self.sequence)
            .finish()
    }
}

/// Bounds on the refresh interval, whatever the bundle's hint says.
const MIN_REFRESH: Duration = Duration::from_secs(10);
const MAX_REFRESH: Duration = Duration::from_secs(300);

/// The algorithm a key verifies: its `alg` if the JWK names one, else the
/// one its curve implies. Keys of other kinds are not used.
fn algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if let Some(alg) = jwk.common.key_algorithm {
        return alg.to_string().parse().ok();
    }
    match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        _ => None,
    }
}

impl KeySet {
    /// Reads the JWT-SVID keys out of a `GetTrustBundle` answer. A key
    /// without a `kid`, or one that does not parse, is skipped (and named
    /// in the second value); no usable key at all is an error.
    pub fn from_bundle(b: &pb::GetTrustBundleResponse) -> Result<(Self, Vec<String>), String> {
        let doc: serde_json::Value = serde_json::from_str(&b.spiffe_bundle_jwks)
            .map_err(|e| format!("the bundle's JWK set is not JSON: {e}"))?;
        let mut set = KeySet {
            iss: if b.jwt_issuer.is_empty() {
                // Issuers that predate the field sign with their default.
                format!("spiffe://{}/taskmint", b.trust_domain)
            } else {
                b.jwt_issuer.clone()
            },
            trust_domain: b.trust_domain.clone(),
            sequence: b.sequence,
            refresh: Duration::from_secs(b.refresh_hint_seconds).clamp(MIN_REFRESH, MAX_REFRESH),
            ..Default::default()
        };
        let mut skipped = Vec::new();
        for k in doc["keys"].as_array().into_iter().flatten() {
            if k["use"] != "jwt-svid" {
                continue;
            }
            let Some(kid) = k["kid"].as_str().filter(|k| !k.is_empty()) else {
                skipped.push("a jwt-svid key without kid".to_owned());
                continue;
            };
            let parsed = serde_json::from_value::<Jwk>(k.clone())
                .map_err(|e| e.to_string())
                .and_then(|jwk| {
                    let alg = algorithm(&jwk).ok_or("no supported algorithm")?;
                    let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
                    Ok((key, alg))
                });
            match parsed {
                Ok(v) => {
                    set.by_kid.insert(kid.to_owned(), v);
                }
                Err(e) => skipped.push(format!("key `{kid}`: {e}")),
            }
        }
        if set.by_kid.is_empty() {
            return Err("the bundle has no usable JWT-SVID key".into());
        }
        Ok((set, skipped))
    }

    /// The key named `kid`.
    pub fn get(&self, kid: &str) -> Option<&(DecodingKey, Algorithm)> {
        self.by_kid.get(kid)
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.by_kid.len()
    }

    /// Whether it holds none (before the first fetch).
    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty()
    }
}
