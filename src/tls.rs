//! TLS material that changes on disk while the issuer runs: the trust bundles
//! and the issuer's own serving SVID. [`TlsMaterial`] holds the current
//! version; [`reload_loop`] polls the files and swaps in a new version when
//! their content changes. Live connections keep running; new handshakes (and,
//! for bundles, the next request on an old connection) use the new material.
//!
//! Polling the content, not watching inodes, is deliberate: SPIRE's helper and
//! Kubernetes volume updates replace files by rename or symlink swap, which
//! inotify-based watchers miss or double-report.
//!
//! Client authentication is split in two. The rustls verifier here requests a
//! client certificate and checks the handshake signature (proof that the peer
//! holds the leaf's key), and nothing else; it grants nothing. The SVID rules
//! are applied right after the handshake by [`crate::identity::authenticate`]
//! and enforced on every RPC, so a refused workload gets `UNAUTHENTICATED` with
//! the rule it broke instead of an opaque TLS alert that clients retry.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use spiffe::TrustDomain;

use crate::config::Config;
use crate::identity::{BundleError, TrustBundles};

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A bundle failed to load.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The serving SVID failed to load.
    #[error("cannot load serving SVID: {0}")]
    ServerSvid(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The URI SAN of a serving SVID's leaf.
fn spiffe_id_of(key: &CertifiedKey) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let leaf = key.cert.first()?;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).ok()?;
    crate::identity::spiffe_id_of_leaf(&cert)
        .ok()
        .map(|id| id.to_string())
}

/// The process-wide crypto provider (aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// What [`reload_loop`] reads.
#[derive(Debug, Clone)]
pub struct MaterialSources {
    domains: Vec<(TrustDomain, PathBuf)>,
    bundle_dir: Option<PathBuf>,
    server_cert: PathBuf,
    server_key: PathBuf,
}

impl MaterialSources {
    /// The files named by a config.
    pub fn from_config(cfg: &Config) -> Result<Self, TlsError> {
        let domains = cfg
            .trust
            .domains
            .iter()
            .map(|d| {
                TrustDomain::new(&d.name)
                    .map(|td| (td, d.bundle.clone()))
                    .map_err(|e| TlsError::Config(format!("trust domain `{}`: {e}", d.name)))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            domains,
            bundle_dir: cfg.trust.bundle_dir.clone(),
            server_cert: cfg.server.cert.clone(),
            server_key: cfg.server.key.clone(),
        })
    }

    /// A digest of everything the material is made of, to detect change.
    fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        let mut add = |p: &std::path::Path| {
            h.update(p.as_os_str().as_encoded_bytes());
            h.update(std::fs::read(p).unwrap_or_default());
        };
        for (_, p) in &self.domains {
            add(p);
        }
        if let Some(dir) = &self.bundle_dir
            && let Ok(entries) = std::fs::read_dir(dir)
        {
            let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            for p in paths {
                add(&p);
            }
        }
        add(&self.server_cert);
        add(&self.server_key);
        h.finalize().into()
    }

    fn load_bundles(&self) -> Result<TrustBundles, TlsError> {
        Ok(TrustBundles::load(
            &self.domains,
            self.bundle_dir.as_deref(),
        )?)
    }

    fn load_server_key(&self, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
        let err = |p: &PathBuf, e: String| TlsError::ServerSvid(format!("`{}`: {e}", p.display()));
        let certs = std::fs::read(&self.server_cert)
            .map_err(|e| e.to_string())
            .and_then(|b| crate::pem::certs(&b))
            .map_err(|e| err(&self.server_cert, e))?;
        let key = std::fs::read(&self.server_key)
            .map_err(|e| e.to_string())
            .and_then(|b| crate::pem::pkcs8_key(&b))
            .map_err(|e| err(&self.server_key, e))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec()));
        let ck = CertifiedKey::from_der(certs, key, provider)
            .map_err(|e| err(&self.server_key, e.to_string()))?;
        Ok(ck)
    }
}

/// The current bundles and serving SVID.
#[derive(Debug)]
pub struct TlsMaterial {
    bundles: RwLock<Arc<TrustBundles>>,
    server_key: RwLock<Arc<CertifiedKey>>,
    /// The serving SVID's SPIFFE ID, re-read with it: the issuer's own
    /// identity, which may not mint.
    server_id: RwLock<Option<String>>,
    generation: AtomicU64,
    /// Announces each new generation to whoever must re-judge (open streams).
    reloads: tokio::sync::watch::Sender<u64>,
    fingerprint: RwLock<[u8; 32]>,
    sources: MaterialSources,
    provider: Arc<CryptoProvider>,
    /// What failed at the last reload (each such source kept its previous
    /// version, which may be stale); empty when everything loaded.
    reload_errors: RwLock<Vec<String>>,
}

impl TlsMaterial {
    /// Loads everything once; any failure here stops the start.
    pub fn load(sources: MaterialSources) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        let fingerprint = sources.fingerprint();
        let bundles = sources.load_bundles()?;
        let key = sources.load_server_key(&provider)?;
        Ok(Arc::new(Self {
            bundles: RwLock::new(Arc::new(bundles)),
            server_id: RwLock::new(spiffe_id_of(&key)),
            server_key: RwLock::new(Arc::new(key)),
            generation: AtomicU64::new(1),
            reloads: tokio::sync::watch::Sender::new(1),
            fingerprint: RwLock::new(fingerprint),
            sources,
            provider,
            reload_errors: RwLock::new(Vec::new()),
        }))
    }

    /// The bundles in force now.
    pub fn bundles(&self) -> Arc<TrustBundles> {
        self.bundles.read().expect("bundles lock").clone()
    }

    /// The SPIFFE ID of the serving SVID in force (its URI SAN), if it has
    /// one.
    pub fn server_spiffe_id(&self) -> Option<String> {
        self.server_id.read().expect("server id lock").clone()
    }

    /// Increases every time new material is swapped in.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Changes whenever new material is swapped in.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// What failed at the last reload, one message per source; empty when
    /// everything loaded (readiness reports these as stale trust).
    pub fn reload_errors(&self) -> Vec<String> {
        self.reload_errors
            .read()
            .expect("reload errors lock")
            .clone()
    }

    /// Unix seconds: the notAfter of the serving SVID in force, if it parses.
    pub fn server_not_after(&self) -> Option<i64> {
        use x509_parser::prelude::FromDer as _;
        let key = self.server_key.read().expect("server key lock").clone();
        let leaf = key.cert.first()?;
        let (_, cert) = x509_parser::prelude::X509Certificate::from_der(leaf.as_ref()).ok()?;
        Some(cert.validity().not_after.timestamp())
    }

    /// Re-reads the files if their content changed and swaps in what loaded.
    /// Each source fails alone: a broken bundle file keeps that trust
    /// domain's previous bundle, a broken serving SVID keeps the previous
    /// SVID, and everything else still updates. Returns whether anything was
    /// re-read, and what failed.
    pub fn reload_if_changed(&self) -> (bool, Vec<TlsError>) {
        let fp = self.sources.fingerprint();
        if *self.fingerprint.read().expect("fingerprint lock") == fp {
            return (false, Vec::new());
        }
        // Record the fingerprint first so a broken file is reported once,
        // not on every poll; a fixed file changes the fingerprint again.
        *self.fingerprint.write().expect("fingerprint lock") = fp;
        let previous = self.bundles();
        let (bundles, errors) = TrustBundles::load_lenient(
            &self.sources.domains,
            self.sources.bundle_dir.as_deref(),
            Some(&previous),
        );
        let mut errors: Vec<TlsError> = errors.into_iter().map(TlsError::from).collect();
        *self.bundles.write().expect("bundles lock") = Arc::new(bundles);
        match self.sources.load_server_key(&self.provider) {
            Ok(key) => {
                *self.server_id.write().expect("server id lock") = spiffe_id_of(&key);
                *self.server_key.write().expect("server key lock") = Arc::new(key);
            }
            Err(e) => errors.push(e),
        }
        *self.reload_errors.write().expect("reload errors lock") =
            errors.iter().map(|e| e.to_string()).collect();
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.reloads.send_replace(generation);
        (true, errors)
    }

    /// The rustls server config: dynamic SVID, client certificate requested,
    /// h2 only.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let verifier = DeferredSvidVerifier {
            algs: self.provider.signature_verification_algorithms,
        };
        let mut cfg = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(SvidResolver(self.clone())));
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// Polls the material's files every `interval` until `shutdown` resolves.
pub async fn reload_loop(
    material: Arc<TlsMaterial>,
    interval: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut shutdown = shutdown;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let m = material.clone();
        match tokio::task::spawn_blocking(move || m.reload_if_changed()).await {
            Ok((true, errors)) => {
                crate::ops::metrics::get().trust_reload_errors(errors.len());
                for e in errors {
                    tracing::error!(error = %e, "reload: keeping the previous version of this source");
                }
                let domains = material.bundles();
                let names: Vec<String> = domains.domains().iter().map(|d| d.to_string()).collect();
                tracing::info!(generation = material.generation(), trust_domains = %names.join(","), "reloaded trust bundles and serving SVID");
            }
            Ok((false, _)) => {}
            Err(e) => tracing::error!(error = %e, "reload task failed"),
        }
    }
}

#[derive(Debug)]
struct SvidResolver(Arc<TlsMaterial>);

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.server_key.read().expect("server key lock").clone())
    }
}

/// Requests a client certificate and verifies the handshake signature with
/// its key. It accepts any chain: the SVID verdict is
/// [`crate::identity::authenticate`]'s, enforced per RPC (see module docs).
#[derive(Debug)]
struct DeferredSvidVerifier {
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for DeferredSvidVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        // A missing certificate is reported as UNAUTHENTICATED per RPC.
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Several trust domains: hinting one root set would mislead clients.
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
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
