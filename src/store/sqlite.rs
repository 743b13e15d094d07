//! SQLite backend: WAL journal, `synchronous=FULL` (a commit is on disk
//! before it returns), versioned migrations run at open.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use super::{CredentialKind, CredentialRecord, Store, StoreError, TaskRecord};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations");

/// The embedded SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
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
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| open_err(format!("migration failed: {e}")))?;
        Ok(Self { pool })
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn credential_from_row(r: &SqliteRow) -> Result<CredentialRecord, StoreError> {
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
    })
}

const CREDENTIAL_COLUMNS: &str = "id, kind, spiffe_id, task_owner, task_id, audience, \
     not_before, not_after, caller_cert_sha256, issued_at";

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn record_credential(&self, c: &CredentialRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO tasks (owner, task_id, created_at) VALUES (?, ?, ?) \
             ON CONFLICT (owner, task_id) DO NOTHING",
        )
        .bind(&c.task_owner)
        .bind(&c.task_id)
        .bind(c.issued_at)
        .execute(&mut *tx)
        .await?;
        let res = sqlx::query(&format!(
            "INSERT INTO credentials ({CREDENTIAL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&c.id)
        .bind(c.kind.as_str())
        .bind(&c.spiffe_id)
        .bind(&c.task_owner)
        .bind(&c.task_id)
        .bind(&c.audience)
        .bind(c.not_before)
        .bind(c.not_after)
        .bind(&c.caller_cert_sha256)
        .bind(c.issued_at)
        .execute(&mut *tx)
        .await;
        match res {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::Duplicate(c.id.clone()));
            }
            other => {
                other?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn credential(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
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
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(credential_from_row).collect()
    }

    async fn task(&self, owner: &str, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT owner, task_id, created_at FROM tasks WHERE owner = ? AND task_id = ?",
        )
        .bind(owner)
        .bind(task_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(TaskRecord {
                owner: r.try_get("owner")?,
                task_id: r.try_get("task_id")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .transpose()
    }

    async fn count_credentials(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM credentials")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        }
    }

    #[tokio::test]
    async fn records_survive_reopen_and_tasks_are_scoped_to_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/taskmint.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let a = "spiffe://example.org/workload/a";
        let b = "spiffe://example.org/workload/b";
        store
            .record_credential(&record("1", a, "build-42"))
            .await
            .unwrap();
        store
            .record_credential(&record("2", b, "build-42"))
            .await
            .unwrap();
        store
            .record_credential(&record("3", a, "build-42"))
            .await
            .unwrap();
        assert!(matches!(
            store.record_credential(&record("3", a, "x")).await,
            Err(StoreError::Duplicate(_))
        ));
        store.close().await;

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
        assert!(
            store.task(a, "x").await.unwrap().is_none(),
            "failed insert left a task"
        );
        assert!(store.task(b, "build-42").await.unwrap().is_some());
    }
}
