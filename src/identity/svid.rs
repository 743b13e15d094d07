//! The caller-SVID rules. Each rule has its own [`AuthError`] variant so a
//! refused workload learns exactly which rule its certificate broke.
//!
//! Order matters: the leaf is read first only to learn which trust domain it
//! claims, then the chain is verified against that trust domain's bundle and
//! no other.

use rustls::pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};
use spiffe::SpiffeId;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Caller, TrustBundles};
use crate::clock::rfc3339;

/// A rule the presented certificate broke.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The client sent no certificate.
    #[error("no client certificate presented: an X.509-SVID is required")]
    NoCertificate,
    /// The leaf is not parseable X.509.
    #[error("client certificate is malformed: {0}")]
    Malformed(String),
    /// The leaf has no URI SAN.
    #[error("client certificate has no URI SAN: an X.509-SVID carries exactly one SPIFFE ID")]
    NoUriSan,
    /// The leaf has more than one URI SAN.
    #[error("client certificate has {0} URI SANs: an X.509-SVID carries exactly one")]
    MultipleUriSans(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN `{uri}` is not a SPIFFE ID: {reason}")]
    NotSpiffeId {
        /// The URI as presented.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The SPIFFE ID names only a trust domain, not a workload.
    #[error("SPIFFE ID `{0}` has no path: a workload SVID names a workload, not a trust domain")]
    RootId(String),
    /// The leaf is a CA certificate.
    #[error(
        "client certificate is a CA certificate (basicConstraints cA=true); a leaf SVID is required"
    )]
    CaCertificate,
    /// Key usage lacks digitalSignature.
    #[error("client certificate key usage lacks digitalSignature")]
    NoDigitalSignature,
    /// Key usage allows signing certificates or CRLs.
    #[error("client certificate key usage has keyCertSign or cRLSign; a leaf SVID must not")]
    SigningKeyUsage,
    /// The SPIFFE ID's trust domain has no configured bundle.
    #[error("trust domain `{0}` is not trusted by this issuer")]
    UntrustedDomain(String),
    /// The leaf's notAfter has passed.
    #[error("client certificate expired at {0}")]
    Expired(String),
    /// The leaf's notBefore is in the future.
    #[error("client certificate is not valid before {0}")]
    NotYetValid(String),
    /// The leaf is a per-task credential minted by taskmint: it proves a task
    /// grant, not a workload identity, and cannot be used to mint more.
    #[error(
        "client certificate is a taskmint per-task credential; authenticate with the workload's own SVID"
    )]
    TaskCredential,
    /// The chain does not verify against the trust domain's bundle.
    #[error(
        "client certificate chain does not verify against the bundle of trust domain `{td}`: {reason}"
    )]
    Chain {
        /// The trust domain whose bundle was used.
        td: String,
        /// webpki's reason.
        reason: String,
    },
}

/// The SPIFFE ID of a leaf certificate, enforcing the SAN rules: exactly one
/// URI SAN, a valid SPIFFE ID with a non-root path.
pub fn spiffe_id_of_leaf(leaf: &X509Certificate<'_>) -> Result<SpiffeId, AuthError> {
    let san = leaf
        .subject_alternative_name()
        .map_err(|_| AuthError::Malformed("its subjectAltName does not decode".into()))?;
    let uris: Vec<&str> = san
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let uri = match uris.as_slice() {
        [] => return Err(AuthError::NoUriSan),
        [one] => *one,
        many => return Err(AuthError::MultipleUriSans(many.len())),
    };
    // The SPIFFE ID spec allows only lowercase in a trust domain; read
    // leniently, `EXAMPLE.ORG` would authenticate as `example.org`.
    let authority = uri
        .strip_prefix("spiffe://")
        .map(|rest| rest.split('/').next().unwrap_or_default());
    if authority.is_some_and(|a| a.bytes().any(|b| b.is_ascii_uppercase())) {
        return Err(AuthError::NotSpiffeId {
            uri: uri.to_owned(),
            reason: "its trust domain must be lowercase".into(),
        });
    }
    let id = SpiffeId::new(uri).map_err(|e| AuthError::NotSpiffeId {
        uri: uri.to_owned(),
        reason: e.to_string(),
    })?;
    if id.path().is_empty() {
        return Err(AuthError::RootId(uri.to_owned()));
    }
    Ok(id)
}

/// Applies every caller-SVID rule to a presented chain (leaf first) and
/// returns the authenticated caller.
pub fn authenticate(
    chain: &[CertificateDer<'_>],
    bundles: &TrustBundles,
    now: UnixTime,
) -> Result<Caller, AuthError> {
    let leaf_der = chain.first().ok_or(AuthError::NoCertificate)?;
    let (_, leaf) = X509Certificate::from_der(leaf_der.as_ref())
        .map_err(|_| AuthError::Malformed("the leaf does not decode as a certificate".into()))?;

    let spiffe_id = spiffe_id_of_leaf(&leaf)?;

    let bc = leaf
        .basic_constraints()
        .map_err(|_| AuthError::Malformed("its basicConstraints do not decode".into()))?;
    if bc.is_some_and(|b| b.value.ca) {
        return Err(AuthError::CaCertificate);
    }
    let ku = leaf
        .key_usage()
        .map_err(|_| AuthError::Malformed("its keyUsage does not decode".into()))?;
    match ku {
        None => return Err(AuthError::NoDigitalSignature),
        Some(ku) => {
            if !ku.value.digital_signature() {
                return Err(AuthError::NoDigitalSignature);
            }
            if ku.value.key_cert_sign() || ku.value.crl_sign() {
                return Err(AuthError::SigningKeyUsage);
            }
        }
    }

    if leaf
        .iter_extensions()
        .any(|e| e.oid.to_id_string() == crate::ca::TASK_EXTENSION_OID_STR)
    {
        return Err(AuthError::TaskCredential);
    }

    let td = spiffe_id.trust_domain();
    let bundle = bundles
        .get(td)
        .ok_or_else(|| AuthError::UntrustedDomain(td.to_string()))?;

    // Validity is checked here, before webpki, so the message says which bound.
    let now_s = now.as_secs() as i64;
    let not_before = leaf.validity().not_before.timestamp();
    let not_after = leaf.validity().not_after.timestamp();
    if now_s > not_after {
        return Err(AuthError::Expired(rfc3339(not_after)));
    }
    if now_s < not_before {
        return Err(AuthError::NotYetValid(rfc3339(not_before)));
    }

    let ee = webpki::EndEntityCert::try_from(leaf_der).map_err(|e| AuthError::Chain {
        td: td.to_string(),
        reason: e.to_string(),
    })?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        bundle.anchors(),
        &chain[1..],
        now,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| AuthError::Chain {
        td: td.to_string(),
        reason: e.to_string(),
    })?;

    // The chain is only as valid as its shortest-lived certificate.
    let mut chain_not_after = not_after;
    for der in &chain[1..] {
        if let Ok((_, c)) = X509Certificate::from_der(der.as_ref()) {
            chain_not_after = chain_not_after.min(c.validity().not_after.timestamp());
        }
    }

    Ok(Caller {
        spiffe_id,
        svid_not_after: chain_not_after,
        cert_sha256: Sha256::digest(leaf_der.as_ref()).into(),
    })
}
