//! `taskmint enforce`: run the enforcement sidecar (Envoy ext_authz) until
//! SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::enforce::EnforceConfig;

/// Arguments of `enforce`.
#[derive(Debug, Args)]
pub struct EnforceArgs {
    /// The enforcer's config file (see README, "Enforcement").
    #[arg(long)]
    pub config: PathBuf,
    /// Listen address for ext_authz (overrides `listen`).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

pub(super) async fn run(a: EnforceArgs) -> anyhow::Result<()> {
    let mut cfg = EnforceConfig::load(&a.config)?;
    if let Some(addr) = a.listen {
        cfg.listen = addr;
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (listen): {e}", cfg.listen))?;
    if !listener.local_addr()?.ip().is_loopback() {
        tracing::warn!(addr = %cfg.listen, "ext_authz is plain HTTP/2: keep it on loopback or a pod-local address");
    }
    if cfg.insecure_fail_open_when_stale {
        tracing::warn!(
            "insecure_fail_open_when_stale: requests are allowed while the revocation feed is stale"
        );
    }
    crate::enforce::authz::serve(&cfg, listener, super::serve::shutdown_signal()).await?;
    tracing::info!("enforcer stopped");
    Ok(())
}
