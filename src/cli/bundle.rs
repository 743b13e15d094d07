//! `taskmint bundle`: the issuer's trust bundle as PEM or SPIFFE bundle JWKS.

use clap::Args;

use super::ConnArgs;

/// Arguments of `bundle`.
#[derive(Debug, Args)]
pub struct BundleArgs {
    /// Print the SPIFFE bundle (JWKS) instead of PEM.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub(super) async fn run(a: BundleArgs) -> anyhow::Result<()> {
    let mut client = a.conn.connect().await?;
    let b = client
        .trust_bundle()
        .await
        .map_err(|s| super::status_line(&s))?;
    if a.json {
        println!("{}", b.spiffe_bundle_jwks);
    } else {
        print!("{}", b.x509_authorities_pem);
    }
    Ok(())
}
