//! `taskmint mint jwt` and `taskmint mint x509`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;

use super::out;
use super::{ConnArgs, parse_duration, rfc3339, status_line};

/// `mint` subcommands.
#[derive(Debug, Subcommand)]
pub enum MintCommand {
    /// A JWT-SVID for one audience.
    Jwt(JwtArgs),
    /// An X.509-SVID (key generated locally; only a CSR is sent).
    X509(X509Args),
}

/// Arguments of `mint jwt`.
#[derive(Debug, Args)]
pub struct JwtArgs {
    /// Task id.
    #[arg(long)]
    pub task: String,
    /// Audience.
    #[arg(long)]
    pub aud: String,
    /// Lifetime, e.g. 90s, 5m, 1h [default: the issuer's].
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Arguments of `mint x509`.
#[derive(Debug, Args)]
pub struct X509Args {
    /// Task id.
    #[arg(long)]
    pub task: String,
    /// Lifetime, e.g. 90s, 5m, 1h [default: the issuer's].
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// Directory for cert.pem (leaf first, then chain) and key.pem (0600);
    /// `-` prints them (PEM: the chain, then the key) instead.
    #[arg(long)]
    pub out: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub(super) async fn run(m: MintCommand) -> anyhow::Result<()> {
    match m {
        MintCommand::Jwt(a) => jwt(a).await,
        MintCommand::X509(a) => x509(a).await,
    }
}

async fn jwt(a: JwtArgs) -> anyhow::Result<()> {
    let mut client = a.conn.connect().await?;
    let r = client
        .mint_jwt(&a.task, &a.aud, a.ttl)
        .await
        .map_err(|s| status_line(&s))?;
    let c = r.credential.unwrap_or_default();
    if a.json {
        out::json(&json!({
            "credential_id": c.id,
            "task_id": c.task_id,
            "spiffe_id": c.spiffe_id,
            "expires_at": rfc3339(c.expires_at),
            "token": r.token,
        }))
    } else {
        out::line(&r.token)
    }
}

async fn x509(a: X509Args) -> anyhow::Result<()> {
    let (csr, key_pem) = crate::client::new_key_and_csr()?;
    let mut client = a.conn.connect().await?;
    let r = client
        .mint_x509(&a.task, csr, a.ttl)
        .await
        .map_err(|s| status_line(&s))?;
    let c = r.credential.unwrap_or_default();
    let written = save_x509(&a.out, &r.cert_chain, &key_pem)?;
    if a.json {
        let mut v = json!({
            "credential_id": c.id,
            "task_id": c.task_id,
            "spiffe_id": c.spiffe_id,
            "expires_at": rfc3339(c.expires_at),
        });
        written.describe(&mut v);
        return out::json(&v);
    }
    match &written {
        Written::Files { cert, key } => out::line(format_args!(
            "minted {} for {} (task {}), expires {}\n  {}\n  {}",
            c.id,
            c.spiffe_id,
            c.task_id,
            rfc3339(c.expires_at),
            cert.display(),
            key.display()
        )),
        Written::Pem { .. } => written.print(),
    }
}

/// Where a new X.509 credential went.
pub(super) enum Written {
    /// `DIR/cert.pem` and `DIR/key.pem`.
    Files {
        /// The chain, leaf first.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
    /// `--out -`: nothing written yet; the PEM text to print.
    Pem {
        /// The chain, leaf first.
        cert: String,
        /// The private key.
        key: zeroize::Zeroizing<String>,
    },
}

impl Written {
    /// Adds `cert_path`/`key_path` (or, for `-`, `cert_pem`/`key_pem`) to a
    /// `--json` document.
    pub(super) fn describe(&self, v: &mut serde_json::Value) {
        match self {
            Self::Files { cert, key } => {
                v["cert_path"] = json!(cert);
                v["key_path"] = json!(key);
            }
            Self::Pem { cert, key } => {
                v["cert_pem"] = json!(cert);
                v["key_pem"] = json!(key.as_str());
            }
        }
    }

    /// Prints the PEM text of `--out -` (the chain, then the key).
    pub(super) fn print(&self) -> anyhow::Result<()> {
        match self {
            Self::Files { .. } => Ok(()),
            Self::Pem { cert, key } => out::text(&format!("{cert}{}", key.as_str())),
        }
    }
}

/// Writes `DIR/cert.pem` (leaf first) and `DIR/key.pem` (0600), or, when
/// `dir` is `-`, keeps the PEM text for stdout.
pub(super) fn save_x509(dir: &Path, chain: &[Vec<u8>], key_pem: &str) -> anyhow::Result<Written> {
    let pem: String = chain
        .iter()
        .map(|der| crate::pem::encode("CERTIFICATE", der))
        .collect();
    if out::is_stdout(dir) {
        return Ok(Written::Pem {
            cert: pem,
            key: zeroize::Zeroizing::new(key_pem.to_owned()),
        });
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create `{}`: {e}", dir.display()))?;
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    write_file(&key_path, key_pem.as_bytes(), 0o600)?;
    write_file(&cert_path, pem.as_bytes(), 0o644)?;
    Ok(Written::Files {
        cert: cert_path,
        key: key_path,
    })
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let err = |e: std::io::Error| anyhow::anyhow!("cannot write `{}`: {e}", path.display());
    let _ = std::fs::remove_file(path);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    Ok(())
}
