//! `taskmint bench`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::bench::{self, RevocationBench};

/// `bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Revocation delivery latency: Revoke RPC returned -> event received.
    Revocation(RevocationArgs),
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
    /// Pause between revocations, milliseconds.
    #[arg(long, default_value_t = 5)]
    pub gap_ms: u64,
    /// Subscribers per connection (HTTP/2 streams).
    #[arg(long, default_value_t = 2)]
    pub streams_per_connection: usize,
    /// Also write the rows as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub(super) async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Revocation(a) => {
            let rows = bench::revocation_latency(&RevocationBench {
                subscribers: a.subscribers,
                events: a.events,
                gap: Duration::from_millis(a.gap_ms),
                streams_per_connection: a.streams_per_connection,
            })
            .await?;
            print!("{}", bench::table(&rows));
            if let Some(path) = a.json {
                std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
            }
        }
    }
    Ok(())
}
