//! `[limits]`: what one request, one task and one workload may ask for:
//! lifetimes, renewals, delegation depth, the per-workload token buckets of
//! each class of call, and the caps on what a workload may hold at once.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::humantime_serde_compat;

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
