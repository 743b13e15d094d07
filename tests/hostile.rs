//! The hostile-caller suite: authenticated workloads sending what a careful
//! client never would, across the three services. Each bad input must be
//! refused with the right status code and a message that names the field or
//! rule (never a library's Debug text), store nothing (credentials, tasks,
//! revocations; audit rows only where a refusal is the trail's to record),
//! and leave the server serving.
//!
//! The no-oracle rule has its own test: for every call that names a task or a
//! credential, another workload's and one that does not exist get the same
//! status and the same message.

mod common;

use std::time::Duration;

use common::*;
use rcgen::{CertificateParams, KeyPair};
use taskmint::client::Client;
use taskmint::grpc::pb::{self, revoke_request::Target};
use taskmint::store::{GrantFilter, Store};
use tonic::{Code, Status};

const AGENT: &str = "spiffe://example.org/workload/agent";
const SIDECAR: &str = "spiffe://example.org/workload/sidecar";

fn csr() -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec()
}

/// What the store holds, counted through a second connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    credentials: u64,
    active_tasks: usize,
    revocations: u64,
    audit: u64,
}

struct Probe {
    store: taskmint::store::SqliteStore,
    /// A client whose good call shows the server still serves.
    good: Client,
    cases: usize,
}

impl Probe {
    async fn counts(&self) -> Counts {
        Counts {
            credentials: self.store.count_credentials().await.unwrap(),
            active_tasks: self
                .store
                .active_tasks(&GrantFilter::default(), now(), None, 10_000)
                .await
                .unwrap()
                .len(),
            revocations: self.store.current_seq().await.unwrap(),
            audit: self.store.audit_head().await.unwrap().map_or(0, |h| h.0),
        }
    }

    /// Checks one refusal: code, message, nothing stored (`audit` rows are
    /// the refusals the trail records), and a good call still served.
    async fn refused<T: std::fmt::Debug>(
        &mut self,
        label: &str,
        before: Counts,
        result: Result<T, Status>,
        code: Code,
        needles: &[&str],
        audit: u64,
    ) {
        let err = result.expect_err(label);
        assert_eq!(err.code(), code, "{label}: {err:?}");
        let m = err.message();
        for n in needles {
            assert!(m.contains(n), "{label}: `{m}` does not contain `{n}`");
        }
        for debug in [
            "Some(",
            "Err(",
            "Error(",
            "Error {",
            "kind:",
            "Parsing Error",
        ] {
            assert!(!m.contains(debug), "{label}: Debug text in `{m}`");
        }
        let after = self.counts().await;
        assert_eq!(
            (after.credentials, after.active_tasks, after.revocations),
            (before.credentials, before.active_tasks, before.revocations),
            "{label}: nothing stored"
        );
        // A refusal is audited, but repeats of one refusal within
        // `store.use_interval` are counted into one event, not chained each.
        assert!(
            after.audit - before.audit <= audit,
            "{label}: {} audit rows, at most {audit} expected",
            after.audit - before.audit
        );
        self.good
            .get_task("own-1", "")
            .await
            .unwrap_or_else(|e| panic!("{label}: the server stopped serving: {e:?}"));
        self.cases += 1;
    }
}

/// Runs `$call` between two counts and checks the refusal.
macro_rules! bad {
    ($p:expr, $label:expr, $call:expr, $code:expr, [$($n:expr),* $(,)?] $(, audit = $audit:expr)?) => {{
        let before = $p.counts().await;
        let result = $call.await;
        #[allow(unused_mut, unused_assignments)]
        let mut audit = 0;
        $(audit = $audit;)?
        $p.refused($label, before, result, $code, &[$($n),*], audit).await;
    }};
}

fn begin(task_id: &str) -> pb::BeginTaskRequest {
    pb::BeginTaskRequest {
        task_id: task_id.into(),
        lifetime_seconds: 600,
        audiences: vec!["db".into()],
        ..Default::default()
    }
}

fn delegate(parent: &str, to: &str) -> pb::DelegateTaskRequest {
    pb::DelegateTaskRequest {
        parent: Some(pb::TaskRef {
            task_id: parent.into(),
            holder: String::new(),
        }),
        delegate: to.into(),
        audiences: vec!["db".into()],
        lifetime_seconds: 0,
        task_id: String::new(),
    }
}

fn renew(id: &str, ttl_seconds: u64) -> pb::RenewRequest {
    pb::RenewRequest {
        credential_id: id.into(),
        csr: Vec::new(),
        ttl_seconds,
        revoke_previous: false,
    }
}

fn watch(f: impl FnOnce(&mut pb::WatchRevocationsRequest)) -> pb::WatchRevocationsRequest {
    let mut r = pb::WatchRevocationsRequest::default();
    f(&mut r);
    r
}

#[tokio::test]
async fn hostile_inputs_are_refused_by_rule_store_nothing_and_leave_the_server_serving() {
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    let mut sidecar = s.client("sidecar").await;
    let mut admin = s.client("admin").await;
    agent.begin_task(begin("own-1")).await.unwrap();
    let jwt = agent.mint_jwt("own-1", "db", None).await.unwrap();
    let jwt_id = jwt.credential.unwrap().id;
    let mut own_svid = s
        .client_with(Some(read_identity(
            &s.path("taskmint.pem"),
            &s.path("taskmint.key"),
        )))
        .await;
    let mut p = Probe {
        store: s.store().await,
        good: agent.clone(),
        cases: 0,
    };
    let rlo = "\u{202e}";
    let zwsp = "\u{200b}";

    // --- Issuer: minting ---
    bad!(
        p,
        "mint: bidi in task id",
        agent.mint_jwt(&format!("t{rlo}1"), "db", None),
        Code::InvalidArgument,
        ["task id", "\\u{202e}", "only A-Z"]
    );
    bad!(
        p,
        "mint: empty task id",
        agent.mint_jwt("", "db", None),
        Code::InvalidArgument,
        ["task id is empty"]
    );
    bad!(
        p,
        "mint: task id too long",
        agent.mint_jwt(&"a".repeat(129), "db", None),
        Code::InvalidArgument,
        ["129 characters", "at most 128"]
    );
    bad!(
        p,
        "mint: empty audience",
        agent.mint_jwt("own-1", "", None),
        Code::InvalidArgument,
        ["audience is empty"]
    );
    bad!(
        p,
        "mint: zero-width audience",
        agent.mint_jwt("own-1", &format!("db{zwsp}"), None),
        Code::InvalidArgument,
        ["audience contains a zero-width character", "U+200B"]
    );
    bad!(
        p,
        "mint: audience with a space",
        agent.mint_jwt("own-1", "d b", None),
        Code::InvalidArgument,
        ["audience contains whitespace"]
    );
    bad!(
        p,
        "mint: audience too long",
        agent.mint_jwt("own-1", &"a".repeat(257), None),
        Code::InvalidArgument,
        ["audience is 257 bytes long"]
    );
    bad!(
        p,
        "mint: ttl u64::MAX",
        agent.mint_jwt("own-1", "db", Some(Duration::from_secs(u64::MAX))),
        Code::InvalidArgument,
        ["exceeds the configured maximum"],
        audit = 1
    );
    bad!(
        p,
        "mint: empty CSR",
        agent.mint_x509("own-1", Vec::new(), None),
        Code::InvalidArgument,
        ["CSR is not a DER PKCS#10 certification request"]
    );
    bad!(
        p,
        "mint: garbage CSR",
        agent.mint_x509("own-1", vec![0x30, 0x82, 0xff, 0xff, 1, 2, 3], None),
        Code::InvalidArgument,
        ["CSR is not a DER PKCS#10 certification request"]
    );
    let rsa1024 = std::fs::read("tests/fixtures/csr-rsa1024.der").unwrap();
    bad!(
        p,
        "mint: RSA-1024 CSR",
        agent.mint_x509("own-1", rsa1024, None),
        Code::InvalidArgument,
        ["1024 bits", "at least 2048"]
    );
    bad!(
        p,
        "mint: the issuer's own SVID",
        own_svid.mint_x509("self", csr(), None),
        Code::PermissionDenied,
        ["issuer's own serving identity"],
        audit = 1
    );
    bad!(
        p,
        "mint: the issuer's own SVID, JWT",
        own_svid.mint_jwt("self", "db", None),
        Code::PermissionDenied,
        ["issuer's own serving identity"],
        audit = 1
    );

    // --- Issuer: tasks ---
    bad!(
        p,
        "begin: bidi in justification",
        admin.begin_task(pb::BeginTaskRequest {
            break_glass: true,
            justification: format!("db down{rlo}"),
            ticket: "INC-1".into(),
            owner: "sre".into(),
            ..begin("bg-1")
        }),
        Code::InvalidArgument,
        ["justification contains a bidirectional control character (U+202E)"]
    );
    bad!(
        p,
        "begin: zero-width owner",
        agent.begin_task(pb::BeginTaskRequest {
            owner: format!("team{zwsp}a"),
            ..begin("t-owner")
        }),
        Code::InvalidArgument,
        ["owner contains a zero-width character"]
    );
    bad!(
        p,
        "begin: NUL in purpose",
        agent.begin_task(pb::BeginTaskRequest {
            purpose: "a\0b".into(),
            ..begin("t-purpose")
        }),
        Code::InvalidArgument,
        ["purpose contains a control character (U+0000)"]
    );
    bad!(
        p,
        "begin: LRI in ticket",
        agent.begin_task(pb::BeginTaskRequest {
            ticket: "INC\u{2066}-1".into(),
            ..begin("t-ticket")
        }),
        Code::InvalidArgument,
        ["ticket contains a bidirectional control character (U+2066)"]
    );
    bad!(
        p,
        "begin: BOM in a label value",
        agent.begin_task(pb::BeginTaskRequest {
            labels: [("env".to_owned(), "\u{feff}prod".to_owned())].into(),
            ..begin("t-label")
        }),
        Code::InvalidArgument,
        ["label value contains a zero-width character (U+FEFF)"]
    );
    bad!(
        p,
        "begin: empty label key",
        agent.begin_task(pb::BeginTaskRequest {
            labels: [(String::new(), "x".to_owned())].into(),
            ..begin("t-label2")
        }),
        Code::InvalidArgument,
        ["label key is empty"]
    );
    bad!(
        p,
        "begin: 33 labels",
        agent.begin_task(pb::BeginTaskRequest {
            labels: (0..33).map(|i| (format!("k{i}"), "v".to_owned())).collect(),
            ..begin("t-labels")
        }),
        Code::InvalidArgument,
        ["33 labels given"]
    );
    bad!(
        p,
        "begin: lifetime u64::MAX",
        agent.begin_task(pb::BeginTaskRequest {
            lifetime_seconds: u64::MAX,
            ..begin("t-life")
        }),
        Code::InvalidArgument,
        ["lifetime_seconds is 18446744073709551615 seconds"]
    );
    bad!(
        p,
        "begin: ticket too long",
        agent.begin_task(pb::BeginTaskRequest {
            ticket: "x".repeat(257),
            ..begin("t-ticket2")
        }),
        Code::InvalidArgument,
        ["ticket is 257 bytes long"]
    );
    bad!(
        p,
        "begin: 33 audiences",
        agent.begin_task(pb::BeginTaskRequest {
            audiences: (0..33).map(|i| format!("a{i}")).collect(),
            ..begin("t-auds")
        }),
        Code::InvalidArgument,
        ["33 audiences given"]
    );
    bad!(
        p,
        "begin: break-glass without justification",
        admin.begin_task(pb::BeginTaskRequest {
            break_glass: true,
            ticket: "INC-1".into(),
            owner: "sre".into(),
            ..begin("bg-2")
        }),
        Code::InvalidArgument,
        ["break-glass needs a justification"]
    );
    bad!(
        p,
        "begin: break-glass without an owner",
        admin.begin_task(pb::BeginTaskRequest {
            break_glass: true,
            justification: "db down".into(),
            ticket: "INC-1".into(),
            ..begin("bg-3")
        }),
        Code::FailedPrecondition,
        ["would have no accountable owner"],
        audit = 1
    );
    bad!(
        p,
        "delegate: uppercase trust domain",
        agent.delegate_task(delegate("own-1", "spiffe://EXAMPLE.ORG/workload/sidecar")),
        Code::InvalidArgument,
        [
            "delegate `spiffe://EXAMPLE.ORG/workload/sidecar`",
            "must be lowercase"
        ]
    );
    bad!(
        p,
        "delegate: not a SPIFFE ID",
        agent.delegate_task(delegate("own-1", "https://example.org/x")),
        Code::InvalidArgument,
        ["delegate `https://example.org/x` is not a SPIFFE ID"]
    );
    bad!(
        p,
        "delegate: to oneself",
        agent.delegate_task(delegate("own-1", AGENT)),
        Code::InvalidArgument,
        ["delegated to another workload"]
    );
    bad!(
        p,
        "delegate: to the issuer's own SVID",
        agent.delegate_task(delegate("own-1", "spiffe://example.org/taskmint")),
        Code::PermissionDenied,
        ["issuer's own serving identity"],
        audit = 1
    );
    bad!(
        p,
        "delegate: no parent",
        agent.delegate_task(pb::DelegateTaskRequest {
            parent: None,
            ..delegate("own-1", SIDECAR)
        }),
        Code::InvalidArgument,
        ["task is required"]
    );
    bad!(
        p,
        "delegate: lifetime u64::MAX",
        agent.delegate_task(pb::DelegateTaskRequest {
            lifetime_seconds: u64::MAX,
            ..delegate("own-1", SIDECAR)
        }),
        Code::InvalidArgument,
        ["lifetime_seconds is"]
    );
    bad!(
        p,
        "delegate: child id not under the parent's",
        agent.delegate_task(pb::DelegateTaskRequest {
            task_id: "other".into(),
            ..delegate("own-1", SIDECAR)
        }),
        Code::InvalidArgument,
        ["extends its parent's"]
    );
    bad!(
        p,
        "get task: uppercase holder",
        agent.get_task("own-1", "spiffe://Example.org/workload/agent"),
        Code::InvalidArgument,
        ["task holder", "must be lowercase"]
    );
    bad!(
        p,
        "complete: no task",
        agent.complete_task_ref(None),
        Code::InvalidArgument,
        ["task is required"]
    );

    // --- Issuer: revocation and renewal ---
    bad!(
        p,
        "revoke: credential id not hex",
        agent.revoke(Target::CredentialId("eyJhbGciOi.x.y".into()), ""),
        Code::InvalidArgument,
        ["credential_id must be 1-64 hex digits"]
    );
    bad!(
        p,
        "revoke: uppercase workload",
        agent.revoke(
            Target::SpiffeId("spiffe://EXAMPLE.org/workload/agent".into()),
            ""
        ),
        Code::InvalidArgument,
        ["spiffe_id", "must be lowercase"]
    );
    bad!(
        p,
        "revoke: uppercase trust domain",
        agent.revoke(Target::TrustDomain("Example.org".into()), ""),
        Code::InvalidArgument,
        ["trust_domain `Example.org`", "must be lowercase"]
    );
    bad!(
        p,
        "revoke: bidi in reason",
        agent.revoke(Target::CredentialId(jwt_id.clone()), &format!("oops{rlo}")),
        Code::InvalidArgument,
        ["reason contains a bidirectional control character"]
    );
    bad!(
        p,
        "renew: credential id not hex",
        agent.renew(renew("../../etc", 0)),
        Code::InvalidArgument,
        ["credential_id must be 1-64 hex digits"]
    );
    bad!(
        p,
        "renew: ttl u64::MAX",
        agent.renew(renew(&jwt_id, u64::MAX)),
        Code::InvalidArgument,
        ["ttl_seconds is 18446744073709551615 seconds"]
    );

    // --- Revocations ---
    bad!(
        p,
        "ack: empty subscriber",
        agent.ack("", 0),
        Code::InvalidArgument,
        ["subscriber name is empty"]
    );
    bad!(
        p,
        "ack: subscriber with a space",
        agent.ack("my sub", 0),
        Code::InvalidArgument,
        ["subscriber contains ` `"]
    );
    bad!(
        p,
        "ack: bidi subscriber",
        agent.ack(&format!("sub{rlo}"), 0),
        Code::InvalidArgument,
        ["subscriber contains a bidirectional control character"]
    );
    bad!(
        p,
        "ack: up_to_seq u64::MAX",
        agent.ack("agent-sub", u64::MAX),
        Code::InvalidArgument,
        ["up_to_seq is 18446744073709551615"]
    );
    agent.ack("agent-sub", 0).await.unwrap();
    bad!(
        p,
        "ack: a name another workload holds",
        sidecar.ack("agent-sub", 0),
        Code::PermissionDenied,
        ["bound to another workload"],
        audit = 1
    );
    bad!(
        p,
        "ack: a configured name, not the configured workload",
        agent.ack("sidecar", 0),
        Code::PermissionDenied,
        ["bound to another workload"],
        audit = 1
    );
    bad!(
        p,
        "watch: after_seq past 2^63",
        agent.watch_once(watch(|r| r.after_seq = Some(u64::MAX))),
        Code::InvalidArgument,
        ["after_seq is 18446744073709551615"]
    );
    bad!(
        p,
        "watch: subscriber with a slash",
        agent.watch_once(watch(|r| r.subscriber = "a/b".into())),
        Code::InvalidArgument,
        ["subscriber contains `/`"]
    );
    bad!(
        p,
        "watch: uppercase SPIFFE ID filter",
        agent.watch_once(watch(|r| r.spiffe_id = "spiffe://EXAMPLE.org/w".into())),
        Code::InvalidArgument,
        ["spiffe_id", "must be lowercase"]
    );
    bad!(
        p,
        "watch: trust domain filter with a bad character",
        agent.watch_once(watch(|r| r.trust_domain = "example!org".into())),
        Code::InvalidArgument,
        ["trust_domain `example!org` is not a trust domain"]
    );
    bad!(
        p,
        "watch: task filter with a bidi character",
        agent.watch_once(watch(|r| r.task_id = format!("t{rlo}"))),
        Code::InvalidArgument,
        ["task id", "only A-Z"]
    );
    bad!(
        p,
        "status: credential id not hex",
        agent.check_status("not-hex!"),
        Code::InvalidArgument,
        ["credential_id must be 1-64 hex digits"]
    );
    bad!(
        p,
        "status: credential id too long",
        agent.check_status(&"a".repeat(65)),
        Code::InvalidArgument,
        ["credential_id must be 1-64 hex digits"]
    );

    // --- Admin ---
    bad!(
        p,
        "export: after_seq 2^63",
        admin.export_audit(1 << 63, 10),
        Code::InvalidArgument,
        ["after_seq is 9223372036854775808"],
        audit = 1
    );
    bad!(
        p,
        "export: limit 1001",
        admin.export_audit(0, 1001),
        Code::InvalidArgument,
        ["limit is 1001; at most 1000"],
        audit = 1
    );
    bad!(
        p,
        "grants: page_size 501",
        admin.list_grants(pb::ListGrantsRequest {
            page_size: 501,
            ..Default::default()
        }),
        Code::InvalidArgument,
        ["page_size is 501; at most 500"],
        audit = 1
    );
    bad!(
        p,
        "grants: uppercase holder filter",
        admin.list_grants(pb::ListGrantsRequest {
            holder: "spiffe://EXAMPLE.org/a".into(),
            ..Default::default()
        }),
        Code::InvalidArgument,
        ["holder", "must be lowercase"],
        audit = 1
    );
    bad!(
        p,
        "grants: forged page token",
        admin.list_grants(pb::ListGrantsRequest {
            page_token: "!!!".into(),
            ..Default::default()
        }),
        Code::InvalidArgument,
        ["page_token is not one this server returned"],
        audit = 1
    );
    bad!(
        p,
        "review: bidi in note",
        admin.mark_reviewed("own-1", AGENT, &format!("ok{rlo}")),
        Code::InvalidArgument,
        ["note contains a bidirectional control character"]
    );
    bad!(
        p,
        "review: not an admin",
        agent.mark_reviewed("own-1", AGENT, "fine"),
        Code::PermissionDenied,
        ["may not admin"],
        audit = 1
    );
    bad!(
        p,
        "timeline: bad task id",
        admin.task_timeline("a b", ""),
        Code::InvalidArgument,
        ["task id `a b` contains ` `"]
    );
    bad!(
        p,
        "delivery: not an admin",
        sidecar.delivery_status(),
        Code::PermissionDenied,
        ["may not admin"],
        audit = 1
    );

    assert!(p.cases >= 40, "{} cases", p.cases);
    p.store.close().await;
    s.stop().await;
}

/// For every call that names a task or a credential, another workload's and
/// one that does not exist get the same status and message, naming no one;
/// the trail still records the denial precisely.
#[tokio::test]
async fn not_yours_and_does_not_exist_are_the_same_answer() {
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    let mut sidecar = s.client("sidecar").await;
    let mut admin = s.client("admin").await;
    agent.begin_task(begin("secret-1")).await.unwrap();
    let cred = agent
        .mint_x509("secret-1", csr(), None)
        .await
        .unwrap()
        .credential
        .unwrap()
        .id;
    // A credential id of the same shape that was never issued.
    let missing_cred: String = cred.chars().rev().collect();
    let task = |id: &str| pb::TaskRef {
        task_id: id.into(),
        holder: AGENT.into(),
    };

    let same = |what: &str, theirs: Status, missing: Status| {
        assert_eq!(theirs.code(), Code::NotFound, "{what}: {theirs:?}");
        assert_eq!(
            (theirs.code(), theirs.message()),
            (missing.code(), missing.message()),
            "{what}: another workload's and a missing one must answer alike"
        );
        assert!(!theirs.message().contains(AGENT), "{what}: {theirs:?}");
    };
    let theirs = sidecar.get_task("secret-1", AGENT).await.unwrap_err();
    let missing = sidecar.get_task("secret-2", AGENT).await.unwrap_err();
    assert_eq!(missing.message(), "task `secret-2` not found");
    same(
        "GetTask",
        theirs,
        sidecar.get_task("secret-1", SIDECAR).await.unwrap_err(),
    );
    same(
        "GetTask (missing id)",
        sidecar.get_task("secret-2", SIDECAR).await.unwrap_err(),
        missing,
    );
    same(
        "CompleteTask",
        sidecar
            .complete_task_ref(Some(task("secret-1")))
            .await
            .unwrap_err(),
        sidecar
            .complete_task_ref(Some(pb::TaskRef {
                holder: SIDECAR.into(),
                ..task("secret-1")
            }))
            .await
            .unwrap_err(),
    );
    same(
        "Revoke (task)",
        sidecar
            .revoke(Target::Task(task("secret-1")), "")
            .await
            .unwrap_err(),
        sidecar
            .revoke(
                Target::Task(pb::TaskRef {
                    holder: SIDECAR.into(),
                    ..task("secret-1")
                }),
                "",
            )
            .await
            .unwrap_err(),
    );
    let theirs = sidecar
        .revoke(Target::CredentialId(cred.clone()), "")
        .await
        .unwrap_err();
    let missing = sidecar
        .revoke(Target::CredentialId(missing_cred.clone()), "")
        .await
        .unwrap_err();
    // Ids differ, so compare the message with the id swapped.
    assert_eq!(theirs.code(), missing.code(), "Revoke (credential)");
    assert_eq!(
        theirs.message().replace(&cred, "ID"),
        missing.message().replace(&missing_cred, "ID"),
        "Revoke (credential)"
    );
    assert_eq!(theirs.message(), format!("credential `{cred}` not found"));
    let theirs = sidecar.renew(renew(&cred, 0)).await.unwrap_err();
    let missing = sidecar.renew(renew(&missing_cred, 0)).await.unwrap_err();
    assert_eq!(theirs.code(), Code::NotFound, "Renew: {theirs:?}");
    assert_eq!(theirs.code(), missing.code(), "Renew");
    assert_eq!(
        theirs.message().replace(&cred, "ID"),
        missing.message().replace(&missing_cred, "ID"),
        "Renew"
    );
    let delegate = |holder: &str| pb::DelegateTaskRequest {
        parent: Some(pb::TaskRef {
            task_id: "secret-1".into(),
            holder: holder.into(),
        }),
        // The parent's own holder as the delegate: refused as such only to
        // whoever may see the parent.
        delegate: AGENT.into(),
        audiences: vec!["db".into()],
        lifetime_seconds: 10_000_000,
        task_id: String::new(),
    };
    same(
        "DelegateTask",
        sidecar.delegate_task(delegate(AGENT)).await.unwrap_err(),
        sidecar
            .delegate_task(delegate("spiffe://example.org/workload/nobody"))
            .await
            .unwrap_err(),
    );
    same(
        "GetTaskTimeline",
        sidecar.task_timeline("secret-1", AGENT).await.unwrap_err(),
        sidecar
            .task_timeline("secret-1", SIDECAR)
            .await
            .unwrap_err(),
    );
    // The holder itself still gets precise answers about its own task.
    let own = agent.delegate_task(delegate("")).await.unwrap_err();
    assert_eq!(own.code(), Code::InvalidArgument, "{own:?}");
    // Admins see everything, precisely.
    admin.get_task("secret-1", AGENT).await.unwrap();
    // The trail records each denial as decided: by whom, on what.
    let trail = admin.task_timeline("secret-1", AGENT).await.unwrap();
    let denials = trail
        .events
        .iter()
        .filter(|e| e.actor == SIDECAR && e.decision == pb::AuditDecision::Deny as i32)
        .count();
    // GetTask and GetTaskTimeline are both a denied task read by the same
    // caller: one key, so the second is counted in its window, not chained.
    assert!(
        denials >= 5,
        "{denials} denials recorded: {:?}",
        trail.events
    );
    assert!(
        trail.events.iter().any(|e| e.actor == SIDECAR
            && e.kind == pb::AuditKind::Renew as i32
            && e.reason.contains(AGENT)),
        "the renewal denial names the credential's workload in the trail"
    );
    s.stop().await;
}

/// GetCrl is a policy decision (`read_crl`) and a read: a flood writes no
/// audit row and signs no new CRL while nothing changed; a denial writes
/// nothing either.
#[tokio::test]
async fn get_crl_is_authorized_by_policy_and_writes_nothing() {
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    let store = s.store().await;
    let first = agent.crl().await.unwrap();
    let audit = store.audit_head().await.unwrap().map_or(0, |h| h.0);
    for _ in 0..200 {
        let c = agent.crl().await.unwrap();
        assert_eq!(
            c.crl_number, first.crl_number,
            "nothing changed: no new CRL"
        );
        assert_eq!(c.crl, first.crl);
    }
    assert_eq!(
        store.audit_head().await.unwrap().map_or(0, |h| h.0),
        audit,
        "CRL reads are not audited per call"
    );

    // Without the permit, GetCrl is denied, and still writes nothing.
    let path = s.path("policy.cedar");
    let text = std::fs::read_to_string(&path).unwrap();
    let without = text.replace(
        "@id(\"workloads-read-the-crl\")\npermit",
        "@id(\"workloads-read-the-crl\")\nforbid",
    );
    assert_ne!(text, without, "the dev policy has a read_crl permit");
    std::fs::write(&path, without).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || {
            let mut agent = agent.clone();
            async move {
                agent
                    .crl()
                    .await
                    .is_err_and(|e| e.code() == Code::PermissionDenied)
            }
        })
        .await
    );
    let audit = store.audit_head().await.unwrap().map_or(0, |h| h.0);
    for _ in 0..50 {
        let err = agent.crl().await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(
            err.message().contains("may not read_crl"),
            "{}",
            err.message()
        );
    }
    assert_eq!(store.audit_head().await.unwrap().map_or(0, |h| h.0), audit);
    store.close().await;
    s.stop().await;
}

/// The issuer's own identity is the serving SVID in force: after a reload to
/// a new SPIFFE ID, the new one may not mint and the old one is an ordinary
/// workload again.
#[tokio::test]
async fn the_issuers_own_identity_follows_the_serving_svid_reload() {
    let mut s = start().await;
    let old_own = read_identity(&s.path("taskmint.pem"), &s.path("taskmint.key"));
    let new_id = format!("spiffe://{TD}/issuer-2");
    let mut p = taskmint::devca::DevRoot::svid_params(&new_id, 1).unwrap();
    p.subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    let fresh = s.root().sign(&p).unwrap();
    std::fs::write(s.path("taskmint.key"), &fresh.key_pem).unwrap();
    std::fs::write(s.path("taskmint.pem"), &fresh.cert_pem).unwrap();
    let server_id = spiffe::SpiffeId::new(&new_id).unwrap();
    let connect = |who: taskmint::client::Identity| {
        let (addr, roots, id) = (s.addr.to_string(), s.roots(), server_id.clone());
        async move { Client::connect_with(&addr, Some(who), roots, id).await }
    };
    let agent = || read_identity(&s.path("agent.pem"), &s.path("agent.key"));
    assert!(
        eventually(Duration::from_secs(10), || {
            let c = connect(agent());
            async move {
                match c.await {
                    Ok(mut c) => c.trust_bundle().await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await,
        "the new serving SVID was never served"
    );
    let mut new_own = connect(identity(&fresh)).await.unwrap();
    let err = new_own.mint_jwt("t", "db", None).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("issuer's own serving identity"),
        "{err:?}"
    );
    let mut old = connect(old_own).await.unwrap();
    old.mint_jwt("t", "db", None)
        .await
        .expect("the previous serving identity is an ordinary workload now");
    s.stop().await;
}
