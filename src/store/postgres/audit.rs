//! The audit trail in PostgreSQL: the append-only `audit` table, its hash
//! chain, and the head row — chained after commit by a sealer, so that
//! writers on different replicas never queue on one lock.
//!
//! **Written with the state.** A transaction that changes state inserts its
//! audit rows *pending* — content only; `seq`, `prev_hash` and `hash` NULL —
//! in that same transaction, and takes no shared lock for them. Whatever
//! commits is audited; whatever rolls back leaves no event.
//!
//! **Chained by a sealer.** [`seal_page`] runs in a short transaction of its
//! own: it locks the `audit_head` row (only sealers take it), reads the
//! committed pending rows, numbers and chains them after the head with
//! [`audit::seal`] exactly as the SQLite backend does at write time, writes
//! `seq`, `prev_hash` and `hash` into them, moves the head and commits. The
//! lock is held for that one transaction, never for a writer's. Sealers on
//! several replicas serialise on the head row and read the pending rows only
//! after taking it, so none seals a row twice (the update also re-checks
//! `seq IS NULL`) and the chain stays linear. Who seals: the leader's loop
//! on each round ([`Store::seal_audit`]), and every read of the trail first
//! (so a reader sees every event committed before it asked, with no hole).
//! No writer seals, `append_audit` included: refused and denied calls, which
//! retry storms are made of, never wait for the head. With nothing pending,
//! the check is one probe of a partial index and takes no lock.
//!
//! **Chain order** is the order of sealing, not of insertion. Within one
//! sealing pass, each transaction's rows stay together, in the order they
//! were inserted, and transactions follow the order of the first row each
//! inserted (`id`, from a sequence). So where state is ordered by a row lock
//! held until commit and the events are inserted after taking it — the
//! revocation counter, a subscriber's acknowledgement — the chain follows
//! that order: the later transaction's rows are inserted after the earlier
//! one committed, and no pass sees the later without the earlier. Otherwise
//! a transaction that inserted first but committed last may be chained
//! after one that committed before it.
//!
//! **What is detected** (`taskmint audit verify`): a sealed row's content
//! changed, a sealed row deleted, sealed rows reordered or renumbered — each
//! named by the first sequence that fails. Triggers refuse these in the
//! first place: an update may only seal a pending row (set the three chain
//! columns once, change nothing else), deletes and truncation are refused,
//! and the head only moves forward; getting past them takes disabling the
//! triggers. A deleted tail together with a head rolled back to match it is
//! detected only against a head kept outside the database: `audit verify`
//! prints its head as `SEQ:HASH`, and `--expect-head` checks a later chain
//! still holds it. Pending rows — normally for well under a second
//! — are protected by those triggers only, not yet by the chain; `audit
//! verify` reports how many it saw.
//!
//! [`Store::seal_audit`]: crate::store::Store::seal_audit

use sqlx::{PgConnection, PgPool, Row};

use super::Pg;
use crate::audit::{self, AuditDraft, AuditEvent};
use crate::store::rows::{self, repeat_window};
use crate::store::{AuditCheckpoint, StoreError, repeats};

const COLUMNS: &str = "seq, time, prev_hash, hash, kind, actor, task_holder, task_id, \
     credential_id, decision, policies, reason, break_glass, ref_seq, subject, trace";

/// A pending row as the shared row mapping reads it: the chain columns are
/// placeholders, replaced when it is sealed.
const PENDING_COLUMNS: &str = "id, nth, 0::BIGINT AS seq, ''::TEXT AS prev_hash, \
     ''::TEXT AS hash, time, kind, actor, task_holder, task_id, credential_id, decision, \
     policies, reason, break_glass, ref_seq, subject, trace";

const INSERT: &str = "INSERT INTO audit (time, kind, actor, task_holder, task_id, \
     credential_id, decision, policies, reason, break_glass, ref_seq, subject, trace) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id";

/// How many transactions' events one sealing pass takes at most, so a
/// backlog is sealed in several short transactions rather than one long one.
const SEAL_PAGE: i64 = 256;

/// Inserts `drafts`, pending, in the caller's transaction; their row ids.
/// Takes no lock that another transaction could wait for.
pub(super) async fn append(
    conn: &mut PgConnection,
    drafts: impl IntoIterator<Item = AuditDraft>,
) -> Result<Vec<i64>, StoreError> {
    let mut ids = Vec::new();
    for b in drafts {
        let id: i64 = sqlx::query_scalar(INSERT)
            .bind(b.time)
            .bind(&b.kind)
            .bind(&b.actor)
            .bind(&b.task_holder)
            .bind(&b.task_id)
            .bind(&b.credential_id)
            .bind(&b.decision)
            .bind(b.policies.join(","))
            .bind(&b.reason)
            .bind(b.break_glass)
            .bind(b.ref_seq.map(|s| s as i64))
            .bind(&b.subject)
            .bind(&b.trace)
            .fetch_one(&mut *conn)
            .await
            .pg()?;
        ids.push(id);
    }
    Ok(ids)
}

/// Whether any committed row waits for its seal: one probe of the partial
/// index of pending rows, no lock.
pub(super) async fn anything_pending(pool: &PgPool) -> Result<bool, StoreError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM audit WHERE seq IS NULL)")
        .fetch_one(pool)
        .await
        .pg()
}

/// How many committed rows wait for their seal.
pub(super) async fn count_pending(pool: &PgPool) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit WHERE seq IS NULL")
        .fetch_one(pool)
        .await
        .pg()?;
    Ok(n as u64)
}

/// Locks the head row until `conn`'s transaction ends and seals, after it,
/// the pending rows of at most [`SEAL_PAGE`] transactions (whole ones, in
/// chain order); how many rows it sealed, and whether the page was full
/// (more may be pending).
pub(super) async fn seal_page(conn: &mut PgConnection) -> Result<(u64, bool), StoreError> {
    let (seq, hash): (i64, String) =
        sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
            .fetch_optional(&mut *conn)
            .await
            .pg()?
            .ok_or_else(|| StoreError::Corrupt("the audit head row is missing".into()))?;
    // Read only now, under the lock: what an earlier sealer committed while
    // this one waited is sealed already and no longer pending.
    let sql = format!(
        "SELECT {PENDING_COLUMNS} FROM ( \
           SELECT *, DENSE_RANK() OVER (ORDER BY first) AS nth FROM ( \
             SELECT *, MIN(id) OVER (PARTITION BY xact) AS first \
             FROM audit WHERE seq IS NULL) AS by_xact) AS ranked \
         WHERE nth <= $1 ORDER BY first, id"
    );
    let rows = sqlx::query(&sql)
        .bind(SEAL_PAGE)
        .fetch_all(&mut *conn)
        .await
        .pg()?;
    if rows.is_empty() {
        return Ok((0, false));
    }
    let (mut seq, mut hash) = (seq as u64, hash);
    let (mut ids, mut seqs, mut prevs, mut hashes) = (vec![], vec![], vec![], vec![]);
    let mut full = false;
    for r in &rows {
        ids.push(r.try_get::<i64, _>("id").pg()?);
        full |= r.try_get::<i64, _>("nth").pg()? >= SEAL_PAGE;
        let e = audit::seal(seq, &hash, from_row(r)?.body);
        seqs.push(e.seq as i64);
        prevs.push(e.prev_hash);
        hashes.push(e.hash.clone());
        (seq, hash) = (e.seq, e.hash);
    }
    let sealed = sqlx::query(
        "UPDATE audit SET seq = u.seq, prev_hash = u.prev_hash, hash = u.hash \
         FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[]) \
           AS u(id, seq, prev_hash, hash) \
         WHERE audit.id = u.id AND audit.seq IS NULL",
    )
    .bind(&ids)
    .bind(&seqs)
    .bind(&prevs)
    .bind(&hashes)
    .execute(&mut *conn)
    .await
    .pg()?
    .rows_affected();
    if sealed != ids.len() as u64 {
        // Only a writer that skipped the head lock could have sealed them.
        return Err(StoreError::Corrupt(format!(
            "{} of {} pending audit events were sealed by another writer",
            ids.len() as u64 - sealed,
            ids.len()
        )));
    }
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(seq as i64)
        .bind(&hash)
        .execute(conn)
        .await
        .pg()?;
    Ok((sealed, full))
}

use crate::store::rows::audit_event as from_row;

/// Sealed events with `seq > after`, in order, at most `limit`.
pub(super) async fn after(
    pool: &PgPool,
    after: u64,
    limit: u32,
) -> Result<Vec<AuditEvent>, StoreError> {
    super::seq_page(pool, (COLUMNS, "audit"), after, limit, from_row).await
}

/// The head record; `None` before the first sealed event (the row exists
/// from the start, at sequence 0, so sealers can lock it).
pub(super) async fn head(pool: &PgPool) -> Result<Option<(u64, String)>, StoreError> {
    let row: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1 AND seq > 0")
            .fetch_optional(pool)
            .await
            .pg()?;
    Ok(row.map(|(s, h)| (s as u64, h)))
}

/// Sealed events about one task at or after `since`, after `after`, in
/// order, at most `limit`.
pub(super) async fn of_task(
    pool: &PgPool,
    (holder, task_id): (&str, &str),
    since: i64,
    after: u64,
    limit: u32,
) -> Result<Vec<AuditEvent>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM audit \
         WHERE task_holder = $1 AND task_id = $2 AND seq > $3 AND time >= $4 \
         ORDER BY seq LIMIT $5"
    );
    let rows = sqlx::query(&sql)
        .bind(holder)
        .bind(task_id)
        .bind(after.min(i64::MAX as u64) as i64)
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .pg()?;
    rows.iter().map(from_row).collect()
}

/// For each subscriber, its first sealed acknowledgement event covering
/// `seq`.
pub(super) async fn acks_covering(pool: &PgPool, seq: u64) -> Result<Vec<AuditEvent>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM audit WHERE seq IN ( \
           SELECT MIN(seq) FROM audit WHERE kind = 'ack' AND ref_seq >= $1 GROUP BY subject) \
         ORDER BY seq"
    );
    let rows = sqlx::query(&sql)
        .bind(seq.min(i64::MAX as u64) as i64)
        .fetch_all(pool)
        .await
        .pg()?;
    rows.iter().map(from_row).collect()
}

const WINDOW_COLUMNS: &str = "window_start, repeats, first_repeat, last_repeat, last_reason, \
     kind, actor, task_holder, task_id, credential_id, decision, policies, break_glass, subject";

/// Appends a repeated event (see [`Store::append_audit_repeated`]) in the
/// caller's transaction; whether it was chained (inserted pending). A
/// repeat inside the open window is one `UPDATE` of the key's row. A new
/// key's row is inserted with `ON CONFLICT DO NOTHING`, so of replicas
/// racing on a new key one opens the window; otherwise the key's row is
/// locked, so repeats on several replicas are counted, not lost. Repeats of
/// one key queue on its row lock for the length of that short transaction
/// (never on the audit head).
///
/// [`Store::append_audit_repeated`]: crate::store::Store::append_audit_repeated
pub(super) async fn append_repeated(
    conn: &mut PgConnection,
    d: &AuditDraft,
    window: i64,
) -> Result<bool, StoreError> {
    let key = repeats::key(d);
    // The common case, a repeat inside the open window: one statement.
    let counted = sqlx::query(
        "UPDATE audit_repeats SET repeats = repeats + 1, \
         first_repeat = COALESCE(first_repeat, $2), last_repeat = $2, last_reason = $3 \
         WHERE key = $1 AND window_start > $2 - $4",
    )
    .bind(&key)
    .bind(d.time)
    .bind(&d.reason)
    .bind(window)
    .execute(&mut *conn)
    .await
    .pg()?
    .rows_affected()
        == 1;
    if counted {
        return Ok(false);
    }
    let opened = sqlx::query(
        "INSERT INTO audit_repeats (key, window_start, repeats, last_reason, kind, actor, \
         task_holder, task_id, credential_id, decision, policies, break_glass, subject) \
         VALUES ($1, $2, 0, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(&key)
    .bind(d.time)
    .bind(&d.reason)
    .bind(&d.kind)
    .bind(&d.actor)
    .bind(&d.task_holder)
    .bind(&d.task_id)
    .bind(&d.credential_id)
    .bind(&d.decision)
    .bind(d.policies.join(","))
    .bind(d.break_glass)
    .bind(&d.subject)
    .execute(&mut *conn)
    .await
    .pg()?
    .rows_affected()
        == 1;
    if opened {
        append(conn, [d.clone()]).await?;
        return Ok(true);
    }
    let row = sqlx::query(&format!(
        "SELECT {WINDOW_COLUMNS} FROM audit_repeats WHERE key = $1 FOR UPDATE"
    ))
    .bind(&key)
    .fetch_optional(&mut *conn)
    .await
    .pg()?;
    let Some(row) = row else {
        // Closed by the sweep between the insert and the lock: a new
        // window would race the sweep's delete; count it as chained now.
        append(conn, [d.clone()]).await?;
        return Ok(true);
    };
    let open = repeat_window(&row)?;
    if open.covers(d.time, window) {
        sqlx::query(
            "UPDATE audit_repeats SET repeats = repeats + 1, \
             first_repeat = COALESCE(first_repeat, $2), last_repeat = $2, last_reason = $3 \
             WHERE key = $1",
        )
        .bind(&key)
        .bind(d.time)
        .bind(&d.reason)
        .execute(&mut *conn)
        .await
        .pg()?;
        return Ok(false);
    }
    append(conn, open.summary()).await?;
    sqlx::query(
        "UPDATE audit_repeats SET window_start = $2, repeats = 0, first_repeat = NULL, \
         last_repeat = NULL, last_reason = $3 WHERE key = $1",
    )
    .bind(&key)
    .bind(d.time)
    .bind(&d.reason)
    .execute(&mut *conn)
    .await
    .pg()?;
    append(conn, [d.clone()]).await?;
    Ok(true)
}

/// Closes at most `limit` windows opened at or before `before` (skipping
/// rows a writer holds), chaining each one's summary; how many it closed.
pub(super) async fn close_windows(
    conn: &mut PgConnection,
    before: i64,
    limit: u32,
) -> Result<u64, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT key, {WINDOW_COLUMNS} FROM audit_repeats WHERE window_start <= $1 \
         ORDER BY window_start, key LIMIT $2 FOR UPDATE SKIP LOCKED"
    ))
    .bind(before)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await
    .pg()?;
    let mut keys = Vec::with_capacity(rows.len());
    for r in &rows {
        append(conn, repeat_window(r)?.summary()).await?;
        keys.push(r.try_get::<String, _>("key").pg()?);
    }
    if keys.is_empty() {
        return Ok(0);
    }
    sqlx::query("DELETE FROM audit_repeats WHERE key = ANY($1)")
        .bind(&keys)
        .execute(&mut *conn)
        .await
        .pg()?;
    Ok(keys.len() as u64)
}

const CHECKPOINT: &str = "SELECT seq, hash, archiving_to FROM audit_checkpoint WHERE id = 1";

/// The checkpoint.
pub(super) async fn checkpoint(pool: &PgPool) -> Result<AuditCheckpoint, StoreError> {
    let row = sqlx::query(CHECKPOINT).fetch_one(pool).await.pg()?;
    rows::checkpoint(&row)
}

/// The checkpoint, locked until the transaction ends.
async fn lock_checkpoint(conn: &mut PgConnection) -> Result<AuditCheckpoint, StoreError> {
    let row = sqlx::query(&format!("{CHECKPOINT} FOR UPDATE"))
        .fetch_one(conn)
        .await
        .pg()?;
    rows::checkpoint(&row)
}

/// Claims the prune of `(at, to]`; whether the claim stands.
pub(super) async fn claim_prune(
    conn: &mut PgConnection,
    at: u64,
    to: u64,
) -> Result<bool, StoreError> {
    let cp = lock_checkpoint(conn).await?;
    if cp.seq != at || to <= at || cp.archiving_to.is_some_and(|t| t != to) {
        return Ok(false);
    }
    sqlx::query("UPDATE audit_checkpoint SET archiving_to = $1 WHERE id = 1")
        .bind(to as i64)
        .execute(conn)
        .await
        .pg()?;
    Ok(true)
}

/// Moves the checkpoint to `to` (whose sealed event must have `hash`) and
/// deletes the events through it, if the claim of `(at, to]` stands.
pub(super) async fn commit_prune(
    conn: &mut PgConnection,
    at: u64,
    to: u64,
    hash: &str,
) -> Result<bool, StoreError> {
    let cp = lock_checkpoint(conn).await?;
    if cp.seq != at || cp.archiving_to != Some(to) {
        return Ok(false);
    }
    let stored: Option<String> = sqlx::query_scalar("SELECT hash FROM audit WHERE seq = $1")
        .bind(to as i64)
        .fetch_optional(&mut *conn)
        .await
        .pg()?;
    if stored.as_deref() != Some(hash) {
        return Err(StoreError::Corrupt(format!(
            "audit event {to} is not the one archived (its hash changed): nothing pruned"
        )));
    }
    // The checkpoint first: the trigger lets only events behind it go.
    sqlx::query(
        "UPDATE audit_checkpoint SET seq = $1, hash = $2, archiving_to = NULL WHERE id = 1",
    )
    .bind(to as i64)
    .bind(hash)
    .execute(&mut *conn)
    .await
    .pg()?;
    sqlx::query("DELETE FROM audit WHERE seq <= $1")
        .bind(to as i64)
        .execute(conn)
        .await
        .pg()?;
    Ok(true)
}
