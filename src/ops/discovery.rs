//! The discovery listener (`[discovery]`): plain HTTPS, verified by relying
//! parties with web PKI, answering three documents that need no client
//! certificate:
//!
//! - `/.well-known/openid-configuration`: OpenID Connect Discovery 1.0 for
//!   the JWT-SVIDs this issuer signs. Its `issuer` is the `iss` those tokens
//!   carry (`jwt.issuer`). taskmint is not a full OpenID Provider (no
//!   authorization or token endpoint): the document exists so that OIDC
//!   relying parties (cloud IAM federation, Vault, JOSE libraries) find the
//!   keys the standard way.
//! - `/keys` (the `jwks_uri`): the JWT-SVID signing keys as a standard JWKS,
//!   `use: "sig"` with `alg` and `kid` (standard JOSE libraries refuse the
//!   SPIFFE bundle's `use: "jwt-svid"`).
//! - `/`: the trust domain's SPIFFE bundle, for the `https_web` profile of
//!   SPIFFE Federation (where SPIRE serves it too): the same document
//!   `GetTrustBundle` returns, X.509 roots (`use: "x509-svid"`, `x5c`) and
//!   JWT keys (`use: "jwt-svid"`), `spiffe_sequence`, `spiffe_refresh_hint`.
//!
//! Both key documents are derived from [`Issuer::trust_bundle`], so the
//! keys served here and over gRPC never differ; they are rebuilt when the
//! bundles reload and at most a second after the served keys change.
//!
//! With `[ssf]` it also serves the Shared Signals transmitter's metadata
//! and poll endpoint ([`crate::ssf::Transmitter`]).
//!
//! Bounded like the gRPC listener: a connection cap, handshake, header and
//! connection timeouts, small request headers, GET and HEAD only (405
//! otherwise, 404 for any other path). The server certificate and key are
//! re-read when they change.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, DiscoveryConfig};
use crate::issuer::Issuer;
use crate::tls::TlsMaterial;
use crate::trust::{REFRESH_HINT_SECS, TrustBundleDoc};

/// The path of the OpenID Connect discovery document.
pub const OPENID_CONFIGURATION_PATH: &str = "/.well-known/openid-configuration";
/// The path of the JWKS (`jwks_uri`).
pub const JWKS_PATH: &str = "/keys";
/// The path of the SPIFFE bundle endpoint.
pub const BUNDLE_PATH: &str = "/";

/// How long built documents are reused before the keys are read again
/// (a bundle reload rebuilds them at once).
const FRESH_FOR: Duration = Duration::from_secs(1);
/// How long building the documents may wait on the store.
const BUILD_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read (hyper's minimum buffer).
const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Why the discovery listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The listen address could not be bound.
    #[error("cannot listen for discovery on `{addr}`: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The server certificate or key is unusable.
    #[error("discovery certificate: {0}")]
    Cert(String),
}

/// The documents, as served.
#[derive(Debug)]
struct Documents {
    jwks: Bytes,
    bundle: Bytes,
}

#[derive(Debug)]
struct Cached {
    generation: u64,
    built: Instant,
    docs: Arc<Documents>,
}

/// Answers the discovery requests of one issuer.
#[derive(Debug)]
pub struct Discovery {
    issuer: Arc<Issuer>,
    material: Arc<TlsMaterial>,
    openid: Bytes,
    /// One builder at a time; the others wait for its result.
    cache: tokio::sync::Mutex<Option<Cached>>,
    /// The SSF transmitter's paths, when `[ssf]` is configured.
    ssf: Option<crate::ssf::Transmitter>,
}

/// The OpenID Connect discovery document for tokens whose `iss` is `issuer`
/// and whose keys are at `base_url` + [`JWKS_PATH`].
pub fn openid_configuration(issuer: &str, base_url: &str) -> serde_json::Value {
    serde_json::json!({
        "issuer": issuer,
        "jwks_uri": format!("{base_url}{JWKS_PATH}"),
        // Required by OIDC Discovery; taskmint signs tokens, it does not run
        // an authorization flow, so these describe the tokens only.
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "claims_supported": ["sub", "aud", "exp", "iat", "nbf", "iss", "jti", "cnf"],
    })
}

/// The standard JWKS of a SPIFFE bundle: its `use: "jwt-svid"` keys as
/// `use: "sig"`, each with its `alg` and `kid`; X.509 roots left out.
pub fn oidc_jwks(spiffe_bundle: &serde_json::Value) -> serde_json::Value {
    let keys: Vec<serde_json::Value> = spiffe_bundle["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|k| k["use"] == "jwt-svid")
        .map(|k| {
            let mut k = k.clone();
            k["use"] = "sig".into();
            k
        })
        .collect();
    serde_json::json!({ "keys": keys })
}

impl Discovery {
    /// Serves the keys of `issuer`; `base_url` is where relying parties
    /// reach the listener.
    pub fn new(
        issuer: Arc<Issuer>,
        material: Arc<TlsMaterial>,
        jwt_issuer: &str,
        base_url: &str,
    ) -> Self {
        let openid = openid_configuration(jwt_issuer, base_url);
        Self {
            issuer,
            material,
            openid: Bytes::from(serde_json::to_vec_pretty(&openid).expect("JSON serialises")),
            cache: tokio::sync::Mutex::new(None),
            ssf: None,
        }
    }

    /// Also answers the SSF transmitter's paths.
    pub fn with_ssf(mut self, ssf: Option<crate::ssf::Transmitter>) -> Self {
        self.ssf = ssf;
        self
    }

    /// The answer to a request on the listener: the transmitter's paths go
    /// to it (a poll has a body), the rest to [`Discovery::respond`].
    async fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match &self.ssf {
            Some(ssf) if ssf.serves(req.uri().path()) => ssf.respond(req).await,
            _ => self.respond(&req).await,
        }
    }

    async fn documents(&self) -> Result<Arc<Documents>, String> {
        let mut cache = self.cache.lock().await;
        let generation = self.material.generation();
        if let Some(c) = &*cache
            && c.generation == generation
            && c.built.elapsed() < FRESH_FOR
        {
            return Ok(c.docs.clone());
        }
        let bundle: TrustBundleDoc =
            tokio::time::timeout(BUILD_TIMEOUT, self.issuer.trust_bundle())
                .await
                .map_err(|_| "the store did not answer in time".to_owned())?
                .map_err(|e| e.to_string())?;
        let parsed: serde_json::Value =
            serde_json::from_str(&bundle.jwks).map_err(|e| e.to_string())?;
        let docs = Arc::new(Documents {
            jwks: Bytes::from(
                serde_json::to_vec_pretty(&oidc_jwks(&parsed)).expect("JSON serialises"),
            ),
            bundle: Bytes::from(bundle.jwks),
        });
        *cache = Some(Cached {
            generation,
            built: Instant::now(),
            docs: docs.clone(),
        });
        Ok(docs)
    }

    /// The answer to one request.
    pub async fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        #[derive(Clone, Copy)]
        enum Doc {
            Openid,
            Jwks,
            Bundle,
        }
        let doc = match req.uri().path() {
            OPENID_CONFIGURATION_PATH => Doc::Openid,
            JWKS_PATH => Doc::Jwks,
            BUNDLE_PATH => Doc::Bundle,
            _ => return plain(StatusCode::NOT_FOUND, "not found\n"),
        };
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and HEAD are served\n",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let body = match doc {
            Doc::Openid => self.openid.clone(),
            Doc::Jwks | Doc::Bundle => match self.documents().await {
                Ok(d) => match doc {
                    Doc::Jwks => d.jwks.clone(),
                    _ => d.bundle.clone(),
                },
                Err(e) => {
                    tracing::warn!(error = %e, path = req.uri().path(), "discovery: cannot read the trust bundle");
                    let mut r = plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the keys cannot be read right now; try again\n",
                    );
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                    return r;
                }
            },
        };
        let mut r = Response::new(Full::new(body));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // Relying parties may cache for as long as the bundle asks to be
        // re-fetched after.
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_str(&format!("public, max-age={REFRESH_HINT_SECS}")).expect("ASCII"),
        );
        // Public keys: browsers' JOSE libraries may fetch them too.
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        r
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The listener's certificate, re-read from its files when they change.
struct ServingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, [u8; 32])>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("cert", &self.cert)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("not poisoned").0.clone())
    }
}

impl ServingCert {
    fn load(cfg: &DiscoveryConfig) -> Result<Self, DiscoveryError> {
        let (ck, fp) = Self::read(&cfg.cert, &cfg.key)?;
        Ok(Self {
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            current: RwLock::new((Arc::new(ck), fp)),
        })
    }

    fn read(
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<(CertifiedKey, [u8; 32]), DiscoveryError> {
        let err = |p: &std::path::Path, e: String| {
            DiscoveryError::Cert(format!("`{}`: {e}", p.display()))
        };
        let cert_pem = std::fs::read(cert).map_err(|e| err(cert, e.to_string()))?;
        let key_pem =
            zeroize::Zeroizing::new(std::fs::read(key).map_err(|e| err(key, e.to_string()))?);
        let fp: [u8; 32] = Sha256::new()
            .chain_update(&cert_pem)
            .chain_update(&*key_pem)
            .finalize()
            .into();
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(err(cert, "no CERTIFICATE in the file".into()));
        }
        let der = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| err(key, format!("no usable private key: {e}")))?;
        let ck = CertifiedKey::from_der(chain, der, &crate::tls::provider())
            .map_err(|e| err(key, e.to_string()))?;
        Ok((ck, fp))
    }

    /// Swaps in the files' new content when it changed and is usable.
    fn reload(&self) {
        match Self::read(&self.cert, &self.key) {
            Ok((ck, fp)) => {
                let mut current = self.current.write().expect("not poisoned");
                if current.1 != fp {
                    *current = (Arc::new(ck), fp);
                    tracing::info!(cert = %self.cert.display(), "discovery certificate reloaded");
                }
            }
            // Mid-rotation (a new certificate beside the old key) or a bad
            // file: keep serving the one that worked.
            Err(e) => tracing::warn!(error = %e, "discovery certificate not reloaded"),
        }
    }
}

/// Starts the discovery listener when `[discovery]` is configured: on
/// `listener` when given (tests bind port 0), else on `discovery.listen`.
/// Runs until `stop` changes.
pub async fn spawn(
    cfg: &Config,
    listener: Option<TcpListener>,
    issuer: Arc<Issuer>,
    material: Arc<TlsMaterial>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<tokio::task::JoinHandle<()>>, DiscoveryError> {
    let Some(d) = cfg.discovery.clone() else {
        return Ok(None);
    };
    let cert = Arc::new(ServingCert::load(&d)?);
    let listener = match listener {
        Some(l) => l,
        None => TcpListener::bind(d.listen)
            .await
            .map_err(|source| DiscoveryError::Bind {
                addr: d.listen,
                source,
            })?,
    };
    let bound = listener
        .local_addr()
        .map_err(|source| DiscoveryError::Bind {
            addr: d.listen,
            source,
        })?;
    let base_url = d.base_url(bound);
    let jwt_issuer = cfg.jwt_issuer();
    if jwt_issuer != base_url {
        // OIDC relying parties compare the two: a mismatch fails them.
        tracing::warn!(issuer = %jwt_issuer, url = %base_url, "jwt.issuer is not the discovery URL; OpenID Connect relying parties will refuse the tokens (set jwt.issuer to it)");
    }
    let mut tls = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| DiscoveryError::Cert(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let ssf = crate::ssf::Transmitter::new(
        cfg,
        issuer.revocations().clone(),
        issuer.system_actor(),
        &base_url,
    );
    let discovery =
        Arc::new(Discovery::new(issuer, material, &jwt_issuer, &base_url).with_ssf(ssf));
    tracing::info!(addr = %bound, url = %base_url, "discovery is serving");
    let reload_every = cfg.trust.reload_interval;
    Ok(Some(tokio::spawn(serve(
        discovery,
        TlsAcceptor::from(Arc::new(tls)),
        cert,
        reload_every,
        listener,
        d,
        stop,
    ))))
}

async fn serve(
    discovery: Arc<Discovery>,
    acceptor: TlsAcceptor,
    cert: Arc<ServingCert>,
    reload_every: Duration,
    listener: TcpListener,
    cfg: DiscoveryConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections as usize));
    let mut connections = tokio::task::JoinSet::new();
    let mut reload = tokio::time::interval(reload_every);
    reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "discovery: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = reload.tick() => {
                let cert = cert.clone();
                let _ = tokio::task::spawn_blocking(move || cert.reload()).await;
                continue;
            }
            _ = stop.changed() => break,
        };
        while connections.try_join_next().is_some() {}
        // Over the cap the connection is closed at once.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "discovery: connection limit reached");
            continue;
        };
        let (acceptor, discovery, cfg) = (acceptor.clone(), discovery.clone(), cfg.clone());
        connections.spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(cfg.handshake_timeout, acceptor.accept(tcp)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "discovery: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "discovery: TLS handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let discovery = discovery.clone();
                async move { Ok::<_, std::convert::Infallible>(discovery.route(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(cfg.request_timeout)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(tls), service);
            match tokio::time::timeout(cfg.connection_timeout, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "discovery: connection ended"),
                Err(_) => tracing::debug!(%peer, "discovery: connection timeout reached"),
            }
        });
    }
    // Answers are cheap to ask again: open connections end with the server.
    connections.shutdown().await;
}
