//! `taskmint enforce`: run the enforcement sidecar (Envoy ext_authz) until
//! SIGINT or SIGTERM; `taskmint enforce check`: ask a running one about a
//! request, as Envoy would.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

use super::out;
use crate::enforce::EnforceConfig;

/// Arguments of `enforce`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EnforceArgs {
    /// `check`: one Check against a running enforcer.
    #[command(subcommand)]
    pub cmd: Option<EnforceCommand>,
    /// The enforcer's config file (see README, "Enforcement").
    #[arg(long, required = false)]
    pub config: Option<PathBuf>,
    /// Issuer addresses (overrides `issuers`; comma separated or repeated).
    #[arg(
        long = "issuer",
        value_name = "HOST:PORT",
        value_delimiter = ',',
        env = "TASKMINT_ENFORCE_ISSUERS"
    )]
    pub issuers: Vec<String>,
    /// Listen address for ext_authz (overrides `listen`).
    #[arg(long, env = "TASKMINT_ENFORCE_LISTEN")]
    pub listen: Option<SocketAddr>,
}

/// `enforce` subcommands.
#[derive(Debug, Subcommand)]
pub enum EnforceCommand {
    /// Send one Envoy-shaped Check to a running enforcer and print its
    /// decision (exit 0 allowed, 3 denied, 8 feed stale).
    Check(CheckArgs),
}

/// Arguments of `enforce check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The enforcer's ext_authz address.
    #[arg(long, default_value = "127.0.0.1:9191", env = "TASKMINT_ENFORCER")]
    pub enforcer: String,
    /// While the enforcer is unreachable or its feed stale (503), ask
    /// again for up to this long.
    #[arg(long, value_parser = super::parse_duration)]
    pub wait: Option<std::time::Duration>,
    /// The bearer token (a JWT-SVID); `-` reads it from stdin.
    #[arg(long)]
    pub token: Option<String>,
    /// The client's certificate (PEM), as Envoy passes it with
    /// `include_peer_certificate`.
    #[arg(long, value_name = "FILE")]
    pub peer_cert: Option<PathBuf>,
    /// Print the decision as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn run(a: EnforceArgs) -> anyhow::Result<()> {
    if let Some(EnforceCommand::Check(c)) = a.cmd {
        return check(c).await;
    }
    let Some(path) = a.config else {
        return Err(out::usage(
            "`enforce` needs --config FILE (or the `check` subcommand)",
        ));
    };
    let mut cfg = EnforceConfig::load(&path)?;
    if let Some(addr) = a.listen {
        cfg.listen = addr;
    }
    if !a.issuers.is_empty() {
        cfg.issuers = a.issuers;
    }
    cfg.validate()?;
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

async fn check(a: CheckArgs) -> anyhow::Result<()> {
    let token = match a.token.as_deref() {
        Some("-") => {
            let mut t = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)?;
            Some(t.trim().to_owned())
        }
        other => other.map(str::to_owned),
    };
    let peer = a
        .peer_cert
        .as_ref()
        .map(|p| std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("`{}`: {e}", p.display())))
        .transpose()?;
    let req = crate::enforce::authz::envoy_request("/", token.as_deref(), peer.as_deref());
    let deadline = std::time::Instant::now() + a.wait.unwrap_or_default();
    let r = loop {
        let answer = ask(&a.enforcer, req.clone()).await;
        let stale = matches!(&answer, Ok(r) if r.status.as_ref().map(|s| s.code) == Some(tonic::Code::Unavailable as i32));
        if (answer.is_err() || stale) && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            continue;
        }
        break answer?;
    };
    let header_map = |h: &[envoy_types::ext_authz::v3::pb::HeaderValueOption]| {
        h.iter()
            .filter_map(|o| o.header.as_ref())
            .map(|v| (v.key.clone(), v.value.clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (status, headers) = match &r.http_response {
        Some(HttpResponse::OkResponse(ok)) => (200, header_map(&ok.headers)),
        Some(HttpResponse::DeniedResponse(d)) => (
            d.status.as_ref().map(|s| s.code).unwrap_or(403),
            header_map(&d.headers),
        ),
        _ => anyhow::bail!("the enforcer's answer has no HTTP response"),
    };
    if a.json {
        out::json(&serde_json::json!({ "status": status, "headers": headers }))?;
    } else if status == 200 {
        out::line(format!(
            "allowed: {} (task {})",
            headers
                .get("x-taskmint-spiffe-id")
                .map(String::as_str)
                .unwrap_or("-"),
            headers
                .get("x-taskmint-task")
                .map(String::as_str)
                .unwrap_or("-"),
        ))?;
    } else {
        out::line(format!(
            "denied {status}: {}",
            headers
                .get("x-taskmint-deny-reason")
                .map(String::as_str)
                .unwrap_or("-")
        ))?;
    }
    match status {
        200 => Ok(()),
        503 => Err(out::Exit(out::code::NOT_SERVING).into()),
        _ => Err(out::Exit(out::code::DENIED).into()),
    }
}

async fn ask(
    enforcer: &str,
    req: CheckRequest,
) -> anyhow::Result<envoy_types::ext_authz::v3::pb::CheckResponse> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{enforcer}"))
        .map_err(|e| anyhow::anyhow!("--enforcer `{enforcer}`: {e}"))?
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to the enforcer at `{enforcer}`: {e}"))?;
    Ok(AuthorizationClient::new(channel)
        .check(req)
        .await
        .map_err(|s| anyhow::Error::from(out::Rpc::from(s)))?
        .into_inner())
}
