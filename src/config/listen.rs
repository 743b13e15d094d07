//! `[listen]` and `[ops]`: the mTLS gRPC listener (address, handshake and
//! idle bounds, connection caps, HTTP/2 limits, keepalive, per-call timeout)
//! and the plain-HTTP operations listener (metrics and probes).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::humantime_serde_compat;

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
