//! The per-socket record in `SOCKETS`: creating it from what the socket
//! can tell, inserting it against concurrent CPUs, and the socket's owner.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, generated};
use tracer_common::{flags, role, stat, tcp_state, SockRecord, TcpHealth};

use super::{
    kernel::{fill_tuple, is_inet_family, is_tcp_protocol, read, read_common, segs_out, total_retrans, zero16},
    maps::{count, SCRATCH, SOCKETS, TABLE_FULL, UNTRACKED},
};

/// `BPF_NOEXIST`: insert only if absent (another CPU may race us).
const BPF_NOEXIST: u64 = 1;

/// Makes the current task the socket's owner. Only call in process context.
#[inline(always)]
pub(super) fn claim_owner(record: &mut SockRecord) {
    record.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // Straight into the record: the helper pads with zeroes (and zeroes
    // the buffer on failure); no zeroed copy first.
    // SAFETY: a 16-byte buffer for a helper that writes at most 16 bytes.
    unsafe { generated::bpf_get_current_comm(record.comm.as_mut_ptr().cast(), record.comm.len() as u32) };
}

/// A new record for a socket first seen now, built in `SCRATCH`, reading
/// what the socket can tell: addresses, network namespace, state and
/// retransmit total so far. `None` for a socket that is not TCP (checked
/// unless `known_tcp`). A socket `born` now (connect, or a child of a
/// listener) has sent nothing yet: its counters are not read.
#[inline(always)]
pub(super) fn new_record(sk: *const u8, now: u64, known_tcp: bool, born: bool) -> Option<&'static mut SockRecord> {
    let common = read_common(sk)?;
    if !is_inet_family(common.family) || (!known_tcp && !is_tcp_protocol(sk)) {
        return None;
    }
    // SAFETY: this CPU's scratch slot; programs do not nest on a CPU.
    let record = unsafe { &mut *SCRATCH.get_ptr_mut(0)? };
    // Volatile: adjacent zero stores would be merged into a `memset` call.
    // SAFETY: plain fields of this CPU's scratch record.
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
    fill_tuple(sk, &common, record);
    record.netns = 0;
    let net: u64 = read::<u64>(sk, offset!(skc_net)).unwrap_or(0);
    if net != 0 {
        record.netns = read::<u32>(net as *const u8, offset!(net_ns_inum)).unwrap_or(0);
    }
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
    let (retrans, segs) = if born { (0, 0) } else { (total_retrans(sk), segs_out(sk)) };
    record.retrans_base = retrans;
    record.retrans_total = retrans;
    record.segs_out_base = segs;
    record.segs_out = segs;
    Some(record)
}

/// Inserts `record` unless another CPU got there first, and returns the
/// entry in the map.
#[inline(always)]
pub(super) fn insert(key: u64, record: &SockRecord) -> Option<*mut SockRecord> {
    // A socket counted as untracked stays untracked: tracked later, when
    // the table has room again, its counts would miss what came before.
    let full = TABLE_FULL.get(0).is_some_and(|&flag| flag != 0);
    // SAFETY: only whether the entry exists is read.
    if full && unsafe { UNTRACKED.get(key) }.is_some() {
        return None;
    }
    if SOCKETS.insert(key, record, BPF_NOEXIST).is_err() {
        if let Some(existing) = SOCKETS.get_ptr_mut(key) {
            return Some(existing);
        }
        // Count each socket once, not each of its events.
        if UNTRACKED.insert(key, 0, BPF_NOEXIST).is_ok() {
            count(stat::MAP_FULL, 1);
        }
        if !full {
            if let Some(flag) = TABLE_FULL.get_ptr_mut(0) {
                // SAFETY: a live array value; every writer stores 1.
                unsafe { *flag = 1 };
            }
        }
        return None;
    }
    SOCKETS.get_ptr_mut(key)
}

/// The record of `sk`, created from the socket if the tracer has not seen it
/// yet (a socket that predates the tracer, or one `born` now), and whether
/// it was created now. `None` for non-TCP sockets.
#[inline(always)]
pub(super) fn record_of(sk: *const u8, now: u64, born: bool) -> Option<(*mut SockRecord, bool)> {
    let key = sk as u64;
    if let Some(record) = SOCKETS.get_ptr_mut(key) {
        return Some((record, false));
    }
    Some((insert(key, new_record(sk, now, false, born)?)?, true))
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
