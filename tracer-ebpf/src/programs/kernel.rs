//! Reading kernel structs: every field at an offset user space resolved
//! from the running kernel's BTF (`OFFSETS`), through
//! `bpf_probe_read_kernel`, which turns a bad address into an error rather
//! than a fault.

use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, generated::bpf_skc_to_tcp_sock};
use tracer_common::{CommonBlock, SockRecord, AF_INET, AF_INET6, IPPROTO_TCP};

/// Reads a `T` at `base + offset` from kernel memory.
#[inline(always)]
pub(super) fn read<T>(base: *const u8, offset: usize) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error,
    // not a fault.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset) as *const T).ok() }
}

/// Zeroes a 16-byte field of a record with two 8-byte stores. (A plain
/// `= [0; 16]` becomes a call to a byte-by-byte `memset` on this target;
/// the fields are 8-byte aligned in `SockRecord`.)
#[inline(always)]
pub(super) fn zero16(field: &mut [u8; 16]) {
    let words = field.as_mut_ptr().cast::<u64>();
    // SAFETY: 16 writable bytes, 8-byte aligned in every record.
    unsafe {
        core::ptr::write_volatile(words, 0);
        core::ptr::write_volatile(words.add(1), 0);
    }
}

/// A socket pointer, and how its fields may be read.
///
/// `TYPED`: the verifier knows the pointer as a `struct sock *` from BTF (a
/// BTF tracepoint's or an fexit program's argument). Fields of `struct sock`
/// are then plain loads, about a nanosecond each against ~20 ns for a
/// `bpf_probe_read_kernel` call (they add up on the connection path). The
/// verifier checks each load against the kernel's BTF, which it can because
/// the offsets are constants to it: `OFFSETS` lives in `.rodata`, which the
/// loader freezes before loading the programs. A faulting load reads 0.
///
/// Untyped (a kprobe's register, a map key): every field through
/// `bpf_probe_read_kernel`. Fields of `struct tcp_sock` lie beyond
/// `struct sock`, where the verifier refuses typed loads: they are always
/// read that way ([`Sock::tcp_field`]).
#[derive(Clone, Copy)]
pub(super) struct Sock<const TYPED: bool>(pub(super) *const u8);

/// The socket of a BTF tracepoint's (or fexit program's) argument.
pub(super) type TypedSock = Sock<true>;

impl<const TYPED: bool> Sock<TYPED> {
    /// The socket's address: its key in the tracer's tables.
    #[inline(always)]
    pub(super) fn key(self) -> u64 {
        self.0 as u64
    }

    #[inline(always)]
    pub(super) fn is_null(self) -> bool {
        self.0.is_null()
    }

    /// A field of `struct sock` (`sock_common` included) at `offset`.
    #[inline(always)]
    pub(super) fn field<T: Copy>(self, offset: usize) -> Option<T> {
        if TYPED {
            // SAFETY: a pointer the verifier types from BTF: it checks the
            // access against the struct and makes a faulting load read 0.
            Some(unsafe { core::ptr::read_volatile(self.0.wrapping_add(offset).cast::<T>()) })
        } else {
            read(self.0, offset)
        }
    }

    /// The socket as a `struct tcp_sock`, whose fields lie beyond
    /// `struct sock`. Typed: one `bpf_skc_to_tcp_sock` call (kernel 5.9+),
    /// then plain loads; `None` if it is not a full TCP socket.
    #[inline(always)]
    pub(super) fn tcp(self) -> Option<TcpSock<TYPED>> {
        if !TYPED {
            return Some(TcpSock(self.0));
        }
        // SAFETY: the verifier checks the argument is a socket pointer.
        let tcp = unsafe { bpf_skc_to_tcp_sock(self.0.cast_mut().cast()) };
        (!tcp.is_null()).then_some(TcpSock(tcp as *const u8))
    }

    /// The start of `sock_common`: addresses, ports, family and state. One
    /// read where the kernel has the usual layout (every helper call counts
    /// on the connection path), field by field otherwise; typed, always
    /// field by field (plain loads).
    #[inline(always)]
    pub(super) fn common(self) -> Option<CommonBlock> {
        if !TYPED && offset!(common_block) != 0 {
            return read::<CommonBlock>(self.0, offset!(skc_daddr));
        }
        let mut block = CommonBlock {
            family: self.field::<u16>(offset!(skc_family))?,
            state: self.field::<u8>(offset!(skc_state)).unwrap_or(0),
            num: self.field::<u16>(offset!(skc_num)).unwrap_or(0),
            dport: self.field::<u16>(offset!(skc_dport)).unwrap_or(0),
            ..CommonBlock::default()
        };
        if block.family == AF_INET {
            block.daddr = self.field::<u32>(offset!(skc_daddr)).unwrap_or(0).to_ne_bytes();
            block.rcv_saddr = self.field::<u32>(offset!(skc_rcv_saddr)).unwrap_or(0).to_ne_bytes();
        }
        Some(block)
    }

    /// 16 bytes at `offset` into `field`, as two 8-byte loads.
    #[inline(always)]
    fn copy16(self, offset: usize, field: &mut [u8; 16]) {
        let words = field.as_mut_ptr().cast::<u64>();
        // SAFETY: 16 writable bytes, 8-byte aligned in every record.
        unsafe {
            core::ptr::write_volatile(words, self.field::<u64>(offset).unwrap_or(0));
            core::ptr::write_volatile(words.add(1), self.field::<u64>(offset + 8).unwrap_or(0));
        }
    }

    #[inline(always)]
    pub(super) fn is_tcp(self) -> bool {
        self.field::<u16>(offset!(sk_protocol)) == Some(IPPROTO_TCP)
    }

    /// Inode number of the socket's network namespace (0 if unknown).
    #[inline(always)]
    pub(super) fn netns(self) -> u32 {
        let net = self.field::<u64>(offset!(skc_net)).unwrap_or(0);
        if net == 0 {
            return 0;
        }
        // Typed, the pointer read is itself typed (`struct net *`).
        Sock::<TYPED>(net as *const u8).field::<u32>(offset!(net_ns_inum)).unwrap_or(0)
    }

    /// Fills the address fields of `record` from the socket.
    #[inline(always)]
    pub(super) fn read_tuple(self, record: &mut SockRecord) {
        if let Some(common) = self.common() {
            self.fill_tuple(&common, record);
        }
    }

    /// Fills the address fields of `record` from `common` (and, for IPv6,
    /// the socket's IPv6 addresses).
    #[inline(always)]
    pub(super) fn fill_tuple(self, common: &CommonBlock, record: &mut SockRecord) {
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
        if TYPED {
            self.copy16(offset!(skc_v6_daddr), &mut record.remote_addr);
            self.copy16(offset!(skc_v6_rcv_saddr), &mut record.local_addr);
            return;
        }
        if offset!(v6_block) != 0 {
            // `skc_v6_daddr` then `skc_v6_rcv_saddr`.
            if let Some(both) = read::<[u8; 32]>(self.0, offset!(skc_v6_daddr)) {
                record.remote_addr.copy_from_slice(&both[..16]);
                record.local_addr.copy_from_slice(&both[16..]);
            }
            return;
        }
        if let Some(local) = read::<[u8; 16]>(self.0, offset!(skc_v6_rcv_saddr)) {
            record.local_addr = local;
        }
        if let Some(remote) = read::<[u8; 16]>(self.0, offset!(skc_v6_daddr)) {
            record.remote_addr = remote;
        }
    }
}

/// A socket's `struct tcp_sock` fields: see [`Sock::tcp`].
#[derive(Clone, Copy)]
pub(super) struct TcpSock<const TYPED: bool>(*const u8);

impl<const TYPED: bool> TcpSock<TYPED> {
    /// The address `offset` bytes into the socket.
    #[inline(always)]
    pub(super) fn at(self, offset: usize) -> *const u8 {
        self.0.wrapping_add(offset)
    }

    /// A field of `struct tcp_sock` (`struct sock` included) at `offset`.
    #[inline(always)]
    pub(super) fn field<T: Copy>(self, offset: usize) -> Option<T> {
        Sock::<TYPED>(self.0).field(offset)
    }

    /// A u32 field at `offset`, 0 where the kernel lacks it (offset 0).
    #[inline(always)]
    pub(super) fn u32_at(self, offset: usize) -> u32 {
        if offset == 0 {
            return 0;
        }
        self.field::<u32>(offset).unwrap_or(0)
    }

    #[inline(always)]
    pub(super) fn segs_out(self) -> u32 {
        self.field::<u32>(offset!(tcp_segs_out)).unwrap_or(0)
    }

    #[inline(always)]
    pub(super) fn total_retrans(self) -> u32 {
        self.field::<u32>(offset!(tcp_total_retrans)).unwrap_or(0)
    }
}

/// `segs_out` of a socket, 0 if it cannot be read.
#[inline(always)]
pub(super) fn segs_out<const TYPED: bool>(sk: Sock<TYPED>) -> u32 {
    sk.tcp().map_or(0, TcpSock::segs_out)
}

#[inline(always)]
pub(super) fn is_inet_family(family: u16) -> bool {
    family == AF_INET || family == AF_INET6
}

/// The kernel's monotonic clock, ns. A clock read costs about as much as
/// a hash-map lookup here (~50 ns): the connection path reads it only where
/// an output needs the time.
#[inline(always)]
pub(super) fn bpf_now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}
