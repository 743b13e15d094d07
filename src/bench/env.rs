//! A throw-away dev trust domain for a benchmark run: config tuned so the
//! figures measure the issuer (limits that a benchmark would trip are raised),
//! caller identities, and connections.

use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use taskmint::client::{Client, Identity};
use taskmint::devca::DevRoot;

/// The trust domain benchmarks use.
pub const TD: &str = "example.org";

/// A benchmark's trust domain on disk.
#[derive(Debug)]
pub struct BenchEnv {
    /// Its directory (removed on drop).
    pub dir: PathBuf,
    /// The config file.
    pub config: PathBuf,
    roots: Vec<CertificateDer<'static>>,
    owned: bool,
}

impl Drop for BenchEnv {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl BenchEnv {
    /// Writes a dev trust domain with benchmark settings: no rate limit in
    /// the way (one load generator plays many agents), feed buffers sized for
    /// 10k subscribers. Policy, audit, the active-credential cap and the
    /// durable store stay on.
    pub fn create(label: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "taskmint-bench-{label}-{}-{}",
            std::process::id(),
            taskmint::clock::now_unix()
        ));
        std::fs::create_dir_all(&dir)?;
        let workloads: Vec<String> = taskmint::devca::DEFAULT_WORKLOADS
            .iter()
            .map(|s| s.to_string())
            .collect();
        let init = taskmint::devca::init(&dir, TD, &workloads, "127.0.0.1:0", true)?;
        let text = std::fs::read_to_string(&init.config)?
            .replace("subscriber_buffer = 1024", "subscriber_buffer = 65536")
            .replace(
                "heartbeat_interval = \"10s\"",
                "heartbeat_interval = \"60s\"",
            )
            .replace(
                "rate = { per_second = 100.0, burst = 200 }",
                "rate = { per_second = 1000000.0, burst = 1000000 }",
            )
            .replace(
                "rate = { per_second = 20.0, burst = 50 }",
                "rate = { per_second = 1000000.0, burst = 1000000 }",
            )
            .replace("max_active_tasks = 1000", "max_active_tasks = 10000000")
            .replace("max_watch_streams = 16", "max_watch_streams = 1000000")
            .replace(
                "max_concurrent_streams = 100",
                "max_concurrent_streams = 100000",
            );
        std::fs::write(&init.config, text)?;
        let roots = taskmint::pem::certs(&std::fs::read(dir.join("bundle.pem"))?)
            .map_err(anyhow::Error::msg)?;
        Ok(Self {
            config: init.config,
            dir,
            roots,
            owned: true,
        })
    }

    /// Points the config at the PostgreSQL database at `url` instead of
    /// the SQLite file (several replicas may then share it).
    pub fn use_store_url(&self, url: &str) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&self.config)?;
        let sqlite = taskmint::devca::SQLITE_STORE_LINE;
        anyhow::ensure!(
            text.contains(sqlite),
            "the bench config has no `{sqlite}` to replace"
        );
        let url = toml::Value::String(url.to_owned());
        std::fs::write(&self.config, text.replace(sqlite, &format!("url = {url}")))?;
        Ok(())
    }

    /// The trust domain of an issuer started elsewhere (`--server`): `dir`
    /// holds its `bundle.pem`, `root.key` (to make caller SVIDs) and the
    /// `agent` and `sidecar` SVIDs, as `dev init` writes them. Its rate
    /// limit must allow the load.
    pub fn existing(dir: &Path) -> anyhow::Result<Self> {
        let roots = taskmint::pem::certs(&std::fs::read(dir.join("bundle.pem"))?)
            .map_err(anyhow::Error::msg)?;
        Ok(Self {
            config: dir.join("taskmint.toml"),
            dir: dir.to_owned(),
            roots,
            owned: false,
        })
    }

    /// A dev workload's identity (`agent`, `sidecar`, `admin`).
    pub fn identity(&self, name: &str) -> anyhow::Result<Identity> {
        read_identity(&self.dir, name)
    }

    /// `n` fresh caller identities `spiffe://example.org/workload/bench-<i>`.
    pub fn callers(&self, n: usize) -> anyhow::Result<Vec<Identity>> {
        let cert = std::fs::read_to_string(self.dir.join("bundle.pem"))?;
        let key = std::fs::read_to_string(self.dir.join("root.key"))?;
        let root = DevRoot::from_pem(TD, &cert, &key)?;
        (0..n)
            .map(|i| {
                let p = DevRoot::svid_params(&format!("spiffe://{TD}/workload/bench-{i}"), 1)?;
                let issued = root.sign(&p)?;
                Ok(Identity {
                    chain: vec![CertificateDer::from(issued.cert_der)],
                    key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.key_der)),
                })
            })
            .collect()
    }

    /// Connects to `addr` as `identity` (one connection).
    pub async fn connect(&self, addr: &str, identity: Identity) -> anyhow::Result<Client> {
        let server_id = spiffe::SpiffeId::new(format!("spiffe://{TD}/taskmint"))?;
        Ok(Client::connect_with(addr, Some(identity), self.roots.clone(), server_id).await?)
    }

    /// One served request: connect as `agent` and fetch the bundle.
    pub async fn probe(&self, addr: &str) -> bool {
        let Ok(id) = self.identity("agent") else {
            return false;
        };
        match self.connect(addr, id).await {
            Ok(mut c) => c.trust_bundle().await.is_ok(),
            Err(_) => false,
        }
    }

    /// The roots that verify the issuer.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The store file.
    pub fn store_path(&self) -> PathBuf {
        self.dir.join("data/taskmint.db")
    }
}

/// Reads `<dir>/<name>.pem` and `.key`.
pub fn read_identity(dir: &Path, name: &str) -> anyhow::Result<Identity> {
    let chain = taskmint::pem::certs(&std::fs::read(dir.join(format!("{name}.pem")))?)
        .map_err(anyhow::Error::msg)?;
    let key = taskmint::pem::pkcs8_key(&std::fs::read(dir.join(format!("{name}.key")))?)
        .map_err(anyhow::Error::msg)?;
    Ok(Identity {
        chain,
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
    })
}
