//! TCP health: why a flow is slow or failing.
//!
//! At events the programs already handle (no work on the send/receive
//! path): connect latency when a connect completes (client: from entering
//! SYN_SENT; server: the handshake round trip the kernel measured for the
//! accepted socket), `sk_err` when SYN_SENT ends in CLOSE, and the chrono
//! counters once more at destruction.
//!
//! At collection time: [`sample_sockets`], a pass over `SOCKETS` that user
//! space runs once per tick (kernel 5.13+). For each tracked socket it reads the smoothed RTTs, the minimum
//! RTT, the receive and send backlogs, the receive buffer, the chrono
//! counters and the delivery-rate inputs straight into the socket's record.
//! It covers every network namespace (the sockets are those the tracer
//! already tracks), so it needs no `setns`.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{self, bpf_for_each_map_elem, bpf_jiffies64, bpf_ktime_get_ns},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use tracer_common::{
    byte_table, flags, health_flags, role, tcp_state, SockRecord, TcpHealth, TCP_BLOCK_HALF, TCP_BLOCK_MAX,
};

use crate::BYTE_TABLE;

use super::{
    kernel::{segs_out, Sock, TcpSock, TypedSock},
    maps::{BYTES, HEALTH_CLOCK, RECORDS, SOCKETS, TCP_BLOCK},
};

/// A client's connect completed (SYN_SENT -> ESTABLISHED) at `now`.
#[inline(always)]
pub(super) fn on_connected(record: &mut SockRecord, now: u64) {
    // Timed only if the tracer saw the socket enter SYN_SENT.
    if record.state == tcp_state::SYN_SENT && record.flags & flags::STATE_TIMED != 0 && now > record.state_since_ns {
        record.health.connect_ns = now - record.state_since_ns;
        record.health.flags |= health_flags::CONNECT_TIMED;
    }
}

/// An accepted socket became ESTABLISHED (SYN_RECV -> ESTABLISHED). Its
/// own state changes happen in one softirq (~0 apart); the kernel has just
/// taken its first RTT sample from the SYN-ACK, which is the handshake.
#[inline(always)]
pub(super) fn on_accepted(sk: TypedSock, record: &mut SockRecord) {
    if record.role != role::SERVER || offset!(tcp_srtt_us) == 0 {
        return;
    }
    let srtt_us8 = sk.tcp().map_or(0, |tcp| tcp.u32_at(offset!(tcp_srtt_us)));
    if srtt_us8 != 0 {
        record.health.connect_ns = (srtt_us8 as u64 >> 3) * 1000;
        record.health.flags |= health_flags::CONNECT_TIMED;
    }
}

/// An error reported to a connecting socket's owner: the reason its
/// connect fails, kept in case the application reads it first.
#[inline(always)]
pub(super) fn on_error_report(sk: TypedSock, record: &mut SockRecord) {
    if record.state != tcp_state::SYN_SENT {
        return;
    }
    let error = socket_error(sk);
    if error != 0 {
        record.health.connect_error = error as u32;
    } else {
        record.health.flags |= health_flags::SOFT_ERROR_REPORTED;
    }
}

/// The socket's error: `sk_err`, else `sk_err_soft` (an ICMP error that
/// arrived while the owner held the socket, as during its own connect()).
#[inline(always)]
fn socket_error(sk: TypedSock) -> i32 {
    if offset!(sk_err) == 0 {
        return 0;
    }
    match sk.field::<i32>(offset!(sk_err)).unwrap_or(0) {
        0 if offset!(sk_err_soft) != 0 => sk.field::<i32>(offset!(sk_err_soft)).unwrap_or(0),
        error => error,
    }
}

/// SYN_SENT ended without ESTABLISHED: keep the socket's error (the kernel
/// sets it before the state change; if the application already read it,
/// the one kept at its error report stays) and whether any SYN left.
#[inline(always)]
pub(super) fn on_connect_failed(sk: TypedSock, record: &mut SockRecord) {
    let error = socket_error(sk);
    if error != 0 {
        record.health.connect_error = error as u32;
    }
    let segs = segs_out(sk);
    record.segs_out = segs;
    record.health.flags |= health_flags::CONNECT_FAILED;
    if segs > record.segs_out_base {
        record.health.flags |= health_flags::SYN_SENT_OUT;
    }
}

/// The socket is being destroyed: its chrono counters as they end, so a
/// short connection keeps its own.
#[inline(always)]
pub(super) fn on_destroy(tcp: TcpSock<true>, record: &mut SockRecord) {
    if record.tx_bytes > 0 || record.health.flags & health_flags::CHRONO != 0 {
        read_chrono(tcp, &mut record.health);
    }
}

/// Reads `chrono_stat[]` plus the chrono running now (what `tcp_get_info`
/// reports, in jiffies).
#[inline(always)]
fn read_chrono(tcp: impl TcpFields, health: &mut TcpHealth) {
    if offset!(tcp_chrono_start) == 0 {
        return;
    }
    // `chrono_start` then `chrono_stat[3]`.
    let start = offset!(tcp_chrono_start);
    let block = [tcp.u32_at(start), tcp.u32_at(start + 4), tcp.u32_at(start + 8), tcp.u32_at(start + 12)];
    let type_byte = tcp.u8_at(offset!(tcp_chrono_type_byte));
    let running = (type_byte >> (offset!(tcp_chrono_type_shift) & 7)) & 3;
    let (mut busy, mut rwnd, mut sndbuf) = (block[1], block[2], block[3]);
    if running != 0 {
        // SAFETY: no preconditions.
        let now = unsafe { bpf_jiffies64() } as u32;
        let since = now.wrapping_sub(block[0]);
        match running {
            1 => busy = busy.wrapping_add(since),
            2 => rwnd = rwnd.wrapping_add(since),
            _ => sndbuf = sndbuf.wrapping_add(since),
        }
    }
    health.chrono[0] = busy;
    health.chrono[1] = rwnd;
    health.chrono[2] = sndbuf;
    health.flags |= health_flags::CHRONO;
}

/// Where the fields of a `struct tcp_sock` are read from.
pub(super) trait TcpFields: Copy {
    /// The u32 at `offset`, 0 where the kernel lacks the field (offset 0).
    fn u32_at(self, offset: usize) -> u32;
    /// The byte at `offset` (0 if it cannot be read).
    fn u8_at(self, offset: usize) -> u8;
}

impl<const TYPED: bool> TcpFields for TcpSock<TYPED> {
    #[inline(always)]
    fn u32_at(self, offset: usize) -> u32 {
        TcpSock::u32_at(self, offset)
    }

    #[inline(always)]
    fn u8_at(self, offset: usize) -> u8 {
        self.field::<u8>(offset).unwrap_or(0)
    }
}

/// A copy of the span(s) of `struct tcp_sock` the health pass reads
/// (`tcp_block_start`, `tcp_block_len` bytes; and `tcp_block2_start`,
/// `tcp_block2_len` into the buffer's second half when the fields fall in
/// two clusters), taken with one or two probe reads instead of one per
/// field (~15 per socket). The offsets are constants to the verifier,
/// which checks every read against the copy's size.
#[derive(Clone, Copy)]
struct TcpBlock(*const u8);

impl TcpBlock {
    /// Copies the span(s) of `sk` into this CPU's `TCP_BLOCK`; `None` where
    /// the kernel's fields are too far apart (or a read fails).
    #[inline(always)]
    fn read(sk: TcpSock<false>) -> Option<Self> {
        let len = offset!(tcp_block_len).min(TCP_BLOCK_MAX as usize);
        if len == 0 {
            return None;
        }
        let block = TCP_BLOCK.get_ptr_mut(0)?;
        let from = sk.at(offset!(tcp_block_start));
        // SAFETY: `len` bytes fit the per-CPU buffer (checked above, and by
        // the verifier); the helper checks the kernel address.
        let ret = unsafe { generated::bpf_probe_read_kernel(block.cast(), len as u32, from.cast()) };
        if ret != 0 {
            return None;
        }
        let len2 = offset!(tcp_block2_len).min(TCP_BLOCK_HALF as usize);
        if len2 != 0 {
            let from = sk.at(offset!(tcp_block2_start));
            // SAFETY: the second half of the buffer holds `len2` bytes
            // (checked above, and by the verifier).
            let ret = unsafe {
                let to = block.cast::<u8>().add(TCP_BLOCK_HALF as usize);
                generated::bpf_probe_read_kernel(to.cast(), len2 as u32, from.cast())
            };
            if ret != 0 {
                return None;
            }
        }
        Some(TcpBlock(block.cast_const().cast()))
    }

    #[inline(always)]
    fn at<T: Copy + Default>(self, offset: usize) -> T {
        if offset == 0 {
            return T::default();
        }
        let second = offset!(tcp_block2_len) != 0 && offset >= offset!(tcp_block2_start);
        let at = if second {
            (TCP_BLOCK_HALF as usize).wrapping_add(offset.wrapping_sub(offset!(tcp_block2_start)))
        } else {
            offset.wrapping_sub(offset!(tcp_block_start))
        };
        if at + core::mem::size_of::<T>() > TCP_BLOCK_MAX as usize {
            return T::default();
        }
        // SAFETY: within this CPU's block buffer (checked above).
        unsafe { core::ptr::read_unaligned(self.0.add(at).cast::<T>()) }
    }
}

impl TcpFields for TcpBlock {
    #[inline(always)]
    fn u32_at(self, offset: usize) -> u32 {
        self.at(offset)
    }

    #[inline(always)]
    fn u8_at(self, offset: usize) -> u8 {
        self.at(offset)
    }
}

/// One health sample of a socket's fields into `health` (`rcvbuf` is
/// `struct sock`'s, read apart).
#[inline(always)]
fn sample(tcp: impl TcpFields, rcvbuf: u32, health: &mut TcpHealth) {
    health.srtt_us8 = tcp.u32_at(offset!(tcp_srtt_us));
    health.rcv_rtt_us8 = tcp.u32_at(offset!(tcp_rcv_rtt_us));
    health.min_rtt_us = tcp.u32_at(offset!(tcp_min_rtt));
    // Wrapping differences clamped at 0, as `tcp_diag` reports them.
    let rcv_nxt = tcp.u32_at(offset!(tcp_rcv_nxt));
    let copied_seq = tcp.u32_at(offset!(tcp_copied_seq));
    health.recv_queue = (rcv_nxt.wrapping_sub(copied_seq) as i32).max(0) as u32;
    let write_seq = tcp.u32_at(offset!(tcp_write_seq));
    let snd_una = tcp.u32_at(offset!(tcp_snd_una));
    health.send_queue = (write_seq.wrapping_sub(snd_una) as i32).max(0) as u32;
    health.rcvbuf = rcvbuf;
    health.rate_delivered = tcp.u32_at(offset!(tcp_rate_delivered));
    health.rate_interval_us = tcp.u32_at(offset!(tcp_rate_interval_us));
    health.mss_cache = tcp.u32_at(offset!(tcp_mss_cache));
    read_chrono(tcp, health);
    health.samples = health.samples.wrapping_add(1);
}

/// Samples the socket at `key`, whose record is `record`, and whose owner
/// read `rx_bytes` so far.
#[inline(always)]
fn sample_record(key: u64, record: &mut SockRecord, rx_bytes: u64) {
    if record.role == role::LISTENER || record.state == tcp_state::LISTEN {
        return;
    }
    let Some(tcp) = Sock::<false>(key as *const u8).tcp() else { return };
    let probe = probe(tcp, rx_bytes);
    if let Some(probe) = probe {
        if record.health.samples != 0 && record.health.probe == probe {
            // Nothing moved since the last full sample: it still holds.
            record.health.samples = record.health.samples.wrapping_add(1);
            count_sampled();
            return;
        }
    }
    let rcvbuf = tcp.u32_at(offset!(sk_rcvbuf));
    // Segments and retransmits move between the events that read them:
    // fresh each tick, so live sockets' ratios are current.
    match TcpBlock::read(tcp) {
        Some(block) => {
            sample(block, rcvbuf, &mut record.health);
            record.segs_out = block.u32_at(offset!(tcp_segs_out));
            record.retrans_total = block.u32_at(offset!(tcp_total_retrans));
        }
        None => {
            sample(tcp, rcvbuf, &mut record.health);
            record.segs_out = tcp.segs_out();
            record.retrans_total = tcp.total_retrans();
        }
    }
    if let Some(probe) = probe {
        record.health.probe = probe;
    }
    count_sampled();
}

#[inline(always)]
fn count_sampled() {
    if let Some(clock) = HEALTH_CLOCK.get_ptr_mut(0) {
        // SAFETY: one pass runs at a time (user space runs them in turn).
        unsafe { (*clock).sampled += 1 };
    }
}

/// Bytes of the probe's span (see [`probe_fields`]).
const PROBE_SPAN: usize = 48;

/// Whether the socket moved (see [`TcpHealth::probe`]): `None` where the
/// kernel lacks a field, or a chrono runs (busy or limited time grows with
/// nothing moving): then it is sampled in full.
///
/// The probe is `segs_out`, `write_seq` and the chrono type, and the bytes
/// the owner read (`rx_bytes`, already at hand). That is enough: data
/// queued or in flight runs the busy chrono until its last byte is
/// acknowledged (so a socket waiting for acknowledgements is sampled in
/// full, and the first probe after sees `write_seq` moved since the last
/// stored probe); data coming in is acknowledged, which moves `segs_out`
/// (at most a delayed ACK later); the owner's reads move `rx_bytes`. A
/// stalled sender runs a limited chrono.
#[inline(always)]
fn probe(tcp: TcpSock<false>, rx_bytes: u64) -> Option<u32> {
    if offset!(tcp_chrono_start) == 0 || offset!(tcp_write_seq) == 0 || offset!(tcp_segs_out) == 0 {
        return None;
    }
    let (type_byte, segs_out, write_seq) = probe_fields(tcp)?;
    if (type_byte >> (offset!(tcp_chrono_type_shift) & 7)) & 3 != 0 {
        return None;
    }
    let read = rx_bytes as u32 ^ ((rx_bytes >> 32) as u32).rotate_left(4);
    Some(write_seq ^ segs_out.rotate_left(11) ^ read.rotate_left(22))
}

/// The chrono type byte, `segs_out` and `write_seq`: with one read where
/// they lie within [`PROBE_SPAN`] bytes (one cache line on 6.x kernels,
/// which group them), else one read each.
#[inline(always)]
fn probe_fields(tcp: TcpSock<false>) -> Option<(u8, u32, u32)> {
    let (chrono, segs, write) = (offset!(tcp_chrono_type_byte), offset!(tcp_segs_out), offset!(tcp_write_seq));
    let start = chrono.min(segs).min(write);
    let end = (chrono + 1).max(segs + 4).max(write + 4);
    if end - start > PROBE_SPAN {
        return Some((tcp.field::<u8>(chrono)?, tcp.field::<u32>(segs)?, tcp.field::<u32>(write)?));
    }
    let span = tcp.field::<[u8; PROBE_SPAN]>(start)?;
    let (c, s, w) = (chrono - start, segs - start, write - start);
    if c >= PROBE_SPAN || s + 4 > PROBE_SPAN || w + 4 > PROBE_SPAN {
        return None;
    }
    // SAFETY: within the span (checked above).
    unsafe {
        let at = span.as_ptr();
        Some((
            *at.add(c),
            core::ptr::read_unaligned(at.add(s).cast::<u32>()),
            core::ptr::read_unaligned(at.add(w).cast::<u32>()),
        ))
    }
}

/// Samples one tracked socket of the legacy object (a
/// `bpf_for_each_map_elem` callback over `SOCKETS`: the key is the
/// socket's address, the value its record).
#[inline(never)]
extern "C" fn sample_one(_map: *mut c_void, key: *const u64, value: *mut SockRecord, _ctx: *mut c_void) -> i64 {
    // SAFETY: the kernel passes one live element of `SOCKETS`; the health
    // block of a record is written only here while the socket lives.
    let (key, record) = unsafe { (*key, &mut *value) };
    let rx_bytes = record.rx_bytes;
    sample_record(key, record, rx_bytes);
    0
}

/// Samples the socket of one `RECORDS` entry, if its `BYTES` slot is taken
/// (a `bpf_for_each_map_elem` callback over `RECORDS`: the key is the
/// index).
#[inline(never)]
extern "C" fn sample_entry(_map: *mut c_void, index: *const u32, value: *mut SockRecord, _ctx: *mut c_void) -> i64 {
    // SAFETY: the kernel passes one element of `RECORDS` and its index.
    let (index, record) = unsafe { (*index, &mut *value) };
    let Some(slot) = BYTES.get_ptr(index) else { return 0 };
    // SAFETY: a live array value; `sock` only changes atomically.
    let key = byte_table::socket_of(unsafe { core::ptr::read_volatile(&raw const (*slot).sock) });
    if key != 0 {
        // SAFETY: as above; the counters are plain u64 adds.
        let rx_bytes = unsafe { core::ptr::read_volatile(&raw const (*slot).rx_bytes) };
        sample_record(key, record, rx_bytes);
    }
    0
}

/// One health pass over every tracked socket. Never attached: user space
/// runs it with `BPF_PROG_TEST_RUN` once per tick (a raw tracepoint
/// program can be run that way from kernel 5.10, and
/// `bpf_for_each_map_elem` needs 5.13; [`sample_sockets_iter`] covers
/// older kernels). Preferred over the iterator: some hardened kernels
/// refuse map-element iterators.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sample_sockets(_ctx: RawTracePointContext) -> i32 {
    // SAFETY: the maps are maps of this object (the loader turns their
    // addresses into the maps); the callbacks have the signature the
    // helper expects for their map's key and value.
    unsafe {
        if BYTE_TABLE {
            bpf_for_each_map_elem(
                (&raw const RECORDS).cast_mut().cast(),
                sample_entry as *mut c_void,
                core::ptr::null_mut(),
                0,
            );
        } else {
            bpf_for_each_map_elem(
                (&raw const SOCKETS).cast_mut().cast(),
                sample_one as *mut c_void,
                core::ptr::null_mut(),
                0,
            );
        }
    }
    end_of_pass();
    0
}

/// The map-element iterator's context (`struct bpf_iter__bpf_map_elem`).
#[repr(C)]
pub struct MapElemContext {
    meta: u64,
    map: u64,
    /// Null at the end of a pass.
    key: *const u8,
    value: *mut SockRecord,
}

/// The same pass for kernels 5.9 to 5.12 (no `bpf_for_each_map_elem`): an
/// `iter/bpf_map_elem` program that user space attaches to the socket
/// table (`RECORDS`, or the legacy object's `SOCKETS`) and reads once per
/// tick; the kernel calls it for each element, then once with none.
#[no_mangle]
#[link_section = "iter/bpf_map_elem"]
pub fn sample_sockets_iter(ctx: *const MapElemContext) -> i32 {
    // SAFETY: the kernel passes the iterator's context; key and value are
    // null-checked before use and point at one element of the table.
    let (key, value) = unsafe { ((*ctx).key, (*ctx).value) };
    if key.is_null() || value.is_null() {
        end_of_pass();
        return 0;
    }
    if BYTE_TABLE {
        sample_entry(core::ptr::null_mut(), key.cast(), value, core::ptr::null_mut());
    } else {
        sample_one(core::ptr::null_mut(), key.cast(), value, core::ptr::null_mut());
    }
    0
}

#[inline(always)]
fn end_of_pass() {
    if let Some(clock) = HEALTH_CLOCK.get_ptr_mut(0) {
        // SAFETY: as above; no preconditions for the clock helpers.
        unsafe {
            (*clock).jiffies = bpf_jiffies64();
            (*clock).ktime_ns = bpf_ktime_get_ns();
            (*clock).passes += 1;
        }
    }
}
