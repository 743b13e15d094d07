//! `taskmint status`, `taskmint revoke`, `taskmint renew`, `taskmint crl`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args};
use serde_json::{Value, json};

use super::mint::Written;
use super::out::{self, Exit, code};
use super::{ConnArgs, parse_duration, rfc3339, status_line};
use crate::grpc::pb;

/// A credential state as JSON: `state`, `reason`, `revoked_at`, `expires_at`.
pub fn status_json(s: &pb::CheckStatusResponse) -> Value {
    let state = pb::CredentialState::try_from(s.state).unwrap_or(pb::CredentialState::Unspecified);
    json!({
        "state": state.as_str_name().trim_start_matches("CREDENTIAL_STATE_").to_lowercase(),
        "reason": (!s.reason.is_empty()).then(|| s.reason.clone()),
        "revoked_at": (s.revoked_at != 0).then(|| rfc3339(s.revoked_at)),
        "expires_at": (s.expires_at != 0).then(|| rfc3339(s.expires_at)),
    })
}

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Credential id (serial hex or jti).
    #[arg(long)]
    pub credential: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// A credential state in words: `active, expires ...`, `revoked at ...`.
pub fn status_text(s: &pb::CheckStatusResponse) -> String {
    let state = pb::CredentialState::try_from(s.state).unwrap_or(pb::CredentialState::Unspecified);
    let expires = if s.expires_at != 0 {
        format!(", expires {}", rfc3339(s.expires_at))
    } else {
        String::new()
    };
    match state {
        pb::CredentialState::Active => format!("active{expires}"),
        pb::CredentialState::Revoked => format!(
            "revoked at {} ({}){expires}",
            rfc3339(s.revoked_at),
            if s.reason.is_empty() {
                "no reason given"
            } else {
                &s.reason
            }
        ),
        pb::CredentialState::Expired => format!("expired at {}", rfc3339(s.expires_at)),
        _ => "unknown: not issued by this issuer".to_owned(),
    }
}

pub(super) async fn status(a: StatusArgs) -> anyhow::Result<()> {
    let mut c = a.conn.connect().await?;
    let s = c
        .check_status(&a.credential)
        .await
        .map_err(|s| status_line(&s))?;
    if a.json {
        out::json(&status_json(&s))?;
    } else {
        out::line(status_text(&s))?;
    }
    // Scripts ask `taskmint status` whether to trust a credential: only
    // `active` succeeds.
    let exit = match pb::CredentialState::try_from(s.state) {
        Ok(pb::CredentialState::Active) => return Ok(()),
        Ok(pb::CredentialState::Revoked) => code::REVOKED,
        Ok(pb::CredentialState::Expired) => code::EXPIRED,
        _ => code::UNKNOWN,
    };
    Err(Exit(exit).into())
}

/// Arguments of `revoke`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["credential", "task", "workload", "trust_domain"])))]
pub struct RevokeArgs {
    /// One credential.
    #[arg(long)]
    pub credential: Option<String>,
    /// Every credential of a task (yours, or --holder's for admins).
    #[arg(long)]
    pub task: Option<String>,
    /// SPIFFE ID holding --task [default: you].
    #[arg(long, default_value = "", requires = "task")]
    pub holder: String,
    /// Every active credential of a workload (the incident switch).
    #[arg(long, value_name = "SPIFFE_ID")]
    pub workload: Option<String>,
    /// Every active credential of a trust domain (admins).
    #[arg(long, value_name = "TD")]
    pub trust_domain: Option<String>,
    /// Reason.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub(super) async fn revoke(a: RevokeArgs) -> anyhow::Result<()> {
    use pb::revoke_request::Target;
    let target = if let Some(id) = a.credential {
        Target::CredentialId(id)
    } else if let Some(t) = a.task {
        Target::Task(pb::TaskRef {
            task_id: t,
            holder: a.holder,
        })
    } else if let Some(w) = a.workload {
        Target::SpiffeId(w)
    } else if let Some(td) = a.trust_domain {
        Target::TrustDomain(td)
    } else {
        anyhow::bail!("name what to revoke: --credential, --task, --workload or --trust-domain");
    };
    let mut c = a.conn.connect().await?;
    let r = c
        .revoke(target, &a.reason)
        .await
        .map_err(|s| status_line(&s))?;
    if a.json {
        out::json(&json!({ "revoked": r.revoked, "seqs": r.seqs, "message": r.message }))?;
    } else {
        out::line(&r.message)?;
    }
    Ok(())
}

/// Arguments of `renew`.
#[derive(Debug, Args)]
pub struct RenewArgs {
    /// The credential to renew.
    #[arg(long)]
    pub credential: String,
    /// For X.509: directory for the new cert.pem and key.pem (`-`: print
    /// the chain and the key as PEM).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Lifetime [default: the issuer's].
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// Revoke the renewed credential at once (reason `superseded`).
    #[arg(long)]
    pub revoke_previous: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub(super) async fn renew(a: RenewArgs) -> anyhow::Result<()> {
    let (csr, key_pem) = match &a.out {
        Some(_) => {
            let (csr, key) = crate::client::new_key_and_csr()?;
            (csr, Some(key))
        }
        None => (Vec::new(), None),
    };
    let mut c = a.conn.connect().await?;
    let r = c
        .renew(pb::RenewRequest {
            credential_id: a.credential,
            csr,
            ttl_seconds: a.ttl.map(|d| d.as_secs()).unwrap_or(0),
            revoke_previous: a.revoke_previous,
        })
        .await
        .map_err(|s| status_line(&s))?;
    let cred = r.credential.unwrap_or_default();
    let mut v = json!({
        "credential_id": cred.id,
        "task_id": cred.task_id,
        "spiffe_id": cred.spiffe_id,
        "expires_at": rfc3339(cred.expires_at),
        "renewal_count": r.renewal_count,
    });
    if !r.token.is_empty() {
        v["token"] = json!(r.token);
    }
    let mut written = None;
    if !r.cert_chain.is_empty() {
        let (Some(dir), Some(key)) = (&a.out, key_pem) else {
            anyhow::bail!("renewing an X.509 credential needs --out DIR");
        };
        let w = super::mint::save_x509(dir, &r.cert_chain, &key)?;
        w.describe(&mut v);
        written = Some(w);
    }
    if a.json {
        return out::json(&v);
    }
    match written {
        Some(Written::Files { cert, key }) => out::line(format_args!(
            "renewed as {} (renewal {}) for {} (task {}), expires {}\n  {}\n  {}",
            cred.id,
            r.renewal_count,
            cred.spiffe_id,
            cred.task_id,
            rfc3339(cred.expires_at),
            cert.display(),
            key.display()
        )),
        Some(w @ Written::Pem { .. }) => w.print(),
        // A JWT alone, as `mint jwt` prints it.
        None => out::line(&r.token),
    }
}

/// Arguments of `crl`.
#[derive(Debug, Args)]
pub struct CrlArgs {
    /// Where to write the DER CRL (`-`: stdout).
    #[arg(long)]
    pub out: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub(super) async fn crl(a: CrlArgs) -> anyhow::Result<()> {
    let to_stdout = out::is_stdout(&a.out);
    if to_stdout && a.json {
        return Err(out::usage(
            "`--out -` writes the DER CRL to stdout, so `--json` has nowhere to go",
        ));
    }
    let mut c = a.conn.connect().await?;
    let r = c.crl().await.map_err(|s| status_line(&s))?;
    if to_stdout {
        return out::bytes(&r.crl);
    }
    std::fs::write(&a.out, &r.crl)
        .map_err(|e| anyhow::anyhow!("cannot write `{}`: {e}", a.out.display()))?;
    if a.json {
        out::json(&json!({
            "path": a.out,
            "crl_number": r.crl_number,
            "this_update": rfc3339(r.this_update),
            "next_update": rfc3339(r.next_update),
        }))
    } else {
        out::line(format_args!(
            "wrote CRL #{} to {}",
            r.crl_number,
            a.out.display()
        ))
    }
}
