//! User space's view of the `BYTES` table (see `tracer_common::ByteSlot`):
//! the array is mapped into memory, read in place each tick (no syscall,
//! no copy), and swept: tombstones that no probe sequence needs any more
//! become empty slots again, so lookups of unknown sockets stay short.
//!
//! The slots are shared with the eBPF programs, which change them with
//! atomic instructions; every access here is an atomic load or
//! compare-and-swap on an aligned u64.

use std::{
    collections::HashMap,
    io,
    os::fd::RawFd,
    sync::atomic::{AtomicU64, Ordering},
};

use tracer_common::{byte_table, ByteSlot};

use crate::sys::mmap::Mapping;

/// Bytes counted in the `BYTES` slots of one socket (usually one slot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SlotBytes {
    pub(crate) tx: u64,
    pub(crate) rx: u64,
}

/// Slot contents as plain words: (sock, born_ns, tx, rx).
type SlotWords = [u64; 4];

/// The `BYTES` array, mapped.
pub(crate) struct ByteTable {
    memory: Mapping,
    /// Slots in the table (a power of two, sized at load).
    slots: usize,
}

const SLOT_SIZE: usize = std::mem::size_of::<ByteSlot>();
const WORDS: usize = SLOT_SIZE / 8;

impl ByteTable {
    /// Maps the array behind `fd` (a `BPF_F_MMAPABLE` array of `slots`
    /// `ByteSlot`s, a power of two).
    pub(crate) fn map(fd: RawFd, slots: u32) -> io::Result<Self> {
        let slots = slots as usize;
        Ok(ByteTable { memory: Mapping::shared(fd, slots * SLOT_SIZE)?, slots })
    }

    /// A table in private anonymous memory, for tests of the sweep.
    #[cfg(test)]
    fn anonymous() -> io::Result<Self> {
        let slots = byte_table::SLOTS as usize;
        Ok(ByteTable { memory: Mapping::anonymous(slots * SLOT_SIZE)?, slots })
    }

    #[cfg(test)]
    fn store(&self, slot: usize, words: SlotWords) {
        for (w, value) in words.into_iter().enumerate() {
            self.word(slot, w).store(value, Ordering::Release);
        }
    }

    fn word(&self, slot: usize, word: usize) -> &AtomicU64 {
        let offset = slot * SLOT_SIZE + word * 8;
        assert!(word < WORDS && offset + 8 <= self.memory.len(), "slot {slot} word {word} out of the table");
        // SAFETY: in bounds of the mapping (checked above), 8-byte aligned
        // (page-aligned base, 32-byte slots), the memory lives as long as
        // `self`, and every access to it (here and in the eBPF programs) is
        // atomic.
        unsafe { &*(self.memory.as_ptr().add(offset) as *const AtomicU64) }
    }

    fn load(&self, slot: usize) -> SlotWords {
        [0, 1, 2, 3].map(|w| self.word(slot, w).load(Ordering::Acquire))
    }

    /// Reads every slot, then sweeps; returns the bytes per (socket,
    /// born_ns).
    pub(crate) fn read_and_sweep(&self) -> HashMap<(u64, u64), SlotBytes> {
        let slots = self.slots;
        let mask = slots - 1;
        let mut totals = HashMap::new();
        // Backwards, so a run of tombstones ending at an empty slot is swept
        // in one pass.
        for slot in (0..slots).rev() {
            let words = self.load(slot);
            match words[0] {
                byte_table::EMPTY => {}
                byte_table::TOMBSTONE => {
                    let next = (slot + 1) & mask;
                    if self.word(next, 0).load(Ordering::Acquire) == byte_table::EMPTY {
                        // Only a tombstone becomes empty: a claim in between
                        // makes this fail, and a claim that lost its race to
                        // it retries the same slot.
                        let freed = self
                            .word(slot, 0)
                            .compare_exchange(
                                byte_table::TOMBSTONE,
                                byte_table::EMPTY,
                                Ordering::AcqRel,
                                Ordering::Relaxed,
                            )
                            .is_ok();
                        // A claim may have taken the next slot in between
                        // (its probe sequence passing through this one):
                        // then this slot must stay a tombstone, or lookups
                        // would stop before reaching it. (Meanwhile a lookup
                        // may miss it: its bytes go to the record, and a
                        // second slot it claims is summed with the first.)
                        if freed && self.word(next, 0).load(Ordering::Acquire) != byte_table::EMPTY {
                            let _ = self.word(slot, 0).compare_exchange(
                                byte_table::EMPTY,
                                byte_table::TOMBSTONE,
                                Ordering::AcqRel,
                                Ordering::Relaxed,
                            );
                        }
                    }
                }
                _ => add_slot(&mut totals, words),
            }
        }
        totals
    }
}

/// Adds one live slot's counters to the totals of its socket.
fn add_slot(totals: &mut HashMap<(u64, u64), SlotBytes>, [sock, born, tx, rx]: SlotWords) {
    let entry = totals.entry((sock, born)).or_default();
    entry.tx += tx;
    entry.rx += rx;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_four_words() {
        assert_eq!(SLOT_SIZE, 32);
        assert_eq!(WORDS, 4);
    }

    #[test]
    fn duplicate_slots_of_one_socket_add_up_and_later_sockets_stay_apart() {
        let mut totals = HashMap::new();
        add_slot(&mut totals, [0xffff_1000, 7, 100, 5]);
        add_slot(&mut totals, [0xffff_1000, 7, 1, 2]);
        // Same address, a later socket (other birth time).
        add_slot(&mut totals, [0xffff_1000, 9, 40, 0]);
        assert_eq!(totals[&(0xffff_1000, 7)], SlotBytes { tx: 101, rx: 7 });
        assert_eq!(totals[&(0xffff_1000, 9)], SlotBytes { tx: 40, rx: 0 });
    }

    const TOMB: SlotWords = [byte_table::TOMBSTONE, 0, 0, 0];

    #[test]
    fn reading_sums_live_slots_and_sweeping_frees_only_unneeded_tombstones() {
        let table = ByteTable::anonymous().expect("anonymous mapping");
        let last = byte_table::MASK as usize;
        // 10: live; 11-13: tombstones ending at an empty slot: all freed.
        table.store(10, [0xa000, 5, 100, 7]);
        table.store(11, TOMB);
        table.store(12, TOMB);
        table.store(13, TOMB);
        // 20: a tombstone before a live slot: a probe sequence may run
        // through it to 21, so it stays.
        table.store(20, TOMB);
        table.store(21, [0xb000, 6, 1, 2]);
        // A second slot of socket 0xa000 (a lost claim race): added up.
        table.store(30, [0xa000, 5, 3, 3]);
        // The last slot wraps around to slot 0 (empty): freed.
        table.store(last, TOMB);
        let totals = table.read_and_sweep();
        assert_eq!(totals.len(), 2);
        assert_eq!(totals[&(0xa000, 5)], SlotBytes { tx: 103, rx: 10 });
        assert_eq!(totals[&(0xb000, 6)], SlotBytes { tx: 1, rx: 2 });
        for slot in [11, 12, 13, last] {
            assert_eq!(table.load(slot)[0], byte_table::EMPTY, "slot {slot}");
        }
        assert_eq!(table.load(20)[0], byte_table::TOMBSTONE);
        assert_eq!(table.load(10), [0xa000, 5, 100, 7]);
        // Once the live slot after it is given back, the tombstone at 20
        // goes too (the new tombstone at 21 first, in the same pass).
        table.store(21, TOMB);
        table.read_and_sweep();
        assert_eq!(table.load(21)[0], byte_table::EMPTY);
        assert_eq!(table.load(20)[0], byte_table::EMPTY);
    }

    #[test]
    fn home_slots_spread_and_wrap() {
        // Kernel socket addresses are aligned and close together; the
        // programs hash their low 32 bits: the home slots still spread over
        // the table.
        let homes: std::collections::HashSet<u32> =
            (0..1000u64).map(|i| byte_table::home((0xffff_8880_1234_0000 + i * 2048) & 0xffff_ffff)).collect();
        assert!(homes.len() > 990, "{}", homes.len());
        assert_eq!(byte_table::probe(byte_table::MASK, 1), 0);
    }
}
