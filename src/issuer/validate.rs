//! Input checks shared by the capabilities: free text, audiences, and
//! whether a task still accepts credentials.

use crate::Error;
use crate::clock::rfc3339;
use crate::store::{TaskRecord, TaskState};

/// Longest audience accepted, in bytes.
pub const MAX_AUDIENCE_LEN: usize = 256;

/// Longest justification accepted, in bytes.
pub const MAX_JUSTIFICATION_LEN: usize = 1024;

pub(super) fn check_text(field: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.len() > max {
        return Err(Error::InvalidArgument(format!(
            "{field} is {} bytes long; at most {max} are allowed",
            value.len()
        )));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(Error::InvalidArgument(format!(
            "{field} contains control characters"
        )));
    }
    Ok(())
}

pub(super) fn validate_audience(aud: &str) -> Result<(), Error> {
    if aud.is_empty() {
        return Err(Error::InvalidArgument("audience is empty".into()));
    }
    if aud.len() > MAX_AUDIENCE_LEN {
        return Err(Error::InvalidArgument(format!(
            "audience is {} bytes long; at most {MAX_AUDIENCE_LEN} are allowed",
            aud.len()
        )));
    }
    if aud.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::InvalidArgument(
            "audience contains whitespace or control characters".into(),
        ));
    }
    Ok(())
}

pub(super) fn validate_audiences(auds: &[String]) -> Result<Vec<String>, Error> {
    if auds.len() > 32 {
        return Err(Error::InvalidArgument(format!(
            "{} audiences given; at most 32 are allowed",
            auds.len()
        )));
    }
    let mut out: Vec<String> = Vec::new();
    for a in auds {
        validate_audience(a)?;
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    Ok(out)
}

pub(super) fn ensure_active(t: &TaskRecord, now: i64) -> Result<(), Error> {
    if t.state != TaskState::Active {
        return Err(Error::FailedPrecondition(format!(
            "task `{}` is {}; no more credentials are minted for it",
            t.task_id,
            t.state.as_str()
        )));
    }
    if t.deadline <= now {
        return Err(Error::FailedPrecondition(format!(
            "task `{}` reached its deadline at {}",
            t.task_id,
            rfc3339(t.deadline)
        )));
    }
    Ok(())
}
