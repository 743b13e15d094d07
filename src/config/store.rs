//! `[store]`: where durable state lives — a SQLite file (`path`) or a
//! PostgreSQL database (`url`, or `TASKMINT_STORE_URL`) — the PostgreSQL
//! pool's size and timeouts, and what keeps the store bounded: the window
//! repeated events are counted in (`use_interval`), how long ended tasks,
//! expired credentials and audit events are kept (`retention`), and where
//! the audit trail is archived before it is pruned (`audit_archive`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::humantime_serde_compat;

/// The environment variable whose PostgreSQL URL overrides `[store] url`,
/// so a password need not sit in the file.
pub const STORE_URL_ENV: &str = "TASKMINT_STORE_URL";

/// Durable state: exactly one of `path` (SQLite) and `url` (PostgreSQL).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite database file; created with its directory if missing.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// PostgreSQL URL (`postgres://user@host:port/db`); the environment
    /// variable [`STORE_URL_ENV`] wins over it.
    #[serde(default)]
    pub url: Option<String>,
    /// PostgreSQL: most connections the pool opens.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// PostgreSQL: how long a query waits for a free connection.
    #[serde(default = "default_acquire_timeout", with = "humantime_serde_compat")]
    pub acquire_timeout: Duration,
    /// PostgreSQL: how long the start waits for the first connection.
    #[serde(default = "default_connect_timeout", with = "humantime_serde_compat")]
    pub connect_timeout: Duration,
    /// An event that changes no state (a status check, a read, a refusal)
    /// is chained once per key in this window; its repeats are counted and
    /// chained as one summary event when the window closes.
    #[serde(default = "default_use_interval", with = "humantime_serde_compat")]
    pub use_interval: Duration,
    /// Ended tasks, expired credentials and (with `audit_archive`) audit
    /// events older than this are deleted by the leader.
    #[serde(default = "default_retention", with = "humantime_serde_compat")]
    pub retention: Duration,
    /// Directory the audit trail is archived to (JSON lines, fsynced)
    /// before events older than `retention` are deleted; without it the
    /// audit trail is never pruned.
    #[serde(default)]
    pub audit_archive: Option<PathBuf>,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("StoreConfig")
            .field("path", &self.path)
            .field("url", &self.url.as_deref().map(crate::store::redact_url))
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("use_interval", &self.use_interval)
            .field("retention", &self.retention)
            .field("audit_archive", &self.audit_archive)
            .finish()
    }
}

impl StoreConfig {
    /// The PostgreSQL pool settings.
    pub fn pool(&self) -> crate::store::PgPoolConfig {
        crate::store::PgPoolConfig {
            max_connections: self.max_connections,
            acquire_timeout: self.acquire_timeout,
            connect_timeout: self.connect_timeout,
        }
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        match (&self.path, &self.url) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "store.path (SQLite) and store.url (PostgreSQL, or {STORE_URL_ENV}) are both \
                     set: choose one"
                ));
            }
            (None, None) => {
                return Err("set store.path (SQLite) or store.url (PostgreSQL)".into());
            }
            (None, Some(url)) => {
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(format!(
                        "store.url `{}` is not a `postgres://` URL",
                        crate::store::redact_url(url)
                    ));
                }
            }
            (Some(_), None) => {}
        }
        if self.max_connections == 0 || self.max_connections > 10_000 {
            return Err("store.max_connections must be 1-10000".into());
        }
        for (name, d) in [
            ("acquire_timeout", self.acquire_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if d < Duration::from_millis(100) {
                return Err(format!("store.{name} must be at least 100ms"));
            }
        }
        if self.use_interval < Duration::from_secs(1)
            || self.use_interval > Duration::from_secs(3600)
        {
            return Err("store.use_interval must be 1s-1h".into());
        }
        if self.retention < MIN_RETENTION {
            return Err(format!(
                "store.retention must be at least {} (what is pruned must have been off every \
                 CRL and out of every feed snapshot for a while)",
                humantime::format_duration(MIN_RETENTION)
            ));
        }
        Ok(())
    }
}

/// The shortest `store.retention` accepted.
pub const MIN_RETENTION: Duration = Duration::from_secs(60 * 60);

fn default_use_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_retention() -> Duration {
    Duration::from_secs(30 * 24 * 60 * 60)
}
fn default_max_connections() -> u32 {
    crate::store::PgPoolConfig::default().max_connections
}
fn default_acquire_timeout() -> Duration {
    crate::store::PgPoolConfig::default().acquire_timeout
}
fn default_connect_timeout() -> Duration {
    crate::store::PgPoolConfig::default().connect_timeout
}
