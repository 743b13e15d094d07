//! Policy loading: `PolicyDoc::parse` (Cedar parse, refusal of templates and
//! duplicate ids, validation against the shipped schema) on arbitrary text.
//! A document it accepts must be usable: an engine over it decides a mint, a
//! task read and an admin call without panicking, and names only policies
//! of the document.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use cedar_policy::Schema;
use libfuzzer_sys::fuzz_target;
use taskmint::identity::{SpiffeId, SpiffePattern};
use taskmint::policy::{
    self, AdminContext, Engine, Groups, MintContext, PolicyDoc, Request, Resource, TaskFacts,
};

static SCHEMA: LazyLock<Schema> = LazyLock::new(policy::schema);

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(doc) = PolicyDoc::parse(text, &SCHEMA) else {
        return;
    };
    let ids = doc.ids.clone();
    let agents = SpiffePattern::parse("spiffe://example.org/workload/agent*").unwrap();
    let groups = Groups::new(
        vec![("agents".to_owned(), vec![agents])],
        &["spiffe://example.org/workload/admin".to_owned()],
    );
    let engine = Engine::with_doc(SCHEMA.clone(), doc, groups, Path::new("policy.cedar"), 0);
    let agent = SpiffeId::new("spiffe://example.org/workload/agent-1").unwrap();
    let admin = SpiffeId::new("spiffe://example.org/workload/admin").unwrap();
    let task = TaskFacts {
        holder: agent.to_string(),
        task_id: "build-42".to_owned(),
        owner: "team-agents".to_owned(),
        break_glass: false,
        depth: 0,
        audiences: vec!["db".to_owned()],
    };
    let asks = [
        (
            &agent,
            Request::MintX509(MintContext {
                task_id: "build-42".to_owned(),
                ttl_seconds: 300,
                break_glass: false,
                depth: 0,
            }),
            Resource::Task(task.clone()),
        ),
        (&admin, Request::ReadTask, Resource::Task(task)),
        (
            &admin,
            Request::Admin(AdminContext {
                operation: "list_grants",
            }),
            Resource::Issuer,
        ),
    ];
    for (principal, request, resource) in asks {
        if let Ok(decision) = engine.authorize(principal, request, &resource) {
            for p in &decision.policies {
                assert!(ids.contains(p), "decision names `{p}`, not in {ids:?}");
            }
        }
    }
});
