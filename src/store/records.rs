//! The records the store keeps: tasks, credentials, revocation events,
//! acknowledgements, CRL entries, and what a refused write says. Plain data;
//! every backend reads and writes these.

use std::collections::BTreeMap;

use super::StoreError;
use crate::audit::AuditDraft;

/// The kind of a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    /// X.509-SVID.
    X509,
    /// JWT-SVID.
    Jwt,
}

impl CredentialKind {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::X509 => "x509",
            Self::Jwt => "jwt",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "x509" => Ok(Self::X509),
            "jwt" => Ok(Self::Jwt),
            other => Err(StoreError::Corrupt(format!("credential kind `{other}`"))),
        }
    }
}

/// One minted credential, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRecord {
    /// Serial hex (X.509) or `jti` (JWT).
    pub id: String,
    /// X.509 or JWT.
    pub kind: CredentialKind,
    /// The SPIFFE ID the credential names.
    pub spiffe_id: String,
    /// Owner of the task (a SPIFFE ID).
    pub task_holder: String,
    /// The task id, scoped to its holder.
    pub task_id: String,
    /// JWT audience; `None` for X.509.
    pub audience: Option<String>,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Lowercase hex SHA-256 of the caller's mTLS leaf.
    pub caller_cert_sha256: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// The credential this one renews.
    pub predecessor: Option<String>,
    /// How many renewals separate this credential from its lineage's first.
    pub renewal_count: u32,
    /// Revocation, if any.
    pub revocation: Option<Revocation>,
}

/// Why and when a credential was revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Unix seconds.
    pub revoked_at: i64,
    /// Reason text, e.g. `task_completed`.
    pub reason: String,
    /// The revocation event that revoked it.
    pub seq: u64,
}

/// Lifecycle state of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Credentials may be minted until the deadline.
    Active,
    /// Completed by its holder or an admin.
    Completed,
    /// Its deadline passed.
    Expired,
}

impl TaskState {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Completed => "completed",
            Self::Expired => "expired",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "active" => Ok(Self::Active),
            "completed" => Ok(Self::Completed),
            "expired" => Ok(Self::Expired),
            other => Err(StoreError::Corrupt(format!("task state `{other}`"))),
        }
    }
}

/// A task row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    /// The holder: the SPIFFE ID the task's credentials are bound to.
    pub holder: String,
    /// The task id.
    pub task_id: String,
    /// Unix seconds: begun.
    pub created_at: i64,
    /// What the task is for.
    pub purpose: String,
    /// Ticket or change reference.
    pub ticket: String,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// Begun by a mint rather than by `BeginTask`.
    pub implicit: bool,
    /// Unix seconds: no credential of the task outlives this.
    pub deadline: i64,
    /// Lifecycle state.
    pub state: TaskState,
    /// Unix seconds: completed or expired.
    pub ended_at: Option<i64>,
    /// Accountable owner (team or person); empty if none.
    pub owner: String,
    /// Begun through break-glass.
    pub break_glass: bool,
    /// Break-glass justification.
    pub justification: String,
    /// Break-glass review, once an admin marked it reviewed.
    pub review: Option<Review>,
    /// The task this one was delegated from: (holder, task id).
    pub parent: Option<(String, String)>,
    /// Delegation depth: 0 for a task begun directly.
    pub depth: u32,
    /// Declared audiences; empty = not restricted.
    pub audiences: Vec<String>,
}

impl TaskRecord {
    /// The workload whose `limits.max_active_tasks` this task counts
    /// against: its delegator for a delegated task (who chose to create it,
    /// so no workload can fill another's), else its holder.
    pub fn counts_against(&self) -> &str {
        self.parent
            .as_ref()
            .map_or(&self.holder, |(holder, _)| holder)
    }

    /// A plain active task with nothing but its key and times set.
    pub fn new(holder: &str, task_id: &str, created_at: i64, deadline: i64) -> Self {
        Self {
            holder: holder.to_owned(),
            task_id: task_id.to_owned(),
            created_at,
            purpose: String::new(),
            ticket: String::new(),
            labels: BTreeMap::new(),
            implicit: true,
            deadline,
            state: TaskState::Active,
            ended_at: None,
            owner: String::new(),
            break_glass: false,
            justification: String::new(),
            review: None,
            parent: None,
            depth: 0,
            audiences: Vec::new(),
        }
    }
}

/// An admin's review of a break-glass task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    /// Who reviewed it (SPIFFE ID).
    pub by: String,
    /// Unix seconds.
    pub at: i64,
    /// What the reviewer noted.
    pub note: String,
}

/// Filters for the grant inventory (all optional, combined with AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantFilter {
    /// Tasks held by this SPIFFE ID.
    pub holder: Option<String>,
    /// Tasks with this accountable owner.
    pub owner: Option<String>,
    /// Tasks with this id.
    pub task_id: Option<String>,
    /// Only break-glass tasks.
    pub break_glass_only: bool,
}

/// What a revocation covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeScope {
    /// One credential.
    Credential(String),
    /// Every credential of a task.
    Task {
        /// The holder's SPIFFE ID.
        holder: String,
        /// Task id.
        task_id: String,
    },
    /// Every credential naming a SPIFFE ID.
    Workload(String),
    /// Every credential of a trust domain.
    TrustDomain(String),
}

impl RevokeScope {
    /// The event kind this scope produces.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Credential(_) => "credential",
            Self::Task { .. } => "task",
            Self::Workload(_) => "workload",
            Self::TrustDomain(_) => "trust_domain",
        }
    }
}

/// One entry of the revocation log: the credentials of one task revoked at
/// once. A workload or trust-domain revocation yields one event per task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationEvent {
    /// Gap-free, in commit order.
    pub seq: u64,
    /// `credential`, `task`, `workload` or `trust_domain`: what was asked.
    pub kind: String,
    /// Revoked credential ids.
    pub credential_ids: Vec<String>,
    /// The task's holder.
    pub task_holder: String,
    /// Task id.
    pub task_id: String,
    /// SPIFFE ID the credentials name.
    pub spiffe_id: String,
    /// Trust domain of `spiffe_id`.
    pub trust_domain: String,
    /// Why.
    pub reason: String,
    /// Unix seconds.
    pub revoked_at: i64,
    /// Unix seconds: latest expiry of the revoked credentials; enforcers keep
    /// a deny entry until then.
    pub expires_at: i64,
    /// The event as a signed Security Event Token.
    pub set_jwt: String,
}

/// Signs a revocation event as a SET (given everything but `set_jwt`). Owned,
/// because a backend may sign on its writer thread, inside the transaction
/// that hands out the sequence number.
pub type SetSigner =
    std::sync::Arc<dyn Fn(&RevocationEvent) -> Result<String, String> + Send + Sync>;

/// A revocation to carry out.
#[derive(Debug, Clone)]
pub struct RevokeRequest {
    /// What to revoke.
    pub scope: RevokeScope,
    /// Why.
    pub reason: String,
    /// Unix seconds.
    pub now: i64,
    /// Also end the task (for `Task` scope): completed or expired. Ending a
    /// task closes out all its unrevoked credentials, expired ones included.
    pub end_task: Option<TaskState>,
    /// Apply the same to every task delegated from the tasks in scope
    /// (`Task` and `Workload` scopes), transitively.
    pub cascade: bool,
    /// The audit event of the request itself, written first in the same
    /// transaction; one `revoked` event per revocation event follows it.
    pub audit: AuditDraft,
}

/// A subscriber's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRecord {
    /// Subscriber name.
    pub subscriber: String,
    /// Who acknowledged.
    pub spiffe_id: String,
    /// Highest acknowledged sequence.
    pub acked_seq: u64,
    /// Unix seconds.
    pub acked_at: i64,
}

/// A revoked, unexpired X.509 credential for the CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlEntry {
    /// Serial, hex.
    pub serial_hex: String,
    /// Unix seconds.
    pub revoked_at: i64,
    /// Reason text.
    pub reason: String,
}

/// The CRL every replica serves, as stored: signed once per change of what
/// it lists and replaced only by compare-and-set on its number (see
/// [`Store::store_crl`](super::Store::store_crl)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCrl {
    /// CRL number. Before the first CRL is stored it is the last number an
    /// older taskmint handed out (0 on a new database) and `der` is empty.
    pub number: u64,
    /// SHA-256 (hex) of what the CRL lists and who signed it: a CRL with
    /// the same hash lists the same.
    pub content_hash: String,
    /// The signed CRL, DER.
    pub der: Vec<u8>,
    /// Unix seconds.
    pub this_update: i64,
    /// Unix seconds.
    pub next_update: i64,
}

/// Why a credential could not be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordRefusal {
    /// The task is completed or expired.
    TaskEnded(TaskState),
    /// The predecessor already has a successor.
    AlreadyRenewed(String),
    /// The predecessor was revoked in the meantime.
    PredecessorRevoked,
    /// The task already has this many active credentials (the limit).
    TooManyActive(u32),
}

/// What marking a break-glass task reviewed did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewOutcome {
    /// No such task.
    NotFound,
    /// The task was not begun through break-glass.
    NotBreakGlass,
    /// It was reviewed before; nothing changed.
    AlreadyReviewed(TaskRecord),
    /// Marked now.
    Reviewed(TaskRecord),
}

/// Where the audit trail starts in the store: every event through `seq` was
/// archived and then deleted (see [`Store::commit_audit_prune`](super::Store::commit_audit_prune)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCheckpoint {
    /// The last pruned event (0: nothing pruned).
    pub seq: u64,
    /// Its hash ([`GENESIS`](crate::audit::GENESIS) when nothing was pruned):
    /// the first stored event's `prev_hash`.
    pub hash: String,
    /// A prune in progress: events `(seq, archiving_to]` are being archived,
    /// and no other range may be pruned until this one commits.
    pub archiving_to: Option<u64>,
}

/// What one retention batch deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrunedRecords {
    /// Credentials that expired before the cutoff.
    pub credentials: u64,
    /// Tasks that ended before the cutoff and hold no credential any more.
    pub tasks: u64,
}

/// One page of a keyset-paged listing: the rows, and the key to read the
/// next page after (`None` on the last page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T, K> {
    /// The rows, in the listing's order.
    pub rows: Vec<T>,
    /// Where the next page starts (exclusive); `None` when this was the last.
    pub next: Option<K>,
}

impl<T, K> Page<T, K> {
    /// A page of `rows` read with `limit`: full pages continue after the key
    /// of their last row.
    pub fn of(rows: Vec<T>, limit: u32, key: impl Fn(&T) -> K) -> Self {
        let next = match rows.last() {
            Some(last) if rows.len() as u64 >= u64::from(limit) => Some(key(last)),
            _ => None,
        };
        Self { rows, next }
    }
}
