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
    // An argument error is clap's whole rendering (usage, "did you mean"
    // hints) with status 2.
    let cli = Cli::parse();
    // The issuer and the enforcer log at info; client commands stay quiet
    // unless RUST_LOG asks for more.
    let default = if matches!(&cli.command, Command::Serve(_))
        || matches!(&cli.command, Command::Enforce(a) if a.cmd.is_none())
    {
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
    // The exit statuses are the README's "Exit codes" (`cli::out::code`).
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => std::process::ExitCode::from(taskmint::cli::out::report(&e)),
    }
}
