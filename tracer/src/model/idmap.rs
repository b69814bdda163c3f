//! Maps on the collection's path, keyed by what the kernel says (a
//! socket's address, a pid, a flow): hashed with FxHash's word fold and
//! SplitMix64's finaliser instead of SipHash. The keys come from the
//! kernel, not from a peer (nothing to flood), and one table read looks up
//! every socket of the host (100,000 and more).

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

/// A map keyed by socket address.
pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
/// Any map on the collection's path.
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

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

/// Shards of [`Shards`]: each grows on its own, so growing the whole never
/// holds an old and a new copy of all of it at once (a hash map doubles by
/// allocating the new table before freeing the old: 1.5 times the memory
/// of the larger one, ~54 MB at 100,000 sockets, against ~1% of that here).
const SHARDS: usize = 64;

/// A map keyed by socket address, split into [`SHARDS`] maps by hash.
pub(crate) struct Shards<V> {
    shards: Vec<IdMap<V>>,
}

impl<V> Default for Shards<V> {
    fn default() -> Self {
        Shards { shards: (0..SHARDS).map(|_| IdMap::default()).collect() }
    }
}

impl<V> Shards<V> {
    fn shard(id: u64) -> usize {
        let mut h = IdHasher::default();
        h.write_u64(id);
        // The top bits: each shard's own table indexes by the low ones.
        (h.finish() >> 58) as usize % SHARDS
    }

    pub(crate) fn get(&self, id: &u64) -> Option<&V> {
        self.shards[Self::shard(*id)].get(id)
    }

    pub(crate) fn get_mut(&mut self, id: &u64) -> Option<&mut V> {
        self.shards[Self::shard(*id)].get_mut(id)
    }

    pub(crate) fn contains_key(&self, id: &u64) -> bool {
        self.shards[Self::shard(*id)].contains_key(id)
    }

    pub(crate) fn insert(&mut self, id: u64, value: V) -> Option<V> {
        self.shards[Self::shard(id)].insert(id, value)
    }

    pub(crate) fn remove(&mut self, id: &u64) -> Option<V> {
        self.shards[Self::shard(*id)].remove(id)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(HashMap::len).sum()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&u64, &V)> {
        self.shards.iter().flat_map(|shard| shard.iter())
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&u64, &mut V)> {
        self.shards.iter_mut().flat_map(|shard| shard.iter_mut())
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|shard| shard.values())
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&u64, &mut V) -> bool) {
        for shard in &mut self.shards {
            shard.retain(&mut keep);
        }
    }

    /// Gives back the memory of shards mostly empty (after a spike closed).
    pub(crate) fn shrink(&mut self) {
        for shard in &mut self.shards {
            if shard.capacity() > 64 && shard.len() * 4 < shard.capacity() {
                shard.shrink_to(shard.len() * 2);
            }
        }
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

    #[test]
    fn shards_hold_what_one_map_would() {
        let mut shards: Shards<u64> = Shards::default();
        for i in 0..10_000u64 {
            shards.insert(0xffff_8880_0000_0000 + i * 2048, i);
        }
        assert_eq!(shards.len(), 10_000);
        assert!(shards.shards.iter().all(|s| s.len() > 50), "spread over every shard");
        assert_eq!(shards.get(&(0xffff_8880_0000_0000 + 2048)), Some(&1));
        shards.retain(|_, v| *v % 2 == 0);
        assert_eq!((shards.len(), shards.iter().count(), shards.values().sum::<u64>()), (5_000, 5_000, 24_995_000));
        assert_eq!(shards.remove(&0xffff_8880_0000_0000), Some(0));
        assert!(!shards.contains_key(&0xffff_8880_0000_0000));
        shards.retain(|_, _| false);
        shards.shrink();
        assert!(shards.shards.iter().all(|s| s.capacity() <= 64));
    }
}
