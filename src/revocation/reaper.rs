//! The background duties that make access end by itself: revoke tasks whose
//! deadline passed (also those that passed while the issuer was down: the
//! first pass runs before serving), prune the log past retention, watch for
//! overdue acknowledgements, seal the audit trail, close the windows of
//! repeated audit events, and age out old tasks, credentials and (archived
//! first) audit events ([`crate::retention`]). With several replicas, only
//! the leader runs them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Revocations;
use super::delivery::{self, OverdueLog};
use crate::audit::{self, AuditDraft};
use crate::clock::now_unix;
use crate::config::{FeedConfig, ReceiverConfig};
use crate::retention::Retention;
use crate::store::{Leadership, RevokeRequest, RevokeScope, StoreError, TaskState};

/// Reason recorded for credentials of a task whose deadline passed.
pub const REASON_DEADLINE: &str = "task_deadline";

/// How often the log is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Expires every active task whose deadline is at or before now and revokes
/// its credentials (and those of tasks delegated from it); `actor` (the
/// issuer's own SPIFFE ID) is recorded in the audit trail. Returns how many
/// tasks it expired.
pub async fn expire_due_tasks(revs: &Arc<Revocations>, actor: &str) -> Result<usize, StoreError> {
    let now = now_unix();
    let due = revs.store().due_tasks(now).await?;
    for (holder, task_id) in &due {
        let events = revs
            .revoke(&RevokeRequest {
                scope: RevokeScope::Task {
                    holder: holder.clone(),
                    task_id: task_id.clone(),
                },
                reason: REASON_DEADLINE.into(),
                now,
                end_task: Some(TaskState::Expired),
                cascade: true,
                audit: AuditDraft::new(audit::kind::TASK_EXPIRED, actor, now)
                    .task(holder, task_id, false)
                    .because("the task reached its deadline"),
            })
            .await?;
        tracing::info!(%holder, task = %task_id, revoked_events = events.len(), "task deadline reached");
    }
    Ok(due.len())
}

/// Runs until `shutdown` flips: deadlines every `feed.reaper_interval`,
/// delivery (of the feed's subscribers and the SSF `receivers`) every
/// interval, pruning every minute — while this process leads. Every replica
/// runs this loop; the one holding the lead does the work, and the others
/// take over within an interval of its loss. Whether this process leads is
/// published on [`Revocations::leading`], for the other leader-only work
/// (SSF pushes).
pub async fn run(
    revs: Arc<Revocations>,
    feed: FeedConfig,
    receivers: Vec<ReceiverConfig>,
    retention: Retention,
    actor: String,
    mut lead: Leadership,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(feed.reaper_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut overdue = OverdueLog::default();
    let mut last_prune: Option<Instant> = None;
    let mut leading = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        let now_leading = match lead.hold().await {
            Ok(l) => l,
            Err(e) => {
                if leading {
                    tracing::warn!(error = %e, "lost the lead of the background duties");
                }
                false
            }
        };
        if now_leading != leading {
            if now_leading {
                tracing::info!("leading the background duties (deadlines, delivery, pruning)");
                // What the last leader already recorded is in the trail;
                // start afresh rather than trust an old view.
                overdue = OverdueLog::default();
            } else {
                tracing::info!("another replica leads the background duties");
            }
            leading = now_leading;
            revs.set_leading(leading);
        }
        if !leading {
            continue;
        }
        duties(
            &revs,
            &feed,
            &receivers,
            &retention,
            &actor,
            &mut overdue,
            &mut last_prune,
        )
        .await;
    }
    revs.set_leading(false);
    lead.release().await;
}

/// One round of the leader's duties. Each is safe to run twice (by a leader
/// that has just lost its lead and its successor): ending an ended task
/// records nothing, an overdue delivery is recorded once per subscriber and
/// revocation, sealing takes the audit head's lock, and pruning removes
/// what is already gone.
async fn duties(
    revs: &Arc<Revocations>,
    feed: &FeedConfig,
    receivers: &[ReceiverConfig],
    retention: &Retention,
    actor: &str,
    overdue: &mut OverdueLog,
    last_prune: &mut Option<Instant>,
) {
    if let Err(e) = expire_due_tasks(revs, actor).await {
        tracing::error!(error = %e, "deadline reaper failed");
    }
    match delivery::status(revs.store().as_ref(), feed, receivers, now_unix()).await {
        Ok(state) => {
            for event in overdue.observe(&state, actor, now_unix()) {
                if let Err(e) = revs.store().append_audit_once(event).await {
                    tracing::error!(error = %e, "cannot audit overdue delivery");
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "delivery check failed"),
    }
    // Chain the counts of repeated events whose window closed.
    if let Err(e) = retention
        .close_windows(revs.store().as_ref(), now_unix())
        .await
    {
        tracing::error!(error = %e, "cannot close the windows of repeated audit events");
    }
    // Chain what was committed since the last round (PostgreSQL; a no-op
    // where events are chained as they are written).
    if let Err(e) = revs.store().seal_audit().await {
        tracing::error!(error = %e, "cannot seal the audit trail");
    }
    if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
        *last_prune = Some(Instant::now());
        let before = now_unix() - feed.retention.as_secs() as i64;
        match revs.store().prune_events(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "pruned expired revocation events"),
            Err(e) => tracing::error!(error = %e, "pruning failed"),
        }
        match retention.prune(revs.store().as_ref(), now_unix()).await {
            Ok(r) if r == Default::default() => {}
            Ok(r) => tracing::info!(
                credentials = r.records.credentials,
                tasks = r.records.tasks,
                audit_events = r.audit_events,
                "retention: aged-out records deleted"
            ),
            Err(e) => tracing::error!(error = %e, "retention pruning failed"),
        }
    }
}
