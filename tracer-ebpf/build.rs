//! Rebuild the eBPF object when bpf-linker changes (a new linker may emit
//! different code for the same source).
use which::which;

fn main() {
    let bpf_linker = which("bpf-linker")
        .unwrap_or_else(|err| panic!("bpf-linker not found on PATH ({err}); run `cargo xtask setup`"));
    println!("cargo:rerun-if-changed={}", bpf_linker.to_string_lossy());
}
