//! The one place a crate [`Error`] becomes a `tonic::Status`. Caller mistakes
//! get their own code and a message naming the problem; internal failures are
//! logged in full and reach the wire as a bare "internal error".

use tonic::{Code, Status};

use crate::Error;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::InvalidArgument(_) | Error::TaskId(_) | Error::Csr(_) => Code::InvalidArgument,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::Store(_) | Error::Ca(_) | Error::Jwt(_) => {
                tracing::error!(error = %e, "internal error");
                return Status::internal("internal error");
            }
        };
        Status::new(code, e.to_string())
    }
}
