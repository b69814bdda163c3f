//! The model's live sockets, kept in the order the kernel's table is read.
//!
//! Every collection looks up every socket of the host (100,000 and more),
//! in the order of the kernel's table, which is the order of its hash. In a
//! hash map keyed by the socket's address each lookup lands on a random
//! entry of a table tens of megabytes large: a cache (and TLB) miss per
//! socket, which was the largest part of a table read. Here the entries sit
//! in one dense vector in the order of the last read, so the next read finds
//! each where the previous one ended: it walks the vector as the kernel's
//! table is walked, and the processor's prefetcher does the rest.
//!
//! An index (address to position) serves the lookups out of order (a new
//! socket, a destroyed one, a socket that moved in the kernel's table).
//! When a read found too many out of place, or removals left too many
//! holes, the entries are permuted in place into the order of that read (no
//! second copy of the table: its peak is the table plus a rank per entry)
//! and the holes dropped.
//!
//! Memory follows the sockets: a dense entry per socket (no load factor on
//! the large values), an index of 16-byte buckets, and the vector shrinks
//! after a spike closes.

use super::idmap::IdMap;

/// Out-of-place lookups (or holes) beyond which the entries are put back in
/// read order: a sixteenth of the table, and at least this many.
const REORDER_SLACK: usize = 256;

/// Values keyed by socket address, in the order of the last table read.
pub(crate) struct ReadOrdered<V> {
    /// `None`: a removed entry's hole, until the next reorder.
    entries: Vec<Option<(u64, V)>>,
    index: IdMap<u32>,
    holes: usize,
    /// During a read: where the next socket is expected, how many were not
    /// there, and the positions found, in order.
    cursor: usize,
    misses: usize,
    seen: Vec<u32>,
    reading: bool,
}

impl<V> Default for ReadOrdered<V> {
    fn default() -> Self {
        ReadOrdered {
            entries: Vec::new(),
            index: IdMap::default(),
            holes: 0,
            cursor: 0,
            misses: 0,
            seen: Vec::new(),
            reading: false,
        }
    }
}

impl<V> ReadOrdered<V> {
    pub(crate) fn len(&self) -> usize {
        self.entries.len() - self.holes
    }

    fn position(&self, id: u64) -> Option<usize> {
        self.index.get(&id).map(|&pos| pos as usize)
    }

    pub(crate) fn get(&self, id: &u64) -> Option<&V> {
        let pos = self.position(*id)?;
        self.entries[pos].as_ref().map(|(_, v)| v)
    }

    pub(crate) fn contains_key(&self, id: &u64) -> bool {
        self.index.contains_key(id)
    }

    /// Inserts or replaces; during a read, the entry counts as found there.
    pub(crate) fn insert(&mut self, id: u64, value: V) -> Option<V> {
        if let Some(pos) = self.position(id) {
            let old = self.entries[pos].replace((id, value)).map(|(_, v)| v);
            if self.reading {
                self.seen.push(pos as u32);
            }
            return old;
        }
        let pos = self.entries.len();
        // Positions are u32: more entries than that cannot be tracked
        // (the kernel's table is far smaller); such an insert is refused.
        let Ok(at) = u32::try_from(pos) else { return None };
        self.entries.push(Some((id, value)));
        self.index.insert(id, at);
        if self.reading {
            // Counted out of place by the lookup that did not find it.
            self.seen.push(at);
        }
        None
    }

    pub(crate) fn remove(&mut self, id: &u64) -> Option<V> {
        let pos = self.index.remove(id)? as usize;
        let (_, value) = self.entries[pos].take()?;
        self.holes += 1;
        Some(value)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&u64, &V)> {
        self.entries.iter().flatten().map(|(id, v)| (id, v))
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&u64, &mut V)> {
        self.entries.iter_mut().flatten().map(|(id, v)| (&*id, v))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().flatten().map(|(_, v)| v)
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&u64, &mut V) -> bool) {
        for entry in &mut self.entries {
            if let Some((id, value)) = entry {
                if !keep(id, value) {
                    self.index.remove(id);
                    *entry = None;
                    self.holes += 1;
                }
            }
        }
    }

    /// Starts a read of the kernel's table: lookups through
    /// [`ReadOrdered::get_mut_in_read`] expect the order of the last one.
    pub(crate) fn begin_read(&mut self) {
        self.cursor = 0;
        self.misses = 0;
        self.seen.clear();
        self.reading = true;
    }

    /// The entry of the next socket of a read (`None`: a new socket, to be
    /// [`inserted`](ReadOrdered::insert)).
    pub(crate) fn get_mut_in_read(&mut self, id: u64) -> Option<&mut V> {
        while self.cursor < self.entries.len() && self.entries[self.cursor].is_none() {
            self.cursor += 1;
        }
        let expected = self.entries.get(self.cursor).and_then(Option::as_ref).is_some_and(|(at, _)| *at == id);
        let pos = if expected {
            self.cursor
        } else {
            self.misses += 1;
            self.position(id)?
        };
        self.cursor = pos + 1;
        if self.reading {
            self.seen.push(pos as u32);
        }
        self.entries[pos].as_mut().map(|(_, v)| v)
    }

    /// Ends a read: puts the entries in its order if too many were out of
    /// place.
    pub(crate) fn end_read(&mut self) {
        self.reading = false;
        if self.misses > self.len() / 16 + REORDER_SLACK {
            self.reorder();
        }
        self.seen.clear();
        if self.seen.capacity() > 2 * self.entries.len() + 1024 {
            self.seen.shrink_to(self.entries.len());
        }
    }

    /// Permutes the entries in place: first those of the last read, in its
    /// order, then the others as they were; holes dropped; index rebuilt.
    fn reorder(&mut self) {
        let n = self.entries.len();
        let mut rank = vec![u32::MAX; n];
        let mut next = 0u32;
        for &pos in &self.seen {
            let pos = pos as usize;
            if pos < n && rank[pos] == u32::MAX && self.entries[pos].is_some() {
                rank[pos] = next;
                next += 1;
            }
        }
        for (pos, entry) in self.entries.iter().enumerate() {
            if entry.is_some() && rank[pos] == u32::MAX {
                rank[pos] = next;
                next += 1;
            }
        }
        for (pos, entry) in self.entries.iter().enumerate() {
            if entry.is_none() {
                rank[pos] = next;
                next += 1;
            }
        }
        // Each swap puts one entry where its rank says: n swaps at most.
        for i in 0..n {
            while rank[i] as usize != i {
                let to = rank[i] as usize;
                self.entries.swap(i, to);
                rank.swap(i, to);
            }
        }
        drop(rank);
        self.entries.truncate(n - self.holes);
        self.holes = 0;
        self.index.clear();
        for (pos, entry) in self.entries.iter().enumerate() {
            if let Some((id, _)) = entry {
                self.index.insert(*id, pos as u32);
            }
        }
    }

    /// Drops the holes and gives back memory once most of it is unused
    /// (after a spike closed).
    pub(crate) fn shrink(&mut self) {
        if self.holes > self.len() / 4 + REORDER_SLACK {
            self.seen.clear();
            self.reorder();
        }
        let len = self.len();
        if self.entries.capacity() > 4 * len + 1024 {
            self.entries.shrink_to(2 * len);
        }
        if self.index.capacity() > 4 * len + 1024 {
            self.index.shrink_to(2 * len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u64) -> impl Iterator<Item = u64> {
        (0..n).map(|i| 0xffff_8880_0000_0000 + i * 2048)
    }

    fn check(table: &ReadOrdered<u64>) {
        assert_eq!(table.index.len(), table.len());
        for (id, &pos) in &table.index {
            assert_eq!(table.entries[pos as usize].as_ref().map(|(at, _)| *at), Some(*id));
        }
    }

    #[test]
    fn holds_what_a_map_would() {
        let mut table: ReadOrdered<u64> = ReadOrdered::default();
        for (i, id) in ids(10_000).enumerate() {
            assert_eq!(table.insert(id, i as u64), None);
        }
        assert_eq!(table.len(), 10_000);
        let second = ids(2).last().expect("two ids");
        assert_eq!(table.get(&second), Some(&1));
        assert_eq!(table.insert(second, 70_001), Some(1));
        table.retain(|_, v| *v % 2 == 1);
        assert_eq!(
            (table.len(), table.iter().count(), table.values().filter(|v| **v == 70_001).count()),
            (5_000, 5_000, 1)
        );
        check(&table);
        assert_eq!(table.remove(&second), Some(70_001));
        assert!(!table.contains_key(&second) && table.get(&second).is_none());
        table.retain(|_, _| false);
        table.shrink();
        assert_eq!((table.len(), table.entries.len(), table.index.len()), (0, 0, 0));
        assert!(table.entries.capacity() <= 1024);
    }

    #[test]
    fn a_read_in_a_new_order_is_followed_by_the_next() {
        let mut table: ReadOrdered<u64> = ReadOrdered::default();
        let all: Vec<u64> = ids(4_000).collect();
        for (i, id) in all.iter().enumerate() {
            table.insert(*id, i as u64);
        }
        // The kernel's order: every 7th position, wrapping.
        let order: Vec<u64> = (0..all.len()).map(|k| all[k * 7 % all.len()]).collect();
        table.begin_read();
        for id in &order {
            let value = table.get_mut_in_read(*id).expect("known");
            *value += 1;
        }
        table.end_read();
        check(&table);
        let read: Vec<u64> = table.iter().map(|(id, _)| *id).collect();
        assert_eq!(read, order, "put in the read's order");
        // The same order again: every lookup is where it is expected.
        table.begin_read();
        for id in &order {
            table.get_mut_in_read(*id).expect("known");
        }
        assert_eq!(table.misses, 0);
        table.end_read();
        assert!(table.values().all(|v| *v >= 1));
    }

    #[test]
    fn new_removed_and_unread_entries_keep_their_values() {
        let mut table: ReadOrdered<u64> = ReadOrdered::default();
        let all: Vec<u64> = ids(3_000).collect();
        for (i, id) in all.iter().enumerate() {
            table.insert(*id, i as u64);
        }
        for id in all.iter().step_by(3) {
            table.remove(id);
        }
        let fresh: Vec<u64> = (0..1_000u64).map(|i| 0xffff_9990_0000_0000 + i * 64).collect();
        table.begin_read();
        // Reversed, with new sockets among them; a third never read.
        for (k, id) in all.iter().rev().enumerate() {
            if let Some(new) = fresh.get(k) {
                assert!(table.get_mut_in_read(*new).is_none());
                table.insert(*new, 1_000_000 + *new % 1_000);
            }
            if k % 3 == 1 {
                continue;
            }
            if table.get_mut_in_read(*id).is_none() {
                assert!(!table.contains_key(id));
            }
        }
        table.end_read();
        check(&table);
        assert_eq!(table.holes, 0, "reordered: holes dropped");
        assert_eq!(table.len(), 2_000 + fresh.len());
        for (i, id) in all.iter().enumerate() {
            assert_eq!(table.get(id).copied(), (i % 3 != 0).then_some(i as u64));
        }
        for id in &fresh {
            assert_eq!(table.get(id), Some(&(1_000_000 + id % 1_000)));
        }
    }
}
