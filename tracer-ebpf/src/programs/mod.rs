//! The programs, shared by both objects (`main.rs`: `tracer`, with the byte
//! table; `legacy.rs`: `tracer-legacy`, without it), one file per feature:
//!
//! - [`maps`]: every map and the `OFFSETS` global user space sets at load.
//! - [`kernel`]: reading kernel structs at offsets resolved from BTF.
//! - [`record`]: the per-socket record (in `RECORDS` at the index of the
//!   socket's `BYTES` slot; in `SOCKETS` in the legacy object), creating it
//!   from the socket, and who owns a socket.
//! - [`slots`]: the `BYTES` open-addressing table: one slot per tracked
//!   socket, where the send/receive path counts.
//! - [`data`]: the send/receive path, one entry per attach backend.
//! - [`lifecycle`]: state changes, retransmits, resets, destruction.
//! - [`health`]: TCP health (connect latency and failures, and the
//!   `sample_sockets` pass that reads RTT, queues and chrono counters
//!   of every tracked socket at collection time).
//!
//! The send/receive programs run on every socket syscall of the host. For a
//! socket whose owner is known they find its slot in `BYTES` (an
//! open-addressing table in an array: the verifier inlines array lookups, so
//! this takes no function call, where a hash-map lookup is a call into the
//! kernel's hash table) and do one atomic add. Measured with the kernel's
//! own accounting, that is ~11 ns per call above an empty program, against
//! ~88 ns for one hash-map update. The connection path (state changes,
//! destruction) finds records the same way, claims a slot to create one
//! (no allocation), reads `struct sock` fields with plain loads where the
//! verifier knows the pointer's type (`kernel::Sock`), and reads the clock
//! only where an output needs a time.

/// Reads one offset of `OFFSETS`; volatile so the compiler does not fold
/// the zeroes the object is built with.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: reading a plain global of this program.
        unsafe { core::ptr::read_volatile(&$crate::programs::maps::OFFSETS.$field) as usize }
    };
}

mod data;
mod health;
mod kernel;
mod lifecycle;
mod maps;
mod record;
mod slots;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
