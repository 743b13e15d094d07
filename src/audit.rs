//! The audit trail: one append-only, hash-chained log of every decision and
//! every change of state (issuance, renewal, revocation, expiry, use, task
//! begin/complete/delegate, break-glass, policy reload, overdue delivery).
//!
//! Each event's hash covers its own fields and the previous event's hash, so
//! editing, deleting or reordering a row breaks the chain from that row on;
//! a separate head record (seq and hash of the newest event, written in the
//! same transaction) exposes a deleted tail. The store writes events in the
//! same transaction as the state they describe. Events never hold a token, a
//! key or a CSR: only ids.
//!
//! Old events may be archived and pruned behind a checkpoint (the seq and
//! hash of the last pruned event, see [`crate::retention`]): the stored
//! chain then verifies from the checkpoint ([`Verifier::resume`]), and the
//! archive from the genesis to the checkpoint, so together they prove the
//! whole trail. Events that change no state and repeat (status checks,
//! reads, refusals) are chained once per window with a summary of their
//! repeats (see `store::repeats`).

use sha2::{Digest, Sha256};

/// `prev_hash` of the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain separation for the hash (and the format version).
const HASH_DOMAIN: &[u8] = b"taskmint-audit-v1";

/// Kinds of event (the `kind` column).
pub mod kind {
    /// `MintX509`.
    pub const MINT_X509: &str = "mint_x509";
    /// `MintJwt`.
    pub const MINT_JWT: &str = "mint_jwt";
    /// `Renew`.
    pub const RENEW: &str = "renew";
    /// `BeginTask` (also the implicit begin of a first mint).
    pub const TASK_BEGIN: &str = "task_begin";
    /// `BeginTask` with break-glass.
    pub const BREAK_GLASS: &str = "break_glass";
    /// `CompleteTask`.
    pub const TASK_COMPLETE: &str = "task_complete";
    /// `DelegateTask`.
    pub const TASK_DELEGATE: &str = "task_delegate";
    /// `GetTask`.
    pub const TASK_READ: &str = "task_read";
    /// A task reached its deadline.
    pub const TASK_EXPIRED: &str = "task_expired";
    /// `Revoke` (the request and its decision).
    pub const REVOKE: &str = "revoke";
    /// One revocation event written to the log (one per task).
    pub const REVOKED: &str = "revoked";
    /// `CheckStatus`: the "use" signal.
    pub const STATUS_CHECK: &str = "status_check";
    /// `WatchRevocations` opened.
    pub const WATCH: &str = "watch";
    /// A subscriber's acknowledgement advanced.
    pub const ACK: &str = "ack";
    /// An administrative call.
    pub const ADMIN: &str = "admin";
    /// A break-glass task was marked reviewed.
    pub const REVIEW: &str = "break_glass_review";
    /// The policy file was reloaded (or refused).
    pub const POLICY_RELOAD: &str = "policy_reload";
    /// An expected subscriber missed its acknowledgement deadline.
    pub const DELIVERY_OVERDUE: &str = "delivery_overdue";
    /// Old events were archived and pruned behind the checkpoint.
    pub const AUDIT_PRUNED: &str = "audit_pruned";
    /// Calls refused by a rate limit or a holding cap, counted: one event
    /// per workload and limit per interval (`subject` names the limit).
    pub const LIMIT: &str = "limit";
}

/// Outcomes in the `decision` column.
pub mod decision {
    /// Policy permitted it (and it was done).
    pub const ALLOW: &str = "allow";
    /// Policy denied it.
    pub const DENY: &str = "deny";
    /// Policy permitted it but a limit or the state refused it (the reason says which).
    pub const REFUSED: &str = "refused";
    /// Over the caller's rate limit.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// Not a decision (expiry, reload, delivery).
    pub const NONE: &str = "";
}

/// An event before the store numbers and chains it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditDraft {
    /// Unix seconds.
    pub time: i64,
    /// See [`kind`].
    pub kind: String,
    /// SPIFFE ID of the caller (the issuer's own for expiry and reloads).
    pub actor: String,
    /// Holder (SPIFFE ID) of the task concerned, if any.
    pub task_holder: String,
    /// Task id concerned, if any.
    pub task_id: String,
    /// Credential id concerned, if any.
    pub credential_id: String,
    /// See [`decision`].
    pub decision: String,
    /// Ids of the policies that decided it.
    pub policies: Vec<String>,
    /// Why, in words (never a secret).
    pub reason: String,
    /// The task concerned was begun through break-glass.
    pub break_glass: bool,
    /// A revocation sequence this event refers to (the event written, or
    /// the sequence acknowledged).
    pub ref_seq: Option<u64>,
    /// The other party: a subscriber name, a delegate, a reviewed task.
    pub subject: String,
    /// The W3C `traceparent` of the request that wrote it, when the caller
    /// sent a valid one (empty otherwise): links the caller's trace to the
    /// trail.
    pub trace: String,
}

impl AuditDraft {
    /// A draft of `kind` by `actor` at `time`, carrying the trace context of
    /// the request being served, if any ([`crate::ops::trace`]).
    pub fn new(kind: &str, actor: &str, time: i64) -> Self {
        Self {
            time,
            kind: kind.to_owned(),
            actor: actor.to_owned(),
            trace: crate::ops::trace::current_text(),
            ..Default::default()
        }
    }

    /// Names the task.
    pub fn task(mut self, holder: &str, task_id: &str, break_glass: bool) -> Self {
        self.task_holder = holder.to_owned();
        self.task_id = task_id.to_owned();
        self.break_glass = break_glass;
        self
    }

    /// Records the decision.
    pub fn decided(mut self, decision: &str, policies: &[String]) -> Self {
        self.decision = decision.to_owned();
        self.policies = policies.to_vec();
        self
    }

    /// Sets the reason.
    pub fn because(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }

    /// Names the credential.
    pub fn credential(mut self, id: &str) -> Self {
        self.credential_id = id.to_owned();
        self
    }

    /// Names the other party.
    pub fn subject(mut self, s: &str) -> Self {
        self.subject = s.to_owned();
        self
    }
}

/// A numbered, chained event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Gap-free, from 1.
    pub seq: u64,
    /// Hash of the previous event ([`GENESIS`] for the first).
    pub prev_hash: String,
    /// Hash of this event (lowercase hex SHA-256).
    pub hash: String,
    /// The content.
    pub body: AuditDraft,
}

/// The hash of an event with sequence `seq` after `prev_hash`.
pub fn hash(seq: u64, prev_hash: &str, d: &AuditDraft) -> String {
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN);
    let policies = d.policies.join(",");
    let ref_seq = d.ref_seq.map(|s| s.to_string()).unwrap_or_default();
    let (seq, time) = (seq.to_string(), d.time.to_string());
    let fields: [&[u8]; 14] = [
        seq.as_bytes(),
        prev_hash.as_bytes(),
        time.as_bytes(),
        d.kind.as_bytes(),
        d.actor.as_bytes(),
        d.task_holder.as_bytes(),
        d.task_id.as_bytes(),
        d.credential_id.as_bytes(),
        d.decision.as_bytes(),
        policies.as_bytes(),
        d.reason.as_bytes(),
        if d.break_glass { b"1" } else { b"0" },
        ref_seq.as_bytes(),
        d.subject.as_bytes(),
    ];
    // Length-prefixed, so no two different events encode the same bytes.
    for f in fields {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f);
    }
    // Added after the first events were written: hashed only when present,
    // so events without a trace keep the hash they were written with (a
    // fifteenth length-prefixed field cannot be confused with none).
    if !d.trace.is_empty() {
        h.update((d.trace.len() as u64).to_be_bytes());
        h.update(d.trace.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Numbers and chains `draft` after `(prev_seq, prev_hash)`.
pub fn seal(prev_seq: u64, prev_hash: &str, draft: AuditDraft) -> AuditEvent {
    let seq = prev_seq + 1;
    AuditEvent {
        seq,
        prev_hash: prev_hash.to_owned(),
        hash: hash(seq, prev_hash, &draft),
        body: draft,
    }
}

/// Where the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at seq {seq}: {why}")]
pub struct Broken {
    /// The first sequence that does not verify.
    pub seq: u64,
    /// What is wrong with it.
    pub why: String,
}

/// Checks events page by page, in sequence order.
#[derive(Debug, Clone)]
pub struct Verifier {
    next_seq: u64,
    prev_hash: String,
}

impl Default for Verifier {
    fn default() -> Self {
        Self {
            next_seq: 1,
            prev_hash: GENESIS.to_owned(),
        }
    }
}

impl Verifier {
    /// A verifier of the chain after a checkpoint: the next event must be
    /// `seq + 1` and chain to `hash` (the last event pruned behind it).
    pub fn resume(seq: u64, hash: &str) -> Self {
        Self {
            next_seq: seq + 1,
            prev_hash: hash.to_owned(),
        }
    }

    /// Checks the next event.
    pub fn check(&mut self, e: &AuditEvent) -> Result<(), Broken> {
        let broken = |seq, why: String| Err(Broken { seq, why });
        if e.seq > self.next_seq {
            return broken(
                self.next_seq,
                format!(
                    "event missing (deleted): the next stored event is seq {}",
                    e.seq
                ),
            );
        }
        if e.seq < self.next_seq {
            return broken(e.seq, "sequence repeats or goes backwards".into());
        }
        if e.prev_hash != self.prev_hash {
            return broken(
                e.seq,
                "its previous-hash does not match the event before it (moved, replaced or reordered)"
                    .into(),
            );
        }
        if hash(e.seq, &e.prev_hash, &e.body) != e.hash {
            return broken(e.seq, "its content does not match its hash (edited)".into());
        }
        self.next_seq += 1;
        self.prev_hash = e.hash.clone();
        Ok(())
    }

    /// Checks the end of the chain against the head record.
    pub fn finish(&self, head: Option<(u64, String)>) -> Result<u64, Broken> {
        let last = self.next_seq - 1;
        match head {
            None if last == 0 => Ok(0),
            None => Err(Broken {
                seq: last,
                why: "the head record is missing".into(),
            }),
            Some((seq, _)) if seq > last => Err(Broken {
                seq: last + 1,
                why: format!(
                    "events {}..={seq} are missing (deleted from the end)",
                    last + 1
                ),
            }),
            Some((seq, hash)) if seq != last || hash != self.prev_hash => Err(Broken {
                seq: last,
                why: format!("the head record (seq {seq}) does not match the last event"),
            }),
            Some(_) => Ok(last),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditEvent> {
        let mut out: Vec<AuditEvent> = Vec::new();
        for i in 0..n {
            let (s, h) = out
                .last()
                .map(|e| (e.seq, e.hash.clone()))
                .unwrap_or((0, GENESIS.to_owned()));
            let d = AuditDraft::new(kind::MINT_JWT, "spiffe://example.org/a", 100 + i as i64)
                .credential(&format!("c{i}"));
            out.push(seal(s, &h, d));
        }
        out
    }

    fn verify(events: &[AuditEvent]) -> Result<u64, Broken> {
        let mut v = Verifier::default();
        for e in events {
            v.check(e)?;
        }
        let head = chain(4).last().map(|e| (e.seq, e.hash.clone()));
        v.finish(head)
    }

    #[test]
    fn detects_edit_delete_reorder_and_truncation() {
        let good = chain(4);
        assert_eq!(verify(&good), Ok(4));

        let mut edited = good.clone();
        edited[1].body.reason = "nothing to see".into();
        assert_eq!(verify(&edited).unwrap_err().seq, 2);

        let mut deleted = good.clone();
        deleted.remove(2);
        assert_eq!(verify(&deleted).unwrap_err().seq, 3);

        let mut swapped = good.clone();
        swapped.swap(1, 2);
        let (a, b) = (swapped[1].seq, swapped[2].seq);
        swapped[1].seq = b;
        swapped[2].seq = a;
        assert_eq!(verify(&swapped).unwrap_err().seq, 2);

        let mut truncated = good.clone();
        truncated.pop();
        assert_eq!(verify(&truncated).unwrap_err().seq, 4);
    }

    #[test]
    fn the_trace_is_covered_by_the_hash_only_when_present() {
        let d = AuditDraft::new(kind::MINT_JWT, "spiffe://example.org/a", 100);
        assert_eq!(d.trace, "");
        // The hash of an event without a trace is what it always was: the
        // fourteen fields alone (pinned, so old trails keep verifying).
        assert_eq!(
            hash(1, GENESIS, &d),
            "b4bbcd7eefe6adbf6cc392902ebdf49baf71c0c8f954b40655fff94d008c6d20"
        );
        let mut traced = d.clone();
        traced.trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into();
        let sealed = seal(0, GENESIS, traced.clone());
        assert_ne!(sealed.hash, hash(1, GENESIS, &d));
        let mut v = Verifier::default();
        v.check(&sealed).unwrap();
        // Editing or removing the trace breaks the chain.
        let mut edited = sealed.clone();
        edited.body.trace = "00-4bf92f3577b34da6a3ce929d0e0e4737-00f067aa0ba902b7-01".into();
        assert!(Verifier::default().check(&edited).is_err());
        edited.body.trace.clear();
        assert!(Verifier::default().check(&edited).is_err());
    }

    #[test]
    fn a_resumed_verifier_checks_the_chain_after_a_checkpoint() {
        let good = chain(4);
        let (cp_seq, cp_hash) = (good[1].seq, good[1].hash.clone());
        let mut v = Verifier::resume(cp_seq, &cp_hash);
        for e in &good[2..] {
            v.check(e).unwrap();
        }
        assert_eq!(v.finish(Some((4, good[3].hash.clone()))), Ok(4));

        // A checkpoint that does not match the first stored event: moved,
        // or events deleted beyond it.
        let mut v = Verifier::resume(cp_seq, &good[0].hash);
        assert_eq!(v.check(&good[2]).unwrap_err().seq, 3);
        let mut v = Verifier::resume(1, &good[0].hash);
        assert_eq!(v.check(&good[2]).unwrap_err().seq, 2);
        // Everything pruned: the checkpoint is the head.
        let v = Verifier::resume(4, &good[3].hash);
        assert_eq!(v.finish(Some((4, good[3].hash.clone()))), Ok(4));
    }
}
