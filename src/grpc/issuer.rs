//! `taskmint.v1.Issuer`, for workloads that mint: thin handlers that decode,
//! call the domain issuer and encode. Authentication, the log line and the
//! error mapping are in `call.rs`; conversions in `convert.rs`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::call::Calls;
use super::convert::{
    credential_pb, non_empty, outcome_pb, status_pb, task_id_of, task_pb, task_ref, ttl,
};
use super::pb;
use crate::Error;
use crate::issuer::{self, Issuer, MintJwt, MintX509};

/// The `taskmint.v1.Issuer` service.
#[derive(Debug, Clone)]
pub struct IssuerService {
    calls: Calls,
}

impl IssuerService {
    /// Wraps the domain issuer (callers are admitted by the guard layer).
    pub fn new(issuer: Arc<Issuer>) -> Self {
        Self {
            calls: Calls::new("Issuer", issuer),
        }
    }
}

#[tonic::async_trait]
impl pb::issuer_server::Issuer for IssuerService {
    async fn mint_x509(
        &self,
        req: Request<pb::MintX509Request>,
    ) -> Result<Response<pb::MintX509Response>, Status> {
        self.calls
            .handle(
                "MintX509",
                req,
                |r| r.task_id.clone(),
                |c, r| async move {
                    let m = self
                        .calls
                        .issuer
                        .mint_x509(
                            &c,
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
                            credential: Some(credential_pb(&m.record, Some(&m.task))),
                            cert_chain: m.chain,
                        },
                        id,
                    ))
                },
            )
            .await
    }

    async fn mint_jwt(
        &self,
        req: Request<pb::MintJwtRequest>,
    ) -> Result<Response<pb::MintJwtResponse>, Status> {
        self.calls
            .handle(
                "MintJwt",
                req,
                |r| r.task_id.clone(),
                |c, r| async move {
                    let m = self
                        .calls
                        .issuer
                        .mint_jwt(
                            &c,
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
                            credential: Some(credential_pb(&m.record, Some(&m.task))),
                            token: m.token,
                        },
                        id,
                    ))
                },
            )
            .await
    }

    async fn renew(
        &self,
        req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        self.calls
            .handle(
                "Renew",
                req,
                |_| String::new(),
                |c, r| async move {
                    let (m, superseded) = self
                        .calls
                        .issuer
                        .renew(
                            &c,
                            issuer::Renew {
                                credential_id: r.credential_id,
                                csr: r.csr,
                                ttl: ttl(r.ttl_seconds),
                                revoke_previous: r.revoke_previous,
                            },
                        )
                        .await?;
                    let id = m.record.id.clone();
                    Ok((
                        pb::RenewResponse {
                            credential: Some(credential_pb(&m.record, Some(&m.task))),
                            cert_chain: m.chain,
                            token: m.token,
                            renewal_count: m.record.renewal_count,
                            superseded_seq: superseded.unwrap_or(0),
                        },
                        id,
                    ))
                },
            )
            .await
    }

    async fn revoke(
        &self,
        req: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        use pb::revoke_request::Target;
        let task = |r: &pb::RevokeRequest| match &r.target {
            Some(Target::Task(t)) => t.task_id.clone(),
            _ => String::new(),
        };
        self.calls
            .handle("Revoke", req, task, |c, r| async move {
                let target = match r.target {
                    Some(Target::CredentialId(id)) => issuer::RevokeTarget::Credential(id),
                    Some(Target::Task(t)) => issuer::RevokeTarget::Task(task_ref(Some(t))?),
                    Some(Target::SpiffeId(id)) => issuer::RevokeTarget::Workload(id),
                    Some(Target::TrustDomain(td)) => issuer::RevokeTarget::TrustDomain(td),
                    None => {
                        return Err(Error::InvalidArgument(
                            "a target is required: credential_id, task, spiffe_id or trust_domain"
                                .into(),
                        ));
                    }
                };
                let o = self.calls.issuer.revoke(&c, target, &r.reason).await?;
                Ok((outcome_pb(o), String::new()))
            })
            .await
    }

    async fn begin_task(
        &self,
        req: Request<pb::BeginTaskRequest>,
    ) -> Result<Response<pb::BeginTaskResponse>, Status> {
        self.calls
            .handle(
                "BeginTask",
                req,
                |r| r.task_id.clone(),
                |c, r| async move {
                    let t = self
                        .calls
                        .issuer
                        .begin_task(
                            &c,
                            issuer::BeginTask {
                                task_id: r.task_id,
                                purpose: r.purpose,
                                ticket: r.ticket,
                                lifetime: ttl(r.lifetime_seconds),
                                labels: r.labels.into_iter().collect(),
                                owner: non_empty(r.owner),
                                audiences: r.audiences,
                                break_glass: r.break_glass,
                                justification: r.justification,
                            },
                        )
                        .await?;
                    Ok((
                        pb::BeginTaskResponse {
                            task: Some(task_pb(&t)),
                        },
                        String::new(),
                    ))
                },
            )
            .await
    }

    async fn complete_task(
        &self,
        req: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::CompleteTaskResponse>, Status> {
        let task = |r: &pb::CompleteTaskRequest| task_id_of(r.task.as_ref());
        self.calls
            .handle("CompleteTask", req, task, |c, r| async move {
                let (t, o) = self
                    .calls
                    .issuer
                    .complete_task(&c, task_ref(r.task)?)
                    .await?;
                Ok((
                    pb::CompleteTaskResponse {
                        task: Some(task_pb(&t)),
                        revoked: Some(outcome_pb(o)),
                    },
                    String::new(),
                ))
            })
            .await
    }

    async fn get_task(
        &self,
        req: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        let task = |r: &pb::GetTaskRequest| task_id_of(r.task.as_ref());
        self.calls
            .handle("GetTask", req, task, |c, r| async move {
                let (t, creds) = self.calls.issuer.get_task(&c, task_ref(r.task)?).await?;
                let credentials = creds
                    .iter()
                    .map(|(rec, st)| pb::CredentialStatus {
                        credential: Some(credential_pb(rec, Some(&t))),
                        status: Some(status_pb(st)),
                        predecessor: rec.predecessor.clone().unwrap_or_default(),
                        renewal_count: rec.renewal_count,
                    })
                    .collect();
                Ok((
                    pb::GetTaskResponse {
                        task: Some(task_pb(&t)),
                        credentials,
                    },
                    String::new(),
                ))
            })
            .await
    }

    async fn delegate_task(
        &self,
        req: Request<pb::DelegateTaskRequest>,
    ) -> Result<Response<pb::DelegateTaskResponse>, Status> {
        let task = |r: &pb::DelegateTaskRequest| task_id_of(r.parent.as_ref());
        self.calls
            .handle("DelegateTask", req, task, |c, r| async move {
                let t = self
                    .calls
                    .issuer
                    .delegate(
                        &c,
                        issuer::Delegate {
                            parent: task_ref(r.parent)?,
                            delegate: r.delegate,
                            audiences: r.audiences,
                            lifetime: ttl(r.lifetime_seconds),
                            task_id: non_empty(r.task_id),
                        },
                    )
                    .await?;
                Ok((
                    pb::DelegateTaskResponse {
                        task: Some(task_pb(&t)),
                    },
                    String::new(),
                ))
            })
            .await
    }

    async fn get_trust_bundle(
        &self,
        req: Request<pb::GetTrustBundleRequest>,
    ) -> Result<Response<pb::GetTrustBundleResponse>, Status> {
        self.calls.trust_bundle(req).await
    }
}
