//! Hashing for keys this process makes itself (ids, addresses): far cheaper than the default
//! SipHash on the per-task paths. Not for keys an outsider chooses.
//!
//! Most keys are ids counted up one at a time (tasks, values), and the entries in use at any
//! moment are those of recent ids. The hash keeps an id's low bits, which the table indexes
//! by, so consecutive ids sit in consecutive slots: a lookup finds the memory of its
//! neighbours' lookups in the cache, where a mixing hash would scatter them over a table far
//! larger than the cache. The bits the table compares first (the top seven) are mixed.
//! An address, whose low bits are all zero, belongs only before the last word of a key
//! (as in `(address, length)`), where it is mixed.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map keyed by ids or addresses made in this process (an address not last: see the
/// module's notes).
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Keeps the low bits of the last word written (see the module's notes), mixing the words
/// before it into them and mixing every bit into the top ones.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

const MIX: u64 = 0x9e37_79b9_7f4a_7c15;
/// The bits hashbrown compares before the keys: 7 at the top.
const TAG: u64 = !(u64::MAX >> 7);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.wrapping_mul(MIX).rotate_left(26) ^ n;
    }

    fn finish(&self) -> u64 {
        self.0 ^ (self.0.wrapping_mul(MIX) & TAG)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_spread_over_the_table() {
        let mut m: IdMap<u64, u64> = IdMap::default();
        for i in 0..10_000 {
            m.insert(i, i * 2);
        }
        assert_eq!(m.len(), 10_000);
        assert!((0..10_000).all(|i| m[&i] == i * 2));
        // Distinct ids give distinct hashes in the bits the table uses.
        let hash = |k: u64| {
            let mut h = IdHasher::default();
            h.write_u64(k);
            h.finish() >> 57
        };
        let buckets: std::collections::HashSet<u64> = (0..1024).map(hash).collect();
        assert!(buckets.len() > 100, "{} buckets used", buckets.len());
    }

    #[test]
    fn consecutive_ids_keep_their_order_in_the_low_bits() {
        let hash = |k: u64| {
            let mut h = IdHasher::default();
            h.write_u64(k);
            h.finish()
        };
        for k in [0, 1, 41, 1 << 20, u64::MAX >> 8] {
            assert_eq!(hash(k) & 0xffff, k & 0xffff);
            assert_eq!(hash(k + 1) & 0xffff, (k + 1) & 0xffff);
        }
        // Pairs differing in their first word land apart.
        let pair = |a: u32, b: u64| {
            let mut h = IdHasher::default();
            h.write_u32(a);
            h.write_u64(b);
            h.finish() & 0xffff
        };
        assert_ne!(pair(1, 7), pair(2, 7));
    }
}
