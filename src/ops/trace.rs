//! W3C trace context (`traceparent`) of the request being served: parsed
//! and validated at the gRPC edge, carried for the rest of the request in a
//! task-local, so the request's log line and every audit event the request
//! writes name the caller's trace without each layer passing it along.
//!
//! Only a well-formed header is kept (version `00`, or a later version read
//! by the `00` rules; non-zero trace and parent ids; lowercase hex); anything
//! else is ignored, as the W3C recommendation asks, and the request simply
//! has no trace.

use std::future::Future;

tokio::task_local! {
    static CURRENT: Option<TraceParent>;
}

/// A validated `traceparent` value, kept in its normalized text form
/// (`00-<trace-id>-<parent-id>-<flags>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent(String);

impl TraceParent {
    /// Parses a `traceparent` header value; `None` when it is not valid.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let mut parts = value.split('-');
        let (version, trace_id, parent_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let rest = parts.next();
        if version.len() != 2 || !lower_hex(version) || version == "ff" {
            return None;
        }
        // Version 00 has exactly four fields; a later version may append
        // more, and is read by the 00 rules.
        if version == "00" && rest.is_some() {
            return None;
        }
        let all_zero = |s: &str| s.bytes().all(|b| b == b'0');
        if trace_id.len() != 32 || !lower_hex(trace_id) || all_zero(trace_id) {
            return None;
        }
        if parent_id.len() != 16 || !lower_hex(parent_id) || all_zero(parent_id) {
            return None;
        }
        if flags.len() != 2 || !lower_hex(flags) {
            return None;
        }
        Some(Self(format!("00-{trace_id}-{parent_id}-{flags}")))
    }

    /// The whole value, `00-<trace-id>-<parent-id>-<flags>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 32 hex digits of the trace id.
    pub fn trace_id(&self) -> &str {
        &self.0[3..35]
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs `fut` with `trace` as the current request's trace context.
pub async fn scope<F: Future>(trace: Option<TraceParent>, fut: F) -> F::Output {
    CURRENT.scope(trace, fut).await
}

/// The current request's `traceparent`, as text; empty outside a request
/// or when the caller sent none (or an invalid one).
pub fn current_text() -> String {
    CURRENT
        .try_with(|t| t.as_ref().map(|t| t.0.clone()))
        .ok()
        .flatten()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_well_formed_values() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceParent::parse(good).unwrap();
        assert_eq!(t.as_str(), good);
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        // A later version is read by the 00 rules and may carry more.
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        assert_eq!(TraceParent::parse(later).unwrap().as_str(), good);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn the_current_trace_is_the_scope_s() {
        assert_eq!(current_text(), "");
        let t = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let inside = scope(t.clone(), async { current_text() }).await;
        assert_eq!(inside, t.unwrap().as_str());
        assert_eq!(scope(None, async { current_text() }).await, "");
    }
}
