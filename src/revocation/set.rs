//! Revocation events as Security Event Tokens (RFC 8417) with CAEP event
//! types: `credential-change` (change_type `revoke`) for a single credential,
//! `session-revoked` for a task.

use serde_json::json;

use crate::store::RevocationEvent;

const CREDENTIAL_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/credential-change";
const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";

/// X.509 credential ids are 19-byte serials (38 hex digits); JWT ids are
/// 16-byte `jti`s (32 hex digits).
fn credential_type(id: &str) -> &'static str {
    if id.len() == 38 { "x509" } else { "jwt" }
}

/// The SET claim set for an event.
pub fn set_claims(iss: &str, e: &RevocationEvent) -> serde_json::Value {
    let reason = json!({ "en": e.reason });
    let (uri, body) = if e.kind == "credential" && e.credential_ids.len() == 1 {
        let id = &e.credential_ids[0];
        (
            CREDENTIAL_CHANGE,
            json!({
                "credential_type": credential_type(id),
                "change_type": "revoke",
                "event_timestamp": e.revoked_at,
                "reason_admin": reason,
            }),
        )
    } else {
        (
            SESSION_REVOKED,
            json!({ "event_timestamp": e.revoked_at, "reason_admin": reason }),
        )
    };
    json!({
        "iss": iss,
        "iat": e.revoked_at,
        "jti": format!("rev-{}", e.seq),
        "txn": e.task_id,
        "sub_id": { "format": "uri", "uri": e.spiffe_id },
        "events": { uri: body },
        "taskmint": {
            "seq": e.seq,
            "kind": e.kind,
            "credential_ids": e.credential_ids,
            "task_id": e.task_id,
            "task_holder": e.task_holder,
            "trust_domain": e.trust_domain,
            "reason": e.reason,
            "expires_at": e.expires_at,
        },
    })
}
