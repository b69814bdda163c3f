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
