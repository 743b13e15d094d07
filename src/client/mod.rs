//! A Rust client for workloads: connects with the workload's X.509-SVID,
//! verifies the issuer by its SPIFFE ID (not a DNS name) against the bundle,
//! and exposes the RPCs of the three services (`Issuer`, `Revocations`,
//! `Admin`) over one channel.
//!
//! The identity is PEM files ([`Client::connect`]) or a SPIFFE Workload API
//! ([`Client::connect_workload_api`]); [`IdentitySource`] applies the CLI's
//! precedence of flags, `TASKMINT_*` variables and `SPIFFE_ENDPOINT_SOCKET`.
//! With the Workload API, every handshake presents the SVID the agent holds
//! at that moment: a rotation reaches the next connection (a new client, or
//! the channel reconnecting) while open connections keep theirs.
//!
//! Every call carries the caller's `traceparent` if it sets one
//! ([`Client::with_traceparent`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tonic_health::pb::health_client::HealthClient;

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use spiffe::SpiffeId;
use tonic::transport::{Channel, Endpoint, Uri};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::grpc::pb;
use crate::grpc::pb::admin_client::AdminClient;
use crate::grpc::pb::issuer_client::IssuerClient;
use crate::grpc::pb::revocations_client::RevocationsClient;
use crate::identity::WorkloadApiSource;
use trace::Traced;
use verify::{ClientAuth, ServerRoots, SpiffeServerVerifier, WorkloadApiCert, anchors};

mod identity;
mod trace;
mod verify;
mod watch;
pub use identity::{BUNDLE_ENV, DEV_DIR, IdentityFlags, IdentitySource, SVID_ENV, SVID_KEY_ENV};
pub use watch::{WatchItem, Watcher};

/// Why a client could not be set up or connect.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A file could not be read or parsed.
    #[error("`{path}`: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The configuration is inconsistent.
    #[error("{0}")]
    Config(String),
    /// The Workload API gave no identity.
    #[error(transparent)]
    WorkloadApi(#[from] crate::identity::WorkloadApiError),
    /// The connection failed.
    #[error("cannot connect to `{server}`: {reason}")]
    Connect {
        /// The address.
        server: String,
        /// Why.
        reason: String,
    },
}

/// Where to connect and with which identity (the CLI's connection flags).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` of the issuer.
    pub server: String,
    /// The workload's SVID chain, PEM, leaf first.
    pub svid: PathBuf,
    /// The workload's PKCS#8 key, PEM.
    pub svid_key: PathBuf,
    /// PEM roots that verify the issuer.
    pub bundle: PathBuf,
    /// Expected SPIFFE ID of the issuer; defaults to
    /// `spiffe://<the workload's trust domain>/taskmint`.
    pub server_id: Option<String>,
}

/// A workload identity for the mTLS handshake (or none, for tests of refusal).
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError::File {
        path: path.clone(),
        reason: e.to_string(),
    })
}

/// The client: one channel (one mTLS connection), a generated client per
/// service on it.
#[derive(Debug, Clone)]
pub struct Client {
    issuer: IssuerClient<Traced>,
    revocations: RevocationsClient<Traced>,
    admin: AdminClient<Traced>,
    health: HealthClient<Traced>,
    /// The connection they share.
    channel: Traced,
}

impl Client {
    /// Connects using files named by `cfg`.
    pub async fn connect(cfg: &ClientConfig) -> Result<Self, ClientError> {
        let file_err = |path: &PathBuf| {
            let path = path.clone();
            move |reason: String| ClientError::File { path, reason }
        };
        let chain = crate::pem::certs(&read(&cfg.svid)?).map_err(file_err(&cfg.svid))?;
        let key = crate::pem::pkcs8_key(&read(&cfg.svid_key)?).map_err(file_err(&cfg.svid_key))?;
        let roots = crate::pem::certs(&read(&cfg.bundle)?).map_err(file_err(&cfg.bundle))?;
        let server_id = match &cfg.server_id {
            Some(id) => SpiffeId::new(id)
                .map_err(|e| ClientError::Config(format!("--server-id `{id}`: {e}")))?,
            None => {
                let (_, leaf) = X509Certificate::from_der(chain[0].as_ref())
                    .map_err(|e| file_err(&cfg.svid)(e.to_string()))?;
                let own = crate::identity::spiffe_id_of_leaf(&leaf)
                    .map_err(|e| file_err(&cfg.svid)(e.to_string()))?;
                SpiffeId::new(format!("spiffe://{}/taskmint", own.trust_domain()))
                    .map_err(|e| ClientError::Config(e.to_string()))?
            }
        };
        let identity = Identity {
            chain,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
        };
        Self::connect_with(&cfg.server, Some(identity), roots, server_id).await
    }

    /// Connects with the identity `source` names (see [`IdentitySource`]);
    /// `server_id` defaults to `spiffe://<the workload's trust domain>/taskmint`.
    pub async fn connect_source(
        server: &str,
        source: &IdentitySource,
        server_id: Option<String>,
    ) -> Result<Self, ClientError> {
        match source {
            IdentitySource::Files {
                svid,
                svid_key,
                bundle,
            } => {
                Self::connect(&ClientConfig {
                    server: server.to_owned(),
                    svid: svid.clone(),
                    svid_key: svid_key.clone(),
                    bundle: bundle.clone(),
                    server_id,
                })
                .await
            }
            IdentitySource::WorkloadApi { endpoint, bundle } => {
                let wl =
                    WorkloadApiSource::connect(endpoint, crate::identity::DEFAULT_INITIAL_SYNC)
                        .await?;
                let roots =
                    match bundle {
                        Some(p) => Some(crate::pem::certs(&read(p)?).map_err(|reason| {
                            ClientError::File {
                                path: p.clone(),
                                reason,
                            }
                        })?),
                        None => None,
                    };
                let server_id = server_id
                    .map(|id| {
                        SpiffeId::new(&id)
                            .map_err(|e| ClientError::Config(format!("--server-id `{id}`: {e}")))
                    })
                    .transpose()?;
                Self::connect_workload_api(server, &wl, roots, server_id).await
            }
        }
    }

    /// Connects presenting the Workload API's X.509-SVID. Each new
    /// connection (this one, and any the channel makes after losing it)
    /// takes the SVID current at its handshake. The issuer is verified with
    /// `roots` if given, else with the agent's bundle of its trust domain,
    /// also read at each handshake. `server_id` defaults to
    /// `spiffe://<the SVID's trust domain>/taskmint`.
    pub async fn connect_workload_api(
        server: &str,
        source: &WorkloadApiSource,
        roots: Option<Vec<CertificateDer<'static>>>,
        server_id: Option<SpiffeId>,
    ) -> Result<Self, ClientError> {
        let svid = source.svid()?;
        let server_id = match server_id {
            Some(id) => id,
            None => SpiffeId::new(format!(
                "spiffe://{}/taskmint",
                svid.spiffe_id.trust_domain()
            ))
            .map_err(|e| ClientError::Config(e.to_string()))?,
        };
        let roots = match roots {
            Some(r) => ServerRoots::Fixed(anchors(&r)?),
            None => ServerRoots::WorkloadApi(source.clone()),
        };
        let provider = crate::tls::provider();
        let auth = ClientAuth::WorkloadApi(Arc::new(WorkloadApiCert {
            source: source.clone(),
            provider: provider.clone(),
        }));
        Self::connect_tls(server, auth, roots, server_id, provider).await
    }

    /// Connects to `server` presenting `identity` (or no certificate).
    pub async fn connect_with(
        server: &str,
        identity: Option<Identity>,
        roots: Vec<CertificateDer<'static>>,
        server_id: SpiffeId,
    ) -> Result<Self, ClientError> {
        let auth = match identity {
            Some(id) => ClientAuth::Fixed(id),
            None => ClientAuth::None,
        };
        let roots = ServerRoots::Fixed(anchors(&roots)?);
        Self::connect_tls(server, auth, roots, server_id, crate::tls::provider()).await
    }

    async fn connect_tls(
        server: &str,
        auth: ClientAuth,
        roots: ServerRoots,
        server_id: SpiffeId,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, ClientError> {
        let verifier = Arc::new(SpiffeServerVerifier {
            roots,
            server_id,
            algs: provider.signature_verification_algorithms,
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut tls = match auth {
            ClientAuth::Fixed(id) => builder
                .with_client_auth_cert(id.chain, id.key)
                .map_err(|e| ClientError::Config(format!("SVID: {e}")))?,
            ClientAuth::WorkloadApi(resolver) => builder.with_client_cert_resolver(resolver),
            ClientAuth::None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let addr = server.to_owned();
        let endpoint = Endpoint::from_shared(format!("http://{server}"))
            .map_err(|e| ClientError::Config(format!("--server `{server}`: {e}")))?
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true);
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let connector = connector.clone();
                let addr = addr.clone();
                async move {
                    let tcp = tokio::net::TcpStream::connect(&addr).await?;
                    tcp.set_nodelay(true)?;
                    // The name is not used for verification (the SPIFFE ID
                    // is); it only has to be syntactically valid for SNI.
                    let name = ServerName::try_from("taskmint").expect("static name");
                    let tls = connector.connect(name, tcp).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(tls))
                }
            }))
            .await
            .map_err(|e| ClientError::Connect {
                server: server.to_owned(),
                reason: error_chain(&e),
            })?;
        Ok(Self::on(Traced::new(channel, None)))
    }

    fn on(channel: Traced) -> Self {
        Self {
            issuer: IssuerClient::new(channel.clone()),
            revocations: RevocationsClient::new(channel.clone()),
            admin: AdminClient::new(channel.clone()),
            health: HealthClient::new(channel.clone()),
            channel,
        }
    }

    /// The same connection, sending the W3C `traceparent` (e.g. from the
    /// workload's current span, or the `TRACEPARENT` environment variable)
    /// with every call: the issuer logs it with each call and records it in
    /// the audit events the call writes. `None` stops sending one. The
    /// issuer ignores a value that is not well formed.
    pub fn with_traceparent(self, traceparent: Option<&str>) -> Result<Self, ClientError> {
        let value = traceparent
            .map(|t| {
                tonic::codegen::http::HeaderValue::from_str(t).map_err(|_| {
                    ClientError::Config(format!("traceparent `{t}` is not a header value"))
                })
            })
            .transpose()?;
        Ok(Self::on(Traced::new(self.channel.channel(), value)))
    }

    /// The mTLS channel, for clients of other services on the same
    /// connection (server reflection, for one).
    pub fn channel(&self) -> Channel {
        self.channel.channel()
    }

    /// `grpc.health.v1.Health/Check` of `service` (`""`: the server as a
    /// whole).
    pub async fn health(
        &mut self,
        service: &str,
    ) -> Result<tonic_health::ServingStatus, tonic::Status> {
        let r = self
            .health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_owned(),
            })
            .await?
            .into_inner();
        Ok(serving_status(r.status))
    }

    /// `grpc.health.v1.Health/Check` of the server and of each service, in
    /// the order of [`crate::grpc::SERVICE_NAMES`].
    pub async fn health_all(
        &mut self,
    ) -> Result<Vec<(&'static str, tonic_health::ServingStatus)>, tonic::Status> {
        let mut out = Vec::with_capacity(crate::grpc::SERVICE_NAMES.len());
        for name in crate::grpc::SERVICE_NAMES {
            out.push((name, self.health(name).await?));
        }
        Ok(out)
    }

    /// `grpc.health.v1.Health/Watch` of `service`: the current status, then
    /// every change.
    pub async fn health_watch(
        &mut self,
        service: &str,
    ) -> Result<
        impl tokio_stream::Stream<Item = Result<tonic_health::ServingStatus, tonic::Status>> + use<>,
        tonic::Status,
    > {
        use tokio_stream::StreamExt;
        let stream = self
            .health
            .watch(tonic_health::pb::HealthCheckRequest {
                service: service.to_owned(),
            })
            .await?
            .into_inner();
        Ok(stream.map(|r| r.map(|r| serving_status(r.status))))
    }

    /// `Issuer.MintJwt`.
    pub async fn mint_jwt(
        &mut self,
        task_id: &str,
        audience: &str,
        ttl: Option<Duration>,
    ) -> Result<pb::MintJwtResponse, tonic::Status> {
        let req = pb::MintJwtRequest {
            task_id: task_id.into(),
            audience: audience.into(),
            ttl_seconds: ttl.map(|d| d.as_secs()).unwrap_or(0),
        };
        Ok(self.issuer.mint_jwt(req).await?.into_inner())
    }

    /// `Issuer.MintX509` with a CSR the caller built.
    pub async fn mint_x509(
        &mut self,
        task_id: &str,
        csr_der: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<pb::MintX509Response, tonic::Status> {
        let req = pb::MintX509Request {
            task_id: task_id.into(),
            csr: csr_der,
            ttl_seconds: ttl.map(|d| d.as_secs()).unwrap_or(0),
        };
        Ok(self.issuer.mint_x509(req).await?.into_inner())
    }

    /// `Issuer.GetTrustBundle`.
    pub async fn trust_bundle(&mut self) -> Result<pb::GetTrustBundleResponse, tonic::Status> {
        Ok(self
            .issuer
            .get_trust_bundle(pb::GetTrustBundleRequest {})
            .await?
            .into_inner())
    }
}

impl Client {
    /// `Issuer.BeginTask`.
    pub async fn begin_task(
        &mut self,
        req: pb::BeginTaskRequest,
    ) -> Result<pb::Task, tonic::Status> {
        let r = self.issuer.begin_task(req).await?.into_inner();
        r.task
            .ok_or_else(|| tonic::Status::internal("response without task"))
    }

    /// `Issuer.CompleteTask` of the caller's own task.
    pub async fn complete_task(
        &mut self,
        task_id: &str,
    ) -> Result<pb::CompleteTaskResponse, tonic::Status> {
        let task = Some(pb::TaskRef {
            task_id: task_id.into(),
            holder: String::new(),
        });
        Ok(self
            .issuer
            .complete_task(pb::CompleteTaskRequest { task })
            .await?
            .into_inner())
    }

    /// `Issuer.CompleteTask` of any task (another holder's: admins only).
    pub async fn complete_task_ref(
        &mut self,
        task: Option<pb::TaskRef>,
    ) -> Result<pb::CompleteTaskResponse, tonic::Status> {
        Ok(self
            .issuer
            .complete_task(pb::CompleteTaskRequest { task })
            .await?
            .into_inner())
    }

    /// `Issuer.GetTask`; `holder` empty = the caller.
    pub async fn get_task(
        &mut self,
        task_id: &str,
        holder: &str,
    ) -> Result<pb::GetTaskResponse, tonic::Status> {
        let task = Some(pb::TaskRef {
            task_id: task_id.into(),
            holder: holder.into(),
        });
        Ok(self
            .issuer
            .get_task(pb::GetTaskRequest { task })
            .await?
            .into_inner())
    }

    /// `Issuer.Revoke`.
    pub async fn revoke(
        &mut self,
        target: pb::revoke_request::Target,
        reason: &str,
    ) -> Result<pb::RevokeResponse, tonic::Status> {
        let req = pb::RevokeRequest {
            target: Some(target),
            reason: reason.into(),
        };
        Ok(self.issuer.revoke(req).await?.into_inner())
    }

    /// `Issuer.Renew`; `csr` is needed for X.509 credentials.
    pub async fn renew(
        &mut self,
        req: pb::RenewRequest,
    ) -> Result<pb::RenewResponse, tonic::Status> {
        Ok(self.issuer.renew(req).await?.into_inner())
    }

    /// `Revocations.CheckStatus`.
    pub async fn check_status(
        &mut self,
        id: &str,
    ) -> Result<pb::CheckStatusResponse, tonic::Status> {
        let req = pb::CheckStatusRequest {
            credential_id: id.into(),
        };
        Ok(self.revocations.check_status(req).await?.into_inner())
    }

    /// `Revocations.GetCrl`.
    pub async fn crl(&mut self) -> Result<pb::GetCrlResponse, tonic::Status> {
        Ok(self
            .revocations
            .get_crl(pb::GetCrlRequest {})
            .await?
            .into_inner())
    }

    /// `Revocations.AckRevocations`.
    pub async fn ack(&mut self, subscriber: &str, up_to_seq: u64) -> Result<u64, tonic::Status> {
        let req = pb::AckRevocationsRequest {
            subscriber: subscriber.into(),
            up_to_seq,
        };
        Ok(self
            .revocations
            .ack_revocations(req)
            .await?
            .into_inner()
            .acked_seq)
    }

    /// `Admin.GetDeliveryStatus`.
    pub async fn delivery_status(
        &mut self,
    ) -> Result<pb::GetDeliveryStatusResponse, tonic::Status> {
        Ok(self
            .admin
            .get_delivery_status(pb::GetDeliveryStatusRequest {})
            .await?
            .into_inner())
    }

    /// `Issuer.DelegateTask`.
    pub async fn delegate_task(
        &mut self,
        req: pb::DelegateTaskRequest,
    ) -> Result<pb::Task, tonic::Status> {
        let r = self.issuer.delegate_task(req).await?.into_inner();
        r.task
            .ok_or_else(|| tonic::Status::internal("response without task"))
    }

    /// `Admin.ListGrants` (one page).
    pub async fn list_grants(
        &mut self,
        req: pb::ListGrantsRequest,
    ) -> Result<pb::ListGrantsResponse, tonic::Status> {
        Ok(self.admin.list_grants(req).await?.into_inner())
    }

    /// `Admin.ExportAudit` (one page).
    pub async fn export_audit(
        &mut self,
        after_seq: u64,
        limit: u32,
    ) -> Result<pb::ExportAuditResponse, tonic::Status> {
        let req = pb::ExportAuditRequest { after_seq, limit };
        Ok(self.admin.export_audit(req).await?.into_inner())
    }

    /// `Admin.GetTaskTimeline`, every page; `holder` empty = the caller.
    /// The pages are joined into one response (its events in order).
    pub async fn task_timeline(
        &mut self,
        task_id: &str,
        holder: &str,
    ) -> Result<pb::GetTaskTimelineResponse, tonic::Status> {
        let mut all = self.task_timeline_page(task_id, holder, 0, "").await?;
        while !all.next_page_token.is_empty() {
            let token = std::mem::take(&mut all.next_page_token);
            let page = self.task_timeline_page(task_id, holder, 0, &token).await?;
            all.events.extend(page.events);
            all.acks.extend(page.acks);
            all.task = page.task;
            all.next_page_token = page.next_page_token;
        }
        Ok(all)
    }

    /// One page of `Admin.GetTaskTimeline` (`page_size` 0 = the server's
    /// largest page; `page_token` empty = the first page).
    pub async fn task_timeline_page(
        &mut self,
        task_id: &str,
        holder: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<pb::GetTaskTimelineResponse, tonic::Status> {
        let task = Some(pb::TaskRef {
            task_id: task_id.into(),
            holder: holder.into(),
        });
        let req = pb::GetTaskTimelineRequest {
            task,
            page_size,
            page_token: page_token.into(),
        };
        Ok(self.admin.get_task_timeline(req).await?.into_inner())
    }

    /// `Admin.ListBreakGlass`, every page, newest first.
    pub async fn list_break_glass(
        &mut self,
        include_reviewed: bool,
    ) -> Result<Vec<pb::Task>, tonic::Status> {
        let mut tasks = Vec::new();
        let mut page_token = String::new();
        loop {
            let req = pb::ListBreakGlassRequest {
                include_reviewed,
                page_size: 0,
                page_token,
            };
            let page = self.admin.list_break_glass(req).await?.into_inner();
            tasks.extend(page.tasks);
            if page.next_page_token.is_empty() {
                return Ok(tasks);
            }
            page_token = page.next_page_token;
        }
    }

    /// `Admin.MarkReviewed`; `holder` is the SPIFFE ID holding the task.
    pub async fn mark_reviewed(
        &mut self,
        task_id: &str,
        holder: &str,
        note: &str,
    ) -> Result<pb::Task, tonic::Status> {
        let req = pb::MarkReviewedRequest {
            task: Some(pb::TaskRef {
                task_id: task_id.into(),
                holder: holder.into(),
            }),
            note: note.into(),
        };
        let r = self.admin.mark_reviewed(req).await?.into_inner();
        r.task
            .ok_or_else(|| tonic::Status::internal("response without task"))
    }

    /// `Admin.GetPolicyStatus`.
    pub async fn policy_status(&mut self) -> Result<pb::GetPolicyStatusResponse, tonic::Status> {
        Ok(self
            .admin
            .get_policy_status(pb::GetPolicyStatusRequest {})
            .await?
            .into_inner())
    }

    /// One `Revocations.WatchRevocations` stream, no reconnection (see [`Watcher`]).
    pub async fn watch_once(
        &mut self,
        req: pb::WatchRevocationsRequest,
    ) -> Result<tonic::Streaming<pb::WatchRevocationsResponse>, tonic::Status> {
        Ok(self.revocations.watch_revocations(req).await?.into_inner())
    }

    /// A revocation watcher that reconnects and resumes by itself.
    pub fn watcher(&self, req: pb::WatchRevocationsRequest) -> Watcher {
        Watcher::new(self.clone(), req)
    }
}

/// A new P-256 key and a CSR for it (the CSR names nothing: the issuer
/// ignores names anyway). Returns `(csr_der, key_pkcs8_pem)`.
pub fn new_key_and_csr() -> Result<(Vec<u8>, zeroize::Zeroizing<String>), rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    Ok((
        csr.der().to_vec(),
        zeroize::Zeroizing::new(key.serialize_pem()),
    ))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn serving_status(wire: i32) -> tonic_health::ServingStatus {
    use tonic_health::pb::health_check_response::ServingStatus as Wire;
    match Wire::try_from(wire) {
        Ok(Wire::Serving) => tonic_health::ServingStatus::Serving,
        Ok(Wire::NotServing) => tonic_health::ServingStatus::NotServing,
        _ => tonic_health::ServingStatus::Unknown,
    }
}
