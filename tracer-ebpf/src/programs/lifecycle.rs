//! The socket's life: state changes (which also time connects and record
//! failed ones, see [`super::health`]), retransmits, resets, and
//! destruction, which hands the final record to user space.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{flags, role, stat, tcp_state, ClosedSock, OverflowKey, SockRecord, CLOSED_RING_BYTES};

use super::{
    health,
    kernel::{bpf_now, read_tuple, segs_out, total_retrans, zero16},
    maps::{count, CLOSED, OVERFLOW, SCRATCH_CLOSED, SOCKETS, UNTRACKED},
    record::{claim_owner, record_of},
    slots::release_byte_slots,
};

/// Ring-buffer flags and queries (`include/uapi/linux/bpf.h`).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
/// `BPF_NOEXIST`: insert only if absent.
const BPF_NOEXIST: u64 = 1;
/// Unread bytes in `CLOSED` at which user space is woken.
const CLOSED_WAKEUP_BYTES: u64 = CLOSED_RING_BYTES as u64 / 4;

/// `sock:inet_sock_set_state(const struct sock *sk, const int oldstate,
/// const int newstate)`. Connect (CLOSE -> SYN_SENT) and listen
/// (CLOSE -> LISTEN) run in the owner's process context; every other
/// transition may run in softirq, where the current task is not the owner.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let old_state = ctx.arg::<i32>(1) as u8;
    let new_state = ctx.arg::<i32>(2) as u8;
    let now = bpf_now();
    let born = matches!(
        (old_state, new_state),
        (tcp_state::CLOSE, tcp_state::SYN_SENT) | (tcp_state::LISTEN, tcp_state::SYN_RECV)
    );
    // `record_of` checks the protocol of sockets it does not know yet.
    let Some((mut record, mut created)) = record_of(sk, now, born) else {
        return 0;
    };
    if born && !created {
        // A record older than the socket: see `retire`.
        retire(sk as u64, now, record);
        let Some(fresh) = record_of(sk, now, born) else {
            return 0;
        };
        (record, created) = fresh;
    }
    // SAFETY: `record` points into a live map value. State changes of one
    // socket are serialised by the socket lock.
    let record = unsafe { &mut *record };
    // Addresses are final once a connection is set up; later on, on the
    // way to CLOSE, the kernel even zeroes the local port (`inet_put_port`).
    // A record created just now has them already.
    if !created
        && matches!(new_state, tcp_state::SYN_SENT | tcp_state::SYN_RECV | tcp_state::ESTABLISHED | tcp_state::LISTEN)
    {
        read_tuple(sk, record);
    }
    match (old_state, new_state) {
        (tcp_state::CLOSE, tcp_state::SYN_SENT) => {
            record.role = role::CLIENT;
            record.retrans_base = 0;
            record.segs_out_base = 0;
            claim_owner(record);
        }
        (tcp_state::LISTEN, tcp_state::SYN_RECV) => {
            // A child cloned from its listener in softirq: owner unknown
            // until the process that accepts it sends, receives, or is
            // found holding its inode.
            record.role = role::SERVER;
            record.retrans_base = 0;
            record.segs_out_base = 0;
            record.pid = 0;
            zero16(&mut record.comm);
        }
        (_, tcp_state::LISTEN) => {
            record.role = role::LISTENER;
            claim_owner(record);
        }
        (tcp_state::SYN_SENT, tcp_state::ESTABLISHED) => {
            record.flags |= flags::OPENED | flags::WAS_ESTABLISHED;
            health::on_connected(record, now);
        }
        (tcp_state::SYN_RECV, tcp_state::ESTABLISHED) => {
            record.flags |= flags::OPENED | flags::WAS_ESTABLISHED;
            health::on_accepted(sk, record);
        }
        (tcp_state::SYN_SENT, tcp_state::CLOSE) => {
            record.flags |= flags::FAILED_CONNECT;
            health::on_connect_failed(sk, record);
        }
        _ => {}
    }
    if new_state == tcp_state::ESTABLISHED {
        record.flags |= flags::WAS_ESTABLISHED;
    }
    record.state = new_state;
    record.state_since_ns = now;
    record.flags |= flags::STATE_TIMED;
    count(stat::EVENTS, 1);
    0
}

/// `tcp:tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb, ...)`:
/// fires once per retransmit call, which may carry several segments under
/// TSO, so the count is the socket's own `total_retrans`, read here.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    if sk.is_null() {
        return 0;
    }
    if let Some((record, _)) = record_of(sk, bpf_now(), false) {
        let total = total_retrans(sk);
        let segs = segs_out(sk);
        // SAFETY: `record` points into a live map value; the socket lock is
        // held by the caller.
        unsafe {
            (*record).retrans_total = total;
            (*record).segs_out = segs;
            // SYNs are never sent in several segments: one retransmit each.
            if (*record).state == tcp_state::SYN_SENT {
                (*record).syn_retrans += 1;
            }
        }
    }
    count(stat::EVENTS, 1);
    0
}

/// `sock:inet_sk_error_report(const struct sock *sk)`: an error was
/// reported to the socket's owner. While connecting, that is why the
/// connect fails; the application may read (and so clear) `sk_err` before
/// the socket leaves SYN_SENT (a non-blocking connect answered by an ICMP
/// error stays in SYN_SENT until it is closed), so it is kept now.
#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    if sk.is_null() {
        return 0;
    }
    if let Some(record) = SOCKETS.get_ptr_mut(sk as u64) {
        // SAFETY: `record` points into a live map value; the error report
        // runs under the socket lock or in its softirq.
        health::on_error_report(sk, unsafe { &mut *record });
    }
    0
}

/// `tcp:tcp_send_reset(const struct sock *sk, const struct sk_buff *skb, ...)`;
/// `sk` is NULL when the reset answers a packet for no socket.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> i32 {
    on_reset(ctx.arg(0), true);
    0
}

/// `tcp:tcp_receive_reset(struct sock *sk)`.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    on_reset(ctx.arg(0), false);
    0
}

#[inline(always)]
fn on_reset(sk: *const u8, sent: bool) {
    if sk.is_null() {
        return;
    }
    if let Some((record, _)) = record_of(sk, bpf_now(), false) {
        // SAFETY: `record` points into a live map value.
        unsafe {
            let counter = if sent { &raw mut (*record).resets_sent } else { &raw mut (*record).resets_received };
            atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(counter, 1);
        }
    }
    count(stat::EVENTS, 1);
}

/// `tcp:tcp_destroy_sock(struct sock *sk)`: the socket's last moment. Its
/// final record goes to user space, then the entry is freed.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let key = sk as u64;
    let Some(record) = SOCKETS.get_ptr(key) else {
        // Untracked (the table was full) or never seen: forget it, so a
        // later socket at this address is counted again.
        let _ = UNTRACKED.remove(key);
        return 0;
    };
    // The record is read from the socket one last time: nothing writes to
    // either any more (the socket is being destroyed).
    hand_over(Some(sk), key, bpf_now(), record);
    let _ = SOCKETS.remove(key);
    count(stat::EVENTS, 1);
    0
}

/// A socket is born at `key` (connect, or a child of a listener) at `now`,
/// and the tracer still holds a `record` there: that of an earlier socket at
/// this address, whose memory the kernel freed without
/// `tcp:tcp_destroy_sock` reaching the tracer (seen on 6.18 for orphans
/// in FIN_WAIT1: no later state change, no destroy), or of this same socket
/// before a disconnect or a failed connect. That record is handed over as
/// closed, ended just before `now`, and removed, so its counts stay with
/// its owner and the new socket starts from zero (taken over, its bytes
/// and byte slots would be charged to the new socket's owner). The socket
/// itself is not read for it: it is the new one.
#[inline(always)]
fn retire(key: u64, now: u64, record: *const SockRecord) {
    // Nothing else writes to the record: the address is the new socket's,
    // whose events are serialised by its lock and have not started.
    hand_over(None, key, now.saturating_sub(1), record);
    let _ = SOCKETS.remove(key);
}

/// Hands the final record of `key` to user space through `CLOSED` (or
/// `OVERFLOW` if the ring is full), ended at `ended_ns`; `sk` is the socket
/// it describes when that is still the one at `key` (its last counters are
/// read then).
#[inline(always)]
fn hand_over(sk: Option<*const u8>, key: u64, ended_ns: u64, record: *const SockRecord) {
    match CLOSED.reserve::<ClosedSock>(0) {
        Some(mut entry) => {
            // SAFETY: `entry` is this program's reserved ring-buffer space;
            // `record` points into a live map value that nothing else
            // writes to (the caller's promise).
            unsafe { finish(sk, key, ended_ns, record, entry.as_mut_ptr()) };
            // User space drains the ring at every tick; waking it for every
            // closed socket would cost more than the socket itself under
            // connection churn. Wake it only when the ring fills up.
            let wakeup = if CLOSED.query(BPF_RB_AVAIL_DATA) >= CLOSED_WAKEUP_BYTES {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(wakeup);
        }
        None => defer(sk, key, ended_ns, record),
    }
}

/// Writes the final record of `key` to `closed`: the record as it is, plus
/// its byte slots (given back now), and, read from `sk` if given, its
/// retransmit and segment totals and its last chrono counters. The record
/// is copied there directly: the BPF stack cannot hold a copy.
///
/// # Safety
/// `record` points at the socket's live map value, which nothing else
/// writes any more; `closed` at writable space for a `ClosedSock`.
#[inline(always)]
unsafe fn finish(sk: Option<*const u8>, key: u64, now: u64, record: *const SockRecord, closed: *mut ClosedSock) {
    // SAFETY: as the caller promises.
    unsafe {
        (*closed).sock = key;
        (*closed).destroyed_ns = now;
        core::ptr::copy_nonoverlapping(record, &raw mut (*closed).record, 1);
        let final_record = &mut (*closed).record;
        release_byte_slots(key, final_record);
        if let Some(sk) = sk {
            final_record.retrans_total = total_retrans(sk);
            final_record.segs_out = segs_out(sk);
            health::on_destroy(sk, final_record);
        }
    }
}

/// The ring buffer is full: the final record goes to `OVERFLOW`, which
/// user space drains at its next tick. Only if that is full too are the
/// counts lost (and counted as dropped).
#[inline(always)]
fn defer(sk: Option<*const u8>, key: u64, now: u64, record: *const SockRecord) {
    let Some(scratch) = SCRATCH_CLOSED.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's scratch entry; `record` as in `finish`.
    unsafe { finish(sk, key, now, record, scratch) };
    let overflow_key = OverflowKey { sock: key, destroyed_ns: now };
    // SAFETY: the scratch entry was just written in full.
    if OVERFLOW.insert(overflow_key, unsafe { *scratch }, BPF_NOEXIST).is_ok() {
        count(stat::EVENTS_DEFERRED, 1);
    } else {
        count(stat::EVENTS_DROPPED, 1);
    }
}
