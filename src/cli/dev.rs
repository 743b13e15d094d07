//! `taskmint dev init`.

use std::path::PathBuf;

use clap::Args;

use crate::devca;

/// Arguments of `dev init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory to write into.
    #[arg(long, default_value = "certs/dev")]
    pub dir: PathBuf,
    /// The trust domain.
    #[arg(long, default_value = "example.org")]
    pub trust_domain: String,
    /// Workload to create an SVID for (repeatable) [default: agent, sidecar, admin].
    #[arg(long = "workload", value_name = "NAME")]
    pub workloads: Vec<String>,
    /// Listen address written into the config.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: String,
    /// Store the issuer's state in this PostgreSQL database
    /// (`postgres://user@host:port/db`) instead of a SQLite file, so that
    /// several replicas can share it.
    #[arg(long)]
    pub store_url: Option<String>,
    /// Also serve discovery (OIDC, JWKS, SPIFFE bundle endpoint) over HTTPS
    /// on this address, with a dev web certificate (`discovery-ca.pem`
    /// verifies it); sets `jwt.issuer` to its URL.
    #[arg(long, value_name = "ADDR")]
    pub discovery: Option<String>,
    /// Overwrite an existing dev trust domain.
    #[arg(long)]
    pub force: bool,
}

pub(super) fn init(a: InitArgs) -> anyhow::Result<()> {
    let out = write(&a)?;
    eprintln!(
        "wrote dev trust domain `{}` to {}",
        a.trust_domain,
        a.dir.display()
    );
    for (name, cert, _) in &out.workloads {
        eprintln!(
            "  workload {name}: spiffe://{}/workload/{name} ({})",
            a.trust_domain,
            cert.display()
        );
    }
    if let Some(addr) = &a.discovery {
        eprintln!(
            "  discovery: {addr} (its certificate verifies with {})",
            a.dir.join("discovery-ca.pem").display()
        );
    }
    eprintln!("  config: {}", out.config.display());
    Ok(())
}

pub(super) fn write(a: &InitArgs) -> anyhow::Result<devca::DevInit> {
    let workloads: Vec<String> = if a.workloads.is_empty() {
        devca::DEFAULT_WORKLOADS
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        a.workloads.clone()
    };
    let out = devca::init(&a.dir, &a.trust_domain, &workloads, &a.listen, a.force)?;
    if let Some(addr) = &a.discovery {
        devca::add_discovery(&a.dir, addr)?;
    }
    if let Some(url) = &a.store_url {
        let text = std::fs::read_to_string(&out.config)?;
        let url = toml::Value::String(url.clone());
        std::fs::write(
            &out.config,
            text.replace(devca::SQLITE_STORE_LINE, &format!("url = {url}")),
        )?;
    }
    Ok(out)
}
