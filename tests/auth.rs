//! Caller authentication: one refusal per caller-SVID rule (status code,
//! message naming the rule, nothing stored), and live reload of bundles and
//! of the issuer's own serving SVID without dropping connections.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, IsCa, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, ServerName};
use taskmint::devca::{DevRoot, Issued};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

fn params(id: &str) -> rcgen::CertificateParams {
    DevRoot::svid_params(id, 1).unwrap()
}

fn ts(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap()
}

/// Mints (JWT and X.509), fetches the bundle, calls one RPC of each other
/// service and checks health as `who`; every call must be refused with UNAUTHENTICATED and a message containing
/// `fragment`.
async fn assert_refused(s: &TestServer, who: Option<&Issued>, fragment: &str) {
    let mut c = s.client_with(who.map(identity)).await;
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();
    let results = [
        c.mint_jwt("t", "db", None).await.map(|_| ()),
        c.mint_x509("t", csr, None).await.map(|_| ()),
        c.trust_bundle().await.map(|_| ()),
        c.check_status("0a").await.map(|_| ()),
        c.policy_status().await.map(|_| ()),
        c.watch_once(Default::default()).await.map(|_| ()),
        c.health("").await.map(|_| ()),
        c.health_watch("").await.map(|_| ()),
    ];
    for r in results {
        let status = r.expect_err(fragment);
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{fragment}: {status:?}"
        );
        assert!(
            status.message().contains(fragment),
            "wanted `{fragment}` in `{}`",
            status.message()
        );
    }
    assert_eq!(
        s.credential_count().await,
        0,
        "{fragment}: something was stored"
    );
}

#[tokio::test]
async fn health_checks_answer_workloads_with_an_svid() {
    let s = start().await;
    let mut c = s.client("agent").await;
    for service in ["", "taskmint.v1.Issuer"] {
        assert_eq!(
            c.health(service).await.unwrap(),
            tonic_health::ServingStatus::Serving,
            "`{service}`"
        );
    }
    let err = c.health("no.such.Service").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // A watcher sees the issuer stop serving as soon as shutdown begins
    // (the drain then waits for open streams like this one).
    let mut s = s;
    let mut watch = Box::pin(c.health_watch("").await.unwrap());
    use tokio_stream::StreamExt;
    assert_eq!(
        watch.next().await.unwrap().unwrap(),
        tonic_health::ServingStatus::Serving
    );
    let stopping = tokio::spawn(async move {
        s.stop().await;
    });
    let next = tokio::time::timeout(Duration::from_secs(3), watch.next())
        .await
        .expect("a status change before the drain ends");
    assert_eq!(
        next.unwrap().unwrap(),
        tonic_health::ServingStatus::NotServing
    );
    // Then the stream ends, so an open Watch does not hold the drain.
    let end = tokio::time::timeout(Duration::from_secs(3), watch.next())
        .await
        .expect("the watch ends before the drain's grace period");
    assert!(end.is_none(), "{end:?}");
    tokio::time::timeout(Duration::from_secs(3), stopping)
        .await
        .expect("shutdown does not wait out the grace period")
        .unwrap();
}

#[tokio::test]
async fn health_reports_each_of_the_three_services() {
    let s = start().await;
    let mut c = s.client("agent").await;
    let names = [
        "",
        "taskmint.v1.Issuer",
        "taskmint.v1.Revocations",
        "taskmint.v1.Admin",
    ];
    for service in names {
        assert_eq!(
            c.health(service).await.unwrap(),
            tonic_health::ServingStatus::Serving,
            "`{service}`"
        );
    }
    let all = c.health_all().await.unwrap();
    assert_eq!(all.iter().map(|(n, _)| *n).collect::<Vec<_>>(), names);
    assert!(
        all.iter()
            .all(|(_, st)| *st == tonic_health::ServingStatus::Serving),
        "{all:?}"
    );
    // Each service is reported NOT_SERVING once shutdown begins.
    use tokio_stream::StreamExt;
    let mut watches = Vec::new();
    for service in names {
        let mut w = Box::pin(c.health_watch(service).await.unwrap());
        assert_eq!(
            w.next().await.unwrap().unwrap(),
            tonic_health::ServingStatus::Serving,
            "`{service}`"
        );
        watches.push((service, w));
    }
    let mut s = s;
    let stopping = tokio::spawn(async move {
        s.stop().await;
    });
    for (service, w) in &mut watches {
        let next = tokio::time::timeout(Duration::from_secs(3), w.next())
            .await
            .expect("a status change before the drain ends");
        assert_eq!(
            next.unwrap().unwrap(),
            tonic_health::ServingStatus::NotServing,
            "`{service}`"
        );
    }
    tokio::time::timeout(Duration::from_secs(3), stopping)
        .await
        .expect("shutdown does not wait out the grace period")
        .unwrap();
}

#[tokio::test]
async fn health_checks_need_an_svid() {
    let s = start().await;
    // Without an SVID, health checks are refused like every other call
    // (`every_caller_svid_rule_is_enforced` covers the other SVID rules).
    assert_refused(&s, None, "no client certificate presented").await;
}

#[tokio::test]
async fn every_caller_svid_rule_is_enforced() {
    let mut s = start().await;
    let root = s.root();
    let agent_id = "spiffe://example.org/workload/agent";

    assert_refused(&s, None, "no client certificate presented").await;

    let untrusted = DevRoot::new("example.org")
        .unwrap()
        .sign(&params(agent_id))
        .unwrap();
    assert_refused(
        &s,
        Some(&untrusted),
        "does not verify against the bundle of trust domain `example.org`",
    )
    .await;

    let mut p = params(agent_id);
    p.subject_alt_names.push(SanType::URI(
        "spiffe://example.org/workload/admin".try_into().unwrap(),
    ));
    assert_refused(&s, Some(&root.sign(&p).unwrap()), "has 2 URI SANs").await;

    let mut p = params(agent_id);
    p.subject_alt_names = vec![SanType::DnsName("agent.example.org".try_into().unwrap())];
    assert_refused(&s, Some(&root.sign(&p).unwrap()), "has no URI SAN").await;

    let mut p = params(agent_id);
    p.subject_alt_names = vec![SanType::URI(
        "https://example.org/workload/agent".try_into().unwrap(),
    )];
    assert_refused(&s, Some(&root.sign(&p).unwrap()), "is not a SPIFFE ID").await;

    // The spec allows only a lowercase trust domain: no case folding into
    // another workload's (or one's own) identity.
    let mut p = params(agent_id);
    p.subject_alt_names = vec![SanType::URI(
        "spiffe://EXAMPLE.ORG/workload/agent".try_into().unwrap(),
    )];
    assert_refused(
        &s,
        Some(&root.sign(&p).unwrap()),
        "its trust domain must be lowercase",
    )
    .await;

    let mut p = params(agent_id);
    p.subject_alt_names = vec![SanType::URI("spiffe://example.org".try_into().unwrap())];
    assert_refused(&s, Some(&root.sign(&p).unwrap()), "has no path").await;

    let mut p = params(agent_id);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    assert_refused(&s, Some(&root.sign(&p).unwrap()), "is a CA certificate").await;

    let mut p = params(agent_id);
    p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    assert_refused(&s, Some(&root.sign(&p).unwrap()), "lacks digitalSignature").await;

    let mut p = params(agent_id);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
    assert_refused(&s, Some(&root.sign(&p).unwrap()), "keyCertSign or cRLSign").await;

    let mut p = params(agent_id);
    (p.not_before, p.not_after) = (ts(now() - 2 * 86400), ts(now() - 86400));
    assert_refused(&s, Some(&root.sign(&p).unwrap()), "expired at").await;

    let mut p = params(agent_id);
    (p.not_before, p.not_after) = (ts(now() + 86400), ts(now() + 2 * 86400));
    assert_refused(&s, Some(&root.sign(&p).unwrap()), "is not valid before").await;

    let stranger = DevRoot::new("elsewhere.org").unwrap();
    let w = stranger.workload("x").unwrap();
    assert_refused(&s, Some(&w), "trust domain `elsewhere.org` is not trusted").await;

    s.stop().await;
}

/// Waits until `who` is authenticated, i.e. the reloader has picked up its bundle.
async fn accepted_eventually(s: &TestServer, who: &Issued) -> bool {
    eventually(Duration::from_secs(10), || async {
        let mut c = s.client_with(Some(identity(who))).await;
        c.trust_bundle().await.is_ok()
    })
    .await
}

#[tokio::test]
async fn a_federated_trust_domain_is_picked_up_live_and_kept_apart() {
    let mut s = start().await;
    let partner = DevRoot::new("partner.org").unwrap();
    let partner_wl = partner.workload("builder").unwrap();
    assert_refused(
        &s,
        Some(&partner_wl),
        "trust domain `partner.org` is not trusted",
    )
    .await;

    // An agent connection opened before the reload must survive it.
    let mut agent = s.client("agent").await;
    agent.mint_jwt("before", "db", None).await.unwrap();

    std::fs::create_dir_all(s.path("federation")).unwrap();
    std::fs::write(s.path("federation/partner.org.pem"), partner.cert_pem()).unwrap();
    assert!(
        accepted_eventually(&s, &partner_wl).await,
        "partner.org never became trusted"
    );
    agent.mint_jwt("after", "db", None).await.unwrap();

    // A federated workload is authenticated but gets no credentials: this
    // issuer's CA and JWT key speak for example.org alone.
    let mut partner_client = s.client_with(Some(identity(&partner_wl))).await;
    let err = partner_client.mint_jwt("t", "db", None).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message()
            .contains("only for workloads of trust domain `example.org`")
    );

    // Bundles are not merged: partner.org's root cannot vouch for example.org.
    let forged = partner
        .sign(&params("spiffe://example.org/workload/agent"))
        .unwrap();
    let mut c = s.client_with(Some(identity(&forged))).await;
    let err = c.mint_jwt("t", "db", None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message()
            .contains("bundle of trust domain `example.org`"),
        "{}",
        err.message()
    );

    // Removing the bundle cuts the partner off again, on its live connection too.
    let mut live = s.client_with(Some(identity(&partner_wl))).await;
    live.trust_bundle().await.unwrap();
    std::fs::remove_file(s.path("federation/partner.org.pem")).unwrap();
    let cut = eventually(Duration::from_secs(10), || {
        let mut live = live.clone();
        async move {
            live.trust_bundle()
                .await
                .is_err_and(|e| e.code() == Code::Unauthenticated)
        }
    })
    .await;
    assert!(
        cut,
        "live connection kept its access after the bundle was removed"
    );
    s.stop().await;
}

/// A raw TLS connection to the issuer, verifying it by DNS name `localhost`
/// (the dev serving SVID carries it) so the presented leaf can be inspected.
async fn raw_tls(s: &TestServer) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for r in s.roots() {
        roots.add(r).unwrap();
    }
    let id = read_identity(&s.path("agent.pem"), &s.path("agent.key"));
    let mut cfg = rustls::ClientConfig::builder_with_provider(taskmint::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(id.chain, id.key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

fn served_leaf(
    c: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> CertificateDer<'static> {
    c.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// Sends an HTTP/2 PING and waits for its ACK: the connection is alive.
async fn h2_ping(
    c: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    payload: [u8; 8],
) -> bool {
    let mut frame = vec![0, 0, 8, 6, 0, 0, 0, 0, 0];
    frame.extend_from_slice(&payload);
    if c.write_all(&frame).await.is_err() || c.flush().await.is_err() {
        return false;
    }
    let read = async {
        loop {
            let mut head = [0u8; 9];
            c.read_exact(&mut head).await?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut body = vec![0u8; len];
            c.read_exact(&mut body).await?;
            if head[3] == 6 && head[4] & 1 == 1 && body == payload {
                return Ok::<_, std::io::Error>(true);
            }
        }
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), read).await,
        Ok(Ok(true))
    )
}

#[tokio::test]
async fn the_serving_svid_is_reloaded_without_dropping_connections() {
    let mut s = start().await;
    let mut old = raw_tls(&s).await;
    let first = served_leaf(&old);
    // HTTP/2 client preface and an empty SETTINGS frame.
    old.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    assert!(h2_ping(&mut old, *b"before!!").await);

    let fresh = s.root().server_svid().unwrap();
    std::fs::write(s.path("taskmint.key"), &fresh.key_pem).unwrap();
    std::fs::write(s.path("taskmint.pem"), &fresh.cert_pem).unwrap();
    let rotated = eventually(Duration::from_secs(10), || async {
        served_leaf(&raw_tls(&s).await).as_ref() == fresh.cert_der.as_slice()
    })
    .await;
    assert!(rotated, "new handshakes never saw the new serving SVID");
    assert_ne!(first.as_ref(), fresh.cert_der.as_slice());
    assert!(
        h2_ping(&mut old, *b"after!!!").await,
        "the old connection was dropped by the reload"
    );

    // The CLI-style client still verifies the issuer by SPIFFE ID.
    s.client("agent")
        .await
        .mint_jwt("t", "db", None)
        .await
        .unwrap();
    drop(old);
    s.stop().await;
}

#[tokio::test]
async fn a_broken_bundle_file_keeps_the_previous_bundle() {
    let mut s = start().await;
    let roots = s.roots();
    std::fs::write(s.path("bundle.pem"), "not a certificate").unwrap();
    // Give the reloader several polls to (wrongly) swap anything in.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let agent = read_identity(&s.path("agent.pem"), &s.path("agent.key"));
    let server_id = spiffe::SpiffeId::new("spiffe://example.org/taskmint").unwrap();
    let mut c =
        taskmint::client::Client::connect_with(&s.addr.to_string(), Some(agent), roots, server_id)
            .await
            .unwrap();
    c.mint_jwt("t", "db", None).await.unwrap();
    s.stop().await;
}

#[tokio::test]
async fn a_per_task_certificate_cannot_authenticate_to_the_issuer() {
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();
    let minted = agent.mint_x509("t", csr, None).await.unwrap();
    let task_cert = Issued {
        cert_pem: String::new(),
        key_pem: String::new(),
        cert_der: minted.cert_chain[0].clone(),
        key_der: key.serialize_der(),
    };
    let mut c = s.client_with(Some(identity(&task_cert))).await;
    let err = c.mint_jwt("other", "db", None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("per-task credential"),
        "{}",
        err.message()
    );
    s.stop().await;
}

#[tokio::test]
async fn a_broken_federation_file_does_not_block_other_updates() {
    let mut s = start().await;
    let partner = DevRoot::new("partner.org").unwrap();
    let wl = partner.workload("builder").unwrap();
    std::fs::create_dir_all(s.path("federation")).unwrap();
    std::fs::write(s.path("federation/broken.org.pem"), "garbage").unwrap();
    std::fs::write(s.path("federation/not a domain.pem"), "garbage").unwrap();
    std::fs::write(s.path("federation/partner.org.pem"), partner.cert_pem()).unwrap();
    assert!(
        accepted_eventually(&s, &wl).await,
        "a broken neighbour file blocked partner.org"
    );
    s.client("agent")
        .await
        .mint_jwt("t", "db", None)
        .await
        .unwrap();
    s.stop().await;
}
