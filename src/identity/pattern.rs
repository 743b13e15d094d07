//! SPIFFE ID patterns for config rules (policy groups, ownership rules):
//! `spiffe://example.org/ci/*` matches one path segment in place of `*`,
//! a trailing `/**` matches any (non-empty) rest of the path, and anything
//! else must match exactly.

/// A validated pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffePattern {
    text: String,
}

impl SpiffePattern {
    /// Validates a pattern: a SPIFFE ID whose trust domain has no wildcard.
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix("spiffe://")
            .ok_or_else(|| format!("pattern `{text}` does not start with spiffe://"))?;
        let td = rest.split('/').next().unwrap_or_default();
        if td.is_empty() || td.contains('*') {
            return Err(format!(
                "pattern `{text}`: the trust domain must be given exactly"
            ));
        }
        let segments: Vec<&str> = rest.split('/').skip(1).collect();
        for (i, s) in segments.iter().enumerate() {
            if s.contains("**") && (*s != "**" || i + 1 != segments.len()) {
                return Err(format!(
                    "pattern `{text}`: `**` may only be the whole last segment"
                ));
            }
        }
        if !text.contains('*') {
            spiffe::SpiffeId::new(text).map_err(|e| format!("pattern `{text}`: {e}"))?;
        }
        Ok(Self {
            text: text.to_owned(),
        })
    }

    /// Does the SPIFFE ID `id` match?
    pub fn matches(&self, id: &str) -> bool {
        let mut p = self.text.split('/');
        let mut s = id.split('/');
        loop {
            match (p.next(), s.next()) {
                (None, None) => return true,
                (Some("**"), Some(seg)) => return !seg.is_empty(),
                (Some(ps), Some(ss)) if segment_matches(ps, ss) => {}
                _ => return false,
            }
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// One segment: `*` stands for any run of characters (within the segment).
fn segment_matches(pattern: &str, seg: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == seg,
        Some((head, tail)) => {
            seg.len() >= head.len()
                && seg.starts_with(head)
                && (0..=seg.len() - head.len())
                    .any(|i| segment_matches(tail, &seg[head.len() + i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = |t| SpiffePattern::parse(t).unwrap();
        assert!(p("spiffe://example.org/ci/*").matches("spiffe://example.org/ci/runner"));
        assert!(!p("spiffe://example.org/ci/*").matches("spiffe://example.org/ci/a/b"));
        assert!(!p("spiffe://example.org/ci/*").matches("spiffe://example.org/cix/a"));
        assert!(p("spiffe://example.org/ci/**").matches("spiffe://example.org/ci/a/b"));
        assert!(!p("spiffe://example.org/ci/**").matches("spiffe://example.org/ci"));
        assert!(p("spiffe://example.org/agent-*").matches("spiffe://example.org/agent-7"));
        assert!(!p("spiffe://example.org/a").matches("spiffe://other.org/a"));
        assert!(p("spiffe://example.org/a").matches("spiffe://example.org/a"));
        assert!(SpiffePattern::parse("spiffe://*.org/a").is_err());
        assert!(SpiffePattern::parse("spiffe://example.org/**/a").is_err());
        assert!(SpiffePattern::parse("http://example.org/a").is_err());
    }
}
