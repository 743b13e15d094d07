//! The one place a crate [`Error`] becomes a `tonic::Status`. Caller mistakes
//! get their own code and a message naming the problem; a store that cannot
//! take writes (disk full, I/O error) is UNAVAILABLE naming the condition;
//! other internal failures are logged in full and reach the wire as a bare
//! "internal error".

use tonic::{Code, Status};

use crate::Error;
use crate::store::StoreError;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::InvalidArgument(_) | Error::TaskId(_) | Error::Csr(_) => Code::InvalidArgument,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::ResourceExhausted { retry_after, .. } => {
                // The hint in the message, and machine-readable: whole
                // seconds (as HTTP Retry-After) and milliseconds.
                let mut s = Status::resource_exhausted(e.to_string());
                let ms = retry_after.as_millis().max(1);
                let md = s.metadata_mut();
                md.insert("retry-after-ms", ms.to_string().parse().expect("digits"));
                md.insert(
                    "retry-after",
                    ms.div_ceil(1000).to_string().parse().expect("digits"),
                );
                return s;
            }
            Error::Store(StoreError::Unavailable { condition, detail }) => {
                // The condition is the operator's to fix and the caller's to
                // wait out: say which. The driver's detail stays in the log.
                tracing::error!(%condition, %detail, "store unavailable");
                let outcome = if condition.nothing_stored() {
                    "nothing was recorded"
                } else {
                    "the request may not have been recorded"
                };
                return Status::unavailable(format!(
                    "store unavailable: {condition}; {outcome}, retry later"
                ));
            }
            Error::Store(StoreError::Closed) => {
                return Status::unavailable(
                    "the issuer is shutting down; retry on another replica",
                );
            }
            Error::Store(_) | Error::Ca(_) | Error::Jwt(_) | Error::Policy(_) => {
                tracing::error!(error = %e, "internal error");
                return Status::internal("internal error");
            }
        };
        Status::new(code, e.to_string())
    }
}
