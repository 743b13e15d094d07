//! The discovery listener over real HTTPS: the OpenID Connect document, the
//! JWKS and the SPIFFE bundle endpoint; a JWT minted over gRPC verifies
//! against them with `jsonwebtoken`, the `spiffe` crate and PyJWT; answers
//! follow a bundle reload; the listener's bounds hold.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use common::TD;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use spiffe::{JwtBundle, JwtBundleSet, JwtSvid, TrustDomain, X509Bundle};
use taskmint::client::{Client, ClientConfig};
use taskmint::config::Config;
use taskmint::server::Server;
use tokio::io::AsyncReadExt;

const AGENT: &str = "spiffe://example.org/workload/agent";

struct Running {
    dir: tempfile::TempDir,
    grpc: SocketAddr,
    discovery: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Running {
    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn url(&self) -> String {
        format!("https://{}", self.discovery)
    }

    async fn client(&self, name: &str) -> Client {
        Client::connect(&ClientConfig {
            server: self.grpc.to_string(),
            svid: self.path(&format!("{name}.pem")),
            svid_key: self.path(&format!("{name}.key")),
            bundle: self.path("bundle.pem"),
            server_id: None,
        })
        .await
        .unwrap()
    }

    /// Stops the server and waits for it.
    async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(j) = self.join.take() {
            j.await.unwrap();
        }
    }
}

/// A dev trust domain with discovery (`dev init --discovery`), the config
/// text edited by `edit`, served on two ephemeral ports.
async fn start(edit: impl FnOnce(String) -> String) -> Running {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let workloads: Vec<String> = ["agent", "admin"].iter().map(|s| s.to_string()).collect();
    taskmint::devca::init(dir.path(), TD, &workloads, "127.0.0.1:0", false).unwrap();
    let discovery_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let discovery = discovery_listener.local_addr().unwrap();
    let url = taskmint::devca::add_discovery(dir.path(), &discovery.to_string()).unwrap();
    assert_eq!(url, format!("https://{discovery}"));
    let path = dir.path().join("taskmint.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("reload_interval = \"5s\"", "reload_interval = \"200ms\"");
    std::fs::write(&path, edit(text)).unwrap();
    let cfg = Config::load(&path).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = listener.local_addr().unwrap();
    let server = Server::build(cfg)
        .await
        .unwrap()
        .with_discovery_listener(discovery_listener);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let join = tokio::spawn(async move {
        server
            .run(listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Running {
        dir,
        grpc,
        discovery,
        stop: Some(tx),
        join: Some(join),
    }
}

/// An HTTPS answer.
struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }
}

/// One request over a fresh TLS connection that trusts only `ca`.
async fn fetch(addr: SocketAddr, ca: &Path, method: &str, path: &str) -> Answer {
    try_fetch(addr, ca, method, path).await.unwrap()
}

async fn try_fetch(
    addr: SocketAddr,
    ca: &Path,
    method: &str,
    path: &str,
) -> Result<Answer, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in taskmint::pem::certs(&std::fs::read(ca).unwrap()).unwrap() {
        roots.add(c).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(taskmint::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes()
        .to_vec();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn jwt_set(bundle: &serde_json::Value) -> JwtBundleSet {
    let keys: Vec<_> = bundle["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "jwt-svid")
        .cloned()
        .collect();
    let jwt = JwtBundle::from_jwt_authorities(
        TrustDomain::new(TD).unwrap(),
        serde_json::json!({ "keys": keys }).to_string().as_bytes(),
    )
    .unwrap();
    let mut set = JwtBundleSet::new();
    set.add_bundle(jwt);
    set
}

fn x509_roots(bundle: &serde_json::Value) -> Vec<Vec<u8>> {
    bundle["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "x509-svid")
        .map(|k| {
            assert_eq!(k["x5c"].as_array().unwrap().len(), 1);
            B64.decode(k["x5c"][0].as_str().unwrap()).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn discovery_serves_oidc_jwks_and_the_spiffe_bundle_and_a_minted_jwt_verifies() {
    let s = start(|t| t).await;
    let ca = s.path("discovery-ca.pem");
    let mut agent = s.client("agent").await;
    let minted = agent
        .mint_jwt("disc-1", "db", Some(Duration::from_secs(120)))
        .await
        .unwrap();
    let token = minted.token;
    let (header, claims) = {
        let mut p = token.split('.');
        let h: serde_json::Value =
            serde_json::from_slice(&B64URL.decode(p.next().unwrap()).unwrap()).unwrap();
        let c: serde_json::Value =
            serde_json::from_slice(&B64URL.decode(p.next().unwrap()).unwrap()).unwrap();
        (h, c)
    };

    // OpenID Connect discovery: the issuer is the tokens' `iss`.
    let oidc = fetch(s.discovery, &ca, "GET", "/.well-known/openid-configuration").await;
    assert_eq!(oidc.status, 200);
    assert_eq!(oidc.header("content-type"), "application/json");
    assert_eq!(oidc.header("cache-control"), "public, max-age=300");
    let doc = oidc.json();
    assert_eq!(doc["issuer"], s.url().as_str());
    assert_eq!(claims["iss"], doc["issuer"]);
    assert_eq!(doc["jwks_uri"], format!("{}/keys", s.url()).as_str());
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256"])
    );
    assert_eq!(
        doc["response_types_supported"],
        serde_json::json!(["id_token"])
    );
    assert_eq!(
        doc["subject_types_supported"],
        serde_json::json!(["public"])
    );

    // The JWKS: standard `use: sig` keys only, the token's kid among them.
    let jwks = fetch(s.discovery, &ca, "GET", "/keys").await;
    assert_eq!(jwks.status, 200);
    assert_eq!(jwks.header("content-type"), "application/json");
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&jwks.body).unwrap();
    assert_eq!(set.keys.len(), 1, "one JWT signing key");
    let raw = jwks.json();
    let key = &raw["keys"][0];
    assert_eq!(key["use"], "sig");
    assert_eq!(key["alg"], "ES256");
    assert_eq!(key["kid"], header["kid"]);
    assert!(key.get("x5c").is_none());
    // An independent library verifies the token with it.
    let jwk = set.find(header["kid"].as_str().unwrap()).unwrap();
    let decoding = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["db"]);
    v.set_issuer(&[doc["issuer"].as_str().unwrap()]);
    let verified = jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &v).unwrap();
    assert_eq!(verified.claims["sub"], AGENT);
    assert_eq!(verified.claims["task_id"], "disc-1");
    // A changed payload does not verify.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut forged_claims = claims.clone();
    forged_claims["sub"] = "spiffe://example.org/workload/admin".into();
    parts[1] = B64URL.encode(serde_json::to_vec(&forged_claims).unwrap());
    assert!(jsonwebtoken::decode::<serde_json::Value>(&parts.join("."), &decoding, &v).is_err());

    // The SPIFFE bundle endpoint: the document GetTrustBundle returns.
    let bundle = fetch(s.discovery, &ca, "GET", "/").await;
    assert_eq!(bundle.status, 200);
    assert_eq!(bundle.header("cache-control"), "public, max-age=300");
    let served = bundle.json();
    let over_grpc = agent.trust_bundle().await.unwrap();
    let grpc_doc: serde_json::Value = serde_json::from_str(&over_grpc.spiffe_bundle_jwks).unwrap();
    assert_eq!(served, grpc_doc);
    assert_eq!(served["spiffe_sequence"], over_grpc.sequence);
    assert_eq!(served["spiffe_refresh_hint"], 300);
    // The spiffe crate parses both halves: the roots are the trust
    // domain's bundle, and the JWT-SVID verifies with the JWT keys.
    let roots = x509_roots(&served);
    let pem_roots = taskmint::pem::certs(&std::fs::read(s.path("bundle.pem")).unwrap()).unwrap();
    assert_eq!(roots, vec![pem_roots[0].to_vec()]);
    let x509 = X509Bundle::parse_from_der(TrustDomain::new(TD).unwrap(), &roots.concat()).unwrap();
    assert_eq!(x509.authorities().len(), 1);
    let svid = JwtSvid::parse_and_validate(&token, &jwt_set(&served), &["db"]).unwrap();
    assert_eq!(svid.spiffe_id().to_string(), AGENT);
    assert!(JwtSvid::parse_and_validate(&token, &jwt_set(&served), &["other"]).is_err());

    // HEAD: the same headers, no body.
    let head = fetch(s.discovery, &ca, "HEAD", "/keys").await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), jwks.body.len().to_string());
    assert!(head.body.is_empty());
    // Only GET and HEAD, only the three paths.
    let post = fetch(s.discovery, &ca, "POST", "/keys").await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), "GET, HEAD");
    let missing = fetch(s.discovery, &ca, "GET", "/.well-known/other").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("cache-control"), "no-store");
}

#[tokio::test]
async fn the_bundle_endpoint_follows_a_bundle_reload_without_restart() {
    let mut s = start(|t| t).await;
    let ca = s.path("discovery-ca.pem");
    let before = fetch(s.discovery, &ca, "GET", "/").await.json();
    let jwks_before = fetch(s.discovery, &ca, "GET", "/keys").await.json();
    assert_eq!(x509_roots(&before).len(), 1);

    // A second root for the trust domain (a CA rotation under way).
    let next = taskmint::devca::DevRoot::new(TD).unwrap();
    let mut pem = std::fs::read_to_string(s.path("bundle.pem")).unwrap();
    pem.push_str(next.cert_pem());
    std::fs::write(s.path("bundle.pem"), pem).unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let doc = fetch(s.discovery, &ca, "GET", "/").await.json();
        if x509_roots(&doc).len() == 2 {
            break doc;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reload seen: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let next_der = taskmint::pem::certs(next.cert_pem().as_bytes()).unwrap();
    assert!(x509_roots(&after).contains(&next_der[0].to_vec()));
    assert!(
        after["spiffe_sequence"].as_u64().unwrap() > before["spiffe_sequence"].as_u64().unwrap()
    );
    // The JWT keys did not change, so neither did the JWKS.
    assert_eq!(
        fetch(s.discovery, &ca, "GET", "/keys").await.json(),
        jwks_before
    );
    s.stop().await;
}

#[tokio::test]
async fn discovery_closes_silent_connections_and_those_over_its_cap() {
    let mut s = start(|t| {
        t.replace("max_connections = 256", "max_connections = 1")
            .replace(
                "handshake_timeout = \"10s\"\nrequest_timeout",
                "handshake_timeout = \"1s\"\nrequest_timeout",
            )
    })
    .await;
    // A connection that never says anything holds the only slot...
    let mut silent = tokio::net::TcpStream::connect(s.discovery).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...so the next one is closed as soon as it is accepted.
    let mut over = tokio::net::TcpStream::connect(s.discovery).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_millis(900), over.read(&mut buf))
        .await
        .expect("closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // The silent one goes after the handshake timeout, freeing the slot.
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("closed after the handshake timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() < Duration::from_secs(3));
    let ok = fetch(s.discovery, &s.path("discovery-ca.pem"), "GET", "/keys").await;
    assert_eq!(ok.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn a_replaced_discovery_certificate_is_served_without_restart() {
    let mut s = start(|t| t).await;
    let old_ca = s.path("discovery-ca.pem");
    assert_eq!(
        fetch(s.discovery, &old_ca, "GET", "/keys").await.status,
        200
    );
    // A new certificate from another issuer (here self-signed), key first
    // so the pair on disk is mismatched for a moment, as in a real rotation.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    p.subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = p.self_signed(&key).unwrap();
    std::fs::write(s.path("discovery.key"), key.serialize_pem()).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Mismatched: the old certificate is still served.
    assert_eq!(
        fetch(s.discovery, &old_ca, "GET", "/keys").await.status,
        200
    );
    std::fs::write(s.path("discovery.pem"), cert.pem()).unwrap();
    let new_ca = s.path("new-ca.pem");
    std::fs::write(&new_ca, cert.pem()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while try_fetch(s.discovery, &new_ca, "GET", "/keys")
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new certificate not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        try_fetch(s.discovery, &old_ca, "GET", "/keys")
            .await
            .is_err()
    );
    s.stop().await;
}

/// The Python interop check: PyJWT's `PyJWKClient`, pointed at the
/// `jwks_uri` the discovery document names, verifies a minted JWT-SVID.
/// Runs with `TASKMINT_PYTHON` (or `python3`) when it has PyJWT with
/// cryptography; says SKIPPED otherwise (`.ci/run` installs them and runs
/// the same script against `taskmint serve`).
#[tokio::test]
async fn pyjwt_verifies_a_minted_jwt_through_discovery() {
    let python = std::env::var("TASKMINT_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_pyjwt = std::process::Command::new(&python)
        .args(["-c", "import jwt, cryptography"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_pyjwt {
        eprintln!("SKIPPED: `{python}` lacks PyJWT[crypto] (set TASKMINT_PYTHON)");
        return;
    }
    let s = start(|t| t).await;
    let mut agent = s.client("agent").await;
    let token = agent.mint_jwt("py-1", "db", None).await.unwrap().token;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/discovery_pyjwt.py");
    let url = s.url();
    let ca = s.path("discovery-ca.pem");
    let run = |token: String| {
        let (python, script, url, ca) = (python.clone(), script.clone(), url.clone(), ca.clone());
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut child = std::process::Command::new(python)
                .arg(script)
                .args([url.as_str(), ca.to_str().unwrap(), "db", AGENT])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(token.as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        })
    };
    let out = run(token.clone()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("discovery_pyjwt: ok"), "{stdout}");
    assert!(stdout.contains(AGENT), "{stdout}");
    // The script can fail: a token from another key does not verify.
    let other =
        taskmint::jwt::JwtSigner::from_pkcs8(&rcgen::KeyPair::generate().unwrap().serialize_der())
            .unwrap();
    let mut p = token.split('.');
    let _ = p.next();
    let claims: taskmint::jwt::Claims =
        serde_json::from_slice(&B64URL.decode(p.next().unwrap()).unwrap()).unwrap();
    let stranger = other.sign(&claims).unwrap();
    let out = run(stranger).await.unwrap();
    assert!(
        !out.status.success(),
        "a token signed by another key verified"
    );
}
