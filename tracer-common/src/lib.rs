//! Types shared by the eBPF programs and user space: the per-socket record,
//! the record of a destroyed socket, the kernel offsets handed to the
//! programs, and the constants both sides must agree on.
//!
//! Every struct is `#[repr(C)]` with explicit padding fields, so its layout is
//! the same on both sides and contains no uninitialised bytes.
#![no_std]

/// Length of a kernel task name (`TASK_COMM_LEN`), NUL included.
pub const COMM_LEN: usize = 16;

/// Address families as the kernel numbers them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u16 = 6;
/// `MSG_PEEK`: a receive that does not consume data.
pub const MSG_PEEK: i32 = 2;

/// Kernel TCP states (`include/net/tcp_states.h`).
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
}

/// Which end of a connection a socket is.
pub mod role {
    /// Not known yet: the socket predates the tracer and user space decides
    /// from the listening ports.
    pub const UNKNOWN: u8 = 0;
    /// It called `connect()`.
    pub const CLIENT: u8 = 1;
    /// It was accepted from a listener.
    pub const SERVER: u8 = 2;
    /// It is a listening socket.
    pub const LISTENER: u8 = 3;
}

/// Bits of [`SockRecord::flags`].
pub mod flags {
    /// `state_since_ns` is when the socket entered its state (a transition was
    /// seen); without it the state was read from the socket and its age is
    /// only known to be at least the tracer's run time.
    pub const STATE_TIMED: u32 = 1 << 0;
    /// The connection was established while tracing (SYN_SENT/SYN_RECV ->
    /// ESTABLISHED).
    pub const OPENED: u32 = 1 << 1;
    /// A connect failed while tracing (SYN_SENT -> CLOSE).
    pub const FAILED_CONNECT: u32 = 1 << 2;
    /// The socket was ESTABLISHED at some point while tracked, so its end
    /// closes a connection.
    pub const WAS_ESTABLISHED: u32 = 1 << 3;
}

/// Per-socket record of the socket at a kernel `struct sock` address (in
/// `RECORDS` at the index of its `BYTES` slot, or in the legacy object's
/// `SOCKETS` map keyed by the address), from the first event that names the
/// socket until
/// `tcp:tcp_destroy_sock`, or until a new socket is born at that address
/// (the kernel may free a socket without that tracepoint).
///
/// Addresses are in network byte order; an IPv4 address fills the first four
/// bytes of its 16-byte field. Ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockRecord {
    /// Bytes that send syscalls moved (their return values).
    pub tx_bytes: u64,
    /// Bytes that receive syscalls moved (`MSG_PEEK` excluded).
    pub rx_bytes: u64,
    /// `bpf_ktime_get_ns()` when the tracer first saw the socket.
    pub first_seen_ns: u64,
    /// `bpf_ktime_get_ns()` when the socket entered `state` (see
    /// [`flags::STATE_TIMED`]).
    pub state_since_ns: u64,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    /// Name of the task that became the owner (the thread's name; user space
    /// prefers `/proc/PID/comm` of the process).
    pub comm: [u8; COMM_LEN],
    /// Owner's thread-group id; 0 while unknown.
    pub pid: u32,
    /// Inode number of the socket's network namespace.
    pub netns: u32,
    /// `tcp_sock.total_retrans` when the tracer first saw the socket.
    pub retrans_base: u32,
    /// Latest `tcp_sock.total_retrans` read (at retransmits and destruction).
    pub retrans_total: u32,
    pub resets_sent: u32,
    pub resets_received: u32,
    pub local_port: u16,
    pub remote_port: u16,
    pub family: u16,
    /// One of [`role`].
    pub role: u8,
    /// One of [`tcp_state`].
    pub state: u8,
    /// Bits of [`flags`].
    pub flags: u32,
    /// `tcp_sock.segs_out` when first seen, and as last read (at
    /// retransmits and destruction): the denominator of retransmit ratios.
    pub segs_out_base: u32,
    pub segs_out: u32,
    /// SYN retransmits while the socket was in SYN_SENT.
    pub syn_retrans: u32,
    /// TCP health: set at the events the programs already handle and by
    /// the `sample_sockets` iterator at every collection.
    pub health: TcpHealth,
}

/// A socket's TCP health, in the kernel's own units (user space converts).
///
/// Event fields: `connect_ns` and `connect_error`. Sampled fields (written
/// by the `sample_sockets` iterator at collection time, and the chrono
/// counters once more at destruction): valid once `samples` > 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpHealth {
    /// Client: connect() (SYN_SENT) to ESTABLISHED. Server: the handshake
    /// round trip the kernel measured for the accepted socket. 0: none.
    pub connect_ns: u64,
    /// `sk_err` when SYN_SENT ended in CLOSE (0: no error).
    pub connect_error: u32,
    /// How many times the iterator sampled the socket (wrapping).
    pub samples: u32,
    /// `tcp_sock.srtt_us` (microseconds << 3).
    pub srtt_us8: u32,
    /// `tcp_sock.rcv_rtt_est.rtt_us` (microseconds << 3).
    pub rcv_rtt_us8: u32,
    /// `minmax_get(&tcp_sock.rtt_min)`, microseconds.
    pub min_rtt_us: u32,
    /// `rcv_nxt - copied_seq`: arrived, not yet read.
    pub recv_queue: u32,
    /// `write_seq - snd_una`: written, not yet acknowledged.
    pub send_queue: u32,
    /// `sock.sk_rcvbuf`.
    pub rcvbuf: u32,
    /// `tcp_sock.chrono_stat[]` plus the chrono running now, in jiffies:
    /// busy, limited by the receiver's window, limited by the send buffer.
    pub chrono: [u32; 3],
    /// `tcp_sock.rate_delivered` (segments) over `rate_interval_us`, and
    /// `mss_cache`: the delivery rate as `tcp_get_info` computes it.
    pub rate_delivered: u32,
    pub rate_interval_us: u32,
    pub mss_cache: u32,
    /// Bits of [`health_flags`].
    pub flags: u32,
    /// What the last full sample saw of the socket's movement, folded:
    /// `segs_out` (a segment left: data, or the acknowledgement of data
    /// that came in), `write_seq` (the owner wrote) and the bytes the owner
    /// read. The next pass reads only these and the chrono type (one cache
    /// line of `tcp_sock` where the kernel groups them, against ~10 for a
    /// full sample) and keeps the sample if nothing moved and no chrono
    /// runs (data unacknowledged runs the busy one): RTTs, backlogs,
    /// receive buffer and delivery rate change only with one of these.
    pub probe: u32,
}

/// Bits of [`TcpHealth::flags`].
pub mod health_flags {
    /// `connect_ns` holds a measurement.
    pub const CONNECT_TIMED: u32 = 1 << 0;
    /// SYN_SENT ended without ESTABLISHED (a failed connect).
    pub const CONNECT_FAILED: u32 = 1 << 1;
    /// At least one SYN left (segs_out > 0 when the connect failed).
    pub const SYN_SENT_OUT: u32 = 1 << 2;
    /// The chrono counters hold values (sampled or read at destruction).
    pub const CHRONO: u32 = 1 << 3;
    /// An error was reported to the owner while connecting with no error
    /// code left on the socket: an ICMP error that arrived while the owner
    /// held the socket (its own non-blocking connect()), which the kernel
    /// keeps only until the application reads it.
    pub const SOFT_ERROR_REPORTED: u32 = 1 << 4;
}

/// What the `sample_sockets` iterator leaves in `HEALTH_CLOCK` at the end
/// of each pass: the kernel's jiffies and monotonic clock read together,
/// from which user space measures HZ (BTF does not hold it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HealthClock {
    pub jiffies: u64,
    pub ktime_ns: u64,
    /// Sockets the pass sampled.
    pub sampled: u64,
    /// Passes so far.
    pub passes: u64,
}

/// One slot of the `BYTES` table, an open-addressing table in an array
/// (whose lookups the verifier inlines: no function call), keyed by the
/// socket's address. Every tracked socket of the main object has one slot,
/// claimed (compare and swap on `sock`) when its record is created: the
/// slot's index is also the index of its `SockRecord` in `RECORDS`. The
/// send/receive path counts the socket's bytes here; its record's own
/// counters stay at zero until destruction, when the slot's are added to
/// them and the slot is given back zeroed as a tombstone. User space turns
/// tombstones back into empty slots when that is safe (see
/// [`byte_table`]). The legacy object (no compare and swap) has no such
/// table: records live in the `SOCKETS` hash map and count their own bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ByteSlot {
    /// The socket's address, or [`byte_table::EMPTY`] /
    /// [`byte_table::TOMBSTONE`].
    pub sock: u64,
    /// The `first_seen_ns` of the record the slot belongs to, with
    /// [`byte_table::UNOWNED`] while the socket's owner is unknown: tells a
    /// slot from the record of a later socket at the same address (user
    /// space reads the slot and the record at different instants).
    pub born_ns: u64,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

/// The `BYTES` table's geometry, shared by both sides.
pub mod byte_table {
    /// A slot never used (a lookup stops here).
    pub const EMPTY: u64 = 0;
    /// A slot given back (a lookup goes on past it; a claim may reuse it).
    pub const TOMBSTONE: u64 = 1;
    /// Set in a slot's `born_ns` while the socket's owner is unknown. The
    /// send/receive path's fast path counts only sockets whose owner is
    /// known, and leaves the others to the slow path, which finds the
    /// owner. (Not in `sock`: the verifier allows no bit operations on the
    /// socket pointer.)
    pub const UNOWNED: u64 = 1 << 63;

    /// The socket a slot's `sock` word names; `EMPTY` and `TOMBSTONE` name
    /// none (0).
    #[inline(always)]
    pub const fn socket_of(word: u64) -> u64 {
        if word == EMPTY || word == TOMBSTONE {
            0
        } else {
            word
        }
    }

    /// The birth time in a slot's `born_ns` word (without [`UNOWNED`]).
    #[inline(always)]
    pub const fn born_of(word: u64) -> u64 {
        word & !UNOWNED
    }

    /// log2 of the number of slots by default (the table is sized at load
    /// time, `KernelOffsets::byte_slots_log2`).
    pub const SLOTS_LOG2: u32 = 17;
    pub const SLOTS: u32 = 1 << SLOTS_LOG2;
    pub const MASK: u32 = SLOTS - 1;
    /// Slots a lookup or a claim looks at from the home slot on (linear
    /// probing). A socket whose sequence is full is not tracked (the table
    /// has twice the slots of the sockets it is sized for, so at most half
    /// are taken while it holds no more than that).
    pub const PROBES: u32 = 16;

    /// The first slot a socket's probe sequence looks at in a table of
    /// `2^log2` slots (Fibonacci hashing of the `struct sock` address).
    #[inline(always)]
    pub const fn home_in(sock: u64, log2: u32) -> u32 {
        (sock.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - log2)) as u32
    }

    /// The `i`-th slot of a probe sequence in a table of `mask + 1` slots.
    #[inline(always)]
    pub const fn probe_in(home: u32, i: u32, mask: u32) -> u32 {
        (home.wrapping_add(i)) & mask
    }

    /// [`home_in`] for the default size.
    #[inline(always)]
    pub const fn home(sock: u64) -> u32 {
        home_in(sock, SLOTS_LOG2)
    }

    /// [`probe_in`] for the default size.
    #[inline(always)]
    pub const fn probe(home: u32, i: u32) -> u32 {
        probe_in(home, i, MASK)
    }

    /// log2 of the slots for a socket table of `max_sockets` entries: a
    /// power of two at least as large, between 2^10 and 2^24.
    pub const fn slots_log2_for(max_sockets: u32) -> u32 {
        let mut log2 = 10;
        while log2 < 24 && (1u32 << log2) < max_sockets {
            log2 += 1;
        }
        log2
    }
}

/// What `tcp:tcp_destroy_sock` hands to user space through the `CLOSED` ring
/// buffer: the socket's final record. Also handed over for a record still
/// held when a new socket is born at its address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ClosedSock {
    /// The address of the socket the record describes.
    pub sock: u64,
    /// The last time the programs read the clock for the socket (its birth
    /// or a timed state change; destruction reads none): at or after its
    /// `first_seen_ns`, before the birth of any later socket at its address,
    /// and before its destruction. Orders the record against tables read
    /// earlier.
    pub last_clock_ns: u64,
    pub record: SockRecord,
}

/// Key of `OVERFLOW`: the socket's address and the instant it was first
/// seen. The address alone is not unique there: under churn the kernel
/// reuses a freed socket's memory for the next socket at once, so several
/// final records of one address can wait for the same drain.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OverflowKey {
    pub sock: u64,
    pub first_seen_ns: u64,
}

/// Field offsets in the running kernel's structs, resolved from its BTF in
/// user space and set as the `OFFSETS` global before load (rustc emits no
/// CO-RE relocations, so offsets compiled in would fit one kernel only).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelOffsets {
    /// `sock_common.skc_family` (u16).
    pub skc_family: u32,
    /// `sock_common.skc_state` (u8).
    pub skc_state: u32,
    /// `sock_common.skc_num`: local port, host order (u16).
    pub skc_num: u32,
    /// `sock_common.skc_dport`: remote port, network order (u16).
    pub skc_dport: u32,
    /// `sock_common.skc_rcv_saddr` (IPv4 local address).
    pub skc_rcv_saddr: u32,
    /// `sock_common.skc_daddr` (IPv4 remote address).
    pub skc_daddr: u32,
    /// `sock_common.skc_v6_rcv_saddr` (IPv6 local address).
    pub skc_v6_rcv_saddr: u32,
    /// `sock_common.skc_v6_daddr` (IPv6 remote address).
    pub skc_v6_daddr: u32,
    /// `sock_common.skc_net` (pointer to `struct net`).
    pub skc_net: u32,
    /// `net.ns.inum`.
    pub net_ns_inum: u32,
    /// `sock.sk_protocol` (u16; a bitfield before 5.6, which this tracer
    /// does not support).
    pub sk_protocol: u32,
    /// `tcp_sock.total_retrans` (u32).
    pub tcp_total_retrans: u32,
    /// `tcp_sock.segs_out` (u32).
    pub tcp_segs_out: u32,
    /// Index of `flags` among `tcp_recvmsg`'s parameters (it lost its
    /// `nonblock` parameter in 5.19), for the fentry and kprobe backends.
    pub recvmsg_flags_arg: u32,
    /// Number of `tcp_recvmsg` parameters: where fexit finds the return value.
    pub recvmsg_nargs: u32,
    /// 1 if `sock_common` starts with the layout of [`CommonBlock`] at
    /// `skc_daddr` (every kernel so far): the programs then read the
    /// addresses, ports, family and state in one read.
    pub common_block: u32,
    /// 1 if `skc_v6_rcv_saddr` directly follows `skc_v6_daddr`: both IPv6
    /// addresses in one read.
    pub v6_block: u32,
    /// TCP health fields; 0 where the running kernel lacks one (the value
    /// is then never read and reported as absent).
    /// `sock.sk_err` (int).
    pub sk_err: u32,
    /// `sock.sk_err_soft` (int): where an ICMP error lands when the socket
    /// was busy in a system call (e.g. a non-blocking connect's own).
    pub sk_err_soft: u32,
    pub _pad: u32,
    /// `sock.sk_rcvbuf` (int).
    pub sk_rcvbuf: u32,
    /// `tcp_sock.srtt_us` (u32).
    pub tcp_srtt_us: u32,
    /// `tcp_sock.rcv_rtt_est.rtt_us` (u32).
    pub tcp_rcv_rtt_us: u32,
    /// `tcp_sock.rtt_min.s[0].v` (u32).
    pub tcp_min_rtt: u32,
    /// `tcp_sock.rcv_nxt`, `copied_seq`, `write_seq`, `snd_una` (u32).
    pub tcp_rcv_nxt: u32,
    pub tcp_copied_seq: u32,
    pub tcp_write_seq: u32,
    pub tcp_snd_una: u32,
    /// `tcp_sock.chrono_start` (u32 jiffies), directly followed by
    /// `chrono_stat[3]` (checked against the BTF; 0 otherwise).
    pub tcp_chrono_start: u32,
    /// The byte holding the 2-bit `tcp_sock.chrono_type`, and the bit it
    /// starts at.
    pub tcp_chrono_type_byte: u32,
    pub tcp_chrono_type_shift: u32,
    /// `tcp_sock.rate_delivered`, `rate_interval_us`, `mss_cache` (u32).
    pub tcp_rate_delivered: u32,
    pub tcp_rate_interval_us: u32,
    pub tcp_mss_cache: u32,
    /// Load-time setting, not an offset: log2 of the `BYTES` table's slots
    /// (0: [`byte_table::SLOTS_LOG2`]).
    pub byte_slots_log2: u32,
    /// The span of `struct tcp_sock` the TCP health pass copies in one
    /// read: `tcp_block_len` bytes (at most [`TCP_BLOCK_MAX`]) from
    /// `tcp_block_start`, holding every `tcp_*` field above that is not 0
    /// (0: the fields are read one by one) ...
    pub tcp_block_start: u32,
    pub tcp_block_len: u32,
    /// ... or two spans, when the fields fall in two clusters (fewer cache
    /// lines copied): the first then holds at most [`TCP_BLOCK_HALF`]
    /// bytes, and this second one (0: none) too, copied to the buffer's
    /// second half.
    pub tcp_block2_start: u32,
    pub tcp_block2_len: u32,
}

/// The most bytes of `struct tcp_sock` the TCP health pass copies at once.
pub const TCP_BLOCK_MAX: u32 = 1024;
/// Where the second span goes in the buffer, and the most each of two
/// spans holds.
pub const TCP_BLOCK_HALF: u32 = TCP_BLOCK_MAX / 2;

/// The start of `struct sock_common` at `skc_daddr`, as every kernel lays
/// it out (checked against the BTF before use; see
/// [`KernelOffsets::common_block`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CommonBlock {
    pub daddr: [u8; 4],
    pub rcv_saddr: [u8; 4],
    pub hash: u32,
    /// Network order.
    pub dport: u16,
    /// Host order.
    pub num: u16,
    pub family: u16,
    pub state: u8,
    pub _reuse: u8,
}

impl CommonBlock {
    /// Offsets of the fields the programs use, relative to `skc_daddr`.
    pub const RCV_SADDR: u32 = 4;
    pub const DPORT: u32 = 12;
    pub const NUM: u32 = 14;
    pub const FAMILY: u32 = 16;
    pub const STATE: u32 = 18;
}

/// Indexes into the per-CPU `STATS` array.
pub mod stat {
    /// Events the programs handled.
    pub const EVENTS: u32 = 0;
    /// Destroyed-socket records lost because the ring buffer was full.
    pub const EVENTS_DROPPED: u32 = 1;
    /// Sockets not tracked because the socket table had no room: counted once
    /// per socket (`UNTRACKED` remembers the ones counted).
    pub const MAP_FULL: u32 = 2;
    /// Destroyed-socket records that found the ring buffer full and were
    /// kept in `OVERFLOW` instead (user space drains it: nothing lost).
    pub const EVENTS_DEFERRED: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// Arguments of an in-flight `tcp_sendmsg`/`tcp_recvmsg` call, saved by the
/// kprobe for its kretprobe (keyed by thread).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CallArgs {
    pub sock: u64,
    pub flags: i32,
    pub _pad: u32,
}

/// Default number of sockets the socket table is sized for (user space
/// sizes it at load with `--max-sockets`): the main object's `BYTES` and
/// `RECORDS` get twice as many slots (rounded up to a power of two, ~460
/// bytes of kernel memory per socket), the legacy object's `SOCKETS` map
/// as many entries. Sockets the table cannot place are not tracked and
/// counted once each in `map_full_drops`.
pub const MAX_SOCKETS: u32 = 65_536;
/// Capacity of `OVERFLOW`: final records kept while the ring buffer is full.
pub const OVERFLOW_RECORDS: u32 = 16_384;
/// Capacity of `UNTRACKED`: sockets already counted as untracked.
pub const UNTRACKED_SOCKETS: u32 = 65_536;
/// Size of the `CLOSED` ring buffer in bytes (a power of two).
pub const CLOSED_RING_BYTES: u32 = 2 << 20;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays with explicit
    // padding fields; every bit pattern is valid.
    unsafe impl aya::Pod for super::SockRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ClosedSock {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OverflowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ByteSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CallArgs {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HealthClock {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_have_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<TcpHealth>(), 8 + 4 * 16);
        assert_eq!(
            core::mem::size_of::<SockRecord>(),
            8 * 4 + 16 * 3 + 4 * 6 + 2 * 3 + 2 + 4 * 4 + core::mem::size_of::<TcpHealth>()
        );
        assert_eq!(core::mem::offset_of!(SockRecord, health) % 8, 0);
        assert_eq!(core::mem::size_of::<SockRecord>() % 8, 0);
        assert_eq!(core::mem::size_of::<ClosedSock>(), 16 + core::mem::size_of::<SockRecord>());
        assert_eq!(core::mem::size_of::<KernelOffsets>(), 17 * 4 + 22 * 4);
        assert_eq!(core::mem::size_of::<CommonBlock>(), 20);
        assert_eq!(core::mem::offset_of!(CommonBlock, dport) as u32, CommonBlock::DPORT);
        assert_eq!(core::mem::offset_of!(CommonBlock, num) as u32, CommonBlock::NUM);
        assert_eq!(core::mem::offset_of!(CommonBlock, family) as u32, CommonBlock::FAMILY);
        assert_eq!(core::mem::offset_of!(CommonBlock, state) as u32, CommonBlock::STATE);
        assert_eq!(core::mem::offset_of!(CommonBlock, rcv_saddr) as u32, CommonBlock::RCV_SADDR);
    }
}
