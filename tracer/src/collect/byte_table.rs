//! User space's view of the `BYTES` table (see `tracer_common::ByteSlot`):
//! the array is mapped into memory, read in place each tick (no syscall,
//! no copy), and swept: tombstones that no probe sequence needs any more
//! become empty slots again, so lookups of unknown sockets stay short.
//!
//! The slots are shared with the eBPF programs, which change them with
//! atomic instructions; every access here is an atomic load or
//! compare-and-swap on an aligned u64.

use std::{
    io,
    os::fd::RawFd,
    sync::atomic::{AtomicU64, Ordering},
};

use tracer_common::{byte_table, ByteSlot};

use crate::sys::mmap::Mapping;

/// Bytes counted in a socket's `BYTES` slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SlotBytes {
    pub(crate) tx: u64,
    pub(crate) rx: u64,
}

/// A taken slot of `BYTES`: its index (also its record's, in `RECORDS`),
/// the socket (its address, whether or not its owner is known), the birth
/// time of the record it belongs to, and its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TakenSlot {
    pub(crate) index: u32,
    pub(crate) sock: u64,
    pub(crate) born_ns: u64,
    pub(crate) bytes: SlotBytes,
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

    /// Reads every slot, sweeping tombstones on the way; returns the taken
    /// slots in index order.
    #[cfg(test)]
    pub(crate) fn read_and_sweep(&self) -> Vec<TakenSlot> {
        let mut taken_slots = Vec::new();
        self.sweep_range(0..self.slots, &mut taken_slots);
        taken_slots.reverse();
        taken_slots
    }

    /// Slots in the table.
    pub(crate) fn slots(&self) -> usize {
        self.slots
    }

    /// Reads the slots of `range` backwards, sweeping tombstones on the
    /// way; appends the taken ones to `taken_slots` (in descending index
    /// order). Going over the table's ranges from the last to the first is
    /// one backward pass over it.
    pub(crate) fn sweep_range(&self, range: std::ops::Range<usize>, taken_slots: &mut Vec<TakenSlot>) {
        let slots = self.slots;
        let mask = slots - 1;
        // Backwards, so a run of tombstones ending at an empty slot is swept
        // in one pass.
        for slot in range.rev().filter(|&slot| slot < slots) {
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
                _ => taken_slots.extend(taken(slot, words)),
            }
        }
    }
}

/// Adds one live slot's counters to the totals of its socket.
/// A slot's words as a taken slot, `None` for an empty slot or a tombstone.
fn taken(index: usize, [sock, born, tx, rx]: SlotWords) -> Option<TakenSlot> {
    let sock = byte_table::socket_of(sock);
    (sock != 0).then_some(TakenSlot {
        index: index as u32,
        sock,
        born_ns: byte_table::born_of(born),
        bytes: SlotBytes { tx, rx },
    })
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
    fn a_taken_slot_names_its_socket_with_or_without_an_owner_and_free_slots_none() {
        let bytes = SlotBytes { tx: 100, rx: 5 };
        let owned = taken(3, [0xffff_1000, 7, 100, 5]).expect("taken");
        assert_eq!(owned, TakenSlot { index: 3, sock: 0xffff_1000, born_ns: 7, bytes });
        let unowned = taken(4, [0xffff_1000, 9 | byte_table::UNOWNED, 100, 5]).expect("taken");
        assert_eq!(unowned, TakenSlot { index: 4, sock: 0xffff_1000, born_ns: 9, bytes });
        assert_eq!(taken(5, [byte_table::EMPTY, 0, 0, 0]), None);
        assert_eq!(taken(6, [byte_table::TOMBSTONE, 0, 0, 0]), None);
    }

    const TOMB: SlotWords = [byte_table::TOMBSTONE, 0, 0, 0];

    #[test]
    fn reading_lists_taken_slots_in_order_and_sweeping_frees_only_unneeded_tombstones() {
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
        // A socket whose owner is not known yet.
        table.store(30, [0xc000, 8 | byte_table::UNOWNED, 3, 3]);
        // The last slot wraps around to slot 0 (empty): freed.
        table.store(last, TOMB);
        let slots = table.read_and_sweep();
        let found: Vec<(u32, u64, u64, SlotBytes)> =
            slots.iter().map(|slot| (slot.index, slot.sock, slot.born_ns, slot.bytes)).collect();
        assert_eq!(
            found,
            [
                (10, 0xa000, 5, SlotBytes { tx: 100, rx: 7 }),
                (21, 0xb000, 6, SlotBytes { tx: 1, rx: 2 }),
                (30, 0xc000, 8, SlotBytes { tx: 3, rx: 3 }),
            ]
        );
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
