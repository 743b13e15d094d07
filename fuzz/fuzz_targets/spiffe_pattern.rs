//! The SPIFFE ID pattern matcher (`identity::SpiffePattern`): the input is a
//! pattern and an ID on two lines. An accepted pattern must match exactly as
//! a straightforward dynamic program over the whole text says (`*` is any
//! run of characters other than `/`; a trailing `/**` is `/` and a
//! non-empty rest whose first segment is not empty), and quickly: the
//! matcher once took time exponential in the number of stars, which
//! libFuzzer's `-timeout` reports.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskmint::identity::SpiffePattern;

/// Largest pattern x ID product the reference is run for (its table).
const REFERENCE_CELLS: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, id) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(p) = SpiffePattern::parse(pattern) else {
        return;
    };
    let matched = p.matches(id);
    if !pattern.contains('*') {
        assert_eq!(matched, pattern == id, "`{pattern}` against `{id}`");
    }
    if pattern.len().saturating_mul(id.len()) <= REFERENCE_CELLS {
        assert_eq!(
            matched,
            reference(pattern, id),
            "`{pattern}` against `{id}`"
        );
    }
});

/// The matcher's documented semantics, computed over bytes (UTF-8 is
/// self-synchronizing, so byte and character matching agree).
fn reference(pattern: &str, id: &str) -> bool {
    let (glob, any_rest) = match pattern.strip_suffix("/**") {
        Some(prefix) => (prefix.as_bytes(), true),
        None => (pattern.as_bytes(), false),
    };
    let id = id.as_bytes();
    // row[j]: the glob's first i bytes match id[..j].
    let mut row = vec![false; id.len() + 1];
    row[0] = true;
    for &c in glob {
        let mut next = vec![false; id.len() + 1];
        for j in 0..=id.len() {
            next[j] = if c == b'*' {
                row[j] || (j > 0 && id[j - 1] != b'/' && next[j - 1])
            } else {
                j > 0 && id[j - 1] == c && row[j - 1]
            };
        }
        row = next;
    }
    if any_rest {
        (0..id.len()).any(|j| row[j] && id[j] == b'/' && id.get(j + 1).is_some_and(|&b| b != b'/'))
    } else {
        row[id.len()]
    }
}
