//! PEM reading and writing for certificates and PKCS#8 keys.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

/// Every `CERTIFICATE` block in `pem`, in order. At least one is required.
pub fn certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("malformed PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    Ok(certs)
}

/// The `PRIVATE KEY` (PKCS#8) block in `pem`, as DER that is wiped on drop.
pub fn pkcs8_key(pem: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    let key = PrivatePkcs8KeyDer::from_pem_slice(pem)
        .map_err(|e| format!("no PKCS#8 PRIVATE KEY block: {e}"))?;
    Ok(Zeroizing::new(key.secret_pkcs8_der().to_vec()))
}

/// Encodes DER as one PEM block with the given label.
pub fn encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
