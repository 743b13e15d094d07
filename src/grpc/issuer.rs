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
use crate::audit::AuditEvent;
use crate::identity::Caller;
use crate::issuer::{self, CredentialState, Issuer, MintJwt, MintX509, RevokeOutcome, TaskRef};
use crate::revocation::feed::{self, FeedError, FeedItem, FeedOptions, Filter};
use crate::store::{
    CredentialKind, CredentialRecord, GrantFilter, RevocationEvent, TaskRecord, TaskState,
};
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

/// Converts a stored record (and its task, when at hand) to its wire form.
pub fn credential_pb(r: &CredentialRecord, task: Option<&TaskRecord>) -> pb::Credential {
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
        accountable_owner: task
            .map(|t| t.accountable_owner.clone())
            .unwrap_or_default(),
        break_glass: task.is_some_and(|t| t.break_glass),
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
        accountable_owner: t.accountable_owner.clone(),
        break_glass: t.break_glass,
        justification: t.justification.clone(),
        reviewed_by: t.review.as_ref().map(|r| r.by.clone()).unwrap_or_default(),
        reviewed_at: t.review.as_ref().map(|r| r.at).unwrap_or(0),
        review_note: t
            .review
            .as_ref()
            .map(|r| r.note.clone())
            .unwrap_or_default(),
        parent: t.parent.as_ref().map(|(owner, task_id)| pb::TaskRef {
            task_id: task_id.clone(),
            owner: owner.clone(),
        }),
        depth: t.depth,
        audiences: t.audiences.clone(),
    }
}

fn audit_pb(e: &AuditEvent) -> pb::AuditEvent {
    let b = &e.body;
    pb::AuditEvent {
        seq: e.seq,
        time: b.time,
        prev_hash: e.prev_hash.clone(),
        hash: e.hash.clone(),
        kind: b.kind.clone(),
        actor: b.actor.clone(),
        task_owner: b.task_owner.clone(),
        task_id: b.task_id.clone(),
        credential_id: b.credential_id.clone(),
        decision: b.decision.clone(),
        policies: b.policies.clone(),
        reason: b.reason.clone(),
        break_glass: b.break_glass,
        ref_seq: b.ref_seq.unwrap_or(0),
        subject: b.subject.clone(),
    }
}

/// Converts a wire audit event back (for `audit verify` over exports).
pub fn audit_from_pb(e: pb::AuditEvent) -> AuditEvent {
    AuditEvent {
        seq: e.seq,
        prev_hash: e.prev_hash,
        hash: e.hash,
        body: crate::audit::AuditDraft {
            time: e.time,
            kind: e.kind,
            actor: e.actor,
            task_owner: e.task_owner,
            task_id: e.task_id,
            credential_id: e.credential_id,
            decision: e.decision,
            policies: e.policies,
            reason: e.reason,
            break_glass: e.break_glass,
            ref_seq: (e.ref_seq != 0).then_some(e.ref_seq),
            subject: e.subject,
        },
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
                        credential: Some(credential_pb(&m.record, Some(&m.task))),
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
            self.issuer.authorize_watch(&c, r.after_seq, &r.subscriber).await?;
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
            |c, r| async move {
                let s = self.issuer.check_status(&c, &r.credential_id).await?;
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

    async fn delegate_task(
        &self,
        req: Request<pb::DelegateTaskRequest>,
    ) -> Result<Response<pb::DelegateTaskResponse>, Status> {
        let task = |r: &pb::DelegateTaskRequest| {
            r.parent
                .as_ref()
                .map(|t| t.task_id.clone())
                .unwrap_or_default()
        };
        self.handle("DelegateTask", req, task, |c, r| async move {
            let t = self
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

    async fn list_grants(
        &self,
        req: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        self.handle(
            "ListGrants",
            req,
            |r| r.task_id.clone(),
            |c, r| async move {
                let filter = GrantFilter {
                    workload: non_empty(r.workload),
                    owner: non_empty(r.owner),
                    task_id: non_empty(r.task_id),
                    break_glass_only: r.break_glass_only,
                };
                let (grants, next) = self
                    .issuer
                    .list_grants(&c, filter, r.page_size, &r.page_token)
                    .await?;
                let grants = grants
                    .iter()
                    .map(|g| pb::Grant {
                        task: Some(task_pb(&g.task)),
                        credentials: g
                            .credentials
                            .iter()
                            .map(|cr| credential_pb(cr, Some(&g.task)))
                            .collect(),
                        remaining_seconds: g.remaining,
                    })
                    .collect();
                Ok((
                    pb::ListGrantsResponse {
                        grants,
                        next_page_token: next,
                    },
                    String::new(),
                ))
            },
        )
        .await
    }

    async fn export_audit(
        &self,
        req: Request<pb::ExportAuditRequest>,
    ) -> Result<Response<pb::ExportAuditResponse>, Status> {
        self.handle(
            "ExportAudit",
            req,
            |_| String::new(),
            |c, r| async move {
                let limit = if r.limit == 0 { 1000 } else { r.limit };
                let (events, head) = self.issuer.audit_export(&c, r.after_seq, limit).await?;
                let (head_seq, head_hash) = head.unwrap_or_default();
                Ok((
                    pb::ExportAuditResponse {
                        events: events.iter().map(audit_pb).collect(),
                        head_seq,
                        head_hash,
                    },
                    String::new(),
                ))
            },
        )
        .await
    }

    async fn get_task_timeline(
        &self,
        req: Request<pb::GetTaskTimelineRequest>,
    ) -> Result<Response<pb::GetTaskTimelineResponse>, Status> {
        let task = |r: &pb::GetTaskTimelineRequest| {
            r.task
                .as_ref()
                .map(|t| t.task_id.clone())
                .unwrap_or_default()
        };
        self.handle("GetTaskTimeline", req, task, |c, r| async move {
            let t = self.issuer.timeline(&c, task_ref(r.task)?).await?;
            Ok((
                pb::GetTaskTimelineResponse {
                    task: Some(task_pb(&t.task)),
                    events: t.events.iter().map(audit_pb).collect(),
                    acks: t
                        .acks
                        .iter()
                        .map(|(seq, acks)| pb::RevocationAcks {
                            seq: *seq,
                            acks: acks.iter().map(audit_pb).collect(),
                        })
                        .collect(),
                },
                String::new(),
            ))
        })
        .await
    }

    async fn list_break_glass(
        &self,
        req: Request<pb::ListBreakGlassRequest>,
    ) -> Result<Response<pb::ListBreakGlassResponse>, Status> {
        self.handle(
            "ListBreakGlass",
            req,
            |_| String::new(),
            |c, r| async move {
                let tasks = self.issuer.break_glass_list(&c, r.include_reviewed).await?;
                Ok((
                    pb::ListBreakGlassResponse {
                        tasks: tasks.iter().map(task_pb).collect(),
                    },
                    String::new(),
                ))
            },
        )
        .await
    }

    async fn mark_reviewed(
        &self,
        req: Request<pb::MarkReviewedRequest>,
    ) -> Result<Response<pb::MarkReviewedResponse>, Status> {
        let task = |r: &pb::MarkReviewedRequest| {
            r.task
                .as_ref()
                .map(|t| t.task_id.clone())
                .unwrap_or_default()
        };
        self.handle("MarkReviewed", req, task, |c, r| async move {
            let t = self
                .issuer
                .mark_reviewed(&c, task_ref(r.task)?, &r.note)
                .await?;
            Ok((
                pb::MarkReviewedResponse {
                    task: Some(task_pb(&t)),
                },
                String::new(),
            ))
        })
        .await
    }

    async fn get_policy_status(
        &self,
        req: Request<pb::GetPolicyStatusRequest>,
    ) -> Result<Response<pb::GetPolicyStatusResponse>, Status> {
        self.handle(
            "GetPolicyStatus",
            req,
            |_| String::new(),
            |c, _| async move {
                let s = self.issuer.policy_status(&c).await?;
                Ok((
                    pb::GetPolicyStatusResponse {
                        path: s.path,
                        sha256: s.sha256,
                        policy_ids: s.ids,
                        loaded_at: s.loaded_at,
                        last_error: s.last_error.unwrap_or_default(),
                        last_error_at: s.last_error_at.unwrap_or(0),
                    },
                    String::new(),
                ))
            },
        )
        .await
    }
}

use tokio_stream::StreamExt as _;
