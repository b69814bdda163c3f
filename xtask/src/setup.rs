//! Toolchain and package setup: nightly `rust-src`, `bpf-linker` against
//! the nightly toolchain's libLLVM, and the Debian packages of the tests.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::run;

/// Debian packages the integration tests call, with a command each
/// provides: `ss`/`ip` (iproute2), packet loss for retransmit tests
/// (nftables), a real Prometheus server plus `promtool` and a real browser
/// for the agent's tests, and bpftool to see programs detach.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ss"),
    ("nftables", "nft"),
    ("prometheus", "promtool"),
    ("chromium", "chromium"),
    ("bpftool", "bpftool"),
    // The TCP health tests' delay line (NFQUEUE) and failure fixtures.
    ("iptables", "iptables"),
    // The container tests: a real Podman container from a busybox image.
    ("podman", "podman"),
    ("runc", "runc"),
    ("busybox-static", "busybox"),
    // `tracer top` driven in a terminal.
    ("tmux", "tmux"),
];

fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

pub fn setup() -> Result<()> {
    which("rustup").context("rustup is required (the nightly toolchain builds the eBPF programs)")?;
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("xtask: installing the nightly toolchain");
        run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let components =
        output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to the nightly toolchain");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    ensure_bpf_linker()
}

/// bpf-linker must link against the same LLVM as nightly rustc. No system
/// LLVM of that version exists here, but the toolchain ships its libLLVM: a
/// prefix directory with symlinks to it lets bpf-linker build against it.
/// The prefix is kept for good: the linker finds libLLVM through an rpath.
fn ensure_bpf_linker() -> Result<()> {
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let llvm_major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("cannot read the LLVM version of nightly rustc")?
        .to_owned();
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let libllvm = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so.")))
        .with_context(|| format!("no libLLVM.so.* in {}", lib_dir.display()))?;
    let libllvm_name = libllvm.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();

    let prefix = home().join(format!("bpf-linker-llvm-{llvm_major}"));
    let marker = prefix.join("built-against");
    let linker_ok = Command::new("bpf-linker").arg("--version").output().is_ok_and(|o| o.status.success());
    if linker_ok && fs::read_to_string(&marker).ok().as_deref() == Some(libllvm_name.as_str()) {
        return Ok(());
    }
    if linker_ok && !marker.exists() && Command::new("bpf-linker").arg("--help").output().is_ok() {
        // Installed by other means: trust it only if it starts; a mismatch
        // shows as a build error naming bpf-linker.
        let prefix_lib = prefix.join("lib");
        if !prefix_lib.exists() {
            eprintln!("xtask: using the bpf-linker already on PATH");
            return Ok(());
        }
    }
    eprintln!("xtask: building bpf-linker against {} (LLVM {llvm_major}), about a minute", libllvm.display());
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib).with_context(|| format!("creating {}", prefix_lib.display()))?;
    for name in ["libLLVM.so", libllvm_name.as_str()] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--force", "--no-default-features", "--features"])
        .arg(format!("llvm-{llvm_major}"))
        .env("LLVM_PREFIX", &prefix))?;
    fs::write(&marker, &libllvm_name).with_context(|| format!("writing {}", marker.display()))?;
    Ok(())
}

fn which(program: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} not found on PATH"))
}

/// Installs the Debian packages whose commands are missing.
pub fn install_test_packages() -> Result<()> {
    install_packages(TEST_PACKAGES, "the tests")
}

/// Installs those of `packages` (package, command it provides) whose
/// command is missing, for `purpose`.
pub fn install_packages(packages: &[(&str, &str)], purpose: &str) -> Result<()> {
    let missing: Vec<&str> = packages.iter().filter(|(_, command)| which(command).is_err()).map(|(p, _)| *p).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages for {purpose}: {}", missing.join(" "));
    which("apt-get").with_context(|| format!("apt-get is required to install the packages for {purpose}"))?;
    run(Command::new("apt-get").args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}
