//! The enforcer's own TOML file (`taskmint enforce --config FILE`): which
//! issuers to follow and as whom, where Envoy reaches it, what a token must
//! say to pass, how stale the feed may grow, and where the cursor lives.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::IdentitySource;
use crate::config::{ConfigError, humantime_serde_compat};

/// `taskmint enforce`'s configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnforceConfig {
    /// `host:port` of each issuer replica; the feed is followed from one at
    /// a time, the next one taken when it fails.
    pub issuers: Vec<String>,
    /// The enforcer's X.509-SVID chain, PEM, leaf first (with `svid_key`
    /// and `bundle`), unless `workload_api` is set.
    #[serde(default)]
    pub svid: Option<PathBuf>,
    /// Its PKCS#8 key, PEM.
    #[serde(default)]
    pub svid_key: Option<PathBuf>,
    /// PEM roots that verify the issuers' serving SVIDs. With
    /// `workload_api`, optional (the agent's bundle is used).
    #[serde(default)]
    pub bundle: Option<PathBuf>,
    /// A SPIFFE Workload API endpoint (`unix:/path`) the SVID comes from.
    #[serde(default)]
    pub workload_api: Option<String>,
    /// The issuers' SPIFFE ID; defaults to
    /// `spiffe://<the enforcer's trust domain>/taskmint`.
    #[serde(default)]
    pub issuer_id: Option<String>,
    /// The name it acknowledges under: an expected subscriber in the
    /// issuer's `[[feed.subscribers]]`, bound there to this SVID.
    pub subscriber: String,
    /// Where Envoy's ext_authz filter reaches the `Check` service (plain
    /// HTTP/2: keep it on loopback or a pod-local address).
    pub listen: SocketAddr,
    /// `/metrics`, `/healthz` and `/readyz` over plain HTTP, if set (e.g.
    /// `127.0.0.1:9192`).
    #[serde(default)]
    pub ops_listen: Option<SocketAddr>,
    /// A bearer token must name one of these in `aud`.
    pub audiences: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "humantime_serde_compat")]
    pub leeway: Duration,
    /// A bearer token must carry `cnf.x5t#S256` and Envoy must pass the peer
    /// certificate it is bound to.
    #[serde(default = "yes")]
    pub require_cnf: bool,
    /// With no event or heartbeat from the feed for this long, every check
    /// is refused (503): a revocation might be on its way.
    #[serde(default = "default_max_staleness", with = "humantime_serde_compat")]
    pub max_staleness: Duration,
    /// Where the cursor and the deny entries are kept across restarts.
    pub state_dir: PathBuf,
    /// Remove the `authorization` header from requests it allows, so the
    /// service behind Envoy never sees the token.
    #[serde(default)]
    pub strip_bearer: bool,
    /// Allow requests on the deny set as last known when the feed is stale,
    /// instead of refusing them. A revocation made while the feed is cut off
    /// is then not enforced: only for services that prefer availability.
    #[serde(default)]
    pub insecure_fail_open_when_stale: bool,
    /// Verified tokens remembered (by SHA-256), so a token presented again
    /// skips the signature; times, binding and the deny set are checked on
    /// every request. 0 turns it off.
    #[serde(default = "default_token_cache")]
    pub verified_token_cache: usize,
    /// Base directory for relative paths (the config file's directory).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

fn default_leeway() -> Duration {
    Duration::from_secs(5)
}
fn default_max_staleness() -> Duration {
    Duration::from_secs(30)
}
fn default_token_cache() -> usize {
    16_384
}
fn yes() -> bool {
    true
}

impl EnforceConfig {
    /// Reads, resolves and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        crate::config::load_file(path, Self::from_toml)
    }

    /// Parses TOML text, resolving relative paths against `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let mut cfg: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        cfg.base_dir = base_dir.to_owned();
        for p in [
            cfg.svid.as_mut(),
            cfg.svid_key.as_mut(),
            cfg.bundle.as_mut(),
            Some(&mut cfg.state_dir),
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base_dir.join(&*p);
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the values (also after command-line overrides).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.issuers.is_empty() {
            return invalid("issuers must name at least one `host:port`".into());
        }
        for i in &self.issuers {
            if i.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return invalid(format!("issuers: `{i}` is not `host:port`"));
            }
        }
        if self.subscriber.trim().is_empty() {
            return invalid("subscriber must not be empty".into());
        }
        if self.audiences.is_empty() || self.audiences.iter().any(|a| a.is_empty()) {
            return invalid("audiences must list at least one non-empty audience".into());
        }
        if self.leeway > Duration::from_secs(300) {
            return invalid("leeway must be at most 5m".into());
        }
        if self.max_staleness < Duration::from_secs(1) {
            return invalid("max_staleness must be at least 1s".into());
        }
        match (&self.workload_api, &self.svid, &self.svid_key, &self.bundle) {
            (Some(_), None, None, _) => {}
            (Some(_), _, _, _) => {
                return invalid("set either workload_api or svid and svid_key, not both".into());
            }
            (None, Some(_), Some(_), Some(_)) => {}
            (None, _, _, _) => {
                return invalid(
                    "the enforcer needs an identity: svid, svid_key and bundle, or workload_api"
                        .into(),
                );
            }
        }
        if let Some(id) = &self.issuer_id
            && spiffe::SpiffeId::new(id).is_err()
        {
            return invalid(format!("issuer_id `{id}` is not a SPIFFE ID"));
        }
        Ok(())
    }

    /// The identity it presents to the issuers.
    pub fn identity(&self) -> IdentitySource {
        match &self.workload_api {
            Some(endpoint) => IdentitySource::WorkloadApi {
                endpoint: endpoint.clone(),
                bundle: self.bundle.clone(),
            },
            None => IdentitySource::Files {
                svid: self.svid.clone().unwrap_or_default(),
                svid_key: self.svid_key.clone().unwrap_or_default(),
                bundle: self.bundle.clone().unwrap_or_default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        issuers = ["127.0.0.1:8443", "issuer-2:8443"]
        svid = "svid.pem"
        svid_key = "svid.key"
        bundle = "bundle.pem"
        subscriber = "sidecar"
        listen = "127.0.0.1:9191"
        audiences = ["db"]
        state_dir = "state"
    "#;

    #[test]
    fn defaults_and_paths() {
        let c = EnforceConfig::from_toml(GOOD, Path::new("/etc/tm")).unwrap();
        assert_eq!(c.leeway, Duration::from_secs(5));
        assert_eq!(c.max_staleness, Duration::from_secs(30));
        assert!(c.require_cnf);
        assert!(!c.strip_bearer);
        assert!(!c.insecure_fail_open_when_stale);
        assert_eq!(c.state_dir, Path::new("/etc/tm/state"));
        assert_eq!(c.svid.as_deref(), Some(Path::new("/etc/tm/svid.pem")));
    }

    fn refused(text: &str) -> String {
        EnforceConfig::from_toml(text, Path::new("/x"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn refuses_what_cannot_work() {
        let e = refused(&GOOD.replace(r#""127.0.0.1:8443", "issuer-2:8443""#, ""));
        assert!(e.contains("issuers must name"), "{e}");
        let e = refused(&GOOD.replace("issuer-2:8443", "issuer-2"));
        assert!(e.contains("`issuer-2` is not `host:port`"), "{e}");
        let e = refused(&GOOD.replace(r#"["db"]"#, "[]"));
        assert!(e.contains("audiences"), "{e}");
        let e = refused(&GOOD.replace(r#"svid_key = "svid.key""#, ""));
        assert!(e.contains("needs an identity"), "{e}");
        let e = refused(&format!("{GOOD}\nworkload_api = \"unix:/x\""));
        assert!(e.contains("not both"), "{e}");
        let e = refused(&format!("{GOOD}\nmax_staleness = \"0s\""));
        assert!(e.contains("max_staleness"), "{e}");
        let e = refused(&format!("{GOOD}\nfail_open = true"));
        assert!(e.contains("unknown field `fail_open`"), "{e}");
        let e = refused(&format!("{GOOD}\nissuer_id = \"https://x\""));
        assert!(e.contains("issuer_id"), "{e}");
    }

    #[test]
    fn workload_api_alone_is_an_identity() {
        let text = GOOD
            .replace(
                r#"svid = "svid.pem""#,
                r#"workload_api = "unix:/run/agent.sock""#,
            )
            .replace(r#"svid_key = "svid.key""#, "")
            .replace(r#"bundle = "bundle.pem""#, "");
        let c = EnforceConfig::from_toml(&text, Path::new("/x")).unwrap();
        assert_eq!(
            c.identity(),
            IdentitySource::WorkloadApi {
                endpoint: "unix:/run/agent.sock".into(),
                bundle: None
            }
        );
    }
}
