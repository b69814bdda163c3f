//! The kernel half of tracer: programs on BTF tracepoints that keep one
//! record per TCP socket in `SOCKETS` and hand the final record of each
//! destroyed socket to user space through `CLOSED`.
//!
//! The send/receive programs run on every socket syscall of the host. For a
//! socket whose owner is known they find its slot in `BYTES` (an
//! open-addressing table in an array: the verifier inlines array lookups, so
//! this takes no function call, where a hash-map lookup is a call into the
//! kernel's hash table) and do one atomic add. Measured with the kernel's
//! own accounting, that is ~11 ns per call above an empty program, against
//! ~88 ns for one hash-map update. Everything else (first sight of a socket,
//! state changes, retransmits, resets, destruction) is rarer, and keeps its
//! helper calls (each one costs) to a minimum.
//! Struct offsets come from user space (`OFFSETS`), resolved from the running
//! kernel's BTF.
#![no_std]
#![no_main]
// The bpf target has no atomic types; `atomic_xadd` lowers to the BPF
// atomic add instruction.
#![feature(core_intrinsics)]
#![feature(asm_experimental_arch)]
#![expect(internal_features, reason = "atomic add on map values")]

/// The byte table is compiled in: claiming a slot takes the BPF
/// compare-and-swap instruction, which kernels before 5.12 refuse even in
/// code that can never run.
const BYTE_TABLE: bool = true;

include!("programs.rs");
