//! A stand-in SPIRE agent: the SPIFFE Workload API (proto/spiffe/workload.proto)
//! on a unix socket, serving `FetchX509SVID` and `FetchX509Bundles` as
//! streams that push every change the test makes (rotation, federation).
//! The JWT calls answer UNIMPLEMENTED. Like SPIRE, it refuses any call
//! without the `workload.spiffe.io: true` metadata header.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_stream::StreamExt;
use tokio_stream::wrappers::{UnixListenerStream, WatchStream};
use tonic::{Request, Response, Status};

pub mod pb {
    #![allow(missing_docs, clippy::all, unreachable_pub)]
    include!(concat!(env!("OUT_DIR"), "/spiffe_workload/_.rs"));
}

use pb::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};

/// The SVID the agent hands out now, and the bundles it says to trust.
#[derive(Debug, Clone)]
pub struct AgentView {
    /// `spiffe://…` of the SVID.
    pub spiffe_id: String,
    /// Leaf first (DER each).
    pub chain: Vec<Vec<u8>>,
    /// PKCS#8 DER.
    pub key: Vec<u8>,
    /// The SVID's trust domain (`example.org`) and its roots (DER each).
    pub trust_domain: String,
    pub roots: Vec<Vec<u8>>,
    /// Federated trust domains (`partner.test`) and their roots.
    pub federated: BTreeMap<String, Vec<Vec<u8>>>,
}

impl AgentView {
    fn x509_svid_response(&self) -> pb::X509svidResponse {
        pb::X509svidResponse {
            svids: vec![pb::X509svid {
                spiffe_id: self.spiffe_id.clone(),
                x509_svid: self.chain.concat(),
                x509_svid_key: self.key.clone(),
                bundle: self.roots.concat(),
                hint: String::new(),
            }],
            crl: vec![],
            federated_bundles: self
                .federated
                .iter()
                .map(|(td, roots)| (format!("spiffe://{td}"), roots.concat()))
                .collect(),
        }
    }

    fn x509_bundles_response(&self) -> pb::X509BundlesResponse {
        let mut bundles: std::collections::HashMap<String, Vec<u8>> = self
            .federated
            .iter()
            .map(|(td, roots)| (format!("spiffe://{td}"), roots.concat()))
            .collect();
        bundles.insert(
            format!("spiffe://{}", self.trust_domain),
            self.roots.concat(),
        );
        pb::X509BundlesResponse {
            crl: vec![],
            bundles,
        }
    }
}

#[derive(Clone)]
struct Service {
    view: tokio::sync::watch::Receiver<AgentView>,
    served: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

impl Service {
    /// SPIRE's rule: the header proves the caller is a Workload API client,
    /// not a browser or a proxy relaying someone else's request.
    fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        match req.metadata().get("workload.spiffe.io") {
            Some(v) if v == "true" => {
                self.served.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            _ => {
                self.refused.fetch_add(1, Ordering::SeqCst);
                Err(Status::invalid_argument(
                    "security header missing from request",
                ))
            }
        }
    }
}

type Stream<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl SpiffeWorkloadApi for Service {
    type FetchX509SVIDStream = Stream<pb::X509svidResponse>;
    type FetchX509BundlesStream = Stream<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = Stream<pb::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        self.check(&req)?;
        // The current view at once, then one message per change.
        let s = WatchStream::new(self.view.clone()).map(|v| Ok(v.x509_svid_response()));
        Ok(Response::new(Box::pin(s)))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        self.check(&req)?;
        let s = WatchStream::new(self.view.clone()).map(|v| Ok(v.x509_bundles_response()));
        Ok(Response::new(Box::pin(s)))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        self.check(&req)?;
        Err(Status::unimplemented("JWT-SVIDs are not served here"))
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        self.check(&req)?;
        Err(Status::unimplemented("JWT bundles are not served here"))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        self.check(&req)?;
        Err(Status::unimplemented("JWT-SVIDs are not validated here"))
    }
}

/// A running stand-in agent; stops when dropped.
pub struct FakeAgent {
    view: tokio::sync::watch::Sender<AgentView>,
    served: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
    join: tokio::task::JoinHandle<()>,
}

impl FakeAgent {
    /// Listens on a fresh socket, serving `view`.
    pub async fn start(view: AgentView) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let (tx, rx) = tokio::sync::watch::channel(view);
        let served = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let svc = Service {
            view: rx,
            served: served.clone(),
            refused: refused.clone(),
        };
        let join = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(SpiffeWorkloadApiServer::new(svc))
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await
                .unwrap();
        });
        Self {
            view: tx,
            served,
            refused,
            socket,
            _dir: dir,
            join,
        }
    }

    /// `unix:///…/agent.sock`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Pushes a change to every open stream.
    pub fn update(&self, f: impl FnOnce(&mut AgentView)) {
        self.view.send_modify(f);
    }

    /// Calls answered (with the security header).
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// Calls refused for lacking the security header.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.join.abort();
    }
}
