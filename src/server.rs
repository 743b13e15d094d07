//! Assembly: a [`Server`] builds every component from its [`Config`] and runs
//! until the shutdown future resolves. `taskmint serve` and the integration
//! tests use this same entry point.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca::{CaError, SigningCa};
use crate::config::Config;
use crate::grpc;
use crate::identity::SpiffePattern;
use crate::issuer::Issuer;
use crate::jwt::{JwtError, JwtSigner};
use crate::policy::{Engine, Groups};
use crate::revocation::{Revocations, reaper};
use crate::store::{AnyStore, SqliteStore, StoreError};
use crate::tls::{MaterialSources, TlsError, TlsMaterial};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// TLS material.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Signing CA.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// JWT key.
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// Store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The policy file.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// The discovery listener.
    #[error(transparent)]
    Discovery(#[from] crate::ops::discovery::DiscoveryError),
    /// The SSF transmitter.
    #[error(transparent)]
    Ssf(#[from] crate::ssf::SsfError),
    /// The signing CA does not chain to the issuer's own trust domain.
    #[error("signing CA does not chain to a root of trust domain `{td}`: {reason}")]
    CaChain {
        /// The issuer's trust domain.
        td: String,
        /// Why.
        reason: String,
    },
}

/// A built, not yet running, issuer.
#[derive(Debug)]
pub struct Server {
    cfg: Config,
    issuer: Arc<Issuer>,
    material: Arc<TlsMaterial>,
    store: AnyStore,
    /// The log's head when the store was opened: the follower publishes
    /// what comes after it.
    feed_from: u64,
    /// The discovery listener, when bound by the caller (else `run` binds
    /// `discovery.listen`).
    discovery_listener: Option<TcpListener>,
}

impl Server {
    /// Loads keys, bundles and the store (running migrations).
    pub async fn build(cfg: Config) -> Result<Self, StartError> {
        let material = TlsMaterial::load(MaterialSources::resolve(&cfg).await?)?;
        let ca = SigningCa::load(&cfg.ca)?;
        check_ca_chains_to_own_domain(&cfg, &ca, &material)?;
        let jwt = Arc::new(JwtSigner::load(&cfg.jwt.key)?);
        // A policy that does not parse or validate stops the start: deny by
        // default would otherwise refuse every call without saying why.
        let policy = Arc::new(Engine::load(
            &cfg.policy.file,
            policy_groups(&cfg),
            crate::clock::now_unix(),
        )?);
        let store = crate::store::open(&cfg.store).await?;
        let dyn_store = store.as_dyn();
        // The hub publishes from here on; a watcher reads what came before
        // from the log.
        let feed_from = dyn_store.current_seq().await?;
        let revocations = Arc::new(
            // With [ssf], SETs carry its issuer, as its metadata says.
            Revocations::new(dyn_store, jwt.clone(), cfg.set_issuer())
                .with_x509_issuer(ca.issuer_name()),
        );
        // Catch up on deadlines that passed while the issuer was down, before
        // anyone can mint or watch.
        let expired = reaper::expire_due_tasks(&revocations, &cfg.jwt_issuer()).await?;
        if expired > 0 {
            tracing::info!(expired, "expired tasks whose deadline passed while stopped");
        }
        let issuer = Arc::new(Issuer::new(
            &cfg,
            ca,
            jwt,
            revocations,
            material.clone(),
            policy,
        ));
        // The trail says which policy was in force from the first call on.
        issuer.audit_policy_in_force().await?;
        Ok(Self {
            cfg,
            issuer,
            material,
            store,
            feed_from,
            discovery_listener: None,
        })
    }

    /// Serves discovery on `listener` rather than binding
    /// `discovery.listen` (tests bind port 0); ignored without `[discovery]`.
    pub fn with_discovery_listener(mut self, listener: TcpListener) -> Self {
        self.discovery_listener = Some(listener);
        self
    }

    /// The domain issuer.
    pub fn issuer(&self) -> &Arc<Issuer> {
        &self.issuer
    }

    /// What the operations listener's `/readyz` checks.
    pub fn readiness(&self) -> crate::ops::Readiness {
        crate::ops::Readiness::new(self.issuer.clone(), self.material.clone())
    }

    /// The store the issuer writes to.
    pub fn store(&self) -> &AnyStore {
        &self.store
    }

    /// The SQLite store, when that is the backend (for operations and
    /// tests, such as capping its size with [`SqliteStore::set_max_pages`]).
    pub fn sqlite_store(&self) -> Option<&Arc<SqliteStore>> {
        self.store.sqlite()
    }

    /// Serves on `listener` until `shutdown` resolves, reloading TLS material
    /// in the background; closes the store on the way out.
    pub async fn run(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartError> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let discovery = crate::ops::discovery::spawn(
            &self.cfg,
            self.discovery_listener.take(),
            self.issuer.clone(),
            self.material.clone(),
            stop_rx.clone(),
        )
        .await?;
        // Push receivers' clients are built (their TLS files read) before
        // anything serves; they deliver while this process leads.
        let pushers = crate::ssf::push::spawn_all(
            &self.cfg,
            self.issuer.revocations(),
            self.issuer.system_actor(),
            &stop_rx,
        )?;
        let stop_rx_reaper = stop_rx.clone();
        let reload = tokio::spawn(crate::tls::reload_loop(
            self.material.clone(),
            self.cfg.trust.reload_interval,
            stop_rx,
        ));
        let follower = tokio::spawn(
            self.issuer
                .revocations()
                .clone()
                .follow(self.feed_from, self.store.commit_wakes()),
        );
        let reaper = tokio::spawn(reaper::run(
            self.issuer.revocations().clone(),
            self.cfg.feed.clone(),
            self.cfg.ssf_receivers().to_vec(),
            crate::retention::Retention::new(&self.cfg.store, self.issuer.system_actor()),
            self.issuer.system_actor().to_owned(),
            self.store.leadership(),
            stop_rx_reaper.clone(),
        ));
        let policy_reload = tokio::spawn(policy_reload_loop(
            self.issuer.clone(),
            self.cfg.policy.reload_interval,
            stop_rx_reaper,
        ));
        // Refusals by a limit are audited in aggregate; write the counts
        // that are due every few seconds.
        let flusher = {
            let issuer = self.issuer.clone();
            let mut stop = stop_tx.subscribe();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = tick.tick() => issuer.flush_refusals().await,
                        _ = stop.changed() => return,
                    }
                }
            })
        };
        let revocations = self.issuer.revocations().clone();
        let shutdown = async move {
            shutdown.await;
            // Watch streams never end by themselves: end them so the drain
            // finishes and subscribers resume on the next server.
            revocations.close();
        };
        let result = grpc::serve(
            self.issuer.clone(),
            self.material.clone(),
            listener,
            &self.cfg.listen,
            shutdown,
        )
        .await;
        let _ = stop_tx.send(true);
        let _ = reload.await;
        if let Some(w) = self.material.workload_api() {
            w.shutdown().await;
        }
        let _ = reaper.await;
        let _ = follower.await;
        let _ = policy_reload.await;
        let _ = flusher.await;
        if let Some(d) = discovery {
            let _ = d.await;
        }
        for p in pushers {
            let _ = p.await;
        }
        // What was counted but not yet due is written on the way out.
        self.issuer.flush_refusals_now().await;
        self.store.close().await;
        Ok(result?)
    }
}

/// Config groups (and the admins) as policy groups.
pub fn policy_groups(cfg: &Config) -> Groups {
    let groups = cfg
        .policy
        .groups
        .iter()
        .map(|g| {
            let members = g
                .members
                .iter()
                .map(|m| SpiffePattern::parse(m).expect("validated at config load"))
                .collect();
            (g.name.clone(), members)
        })
        .collect();
    Groups::new(groups, &cfg.admins)
}

/// Re-reads the policy file every `interval` and on SIGHUP.
async fn policy_reload_loop(
    issuer: Arc<Issuer>,
    interval: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the policy is reloaded on change only");
            None
        }
    };
    loop {
        let force = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                tracing::info!("SIGHUP: re-reading the policy file");
                true
            }
            _ = stop.changed() => return,
        };
        if let Err(e) = issuer.reload_policy(force).await {
            tracing::error!(error = %e, "policy reload could not be audited");
        }
    }
}

/// A minted leaf must verify against the served bundle: refuse to start with
/// a signing CA that does not chain to the issuer's own trust domain.
fn check_ca_chains_to_own_domain(
    cfg: &Config,
    ca: &SigningCa,
    material: &TlsMaterial,
) -> Result<(), StartError> {
    let td = spiffe::TrustDomain::new(&cfg.trust_domain).expect("validated at config load");
    let err = |reason: String| StartError::CaChain {
        td: cfg.trust_domain.clone(),
        reason,
    };
    let bundles = material.bundles();
    let bundle = bundles.get(&td).ok_or_else(|| {
        err("no bundle for it (from trust.domains, trust.bundle_dir or the Workload API)".into())
    })?;
    fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
        X509Certificate::from_der(der)
            .map(|(_, c)| c)
            .map_err(|e| e.to_string())
    }
    let chain = ca
        .chain()
        .iter()
        .map(|c| parse(c.as_ref()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    for pair in chain.windows(2) {
        pair[0]
            .verify_signature(Some(pair[1].public_key()))
            .map_err(|_| {
                err(format!(
                    "`{}` is not signed by the next certificate",
                    pair[0].subject()
                ))
            })?;
    }
    let top = chain.last().ok_or_else(|| err("empty chain".into()))?;
    let roots = bundle
        .roots()
        .iter()
        .map(|r| parse(r.as_ref()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    if roots
        .iter()
        .any(|r| r.as_ref() == top.as_ref() || top.verify_signature(Some(r.public_key())).is_ok())
    {
        Ok(())
    } else {
        Err(err(format!(
            "`{}` is not signed by any root of the bundle",
            top.issuer()
        )))
    }
}
