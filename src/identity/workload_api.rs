//! The SPIFFE Workload API (a SPIRE agent's socket) as a source of X.509
//! material: the current X.509-SVID with its key, and the bundle of every
//! trust domain the agent says to trust (its own and federated ones).
//!
//! The client is the `spiffe` crate's [`X509Source`]: it keeps the
//! `FetchX509SVID` stream open, reconnects with backoff, and swaps in each
//! rotation. This module only converts what it holds into rustls types and
//! names the endpoint in every error. The issuer ([`crate::tls`]) and the
//! client ([`crate::client`]) both read it at each new handshake, so a
//! rotation reaches new connections without touching open ones.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spiffe::{SpiffeId, TrustDomain, X509Source};

/// The environment variable SPIFFE defines for the Workload API endpoint.
pub const ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// How long a start waits for the first SVID before giving up.
pub const DEFAULT_INITIAL_SYNC: Duration = Duration::from_secs(30);

/// Why the Workload API gave no usable material.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadApiError {
    /// The endpoint is not a `unix:` or `tcp:` URI.
    #[error(
        "Workload API endpoint `{endpoint}`: {reason} (expected `unix:///path/to/agent.sock` or `tcp://host:port`)"
    )]
    Endpoint {
        /// As given.
        endpoint: String,
        /// Why it was refused.
        reason: String,
    },
    /// No X.509-SVID arrived at the start.
    #[error("no X.509-SVID from the Workload API at `{endpoint}`: {reason}")]
    Fetch {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The source holds nothing usable now (withdrawn, expired, closed).
    #[error("the Workload API at `{endpoint}` has no usable X.509-SVID now: {reason}")]
    Unavailable {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
}

/// The current X.509-SVID from the Workload API, as rustls types.
pub struct WorkloadSvid {
    /// The SVID's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Leaf first, then any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key (PKCS#8).
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for WorkloadSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadSvid")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// A live connection to the Workload API; cheap to clone (one stream).
#[derive(Clone)]
pub struct WorkloadApiSource {
    source: Arc<X509Source>,
    endpoint: Arc<str>,
}

impl std::fmt::Debug for WorkloadApiSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadApiSource")
            .field("endpoint", &self.endpoint)
            .field("revision", &self.revision())
            .finish()
    }
}

/// `SPIFFE_ENDPOINT_SOCKET`, when set and not empty.
pub fn endpoint_from_env() -> Option<String> {
    std::env::var(ENDPOINT_ENV).ok().filter(|v| !v.is_empty())
}

/// An absolute path alone means a unix socket; anything else must be a
/// SPIFFE endpoint URI (`unix:///…`, `unix:/…`, `tcp://host:port`).
fn normalise(endpoint: &str) -> String {
    if endpoint.starts_with('/') {
        format!("unix://{endpoint}")
    } else {
        endpoint.to_owned()
    }
}

impl WorkloadApiSource {
    /// Connects and waits (at most `initial_sync`) for the first X.509-SVID.
    pub async fn connect(endpoint: &str, initial_sync: Duration) -> Result<Self, WorkloadApiError> {
        let uri = normalise(endpoint);
        spiffe::transport::Endpoint::parse(&uri).map_err(|e| WorkloadApiError::Endpoint {
            endpoint: endpoint.to_owned(),
            reason: e.to_string(),
        })?;
        let source = X509Source::builder()
            .endpoint(&uri)
            .initial_sync_timeout(initial_sync)
            .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(5))
            .build()
            .await
            .map_err(|e| WorkloadApiError::Fetch {
                endpoint: uri.clone(),
                reason: match e {
                    spiffe::X509SourceError::InitialSyncTimeout => format!(
                        "none within {} (is the agent running, and is this workload registered?)",
                        humantime::format_duration(initial_sync)
                    ),
                    other => error_chain(&other),
                },
            })?;
        Ok(Self {
            source: Arc::new(source),
            endpoint: uri.into(),
        })
    }

    /// The endpoint URI.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn unavailable(&self, e: &spiffe::X509SourceError) -> WorkloadApiError {
        WorkloadApiError::Unavailable {
            endpoint: self.endpoint.to_string(),
            reason: error_chain(e),
        }
    }

    /// The SVID the agent names as default (the first one it sends).
    pub fn svid(&self) -> Result<WorkloadSvid, WorkloadApiError> {
        let svid = self.source.svid().map_err(|e| self.unavailable(&e))?;
        Ok(WorkloadSvid {
            spiffe_id: svid.spiffe_id().clone(),
            chain: svid
                .cert_chain()
                .iter()
                .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
                .collect(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                svid.private_key().as_bytes().to_vec(),
            )),
        })
    }

    /// The roots of every trust domain the agent says to trust, federated
    /// ones included, sorted by trust domain.
    pub fn bundles(
        &self,
    ) -> Result<Vec<(TrustDomain, Vec<CertificateDer<'static>>)>, WorkloadApiError> {
        let set = self.source.bundle_set().map_err(|e| self.unavailable(&e))?;
        let mut out: Vec<_> = set
            .iter()
            .map(|(td, b)| {
                let roots = b
                    .authorities()
                    .iter()
                    .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
                    .collect();
                (td.clone(), roots)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The roots of one trust domain, if the agent sent its bundle.
    pub fn bundle(&self, td: &TrustDomain) -> Option<Vec<CertificateDer<'static>>> {
        let b = self.source.try_bundle_for_trust_domain(td)?;
        Some(
            b.authorities()
                .iter()
                .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
                .collect(),
        )
    }

    /// Advances on every change the agent pushed (rotation, new bundle,
    /// withdrawal): the reloader compares it like a file's content.
    pub fn revision(&self) -> u64 {
        self.source.updated().last()
    }

    /// A handle that wakes on each change.
    pub fn updates(&self) -> spiffe::X509SourceUpdates {
        self.source.updated()
    }

    /// Closes the stream to the agent.
    pub async fn shutdown(&self) {
        self.source.shutdown().await;
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let next = inner.to_string();
        if !s.contains(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_malformed_endpoint_is_named() {
        let e = WorkloadApiSource::connect("http://agent", Duration::from_millis(50))
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("`http://agent`"), "{msg}");
        assert!(msg.contains("unix:///path/to/agent.sock"), "{msg}");
    }

    #[tokio::test]
    async fn a_missing_socket_times_out_naming_it() {
        let e = WorkloadApiSource::connect("/nonexistent/agent.sock", Duration::from_millis(300))
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("unix:///nonexistent/agent.sock"), "{msg}");
        assert!(msg.contains("none within 300ms"), "{msg}");
    }
}
