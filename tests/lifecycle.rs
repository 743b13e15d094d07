//! Task lifecycle, cascade revocation, the deadline reaper (also across a
//! restart), renewal bounds, revoke authorization, status and CRL.

mod common;

use std::time::Duration;

use common::*;
use rcgen::{CertificateParams, KeyPair};
use taskmint::client::Client;
use taskmint::grpc::pb::{self, CredentialState, TaskState, revoke_request::Target};
use tonic::Code;

const AGENT: &str = "spiffe://example.org/workload/agent";

fn csr() -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec()
}

async fn begin(c: &mut Client, task: &str, lifetime: u64) -> pb::Task {
    c.begin_task(pb::BeginTaskRequest {
        task_id: task.into(),
        purpose: "deploy".into(),
        ticket: "CHG-1".into(),
        lifetime_seconds: lifetime,
        labels: [("env".to_owned(), "dev".to_owned())].into(),
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn state(c: &mut Client, id: &str) -> (CredentialState, String) {
    let s = c.check_status(id).await.unwrap();
    (CredentialState::try_from(s.state).unwrap(), s.reason)
}

#[tokio::test]
async fn completing_a_task_revokes_every_credential_of_it() {
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    let t = begin(&mut agent, "deploy-1", 600).await;
    assert!(!t.implicit);
    assert_eq!(t.labels["env"], "dev");
    assert_eq!(t.deadline - t.created_at, 600);

    let jwt = agent
        .mint_jwt("deploy-1", "db", None)
        .await
        .unwrap()
        .credential
        .unwrap();
    let x = agent
        .mint_x509("deploy-1", csr(), None)
        .await
        .unwrap()
        .credential
        .unwrap();
    let other = agent
        .mint_jwt("other-task", "db", None)
        .await
        .unwrap()
        .credential
        .unwrap();

    let done = agent.complete_task("deploy-1").await.unwrap();
    assert_eq!(done.task.unwrap().state, TaskState::Completed as i32);
    let revoked = done.revoked.unwrap();
    assert_eq!(revoked.revoked, 2);
    assert_eq!(revoked.seqs.len(), 1, "one event per task");

    for id in [&jwt.id, &x.id] {
        assert_eq!(
            state(&mut agent, id).await,
            (CredentialState::Revoked, "task_completed".into())
        );
    }
    assert_eq!(
        state(&mut agent, &other.id).await.0,
        CredentialState::Active
    );

    let err = agent.mint_jwt("deploy-1", "db", None).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("is completed"), "{}", err.message());

    let again = agent.complete_task("deploy-1").await.unwrap();
    assert!(again.revoked.unwrap().message.contains("already completed"));

    let shown = agent.get_task("deploy-1", "").await.unwrap();
    assert_eq!(shown.credentials.len(), 2);
    assert!(
        shown
            .credentials
            .iter()
            .all(|c| c.status.as_ref().unwrap().state == CredentialState::Revoked as i32)
    );
    s.stop().await;
}

#[tokio::test]
async fn tasks_begin_implicitly_and_bound_every_credential() {
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    let c = agent
        .mint_jwt("implicit-1", "db", None)
        .await
        .unwrap()
        .credential
        .unwrap();
    let t = agent
        .get_task("implicit-1", "")
        .await
        .unwrap()
        .task
        .unwrap();
    assert!(t.implicit);
    assert_eq!(t.deadline - t.created_at, 15 * 60, "default task lifetime");
    assert!(c.expires_at <= t.deadline);

    let t = begin(&mut agent, "short", 60).await;
    let j = agent
        .mint_jwt("short", "db", Some(Duration::from_secs(900)))
        .await
        .unwrap();
    assert_eq!(
        j.credential.unwrap().expires_at,
        t.deadline,
        "capped at the task deadline"
    );
    let x = agent
        .mint_x509("short", csr(), Some(Duration::from_secs(900)))
        .await
        .unwrap();
    assert_eq!(x.credential.unwrap().expires_at, t.deadline);

    let err = agent
        .begin_task(pb::BeginTaskRequest {
            task_id: "short".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = agent
        .begin_task(pb::BeginTaskRequest {
            task_id: "long".into(),
            lifetime_seconds: 9 * 3600,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("9h exceeds the configured maximum 8h"),
        "{}",
        err.message()
    );
    let err = agent.get_task("nope", "").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    s.stop().await;
}

#[tokio::test]
async fn the_reaper_revokes_tasks_at_their_deadline() {
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    begin(&mut agent, "brief", 2).await;
    let c = agent
        .mint_jwt("brief", "db", None)
        .await
        .unwrap()
        .credential
        .unwrap();
    assert_eq!(state(&mut agent, &c.id).await.0, CredentialState::Active);
    let reaped =
        eventually(Duration::from_secs(6), || {
            let mut agent = agent.clone();
            let id = c.id.clone();
            async move {
                state(&mut agent, &id).await == (CredentialState::Revoked, "task_deadline".into())
            }
        })
        .await;
    assert!(reaped, "credential outlived its task deadline");
    let t = agent.get_task("brief", "").await.unwrap().task.unwrap();
    assert_eq!(t.state, TaskState::Expired as i32);
    s.stop().await;
}

#[tokio::test]
async fn deadlines_that_passed_while_down_are_caught_up_at_start() {
    // A reaper interval of an hour: only the catch-up at start can revoke.
    let mut s =
        start_with(|t| t.replace("reaper_interval = \"100ms\"", "reaper_interval = \"1h\"")).await;
    let mut agent = s.client("agent").await;
    begin(&mut agent, "brief", 1).await;
    let c = agent
        .mint_jwt("brief", "db", None)
        .await
        .unwrap()
        .credential
        .unwrap();
    s.stop().await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    s.restart().await;
    let mut agent = s.client("agent").await;
    assert_eq!(
        state(&mut agent, &c.id).await,
        (CredentialState::Revoked, "task_deadline".into())
    );
    s.stop().await;
}

#[tokio::test]
async fn renewal_is_linked_bounded_and_never_outlives_the_task() {
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    let t = begin(&mut agent, "renew-1", 120).await;
    let first = agent
        .mint_jwt("renew-1", "db", Some(Duration::from_secs(30)))
        .await
        .unwrap()
        .credential
        .unwrap();
    let renew = |id: &str, revoke_previous: bool| pb::RenewRequest {
        credential_id: id.into(),
        csr: vec![],
        // Under the dev policy's 15m ceiling; the 120s task still caps it.
        ttl_seconds: 900,
        revoke_previous,
    };
    let mut prev = first.id.clone();
    for n in 1..=3 {
        let r = agent.renew(renew(&prev, false)).await.unwrap();
        let c = r.credential.unwrap();
        assert_eq!(r.renewal_count, n);
        assert_eq!(c.audience, "db");
        assert_eq!(c.task_id, "renew-1");
        assert_eq!(c.expires_at, t.deadline, "never past the task deadline");
        assert!(!r.token.is_empty());
        prev = c.id;
    }
    let err = agent.renew(renew(&prev, false)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("max_renewals is 3"),
        "{}",
        err.message()
    );

    // No forks: a credential is renewed once.
    let err = agent.renew(renew(&first.id, false)).await.unwrap_err();
    assert!(
        err.message().contains("already renewed"),
        "{}",
        err.message()
    );

    // Renewing with revoke_previous supersedes the predecessor.
    let x = agent
        .mint_x509("renew-1", csr(), None)
        .await
        .unwrap()
        .credential
        .unwrap();
    let mut req = renew(&x.id, true);
    let err = agent.renew(req.clone()).await.unwrap_err();
    assert!(err.message().contains("needs a new CSR"));
    req.csr = csr();
    let r = agent.renew(req).await.unwrap();
    assert_eq!(r.cert_chain.len(), 2);
    assert!(r.superseded_seq > 0);
    assert_eq!(
        state(&mut agent, &x.id).await,
        (CredentialState::Revoked, "superseded".into())
    );
    let err = agent.renew(renew(&x.id, false)).await.unwrap_err();
    assert!(err.message().contains("was revoked"), "{}", err.message());
    let shown = agent.get_task("renew-1", "").await.unwrap();
    let successor = shown
        .credentials
        .iter()
        .find(|c| c.predecessor == x.id)
        .unwrap();
    assert_eq!(successor.renewal_count, 1);

    // Only the workload a credential names may renew it; to another, it
    // answers as a credential that does not exist, naming no one.
    let mut sidecar = s.client("sidecar").await;
    let id = r.credential.unwrap().id;
    let err = sidecar.renew(renew(&id, false)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), format!("credential `{id}` not found"));

    // An expired credential cannot be renewed.
    let brief = agent
        .mint_jwt("renew-2", "db", Some(Duration::from_secs(1)))
        .await
        .unwrap()
        .credential
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = agent.renew(renew(&brief.id, false)).await.unwrap_err();
    assert!(err.message().contains("expired"), "{}", err.message());
    assert_eq!(
        state(&mut agent, &brief.id).await.0,
        CredentialState::Expired
    );
    s.stop().await;
}

#[tokio::test]
async fn revoke_is_authorized_and_idempotent() {
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    let mut sidecar = s.client("sidecar").await;
    let mut admin = s.client("admin").await;
    let a1 = agent
        .mint_jwt("t1", "db", None)
        .await
        .unwrap()
        .credential
        .unwrap();
    let a2 = agent
        .mint_jwt("t2", "db", None)
        .await
        .unwrap()
        .credential
        .unwrap();
    let a3 = agent
        .mint_x509("t3", csr(), None)
        .await
        .unwrap()
        .credential
        .unwrap();
    let s1 = sidecar
        .mint_jwt("t1", "db", None)
        .await
        .unwrap()
        .credential
        .unwrap();

    for target in [
        Target::CredentialId(a1.id.clone()),
        Target::SpiffeId(AGENT.into()),
        Target::Task(pb::TaskRef {
            task_id: "t1".into(),
            holder: AGENT.into(),
        }),
        Target::TrustDomain("example.org".into()),
    ] {
        // Another workload's credential or task answers "not found", as
        // one that does not exist; a workload or trust domain named by the
        // caller is refused as such.
        let hidden = matches!(target, Target::CredentialId(_) | Target::Task(_));
        let err = sidecar.revoke(target.clone(), "").await.unwrap_err();
        let code = if hidden {
            Code::NotFound
        } else {
            Code::PermissionDenied
        };
        assert_eq!(err.code(), code, "{target:?}: {err:?}");
        assert!(!err.message().contains(AGENT) || !hidden, "{err:?}");
    }
    let err = agent
        .revoke(Target::TrustDomain("example.org".into()), "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        state(&mut agent, &a1.id).await.0,
        CredentialState::Active,
        "refusals revoke nothing"
    );

    let r = agent
        .revoke(Target::CredentialId(a1.id.clone()), "done early")
        .await
        .unwrap();
    assert_eq!(r.revoked, 1);
    assert_eq!(
        state(&mut agent, &a1.id).await,
        (CredentialState::Revoked, "done early".into())
    );
    let r = agent
        .revoke(Target::CredentialId(a1.id.clone()), "")
        .await
        .unwrap();
    assert_eq!(r.revoked, 0);
    assert!(r.message.contains("already revoked"), "{}", r.message);
    let err = agent
        .revoke(Target::CredentialId("ffff".into()), "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // The incident switch, by an admin: every active credential of the agent.
    let r = admin
        .revoke(Target::SpiffeId(AGENT.into()), "incident-7")
        .await
        .unwrap();
    assert_eq!(r.revoked, 2);
    assert_eq!(r.seqs.len(), 2, "one event per task");
    for id in [&a2.id, &a3.id] {
        assert_eq!(
            state(&mut agent, id).await,
            (CredentialState::Revoked, "incident-7".into())
        );
    }
    assert_eq!(state(&mut agent, &s1.id).await.0, CredentialState::Active);
    let r = admin
        .revoke(Target::SpiffeId(AGENT.into()), "")
        .await
        .unwrap();
    assert!(r.message.contains("no active credentials"), "{}", r.message);
    let r = admin
        .revoke(Target::TrustDomain("example.org".into()), "td")
        .await
        .unwrap();
    assert_eq!(r.revoked, 1);
    assert_eq!(state(&mut agent, &s1.id).await.0, CredentialState::Revoked);
    assert_eq!(state(&mut agent, "0123").await.0, CredentialState::Unknown);
    s.stop().await;
}

#[tokio::test]
async fn the_crl_lists_revoked_unexpired_certificates_and_is_signed() {
    use x509_parser::prelude::*;
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    let kept = agent.mint_x509("c", csr(), None).await.unwrap();
    let gone = agent.mint_x509("c", csr(), None).await.unwrap();
    let gone_id = gone.credential.unwrap().id;
    let first = agent.crl().await.unwrap();
    agent
        .revoke(Target::CredentialId(gone_id.clone()), "")
        .await
        .unwrap();

    let second = agent.crl().await.unwrap();
    assert!(
        second.crl_number > first.crl_number,
        "CRL numbers are monotonic"
    );
    // Signed once per change: one more after the revocation, then the same
    // CRL for as long as nothing changes.
    assert_eq!(second.crl_number, first.crl_number + 1);
    let again = agent.crl().await.unwrap();
    assert_eq!(again.crl_number, second.crl_number, "no change, no new CRL");
    assert!(again.crl == second.crl, "no change, the same DER");
    assert_eq!(again.this_update, second.this_update);
    let (_, crl) = parse_x509_crl(&second.crl).unwrap();
    let (_, ca) = X509Certificate::from_der(&kept.cert_chain[1]).unwrap();
    assert_eq!(crl.issuer(), ca.subject());
    assert!(crl.verify_signature(ca.public_key()).is_ok());
    assert_eq!(crl.version(), Some(X509Version::V2));
    let serials: Vec<String> = crl
        .iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect();
    assert_eq!(serials, vec![gone_id]);
    assert_eq!(
        crl.crl_number().map(|n| n.to_u64_digits()),
        Some(vec![second.crl_number])
    );
    assert!(crl.next_update().unwrap().timestamp() > crl.last_update().timestamp());
    let aki = crl
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.clone(),
            _ => None,
        });
    let ski = ca
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        });
    assert_eq!(aki.map(|k| k.0.to_vec()), ski, "AKI names the signing CA");
    s.stop().await;
}
