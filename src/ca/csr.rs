//! The caller's CSR: parsed, its key checked, its signature verified
//! (proof of possession); only its public key survives.

use rcgen::SubjectPublicKeyInfo;
use x509_parser::prelude::FromDer;

/// Why a CSR was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    /// The bytes are not a DER PKCS#10 request.
    #[error("CSR is not a DER PKCS#10 certification request: {0}")]
    Malformed(String),
    /// The request's signature does not verify with its own key.
    #[error("CSR signature does not verify with the CSR's public key")]
    BadSignature,
    /// The CSR is signed with SHA-1.
    #[error("CSR is signed with `{0}` (SHA-1); use SHA-256 or stronger")]
    WeakSignature(String),
    /// The RSA key is too short.
    #[error("CSR RSA key has {0} bits; at least 2048 are required")]
    WeakKey(usize),
    /// The RSA public exponent is not 65537 (small exponents invite
    /// padding attacks on whoever encrypts or verifies with the key).
    #[error("CSR RSA key's public exponent must be 65537")]
    RsaExponent,
    /// The key type is not one this CA certifies.
    #[error("CSR public key algorithm is not supported (use P-256, P-384, Ed25519 or RSA >= 2048)")]
    UnsupportedKey,
}

/// The one RSA public exponent accepted (F4).
const RSA_EXPONENT: u64 = 65_537;

/// sha1WithRSAEncryption, ecdsa-with-SHA1, dsa-with-sha1.
const WEAK_SIGNATURE_ALGS: &[&str] = &[
    "1.2.840.113549.1.1.5",
    "1.2.840.10045.4.1",
    "1.2.840.10040.4.3",
];

/// A verified CSR: only its public key survives.
#[derive(Debug, Clone)]
pub struct CsrKey {
    pub(super) spki_der: Vec<u8>,
}

/// Parses a CSR and verifies its signature (proof of possession).
pub fn parse_csr(der: &[u8]) -> Result<CsrKey, CsrError> {
    use x509_parser::certification_request::X509CertificationRequest;
    // The parser's own error text is its Debug form: the caller gets ours.
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|e| {
        CsrError::Malformed(
            match e {
                x509_parser::nom::Err::Incomplete(_) => "the request is truncated",
                _ => "the bytes do not decode as a CertificationRequest",
            }
            .into(),
        )
    })?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed(
            "trailing bytes after the request".into(),
        ));
    }
    let sig_alg = csr.signature_algorithm.algorithm.to_id_string();
    if WEAK_SIGNATURE_ALGS.contains(&sig_alg.as_str()) {
        return Err(CsrError::WeakSignature(sig_alg));
    }
    // The key first: a key too weak to verify with would otherwise be
    // reported as a bad signature.
    let spki = &csr.certification_request_info.subject_pki;
    match spki.parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) if rsa.key_size() < 2048 => {
            return Err(CsrError::WeakKey(rsa.key_size()));
        }
        Ok(x509_parser::public_key::PublicKey::RSA(rsa))
            if rsa.try_exponent().ok() != Some(RSA_EXPONENT) =>
        {
            return Err(CsrError::RsaExponent);
        }
        Ok(x509_parser::public_key::PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            if !matches!(curve.as_str(), "1.2.840.10045.3.1.7" | "1.3.132.0.34") {
                return Err(CsrError::UnsupportedKey);
            }
        }
        Ok(_) => {}
        Err(_) => return Err(CsrError::UnsupportedKey),
    }
    csr.verify_signature().map_err(|e| match e {
        x509_parser::error::X509Error::SignatureUnsupportedAlgorithm => CsrError::UnsupportedKey,
        _ => CsrError::BadSignature,
    })?;
    let spki_der = spki.raw.to_vec();
    SubjectPublicKeyInfo::from_der(&spki_der).map_err(|_| CsrError::UnsupportedKey)?;
    Ok(CsrKey { spki_der })
}
