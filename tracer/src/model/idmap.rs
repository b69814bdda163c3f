//! Maps on the collection's path, keyed by what the kernel says (a
//! socket's address, a pid, a flow): hashed with FxHash's word fold and
//! SplitMix64's finaliser instead of SipHash. The keys come from the
//! kernel, not from a peer (nothing to flood), and one table read looks up
//! every socket of the host (100,000 and more).

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasherDefault, Hasher},
};

/// A map keyed by socket address.
pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
/// Any map on the collection's path.
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
/// Any set on the collection's path.
pub(crate) type FastSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

/// Folds words in; mixes them when done.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        let mut z = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
        let mut rest = [0u8; 8];
        rest[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        if !chunks.remainder().is_empty() {
            self.write_u64(u64::from_le_bytes(rest));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    /// One word folded in (as FxHash does); `finish` mixes the result.
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn aligned_addresses_spread_over_low_and_high_bits() {
        // Socket addresses: 64-byte aligned, close together.
        let hashes: Vec<u64> = (0..4096u64)
            .map(|i| {
                let mut h = IdHasher::default();
                h.write_u64(0xffff_8880_1234_0000 + i * 2048);
                h.finish()
            })
            .collect();
        let low: HashSet<u64> = hashes.iter().map(|h| h & 0xfff).collect();
        let high: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(low.len() > 2500, "{} distinct low 12 bits of 4096", low.len());
        assert_eq!(high.len(), 128);
        let mut map: IdMap<u32> = IdMap::default();
        map.insert(7, 1);
        assert_eq!(map.get(&7), Some(&1));
    }
}
