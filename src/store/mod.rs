//! Durable state behind one [`Store`] trait. Only this module knows SQL; the
//! rest of the crate sees records. Nothing is returned to a caller before the
//! store has committed it.
//!
//! Backends: [`SqliteStore`] (embedded default). Timestamps are Unix seconds
//! in `BIGINT` columns and conflicts use `ON CONFLICT`, so the schema carries
//! over to PostgreSQL unchanged.

mod sqlite;

pub use sqlite::SqliteStore;

/// A storage failure. The message is for logs; callers see only "internal".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or migrated.
    #[error("cannot open store `{path}`: {reason}")]
    Open {
        /// Where.
        path: String,
        /// Why.
        reason: String,
    },
    /// A query failed.
    #[error("store query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// A credential id was recorded twice (a random id collided).
    #[error("credential `{0}` already exists")]
    Duplicate(String),
    /// A stored value could not be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// The kind of a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    /// X.509-SVID.
    X509,
    /// JWT-SVID.
    Jwt,
}

impl CredentialKind {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::X509 => "x509",
            Self::Jwt => "jwt",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "x509" => Ok(Self::X509),
            "jwt" => Ok(Self::Jwt),
            other => Err(StoreError::Corrupt(format!("credential kind `{other}`"))),
        }
    }
}

/// One minted credential, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRecord {
    /// Serial hex (X.509) or `jti` (JWT).
    pub id: String,
    /// X.509 or JWT.
    pub kind: CredentialKind,
    /// The SPIFFE ID the credential names.
    pub spiffe_id: String,
    /// Owner of the task (a SPIFFE ID).
    pub task_owner: String,
    /// The task id, scoped to its owner.
    pub task_id: String,
    /// JWT audience; `None` for X.509.
    pub audience: Option<String>,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Lowercase hex SHA-256 of the caller's mTLS leaf.
    pub caller_cert_sha256: String,
    /// Unix seconds.
    pub issued_at: i64,
}

/// A task row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    /// The owner's SPIFFE ID.
    pub owner: String,
    /// The task id.
    pub task_id: String,
    /// Unix seconds: first use.
    pub created_at: i64,
}

/// Durable state. Implementations commit before they return `Ok`.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Records a credential, creating its task row on first use, in one
    /// transaction.
    async fn record_credential(&self, cred: &CredentialRecord) -> Result<(), StoreError>;

    /// One credential by id.
    async fn credential(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError>;

    /// Credentials of one task, oldest first.
    async fn task_credentials(
        &self,
        owner: &str,
        task_id: &str,
    ) -> Result<Vec<CredentialRecord>, StoreError>;

    /// One task by owner and id.
    async fn task(&self, owner: &str, task_id: &str) -> Result<Option<TaskRecord>, StoreError>;

    /// How many credentials are stored.
    async fn count_credentials(&self) -> Result<u64, StoreError>;
}
