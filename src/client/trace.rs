//! The client's channel with the caller's W3C trace context: every call
//! carries the `traceparent` the workload set, so the issuer records it on
//! the call's log line and in the audit events the call writes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::Channel;

/// A [`Channel`] that adds a `traceparent` header to every request, when it
/// has one.
#[derive(Debug, Clone)]
pub struct Traced {
    inner: Channel,
    traceparent: Option<http::HeaderValue>,
}

impl Traced {
    /// `inner`, sending `traceparent` (if any) with every call.
    pub(super) fn new(inner: Channel, traceparent: Option<http::HeaderValue>) -> Self {
        Self { inner, traceparent }
    }

    /// The channel without a trace context.
    pub(crate) fn channel(&self) -> Channel {
        self.inner.clone()
    }
}

impl tower::Service<http::Request<Body>> for Traced {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Body>, tonic::transport::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        if let Some(v) = &self.traceparent {
            req.headers_mut().insert("traceparent", v.clone());
        }
        Box::pin(tower::Service::call(&mut self.inner, req))
    }
}
