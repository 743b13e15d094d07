//! `taskmint.v1.Issuer`: thin handlers that authenticate, decode, call the
//! domain and encode. Each request is logged once at info, without secrets.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::auth;
use super::pb;
use crate::Error;
use crate::identity::Caller;
use crate::issuer::{self, CredentialState, Issuer, MintJwt, MintX509, RevokeOutcome, TaskRef};
use crate::revocation::feed::{self, FeedError, FeedItem, FeedOptions, Filter};
use crate::store::{CredentialKind, CredentialRecord, RevocationEvent, TaskRecord, TaskState};
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

    /// Authenticates, runs `f`, logs one line, maps the error.
    async fn handle<Req, Resp, F, Fut>(
        &self,
        rpc: &'static str,
        req: Request<Req>,
        task: impl FnOnce(&Req) -> String,
        f: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(Caller, Req) -> Fut,
        Fut: Future<Output = Result<(Resp, String), Error>>,
    {
        let started = Instant::now();
        let peer = req
            .extensions()
            .get::<auth::ConnInfo>()
            .map(|i| i.peer.to_string())
            .unwrap_or_default();
        let caller = auth::caller(&req, &self.material);
        let who = caller
            .as_ref()
            .map(|c| c.spiffe_id.to_string())
            .unwrap_or_else(|_| "-".into());
        let body = req.into_inner();
        let task = task(&body);
        let result = match caller {
            Ok(c) => f(c, body).await,
            Err(e) => Err(Error::from(e)),
        };
        let micros = started.elapsed().as_micros() as u64;
        match result {
            Ok((resp, credential_id)) => {
                tracing::info!(rpc, %peer, caller = %who, task, credential_id, code = "OK", micros);
                Ok(Response::new(resp))
            }
            Err(e) => {
                let status = Status::from(e);
                tracing::info!(rpc, %peer, caller = %who, task, code = ?status.code(), error = status.message(), micros);
                Err(status)
            }
        }
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

fn task_pb(t: &TaskRecord) -> pb::Task {
    pb::Task {
        task_id: t.task_id.clone(),
        owner: t.owner.clone(),
        purpose: t.purpose.clone(),
        ticket: t.ticket.clone(),
        labels: t.labels.clone().into_iter().collect(),
        implicit: t.implicit,
        created_at: t.created_at,
        deadline: t.deadline,
        state: match t.state {
            TaskState::Active => pb::TaskState::Active,
            TaskState::Completed => pb::TaskState::Completed,
            TaskState::Expired => pb::TaskState::Expired,
        } as i32,
        ended_at: t.ended_at.unwrap_or(0),
    }
}

fn status_pb(s: &CredentialState) -> pb::CheckStatusResponse {
    use pb::CredentialState as S;
    match s {
        CredentialState::Active { expires_at } => pb::CheckStatusResponse {
            state: S::Active as i32,
            expires_at: *expires_at,
            ..Default::default()
        },
        CredentialState::Revoked {
            reason,
            revoked_at,
            expires_at,
        } => pb::CheckStatusResponse {
            state: S::Revoked as i32,
            reason: reason.clone(),
            revoked_at: *revoked_at,
            expires_at: *expires_at,
        },
        CredentialState::Expired { expires_at } => pb::CheckStatusResponse {
            state: S::Expired as i32,
            expires_at: *expires_at,
            ..Default::default()
        },
        CredentialState::Unknown => pb::CheckStatusResponse {
            state: S::Unknown as i32,
            ..Default::default()
        },
    }
}

fn outcome_pb(o: RevokeOutcome) -> pb::RevokeResponse {
    pb::RevokeResponse {
        revoked: o.revoked,
        seqs: o.seqs,
        message: o.message,
    }
}

/// Converts a log entry to its wire form.
pub fn event_pb(e: &RevocationEvent) -> pb::RevocationEvent {
    pb::RevocationEvent {
        seq: e.seq,
        kind: e.kind.clone(),
        credential_ids: e.credential_ids.clone(),
        task_id: e.task_id.clone(),
        task_owner: e.task_owner.clone(),
        spiffe_id: e.spiffe_id.clone(),
        trust_domain: e.trust_domain.clone(),
        reason: e.reason.clone(),
        revoked_at: e.revoked_at,
        expires_at: e.expires_at,
        set: e.set_jwt.clone(),
    }
}

fn task_ref(r: Option<pb::TaskRef>) -> Result<TaskRef, Error> {
    let r = r.ok_or_else(|| Error::InvalidArgument("task is required".into()))?;
    Ok(TaskRef {
        task_id: r.task_id,
        owner: (!r.owner.is_empty()).then_some(r.owner),
    })
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn feed_status(e: FeedError) -> Status {
    match e {
        FeedError::Resync { .. } | FeedError::Ahead { .. } => Status::out_of_range(e.to_string()),
        FeedError::Behind { .. } => Status::aborted(e.to_string()),
        FeedError::Store(s) => Status::from(Error::from(s)),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchRevocationsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::issuer_server::Issuer for IssuerService {
    async fn mint_x509(
        &self,
        req: Request<pb::MintX509Request>,
    ) -> Result<Response<pb::MintX509Response>, Status> {
        self.handle(
            "MintX509",
            req,
            |r| r.task_id.clone(),
            |c, r| async move {
                let m = self
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
                        credential: Some(credential_pb(&m.record)),
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
        self.handle(
            "MintJwt",
            req,
            |r| r.task_id.clone(),
            |c, r| async move {
                let m = self
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
                        credential: Some(credential_pb(&m.record)),
                        token: m.token,
                    },
                    id,
                ))
            },
        )
        .await
    }

    async fn get_trust_bundle(
        &self,
        req: Request<pb::GetTrustBundleRequest>,
    ) -> Result<Response<pb::GetTrustBundleResponse>, Status> {
        self.handle(
            "GetTrustBundle",
            req,
            |_| String::new(),
            |_, _| async move {
                let b = self.issuer.trust_bundle().await?;
                Ok((
                    pb::GetTrustBundleResponse {
                        trust_domain: b.trust_domain,
                        x509_authorities: b.x509_authorities,
                        x509_authorities_pem: b.pem,
                        spiffe_bundle_jwks: b.jwks,
                        sequence: b.sequence,
                        refresh_hint_seconds: crate::trust::REFRESH_HINT_SECS,
                    },
                    String::new(),
                ))
            },
        )
        .await
    }

    async fn begin_task(
        &self,
        req: Request<pb::BeginTaskRequest>,
    ) -> Result<Response<pb::BeginTaskResponse>, Status> {
        self.handle(
            "BeginTask",
            req,
            |r| r.task_id.clone(),
            |c, r| async move {
                let t = self
                    .issuer
                    .begin_task(
                        &c,
                        issuer::BeginTask {
                            task_id: r.task_id,
                            purpose: r.purpose,
                            ticket: r.ticket,
                            lifetime: ttl(r.lifetime_seconds),
                            labels: r.labels.into_iter().collect(),
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
        let task = |r: &pb::CompleteTaskRequest| {
            r.task
                .as_ref()
                .map(|t| t.task_id.clone())
                .unwrap_or_default()
        };
        self.handle("CompleteTask", req, task, |c, r| async move {
            let (t, o) = self.issuer.complete_task(&c, task_ref(r.task)?).await?;
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
        let task = |r: &pb::GetTaskRequest| {
            r.task
                .as_ref()
                .map(|t| t.task_id.clone())
                .unwrap_or_default()
        };
        self.handle("GetTask", req, task, |c, r| async move {
            let (t, creds) = self.issuer.get_task(&c, task_ref(r.task)?).await?;
            let credentials = creds
                .iter()
                .map(|(rec, st)| pb::CredentialStatus {
                    credential: Some(credential_pb(rec)),
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

    async fn revoke(
        &self,
        req: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        use pb::revoke_request::Target;
        let task = |r: &pb::RevokeRequest| match &r.target {
            Some(Target::Task(t)) => t.task_id.clone(),
            _ => String::new(),
        };
        self.handle("Revoke", req, task, |c, r| async move {
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
            let o = self.issuer.revoke(&c, target, &r.reason).await?;
            Ok((outcome_pb(o), String::new()))
        })
        .await
    }

    async fn renew(
        &self,
        req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        self.handle(
            "Renew",
            req,
            |_| String::new(),
            |c, r| async move {
                let (m, superseded) = self
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
                        credential: Some(credential_pb(&m.record)),
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

    type WatchRevocationsStream = WatchStream;

    async fn watch_revocations(
        &self,
        req: Request<pb::WatchRevocationsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        self.handle("WatchRevocations", req, |r| r.task_id.clone(), |c, r| async move {
            let filter = Filter {
                trust_domain: non_empty(r.trust_domain),
                spiffe_id: non_empty(r.spiffe_id),
                task_id: non_empty(r.task_id),
            };
            let f = self.issuer.feed_config();
            let opts = FeedOptions { heartbeat: f.heartbeat_interval, buffer: f.subscriber_buffer };
            tracing::info!(subscriber = %r.subscriber, caller = %c.spiffe_id, after = ?r.after_seq, "watch started");
            let feed = feed::watch(self.issuer.revocations().clone(), r.after_seq, filter, opts);
            let stream = feed.map(|item| {
                use pb::watch_revocations_response::Msg;
                let msg = match item.map_err(feed_status)? {
                    FeedItem::Event(e) => Msg::Event(event_pb(&e)),
                    FeedItem::Synced(seq) => Msg::Synced(pb::Synced { seq }),
                    FeedItem::Heartbeat(seq, time) => Msg::Heartbeat(pb::Heartbeat { seq, time }),
                };
                Ok(pb::WatchRevocationsResponse { msg: Some(msg) })
            });
            Ok((Box::pin(stream) as WatchStream, String::new()))
        })
        .await
    }

    async fn ack_revocations(
        &self,
        req: Request<pb::AckRevocationsRequest>,
    ) -> Result<Response<pb::AckRevocationsResponse>, Status> {
        self.handle(
            "AckRevocations",
            req,
            |_| String::new(),
            |c, r| async move {
                let acked_seq = self.issuer.ack(&c, &r.subscriber, r.up_to_seq).await?;
                Ok((pb::AckRevocationsResponse { acked_seq }, String::new()))
            },
        )
        .await
    }

    async fn get_delivery_status(
        &self,
        req: Request<pb::GetDeliveryStatusRequest>,
    ) -> Result<Response<pb::GetDeliveryStatusResponse>, Status> {
        self.handle(
            "GetDeliveryStatus",
            req,
            |_| String::new(),
            |c, _| async move {
                let (current_seq, subs) = self.issuer.delivery_status(&c).await?;
                let subscribers = subs
                    .into_iter()
                    .map(|s| pb::SubscriberStatus {
                        name: s.name,
                        spiffe_id: s.spiffe_id,
                        acked_seq: s.acked_seq,
                        acked_at: s.acked_at,
                        overdue: s.overdue_since.is_some(),
                        oldest_unacked_seq: s.oldest_unacked.map(|(q, _)| q).unwrap_or(0),
                        overdue_since: s.overdue_since.unwrap_or(0),
                    })
                    .collect();
                Ok((
                    pb::GetDeliveryStatusResponse {
                        current_seq,
                        subscribers,
                    },
                    String::new(),
                ))
            },
        )
        .await
    }

    async fn check_status(
        &self,
        req: Request<pb::CheckStatusRequest>,
    ) -> Result<Response<pb::CheckStatusResponse>, Status> {
        self.handle(
            "CheckStatus",
            req,
            |_| String::new(),
            |_, r| async move {
                let s = self.issuer.check_status(&r.credential_id).await?;
                Ok((status_pb(&s), r.credential_id))
            },
        )
        .await
    }

    async fn get_crl(
        &self,
        req: Request<pb::GetCrlRequest>,
    ) -> Result<Response<pb::GetCrlResponse>, Status> {
        self.handle(
            "GetCrl",
            req,
            |_| String::new(),
            |_, _| async move {
                let crl = self.issuer.crl().await?;
                Ok((
                    pb::GetCrlResponse {
                        crl: crl.der,
                        crl_number: crl.number,
                        this_update: crl.this_update,
                        next_update: crl.next_update,
                    },
                    String::new(),
                ))
            },
        )
        .await
    }
}

use tokio_stream::StreamExt as _;
