// The programs, shared by both objects: `main.rs` (`tracer`, with the
// byte table) and `legacy.rs` (`tracer-legacy`, without it, for kernels
// before 5.12). `include!`d by each; `BYTE_TABLE` is set there.

use core::intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel, generated},
    macros::{btf_tracepoint, fexit, kprobe, kretprobe, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, FExitContext, ProbeContext, RetProbeContext},
};
use aya_log_ebpf::debug;
use tracer_common::{
    byte_table, flags, role, stat, tcp_state, ByteSlot, CallArgs, ClosedSock, CommonBlock, KernelOffsets, SockRecord,
    AF_INET, AF_INET6, CLOSED_RING_BYTES, IPPROTO_TCP, MAX_SOCKETS, MSG_PEEK,
};

/// Ring-buffer flags and queries (`include/uapi/linux/bpf.h`).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
/// Unread bytes in `CLOSED` at which user space is woken.
const CLOSED_WAKEUP_BYTES: u64 = CLOSED_RING_BYTES as u64 / 4;

/// `BPF_NOEXIST`: insert only if absent (another CPU may race us).
const BPF_NOEXIST: u64 = 1;

#[map]
// Preallocated: under connection churn, allocating and RCU-freeing an
// entry per socket cost more than everything else the tracer does (measured:
// churn 0.80 -> 0.90 of untraced throughput). The price is a fixed
// MAX_SOCKETS x ~200 bytes of kernel memory.
static SOCKETS: HashMap<u64, SockRecord> = HashMap::with_max_entries(MAX_SOCKETS, 0);

/// `BPF_F_MMAPABLE`: user space maps the byte table to read it and to turn
/// tombstones back into empty slots (with atomics).
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The hot path's byte counters (see `ByteSlot`): about 4 MB, fixed.
#[map]
static BYTES: Array<ByteSlot> = Array::with_max_entries(byte_table::SLOTS, BPF_F_MMAPABLE);

#[map]
static CLOSED: RingBuf = RingBuf::with_byte_size(CLOSED_RING_BYTES, 0);

/// Scratch space for building a new record: the BPF stack (512 bytes) is
/// too small to hold copies of it.
#[map]
static SCRATCH: PerCpuArray<SockRecord> = PerCpuArray::with_max_entries(1, 0);

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Set by user space before load; all zero here.
#[no_mangle]
static OFFSETS: KernelOffsets = KernelOffsets {
    skc_family: 0,
    skc_state: 0,
    skc_num: 0,
    skc_dport: 0,
    skc_rcv_saddr: 0,
    skc_daddr: 0,
    skc_v6_rcv_saddr: 0,
    skc_v6_daddr: 0,
    skc_net: 0,
    net_ns_inum: 0,
    sk_protocol: 0,
    tcp_total_retrans: 0,
    tcp_segs_out: 0,
    recvmsg_flags_arg: 3,
    recvmsg_nargs: 5,
    common_block: 0,
    v6_block: 0,
};

/// Reads one offset; volatile so the compiler does not fold the zero above.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: reading a plain global of this program.
        unsafe { core::ptr::read_volatile(&OFFSETS.$field) as usize }
    };
}

/// Reads a `T` at `base + offset` from kernel memory.
#[inline(always)]
fn read<T>(base: *const u8, offset: usize) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error,
    // not a fault.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset) as *const T).ok() }
}

/// Zeroes a 16-byte field of a record with two 8-byte stores. (A plain
/// `= [0; 16]` becomes a call to a byte-by-byte `memset` on this target;
/// the fields are 8-byte aligned in `SockRecord`.)
#[inline(always)]
fn zero16(field: &mut [u8; 16]) {
    let words = field.as_mut_ptr().cast::<u64>();
    // SAFETY: 16 writable bytes, 8-byte aligned in every record.
    unsafe {
        core::ptr::write_volatile(words, 0);
        core::ptr::write_volatile(words.add(1), 0);
    }
}

#[inline(always)]
fn count(index: u32, n: u64) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, this CPU only; programs do not nest on a CPU
        // for these tracepoints.
        unsafe { *slot += n };
    }
}

/// The start of `sock_common`: addresses, ports, family and state. One
/// read where the kernel has the usual layout (every helper call counts on
/// the connection path), field by field otherwise.
#[inline(always)]
fn read_common(sk: *const u8) -> Option<CommonBlock> {
    if offset!(common_block) != 0 {
        return read::<CommonBlock>(sk, offset!(skc_daddr));
    }
    let mut block = CommonBlock {
        family: read::<u16>(sk, offset!(skc_family))?,
        state: read::<u8>(sk, offset!(skc_state)).unwrap_or(0),
        num: read::<u16>(sk, offset!(skc_num)).unwrap_or(0),
        dport: read::<u16>(sk, offset!(skc_dport)).unwrap_or(0),
        ..CommonBlock::default()
    };
    if block.family == AF_INET {
        block.daddr = read::<[u8; 4]>(sk, offset!(skc_daddr)).unwrap_or([0; 4]);
        block.rcv_saddr = read::<[u8; 4]>(sk, offset!(skc_rcv_saddr)).unwrap_or([0; 4]);
    }
    Some(block)
}

#[inline(always)]
fn is_inet_family(family: u16) -> bool {
    family == AF_INET || family == AF_INET6
}

#[inline(always)]
fn is_tcp_protocol(sk: *const u8) -> bool {
    read::<u16>(sk, offset!(sk_protocol)) == Some(IPPROTO_TCP)
}

/// Fills the address fields of `record` from the socket.
#[inline(always)]
fn read_tuple(sk: *const u8, record: &mut SockRecord) {
    if let Some(common) = read_common(sk) {
        fill_tuple(sk, &common, record);
    }
}

/// Fills the address fields of `record` from `common` (and, for IPv6, the
/// socket's IPv6 addresses).
#[inline(always)]
fn fill_tuple(sk: *const u8, common: &CommonBlock, record: &mut SockRecord) {
    record.family = common.family;
    record.local_port = common.num;
    record.remote_port = u16::from_be(common.dport);
    zero16(&mut record.local_addr);
    zero16(&mut record.remote_addr);
    if common.family != AF_INET6 {
        record.local_addr[..4].copy_from_slice(&common.rcv_saddr);
        record.remote_addr[..4].copy_from_slice(&common.daddr);
        return;
    }
    if offset!(v6_block) != 0 {
        // `skc_v6_daddr` then `skc_v6_rcv_saddr`.
        if let Some(both) = read::<[u8; 32]>(sk, offset!(skc_v6_daddr)) {
            record.remote_addr.copy_from_slice(&both[..16]);
            record.local_addr.copy_from_slice(&both[16..]);
        }
        return;
    }
    if let Some(local) = read::<[u8; 16]>(sk, offset!(skc_v6_rcv_saddr)) {
        record.local_addr = local;
    }
    if let Some(remote) = read::<[u8; 16]>(sk, offset!(skc_v6_daddr)) {
        record.remote_addr = remote;
    }
}

#[inline(always)]
fn segs_out(sk: *const u8) -> u32 {
    read::<u32>(sk, offset!(tcp_segs_out)).unwrap_or(0)
}

#[inline(always)]
fn total_retrans(sk: *const u8) -> u32 {
    read::<u32>(sk, offset!(tcp_total_retrans)).unwrap_or(0)
}

/// Makes the current task the socket's owner. Only call in process context.
#[inline(always)]
fn claim_owner(record: &mut SockRecord) {
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
fn new_record(sk: *const u8, now: u64, known_tcp: bool, born: bool) -> Option<&'static mut SockRecord> {
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
fn insert(key: u64, record: &SockRecord) -> Option<*mut SockRecord> {
    if SOCKETS.insert(&key, record, BPF_NOEXIST).is_err() {
        if let Some(existing) = SOCKETS.get_ptr_mut(&key) {
            return Some(existing);
        }
        count(stat::MAP_FULL, 1);
        return None;
    }
    SOCKETS.get_ptr_mut(&key)
}

/// The record of `sk`, created from the socket if the tracer has not seen it
/// yet (a socket that predates the tracer, or one `born` now), and whether
/// it was created now. `None` for non-TCP sockets.
#[inline(always)]
fn record_of(sk: *const u8, now: u64, born: bool) -> Option<(*mut SockRecord, bool)> {
    let key = sk as u64;
    if let Some(record) = SOCKETS.get_ptr_mut(&key) {
        return Some((record, false));
    }
    Some((insert(key, new_record(sk, now, false, born)?)?, true))
}

/// Where `key`'s probe sequence starts.
///
/// The verifier allows no arithmetic but addition on a socket pointer (and
/// whether it still sees the key as a pointer depends on the kernel and on
/// where the compiler spilled it), but a 32-bit move of a pointer is a
/// plain number for a privileged program. The hash is taken of the low 32
/// bits of the address, which are the ones that differ between sockets.
/// The slots themselves hold the whole address, which user space knows the
/// socket by.
#[inline(always)]
fn home_of(key: u64) -> u32 {
    let low: u64;
    // SAFETY: one register move, no memory access.
    unsafe {
        core::arch::asm!("w0 = w1", in("r1") key, lateout("r0") low, options(pure, nomem, nostack, preserves_flags));
    }
    byte_table::home(low)
}

/// The `BYTES` slot holding `key`'s counters, if it has one. Array lookups
/// are inlined by the verifier: no function call.
#[inline(always)]
fn byte_slot(key: u64) -> Option<*mut ByteSlot> {
    if !BYTE_TABLE {
        return None;
    }
    let home = home_of(key);
    for i in 0..byte_table::PROBES {
        let slot = BYTES.get_ptr_mut(byte_table::probe(home, i))?;
        // SAFETY: a live array value; `sock` only changes atomically.
        let sock = unsafe { core::ptr::read_volatile(&raw const (*slot).sock) };
        if sock == key {
            return Some(slot);
        }
        if sock == byte_table::EMPTY {
            return None;
        }
    }
    None
}

/// Gives `key` (whose record has an owner and was first seen at `born`) a
/// `BYTES` slot: the first empty or tombstone slot of its probe sequence,
/// taken with compare-and-swap. Nothing happens when the sequence is full;
/// the bytes are then counted in the record.
#[inline(always)]
fn claim_byte_slot(key: u64, born: u64) {
    if !BYTE_TABLE {
        return;
    }
    let home = home_of(key);
    for i in 0..byte_table::PROBES {
        let Some(slot) = BYTES.get_ptr_mut(byte_table::probe(home, i)) else { return };
        // SAFETY: a live array value; `sock` only changes atomically.
        let mut seen = unsafe { core::ptr::read_volatile(&raw const (*slot).sock) };
        // Twice: user space may turn the tombstone seen into an empty slot
        // in between, and the claim must then take this slot, not a later
        // one (a lookup stops at the first empty slot).
        for _ in 0..2 {
            if seen == key {
                return;
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
                return;
            }
            seen = previous;
        }
    }
}

/// Counts what one send or receive call moved on `sk`. `moved` is the
/// call's return value; `msg_flags` the receive flags (`MSG_PEEK` reads
/// move nothing). `checked_tcp` says the caller knows `sk` is TCP.
#[inline(always)]
fn on_data(sk: *const u8, moved: i32, msg_flags: i32, sending: bool, checked_tcp: bool) {
    if moved <= 0 || sk.is_null() {
        return;
    }
    if !sending && msg_flags & MSG_PEEK != 0 {
        return;
    }
    let key = sk as u64;
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
    // Look the socket up first: a known socket is TCP, which spares the
    // family and protocol reads.
    let record = match SOCKETS.get_ptr_mut(&key) {
        Some(record) => record,
        None => {
            let Some(fresh) = new_record(sk, bpf_now(), checked_tcp, false) else { return };
            claim_owner(fresh);
            match insert(key, fresh) {
                Some(record) => record,
                None => return,
            }
        }
    };
    // SAFETY: `record` points into a live map value; concurrent senders and
    // receivers on other CPUs only ever add atomically.
    unsafe {
        if (*record).pid == 0 {
            claim_owner(&mut *record);
        }
        let counter = if sending { &raw mut (*record).tx_bytes } else { &raw mut (*record).rx_bytes };
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, moved as u64);
        // The owner is known from here on: later calls take the hot path.
        claim_byte_slot(key, (*record).first_seen_ns);
    }
    count(stat::EVENTS, 1);
}

// ---- Backend "tracepoint": sock:sock_send_length / sock:sock_recv_length
// (kernel >= 6.3). They fire for every socket family, hence the TCP check.

/// `sock:sock_send_length(struct sock *sk, int ret, int flags)`.
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
    on_data(ctx.arg(0), ctx.arg(1), 0, true, false);
    0
}

/// `sock:sock_recv_length(struct sock *sk, int ret, int flags)`.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    on_data(ctx.arg(0), ctx.arg(1), ctx.arg(2), false, false);
    0
}

// ---- Backend "fentry": fexit on the TCP functions themselves (BTF kernels
// >= 5.5); the return value follows the arguments in the context.

/// `int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)`.
#[fexit(function = "tcp_sendmsg")]
pub fn tcp_sendmsg_exit(ctx: FExitContext) -> i32 {
    on_data(ctx.arg(0), ctx.arg(3), 0, true, true);
    0
}

// `tcp_recvmsg` changed its parameters over time, and fexit programs may
// only read the context at constant offsets valid for the prototype: one
// program per prototype, the loader attaches the one that fits.

/// `int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len,
/// int flags)` (newest kernels).
#[fexit(function = "tcp_recvmsg")]
pub fn tcp_recvmsg_exit4(ctx: FExitContext) -> i32 {
    on_data(ctx.arg(0), ctx.arg(4), ctx.arg(3), false, true);
    0
}

/// `int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len,
/// int flags, int *addr_len)` (5.19 to 6.x).
#[fexit(function = "tcp_recvmsg")]
pub fn tcp_recvmsg_exit5(ctx: FExitContext) -> i32 {
    on_data(ctx.arg(0), ctx.arg(5), ctx.arg(3), false, true);
    0
}

/// `int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len,
/// int nonblock, int flags, int *addr_len)` (before 5.19).
#[fexit(function = "tcp_recvmsg")]
pub fn tcp_recvmsg_exit6(ctx: FExitContext) -> i32 {
    on_data(ctx.arg(0), ctx.arg(6), ctx.arg(4), false, true);
    0
}

// ---- Backend "kprobe": kprobe + kretprobe on the same functions (any
// kernel with kprobes). The entry probe saves the arguments per thread.

/// LRU: an entry whose kretprobe never ran (kretprobe instances run out
/// under heavy concurrency) is evicted instead of filling the map and
/// stopping the count for every other thread.
#[map]
static CALLS: LruHashMap<u64, CallArgs> = LruHashMap::with_max_entries(16_384, 0);

#[inline(always)]
fn save_call(sock: Option<u64>, flags: i32) {
    if let Some(sock) = sock {
        let _ = CALLS.insert(&bpf_get_current_pid_tgid(), &CallArgs { sock, flags, _pad: 0 }, 0);
    }
}

#[inline(always)]
fn finish_call(moved: i32, sending: bool) {
    let thread = bpf_get_current_pid_tgid();
    // SAFETY: the entry is this thread's own; read by value.
    let Some(call) = (unsafe { CALLS.get(&thread) }).copied() else { return };
    let _ = CALLS.remove(&thread);
    on_data(call.sock as *const u8, moved, call.flags, sending, true);
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

#[inline(always)]
fn bpf_now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

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
    let Some((record, created)) = record_of(sk, now, born) else {
        return 0;
    };
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
            record.flags |= flags::BORN_TRACED;
            record.retrans_base = 0;
            record.segs_out_base = 0;
            claim_owner(record);
        }
        (tcp_state::LISTEN, tcp_state::SYN_RECV) => {
            // A child cloned from its listener in softirq: owner unknown
            // until the process that accepts it sends, receives, or is
            // found holding its inode.
            record.role = role::SERVER;
            record.flags |= flags::BORN_TRACED;
            record.retrans_base = 0;
            record.segs_out_base = 0;
            record.pid = 0;
            zero16(&mut record.comm);
        }
        (_, tcp_state::LISTEN) => {
            record.role = role::LISTENER;
            claim_owner(record);
        }
        (tcp_state::SYN_SENT | tcp_state::SYN_RECV, tcp_state::ESTABLISHED) => {
            record.flags |= flags::OPENED | flags::WAS_ESTABLISHED;
        }
        (tcp_state::SYN_SENT, tcp_state::CLOSE) => {
            record.flags |= flags::FAILED_CONNECT;
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
        }
    }
    count(stat::EVENTS, 1);
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
    let Some(record) = SOCKETS.get_ptr(&key) else {
        return 0;
    };
    let now = bpf_now();
    match CLOSED.reserve::<ClosedSock>(0) {
        Some(mut entry) => {
            // SAFETY: `record` points into a live map value that nothing
            // writes to any more (the socket is being destroyed).
            let mut final_record = unsafe { *record };
            release_byte_slots(key, &mut final_record);
            final_record.retrans_total = total_retrans(sk);
            final_record.segs_out = segs_out(sk);
            entry.write(ClosedSock { sock: key, destroyed_ns: now, record: final_record });
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
        None => {
            // The final counts are lost; the slots still go back.
            // SAFETY: as above.
            let mut final_record = unsafe { *record };
            release_byte_slots(key, &mut final_record);
            count(stat::EVENTS_DROPPED, 1);
            debug!(&ctx, "ring buffer full: final counts of a socket lost");
        }
    }
    let _ = SOCKETS.remove(&key);
    count(stat::EVENTS, 1);
    0
}

/// Adds the counters of `key`'s `BYTES` slots to its final record and gives
/// the slots back, zeroed, as tombstones. Nothing sends or receives on a
/// socket being destroyed.
#[inline(always)]
fn release_byte_slots(key: u64, record: &mut SockRecord) {
    if !BYTE_TABLE {
        return;
    }
    let home = home_of(key);
    for i in 0..byte_table::PROBES {
        let Some(slot) = BYTES.get_ptr_mut(byte_table::probe(home, i)) else { return };
        // SAFETY: a live array value.
        unsafe {
            // All the probes, not only up to an empty slot: a slot cut off
            // from its home by a concurrent sweep must still be given back.
            let sock = core::ptr::read_volatile(&raw const (*slot).sock);
            if sock == key {
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
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
