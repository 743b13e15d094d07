//! Retention of the audit trail, end to end on a SQLite store: events
//! archived and pruned behind the checkpoint, `taskmint audit verify`
//! proving archive and stored trail together, and tampering after pruning
//! — in the store, in the archive, or by pruning without archiving — found.

mod common;

use std::path::{Path, PathBuf};

use common::TD;
use taskmint::audit::{AuditDraft, kind};
use taskmint::store::{SqliteStore, Store};

/// A dev trust domain in `dir`; its config path.
fn dev_dir(dir: &Path) -> PathBuf {
    taskmint::devca::init(dir, TD, &["agent".to_owned()], "127.0.0.1:0", false).unwrap();
    dir.join("taskmint.toml")
}

/// Runs `taskmint audit verify` on the store at `db` with the archive at
/// `archive`: whether it passed, and what it printed.
fn verify(dir: &Path, db: &Path, archive: &Path) -> (bool, String) {
    let text = std::fs::read_to_string(dir.join("taskmint.toml"))
        .unwrap()
        .replace(
            taskmint::devca::SQLITE_STORE_LINE,
            &format!(
                "path = {:?}\naudit_archive = {:?}",
                db.display().to_string(),
                archive.display().to_string()
            ),
        );
    let cfg = dir.join(format!(
        "verify-{}.toml",
        db.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&cfg, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_taskmint"))
        .args(["audit", "verify", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn sql(db: &Path, statements: &[&str]) -> Result<(), String> {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    let mut result = Ok(());
    for q in statements {
        if let Err(e) = sqlx::query(q).execute(&pool).await {
            result = Err(e.to_string());
            break;
        }
    }
    pool.close().await;
    result
}

/// A copy of the store (its WAL folded in first) and of the archive.
async fn copy(db: &Path, archive: &Path, name: &str) -> (PathBuf, PathBuf) {
    sql(db, &["PRAGMA wal_checkpoint(TRUNCATE)"]).await.unwrap();
    let dir = db.parent().unwrap();
    let (db2, archive2) = (
        dir.join(format!("{name}.db")),
        dir.join(format!("{name}-archive")),
    );
    std::fs::copy(db, &db2).unwrap();
    std::fs::create_dir_all(&archive2).unwrap();
    for f in std::fs::read_dir(archive).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), archive2.join(f.file_name())).unwrap();
    }
    (db2, archive2)
}

#[tokio::test]
async fn a_pruned_trail_verifies_with_its_archive_and_tampering_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    dev_dir(dir);
    let db = dir.join("data/taskmint.db");
    let archive = dir.join("archive");
    let store = SqliteStore::open(&db).await.unwrap();
    let drafts: Vec<_> = (0..30)
        .map(|n| {
            AuditDraft::new(
                kind::STATUS_CHECK,
                "spiffe://example.org/workload/agent",
                100 + n,
            )
            .because(format!("event {}", n + 1))
        })
        .collect();
    store.append_audit(&drafts).await.unwrap();
    // Events of times 100..=119 are older than 120: seq 1..=20 go, and
    // the prune is recorded as event 31.
    let mut pruned = 0;
    loop {
        let n = taskmint::retention::prune_audit_batch(
            &store,
            &archive,
            120,
            "spiffe://example.org/taskmint",
        )
        .await
        .unwrap();
        if n == 0 {
            break;
        }
        pruned += n;
    }
    assert_eq!(pruned, 20);
    assert_eq!(store.audit_after(0, 1).await.unwrap()[0].seq, 21);
    store.close().await;

    let (ok, out) = verify(dir, &db, &archive);
    assert!(ok, "{out}");
    assert!(
        out.contains("audit trail intact: events 21..=31 stored")
            && out.contains("archive intact: events 1..=20 in 1 files"),
        "{out}"
    );

    // The guards: a stored event cannot be deleted, the checkpoint cannot
    // go back or be removed.
    let err = sql(&db, &["DELETE FROM audit WHERE seq = 25"])
        .await
        .unwrap_err();
    assert!(err.contains("only events behind the checkpoint"), "{err}");
    let err = sql(&db, &["UPDATE audit_checkpoint SET seq = 3 WHERE id = 1"])
        .await
        .unwrap_err();
    assert!(err.contains("only moves forward"), "{err}");
    let err = sql(&db, &["DELETE FROM audit_checkpoint"])
        .await
        .unwrap_err();
    assert!(err.contains("only moves forward"), "{err}");

    // A stored event edited after pruning (guards dropped first).
    let (edited, edited_archive) = copy(&db, &archive, "edited").await;
    sql(
        &edited,
        &[
            "DROP TRIGGER audit_no_update",
            "UPDATE audit SET reason = 'nothing happened' WHERE seq = 25",
        ],
    )
    .await
    .unwrap();
    let (ok, out) = verify(dir, &edited, &edited_archive);
    assert!(
        !ok && out.contains("broken at seq 25") && out.contains("edited"),
        "{out}"
    );

    // An archived event edited.
    let (db2, tampered) = copy(&db, &archive, "archive-edited").await;
    let file = std::fs::read_dir(&tampered)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replacen("event 7\"", "event 77\"", 1)).unwrap();
    let (ok, out) = verify(dir, &db2, &tampered);
    assert!(!ok && out.contains("broken at seq 7"), "{out}");

    // Events deleted without being archived, the checkpoint moved to match
    // (guards dropped): the archive no longer reaches the checkpoint.
    let (unarchived, same_archive) = copy(&db, &archive, "unarchived").await;
    sql(
        &unarchived,
        &[
            "DROP TRIGGER audit_no_delete",
            "DROP TRIGGER audit_checkpoint_forward",
            "UPDATE audit_checkpoint SET seq = 22, \
               hash = (SELECT hash FROM audit WHERE seq = 22) WHERE id = 1",
            "DELETE FROM audit WHERE seq <= 22",
        ],
    )
    .await
    .unwrap();
    let (ok, out) = verify(dir, &unarchived, &same_archive);
    assert!(
        !ok && out.contains("does not reach the checkpoint 22:"),
        "{out}"
    );

    // The checkpoint moved without deleting: the stored chain no longer
    // starts where it says.
    let (moved, moved_archive) = copy(&db, &archive, "moved").await;
    sql(
        &moved,
        &[
            "DROP TRIGGER audit_checkpoint_forward",
            "UPDATE audit_checkpoint SET seq = 19, \
               hash = '0000000000000000000000000000000000000000000000000000000000000000'",
        ],
    )
    .await
    .unwrap();
    let (ok, out) = verify(dir, &moved, &moved_archive);
    assert!(!ok, "{out}");
}
