//! Administration: the inventory of grants, the audit trail and a task's
//! timeline, the break-glass review list, and the policy in force (status,
//! reload, the record of it at start).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;

use super::validate::{self, check_text};
use super::{Issuer, TaskRef};
use crate::Error;
use crate::audit::{AuditDraft, AuditEvent, decision, kind};
use crate::clock::{now_unix, rfc3339};
use crate::identity::Caller;
use crate::policy::{self, PolicyStatus, Reload};
use crate::store::{CredentialRecord, GrantFilter, Page, Review, ReviewOutcome, TaskRecord};

/// Largest page of a listing (inventory, timeline, break-glass list).
pub const MAX_PAGE_SIZE: u32 = 500;

/// Most audit events one export returns.
pub const MAX_EXPORT_LIMIT: u32 = 1000;

/// Rows a listing reads for `page_size` (0: the largest page).
fn page_limit(page_size: u32) -> u32 {
    match page_size {
        0 => MAX_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

fn bad_token() -> Error {
    Error::InvalidArgument(
        "page_token is not one this server returned; start again without one".into(),
    )
}

/// A page token's content (`None` for the first page).
fn decode_token(page_token: &str) -> Result<Option<String>, Error> {
    if page_token.is_empty() {
        return Ok(None);
    }
    let raw = B64URL.decode(page_token).map_err(|_| bad_token())?;
    String::from_utf8(raw).map(Some).map_err(|_| bad_token())
}

fn encode_token(content: &str) -> String {
    B64URL.encode(content)
}

/// An active task and its active credentials (the inventory).
#[derive(Debug, Clone)]
pub struct Grant {
    /// The task.
    pub task: TaskRecord,
    /// Its unrevoked, unexpired credentials.
    pub credentials: Vec<CredentialRecord>,
    /// Seconds until the task's deadline.
    pub remaining: i64,
}

/// A task's story from the audit trail.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// The task now.
    pub task: TaskRecord,
    /// A page of the audit events about it, in order.
    pub events: Vec<AuditEvent>,
    /// For each revocation of it in the page (by sequence): the first
    /// acknowledgement of each subscriber that covers it.
    pub acks: Vec<(u64, Vec<AuditEvent>)>,
}

// Reading and reviewing what was granted.
impl Issuer {
    /// The inventory: active tasks with their active credentials, a page at a
    /// time (`page_token` is the last page's `next`).
    pub async fn list_grants(
        &self,
        caller: &Caller,
        filter: GrantFilter,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<Grant>, String), Error> {
        self.gate.admin(caller, "list_grants").await?;
        let page_size = validate::page_size("page_size", page_size, MAX_PAGE_SIZE)?;
        if let Some(h) = &filter.holder {
            validate::spiffe_id("holder", h)?;
        }
        if let Some(o) = &filter.owner {
            check_text("owner", o, 256)?;
        }
        if let Some(t) = &filter.task_id {
            crate::identity::TaskId::parse(t)?;
        }
        let limit = match page_size {
            0 => 100,
            n => n.min(MAX_PAGE_SIZE),
        };
        let after = match decode_token(page_token)? {
            None => None,
            Some(text) => {
                let (o, t) = text.split_once('\n').ok_or_else(bad_token)?;
                Some((o.to_owned(), t.to_owned()))
            }
        };
        let now = now_unix();
        let tasks = self.store.active_tasks(&filter, now, after, limit).await?;
        let next = match tasks.last() {
            Some(t) if tasks.len() as u32 == limit => {
                encode_token(&format!("{}\n{}", t.holder, t.task_id))
            }
            _ => String::new(),
        };
        let mut grants = Vec::with_capacity(tasks.len());
        for t in tasks {
            let credentials = self
                .store
                .task_credentials(&t.holder, &t.task_id)
                .await?
                .into_iter()
                .filter(|c| c.revocation.is_none() && c.not_after > now)
                .collect();
            grants.push(Grant {
                remaining: t.deadline - now,
                task: t,
                credentials,
            });
        }
        Ok((grants, next))
    }

    /// The audit trail after `after`, at most `limit` events, with the head.
    pub async fn audit_export(
        &self,
        caller: &Caller,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<AuditEvent>, Option<(u64, String)>), Error> {
        self.gate.admin(caller, "audit_export").await?;
        // Sequences are stored as signed 64-bit integers: a larger cursor
        // would wrap around to the start of the trail.
        validate::seq("after_seq", after)?;
        let limit = validate::page_size("limit", limit, MAX_EXPORT_LIMIT)?.max(1);
        let events = self.store.audit_after(after, limit).await?;
        Ok((events, self.store.audit_head().await?))
    }

    /// A page of a task's timeline: audit events about it (since it was
    /// begun), and who acknowledged each of its revocations in the page.
    pub async fn timeline(
        &self,
        caller: &Caller,
        r: TaskRef,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Timeline, String), Error> {
        let (task, holder) = self.holder_of(caller, &r)?;
        let t = self.find_task(&holder, &task).await?;
        self.read_task(caller, &t, "timeline read").await?;
        let limit = page_limit(page_size);
        let after = match decode_token(page_token)? {
            None => 0,
            Some(text) => text.parse::<u64>().map_err(|_| bad_token())?,
        };
        let events = self
            .store
            .task_audit(&holder, task.as_str(), t.created_at, after, limit)
            .await?;
        let next = Page::of(events, limit, |e| e.seq);
        let mut acks = Vec::new();
        for e in &next.rows {
            if e.body.kind == kind::REVOKED
                && let Some(seq) = e.body.ref_seq
            {
                acks.push((seq, self.store.acks_covering(seq).await?));
            }
        }
        let token = next.next.map(|s| encode_token(&s.to_string()));
        Ok((
            Timeline {
                task: t,
                events: next.rows,
                acks,
            },
            token.unwrap_or_default(),
        ))
    }

    /// Break-glass tasks awaiting review (or all of them), newest first, a
    /// page at a time.
    pub async fn break_glass_list(
        &self,
        caller: &Caller,
        include_reviewed: bool,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<TaskRecord>, String), Error> {
        self.gate.admin(caller, "review_list").await?;
        let limit = page_limit(page_size);
        let after = match decode_token(page_token)? {
            None => None,
            Some(text) => {
                let mut parts = text.splitn(3, '\n');
                let (Some(at), Some(holder), Some(task)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err(bad_token());
                };
                let at = at.parse::<i64>().map_err(|_| bad_token())?;
                Some((at, holder.to_owned(), task.to_owned()))
            }
        };
        let tasks = self
            .store
            .break_glass_tasks(include_reviewed, after, limit)
            .await?;
        let page = Page::of(tasks, limit, |t| {
            encode_token(&format!("{}\n{}\n{}", t.created_at, t.holder, t.task_id))
        });
        Ok((page.rows, page.next.unwrap_or_default()))
    }

    /// Marks a break-glass task reviewed.
    pub async fn mark_reviewed(
        &self,
        caller: &Caller,
        r: TaskRef,
        note: &str,
    ) -> Result<TaskRecord, Error> {
        check_text("note", note, 1024)?;
        let (task, holder) = self.holder_of(caller, &r)?;
        let d = self.gate.admin(caller, "mark_reviewed").await?;
        let now = now_unix();
        let me = caller.spiffe_id.to_string();
        // Separation of duties: whoever opened the break-glass access (the
        // task's holder, or a holder up its delegation chain) does not
        // review it.
        if let Some(t) = self.store.task(&holder, task.as_str()).await?
            && t.break_glass
            && self.opened_by(&t, &me).await?
        {
            let e = Error::PermissionDenied(format!(
                "`{me}` opened break-glass task `{task}` and may not review it; another admin must"
            ));
            let draft = AuditDraft::new(kind::REVIEW, &me, now).task(&holder, task.as_str(), true);
            return Err(self.gate.refuse(draft, decision::DENY, e).await);
        }
        let review = Review {
            by: me.clone(),
            at: now,
            note: note.to_owned(),
        };
        let event = AuditDraft::new(kind::REVIEW, &me, now)
            .task(&holder, task.as_str(), true)
            .decided(decision::ALLOW, &d.policies)
            .because(if note.is_empty() {
                "marked reviewed".to_owned()
            } else {
                format!("marked reviewed: {note}")
            });
        match self
            .store
            .mark_reviewed(&holder, task.as_str(), &review, event)
            .await?
        {
            ReviewOutcome::Reviewed(t) => Ok(t),
            ReviewOutcome::AlreadyReviewed(t) => Err(Error::FailedPrecondition(format!(
                "task `{task}` was already reviewed by `{}` at {}",
                t.review.as_ref().map(|r| r.by.as_str()).unwrap_or_default(),
                rfc3339(t.review.as_ref().map(|r| r.at).unwrap_or_default())
            ))),
            ReviewOutcome::NotBreakGlass => Err(Error::FailedPrecondition(format!(
                "task `{task}` of `{holder}` was not begun through break-glass"
            ))),
            ReviewOutcome::NotFound => Err(Error::NotFound(format!(
                "task `{task}` of `{holder}` is unknown"
            ))),
        }
    }
}

impl Issuer {
    /// Whether `who` holds `t` or a task it was delegated from.
    async fn opened_by(&self, t: &TaskRecord, who: &str) -> Result<bool, Error> {
        if t.holder == who {
            return Ok(true);
        }
        let mut next = t.parent.clone();
        // Depth bounds the walk; a missing parent ends it.
        for _ in 0..=t.depth {
            let Some((holder, task_id)) = next else {
                break;
            };
            if holder == who {
                return Ok(true);
            }
            next = self
                .store
                .task(&holder, &task_id)
                .await?
                .and_then(|p| p.parent);
        }
        Ok(false)
    }
}

// The policy in force.
impl Issuer {
    /// The policy in force and the last reload error.
    pub async fn policy_status(&self, caller: &Caller) -> Result<PolicyStatus, Error> {
        self.gate.admin(caller, "policy_status").await?;
        Ok(self.gate.policy().status())
    }

    /// Re-reads the policy file (`force`: now, as on SIGHUP; otherwise once
    /// new content is seen twice). A change is audited before it is put in
    /// force; a refusal is logged at error and audited, and the policy in
    /// force stays.
    pub async fn reload_policy(&self, force: bool) -> Result<Reload, Error> {
        let now = now_unix();
        let attempt = self.gate.policy().attempt(force);
        let event = AuditDraft::new(kind::POLICY_RELOAD, &self.jwt_issuer, now);
        let event = match &attempt {
            policy::Attempt::Unchanged => return Ok(Reload::Unchanged),
            policy::Attempt::Load(doc) => event
                .decided(decision::ALLOW, &doc.ids)
                .because(format!("policy sha256 {} in force", doc.sha256)),
            policy::Attempt::Refuse(e) => event
                .decided(decision::REFUSED, &[])
                .because(format!("{e}; the previous policy stays in force")),
        };
        if let Err(e) = self.store.append_audit(&[event]).await {
            // Not recorded, so not applied: the next poll tries again.
            self.gate.policy().forget_attempt();
            return Err(e.into());
        }
        let r = self.gate.policy().apply(attempt, now);
        match &r {
            Reload::Loaded { sha256, ids } => {
                tracing::info!(%sha256, policies = ids.len(), "policy reloaded")
            }
            Reload::Refused(e) => {
                crate::ops::metrics::get().policy_reload_error();
                tracing::error!(error = %e, "policy file refused; the previous policy stays in force")
            }
            Reload::Unchanged => {}
        }
        Ok(r)
    }

    /// Records the policy in force at start (a file edited while the issuer
    /// was down shows up in the trail by its hash).
    pub async fn audit_policy_in_force(&self) -> Result<(), crate::store::StoreError> {
        let st = self.gate.policy().status();
        let event = AuditDraft::new(kind::POLICY_RELOAD, &self.jwt_issuer, now_unix())
            .decided(decision::ALLOW, &st.ids)
            .because(format!("policy sha256 {} in force at start", st.sha256));
        self.store.append_audit(&[event]).await?;
        Ok(())
    }
}
