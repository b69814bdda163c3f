//! Builds the eBPF crate for the bpf target (nightly + bpf-linker, installed
//! by `cargo xtask setup`) so the `tracer` binary embeds its programs.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tracer-ebpf");
    let root = root.canonicalize().context("finding tracer-ebpf")?;
    let root_dir = root.to_str().context("tracer-ebpf path is not UTF-8")?;
    println!("cargo:rerun-if-changed={}", root.join("../tracer-common/src").display());
    aya_build::build_ebpf(
        [aya_build::Package { name: "tracer-ebpf", root_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs failed (run `cargo xtask setup` for rust-src and bpf-linker)")
}
