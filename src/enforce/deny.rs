//! The deny set: every revoked credential id the enforcer knows of, kept
//! until the credential could no longer be accepted anyway (its expiry plus
//! the leeway), then dropped.
//!
//! Ids are stored as bytes, not text: a `jti` is 16 bytes and an X.509
//! serial 19, each with a 4-byte expiry, so an entry costs its key, its
//! expiry and the table's slack (about 45 bytes at a million entries)
//! instead of two heap strings. Ids of any other shape (another issuer's,
//! or a future format) are kept as text, so none is ever ignored.

use std::collections::HashMap;

/// Revoked credential ids and when each may be forgotten.
#[derive(Debug, Default)]
pub struct DenySet {
    jti: HashMap<[u8; 16], u32>,
    serial: HashMap<[u8; 19], u32>,
    other: HashMap<Box<str>, u32>,
}

/// Unix seconds as stored: saturated into `u32` (until 2106).
fn stored(t: i64) -> u32 {
    t.clamp(0, u32::MAX as i64) as u32
}

/// Credential ids are lowercase hex; the same id in upper case is the same
/// credential.
fn bytes<const N: usize>(id: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    (id.len() == 2 * N && hex::decode_to_slice(id, &mut out).is_ok()).then_some(out)
}

impl DenySet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Denies `id` until `until` (Unix seconds); a later `until` for an id
    /// already denied extends it, an earlier one does not shorten it.
    pub fn insert(&mut self, id: &str, until: i64) {
        let until = stored(until);
        let slot = if let Some(k) = bytes::<16>(id) {
            self.jti.entry(k).or_insert(until)
        } else if let Some(k) = bytes::<19>(id) {
            self.serial.entry(k).or_insert(until)
        } else {
            self.other
                .entry(id.to_ascii_lowercase().into())
                .or_insert(until)
        };
        *slot = (*slot).max(until);
    }

    /// Whether `id` is denied.
    pub fn contains(&self, id: &str) -> bool {
        if let Some(k) = bytes::<16>(id) {
            self.jti.contains_key(&k)
        } else if let Some(k) = bytes::<19>(id) {
            self.serial.contains_key(&k)
        } else {
            self.other.contains_key(id.to_ascii_lowercase().as_str())
        }
    }

    /// Drops every entry whose time ended before `now`; returns how many.
    pub fn expire(&mut self, now: i64) -> usize {
        let before = self.len();
        let keep = |until: &mut u32| i64::from(*until) >= now;
        self.jti.retain(|_, u| keep(u));
        self.serial.retain(|_, u| keep(u));
        self.other.retain(|_, u| keep(u));
        self.jti.shrink_to(self.jti.len() * 8 / 7);
        self.serial.shrink_to(self.serial.len() * 8 / 7);
        before - self.len()
    }

    /// Whether any X.509 serial is denied.
    pub fn has_serials(&self) -> bool {
        !self.serial.is_empty() || !self.other.is_empty()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.jti.len() + self.serial.len() + self.other.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes its tables hold (slots and control bytes at their current
    /// capacity; the few ids of unknown shape counted at their length).
    pub fn table_bytes(&self) -> usize {
        fn table<K, V>(m: &HashMap<K, V>) -> usize {
            // A SwissTable of `capacity` holds 8/7 as many slots, a power
            // of two, each with one control byte.
            let cap = m.capacity();
            if cap == 0 {
                return 0;
            }
            let slots = (cap * 8).div_ceil(7).next_power_of_two();
            slots * (std::mem::size_of::<(K, V)>() + 1)
        }
        table(&self.jti)
            + table(&self.serial)
            + table(&self.other)
            + self.other.keys().map(|k| k.len()).sum::<usize>()
    }

    /// Every entry as `(id, until)`, ids in lowercase hex: what the state
    /// file is rewritten from.
    pub fn entries(&self) -> impl Iterator<Item = (String, i64)> + '_ {
        let jti = self
            .jti
            .iter()
            .map(|(k, u)| (hex::encode(k), i64::from(*u)));
        let serial = self
            .serial
            .iter()
            .map(|(k, u)| (hex::encode(k), i64::from(*u)));
        let other = self
            .other
            .iter()
            .map(|(k, u)| (k.to_string(), i64::from(*u)));
        jti.chain(serial).chain(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_each_shape_until_it_expires() {
        let mut d = DenySet::new();
        let jti = "0f".repeat(16);
        let serial = "7a".repeat(19);
        d.insert(&jti, 100);
        d.insert(&serial, 200);
        d.insert("not-hex", 300);
        assert!(d.contains(&jti) && d.contains(&jti.to_uppercase()));
        assert!(d.contains(&serial) && d.contains("NOT-HEX"));
        assert!(!d.contains(&"0e".repeat(16)) && !d.contains(&"0f".repeat(19)));
        assert_eq!(d.len(), 3);
        assert_eq!(d.expire(150), 1);
        assert!(!d.contains(&jti) && d.contains(&serial));
        assert_eq!(d.expire(301), 2);
        assert!(d.is_empty());
    }

    #[test]
    fn a_later_expiry_extends_an_earlier_never_shortens() {
        let mut d = DenySet::new();
        let jti = "01".repeat(16);
        d.insert(&jti, 500);
        d.insert(&jti, 100);
        assert_eq!(d.expire(400), 0);
        d.insert(&jti, 900);
        assert_eq!(d.expire(600), 0);
        assert!(d.contains(&jti));
        let mut e: Vec<_> = d.entries().collect();
        e.sort();
        assert_eq!(e, vec![(jti, 900)]);
    }
}
