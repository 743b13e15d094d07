//! The SPIFFE Workload API as the identity source, against a stand-in SPIRE
//! agent (tests/common/workload_api.rs) that rotates SVIDs mid-test: the
//! issuer's serving SVID and trust bundles (federated ones too) come from
//! it and rotate without a restart or a dropped stream; the Rust client and
//! the CLI authenticate with its SVID and pick up a rotation.

mod common;
#[path = "common/workload_api.rs"]
mod workload_api;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use common::*;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use taskmint::client::Client;
use taskmint::devca::{DevRoot, Issued};
use taskmint::grpc::pb::{self, watch_revocations_response::Msg};
use taskmint::identity::WorkloadApiSource;
use tonic::Code;
use workload_api::{AgentView, FakeAgent, pb as wl};

const BIN: &str = env!("CARGO_BIN_EXE_taskmint");
const AGENT: &str = "spiffe://example.org/workload/agent";

fn root_der(root: &DevRoot) -> Vec<u8> {
    taskmint::pem::certs(root.cert_pem().as_bytes()).unwrap()[0].to_vec()
}

fn view(root: &DevRoot, spiffe_id: &str, svid: &Issued) -> AgentView {
    AgentView {
        spiffe_id: spiffe_id.into(),
        chain: vec![svid.cert_der.clone()],
        key: svid.key_der.clone(),
        trust_domain: root.trust_domain().into(),
        roots: vec![root_der(root)],
        federated: BTreeMap::new(),
    }
}

/// Writes a signing CA signed by `root` into `dir` and edits a dev config's
/// text so that the serving SVID and every bundle come from the Workload
/// API: from `[server] workload_api = endpoint`, or with `None` from
/// nothing the config names (left to `SPIFFE_ENDPOINT_SOCKET`).
fn agent_config(text: &str, endpoint: Option<&str>, root: &DevRoot, dir: &Path) -> String {
    let ca = root.signing_ca().unwrap();
    std::fs::write(dir.join("ca.pem"), &ca.cert_pem).unwrap();
    std::fs::write(dir.join("ca.key"), &ca.key_pem).unwrap();
    let server = match endpoint {
        Some(e) => format!("workload_api = \"{e}\""),
        None => String::new(),
    };
    let edited = text
        .replace(
            "[[trust.domains]]\nname = \"example.org\"\nbundle = \"bundle.pem\"\n",
            "",
        )
        .replace("cert = \"taskmint.pem\"\nkey = \"taskmint.key\"", &server)
        .replace(
            "cert = \"signing-ca.pem\"\nkey = \"signing-ca.key\"",
            &format!(
                "cert = \"{}\"\nkey = \"{}\"",
                dir.join("ca.pem").display(),
                dir.join("ca.key").display()
            ),
        );
    assert!(!edited.contains("[[trust.domains]]") && !edited.contains("taskmint.pem"));
    edited
}

/// The issuer of `example.org` with no PEM for its serving SVID or its
/// bundle: both come from `agent`. Its signing CA (a file, as always) is
/// signed by `root`, the root the agent hands out.
async fn start_on_agent(agent: &FakeAgent, root: &DevRoot, dir: &Path) -> TestServer {
    let endpoint = agent.endpoint();
    start_with(|t| agent_config(&t, Some(&endpoint), root, dir)).await
}

/// A client presenting `svid` that verifies the issuer with `root`.
async fn client_as(s: &TestServer, root: &DevRoot, svid: &Issued) -> Client {
    Client::connect_with(
        &s.addr.to_string(),
        Some(identity(svid)),
        vec![CertificateDer::from(root_der(root))],
        spiffe::SpiffeId::new("spiffe://example.org/taskmint").unwrap(),
    )
    .await
    .unwrap()
}

/// Accepts any server certificate, so the test can see which one was sent.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The leaf a new handshake with the issuer is served.
async fn served_leaf(s: &TestServer) -> Vec<u8> {
    served_leaf_at(s.addr).await
}

async fn served_leaf_at(addr: std::net::SocketAddr) -> Vec<u8> {
    let provider = taskmint::tls::provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("taskmint").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Polls `f` until it is true, for at most 10 s.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64URL.decode(payload).unwrap()).unwrap()
}

fn x5t(leaf_der: &[u8]) -> String {
    B64URL.encode(Sha256::digest(leaf_der))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_svid_rotates_for_new_handshakes_while_open_streams_keep_running() {
    let tmp = tempfile::tempdir().unwrap();
    let root = DevRoot::new(TD).unwrap();
    let first = root.server_svid().unwrap();
    let agent = FakeAgent::start(view(&root, "spiffe://example.org/taskmint", &first)).await;
    let mut s = start_on_agent(&agent, &root, tmp.path()).await;
    assert!(agent.served() >= 1, "the issuer called the agent");
    assert_eq!(served_leaf(&s).await, first.cert_der);

    // The issuer's own trust domain is trusted through the agent's bundle
    // alone (no bundle file is configured), and it serves that bundle.
    let agent_svid = root.workload("agent").unwrap();
    let mut open = client_as(&s, &root, &agent_svid).await;
    let b = open.trust_bundle().await.unwrap();
    assert_eq!(b.x509_authorities, vec![root_der(&root)]);
    let mut stream = open
        .watch_once(pb::WatchRevocationsRequest {
            after_seq: Some(0),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(matches!(
        stream.message().await.unwrap().unwrap().msg,
        Some(Msg::Synced(pb::Synced { seq: 0 }))
    ));

    let second = root.server_svid().unwrap();
    agent.update(|v| {
        v.chain = vec![second.cert_der.clone()];
        v.key = second.key_der.clone();
    });
    eventually("new handshakes are served the rotated SVID", || async {
        served_leaf(&s).await == second.cert_der
    })
    .await;

    // The connection opened before the rotation still serves calls, and
    // its stream still delivers.
    open.mint_jwt("before-rotation", "db", None).await.unwrap();
    open.complete_task("before-rotation").await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Msg::Event(e)) = stream.message().await.unwrap().unwrap().msg {
                break e;
            }
        }
    })
    .await
    .expect("the open stream delivered the revocation");
    assert_eq!(event.task_id, "before-rotation");
    // A new client verifies the new SVID against the same bundle.
    let mut fresh = client_as(&s, &root, &agent_svid).await;
    fresh.mint_jwt("after-rotation", "db", None).await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_bundle_pushed_by_the_agent_is_trusted_without_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let root = DevRoot::new(TD).unwrap();
    let agent = FakeAgent::start(view(
        &root,
        "spiffe://example.org/taskmint",
        &root.server_svid().unwrap(),
    ))
    .await;
    let mut s = start_on_agent(&agent, &root, tmp.path()).await;
    let partner = DevRoot::new("partner.test").unwrap();
    let outsider = partner.workload("agent").unwrap();

    let mut c = client_as(&s, &root, &outsider).await;
    let refused = c.trust_bundle().await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("partner.test"),
        "{}",
        refused.message()
    );

    agent.update(|v| {
        v.federated
            .insert("partner.test".into(), vec![root_der(&partner)]);
    });
    eventually("the federated trust domain is trusted", || async {
        let mut c = client_as(&s, &root, &outsider).await;
        c.trust_bundle().await.is_ok()
    })
    .await;

    // And withdrawn again when the agent stops sending it.
    agent.update(|v| v.federated.clear());
    eventually(
        "the federated trust domain is no longer trusted",
        || async {
            let mut c = client_as(&s, &root, &outsider).await;
            matches!(c.trust_bundle().await, Err(e) if e.code() == Code::Unauthenticated)
        },
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_and_the_cli_take_their_svid_from_the_workload_api_and_follow_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let root = DevRoot::new(TD).unwrap();
    let server_agent = FakeAgent::start(view(
        &root,
        "spiffe://example.org/taskmint",
        &root.server_svid().unwrap(),
    ))
    .await;
    let mut s = start_on_agent(&server_agent, &root, tmp.path()).await;
    let first = root.workload("agent").unwrap();
    let agent = FakeAgent::start(view(&root, AGENT, &first)).await;

    // The Rust client: SVID and the issuer's bundle from the agent.
    let source = WorkloadApiSource::connect(&agent.endpoint(), Duration::from_secs(5))
        .await
        .unwrap();
    let addr = s.addr.to_string();
    let mut c1 = Client::connect_workload_api(&addr, &source, None, None)
        .await
        .unwrap();
    let t = c1.mint_jwt("wl-1", "db", None).await.unwrap().token;
    assert_eq!(claims(&t)["sub"], AGENT);
    assert_eq!(claims(&t)["cnf"]["x5t#S256"], x5t(&first.cert_der));

    let second = root.workload("agent").unwrap();
    agent.update(|v| {
        v.chain = vec![second.cert_der.clone()];
        v.key = second.key_der.clone();
    });
    eventually("the source holds the rotated SVID", || async {
        source.svid().unwrap().chain[0].as_ref() == second.cert_der.as_slice()
    })
    .await;
    let mut c2 = Client::connect_workload_api(&addr, &source, None, None)
        .await
        .unwrap();
    let t = c2.mint_jwt("wl-2", "db", None).await.unwrap().token;
    assert_eq!(claims(&t)["cnf"]["x5t#S256"], x5t(&second.cert_der));
    // The connection made before the rotation keeps the SVID it shook hands with.
    let t = c1.mint_jwt("wl-3", "db", None).await.unwrap().token;
    assert_eq!(claims(&t)["cnf"]["x5t#S256"], x5t(&first.cert_der));

    // The CLI, from an empty directory with no TASKMINT_* identity: by flag,
    // then by SPIFFE_ENDPOINT_SOCKET alone.
    let cwd = tempfile::tempdir().unwrap();
    let cwd_path = cwd.path().to_owned();
    let endpoint = agent.endpoint();
    let cli = move |task: &str, by_flag: bool| {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(&cwd_path)
            .env_remove("TASKMINT_SVID")
            .env_remove("TASKMINT_SVID_KEY")
            .env_remove("TASKMINT_BUNDLE")
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .args(["mint", "jwt", "--task", task, "--aud", "db", "--json"])
            .args(["--server", &addr]);
        if by_flag {
            cmd.args(["--workload-api", &endpoint]);
        } else {
            cmd.env("SPIFFE_ENDPOINT_SOCKET", &endpoint);
        }
        cmd.output().unwrap()
    };
    for (task, by_flag) in [("wl-cli-flag", true), ("wl-cli-env", false)] {
        let cli = cli.clone();
        let out = tokio::task::spawn_blocking(move || cli(task, by_flag))
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{task}: {stderr}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let c = claims(json["token"].as_str().unwrap());
        assert_eq!(c["sub"], AGENT, "{task}");
        assert_eq!(c["cnf"]["x5t#S256"], x5t(&second.cert_der), "{task}");
    }
    source.shutdown().await;
    s.stop().await;
}

#[tokio::test]
async fn the_cli_names_the_missing_identity_and_how_to_give_one() {
    let cwd = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(cwd.path())
        .env_remove("TASKMINT_SVID")
        .env_remove("TASKMINT_SVID_KEY")
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .args(["bundle", "--server", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tried = cwd.path().join("certs/dev/agent.pem");
    assert!(
        stderr.contains(&format!("`{}`", tried.display())),
        "{stderr}"
    );
    for way in [
        "--workload-api",
        "--svid",
        "TASKMINT_SVID",
        "SPIFFE_ENDPOINT_SOCKET",
    ] {
        assert!(stderr.contains(way), "{way} missing from: {stderr}");
    }
}

#[tokio::test]
async fn the_stand_in_agent_requires_the_security_header_like_spire() {
    let root = DevRoot::new(TD).unwrap();
    let agent = FakeAgent::start(view(&root, AGENT, &root.workload("agent").unwrap())).await;
    let socket = agent.socket.clone();
    let channel = tonic::transport::Endpoint::from_static("http://agent")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                let s = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .unwrap();
    let mut raw = wl::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel);
    let e = raw
        .fetch_x509svid(wl::X509svidRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "security header missing from request");
    assert_eq!(agent.refused(), 1);

    let mut req = tonic::Request::new(wl::X509svidRequest {});
    req.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let mut stream = raw.fetch_x509svid(req).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.svids[0].spiffe_id, AGENT);
    // And the `spiffe` crate's client, which the issuer and the CLI use,
    // sends it.
    let source = WorkloadApiSource::connect(&agent.endpoint(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(source.svid().unwrap().spiffe_id.to_string(), AGENT);
    assert_eq!(agent.refused(), 1);
}

/// `taskmint serve` with a config that names no serving SVID: the
/// Workload API from `SPIFFE_ENDPOINT_SOCKET`, and without it a start error
/// naming every source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_spiffe_endpoint_socket_when_the_config_names_no_svid() {
    let dir = tempfile::tempdir().unwrap();
    let root = DevRoot::new(TD).unwrap();
    let svid = root.server_svid().unwrap();
    let agent = FakeAgent::start(view(&root, "spiffe://example.org/taskmint", &svid)).await;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    taskmint::devca::init(
        dir.path(),
        TD,
        &Vec::<String>::new(),
        &listen.to_string(),
        false,
    )
    .unwrap();
    let config = dir.path().join("taskmint.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, agent_config(&text, None, &root, dir.path())).unwrap();

    let serve = |socket: Option<String>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config", config.to_str().unwrap()])
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .stdout(std::process::Stdio::null());
        match socket {
            Some(s) => cmd
                .env("SPIFFE_ENDPOINT_SOCKET", s)
                .stderr(std::process::Stdio::null()),
            None => cmd.stderr(std::process::Stdio::piped()),
        };
        cmd.spawn().unwrap()
    };

    let out = tokio::task::spawn_blocking({
        let child = serve(None);
        move || child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for source in [
        "[server] cert and key",
        "[server] workload_api",
        "SPIFFE_ENDPOINT_SOCKET",
    ] {
        assert!(stderr.contains(source), "{source} missing from: {stderr}");
    }

    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _running = Kill(serve(Some(agent.endpoint())));
    eventually("serve answers with the agent's SVID", || async {
        match tokio::net::TcpStream::connect(listen).await {
            Ok(_) => served_leaf_at(listen).await == svid.cert_der,
            Err(_) => false,
        }
    })
    .await;
}

/// `taskmint enforce` with `workload_api` and nothing else for its
/// identity: its SVID and the roots that verify the issuer come from the
/// agent, and it follows the feed and acknowledges as that SVID.
#[tokio::test]
async fn the_enforcer_takes_its_identity_from_the_workload_api() {
    let s = common::start().await;
    let root = s.root();
    let sidecar = root.workload("sidecar").unwrap();
    let agent = FakeAgent::start(view(
        &root,
        "spiffe://example.org/workload/sidecar",
        &sidecar,
    ))
    .await;
    let state = tempfile::tempdir().unwrap();
    let text = format!(
        "issuers = [\"{}\"]\nworkload_api = \"{}\"\nsubscriber = \"sidecar\"\n\
         listen = \"127.0.0.1:0\"\naudiences = [\"db\"]\nstate_dir = \"{}\"\n",
        s.addr,
        agent.endpoint(),
        state.path().display()
    );
    let cfg = taskmint::enforce::EnforceConfig::from_toml(&text, s.dir.path()).unwrap();
    let (enforcer, follower) = taskmint::enforce::Enforcer::start(&cfg).unwrap();
    let mut client = s.client("agent").await;
    let minted = client.mint_jwt("wl-enforce", "db", None).await.unwrap();
    let id = minted.credential.unwrap().id;
    client.complete_task("wl-enforce").await.unwrap();
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            enforcer.is_denied(&id)
                && enforcer.freshness() == taskmint::enforce::Freshness::Fresh
                && enforcer
                    .stats()
                    .acked_seq
                    .load(std::sync::atomic::Ordering::Relaxed)
                    >= 1
        })
        .await,
        "the enforcer did not follow and acknowledge with the agent's SVID"
    );
    assert!(agent.served() >= 1);
    follower.abort();
}
