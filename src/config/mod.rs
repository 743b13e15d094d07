//! The configuration tree (`taskmint.toml`): what to listen on, whom to trust,
//! which keys sign, where state lives, and the minting limits.
//!
//! Relative paths in the file are resolved against the directory that holds
//! the file, so a config and the material next to it can move together.
//! [`Config::validate`] is the only gate: a config that passes it starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use spiffe::TrustDomain;

mod store;
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
    /// The directory relative paths were resolved against (not in the file).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// Where and how the gRPC endpoint listens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Socket address, e.g. `127.0.0.1:8443`.
    #[serde(default = "default_listen")]
    pub addr: SocketAddr,
    /// How long a TLS handshake may take before the connection is dropped.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde_compat")]
    pub handshake_timeout: Duration,
    /// A connection with no call in flight for this long is closed (the
    /// gRPC `MAX_CONNECTION_IDLE` of other servers). A connection whose SVID
    /// was refused is closed after `handshake_timeout` at the latest.
    #[serde(default = "default_idle_timeout", with = "humantime_serde_compat")]
    pub idle_timeout: Duration,
    /// Connections open at once, handshakes included; past it a new
    /// connection is closed as soon as it is accepted. Keep the process's
    /// file descriptor limit above it.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Connections one SPIFFE ID may hold open at once on this replica; the
    /// calls of one past it are refused with `RESOURCE_EXHAUSTED` and the
    /// connection is closed. Many pods may share one SPIFFE ID: size it for
    /// the largest such fleet.
    #[serde(default = "default_max_connections_per_workload")]
    pub max_connections_per_workload: u32,
    /// HTTP/2 streams (calls) in flight on one connection, advertised to the
    /// peer in `SETTINGS_MAX_CONCURRENT_STREAMS`.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Interval of HTTP/2 keepalive pings to each peer.
    #[serde(
        default = "default_keepalive_interval",
        with = "humantime_serde_compat"
    )]
    pub keepalive_interval: Duration,
    /// A peer that does not answer a keepalive ping within this is dropped.
    #[serde(default = "default_keepalive_timeout", with = "humantime_serde_compat")]
    pub keepalive_timeout: Duration,
    /// Longest a unary call (or the opening of a stream) may take; the
    /// caller gets `CANCELLED`/`DEADLINE_EXCEEDED` past it. A client's
    /// shorter `grpc-timeout` wins.
    #[serde(default = "default_request_timeout", with = "humantime_serde_compat")]
    pub request_timeout: Duration,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            addr: default_listen(),
            handshake_timeout: default_handshake_timeout(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_workload: default_max_connections_per_workload(),
            max_concurrent_streams: default_max_concurrent_streams(),
            keepalive_interval: default_keepalive_interval(),
            keepalive_timeout: default_keepalive_timeout(),
            request_timeout: default_request_timeout(),
        }
    }
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

/// Minting limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Lifetime given when a request names none.
    #[serde(default = "default_ttl", with = "humantime_serde_compat")]
    pub default_ttl: Duration,
    /// Longest lifetime a request may ask for.
    #[serde(default = "default_max_ttl", with = "humantime_serde_compat")]
    pub max_ttl: Duration,
    /// Lifetime of a task begun implicitly by a mint, or without one.
    #[serde(default = "default_task_lifetime", with = "humantime_serde_compat")]
    pub default_task_lifetime: Duration,
    /// Longest lifetime `BeginTask` may ask for.
    #[serde(default = "default_max_task_lifetime", with = "humantime_serde_compat")]
    pub max_task_lifetime: Duration,
    /// Renewals allowed per lineage (a credential and its successors).
    #[serde(default = "default_max_renewals")]
    pub max_renewals: u32,
    /// Active (unrevoked, unexpired) credentials allowed per task at once.
    #[serde(default = "default_max_active_credentials")]
    pub max_active_credentials: u32,
    /// Longest lifetime of a break-glass task (shorter than a normal one).
    #[serde(
        default = "default_break_glass_max_lifetime",
        with = "humantime_serde_compat"
    )]
    pub break_glass_max_lifetime: Duration,
    /// How many delegations deep a task chain may go (0 = no delegation).
    #[serde(default = "default_max_delegation_depth")]
    pub max_delegation_depth: u32,
    /// Per-workload token bucket for `MintX509`, `MintJwt` and `Renew`,
    /// kept by each replica on its own (the fleet allows N times this). The
    /// other classes of call have buckets of their own below; every call,
    /// refused ones included, takes a token before its body is decoded.
    #[serde(default)]
    pub rate: RateConfig,
    /// Bucket for `BeginTask`, `CompleteTask`, `DelegateTask` and `Revoke`.
    #[serde(default = "default_task_rate")]
    pub task_rate: RateConfig,
    /// Bucket for `GetTask`, `CheckStatus`, `GetCrl`, `GetTrustBundle` and
    /// health checks.
    #[serde(default = "default_read_rate")]
    pub read_rate: RateConfig,
    /// Bucket for `WatchRevocations` and `AckRevocations`.
    #[serde(default = "default_watch_rate")]
    pub watch_rate: RateConfig,
    /// Bucket for every call of the `Admin` service.
    #[serde(default = "default_admin_rate")]
    pub admin_rate: RateConfig,
    /// Active tasks (not ended, deadline not passed) one holder may have.
    #[serde(default = "default_max_active_tasks")]
    pub max_active_tasks: u32,
    /// Subscriber names one workload may acknowledge under (configured
    /// subscribers excepted).
    #[serde(default = "default_max_subscriber_names")]
    pub max_subscriber_names: u32,
    /// Watch streams one workload may hold open at once, on each replica.
    #[serde(default = "default_max_watch_streams")]
    pub max_watch_streams: u32,
}

/// A token bucket: `burst` calls at once, refilled at `per_second`. Each
/// replica keeps its own buckets, so this is a per-replica budget.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    /// Sustained calls per second per workload.
    #[serde(default = "default_rate")]
    pub per_second: f64,
    /// Calls a workload may make at once after being idle.
    #[serde(default = "default_burst")]
    pub burst: u32,
}

impl Default for RateConfig {
    fn default() -> Self {
        Self {
            per_second: default_rate(),
            burst: default_burst(),
        }
    }
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

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            default_ttl: default_ttl(),
            max_ttl: default_max_ttl(),
            default_task_lifetime: default_task_lifetime(),
            max_task_lifetime: default_max_task_lifetime(),
            max_renewals: default_max_renewals(),
            max_active_credentials: default_max_active_credentials(),
            break_glass_max_lifetime: default_break_glass_max_lifetime(),
            max_delegation_depth: default_max_delegation_depth(),
            rate: RateConfig::default(),
            task_rate: default_task_rate(),
            read_rate: default_read_rate(),
            watch_rate: default_watch_rate(),
            admin_rate: default_admin_rate(),
            max_active_tasks: default_max_active_tasks(),
            max_subscriber_names: default_max_subscriber_names(),
            max_watch_streams: default_max_watch_streams(),
        }
    }
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

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_max_connections() -> u32 {
    10_000
}
fn default_max_connections_per_workload() -> u32 {
    1000
}
fn default_max_concurrent_streams() -> u32 {
    100
}
fn default_keepalive_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn rate(per_second: f64, burst: u32) -> RateConfig {
    RateConfig { per_second, burst }
}
fn default_task_rate() -> RateConfig {
    rate(20.0, 50)
}
fn default_read_rate() -> RateConfig {
    rate(100.0, 200)
}
fn default_watch_rate() -> RateConfig {
    rate(20.0, 50)
}
fn default_admin_rate() -> RateConfig {
    rate(20.0, 50)
}
fn default_max_active_tasks() -> u32 {
    1000
}
fn default_max_subscriber_names() -> u32 {
    16
}
fn default_max_watch_streams() -> u32 {
    16
}
fn default_reload_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_ttl() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_max_ttl() -> Duration {
    Duration::from_secs(60 * 60)
}
fn default_task_lifetime() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_max_task_lifetime() -> Duration {
    Duration::from_secs(8 * 60 * 60)
}
fn default_max_renewals() -> u32 {
    3
}
fn default_max_active_credentials() -> u32 {
    100
}
fn default_break_glass_max_lifetime() -> Duration {
    Duration::from_secs(60 * 60)
}
fn default_max_delegation_depth() -> u32 {
    3
}
fn default_rate() -> f64 {
    100.0
}
fn default_burst() -> u32 {
    200
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
mod humantime_serde_compat {
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

impl Config {
    /// Reads, resolves and validates the config at `path`; a PostgreSQL URL
    /// in [`STORE_URL_ENV`] replaces `[store] url`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let env_url = std::env::var(STORE_URL_ENV).ok().filter(|u| !u.is_empty());
        Self::from_toml_env(&text, base, env_url).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
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

/// The operations listener: `/metrics`, `/healthz` and `/readyz` over plain
/// HTTP, without authentication (see [`crate::ops`]). On by default, on
/// loopback.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    /// `false` turns the listener off.
    #[serde(default = "default_ops_enabled")]
    pub enabled: bool,
    /// Socket address. Unset: [`OpsConfig::DEFAULT_LISTEN`], and a busy port
    /// there is a warning, not a failure to start; set: the address must be
    /// free. Anything but loopback exposes metrics and readiness to whoever
    /// reaches it (Kubernetes probes need the pod address).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

impl OpsConfig {
    /// Where the listener binds when `listen` is unset.
    pub const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9090);

    /// The address to bind, and whether it was chosen explicitly; `None`
    /// when the listener is off.
    pub fn address(&self) -> Option<(SocketAddr, bool)> {
        if !self.enabled {
            return None;
        }
        Some(match self.listen {
            Some(a) => (a, true),
            None => (Self::DEFAULT_LISTEN, false),
        })
    }
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
        }
    }
}

fn default_ops_enabled() -> bool {
    true
}
