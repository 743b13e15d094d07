//! `taskmint.v1.Revocations`, for relying parties and sidecars: the watch
//! feed and its acknowledgements, point status checks, the CRL and the trust
//! bundle. Handlers stay thin; see `call.rs` and `convert.rs`.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use super::call::Calls;
use super::convert::{event_pb, non_empty, status_pb};
use super::pb;
use crate::Error;
use crate::issuer::Issuer;
use crate::revocation::feed::{self, FeedError, FeedItem, FeedOptions, Filter};

/// The `taskmint.v1.Revocations` service.
#[derive(Debug, Clone)]
pub struct RevocationsService {
    calls: Calls,
}

impl RevocationsService {
    /// Wraps the domain issuer (callers are admitted by the guard layer).
    pub fn new(issuer: Arc<Issuer>) -> Self {
        Self {
            calls: Calls::new("Revocations", issuer),
        }
    }
}

/// Feed errors carry their own codes: a cursor the log cannot serve is
/// OUT_OF_RANGE (resync), a subscriber that fell behind is ABORTED (resume).
fn feed_status(e: FeedError) -> Status {
    match e {
        FeedError::Resync { .. } | FeedError::Ahead { .. } => Status::out_of_range(e.to_string()),
        FeedError::Behind { .. } => Status::aborted(e.to_string()),
        FeedError::Store(s) => Status::from(Error::from(s)),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchRevocationsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::revocations_server::Revocations for RevocationsService {
    type WatchRevocationsStream = WatchStream;

    async fn watch_revocations(
        &self,
        req: Request<pb::WatchRevocationsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        self.calls.handle("WatchRevocations", req, |r| r.task_id.clone(), |c, r| async move {
            let filter = Filter {
                trust_domain: non_empty(r.trust_domain),
                spiffe_id: non_empty(r.spiffe_id),
                task_id: non_empty(r.task_id),
            };
            let f = self.calls.issuer.feed_config();
            let opts = FeedOptions { heartbeat: f.heartbeat_interval, buffer: f.subscriber_buffer };
            self.calls.issuer.authorize_watch(&c, r.after_seq, &r.subscriber, &filter).await?;
            tracing::debug!(subscriber = %r.subscriber, caller = %c.spiffe_id, after_seq = r.after_seq, "watch started");
            let feed = feed::watch(self.calls.issuer.revocations().clone(), r.after_seq, filter, opts);
            // Counted in `taskmint_feed_subscribers` until the stream is dropped.
            let open = crate::ops::metrics::get().feed_subscriber();
            let stream = feed.map(move |item| {
                let _ = &open;
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
        self.calls
            .handle(
                "AckRevocations",
                req,
                |_| String::new(),
                |c, r| async move {
                    let acked_seq = self
                        .calls
                        .issuer
                        .ack(&c, &r.subscriber, r.up_to_seq)
                        .await?;
                    Ok((pb::AckRevocationsResponse { acked_seq }, String::new()))
                },
            )
            .await
    }

    async fn check_status(
        &self,
        req: Request<pb::CheckStatusRequest>,
    ) -> Result<Response<pb::CheckStatusResponse>, Status> {
        self.calls
            .handle(
                "CheckStatus",
                req,
                |_| String::new(),
                |c, r| async move {
                    let s = self.calls.issuer.check_status(&c, &r.credential_id).await?;
                    Ok((status_pb(&s), r.credential_id))
                },
            )
            .await
    }

    async fn get_crl(
        &self,
        req: Request<pb::GetCrlRequest>,
    ) -> Result<Response<pb::GetCrlResponse>, Status> {
        self.calls
            .handle(
                "GetCrl",
                req,
                |_| String::new(),
                |c, _| async move {
                    let crl = self.calls.issuer.crl(&c).await?;
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

    async fn get_trust_bundle(
        &self,
        req: Request<pb::GetTrustBundleRequest>,
    ) -> Result<Response<pb::GetTrustBundleResponse>, Status> {
        self.calls.trust_bundle(req).await
    }
}
