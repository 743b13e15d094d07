//! The trust bundle this issuer serves: the X.509 roots of its own trust
//! domain and its JWT-SVID signing keys, as PEM and as a SPIFFE bundle (JWKS).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

/// How often consumers are asked to re-fetch the bundle, in seconds.
pub const REFRESH_HINT_SECS: u64 = 300;

/// The served bundle.
#[derive(Debug, Clone)]
pub struct TrustBundleDoc {
    /// The issuer's trust domain.
    pub trust_domain: String,
    /// DER roots.
    pub x509_authorities: Vec<Vec<u8>>,
    /// The roots as PEM.
    pub pem: String,
    /// The SPIFFE bundle JWKS document.
    pub jwks: String,
    /// Bundle sequence.
    pub sequence: u64,
}

/// Builds the bundle document from roots and the JWT signing key's JWK.
pub fn build(
    trust_domain: &str,
    roots: &[CertificateDer<'_>],
    jwt_keys: &[serde_json::Value],
    sequence: u64,
) -> TrustBundleDoc {
    let mut keys: Vec<serde_json::Value> = roots.iter().filter_map(|r| x509_jwk(r)).collect();
    keys.extend(jwt_keys.iter().cloned());
    let jwks = serde_json::json!({
        "keys": keys,
        "spiffe_sequence": sequence,
        "spiffe_refresh_hint": REFRESH_HINT_SECS,
    });
    TrustBundleDoc {
        trust_domain: trust_domain.to_owned(),
        x509_authorities: roots.iter().map(|r| r.to_vec()).collect(),
        pem: roots
            .iter()
            .map(|r| crate::pem::encode("CERTIFICATE", r))
            .collect(),
        jwks: serde_json::to_string_pretty(&jwks).expect("JSON value serialises"),
        sequence,
    }
}

/// A `use: x509-svid` JWK for a root, with its public key and `x5c`. Roots
/// whose key type a JWK cannot express are left out of the JWKS (they stay
/// in the PEM list).
fn x509_jwk(root: &CertificateDer<'_>) -> Option<serde_json::Value> {
    let (_, cert) = X509Certificate::from_der(root.as_ref()).ok()?;
    let spki = cert.public_key();
    let mut jwk = match spki.parsed().ok()? {
        PublicKey::EC(point) => {
            let data = point.data();
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())?;
            let (crv, len) = match curve.as_str() {
                "1.2.840.10045.3.1.7" => ("P-256", 32),
                "1.3.132.0.34" => ("P-384", 48),
                _ => return None,
            };
            if data.len() != 1 + 2 * len || data[0] != 4 {
                return None;
            }
            serde_json::json!({
                "kty": "EC", "crv": crv,
                "x": B64URL.encode(&data[1..1 + len]),
                "y": B64URL.encode(&data[1 + len..]),
            })
        }
        PublicKey::RSA(rsa) => serde_json::json!({
            "kty": "RSA",
            "n": B64URL.encode(strip_zeros(rsa.modulus)),
            "e": B64URL.encode(strip_zeros(rsa.exponent)),
        }),
        _ => return None,
    };
    jwk["use"] = "x509-svid".into();
    jwk["x5c"] = serde_json::json!([B64.encode(root.as_ref())]);
    Some(jwk)
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|x| **x == 0).count();
    &b[n..]
}
