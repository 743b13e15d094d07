//! `[discovery]`: the optional HTTPS listener for relying parties (OIDC
//! discovery, the JWKS, the SPIFFE bundle endpoint; `src/ops/discovery.rs`),
//! its web PKI server certificate and its bounds. Off unless the section is
//! present.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::humantime_serde_compat;

/// The discovery listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Socket address, e.g. `0.0.0.0:8444`.
    pub listen: SocketAddr,
    /// PEM chain, leaf first: a server certificate relying parties verify
    /// with web PKI (not an SVID). Re-read when it changes.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The `https://` URL relying parties reach this listener at, without a
    /// trailing slash; `jwks_uri` is built from it. Defaults to
    /// `https://<listen>`; required when `listen` is a wildcard address.
    #[serde(default)]
    pub url: Option<String>,
    /// Connections open at once; past it a new one is closed when accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// How long a TLS handshake may take.
    #[serde(default = "default_timeout", with = "humantime_serde_compat")]
    pub handshake_timeout: Duration,
    /// How long a request's headers may take to arrive.
    #[serde(default = "default_timeout", with = "humantime_serde_compat")]
    pub request_timeout: Duration,
    /// Longest a connection stays open, however busy, so the slots under
    /// `max_connections` keep turning over.
    #[serde(
        default = "default_connection_timeout",
        with = "humantime_serde_compat"
    )]
    pub connection_timeout: Duration,
}

fn default_max_connections() -> u32 {
    256
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_connection_timeout() -> Duration {
    Duration::from_secs(60)
}

impl DiscoveryConfig {
    /// Resolves relative paths against `base`.
    pub(super) fn resolve_paths(&mut self, base: &std::path::Path) {
        for p in [&mut self.cert, &mut self.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Checks the values.
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err("discovery.max_connections must be at least 1".into());
        }
        for (name, d) in [
            ("handshake_timeout", self.handshake_timeout),
            ("request_timeout", self.request_timeout),
            ("connection_timeout", self.connection_timeout),
        ] {
            if d < Duration::from_millis(100) {
                return Err(format!("discovery.{name} must be at least 100ms"));
            }
        }
        match &self.url {
            Some(url) => {
                let rest = url
                    .strip_prefix("https://")
                    .ok_or_else(|| format!("discovery.url `{url}` must be an https:// URL"))?;
                if rest.is_empty() || url.ends_with('/') || url.contains(['?', '#']) {
                    return Err(format!(
                        "discovery.url `{url}` must name a host, with no trailing slash, \
                         query or fragment"
                    ));
                }
            }
            None if self.listen.ip().is_unspecified() => {
                return Err(format!(
                    "discovery.url is required when discovery.listen is a wildcard \
                     address (`{}`): relying parties need the name they reach it by",
                    self.listen
                ));
            }
            None => {}
        }
        Ok(())
    }

    /// The base URL relying parties use, for a listener bound to `bound`.
    pub fn base_url(&self, bound: SocketAddr) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| format!("https://{bound}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(listen: &str, url: Option<&str>) -> DiscoveryConfig {
        DiscoveryConfig {
            listen: listen.parse().unwrap(),
            cert: "d.pem".into(),
            key: "d.key".into(),
            url: url.map(str::to_owned),
            max_connections: default_max_connections(),
            handshake_timeout: default_timeout(),
            request_timeout: default_timeout(),
            connection_timeout: default_connection_timeout(),
        }
    }

    #[test]
    fn the_url_defaults_to_the_bound_address_and_must_be_https() {
        let c = cfg("127.0.0.1:8444", None);
        c.validate().unwrap();
        assert_eq!(
            c.base_url("127.0.0.1:8444".parse().unwrap()),
            "https://127.0.0.1:8444"
        );
        let c = cfg("[::1]:0", None);
        assert_eq!(
            c.base_url("[::1]:9000".parse().unwrap()),
            "https://[::1]:9000"
        );
        let c = cfg("0.0.0.0:8444", Some("https://keys.example.org"));
        c.validate().unwrap();
        assert_eq!(
            c.base_url("0.0.0.0:8444".parse().unwrap()),
            "https://keys.example.org"
        );
        for bad in [
            "http://keys.example.org",
            "https://",
            "https://keys.example.org/",
            "https://keys.example.org?x=1",
        ] {
            let e = cfg("127.0.0.1:8444", Some(bad)).validate().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        let e = cfg("0.0.0.0:8444", None).validate().unwrap_err();
        assert!(e.contains("discovery.url is required"), "{e}");
        let mut c = cfg("127.0.0.1:8444", None);
        c.max_connections = 0;
        assert!(c.validate().unwrap_err().contains("max_connections"));
    }
}
