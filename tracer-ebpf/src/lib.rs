//! Host-side stub of the eBPF crate: the programs live in `main.rs`, built
//! for the bpf target by `tracer/build.rs`.
#![no_std]
