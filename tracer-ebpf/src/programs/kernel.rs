//! Reading kernel structs: every field at an offset user space resolved
//! from the running kernel's BTF (`OFFSETS`), through
//! `bpf_probe_read_kernel`, which turns a bad address into an error rather
//! than a fault.

use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel};
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

/// The start of `sock_common`: addresses, ports, family and state. One
/// read where the kernel has the usual layout (every helper call counts on
/// the connection path), field by field otherwise.
#[inline(always)]
pub(super) fn read_common(sk: *const u8) -> Option<CommonBlock> {
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
pub(super) fn is_inet_family(family: u16) -> bool {
    family == AF_INET || family == AF_INET6
}

#[inline(always)]
pub(super) fn is_tcp_protocol(sk: *const u8) -> bool {
    read::<u16>(sk, offset!(sk_protocol)) == Some(IPPROTO_TCP)
}

/// Fills the address fields of `record` from the socket.
#[inline(always)]
pub(super) fn read_tuple(sk: *const u8, record: &mut SockRecord) {
    if let Some(common) = read_common(sk) {
        fill_tuple(sk, &common, record);
    }
}

/// Fills the address fields of `record` from `common` (and, for IPv6, the
/// socket's IPv6 addresses).
#[inline(always)]
pub(super) fn fill_tuple(sk: *const u8, common: &CommonBlock, record: &mut SockRecord) {
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
pub(super) fn segs_out(sk: *const u8) -> u32 {
    read::<u32>(sk, offset!(tcp_segs_out)).unwrap_or(0)
}

#[inline(always)]
pub(super) fn total_retrans(sk: *const u8) -> u32 {
    read::<u32>(sk, offset!(tcp_total_retrans)).unwrap_or(0)
}

/// The kernel's monotonic clock, ns.
#[inline(always)]
pub(super) fn bpf_now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}
