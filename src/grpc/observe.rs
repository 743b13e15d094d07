//! The observer: the outermost tower layer, around the guard and every
//! service. For each call it
//! - reads the caller's W3C `traceparent` (ignored unless well formed) and
//!   runs the call inside it ([`crate::ops::trace`]), so audit events the
//!   call writes carry it;
//! - leaves a [`CallNote`] in the request extensions, which the guard and
//!   the handlers fill in (caller, task, credential, error message);
//! - when the call ends (its status is in the response headers or the
//!   trailers, or the client went away), writes exactly one log line —
//!   service, method, peer, caller, task, credential, trace, status code,
//!   error, duration — and counts it in `taskmint_requests_total` (and, for
//!   unary calls, `taskmint_request_duration_seconds`).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::body::Body;
use tonic::codegen::{Bytes, http};

use super::auth::ConnInfo;
use crate::ops::trace::{self, TraceParent};

type HttpRequest = http::Request<Body>;
type HttpResponse = http::Response<Body>;

/// Every method served, by service: metrics name only these (anything else
/// is `unknown`, so a caller cannot mint label values).
const METHODS: &[(&str, &[&str])] = &[
    (
        "taskmint.v1.Issuer",
        &[
            "MintX509",
            "MintJwt",
            "Renew",
            "Revoke",
            "BeginTask",
            "CompleteTask",
            "GetTask",
            "DelegateTask",
            "GetTrustBundle",
        ],
    ),
    (
        "taskmint.v1.Revocations",
        &[
            "WatchRevocations",
            "AckRevocations",
            "CheckStatus",
            "GetCrl",
            "GetTrustBundle",
        ],
    ),
    (
        "taskmint.v1.Admin",
        &[
            "ListGrants",
            "ExportAudit",
            "GetTaskTimeline",
            "ListBreakGlass",
            "MarkReviewed",
            "GetDeliveryStatus",
            "GetPolicyStatus",
        ],
    ),
    ("grpc.health.v1.Health", &["Check", "Watch"]),
    (
        "grpc.reflection.v1.ServerReflection",
        &["ServerReflectionInfo"],
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection",
        &["ServerReflectionInfo"],
    ),
];

/// Methods whose response is a long-lived stream: not timed.
const STREAMS: &[&str] = &["WatchRevocations", "Watch", "ServerReflectionInfo"];

/// `(service, method)` of a request path, from [`METHODS`]; `unknown`
/// otherwise.
fn method_of(path: &str) -> (&'static str, &'static str) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    for (s, methods) in METHODS {
        if *s == service
            && let Some(m) = methods.iter().find(|m| **m == method)
        {
            return (s, m);
        }
    }
    ("unknown", "unknown")
}

/// The canonical name of a gRPC status code (`OK`, `NOT_FOUND`, ...).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// What the guard and the handlers learn about a call, for its log line.
#[derive(Debug, Clone, Default)]
pub(super) struct CallNote(Arc<Mutex<Noted>>);

#[derive(Debug, Default)]
struct Noted {
    caller: String,
    task: String,
    credential_id: String,
}

impl CallNote {
    /// The authenticated caller's SPIFFE ID.
    pub(super) fn caller(&self, id: &str) {
        self.0.lock().expect("call note lock").caller = id.to_owned();
    }

    /// The task the request names, and the credential the call concerns.
    pub(super) fn task(&self, task: &str, credential_id: &str) {
        let mut n = self.0.lock().expect("call note lock");
        n.task = task.to_owned();
        n.credential_id = credential_id.to_owned();
    }
}

/// Builds an [`Observe`] around the services.
#[derive(Debug, Clone, Default)]
pub(super) struct ObserveLayer;

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

/// The observer around the services `S`.
#[derive(Debug, Clone)]
pub(super) struct Observe<S> {
    inner: S,
}

impl<S> tower::Service<HttpRequest> for Observe<S>
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
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = req.uri().path();
        let (service, method) = method_of(path);
        let trace = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse);
        let note = CallNote::default();
        let call = Call {
            started: Instant::now(),
            service,
            method,
            // The raw path (bounded) for the log when it is not a known one.
            path: if service == "unknown" {
                path.chars().take(128).collect()
            } else {
                String::new()
            },
            peer: req
                .extensions()
                .get::<ConnInfo>()
                .map(|i| i.peer.to_string())
                .unwrap_or_default(),
            trace: trace.clone(),
            note: note.clone(),
        };
        req.extensions_mut().insert(note);
        Box::pin(trace::scope(trace, async move {
            let response = inner.call(req).await?;
            // A status in the headers (trailers-only: refusals, most errors)
            // ends the call here; otherwise it comes in the trailers.
            if let Some(status) = tonic::Status::from_header_map(response.headers()) {
                call.finish(status.code(), status.message());
                return Ok(response);
            }
            Ok(response.map(|body| {
                Body::new(Observed {
                    inner: body,
                    call: Some(call),
                })
            }))
        }))
    }
}

/// One call in flight.
struct Call {
    started: Instant,
    service: &'static str,
    method: &'static str,
    path: String,
    peer: String,
    trace: Option<TraceParent>,
    note: CallNote,
}

impl Call {
    fn finish(self, code: tonic::Code, error: &str) {
        let elapsed = self.started.elapsed();
        let code = code_name(code);
        let timed = !STREAMS.contains(&self.method);
        crate::ops::metrics::get().request(
            self.service,
            self.method,
            code,
            timed.then_some(elapsed),
        );
        let n = self.note.0.lock().expect("call note lock");
        let caller = if n.caller.is_empty() { "-" } else { &n.caller };
        let trace_id = self.trace.as_ref().map(|t| t.trace_id()).unwrap_or("");
        let duration_ms = round_ms(elapsed);
        let (service, method) = match self.service {
            "unknown" => ("unknown", self.path.as_str()),
            s => (s, self.method),
        };
        tracing::info!(
            service,
            method,
            peer = %self.peer,
            caller,
            task = %n.task,
            credential_id = %n.credential_id,
            trace_id,
            code,
            error,
            duration_ms,
            "request"
        );
    }
}

/// Milliseconds, to the microsecond.
fn round_ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// A response body that ends its call when the trailers (or the end, or a
/// drop) come.
struct Observed {
    inner: Body,
    call: Option<Call>,
}

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            // The client went away (or the connection did) before the end.
            call.finish(
                tonic::Code::Cancelled,
                "the call ended before its status was sent",
            );
        }
    }
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(call) = this.call.take()
                {
                    match tonic::Status::from_header_map(trailers) {
                        Some(s) => call.finish(s.code(), s.message()),
                        None => call.finish(tonic::Code::Unknown, "trailers without a status"),
                    }
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(call) = this.call.take() {
                    call.finish(e.code(), e.message());
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = this.call.take() {
                    call.finish(tonic::Code::Unknown, "the response ended without a status");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table names every rpc of the protos, so none is counted as
    /// `unknown`.
    #[test]
    fn every_rpc_of_the_protos_is_known() {
        for (service, proto) in [
            (
                "taskmint.v1.Issuer",
                include_str!("../../proto/taskmint/v1/issuer.proto"),
            ),
            (
                "taskmint.v1.Revocations",
                include_str!("../../proto/taskmint/v1/revocations.proto"),
            ),
            (
                "taskmint.v1.Admin",
                include_str!("../../proto/taskmint/v1/admin.proto"),
            ),
        ] {
            let rpcs: Vec<&str> = proto
                .lines()
                .filter_map(|l| l.trim().strip_prefix("rpc "))
                .map(|l| l.split(['(', ' ']).next().unwrap())
                .collect();
            assert!(rpcs.len() >= 5, "{service}: {rpcs:?}");
            for rpc in rpcs {
                assert_eq!(
                    method_of(&format!("/{service}/{rpc}")),
                    (service, rpc),
                    "{service}/{rpc} is missing from METHODS"
                );
            }
        }
        assert_eq!(
            method_of("/taskmint.v1.Issuer/Nope"),
            ("unknown", "unknown")
        );
        assert_eq!(method_of("/x/y/z"), ("unknown", "unknown"));
    }
}
