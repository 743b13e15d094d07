//! SQLite backend: WAL journal, `synchronous=FULL` (a commit is on disk
//! before it returns), versioned migrations run at open.
//!
//! Writes are serialised by one write turn: the group-commit writer thread
//! (its own connection, see [`writer`]) and the other writes (the `writer`
//! pool's one sqlx connection) each hold it for their whole transaction. A
//! revocation's sequence number is therefore taken from the counter inside
//! its transaction and is gap-free in commit order, and a mint cannot slip in
//! between a task's completion and its cascade. (One gap: a sqlx transaction
//! dropped mid-way, by a cancelled call or an error, is rolled back by sqlx's
//! worker just after its turn is released. SQLite's own write lock still
//! serialises that rollback; the writer thread's `BEGIN IMMEDIATE` waits for
//! it within the busy timeout.) Reads use a separate pool and never wait for
//! a writer (WAL).
//!
//! The hot writes (recording a credential, beginning a task, appending audit
//! events) go through the group commit: many jobs in one transaction, each in
//! its own savepoint, each answered only after the commit. One fsync serves
//! many credentials; nothing is answered before it is durable.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::SqliteConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

mod writer;
use writer::{Job, Msg};

use super::{
    AckRecord, CredentialKind, CredentialRecord, CrlEntry, GrantFilter, RecordRefusal, Review,
    ReviewOutcome, Revocation, RevocationEvent, RevokeRequest, RevokeScope, SetSigner, Store,
    StoreError, TaskRecord, TaskState,
};
use crate::audit::{self, AuditDraft, AuditEvent};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations");

/// The embedded SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    jobs: mpsc::Sender<Msg>,
    /// Held for every write transaction, on either connection.
    turn: Arc<Mutex<()>>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `path` and migrates it.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        }
        let opts = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| open_err(e.to_string()))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await
            .map_err(|e| open_err(e.to_string()))?;
        MIGRATOR
            .run(&writer)
            .await
            .map_err(|e| open_err(format!("migration failed: {e}")))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.read_only(true))
            .await
            .map_err(|e| open_err(e.to_string()))?;
        let turn = Arc::new(Mutex::new(()));
        let jobs = writer::start(path, turn.clone())
            .map_err(|e| open_err(format!("cannot start the writer: {e}")))?;
        Ok(Self {
            writer,
            reader,
            jobs,
            turn,
        })
    }

    /// Queues the job `make` builds around its reply channel and waits for
    /// the answer, which comes after the batch commits.
    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> Result<T, StoreError> {
        let stopped = || StoreError::Batch("the writer stopped".into());
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Msg::Job(make(reply)))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Fills the store with `n` active JWT credentials (1000 workloads, one
    /// task each) and their audit events, chained like real ones, in one
    /// transaction: the "large store" of `taskmint bench`. Not for production
    /// data.
    pub async fn seed_credentials(&self, n: u64, now: i64) -> Result<(), StoreError> {
        use rand::RngCore;
        const WORKLOADS: u64 = 1000;
        const ROWS: usize = 1000;
        let _turn = self.turn.lock().await;
        let mut tx = self.writer.begin().await?;
        for w in 0..WORKLOADS.min(n.max(1)) {
            let mut t = TaskRecord::new(
                &format!("spiffe://example.org/workload/seed-{w}"),
                "seed",
                now,
                now + 8 * 3600,
            );
            t.accountable_owner = "team-seed".into();
            sqlx::query(&format!(
                "INSERT INTO tasks ({TASK_COLUMNS}) \
                 VALUES (?, ?, ?, '', '', '{{}}', TRUE, ?, 'active', NULL, ?, FALSE, '', NULL, NULL, NULL, NULL, NULL, 0, '[]')"
            ))
            .bind(&t.owner)
            .bind(&t.task_id)
            .bind(t.created_at)
            .bind(t.deadline)
            .bind(&t.accountable_owner)
            .execute(&mut *tx)
            .await?;
        }
        let mut rng = rand::rng();
        let mut done = 0u64;
        while done < n {
            let batch = (n - done).min(ROWS as u64);
            let mut creds = Vec::with_capacity(batch as usize);
            for i in done..done + batch {
                let mut jti = [0u8; 16];
                rng.fill_bytes(&mut jti);
                let holder = format!("spiffe://example.org/workload/seed-{}", i % WORKLOADS);
                creds.push((hex::encode(jti), holder));
            }
            let mut q = sqlx::QueryBuilder::<Sqlite>::new(format!(
                "INSERT INTO credentials ({CREDENTIAL_COLUMNS}) "
            ));
            q.push_values(&creds, |mut b, (id, holder)| {
                b.push_bind(id)
                    .push_bind("jwt")
                    .push_bind(holder)
                    .push_bind(holder)
                    .push_bind("seed")
                    .push_bind("db")
                    .push_bind(now - 10)
                    .push_bind(now + 3600)
                    .push_bind("00".repeat(32))
                    .push_bind(now)
                    .push_bind(None::<String>)
                    .push_bind(0i64)
                    .push_bind(None::<i64>)
                    .push_bind(None::<String>)
                    .push_bind(None::<i64>);
            });
            q.build().execute(&mut *tx).await?;
            let drafts = creds.iter().map(|(id, holder)| {
                AuditDraft::new(audit::kind::MINT_JWT, holder, now)
                    .task(holder, "seed", false)
                    .decided(audit::decision::ALLOW, &["seed".to_owned()])
                    .credential(id)
                    .because("seeded by taskmint bench")
            });
            append(&mut tx, drafts).await?;
            done += batch;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Finishes the queued writes and closes the writer thread's connection,
    /// then both pools (waiting for their connections to be returned).
    /// Writes submitted afterwards fail.
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.jobs.send(Msg::Close(reply)).await.is_ok() {
            let _ = done.await;
        }
        self.reader.close().await;
        self.writer.close().await;
    }
}

const CREDENTIAL_COLUMNS: &str = "id, kind, spiffe_id, task_owner, task_id, audience, \
     not_before, not_after, caller_cert_sha256, issued_at, predecessor, renewal_count, \
     revoked_at, revoke_reason, revocation_seq";

const TASK_COLUMNS: &str = "owner, task_id, created_at, purpose, ticket, labels, implicit, \
     deadline, state, ended_at, accountable_owner, break_glass, justification, reviewed_by, \
     reviewed_at, review_note, parent_owner, parent_task_id, depth, audiences";

const AUDIT_COLUMNS: &str = "seq, time, prev_hash, hash, kind, actor, task_owner, task_id, \
     credential_id, decision, policies, reason, break_glass, ref_seq, subject";

const AUDIT_INSERT: &str = "INSERT INTO audit (seq, time, prev_hash, hash, kind, actor, \
     task_owner, task_id, credential_id, decision, policies, reason, break_glass, ref_seq, \
     subject) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";

const HEAD_UPSERT: &str = "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2) \
     ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash";

const TASK_INSERT: &str = "INSERT INTO tasks (owner, task_id, created_at, purpose, ticket, \
     labels, implicit, deadline, state, ended_at, accountable_owner, break_glass, justification, \
     reviewed_by, reviewed_at, review_note, parent_owner, parent_task_id, depth, audiences) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
     ?19, ?20)";

const CREDENTIAL_INSERT: &str = "INSERT INTO credentials (id, kind, spiffe_id, task_owner, \
     task_id, audience, not_before, not_after, caller_cert_sha256, issued_at, predecessor, \
     renewal_count) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

const EVENT_COLUMNS: &str = "seq, kind, credential_ids, task_owner, task_id, spiffe_id, \
     trust_domain, reason, revoked_at, expires_at, set_jwt";

fn credential_from_row(r: &SqliteRow) -> Result<CredentialRecord, StoreError> {
    let revoked_at: Option<i64> = r.try_get("revoked_at")?;
    let revocation = match revoked_at {
        None => None,
        Some(revoked_at) => Some(Revocation {
            revoked_at,
            reason: r
                .try_get::<Option<String>, _>("revoke_reason")?
                .unwrap_or_default(),
            seq: r.try_get::<Option<i64>, _>("revocation_seq")?.unwrap_or(0) as u64,
        }),
    };
    Ok(CredentialRecord {
        id: r.try_get("id")?,
        kind: CredentialKind::parse(r.try_get::<&str, _>("kind")?)?,
        spiffe_id: r.try_get("spiffe_id")?,
        task_owner: r.try_get("task_owner")?,
        task_id: r.try_get("task_id")?,
        audience: r.try_get("audience")?,
        not_before: r.try_get("not_before")?,
        not_after: r.try_get("not_after")?,
        caller_cert_sha256: r.try_get("caller_cert_sha256")?,
        issued_at: r.try_get("issued_at")?,
        predecessor: r.try_get("predecessor")?,
        renewal_count: r.try_get::<i64, _>("renewal_count")? as u32,
        revocation,
    })
}

fn task_from_row(r: &SqliteRow) -> Result<TaskRecord, StoreError> {
    let labels: String = r.try_get("labels")?;
    Ok(TaskRecord {
        owner: r.try_get("owner")?,
        task_id: r.try_get("task_id")?,
        created_at: r.try_get("created_at")?,
        purpose: r.try_get("purpose")?,
        ticket: r.try_get("ticket")?,
        labels: serde_json::from_str(&labels)
            .map_err(|e| StoreError::Corrupt(format!("task labels: {e}")))?,
        implicit: r.try_get("implicit")?,
        deadline: r.try_get("deadline")?,
        state: TaskState::parse(r.try_get::<&str, _>("state")?)?,
        ended_at: r.try_get("ended_at")?,
        accountable_owner: r.try_get("accountable_owner")?,
        break_glass: r.try_get("break_glass")?,
        justification: r.try_get("justification")?,
        review: match r.try_get::<Option<String>, _>("reviewed_by")? {
            None => None,
            Some(by) => Some(Review {
                by,
                at: r.try_get::<Option<i64>, _>("reviewed_at")?.unwrap_or(0),
                note: r
                    .try_get::<Option<String>, _>("review_note")?
                    .unwrap_or_default(),
            }),
        },
        parent: match (
            r.try_get::<Option<String>, _>("parent_owner")?,
            r.try_get::<Option<String>, _>("parent_task_id")?,
        ) {
            (Some(o), Some(t)) => Some((o, t)),
            _ => None,
        },
        depth: r.try_get::<i64, _>("depth")? as u32,
        audiences: serde_json::from_str(r.try_get::<&str, _>("audiences")?)
            .map_err(|e| StoreError::Corrupt(format!("task audiences: {e}")))?,
    })
}

fn audit_from_row(r: &SqliteRow) -> Result<AuditEvent, StoreError> {
    let policies: String = r.try_get("policies")?;
    Ok(AuditEvent {
        seq: r.try_get::<i64, _>("seq")? as u64,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
        body: AuditDraft {
            time: r.try_get("time")?,
            kind: r.try_get("kind")?,
            actor: r.try_get("actor")?,
            task_owner: r.try_get("task_owner")?,
            task_id: r.try_get("task_id")?,
            credential_id: r.try_get("credential_id")?,
            decision: r.try_get("decision")?,
            policies: if policies.is_empty() {
                Vec::new()
            } else {
                policies.split(',').map(str::to_owned).collect()
            },
            reason: r.try_get("reason")?,
            break_glass: r.try_get("break_glass")?,
            ref_seq: r.try_get::<Option<i64>, _>("ref_seq")?.map(|s| s as u64),
            subject: r.try_get("subject")?,
        },
    })
}

/// The audit chain's head as the writer sees it inside a transaction.
#[derive(Debug, Clone)]
struct Head {
    seq: u64,
    hash: String,
    dirty: bool,
}

async fn load_head(conn: &mut SqliteConnection) -> Result<Head, StoreError> {
    let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match head {
        Some(r) => Head {
            seq: r.try_get::<i64, _>("seq")? as u64,
            hash: r.try_get("hash")?,
            dirty: false,
        },
        None => Head {
            seq: 0,
            hash: audit::GENESIS.to_owned(),
            dirty: false,
        },
    })
}

async fn store_head(conn: &mut SqliteConnection, head: &Head) -> Result<(), StoreError> {
    if head.dirty {
        sqlx::query(HEAD_UPSERT)
            .bind(head.seq as i64)
            .bind(&head.hash)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Chains `drafts` after `head` and inserts them; the caller stores the head.
async fn append_in(
    conn: &mut SqliteConnection,
    head: &mut Head,
    drafts: Vec<AuditDraft>,
) -> Result<Vec<AuditEvent>, StoreError> {
    let mut out = Vec::new();
    for d in drafts {
        let e = audit::seal(head.seq, &head.hash, d);
        sqlx::query(AUDIT_INSERT)
            .bind(e.seq as i64)
            .bind(e.body.time)
            .bind(&e.prev_hash)
            .bind(&e.hash)
            .bind(&e.body.kind)
            .bind(&e.body.actor)
            .bind(&e.body.task_owner)
            .bind(&e.body.task_id)
            .bind(&e.body.credential_id)
            .bind(&e.body.decision)
            .bind(e.body.policies.join(","))
            .bind(&e.body.reason)
            .bind(e.body.break_glass)
            .bind(e.body.ref_seq.map(|s| s as i64))
            .bind(&e.body.subject)
            .execute(&mut *conn)
            .await?;
        head.seq = e.seq;
        head.hash = e.hash.clone();
        head.dirty = true;
        out.push(e);
    }
    Ok(out)
}

/// Appends `drafts` to the audit chain inside `tx` and moves the head.
async fn append(
    tx: &mut Transaction<'_, Sqlite>,
    drafts: impl IntoIterator<Item = AuditDraft>,
) -> Result<Vec<AuditEvent>, StoreError> {
    let mut head = load_head(tx).await?;
    let out = append_in(tx, &mut head, drafts.into_iter().collect()).await?;
    store_head(tx, &head).await?;
    Ok(out)
}

/// Tasks delegated (transitively) from the tasks selected by `roots_sql`
/// (a query yielding `owner, task_id` with one `?` for `root`).
async fn descendants(
    tx: &mut Transaction<'_, Sqlite>,
    roots_sql: &str,
    binds: &[String],
) -> Result<Vec<(String, String)>, StoreError> {
    let sql = format!(
        "WITH RECURSIVE roots(owner, task_id) AS ({roots_sql}), \
         sub(owner, task_id) AS ( \
           SELECT t.owner, t.task_id FROM tasks t JOIN roots r \
             ON t.parent_owner = r.owner AND t.parent_task_id = r.task_id \
           UNION \
           SELECT t.owner, t.task_id FROM tasks t JOIN sub s \
             ON t.parent_owner = s.owner AND t.parent_task_id = s.task_id) \
         SELECT owner, task_id FROM sub ORDER BY owner, task_id"
    );
    let mut q = sqlx::query(&sql);
    for b in binds {
        q = q.bind(b);
    }
    let rows = q.fetch_all(&mut **tx).await?;
    rows.iter()
        .map(|r| Ok((r.try_get("owner")?, r.try_get("task_id")?)))
        .collect()
}

fn event_from_row(r: &SqliteRow) -> Result<RevocationEvent, StoreError> {
    let ids: String = r.try_get("credential_ids")?;
    Ok(RevocationEvent {
        seq: r.try_get::<i64, _>("seq")? as u64,
        kind: r.try_get("kind")?,
        credential_ids: serde_json::from_str(&ids)
            .map_err(|e| StoreError::Corrupt(format!("credential_ids: {e}")))?,
        task_owner: r.try_get("task_owner")?,
        task_id: r.try_get("task_id")?,
        spiffe_id: r.try_get("spiffe_id")?,
        trust_domain: r.try_get("trust_domain")?,
        reason: r.try_get("reason")?,
        revoked_at: r.try_get("revoked_at")?,
        expires_at: r.try_get("expires_at")?,
        set_jwt: r.try_get("set_jwt")?,
    })
}

async fn counter(tx: &mut Transaction<'_, Sqlite>, name: &str) -> Result<u64, StoreError> {
    let v: i64 = sqlx::query_scalar("SELECT value FROM counters WHERE name = ?")
        .bind(name)
        .fetch_one(&mut **tx)
        .await?;
    Ok(v as u64)
}

async fn bump(tx: &mut Transaction<'_, Sqlite>, name: &str) -> Result<u64, StoreError> {
    let v: i64 =
        sqlx::query_scalar("UPDATE counters SET value = value + 1 WHERE name = ? RETURNING value")
            .bind(name)
            .fetch_one(&mut **tx)
            .await?;
    Ok(v as u64)
}

async fn break_glass_of(
    tx: &mut Transaction<'_, Sqlite>,
    (owner, task_id): &(String, String),
) -> Result<bool, StoreError> {
    let bg: Option<bool> =
        sqlx::query_scalar("SELECT break_glass FROM tasks WHERE owner = ? AND task_id = ?")
            .bind(owner)
            .bind(task_id)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(bg.unwrap_or(false))
}

fn trust_domain_of(spiffe_id: &str) -> String {
    spiffe_id
        .strip_prefix("spiffe://")
        .and_then(|r| r.split('/').next())
        .unwrap_or_default()
        .to_owned()
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn begin_task(
        &self,
        t: &TaskRecord,
        audit: &[AuditDraft],
    ) -> Result<(TaskRecord, bool), StoreError> {
        let created = self
            .submit(|reply| Job::Begin {
                task: t.clone(),
                audit: audit.to_vec(),
                reply,
            })
            .await?;
        if created {
            return Ok((t.clone(), true));
        }
        // Committed before the answer, so the reader sees it.
        match self.task(&t.owner, &t.task_id).await? {
            Some(existing) => Ok((existing, false)),
            None => Err(StoreError::Corrupt(format!(
                "task `{}` exists for the writer but not for the reader",
                t.task_id
            ))),
        }
    }

    async fn record_credential(
        &self,
        c: &CredentialRecord,
        max_active: u32,
        audit: &[AuditDraft],
    ) -> Result<Result<(), RecordRefusal>, StoreError> {
        self.submit(|reply| Job::Record {
            cred: c.clone(),
            max_active,
            audit: audit.to_vec(),
            reply,
        })
        .await
    }

    async fn credential(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(credential_from_row).transpose()
    }

    async fn task_credentials(
        &self,
        owner: &str,
        task_id: &str,
    ) -> Result<Vec<CredentialRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials \
             WHERE task_owner = ? AND task_id = ? ORDER BY issued_at, id"
        ))
        .bind(owner)
        .bind(task_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(credential_from_row).collect()
    }

    async fn task(&self, owner: &str, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE owner = ? AND task_id = ?"
        ))
        .bind(owner)
        .bind(task_id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn count_credentials(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM credentials")
            .fetch_one(&self.reader)
            .await?;
        Ok(n as u64)
    }

    async fn revoke(
        &self,
        req: &RevokeRequest,
        sign: SetSigner<'_>,
    ) -> Result<Vec<RevocationEvent>, StoreError> {
        let _turn = self.turn.lock().await;
        let mut tx = self.writer.begin().await?;
        // Ending a task that already ended (a concurrent completion, or a
        // delegated task the reaper lists but a cascade ended first) does
        // and records nothing.
        if let (Some(_), RevokeScope::Task { owner, task_id }) = (req.end_task, &req.scope) {
            let state: Option<String> =
                sqlx::query_scalar("SELECT state FROM tasks WHERE owner = ? AND task_id = ?")
                    .bind(owner)
                    .bind(task_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if state.as_deref() != Some(TaskState::Active.as_str()) {
                return Ok(Vec::new());
            }
        }
        let (filter, binds): (&str, Vec<String>) = match &req.scope {
            RevokeScope::Credential(id) => ("id = ?", vec![id.clone()]),
            RevokeScope::Task { owner, task_id } => (
                "task_owner = ? AND task_id = ?",
                vec![owner.clone(), task_id.clone()],
            ),
            RevokeScope::Workload(id) => ("spiffe_id = ?", vec![id.clone()]),
            RevokeScope::TrustDomain(td) => (
                "(spiffe_id = ? OR spiffe_id LIKE ? ESCAPE '\\')",
                vec![
                    format!("spiffe://{td}"),
                    format!(
                        "spiffe://{}/%",
                        td.replace('\\', "\\\\")
                            .replace('%', "\\%")
                            .replace('_', "\\_")
                    ),
                ],
            ),
        };
        // Tasks delegated from the ones in scope get the same treatment.
        let cascaded = match (&req.scope, req.cascade) {
            (RevokeScope::Task { owner, task_id }, true) => {
                descendants(&mut tx, "SELECT ?, ?", &[owner.clone(), task_id.clone()]).await?
            }
            (RevokeScope::Workload(id), true) => {
                descendants(
                    &mut tx,
                    "SELECT owner, task_id FROM tasks WHERE owner = ?",
                    std::slice::from_ref(id),
                )
                .await?
            }
            _ => Vec::new(),
        };
        // Ending a task closes out every credential it ever had, expired or
        // not, so each one's record says how it ended; a plain revocation
        // touches only what is still valid.
        let still_valid = if req.end_task.is_some() {
            ""
        } else {
            "AND not_after > ?"
        };
        let mut creds = Vec::new();
        let mut scopes = vec![(filter, binds)];
        for (o, t) in &cascaded {
            scopes.push(("task_owner = ? AND task_id = ?", vec![o.clone(), t.clone()]));
        }
        for (filter, binds) in scopes {
            let sql = format!(
                "SELECT {CREDENTIAL_COLUMNS} FROM credentials \
                 WHERE {filter} AND revoked_at IS NULL {still_valid}"
            );
            let mut q = sqlx::query(&sql);
            for b in binds {
                q = q.bind(b);
            }
            if req.end_task.is_none() {
                q = q.bind(req.now);
            }
            for r in q.fetch_all(&mut *tx).await? {
                creds.push(credential_from_row(&r)?);
            }
        }
        creds.sort_by(|a, b| a.id.cmp(&b.id));
        creds.dedup_by(|a, b| a.id == b.id);

        // One event per task, in a stable order.
        let mut by_task: BTreeMap<(String, String), Vec<CredentialRecord>> = BTreeMap::new();
        for c in creds {
            by_task
                .entry((c.task_owner.clone(), c.task_id.clone()))
                .or_default()
                .push(c);
        }
        let mut audit_events = Vec::new();
        if !req.audit.kind.is_empty() {
            let mut a = req.audit.clone();
            if !a.task_id.is_empty() {
                let key = (a.task_owner.clone(), a.task_id.clone());
                a.break_glass |= break_glass_of(&mut tx, &key).await?;
            }
            audit_events.push(a);
        }
        let mut events = Vec::with_capacity(by_task.len());
        for ((owner, task_id), creds) in by_task {
            let seq = bump(&mut tx, "revocation_seq").await?;
            let spiffe_id = creds[0].spiffe_id.clone();
            let mut event = RevocationEvent {
                seq,
                kind: req.scope.kind().to_owned(),
                credential_ids: creds.iter().map(|c| c.id.clone()).collect(),
                task_owner: owner,
                task_id,
                trust_domain: trust_domain_of(&spiffe_id),
                spiffe_id,
                reason: req.reason.clone(),
                revoked_at: req.now,
                expires_at: creds.iter().map(|c| c.not_after).max().unwrap_or(req.now),
                set_jwt: String::new(),
            };
            event.set_jwt = sign(&event).map_err(StoreError::Corrupt)?;
            sqlx::query(&format!(
                "INSERT INTO revocations ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .bind(event.seq as i64)
            .bind(&event.kind)
            .bind(serde_json::to_string(&event.credential_ids).expect("ids serialise"))
            .bind(&event.task_owner)
            .bind(&event.task_id)
            .bind(&event.spiffe_id)
            .bind(&event.trust_domain)
            .bind(&event.reason)
            .bind(event.revoked_at)
            .bind(event.expires_at)
            .bind(&event.set_jwt)
            .execute(&mut *tx)
            .await?;
            for c in &creds {
                sqlx::query(
                    "UPDATE credentials SET revoked_at = ?, revoke_reason = ?, revocation_seq = ? \
                     WHERE id = ?",
                )
                .bind(req.now)
                .bind(&req.reason)
                .bind(seq as i64)
                .bind(&c.id)
                .execute(&mut *tx)
                .await?;
            }
            let key = (event.task_owner.clone(), event.task_id.clone());
            let mut a = AuditDraft::new(audit::kind::REVOKED, &req.audit.actor, req.now)
                .task(
                    &event.task_owner,
                    &event.task_id,
                    break_glass_of(&mut tx, &key).await?,
                )
                .decided(&req.audit.decision, &req.audit.policies)
                .credential(&event.credential_ids.join(","))
                .because(if cascaded.contains(&key) {
                    format!("{} (cascaded to a delegated task)", req.reason)
                } else {
                    req.reason.clone()
                });
            a.ref_seq = Some(seq);
            audit_events.push(a);
            events.push(event);
        }
        if let Some(state) = req.end_task {
            let mut ended: Vec<(String, String)> = Vec::new();
            if let RevokeScope::Task { owner, task_id } = &req.scope {
                ended.push((owner.clone(), task_id.clone()));
            }
            ended.extend(cascaded.iter().cloned());
            for (owner, task_id) in &ended {
                let changed = sqlx::query(
                    "UPDATE tasks SET state = ?, ended_at = ? \
                     WHERE owner = ? AND task_id = ? AND state = 'active'",
                )
                .bind(state.as_str())
                .bind(req.now)
                .bind(owner)
                .bind(task_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                let key = (owner.clone(), task_id.clone());
                if changed > 0 && cascaded.contains(&key) {
                    audit_events.push(
                        AuditDraft::new(&req.audit.kind, &req.audit.actor, req.now)
                            .task(owner, task_id, break_glass_of(&mut tx, &key).await?)
                            .decided(&req.audit.decision, &req.audit.policies)
                            .because(format!(
                                "{}: its parent task `{}` of `{}` ended",
                                state.as_str(),
                                req.audit.task_id,
                                req.audit.task_owner
                            )),
                    );
                }
            }
        }
        append(&mut tx, audit_events).await?;
        tx.commit().await?;
        Ok(events)
    }

    async fn due_tasks(&self, now: i64) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT owner, task_id FROM tasks WHERE state = 'active' AND deadline <= ? \
             ORDER BY deadline",
        )
        .bind(now)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("owner")?, r.try_get("task_id")?)))
            .collect()
    }

    async fn events_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<RevocationEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM revocations WHERE seq > ? ORDER BY seq LIMIT ?"
        ))
        .bind(after as i64)
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn unexpired_events(&self, now: i64) -> Result<Vec<RevocationEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM revocations WHERE expires_at > ? ORDER BY seq"
        ))
        .bind(now)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn current_seq(&self) -> Result<u64, StoreError> {
        let v: i64 = sqlx::query_scalar("SELECT value FROM counters WHERE name = 'revocation_seq'")
            .fetch_one(&self.reader)
            .await?;
        Ok(v as u64)
    }

    async fn pruned_through(&self) -> Result<u64, StoreError> {
        let v: i64 = sqlx::query_scalar("SELECT value FROM counters WHERE name = 'pruned_through'")
            .fetch_one(&self.reader)
            .await?;
        Ok(v as u64)
    }

    async fn prune_events(&self, before: i64) -> Result<u64, StoreError> {
        let _turn = self.turn.lock().await;
        let mut tx = self.writer.begin().await?;
        // Prune a prefix only: a cursor is valid iff it is >= pruned_through,
        // so nothing after the first retained event may go.
        let first_kept: Option<i64> =
            sqlx::query_scalar("SELECT MIN(seq) FROM revocations WHERE expires_at >= ?")
                .bind(before)
                .fetch_one(&mut *tx)
                .await?;
        let current = counter(&mut tx, "revocation_seq").await? as i64;
        let through = first_kept.map(|s| s - 1).unwrap_or(current);
        let pruned = counter(&mut tx, "pruned_through").await? as i64;
        if through <= pruned {
            return Ok(0);
        }
        let n = sqlx::query("DELETE FROM revocations WHERE seq <= ?")
            .bind(through)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("UPDATE counters SET value = ? WHERE name = 'pruned_through'")
            .bind(through)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn ack(&self, a: &AckRecord, mut audit: AuditDraft) -> Result<AckRecord, StoreError> {
        let _turn = self.turn.lock().await;
        let mut tx = self.writer.begin().await?;
        let before: Option<i64> =
            sqlx::query_scalar("SELECT acked_seq FROM subscriber_acks WHERE subscriber = ?")
                .bind(&a.subscriber)
                .fetch_optional(&mut *tx)
                .await?;
        sqlx::query(
            "INSERT INTO subscriber_acks (subscriber, spiffe_id, acked_seq, acked_at) \
             VALUES (?, ?, ?, ?) \
             ON CONFLICT (subscriber) DO UPDATE SET \
               spiffe_id = excluded.spiffe_id, \
               acked_at = excluded.acked_at, \
               acked_seq = MAX(subscriber_acks.acked_seq, excluded.acked_seq)",
        )
        .bind(&a.subscriber)
        .bind(&a.spiffe_id)
        .bind(a.acked_seq as i64)
        .bind(a.acked_at)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "SELECT subscriber, spiffe_id, acked_seq, acked_at FROM subscriber_acks WHERE subscriber = ?",
        )
        .bind(&a.subscriber)
        .fetch_one(&mut *tx)
        .await?;
        let after = ack_from_row(&row)?;
        if before.is_none_or(|b| (b as u64) < after.acked_seq) {
            audit.ref_seq = Some(after.acked_seq);
            append(&mut tx, [audit]).await?;
        }
        tx.commit().await?;
        Ok(after)
    }

    async fn acks(&self) -> Result<Vec<AckRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT subscriber, spiffe_id, acked_seq, acked_at FROM subscriber_acks ORDER BY subscriber",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(ack_from_row).collect()
    }

    async fn crl_entries(&self, now: i64) -> Result<Vec<CrlEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, revoked_at, revoke_reason FROM credentials \
             WHERE kind = 'x509' AND revoked_at IS NOT NULL AND not_after > ? ORDER BY revoked_at, id",
        )
        .bind(now)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(CrlEntry {
                    serial_hex: r.try_get("id")?,
                    revoked_at: r.try_get("revoked_at")?,
                    reason: r
                        .try_get::<Option<String>, _>("revoke_reason")?
                        .unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn bundle_sequence(&self, content_hash: &str) -> Result<u64, StoreError> {
        let current =
            sqlx::query("SELECT content_hash, sequence FROM bundle_sequence WHERE id = 1")
                .fetch_optional(&self.reader)
                .await?;
        if let Some(r) = &current
            && r.try_get::<&str, _>("content_hash")? == content_hash
        {
            return Ok(r.try_get::<i64, _>("sequence")? as u64);
        }
        let _turn = self.turn.lock().await;
        let mut tx = self.writer.begin().await?;
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO bundle_sequence (id, content_hash, sequence) VALUES (1, ?, 1) \
             ON CONFLICT (id) DO UPDATE SET \
               sequence = CASE WHEN bundle_sequence.content_hash = excluded.content_hash \
                               THEN bundle_sequence.sequence ELSE bundle_sequence.sequence + 1 END, \
               content_hash = excluded.content_hash \
             RETURNING sequence",
        )
        .bind(content_hash)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(seq as u64)
    }

    async fn next_crl_number(&self) -> Result<u64, StoreError> {
        let _turn = self.turn.lock().await;
        let mut tx = self.writer.begin().await?;
        let n = bump(&mut tx, "crl_number").await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn append_audit(&self, events: &[AuditDraft]) -> Result<Vec<AuditEvent>, StoreError> {
        self.submit(|reply| Job::Append {
            events: events.to_vec(),
            reply,
        })
        .await
    }

    async fn audit_after(&self, after: u64, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?"
        ))
        .bind(after as i64)
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn audit_head(&self) -> Result<Option<(u64, String)>, StoreError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_optional(&self.reader)
            .await?;
        row.map(|r| Ok((r.try_get::<i64, _>("seq")? as u64, r.try_get("hash")?)))
            .transpose()
    }

    async fn task_audit(&self, owner: &str, task_id: &str) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit WHERE task_owner = ? AND task_id = ? ORDER BY seq"
        ))
        .bind(owner)
        .bind(task_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn acks_covering(&self, seq: u64) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit WHERE seq IN ( \
               SELECT MIN(seq) FROM audit WHERE kind = 'ack' AND ref_seq >= ? GROUP BY subject) \
             ORDER BY seq"
        ))
        .bind(seq as i64)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn active_tasks(
        &self,
        filter: &GrantFilter,
        now: i64,
        after: Option<(String, String)>,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let (after_owner, after_task) = after.unwrap_or_default();
        let rows = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks \
             WHERE state = 'active' AND deadline > ? \
               AND (? IS NULL OR owner = ?) \
               AND (? IS NULL OR accountable_owner = ?) \
               AND (? IS NULL OR task_id = ?) \
               AND (? = 0 OR break_glass) \
               AND (owner > ? OR (owner = ? AND task_id > ?)) \
             ORDER BY owner, task_id LIMIT ?"
        ))
        .bind(now)
        .bind(&filter.workload)
        .bind(&filter.workload)
        .bind(&filter.owner)
        .bind(&filter.owner)
        .bind(&filter.task_id)
        .bind(&filter.task_id)
        .bind(filter.break_glass_only)
        .bind(&after_owner)
        .bind(&after_owner)
        .bind(&after_task)
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn break_glass_tasks(
        &self,
        include_reviewed: bool,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks \
             WHERE break_glass AND (? OR reviewed_at IS NULL) \
             ORDER BY created_at DESC, owner, task_id"
        ))
        .bind(include_reviewed)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn mark_reviewed(
        &self,
        owner: &str,
        task_id: &str,
        review: &Review,
        audit: AuditDraft,
    ) -> Result<ReviewOutcome, StoreError> {
        let _turn = self.turn.lock().await;
        let mut tx = self.writer.begin().await?;
        let select = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE owner = ? AND task_id = ?");
        let Some(row) = sqlx::query(&select)
            .bind(owner)
            .bind(task_id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(ReviewOutcome::NotFound);
        };
        let t = task_from_row(&row)?;
        if !t.break_glass {
            return Ok(ReviewOutcome::NotBreakGlass);
        }
        if t.review.is_some() {
            return Ok(ReviewOutcome::AlreadyReviewed(t));
        }
        sqlx::query(
            "UPDATE tasks SET reviewed_by = ?, reviewed_at = ?, review_note = ? \
             WHERE owner = ? AND task_id = ?",
        )
        .bind(&review.by)
        .bind(review.at)
        .bind(&review.note)
        .bind(owner)
        .bind(task_id)
        .execute(&mut *tx)
        .await?;
        append(&mut tx, [audit]).await?;
        let row = sqlx::query(&select)
            .bind(owner)
            .bind(task_id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ReviewOutcome::Reviewed(task_from_row(&row)?))
    }
}

fn ack_from_row(r: &SqliteRow) -> Result<AckRecord, StoreError> {
    Ok(AckRecord {
        subscriber: r.try_get("subscriber")?,
        spiffe_id: r.try_get("spiffe_id")?,
        acked_seq: r.try_get::<i64, _>("acked_seq")? as u64,
        acked_at: r.try_get("acked_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(owner: &str, id: &str, deadline: i64) -> TaskRecord {
        TaskRecord::new(owner, id, 100, deadline)
    }

    fn record(id: &str, owner: &str, task: &str) -> CredentialRecord {
        CredentialRecord {
            id: id.into(),
            kind: CredentialKind::Jwt,
            spiffe_id: owner.into(),
            task_owner: owner.into(),
            task_id: task.into(),
            audience: Some("db".into()),
            not_before: 100,
            not_after: 400,
            caller_cert_sha256: "ab".repeat(32),
            issued_at: 100,
            predecessor: None,
            renewal_count: 0,
            revocation: None,
        }
    }

    fn sign(e: &RevocationEvent) -> Result<String, String> {
        Ok(format!("set-{}", e.seq))
    }

    #[tokio::test]
    async fn records_survive_reopen_and_tasks_are_scoped_to_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/taskmint.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let a = "spiffe://example.org/workload/a";
        let b = "spiffe://example.org/workload/b";
        store
            .begin_task(&task(a, "build-42", 1000), &[])
            .await
            .unwrap();
        store
            .begin_task(&task(b, "build-42", 1000), &[])
            .await
            .unwrap();
        let (again, created) = store
            .begin_task(&task(a, "build-42", 5), &[])
            .await
            .unwrap();
        assert!(!created);
        assert_eq!(again.deadline, 1000);
        store
            .record_credential(&record("1", a, "build-42"), 100, &[])
            .await
            .unwrap()
            .unwrap();
        store
            .record_credential(&record("2", b, "build-42"), 100, &[])
            .await
            .unwrap()
            .unwrap();
        store
            .record_credential(&record("3", a, "build-42"), 100, &[])
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(
            store
                .record_credential(&record("3", a, "build-42"), 100, &[])
                .await,
            Err(StoreError::Duplicate(_))
        ));
        store.close().await;
        // Closed means closed: the writer is gone, nothing more is written.
        assert!(matches!(
            store
                .record_credential(&record("4", a, "build-42"), 100, &[])
                .await,
            Err(StoreError::Batch(_))
        ));

        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.count_credentials().await.unwrap(), 3);
        assert_eq!(
            store.task_credentials(a, "build-42").await.unwrap().len(),
            2
        );
        assert_eq!(
            store.task_credentials(b, "build-42").await.unwrap().len(),
            1
        );
        assert_eq!(
            store.credential("2").await.unwrap(),
            Some(record("2", b, "build-42"))
        );
    }

    #[tokio::test]
    async fn revocation_is_per_task_gap_free_and_ends_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        let a = "spiffe://example.org/workload/a";
        for t in ["t1", "t2"] {
            store.begin_task(&task(a, t, 1000), &[]).await.unwrap();
        }
        for (id, t) in [("1", "t1"), ("2", "t1"), ("3", "t2")] {
            store
                .record_credential(&record(id, a, t), 100, &[])
                .await
                .unwrap()
                .unwrap();
        }
        let req = |scope, end_task| RevokeRequest {
            scope,
            reason: "r".into(),
            now: 200,
            end_task,
            cascade: true,
            audit: AuditDraft::default(),
        };
        let ev = store
            .revoke(&req(RevokeScope::Credential("1".into()), None), &sign)
            .await
            .unwrap();
        assert_eq!(
            (ev[0].seq, ev[0].credential_ids.clone()),
            (1, vec!["1".to_owned()])
        );
        // Revoking again is a no-op: no event.
        assert!(
            store
                .revoke(&req(RevokeScope::Credential("1".into()), None), &sign)
                .await
                .unwrap()
                .is_empty()
        );
        let ev = store
            .revoke(&req(RevokeScope::Workload(a.into()), None), &sign)
            .await
            .unwrap();
        assert_eq!(ev.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(ev[0].credential_ids, vec!["2".to_owned()]);
        assert_eq!(ev[1].set_jwt, "set-3");
        let scope = RevokeScope::Task {
            owner: a.into(),
            task_id: "t1".into(),
        };
        assert!(
            store
                .revoke(&req(scope, Some(TaskState::Completed)), &sign)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store.task(a, "t1").await.unwrap().unwrap().state,
            TaskState::Completed
        );
        assert_eq!(
            store
                .record_credential(&record("9", a, "t1"), 100, &[])
                .await
                .unwrap(),
            Err(RecordRefusal::TaskEnded(TaskState::Completed))
        );
        assert_eq!(store.current_seq().await.unwrap(), 3);
        assert_eq!(store.events_after(1, 10).await.unwrap().len(), 2);
        // Pruning takes a prefix and remembers where it stopped.
        assert_eq!(store.prune_events(500).await.unwrap(), 3);
        assert_eq!(store.pruned_through().await.unwrap(), 3);
        assert_eq!(store.current_seq().await.unwrap(), 3);
    }
}
