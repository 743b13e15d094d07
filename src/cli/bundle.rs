//! `taskmint bundle`: the issuer's trust bundle as PEM or SPIFFE bundle JWKS.

use clap::Args;

use super::ConnArgs;

/// Arguments of `bundle`.
#[derive(Debug, Args)]
pub struct BundleArgs {
    /// Print the SPIFFE bundle (JWKS, one JSON document) instead of PEM.
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
        // One compact document, as every `--json`.
        let v: serde_json::Value = serde_json::from_str(&b.spiffe_bundle_jwks)
            .map_err(|e| anyhow::anyhow!("the issuer's SPIFFE bundle is not JSON: {e}"))?;
        super::out::json(&v)
    } else {
        super::out::text(&b.x509_authorities_pem)
    }
}
