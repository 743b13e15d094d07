//! What policies read besides the context: the caller's groups, the facts
//! of a task, the resource of a request, and the Cedar entities built from
//! them (a workload's trust domain, path and groups; a task's attributes).

use std::collections::{HashMap, HashSet};

use cedar_policy::{Entity, EntityUid, RestrictedExpression};

use super::{ADMINS_GROUP, Engine, uid};
use crate::identity::SpiffePattern;

/// What a policy needs to know about a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFacts {
    /// SPIFFE ID of the workload holding the task.
    pub holder: String,
    /// The task id.
    pub task_id: String,
    /// Accountable owner; empty if none.
    pub owner: String,
    /// Begun through break-glass.
    pub break_glass: bool,
    /// Delegation depth (0 = begun directly).
    pub depth: u32,
    /// Declared audiences (empty = not restricted).
    pub audiences: Vec<String>,
}

impl TaskFacts {
    /// The Cedar entity id: `<holder>#<task id>` (task ids are scoped to their holder).
    pub fn entity_id(&self) -> String {
        format!("{}#{}", self.holder, self.task_id)
    }
}

/// The resource of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// A task.
    Task(TaskFacts),
    /// A JWT audience.
    Audience(String),
    /// A workload (revocation of all its credentials).
    Workload(String),
    /// A trust domain.
    TrustDomain(String),
    /// The issuer itself (watch, admin).
    Issuer,
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Task(t) => write!(f, "Task::{:?}", t.entity_id()),
            Self::Audience(a) => write!(f, "Audience::{a:?}"),
            Self::Workload(w) => write!(f, "Workload::{w:?}"),
            Self::TrustDomain(t) => write!(f, "TrustDomain::{t:?}"),
            Self::Issuer => f.write_str("Issuer::\"taskmint\""),
        }
    }
}

/// Group membership from config: a workload is in every group one of whose
/// patterns matches its SPIFFE ID.
#[derive(Debug, Clone, Default)]
pub struct Groups(Vec<(String, Vec<SpiffePattern>)>);

impl Groups {
    /// Groups from `(name, patterns)` pairs plus the admins group.
    pub fn new(groups: Vec<(String, Vec<SpiffePattern>)>, admins: &[String]) -> Self {
        let mut all = groups;
        let admin_patterns: Vec<_> = admins
            .iter()
            .filter_map(|a| SpiffePattern::parse(a).ok())
            .collect();
        if let Some((_, p)) = all.iter_mut().find(|(n, _)| n == ADMINS_GROUP) {
            p.extend(admin_patterns);
        } else {
            all.push((ADMINS_GROUP.to_owned(), admin_patterns));
        }
        Self(all)
    }

    /// The groups `id` is in.
    pub fn of(&self, id: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(_, ps)| ps.iter().any(|p| p.matches(id)))
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

/// The Cedar entities a request carries.
impl Engine {
    pub(super) fn workload_entity(&self, id: &str) -> Entity {
        let (td, path) = split_spiffe(id);
        let segments = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| RestrictedExpression::new_string(s.to_owned()));
        let attrs = HashMap::from([
            (
                "trust_domain".to_owned(),
                RestrictedExpression::new_string(td.to_owned()),
            ),
            (
                "path".to_owned(),
                RestrictedExpression::new_string(path.to_owned()),
            ),
            (
                "segments".to_owned(),
                RestrictedExpression::new_set(segments),
            ),
        ]);
        let parents: HashSet<EntityUid> = self
            .groups
            .of(id)
            .into_iter()
            .map(|g| uid("Group", g))
            .collect();
        Entity::new(uid("Workload", id), attrs, parents).expect("literal attributes")
    }

    pub(super) fn task_entity(t: &TaskFacts) -> Entity {
        let attrs = HashMap::from([
            (
                "task_id".to_owned(),
                RestrictedExpression::new_string(t.task_id.clone()),
            ),
            (
                "holder".to_owned(),
                RestrictedExpression::new_entity_uid(uid("Workload", &t.holder)),
            ),
            (
                "owner".to_owned(),
                RestrictedExpression::new_string(t.owner.clone()),
            ),
            (
                "break_glass".to_owned(),
                RestrictedExpression::new_bool(t.break_glass),
            ),
            (
                "depth".to_owned(),
                RestrictedExpression::new_long(i64::from(t.depth)),
            ),
            (
                "audiences".to_owned(),
                RestrictedExpression::new_set(
                    t.audiences
                        .iter()
                        .map(|a| RestrictedExpression::new_string(a.clone())),
                ),
            ),
        ]);
        Entity::new(uid("Task", &t.entity_id()), attrs, HashSet::new()).expect("literal attributes")
    }
}

fn split_spiffe(id: &str) -> (&str, &str) {
    let rest = id.strip_prefix("spiffe://").unwrap_or(id);
    match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    }
}
