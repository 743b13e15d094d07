//! Revocation events as Security Event Tokens (RFC 8417) with CAEP event
//! types: `credential-change` (change_type `revoke`) for a single credential,
//! `session-revoked` for a task.
//!
//! A SET's `jti` is 128 random bits (hex), not derived from the sequence:
//! two deployments, or a database restored from a backup, hand out the same
//! sequence numbers for different events, and a receiver deduplicates on
//! `jti` (RFC 8417 §2.2). The sequence travels in `taskmint.seq`.

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
        "jti": hex::encode(crate::issuer::random_bytes::<16>()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64) -> RevocationEvent {
        RevocationEvent {
            seq,
            kind: "credential".into(),
            credential_ids: vec!["ab".repeat(16)],
            task_id: "t".into(),
            task_holder: "spiffe://example.org/a".into(),
            spiffe_id: "spiffe://example.org/a".into(),
            trust_domain: "example.org".into(),
            reason: "leaked".into(),
            revoked_at: 100,
            expires_at: 200,
            set_jwt: String::new(),
        }
    }

    /// Events with the same sequence (two deployments, a restored database)
    /// still get different `jti`s: 32 hex digits, 128 random bits.
    #[test]
    fn set_jtis_are_random_and_the_sequence_is_a_claim_of_its_own() {
        let (a, b) = (set_claims("iss", &event(1)), set_claims("iss", &event(1)));
        let (ja, jb) = (a["jti"].as_str().unwrap(), b["jti"].as_str().unwrap());
        assert_ne!(ja, jb);
        for j in [ja, jb] {
            assert_eq!(j.len(), 32, "{j}");
            assert!(
                j.bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
                "{j}"
            );
        }
        assert_eq!(a["taskmint"]["seq"], 1);
    }
}
