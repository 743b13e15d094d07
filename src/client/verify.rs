//! How the client's TLS authenticates both ends: the SVID it presents (fixed
//! files, or the Workload API's current one at each handshake) and the
//! verifier that accepts the issuer by its chain to the bundle and its
//! SPIFFE ID, never by a DNS name.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::sign::CertifiedKey;
use spiffe::SpiffeId;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{ClientError, Identity};
use crate::identity::WorkloadApiSource;

pub(super) fn anchors(
    roots: &[CertificateDer<'static>],
) -> Result<Vec<TrustAnchor<'static>>, ClientError> {
    roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Config(format!("bundle: {e}")))
}

/// What the client presents in the handshake.
pub(super) enum ClientAuth {
    None,
    Fixed(Identity),
    WorkloadApi(Arc<WorkloadApiCert>),
}

/// Presents the Workload API's current SVID at each handshake.
#[derive(Debug)]
pub(super) struct WorkloadApiCert {
    pub(super) source: WorkloadApiSource,
    pub(super) provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ResolvesClientCert for WorkloadApiCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        // A handshake without a certificate is refused by the issuer with a
        // status naming the missing SVID; log why ours is missing.
        let svid = self
            .source
            .svid()
            .map_err(|e| tracing::warn!(error = %e, "no client certificate for this handshake"))
            .ok()?;
        CertifiedKey::from_der(svid.chain, svid.key, &self.provider)
            .map_err(|e| tracing::warn!(error = %e, "the Workload API's SVID is unusable"))
            .ok()
            .map(Arc::new)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The roots that verify the issuer.
#[derive(Debug)]
pub(super) enum ServerRoots {
    Fixed(Vec<TrustAnchor<'static>>),
    /// The agent's bundle of the issuer's trust domain, read per handshake.
    WorkloadApi(WorkloadApiSource),
}

/// Verifies the issuer's certificate chain against the bundle and its URI
/// SAN against the expected SPIFFE ID. DNS names play no part.
#[derive(Debug)]
pub(super) struct SpiffeServerVerifier {
    pub(super) roots: ServerRoots,
    pub(super) server_id: SpiffeId,
    pub(super) algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bad = |m: String| rustls::Error::General(m);
        let ee = webpki::EndEntityCert::try_from(end_entity).map_err(|e| bad(e.to_string()))?;
        let from_agent;
        let anchors = match &self.roots {
            ServerRoots::Fixed(a) => a,
            ServerRoots::WorkloadApi(source) => {
                let td = self.server_id.trust_domain();
                let roots = source.bundle(td).ok_or_else(|| {
                    bad(format!(
                        "the Workload API at `{}` sent no bundle for the issuer's trust domain `{td}`",
                        source.endpoint()
                    ))
                })?;
                from_agent = anchors(&roots).map_err(|e| bad(e.to_string()))?;
                &from_agent
            }
        };
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| bad(format!("issuer certificate: {e}")))?;
        let (_, leaf) =
            X509Certificate::from_der(end_entity.as_ref()).map_err(|e| bad(e.to_string()))?;
        let id = crate::identity::spiffe_id_of_leaf(&leaf).map_err(|e| bad(e.to_string()))?;
        if id != self.server_id {
            return Err(bad(format!(
                "issuer presented SPIFFE ID `{id}`, expected `{}`",
                self.server_id
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}
