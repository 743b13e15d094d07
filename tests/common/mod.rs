//! Test harness: a dev trust domain generated per test (nothing expires), the
//! real server on 127.0.0.1:0, clients for any identity.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use taskmint::client::{Client, ClientConfig, Identity};
use taskmint::config::Config;
use taskmint::devca::{DevRoot, Issued};
use taskmint::server::Server;
use taskmint::store::{SqliteStore, Store};

pub mod pg;

pub const TD: &str = "example.org";

pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub cfg: Config,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: Option<tokio::task::JoinHandle<()>>,
}

/// Writes a dev trust domain into a fresh directory, with a fast reload
/// interval, and starts the server on an ephemeral port.
pub async fn start() -> TestServer {
    start_with(|t| t).await
}

/// Like [`start`], with the generated config text edited by `edit` first.
pub async fn start_with(edit: impl FnOnce(String) -> String) -> TestServer {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let workloads: Vec<String> = ["agent", "sidecar", "admin"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    taskmint::devca::init(dir.path(), TD, &workloads, "127.0.0.1:0", false).unwrap();
    let path = dir.path().join("taskmint.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("reload_interval = \"5s\"", "reload_interval = \"200ms\"")
        .replace("reaper_interval = \"1s\"", "reaper_interval = \"100ms\"")
        .replace("reload_interval = \"2s\"", "reload_interval = \"200ms\"");
    // Tests drive many calls from one identity; the limits' own tests set
    // them back.
    let text = raise_call_limits(text);
    // The dev config caps ttl where the dev policy does (15 minutes); tests
    // keep a higher cap so the policy, not the limit, decides a longer
    // request (its denial and its hint are what they check).
    let text = text.replace("max_ttl = \"15m\"", "max_ttl = \"1h\"");
    std::fs::write(&path, edit(text)).unwrap();
    let cfg = Config::load(&path).unwrap();
    let mut s = TestServer {
        addr: "127.0.0.1:0".parse().unwrap(),
        dir,
        cfg,
        stop: None,
        join: None,
    };
    s.boot().await;
    s
}

/// Raises the buckets of every class but minting (whose dev value tests
/// rely on) in a dev config's text.
pub fn raise_call_limits(text: String) -> String {
    let high = "{ per_second = 100000.0, burst = 100000 }";
    text.replace(
        "task_rate = { per_second = 20.0, burst = 50 }",
        &format!("task_rate = {high}"),
    )
    .replace(
        "read_rate = { per_second = 100.0, burst = 200 }",
        &format!("read_rate = {high}"),
    )
    .replace(
        "watch_rate = { per_second = 20.0, burst = 50 }",
        &format!("watch_rate = {high}"),
    )
    .replace(
        "admin_rate = { per_second = 20.0, burst = 50 }",
        &format!("admin_rate = {high}"),
    )
}

impl TestServer {
    async fn boot(&mut self) {
        // A restart binds the same port again, so clients can reconnect.
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.addr = listener.local_addr().unwrap();
        let server = Server::build(self.cfg.clone()).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.stop = Some(tx);
        self.join = Some(tokio::spawn(async move {
            server
                .run(listener, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        }));
    }

    /// Stops the server and waits until it has closed its store.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(j) = self.join.take() {
            j.await.unwrap();
        }
    }

    /// Stops and starts again on the same config and database.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.boot().await;
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A client using the dev workload `name`'s files.
    pub async fn client(&self, name: &str) -> Client {
        Client::connect(&ClientConfig {
            server: self.addr.to_string(),
            svid: self.path(&format!("{name}.pem")),
            svid_key: self.path(&format!("{name}.key")),
            bundle: self.path("bundle.pem"),
            server_id: None,
        })
        .await
        .unwrap()
    }

    /// A client presenting `identity` (or no certificate at all).
    pub async fn client_with(&self, identity: Option<Identity>) -> Client {
        Client::connect_with(
            &self.addr.to_string(),
            identity,
            self.roots(),
            spiffe::SpiffeId::new(format!("spiffe://{TD}/taskmint")).unwrap(),
        )
        .await
        .unwrap()
    }

    /// A client with a fresh SVID for `spiffe://example.org/<path>`.
    pub async fn client_as(&self, path: &str) -> Client {
        let p = DevRoot::svid_params(&format!("spiffe://{TD}/{path}"), 1).unwrap();
        let issued = self.root().sign(&p).unwrap();
        self.client_with(Some(identity(&issued))).await
    }

    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        taskmint::pem::certs(&std::fs::read(self.path("bundle.pem")).unwrap()).unwrap()
    }

    /// The dev root, reloaded from disk (so tests can sign odd certificates).
    pub fn root(&self) -> DevRoot {
        let cert = std::fs::read_to_string(self.path("bundle.pem")).unwrap();
        let key = std::fs::read_to_string(self.path("root.key")).unwrap();
        DevRoot::from_pem(TD, &cert, &key).unwrap()
    }

    /// A second connection to the same database.
    pub async fn store(&self) -> SqliteStore {
        SqliteStore::open(self.cfg.store.path.as_deref().unwrap())
            .await
            .unwrap()
    }

    pub async fn credential_count(&self) -> u64 {
        let s = self.store().await;
        let n = s.count_credentials().await.unwrap();
        s.close().await;
        n
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub fn identity(issued: &Issued) -> Identity {
    Identity {
        chain: vec![CertificateDer::from(issued.cert_der.clone())],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.key_der.clone())),
    }
}

pub fn read_identity(cert: &Path, key: &Path) -> Identity {
    Identity {
        chain: taskmint::pem::certs(&std::fs::read(cert).unwrap()).unwrap(),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            taskmint::pem::pkcs8_key(&std::fs::read(key).unwrap())
                .unwrap()
                .to_vec(),
        )),
    }
}

/// Waits up to `limit` for `f` to become true.
pub async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
