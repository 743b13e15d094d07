//! `taskmint.v1.Issuer`: thin handlers that authenticate, decode, call the
//! domain and encode. Each request is logged once at info, without secrets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};

use super::auth;
use super::pb;
use crate::Error;
use crate::issuer::{Issuer, MintJwt, MintX509};
use crate::store::{CredentialKind, CredentialRecord};
use crate::tls::TlsMaterial;

/// The service implementation.
#[derive(Debug, Clone)]
pub struct IssuerService {
    issuer: Arc<Issuer>,
    material: Arc<TlsMaterial>,
}

impl IssuerService {
    /// Wraps the domain issuer.
    pub fn new(issuer: Arc<Issuer>, material: Arc<TlsMaterial>) -> Self {
        Self { issuer, material }
    }
}

fn ttl(seconds: u64) -> Option<Duration> {
    (seconds != 0).then(|| Duration::from_secs(seconds))
}

/// Converts a stored record to its wire form.
pub fn credential_pb(r: &CredentialRecord) -> pb::Credential {
    pb::Credential {
        id: r.id.clone(),
        kind: match r.kind {
            CredentialKind::X509 => pb::CredentialKind::X509,
            CredentialKind::Jwt => pb::CredentialKind::Jwt,
        } as i32,
        spiffe_id: r.spiffe_id.clone(),
        task_id: r.task_id.clone(),
        audience: r.audience.clone().unwrap_or_default(),
        issued_at: r.issued_at,
        not_before: r.not_before,
        expires_at: r.not_after,
        task_owner: r.task_owner.clone(),
    }
}

/// Logs one line for a finished request and converts the error.
fn finish<T>(
    rpc: &'static str,
    peer: Option<std::net::SocketAddr>,
    caller: Option<&str>,
    task: &str,
    started: Instant,
    result: Result<(T, String), Error>,
) -> Result<T, Status> {
    let micros = started.elapsed().as_micros() as u64;
    let peer = peer.map(|p| p.to_string()).unwrap_or_default();
    let caller = caller.unwrap_or("-");
    match result {
        Ok((value, credential_id)) => {
            tracing::info!(rpc, %peer, caller, task, credential_id, code = "OK", micros);
            Ok(value)
        }
        Err(e) => {
            let status = Status::from(e);
            tracing::info!(rpc, %peer, caller, task, code = ?status.code(), error = status.message(), micros);
            Err(status)
        }
    }
}

fn peer<T>(req: &Request<T>) -> Option<std::net::SocketAddr> {
    req.extensions().get::<auth::ConnInfo>().map(|i| i.peer)
}

#[tonic::async_trait]
impl pb::issuer_server::Issuer for IssuerService {
    async fn mint_x509(
        &self,
        req: Request<pb::MintX509Request>,
    ) -> Result<Response<pb::MintX509Response>, Status> {
        let started = Instant::now();
        let peer = peer(&req);
        let caller = auth::caller(&req, &self.material);
        let id = caller.as_ref().ok().map(|c| c.spiffe_id.to_string());
        let r = req.into_inner();
        let task = r.task_id.clone();
        let result = async {
            let caller = caller?;
            let m = self
                .issuer
                .mint_x509(
                    &caller,
                    MintX509 {
                        task_id: r.task_id,
                        csr: r.csr,
                        ttl: ttl(r.ttl_seconds),
                    },
                )
                .await?;
            let id = m.record.id.clone();
            Ok((
                pb::MintX509Response {
                    credential: Some(credential_pb(&m.record)),
                    cert_chain: m.chain,
                },
                id,
            ))
        }
        .await;
        finish("MintX509", peer, id.as_deref(), &task, started, result).map(Response::new)
    }

    async fn mint_jwt(
        &self,
        req: Request<pb::MintJwtRequest>,
    ) -> Result<Response<pb::MintJwtResponse>, Status> {
        let started = Instant::now();
        let peer = peer(&req);
        let caller = auth::caller(&req, &self.material);
        let id = caller.as_ref().ok().map(|c| c.spiffe_id.to_string());
        let r = req.into_inner();
        let task = r.task_id.clone();
        let result = async {
            let caller = caller?;
            let m = self
                .issuer
                .mint_jwt(
                    &caller,
                    MintJwt {
                        task_id: r.task_id,
                        audience: r.audience,
                        ttl: ttl(r.ttl_seconds),
                    },
                )
                .await?;
            let id = m.record.id.clone();
            Ok((
                pb::MintJwtResponse {
                    credential: Some(credential_pb(&m.record)),
                    token: m.token,
                },
                id,
            ))
        }
        .await;
        finish("MintJwt", peer, id.as_deref(), &task, started, result).map(Response::new)
    }

    async fn get_trust_bundle(
        &self,
        req: Request<pb::GetTrustBundleRequest>,
    ) -> Result<Response<pb::GetTrustBundleResponse>, Status> {
        let started = Instant::now();
        let peer = peer(&req);
        let caller = auth::caller(&req, &self.material);
        let id = caller.as_ref().ok().map(|c| c.spiffe_id.to_string());
        let result = caller.map_err(Error::from).map(|_| {
            let b = self.issuer.trust_bundle();
            (
                pb::GetTrustBundleResponse {
                    trust_domain: b.trust_domain,
                    x509_authorities: b.x509_authorities,
                    x509_authorities_pem: b.pem,
                    spiffe_bundle_jwks: b.jwks,
                    sequence: b.sequence,
                    refresh_hint_seconds: crate::trust::REFRESH_HINT_SECS,
                },
                String::new(),
            )
        });
        finish("GetTrustBundle", peer, id.as_deref(), "", started, result).map(Response::new)
    }
}
