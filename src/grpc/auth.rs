//! Per-connection authentication state and the per-RPC gate.
//!
//! The SVID verdict is computed once per connection, right after the TLS
//! handshake. Each RPC goes through [`caller`], which re-checks the SVID's
//! expiry and, when the trust bundles have been reloaded since the verdict,
//! re-runs the verdict against the new bundles (a removed root cuts off live
//! connections too). No handler can obtain a [`Caller`] any other way.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};
use tonic::transport::server::Connected;

use crate::identity::{self, AuthError, Caller};
use crate::tls::TlsMaterial;

/// What a connection proved in its handshake, and the verdict on it.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's socket address.
    pub peer: SocketAddr,
    chain: Arc<[CertificateDer<'static>]>,
    verdict: Result<Caller, AuthError>,
    generation: u64,
}

impl ConnInfo {
    /// Judges a completed handshake's peer chain against the current bundles.
    pub fn judge(
        peer: SocketAddr,
        chain: Vec<CertificateDer<'static>>,
        material: &TlsMaterial,
    ) -> Self {
        let generation = material.generation();
        let verdict = identity::authenticate(&chain, &material.bundles(), UnixTime::now());
        if let Err(e) = &verdict {
            // Debug formatting escapes control characters a hostile SAN may carry.
            tracing::info!(%peer, reason = ?e.to_string(), "refused client SVID");
        }
        Self {
            peer,
            chain: chain.into(),
            verdict,
            generation,
        }
    }
}

/// The authenticated caller of a request, or the rule its SVID broke.
pub fn caller<T>(req: &tonic::Request<T>, material: &TlsMaterial) -> Result<Caller, AuthError> {
    let info = req
        .extensions()
        .get::<ConnInfo>()
        .ok_or(AuthError::NoCertificate)?;
    let now = UnixTime::now();
    let caller = if info.generation == material.generation() {
        info.verdict.clone()?
    } else {
        identity::authenticate(&info.chain, &material.bundles(), now)?
    };
    if (now.as_secs() as i64) > caller.svid_not_after {
        let at = time::OffsetDateTime::from_unix_timestamp(caller.svid_not_after)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        return Err(AuthError::Expired(at));
    }
    Ok(caller)
}

/// A TLS connection with its authentication state, handed to tonic.
pub struct AuthedConn<IO> {
    /// The TLS stream.
    pub io: IO,
    /// Its verdict.
    pub info: ConnInfo,
}

impl<IO> Connected for AuthedConn<IO> {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for AuthedConn<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for AuthedConn<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
