//! `taskmint serve`: run the issuer until SIGINT or SIGTERM.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::config::Config;
use crate::server::Server;

/// The config used when none is given; created by `dev init` if missing.
pub const DEFAULT_CONFIG: &str = "certs/dev/taskmint.toml";

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Config file [default: certs/dev/taskmint.toml, created on first run].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Listen address (overrides the config).
    #[arg(long, env = "TASKMINT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Operations listener address for /metrics, /healthz, /readyz
    /// (overrides `[ops] listen`; must be free) [default: 127.0.0.1:9090].
    #[arg(long)]
    pub ops_listen: Option<SocketAddr>,
}

pub(super) async fn run(a: ServeArgs) -> anyhow::Result<()> {
    let path = match a.config {
        Some(p) => p,
        None => {
            let p = PathBuf::from(DEFAULT_CONFIG);
            if !p.exists() {
                let dir = p.parent().expect("has a parent").to_owned();
                tracing::info!(dir = %dir.display(), "no config: writing a dev trust domain");
                super::dev::write(&super::dev::InitArgs {
                    dir,
                    trust_domain: "example.org".into(),
                    workloads: vec![],
                    listen: "127.0.0.1:8443".into(),
                    store_url: None,
                    discovery: None,
                    force: false,
                })?;
            }
            p
        }
    };
    let mut cfg = Config::load(&path)?;
    if let Some(addr) = a.listen {
        cfg.listen.addr = addr;
    }
    if let Some(addr) = a.ops_listen {
        cfg.ops.enabled = true;
        cfg.ops.listen = Some(addr);
    }
    let ops_listener = bind_ops(&cfg.ops).await?;
    let started = std::time::Instant::now();
    let listener = tokio::net::TcpListener::bind(cfg.listen.addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen.addr))?;
    let addr = listener.local_addr()?;
    let td = cfg.trust_domain.clone();
    let server = Server::build(cfg).await?;
    tracing::info!(%addr, trust_domain = %td, config = %path.display(), startup_ms = started.elapsed().as_millis() as u64, "taskmint is serving");
    let server_flag = if addr.to_string() == "127.0.0.1:8443" {
        String::new()
    } else {
        format!(" --server {addr}")
    };
    // For a person at a terminal; logs collected from stderr stay pure.
    if std::io::stderr().is_terminal() {
        eprintln!(
            "\nMint a credential from another terminal (as the dev `agent` workload):\n  \
         taskmint mint jwt --task demo-1 --aud db{server_flag}\n  \
         taskmint mint x509 --task demo-1 --out /tmp/demo-1{server_flag}\n\
         (from a checkout, `cargo run --release --` in place of `taskmint`)\n"
        );
    }
    let ops = ops_listener.map(|l| {
        tokio::spawn(crate::ops::serve(
            l,
            server.readiness(),
            std::future::pending(),
        ))
    });
    let result = server.run(listener, shutdown_signal()).await;
    if let Some(ops) = ops {
        ops.abort();
    }
    result?;
    tracing::info!("taskmint stopped");
    Ok(())
}

/// Binds the operations listener. An address that was asked for must be
/// free; the default one may be taken (a second issuer on one host), which
/// only costs this process its metrics and probes, and is said loudly.
async fn bind_ops(
    ops: &crate::config::OpsConfig,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let Some((addr, explicit)) = ops.address() else {
        tracing::info!("operations listener off ([ops] enabled = false)");
        return Ok(None);
    };
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            let addr = l.local_addr()?;
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "the operations listener is not on loopback: metrics and readiness are served without authentication to whoever reaches it");
            }
            tracing::info!(%addr, "operations listener: /metrics /healthz /readyz");
            Ok(Some(l))
        }
        Err(e) if !explicit => {
            tracing::error!(%addr, error = %e, "cannot listen on the default operations address: no metrics or probes from this process; set [ops] listen to another address");
            Ok(None)
        }
        Err(e) => Err(anyhow::anyhow!(
            "cannot listen on {addr} ([ops] listen): {e}"
        )),
    }
}

pub(super) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
