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
///
/// The literal pieces between the stars are found left to right, each at its
/// leftmost place after the previous one; the first must start the segment
/// and the last must end it. Leftmost is never worse than any later place (it
/// leaves the most of the segment to the pieces after it), so no choice is
/// ever undone: the work is one forward scan of the segment per piece at
/// most, whatever the number of stars. Trying every split instead, as a
/// recursive matcher does, takes time exponential in the number of stars.
fn segment_matches(pattern: &str, seg: &str) -> bool {
    let mut pieces = pattern.split('*');
    let head = pieces.next().unwrap_or_default();
    let Some(mut rest) = seg.strip_prefix(head) else {
        return false;
    };
    let Some(mut piece) = pieces.next() else {
        // No star: the whole segment, exactly.
        return rest.is_empty();
    };
    for next in pieces {
        // `piece` lies between two stars.
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
        piece = next;
    }
    rest.ends_with(piece)
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

    /// The definition the matcher must agree with: `*` is any split of the
    /// segment, tried one after the other (exponential in the stars; only
    /// for short inputs).
    fn by_definition(pattern: &str, seg: &str) -> bool {
        match pattern.split_once('*') {
            None => pattern == seg,
            Some((head, tail)) => {
                seg.starts_with(head)
                    && (head.len()..=seg.len()).any(|i| by_definition(tail, &seg[i..]))
            }
        }
    }

    /// Every pattern of up to 6 characters over `a`, `b`, `*` against every
    /// segment of up to 6 characters over `a`, `b`.
    #[test]
    fn segments_match_as_defined() {
        fn words(alphabet: &[char], max: usize) -> Vec<String> {
            let mut all = vec![String::new()];
            let mut last = vec![String::new()];
            for _ in 0..max {
                last = last
                    .iter()
                    .flat_map(|w| alphabet.iter().map(move |c| format!("{w}{c}")))
                    .collect();
                all.extend(last.iter().cloned());
            }
            all
        }
        let segments = words(&['a', 'b'], 6);
        let mut checked = 0;
        for pattern in words(&['a', 'b', '*'], 6) {
            for seg in &segments {
                assert_eq!(
                    segment_matches(&pattern, seg),
                    by_definition(&pattern, seg),
                    "`{pattern}` against `{seg}`"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 1093 * 127);
    }

    /// Many stars against a long segment that almost matches: trying every
    /// split would take about C(200, 40) steps (more than 10^40); this
    /// completes at once. Several such segments in one ID, too.
    #[test]
    fn hostile_patterns_complete() {
        let stars = format!("{}b", "*a".repeat(40));
        let seg = "a".repeat(200);
        let pattern =
            SpiffePattern::parse(&format!("spiffe://example.org/{stars}/{stars}")).unwrap();
        assert!(!pattern.matches(&format!("spiffe://example.org/{seg}/{seg}")));
        assert!(pattern.matches(&format!("spiffe://example.org/{seg}b/{seg}b")));
        assert!(!segment_matches(&stars, &seg));
        assert!(segment_matches(&stars, &format!("{seg}b")));
        assert!(!segment_matches(&format!("{}*", "a*".repeat(201)), &seg));
    }
}
