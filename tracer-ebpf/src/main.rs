//! The `tracer` eBPF object: the programs of [`programs`] with the byte
//! table compiled in (kernels 5.12 and later; claiming a slot takes the BPF
//! compare-and-swap instruction).
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

mod programs;
