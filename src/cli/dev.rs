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
    Ok(devca::init(
        &a.dir,
        &a.trust_domain,
        &workloads,
        &a.listen,
        a.force,
    )?)
}
