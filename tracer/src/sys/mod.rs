//! Every raw system call of the tracer, each behind a safe function: the
//! batched map lookup aya does not expose (`bpf(2)`), this thread's
//! capabilities (`capget(2)`, `capset(2)`, `prctl(2)`), shared mappings of
//! BPF arrays (`mmap(2)`), the monotonic clock the eBPF programs stamp
//! events with, and giving freed heap back to the kernel. Nothing else in
//! the crate calls `libc`.

pub(crate) mod bpf;
pub(crate) mod caps;
pub(crate) mod mmap;

/// `CLOCK_MONOTONIC` in ns: the clock of `bpf_ktime_get_ns()`.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Hands freed heap back to the kernel. Start-up parses the kernel's BTF
/// (megabytes, freed right after) and a tick's tables are rebuilt each
/// time; without this the allocator keeps the peak as resident memory.
pub(crate) fn release_free_memory() {
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Makes the allocator give large blocks back as soon as they are freed:
/// blocks from 128 KiB up are mapped on their own (glibc otherwise raises
/// this threshold to the largest block freed, up to 32 MiB, and later
/// tables of that size stay in the heap, fragmenting it), and at most two
/// heaps are kept (one per thread by default, each keeping its freed
/// memory). Memory then follows the sockets down after a spike. Call once,
/// before the threads start.
pub(crate) fn tune_allocator() {
    // SAFETY: mallopt only sets allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// The size of a memory page.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}
