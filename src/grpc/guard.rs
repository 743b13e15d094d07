//! The guard: a tower layer in front of every service (health included) that
//! admits or refuses each call before its body is decoded.
//!
//! For every call, in this order:
//! 1. the caller's SVID verdict ([`ConnInfo::caller`]); refused, the call gets
//!    `UNAUTHENTICATED` naming the rule and the connection is closed right
//!    after the answer;
//! 2. a token from the caller's bucket for the call's class
//!    ([`crate::ratelimit::Class`]); refused, `RESOURCE_EXHAUSTED` with the
//!    time to wait;
//! 3. for `WatchRevocations`, a slot among the caller's concurrent watch
//!    streams.
//!
//! A connection that was over its workload's connection cap when it was
//! accepted gets one `RESOURCE_EXHAUSTED` naming the cap and is closed.
//!
//! An admitted call carries its [`Caller`] in the request extensions (the
//! only way a handler learns who called) and holds a ticket that keeps its
//! connection from counting as idle until the response ends. A response
//! stream ends with `UNAUTHENTICATED` when the caller's SVID expires or the
//! reloaded bundles stop trusting it, like a new call would be refused.
//! The guard tells the observer (`observe.rs`), which logs every call, who
//! the caller was.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Bytes, http};

use super::auth::{self, CallTicket, ConnInfo};
use super::observe::CallNote;
use crate::Error;
use crate::identity::AuthError;
use crate::issuer::Issuer;
use crate::ratelimit::{Class, StreamSlot};
use crate::tls::TlsMaterial;

type HttpRequest = http::Request<Body>;
type HttpResponse = http::Response<Body>;

/// Builds a [`Guard`] around the services.
#[derive(Debug, Clone)]
pub(super) struct GuardLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    issuer: Arc<Issuer>,
    material: Arc<TlsMaterial>,
}

impl GuardLayer {
    pub(super) fn new(issuer: Arc<Issuer>, material: Arc<TlsMaterial>) -> Self {
        Self {
            shared: Arc::new(Shared { issuer, material }),
        }
    }
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;
    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The guard around the services `S`.
#[derive(Debug, Clone)]
pub(super) struct Guard<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> tower::Service<HttpRequest> for Guard<S>
where
    S: tower::Service<HttpRequest, Response = HttpResponse> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: HttpRequest) -> Self::Future {
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            match shared.admit(&mut req).await {
                Ok(admitted) => {
                    let response = inner.call(req).await?;
                    Ok(response.map(|body| Body::new(admitted.track(body))))
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// How long a stream whose caller is no longer authenticated may take to
/// deliver its `UNAUTHENTICATED` before its connection is closed.
const STALLED_STREAM_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Method paths whose response is a long-lived stream (a reflection client
/// may keep its bidirectional stream open): each ends when its caller's SVID
/// does.
fn is_stream(path: &str) -> bool {
    matches!(
        path,
        "/taskmint.v1.Revocations/WatchRevocations"
            | "/grpc.health.v1.Health/Watch"
            | "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
            | "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    )
}

impl Shared {
    async fn admit(&self, req: &mut HttpRequest) -> Result<Admitted, Status> {
        let path = req.uri().path().to_owned();
        let Some(info) = req.extensions().get::<ConnInfo>().cloned() else {
            return Err(Status::from(Error::from(AuthError::NoCertificate)));
        };
        // The observer logs the call (with its status) once it ends.
        let note = req
            .extensions()
            .get::<CallNote>()
            .cloned()
            .unwrap_or_default();
        let refused = |caller: &str, e: Error| {
            if caller != "-" {
                note.caller(caller);
            }
            Status::from(e)
        };
        let caller = match info.caller(&self.material) {
            Ok(c) => c,
            Err(e) => {
                // One answer naming the rule, then the connection goes: a
                // peer that cannot authenticate has nothing else to do here.
                info.state.close_soon();
                return Err(refused("-", e.into()));
            }
        };
        let who = caller.spiffe_id.to_string();
        note.caller(&who);
        if let Some(max) = info.over_workload_cap {
            info.state.close_soon();
            return Err(refused(
                &who,
                self.issuer.refuse_connection(&caller, max).await,
            ));
        }
        self.issuer
            .admit(&caller, Class::of_path(&path))
            .await
            .map_err(|e| refused(&who, e))?;
        let mut track = Admitted {
            ticket: info.state.call_started(),
            slot: None,
            ends: None,
            watchdog: None,
        };
        if is_stream(&path) {
            if path.ends_with("/WatchRevocations") {
                track.slot = Some(
                    self.issuer
                        .watch_slot(&caller)
                        .await
                        .map_err(|e| refused(&who, e))?,
                );
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            let (material, state) = (self.material.clone(), info.state.clone());
            let not_after = caller.svid_not_after;
            let watchdog = tokio::spawn(async move {
                let _ = tx.send(svid_end(material, info, not_after).await);
                // The body sends the status when it is next polled; a peer
                // that stopped reading (no flow-control window) never has
                // it polled, so its connection goes instead.
                tokio::time::sleep(STALLED_STREAM_GRACE).await;
                state.close_soon();
            });
            track.ends = Some(rx);
            track.watchdog = Some(watchdog.abort_handle());
        }
        req.extensions_mut().insert(caller);
        Ok(track)
    }
}

/// Resolves with the status that ends a stream: the SVID expired, or a
/// bundle reload stopped trusting it.
async fn svid_end(material: Arc<TlsMaterial>, info: ConnInfo, not_after: i64) -> Status {
    let mut reloads = material.subscribe();
    loop {
        let left = (not_after + 1 - crate::clock::now_unix()).max(0) as u64;
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(left)) => {
                if crate::clock::now_unix() > not_after {
                    return Status::from(Error::from(auth::expired(not_after)));
                }
            }
            changed = reloads.changed() => {
                if changed.is_err() {
                    // The material is gone with the server; expiry still holds.
                    reloads = material.subscribe();
                    continue;
                }
                if let Err(e) = info.caller(&material) {
                    return Status::from(Error::from(e));
                }
            }
        }
    }
}

/// Delivers the status that ends a stream (see [`svid_end`]).
type Ends = tokio::sync::oneshot::Receiver<Status>;

/// What an admitted call holds until its response ends.
struct Admitted {
    ticket: CallTicket,
    slot: Option<StreamSlot>,
    ends: Option<Ends>,
    watchdog: Option<tokio::task::AbortHandle>,
}

impl Admitted {
    fn track(self, inner: Body) -> Tracked {
        Tracked {
            inner,
            ends: self.ends,
            watchdog: self.watchdog,
            done: false,
            _ticket: self.ticket,
            _slot: self.slot,
        }
    }
}

/// A response body that holds its call's ticket (and watch slot) until it
/// is dropped, and that a stream's end condition can cut short.
struct Tracked {
    inner: Body,
    ends: Option<Ends>,
    /// Watches a stream's caller; stopped when the stream is gone.
    watchdog: Option<tokio::task::AbortHandle>,
    done: bool,
    _ticket: CallTicket,
    _slot: Option<StreamSlot>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(ends) = this.ends.as_mut()
            && let Poll::Ready(ended) = Pin::new(ends).poll(cx)
        {
            let Ok(status) = ended else {
                // The watchdog is gone without a verdict (aborted with the
                // server): nothing more to wait for.
                this.ends = None;
                return Pin::new(&mut this.inner).poll_frame(cx);
            };
            this.done = true;
            let mut trailers = http::HeaderMap::new();
            if status.add_header(&mut trailers).is_err() {
                trailers.insert("grpc-status", http::HeaderValue::from_static("16"));
            }
            return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.done = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.ends.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.ends.is_some() {
            http_body::SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}
