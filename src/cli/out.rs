//! Everything a command prints on stdout goes through here, and how a
//! command ends: its exit status.
//!
//! Writes return an error instead of panicking as `println!` does, so a
//! reader that went away (`taskmint task show ... | head -1`) ends the
//! command quietly with status 141 (128 + SIGPIPE, what a shell reports for
//! a program the closed pipe killed). `clippy::print_stdout` is denied in
//! `cli`, so no command can bypass this module.
//!
//! `--json` output is one compact JSON document on one line
//! ([`json`]); streams (`watch`, `audit export`) print one such document
//! per line.

use std::fmt::Display;
use std::io::Write;

/// The exit statuses of `taskmint` (the README's "Exit codes" table).
pub mod code {
    /// Success (`status`: active; `health`: serving; `policy eval`: allow;
    /// `delivery`: nothing overdue).
    pub const OK: u8 = 0;
    /// Any other failure: cannot connect, I/O, a refusal not listed here.
    pub const FAILURE: u8 = 1;
    /// The command line is wrong (clap's own status).
    pub const USAGE: u8 = 2;
    /// Denied: `PERMISSION_DENIED` from the issuer, or `policy eval` deny.
    pub const DENIED: u8 = 3;
    /// Over a rate limit or holding cap (`RESOURCE_EXHAUSTED`): retry later.
    pub const LIMITED: u8 = 4;
    /// `status`: the credential is revoked.
    pub const REVOKED: u8 = 5;
    /// `status`: the credential is expired.
    pub const EXPIRED: u8 = 6;
    /// `status`: the issuer does not know the credential.
    pub const UNKNOWN: u8 = 7;
    /// `health`: the issuer (or the named service) is not serving.
    pub const NOT_SERVING: u8 = 8;
    /// `delivery`: an expected subscriber is overdue (cleanup failed).
    pub const OVERDUE: u8 = 9;
    /// stdout was closed before everything was written.
    pub const CLOSED_PIPE: u8 = 141;
}

/// A command that printed its answer and ends with a non-zero status
/// (a revoked credential, a denial by `policy eval`, ...). Nothing more is
/// printed for it.
#[derive(Debug, thiserror::Error)]
#[error("exit status {0}")]
pub struct Exit(pub u8);

/// stdout could not be written (the reader went away).
#[derive(Debug, thiserror::Error)]
#[error("cannot write to stdout: {0}")]
pub struct StdoutClosed(#[source] pub std::io::Error);

/// A refusal or failure reported by the issuer, printed as
/// `error: CODE: message` with the code's canonical gRPC name
/// (`PERMISSION_DENIED`), as in the issuer's logs and metrics.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}", crate::grpc::code_name(*.code), .message)]
pub struct Rpc {
    /// The gRPC status code.
    pub code: tonic::Code,
    /// The issuer's message.
    pub message: String,
}

impl From<tonic::Status> for Rpc {
    fn from(s: tonic::Status) -> Self {
        Self {
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

fn write(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| StdoutClosed(e).into())
}

/// Prints `s` and a newline.
pub fn line(s: impl Display) -> anyhow::Result<()> {
    write(format!("{s}\n").as_bytes())
}

/// Prints `s` as it is.
pub fn text(s: &str) -> anyhow::Result<()> {
    write(s.as_bytes())
}

/// Prints raw bytes (a DER file to `--out -`).
pub fn bytes(b: &[u8]) -> anyhow::Result<()> {
    write(b)
}

/// Prints one JSON document, compact, on one line.
pub fn json(v: &serde_json::Value) -> anyhow::Result<()> {
    line(v)
}

/// `path` is `-`: write to stdout instead of a file.
pub fn is_stdout(path: &std::path::Path) -> bool {
    path.as_os_str() == "-"
}

/// A usage error found after parsing (clap renders it, status 2).
pub fn usage(message: impl Display) -> anyhow::Error {
    use clap::CommandFactory as _;
    super::Cli::command()
        .error(clap::error::ErrorKind::ArgumentConflict, message)
        .into()
}

/// Prints what `e` says (unless it is a quiet [`Exit`] or a closed stdout)
/// and returns the exit status it maps to.
pub fn report(e: &anyhow::Error) -> u8 {
    if let Some(Exit(n)) = e.downcast_ref::<Exit>() {
        return *n;
    }
    if let Some(c) = e.downcast_ref::<clap::Error>() {
        let _ = c.print();
        return c.exit_code().clamp(0, 255) as u8;
    }
    if e.chain()
        .any(|c| c.downcast_ref::<StdoutClosed>().is_some())
    {
        return code::CLOSED_PIPE;
    }
    eprintln!("error: {e:#}");
    match e.downcast_ref::<Rpc>().map(|r| r.code) {
        Some(tonic::Code::PermissionDenied) => code::DENIED,
        Some(tonic::Code::ResourceExhausted) => code::LIMITED,
        _ => code::FAILURE,
    }
}
