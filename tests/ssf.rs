//! The SSF transmitter over real HTTPS: the SSF 1.0 metadata, a polled SET
//! verified with the keys at `jwks_uri` and carrying the metadata's
//! `issuer`, RFC 8936 polls (`maxEvents`, `moreAvailable`, acks, long poll,
//! bearer tokens), RFC 8935 pushes to an in-test HTTPS receiver that fails
//! before it recovers (every SET once, in order, across a restart), and
//! the receivers in the delivery evidence.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use common::pg::{self, Cluster};
use common::{TD, eventually};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use taskmint::client::{Client, ClientConfig};
use taskmint::config::Config;
use taskmint::grpc::pb::revoke_request::Target;
use taskmint::server::Server;

const POLL_TOKEN: &str = "idp-poll-token-0123456789";
const OTHER_POLL_TOKEN: &str = "crm-poll-token-9876543210";
const PUSH_TOKEN: &str = "siem-push-token-0123456789";
const CREDENTIAL_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/credential-change";

/// An issuer with [discovery] and [ssf], restartable on the same files and
/// addresses.
struct Issuer {
    /// Shared by the replicas of one config.
    dir: Arc<tempfile::TempDir>,
    grpc: SocketAddr,
    discovery: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Issuer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Issuer {
    /// A dev trust domain with discovery; `ssf` is appended to the config
    /// (`{url}` in it is the discovery URL), and `edit` changes the rest.
    async fn start(ssf: &str, edit: impl FnOnce(String) -> String) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let workloads: Vec<String> = ["agent", "admin", "sidecar"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        taskmint::devca::init(dir.path(), TD, &workloads, "127.0.0.1:0", false).unwrap();
        let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let discovery = probe.local_addr().unwrap();
        drop(probe);
        let url = taskmint::devca::add_discovery(dir.path(), &discovery.to_string()).unwrap();
        let path = dir.path().join("taskmint.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let text = edit(text) + &ssf.replace("{url}", &url);
        std::fs::write(&path, text).unwrap();
        let mut s = Self {
            dir: Arc::new(dir),
            grpc: "127.0.0.1:0".parse().unwrap(),
            discovery,
            stop: None,
            join: None,
        };
        s.run().await;
        s
    }

    async fn run(&mut self) {
        let cfg = Config::load(&self.dir.path().join("taskmint.toml")).unwrap();
        let listener = tokio::net::TcpListener::bind(self.grpc).await.unwrap();
        self.grpc = listener.local_addr().unwrap();
        let discovery = tokio::net::TcpListener::bind(self.discovery).await.unwrap();
        let server = Server::build(cfg)
            .await
            .unwrap()
            .with_discovery_listener(discovery);
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

    async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(j) = self.join.take() {
            j.await.unwrap();
        }
    }

    /// Another replica on the same config (and store), with listeners of
    /// its own.
    async fn replica(&self) -> Self {
        let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let discovery = probe.local_addr().unwrap();
        drop(probe);
        let mut r = Self {
            dir: self.dir.clone(),
            grpc: "127.0.0.1:0".parse().unwrap(),
            discovery,
            stop: None,
            join: None,
        };
        r.run().await;
        r
    }

    async fn restart(&mut self) {
        self.stop().await;
        self.run().await;
    }

    fn url(&self) -> String {
        format!("https://{}", self.discovery)
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("discovery-ca.pem")
    }

    async fn client(&self, name: &str) -> Client {
        let p = |f: String| self.dir.path().join(f);
        Client::connect(&ClientConfig {
            server: self.grpc.to_string(),
            svid: p(format!("{name}.pem")),
            svid_key: p(format!("{name}.key")),
            bundle: p("bundle.pem".into()),
            server_id: None,
        })
        .await
        .unwrap()
    }

    /// Mints `n` JWTs and revokes them one by one: `n` revocations.
    async fn revoke_n(&self, prefix: &str, n: usize) {
        let mut agent = self.client("agent").await;
        for i in 0..n {
            let id = agent
                .mint_jwt(&format!("{prefix}-{i}"), "db", None)
                .await
                .unwrap()
                .credential
                .unwrap()
                .id;
            agent
                .revoke(Target::CredentialId(id), "ssf test")
                .await
                .unwrap();
        }
    }

    async fn get(&self, path: &str) -> Answer {
        request(self.discovery, &self.ca(), "GET", path, &[], None).await
    }

    /// An RFC 8936 poll with `token`.
    async fn poll(&self, token: &str, body: serde_json::Value) -> Answer {
        let auth = format!("Bearer {token}");
        request(
            self.discovery,
            &self.ca(),
            "POST",
            "/ssf/poll",
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            Some(body.to_string().into_bytes()),
        )
        .await
    }
}

const POLL_RECEIVERS: &str = r#"
[ssf]
issuer = "{url}/ssf"

[[ssf.receivers]]
name = "idp"
delivery = "poll"
token = "idp-poll-token-0123456789"

[[ssf.receivers]]
name = "crm"
delivery = "poll"
token = "crm-poll-token-9876543210"
"#;

/// An HTTPS answer.
struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }
    /// The SETs of a poll answer, in sequence order: (jti, seq, claims, compact).
    fn sets(&self) -> Vec<(String, u64, serde_json::Value, String)> {
        assert_eq!(self.status, 200, "{}", String::from_utf8_lossy(&self.body));
        let doc = self.json();
        let mut sets: Vec<_> = doc["sets"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(jti, set)| {
                let compact = set.as_str().unwrap().to_owned();
                let claims = claims(&compact);
                assert_eq!(claims["jti"], jti.as_str(), "keyed by its jti");
                let seq = claims["taskmint"]["seq"].as_u64().unwrap();
                (jti.clone(), seq, claims, compact)
            })
            .collect();
        sets.sort_by_key(|s| s.1);
        sets
    }
    fn more(&self) -> bool {
        self.json()["moreAvailable"].as_bool().unwrap()
    }
}

fn claims(compact: &str) -> serde_json::Value {
    let payload = compact.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64URL.decode(payload).unwrap()).unwrap()
}

fn header_of(compact: &str) -> serde_json::Value {
    let h = compact.split('.').next().unwrap();
    serde_json::from_slice(&B64URL.decode(h).unwrap()).unwrap()
}

/// One request over a fresh TLS connection that trusts only `ca`.
async fn request(
    addr: SocketAddr,
    ca: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Answer {
    let mut roots = rustls::RootCertStore::empty();
    for c in taskmint::pem::certs(&std::fs::read(ca).unwrap()).unwrap() {
        roots.add(c).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(taskmint::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

#[tokio::test]
async fn metadata_names_the_issuer_and_a_polled_set_verifies_with_the_jwks_uri_keys() {
    let s = Issuer::start(POLL_RECEIVERS, |t| t).await;
    let issuer = format!("{}/ssf", s.url());

    let m = s.get("/.well-known/ssf-configuration").await;
    assert_eq!(m.status, 200);
    assert_eq!(m.header("content-type"), "application/json");
    let doc = m.json();
    assert_eq!(doc["spec_version"], "1_0");
    assert_eq!(doc["issuer"], issuer.as_str());
    assert_eq!(doc["jwks_uri"], format!("{}/keys", s.url()).as_str());
    assert_eq!(
        doc["delivery_methods_supported"],
        serde_json::json!(["urn:ietf:rfc:8935", "urn:ietf:rfc:8936"])
    );
    assert_eq!(
        doc["authorization_schemes"],
        serde_json::json!([{ "spec_urn": "urn:ietf:rfc:6750" }])
    );
    assert_eq!(doc["default_subjects"], "ALL");
    assert_eq!(
        doc["taskmint_poll_endpoint"],
        format!("{}/ssf/poll", s.url()).as_str()
    );
    // The issuer has a path: the metadata is also where SSF puts it for one.
    let suffixed = s.get("/.well-known/ssf-configuration/ssf").await;
    assert_eq!(suffixed.status, 200);
    assert_eq!(suffixed.json(), doc);
    assert_eq!(
        s.get("/.well-known/ssf-configuration/other").await.status,
        404
    );

    s.revoke_n("meta", 1).await;
    let polled = s
        .poll(POLL_TOKEN, serde_json::json!({ "returnImmediately": true }))
        .await;
    assert_eq!(polled.header("content-type"), "application/json");
    let sets = polled.sets();
    assert_eq!(sets.len(), 1);
    assert!(!polled.more());
    let (jti, seq, _, compact) = &sets[0];
    assert_eq!(*seq, 1);

    // Verified with the key at jwks_uri, as a receiver would.
    let jwks_path = doc["jwks_uri"]
        .as_str()
        .unwrap()
        .strip_prefix(&s.url())
        .unwrap()
        .to_owned();
    let jwks = s.get(&jwks_path).await;
    let keys: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&jwks.body).unwrap();
    let header = header_of(compact);
    assert_eq!(header["typ"], "secevent+jwt");
    let jwk = keys.find(header["kid"].as_str().unwrap()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    // A SET has no exp or aud (RFC 8417).
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_aud = false;
    v.set_issuer(&[doc["issuer"].as_str().unwrap()]);
    let verified = jsonwebtoken::decode::<serde_json::Value>(compact, &key, &v).unwrap();
    assert_eq!(verified.claims["iss"], doc["issuer"]);
    assert_eq!(verified.claims["jti"], jti.as_str());
    assert_eq!(
        verified.claims["events"][CREDENTIAL_CHANGE]["change_type"],
        "revoke"
    );
    assert_eq!(
        verified.claims["sub_id"]["uri"],
        "spiffe://example.org/workload/agent"
    );
    // A changed payload does not verify.
    let mut parts: Vec<&str> = compact.split('.').collect();
    let forged =
        B64URL.encode(serde_json::to_vec(&serde_json::json!({"iss": issuer, "jti": "x"})).unwrap());
    parts[1] = &forged;
    assert!(jsonwebtoken::decode::<serde_json::Value>(&parts.join("."), &key, &v).is_err());
}

#[tokio::test]
async fn polls_page_with_max_events_and_acks_move_the_cursor() {
    let s = Issuer::start(POLL_RECEIVERS, |t| t).await;
    s.revoke_n("page", 5).await;
    let short = |max: u64, ack: Vec<String>| serde_json::json!({ "maxEvents": max, "returnImmediately": true, "ack": ack });

    let first = s.poll(POLL_TOKEN, short(2, vec![])).await;
    let got = first.sets();
    assert_eq!(got.iter().map(|s| s.1).collect::<Vec<_>>(), [1, 2]);
    assert!(first.more());
    // Not acknowledged: sent again.
    let again = s.poll(POLL_TOKEN, short(2, vec![])).await.sets();
    assert_eq!(
        again.iter().map(|s| &s.0).collect::<Vec<_>>(),
        got.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    // Acknowledged: the next two.
    let acked: Vec<String> = got.iter().map(|s| s.0.clone()).collect();
    let next = s.poll(POLL_TOKEN, short(2, acked)).await;
    let second = next.sets();
    assert_eq!(second.iter().map(|s| s.1).collect::<Vec<_>>(), [3, 4]);
    assert!(next.more());
    // Seq 4 acknowledged past the gap at 3: 3 is sent again, 4 is not.
    let gap = s
        .poll(POLL_TOKEN, short(10, vec![second[1].0.clone()]))
        .await;
    assert_eq!(gap.sets().iter().map(|s| s.1).collect::<Vec<_>>(), [3, 5]);
    assert!(!gap.more());
    let mut admin = s.client("admin").await;
    let idp = |d: &taskmint::grpc::pb::GetDeliveryStatusResponse| {
        d.subscribers
            .iter()
            .find(|r| r.name == "idp")
            .cloned()
            .unwrap()
    };
    assert_eq!(idp(&admin.delivery_status().await.unwrap()).acked_seq, 2);
    // setErrs count as delivered: 3 refused, 5 acknowledged.
    let rest = gap.sets();
    let done = s
        .poll(
            POLL_TOKEN,
            serde_json::json!({
                "returnImmediately": true,
                "ack": [rest[1].0],
                "setErrs": { rest[0].0.clone(): { "err": "invalid_key", "description": "test" } },
            }),
        )
        .await;
    assert!(done.sets().is_empty());
    assert!(!done.more());
    let status = admin.delivery_status().await.unwrap();
    let r = idp(&status);
    assert_eq!((r.acked_seq, r.ssf_delivery.as_str()), (5, "poll"));
    assert!(r.spiffe_id.is_empty());
    // Each receiver has its own cursor: the other one still has all five.
    let crm = s.poll(OTHER_POLL_TOKEN, short(10, vec![])).await.sets();
    assert_eq!(crm.len(), 5);
    // maxEvents 0 only acknowledges.
    let only_ack = s
        .poll(
            OTHER_POLL_TOKEN,
            serde_json::json!({ "maxEvents": 0, "ack": [crm[0].0] }),
        )
        .await;
    assert!(only_ack.sets().is_empty());
    let status = admin.delivery_status().await.unwrap();
    let c = status.subscribers.iter().find(|r| r.name == "crm").unwrap();
    assert_eq!(c.acked_seq, 1);
}

#[tokio::test]
async fn a_long_poll_returns_when_a_revocation_commits() {
    let s = Arc::new(Issuer::start(POLL_RECEIVERS, |t| t).await);
    let started = Instant::now();
    let waiting = {
        let s = s.clone();
        tokio::spawn(async move { s.poll(POLL_TOKEN, serde_json::json!({})).await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !waiting.is_finished(),
        "nothing to send yet: the poll waits"
    );
    s.revoke_n("long", 1).await;
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the commit ends the long poll")
        .unwrap();
    let sets = answer.sets();
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0].1, 1);
    assert!(started.elapsed() < Duration::from_secs(20));
    // A short poll with nothing due answers at once, empty.
    let started = Instant::now();
    let empty = s
        .poll(
            POLL_TOKEN,
            serde_json::json!({ "returnImmediately": true, "ack": [sets[0].0] }),
        )
        .await;
    assert!(empty.sets().is_empty());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_missing_or_wrong_token_gets_401_without_naming_receivers() {
    let s = Issuer::start(POLL_RECEIVERS, |t| t).await;
    s.revoke_n("auth", 1).await;
    let body = Some(br#"{"returnImmediately": true}"#.to_vec());
    let ask = |headers: Vec<(&'static str, String)>| {
        let (addr, ca, body) = (s.discovery, s.ca(), body.clone());
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            request(addr, &ca, "POST", "/ssf/poll", &h, body).await
        }
    };
    let missing = ask(vec![]).await;
    let wrong = ask(vec![(
        "authorization",
        "Bearer idp-poll-token-0123456780".into(),
    )])
    .await;
    let basic = ask(vec![("authorization", format!("Basic {POLL_TOKEN}"))]).await;
    for a in [&missing, &wrong, &basic] {
        assert_eq!(a.status, 401);
        assert!(a.header("www-authenticate").starts_with("Bearer"));
        assert_eq!(
            a.body, missing.body,
            "the same answer whatever was presented"
        );
        let text = String::from_utf8_lossy(&a.body);
        assert!(!text.contains("idp") && !text.contains("crm"), "{text}");
    }
    assert!(wrong.header("www-authenticate").contains("invalid_token"));
    // The push token of nobody, a GET: refused too.
    let get = request(s.discovery, &s.ca(), "GET", "/ssf/poll", &[], None).await;
    assert_eq!(get.status, 405);
    // The right token, a bad body: a clear 400.
    let bad = request(
        s.discovery,
        &s.ca(),
        "POST",
        "/ssf/poll",
        &[("authorization", &format!("Bearer {POLL_TOKEN}"))],
        Some(b"{\"maxEvents\": \"many\"}".to_vec()),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["err"], "invalid_request");
    // A body over the cap is refused, not read.
    let huge = request(
        s.discovery,
        &s.ca(),
        "POST",
        "/ssf/poll",
        &[("authorization", &format!("Bearer {POLL_TOKEN}"))],
        Some(vec![b' '; 300 * 1024]),
    )
    .await;
    assert_eq!(huge.status, 413);
}

#[tokio::test]
async fn receivers_show_in_the_delivery_evidence_and_go_overdue() {
    let s = Issuer::start(POLL_RECEIVERS, |t| {
        t.replace("ack_deadline = \"30s\"", "ack_deadline = \"1s\"")
    })
    .await;
    let mut admin = s.client("admin").await;
    let status = admin.delivery_status().await.unwrap();
    let names: Vec<_> = status.subscribers.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["sidecar", "idp", "crm"]);
    s.revoke_n("late", 1).await;
    let overdue = eventually(Duration::from_secs(10), || {
        let mut admin = admin.clone();
        async move {
            let d = admin.delivery_status().await.unwrap();
            d.subscribers
                .iter()
                .find(|r| r.name == "idp")
                .is_some_and(|r| r.overdue && r.oldest_unacked_seq == 1 && r.acked_seq == 0)
        }
    })
    .await;
    assert!(overdue, "an unacknowledged SET past feed.ack_deadline");
    let sets = s
        .poll(POLL_TOKEN, serde_json::json!({ "returnImmediately": true }))
        .await
        .sets();
    s.poll(
        POLL_TOKEN,
        serde_json::json!({ "maxEvents": 0, "ack": [sets[0].0] }),
    )
    .await;
    let d = admin.delivery_status().await.unwrap();
    let idp = d.subscribers.iter().find(|r| r.name == "idp").unwrap();
    assert!(!idp.overdue && idp.acked_seq == 1 && idp.acked_at > 0);
    let crm = d.subscribers.iter().find(|r| r.name == "crm").unwrap();
    assert!(crm.overdue, "the other receiver still has not acknowledged");
    // A workload cannot acknowledge under a receiver's name over gRPC.
    let mut sidecar = s.client("sidecar").await;
    let refused = sidecar.ack("crm", 1).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused.message().contains("SSF receiver"),
        "{}",
        refused.message()
    );
}

/// What the in-test push receiver saw.
#[derive(Default)]
struct Seen {
    /// Answer 503 to this many more requests.
    fail: usize,
    /// Refuse this many more SETs with an RFC 8935 error (400).
    reject: usize,
    requests: usize,
    /// SETs accepted, in arrival order.
    sets: Vec<String>,
    authorization: Vec<String>,
    content_type: Vec<String>,
}

/// An HTTPS SSF push receiver with its own CA.
struct PushReceiver {
    addr: SocketAddr,
    ca: PathBuf,
    seen: Arc<Mutex<Seen>>,
    _dir: tempfile::TempDir,
}

impl PushReceiver {
    async fn start(fail: usize) -> Self {
        Self::start_with(fail, 0, None).await
    }

    /// `fail` requests get 503, then `reject` SETs get an RFC 8935 400;
    /// with `client_ca`, a client certificate it signed is required.
    async fn start_with(
        fail: usize,
        reject: usize,
        client_ca: Option<rustls::pki_types::CertificateDer<'static>>,
    ) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name
            .push(DnType::CommonName, "test receiver CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = p.self_signed(&ca_key).unwrap();
        let ca = rcgen::Issuer::new(p, ca_key);
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "receiver");
        p.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca).unwrap();
        let ca_path = dir.path().join("receiver-ca.pem");
        std::fs::write(&ca_path, ca_cert.pem()).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(taskmint::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca).unwrap();
                builder.with_client_cert_verifier(
                    rustls::server::WebPkiClientVerifier::builder_with_provider(
                        Arc::new(roots),
                        taskmint::tls::provider(),
                    )
                    .build()
                    .unwrap(),
                )
            }
            None => builder.with_no_client_auth(),
        };
        let mut tls = builder
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen {
            fail,
            reject,
            ..Default::default()
        }));
        let state = seen.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, state) = (acceptor.clone(), state.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<Incoming>| {
                            let state = state.clone();
                            async move {
                                let header = |n: &str| {
                                    req.headers()
                                        .get(n)
                                        .map(|v| v.to_str().unwrap().to_owned())
                                        .unwrap_or_default()
                                };
                                let (auth, ctype) =
                                    (header("authorization"), header("content-type"));
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let (status, answer) = {
                                    let mut s = state.lock().unwrap();
                                    s.requests += 1;
                                    if s.fail > 0 {
                                        s.fail -= 1;
                                        (503, String::new())
                                    } else if s.reject > 0 {
                                        s.reject -= 1;
                                        let e = r#"{"err": "invalid_audience", "description": "not for us"}"#;
                                        (400, e.to_owned())
                                    } else {
                                        s.sets.push(String::from_utf8(body.to_vec()).unwrap());
                                        s.authorization.push(auth);
                                        s.content_type.push(ctype);
                                        (202, String::new())
                                    }
                                };
                                Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from(answer)))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            ca: ca_path,
            seen,
            _dir: dir,
        }
    }

    fn seqs(&self) -> Vec<u64> {
        self.seen
            .lock()
            .unwrap()
            .sets
            .iter()
            .map(|s| claims(s)["taskmint"]["seq"].as_u64().unwrap())
            .collect()
    }
}

#[tokio::test]
async fn a_push_receiver_that_fails_then_recovers_gets_every_set_once_in_order() {
    let receiver = PushReceiver::start(3).await;
    let ssf = format!(
        r#"
[ssf]
issuer = "{{url}}"

[[ssf.receivers]]
name = "siem"
delivery = "push"
url = "https://{}/events"
token = "{PUSH_TOKEN}"
ca = "{}"
"#,
        receiver.addr,
        receiver.ca.display()
    );
    let mut s = Issuer::start(&ssf, |t| t).await;
    s.revoke_n("push", 3).await;
    let all = eventually(Duration::from_secs(20), || async {
        receiver.seqs().len() >= 3
    })
    .await;
    assert!(all, "delivered after the failures: {:?}", receiver.seqs());
    assert_eq!(receiver.seqs(), [1, 2, 3], "every SET once, in order");
    {
        let seen = receiver.seen.lock().unwrap();
        assert_eq!(seen.requests, 6, "3 refused with 503, then 3 accepted");
        assert!(
            seen.authorization
                .iter()
                .all(|a| *a == format!("Bearer {PUSH_TOKEN}"))
        );
        assert!(
            seen.content_type
                .iter()
                .all(|c| c == "application/secevent+jwt")
        );
        let jtis: std::collections::HashSet<_> =
            seen.sets.iter().map(|s| claims(s)["jti"].clone()).collect();
        assert_eq!(jtis.len(), 3);
        let iss = s.url();
        assert!(
            seen.sets
                .iter()
                .all(|set| claims(set)["iss"] == iss.as_str())
        );
    }
    let admin = s.client("admin").await;
    let acked = eventually(Duration::from_secs(5), || {
        let mut admin = admin.clone();
        async move {
            let d = admin.delivery_status().await.unwrap();
            d.subscribers
                .iter()
                .any(|r| r.name == "siem" && r.acked_seq == 3 && r.ssf_delivery == "push")
        }
    })
    .await;
    assert!(acked, "the receiver's cursor is durable at 3");

    // Restarted, the issuer resumes after the cursor: nothing is sent again.
    s.restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.seqs(), [1, 2, 3]);
    s.revoke_n("after", 1).await;
    let fourth = eventually(Duration::from_secs(15), || async {
        receiver.seqs().len() >= 4
    })
    .await;
    assert!(fourth, "{:?}", receiver.seqs());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.seqs(), [1, 2, 3, 4]);
    assert_eq!(receiver.seen.lock().unwrap().requests, 7);
    drop(admin);
    s.stop().await;
}

/// A client certificate and its CA, written as PEM into `dir`.
fn client_identity(dir: &Path) -> (rustls::pki_types::CertificateDer<'static>, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, "test client CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = p.self_signed(&ca_key).unwrap();
    let ca = rcgen::Issuer::new(p, ca_key);
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "taskmint");
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca).unwrap();
    let (cert_path, key_path) = (dir.join("client.pem"), dir.join("client.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (ca_cert.der().clone(), cert_path, key_path)
}

#[tokio::test]
async fn a_push_with_a_client_certificate_and_a_refused_set_moves_on() {
    let keys = tempfile::tempdir().unwrap();
    let (client_ca, cert, key) = client_identity(keys.path());
    let receiver = PushReceiver::start_with(0, 1, Some(client_ca)).await;
    // mTLS alone: no token.
    let ssf = format!(
        r#"
[ssf]
issuer = "{{url}}"

[[ssf.receivers]]
name = "siem"
delivery = "push"
url = "https://{}/events"
ca = "{}"
client_cert = "{}"
client_key = "{}"
"#,
        receiver.addr,
        receiver.ca.display(),
        cert.display(),
        key.display()
    );
    let s = Issuer::start(&ssf, |t| t).await;
    s.revoke_n("mtls", 2).await;
    let delivered = eventually(Duration::from_secs(15), || async {
        !receiver.seqs().is_empty()
    })
    .await;
    assert!(delivered);
    // The first was refused (400, RFC 8935 error) and counted as delivered:
    // the second came next, and the cursor is past both.
    assert_eq!(receiver.seqs(), [2]);
    let mut admin = s.client("admin").await;
    let acked = eventually(Duration::from_secs(5), || {
        let mut admin = admin.clone();
        async move {
            let d = admin.delivery_status().await.unwrap();
            d.subscribers
                .iter()
                .any(|r| r.name == "siem" && r.acked_seq == 2)
        }
    })
    .await;
    assert!(acked);
    let d = admin.delivery_status().await.unwrap();
    assert!(d.subscribers.iter().all(|r| r.name != "siem" || !r.overdue));
    let seen = receiver.seen.lock().unwrap();
    assert_eq!(seen.requests, 2);
    assert_eq!(seen.authorization, [""], "no token configured, none sent");
}

#[tokio::test]
async fn a_push_receiver_without_the_client_certificate_it_requires_gets_nothing() {
    let keys = tempfile::tempdir().unwrap();
    let (client_ca, _, _) = client_identity(keys.path());
    let receiver = PushReceiver::start_with(0, 0, Some(client_ca)).await;
    let ssf = format!(
        r#"
[ssf]
issuer = "{{url}}"

[[ssf.receivers]]
name = "siem"
delivery = "push"
url = "https://{}/events"
token = "{PUSH_TOKEN}"
ca = "{}"
"#,
        receiver.addr,
        receiver.ca.display()
    );
    let s = Issuer::start(&ssf, |t| t).await;
    s.revoke_n("nocert", 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(receiver.seqs().is_empty());
    assert_eq!(
        receiver.seen.lock().unwrap().requests,
        0,
        "the handshake fails"
    );
    let mut admin = s.client("admin").await;
    let d = admin.delivery_status().await.unwrap();
    let siem = d.subscribers.iter().find(|r| r.name == "siem").unwrap();
    assert_eq!(
        (siem.acked_seq, siem.oldest_unacked_seq),
        (0, 1),
        "not skipped"
    );
}

#[tokio::test]
async fn two_replicas_on_postgresql_share_each_receivers_cursor_and_push_each_set_once() {
    let (_cluster, server) = match pg::server_from_env() {
        Some(url) => (None, url),
        None => match tokio::task::spawn_blocking(Cluster::start).await.unwrap() {
            Some(c) => {
                let url = c.url();
                (Some(c), url)
            }
            None => return pg::skip(),
        },
    };
    let url = pg::fresh_database(&server).await;
    let receiver = PushReceiver::start(2).await;
    let ssf = format!(
        r#"
[ssf]
issuer = "{{url}}"

[[ssf.receivers]]
name = "idp"
delivery = "poll"
token = "{POLL_TOKEN}"

[[ssf.receivers]]
name = "siem"
delivery = "push"
url = "https://{}/events"
token = "{PUSH_TOKEN}"
ca = "{}"
"#,
        receiver.addr,
        receiver.ca.display()
    );
    let mut a = Issuer::start(&ssf, |t| {
        t.replace(
            taskmint::devca::SQLITE_STORE_LINE,
            &format!("url = \"{url}\""),
        )
        .replace("reaper_interval = \"1s\"", "reaper_interval = \"200ms\"")
    })
    .await;
    let b = a.replica().await;
    a.revoke_n("ha", 4).await;

    // Polled from B, acknowledged through A: one cursor.
    let first = b
        .poll(
            POLL_TOKEN,
            serde_json::json!({ "maxEvents": 2, "returnImmediately": true }),
        )
        .await
        .sets();
    assert_eq!(first.iter().map(|s| s.1).collect::<Vec<_>>(), [1, 2]);
    let acks: Vec<_> = first.iter().map(|s| s.0.clone()).collect();
    let next = a
        .poll(
            POLL_TOKEN,
            serde_json::json!({ "maxEvents": 2, "returnImmediately": true, "ack": acks }),
        )
        .await
        .sets();
    assert_eq!(next.iter().map(|s| s.1).collect::<Vec<_>>(), [3, 4]);

    // Only the leader pushes: every SET once, in order, through the 503s.
    let all = eventually(Duration::from_secs(20), || async {
        receiver.seqs().len() >= 4
    })
    .await;
    assert!(all, "{:?}", receiver.seqs());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(receiver.seqs(), [1, 2, 3, 4]);
    assert_eq!(receiver.seen.lock().unwrap().requests, 6);

    // Whichever led, with A gone B pushes what comes next, once.
    a.stop().await;
    b.revoke_n("after-a", 1).await;
    let fifth = eventually(Duration::from_secs(20), || async {
        receiver.seqs().len() >= 5
    })
    .await;
    assert!(fifth, "{:?}", receiver.seqs());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(receiver.seqs(), [1, 2, 3, 4, 5]);
}
