//! Repeated events, the database-free part shared by the backends: the key
//! that makes two events "the same", the open window of one key, and the
//! summary event chained when a window with repeats closes.
//!
//! Events that change no state — a status check (the "use" signal), a task
//! read, a watch opened, a denial or a refusal — can be asked for as fast as
//! a caller can call. Chaining each would let any caller grow the trail (and
//! the database) at its call rate, and make a task's timeline unreadable to
//! its owner. So the first event of a key in a window is chained at once, as
//! before; repeats within `window` seconds of it are counted in a row of
//! `audit_repeats` (updated in place, not chained); when the window closes —
//! at the key's next event after it, or by the leader's sweep — one summary
//! event carrying the count, the first and last repeat and the last outcome
//! is chained, and the row is reset or deleted. The trail keeps every fact:
//! the first event at once, and how often and until when it repeated.

use sha2::{Digest, Sha256};

use crate::audit::{AuditDraft, decision};
use crate::clock::rfc3339;

/// The key of an event: everything but its time, reason and `ref_seq`
/// (length-prefixed, so no two different keys hash the same input). A
/// refusal (`deny`, `refused`, `rate_limited`) is keyed without the task,
/// credential and subject it names: those are the caller's to choose, and a
/// new one per call would otherwise open a window, and chain an event, per
/// call. Its first event and its summary still name them.
pub(crate) fn key(d: &AuditDraft) -> String {
    let mut h = Sha256::new();
    let policies = d.policies.join(",");
    let refusal = matches!(
        d.decision.as_str(),
        decision::DENY | decision::REFUSED | decision::RATE_LIMITED
    );
    let chosen = |f: &str| if refusal { "" } else { f }.as_bytes().to_vec();
    let (holder, task, credential, subject) = (
        chosen(&d.task_holder),
        chosen(&d.task_id),
        chosen(&d.credential_id),
        chosen(&d.subject),
    );
    let fields: [&[u8]; 9] = [
        d.kind.as_bytes(),
        d.actor.as_bytes(),
        &holder,
        &task,
        &credential,
        d.decision.as_bytes(),
        policies.as_bytes(),
        &subject,
        if d.break_glass { b"1" } else { b"0" },
    ];
    for f in fields {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f);
    }
    hex::encode(h.finalize())
}

/// The open window of one key, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window {
    /// Time of the chained event that opened the window.
    pub window_start: i64,
    /// Repeats since, not chained yet.
    pub repeats: u64,
    /// Time of the first repeat (when `repeats > 0`).
    pub first_repeat: Option<i64>,
    /// Time of the last repeat (when `repeats > 0`).
    pub last_repeat: Option<i64>,
    /// The reason of the last repeat (or of the opening event).
    pub last_reason: String,
    /// The key fields (time, reason and `ref_seq` unset).
    pub event: AuditDraft,
}

impl Window {
    /// Whether an event at `time` falls inside this window of `secs`.
    pub fn covers(&self, time: i64, secs: i64) -> bool {
        time < self.window_start.saturating_add(secs)
    }

    /// The summary event chained when the window closes; `None` without
    /// repeats (the opening event already says everything).
    pub fn summary(&self) -> Option<AuditDraft> {
        if self.repeats == 0 {
            return None;
        }
        let first = self.first_repeat.unwrap_or(self.window_start);
        let last = self.last_repeat.unwrap_or(first);
        let mut d = self.event.clone();
        d.time = last;
        d.reason = format!(
            "repeated {} more time{} from {} to {} (window opened {}); last: {}",
            self.repeats,
            if self.repeats == 1 { "" } else { "s" },
            rfc3339(first),
            rfc3339(last),
            rfc3339(self.window_start),
            self.last_reason
        );
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::kind;

    #[test]
    fn the_key_ignores_time_reason_and_ref_seq_only() {
        let a = AuditDraft::new(kind::STATUS_CHECK, "spiffe://td/a", 100)
            .credential("ab")
            .because("active");
        let mut b = a.clone();
        b.time = 200;
        b.reason = "revoked".into();
        b.ref_seq = Some(3);
        assert_eq!(key(&a), key(&b));
        for other in [
            a.clone().credential("cd"),
            a.clone().subject("x"),
            a.clone().decided("deny", &[]),
            a.clone().task("spiffe://td/a", "t", false),
            AuditDraft::new(kind::TASK_READ, "spiffe://td/a", 100).credential("ab"),
        ] {
            assert_ne!(key(&a), key(&other), "{other:?}");
        }
        // A refusal names what the caller chose, but is keyed without it.
        let denied = AuditDraft::new(kind::MINT_JWT, "spiffe://td/a", 100)
            .task("spiffe://td/a", "t1", false)
            .subject("x")
            .decided("deny", &["p".into()]);
        let mut other_task = denied
            .clone()
            .task("spiffe://td/b", "t2", false)
            .subject("y");
        other_task.credential_id = "cd".into();
        assert_eq!(key(&denied), key(&other_task));
        assert_ne!(
            key(&denied),
            key(&denied.clone().decided("deny", &["q".into()]))
        );
    }

    #[test]
    fn a_window_sums_up_its_repeats_once_it_has_any() {
        let mut w = Window {
            window_start: 1_000,
            repeats: 0,
            first_repeat: None,
            last_repeat: None,
            last_reason: "active".into(),
            event: AuditDraft::new(kind::STATUS_CHECK, "spiffe://td/a", 0).credential("ab"),
        };
        assert!(w.covers(1_059, 60));
        assert!(!w.covers(1_060, 60));
        assert_eq!(w.summary(), None);
        w.repeats = 41;
        w.first_repeat = Some(1_001);
        w.last_repeat = Some(1_050);
        w.last_reason = "revoked".into();
        let s = w.summary().unwrap();
        assert_eq!((s.time, s.credential_id.as_str()), (1_050, "ab"));
        assert!(
            s.reason.starts_with("repeated 41 more times from "),
            "{}",
            s.reason
        );
        assert!(s.reason.ends_with("; last: revoked"), "{}", s.reason);
    }
}
