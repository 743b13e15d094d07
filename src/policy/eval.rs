//! Evaluation: a caller, a typed [`Request`] and a [`Resource`] become a
//! [`Decision`] naming the policies that decided it. `taskmint policy eval`
//! asks the same engine with text and a JSON context ([`Engine::eval_text`]),
//! always checked against the schema.

use std::str::FromStr;

use cedar_policy::{Context, Entities, Entity, EntityUid};
use serde_json::json;

use super::{Action, Decision, Engine, PolicyError, Request, Resource, TaskFacts, render, uid};
use crate::identity::SpiffeId;

/// Parses a Cedar entity reference such as `Task::"x"`.
fn parse_uid(text: &str) -> Result<EntityUid, PolicyError> {
    EntityUid::from_str(text.trim()).map_err(|e| {
        PolicyError::Request(format!(
            "`{text}` is not an entity reference like Audience::\"db\": {e}"
        ))
    })
}

impl Engine {
    /// Decides whether `principal` may do what `request` asks on `resource`.
    /// A workload the context refers to (a delegate) is added as an entity,
    /// so policies can read its attributes.
    pub fn authorize(
        &self,
        principal: &SpiffeId,
        request: Request,
        resource: &Resource,
    ) -> Result<Decision, PolicyError> {
        let action = request.action();
        let extra: Vec<String> = request.referenced_workload().into_iter().collect();
        let context = request.into_context()?;
        self.evaluate(principal, action, resource, context, &extra, false)
    }

    /// `extra` names further workloads whose attributes policies may read.
    fn evaluate(
        &self,
        principal: &SpiffeId,
        action: Action,
        resource: &Resource,
        context: Context,
        extra: &[String],
        checked: bool,
    ) -> Result<Decision, PolicyError> {
        let principal = principal.to_string();
        let mut entities = vec![self.workload_entity(&principal)];
        for w in extra {
            if *w != principal {
                entities.push(self.workload_entity(w));
            }
        }
        let resource_uid = match resource {
            Resource::Task(t) => {
                if t.holder != principal && !extra.contains(&t.holder) {
                    entities.push(self.workload_entity(&t.holder));
                }
                entities.push(Self::task_entity(t));
                uid("Task", &t.entity_id())
            }
            Resource::Audience(a) => uid("Audience", a),
            Resource::Workload(w) => {
                if *w != principal && !extra.contains(w) {
                    entities.push(self.workload_entity(w));
                }
                uid("Workload", w)
            }
            Resource::TrustDomain(td) => uid("TrustDomain", td),
            Resource::Issuer => uid("Issuer", "taskmint"),
        };
        self.decide(
            uid("Workload", &principal),
            action,
            resource_uid,
            context,
            entities,
            checked,
        )
    }

    fn decide(
        &self,
        principal: EntityUid,
        action: Action,
        resource: EntityUid,
        context: Context,
        entities: Vec<Entity>,
        checked: bool,
    ) -> Result<Decision, PolicyError> {
        let action_uid = action.uid();
        // Typed contexts are shaped by the schema test in every build; debug
        // builds (every test) also check each request the server builds, which
        // release builds skip: it costs more than the evaluation. Text from
        // `policy eval` is always checked (`checked`).
        let schema = (checked || cfg!(debug_assertions)).then_some(&self.schema);
        let entities = Entities::from_entities(entities, schema)
            .map_err(|e| PolicyError::Request(format!("entities: {}", render(&e))))?;
        let request = cedar_policy::Request::new(principal, action_uid, resource, context, schema)
            .map_err(|e| PolicyError::Request(render(&e)))?;
        let doc = self.current.read().expect("policy lock").clone();
        let response = self.authorizer.is_authorized(&request, &doc.set, &entities);
        let mut policies: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|p| p.to_string())
            .collect();
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        // Fail closed: Cedar skips a policy that errors, so an erroring
        // `forbid` would let the call through. Any error denies, and the
        // erroring policies are the ones that decided.
        let allowed = response.decision() == cedar_policy::Decision::Allow && errors.is_empty();
        if !errors.is_empty() {
            policies = response
                .diagnostics()
                .errors()
                .map(|e| match e {
                    cedar_policy::AuthorizationError::PolicyEvaluationError(e) => {
                        e.policy_id().to_string()
                    }
                })
                .collect();
        }
        policies.sort();
        policies.dedup();
        Ok(Decision {
            allowed,
            policies,
            errors,
        })
    }

    /// Evaluates a request given as text (for `taskmint policy eval`): the
    /// resource as an entity reference; a `Task::"<holder>#<id>"` gets the
    /// attributes of a plain task of that holder unless `task` is given.
    pub fn eval_text(
        &self,
        principal: &str,
        action: &str,
        resource: &str,
        context: Option<serde_json::Value>,
    ) -> Result<Decision, PolicyError> {
        let principal = SpiffeId::new(principal.trim()).map_err(|e| {
            PolicyError::Request(format!("principal `{principal}` is not a SPIFFE ID: {e}"))
        })?;
        let action = Action::parse(action.trim()).ok_or_else(|| {
            let all: Vec<_> = Action::ALL.iter().map(|a| a.as_str()).collect();
            PolicyError::Request(format!(
                "unknown action `{action}`; one of: {}",
                all.join(", ")
            ))
        })?;
        let r = parse_uid(resource)?;
        let id = r.id().unescaped().to_owned();
        let resource = match r.type_name().to_string().as_str() {
            "Task" => {
                let (holder, task_id) = id.split_once('#').ok_or_else(|| {
                    PolicyError::Request(format!(
                        "a Task id is `<holder SPIFFE ID>#<task id>`, not `{id}`"
                    ))
                })?;
                Resource::Task(TaskFacts {
                    holder: holder.to_owned(),
                    task_id: task_id.to_owned(),
                    owner: String::new(),
                    break_glass: action == Action::BreakGlass,
                    depth: 0,
                    audiences: Vec::new(),
                })
            }
            "Audience" => Resource::Audience(id),
            "Workload" => Resource::Workload(id),
            "TrustDomain" => Resource::TrustDomain(id),
            "Issuer" => Resource::Issuer,
            other => {
                return Err(PolicyError::Request(format!(
                    "unknown resource type `{other}`; one of Task, Audience, Workload, TrustDomain, Issuer"
                )));
            }
        };
        let context = context.unwrap_or_else(|| json!({}));
        let extra: Vec<String> = context
            .as_object()
            .into_iter()
            .flat_map(|o| o.values())
            .filter_map(|v| v.pointer("/__entity/id").and_then(|id| id.as_str()))
            .map(str::to_owned)
            .collect();
        // Text goes through Cedar's JSON reader, checked against the schema,
        // for its messages.
        let context = Context::from_json_value(context, Some((&self.schema, &action.uid())))
            .map_err(|e| PolicyError::Request(format!("context: {}", render(&e))))?;
        self.evaluate(&principal, action, &resource, context, &extra, true)
    }
}
