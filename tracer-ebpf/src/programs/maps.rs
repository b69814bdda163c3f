//! Every map of the programs, and the `OFFSETS` global. User space opens
//! each map by the name it has here.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    byte_table, stat, ByteSlot, CallArgs, ClosedSock, HealthClock, KernelOffsets, OverflowKey, SockRecord,
    CLOSED_RING_BYTES, MAX_SOCKETS, OVERFLOW_RECORDS, TCP_BLOCK_MAX, UNTRACKED_SOCKETS,
};

/// The legacy object's socket records (kernels before 5.12: no
/// compare-and-swap for the open-addressing table), keyed by socket
/// address. Preallocated: under connection churn, allocating and
/// RCU-freeing an entry per socket cost more than everything else the
/// tracer does. User space sizes it to one entry for the main object.
#[map]
pub(super) static SOCKETS: HashMap<u64, SockRecord> = HashMap::with_max_entries(MAX_SOCKETS, 0);

/// `BPF_F_MMAPABLE`: user space maps the byte table to read it and to turn
/// tombstones back into empty slots (with atomics).
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The open-addressing table of the main object (`ByteSlot`): one slot per
/// tracked socket, sized at load (32 bytes a slot).
#[map]
pub(super) static BYTES: Array<ByteSlot> = Array::with_max_entries(byte_table::SLOTS, BPF_F_MMAPABLE);

/// The main object's socket records, at the index of their `BYTES` slot
/// (sized like it at load; one entry for the legacy object); mmapable, so
/// user space reads the records in place, a window at a time.
#[map]
pub(super) static RECORDS: Array<SockRecord> = Array::with_max_entries(byte_table::SLOTS, BPF_F_MMAPABLE);

/// Final records of destroyed sockets, for user space.
#[map]
pub(super) static CLOSED: RingBuf = RingBuf::with_byte_size(CLOSED_RING_BYTES, 0);

/// Final records of destroyed sockets that found `CLOSED` full, keyed by
/// socket address and destruction time (an address is reused at once under
/// churn); user space drains it every tick, so no count is lost unless this
/// fills up too.
#[map]
pub(super) static OVERFLOW: HashMap<OverflowKey, ClosedSock> = HashMap::with_max_entries(OVERFLOW_RECORDS, 0);

/// Scratch space for an `OVERFLOW` entry (too big for the BPF stack).
#[map]
pub(super) static SCRATCH_CLOSED: PerCpuArray<ClosedSock> = PerCpuArray::with_max_entries(1, 0);

/// Sockets counted as untracked (the socket table was full), so each is
/// counted once; forgotten when the socket is destroyed. LRU: a full set
/// forgets the oldest, which may then be counted again.
#[map]
pub(super) static UNTRACKED: LruHashMap<u64, u8> = LruHashMap::with_max_entries(UNTRACKED_SOCKETS, 0);

/// Set (entry 0 = 1) once the socket table was found full: from then on, new
/// records check `UNTRACKED` first (an inlined array lookup until then).
#[map]
pub(super) static TABLE_FULL: Array<u32> = Array::with_max_entries(1, 0);

/// Scratch space for building a new record of the legacy object: the BPF
/// stack (512 bytes) is too small to hold copies of it.
#[map]
pub(super) static SCRATCH: PerCpuArray<SockRecord> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub(super) static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Arguments of in-flight `tcp_sendmsg`/`tcp_recvmsg` calls, for the
/// kprobe backend. LRU: an entry whose kretprobe never ran (kretprobe
/// instances run out under heavy concurrency) is evicted instead of filling
/// the map and stopping the count for every other thread.
#[map]
pub(super) static CALLS: LruHashMap<u64, CallArgs> = LruHashMap::with_max_entries(16_384, 0);

/// The TCP health pass's copy of the span of `struct tcp_sock` it reads
/// (one probe read per socket instead of one per field).
#[map]
pub(super) static TCP_BLOCK: PerCpuArray<[u8; TCP_BLOCK_MAX as usize]> = PerCpuArray::with_max_entries(1, 0);

/// The clocks the `sample_sockets` pass read at the end of its last
/// pass (one entry).
#[map]
pub(super) static HEALTH_CLOCK: Array<HealthClock> = Array::with_max_entries(1, 0);

/// Set by user space before load; all zero here.
#[no_mangle]
pub(super) static OFFSETS: KernelOffsets = KernelOffsets {
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
    sk_err: 0,
    sk_err_soft: 0,
    _pad: 0,
    sk_rcvbuf: 0,
    tcp_srtt_us: 0,
    tcp_rcv_rtt_us: 0,
    tcp_min_rtt: 0,
    tcp_rcv_nxt: 0,
    tcp_copied_seq: 0,
    tcp_write_seq: 0,
    tcp_snd_una: 0,
    tcp_chrono_start: 0,
    tcp_chrono_type_byte: 0,
    tcp_chrono_type_shift: 0,
    tcp_rate_delivered: 0,
    tcp_rate_interval_us: 0,
    tcp_mss_cache: 0,
    byte_slots_log2: 0,
    tcp_block_start: 0,
    tcp_block_len: 0,
    tcp_block2_start: 0,
    tcp_block2_len: 0,
};

/// Adds `n` to this CPU's counter `index` of `STATS`.
#[inline(always)]
pub(super) fn count(index: u32, n: u64) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, this CPU only; programs do not nest on a CPU
        // for these tracepoints.
        unsafe { *slot += n };
    }
}
