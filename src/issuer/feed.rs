//! The revocation feed's calls on the issuer: opening a feed,
//! acknowledging it, and the delivery state of every expected subscriber.

use super::Issuer;
use super::validate::{self, validate_subscriber};
use crate::Error;
use crate::audit::{AuditDraft, decision, kind};
use crate::clock::now_unix;
use crate::identity::{Caller, TaskId};
use crate::policy::{Request, Resource, WatchContext, WatchOperation};
use crate::revocation::feed::Filter;

impl Issuer {
    /// Authorizes opening a revocation feed (and audits it). The cursor,
    /// the subscriber name (optional here, validated as acknowledgements
    /// validate it) and the filter are checked first.
    pub async fn authorize_watch(
        &self,
        caller: &Caller,
        after: Option<u64>,
        subscriber: &str,
        filter: &Filter,
    ) -> Result<(), Error> {
        if let Some(after) = after {
            validate::seq("after_seq", after)?;
        }
        if !subscriber.is_empty() {
            validate_subscriber(subscriber)?;
        }
        if let Some(td) = &filter.trust_domain {
            validate::trust_domain("trust_domain", td)?;
        }
        if let Some(id) = &filter.spiffe_id {
            validate::spiffe_id("spiffe_id", id)?;
        }
        if let Some(t) = &filter.task_id {
            TaskId::parse(t)?;
        }
        let me = caller.spiffe_id.to_string();
        let mut draft = AuditDraft::new(kind::WATCH, &me, now_unix())
            .subject(subscriber)
            .because(match after {
                Some(s) => format!("resume after seq {s}"),
                None => "snapshot".to_owned(),
            });
        draft.ref_seq = after;
        let request = Request::Watch(WatchContext {
            operation: WatchOperation::Watch,
            subscriber: subscriber.to_owned(),
        });
        self.gate
            .authorize_recorded(caller, request, &Resource::Issuer, draft)
            .await?;
        Ok(())
    }

    /// Records a subscriber's acknowledgement.
    pub async fn ack(&self, caller: &Caller, subscriber: &str, up_to: u64) -> Result<u64, Error> {
        validate_subscriber(subscriber)?;
        validate::seq("up_to_seq", up_to)?;
        let me = caller.spiffe_id.to_string();
        let draft = AuditDraft::new(kind::ACK, &me, now_unix()).subject(subscriber);
        let request = Request::Watch(WatchContext {
            operation: WatchOperation::Ack,
            subscriber: subscriber.to_owned(),
        });
        let d = self
            .gate
            .authorize(caller, request, &Resource::Issuer, &draft)
            .await?;
        // A configured name belongs to its configured SPIFFE ID; any other
        // name belongs to the first workload that acknowledged under it,
        // which the store checks on the stored row as it writes (two
        // replicas racing for a new name cannot both have it).
        // The answer names no one: who holds a name is the trail's to
        // record, not another workload's to learn.
        // An SSF receiver's acknowledgements are the transmitter's to
        // record, as it delivers.
        if self.ssf_receivers.iter().any(|r| r.name == subscriber) {
            let e = Error::PermissionDenied(format!(
                "`{subscriber}` is an SSF receiver's name; acknowledge under a name of your own"
            ));
            return Err(self
                .gate
                .refuse_as(draft, decision::DENY, e.to_string(), e)
                .await);
        }
        let configured = self.feed.subscribers.iter().find(|s| s.name == subscriber);
        let denied = || {
            Error::PermissionDenied(format!(
                "subscriber `{subscriber}` is bound to another workload; acknowledge under a name of your own"
            ))
        };
        let precise = |bound_to: &str| {
            format!("subscriber `{subscriber}` acknowledges as `{bound_to}`, not `{me}`")
        };
        if let Some(s) = configured
            && s.spiffe_id != me
        {
            let reason = precise(&s.spiffe_id);
            return Err(self
                .gate
                .refuse_as(draft, decision::DENY, reason, denied())
                .await);
        }
        let current = self.store.current_seq().await?;
        if up_to > current {
            let e = Error::InvalidArgument(format!(
                "cannot acknowledge up to {up_to}: the current sequence is {current}"
            ));
            return Err(self
                .gate
                .refuse(
                    draft.decided(decision::ALLOW, &d.policies),
                    decision::REFUSED,
                    e,
                )
                .await);
        }
        let acked = self
            .store
            .ack_within(
                &crate::store::AckRecord {
                    subscriber: subscriber.to_owned(),
                    spiffe_id: me.clone(),
                    acked_seq: up_to,
                    acked_at: now_unix(),
                },
                configured.is_some(),
                // Configured names are the operator's, not the workload's.
                if configured.is_some() {
                    u32::MAX
                } else {
                    self.limits.max_subscriber_names
                },
                draft
                    .clone()
                    .decided(decision::ALLOW, &d.policies)
                    .because(format!(
                        "`{subscriber}` enforced every revocation through seq {up_to}"
                    )),
            )
            .await;
        let a = match acked {
            Err(crate::store::StoreError::SubscriberBound { bound_to, .. }) => {
                let reason = precise(&bound_to);
                return Err(self
                    .gate
                    .refuse_as(draft, decision::DENY, reason, denied())
                    .await);
            }
            other => self.within_caps(caller, other).await?,
        };
        Ok(a.acked_seq)
    }

    /// Delivery state of every expected subscriber.
    pub async fn delivery_status(
        &self,
        caller: &Caller,
    ) -> Result<(u64, Vec<crate::revocation::delivery::SubscriberDelivery>), Error> {
        self.gate.admin(caller, "delivery_status").await?;
        let current = self.store.current_seq().await?;
        let s = crate::revocation::delivery::status(
            self.store.as_ref(),
            &self.feed,
            &self.ssf_receivers,
            now_unix(),
        )
        .await?;
        Ok((current, s))
    }
}
