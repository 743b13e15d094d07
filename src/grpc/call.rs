//! The request wrapper every handler of every service goes through: take
//! the caller the guard admitted (`guard.rs`), run the handler, tell the
//! observer (`observe.rs`) the task and credential for the call's log line,
//! and turn a crate error into a `tonic::Status` (via `status.rs`).

use std::future::Future;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::Error;
use crate::identity::Caller;
use crate::issuer::Issuer;

/// What every service holds: the domain issuer. Cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct Calls {
    pub(super) issuer: Arc<Issuer>,
    /// The service's short name (`Issuer`, `Revocations`, `Admin`), on the
    /// span of each call (so what a handler logs says which call it was
    /// in): `GetTrustBundle` is served by two.
    service: &'static str,
}

impl Calls {
    pub(super) fn new(service: &'static str, issuer: Arc<Issuer>) -> Self {
        Self { issuer, service }
    }

    /// Runs `f` for the admitted caller, notes the task, maps the error. `task` names
    /// the task of the request for the log line; `f` returns the reply and
    /// the credential id it concerns (empty if none), also for the log.
    pub(super) async fn handle<Req, Resp, F, Fut>(
        &self,
        rpc: &'static str,
        req: Request<Req>,
        task: impl FnOnce(&Req) -> String,
        f: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(Caller, Req) -> Fut,
        Fut: Future<Output = Result<(Resp, String), Error>>,
    {
        let note = req
            .extensions()
            .get::<super::observe::CallNote>()
            .cloned()
            .unwrap_or_default();
        // The guard admitted the call and left its caller here; without one
        // (a service mounted outside the guard) nobody is authenticated.
        let caller = req
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or(crate::identity::AuthError::NoCertificate);
        let body = req.into_inner();
        let task = task(&body);
        let result = match caller {
            // A replica that cannot read the database answers nothing from
            // what it remembers: the caller retries on another.
            Ok(_) if let Some(e) = self.issuer.revocations().unavailable() => Err(e.into()),
            Ok(c) => {
                let span = tracing::info_span!("call", service = self.service, method = rpc);
                tracing::Instrument::instrument(f(c, body), span).await
            }
            Err(e) => Err(Error::from(e)),
        };
        // The observer (`observe.rs`) writes the call's one log line.
        match result {
            Ok((resp, credential_id)) => {
                note.task(&task, &credential_id);
                Ok(Response::new(resp))
            }
            Err(e) => {
                note.task(&task, "");
                Err(Status::from(e))
            }
        }
    }

    /// `GetTrustBundle`, which the `Issuer` and `Revocations` services both
    /// serve.
    pub(super) async fn trust_bundle(
        &self,
        req: Request<super::pb::GetTrustBundleRequest>,
    ) -> Result<Response<super::pb::GetTrustBundleResponse>, Status> {
        self.handle(
            "GetTrustBundle",
            req,
            |_| String::new(),
            |_, _| async move {
                let b = self.issuer.trust_bundle().await?;
                Ok((
                    super::convert::bundle_pb(b, self.issuer.jwt_issuer()),
                    String::new(),
                ))
            },
        )
        .await
    }
}
