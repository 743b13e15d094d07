//! Unit tests of the engine: decisions name their policies, typed contexts
//! decide like Cedar's JSON reading of the same context, refusals, reloads.

use std::path::Path;

use serde_json::json;

use super::*;
use crate::identity::{SpiffeId, SpiffePattern};

/// An entity reference in Cedar's JSON form.
fn workload_ref(id: &str) -> serde_json::Value {
    json!({"__entity": {"type": "Workload", "id": id}})
}

fn engine(text: &str) -> Engine {
    let schema = schema();
    let doc = PolicyDoc::parse(text, &schema).unwrap();
    let groups = Groups::new(
        vec![(
            "ci".into(),
            vec![SpiffePattern::parse("spiffe://example.org/ci/*").unwrap()],
        )],
        &["spiffe://example.org/admin".into()],
    );
    Engine::with_doc(schema, doc, groups, Path::new("p.cedar"), 0)
}

#[test]
fn default_policy_validates_and_decides_with_ids() {
    let e = engine(&DEFAULT_POLICY.replace("TRUST_DOMAIN", "example.org"));
    let ctx = |ttl: i64| {
        Request::MintJwt(MintContext {
            task_id: "t".into(),
            ttl_seconds: ttl,
            break_glass: false,
            depth: 0,
        })
    };
    let agent = SpiffeId::new("spiffe://example.org/agent").unwrap();
    let d = e
        .authorize(&agent, ctx(300), &Resource::Audience("db".into()))
        .unwrap();
    assert!(d.allowed);
    assert_eq!(d.policies, vec!["workloads-mint-own-tasks".to_owned()]);
    let d = e
        .authorize(&agent, ctx(901), &Resource::Audience("db".into()))
        .unwrap();
    assert!(!d.allowed);
    assert!(d.policies.is_empty());
    assert_eq!(d.describe(), "no policy permits");
    let d = e
        .eval_text(
            "spiffe://example.org/admin",
            "admin",
            "Issuer::\"taskmint\"",
            Some(json!({"operation": "list_grants"})),
        )
        .unwrap();
    assert_eq!(d.policies, vec!["admins-administer".to_owned()]);
    // An explicit forbid names itself.
    let d = e
        .eval_text(
            "spiffe://example.org/agent",
            "delegate",
            "Task::\"spiffe://example.org/agent#t\"",
            Some(json!({"delegate": workload_ref("spiffe://other.org/x"),
                        "task_id": "t.sub", "audiences": ["db"],
                        "lifetime_seconds": 60, "depth": 1})),
        )
        .unwrap();
    assert!(!d.allowed);
    assert_eq!(
        d.policies,
        vec!["delegates-stay-in-trust-domain".to_owned()]
    );
}

#[test]
fn server_contexts_are_converted_like_cedar_json_and_schema_checked() {
    let e = engine(&DEFAULT_POLICY.replace("TRUST_DOMAIN", "example.org"));
    let agent = SpiffeId::new("spiffe://example.org/agent").unwrap();
    let task = Resource::Task(TaskFacts {
        holder: agent.to_string(),
        task_id: "t".into(),
        owner: String::new(),
        break_glass: false,
        depth: 0,
        audiences: vec!["db".into()],
    });
    // Entity references, sets and integers: the typed conversion and
    // Cedar's own JSON reading must decide alike.
    for (delegate, allowed) in [
        ("spiffe://example.org/sidecar", true),
        ("spiffe://other.org/x", false),
    ] {
        let ctx = json!({"delegate": workload_ref(delegate), "task_id": "t.sub",
                         "audiences": ["db"], "lifetime_seconds": 60, "depth": 1});
        let typed = Request::Delegate(DelegateContext {
            delegate: SpiffeId::new(delegate).unwrap(),
            task_id: "t.sub".into(),
            audiences: vec!["db".into()],
            lifetime_seconds: 60,
            depth: 1,
        });
        let direct = e.authorize(&agent, typed, &task).unwrap();
        let text = e
            .eval_text(
                &agent.to_string(),
                "delegate",
                "Task::\"spiffe://example.org/agent#t\"",
                Some(ctx),
            )
            .unwrap();
        assert_eq!(direct.allowed, allowed, "{delegate}: {}", direct.describe());
        assert_eq!(direct.policies, text.policies, "{delegate}");
    }
    // A context of the wrong shape cannot be built by the server (its
    // contexts are typed); from text it is refused against the schema, in
    // every build.
    let wrong = json!({"task_id": "t", "ttl_seconds": "300", "renewal_count": 0,
                       "break_glass": false, "depth": 0});
    let r = e.eval_text(
        &agent.to_string(),
        "mint_jwt",
        "Audience::\"db\"",
        Some(wrong),
    );
    assert!(matches!(r, Err(PolicyError::Request(_))), "{r:?}");
    for bad in [
        json!({"x": null}),
        json!({"x": 1.5}),
        json!({"x": {"__entity": {"type": "Workload"}}}),
    ] {
        let r = e.eval_text(
            &agent.to_string(),
            "watch",
            "Issuer::\"taskmint\"",
            Some(bad.clone()),
        );
        assert!(matches!(r, Err(PolicyError::Request(_))), "{bad}: {r:?}");
    }
}

#[test]
fn groups_and_refusals() {
    let e = engine(
        r#"@id("ci-watch") permit(principal in Group::"ci", action == Action::"watch", resource);"#,
    );
    let ctx = Request::Watch(WatchContext {
        operation: WatchOperation::Watch,
        subscriber: String::new(),
    });
    let ci = SpiffeId::new("spiffe://example.org/ci/runner").unwrap();
    let other = SpiffeId::new("spiffe://example.org/web").unwrap();
    assert!(
        e.authorize(&ci, ctx.clone(), &Resource::Issuer)
            .unwrap()
            .allowed
    );
    assert!(!e.authorize(&other, ctx, &Resource::Issuer).unwrap().allowed);
    let schema = schema();
    assert!(matches!(
        PolicyDoc::parse("permit(principal, action, resource", &schema),
        Err(PolicyError::Parse(_))
    ));
    let bad = r#"@id("typo") permit(principal, action == Action::"mint_jwt", resource) when { context.tll_seconds < 5 };"#;
    match PolicyDoc::parse(bad, &schema) {
        Err(PolicyError::Validate(m)) => assert!(m.contains("typo"), "{m}"),
        other => panic!("{other:?}"),
    }
    let dup = r#"@id("a") permit(principal, action, resource); @id("a") forbid(principal, action, resource);"#;
    assert!(matches!(
        PolicyDoc::parse(dup, &schema),
        Err(PolicyError::Parse(_))
    ));
}

/// Found by the `policy` fuzz target: an `@id` with a control character
/// (`\u{1}`) was loaded as written, but decisions named the policy by
/// Cedar's escaped text of it, so the audit trail named a policy the loaded
/// document does not have. Ids that escaping would change are refused; the
/// ids of decisions are the loaded ones.
#[test]
fn policy_ids_are_named_in_decisions_as_loaded() {
    let schema = schema();
    for id in ["mint\u{1}", "o'brien", "a\\\"b", "tab\there", "line\nbreak"] {
        let text = format!(r#"@id("{id}") permit(principal, action, resource);"#);
        match PolicyDoc::parse(&text, &schema) {
            Err(PolicyError::Parse(m)) => assert!(m.contains("unprintable"), "{m}"),
            other => panic!("`{id}`: {other:?}"),
        }
    }
    let e = engine(r#"@id("mint for ci — 7") permit(principal, action, resource);"#);
    let ci = SpiffeId::new("spiffe://example.org/ci/a").unwrap();
    let list = Request::Admin(AdminContext {
        operation: "list_grants",
    });
    let d = e.authorize(&ci, list, &Resource::Issuer).unwrap();
    assert!(d.allowed);
    assert_eq!(d.policies, e.status().ids);
    assert_eq!(d.policies, vec!["mint for ci — 7".to_owned()]);
}

#[test]
fn an_erroring_policy_denies_and_empty_files_are_refused() {
    let e = engine(
        r#"@id("mint") permit(principal, action == Action::"mint_jwt", resource);
           @id("overflowing-forbid") forbid(principal, action == Action::"mint_jwt", resource)
           when { context.ttl_seconds * 4611686018427387904 > 0 };"#,
    );
    let agent = SpiffeId::new("spiffe://example.org/agent").unwrap();
    let ctx = Request::MintJwt(MintContext {
        task_id: "t".into(),
        ttl_seconds: 300,
        break_glass: false,
        depth: 0,
    });
    let d = e
        .authorize(&agent, ctx, &Resource::Audience("db".into()))
        .unwrap();
    assert!(!d.allowed, "fail closed");
    assert_eq!(d.policies, vec!["overflowing-forbid".to_owned()]);
    assert!(
        d.describe().contains("failed to evaluate"),
        "{}",
        d.describe()
    );
    for text in ["", "// nothing but a comment\n"] {
        assert!(matches!(
            PolicyDoc::parse(text, &schema()),
            Err(PolicyError::Parse(m)) if m.contains("no policies")
        ));
    }
}

#[test]
fn polls_wait_for_stable_content_and_report_a_bad_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.cedar");
    let good = r#"@id("a") permit(principal, action == Action::"watch", resource);"#;
    std::fs::write(&path, good).unwrap();
    let e = Engine::load(&path, Groups::default(), 0).unwrap();
    assert_eq!(e.reload(false, 1), Reload::Unchanged);
    std::fs::write(&path, "permit (principal, action").unwrap();
    assert_eq!(e.reload(false, 2), Reload::Unchanged, "seen once: wait");
    assert!(matches!(e.reload(false, 3), Reload::Refused(_)));
    assert_eq!(e.reload(false, 4), Reload::Unchanged, "reported once");
    assert!(e.status().last_error.is_some());
    // SIGHUP reports it again.
    assert!(matches!(e.reload(true, 5), Reload::Refused(_)));
    // A missing file is refused (once) too; the policy in force stays.
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        e.reload(true, 6),
        Reload::Refused(PolicyError::Read { .. })
    ));
    assert_eq!(e.reload(false, 7), Reload::Unchanged);
    assert_eq!(e.status().ids, vec!["a".to_owned()]);
    let better =
        format!("{good}\n@id(\"b\") permit(principal, action == Action::\"admin\", resource);");
    std::fs::write(&path, &better).unwrap();
    assert_eq!(e.reload(false, 8), Reload::Unchanged);
    assert!(matches!(e.reload(false, 9), Reload::Loaded { ids, .. } if ids.len() == 2));
    assert_eq!(e.status().last_error, None);
}

/// `policy eval` without a context: every action's defaults (with the
/// attributes that have none given) are a complete context of the schema,
/// and decide as the typed request the issuer sends.
#[test]
fn every_action_s_default_context_matches_the_schema() {
    let e = engine(&DEFAULT_POLICY.replace("TRUST_DOMAIN", "example.org"));
    let d = ContextDefaults {
        ttl_seconds: 300,
        lifetime_seconds: 900,
    };
    let agent = "spiffe://example.org/agent";
    for action in Action::ALL {
        let (ty, resource) = match action {
            Action::MintJwt => ("Audience", "Audience::\"db\"".to_owned()),
            Action::Watch | Action::Admin | Action::ReadCrl => {
                ("Issuer", "Issuer::\"taskmint\"".to_owned())
            }
            Action::Revoke => ("Workload", format!("Workload::\"{agent}\"")),
            _ => ("Task", format!("Task::\"{agent}#t\"")),
        };
        let mut context = action.default_context(&d, ty, "t");
        for key in action.required_context() {
            let value = match *key {
                "delegate" => workload_ref("spiffe://example.org/sidecar"),
                _ => json!("list_grants"),
            };
            context.insert((*key).to_owned(), value);
        }
        let decided = e.eval_text(agent, action.as_str(), &resource, Some(context.into()));
        assert!(decided.is_ok(), "{action:?}: {decided:?}");
    }
    let mint = Action::MintJwt.default_context(&d, "Audience", "");
    assert_eq!(mint["ttl_seconds"], 300);
    let typed = e
        .authorize(
            &SpiffeId::new(agent).unwrap(),
            Request::MintJwt(MintContext {
                task_id: String::new(),
                ttl_seconds: 300,
                break_glass: false,
                depth: 0,
            }),
            &Resource::Audience("db".into()),
        )
        .unwrap();
    let text = e
        .eval_text(agent, "mint_jwt", "Audience::\"db\"", Some(mint.into()))
        .unwrap();
    assert_eq!(typed, text);
}
