//! Who is calling and what they name: the authenticated [`Caller`], the
//! validated [`TaskId`], per-trust-domain [`TrustBundles`], and the caller-SVID
//! rules ([`authenticate`]), and the SPIFFE Workload API as a source of SVIDs
//! and bundles ([`WorkloadApiSource`]).
//!
//! SPIFFE ID and trust-domain parsing is the `spiffe` crate's; this module only
//! adds the rules an issuer must enforce on a presented X.509-SVID.

mod bundle;
mod pattern;
mod svid;
mod workload_api;

pub use bundle::{Bundle, BundleError, TrustBundles};
pub use pattern::SpiffePattern;
pub use svid::{AuthError, authenticate, spiffe_id_of_leaf};
pub use workload_api::{
    DEFAULT_INITIAL_SYNC, ENDPOINT_ENV, WorkloadApiError, WorkloadApiSource, WorkloadSvid,
    endpoint_from_env,
};

pub use spiffe::{SpiffeId, TrustDomain};

/// A workload authenticated by its X.509-SVID for the life of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The SPIFFE ID from the leaf's URI SAN.
    pub spiffe_id: SpiffeId,
    /// Unix seconds: the leaf's notAfter. Credentials never outlive it, and a
    /// connection kept open past it stops being accepted.
    pub svid_not_after: i64,
    /// SHA-256 of the leaf certificate DER (for `cnf.x5t#S256` and the record).
    pub cert_sha256: [u8; 32],
}

/// Why a task id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TaskIdError {
    /// Empty string.
    #[error("task id is empty")]
    Empty,
    /// More than [`TaskId::MAX_LEN`] characters.
    #[error("task id is {0} characters long; at most 128 are allowed")]
    TooLong(usize),
    /// A character outside `[A-Za-z0-9._:-]`. The message shows the id and
    /// the character escaped: either may be invisible or reorder the text.
    #[error(
        "task id `{}` contains `{}`; only A-Z a-z 0-9 . _ : - are allowed",
        .id.escape_default(),
        .ch.escape_default()
    )]
    BadChar {
        /// The id as given (already known to be at most 128 chars).
        id: String,
        /// The first offending character.
        ch: char,
    },
}

/// A task id: 1-128 characters of `[A-Za-z0-9._:-]`. Scoped to its holder.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(String);

impl TaskId {
    /// Longest accepted id, in characters.
    pub const MAX_LEN: usize = 128;

    /// Validates `id`.
    pub fn parse(id: &str) -> Result<Self, TaskIdError> {
        if id.is_empty() {
            return Err(TaskIdError::Empty);
        }
        let len = id.chars().count();
        if len > Self::MAX_LEN {
            return Err(TaskIdError::TooLong(len));
        }
        if let Some(ch) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return Err(TaskIdError::BadChar {
                id: id.to_owned(),
                ch,
            });
        }
        Ok(Self(id.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids() {
        assert!(TaskId::parse("build-42").is_ok());
        assert!(TaskId::parse("ns:job_1.retry-2").is_ok());
        assert!(TaskId::parse(&"a".repeat(128)).is_ok());
        assert_eq!(TaskId::parse(""), Err(TaskIdError::Empty));
        assert_eq!(
            TaskId::parse(&"a".repeat(129)),
            Err(TaskIdError::TooLong(129))
        );
        assert!(matches!(
            TaskId::parse("a/b"),
            Err(TaskIdError::BadChar { ch: '/', .. })
        ));
        assert!(matches!(
            TaskId::parse("tâche"),
            Err(TaskIdError::BadChar { ch: 'â', .. })
        ));
        assert!(TaskId::parse("a b").is_err());
        // A bidi override is shown escaped, never as itself.
        let e = TaskId::parse("ab\u{202e}cd").unwrap_err().to_string();
        assert_eq!(
            e,
            "task id `ab\\u{202e}cd` contains `\\u{202e}`; only A-Z a-z 0-9 . _ : - are allowed"
        );
    }
}
