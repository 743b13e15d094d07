//! Revocation, credential status and the CRL: what to revoke, what a
//! revocation did, and the state of a credential now.

use super::renew::check_credential_id;
use super::validate::{self, check_text};
use super::{Issuer, TaskRef, credential_not_found, facts};
use crate::Error;
use crate::audit::{AuditDraft, decision, kind};
use crate::clock::{now_unix, rfc3339};
use crate::identity::Caller;
use crate::policy::{Request, Resource, RevokeContext};
use crate::store::{
    Condition, CredentialRecord, CrlEntry, RevokeRequest, RevokeScope, Store, StoreError, StoredCrl,
};

/// Reason recorded when a task is completed.
pub const REASON_COMPLETED: &str = "task_completed";

/// Reason recorded when a renewal replaces its predecessor.
pub const REASON_SUPERSEDED: &str = "superseded";

/// What to revoke, decoded.
#[derive(Debug, Clone)]
pub enum RevokeTarget {
    /// One credential.
    Credential(String),
    /// A task.
    Task(TaskRef),
    /// A workload.
    Workload(String),
    /// A trust domain.
    TrustDomain(String),
}

/// What a revocation call did.
#[derive(Debug, Clone, Default)]
pub struct RevokeOutcome {
    /// Credentials revoked.
    pub revoked: u32,
    /// Events written.
    pub seqs: Vec<u64>,
    /// Human-readable outcome.
    pub message: String,
}

/// State of a credential now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialState {
    /// Valid.
    Active {
        /// Unix seconds.
        expires_at: i64,
    },
    /// Revoked.
    Revoked {
        /// Reason.
        reason: String,
        /// Unix seconds.
        revoked_at: i64,
        /// Unix seconds.
        expires_at: i64,
    },
    /// Expired.
    Expired {
        /// Unix seconds.
        expires_at: i64,
    },
    /// Not issued here.
    Unknown,
}

/// A signed CRL, as served.
#[derive(Debug, Clone)]
pub struct Crl {
    /// DER.
    pub der: Vec<u8>,
    /// CRL number.
    pub number: u64,
    /// Unix seconds.
    pub this_update: i64,
    /// Unix seconds.
    pub next_update: i64,
}

impl Issuer {
    /// Revokes by credential, task, workload or trust domain. Task and
    /// workload revocations reach every task delegated from the ones named.
    pub async fn revoke(
        &self,
        caller: &Caller,
        target: RevokeTarget,
        reason: &str,
    ) -> Result<RevokeOutcome, Error> {
        let reason = if reason.is_empty() { "revoked" } else { reason };
        check_text("reason", reason, 256)?;
        let me = caller.spiffe_id.to_string();
        let now = now_unix();
        let mut draft = AuditDraft::new(kind::REVOKE, &me, now).because(reason);
        let mut already = None;
        // Who the target belongs to, when it is a credential or a task: a
        // denial on another workload's is answered as "not found".
        let mut hidden = None;
        let (scope, resource, cascade) = match target {
            RevokeTarget::Credential(id) => {
                check_credential_id(&id)?;
                let c = self
                    .store
                    .credential(&id)
                    .await?
                    .ok_or_else(|| credential_not_found(&id))?;
                let t = self
                    .store
                    .task(&c.task_holder, &c.task_id)
                    .await?
                    .ok_or_else(|| credential_not_found(&id))?;
                if c.spiffe_id != me && t.holder != me {
                    hidden = Some(credential_not_found(&id));
                }
                draft = draft
                    .task(&t.holder, &t.task_id, t.break_glass)
                    .credential(&id);
                if let Some(r) = &c.revocation {
                    already = Some(format!(
                        "credential `{id}` was already revoked at {} ({}); nothing to do",
                        rfc3339(r.revoked_at),
                        r.reason
                    ));
                } else if c.not_after <= now {
                    already = Some(format!(
                        "credential `{id}` already expired at {}; nothing to do",
                        rfc3339(c.not_after)
                    ));
                }
                (
                    RevokeScope::Credential(id),
                    Resource::Task(facts(&t)),
                    false,
                )
            }
            RevokeTarget::Task(r) => {
                let (task, holder) = self.holder_of(caller, &r)?;
                let t = self.find_task(&holder, &task).await?;
                if t.holder != me {
                    hidden = Some(super::task_not_found(&t.task_id));
                }
                draft = draft.task(&t.holder, &t.task_id, t.break_glass);
                (
                    RevokeScope::Task {
                        holder,
                        task_id: task.to_string(),
                    },
                    Resource::Task(facts(&t)),
                    true,
                )
            }
            RevokeTarget::Workload(id) => {
                let id = validate::spiffe_id("spiffe_id", &id)?.to_string();
                draft = draft.subject(&id);
                (
                    RevokeScope::Workload(id.clone()),
                    Resource::Workload(id),
                    true,
                )
            }
            RevokeTarget::TrustDomain(td) => {
                let td = validate::trust_domain("trust_domain", &td)?.to_string();
                draft = draft.subject(&td);
                (
                    RevokeScope::TrustDomain(td.clone()),
                    Resource::TrustDomain(td),
                    false,
                )
            }
        };
        let request = Request::Revoke(RevokeContext {
            scope: scope.kind(),
            reason: reason.to_owned(),
        });
        let d = match self
            .gate
            .authorize(caller, request, &resource, &draft)
            .await
        {
            Err(Error::PermissionDenied(_)) if let Some(answer) = hidden => return Err(answer),
            other => other?,
        };
        let draft = draft.decided(decision::ALLOW, &d.policies);
        if let Some(message) = already {
            // Nothing changes: repeats are counted, not chained each.
            self.gate.record(draft.because(message.clone())).await?;
            return Ok(RevokeOutcome {
                message,
                ..Default::default()
            });
        }
        let events = self
            .revocations
            .revoke(&RevokeRequest {
                scope,
                reason: reason.to_owned(),
                now,
                end_task: None,
                cascade,
                audit: draft,
            })
            .await?;
        Ok(outcome(&events, "revoked"))
    }

    /// The state of a credential. Audited: a status check is the "use"
    /// signal of the credential's task, recorded once per credential and
    /// checker per `store.use_interval` with a count of the repeats (see
    /// `Gate::record`). Checks of credentials
    /// the store does not hold are recorded under no credential id, so
    /// that guessing ids cannot open a window per guess.
    pub async fn check_status(&self, caller: &Caller, id: &str) -> Result<CredentialState, Error> {
        check_credential_id(id)?;
        let c = self.store.credential(id).await?;
        let now = now_unix();
        let state = match &c {
            None => CredentialState::Unknown,
            Some(c) => state_of(c, now),
        };
        let mut event = AuditDraft::new(kind::STATUS_CHECK, &caller.spiffe_id.to_string(), now)
            .because(match &state {
                CredentialState::Active { .. } => "active".to_owned(),
                CredentialState::Revoked { .. } => "revoked".to_owned(),
                CredentialState::Expired { .. } => "expired".to_owned(),
                CredentialState::Unknown => format!("unknown credential `{id}`"),
            });
        if let Some(c) = &c {
            // The break-glass flag never changes: the cache serves most checks.
            let task = match self.tasks.get(&c.task_holder, &c.task_id) {
                Some(t) => Some(t),
                None => self.store.task(&c.task_holder, &c.task_id).await?,
            };
            let bg = task.is_some_and(|t| t.break_glass);
            event = event.credential(id).task(&c.task_holder, &c.task_id, bg);
        }
        self.gate.record(event).await?;
        Ok(state)
    }

    /// The CRL of revoked, unexpired X.509 credentials: the stored one while
    /// it lists what the store holds and is not yet due for refresh,
    /// otherwise a new one numbered one more, stored by compare-and-set so
    /// that every replica serves the same CRL under a number.
    ///
    /// The stored CRL is read before the entries: a CRL another replica
    /// stores after that read makes this one's compare-and-set fail, and one
    /// stored before it was built from entries no newer than these, so a
    /// stored CRL never lists less than the one it replaces (save what
    /// expired in between).
    ///
    /// Authorized by policy (`read_crl`) and not audited: serving the
    /// stored CRL writes nothing.
    pub async fn crl(&self, caller: &Caller) -> Result<Crl, Error> {
        self.gate
            .authorize_unaudited(caller, Request::ReadCrl, &Resource::Issuer)?;
        let stored = once_per_change(
            self.store.as_ref(),
            self.crl_validity,
            |entries| self.crl_hash(entries),
            |entries, number, hash, now| self.sign_crl(entries, number, hash, now),
        )
        .await?;
        Ok(Crl {
            der: stored.der,
            number: stored.number,
            this_update: stored.this_update,
            next_update: stored.next_update,
        })
    }

    /// SHA-256 over what a CRL lists (serial, revocation time, reason,
    /// sorted by serial) and the CA that signs it: a new CA key needs a new
    /// CRL even when nothing else changed.
    fn crl_hash(&self, entries: &[CrlEntry]) -> String {
        use sha2::{Digest, Sha256};
        let mut listed: Vec<_> = entries
            .iter()
            .map(|e| (e.serial_hex.as_str(), e.revoked_at, e.reason.as_str()))
            .collect();
        listed.sort_unstable();
        let mut h = Sha256::new();
        let ca = self.ca.chain().first().map_or(&[][..], |c| c.as_ref());
        h.update((ca.len() as u64).to_be_bytes());
        h.update(ca);
        h.update(serde_json::to_vec(&listed).expect("CRL entries serialise"));
        hex::encode(h.finalize())
    }

    fn sign_crl(
        &self,
        entries: Vec<CrlEntry>,
        number: u64,
        hash: &str,
        now: i64,
    ) -> Result<StoredCrl, Error> {
        let revoked: Vec<_> = entries
            .into_iter()
            .map(|e| {
                let reason = crl_reason(&e.reason);
                (e.serial_hex, e.revoked_at, reason)
            })
            .collect();
        let next = now + self.crl_validity.as_secs() as i64;
        let der = self.ca.sign_crl(&revoked, number, now, next)?;
        Ok(StoredCrl {
            number,
            content_hash: hash.to_owned(),
            der,
            this_update: now,
            next_update: next,
        })
    }
}

/// Rounds of "read, sign, compare-and-set" before serving what is stored.
const CRL_ATTEMPTS: usize = 3;

/// The CRL to serve: the stored one if [`current`], otherwise one signed by
/// `sign` with the next number and stored by compare-and-set (see
/// [`Issuer::crl`]); `hash` names what a list of entries holds.
async fn once_per_change(
    store: &dyn Store,
    validity: std::time::Duration,
    hash: impl Fn(&[CrlEntry]) -> String,
    sign: impl Fn(Vec<CrlEntry>, u64, &str, i64) -> Result<StoredCrl, Error>,
) -> Result<StoredCrl, Error> {
    let mut stored = store.stored_crl().await?;
    for _ in 0..CRL_ATTEMPTS {
        let now = now_unix();
        let entries = store.crl_entries(listed_after(now, validity)).await?;
        let hash = hash(&entries);
        if current(&stored, &hash, now, validity) {
            return Ok(stored);
        }
        let crl = sign(entries, stored.number + 1, &hash, now)?;
        if store.store_crl(stored.number, &crl).await? {
            return Ok(crl);
        }
        // Another replica stored a CRL first. If it lists the same (the
        // usual case: both saw the same change), serve it rather than sign
        // another.
        stored = store.stored_crl().await?;
    }
    // Still losing after several rounds: entries keep changing under busy
    // revocation. What is stored is at most a moment old.
    if stored.der.is_empty() {
        return Err(Error::Store(StoreError::Unavailable {
            condition: Condition::Conflict,
            detail: "no CRL could be stored".into(),
        }));
    }
    Ok(stored)
}

/// Entries are listed while their certificate's notAfter is later than
/// this: for one CRL validity after it expires. RFC 5280 §3.3: an entry
/// stays until it has appeared on one scheduled CRL issued after the
/// certificate's validity period; a stored CRL is re-signed once half its
/// validity has passed, so a CRL asked for in that time lists it. The entry
/// set (and so the CRL's content hash) changes when an entry drops out: the
/// next request signs a CRL without it, the same on every backend.
fn listed_after(now: i64, validity: std::time::Duration) -> i64 {
    now - validity.as_secs() as i64
}

/// The RFC 5280 CRLReason a revocation reason is listed with; `None` for
/// unspecified, which RFC 5280 §5.3.1 says to omit rather than encode.
///
/// | reason given | CRLReason |
/// | --- | --- |
/// | `task_completed`, `task_deadline` (taskmint's own) | cessationOfOperation (5) |
/// | `superseded` (a renewal replaced it) | superseded (4) |
/// | `key_compromise`, `compromise`, `compromised`, `leaked`, `incident` | keyCompromise (1) |
/// | `ca_compromise` | cACompromise (2) |
/// | `affiliation_changed` | affiliationChanged (3) |
/// | `cessation_of_operation` | cessationOfOperation (5) |
/// | `privilege_withdrawn` | privilegeWithdrawn (9) |
/// | anything else (`revoked`, free text) | none: the extension is omitted |
///
/// Matched case-insensitively, with `-`, ` ` and `_` alike, so `keyCompromise`
/// and `key-compromise` name the same reason.
pub fn crl_reason(reason: &str) -> Option<rcgen::RevocationReason> {
    use rcgen::RevocationReason as R;
    let key: String = reason
        .chars()
        .filter(|c| !matches!(c, '_' | '-' | ' '))
        .flat_map(char::to_lowercase)
        .collect();
    Some(match key.as_str() {
        "taskcompleted" | "taskdeadline" | "cessationofoperation" => R::CessationOfOperation,
        "superseded" => R::Superseded,
        "keycompromise" | "compromise" | "compromised" | "leaked" | "incident" => R::KeyCompromise,
        "cacompromise" => R::CaCompromise,
        "affiliationchanged" => R::AffiliationChanged,
        "privilegewithdrawn" => R::PrivilegeWithdrawn,
        _ => return None,
    })
}

/// Whether `stored` may be served as is: it lists exactly `hash`, and
/// half its validity is still ahead, so a relying party that fetches it
/// late still holds an unexpired CRL until its next fetch.
fn current(stored: &StoredCrl, hash: &str, now: i64, validity: std::time::Duration) -> bool {
    let refresh_at = stored.next_update - (validity.as_secs() / 2) as i64;
    !stored.der.is_empty() && stored.content_hash == hash && now < refresh_at
}

pub(super) fn state_of(c: &CredentialRecord, now: i64) -> CredentialState {
    match &c.revocation {
        Some(r) => CredentialState::Revoked {
            reason: r.reason.clone(),
            revoked_at: r.revoked_at,
            expires_at: c.not_after,
        },
        None if c.not_after <= now => CredentialState::Expired {
            expires_at: c.not_after,
        },
        None => CredentialState::Active {
            expires_at: c.not_after,
        },
    }
}

pub(super) fn outcome(events: &[crate::store::RevocationEvent], what: &str) -> RevokeOutcome {
    let revoked: usize = events.iter().map(|e| e.credential_ids.len()).sum();
    RevokeOutcome {
        revoked: revoked as u32,
        seqs: events.iter().map(|e| e.seq).collect(),
        message: if revoked == 0 {
            format!("{what}: no active credentials left to revoke (already revoked or expired)")
        } else {
            format!("{what}: {revoked} credential(s) revoked")
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::store::{CredentialKind, SqliteStore, TaskRecord};

    fn stored(hash: &str) -> StoredCrl {
        StoredCrl {
            number: 7,
            content_hash: hash.into(),
            der: vec![0x30],
            this_update: 1000,
            next_update: 1000 + 3600,
        }
    }

    /// Every reason taskmint writes itself has a code; unspecified ones
    /// have none (the extension is omitted).
    #[test]
    fn revocation_reasons_map_to_crl_reason_codes() {
        use rcgen::RevocationReason as R;
        assert_eq!(crl_reason(REASON_COMPLETED), Some(R::CessationOfOperation));
        assert_eq!(
            crl_reason(crate::revocation::reaper::REASON_DEADLINE),
            Some(R::CessationOfOperation)
        );
        assert_eq!(crl_reason(REASON_SUPERSEDED), Some(R::Superseded));
        for k in [
            "key_compromise",
            "keyCompromise",
            "Key-Compromise",
            "leaked",
            "incident",
        ] {
            assert_eq!(crl_reason(k), Some(R::KeyCompromise), "{k}");
        }
        assert_eq!(crl_reason("ca_compromise"), Some(R::CaCompromise));
        assert_eq!(
            crl_reason("affiliation_changed"),
            Some(R::AffiliationChanged)
        );
        assert_eq!(
            crl_reason("privilege_withdrawn"),
            Some(R::PrivilegeWithdrawn)
        );
        for k in [
            "revoked",
            "",
            "unspecified",
            "because I said so",
            "certificate_hold",
        ] {
            assert_eq!(crl_reason(k), None, "{k}");
        }
    }

    /// An entry stays on the CRL for one CRL validity after its certificate
    /// expired (RFC 5280 §3.3), and its leaving is a change: the next CRL is
    /// signed without it.
    #[tokio::test]
    async fn crl_entries_stay_one_validity_past_expiry() {
        const HOLDER: &str = "spiffe://example.org/workload/agent";
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("c.db")).await.unwrap());
        let now = now_unix();
        store
            .begin_task(&TaskRecord::new(HOLDER, "t", 100, 4_000_000_000), &[])
            .await
            .unwrap();
        // Expired ten seconds ago, revoked while it was valid.
        let cred = CredentialRecord {
            id: "0b".repeat(19),
            kind: CredentialKind::X509,
            spiffe_id: HOLDER.into(),
            task_holder: HOLDER.into(),
            task_id: "t".into(),
            audience: None,
            not_before: 100,
            not_after: now - 10,
            caller_cert_sha256: "ab".repeat(32),
            issued_at: 100,
            predecessor: None,
            renewal_count: 0,
            revocation: None,
        };
        store
            .record_credential(&cred, 10, &[])
            .await
            .unwrap()
            .unwrap();
        let req = RevokeRequest {
            scope: RevokeScope::Credential(cred.id.clone()),
            reason: "leaked".into(),
            now: 200,
            end_task: None,
            cascade: false,
            audit: crate::audit::AuditDraft::new(crate::audit::kind::REVOKE, HOLDER, 200),
        };
        store
            .revoke(&req, Arc::new(|e| Ok(format!("set-{}", e.seq))))
            .await
            .unwrap();
        let hash = |e: &[CrlEntry]| {
            let ids: Vec<_> = e.iter().map(|e| e.serial_hex.as_str()).collect();
            ids.join(",")
        };
        let sign = |entries: Vec<CrlEntry>, number: u64, hash: &str, now: i64| {
            Ok(StoredCrl {
                number,
                content_hash: hash.to_owned(),
                der: format!("crl {number}: {}", entries.len()).into_bytes(),
                this_update: now,
                next_update: now + 3600,
            })
        };
        // An hour's validity: still listed ten seconds after expiry.
        let hour = Duration::from_secs(3600);
        let crl = once_per_change(store.as_ref(), hour, hash, sign)
            .await
            .unwrap();
        assert_eq!(crl.content_hash, cred.id, "listed past its expiry");
        // A five-second validity has passed: it leaves, in a new CRL.
        let short = Duration::from_secs(5);
        let next = once_per_change(store.as_ref(), short, hash, sign)
            .await
            .unwrap();
        assert_eq!(next.content_hash, "", "gone one validity after expiry");
        assert_eq!(next.number, crl.number + 1);
        assert_eq!(listed_after(1_000, short), 995);
    }

    /// The stored CRL is served while it lists the same and the first half
    /// of its validity runs; then, or on any change, a new one is signed.
    #[test]
    fn a_stored_crl_is_served_until_it_changes_or_half_its_validity_passed() {
        let hour = Duration::from_secs(3600);
        assert!(current(&stored("h"), "h", 1000, hour));
        assert!(current(&stored("h"), "h", 1000 + 1799, hour));
        assert!(!current(&stored("h"), "h", 1000 + 1800, hour));
        assert!(!current(&stored("h"), "other", 1000, hour));
        let none = StoredCrl {
            der: Vec::new(),
            ..stored("h")
        };
        assert!(!current(&none, "h", 1000, hour));
    }

    /// Two replicas (two stores on one database) asking for the CRL at the
    /// same time serve one CRL: the one that loses the compare-and-set
    /// serves the winner's instead of its own or a third. With no change,
    /// nothing is signed; a revocation gives the next number, once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn replicas_asking_at_once_serve_one_crl_per_change() {
        const HOLDER: &str = "spiffe://example.org/workload/agent";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crl.db");
        let a: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
        let b: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
        let signed = Arc::new(AtomicUsize::new(0));
        let ask = |s: Arc<dyn Store>| {
            let signed = signed.clone();
            tokio::spawn(async move {
                let hash = |e: &[CrlEntry]| {
                    let ids: Vec<_> = e.iter().map(|e| e.serial_hex.as_str()).collect();
                    ids.join(",")
                };
                let sign = |_: Vec<CrlEntry>, number: u64, hash: &str, now: i64| {
                    let n = signed.fetch_add(1, Ordering::SeqCst);
                    Ok(StoredCrl {
                        number,
                        content_hash: hash.to_owned(),
                        der: format!("crl {number} signature {n}").into_bytes(),
                        this_update: now,
                        next_update: now + 3600,
                    })
                };
                once_per_change(s.as_ref(), Duration::from_secs(3600), hash, sign)
                    .await
                    .unwrap()
            })
        };
        let both = |round: &str| {
            let (x, y) = (ask(a.clone()), ask(b.clone()));
            let round = round.to_owned();
            async move {
                let (x, y) = (x.await.unwrap(), y.await.unwrap());
                assert_eq!(x, y, "{round}: both replicas serve one CRL");
                x
            }
        };
        let first = both("first").await;
        assert_eq!(first.number, 1);
        for i in 0..10 {
            assert_eq!(both(&format!("unchanged {i}")).await, first);
        }
        assert!(
            signed.load(Ordering::SeqCst) <= 2,
            "one signature per replica at most"
        );

        a.begin_task(&TaskRecord::new(HOLDER, "t", 100, 4_000_000_000), &[])
            .await
            .unwrap();
        let cred = CredentialRecord {
            id: "0a".repeat(19),
            kind: CredentialKind::X509,
            spiffe_id: HOLDER.into(),
            task_holder: HOLDER.into(),
            task_id: "t".into(),
            audience: None,
            not_before: 100,
            not_after: 4_000_000_000,
            caller_cert_sha256: "ab".repeat(32),
            issued_at: 100,
            predecessor: None,
            renewal_count: 0,
            revocation: None,
        };
        a.record_credential(&cred, 10, &[]).await.unwrap().unwrap();
        let req = RevokeRequest {
            scope: RevokeScope::Credential(cred.id.clone()),
            reason: "leaked".into(),
            now: 200,
            end_task: None,
            cascade: false,
            audit: crate::audit::AuditDraft::new(crate::audit::kind::REVOKE, HOLDER, 200),
        };
        b.revoke(&req, Arc::new(|e| Ok(format!("set-{}", e.seq))))
            .await
            .unwrap();
        let second = both("after the revocation").await;
        assert_eq!(second.number, 2);
        assert_eq!(second.content_hash, cred.id);
        assert_eq!(both("unchanged again").await, second);
    }
}
