//! The crate error: what a request can fail with, in domain terms. It names
//! no transport; `grpc::status` maps it to a `tonic::Status` in one place.

use crate::ca::{CaError, CsrError};
use crate::identity::{AuthError, TaskIdError};
use crate::jwt::JwtError;
use crate::policy::PolicyError;
use crate::store::StoreError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller is not (or no longer) authenticated.
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    /// A request field is invalid; the message names the field and value.
    #[error("{0}")]
    InvalidArgument(String),
    /// The task id is invalid.
    #[error(transparent)]
    TaskId(#[from] TaskIdError),
    /// The CSR is invalid.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The request is valid but cannot be served in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The named thing does not exist (or is not visible to the caller).
    #[error("{0}")]
    NotFound(String),
    /// The thing to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// Over a rate limit; retry after the given time.
    #[error("{message}")]
    ResourceExhausted {
        /// Names the limit and the wait.
        message: String,
        /// When a token is available again.
        retry_after: std::time::Duration,
    },
    /// The policy engine could not evaluate a request the server built (a
    /// bug); the detail is logged, never sent.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Storage failed; the detail is logged, never sent.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// X.509 signing failed; the detail is logged, never sent.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// JWT signing failed; the detail is logged, never sent.
    #[error(transparent)]
    Jwt(#[from] JwtError),
}

impl Error {
    /// A failure of the issuer rather than of the request.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            Self::Store(_) | Self::Ca(_) | Self::Jwt(_) | Self::Policy(_)
        )
    }
}
