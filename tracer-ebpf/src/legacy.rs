//! The `tracer-legacy` eBPF object: the same programs as `main.rs` without
//! the byte table, for kernels before 5.12 (no BPF compare-and-swap, which
//! their verifier refuses even in unreachable code): every byte is counted
//! in the socket records.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![feature(asm_experimental_arch)]
#![expect(internal_features, reason = "atomic add on map values")]

/// No byte table: the compiler drops its code, compare-and-swap included.
const BYTE_TABLE: bool = false;

mod programs;
