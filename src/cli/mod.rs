//! The `taskmint` command line: one file per subcommand, argument structs here.
//! What commands print, and how they exit, goes through [`out`].
#![deny(clippy::print_stdout)]

mod audit;
pub mod bench;
mod bundle;
mod dev;
mod enforce;
mod health;
mod mint;
pub mod out;
mod policy;
mod serve;
mod status;
mod task;
mod watch;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub use audit::{
    ExpectedHead, PgVerified, Verified, render_timeline as audit_timeline_text,
    verify_pg_store as verify_audit_pg_store, verify_pg_store_with_archive,
    verify_store as verify_audit_store,
};

use crate::client::{Client, IdentityFlags, IdentitySource};
use crate::clock::rfc3339;

/// Per-task credentials for SPIFFE-identified workloads.
#[derive(Debug, Parser)]
#[command(name = "taskmint", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as text (colour only on a terminal) or as JSON objects,
    /// one per line, on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "TASKMINT_LOG_FORMAT",
        default_value_t
    )]
    pub log_format: crate::ops::logging::LogFormat,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Development trust domain.
    #[command(subcommand)]
    Dev(DevCommand),
    /// Run the issuer.
    Serve(serve::ServeArgs),
    /// Mint a per-task credential.
    #[command(subcommand)]
    Mint(mint::MintCommand),
    /// Print the issuer's trust bundle.
    Bundle(bundle::BundleArgs),
    /// Task lifecycle.
    #[command(subcommand)]
    Task(task::TaskCommand),
    /// Revoke credentials.
    Revoke(status::RevokeArgs),
    /// Renew a credential.
    Renew(status::RenewArgs),
    /// The state of a credential.
    Status(status::StatusArgs),
    /// Follow the revocation feed.
    Watch(watch::WatchArgs),
    /// Fetch the CRL.
    Crl(status::CrlArgs),
    /// Measure this machine: the full benchmark, or one part of it.
    Bench(bench::BenchArgs),
    /// Check, try and inspect Cedar policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// The audit trail: verify, export, task timelines, break-glass review.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Active grants: tasks and their credentials (admin).
    Inventory(audit::InventoryArgs),
    /// Delivery evidence: which expected subscribers acknowledged what, and
    /// which are overdue (cleanup failed) (admin).
    Delivery(health::DeliveryArgs),
    /// The issuer's standard gRPC health check, over mTLS.
    Health(health::HealthArgs),
    /// Print a shell completion script.
    Completions(health::CompletionsArgs),
    /// Run the enforcement sidecar: Envoy ext_authz over the revocation feed.
    Enforce(enforce::EnforceArgs),
}

/// `dev` subcommands.
#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Write a dev trust domain, workload SVIDs and a config.
    Init(dev::InitArgs),
}

/// Connection flags shared by every client command. The identity's sources
/// and their precedence are [`crate::client::IdentitySource`]'s (flags, then
/// `TASKMINT_SVID`/`TASKMINT_SVID_KEY`, then `SPIFFE_ENDPOINT_SOCKET`, then
/// the dev identity in `./certs/dev`).
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// Issuer address.
    #[arg(long, default_value = "127.0.0.1:8443", env = "TASKMINT_SERVER")]
    pub server: String,
    /// Take the workload's X.509-SVID (and the issuer's bundle) from this
    /// SPIFFE Workload API, e.g. `unix:///run/spire/agent.sock` [default:
    /// $SPIFFE_ENDPOINT_SOCKET when no SVID file is given].
    #[arg(long, value_name = "URI")]
    pub workload_api: Option<String>,
    /// The workload's X.509-SVID (PEM chain, leaf first) [env: TASKMINT_SVID;
    /// default: certs/dev/agent.pem when no other identity is given].
    #[arg(long, value_name = "FILE")]
    pub svid: Option<PathBuf>,
    /// The workload's private key (PEM PKCS#8) [env: TASKMINT_SVID_KEY].
    #[arg(long, value_name = "FILE")]
    pub svid_key: Option<PathBuf>,
    /// Roots that verify the issuer (PEM) [env: TASKMINT_BUNDLE; default: the
    /// Workload API's bundle, or bundle.pem beside the SVID file].
    #[arg(long, value_name = "FILE")]
    pub bundle: Option<PathBuf>,
    /// Expected SPIFFE ID of the issuer (default: `spiffe://<your trust domain>/taskmint`).
    #[arg(long, env = "TASKMINT_SERVER_ID")]
    pub server_id: Option<String>,
    /// W3C trace context sent with every call; the issuer records it on the
    /// call's log line and in its audit events.
    #[arg(long, env = "TRACEPARENT")]
    pub traceparent: Option<String>,
}

impl ConnArgs {
    async fn connect(&self) -> anyhow::Result<Client> {
        let source = IdentitySource::resolve(&IdentityFlags {
            workload_api: self.workload_api.clone(),
            svid: self.svid.clone(),
            svid_key: self.svid_key.clone(),
            bundle: self.bundle.clone(),
        })?;
        Ok(
            Client::connect_source(&self.server, &source, self.server_id.clone())
                .await?
                .with_traceparent(self.traceparent.as_deref())?,
        )
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s)
}

/// A gRPC status as an error: printed as one line, its code kept for the
/// exit status.
fn status_line(s: &tonic::Status) -> anyhow::Error {
    out::Rpc::from(s.clone()).into()
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(DevCommand::Init(a)) => dev::init(a),
        Command::Serve(a) => serve::run(a).await,
        Command::Mint(m) => mint::run(m).await,
        Command::Bundle(a) => bundle::run(a).await,
        Command::Task(t) => task::run(t).await,
        Command::Revoke(a) => status::revoke(a).await,
        Command::Renew(a) => status::renew(a).await,
        Command::Status(a) => status::status(a).await,
        Command::Watch(a) => watch::run(a).await,
        Command::Crl(a) => status::crl(a).await,
        // The benchmark is part of the binary, not the library: `main`
        // dispatches it before calling here.
        Command::Bench(_) => anyhow::bail!("`bench` runs only from the `taskmint` binary"),
        Command::Policy(p) => policy::run(p).await,
        Command::Audit(a) => audit::run(a).await,
        Command::Inventory(a) => audit::inventory(a).await,
        Command::Delivery(a) => health::delivery(a).await,
        Command::Health(a) => health::health(a).await,
        Command::Completions(a) => health::completions(a),
        Command::Enforce(a) => enforce::run(a).await,
    }
}
