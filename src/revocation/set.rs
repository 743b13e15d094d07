//! Revocation events as Security Event Tokens (RFC 8417) with CAEP event
//! types: `credential-change` (change_type `revoke`) for a single credential,
//! `session-revoked` for a task.
//!
//! A `credential-change` for an X.509 credential carries `x509_issuer` (the
//! signing CA's subject, RFC 4514) and `x509_serial` (the serial in hex, as
//! taskmint names the credential and the CRL lists it), so a receiver that
//! knows certificates by issuer and serial can find the one revoked.
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

/// The SET claim set for an event; `x509_issuer` is the signing CA's
/// subject (RFC 4514), for X.509 credentials.
pub fn set_claims(iss: &str, x509_issuer: &str, e: &RevocationEvent) -> serde_json::Value {
    let reason = json!({ "en": e.reason });
    let (uri, body) = if e.kind == "credential" && e.credential_ids.len() == 1 {
        let id = &e.credential_ids[0];
        let kind = credential_type(id);
        let mut body = json!({
            "credential_type": kind,
            "change_type": "revoke",
            "event_timestamp": e.revoked_at,
            "reason_admin": reason,
        });
        if kind == "x509" {
            body["x509_issuer"] = json!(x509_issuer);
            body["x509_serial"] = json!(id);
        }
        (CREDENTIAL_CHANGE, body)
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
        let (a, b) = (
            set_claims("iss", "CN=ca", &event(1)),
            set_claims("iss", "CN=ca", &event(1)),
        );
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

    /// CAEP `credential-change` for an X.509 credential names its issuer and
    /// serial; a JWT's does not (it has neither).
    #[test]
    fn x509_credential_changes_carry_issuer_and_serial() {
        let serial = "0a".repeat(19);
        let mut e = event(2);
        e.credential_ids = vec![serial.clone()];
        let c = set_claims("iss", "CN=taskmint CA,O=example", &e);
        let body = &c["events"][CREDENTIAL_CHANGE];
        assert_eq!(body["credential_type"], "x509");
        assert_eq!(body["change_type"], "revoke");
        assert_eq!(body["x509_issuer"], "CN=taskmint CA,O=example");
        assert_eq!(body["x509_serial"], serial.as_str());
        let jwt = set_claims("iss", "CN=taskmint CA,O=example", &event(3));
        let body = &jwt["events"][CREDENTIAL_CHANGE];
        assert_eq!(body["credential_type"], "jwt");
        assert!(body.get("x509_issuer").is_none() && body.get("x509_serial").is_none());
    }
}
