//! The configuration tree (`taskmint.toml`): what to listen on, whom to trust,
//! which keys sign, where state lives, and the minting limits.
//!
//! Relative paths in the file are resolved against the directory that holds
//! the file, so a config and the material next to it can move together.
//! [`Config::validate`] is the only gate: a config that passes it starts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use spiffe::TrustDomain;

mod discovery;
mod limits;
mod listen;
mod ssf;
mod store;
pub use discovery::DiscoveryConfig;
pub use limits::{LimitsConfig, RateConfig};
pub use listen::{ListenConfig, OpsConfig};
pub use ssf::{MIN_TOKEN_LEN, ReceiverConfig, SecretToken, SsfConfig, SsfDelivery};
pub use store::{STORE_URL_ENV, StoreConfig};

/// A configuration problem, found while reading or validating the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("cannot parse config `{path}`: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The issuer's own trust domain: its SVID, signing CA and JWT keys belong to it.
    pub trust_domain: String,
    /// Network settings.
    #[serde(default)]
    pub listen: ListenConfig,
    /// Trust bundles of every trust domain whose workloads may call (may be
    /// left out when the Workload API supplies them).
    #[serde(default)]
    pub trust: TrustConfig,
    /// The issuer's own serving SVID (may be left out when
    /// `SPIFFE_ENDPOINT_SOCKET` names the Workload API).
    #[serde(default)]
    pub server: ServerConfig,
    /// The CA that signs per-task X.509-SVIDs.
    pub ca: CaConfig,
    /// The key that signs per-task JWT-SVIDs.
    pub jwt: JwtConfig,
    /// Durable state.
    pub store: StoreConfig,
    /// Minting limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// SPIFFE IDs that may revoke, complete or inspect anything.
    #[serde(default)]
    pub admins: Vec<String>,
    /// The revocation feed.
    #[serde(default)]
    pub feed: FeedConfig,
    /// The Cedar policy and the groups it can name.
    pub policy: PolicyConfig,
    /// Who is accountable for each task.
    #[serde(default)]
    pub ownership: OwnershipConfig,
    /// The operations listener (metrics and probes).
    #[serde(default)]
    pub ops: OpsConfig,
    /// The HTTPS listener for relying parties; off unless present.
    #[serde(default)]
    pub discovery: Option<DiscoveryConfig>,
    /// The Shared Signals transmitter (served by `[discovery]`); off unless
    /// present.
    #[serde(default)]
    pub ssf: Option<SsfConfig>,
    /// The directory relative paths were resolved against (not in the file).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// Trust bundles, one per trust domain (bundles are never merged).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// Explicit trust domains and the PEM file holding each one's roots.
    #[serde(default)]
    pub domains: Vec<TrustDomainConfig>,
    /// Optional directory of federated bundles: every `<trust-domain>.pem`
    /// file in it is the bundle of that trust domain. Files appearing later
    /// are picked up by the reloader, so a federation can be added live.
    #[serde(default)]
    pub bundle_dir: Option<PathBuf>,
    /// How often bundle files and the serving SVID are checked for changes.
    #[serde(default = "default_reload_interval", with = "humantime_serde_compat")]
    pub reload_interval: Duration,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            domains: Vec::new(),
            bundle_dir: None,
            reload_interval: default_reload_interval(),
        }
    }
}

/// One trust domain and its bundle file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustDomainConfig {
    /// Trust domain name, e.g. `example.org`.
    pub name: String,
    /// PEM file with the trust domain's root certificates.
    pub bundle: PathBuf,
}

/// The issuer's serving X.509-SVID: PEM files, or a SPIFFE Workload API
/// (a SPIRE agent's socket), which then also supplies trust bundles.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// PEM chain, leaf first.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM PKCS#8 private key.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Workload API endpoint, e.g. `unix:///run/spire/agent.sock`. Without it
    /// and without `cert`/`key`, `SPIFFE_ENDPOINT_SOCKET` is used.
    #[serde(default)]
    pub workload_api: Option<String>,
}

/// The per-task X.509 signing CA.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// PEM chain of the signing CA, its own certificate first, up to (not
    /// including) the trust domain root. Sent after each minted leaf.
    pub cert: PathBuf,
    /// PEM PKCS#8 private key of the signing CA.
    pub key: PathBuf,
    /// How long a CRL is valid (its nextUpdate).
    #[serde(default = "default_crl_validity", with = "humantime_serde_compat")]
    pub crl_validity: Duration,
}

/// The JWT-SVID signing key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// PEM PKCS#8 P-256 private key (ES256).
    pub key: PathBuf,
    /// Value of the `iss` claim; defaults to `spiffe://<trust_domain>/taskmint`.
    #[serde(default)]
    pub issuer: Option<String>,
}

/// The policy file and the groups policies can name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Cedar policy file; re-read when it changes and on SIGHUP.
    pub file: PathBuf,
    /// How often the file is checked for changes.
    #[serde(default = "default_reload_interval", with = "humantime_serde_compat")]
    pub reload_interval: Duration,
    /// Named groups of workloads (`Group::"name"` in policies).
    #[serde(default)]
    pub groups: Vec<GroupConfig>,
}

/// A group of workloads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// The group's name.
    pub name: String,
    /// SPIFFE ID patterns (`*` = one segment, trailing `/**` = any rest).
    pub members: Vec<String>,
}

/// Accountable ownership of tasks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnershipConfig {
    /// Refuse tasks that end up with no owner.
    #[serde(default)]
    pub require_owner: bool,
    /// First match wins: the owner of tasks begun by matching workloads.
    #[serde(default)]
    pub rules: Vec<OwnerRule>,
}

/// Maps workloads to an accountable owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerRule {
    /// SPIFFE ID pattern.
    pub pattern: String,
    /// Team or person accountable, e.g. `team-payments` or `alice@example.org`.
    pub owner: String,
}

/// The revocation feed and delivery evidence.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// Interval of heartbeats on every watch stream.
    #[serde(default = "default_heartbeat", with = "humantime_serde_compat")]
    pub heartbeat_interval: Duration,
    /// Messages buffered per subscriber; a subscriber that falls this far
    /// behind is cut off and told to resume from its cursor.
    #[serde(default = "default_subscriber_buffer")]
    pub subscriber_buffer: usize,
    /// How long an event stays in the log after its credentials expired.
    #[serde(default = "default_retention", with = "humantime_serde_compat")]
    pub retention: Duration,
    /// How long an expected subscriber has to acknowledge an event.
    #[serde(default = "default_ack_deadline", with = "humantime_serde_compat")]
    pub ack_deadline: Duration,
    /// How often task deadlines, overdue acknowledgements and retention are checked.
    #[serde(default = "default_reaper_interval", with = "humantime_serde_compat")]
    pub reaper_interval: Duration,
    /// Subscribers expected to acknowledge every event.
    #[serde(default)]
    pub subscribers: Vec<SubscriberConfig>,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: default_heartbeat(),
            subscriber_buffer: default_subscriber_buffer(),
            retention: default_retention(),
            ack_deadline: default_ack_deadline(),
            reaper_interval: default_reaper_interval(),
            subscribers: Vec::new(),
        }
    }
}

/// A subscriber expected to acknowledge revocations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriberConfig {
    /// Name it acknowledges under.
    pub name: String,
    /// The only SPIFFE ID allowed to acknowledge under that name.
    pub spiffe_id: String,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_crl_validity() -> Duration {
    Duration::from_secs(60 * 60)
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(10)
}
fn default_subscriber_buffer() -> usize {
    1024
}
fn default_retention() -> Duration {
    Duration::from_secs(24 * 60 * 60)
}
fn default_ack_deadline() -> Duration {
    Duration::from_secs(30)
}
fn default_reaper_interval() -> Duration {
    Duration::from_secs(1)
}

/// Parses a duration such as `90s`, `5m` or `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration `{text}`: {e} (use e.g. `90s`, `5m`, `1h`)"))?;
    if d.subsec_nanos() != 0 {
        return Err(format!("invalid duration `{text}`: whole seconds only"));
    }
    Ok(d)
}

/// Durations in the file are written as text (`5m`), like on the command line.
pub(crate) mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration `{text}`: {e} (use e.g. `90s`, `5m`, `1h`)"
            ))
        })
    }
}

/// Reads the TOML file at `path` and hands its text and directory (what
/// relative paths in it are relative to) to `parse`; a parse error names
/// the file. The issuer's config and the enforcer's both load this way.
pub(crate) fn load_file<T>(
    path: &Path,
    parse: impl FnOnce(&str, &Path) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parse(&text, base).map_err(|e| match e {
        ConfigError::Parse { message, .. } => ConfigError::Parse {
            path: path.to_owned(),
            message,
        },
        other => other,
    })
}

impl Config {
    /// Reads, resolves and validates the config at `path`; a PostgreSQL URL
    /// in [`STORE_URL_ENV`] replaces `[store] url`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let env_url = std::env::var(STORE_URL_ENV).ok().filter(|u| !u.is_empty());
        load_file(path, |text, base| Self::from_toml_env(text, base, env_url))
    }

    /// Parses TOML text, resolving relative paths against `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        Self::from_toml_env(text, base_dir, None)
    }

    /// [`Config::from_toml`], with `store_url` (from the environment) in
    /// place of `[store] url` when given.
    fn from_toml_env(
        text: &str,
        base_dir: &Path,
        store_url: Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        if store_url.is_some() {
            cfg.store.url = store_url;
        }
        cfg.base_dir = base_dir.to_owned();
        cfg.resolve_paths();
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self) {
        let base = self.base_dir.clone();
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for d in &mut self.trust.domains {
            fix(&mut d.bundle);
        }
        if let Some(dir) = &mut self.trust.bundle_dir {
            fix(dir);
        }
        if let Some(p) = &mut self.server.cert {
            fix(p);
        }
        if let Some(p) = &mut self.server.key {
            fix(p);
        }
        fix(&mut self.ca.cert);
        fix(&mut self.ca.key);
        fix(&mut self.jwt.key);
        if let Some(p) = &mut self.store.path {
            fix(p);
        }
        if let Some(p) = &mut self.store.audit_archive {
            fix(p);
        }
        fix(&mut self.policy.file);
        if let Some(d) = &mut self.discovery {
            d.resolve_paths(&base);
        }
        if let Some(s) = &mut self.ssf {
            s.resolve_paths(&base);
        }
    }

    /// `[server]`: PEM files or the Workload API, not both, and never half
    /// of the files.
    fn validate_server_svid(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        let invalid = |m: &str| Err(ConfigError::Invalid(m.into()));
        match (&s.cert, &s.key, &s.workload_api) {
            (Some(_), None, _) | (None, Some(_), _) => {
                invalid("[server] cert and key go together: set both, or neither")
            }
            (Some(_), Some(_), Some(_)) => invalid(
                "[server] names both PEM files (cert, key) and workload_api: choose one source for the serving SVID",
            ),
            (_, _, Some(w)) if w.trim().is_empty() => invalid(
                "[server] workload_api is empty: give an endpoint such as `unix:///run/spire/agent.sock`",
            ),
            _ => Ok(()),
        }
    }

    /// Checks every value and the relations between them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let td = TrustDomain::new(&self.trust_domain).map_err(|e| {
            ConfigError::Invalid(format!("trust_domain `{}`: {e}", self.trust_domain))
        })?;
        let mut seen = std::collections::HashSet::new();
        for d in &self.trust.domains {
            let name = TrustDomain::new(&d.name).map_err(|e| {
                ConfigError::Invalid(format!("trust.domains name `{}`: {e}", d.name))
            })?;
            if !seen.insert(name) {
                return invalid(format!("trust domain `{}` is listed twice", d.name));
            }
        }
        // Without a serving SVID file the Workload API is the source, and it
        // sends the own trust domain's bundle (checked again at start).
        if !seen.contains(&td) && self.trust.bundle_dir.is_none() && self.server.cert.is_some() {
            return invalid(format!(
                "the issuer's own trust domain `{}` has no bundle in trust.domains",
                self.trust_domain
            ));
        }
        self.store.validate().map_err(ConfigError::Invalid)?;
        self.validate_server_svid()?;
        if self.trust.reload_interval < Duration::from_millis(100) {
            return invalid("trust.reload_interval must be at least 100ms".into());
        }
        let l = &self.limits;
        if l.max_ttl.is_zero() || l.default_ttl.is_zero() {
            return invalid("limits.default_ttl and limits.max_ttl must be positive".into());
        }
        if l.default_ttl.subsec_nanos() != 0 || l.max_ttl.subsec_nanos() != 0 {
            return invalid("limits.default_ttl and limits.max_ttl must be whole seconds".into());
        }
        if l.default_ttl > l.max_ttl {
            return invalid(format!(
                "limits.default_ttl ({}) exceeds limits.max_ttl ({})",
                humantime::format_duration(l.default_ttl),
                humantime::format_duration(l.max_ttl)
            ));
        }
        let whole = |d: Duration| d.subsec_nanos() == 0 && !d.is_zero();
        if !whole(l.default_task_lifetime) || !whole(l.max_task_lifetime) {
            return invalid("limits.*_task_lifetime must be positive whole seconds".into());
        }
        if l.default_task_lifetime > l.max_task_lifetime {
            return invalid(format!(
                "limits.default_task_lifetime ({}) exceeds limits.max_task_lifetime ({})",
                humantime::format_duration(l.default_task_lifetime),
                humantime::format_duration(l.max_task_lifetime)
            ));
        }
        if l.max_active_credentials == 0 {
            return invalid("limits.max_active_credentials must be at least 1".into());
        }
        if !whole(l.break_glass_max_lifetime) {
            return invalid(
                "limits.break_glass_max_lifetime must be positive whole seconds".into(),
            );
        }
        for (name, r) in [
            ("rate", &l.rate),
            ("task_rate", &l.task_rate),
            ("read_rate", &l.read_rate),
            ("watch_rate", &l.watch_rate),
            ("admin_rate", &l.admin_rate),
        ] {
            if !(r.per_second > 0.0 && r.per_second.is_finite()) || r.burst == 0 {
                return invalid(format!(
                    "limits.{name}: per_second must be positive and burst at least 1"
                ));
            }
        }
        for (name, n) in [
            ("max_active_tasks", l.max_active_tasks),
            ("max_subscriber_names", l.max_subscriber_names),
            ("max_watch_streams", l.max_watch_streams),
        ] {
            if n == 0 {
                return invalid(format!("limits.{name} must be at least 1"));
            }
        }
        let n = &self.listen;
        if n.max_connections == 0
            || n.max_concurrent_streams == 0
            || n.max_connections_per_workload == 0
        {
            return invalid(
                "listen.max_connections, max_connections_per_workload and \
                 max_concurrent_streams must be at least 1"
                    .into(),
            );
        }
        for (name, d) in [
            ("handshake_timeout", n.handshake_timeout),
            ("idle_timeout", n.idle_timeout),
            ("keepalive_interval", n.keepalive_interval),
            ("keepalive_timeout", n.keepalive_timeout),
            ("request_timeout", n.request_timeout),
        ] {
            if d < Duration::from_millis(100) {
                return invalid(format!("listen.{name} must be at least 100ms"));
            }
        }
        if self.policy.reload_interval < Duration::from_millis(100) {
            return invalid("policy.reload_interval must be at least 100ms".into());
        }
        let mut groups = std::collections::HashSet::new();
        for g in &self.policy.groups {
            if g.name.is_empty() || !groups.insert(&g.name) {
                return invalid(format!(
                    "policy.groups: name `{}` is empty or repeated",
                    g.name
                ));
            }
            for m in &g.members {
                crate::identity::SpiffePattern::parse(m).map_err(|e| {
                    ConfigError::Invalid(format!("policy.groups `{}`: {e}", g.name))
                })?;
            }
        }
        for r in &self.ownership.rules {
            crate::identity::SpiffePattern::parse(&r.pattern)
                .map_err(|e| ConfigError::Invalid(format!("ownership.rules: {e}")))?;
            if r.owner.trim().is_empty() || r.owner.len() > 256 {
                return invalid(format!(
                    "ownership.rules: owner for `{}` must be 1-256 bytes",
                    r.pattern
                ));
            }
        }
        for a in &self.admins {
            spiffe::SpiffeId::new(a)
                .map_err(|e| ConfigError::Invalid(format!("admins: `{a}`: {e}")))?;
        }
        let f = &self.feed;
        if f.subscriber_buffer < 2 {
            return invalid("feed.subscriber_buffer must be at least 2".into());
        }
        for (name, d) in [
            ("heartbeat_interval", f.heartbeat_interval),
            ("ack_deadline", f.ack_deadline),
            ("reaper_interval", f.reaper_interval),
        ] {
            if d < Duration::from_millis(10) {
                return invalid(format!("feed.{name} must be at least 10ms"));
            }
        }
        let mut names = std::collections::HashSet::new();
        for s in &f.subscribers {
            if s.name.is_empty() || !names.insert(&s.name) {
                return invalid(format!(
                    "feed.subscribers: name `{}` is empty or repeated",
                    s.name
                ));
            }
            spiffe::SpiffeId::new(&s.spiffe_id).map_err(|e| {
                ConfigError::Invalid(format!(
                    "feed.subscribers `{}`: `{}`: {e}",
                    s.name, s.spiffe_id
                ))
            })?;
        }
        if self.ca.crl_validity < Duration::from_secs(1) {
            return invalid("ca.crl_validity must be at least 1s".into());
        }
        if let Some(iss) = &self.jwt.issuer
            && iss.trim().is_empty()
        {
            return invalid("jwt.issuer must not be empty".into());
        }
        if let Some(d) = &self.discovery {
            d.validate().map_err(ConfigError::Invalid)?;
        }
        self.validate_ssf().map_err(ConfigError::Invalid)?;
        Ok(())
    }

    /// The `iss` claim for JWT-SVIDs.
    pub fn jwt_issuer(&self) -> String {
        self.jwt
            .issuer
            .clone()
            .unwrap_or_else(|| format!("spiffe://{}/taskmint", self.trust_domain))
    }
}

#[cfg(test)]
mod tests;
