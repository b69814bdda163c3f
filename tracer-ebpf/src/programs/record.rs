//! The per-socket record: where it lives, creating it from what the socket
//! can tell (against concurrent CPUs), and the socket's owner.
//!
//! Main object: in `RECORDS`, at the index of the socket's `BYTES` slot
//! (see [`super::slots`]). Finding a record is the probe of an
//! open-addressing table (inlined array lookups, no helper call); creating
//! one claims a slot with compare-and-swap and fills the record in place
//! (no allocation, no copy); destruction gives the slot back. Legacy object
//! (no compare-and-swap before 5.12): in the `SOCKETS` hash map.

use core::ptr::null_mut;

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, generated};
use tracer_common::{flags, role, stat, tcp_state, ByteSlot, CommonBlock, SockRecord, TcpHealth};

use super::{
    kernel::{bpf_now, is_inet_family, zero16, Sock},
    maps::{count, RECORDS, SCRATCH, SOCKETS, TABLE_FULL, UNTRACKED},
    slots::{claim_slot, find_slot, mark_owned},
};
use crate::BYTE_TABLE;

/// `BPF_NOEXIST`: insert only if absent (another CPU may race us).
const BPF_NOEXIST: u64 = 1;

/// A tracked socket: its record, and its `BYTES` slot (null in the legacy
/// object, where the record counts its own bytes).
#[derive(Clone, Copy)]
pub(super) struct Entry {
    pub(super) record: *mut SockRecord,
    pub(super) slot: *mut ByteSlot,
}

/// The entry of the socket at `key`, if the tracer holds one.
#[inline(always)]
pub(super) fn find(key: u64) -> Option<Entry> {
    if !BYTE_TABLE {
        return SOCKETS.get_ptr_mut(key).map(|record| Entry { record, slot: null_mut() });
    }
    let (index, slot) = find_slot(key)?;
    Some(Entry { record: RECORDS.get_ptr_mut(index)?, slot })
}

/// Makes the current task the owner of the socket of `entry`. Only call in
/// process context.
#[inline(always)]
pub(super) fn claim_owner(entry: Entry) {
    // SAFETY: a live record; the owner's fields are written by the
    // socket's own events.
    let record = unsafe { &mut *entry.record };
    record.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // Straight into the record: the helper pads with zeroes (and zeroes
    // the buffer on failure); no zeroed copy first.
    // SAFETY: a 16-byte buffer for a helper that writes at most 16 bytes.
    unsafe { generated::bpf_get_current_comm(record.comm.as_mut_ptr().cast(), record.comm.len() as u32) };
    mark_owned(entry.slot);
}

/// The entry of `sk`, created from the socket if the tracer has not seen it
/// yet (a socket that predates the tracer, or one `born` now), and whether
/// it was created now. `None` for non-TCP sockets, and for sockets the
/// table has no room for (counted once each as untracked).
#[inline(always)]
pub(super) fn entry_of<const TYPED: bool>(sk: Sock<TYPED>, born: bool) -> Option<(Entry, bool)> {
    if let Some(entry) = find(sk.key()) {
        return Some((entry, false));
    }
    create(sk, false, born, false)
}

/// Creates the entry of `sk`, first seen now (the clock is read for it),
/// reading what the socket can tell: addresses, network namespace, state
/// and retransmit total so far. `None` for a socket that is not TCP
/// (checked unless `known_tcp`). A socket `born` now (connect, or a child
/// of a listener) has sent nothing yet: its counters are not read. `owned`:
/// the caller makes the current task its owner at once. Returns whether it
/// was created here (false: another CPU created it first).
#[inline(always)]
pub(super) fn create<const TYPED: bool>(
    sk: Sock<TYPED>,
    known_tcp: bool,
    born: bool,
    owned: bool,
) -> Option<(Entry, bool)> {
    let common = sk.common()?;
    if !is_inet_family(common.family) || (!known_tcp && !sk.is_tcp()) {
        return None;
    }
    let key = sk.key();
    // A socket counted as untracked stays untracked: tracked later, when
    // the table has room again, its counts would miss what came before.
    let full = TABLE_FULL.get(0).is_some_and(|&flag| flag != 0);
    // SAFETY: only whether the entry exists is read.
    if full && unsafe { UNTRACKED.get(key) }.is_some() {
        return None;
    }
    let now = bpf_now();
    if BYTE_TABLE {
        let Some((index, slot, claimed)) = claim_slot(key, now, owned) else {
            untracked(key, full);
            return None;
        };
        let record = RECORDS.get_ptr_mut(index)?;
        if claimed {
            // SAFETY: the slot was claimed just now: the record is ours to
            // fill (its socket's events are serialised, or have not begun).
            fill(sk, &common, born, now, unsafe { &mut *record });
        }
        return Some((Entry { record, slot }, claimed));
    }
    // SAFETY: this CPU's scratch slot; programs do not nest on a CPU.
    let scratch = unsafe { &mut *SCRATCH.get_ptr_mut(0)? };
    fill(sk, &common, born, now, scratch);
    if SOCKETS.insert(key, scratch, BPF_NOEXIST).is_err() {
        if let Some(record) = SOCKETS.get_ptr_mut(key) {
            return Some((Entry { record, slot: null_mut() }, false));
        }
        untracked(key, full);
        return None;
    }
    Some((Entry { record: SOCKETS.get_ptr_mut(key)?, slot: null_mut() }, true))
}

/// The table had no room for the socket at `key`: count it once (not per
/// event), and note that the table filled up.
#[inline(always)]
fn untracked(key: u64, full: bool) {
    if UNTRACKED.insert(key, 0, BPF_NOEXIST).is_ok() {
        count(stat::MAP_FULL, 1);
    }
    if !full {
        if let Some(flag) = TABLE_FULL.get_ptr_mut(0) {
            // SAFETY: a live array value; every writer stores 1.
            unsafe { *flag = 1 };
        }
    }
}

/// Fills every field of `record` for `sk`, first seen at `now`.
#[inline(always)]
fn fill<const TYPED: bool>(sk: Sock<TYPED>, common: &CommonBlock, born: bool, now: u64, record: &mut SockRecord) {
    // Volatile: adjacent zero stores would be merged into a `memset` call.
    // SAFETY: plain fields of a record this program may write.
    unsafe {
        core::ptr::write_volatile(&raw mut record.tx_bytes, 0);
        core::ptr::write_volatile(&raw mut record.rx_bytes, 0);
    }
    record.first_seen_ns = now;
    record.state_since_ns = now;
    zero16(&mut record.comm);
    record.pid = 0;
    record.resets_sent = 0;
    record.resets_received = 0;
    record.role = role::UNKNOWN;
    record.flags = 0;
    record.syn_retrans = 0;
    zero_health(&mut record.health);
    sk.fill_tuple(common, record);
    record.netns = sk.netns();
    record.state = common.state;
    if matches!(
        record.state,
        tcp_state::ESTABLISHED
            | tcp_state::CLOSE_WAIT
            | tcp_state::FIN_WAIT1
            | tcp_state::FIN_WAIT2
            | tcp_state::LAST_ACK
            | tcp_state::CLOSING
    ) {
        record.flags |= flags::WAS_ESTABLISHED;
    }
    let (retrans, segs) =
        if born { (0, 0) } else { sk.tcp().map_or((0, 0), |tcp| (tcp.total_retrans(), tcp.segs_out())) };
    record.retrans_base = retrans;
    record.retrans_total = retrans;
    record.segs_out_base = segs;
    record.segs_out = segs;
}

/// The tracer lets go of the socket at `key` (its final record was handed
/// over; in the main object its slot was given back then).
#[inline(always)]
pub(super) fn forget(key: u64) {
    if !BYTE_TABLE {
        let _ = SOCKETS.remove(key);
    }
}

/// Zeroes a health block with 8-byte stores (a plain assignment becomes a
/// byte-by-byte `memset` call on this target).
#[inline(always)]
fn zero_health(health: &mut TcpHealth) {
    const WORDS: usize = core::mem::size_of::<TcpHealth>() / 8;
    let words = (health as *mut TcpHealth).cast::<u64>();
    for i in 0..WORDS {
        // SAFETY: within the block, which is 8-byte aligned in every record.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}
