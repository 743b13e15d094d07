//! Minting end to end over mTLS: both credential kinds verified with the
//! `spiffe` crate, every claim checked, and every refusal storing nothing.

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use common::*;
use rcgen::{CertificateParams, CustomExtension, KeyPair, SanType};
use sha2::{Digest, Sha256};
use spiffe::{JwtBundle, JwtBundleSet, JwtSvid, TrustDomain, X509Svid};
use taskmint::store::{CredentialKind, Store};
use tonic::Code;
use x509_parser::prelude::{FromDer, X509Certificate};

const AGENT: &str = "spiffe://example.org/workload/agent";

fn csr_for(key: &KeyPair) -> Vec<u8> {
    CertificateParams::default()
        .serialize_request(key)
        .unwrap()
        .der()
        .to_vec()
}

fn jwt_bundle_set(jwks: &str) -> JwtBundleSet {
    let doc: serde_json::Value = serde_json::from_str(jwks).unwrap();
    let keys: Vec<_> = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "jwt-svid")
        .cloned()
        .collect();
    let only_jwt = serde_json::json!({ "keys": keys }).to_string();
    let bundle =
        JwtBundle::from_jwt_authorities(TrustDomain::new(TD).unwrap(), only_jwt.as_bytes())
            .unwrap();
    let mut set = JwtBundleSet::new();
    set.add_bundle(bundle);
    set
}

fn claims_of(token: &str) -> (serde_json::Value, serde_json::Value) {
    let mut parts = token.split('.');
    let h = B64URL.decode(parts.next().unwrap()).unwrap();
    let c = B64URL.decode(parts.next().unwrap()).unwrap();
    (
        serde_json::from_slice(&h).unwrap(),
        serde_json::from_slice(&c).unwrap(),
    )
}

#[tokio::test]
async fn jwt_svid_validates_with_the_spiffe_crate_and_every_claim_is_right() {
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    let before = now();
    let r = agent
        .mint_jwt("build-42", "db", Some(Duration::from_secs(120)))
        .await
        .unwrap();
    let bundle = agent.trust_bundle().await.unwrap();

    let svid = JwtSvid::parse_and_validate(
        &r.token,
        &jwt_bundle_set(&bundle.spiffe_bundle_jwks),
        &["db"],
    )
    .unwrap();
    assert_eq!(svid.spiffe_id().to_string(), AGENT);
    assert!(
        JwtSvid::parse_and_validate(
            &r.token,
            &jwt_bundle_set(&bundle.spiffe_bundle_jwks),
            &["other"]
        )
        .is_err()
    );

    let (header, c) = claims_of(&r.token);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    let jwks: serde_json::Value = serde_json::from_str(&bundle.spiffe_bundle_jwks).unwrap();
    let jwt_key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["use"] == "jwt-svid")
        .unwrap();
    assert_eq!(header["kid"], jwt_key["kid"]);

    let cred = r.credential.unwrap();
    assert_eq!(c["sub"], AGENT);
    assert_eq!(c["aud"], "db");
    assert_eq!(c["iss"], "spiffe://example.org/taskmint");
    assert_eq!(c["task_id"], "build-42");
    assert_eq!(c["task_holder"], AGENT);
    assert_eq!(c["jti"], cred.id.as_str());
    assert_eq!(cred.id.len(), 32, "jti is 128 random bits, hex");
    let iat = c["iat"].as_i64().unwrap();
    assert!(iat >= before && iat <= now());
    assert_eq!(
        c["nbf"].as_i64().unwrap(),
        iat - taskmint::issuer::BACKDATE_SECS
    );
    assert_eq!(c["exp"].as_i64().unwrap(), iat + 120);
    let leaf = taskmint::pem::certs(&std::fs::read(s.path("agent.pem")).unwrap()).unwrap();
    let x5t = B64URL.encode(Sha256::digest(leaf[0].as_ref()));
    assert_eq!(c["cnf"]["x5t#S256"], x5t.as_str());

    let stored = s.store().await.credential(&cred.id).await.unwrap().unwrap();
    assert_eq!(stored.kind, CredentialKind::Jwt);
    assert_eq!(stored.spiffe_id, AGENT);
    assert_eq!(stored.task_id, "build-42");
    assert_eq!(stored.audience.as_deref(), Some("db"));
    assert_eq!(stored.not_after, iat + 120);
    assert_eq!(
        stored.caller_cert_sha256,
        hex::encode(Sha256::digest(leaf[0].as_ref()))
    );
    s.stop().await;
}

#[tokio::test]
async fn x509_svid_chains_to_the_bundle_and_parses_as_an_svid() {
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    let key = KeyPair::generate().unwrap();
    let r = agent
        .mint_x509("build-42", csr_for(&key), Some(Duration::from_secs(600)))
        .await
        .unwrap();
    let cred = r.credential.unwrap();
    assert_eq!(r.cert_chain.len(), 2, "leaf then signing CA");

    // Chain verifies against the served bundle, as a client and a server cert.
    let bundle = agent.trust_bundle().await.unwrap();
    let anchors: Vec<_> = bundle
        .x509_authorities
        .iter()
        .map(|d| {
            webpki::anchor_from_trusted_cert(&d.clone().into())
                .unwrap()
                .to_owned()
        })
        .collect();
    let leaf_der = rustls::pki_types::CertificateDer::from(r.cert_chain[0].clone());
    let inter = vec![rustls::pki_types::CertificateDer::from(
        r.cert_chain[1].clone(),
    )];
    let ee = webpki::EndEntityCert::try_from(&leaf_der).unwrap();
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &inter,
            rustls::pki_types::UnixTime::now(),
            usage,
            None,
            None,
        )
        .unwrap();
    }

    // The spiffe crate accepts it as an X.509-SVID with the caller's ID.
    let chain: Vec<u8> = r.cert_chain.concat();
    let svid = X509Svid::parse_from_der(&chain, &key.serialize_der()).unwrap();
    assert_eq!(svid.spiffe_id().to_string(), AGENT);

    let (_, cert) = X509Certificate::from_der(&r.cert_chain[0]).unwrap();
    assert!(
        cert.raw_serial().len() >= 17,
        "serial carries >= 128 random bits"
    );
    assert_eq!(hex::encode(cert.raw_serial()), cred.id);
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.digital_signature() && !ku.value.key_cert_sign());
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && eku.server_auth);
    let task_ext = cert
        .iter_extensions()
        .find(|e| e.oid.to_id_string() == "2.25.988614677842070252")
        .expect("task extension");
    assert!(!task_ext.critical);
    assert_eq!(
        taskmint::ca::parse_task_extension(task_ext.value),
        Some(taskmint::ca::TaskBinding {
            task_id: "build-42".into(),
            holder: AGENT.into(),
            // The dev config's ownership rule maps agent* to team-agents.
            owner: "team-agents".into(),
            break_glass: false,
        })
    );
    let not_after = cert.validity().not_after.timestamp();
    assert_eq!(not_after, cred.expires_at);
    assert!((not_after - cred.issued_at - 600).abs() <= 1);

    let stored = s.store().await.credential(&cred.id).await.unwrap().unwrap();
    assert_eq!(stored.kind, CredentialKind::X509);
    assert_eq!(stored.not_after, not_after);
    assert_eq!(stored.audience, None);
    s.stop().await;
}

#[tokio::test]
async fn csr_names_and_extensions_are_ignored() {
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![
        SanType::URI("spiffe://example.org/workload/admin".try_into().unwrap()),
        SanType::DnsName("evil.example".try_into().unwrap()),
    ];
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.custom_extensions = vec![CustomExtension::from_oid_content(&[1, 2, 3, 4], vec![5, 0])];
    let csr = p.serialize_request(&key).unwrap().der().to_vec();
    let r = agent.mint_x509("t1", csr, None).await.unwrap();
    let (_, cert) = X509Certificate::from_der(&r.cert_chain[0]).unwrap();
    let names = &cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(names.len(), 1);
    assert_eq!(format!("{:?}", names[0]), format!("URI({AGENT:?})"));
    assert!(!cert.is_ca());
    assert!(
        cert.iter_extensions()
            .all(|e| e.oid.to_id_string() != "1.2.3.4")
    );
    s.stop().await;
}

#[tokio::test]
async fn bad_requests_are_refused_and_store_nothing() {
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    let key = KeyPair::generate().unwrap();
    let good_csr = csr_for(&key);
    let mut bad_sig = good_csr.clone();
    let last = bad_sig.len() - 1;
    bad_sig[last] ^= 0x01;

    let cases: Vec<(&str, tonic::Status, &str)> = vec![
        (
            "garbage csr",
            agent
                .mint_x509("t", b"garbage".to_vec(), None)
                .await
                .unwrap_err(),
            "not a DER PKCS#10",
        ),
        (
            "bad csr signature",
            agent.mint_x509("t", bad_sig, None).await.unwrap_err(),
            "CSR signature does not verify",
        ),
        (
            "x509 ttl over max",
            agent
                .mint_x509("t", good_csr.clone(), Some(Duration::from_secs(7200)))
                .await
                .unwrap_err(),
            "requested ttl 2h exceeds the configured maximum 1h",
        ),
        (
            "jwt ttl over max",
            agent
                .mint_jwt("t", "db", Some(Duration::from_secs(7200)))
                .await
                .unwrap_err(),
            "requested ttl 2h exceeds the configured maximum 1h",
        ),
        (
            "task with slash",
            agent.mint_jwt("a/b", "db", None).await.unwrap_err(),
            "task id `a/b` contains `/`",
        ),
        (
            "empty task",
            agent.mint_jwt("", "db", None).await.unwrap_err(),
            "task id is empty",
        ),
        (
            "long task",
            agent
                .mint_x509(&"x".repeat(129), good_csr.clone(), None)
                .await
                .unwrap_err(),
            "129 characters",
        ),
        (
            "empty audience",
            agent.mint_jwt("t", "", None).await.unwrap_err(),
            "audience is empty",
        ),
        (
            "audience with space",
            agent.mint_jwt("t", "a b", None).await.unwrap_err(),
            "whitespace",
        ),
    ];
    for (what, status, fragment) in cases {
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(
            status.message().contains(fragment),
            "{what}: {}",
            status.message()
        );
    }
    assert_eq!(s.credential_count().await, 0);
    assert!(
        s.store().await.task(AGENT, "t").await.unwrap().is_none(),
        "no task row either"
    );
    s.stop().await;
}

#[tokio::test]
async fn missing_ttl_takes_the_default_and_128_char_task_ids_work() {
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    let r = agent.mint_jwt(&"t".repeat(128), "db", None).await.unwrap();
    let c = r.credential.unwrap();
    assert_eq!(c.expires_at - c.issued_at, 300, "default_ttl = 5m");
    s.stop().await;
}

#[tokio::test]
async fn expiry_is_clamped_by_the_callers_svid() {
    let mut s = start().await;
    let root = s.root();
    let mut p =
        taskmint::devca::DevRoot::svid_params("spiffe://example.org/workload/brief", 1).unwrap();
    let svid_end = now() + 120;
    p.not_after = time::OffsetDateTime::from_unix_timestamp(svid_end).unwrap();
    let brief = root.sign(&p).unwrap();
    let mut client = s.client_with(Some(identity(&brief))).await;

    let j = client
        .mint_jwt("t", "db", Some(Duration::from_secs(900)))
        .await
        .unwrap();
    assert_eq!(j.credential.unwrap().expires_at, svid_end);
    let key = KeyPair::generate().unwrap();
    let x = client
        .mint_x509("t", csr_for(&key), Some(Duration::from_secs(900)))
        .await
        .unwrap();
    let (_, cert) = X509Certificate::from_der(&x.cert_chain[0]).unwrap();
    assert_eq!(cert.validity().not_after.timestamp(), svid_end);
    s.stop().await;
}

#[tokio::test]
async fn task_ids_are_scoped_to_their_holder() {
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    let mut sidecar = s.client("sidecar").await;
    agent.mint_jwt("build-42", "db", None).await.unwrap();
    sidecar.mint_jwt("build-42", "db", None).await.unwrap();
    agent.mint_jwt("build-42", "cache", None).await.unwrap();
    let store = s.store().await;
    let sidecar_id = "spiffe://example.org/workload/sidecar";
    assert_eq!(
        store
            .task_credentials(AGENT, "build-42")
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        store
            .task_credentials(sidecar_id, "build-42")
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store
            .task(sidecar_id, "build-42")
            .await
            .unwrap()
            .unwrap()
            .holder,
        sidecar_id
    );
    s.stop().await;
}

#[tokio::test]
async fn credentials_survive_a_restart() {
    let mut s = start().await;
    let id = s
        .client("agent")
        .await
        .mint_jwt("keep", "db", None)
        .await
        .unwrap()
        .credential
        .unwrap()
        .id;
    s.restart().await;
    let mut agent = s.client("agent").await;
    agent.mint_jwt("keep", "db", None).await.unwrap();
    let store = s.store().await;
    assert!(store.credential(&id).await.unwrap().is_some());
    assert_eq!(
        store.task_credentials(AGENT, "keep").await.unwrap().len(),
        2
    );
    s.stop().await;
}

#[tokio::test]
async fn the_bundle_sequence_moves_only_when_the_bundle_changes() {
    let mut s = start().await;
    let seq = |mut c: taskmint::client::Client| async move {
        let b = c.trust_bundle().await.unwrap();
        let doc: serde_json::Value = serde_json::from_str(&b.spiffe_bundle_jwks).unwrap();
        assert_eq!(doc["spiffe_sequence"], b.sequence);
        (b.sequence, b.x509_authorities.len())
    };
    assert_eq!(seq(s.client("agent").await).await, (1, 1));
    assert_eq!(seq(s.client("agent").await).await, (1, 1));
    s.restart().await;
    assert_eq!(
        seq(s.client("agent").await).await,
        (1, 1),
        "a restart is not a change"
    );

    // A second root (e.g. during rotation) is a change.
    let next_root = taskmint::devca::DevRoot::new(TD).unwrap();
    let mut pem = std::fs::read_to_string(s.path("bundle.pem")).unwrap();
    pem.push_str(next_root.cert_pem());
    std::fs::write(s.path("bundle.pem"), pem).unwrap();
    let moved = eventually(Duration::from_secs(10), || async {
        seq(s.client("agent").await).await == (2, 2)
    })
    .await;
    assert!(moved, "sequence did not move with the new root");
    s.stop().await;
}
