//! The arguments of `taskmint bench`: the full run (default), `bench
//! revocation`, `bench cfssl` (side by side with a running `cfssl serve`),
//! and `bench replicas` (PostgreSQL and two replicas against SQLite). Only the arguments live in the library, as plain data; the
//! benchmark itself is part of the binary (its `bench` module), so the
//! library carries no load-generation or plotting dependencies.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::parse_duration;

/// `bench`: with no subcommand, the full run.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    /// A single part instead of the full run.
    #[command(subcommand)]
    pub cmd: Option<BenchCommand>,
    /// The full run's settings.
    #[command(flatten)]
    pub all: AllArgs,
}

/// `bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Revocation delivery latency: Revoke RPC returned -> event received.
    Revocation(RevocationArgs),
    /// MintX509 side by side with `cfssl serve`, same CSRs, same concurrency.
    Cfssl(CfsslArgs),
    /// PostgreSQL against SQLite and two replicas on one PostgreSQL, side
    /// by side; then revocation delivery over two replicas.
    Replicas(ReplicasArgs),
    /// What one hostile caller can do to an issuer on its default dev
    /// configuration; with several --exe, builds side by side.
    Hostile(HostileArgs),
    /// The enforcement sidecar: Check throughput and latency on one core,
    /// Revoke returned -> Check denies with 1 and 100 enforcers, deny-set
    /// memory per entry.
    Enforce(EnforceBenchArgs),
}

/// Arguments of `bench enforce`.
#[derive(Debug, Args)]
pub struct EnforceBenchArgs {
    /// Concurrent Check callers, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub concurrency: Vec<usize>,
    /// Measured window per concurrency.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub window: Duration,
    /// Enforcer counts for revocation -> denial, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    pub enforcers: Vec<usize>,
    /// Revocations per enforcer count.
    #[arg(long, default_value_t = 50)]
    pub events: usize,
    /// Deny-set entries for the memory figure.
    #[arg(long, default_value_t = 1_000_000)]
    pub entries: usize,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Arguments of `bench hostile`.
#[derive(Debug, Args)]
pub struct HostileArgs {
    /// A `taskmint` executable to attack (repeatable; default: this one).
    /// Each writes its own dev trust domain with its own `dev init`.
    #[arg(long)]
    pub exe: Vec<PathBuf>,
    /// TLS connections opened without a client certificate and held.
    #[arg(long, default_value_t = 500)]
    pub connections: usize,
    /// How long they are held before counting what is still open.
    #[arg(long, value_parser = parse_duration, default_value = "12s")]
    pub hold: Duration,
    /// Watch streams opened on one connection.
    #[arg(long, default_value_t = 500)]
    pub streams: usize,
    /// How long BeginTask is flooded.
    #[arg(long, value_parser = parse_duration, default_value = "4s")]
    pub flood: Duration,
    /// CheckStatus and GetCrl calls, each.
    #[arg(long, default_value_t = 2000)]
    pub reads: usize,
    /// New subscriber names acknowledged under.
    #[arg(long, default_value_t = 300)]
    pub names: usize,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Settings of the full run.
#[derive(Debug, Args)]
pub struct AllArgs {
    /// Concurrent callers per mint load step, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    pub concurrency: Vec<usize>,
    /// Measured window of each load step.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub window: Duration,
    /// Time spent on each in-process ceiling figure.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub ceiling_window: Duration,
    /// Subscriber counts for revocation delivery, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
    pub subscribers: Vec<usize>,
    /// Revocations per subscriber count.
    #[arg(long, default_value_t = 50)]
    pub events: usize,
    /// Credentials in the large store (0 skips the comparison).
    #[arg(long, default_value_t = 1_000_000)]
    pub stored: u64,
    /// Concurrency of the large-store comparison.
    #[arg(long, default_value_t = 8)]
    pub stored_concurrency: usize,
    /// Measure the issuer at this address instead of starting one (needs
    /// --trust-dir; skips cold start and the large store).
    #[arg(long, requires = "trust_dir")]
    pub server: Option<String>,
    /// With --server: its trust domain directory as `dev init` writes it
    /// (bundle.pem, root.key, agent and sidecar SVIDs).
    #[arg(long)]
    pub trust_dir: Option<PathBuf>,
    /// With --server on this machine: its pid, to read its CPU and memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Run the issuer on this PostgreSQL database instead of SQLite
    /// (`postgres://user@host:port/db`; skips the large store, which is
    /// seeded through SQLite).
    #[arg(long, conflicts_with = "server")]
    pub store_url: Option<String>,
    /// Where results.json and plot.svg go.
    #[arg(long, default_value = "target/taskmint-bench")]
    pub out: PathBuf,
}

/// Arguments of `bench replicas`.
#[derive(Debug, Args)]
pub struct ReplicasArgs {
    /// The PostgreSQL database the replicas share.
    #[arg(long)]
    pub store_url: String,
    /// Concurrent callers, spread over the replicas.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Measured window per setup and round.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub window: Duration,
    /// Rounds; each measures every setup once.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Subscribers of the delivery measurement, spread over two replicas.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Revocations of the delivery measurement.
    #[arg(long, default_value_t = 100)]
    pub events: usize,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Arguments of `bench revocation`.
#[derive(Debug, Args)]
pub struct RevocationArgs {
    /// Subscriber counts, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    pub subscribers: Vec<usize>,
    /// Revocations per subscriber count.
    #[arg(long, default_value_t = 200)]
    pub events: usize,
    /// Pause after every subscriber has one revocation, before the next, milliseconds.
    #[arg(long, default_value_t = 5)]
    pub gap_ms: u64,
    /// Subscribers per connection (HTTP/2 streams).
    #[arg(long, default_value_t = 2)]
    pub streams_per_connection: usize,
    /// Also write the rows as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Arguments of `bench cfssl`.
#[derive(Debug, Args)]
pub struct CfsslArgs {
    /// cfssl's API, e.g. http://127.0.0.1:8888.
    #[arg(long)]
    pub url: String,
    /// cfssl's pid, to read its CPU time.
    #[arg(long)]
    pub cfssl_pid: Option<u32>,
    /// The cfssl signing profile.
    #[arg(long, default_value = "task")]
    pub profile: String,
    /// Concurrencies, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "8,32")]
    pub concurrency: Vec<usize>,
    /// Measured window per step.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub window: Duration,
    /// Rounds: each round measures taskmint then cfssl at every concurrency.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Also write the rows as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}
