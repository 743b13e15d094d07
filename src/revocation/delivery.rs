//! Delivery evidence: which expected subscribers have acknowledged which
//! revocations. An event not acknowledged by an expected subscriber within
//! the ack deadline makes that subscriber overdue: the "cleanup failed"
//! signal, reported in `GetDeliveryStatus` and logged at warn.
//!
//! The expected are the configured feed subscribers and the SSF receivers
//! (`[[ssf.receivers]]`), whose acknowledgements the transmitter records
//! under their names as they poll or as pushes are accepted.

use std::collections::HashMap;

use crate::config::{FeedConfig, ReceiverConfig, SsfDelivery};
use crate::store::{Store, StoreError};

/// One expected subscriber's delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberDelivery {
    /// Name.
    pub name: String,
    /// Expected SPIFFE ID; empty for an SSF receiver.
    pub spiffe_id: String,
    /// How an SSF receiver gets its SETs; `None` for a feed subscriber.
    pub ssf: Option<SsfDelivery>,
    /// Highest acknowledged sequence.
    pub acked_seq: u64,
    /// Unix seconds of the last acknowledgement; 0 if never.
    pub acked_at: i64,
    /// The oldest event it has not acknowledged: (seq, revoked_at).
    pub oldest_unacked: Option<(u64, i64)>,
    /// Unix seconds since when it is overdue.
    pub overdue_since: Option<i64>,
}

impl SubscriberDelivery {
    /// Who it is, for logs: its SPIFFE ID, or how an SSF receiver is
    /// delivered to.
    pub fn who(&self) -> String {
        match self.ssf {
            Some(d) => format!("SSF {} receiver", d.as_str()),
            None => self.spiffe_id.clone(),
        }
    }
}

/// The delivery state of every expected subscriber and SSF receiver at
/// `now`.
pub async fn status(
    store: &dyn Store,
    feed: &FeedConfig,
    receivers: &[ReceiverConfig],
    now: i64,
) -> Result<Vec<SubscriberDelivery>, StoreError> {
    let acks: HashMap<String, _> = store
        .acks()
        .await?
        .into_iter()
        .map(|a| (a.subscriber.clone(), a))
        .collect();
    let deadline = feed.ack_deadline.as_secs() as i64;
    let pruned = store.pruned_through().await?;
    let expected = feed
        .subscribers
        .iter()
        .map(|s| (&s.name, s.spiffe_id.as_str(), None))
        .chain(receivers.iter().map(|r| (&r.name, "", Some(r.delivery))));
    let mut out = Vec::with_capacity(feed.subscribers.len() + receivers.len());
    for (name, spiffe_id, ssf) in expected {
        let (acked_seq, acked_at) = acks
            .get(name)
            .map(|a| (a.acked_seq, a.acked_at))
            .unwrap_or((0, 0));
        let (oldest, overdue_since) = if acked_seq < pruned {
            // What it never acknowledged was pruned (retention after expiry,
            // far past any ack deadline): still overdue, since at least the
            // retention horizon.
            (
                Some((acked_seq + 1, 0)),
                Some(now - feed.retention.as_secs() as i64),
            )
        } else {
            let oldest = store
                .events_after(acked_seq, 1)
                .await?
                .first()
                .map(|e| (e.seq, e.revoked_at));
            (
                oldest,
                oldest
                    .map(|(_, at)| at + deadline)
                    .filter(|due| *due <= now),
            )
        };
        out.push(SubscriberDelivery {
            name: name.clone(),
            spiffe_id: spiffe_id.to_owned(),
            ssf,
            acked_seq,
            acked_at,
            oldest_unacked: oldest,
            overdue_since,
        });
    }
    Ok(out)
}

/// Remembers which subscribers were overdue, to log transitions once.
#[derive(Debug, Default)]
pub struct OverdueLog {
    overdue: HashMap<String, u64>,
}

impl OverdueLog {
    /// Logs subscribers that became overdue (warn) or caught up (info);
    /// returns an audit event for each that became overdue.
    pub fn observe(
        &mut self,
        state: &[SubscriberDelivery],
        actor: &str,
        now: i64,
    ) -> Vec<crate::audit::AuditDraft> {
        let mut events = Vec::new();
        crate::ops::metrics::get()
            .delivery_overdue(state.iter().filter(|s| s.overdue_since.is_some()).count());
        for s in state {
            match (s.overdue_since, self.overdue.get(&s.name)) {
                (Some(_), None) => {
                    let seq = s.oldest_unacked.map(|(q, _)| q).unwrap_or(0);
                    tracing::warn!(
                        subscriber = %s.name,
                        who = %s.who(),
                        oldest_unacked_seq = seq,
                        acked_seq = s.acked_seq,
                        "revocation not acknowledged within the ack deadline: cleanup may have failed"
                    );
                    self.overdue.insert(s.name.clone(), seq);
                    let mut e = crate::audit::AuditDraft::new(
                        crate::audit::kind::DELIVERY_OVERDUE,
                        actor,
                        now,
                    )
                    .subject(&s.name)
                    .because(format!(
                        "`{}` ({}) has not acknowledged seq {seq} within the ack deadline (acknowledged through {})",
                        s.name, s.who(), s.acked_seq
                    ));
                    e.ref_seq = Some(seq);
                    events.push(e);
                }
                (None, Some(_)) => {
                    tracing::info!(subscriber = %s.name, acked_seq = s.acked_seq, "subscriber caught up on acknowledgements");
                    self.overdue.remove(&s.name);
                }
                _ => {}
            }
        }
        events
    }
}
