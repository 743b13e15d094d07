//! Input checks shared by the capabilities: free text, audiences, subscriber
//! names, SPIFFE IDs and trust domains named in requests, integer ranges, and
//! whether a task still accepts credentials.
//!
//! Every refusal is INVALID_ARGUMENT naming the field and the rule. Free text
//! refuses control characters and the invisible characters that make text
//! read differently from what it holds (bidi overrides and isolates, marks,
//! zero-width characters): a justification or an owner is read by a human in
//! a review, and must say what it appears to say.

use std::time::Duration;

use crate::Error;
use crate::clock::rfc3339;
use crate::identity::{SpiffeId, TrustDomain};
use crate::store::{TaskRecord, TaskState};

/// Longest audience accepted, in bytes.
pub const MAX_AUDIENCE_LEN: usize = 256;

/// Longest justification accepted, in bytes.
pub const MAX_JUSTIFICATION_LEN: usize = 1024;

/// Longest subscriber name accepted, in bytes.
pub const MAX_SUBSCRIBER_LEN: usize = 128;

/// Largest sequence number a request may name: sequences are stored as
/// signed 64-bit integers, so a larger one would wrap.
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// Longest duration a request may name (ttl, lifetime): 10 years. Limits in
/// config are far below; this only keeps arithmetic on seconds exact.
pub const MAX_REQUEST_DURATION: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// Why a character is refused in free text, if it is: control characters
/// (C0, DEL, C1), bidi embeddings, overrides, isolates and marks, and
/// zero-width characters.
pub(crate) fn forbidden_char(c: char) -> Option<&'static str> {
    match c {
        '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{061c}' => Some("a bidirectional control character"),
        '\u{200b}'..='\u{200d}' | '\u{2060}' | '\u{feff}' => Some("a zero-width character"),
        c if c.is_control() => Some("a control character"),
        _ => None,
    }
}

/// Refuses text that holds a forbidden character, naming the field, the
/// rule and the code point (never the character itself, which may be
/// invisible or reorder the message).
pub(crate) fn check_chars(field: &str, value: &str) -> Result<(), Error> {
    if let Some((c, why)) = value
        .chars()
        .find_map(|c| forbidden_char(c).map(|why| (c, why)))
    {
        return Err(Error::InvalidArgument(format!(
            "{field} contains {why} (U+{:04X}); free text may not hold control, bidi or zero-width characters",
            c as u32
        )));
    }
    Ok(())
}

pub(super) fn check_text(field: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.len() > max {
        return Err(Error::InvalidArgument(format!(
            "{field} is {} bytes long; at most {max} are allowed",
            value.len()
        )));
    }
    check_chars(field, value)
}

pub(super) fn validate_audience(aud: &str) -> Result<(), Error> {
    if aud.is_empty() {
        return Err(Error::InvalidArgument("audience is empty".into()));
    }
    check_text("audience", aud, MAX_AUDIENCE_LEN)?;
    if aud.chars().any(char::is_whitespace) {
        return Err(Error::InvalidArgument(
            "audience contains whitespace".into(),
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

/// A subscriber name, as watches and acknowledgements both take it: 1-128
/// bytes of `[A-Za-z0-9._:-]`, the alphabet of task ids (a name is an
/// identifier an operator configures, never prose).
pub(crate) fn validate_subscriber(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::InvalidArgument("subscriber name is empty".into()));
    }
    check_text("subscriber", name, MAX_SUBSCRIBER_LEN)?;
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(Error::InvalidArgument(format!(
            "subscriber contains `{c}`; only A-Z a-z 0-9 . _ : - are allowed"
        )));
    }
    Ok(())
}

/// Whether the authority of `spiffe://AUTHORITY/...` (or a bare trust
/// domain) holds an uppercase letter. The SPIFFE ID spec allows lowercase
/// only; the `spiffe` crate would fold it, so `EXAMPLE.ORG` would name
/// `example.org`.
fn uppercase_trust_domain(text: &str) -> bool {
    let authority = text
        .strip_prefix("spiffe://")
        .map_or(text, |rest| rest.split('/').next().unwrap_or_default());
    authority.bytes().any(|b| b.is_ascii_uppercase())
}

/// A SPIFFE ID named in a request field (a delegate, a workload to revoke, a
/// task holder, a filter), checked as strictly as a caller's SVID: no case
/// folding of the trust domain, no root ID, no control characters.
pub(crate) fn spiffe_id(field: &str, value: &str) -> Result<SpiffeId, Error> {
    check_chars(field, value)?;
    if uppercase_trust_domain(value) {
        return Err(Error::InvalidArgument(format!(
            "{field} `{value}`: the trust domain of a SPIFFE ID must be lowercase"
        )));
    }
    let id = SpiffeId::new(value).map_err(|e| {
        Error::InvalidArgument(format!("{field} `{value}` is not a SPIFFE ID: {e}"))
    })?;
    if id.path().is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{field} `{value}` names a trust domain, not a workload"
        )));
    }
    Ok(id)
}

/// A trust domain named in a request field, lowercase only.
pub(crate) fn trust_domain(field: &str, value: &str) -> Result<TrustDomain, Error> {
    check_chars(field, value)?;
    if uppercase_trust_domain(value) {
        return Err(Error::InvalidArgument(format!(
            "{field} `{value}`: a trust domain must be lowercase"
        )));
    }
    TrustDomain::new(value).map_err(|e| {
        Error::InvalidArgument(format!("{field} `{value}` is not a trust domain: {e}"))
    })
}

/// A sequence number named in a request: at most [`MAX_SEQ`].
pub(crate) fn seq(field: &str, value: u64) -> Result<u64, Error> {
    if value > MAX_SEQ {
        return Err(Error::InvalidArgument(format!(
            "{field} is {value}; at most {MAX_SEQ} is allowed"
        )));
    }
    Ok(value)
}

/// A duration named in a request: at most [`MAX_REQUEST_DURATION`] (the
/// configured limits, far lower, are checked where they apply).
pub(crate) fn duration(field: &str, value: Option<Duration>) -> Result<Option<Duration>, Error> {
    match value {
        Some(d) if d > MAX_REQUEST_DURATION => Err(Error::InvalidArgument(format!(
            "{field} is {} seconds; at most {} are allowed",
            d.as_secs(),
            MAX_REQUEST_DURATION.as_secs()
        ))),
        other => Ok(other),
    }
}

/// A page size: 0 (the default) up to `max`.
pub(crate) fn page_size(field: &str, value: u32, max: u32) -> Result<u32, Error> {
    if value > max {
        return Err(Error::InvalidArgument(format!(
            "{field} is {value}; at most {max} are allowed"
        )));
    }
    Ok(value)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(r: Result<impl std::fmt::Debug, Error>) -> String {
        match r {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    /// Every invisible or reordering character the rule names is refused,
    /// with the field and the code point in the message.
    #[test]
    fn free_text_refuses_bidi_zero_width_and_control_characters() {
        let bad = [
            '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200e}', '\u{200f}', '\u{061c}', '\u{200b}', '\u{200c}',
            '\u{200d}', '\u{2060}', '\u{feff}', '\u{0}', '\n', '\u{7f}', '\u{85}',
        ];
        for c in bad {
            let m = refused(check_text("justification", &format!("ok{c}ok"), 100));
            assert!(m.starts_with("justification contains"), "{m}");
            assert!(m.contains(&format!("U+{:04X}", c as u32)), "{m}");
            assert!(
                !m.contains(c),
                "the message must not carry the character: {m}"
            );
        }
        // Ordinary text in any script passes, as do marks that are not
        // invisible (an accent) and plain spaces.
        for ok in [
            "incident INC-42: db down",
            "équipe données",
            "運用チーム",
            "a\u{301}",
        ] {
            check_text("owner", ok, 100).unwrap();
        }
        assert!(refused(check_text("owner", &"x".repeat(101), 100)).contains("at most 100"));
    }

    #[test]
    fn subscriber_names_are_identifiers() {
        validate_subscriber("enforcer-1.eu:a_b").unwrap();
        assert!(refused(validate_subscriber("")).contains("empty"));
        assert!(refused(validate_subscriber("a b")).contains("only A-Z"));
        assert!(refused(validate_subscriber("a\u{202e}b")).contains("bidirectional"));
        assert!(refused(validate_subscriber(&"a".repeat(129))).contains("at most 128"));
    }

    #[test]
    fn request_spiffe_ids_and_trust_domains_are_not_case_folded() {
        spiffe_id("delegate", "spiffe://example.org/a").unwrap();
        let m = refused(spiffe_id("delegate", "spiffe://EXAMPLE.org/a"));
        assert!(m.starts_with("delegate `spiffe://EXAMPLE.org/a`"), "{m}");
        assert!(m.contains("lowercase"), "{m}");
        // The path may hold uppercase: only the trust domain is folded.
        spiffe_id("delegate", "spiffe://example.org/Build/A").unwrap();
        assert!(refused(spiffe_id("spiffe_id", "spiffe://example.org")).contains("not a workload"));
        assert!(
            refused(spiffe_id("spiffe_id", "http://example.org/a")).contains("not a SPIFFE ID")
        );
        assert!(
            refused(spiffe_id("spiffe_id", "spiffe://example.org/a\u{200b}"))
                .contains("zero-width")
        );
        trust_domain("trust_domain", "example.org").unwrap();
        assert!(refused(trust_domain("trust_domain", "Example.org")).contains("lowercase"));
    }

    #[test]
    fn integers_are_range_checked() {
        assert_eq!(seq("after_seq", MAX_SEQ).unwrap(), MAX_SEQ);
        assert!(refused(seq("after_seq", MAX_SEQ + 1)).starts_with("after_seq is"));
        assert!(refused(seq("up_to_seq", u64::MAX)).starts_with("up_to_seq is"));
        assert!(duration("ttl_seconds", None).unwrap().is_none());
        duration("ttl_seconds", Some(MAX_REQUEST_DURATION)).unwrap();
        let m = refused(duration("ttl_seconds", Some(Duration::from_secs(u64::MAX))));
        assert!(
            m.starts_with("ttl_seconds is 18446744073709551615 seconds"),
            "{m}"
        );
        assert_eq!(page_size("page_size", 500, 500).unwrap(), 500);
        assert!(refused(page_size("page_size", 501, 500)).starts_with("page_size is 501"));
    }
}
