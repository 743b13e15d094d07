//! Log output: human-readable text or one JSON object per line, on stderr,
//! filtered by `RUST_LOG`. Colour only when stderr is a terminal, so piped
//! and collected logs never carry ANSI escape codes.

use std::io::IsTerminal as _;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `time level target: message field=value ...`
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`
    /// and every field of the event at the top level; `span` for what a
    /// handler logs within a call.
    Json,
}

/// Installs the process's log subscriber: `format` on stderr, at `default`
/// (an `EnvFilter` directive such as `info`) unless `RUST_LOG` says
/// otherwise. Does nothing if one is already installed.
pub fn init(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
