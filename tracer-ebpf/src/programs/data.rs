//! The send/receive path: one entry per attach backend, all counting
//! through [`on_data`]. This runs on every socket syscall of the host.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, fexit, kprobe, kretprobe},
    programs::{BtfTracePointContext, FExitContext, ProbeContext, RetProbeContext},
};
use tracer_common::{stat, CallArgs, MSG_PEEK};

use super::{
    kernel::Sock,
    maps::{count, CALLS},
    record::{claim_owner, create, find},
    slots::byte_slot,
};

/// Counts what one send or receive call moved on `sk`. `moved` is the
/// call's return value; `msg_flags` the receive flags (`MSG_PEEK` reads
/// move nothing). `checked_tcp` says the caller knows `sk` is TCP.
#[inline(always)]
fn on_data<const TYPED: bool>(sk: Sock<TYPED>, moved: i32, msg_flags: i32, sending: bool, checked_tcp: bool) {
    if moved <= 0 || sk.is_null() {
        return;
    }
    if !sending && msg_flags & MSG_PEEK != 0 {
        return;
    }
    let key = sk.key();
    // Hot path: a socket with an owner has a `BYTES` slot; no hash lookup,
    // no helper call.
    if let Some(slot) = byte_slot(key) {
        // SAFETY: a live array value; other CPUs only add atomically.
        unsafe {
            let counter = if sending { &raw mut (*slot).tx_bytes } else { &raw mut (*slot).rx_bytes };
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, moved as u64);
        }
        count(stat::EVENTS, 1);
        return;
    }
    // The slow path: the first call on a socket, or one whose owner is not
    // known yet (a server's accepted socket). A known socket is TCP, which
    // spares the family and protocol reads.
    let entry = match find(key) {
        Some(entry) => entry,
        None => match create(sk, checked_tcp, false, true) {
            Some((entry, _)) => entry,
            None => return,
        },
    };
    // SAFETY: `entry` points into live map values; concurrent senders and
    // receivers on other CPUs only ever add atomically.
    unsafe {
        if (*entry.record).pid == 0 {
            // The owner is known from here on: later calls take the hot
            // path.
            claim_owner(entry);
        }
        let counters = if entry.slot.is_null() {
            (&raw mut (*entry.record).tx_bytes, &raw mut (*entry.record).rx_bytes)
        } else {
            (&raw mut (*entry.slot).tx_bytes, &raw mut (*entry.slot).rx_bytes)
        };
        let counter = if sending { counters.0 } else { counters.1 };
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, moved as u64);
    }
    count(stat::EVENTS, 1);
}

// ---- Backend "tracepoint": sock:sock_send_length / sock:sock_recv_length
// (kernel >= 6.3). They fire for every socket family, hence the TCP check.

/// `sock:sock_send_length(struct sock *sk, int ret, int flags)`.
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
    on_data(Sock::<true>(ctx.arg(0)), ctx.arg(1), 0, true, false);
    0
}

/// `sock:sock_recv_length(struct sock *sk, int ret, int flags)`.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    on_data(Sock::<true>(ctx.arg(0)), ctx.arg(1), ctx.arg(2), false, false);
    0
}

// ---- Backend "fentry": fexit on the TCP functions themselves (BTF kernels
// >= 5.5); the return value follows the arguments in the context.

/// `int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)`.
#[fexit(function = "tcp_sendmsg")]
pub fn tcp_sendmsg_exit(ctx: FExitContext) -> i32 {
    on_data(Sock::<true>(ctx.arg(0)), ctx.arg(3), 0, true, true);
    0
}

// `tcp_recvmsg` changed its parameters over time, and fexit programs may
// only read the context at constant offsets valid for the prototype: one
// program per prototype, the loader attaches the one that fits.

/// `int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len,
/// int flags)` (newest kernels).
#[fexit(function = "tcp_recvmsg")]
pub fn tcp_recvmsg_exit4(ctx: FExitContext) -> i32 {
    on_data(Sock::<true>(ctx.arg(0)), ctx.arg(4), ctx.arg(3), false, true);
    0
}

/// `int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len,
/// int flags, int *addr_len)` (5.19 to 6.x).
#[fexit(function = "tcp_recvmsg")]
pub fn tcp_recvmsg_exit5(ctx: FExitContext) -> i32 {
    on_data(Sock::<true>(ctx.arg(0)), ctx.arg(5), ctx.arg(3), false, true);
    0
}

/// `int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len,
/// int nonblock, int flags, int *addr_len)` (before 5.19).
#[fexit(function = "tcp_recvmsg")]
pub fn tcp_recvmsg_exit6(ctx: FExitContext) -> i32 {
    on_data(Sock::<true>(ctx.arg(0)), ctx.arg(6), ctx.arg(4), false, true);
    0
}

// ---- Backend "kprobe": kprobe + kretprobe on the same functions (any
// kernel with kprobes). The entry probe saves the arguments per thread.

#[inline(always)]
fn save_call(sock: Option<u64>, flags: i32) {
    if let Some(sock) = sock {
        let _ = CALLS.insert(bpf_get_current_pid_tgid(), CallArgs { sock, flags, _pad: 0 }, 0);
    }
}

#[inline(always)]
fn finish_call(moved: i32, sending: bool) {
    let thread = bpf_get_current_pid_tgid();
    // SAFETY: the entry is this thread's own; read by value.
    let Some(call) = (unsafe { CALLS.get(thread) }).copied() else { return };
    let _ = CALLS.remove(thread);
    // A kprobe's argument is a plain number to the verifier: probe reads.
    on_data(Sock::<false>(call.sock as *const u8), moved, call.flags, sending, true);
}

#[kprobe(function = "tcp_sendmsg")]
pub fn tcp_sendmsg_entry(ctx: ProbeContext) -> u32 {
    save_call(ctx.arg::<u64>(0), 0);
    0
}

#[kretprobe(function = "tcp_sendmsg")]
pub fn tcp_sendmsg_return(ctx: RetProbeContext) -> u32 {
    finish_call(ctx.ret::<i32>(), true);
    0
}

#[kprobe(function = "tcp_recvmsg")]
pub fn tcp_recvmsg_entry(ctx: ProbeContext) -> u32 {
    // Registers hold both candidates; read both, then pick (a read inside
    // each branch gets merged into one at a variable offset, which the
    // verifier refuses).
    let (third, fourth) = (ctx.arg::<i32>(3), ctx.arg::<i32>(4));
    let flags = if offset!(recvmsg_flags_arg) == 4 { fourth } else { third };
    save_call(ctx.arg::<u64>(0), flags.unwrap_or(0));
    0
}

#[kretprobe(function = "tcp_recvmsg")]
pub fn tcp_recvmsg_return(ctx: RetProbeContext) -> u32 {
    finish_call(ctx.ret::<i32>(), false);
    0
}
