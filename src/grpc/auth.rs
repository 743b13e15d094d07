//! Per-connection authentication state, and the connection's lifetime.
//!
//! The SVID verdict is computed once per connection, right after the TLS
//! handshake ([`ConnInfo::judge`]). Before any request body is decoded, the
//! guard layer (`guard.rs`) asks [`ConnInfo::caller`] for the caller, which
//! re-checks the SVID's expiry and, when the trust bundles have been reloaded
//! since the verdict, re-runs the verdict against the new bundles (a removed
//! root cuts off live connections too). No handler can obtain a [`Caller`]
//! any other way: the guard puts it in the request's extensions.
//!
//! [`AuthedConn`] is the TLS stream tonic serves. It ends the connection (its
//! reads see end-of-file, so the HTTP/2 server closes it) when the
//! connection has had no call in flight for the idle timeout, and shortly
//! after the guard refused its SVID: a refused peer gets one answer naming
//! the rule, then the connection is gone.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, UnixTime};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

use crate::identity::{self, AuthError, Caller};
use crate::tls::TlsMaterial;

/// How long a connection whose SVID was refused stays open after the
/// refusal, for the answer to be written.
pub const CLOSE_GRACE: Duration = Duration::from_millis(200);

/// What a connection proved in its handshake, and the verdict on it.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's socket address.
    pub peer: SocketAddr,
    chain: Arc<[CertificateDer<'static>]>,
    verdict: Result<Caller, AuthError>,
    generation: u64,
    /// Calls in flight, idleness and closing.
    pub(super) state: Arc<ConnState>,
    /// Set when the caller held `listen.max_connections_per_workload`
    /// connections already: the cap, for the refusal.
    pub(super) over_workload_cap: Option<u32>,
}

impl ConnInfo {
    /// Judges a completed handshake's peer chain against the current bundles.
    pub fn judge(
        peer: SocketAddr,
        chain: Vec<CertificateDer<'static>>,
        material: &TlsMaterial,
        idle_timeout: Duration,
    ) -> Self {
        let generation = material.generation();
        let verdict = identity::authenticate(&chain, &material.bundles(), UnixTime::now());
        if let Err(e) = &verdict {
            // Debug formatting escapes control characters a hostile SAN may carry.
            tracing::info!(%peer, reason = %e, "refused client SVID");
        }
        Self {
            peer,
            chain: chain.into(),
            verdict,
            generation,
            state: Arc::new(ConnState::new(idle_timeout)),
            over_workload_cap: None,
        }
    }

    /// The SPIFFE ID the handshake authenticated, if its SVID was accepted.
    pub(super) fn spiffe_id(&self) -> Option<String> {
        self.verdict.as_ref().ok().map(|c| c.spiffe_id.to_string())
    }

    /// Marks a connection past its workload's cap: its calls are refused and
    /// it is bounded like a refused one.
    pub(super) fn over_cap(mut self, max: u32, bound: Duration) -> Self {
        self.over_workload_cap = Some(max);
        self.state.shorten_idle(bound);
        self
    }

    /// Bounds a connection that can only be refused: it is closed after
    /// `bound` with no call, whatever the idle timeout.
    pub(super) fn bound_if_refused(self, bound: Duration) -> Self {
        if self.verdict.is_err() {
            self.state.shorten_idle(bound);
        }
        self
    }

    /// The authenticated caller now, or the rule its SVID breaks now.
    pub fn caller(&self, material: &TlsMaterial) -> Result<Caller, AuthError> {
        let now = UnixTime::now();
        let caller = if self.generation == material.generation() {
            self.verdict.clone()?
        } else {
            identity::authenticate(&self.chain, &material.bundles(), now)?
        };
        if (now.as_secs() as i64) > caller.svid_not_after {
            return Err(expired(caller.svid_not_after));
        }
        Ok(caller)
    }
}

/// The refusal of an SVID that expired at `not_after` (Unix seconds).
pub(super) fn expired(not_after: i64) -> AuthError {
    let at = time::OffsetDateTime::from_unix_timestamp(not_after)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    AuthError::Expired(at)
}

/// A connection's calls in flight and when it is to close. Shared by the
/// guard (which counts calls and asks for the close) and the stream (which
/// acts on it).
#[derive(Debug)]
pub(super) struct ConnState {
    opened: Instant,
    idle_timeout: AtomicU64,
    in_flight: AtomicUsize,
    /// Milliseconds after `opened` when the last call ended.
    idle_since: AtomicU64,
    /// Milliseconds after `opened` when the connection closes; `u64::MAX`
    /// while nothing asked for it.
    close_at: AtomicU64,
    /// The task reading the connection, woken when a close is asked for.
    reader: Mutex<Option<Waker>>,
}

impl ConnState {
    fn new(idle_timeout: Duration) -> Self {
        Self {
            opened: Instant::now(),
            idle_timeout: AtomicU64::new(millis(idle_timeout)),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            close_at: AtomicU64::new(u64::MAX),
            reader: Mutex::new(None),
        }
    }

    fn since_open(&self, t: Instant) -> u64 {
        millis(t.saturating_duration_since(self.opened))
    }

    fn shorten_idle(&self, bound: Duration) {
        self.idle_timeout.fetch_min(millis(bound), Ordering::AcqRel);
    }

    /// A call started; the connection is busy until the ticket is dropped.
    pub(super) fn call_started(self: &Arc<Self>) -> CallTicket {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        CallTicket(self.clone())
    }

    /// Closes the connection after [`CLOSE_GRACE`].
    pub(super) fn close_soon(&self) {
        let at = self.since_open(Instant::now() + CLOSE_GRACE);
        self.close_at.fetch_min(at, Ordering::AcqRel);
        if let Some(w) = self.reader.lock().expect("reader lock").take() {
            w.wake();
        }
    }

    /// When the connection closes if nothing changes, and whether that is
    /// now.
    fn deadline(&self, now: Instant) -> (Instant, bool) {
        let close_at = self.close_at.load(Ordering::Acquire);
        let idle_at = if self.in_flight.load(Ordering::Acquire) == 0 {
            self.idle_since
                .load(Ordering::Acquire)
                .saturating_add(self.idle_timeout.load(Ordering::Acquire))
        } else {
            // Busy: look again one timeout from now.
            self.since_open(now)
                .saturating_add(self.idle_timeout.load(Ordering::Acquire))
        };
        let at = close_at.min(idle_at);
        (
            self.opened + Duration::from_millis(at),
            at <= self.since_open(now),
        )
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A call in flight on a connection.
#[derive(Debug)]
pub(super) struct CallTicket(Arc<ConnState>);

impl Drop for CallTicket {
    fn drop(&mut self) {
        let s = &self.0;
        s.idle_since
            .fetch_max(s.since_open(Instant::now()), Ordering::AcqRel);
        s.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A TLS connection with its authentication state, handed to tonic.
pub struct AuthedConn<IO> {
    io: IO,
    info: ConnInfo,
    deadline: Pin<Box<Sleep>>,
    /// Held while the connection is open (`listen.max_connections`).
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// Held while the connection is open
    /// (`listen.max_connections_per_workload`).
    _workload_slot: Option<crate::ratelimit::StreamSlot>,
}

impl<IO> AuthedConn<IO> {
    /// Wraps a connection that holds one of the server's connection permits
    /// (and, when authenticated, one of its workload's).
    pub(super) fn new(
        io: IO,
        info: ConnInfo,
        permit: tokio::sync::OwnedSemaphorePermit,
        workload_slot: Option<crate::ratelimit::StreamSlot>,
    ) -> Self {
        let (at, _) = info.state.deadline(Instant::now());
        Self {
            io,
            info,
            deadline: Box::pin(tokio::time::sleep_until(at)),
            _permit: permit,
            _workload_slot: workload_slot,
        }
    }

    /// Whether the connection is to end now; otherwise arms the timer for
    /// when it might.
    fn ending(&mut self, cx: &mut Context<'_>) -> bool {
        let state = self.info.state.clone();
        {
            let mut reader = state.reader.lock().expect("reader lock");
            if !reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *reader = Some(cx.waker().clone());
            }
        }
        loop {
            let (at, now) = state.deadline(Instant::now());
            if now {
                return true;
            }
            // A timer that fires early only makes us look again; one that
            // would fire late must move.
            if at < self.deadline.deadline() {
                self.deadline.as_mut().reset(at);
            }
            if self.deadline.as_mut().poll(cx).is_pending() {
                return false;
            }
            self.deadline.as_mut().reset(at);
        }
    }
}

impl<IO> Connected for AuthedConn<IO> {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for AuthedConn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.ending(cx) {
            // End-of-file: the HTTP/2 server closes the connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for AuthedConn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_is_counted_from_the_last_call() {
        let s = Arc::new(ConnState::new(Duration::from_secs(10)));
        let t0 = Instant::now();
        assert!(!s.deadline(t0).1);
        assert!(
            s.deadline(t0 + Duration::from_secs(10)).1,
            "idle since open"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        let ticket = s.call_started();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(
            !s.deadline(Instant::now()).1,
            "a call in flight is not idle"
        );
        drop(ticket);
        let t1 = Instant::now();
        assert!(!s.deadline(t1 + Duration::from_secs(9)).1);
        assert!(s.deadline(t1 + Duration::from_secs(10)).1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_closes_after_the_grace() {
        let s = Arc::new(ConnState::new(Duration::from_secs(300)));
        let _busy = s.call_started();
        s.close_soon();
        let now = Instant::now();
        assert!(!s.deadline(now).1);
        assert!(
            s.deadline(now + CLOSE_GRACE).1,
            "closes even with a call in flight"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refused_connections_get_the_shorter_bound() {
        let s = ConnState::new(Duration::from_secs(300));
        s.shorten_idle(Duration::from_secs(10));
        assert!(s.deadline(Instant::now() + Duration::from_secs(10)).1);
    }
}
