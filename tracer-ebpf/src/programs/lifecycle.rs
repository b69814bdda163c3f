//! The socket's life: state changes (which also time connects and record
//! failed ones, see [`super::health`]), retransmits, resets, and
//! destruction, which hands the final record to user space.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{flags, role, stat, tcp_state, ClosedSock, OverflowKey, CLOSED_RING_BYTES};

use super::{
    health,
    kernel::{bpf_now, zero16, Sock, TypedSock},
    maps::{count, CLOSED, OVERFLOW, SCRATCH_CLOSED, UNTRACKED},
    record::{claim_owner, entry_of, find, forget, Entry},
    slots::release_slot,
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
    let sk = Sock::<true>(ctx.arg(0));
    let old_state = ctx.arg::<i32>(1) as u8;
    let new_state = ctx.arg::<i32>(2) as u8;
    let born = matches!(
        (old_state, new_state),
        (tcp_state::CLOSE, tcp_state::SYN_SENT) | (tcp_state::LISTEN, tcp_state::SYN_RECV)
    );
    // `entry_of` checks the protocol of sockets it does not know yet.
    let Some((mut entry, mut created)) = entry_of(sk, born) else {
        return 0;
    };
    if born && !created {
        // A record older than the socket: see `retire`.
        retire(sk.key(), entry);
        let Some(fresh) = entry_of(sk, born) else {
            return 0;
        };
        (entry, created) = fresh;
    }
    // SAFETY: `entry` points into live map values. State changes of one
    // socket are serialised by the socket lock.
    let record = unsafe { &mut *entry.record };
    // Addresses are final once a connection is set up; later on, on the
    // way to CLOSE, the kernel even zeroes the local port (`inet_put_port`).
    // So they are read (again) until then: a client's local port is chosen
    // after it enters SYN_SENT, and a child of a listener enters SYN_RECV
    // as a clone of the listener, before its own ports and addresses are
    // set. Reading them is a few plain loads.
    if matches!(new_state, tcp_state::ESTABLISHED | tcp_state::LISTEN)
        || (!created && matches!(new_state, tcp_state::SYN_SENT | tcp_state::SYN_RECV))
    {
        sk.read_tuple(record);
    }
    // The clock is read only where an output needs the time: the connect's
    // start and end (its latency) and entering CLOSE_WAIT (its age). A
    // record created now has its birth time. Other states are left
    // untimed.
    let timed = matches!(
        (old_state, new_state),
        (tcp_state::SYN_SENT, tcp_state::ESTABLISHED) | (_, tcp_state::SYN_SENT | tcp_state::CLOSE_WAIT)
    );
    let now = if created {
        record.first_seen_ns
    } else if !timed {
        0
    } else {
        bpf_now()
    };
    match (old_state, new_state) {
        (tcp_state::CLOSE, tcp_state::SYN_SENT) => {
            record.role = role::CLIENT;
            record.retrans_base = 0;
            record.segs_out_base = 0;
            // The owner is known: the first send takes the hot path.
            claim_owner(entry);
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
            claim_owner(entry);
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
    if timed || created {
        record.state_since_ns = now;
        record.flags |= flags::STATE_TIMED;
    } else {
        record.flags &= !flags::STATE_TIMED;
    }
    count(stat::EVENTS, 1);
    0
}

/// `tcp:tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb, ...)`:
/// fires once per retransmit call, which may carry several segments under
/// TSO, so the count is the socket's own `total_retrans`, read here.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: BtfTracePointContext) -> i32 {
    let sk = Sock::<true>(ctx.arg(0));
    if sk.is_null() {
        return 0;
    }
    if let Some((Entry { record, .. }, _)) = entry_of(sk, false) {
        let (total, segs) = sk.tcp().map_or((0, 0), |tcp| (tcp.total_retrans(), tcp.segs_out()));
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
    let sk = Sock::<true>(ctx.arg(0));
    if sk.is_null() {
        return 0;
    }
    if let Some(Entry { record, .. }) = find(sk.key()) {
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
    on_reset(Sock::<true>(ctx.arg(0)), true);
    0
}

/// `tcp:tcp_receive_reset(struct sock *sk)`.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    on_reset(Sock::<true>(ctx.arg(0)), false);
    0
}

#[inline(always)]
fn on_reset(sk: TypedSock, sent: bool) {
    if sk.is_null() {
        return;
    }
    if let Some((Entry { record, .. }, _)) = entry_of(sk, false) {
        // SAFETY: `record` points into a live map value.
        unsafe {
            let counter = if sent { &raw mut (*record).resets_sent } else { &raw mut (*record).resets_received };
            atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(counter, 1);
        }
    }
    count(stat::EVENTS, 1);
}

/// `tcp:tcp_destroy_sock(struct sock *sk)`: the socket's last moment. Its
/// final record goes to user space, then the entry is freed. No clock is
/// read: the record is handed over with the last time the tracer took for
/// it (see `ClosedSock::last_clock_ns`).
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: BtfTracePointContext) -> i32 {
    let sk = Sock::<true>(ctx.arg(0));
    let key = sk.key();
    let Some(entry) = find(key) else {
        // Untracked (the table was full) or never seen: forget it, so a
        // later socket at this address is counted again.
        let _ = UNTRACKED.remove(key);
        return 0;
    };
    // The record is read from the socket one last time: nothing writes to
    // either any more (the socket is being destroyed).
    hand_over(Some(sk), key, entry);
    forget(key);
    count(stat::EVENTS, 1);
    0
}

/// A socket is born at `key` (connect, or a child of a listener), and the
/// tracer still holds a `record` there: that of an earlier socket at
/// this address, whose memory the kernel freed without
/// `tcp:tcp_destroy_sock` reaching the tracer (seen on 6.18 for orphans
/// in FIN_WAIT1: no later state change, no destroy), or of this same socket
/// before a disconnect or a failed connect. That record is handed over as
/// closed (ended at its own last timestamp, before the new socket's birth)
/// and removed, so its counts stay with
/// its owner and the new socket starts from zero (taken over, its bytes
/// and byte slots would be charged to the new socket's owner). The socket
/// itself is not read for it: it is the new one.
#[inline(always)]
fn retire(key: u64, entry: Entry) {
    // Nothing else writes to the record: the address is the new socket's,
    // whose events are serialised by its lock and have not started.
    hand_over(None, key, entry);
    forget(key);
}

/// Hands the final record of `key` to user space through `CLOSED` (or
/// `OVERFLOW` if the ring is full); `sk` is the socket it describes when
/// that is still the one at `key` (its last counters are read then).
#[inline(always)]
fn hand_over(sk: Option<TypedSock>, key: u64, entry: Entry) {
    match CLOSED.reserve::<ClosedSock>(0) {
        Some(mut closed) => {
            // SAFETY: `closed` is this program's reserved ring-buffer space;
            // `entry` points into live map values that nothing else writes
            // to (the caller's promise).
            unsafe { finish(sk, key, entry, closed.as_mut_ptr()) };
            // User space drains the ring at every tick; waking it for every
            // closed socket would cost more than the socket itself under
            // connection churn. Wake it only when the ring fills up.
            let wakeup = if CLOSED.query(BPF_RB_AVAIL_DATA) >= CLOSED_WAKEUP_BYTES {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            closed.submit(wakeup);
        }
        None => defer(sk, key, entry),
    }
}

/// Writes the final record of `key` to `closed`: the record as it is, plus
/// its byte slot's counts (the slot is given back now), and, read from `sk` if given, its
/// retransmit and segment totals and its last chrono counters. The record
/// is copied there directly: the BPF stack cannot hold a copy.
///
/// # Safety
/// `record` points at the socket's live map value, which nothing else
/// writes any more; `closed` at writable space for a `ClosedSock`.
#[inline(always)]
unsafe fn finish(sk: Option<TypedSock>, key: u64, entry: Entry, closed: *mut ClosedSock) {
    let record = entry.record.cast_const();
    // SAFETY: as the caller promises.
    unsafe {
        (*closed).sock = key;
        // Set at the record's birth and at every timed state since (never
        // lowered): after the socket's birth, before its end.
        (*closed).last_clock_ns = (*record).state_since_ns;
        core::ptr::copy_nonoverlapping(record, &raw mut (*closed).record, 1);
        let final_record = &mut (*closed).record;
        release_slot(key, entry.slot, final_record);
        if let Some(tcp) = sk.and_then(TypedSock::tcp) {
            final_record.retrans_total = tcp.total_retrans();
            final_record.segs_out = tcp.segs_out();
            health::on_destroy(tcp, final_record);
        }
    }
}

/// The ring buffer is full: the final record goes to `OVERFLOW`, which
/// user space drains at its next tick. Only if that is full too are the
/// counts lost (and counted as dropped).
#[inline(always)]
fn defer(sk: Option<TypedSock>, key: u64, entry: Entry) {
    let Some(scratch) = SCRATCH_CLOSED.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's scratch entry; `record` as in `finish`.
    unsafe { finish(sk, key, entry, scratch) };
    // Each socket at an address has its own birth time.
    // SAFETY: the scratch entry was just written in full.
    let overflow_key = OverflowKey { sock: key, first_seen_ns: unsafe { (*scratch).record.first_seen_ns } };
    // SAFETY: the scratch entry was just written in full.
    if OVERFLOW.insert(overflow_key, unsafe { *scratch }, BPF_NOEXIST).is_ok() {
        count(stat::EVENTS_DEFERRED, 1);
    } else {
        count(stat::EVENTS_DROPPED, 1);
    }
}
