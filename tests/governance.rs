//! Governance end to end: Cedar decisions with their policy ids, policy
//! reload, ownership, break-glass, delegation with `act` chains and cascade,
//! the hash-chained audit trail (and tampering with it), task timelines,
//! rate limits and the inventory.

mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use common::{TD, eventually, start, start_with};
use rcgen::{CertificateParams, KeyPair};
use serde_json::Value;
use taskmint::client::Client;
use taskmint::grpc::pb::revoke_request::Target;
use taskmint::grpc::{audit_decision_text, audit_kind_text, pb};
use taskmint::store::Store;
use tonic::Code;
use x509_parser::prelude::{FromDer, X509Certificate};

const AGENT: &str = "spiffe://example.org/workload/agent";
const HELPER: &str = "spiffe://example.org/workload/helper";
const HELPER2: &str = "spiffe://example.org/workload/helper2";
const ADMIN: &str = "spiffe://example.org/workload/admin";

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64URL.decode(payload).unwrap()).unwrap()
}

fn csr() -> Vec<u8> {
    CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&KeyPair::generate().unwrap())
        .unwrap()
        .der()
        .to_vec()
}

/// The trail up to the head as of the first page (each export is itself
/// audited, so the trail grows while it is read).
async fn audit(admin: &mut Client) -> Vec<pb::AuditEvent> {
    let mut out: Vec<pb::AuditEvent> = Vec::new();
    let mut head = None;
    loop {
        let after = out.last().map(|e| e.seq).unwrap_or(0);
        let page = admin.export_audit(after, 1000).await.unwrap();
        let head = *head.get_or_insert(page.head_seq);
        out.extend(page.events.into_iter().filter(|e| e.seq <= head));
        if out.last().is_none_or(|e| e.seq >= head) {
            return out;
        }
    }
}

#[tokio::test]
async fn decisions_name_their_policies_and_denials_are_audited() {
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    let mut admin = s.client("admin").await;

    let ok = agent
        .mint_jwt("p-1", "db", Some(Duration::from_secs(300)))
        .await
        .unwrap();
    assert!(!ok.token.is_empty());
    // The dev policy allows at most 15 minutes.
    let err = agent
        .mint_jwt("p-1", "db", Some(Duration::from_secs(1200)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // Nothing permits it, and the denial says why: the ttl, and the policy
    // that would permit less.
    assert!(
        err.message().ends_with(
            "no policy permits; ttl_seconds 1200 is more than the policy permits here: \
             policy `workloads-mint-own-tasks` permits it with ttl_seconds up to 900"
        ),
        "{}",
        err.message()
    );
    // Administrative calls are for admins.
    let err = agent
        .list_grants(pb::ListGrantsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("may not admin"), "{}", err.message());
    admin
        .list_grants(pb::ListGrantsRequest::default())
        .await
        .unwrap();

    // An explicit forbid is named, never quoted.
    let path = s.path("policy.cedar");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(
        "\n@id(\"no-prod-tokens\")\nforbid (principal, action == Action::\"mint_jwt\", resource == Audience::\"prod\");\n",
    );
    std::fs::write(&path, text).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || {
            let mut agent = agent.clone();
            async move {
                agent
                    .mint_jwt("p-1", "prod", None)
                    .await
                    .is_err_and(|e| e.code() == Code::PermissionDenied)
            }
        })
        .await
    );
    let err = agent.mint_jwt("p-1", "prod", None).await.unwrap_err();
    assert!(
        err.message().ends_with("denied by policy `no-prod-tokens`"),
        "{}",
        err.message()
    );
    assert!(!err.message().contains("forbid"), "no policy text");

    let events = audit(&mut admin).await;
    let issued = events
        .iter()
        .find(|e| {
            e.kind == pb::AuditKind::MintJwt as i32 && e.decision == pb::AuditDecision::Allow as i32
        })
        .unwrap();
    assert_eq!(issued.policies, vec!["workloads-mint-own-tasks"]);
    assert_eq!(issued.credential_id, ok.credential.unwrap().id);
    assert!(
        events
            .iter()
            .any(|e| e.kind == pb::AuditKind::MintJwt as i32
                && e.decision == pb::AuditDecision::Deny as i32
                && e.policies.is_empty())
    );
    assert!(
        events
            .iter()
            .any(|e| e.kind == pb::AuditKind::MintJwt as i32
                && e.decision == pb::AuditDecision::Deny as i32
                && e.policies == vec!["no-prod-tokens".to_owned()])
    );
    assert!(events.iter().any(|e| e.kind == pb::AuditKind::Admin as i32
        && e.decision == pb::AuditDecision::Deny as i32
        && e.actor == AGENT));
    assert!(
        events
            .iter()
            .any(|e| e.kind == pb::AuditKind::PolicyReload as i32
                && e.decision == pb::AuditDecision::Allow as i32)
    );
    // Nothing secret in the trail.
    let dump = format!("{events:?}");
    assert!(!dump.contains(&ok.token));
    s.stop().await;
}

#[tokio::test]
async fn a_bad_policy_file_is_refused_and_the_old_one_stays() {
    // Reload on SIGHUP only (the poll is an hour away).
    let mut s = start_with(|t| {
        t.replace(
            "reload_interval = \"200ms\"\n\n# Groups",
            "reload_interval = \"1h\"\n\n# Groups",
        )
    })
    .await;
    let mut agent = s.client("agent").await;
    let mut admin = s.client("admin").await;
    let before = admin.policy_status().await.unwrap();
    assert!(before.last_error.is_empty());
    assert!(before.policy_ids.contains(&"admins-administer".to_owned()));

    let path = s.path("policy.cedar");
    let good = std::fs::read_to_string(&path).unwrap();
    // Parses, but names a context field the schema does not have.
    std::fs::write(
        &path,
        "@id(\"typo\") permit (principal, action == Action::\"mint_jwt\", resource) when { context.tll_seconds < 60 };",
    )
    .unwrap();
    let hup = || {
        std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap()
    };
    assert!(hup().success());
    assert!(
        eventually(Duration::from_secs(5), || {
            let mut admin = admin.clone();
            async move { !admin.policy_status().await.unwrap().last_error.is_empty() }
        })
        .await
    );
    let st = admin.policy_status().await.unwrap();
    assert!(
        st.last_error.contains("does not validate") && st.last_error.contains("typo"),
        "{}",
        st.last_error
    );
    assert_eq!(st.sha256, before.sha256, "the old policy stays in force");
    agent.mint_jwt("r-1", "db", None).await.unwrap();

    // A policy that does not parse is refused too.
    std::fs::write(&path, "permit (principal, action").unwrap();
    assert!(hup().success());
    assert!(
        eventually(Duration::from_secs(5), || {
            let mut admin = admin.clone();
            async move {
                admin
                    .policy_status()
                    .await
                    .unwrap()
                    .last_error
                    .contains("does not parse")
            }
        })
        .await
    );
    agent.mint_jwt("r-1", "db", None).await.unwrap();

    // A good file takes over and clears the error.
    std::fs::write(
        &path,
        good.replace("context.ttl_seconds <= 900", "context.ttl_seconds <= 60"),
    )
    .unwrap();
    assert!(hup().success());
    assert!(
        eventually(Duration::from_secs(5), || {
            let mut admin = admin.clone();
            let old = before.sha256.clone();
            async move {
                let st = admin.policy_status().await.unwrap();
                st.last_error.is_empty() && st.sha256 != old
            }
        })
        .await
    );
    let err = agent.mint_jwt("r-1", "db", None).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "default ttl 300 > 60");
    let events = audit(&mut admin).await;
    let reloads: Vec<_> = events
        .iter()
        .filter(|e| e.kind == pb::AuditKind::PolicyReload as i32)
        .map(|e| audit_decision_text(e.decision))
        .collect();
    // The policy in force at start, two refusals, the new policy.
    assert_eq!(reloads, vec!["allow", "refused", "refused", "allow"]);
    assert!(events[0].reason.contains("in force at start"));
    s.stop().await;
}

#[tokio::test]
async fn owners_come_from_rules_or_the_request_and_can_be_required() {
    let mut s = start_with(|t| t.replace("require_owner = false", "require_owner = true")).await;
    let mut agent = s.client("agent").await;
    let mut sidecar = s.client("sidecar").await;
    let mut admin = s.client("admin").await;

    let m = agent.mint_jwt("o-1", "db", None).await.unwrap();
    let cred = m.credential.unwrap();
    assert_eq!(cred.owner, "team-agents");
    assert_eq!(claims(&m.token)["owner"], "team-agents");

    // No rule maps the sidecar, and owners are required.
    let err = sidecar.mint_jwt("o-2", "db", None).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("no accountable owner"),
        "{}",
        err.message()
    );
    assert!(
        s.store()
            .await
            .task(&format!("spiffe://{TD}/workload/sidecar"), "o-2")
            .await
            .unwrap()
            .is_none()
    );
    // Naming an owner needs a policy that allows it: the dev policy does
    // not for plain workloads...
    let begin = |owner: &str| pb::BeginTaskRequest {
        task_id: "o-3".into(),
        owner: owner.into(),
        ..Default::default()
    };
    let err = sidecar.begin_task(begin("team-mesh")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // ...and does for admins.
    let t = admin.begin_task(begin("team-sec")).await.unwrap();
    assert_eq!(t.owner, "team-sec");
    let err = admin
        .begin_task(pb::BeginTaskRequest {
            task_id: "o-4".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "admin has no rule either"
    );
    s.stop().await;
}

#[tokio::test]
async fn break_glass_is_justified_flagged_everywhere_and_reviewed() {
    // A second admin, to review what the first opened.
    let mut s = start_with(|t| {
        t.replace(
            "admins = [\"spiffe://example.org/workload/admin\"]",
            "admins = [\"spiffe://example.org/workload/admin\", \"spiffe://example.org/workload/admin2\"]",
        )
    })
    .await;
    let mut agent = s.client("agent").await;
    let mut admin = s.client("admin").await;
    let mut admin2 = s.client_as("workload/admin2").await;
    let bg = |justification: &str, ticket: &str, lifetime: u64| pb::BeginTaskRequest {
        task_id: "incident-7".into(),
        break_glass: true,
        justification: justification.into(),
        ticket: ticket.into(),
        lifetime_seconds: lifetime,
        owner: "sre-oncall".into(),
        ..Default::default()
    };
    // Break-glass needs an accountable owner: the admin has no ownership
    // rule, so one must be named.
    let err = admin
        .begin_task(pb::BeginTaskRequest {
            owner: String::new(),
            ..bg("db down", "INC-7", 600)
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("would have no accountable owner"),
        "{}",
        err.message()
    );
    let err = admin.begin_task(bg("", "INC-7", 600)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("justification"), "{}", err.message());
    let err = admin.begin_task(bg("db down", "", 600)).await.unwrap_err();
    assert!(err.message().contains("ticket"), "{}", err.message());
    let err = admin
        .begin_task(bg("db down", "INC-7", 2 * 3600))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("break-glass maximum 1h"),
        "{}",
        err.message()
    );
    // Its own action: the agent may begin tasks, not break glass.
    let err = agent
        .begin_task(bg("db down", "INC-7", 600))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("may not break_glass"),
        "{}",
        err.message()
    );

    let t = admin.begin_task(bg("db down", "INC-7", 600)).await.unwrap();
    assert!(t.break_glass);
    let j = admin.mint_jwt("incident-7", "db", None).await.unwrap();
    assert_eq!(claims(&j.token)["break_glass"], true);
    assert!(j.credential.unwrap().break_glass);
    let x = admin.mint_x509("incident-7", csr(), None).await.unwrap();
    let (_, cert) = X509Certificate::from_der(&x.cert_chain[0]).unwrap();
    let ext = cert
        .iter_extensions()
        .find(|e| e.oid.to_id_string() == taskmint::ca::TASK_EXTENSION_OID_STR)
        .unwrap();
    assert!(
        taskmint::ca::parse_task_extension(ext.value)
            .unwrap()
            .break_glass
    );
    // A normal task's JWT carries no flag.
    let n = agent.mint_jwt("normal", "db", None).await.unwrap();
    assert!(claims(&n.token).get("break_glass").is_none());

    let timeline = admin.task_timeline("incident-7", "").await.unwrap();
    assert!(timeline.events.len() >= 3);
    assert!(timeline.events.iter().all(|e| e.break_glass));
    let begun = timeline
        .events
        .iter()
        .find(|e| {
            e.kind == pb::AuditKind::BreakGlass as i32
                && e.decision == pb::AuditDecision::Allow as i32
        })
        .unwrap();
    assert!(begun.reason.contains("INC-7"), "{}", begun.reason);
    // The refused attempts are in the trail too, flagged.
    assert!(
        timeline
            .events
            .iter()
            .any(|e| e.decision == pb::AuditDecision::Refused as i32
                && e.reason.contains("break-glass maximum"))
    );

    let open = admin.list_break_glass(false).await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].task_id, "incident-7");
    let err = agent.list_break_glass(false).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // Separation of duties: the admin who broke the glass does not review
    // it; the refusal is in the trail.
    let err = admin
        .mark_reviewed("incident-7", "", "all fine")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("may not review it"),
        "{}",
        err.message()
    );
    let timeline = admin.task_timeline("incident-7", "").await.unwrap();
    assert!(timeline.events.iter().any(|e| {
        e.kind == pb::AuditKind::BreakGlassReview as i32
            && e.decision == pb::AuditDecision::Deny as i32
            && e.actor == ADMIN
    }));
    assert_eq!(admin.list_break_glass(false).await.unwrap().len(), 1);
    let r = admin2
        .mark_reviewed("incident-7", ADMIN, "restart was justified")
        .await
        .unwrap();
    assert_eq!(r.reviewed_by, "spiffe://example.org/workload/admin2");
    assert!(admin.list_break_glass(false).await.unwrap().is_empty());
    assert_eq!(admin.list_break_glass(true).await.unwrap().len(), 1);
    let err = admin2
        .mark_reviewed("incident-7", ADMIN, "again")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = admin.mark_reviewed("normal", AGENT, "").await.unwrap_err();
    assert!(err.message().contains("not begun through break-glass"));
    s.stop().await;
}

#[tokio::test]
async fn delegation_narrows_chains_and_cascades() {
    let mut s =
        start_with(|t| t.replace("max_delegation_depth = 3", "max_delegation_depth = 2")).await;
    let mut agent = s.client("agent").await;
    let mut helper = s.client_as("workload/helper").await;
    let mut helper2 = s.client_as("workload/helper2").await;
    let parent = agent
        .begin_task(pb::BeginTaskRequest {
            task_id: "plan".into(),
            audiences: vec!["db".into(), "queue".into()],
            lifetime_seconds: 600,
            ..Default::default()
        })
        .await
        .unwrap();
    let delegate = |to: &str, parent: &str, auds: &[&str], lifetime: u64| pb::DelegateTaskRequest {
        parent: Some(pb::TaskRef {
            task_id: parent.into(),
            holder: String::new(),
        }),
        delegate: to.into(),
        audiences: auds.iter().map(|a| a.to_string()).collect(),
        lifetime_seconds: lifetime,
        task_id: String::new(),
    };
    // Not to oneself.
    let err = agent
        .delegate_task(delegate(AGENT, "plan", &["db"], 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("delegated to another workload"),
        "{}",
        err.message()
    );
    // Audiences: a subset of the parent's.
    let err = agent
        .delegate_task(delegate(HELPER, "plan", &["web"], 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("`web` is not among"),
        "{}",
        err.message()
    );
    // A child id extends the parent's: no taking over the delegate's own ids.
    let err = agent
        .delegate_task(pb::DelegateTaskRequest {
            task_id: "deploy".into(),
            ..delegate(HELPER, "plan", &["db"], 0)
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("`plan.<suffix>`"),
        "{}",
        err.message()
    );
    // Deadline: no later than the parent's.
    let err = agent
        .delegate_task(delegate(HELPER, "plan", &["db"], 3600))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("parent's deadline"),
        "{}",
        err.message()
    );
    // Only the holder of the parent delegates it; to anyone else it
    // answers as a task that does not exist.
    let err = helper
        .delegate_task(pb::DelegateTaskRequest {
            parent: Some(pb::TaskRef {
                task_id: "plan".into(),
                holder: AGENT.into(),
            }),
            ..delegate(HELPER2, "plan", &["db"], 0)
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "task `plan` not found");

    let child = agent
        .delegate_task(delegate(HELPER, "plan", &["db"], 0))
        .await
        .unwrap();
    assert_eq!(child.holder, HELPER);
    assert_eq!(child.depth, 1);
    assert_eq!(child.deadline, parent.deadline);
    assert_eq!(child.owner, parent.owner);
    assert_eq!(child.parent.as_ref().unwrap().task_id, "plan");

    let j = helper.mint_jwt(&child.task_id, "db", None).await.unwrap();
    let c = claims(&j.token);
    assert_eq!(c["sub"], HELPER);
    assert_eq!(c["act"], serde_json::json!({ "sub": AGENT }));
    let err = helper
        .mint_jwt(&child.task_id, "queue", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("not among task"),
        "{}",
        err.message()
    );

    let grandchild = helper
        .delegate_task(delegate(HELPER2, &child.task_id, &["db"], 300))
        .await
        .unwrap();
    assert_eq!(grandchild.depth, 2);
    let j2 = helper2
        .mint_jwt(&grandchild.task_id, "db", None)
        .await
        .unwrap();
    assert_eq!(
        claims(&j2.token)["act"],
        serde_json::json!({ "sub": HELPER, "act": { "sub": AGENT } })
    );
    let x2 = helper2
        .mint_x509(&grandchild.task_id, csr(), None)
        .await
        .unwrap();
    // Depth is capped by config.
    let err = helper2
        .delegate_task(delegate(AGENT, &grandchild.task_id, &["db"], 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("max_delegation_depth is 2"),
        "{}",
        err.message()
    );

    // Revoking the parent reaches every descendant...
    let before = agent.mint_jwt("plan", "db", None).await.unwrap();
    let r = agent
        .revoke(
            Target::Task(pb::TaskRef {
                task_id: "plan".into(),
                holder: String::new(),
            }),
            "incident",
        )
        .await
        .unwrap();
    assert_eq!(r.revoked, 4, "{}", r.message);
    for id in [
        before.credential.unwrap().id,
        j.credential.unwrap().id,
        j2.credential.unwrap().id,
        x2.credential.unwrap().id,
    ] {
        let st = agent.check_status(&id).await.unwrap();
        assert_eq!(st.state, pb::CredentialState::Revoked as i32, "{id}");
    }
    // ...and completing it ends them.
    let fresh = helper2
        .mint_jwt(&grandchild.task_id, "db", None)
        .await
        .unwrap();
    agent.complete_task("plan").await.unwrap();
    let st = agent
        .check_status(&fresh.credential.unwrap().id)
        .await
        .unwrap();
    assert_eq!(st.state, pb::CredentialState::Revoked as i32);
    let err = helper2
        .mint_jwt(&grandchild.task_id, "db", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("completed"), "{}", err.message());
    let g = helper2.get_task(&grandchild.task_id, "").await.unwrap();
    assert_eq!(g.task.unwrap().state, pb::TaskState::Completed as i32);
    s.stop().await;
}

#[tokio::test]
async fn the_timeline_tells_the_whole_story() {
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    let mut sidecar = s.client("sidecar").await;
    let m = agent.mint_jwt("story", "db", None).await.unwrap();
    let id = m.credential.unwrap().id;
    sidecar.check_status(&id).await.unwrap();
    let r = agent
        .renew(pb::RenewRequest {
            credential_id: id.clone(),
            revoke_previous: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let done = agent.complete_task("story").await.unwrap();
    let last = *done.revoked.unwrap().seqs.last().unwrap();
    sidecar.ack("sidecar", last).await.unwrap();

    let t = agent.task_timeline("story", "").await.unwrap();
    let kinds: Vec<_> = t.events.iter().map(|e| audit_kind_text(e.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            "task_begin",
            "mint_jwt",
            "status_check",
            "renew",
            "revoke",
            "revoked",
            "task_complete",
            "revoked",
            "task_read",
        ],
    );
    assert_eq!(t.events[1].policies, vec!["workloads-mint-own-tasks"]);
    assert_eq!(t.events[2].actor, "spiffe://example.org/workload/sidecar");
    assert_eq!(t.events[3].subject, id);
    assert_eq!(t.events[3].credential_id, r.credential.unwrap().id);
    assert_eq!(t.acks.len(), 2);
    for (acks, seq) in t.acks.iter().zip([r.superseded_seq, last]) {
        assert_eq!(acks.seq, seq);
        assert_eq!(acks.acks.len(), 1);
        assert_eq!(acks.acks[0].subject, "sidecar");
    }
    // A malformed id (a token pasted by mistake) never reaches the trail.
    let err = sidecar.check_status(&m.token).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let text = taskmint::cli::audit_timeline_text(&t);
    assert!(text.contains("acknowledged by sidecar"), "{text}");
    assert!(text.contains("used (status checked)"), "{text}");
    // Another workload's timeline is not the sidecar's to read: it answers
    // as a task that does not exist.
    let err = sidecar.task_timeline("story", AGENT).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "task `story` not found");
    s.stop().await;
}

#[tokio::test]
async fn rate_limits_hold_against_a_retrying_agent() {
    let mut s = start_with(|t| {
        t.replace(
            "rate = { per_second = 100.0, burst = 200 }",
            "rate = { per_second = 0.5, burst = 2 }",
        )
    })
    .await;
    let mut agent = s.client("agent").await;
    let mut sidecar = s.client("sidecar").await;
    agent.mint_jwt("rl", "db", None).await.unwrap();
    agent.mint_jwt("rl", "db", None).await.unwrap();
    let err = agent.mint_jwt("rl", "db", None).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("retry after"), "{}", err.message());
    let ms: u64 = err
        .metadata()
        .get("retry-after-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ms > 0 && ms <= 2000, "{ms}");
    // Per workload: another is not affected.
    sidecar.mint_jwt("rl", "db", None).await.unwrap();
    let store = s.store().await;
    let events = store.audit_after(0, 1000).await.unwrap();
    assert!(events.iter().any(|e| e.body.decision == "rate_limited"
        && e.body.actor == AGENT
        && e.body.reason.contains("retry after")));
    s.stop().await;
}

#[tokio::test]
async fn the_inventory_pages_and_filters() {
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    let mut sidecar = s.client("sidecar").await;
    let mut admin = s.client("admin").await;
    for i in 0..5 {
        agent
            .mint_jwt(&format!("inv-{i}"), "db", None)
            .await
            .unwrap();
    }
    for i in 0..2 {
        sidecar
            .mint_jwt(&format!("side-{i}"), "db", None)
            .await
            .unwrap();
    }
    agent.complete_task("inv-4").await.unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let p = admin
            .list_grants(pb::ListGrantsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        pages += 1;
        for g in &p.grants {
            let t = g.task.clone().unwrap();
            assert_eq!(g.credentials.len(), 1);
            assert!(g.remaining_seconds > 0 && g.remaining_seconds <= 900);
            seen.push(t.task_id);
        }
        if p.next_page_token.is_empty() {
            break;
        }
        token = p.next_page_token;
    }
    assert_eq!(pages, 4, "6 grants, 2 per page, then an empty last page");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 6, "no duplicates across pages: {seen:?}");
    assert!(
        !seen.contains(&"inv-4".to_owned()),
        "completed tasks are not grants"
    );

    let by_owner = admin
        .list_grants(pb::ListGrantsRequest {
            owner: "team-agents".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_owner.grants.len(), 4);
    let by_holder = admin
        .list_grants(pb::ListGrantsRequest {
            holder: "spiffe://example.org/workload/sidecar".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_holder.grants.len(), 2);
    let bg = admin
        .list_grants(pb::ListGrantsRequest {
            break_glass_only: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(bg.grants.is_empty());
    let err = admin
        .list_grants(pb::ListGrantsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    s.stop().await;
}

/// Runs `taskmint audit verify` on a copy of the store.
fn verify(dir: &std::path::Path, db: &std::path::Path) -> (bool, String) {
    let cfg = dir.join("verify.toml");
    std::fs::write(
        &cfg,
        taskmint::devca::config_text(TD, "127.0.0.1:0").replace(
            "path = \"data/taskmint.db\"",
            &format!("path = {:?}", db.display().to_string()),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_taskmint"))
        .args(["audit", "verify", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn tamper(db: &std::path::Path, sql: &[&str]) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    // A determined attacker drops the guards first; the chain still tells.
    for q in [
        "DROP TRIGGER audit_no_update",
        "DROP TRIGGER audit_no_delete",
    ]
    .iter()
    .chain(sql)
    {
        sqlx::query(q).execute(&pool).await.unwrap();
    }
    pool.close().await;
}

#[tokio::test]
async fn audit_verify_catches_edited_deleted_and_reordered_rows() {
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    for i in 0..3 {
        let m = agent.mint_jwt(&format!("a-{i}"), "db", None).await.unwrap();
        agent.check_status(&m.credential.unwrap().id).await.unwrap();
    }
    agent.complete_task("a-0").await.unwrap();
    s.stop().await;

    let db = s.cfg.store.path.clone().unwrap();
    let n = taskmint::cli::verify_audit_store(&db).await.unwrap();
    assert!(n >= 8, "{n}");
    let (ok, out) = verify(s.dir.path(), &db);
    assert!(ok, "{out}");
    assert!(out.contains("intact"), "{out}");

    // Fold the WAL into the database file, so a plain file copy is whole.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let copy = |name: &str| {
        let p = s.dir.path().join(name);
        std::fs::copy(&db, &p).unwrap();
        p
    };
    // The triggers alone refuse an update.
    let guarded = copy("guarded.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", guarded.display()))
        .await
        .unwrap();
    let err = sqlx::query("UPDATE audit SET reason = 'x' WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    pool.close().await;

    let edited = copy("edited.db");
    tamper(
        &edited,
        &["UPDATE audit SET reason = 'nothing happened' WHERE seq = 3"],
    )
    .await;
    let (ok, out) = verify(s.dir.path(), &edited);
    assert!(!ok);
    assert!(
        out.contains("broken at seq 3") && out.contains("edited"),
        "{out}"
    );

    let deleted = copy("deleted.db");
    tamper(&deleted, &["DELETE FROM audit WHERE seq = 4"]).await;
    let (ok, out) = verify(s.dir.path(), &deleted);
    assert!(!ok);
    assert!(
        out.contains("broken at seq 4") && out.contains("missing"),
        "{out}"
    );

    let reordered = copy("reordered.db");
    tamper(
        &reordered,
        &[
            "UPDATE audit SET seq = -1 WHERE seq = 2",
            "UPDATE audit SET seq = 2 WHERE seq = 5",
            "UPDATE audit SET seq = 5 WHERE seq = -1",
        ],
    )
    .await;
    let (ok, out) = verify(s.dir.path(), &reordered);
    assert!(!ok);
    assert!(out.contains("broken at seq 2"), "{out}");

    let truncated = copy("truncated.db");
    tamper(&truncated, &[&format!("DELETE FROM audit WHERE seq = {n}")]).await;
    let (ok, out) = verify(s.dir.path(), &truncated);
    assert!(!ok);
    assert!(out.contains(&format!("broken at seq {n}")), "{out}");
}

#[tokio::test]
async fn limits_expiry_and_overdue_delivery_are_enforced_and_audited() {
    let mut s = start_with(|t| {
        t.replace("max_active_credentials = 100", "max_active_credentials = 2")
            .replace("ack_deadline = \"30s\"", "ack_deadline = \"200ms\"")
    })
    .await;
    let mut agent = s.client("agent").await;
    let mut admin = s.client("admin").await;
    let a = agent.mint_jwt("cap", "db", None).await.unwrap();
    agent.mint_jwt("cap", "db", None).await.unwrap();
    let err = agent.mint_jwt("cap", "db", None).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("max_active_credentials"),
        "{}",
        err.message()
    );
    agent
        .revoke(Target::CredentialId(a.credential.unwrap().id), "")
        .await
        .unwrap();
    agent.mint_jwt("cap", "db", None).await.unwrap();

    // A deadline passes: the reaper expires the task, in the trail as the issuer.
    agent
        .begin_task(pb::BeginTaskRequest {
            task_id: "brief".into(),
            lifetime_seconds: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    agent.mint_jwt("brief", "db", None).await.unwrap();
    let store = s.store().await;
    assert!(
        eventually(Duration::from_secs(10), || {
            let store = store.clone();
            async move {
                let events = store.task_audit(AGENT, "brief", 0, 0, 1000).await.unwrap();
                events
                    .iter()
                    .any(|e| e.body.kind == "revoked" && e.body.reason == "task_deadline")
                    && events.iter().any(|e| {
                        e.body.kind == "task_expired"
                            && e.body.actor == "spiffe://example.org/taskmint"
                    })
            }
        })
        .await
    );
    // Nobody acknowledged those revocations: the expected sidecar is overdue.
    assert!(
        eventually(Duration::from_secs(10), || {
            let store = store.clone();
            async move {
                store
                    .audit_after(0, 1000)
                    .await
                    .unwrap()
                    .iter()
                    .any(|e| e.body.kind == "delivery_overdue" && e.body.subject == "sidecar")
            }
        })
        .await
    );
    let refused = audit(&mut admin)
        .await
        .into_iter()
        .filter(|e| e.decision == pb::AuditDecision::Refused as i32)
        .count();
    assert_eq!(refused, 1, "the over-limit mint");
    s.stop().await;
}

#[tokio::test]
async fn an_exported_trail_verifies_after_the_wire_round_trip() {
    // Kind and decision travel as enums; converted back, every event must
    // hash as stored, or `audit verify` over an export would be useless.
    let mut s = start().await;
    let mut agent = s.client("agent").await;
    let mut admin = s.client("admin").await;
    let m = agent.mint_jwt("rt-1", "db", None).await.unwrap();
    agent.check_status(&m.credential.unwrap().id).await.unwrap();
    assert!(agent.policy_status().await.is_err(), "agents are no admins");
    agent.complete_task("rt-1").await.unwrap();
    let events = audit(&mut admin).await;
    assert!(
        events
            .iter()
            .any(|e| e.decision == pb::AuditDecision::Deny as i32)
    );
    assert!(
        events
            .iter()
            .all(|e| e.kind != pb::AuditKind::Unspecified as i32
                && e.decision != pb::AuditDecision::Unspecified as i32)
    );
    let mut v = taskmint::audit::Verifier::default();
    for e in events {
        v.check(&taskmint::grpc::audit_from_pb(e)).unwrap();
    }
    s.stop().await;
}

#[tokio::test]
async fn an_export_cursor_past_the_stored_range_is_refused_not_wrapped() {
    let s = start().await;
    let mut admin = s.client("admin").await;
    admin.export_audit(0, 10).await.unwrap();
    for after in [1u64 << 63, u64::MAX] {
        let err = admin.export_audit(after, 10).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{after}");
        assert!(err.message().contains("after_seq"), "{}", err.message());
    }
    // The largest stored sequence is a valid cursor: nothing after it.
    let page = admin.export_audit(i64::MAX as u64, 10).await.unwrap();
    assert!(page.events.is_empty());
}
