//! Retention: what ages out of the store, and the audit archive it ages
//! out into. The leader runs [`Retention::round`] beside its other duties;
//! every step is a bounded batch in a short transaction of its own.
//!
//! - **Repeated events**: windows of repeated events (see
//!   `store::repeats`) that closed are swept, their counts chained.
//! - **Records**: credentials that expired more than `store.retention` ago,
//!   and tasks that ended more than `store.retention` ago and hold no
//!   credential any more, are deleted (a break-glass task awaiting review
//!   stays until it is reviewed). The revocation log has its own retention
//!   (`feed.retention`, counted from each event's expiry).
//! - **The audit trail**, only with `store.audit_archive` set: events older
//!   than `store.retention` are pruned a prefix at a time, behind a
//!   checkpoint. For each batch the leader claims the range in the store
//!   (so a successor resumes the same range), reads it, verifies it against
//!   the checkpoint (a broken chain is never archived away), writes it to
//!   `audit-<from>-<to>.jsonl` in the archive directory (to a temporary
//!   file, fsynced, renamed, the directory fsynced), and only then moves
//!   the checkpoint — checking the last event's hash again — deletes the
//!   range and chains an `audit_pruned` event naming the range and the
//!   file, in one transaction. A crash anywhere leaves either the range in
//!   the store, or in the archive and behind the checkpoint.
//!
//! [`verify_archive`] checks an archive from the genesis to a checkpoint,
//! so `taskmint audit verify` proves the archive and the stored trail
//! together, end to end.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::audit::{AuditDraft, AuditEvent, Broken, GENESIS, Verifier, kind};
use crate::clock::now_unix;
use crate::config::StoreConfig;
use crate::store::{AuditCheckpoint, PrunedRecords, Store, StoreError};

/// Rows one batch takes at most (events archived, windows closed, records
/// deleted).
pub const BATCH: u32 = 500;

/// Batches of one kind a round takes at most: a large backlog is worked
/// off over several rounds, never in one long stretch.
const MAX_BATCHES: u32 = 20;

/// Why a retention step stopped.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored chain does not verify from the checkpoint: nothing is
    /// archived or pruned until it is looked into.
    #[error("not pruning the audit trail: {0}")]
    Broken(#[from] Broken),
    /// The archive could not be written or read.
    #[error("audit archive `{path}`: {reason}")]
    Archive {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// What a round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Windows of repeated events closed.
    pub windows: u64,
    /// Records deleted.
    pub records: PrunedRecords,
    /// Audit events archived and deleted.
    pub audit_events: u64,
}

/// The leader's retention duties, configured from `[store]`.
#[derive(Debug, Clone)]
pub struct Retention {
    use_interval: Duration,
    retention: Duration,
    archive: Option<PathBuf>,
    actor: String,
}

impl Retention {
    /// Retention as `[store]` configures it; `actor` (the issuer's own
    /// SPIFFE ID) is recorded as the one who pruned.
    pub fn new(cfg: &StoreConfig, actor: &str) -> Self {
        Self {
            use_interval: cfg.use_interval,
            retention: cfg.retention,
            archive: cfg.audit_archive.clone(),
            actor: actor.to_owned(),
        }
    }

    /// Closes the windows of repeated events that ended by `now`.
    pub async fn close_windows(&self, store: &dyn Store, now: i64) -> Result<u64, StoreError> {
        let before = now - self.use_interval.as_secs() as i64;
        let mut total = 0;
        for _ in 0..MAX_BATCHES {
            let n = store.close_repeat_windows(before, BATCH).await?;
            total += n;
            if n < u64::from(BATCH) {
                break;
            }
        }
        Ok(total)
    }

    /// One round of pruning at `now`: records, then (with an archive) the
    /// audit trail. Each kind stops at its first error, which is returned
    /// after the other kinds had their turn.
    pub async fn prune(&self, store: &dyn Store, now: i64) -> Result<RoundReport, RetentionError> {
        let before = now - self.retention.as_secs() as i64;
        let mut report = RoundReport::default();
        let mut first_err = None;
        for _ in 0..MAX_BATCHES {
            match store.prune_records(before, BATCH).await {
                Ok(p) => {
                    report.records.credentials += p.credentials;
                    report.records.tasks += p.tasks;
                    if p.credentials < u64::from(BATCH) && p.tasks < u64::from(BATCH) {
                        break;
                    }
                }
                Err(e) => {
                    first_err = Some(e.into());
                    break;
                }
            }
        }
        if let Some(dir) = &self.archive {
            for _ in 0..MAX_BATCHES {
                match prune_audit_batch(store, dir, before, &self.actor).await {
                    Ok(0) => break,
                    Ok(n) => report.audit_events += n,
                    Err(e) => {
                        first_err.get_or_insert(e);
                        break;
                    }
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }
}

/// Archives and prunes one batch of audit events older than `before` (or
/// the batch a previous leader claimed), recording the prune as an
/// `audit_pruned` event by `actor`; how many it pruned.
pub async fn prune_audit_batch(
    store: &dyn Store,
    dir: &Path,
    before: i64,
    actor: &str,
) -> Result<u64, RetentionError> {
    let cp = store.audit_checkpoint().await?;
    let to = match cp.archiving_to {
        // A batch claimed before (by this process or a leader before it)
        // and not committed: the same range again, so the archive never
        // holds two different ranges from one checkpoint.
        Some(to) => to,
        None => {
            let page = store.audit_after(cp.seq, BATCH).await?;
            let old = page.iter().take_while(|e| e.body.time < before).count();
            let Some(last) = old.checked_sub(1).map(|i| page[i].seq) else {
                return Ok(0);
            };
            if !store.claim_audit_prune(cp.seq, last).await? {
                // Another process moved first; the next round sees what it did.
                return Ok(0);
            }
            last
        }
    };
    let events = read_range(store, &cp, to).await?;
    let mut v = Verifier::resume(cp.seq, &cp.hash);
    for e in &events {
        v.check(e)?;
    }
    let last = events.last().expect("a claimed range is not empty");
    let file = write_archive(dir, &events)?;
    let record = AuditDraft::new(kind::AUDIT_PRUNED, actor, now_unix()).because(format!(
        "events {}..={to} archived to `{}` and pruned behind the checkpoint {to}:{}",
        cp.seq + 1,
        file.file_name().unwrap_or_default().to_string_lossy(),
        last.hash
    ));
    if store
        .commit_audit_prune(cp.seq, to, &last.hash, record)
        .await?
    {
        tracing::info!(
            from = cp.seq + 1,
            to,
            "audit events archived and pruned behind the checkpoint"
        );
        Ok(events.len() as u64)
    } else {
        Ok(0)
    }
}

/// Events `(cp.seq, to]`, every one of them, in order.
async fn read_range(
    store: &dyn Store,
    cp: &AuditCheckpoint,
    to: u64,
) -> Result<Vec<AuditEvent>, RetentionError> {
    let want = to.saturating_sub(cp.seq);
    let mut events = Vec::with_capacity(want as usize);
    let mut after = cp.seq;
    while after < to {
        let page = store.audit_after(after, BATCH).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        events.extend(page.into_iter().filter(|e| e.seq <= to));
    }
    if events.len() as u64 != want {
        return Err(Broken {
            seq: cp.seq + 1 + events.len() as u64,
            why: format!(
                "events {}..={to} were claimed for the archive but only {} are stored",
                cp.seq + 1,
                events.len()
            ),
        }
        .into());
    }
    Ok(events)
}

/// One archived event: a JSON object per line, the stored fields under the
/// names `taskmint audit export` uses, `time` in Unix seconds, kinds and
/// decisions spelled as stored — everything the hash covers, so the chain
/// verifies from the archive alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchivedEvent {
    /// Sequence number.
    pub seq: u64,
    /// Unix seconds.
    pub time: i64,
    /// Event kind.
    pub kind: String,
    /// Who acted.
    pub actor: String,
    /// Holder of the task concerned.
    pub task_holder: String,
    /// Task concerned.
    pub task_id: String,
    /// Credential concerned.
    pub credential_id: String,
    /// Outcome.
    pub decision: String,
    /// Deciding policies.
    pub policies: Vec<String>,
    /// Why.
    pub reason: String,
    /// Break-glass task.
    pub break_glass: bool,
    /// Revocation sequence referred to.
    pub ref_seq: Option<u64>,
    /// The other party.
    pub subject: String,
    /// The W3C `traceparent` of the request (absent when none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace: String,
    /// Previous event's hash.
    pub prev_hash: String,
    /// This event's hash.
    pub hash: String,
}

impl From<&AuditEvent> for ArchivedEvent {
    fn from(e: &AuditEvent) -> Self {
        let b = &e.body;
        Self {
            seq: e.seq,
            time: b.time,
            kind: b.kind.clone(),
            actor: b.actor.clone(),
            task_holder: b.task_holder.clone(),
            task_id: b.task_id.clone(),
            credential_id: b.credential_id.clone(),
            decision: b.decision.clone(),
            policies: b.policies.clone(),
            reason: b.reason.clone(),
            break_glass: b.break_glass,
            ref_seq: b.ref_seq,
            subject: b.subject.clone(),
            trace: b.trace.clone(),
            prev_hash: e.prev_hash.clone(),
            hash: e.hash.clone(),
        }
    }
}

impl From<ArchivedEvent> for AuditEvent {
    fn from(a: ArchivedEvent) -> Self {
        AuditEvent {
            seq: a.seq,
            prev_hash: a.prev_hash,
            hash: a.hash,
            body: AuditDraft {
                time: a.time,
                kind: a.kind,
                actor: a.actor,
                task_holder: a.task_holder,
                task_id: a.task_id,
                credential_id: a.credential_id,
                decision: a.decision,
                policies: a.policies,
                reason: a.reason,
                break_glass: a.break_glass,
                ref_seq: a.ref_seq,
                subject: a.subject,
                trace: a.trace,
            },
        }
    }
}

/// The archive file of events `from..=to`.
pub fn archive_file_name(from: u64, to: u64) -> String {
    format!("audit-{from:020}-{to:020}.jsonl")
}

/// `(from, to)` of an archive file name, if it is one.
pub(crate) fn parse_file_name(name: &str) -> Option<(u64, u64)> {
    let range = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    let (from, to) = range.split_once('-')?;
    Some((from.parse().ok()?, to.parse().ok()?))
}

/// Writes `events` (contiguous, non-empty) to their archive file durably:
/// a temporary file, fsynced, renamed into place, the directory fsynced.
/// Writing the same range again (a resumed claim) with the same content is
/// fine; a file that overlaps the range with other events (the archive of
/// a history the database no longer has, after a restore to an earlier
/// point) is never overwritten: the write fails, naming it.
pub fn write_archive(dir: &Path, events: &[AuditEvent]) -> Result<PathBuf, RetentionError> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Err(RetentionError::Archive {
            path: dir.to_owned(),
            reason: "nothing to archive".into(),
        });
    };
    let err = |path: &Path, e: std::io::Error| RetentionError::Archive {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let name = archive_file_name(first.seq, last.seq);
    let path = dir.join(&name);
    let mut content = Vec::new();
    for e in events {
        serde_json::to_writer(&mut content, &ArchivedEvent::from(e))
            .map_err(|e| err(&path, e.into()))?;
        content.push(b'\n');
    }
    for entry in std::fs::read_dir(dir).map_err(|e| err(dir, e))? {
        let other = entry.map_err(|e| err(dir, e))?.path();
        let Some((from, to)) = other
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_file_name)
        else {
            continue;
        };
        if to < first.seq || from > last.seq {
            continue;
        }
        let same = (from, to) == (first.seq, last.seq)
            && std::fs::read(&other).map_err(|e| err(&other, e))? == content;
        if same {
            // Written by a claim that did not commit; its writer may have
            // stopped before the directory was fsynced.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| err(dir, e))?;
            return Ok(path);
        }
        return Err(RetentionError::Archive {
            path: other,
            reason: format!(
                "it holds other events than {}..={} of this database (restored to an \
                 earlier point?): move it aside to archive these",
                first.seq, last.seq
            ),
        });
    }
    let tmp = dir.join(format!(
        ".{name}.{}-{}.tmp",
        std::process::id(),
        hex::encode(rand::random::<[u8; 8]>())
    ));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&content)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(&path, e));
    }
    Ok(path)
}

/// What [`verify_archive`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveVerified {
    /// Events verified.
    pub events: u64,
    /// Files read.
    pub files: usize,
}

/// Verifies the archive in `dir` from the genesis through `cp` (the store's
/// checkpoint): its files chain from the first event with no gap, and end
/// exactly at the checkpoint's event and hash. Files past the checkpoint
/// (a batch archived whose prune has not committed) are left out: those
/// events are still in the store.
pub fn verify_archive(dir: &Path, cp: &AuditCheckpoint) -> Result<ArchiveVerified, anyhow::Error> {
    let mut files: Vec<(u64, u64, PathBuf)> = Vec::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot read the audit archive `{}`: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if let Some((from, to)) = name.to_str().and_then(parse_file_name) {
            files.push((from, to, entry.path()));
        }
    }
    files.sort();
    let mut v = Verifier::default();
    let mut through = 0;
    let mut read = 0;
    for (from, to, path) in files {
        if from > cp.seq {
            break;
        }
        if from != through + 1 {
            anyhow::bail!(
                "audit archive broken at seq {}: the next file, `{}`, starts at {from}",
                through + 1,
                path.display()
            );
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("cannot read `{}`: {e}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let a: ArchivedEvent = serde_json::from_str(line).map_err(|e| {
                anyhow::anyhow!(
                    "`{}` line {}: not an archived event: {e}",
                    path.display(),
                    n + 1
                )
            })?;
            let e = AuditEvent::from(a);
            v.check(&e)?;
            through = e.seq;
        }
        if through != to {
            anyhow::bail!(
                "audit archive broken at seq {}: `{}` should end at seq {to}",
                through + 1,
                path.display()
            );
        }
        read += 1;
    }
    let end = v.finish(Some((cp.seq, cp.hash.clone())).filter(|(s, _)| *s > 0));
    end.map_err(|b| {
        anyhow::anyhow!(
            "the audit archive does not reach the checkpoint {}:{}: {b}",
            cp.seq,
            cp.hash
        )
    })?;
    Ok(ArchiveVerified {
        events: through,
        files: read,
    })
}

/// The checkpoint of a store with nothing pruned.
pub fn no_checkpoint() -> AuditCheckpoint {
    AuditCheckpoint {
        seq: 0,
        hash: GENESIS.to_owned(),
        archiving_to: None,
    }
}

#[cfg(test)]
mod tests;
