//! The `BYTES` open-addressing table (see `tracer_common::ByteSlot`): where
//! every tracked socket has its slot, found without a hash lookup. The
//! send/receive path counts bytes there; a slot's index is also that of
//! the socket's record in `RECORDS`. Compiled out of the legacy object
//! (`crate::BYTE_TABLE`).

use core::intrinsics::{atomic_cxchg, AtomicOrdering};

use tracer_common::{byte_table, ByteSlot, SockRecord};

use super::maps::BYTES;
use crate::BYTE_TABLE;

/// Where `key`'s probe sequence starts.
///
/// The verifier allows no arithmetic but addition on a socket pointer (and
/// whether it still sees the key as a pointer depends on the kernel and on
/// where the compiler spilled it), but a 32-bit move of a pointer is a
/// plain number for a privileged program. The hash is taken of the low 32
/// bits of the address, which are the ones that differ between sockets.
/// The slots themselves hold the whole address, which user space knows the
/// socket by.
/// Returns the home slot and the table's mask (its size is read once per
/// call: the global is read volatile, so it is not hoisted for us).
#[inline(always)]
pub(super) fn home_of(key: u64) -> (u32, u32) {
    let low: u64;
    // SAFETY: one register move, no memory access.
    unsafe {
        core::arch::asm!("w0 = w1", in("r1") key, lateout("r0") low, options(pure, nomem, nostack, preserves_flags));
    }
    let log2 = slots_log2();
    (byte_table::home_in(low, log2), (1u32 << log2) - 1)
}

/// log2 of the table's slots, as user space sized it at load.
#[inline(always)]
fn slots_log2() -> u32 {
    match offset!(byte_slots_log2) as u32 {
        0 => byte_table::SLOTS_LOG2,
        log2 => log2.clamp(1, 31),
    }
}

/// The hot path: `key`'s slot if its owner is known. Array lookups are
/// inlined by the verifier: no function call.
#[inline(always)]
pub(super) fn byte_slot(key: u64) -> Option<*mut ByteSlot> {
    if !BYTE_TABLE {
        return None;
    }
    let (home, mask) = home_of(key);
    for i in 0..byte_table::PROBES {
        let slot = BYTES.get_ptr_mut(byte_table::probe_in(home, i, mask))?;
        // SAFETY: a live array value; `sock` only changes atomically.
        let sock = unsafe { core::ptr::read_volatile(&raw const (*slot).sock) };
        if sock == key {
            // SAFETY: as above, the same slot.
            let born = unsafe { core::ptr::read_volatile(&raw const (*slot).born_ns) };
            return (born & byte_table::UNOWNED == 0).then_some(slot);
        }
        if sock == byte_table::EMPTY {
            return None;
        }
    }
    None
}

/// `key`'s slot and its index, owner known or not.
#[inline(always)]
pub(super) fn find_slot(key: u64) -> Option<(u32, *mut ByteSlot)> {
    if !BYTE_TABLE {
        return None;
    }
    let (home, mask) = home_of(key);
    for i in 0..byte_table::PROBES {
        let index = byte_table::probe_in(home, i, mask);
        let slot = BYTES.get_ptr_mut(index)?;
        // SAFETY: a live array value; `sock` only changes atomically.
        let sock = unsafe { core::ptr::read_volatile(&raw const (*slot).sock) };
        if sock == key {
            return Some((index, slot));
        }
        if sock == byte_table::EMPTY {
            return None;
        }
    }
    None
}

/// Claims a slot for `key`, whose record is first seen at `born` (and
/// whose owner is known if `owned`): the first empty or tombstone slot of
/// its probe sequence, taken with compare-and-swap. Returns the slot, its
/// index, and whether it was claimed now (false: another CPU claimed one
/// for `key` first). `None` when the sequence is full.
#[inline(always)]
pub(super) fn claim_slot(key: u64, born: u64, owned: bool) -> Option<(u32, *mut ByteSlot, bool)> {
    if !BYTE_TABLE {
        return None;
    }
    let born = if owned { born } else { born | byte_table::UNOWNED };
    let (home, mask) = home_of(key);
    for i in 0..byte_table::PROBES {
        let index = byte_table::probe_in(home, i, mask);
        let slot = BYTES.get_ptr_mut(index)?;
        // SAFETY: a live array value; `sock` only changes atomically.
        let mut seen = unsafe { core::ptr::read_volatile(&raw const (*slot).sock) };
        // Twice: user space may turn the tombstone seen into an empty slot
        // in between, and the claim must then take this slot, not a later
        // one (a lookup stops at the first empty slot).
        for _ in 0..2 {
            if seen == key {
                return Some((index, slot, false));
            }
            if seen != byte_table::EMPTY && seen != byte_table::TOMBSTONE {
                break;
            }
            // SAFETY: as above; compare-and-swap on an aligned u64.
            let (previous, won) = unsafe {
                atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                    &raw mut (*slot).sock,
                    seen,
                    key,
                )
            };
            if won {
                // SAFETY: the slot is ours now; its counters were zeroed
                // when it was given back.
                unsafe { core::ptr::write_volatile(&raw mut (*slot).born_ns, born) };
                return Some((index, slot, true));
            }
            seen = previous;
        }
    }
    None
}

/// The owner of the socket whose slot is `slot` is known now: from here on
/// its send/receive calls take the hot path.
#[inline(always)]
pub(super) fn mark_owned(slot: *mut ByteSlot) {
    if !BYTE_TABLE || slot.is_null() {
        return;
    }
    // SAFETY: a live array value; compare-and-swap on an aligned u64 (a
    // birth time changed meanwhile is left alone).
    unsafe {
        let born = core::ptr::read_volatile(&raw const (*slot).born_ns);
        if born & byte_table::UNOWNED != 0 {
            let _ = atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                &raw mut (*slot).born_ns,
                born,
                born & !byte_table::UNOWNED,
            );
        }
    }
}

/// Adds the counters of `key`'s slot (`slot`, found for its record) to
/// its final record and gives the slot back, zeroed, as a tombstone.
/// Nothing sends or receives on a socket being destroyed.
#[inline(always)]
pub(super) fn release_slot(key: u64, slot: *mut ByteSlot, record: &mut SockRecord) {
    if !BYTE_TABLE || slot.is_null() {
        return;
    }
    // SAFETY: a live array value (`BYTES` entries are never freed).
    unsafe {
        if core::ptr::read_volatile(&raw const (*slot).sock) != key {
            return;
        }
        record.tx_bytes += core::ptr::read_volatile(&raw const (*slot).tx_bytes);
        record.rx_bytes += core::ptr::read_volatile(&raw const (*slot).rx_bytes);
        core::ptr::write_volatile(&raw mut (*slot).tx_bytes, 0);
        core::ptr::write_volatile(&raw mut (*slot).rx_bytes, 0);
        core::ptr::write_volatile(&raw mut (*slot).born_ns, 0);
        let _ = atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &raw mut (*slot).sock,
            key,
            byte_table::TOMBSTONE,
        );
    }
}
