//! `taskmint enforce`: a real issuer, a real enforcer following its feed,
//! and Envoy-shaped `CheckRequest`s sent over gRPC to the enforcer's
//! ext_authz listener, built as Envoy's ext_authz filter builds them
//! (`check_request_utils.cc`): headers lower-cased in
//! `attributes.request.http.headers`, the downstream peer's certificate as
//! URL-encoded PEM in `attributes.source.certificate`
//! (`include_peer_certificate: true`), its URI SAN in `source.principal`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use taskmint::enforce::{EnforceConfig, Enforcer};
use taskmint::grpc::pb::revoke_request::Target;
use taskmint::jwt::{Claims, Confirmation, JwtSigner};
use tonic::transport::Channel;

const AGENT: &str = "spiffe://example.org/workload/agent";

/// A running enforcer: its handle, its ext_authz client, its shutdown.
struct TestEnforcer {
    enforcer: Enforcer,
    authz: AuthorizationClient<Channel>,
    health: tonic_health::pb::health_client::HealthClient<Channel>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: Option<tokio::task::JoinHandle<()>>,
}

impl TestEnforcer {
    async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(j) = self.join.take() {
            j.await.unwrap();
        }
    }
}

/// An issuer whose feed sends a heartbeat every 300 ms.
async fn start_heartbeating() -> TestServer {
    start_with(|t| {
        t.replace(
            "heartbeat_interval = \"10s\"",
            "heartbeat_interval = \"300ms\"",
        )
    })
    .await
}

fn enforce_config(s: &TestServer, state: &std::path::Path, extra: &str) -> EnforceConfig {
    let text = format!(
        r#"
        issuers = ["{addr}"]
        svid = "sidecar.pem"
        svid_key = "sidecar.key"
        bundle = "bundle.pem"
        subscriber = "sidecar"
        listen = "127.0.0.1:0"
        audiences = ["db", "db-replica"]
        state_dir = "{state}"
        {extra}
        "#,
        addr = s.addr,
        state = state.display(),
    );
    EnforceConfig::from_toml(&text, s.dir.path()).unwrap()
}

/// Starts `taskmint enforce` (the same entry point as the command) and waits
/// until it has caught up with the feed.
async fn enforcer(cfg: &EnforceConfig) -> TestEnforcer {
    let e = enforcer_unsynced(cfg).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            e.enforcer.freshness() == taskmint::enforce::Freshness::Fresh
        })
        .await,
        "the enforcer never caught up with the feed"
    );
    e
}

async fn enforcer_unsynced(cfg: &EnforceConfig) -> TestEnforcer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    // The test drives the enforcer through its library handle as well as
    // over gRPC: start one, and serve the ext_authz service on it.
    let (enforcer, follower) = Enforcer::start(cfg).unwrap();
    let served = enforcer.clone();
    let strip = cfg.strip_bearer;
    let join = tokio::spawn(async move {
        taskmint::enforce::authz::serve_enforcer(served, strip, listener, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
        // Gone before `stop` returns: its state directory is free again.
        follower.abort();
        let _ = follower.await;
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    TestEnforcer {
        enforcer,
        authz: AuthorizationClient::new(channel.clone()),
        health: tonic_health::pb::health_client::HealthClient::new(channel),
        stop: Some(tx),
        join: Some(join),
    }
}

/// A `CheckRequest` as Envoy sends it for `GET /rows` on `db.internal`.
fn check_request(authorization: Option<&str>, peer_pem: Option<&str>) -> CheckRequest {
    let mut headers: HashMap<String, String> = [
        (":authority", "db.internal"),
        (":method", "GET"),
        (":path", "/rows?limit=10"),
        (":scheme", "https"),
        ("user-agent", "curl/8.5.0"),
        ("x-request-id", "6f1c2a47-5c9b-4a1e-9d0e-2f4b8f0d1c3a"),
        ("x-forwarded-proto", "https"),
        // A client trying to pass as another workload: overwritten.
        (
            "x-taskmint-spiffe-id",
            "spiffe://example.org/workload/admin",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    if let Some(a) = authorization {
        headers.insert("authorization".into(), a.into());
    }
    let socket = |ip: &str, port: u32| Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(socket("10.0.0.7", 43512)),
                principal: peer_pem.map(|_| AGENT.to_owned()).unwrap_or_default(),
                certificate: peer_pem
                    .map(|p| {
                        percent_encoding::utf8_percent_encode(p, percent_encoding::NON_ALPHANUMERIC)
                            .to_string()
                    })
                    .unwrap_or_default(),
                ..Default::default()
            }),
            destination: Some(Peer {
                address: Some(socket("10.0.0.9", 8443)),
                principal: "spiffe://example.org/workload/db".into(),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    id: "11734471532338516412".into(),
                    method: "GET".into(),
                    headers,
                    path: "/rows?limit=10".into(),
                    host: "db.internal".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/2".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// The decision: HTTP status (200 for OK), and the headers it sets.
async fn check(
    e: &mut TestEnforcer,
    authorization: Option<&str>,
    peer_pem: Option<&str>,
) -> (i32, HashMap<String, String>, Vec<String>) {
    let r = e
        .authz
        .check(check_request(authorization, peer_pem))
        .await
        .unwrap()
        .into_inner();
    let code = r.status.as_ref().map(|s| s.code).unwrap_or(-1);
    match r.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            assert_eq!(code, 0);
            let h = ok
                .headers
                .iter()
                .map(|h| {
                    let v = h.header.as_ref().unwrap();
                    (v.key.clone(), v.value.clone())
                })
                .collect();
            (200, h, ok.headers_to_remove)
        }
        Some(HttpResponse::DeniedResponse(d)) => {
            let http = d.status.unwrap().code;
            let grpc = match http {
                401 => 16,
                403 => 7,
                503 => 14,
                other => panic!("unexpected status {other}"),
            };
            assert_eq!(code, grpc, "gRPC status matches HTTP {http}");
            let h: HashMap<_, _> = d
                .headers
                .iter()
                .map(|h| {
                    let v = h.header.as_ref().unwrap();
                    (v.key.clone(), v.value.clone())
                })
                .collect();
            assert_eq!(d.body.trim(), h["x-taskmint-deny-reason"]);
            (http, h, vec![])
        }
        other => panic!("no http response: {other:?}"),
    }
}

fn reason(h: &HashMap<String, String>) -> &str {
    h.get("x-taskmint-deny-reason")
        .map(String::as_str)
        .unwrap_or("")
}

fn pem(s: &TestServer, name: &str) -> String {
    std::fs::read_to_string(s.path(&format!("{name}.pem"))).unwrap()
}

/// A token signed with the issuer's own JWT key, with `edit` applied.
fn forged(s: &TestServer, edit: impl FnOnce(&mut Claims)) -> String {
    let signer = JwtSigner::load(&s.path("jwt.key")).unwrap();
    let agent_der = taskmint::pem::certs(pem(s, "agent").as_bytes()).unwrap();
    let now = now();
    let mut c = Claims {
        sub: AGENT.into(),
        aud: "db".into(),
        iat: now,
        nbf: now,
        exp: now + 300,
        jti: "ab".repeat(16),
        iss: "spiffe://example.org/taskmint".into(),
        task_id: "forged".into(),
        task_holder: AGENT.into(),
        owner: String::new(),
        break_glass: false,
        act: None,
        cnf: Confirmation {
            x5t_s256: taskmint::enforce::verify::thumbprint(&agent_der[0]),
        },
    };
    edit(&mut c);
    signer.sign(&c).unwrap()
}

/// A token with exactly the claims `claims`, signed with the issuer's key
/// under its `kid` (for claim sets `Claims` cannot express).
fn forged_json(s: &TestServer, claims: serde_json::Value) -> String {
    let signer = JwtSigner::load(&s.path("jwt.key")).unwrap();
    let key =
        jsonwebtoken::EncodingKey::from_ec_pem(&std::fs::read(s.path("jwt.key")).unwrap()).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(signer.kid().to_owned());
    header.typ = Some("JWT".into());
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// A valid claim set without `cnf`.
fn unbound_claims() -> serde_json::Value {
    serde_json::json!({
        "sub": AGENT, "aud": "db", "iss": "spiffe://example.org/taskmint",
        "iat": now(), "nbf": now(), "exp": now() + 300,
        "jti": "ef".repeat(16), "task_id": "t-1", "task_holder": AGENT,
    })
}

fn csr() -> (Vec<u8>, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let der = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();
    (der, key)
}

fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

#[tokio::test]
async fn bearer_tokens_are_checked_as_the_issue_lists() {
    let s = start().await;
    let state = tempfile::tempdir().unwrap();
    let mut e = enforcer(&enforce_config(&s, state.path(), "strip_bearer = true")).await;
    let mut agent = s.client("agent").await;
    let minted = agent.mint_jwt("enforce-1", "db", None).await.unwrap();
    let bearer = format!("Bearer {}", minted.token);
    let agent_pem = pem(&s, "agent");

    // Allowed: who, which task, the token stripped, client headers overwritten.
    let (code, h, removed) = check(&mut e, Some(&bearer), Some(&agent_pem)).await;
    assert_eq!(code, 200, "{h:?}");
    assert_eq!(h["x-taskmint-spiffe-id"], AGENT);
    assert_eq!(h["x-taskmint-task"], "enforce-1");
    assert_eq!(h["x-taskmint-holder"], AGENT);
    assert!(removed.contains(&"authorization".to_owned()));
    // The dev agent's task has an owner from the dev ownership rules, or
    // none; either way the header is set or removed, never passed through.
    assert!(h.contains_key("x-taskmint-owner") || removed.contains(&"x-taskmint-owner".into()));

    // Expired, beyond the 5 s leeway.
    let t = forged(&s, |c| {
        c.exp = now() - 60;
        c.nbf = now() - 120;
        c.iat = now() - 120;
    });
    let (code, h, _) = check(&mut e, Some(&format!("Bearer {t}")), Some(&agent_pem)).await;
    assert_eq!((code, reason(&h)), (401, "token expired"));
    assert_eq!(h["www-authenticate"], r#"Bearer error="invalid_token""#);
    // Within the leeway: allowed.
    let t = forged(&s, |c| c.exp = now() - 2);
    let (code, h, _) = check(&mut e, Some(&format!("Bearer {t}")), Some(&agent_pem)).await;
    assert_eq!(code, 200, "{h:?}");
    // Not yet valid.
    let t = forged(&s, |c| c.nbf = now() + 120);
    let (code, h, _) = check(&mut e, Some(&format!("Bearer {t}")), Some(&agent_pem)).await;
    assert_eq!((code, reason(&h)), (401, "token not yet valid (nbf)"));

    // Wrong audience: a valid token for another service.
    let t = forged(&s, |c| c.aud = "payments".into());
    let (code, h, _) = check(&mut e, Some(&format!("Bearer {t}")), Some(&agent_pem)).await;
    assert_eq!(
        (code, reason(&h)),
        (403, "token audience is not accepted here")
    );
    // The second configured audience is accepted.
    let t = forged(&s, |c| c.aud = "db-replica".into());
    let (code, _, _) = check(&mut e, Some(&format!("Bearer {t}")), Some(&agent_pem)).await;
    assert_eq!(code, 200);

    // Wrong issuer.
    let t = forged(&s, |c| c.iss = "spiffe://example.org/not-taskmint".into());
    let (code, h, _) = check(&mut e, Some(&format!("Bearer {t}")), Some(&agent_pem)).await;
    assert_eq!((code, reason(&h)), (401, "token issuer is not this issuer"));

    // Bad signature: the payload of one token under another's signature.
    let other = forged(&s, |c| c.task_id = "other".into());
    let mut parts: Vec<&str> = minted.token.split('.').collect();
    let other_parts: Vec<&str> = other.split('.').collect();
    parts[1] = other_parts[1];
    let (code, h, _) = check(
        &mut e,
        Some(&format!("Bearer {}", parts.join("."))),
        Some(&agent_pem),
    )
    .await;
    assert_eq!((code, reason(&h)), (401, "token signature does not verify"));

    // Unknown kid: signed with a key the issuer's bundle does not hold.
    let stranger = rcgen::KeyPair::generate().unwrap();
    let stranger = JwtSigner::from_pkcs8(&stranger.serialize_der()).unwrap();
    let signer = JwtSigner::load(&s.path("jwt.key")).unwrap();
    let claims: Claims = {
        use base64::Engine;
        let p = minted.token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .unwrap(),
        )
        .unwrap()
    };
    let t = stranger.sign(&claims).unwrap();
    assert_ne!(stranger.kid(), signer.kid());
    let (code, h, _) = check(&mut e, Some(&format!("Bearer {t}")), Some(&agent_pem)).await;
    assert_eq!(
        (code, reason(&h)),
        (401, "token `kid` is not a key of the issuer's bundle")
    );

    // cnf mismatch: the agent's token presented by the sidecar's connection.
    let (code, h, _) = check(&mut e, Some(&bearer), Some(&pem(&s, "sidecar"))).await;
    assert_eq!(
        (code, reason(&h)),
        (403, "token is bound to another certificate (cnf)")
    );
    // No peer certificate while require_cnf.
    let (code, h, _) = check(&mut e, Some(&bearer), None).await;
    assert_eq!(
        (code, reason(&h)),
        (
            403,
            "no peer certificate to check the token's binding (cnf) against"
        )
    );

    // A token without cnf, without jti, without a task.
    let base = unbound_claims();
    let t = forged_json(&s, base.clone());
    let (code, h, _) = check(&mut e, Some(&format!("Bearer {t}")), Some(&agent_pem)).await;
    assert_eq!(
        (code, reason(&h)),
        (403, "token is not bound to a certificate (no cnf)")
    );
    for (field, why) in [
        ("jti", "token has no `jti`"),
        ("task_id", "token is not bound to a task"),
        ("exp", "token has no `exp`"),
    ] {
        let mut c = base.clone();
        c.as_object_mut().unwrap().remove(field);
        let t = forged_json(&s, c);
        let (code, h, _) = check(&mut e, Some(&format!("Bearer {t}")), Some(&agent_pem)).await;
        assert_eq!((code, reason(&h)), (401, why), "without {field}");
    }

    // Not a bearer token, no token, a SET passed off as a token, garbage.
    let (code, h, _) = check(&mut e, Some("Basic YWRtaW46YWRtaW4="), Some(&agent_pem)).await;
    assert_eq!(
        (code, reason(&h)),
        (401, "authorization is not a bearer token")
    );
    let (code, h, _) = check(&mut e, None, None).await;
    assert_eq!((code, reason(&h)), (401, "no bearer token"));
    let (code, h, _) = check(&mut e, Some("Bearer not.a.jwt"), Some(&agent_pem)).await;
    assert_eq!((code, reason(&h)), (401, "bearer token is not a JWT"));
    let set = signer
        .sign_set(&serde_json::json!({"iss": "spiffe://example.org/taskmint", "aud": "db", "exp": now() + 60, "sub": AGENT, "jti": "cd".repeat(16)}))
        .unwrap();
    let (code, h, _) = check(&mut e, Some(&format!("Bearer {set}")), Some(&agent_pem)).await;
    assert_eq!(
        (code, reason(&h)),
        (401, "token type `secevent+jwt` is not a JWT-SVID")
    );
    // A peer certificate that is not a per-task credential, and no token.
    let (code, h, _) = check(&mut e, None, Some(&agent_pem)).await;
    assert_eq!(
        (code, reason(&h)),
        (
            401,
            "no bearer token, and the peer certificate is not a per-task credential"
        )
    );
    let (code, h, _) = check(&mut e, Some(&bearer), Some("%2D%2D%2D garbage")).await;
    assert_eq!(
        (code, reason(&h)),
        (401, "the peer certificate the proxy passed does not parse")
    );
    let stats = e.enforcer.stats();
    assert_eq!(stats.allowed.load(std::sync::atomic::Ordering::Relaxed), 3);
    e.stop().await;
}

#[tokio::test]
async fn without_require_cnf_an_unbound_token_passes_a_bound_one_still_needs_its_certificate() {
    let s = start().await;
    let state = tempfile::tempdir().unwrap();
    let mut e = enforcer(&enforce_config(&s, state.path(), "require_cnf = false")).await;
    // No cnf: accepted without a certificate, and not stripped unless asked.
    let unbound = forged_json(&s, unbound_claims());
    let (code, h, removed) = check(&mut e, Some(&format!("Bearer {unbound}")), None).await;
    assert_eq!(code, 200, "{h:?}");
    assert!(
        !removed.contains(&"authorization".to_owned()),
        "not stripped unless asked"
    );
    // A bound token is only ever accepted from its certificate (RFC 8705).
    let bound = forged(&s, |_| {});
    let (code, h, _) = check(&mut e, Some(&format!("Bearer {bound}")), None).await;
    assert_eq!(
        (code, reason(&h)),
        (
            403,
            "no peer certificate to check the token's binding (cnf) against"
        )
    );
    let (code, h, _) = check(
        &mut e,
        Some(&format!("Bearer {bound}")),
        Some(&pem(&s, "sidecar")),
    )
    .await;
    assert_eq!(
        (code, reason(&h)),
        (403, "token is bound to another certificate (cnf)")
    );
    e.stop().await;
}

#[tokio::test]
async fn a_revocation_is_denied_on_a_live_enforcer_and_acknowledged() {
    let s = start().await;
    let state = tempfile::tempdir().unwrap();
    let mut e = enforcer(&enforce_config(&s, state.path(), "")).await;
    let mut agent = s.client("agent").await;
    let agent_pem = pem(&s, "agent");

    let jwt = agent.mint_jwt("live-1", "db", None).await.unwrap();
    let (csr, _key) = csr();
    let x509 = agent.mint_x509("live-1", csr, None).await.unwrap();
    let leaf_pem = der_to_pem(&x509.cert_chain[0]);
    let bearer = format!("Bearer {}", jwt.token);
    assert_eq!(check(&mut e, Some(&bearer), Some(&agent_pem)).await.0, 200);
    // The per-task certificate alone, no token: checked by serial.
    let (code, h, _) = check(&mut e, None, Some(&leaf_pem)).await;
    assert_eq!(code, 200, "{h:?}");
    assert_eq!(h["x-taskmint-task"], "live-1");

    // Revoke the token alone: denied, the certificate still allowed.
    let jti = jwt.credential.unwrap().id;
    agent
        .revoke(Target::CredentialId(jti.clone()), "key leaked")
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            e.enforcer.is_denied(&jti)
        })
        .await
    );
    let (code, h, _) = check(&mut e, Some(&bearer), Some(&agent_pem)).await;
    assert_eq!((code, reason(&h)), (403, "credential revoked"));
    assert_eq!(check(&mut e, None, Some(&leaf_pem)).await.0, 200);

    // A token bound to the per-task certificate, presented over it.
    let x509_bound = forged(&s, |c| {
        c.cnf.x5t_s256 = taskmint::enforce::verify::thumbprint(&x509.cert_chain[0]);
        c.task_id = "live-1".into();
    });
    let (code, h, _) = check(
        &mut e,
        Some(&format!("Bearer {x509_bound}")),
        Some(&leaf_pem),
    )
    .await;
    assert_eq!(code, 200, "{h:?}");

    // Complete the task: the certificate's serial is denied too.
    let serial = x509.credential.unwrap().id;
    agent.complete_task("live-1").await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            e.enforcer.is_denied(&serial)
        })
        .await
    );
    let (code, h, _) = check(&mut e, None, Some(&leaf_pem)).await;
    assert_eq!((code, reason(&h)), (403, "credential revoked"));
    // And a token presented over the revoked certificate is refused with it.
    let (code, h, _) = check(
        &mut e,
        Some(&format!("Bearer {x509_bound}")),
        Some(&leaf_pem),
    )
    .await;
    assert_eq!(
        (code, reason(&h)),
        (403, "the peer certificate is a revoked credential")
    );

    // The enforcer acknowledged under its subscriber name: the issuer's
    // delivery evidence covers it.
    let mut admin = s.client("admin").await;
    let ok = eventually(Duration::from_secs(5), || {
        let mut admin = admin.clone();
        async move {
            let d = admin.delivery_status().await.unwrap();
            d.subscribers
                .iter()
                .any(|sub| sub.name == "sidecar" && sub.acked_seq >= 2)
        }
    })
    .await;
    let d = admin.delivery_status().await.unwrap();
    assert!(ok, "sidecar never acknowledged both events: {d:?}");
    e.stop().await;
}

#[tokio::test]
async fn a_restart_resumes_from_the_cursor_and_misses_nothing() {
    let s = start().await;
    let state = tempfile::tempdir().unwrap();
    let cfg = enforce_config(&s, state.path(), "");
    let mut e = enforcer(&cfg).await;
    assert_eq!(
        e.enforcer.resumed_from(),
        Some(None),
        "first start: a snapshot"
    );
    let mut agent = s.client("agent").await;
    let first = agent.mint_jwt("restart-1", "db", None).await.unwrap();
    let second = agent.mint_jwt("restart-2", "db", None).await.unwrap();
    let first_id = first.credential.unwrap().id;
    let second_id = second.credential.unwrap().id;
    agent
        .revoke(Target::CredentialId(first_id.clone()), "done")
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            e.enforcer.is_denied(&first_id) && e.enforcer.cursor() >= Some(1)
        })
        .await
    );
    let cursor = e.enforcer.cursor();
    e.stop().await;

    // Revoked while the enforcer is down.
    agent
        .revoke(Target::CredentialId(second_id.clone()), "done")
        .await
        .unwrap();

    let mut e = enforcer_unsynced(&cfg).await;
    // What it had is enforced from disk, before it reaches the issuer.
    assert!(e.enforcer.is_denied(&first_id));
    assert!(
        eventually(Duration::from_secs(10), || async {
            e.enforcer.freshness() == taskmint::enforce::Freshness::Fresh
        })
        .await
    );
    assert_eq!(
        e.enforcer.resumed_from(),
        Some(cursor),
        "resumed from its cursor, not a snapshot"
    );
    assert!(
        e.enforcer.is_denied(&second_id),
        "the revocation made while down"
    );
    let agent_pem = pem(&s, "agent");
    let (code, h, _) = check(
        &mut e,
        Some(&format!("Bearer {}", second.token)),
        Some(&agent_pem),
    )
    .await;
    assert_eq!((code, reason(&h)), (403, "credential revoked"));
    let (code, h, _) = check(
        &mut e,
        Some(&format!("Bearer {}", first.token)),
        Some(&agent_pem),
    )
    .await;
    assert_eq!((code, reason(&h)), (403, "credential revoked"));
    e.stop().await;
}

#[tokio::test]
async fn a_stale_feed_fails_closed_and_recovers() {
    let mut s = start_heartbeating().await;
    let state = tempfile::tempdir().unwrap();
    let mut e = enforcer(&enforce_config(&s, state.path(), "max_staleness = \"2s\"")).await;
    let mut agent = s.client("agent").await;
    let t = agent.mint_jwt("stale-1", "db", None).await.unwrap().token;
    let bearer = format!("Bearer {t}");
    let agent_pem = pem(&s, "agent");
    assert_eq!(check(&mut e, Some(&bearer), Some(&agent_pem)).await.0, 200);
    let health = e.health.clone();
    let serving = |h: &tonic_health::pb::health_client::HealthClient<Channel>| {
        let mut h = h.clone();
        async move {
            h.check(tonic_health::pb::HealthCheckRequest {
                service: taskmint::enforce::authz::SERVICE.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
        }
    };
    assert!(
        eventually(Duration::from_secs(2), || serving(&health).map_eq(1)).await,
        "health says SERVING"
    );
    use taskmint::ops::Endpoints as _;
    let ops = taskmint::enforce::ops::EnforcerOps::new(e.enforcer.clone());
    assert!(ops.problems().await.is_empty());
    assert!(ops.metrics().contains("taskmint_enforce_feed_fresh 1\n"));

    // Heartbeats keep it fresh past max_staleness.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(check(&mut e, Some(&bearer), Some(&agent_pem)).await.0, 200);

    s.stop().await;
    let stale = eventually(Duration::from_secs(6), || {
        let mut e2 = (e.authz.clone(), bearer.clone(), agent_pem.clone());
        async move {
            let r =
                e2.0.check(check_request(Some(&e2.1), Some(&e2.2)))
                    .await
                    .unwrap()
                    .into_inner();
            r.status.unwrap().code == 14
        }
    })
    .await;
    assert!(stale, "never failed closed");
    let (code, h, _) = check(&mut e, Some(&bearer), Some(&agent_pem)).await;
    assert_eq!((code, reason(&h)), (503, "revocation feed stale"));
    // Invalid requests are refused as unavailable too: nothing is decided.
    assert_eq!(check(&mut e, None, None).await.0, 503);
    let problems = ops.problems().await;
    assert!(
        problems.len() == 1 && problems[0].starts_with("revocation feed stale: last current "),
        "{problems:?}"
    );
    let metrics = ops.metrics();
    assert!(
        metrics.contains("taskmint_enforce_feed_fresh 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("taskmint_enforce_checks_total{decision=\"unavailable\"} 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("taskmint_enforce_checks_total{decision=\"allowed\"} "),
        "{metrics}"
    );
    assert!(
        eventually(Duration::from_secs(2), || serving(&health).map_eq(2)).await,
        "health says NOT_SERVING"
    );

    s.restart().await;
    assert!(
        eventually(Duration::from_secs(15), || {
            let mut a = e.authz.clone();
            let (b, p) = (bearer.clone(), agent_pem.clone());
            async move {
                let r = a
                    .check(check_request(Some(&b), Some(&p)))
                    .await
                    .unwrap()
                    .into_inner();
                r.status.unwrap().code == 0
            }
        })
        .await,
        "never allowed again after the issuer came back"
    );
    assert!(eventually(Duration::from_secs(2), || serving(&health).map_eq(1)).await);
    e.stop().await;
}

#[tokio::test]
async fn the_insecure_setting_keeps_allowing_while_stale() {
    let mut s = start_heartbeating().await;
    let state = tempfile::tempdir().unwrap();
    let cfg = enforce_config(
        &s,
        state.path(),
        "max_staleness = \"1s\"\ninsecure_fail_open_when_stale = true",
    );
    let mut e = enforcer(&cfg).await;
    let t = forged(&s, |_| {});
    s.stop().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            e.enforcer.freshness() != taskmint::enforce::Freshness::Fresh
        })
        .await
    );
    let (code, _, _) = check(
        &mut e,
        Some(&format!("Bearer {t}")),
        Some(&pem(&s, "agent")),
    )
    .await;
    assert_eq!(code, 200);
    e.stop().await;
}

#[tokio::test]
async fn an_unreachable_issuer_is_skipped_for_the_next() {
    let s = start().await;
    let state = tempfile::tempdir().unwrap();
    // A port nothing listens on, first.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let mut cfg = enforce_config(&s, state.path(), "");
    cfg.issuers.insert(0, dead.to_string());
    let mut e = enforcer(&cfg).await;
    let t = forged(&s, |_| {});
    assert_eq!(
        check(
            &mut e,
            Some(&format!("Bearer {t}")),
            Some(&pem(&s, "agent"))
        )
        .await
        .0,
        200
    );
    e.stop().await;
}

trait MapEq {
    fn map_eq(self, want: i32) -> impl std::future::Future<Output = bool>;
}

impl<F: std::future::Future<Output = i32>> MapEq for F {
    async fn map_eq(self, want: i32) -> bool {
        self.await == want
    }
}

/// The command line: `taskmint enforce --config` runs the sidecar, `taskmint
/// enforce check` asks it as Envoy would, and a bad config is refused with
/// a message naming the problem.
#[tokio::test]
async fn the_command_runs_the_sidecar_and_check_asks_it() {
    let s = start().await;
    let exe = env!("CARGO_BIN_EXE_taskmint");
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let ops = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = s.path("enforce-test.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}ops_listen = \"{ops}\"\n",
            taskmint::devca::enforce_config_text(&s.addr.to_string())
                .replace("127.0.0.1:9191", &listen.to_string())
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(exe)
        .args(["enforce", "--config"])
        .arg(&cfg)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut agent = s.client("agent").await;
    let token = agent.mint_jwt("cli-1", "db", None).await.unwrap().token;
    let check = |token: &str, peer: &str| {
        std::process::Command::new(exe)
            .args([
                "enforce",
                "check",
                "--enforcer",
                &listen.to_string(),
                "--token",
                token,
            ])
            .arg("--peer-cert")
            .arg(s.path(peer))
            .output()
            .unwrap()
    };
    let allowed = eventually(Duration::from_secs(10), || async {
        check(&token, "agent.pem").status.code() == Some(0)
    })
    .await;
    let out = check(&token, "agent.pem");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "allowed: spiffe://example.org/workload/agent (task cli-1)\n"
    );
    let out = check(&token, "sidecar.pem");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "denied 403: token is bound to another certificate (cnf)\n"
    );
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(ops).unwrap();
        write!(
            c,
            "GET {path} HTTP/1.1\r\nHost: ops\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    };
    let ready = get("/readyz");
    let metrics = get("/metrics");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(allowed, "the sidecar never allowed a valid token");
    assert!(
        ready.starts_with("HTTP/1.1 200") && ready.ends_with("ready\n"),
        "{ready}"
    );
    assert!(
        metrics.contains("taskmint_enforce_checks_total{decision=\"allowed\"}"),
        "{metrics}"
    );

    // Stopped: connection refused is a failure, not a decision.
    let out = check(&token, "agent.pem");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to the enforcer"), "{err}");

    // A config that cannot work.
    std::fs::write(
        &cfg,
        taskmint::devca::enforce_config_text(&s.addr.to_string())
            .replace(r#"audiences = ["db"]"#, "audiences = []"),
    )
    .unwrap();
    let out = std::process::Command::new(exe)
        .args(["enforce", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid config: audiences must list at least one non-empty audience"),
        "{err}"
    );
}

/// A token is verified once and then remembered; the time, binding and
/// deny set are still checked on every request, so a remembered token that
/// expires is refused.
#[tokio::test]
async fn a_remembered_token_still_expires() {
    let s = start().await;
    let state = tempfile::tempdir().unwrap();
    let mut e = enforcer(&enforce_config(&s, state.path(), "leeway = \"0s\"")).await;
    let t = forged(&s, |c| c.exp = now() + 1);
    let bearer = format!("Bearer {t}");
    let agent_pem = pem(&s, "agent");
    assert_eq!(check(&mut e, Some(&bearer), Some(&agent_pem)).await.0, 200);
    // Remembered: the binding is still checked.
    let (code, h, _) = check(&mut e, Some(&bearer), Some(&pem(&s, "sidecar"))).await;
    assert_eq!(
        (code, reason(&h)),
        (403, "token is bound to another certificate (cnf)")
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (code, h, _) = check(&mut e, Some(&bearer), Some(&agent_pem)).await;
    assert_eq!((code, reason(&h)), (401, "token expired"));
    e.stop().await;
}

/// Without a token, a per-task certificate of another trust domain (one the
/// proxy may trust through federation) is not this issuer's credential.
#[tokio::test]
async fn a_per_task_certificate_of_another_trust_domain_is_refused() {
    let s = start().await;
    let state = tempfile::tempdir().unwrap();
    let mut e = enforcer(&enforce_config(&s, state.path(), "")).await;
    let other = taskmint::devca::DevRoot::new("other.org").unwrap();
    let mut p =
        taskmint::devca::DevRoot::svid_params("spiffe://other.org/workload/agent", 1).unwrap();
    let oid: Vec<u64> = taskmint::ca::TASK_EXTENSION_OID.to_vec();
    p.custom_extensions
        .push(rcgen::CustomExtension::from_oid_content(
            &oid,
            taskmint::ca::task_extension_der(&taskmint::ca::TaskBinding {
                task_id: "foreign-1".into(),
                holder: "spiffe://other.org/workload/agent".into(),
                ..Default::default()
            }),
        ));
    let issued = other.sign(&p).unwrap();
    let (code, h, _) = check(&mut e, None, Some(&der_to_pem(&issued.cert_der))).await;
    assert_eq!(
        (code, reason(&h)),
        (
            401,
            "the peer certificate is not of the issuer's trust domain"
        )
    );
    e.stop().await;
}
