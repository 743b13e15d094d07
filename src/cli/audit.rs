//! `taskmint audit verify|export|task|review` and `taskmint inventory`.
//! `verify` reads the store directly (offline, also while the issuer runs;
//! on PostgreSQL without writing) — the stored trail from its checkpoint,
//! and the archive of what was pruned from the genesis to the checkpoint;
//! the rest ask a running issuer.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::out;
use super::task::task_json;
use super::{ConnArgs, rfc3339, status_line};
use crate::audit::Verifier;
use crate::config::Config;
use crate::grpc::{audit_decision_text, audit_kind_text, pb};
use crate::retention::{ArchiveVerified, verify_archive};
use crate::store::{AuditCheckpoint, PgPoolConfig, PgStore, SqliteStore, Store};

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of the store's audit trail (offline).
    Verify(VerifyArgs),
    /// Print the audit trail as JSON lines.
    Export(ExportArgs),
    /// A task's timeline: requested, decided, issued, used, renewed, revoked, acknowledged.
    Task(TaskArgs),
    /// Break-glass grants awaiting review; `--mark-reviewed TASK` closes one.
    Review(ReviewArgs),
}

/// Arguments of `audit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Config naming the store.
    #[arg(long, default_value = super::serve::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// A head printed by an earlier verify and kept outside the store: fail
    /// unless the chain still holds that event (a deleted tail with its head
    /// rolled back to match verifies otherwise).
    #[arg(long, value_name = "SEQ:HASH")]
    pub expect_head: Option<ExpectedHead>,
    /// The audit archive to verify with the stored trail, from the genesis
    /// to the checkpoint [default: the config's `store.audit_archive`].
    #[arg(long, value_name = "DIR")]
    pub archive: Option<PathBuf>,
}

/// An event the chain must still hold: `SEQ:HASH`, as `audit verify`
/// prints its head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedHead {
    /// Its sequence number (from 1).
    pub seq: u64,
    /// Its hash (lowercase hex SHA-256).
    pub hash: String,
}

impl std::str::FromStr for ExpectedHead {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("`{s}` is not SEQ:HASH (a sequence from 1 and 64 lowercase hex digits)");
        let (seq, hash) = s.split_once(':').ok_or_else(bad)?;
        let seq: u64 = seq.parse().map_err(|_| bad())?;
        let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
        if seq == 0 || hash.len() != 64 || !hash.chars().all(hex) {
            return Err(bad());
        }
        Ok(Self {
            seq,
            hash: hash.to_owned(),
        })
    }
}

/// Arguments of `audit export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Only events after this sequence.
    #[arg(long, default_value_t = 0)]
    pub since: u64,
    /// Connection.
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Arguments of `audit task`.
#[derive(Debug, Args)]
pub struct TaskArgs {
    /// Task id.
    #[arg(long)]
    pub task: String,
    /// SPIFFE ID holding the task [default: you].
    #[arg(long, default_value = "")]
    pub holder: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Arguments of `audit review`.
#[derive(Debug, Args)]
pub struct ReviewArgs {
    /// List reviewed grants too.
    #[arg(long)]
    pub all: bool,
    /// Mark this break-glass task reviewed.
    #[arg(long, value_name = "TASK")]
    pub mark_reviewed: Option<String>,
    /// SPIFFE ID holding the task to mark [default: you].
    #[arg(long, default_value = "", requires = "mark_reviewed")]
    pub holder: String,
    /// Review note.
    #[arg(long, default_value = "")]
    pub note: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Arguments of `inventory`.
#[derive(Debug, Args)]
pub struct InventoryArgs {
    /// Only tasks held by this SPIFFE ID.
    #[arg(long)]
    pub holder: Option<String>,
    /// Only tasks with this accountable owner.
    #[arg(long)]
    pub owner: Option<String>,
    /// Only tasks with this id.
    #[arg(long)]
    pub task: Option<String>,
    /// Only break-glass tasks.
    #[arg(long)]
    pub break_glass: bool,
    /// Page size used to fetch (all pages are printed).
    #[arg(long, default_value_t = 100)]
    pub page_size: u32,
    /// Print JSON: `{"grants": [...]}`, every page in one document.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// An audit event as JSON.
pub fn event_json(e: &pb::AuditEvent) -> Value {
    json!({
        "seq": e.seq,
        "time": rfc3339(e.time),
        "kind": audit_kind_text(e.kind),
        "actor": e.actor,
        "task_holder": e.task_holder,
        "task_id": e.task_id,
        "credential_id": e.credential_id,
        "decision": audit_decision_text(e.decision),
        "policies": e.policies,
        "reason": e.reason,
        "break_glass": e.break_glass,
        "ref_seq": (e.ref_seq != 0).then_some(e.ref_seq),
        "subject": e.subject,
        "trace": e.trace,
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    })
}

/// Verifies the audit chain of the store at `path`; the last good sequence.
pub async fn verify_store(path: &std::path::Path) -> anyhow::Result<u64> {
    Ok(verify_sqlite(path, None, None).await?.through)
}

/// Verifies the SQLite store at `path` (and the archive in `archive`, if
/// given).
pub async fn verify_sqlite(
    path: &std::path::Path,
    expect: Option<&ExpectedHead>,
    archive: Option<&std::path::Path>,
) -> anyhow::Result<Verified> {
    if !path.exists() {
        anyhow::bail!("no store at `{}`", path.display());
    }
    let store = SqliteStore::open_read_only(path).await?;
    let verified = verify_chain(&store, expect, archive).await;
    store.close().await;
    verified
}

/// What `audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The last good sequence: the chain verified through it.
    pub through: u64,
    /// The hash of that event (empty for an empty trail).
    pub head_hash: String,
    /// Where the stored trail starts: events through it were pruned.
    pub checkpoint: AuditCheckpoint,
    /// The archive, when one was verified with the stored trail.
    pub archive: Option<ArchiveVerified>,
}

/// What `audit verify` found in a PostgreSQL store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgVerified {
    /// The last good sequence: the chain verified through it.
    pub through: u64,
    /// The hash of that event (empty for an empty trail).
    pub head_hash: String,
    /// Committed events not sealed into the chain yet (a running issuer
    /// seals them within a moment); the chain does not cover them.
    pub pending: u64,
    /// The rest of what was verified.
    pub verified: Verified,
}

/// Verifies the audit chain of the PostgreSQL store at `url` (opened
/// without migrating it). It only reads: events still pending their seal
/// are counted, not sealed.
pub async fn verify_pg_store(
    url: &str,
    pool: &PgPoolConfig,
    expect: Option<&ExpectedHead>,
) -> anyhow::Result<PgVerified> {
    verify_pg_store_with_archive(url, pool, expect, None).await
}

/// [`verify_pg_store`], with the archive in `archive` verified too.
pub async fn verify_pg_store_with_archive(
    url: &str,
    pool: &PgPoolConfig,
    expect: Option<&ExpectedHead>,
    archive: Option<&std::path::Path>,
) -> anyhow::Result<PgVerified> {
    let store = PgStore::open_read_only(url, pool).await?;
    let verified = async {
        let verified = verify_chain(&store, expect, archive).await?;
        // Counted after the chain: what was pending and got sealed since is
        // not counted twice, only possibly missed by both.
        let pending = store.pending_audit_events().await?;
        anyhow::Ok(PgVerified {
            through: verified.through,
            head_hash: verified.head_hash.clone(),
            pending,
            verified,
        })
    }
    .await;
    store.close().await;
    verified
}

/// Verifies the stored chain from the checkpoint through the head record,
/// the archive (if given) from the genesis to the checkpoint, and that the
/// trail holds `expect`.
async fn verify_chain(
    store: &dyn Store,
    expect: Option<&ExpectedHead>,
    archive: Option<&std::path::Path>,
) -> anyhow::Result<Verified> {
    // A running issuer may prune while this reads: a checkpoint that moved
    // under the read explains a missing start, so read again from it.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let cp = store.audit_checkpoint().await?;
        match verify_from(store, &cp, expect, archive).await {
            Err(e) if attempts < 3 && store.audit_checkpoint().await?.seq != cp.seq => {
                tracing::debug!(error = %e, "the checkpoint moved during verify; again");
            }
            other => return other,
        }
    }
}

async fn verify_from(
    store: &dyn Store,
    cp: &AuditCheckpoint,
    expect: Option<&ExpectedHead>,
    archive: Option<&std::path::Path>,
) -> anyhow::Result<Verified> {
    // The head first: a running issuer keeps appending, and what comes
    // after this head is not part of what is verified.
    let head = store.audit_head().await?;
    let through = head.as_ref().map(|(s, _)| *s).unwrap_or(0);
    if let Some(x) = expect
        && x.seq > through
    {
        anyhow::bail!(
            "audit chain ends at seq {through}, before the expected head {}: events were \
             deleted from the end and the head record rolled back",
            x.seq
        );
    }
    let archived = match archive {
        Some(dir) => Some(verify_archive(dir, cp)?),
        None => None,
    };
    if let Some(x) = expect
        && x.seq <= cp.seq
    {
        let Some(dir) = archive else {
            anyhow::bail!(
                "the expected head {} was pruned (the stored trail starts after {}): verify \
                 with the archive (--archive DIR)",
                x.seq,
                cp.seq
            );
        };
        match archived_hash(dir, x.seq)? {
            Some(h) if h == x.hash => {}
            found => anyhow::bail!(
                "audit chain broken at seq {}: its archived hash is `{}`, not the expected `{}` \
                 (the chain was rewritten from there or before)",
                x.seq,
                found.unwrap_or_default(),
                x.hash
            ),
        }
    }
    let mut v = Verifier::resume(cp.seq, &cp.hash);
    let mut after = cp.seq;
    while after < through {
        let page = store.audit_after(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in page.iter().filter(|e| e.seq <= through) {
            v.check(e)?;
            if let Some(x) = expect
                && x.seq == e.seq
                && x.hash != e.hash
            {
                anyhow::bail!(
                    "audit chain broken at seq {}: its hash is `{}`, not the expected `{}` \
                     (the chain was rewritten from there or before)",
                    e.seq,
                    e.hash,
                    x.hash
                );
            }
        }
    }
    // Everything pruned: the head is the checkpoint's event.
    let last = v.finish(head.clone())?;
    Ok(Verified {
        through: last,
        head_hash: head.map(|(_, h)| h).unwrap_or_default(),
        checkpoint: cp.clone(),
        archive: archived,
    })
}

/// The hash of archived event `seq`, from the file that holds it.
fn archived_hash(dir: &std::path::Path, seq: u64) -> anyhow::Result<Option<String>> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some((from, to)) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(crate::retention::parse_file_name)
        else {
            continue;
        };
        if (from..=to).contains(&seq) {
            for line in std::fs::read_to_string(&path)?.lines() {
                let e: crate::retention::ArchivedEvent = serde_json::from_str(line)?;
                if e.seq == seq {
                    return Ok(Some(e.hash));
                }
            }
        }
    }
    Ok(None)
}

pub(super) async fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify(a) => {
            let cfg = Config::load(&a.config)?;
            let expect = a.expect_head.as_ref();
            let archive = a.archive.as_deref().or(cfg.store.audit_archive.as_deref());
            let (v, at, pending) = match (&cfg.store.path, &cfg.store.url) {
                (_, Some(url)) => {
                    let v = verify_pg_store_with_archive(url, &cfg.store.pool(), expect, archive)
                        .await?;
                    (v.verified, crate::store::redact_url(url), Some(v.pending))
                }
                (Some(path), None) => (
                    verify_sqlite(path, expect, archive).await?,
                    path.display().to_string(),
                    None,
                ),
                (None, None) => anyhow::bail!("the config names no store"),
            };
            let (n, cp) = (v.through, &v.checkpoint);
            if cp.seq == 0 {
                out::line(format_args!(
                    "audit trail intact: {n} events, hash chain and head verified ({at})"
                ))?;
            } else {
                out::line(format_args!(
                    "audit trail intact: events {}..={n} stored, hash chain verified from the \
                     checkpoint {}:{} and the head ({at})",
                    cp.seq + 1,
                    cp.seq,
                    cp.hash
                ))?;
                match &v.archive {
                    Some(x) => out::line(format_args!(
                        "archive intact: events 1..={} in {} files verified from the genesis to \
                         the checkpoint",
                        x.events, x.files
                    ))?,
                    None => out::line(format_args!(
                        "events 1..={} were pruned behind the checkpoint; the archive was not \
                         checked (set store.audit_archive or pass --archive DIR)",
                        cp.seq
                    ))?,
                }
            }
            if n > 0 {
                // Kept outside the store, it exposes a later deleted tail.
                out::line(format_args!(
                    "head {n}:{} (check a later chain with --expect-head)",
                    v.head_hash
                ))?;
            }
            if let Some(x) = expect {
                out::line(format_args!(
                    "expected head {}:{} is in the chain",
                    x.seq, x.hash
                ))?;
            }
            if let Some(p) = pending {
                out::line(format_args!(
                    "{p} events pending seal (committed, not yet in the chain)"
                ))?;
            }
        }
        AuditCommand::Export(a) => {
            let mut c = a.conn.connect().await?;
            let mut after = a.since;
            // Every export is itself audited, so the trail grows while it is
            // read: stop at the head the first page reported.
            let mut head = None;
            loop {
                let page = c
                    .export_audit(after, 1000)
                    .await
                    .map_err(|s| status_line(&s))?;
                let head = *head.get_or_insert(page.head_seq);
                for e in page.events.iter().filter(|e| e.seq <= head) {
                    out::json(&event_json(e))?;
                    after = e.seq;
                }
                if after >= head || page.events.is_empty() {
                    break;
                }
            }
        }
        AuditCommand::Task(a) => {
            let mut c = a.conn.connect().await?;
            let t = c
                .task_timeline(&a.task, &a.holder)
                .await
                .map_err(|s| status_line(&s))?;
            if a.json {
                let v = json!({
                    "task": task_json(&t.task.clone().unwrap_or_default()),
                    "events": t.events.iter().map(event_json).collect::<Vec<_>>(),
                    "acks": t.acks.iter().map(|r| json!({
                        "seq": r.seq,
                        "acks": r.acks.iter().map(event_json).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                });
                out::json(&v)?;
            } else {
                out::text(&render_timeline(&t))?;
            }
        }
        AuditCommand::Review(a) => {
            let mut c = a.conn.connect().await?;
            if let Some(task) = &a.mark_reviewed {
                let t = c
                    .mark_reviewed(task, &a.holder, &a.note)
                    .await
                    .map_err(|s| status_line(&s))?;
                if a.json {
                    out::json(&task_json(&t))?;
                } else {
                    out::line(format_args!(
                        "break-glass task {} held by {} marked reviewed by {}",
                        t.task_id, t.holder, t.reviewed_by
                    ))?;
                }
                return Ok(());
            }
            let tasks = c
                .list_break_glass(a.all)
                .await
                .map_err(|s| status_line(&s))?;
            if a.json {
                let tasks: Vec<Value> = tasks.iter().map(task_json).collect();
                out::json(&json!({ "tasks": tasks }))?;
            } else if tasks.is_empty() {
                out::line(format_args!("no break-glass grants awaiting review"))?;
            } else {
                for t in &tasks {
                    out::line(format_args!(
                        "{}  {}  task {}  ticket {}  {}  justification: {}",
                        rfc3339(t.created_at),
                        t.holder,
                        t.task_id,
                        t.ticket,
                        if t.reviewed_by.is_empty() {
                            "AWAITING REVIEW".to_owned()
                        } else {
                            format!("reviewed by {}", t.reviewed_by)
                        },
                        t.justification
                    ))?;
                }
            }
        }
    }
    Ok(())
}

/// The human form of a timeline.
pub fn render_timeline(t: &pb::GetTaskTimelineResponse) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let task = t.task.clone().unwrap_or_default();
    let _ = writeln!(
        out,
        "task {} held by {} (owner: {}){}",
        task.task_id,
        task.holder,
        if task.owner.is_empty() {
            "none"
        } else {
            &task.owner
        },
        if task.break_glass { " BREAK-GLASS" } else { "" }
    );
    for e in &t.events {
        let (kind, decision) = (audit_kind_text(e.kind), audit_decision_text(e.decision));
        let verb = match kind {
            "task_begin" | "break_glass" => "begun",
            "mint_x509" | "mint_jwt" if decision == "allow" => "issued",
            "mint_x509" | "mint_jwt" => "requested",
            "renew" if decision == "allow" => "renewed",
            "status_check" => "used (status checked)",
            "revoked" => "revoked",
            "revoke" => "revocation requested",
            "task_complete" => "completed",
            "task_expired" => "expired",
            "task_delegate" => "delegated",
            "task_read" => "read",
            "break_glass_review" => "reviewed",
            other => other,
        };
        let decided = match (decision, e.policies.is_empty()) {
            ("", _) => String::new(),
            (d, true) => format!(" [{d}]"),
            (d, false) => format!(" [{d} by {}]", e.policies.join(", ")),
        };
        let cred = if e.credential_id.is_empty() {
            String::new()
        } else {
            format!(" credential {}", e.credential_id)
        };
        let _ = writeln!(
            out,
            "  #{:<5} {}  {:<22} by {}{decided}{cred}: {}",
            e.seq,
            rfc3339(e.time),
            verb,
            e.actor,
            e.reason
        );
        if !e.trace.is_empty() {
            let _ = writeln!(out, "           trace {}", e.trace);
        }
        if kind == "revoked" {
            for r in t.acks.iter().filter(|r| r.seq == e.ref_seq) {
                if r.acks.is_empty() {
                    let _ = writeln!(out, "           not acknowledged by any subscriber yet");
                }
                for a in &r.acks {
                    let _ = writeln!(
                        out,
                        "           acknowledged by {} ({}) at {} (through seq {})",
                        a.subject,
                        a.actor,
                        rfc3339(a.time),
                        a.ref_seq
                    );
                }
            }
        }
    }
    out
}

/// `taskmint inventory`.
pub(super) async fn inventory(a: InventoryArgs) -> anyhow::Result<()> {
    let mut c = a.conn.connect().await?;
    let mut token = String::new();
    let mut count = 0usize;
    let mut grants = Vec::new();
    loop {
        let page = c
            .list_grants(pb::ListGrantsRequest {
                page_size: a.page_size,
                page_token: token.clone(),
                holder: a.holder.clone().unwrap_or_default(),
                owner: a.owner.clone().unwrap_or_default(),
                task_id: a.task.clone().unwrap_or_default(),
                break_glass_only: a.break_glass,
            })
            .await
            .map_err(|s| status_line(&s))?;
        for g in &page.grants {
            count += 1;
            let t = g.task.clone().unwrap_or_default();
            if a.json {
                let mut v = task_json(&t);
                v["remaining_seconds"] = json!(g.remaining_seconds);
                v["credentials"] = g
                    .credentials
                    .iter()
                    .map(|c| {
                        json!({
                            "id": c.id,
                            "kind": if c.kind == pb::CredentialKind::X509 as i32 { "x509" } else { "jwt" },
                            "audience": c.audience,
                            "expires_at": rfc3339(c.expires_at),
                        })
                    })
                    .collect();
                grants.push(v);
            } else {
                out::line(format_args!(
                    "holder {}  task {}  owner {}  {} active credential(s)  audiences [{}]  {}s left{}",
                    t.holder,
                    t.task_id,
                    if t.owner.is_empty() { "-" } else { &t.owner },
                    g.credentials.len(),
                    t.audiences.join(", "),
                    g.remaining_seconds,
                    if t.break_glass { "  BREAK-GLASS" } else { "" }
                ))?;
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    if a.json {
        out::json(&json!({ "grants": grants }))
    } else {
        out::line(format_args!("{count} active grant(s)"))
    }
}

#[cfg(test)]
mod tests {
    use super::ExpectedHead;

    #[test]
    fn expected_heads_parse_as_verify_prints_them() {
        let hash = "ab".repeat(32);
        let head: ExpectedHead = format!("12:{hash}").parse().unwrap();
        assert_eq!((head.seq, head.hash.as_str()), (12, hash.as_str()));
        for bad in [
            format!("0:{hash}"),
            format!("x:{hash}"),
            "12".to_owned(),
            "12:abc".to_owned(),
            format!("12:{}", hash.to_uppercase()),
        ] {
            let err = bad.parse::<ExpectedHead>().unwrap_err();
            assert!(err.contains("is not SEQ:HASH"), "{bad}: {err}");
        }
    }
}
