//! `taskmint bench` from its parsed arguments (defined in the library's
//! `cli`): runs the part asked for, prints it, writes the files.

use std::time::Duration;

use taskmint::cli::bench::{BenchArgs, BenchCommand};

use super::{self as bench, RevocationBench};

/// Runs `taskmint bench` as parsed.
pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    match a.cmd {
        None => {
            let o = a.all;
            if taskmint::cli::out::is_stdout(&o.out) {
                // Two files (results and a plot) do not fit on one stdout.
                return Err(taskmint::cli::out::usage(
                    "`bench --out` names a directory for results.json and plot.svg; `-` does not apply",
                ));
            }
            let report = bench::run_all(
                &bench::Options {
                    exe,
                    concurrency: o.concurrency,
                    window: o.window,
                    ceiling_window: o.ceiling_window,
                    subscribers: o.subscribers,
                    events: o.events,
                    stored: o.stored,
                    stored_concurrency: o.stored_concurrency,
                    store_url: o.store_url,
                    target: o.server.map(|addr| bench::Target {
                        addr,
                        dir: o.trust_dir.clone().unwrap_or_default(),
                        pid: o.server_pid,
                    }),
                },
                |step| eprintln!("bench: {step}"),
            )
            .await?;
            taskmint::cli::out::text(&bench::render(&report))?;
            std::fs::create_dir_all(&o.out)?;
            let json = o.out.join("results.json");
            std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
            let plot = o.out.join("plot.svg");
            bench::plot::draw(&report.load, &plot)?;
            eprintln!("bench: wrote {} and {}", json.display(), plot.display());
        }
        Some(BenchCommand::Revocation(a)) => {
            let rows = bench::revocation_latency(
                &exe,
                &RevocationBench {
                    subscribers: a.subscribers,
                    events: a.events,
                    gap: Duration::from_millis(a.gap_ms),
                    streams_per_connection: a.streams_per_connection,
                },
            )
            .await?;
            taskmint::cli::out::text(&bench::table(&rows))?;
            if let Some(path) = a.json {
                std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
            }
        }
        Some(BenchCommand::Replicas(a)) => {
            let report = bench::replicas::run(
                &exe,
                &bench::replicas::ReplicasBench {
                    store_url: a.store_url,
                    concurrency: a.concurrency,
                    window: a.window,
                    rounds: a.rounds,
                    subscribers: a.subscribers,
                    events: a.events,
                },
                |step| eprintln!("bench: {step}"),
            )
            .await?;
            taskmint::cli::out::text(&bench::replicas::render(&report))?;
            if let Some(path) = a.json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
            }
        }
        Some(BenchCommand::Enforce(a)) => {
            let report = bench::enforce::run(
                &exe,
                &bench::enforce::EnforceBench {
                    concurrency: a.concurrency,
                    window: a.window,
                    enforcers: a.enforcers,
                    events: a.events,
                    entries: a.entries,
                },
                |step| eprintln!("bench: {step}"),
            )
            .await?;
            taskmint::cli::out::text(&bench::enforce::render(&report))?;
            if let Some(path) = a.json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
            }
        }
        Some(BenchCommand::Hostile(a)) => {
            let exes = if a.exe.is_empty() {
                vec![exe.clone()]
            } else {
                a.exe.clone()
            };
            let mut runs = Vec::new();
            for e in &exes {
                let figures = bench::hostile::run(
                    &bench::hostile::HostileBench {
                        exe: e.clone(),
                        connections: a.connections,
                        hold: a.hold,
                        streams: a.streams,
                        flood: a.flood,
                        reads: a.reads,
                        names: a.names,
                    },
                    |step| eprintln!("bench hostile ({}): {step}", e.display()),
                )
                .await?;
                runs.push(figures);
            }
            let labels: Vec<String> = exes.iter().map(|e| e.display().to_string()).collect();
            taskmint::cli::out::text(&bench::hostile::table(&labels, &runs))?;
            if let Some(path) = a.json {
                std::fs::write(&path, serde_json::to_string_pretty(&runs)?)?;
            }
        }
        Some(BenchCommand::Cfssl(a)) => {
            let rows = bench::compare_cfssl(
                &exe,
                &bench::CfsslOptions {
                    url: a.url,
                    pid: a.cfssl_pid,
                    profile: a.profile,
                    concurrency: a.concurrency,
                    window: a.window,
                    rounds: a.rounds,
                },
            )
            .await?;
            taskmint::cli::out::text(&bench::cfssl_table(&rows))?;
            if let Some(path) = a.json {
                std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
            }
        }
    }
    Ok(())
}
