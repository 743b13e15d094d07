//! The `taskmint` binary: parse the command line, set up logging, dispatch.
//! `taskmint bench` is dispatched to the binary's own `bench` module (with
//! the default `bench` feature); everything else to the library's `cli`.
#![forbid(unsafe_code)]

#[cfg(feature = "bench")]
mod bench;

use clap::Parser as _;
use taskmint::cli::{Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line, like every other error; `--help` has the rest.
            let text = e.to_string();
            eprintln!(
                "{}",
                text.lines().next().unwrap_or("error: invalid arguments")
            );
            return std::process::ExitCode::from(2);
        }
    };
    // The server logs each request at info; client commands stay quiet
    // unless RUST_LOG asks for more.
    let default = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    taskmint::ops::logging::init(cli.log_format, default);
    let result = match cli.command {
        #[cfg(feature = "bench")]
        Command::Bench(b) => bench::run(b).await,
        #[cfg(not(feature = "bench"))]
        Command::Bench(_) => Err(anyhow::anyhow!(
            "this `taskmint` was built without the `bench` feature"
        )),
        _ => taskmint::cli::run(cli).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
