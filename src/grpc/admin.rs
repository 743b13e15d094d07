//! `taskmint.v1.Admin`, for operators: inventory, audit export and task
//! timelines, break-glass review, delivery evidence, policy status. Every
//! decision is the domain issuer's (policy); handlers stay thin.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::call::Calls;
use super::convert::{audit_pb, credential_pb, non_empty, task_id_of, task_pb, task_ref};
use super::pb;
use crate::issuer::Issuer;
use crate::store::GrantFilter;

/// The `taskmint.v1.Admin` service.
#[derive(Debug, Clone)]
pub struct AdminService {
    calls: Calls,
}

impl AdminService {
    /// Wraps the domain issuer (callers are admitted by the guard layer).
    pub fn new(issuer: Arc<Issuer>) -> Self {
        Self {
            calls: Calls::new("Admin", issuer),
        }
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn list_grants(
        &self,
        req: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        self.calls
            .handle(
                "ListGrants",
                req,
                |r| r.task_id.clone(),
                |c, r| async move {
                    let filter = GrantFilter {
                        holder: non_empty(r.holder),
                        owner: non_empty(r.owner),
                        task_id: non_empty(r.task_id),
                        break_glass_only: r.break_glass_only,
                    };
                    let (grants, next) = self
                        .calls
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
        self.calls
            .handle(
                "ExportAudit",
                req,
                |_| String::new(),
                |c, r| async move {
                    let limit = if r.limit == 0 {
                        crate::issuer::MAX_EXPORT_LIMIT
                    } else {
                        r.limit
                    };
                    let (events, head) = self
                        .calls
                        .issuer
                        .audit_export(&c, r.after_seq, limit)
                        .await?;
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
        let task = |r: &pb::GetTaskTimelineRequest| task_id_of(r.task.as_ref());
        self.calls
            .handle("GetTaskTimeline", req, task, |c, r| async move {
                let (t, next_page_token) = self
                    .calls
                    .issuer
                    .timeline(&c, task_ref(r.task)?, r.page_size, &r.page_token)
                    .await?;
                Ok((
                    pb::GetTaskTimelineResponse {
                        next_page_token,
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
        self.calls
            .handle(
                "ListBreakGlass",
                req,
                |_| String::new(),
                |c, r| async move {
                    let (tasks, next_page_token) = self
                        .calls
                        .issuer
                        .break_glass_list(&c, r.include_reviewed, r.page_size, &r.page_token)
                        .await?;
                    Ok((
                        pb::ListBreakGlassResponse {
                            tasks: tasks.iter().map(task_pb).collect(),
                            next_page_token,
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
        let task = |r: &pb::MarkReviewedRequest| task_id_of(r.task.as_ref());
        self.calls
            .handle("MarkReviewed", req, task, |c, r| async move {
                let t = self
                    .calls
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

    async fn get_delivery_status(
        &self,
        req: Request<pb::GetDeliveryStatusRequest>,
    ) -> Result<Response<pb::GetDeliveryStatusResponse>, Status> {
        self.calls
            .handle(
                "GetDeliveryStatus",
                req,
                |_| String::new(),
                |c, _| async move {
                    let (current_seq, subs) = self.calls.issuer.delivery_status(&c).await?;
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
                            ssf_delivery: s.ssf.map(|d| d.as_str().to_owned()).unwrap_or_default(),
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

    async fn get_policy_status(
        &self,
        req: Request<pb::GetPolicyStatusRequest>,
    ) -> Result<Response<pb::GetPolicyStatusResponse>, Status> {
        self.calls
            .handle(
                "GetPolicyStatus",
                req,
                |_| String::new(),
                |c, _| async move {
                    let s = self.calls.issuer.policy_status(&c).await?;
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
