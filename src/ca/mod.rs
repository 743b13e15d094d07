//! The per-task X.509 signing CA: holds the signing key (parsed once at
//! start, never re-read, redacted in `Debug`; the key material lives inside
//! aws-lc, which clears it when freed) and issues X.509-SVIDs in three steps, after
//! SPIRE's `credtemplate`/`credvalidator`: build a template from what was
//! decided, sign it, then re-parse and validate what was signed before it
//! leaves this module.
//!
//! Only the CSR's public key is used. Its subject, SANs and extensions are
//! never read, so a CSR cannot ask for another identity.

use rcgen::{
    CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use rustls::pki_types::CertificateDer;
use spiffe::SpiffeId;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::CaConfig;
use crate::identity::TaskId;

mod csr;
mod extension;
pub use csr::{CsrError, CsrKey, parse_csr};
pub use extension::{
    TASK_EXTENSION_OID, TASK_EXTENSION_OID_STR, TaskBinding, parse_task_extension,
    task_extension_der,
};

/// A failure of the CA itself (never the caller's fault).
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Loading the CA material failed.
    #[error("cannot load signing CA: {0}")]
    Load(String),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(String),
    /// The signed certificate failed post-signing validation.
    #[error("signed certificate failed validation: {0}")]
    Validate(String),
}

/// What a per-task certificate must say; everything here was decided before
/// the CA is asked.
#[derive(Debug, Clone)]
pub struct X509Template<'a> {
    /// The caller; the only SAN.
    pub spiffe_id: &'a SpiffeId,
    /// The task.
    pub task_id: &'a TaskId,
    /// The task's holder (SPIFFE ID).
    pub task_holder: &'a str,
    /// The task's accountable owner; empty if none.
    pub owner: &'a str,
    /// The task was begun through break-glass.
    pub break_glass: bool,
    /// Serial number bytes (positive, >= 128 random bits).
    pub serial: &'a [u8],
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds; already clamped to every limit.
    pub not_after: i64,
}

/// RFC 5280's upper bound on a common name (`ub-common-name`).
const MAX_COMMON_NAME: usize = 64;

/// The signing CA.
pub struct SigningCa {
    issuer: Issuer<'static, KeyPair>,
    /// Signing CA certificate first, then any intermediates.
    chain: Vec<CertificateDer<'static>>,
    not_after: i64,
    /// The CA's subjectKeyIdentifier, so CRLs carry a matching AKI.
    key_id: Option<Vec<u8>>,
    /// The CA's subject, DER: every leaf's issuer.
    subject: Vec<u8>,
    /// The same as an RFC 4514 string (CAEP's `x509_issuer`).
    subject_text: String,
    /// The signature algorithm (OID) every leaf carries, as the load-time
    /// probe leaf showed it.
    sig_alg: String,
    /// Verify each leaf's signature too: for CA keys other than ECDSA (a
    /// faulty RSA-CRT signature can give the key away; a deterministic
    /// Ed25519 one can too).
    verify_each: bool,
}

impl std::fmt::Debug for SigningCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningCa")
            .field("not_after", &self.not_after)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl SigningCa {
    /// Loads the CA certificate chain and key named by `cfg`.
    pub fn load(cfg: &CaConfig) -> Result<Self, CaError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| CaError::Load(format!("`{}`: {e}", p.display())))
        };
        let chain = crate::pem::certs(&read(&cfg.cert)?)
            .map_err(|e| CaError::Load(format!("`{}`: {e}", cfg.cert.display())))?;
        let key_der = crate::pem::pkcs8_key(&read(&cfg.key)?)
            .map_err(|e| CaError::Load(format!("`{}`: {e}", cfg.key.display())))?;
        Self::from_der(chain, &key_der)
    }

    /// Builds the CA from a DER chain (CA certificate first) and PKCS#8 key.
    pub fn from_der(chain: Vec<CertificateDer<'static>>, pkcs8: &[u8]) -> Result<Self, CaError> {
        let key = KeyPair::try_from(pkcs8).map_err(|e| CaError::Load(format!("key: {e}")))?;
        let ca_der = chain
            .first()
            .ok_or_else(|| CaError::Load("empty certificate chain".into()))?;
        let (_, parsed) = X509Certificate::from_der(ca_der.as_ref())
            .map_err(|e| CaError::Load(format!("certificate: {e}")))?;
        if !parsed.is_ca() {
            return Err(CaError::Load(
                "certificate is not a CA (basicConstraints cA=false)".into(),
            ));
        }
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CaError::Load(
                "private key does not match the CA certificate".into(),
            ));
        }
        // No leaf may outlive any certificate of the chain it is sent with.
        let mut not_after = parsed.validity().not_after.timestamp();
        for der in &chain[1..] {
            let (_, c) = X509Certificate::from_der(der.as_ref())
                .map_err(|e| CaError::Load(format!("chain certificate: {e}")))?;
            not_after = not_after.min(c.validity().not_after.timestamp());
        }
        let key_id = parsed
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                    Some(k.0.to_vec())
                }
                _ => None,
            });
        let subject = parsed.subject().as_raw().to_vec();
        let subject_text = rfc4514(parsed.subject());
        let ecdsa = key.algorithm() == &rcgen::PKCS_ECDSA_P256_SHA256
            || key.algorithm() == &rcgen::PKCS_ECDSA_P384_SHA384;
        let issuer = Issuer::from_ca_cert_der(ca_der, key)
            .map_err(|e| CaError::Load(format!("certificate: {e}")))?;
        let mut ca = Self {
            issuer,
            chain,
            not_after,
            key_id,
            subject,
            subject_text,
            sig_alg: String::new(),
            verify_each: !ecdsa,
        };
        ca.sig_alg = ca.probe()?;
        Ok(ca)
    }

    /// Signs a throwaway leaf and verifies it with the CA certificate's key,
    /// so a key or signing fault shows at load, not in a workload's
    /// handshake; returns the leaf's signature algorithm, which every later
    /// leaf must carry.
    fn probe(&self) -> Result<String, CaError> {
        let load = |m: String| CaError::Load(format!("self-test leaf: {m}"));
        let key = KeyPair::generate().map_err(|e| load(e.to_string()))?;
        let csr_key = CsrKey {
            spki_der: key.subject_public_key_info(),
        };
        let id =
            SpiffeId::new("spiffe://self-test.invalid/probe").map_err(|e| load(e.to_string()))?;
        let task = TaskId::parse("self-test").map_err(|e| load(e.to_string()))?;
        let now = crate::clock::now_unix();
        let t = X509Template {
            spiffe_id: &id,
            task_id: &task,
            task_holder: "spiffe://self-test.invalid/probe",
            owner: "",
            break_glass: false,
            serial: &[0x40; 16],
            not_before: now - 1,
            not_after: now + 60,
        };
        let der = self.sign_unchecked(&t, &csr_key)?;
        let (_, leaf) = X509Certificate::from_der(&der).map_err(|e| load(e.to_string()))?;
        let (_, ca) =
            X509Certificate::from_der(self.chain[0].as_ref()).map_err(|e| load(e.to_string()))?;
        leaf.verify_signature(Some(ca.public_key()))
            .map_err(|_| load("does not verify with the CA certificate's key".into()))?;
        Ok(leaf.signature_algorithm.algorithm.to_id_string())
    }

    /// Unix seconds: the CA's own notAfter (no leaf may outlive it).
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// Every leaf's issuer name as an RFC 4514 string (`CN=…,O=…`).
    pub fn issuer_name(&self) -> &str {
        &self.subject_text
    }

    /// The chain sent after each leaf.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// Signs a CRL v2 listing `revoked` (serial hex, revocation time,
    /// reason code; `None` omits the reasonCode extension, as RFC 5280
    /// §5.3.1 asks for an unspecified reason).
    pub fn sign_crl(
        &self,
        revoked: &[(String, i64, Option<rcgen::RevocationReason>)],
        number: u64,
        this_update: i64,
        next_update: i64,
    ) -> Result<Vec<u8>, CaError> {
        let revoked_certs = revoked
            .iter()
            .map(|(serial, at, reason)| {
                Ok(rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(
                        &hex::decode(serial)
                            .map_err(|e| CaError::Sign(format!("serial `{serial}`: {e}")))?,
                    ),
                    revocation_time: ts(*at)?,
                    reason_code: *reason,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, CaError>>()?;
        let params = rcgen::CertificateRevocationListParams {
            this_update: ts(this_update)?,
            next_update: ts(next_update)?,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: match &self.key_id {
                Some(id) => rcgen::KeyIdMethod::PreSpecified(id.clone()),
                None => rcgen::KeyIdMethod::Sha256,
            },
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(crl.der().to_vec())
    }

    /// Template, sign, validate. Returns the leaf DER.
    pub fn issue(&self, t: &X509Template<'_>, key: &CsrKey) -> Result<Vec<u8>, CaError> {
        let der = self.sign_unchecked(t, key)?;
        self.validate(&der, t, key)?;
        Ok(der)
    }

    /// Builds and signs the certificate without the post-signing check that
    /// [`SigningCa::issue`] runs. Only `taskmint bench` calls this, to
    /// measure what the check costs; nothing minted this way is returned.
    pub fn sign_unchecked(&self, t: &X509Template<'_>, key: &CsrKey) -> Result<Vec<u8>, CaError> {
        let params = build_template(t)?;
        let spki = SubjectPublicKeyInfo::from_der(&key.spki_der)
            .map_err(|e| CaError::Sign(format!("public key: {e}")))?;
        let cert = params
            .signed_by(&spki, &self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(cert.der().to_vec())
    }

    fn validate(&self, der: &[u8], t: &X509Template<'_>, key: &CsrKey) -> Result<(), CaError> {
        let bad = |m: &str| Err(CaError::Validate(m.to_owned()));
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| CaError::Validate(e.to_string()))?;
        // As in SPIRE's credential validator, every field is checked; the
        // signature itself is verified per leaf only for non-ECDSA CA keys
        // (it was 50 us of every mint). For ECDSA the load-time probe
        // verified the key and the signing path, and a faulty signature made
        // with a random nonce gives nothing away: relying parties refuse it.
        if cert.issuer().as_raw() != self.subject.as_slice() {
            return bad("issuer is not the signing CA");
        }
        if cert.signature_algorithm.algorithm.to_id_string() != self.sig_alg {
            return bad("signature algorithm is not the CA key's");
        }
        if self.verify_each {
            let (_, ca) = X509Certificate::from_der(self.chain[0].as_ref())
                .map_err(|e| CaError::Validate(e.to_string()))?;
            if cert.verify_signature(Some(ca.public_key())).is_err() {
                return bad("signature does not verify with the CA key");
            }
        }
        if let Some(ca_kid) = &self.key_id {
            let aki = cert
                .iter_extensions()
                .find_map(|e| match e.parsed_extension() {
                    x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                        Some(a.key_identifier.as_ref().map(|k| k.0.to_vec()))
                    }
                    _ => None,
                });
            if aki.flatten().as_deref() != Some(ca_kid.as_slice()) {
                return bad("authorityKeyIdentifier is not the CA's subjectKeyIdentifier");
            }
        }
        if cert.public_key().raw != key.spki_der.as_slice() {
            return bad("public key differs from the CSR's");
        }
        match crate::identity::spiffe_id_of_leaf(&cert) {
            Ok(id) if &id == t.spiffe_id => {}
            _ => return bad("URI SAN is not exactly the caller's SPIFFE ID"),
        }
        let other_sans = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|s| {
                s.value
                    .general_names
                    .iter()
                    .filter(|n| !matches!(n, GeneralName::URI(_)))
                    .count()
            })
            .unwrap_or(0);
        if other_sans != 0 {
            return bad("unexpected non-URI SAN");
        }
        match cert.basic_constraints() {
            Ok(Some(bc)) if !bc.value.ca => {}
            _ => return bad("basicConstraints CA:false missing"),
        }
        match cert.key_usage() {
            Ok(Some(ku))
                if ku.critical
                    && ku.value.digital_signature()
                    && !ku.value.key_cert_sign()
                    && !ku.value.crl_sign() => {}
            _ => return bad("key usage must be critical digitalSignature only"),
        }
        match cert.extended_key_usage() {
            Ok(Some(eku)) if eku.value.server_auth && eku.value.client_auth => {}
            _ => return bad("EKU serverAuth+clientAuth missing"),
        }
        let has_ext = |oid: &str| cert.iter_extensions().any(|e| e.oid.to_id_string() == oid);
        if !has_ext(OID_SKI) || !has_ext(OID_AKI) {
            return bad("SKI or AKI missing");
        }
        if cert.validity().not_after.timestamp() != t.not_after
            || cert.validity().not_before.timestamp() != t.not_before
        {
            return bad("validity differs from the template");
        }
        if cert.raw_serial() != t.serial {
            return bad("serial differs from the template");
        }
        Ok(())
    }
}

const OID_SKI: &str = "2.5.29.14";
const OID_AKI: &str = "2.5.29.35";

fn ts(unix: i64) -> Result<time::OffsetDateTime, CaError> {
    time::OffsetDateTime::from_unix_timestamp(unix).map_err(|e| CaError::Sign(e.to_string()))
}

fn build_template(t: &X509Template<'_>) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    p.not_before = ts(t.not_before)?;
    p.not_after = ts(t.not_after)?;
    p.serial_number = Some(SerialNumber::from_slice(t.serial));
    let uri = t
        .spiffe_id
        .to_string()
        .try_into()
        .map_err(|e: rcgen::Error| CaError::Sign(e.to_string()))?;
    p.subject_alt_names = vec![SanType::URI(uri)];
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, "taskmint");
    // RFC 5280 caps a CN at 64 characters (ub-common-name); a longer task
    // id lives in the task extension only, which always carries it.
    if t.task_id.as_str().chars().count() <= MAX_COMMON_NAME {
        p.distinguished_name
            .push(DnType::CommonName, t.task_id.as_str());
    }
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    let mut ext = CustomExtension::from_oid_content(
        TASK_EXTENSION_OID,
        task_extension_der(&TaskBinding {
            task_id: t.task_id.to_string(),
            holder: t.task_holder.to_owned(),
            owner: t.owner.to_owned(),
            break_glass: t.break_glass,
        }),
    );
    ext.set_criticality(false);
    p.custom_extensions = vec![ext];
    Ok(p)
}

/// A name as an RFC 4514 string: the last RDN first, attributes by their
/// short name (or dotted OID), values escaped.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|a| {
                    let oid = a.attr_type().to_id_string();
                    let key = match oid.as_str() {
                        "2.5.4.3" => "CN",
                        "2.5.4.6" => "C",
                        "2.5.4.7" => "L",
                        "2.5.4.8" => "ST",
                        "2.5.4.9" => "STREET",
                        "2.5.4.10" => "O",
                        "2.5.4.11" => "OU",
                        "0.9.2342.19200300.100.1.1" => "UID",
                        "0.9.2342.19200300.100.1.25" => "DC",
                        other => other,
                    }
                    .to_owned();
                    let value = match a.as_str() {
                        Ok(v) => escape_dn_value(v),
                        // Not a string type: RFC 4514 §2.4, `#` and the DER in hex.
                        Err(_) => format!("#{}", hex::encode(a.attr_value().data)),
                    };
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// RFC 4514 §2.4 escaping of an attribute value.
fn escape_dn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if c == '\0' {
            out.push_str("\\00");
            continue;
        }
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_extension_round_trips() {
        let long = "t".repeat(128);
        for (task, holder, owner, break_glass) in [
            ("build-42", "spiffe://example.org/workload/agent", "", false),
            (long.as_str(), "o", "team-a", true),
            ("t", "o", "", true),
        ] {
            let b = TaskBinding {
                task_id: task.into(),
                holder: holder.into(),
                owner: owner.into(),
                break_glass,
            };
            assert_eq!(parse_task_extension(&task_extension_der(&b)), Some(b));
        }
        assert_eq!(parse_task_extension(&[0x30, 0x05, 0x0c]), None);
    }

    /// Found by the `task_extension` fuzz target: the decoder took
    /// encodings that are not DER (a length in long form where the short
    /// form fits, a length with a leading zero octet, an owner present but
    /// empty), so one binding had several accepted encodings. Each is
    /// refused now; the DER of the same binding still reads.
    #[test]
    fn only_the_der_encoding_of_a_binding_is_accepted() {
        let refused: [&[u8]; 4] = [
            // The fuzzer's input: the holder's length as 0x81 0x00.
            &[0x30, 0x05, 0x0c, 0x00, 0x0c, 0x81, 0x00],
            // The sequence's length in long form.
            &[0x30, 0x81, 0x06, 0x0c, 0x01, b't', 0x0c, 0x01, b'o'],
            // A two-octet length with a leading zero.
            &[0x30, 0x82, 0x00, 0x06, 0x0c, 0x01, b't', 0x0c, 0x01, b'o'],
            // An empty owner.
            &[0x30, 0x08, 0x0c, 0x01, b't', 0x0c, 0x01, b'o', 0x80, 0x00],
        ];
        for der in refused {
            assert_eq!(parse_task_extension(der), None, "{der:02x?}");
        }
        let b = TaskBinding {
            task_id: "t".into(),
            holder: "o".into(),
            ..Default::default()
        };
        assert_eq!(
            task_extension_der(&b),
            [0x30, 0x06, 0x0c, 0x01, b't', 0x0c, 0x01, b'o']
        );
        let long = TaskBinding {
            task_id: "t".repeat(200),
            holder: "o".into(),
            owner: "team-a".into(),
            break_glass: true,
        };
        let der = task_extension_der(&long);
        assert_eq!(der[..3], [0x30, 0x81, 0xd9]);
        assert_eq!(parse_task_extension(&der), Some(long));
    }

    fn ca_with(alg: &'static rcgen::SignatureAlgorithm) -> SigningCa {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = p.self_signed(&key).unwrap();
        SigningCa::from_der(vec![cert.der().clone()], &key.serialize_der()).unwrap()
    }

    /// What the CRL says is read back with a third-party parser: each entry
    /// its reason code, and no reasonCode extension for an unspecified one
    /// (RFC 5280 §5.3.1).
    #[test]
    fn crl_entries_carry_their_reason_codes() {
        use rcgen::RevocationReason as R;
        use x509_parser::revocation_list::CertificateRevocationList;
        let ca = ca_with(&rcgen::PKCS_ECDSA_P256_SHA256);
        let listed = [
            ("01".repeat(19), 1_000, Some(R::KeyCompromise)),
            ("02".repeat(19), 1_001, Some(R::Superseded)),
            ("03".repeat(19), 1_002, Some(R::CessationOfOperation)),
            ("04".repeat(19), 1_003, Some(R::PrivilegeWithdrawn)),
            ("05".repeat(19), 1_004, None),
        ];
        let der = ca.sign_crl(&listed, 7, 1_000, 5_000).unwrap();
        let (_, crl) = CertificateRevocationList::from_der(&der).unwrap();
        let got: Vec<_> = crl
            .iter_revoked_certificates()
            .map(|r| {
                (
                    hex::encode(r.raw_serial()),
                    r.reason_code().map(|(_, c)| c.0),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("01".repeat(19), Some(1)),
                ("02".repeat(19), Some(4)),
                ("03".repeat(19), Some(5)),
                ("04".repeat(19), Some(9)),
                ("05".repeat(19), None),
            ]
        );
    }

    #[test]
    fn issuer_names_are_rfc4514_strings() {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::OrganizationName, "Acme, Inc.");
        p.distinguished_name
            .push(DnType::CommonName, " taskmint CA");
        let cert = p.self_signed(&key).unwrap();
        let ca = SigningCa::from_der(vec![cert.der().clone()], &key.serialize_der()).unwrap();
        // The last RDN first; `,` and a leading space escaped.
        assert_eq!(ca.issuer_name(), "CN=\\ taskmint CA,O=Acme\\, Inc.");
    }

    #[test]
    fn leaves_are_validated_for_ecdsa_and_other_ca_keys() {
        let id = SpiffeId::new("spiffe://example.org/workload/a").unwrap();
        let task = TaskId::parse("t").unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let key = CsrKey {
            spki_der: leaf_key.subject_public_key_info(),
        };
        let now = crate::clock::now_unix();
        let t = X509Template {
            spiffe_id: &id,
            task_id: &task,
            task_holder: "spiffe://example.org/workload/a",
            owner: "",
            break_glass: false,
            serial: &[0x41; 16],
            not_before: now,
            not_after: now + 60,
        };
        // ECDSA: fields only; Ed25519: the signature is verified per leaf.
        for (alg, verify_each) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, false),
            (&rcgen::PKCS_ED25519, true),
        ] {
            let ca = ca_with(alg);
            assert_eq!(ca.verify_each, verify_each);
            let der = ca.issue(&t, &key).unwrap();
            let (_, leaf) = X509Certificate::from_der(&der).unwrap();
            assert_eq!(
                leaf.signature_algorithm.algorithm.to_id_string(),
                ca.sig_alg
            );
        }
        // A leaf signed by another CA with the same subject is refused.
        let ca = ca_with(&rcgen::PKCS_ECDSA_P256_SHA256);
        let other = ca_with(&rcgen::PKCS_ECDSA_P256_SHA256);
        let der = other.sign_unchecked(&t, &key).unwrap();
        assert!(matches!(
            ca.validate(&der, &t, &key),
            Err(CaError::Validate(_))
        ));
    }

    /// A task id that fits RFC 5280's 64-character CN is the CN; a longer
    /// one is left out of the subject and carried by the extension alone.
    #[test]
    fn the_common_name_holds_the_task_id_only_when_it_fits() {
        let id = SpiffeId::new("spiffe://example.org/workload/a").unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let key = CsrKey {
            spki_der: leaf_key.subject_public_key_info(),
        };
        let ca = ca_with(&rcgen::PKCS_ECDSA_P256_SHA256);
        let now = crate::clock::now_unix();
        for (len, cn) in [(64, true), (65, false), (128, false)] {
            let task = TaskId::parse(&"t".repeat(len)).unwrap();
            let t = X509Template {
                spiffe_id: &id,
                task_id: &task,
                task_holder: "spiffe://example.org/workload/a",
                owner: "",
                break_glass: false,
                serial: &[0x41; 16],
                not_before: now,
                not_after: now + 60,
            };
            let der = ca.issue(&t, &key).unwrap();
            let (_, leaf) = X509Certificate::from_der(&der).unwrap();
            let names: Vec<_> = leaf
                .subject()
                .iter_common_name()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect();
            assert_eq!(names.len(), usize::from(cn), "task id of {len}");
            if cn {
                assert_eq!(names[0], task.as_str());
            }
            let ext = leaf
                .extensions()
                .iter()
                .find(|e| e.oid.to_id_string() == TASK_EXTENSION_OID_STR)
                .expect("the task extension");
            let binding = parse_task_extension(ext.value).unwrap();
            assert_eq!(binding.task_id, task.as_str());
        }
    }

    /// Weak RSA keys are refused as what they are, before the signature
    /// (which a 1024-bit key could not even be verified with).
    #[test]
    fn weak_rsa_keys_are_refused_as_such() {
        let short = include_bytes!("../../tests/fixtures/csr-rsa1024.der");
        assert!(matches!(parse_csr(short), Err(CsrError::WeakKey(1024))));
        let e3 = include_bytes!("../../tests/fixtures/csr-rsa-e3.der");
        assert!(matches!(parse_csr(e3), Err(CsrError::RsaExponent)));
        let good = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let csr = CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&good)
            .unwrap();
        parse_csr(csr.der()).unwrap();
    }

    #[test]
    fn garbage_csr_is_malformed() {
        assert!(matches!(
            parse_csr(b"not a csr"),
            Err(CsrError::Malformed(_))
        ));
    }
}
