//! The gRPC edge: the only part of the crate that knows protobuf types and
//! `tonic::Status`. [`serve`] takes a bound listener and a shutdown future, so
//! `main` and the tests drive the same entry point.
//!
//! Three services share one listener and one auth gate: `Issuer` for
//! workloads that mint (`issuer.rs`), `Revocations` for relying parties and
//! sidecars (`revocations.rs`), `Admin` for operators (`admin.rs`). Their
//! handlers share the request wrapper in `call.rs` and the conversions in
//! `convert.rs`; every message goes through the codec in `codec.rs` (a
//! request that does not decode is INVALID_ARGUMENT naming the field).
//!
//! Connections are accepted here, at most `listen.max_connections` at once;
//! TLS handshakes run in their own tasks under a timeout (a slow or silent
//! peer holds only its own task), and each finished handshake is judged once
//! before tonic sees the connection. The guard layer (`guard.rs`) then admits
//! or refuses every call before its body is decoded; idle and refused
//! connections are closed (`auth.rs`). Around it, the observer
//! (`observe.rs`) logs one line per call and counts it in the metrics.
//! HTTP/2 limits, keepalive and the per-call timeout come from `[listen]`.
//!
//! Server reflection (`reflection.rs`) lists and describes every service to
//! tools such as grpcurl; it is behind the guard like the rest.

mod admin;
pub mod auth;
mod call;
pub mod codec;
mod convert;
mod guard;
mod issuer;
mod observe;
pub use observe::code_name;
mod reflection;
mod revocations;
mod status;

pub use admin::AdminService;
pub use convert::{
    audit_decision_text, audit_from_pb, audit_kind_text, credential_pb, event_pb,
    revocation_kind_text,
};
pub use issuer::IssuerService;
pub use revocations::RevocationsService;

/// Generated protobuf and gRPC types for `taskmint.v1`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("taskmint.v1");
}

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::ListenConfig;
use crate::issuer::Issuer;
use crate::tls::TlsMaterial;

/// Largest request accepted, in bytes (a CSR is a few hundred).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// How long shutdown waits for open connections to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The gRPC service names, as health checks report them: `""` (the server
/// as a whole) and one per service.
pub const SERVICE_NAMES: [&str; 4] = [
    "",
    <pb::issuer_server::IssuerServer<IssuerService> as tonic::server::NamedService>::NAME,
    <pb::revocations_server::RevocationsServer<RevocationsService> as tonic::server::NamedService>::NAME,
    <pb::admin_server::AdminServer<AdminService> as tonic::server::NamedService>::NAME,
];

/// Serves the three services of `issuer` on `listener` until `shutdown`
/// resolves.
pub async fn serve(
    issuer: Arc<Issuer>,
    material: Arc<TlsMaterial>,
    listener: TcpListener,
    listen: &ListenConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), crate::tls::TlsError> {
    let acceptor = TlsAcceptor::from(material.server_config()?);
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tracing::info!(
        max_connections = listen.max_connections,
        max_concurrent_streams = listen.max_concurrent_streams,
        idle_timeout = %humantime::format_duration(listen.idle_timeout),
        request_timeout = %humantime::format_duration(listen.request_timeout),
        "connection limits"
    );
    let accept = tokio::spawn(accept_loop(
        listener,
        acceptor,
        material.clone(),
        listen.clone(),
        tx,
    ));

    // One auth gate for all three: the layer judged the connection, each
    // handler asks it for the caller.
    let issuer_svc = pb::issuer_server::IssuerServer::new(IssuerService::new(issuer.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let revocations_svc =
        pb::revocations_server::RevocationsServer::new(RevocationsService::new(issuer.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES);
    let store_health = issuer.revocations().health();
    let guard = guard::GuardLayer::new(issuer.clone(), material.clone());
    let admin_svc = pb::admin_server::AdminServer::new(AdminService::new(issuer))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    // Standard gRPC health checks (for probes and load balancers). They
    // reveal only serving or not, but still answer only callers with a
    // valid SVID, like every call: the guard stands in front of them too.
    let (mut health, health_svc) = tonic_health::server::health_reporter();
    for name in SERVICE_NAMES {
        health
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    // A replica that cannot read its database is taken out of rotation,
    // and put back once it can.
    let mut follow_health = tokio::spawn(report_store_health(health.clone(), store_health));
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(listen.max_concurrent_streams)
        .http2_keepalive_interval(Some(listen.keepalive_interval))
        .http2_keepalive_timeout(Some(listen.keepalive_timeout))
        .timeout(listen.request_timeout)
        // The observer is outermost: it sees every call, refused ones too.
        .layer(observe::ObserveLayer)
        .layer(guard)
        .add_service(health_svc)
        .add_service(issuer_svc)
        .add_service(revocations_svc)
        .add_service(admin_svc)
        .add_service(reflection::v1())
        .add_service(reflection::v1alpha())
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), async {
            let _ = drain_rx.await;
        });
    tokio::pin!(server);
    // Graceful shutdown waits for in-flight requests, but a peer that never
    // closes its connection must not hold the process: drain for a bounded time.
    let result = tokio::select! {
        r = &mut server => r,
        _ = shutdown => {
            // Stopped before the final NOT_SERVING, which it must not undo.
            follow_health.abort();
            let _ = (&mut follow_health).await;
            for name in SERVICE_NAMES {
                health
                    .set_service_status(name, tonic_health::ServingStatus::NotServing)
                    .await;
            }
            // Unregistering ends every health Watch stream once it has sent
            // NOT_SERVING; an open Watch would otherwise hold the drain for
            // the whole grace period (client-side health checking keeps one
            // open on every connection).
            for name in SERVICE_NAMES {
                health.clear_service_status(name).await;
            }
            accept.abort();
            let _ = drain_tx.send(());
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(grace = %humantime::format_duration(SHUTDOWN_GRACE), "connections still open after the grace period; closing them");
                    Ok(())
                }
            }
        }
    };
    accept.abort();
    follow_health.abort();
    if let Err(e) = result {
        tracing::error!(error = %e, "gRPC server stopped with an error");
    }
    Ok(())
}

/// Sets every service `NOT_SERVING` while the store cannot be read, and
/// `SERVING` again once it can.
async fn report_store_health(
    health: tonic_health::server::HealthReporter,
    mut store: tokio::sync::watch::Receiver<Option<crate::store::StoreError>>,
) {
    loop {
        let status = match &*store.borrow_and_update() {
            None => tonic_health::ServingStatus::Serving,
            Some(_) => tonic_health::ServingStatus::NotServing,
        };
        for name in SERVICE_NAMES {
            health.set_service_status(name, status).await;
        }
        if store.changed().await.is_err() {
            return;
        }
    }
}

type Conn = auth::AuthedConn<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>;

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    material: Arc<TlsMaterial>,
    listen: ListenConfig,
    tx: tokio::sync::mpsc::Sender<Result<Conn, std::io::Error>>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(listen.max_connections as usize));
    let per_workload = crate::ratelimit::StreamCounter::new(listen.max_connections_per_workload);
    let mut last_full_warning: Option<tokio::time::Instant> = None;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off, don't spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over the cap the connection is closed at once: a client sees a
        // reset it can retry elsewhere, rather than a handshake that hangs.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let now = tokio::time::Instant::now();
            if last_full_warning.is_none_or(|t| now - t > Duration::from_secs(10)) {
                last_full_warning = Some(now);
                tracing::warn!(%peer, max_connections = listen.max_connections, "connection limit reached; closing new connections");
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let material = material.clone();
        let tx = tx.clone();
        let handshake_timeout = listen.handshake_timeout;
        let idle_timeout = listen.idle_timeout;
        let per_workload = per_workload.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let chain = tls
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default();
            // A connection that can only be refused gets no more time than
            // a handshake.
            let mut info = auth::ConnInfo::judge(peer, chain, &material, idle_timeout)
                .bound_if_refused(handshake_timeout);
            // One workload cannot take every connection: past its own cap
            // its calls are refused (by the guard, naming the limit).
            let mut slot = None;
            if let Some(id) = info.spiffe_id() {
                slot = per_workload.acquire(&id);
                if slot.is_none() {
                    info = info.over_cap(per_workload.max(), handshake_timeout);
                }
            }
            let _ = tx
                .send(Ok(auth::AuthedConn::new(tls, info, permit, slot)))
                .await;
        });
    }
}
