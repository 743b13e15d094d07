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
//! The SPIFFE Workload API is one more source of the same material
//! ([`MaterialSources::resolve`]): when it supplies the serving SVID, its
//! revision counter takes the place of the SVID files' content in the
//! fingerprint, and each rotation it pushes wakes the reload loop at once.
//! Its bundles (the agent's own and federated trust domains) join the file
//! bundles; for a trust domain named by both, the file wins (explicit
//! configuration over discovery).
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
use crate::identity::{Bundle, BundleError, TrustBundles, WorkloadApiError, WorkloadApiSource};

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
    /// The Workload API gave no usable material.
    #[error(transparent)]
    WorkloadApi(#[from] WorkloadApiError),
    /// A bundle the Workload API sent cannot be used.
    #[error("Workload API bundle of trust domain `{td}`: {reason}")]
    WorkloadApiBundle {
        /// The trust domain.
        td: String,
        /// Why.
        reason: String,
    },
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
    /// The serving SVID's PEM chain and key; `None` when the Workload API
    /// supplies it.
    server_files: Option<(PathBuf, PathBuf)>,
    workload_api: Option<WorkloadApiSource>,
}

impl MaterialSources {
    /// Everything a config names, connecting to the Workload API when it is
    /// the serving SVID's source. Precedence: `[server] workload_api`, then
    /// `[server] cert` + `key`, then `SPIFFE_ENDPOINT_SOCKET`; with none of
    /// them the start fails naming all three.
    pub async fn resolve(cfg: &Config) -> Result<Self, TlsError> {
        let mut sources = Self::from_config(cfg)?;
        let endpoint = match (&cfg.server.workload_api, &sources.server_files) {
            (Some(e), _) => e.clone(),
            (None, Some(_)) => return Ok(sources),
            (None, None) => crate::identity::endpoint_from_env().ok_or_else(|| {
                TlsError::ServerSvid(format!(
                    "no source: set [server] cert and key (PEM files), or [server] workload_api, \
                     or export {} (a SPIFFE Workload API endpoint)",
                    crate::identity::ENDPOINT_ENV
                ))
            })?,
        };
        let source =
            WorkloadApiSource::connect(&endpoint, crate::identity::DEFAULT_INITIAL_SYNC).await?;
        tracing::info!(
            endpoint = source.endpoint(),
            "serving SVID and bundles from the Workload API"
        );
        sources.workload_api = Some(source);
        Ok(sources)
    }

    /// The Workload API source, when one is in use.
    pub fn workload_api(&self) -> Option<&WorkloadApiSource> {
        self.workload_api.as_ref()
    }

    /// The files named by a config (no Workload API: see
    /// [`MaterialSources::resolve`]).
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
            server_files: cfg.server.cert.clone().zip(cfg.server.key.clone()),
            workload_api: None,
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
        if let Some((cert, key)) = &self.server_files {
            add(cert);
            add(key);
        }
        if let Some(w) = &self.workload_api {
            h.update(b"workload-api");
            h.update(w.revision().to_le_bytes());
        }
        h.finalize().into()
    }

    fn load_bundles(&self) -> Result<TrustBundles, TlsError> {
        let (bundles, mut errors) = self.load_bundles_lenient(None);
        match errors.is_empty() {
            true => Ok(bundles),
            false => Err(errors.remove(0)),
        }
    }

    /// The file bundles, then the Workload API's for every trust domain no
    /// file names. A source that fails keeps `previous` for its trust
    /// domain(s).
    fn load_bundles_lenient(
        &self,
        previous: Option<&TrustBundles>,
    ) -> (TrustBundles, Vec<TlsError>) {
        let (mut bundles, errors) =
            TrustBundles::load_lenient(&self.domains, self.bundle_dir.as_deref(), previous);
        let mut errors: Vec<TlsError> = errors.into_iter().map(TlsError::from).collect();
        let Some(w) = &self.workload_api else {
            return (bundles, errors);
        };
        let from_files: Vec<TrustDomain> = bundles.domains().into_iter().cloned().collect();
        match w.bundles() {
            Ok(list) => {
                for (td, roots) in list {
                    if from_files.contains(&td) {
                        continue;
                    }
                    match Bundle::from_der(roots) {
                        Ok(b) => bundles.insert(td, b),
                        Err(reason) => {
                            if let Some(b) = previous.and_then(|p| p.get(&td)) {
                                bundles.insert(td.clone(), b.clone());
                            }
                            errors.push(TlsError::WorkloadApiBundle {
                                td: td.to_string(),
                                reason,
                            });
                        }
                    }
                }
            }
            Err(e) => {
                // Withdrawn or closed: keep what was trusted until the agent
                // answers again rather than locking every caller out.
                if let Some(p) = previous {
                    for td in p.domains() {
                        if !from_files.contains(td)
                            && let Some(b) = p.get(td)
                        {
                            bundles.insert(td.clone(), b.clone());
                        }
                    }
                }
                errors.push(e.into());
            }
        }
        (bundles, errors)
    }

    fn load_server_key(&self, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
        let (certs, key, named) = match (&self.server_files, &self.workload_api) {
            (Some((cert, key)), _) => {
                let err = |p: &PathBuf, e: String| {
                    TlsError::ServerSvid(format!("`{}`: {e}", p.display()))
                };
                let certs = std::fs::read(cert)
                    .map_err(|e| e.to_string())
                    .and_then(|b| crate::pem::certs(&b))
                    .map_err(|e| err(cert, e))?;
                let der = std::fs::read(key)
                    .map_err(|e| e.to_string())
                    .and_then(|b| crate::pem::pkcs8_key(&b))
                    .map_err(|e| err(key, e))?;
                let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.to_vec()));
                (certs, der, format!("`{}`", key.display()))
            }
            (None, Some(w)) => {
                let svid = w.svid()?;
                (
                    svid.chain,
                    svid.key,
                    format!("Workload API `{}`", w.endpoint()),
                )
            }
            (None, None) => return Err(TlsError::ServerSvid("no source configured".into())),
        };
        CertifiedKey::from_der(certs, key, provider)
            .map_err(|e| TlsError::ServerSvid(format!("{named}: {e}")))
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

    /// The Workload API source, when one is in use.
    pub fn workload_api(&self) -> Option<&WorkloadApiSource> {
        self.sources.workload_api()
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
        let (bundles, mut errors) = self.sources.load_bundles_lenient(Some(&previous));
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

/// Polls the material's files every `interval`, and reloads at once when
/// the Workload API pushes a change, until `shutdown` resolves.
pub async fn reload_loop(
    material: Arc<TlsMaterial>,
    interval: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut shutdown = shutdown;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pushed = material.workload_api().map(|w| w.updates());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            closed = async {
                match pushed.as_mut() {
                    Some(u) => u.changed().await.is_err(),
                    None => std::future::pending().await,
                }
            } => {
                if closed {
                    // Shut down or failed for good: the poll keeps serving
                    // the last material (and reports its expiry as errors).
                    tracing::warn!("the Workload API source closed; no more rotations");
                    pushed = None;
                }
            }
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
