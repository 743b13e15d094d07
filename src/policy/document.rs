//! Policy documents: parsing and validating policy text against the shipped
//! schema, and the engine's reload of its policy file (seen twice before it
//! is tried, recorded before it is put in force, a refusal reported once).

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{PolicyId, PolicySet, Schema, ValidationMode, Validator};
use sha2::{Digest, Sha256};

use super::{Engine, PolicyError, render};

/// A parsed, validated policy set with its ids.
#[derive(Debug, Clone)]
pub struct PolicyDoc {
    pub(super) set: PolicySet,
    /// Policy ids, in file order.
    pub ids: Vec<String>,
    /// Lowercase hex SHA-256 of the text.
    pub sha256: String,
}

impl PolicyDoc {
    /// Parses and validates policy text. Each policy is named by its `@id`
    /// annotation (or `policyN` by position); ids must be unique, and
    /// templates are refused (nothing here links them).
    pub fn parse(text: &str, schema: &Schema) -> Result<Self, PolicyError> {
        let parsed = PolicySet::from_str(text).map_err(|e| PolicyError::Parse(render(&e)))?;
        if parsed.templates().next().is_some() {
            return Err(PolicyError::Parse(
                "policy templates (with ?principal / ?resource slots) are not supported".into(),
            ));
        }
        // `policies()` has no defined order; the parser's ids (`policyN`)
        // number them in file order.
        let mut policies: Vec<_> = parsed.policies().collect();
        policies.sort_by_key(|p| {
            p.id()
                .to_string()
                .trim_start_matches("policy")
                .parse::<usize>()
                .unwrap_or(usize::MAX)
        });
        let mut set = PolicySet::new();
        let mut ids = Vec::new();
        for (i, p) in policies.into_iter().enumerate() {
            let id = p
                .annotation("id")
                .map(str::to_owned)
                .unwrap_or_else(|| format!("policy{i}"));
            // Decisions name policies by Cedar's `PolicyId`, whose text is
            // the id escaped (`escape_debug`): an id that escaping changes
            // would be audited under another name than the one loaded.
            if id.escape_debug().ne(id.chars()) {
                return Err(PolicyError::Parse(format!(
                    "policy id `{}` has quotes, backslashes, control or other \
                     unprintable characters",
                    id.escape_debug()
                )));
            }
            if ids.contains(&id) {
                return Err(PolicyError::Parse(format!(
                    "policy id `{id}` is used twice"
                )));
            }
            set.add(p.new_id(PolicyId::new(&id)))
                .map_err(|e| PolicyError::Parse(e.to_string()))?;
            ids.push(id);
        }
        if ids.is_empty() {
            // Deny by default would refuse every call: almost surely a file
            // caught empty or truncated, not an intent.
            return Err(PolicyError::Parse(
                "the file holds no policies (it would deny every call)".into(),
            ));
        }
        let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
        if !result.validation_passed() {
            let errors: Vec<String> = result
                .validation_errors()
                .map(|e| format!("policy `{}`: {e}", e.policy_id()))
                .collect();
            return Err(PolicyError::Validate(errors.join("; ")));
        }
        Ok(Self {
            set,
            ids,
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
        })
    }

    /// Reads and parses a policy file.
    pub fn load(path: &Path, schema: &Schema) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, schema)
    }
}

/// Status of the policy in force, for the status call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyStatus {
    /// The file.
    pub path: String,
    /// SHA-256 of the text in force.
    pub sha256: String,
    /// Ids of the policies in force.
    pub ids: Vec<String>,
    /// Unix seconds: when the policy in force was loaded.
    pub loaded_at: i64,
    /// The last reload failure (cleared by a successful reload).
    pub last_error: Option<String>,
    /// Unix seconds: when the last reload failed.
    pub last_error_at: Option<i64>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The file is unchanged.
    Unchanged,
    /// A new policy is in force.
    Loaded {
        /// Its hash.
        sha256: String,
        /// Its ids.
        ids: Vec<String>,
    },
    /// The file was refused; the previous policy stays in force.
    Refused(PolicyError),
}

/// What the file watcher has seen: content attempted (loaded or refused),
/// so a bad file is reported once and not on every poll; content seen once
/// and waiting for a second look.
#[derive(Debug, Default)]
pub(super) struct Seen {
    attempted: Option<String>,
    pending: Option<String>,
}

/// What a look at the policy file found (see [`Engine::attempt`]).
#[derive(Debug)]
pub enum Attempt {
    /// Nothing to do.
    Unchanged,
    /// A valid new policy, not yet in force.
    Load(Box<PolicyDoc>),
    /// The file was refused.
    Refuse(PolicyError),
}

/// The file side of the engine: a reload is looked at, recorded by the
/// caller, then applied.
impl Engine {
    /// Looks at the policy file and says what a reload would do, without
    /// changing anything: the caller records the outcome (audit) and then
    /// [`Engine::apply`]s it, so a change is never in force unrecorded.
    ///
    /// A poll (`force = false`) acts on new content only once two polls in a
    /// row have seen it, so a file caught half-written is not loaded (write
    /// policy files by atomic rename all the same); content already
    /// attempted is not attempted again. `force` (SIGHUP) attempts at once.
    pub fn attempt(&self, force: bool) -> Attempt {
        let (fingerprint, text) = match std::fs::read_to_string(&self.path) {
            Ok(t) => (hex::encode(Sha256::digest(t.as_bytes())), Ok(t)),
            Err(e) => (
                format!("unreadable: {e}"),
                Err(PolicyError::Read {
                    path: self.path.display().to_string(),
                    reason: e.to_string(),
                }),
            ),
        };
        let mut seen = self.seen.lock().expect("policy reload lock");
        {
            let mut status = self.status.lock().expect("policy status lock");
            if fingerprint == status.sha256 {
                // Back to the text in force: nothing to load, no error left.
                status.last_error = None;
                status.last_error_at = None;
                seen.attempted = None;
                seen.pending = None;
                return Attempt::Unchanged;
            }
        }
        if !force {
            if seen.attempted.as_deref() == Some(fingerprint.as_str()) {
                return Attempt::Unchanged;
            }
            if seen.pending.as_deref() != Some(fingerprint.as_str()) {
                seen.pending = Some(fingerprint);
                return Attempt::Unchanged;
            }
        }
        seen.pending = None;
        seen.attempted = Some(fingerprint);
        match text.and_then(|t| PolicyDoc::parse(&t, &self.schema)) {
            Ok(doc) => Attempt::Load(Box::new(doc)),
            Err(e) => Attempt::Refuse(e),
        }
    }

    /// Puts an [`Engine::attempt`] into effect: a loaded policy replaces the
    /// one in force; a refusal leaves it and is kept for [`Engine::status`].
    pub fn apply(&self, attempt: Attempt, now: i64) -> Reload {
        match attempt {
            Attempt::Unchanged => Reload::Unchanged,
            Attempt::Load(doc) => {
                let mut status = self.status.lock().expect("policy status lock");
                status.sha256 = doc.sha256.clone();
                status.ids = doc.ids.clone();
                status.loaded_at = now;
                status.last_error = None;
                status.last_error_at = None;
                let out = Reload::Loaded {
                    sha256: doc.sha256.clone(),
                    ids: doc.ids.clone(),
                };
                *self.current.write().expect("policy lock") = Arc::from(doc);
                out
            }
            Attempt::Refuse(e) => {
                let mut status = self.status.lock().expect("policy status lock");
                status.last_error = Some(e.to_string());
                status.last_error_at = Some(now);
                Reload::Refused(e)
            }
        }
    }

    /// Forgets the last attempt, so the next poll tries the same content
    /// again (after its outcome could not be recorded).
    pub fn forget_attempt(&self) {
        let mut seen = self.seen.lock().expect("policy reload lock");
        seen.attempted = None;
    }

    /// Attempts and applies at once (no audit): for tests and tools.
    pub fn reload(&self, force: bool, now: i64) -> Reload {
        let a = self.attempt(force);
        self.apply(a, now)
    }

    /// The policy in force and the last reload error.
    pub fn status(&self) -> PolicyStatus {
        self.status.lock().expect("policy status lock").clone()
    }
}
