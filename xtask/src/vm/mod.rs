//! `cargo xtask vm-test [--kernel NAME]...`: boots stock Debian kernels
//! under qemu and runs `xtask guest-check` (guest.rs) against the host-built
//! tracer inside each, so that the fentry and kprobe backends, which this
//! host's kernel refuses, are tested on the kernels users have.
//!
//! Steps: fetch and cache qemu, the kernels and busybox (assets.rs, through
//! a private apt configuration, apt.rs); build tracer; pack an initramfs
//! with both programs (initramfs.rs); boot each kernel (qemu.rs) and read
//! the guest check's exit status from the console.
//!
//! The cache is `$TRACER_VM_CACHE`, else `$XDG_CACHE_HOME/tracer-vm`, else
//! `~/.cache/tracer-vm`; delete it to fetch newer kernels. Console logs are
//! in `<target dir>/vm-test/`. `TRACER_VM_TRACER=PATH` tests that tracer
//! binary instead of building one; `TRACER_VM_ACCEL=tcg|kvm` forces the
//! accelerator.

mod apt;
mod assets;
mod initramfs;
mod qemu;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use assets::{Fetcher, GuestKernel, KERNELS};
use qemu::{Accel, Boot};

/// Guest RAM: the initramfs (a few tens of MiB) lives in it, unpacked.
const GUEST_MEMORY_MIB: u32 = 512;
/// Whole boot-test-poweroff cycle; it takes seconds, the rest is margin for
/// a loaded machine.
const TCG_TIMEOUT: Duration = Duration::from_secs(240);
const KVM_TIMEOUT: Duration = Duration::from_secs(120);

struct KernelRun {
    name: &'static str,
    package: String,
    accel: Accel,
    guest_exit: Option<i32>,
    timed_out: bool,
    elapsed: Duration,
    /// The guest check's PASS/FAIL lines, from the console.
    verdicts: Vec<String>,
    log: PathBuf,
}

pub fn vm_test(kernel_names: &[String]) -> Result<()> {
    let kernels = select_kernels(kernel_names)?;
    let cache = cache_dir()?;
    eprintln!("xtask: vm-test cache: {}", cache.display());

    let assets_started = Instant::now();
    let mut fetcher = Fetcher::new(&cache)?;
    let qemu = fetcher.qemu()?;
    let (busybox, busybox_package) = fetcher.busybox()?;
    let mut kernel_files = Vec::new();
    for kernel in &kernels {
        kernel_files.push((*kernel, fetcher.kernel(kernel)?));
    }
    let assets_time = assets_started.elapsed();

    let build_started = Instant::now();
    let tracer = match std::env::var_os("TRACER_VM_TRACER") {
        // A tracer built elsewhere (release, another checkout).
        Some(path) => PathBuf::from(path),
        None => {
            crate::setup::setup()?;
            build_tracer()?
        }
    };
    let checker = std::env::current_exe().context("locating the running xtask binary")?;
    // <target>/debug/xtask -> <target>/vm-test (tracer may come from elsewhere).
    let work = checker.parent().and_then(Path::parent).map(|t| t.join("vm-test")).context("xtask has no target dir")?;
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let initramfs = work.join("initramfs.cpio");
    let initramfs_size = initramfs::build(
        &initramfs,
        &busybox,
        &[(tracer.as_path(), initramfs::GUEST_TRACER), (checker.as_path(), initramfs::GUEST_CHECKER)],
    )?;
    let build_time = build_started.elapsed();
    eprintln!(
        "xtask: initramfs {} ({:.1} MiB: {busybox_package}, tracer, guest check)",
        initramfs.display(),
        initramfs_size as f64 / (1024.0 * 1024.0)
    );

    // Two vCPUs exercise per-CPU maps and a task migrating between a kprobe
    // and its kretprobe; qemu before 10 is only reliable with one.
    let cpus = if qemu.major >= 10 { 2 } else { 1 };
    let accel = Accel::detect();
    eprintln!("xtask: qemu {} ({}), {} vCPU(s), {} MiB", qemu.version, accel.as_str(), cpus, GUEST_MEMORY_MIB);

    let mut runs = Vec::new();
    for (kernel, files) in &kernel_files {
        eprintln!("xtask: === {} ({}) ===", kernel.name, files.package);
        let log = work.join(format!("{}.console.log", kernel.name));
        let prefix = format!("[{}] ", kernel.name);
        let cmdline = format!("TRACER_EXPECT={}", kernel.backends.join(","));
        let boot = |accel| Boot {
            qemu: &qemu.binary,
            kernel: &files.vmlinuz,
            initramfs: &initramfs,
            accel,
            cpus,
            memory_mib: GUEST_MEMORY_MIB,
            timeout: if accel == Accel::Tcg { TCG_TIMEOUT } else { KVM_TIMEOUT },
            extra_cmdline: &cmdline,
            log: &log,
            prefix: &prefix,
        };
        let mut used = accel;
        let mut outcome = boot(accel).run()?;
        if outcome.guest_exit.is_none() && accel == Accel::Kvm {
            // Some nested KVMs cannot boot stock kernels at all.
            eprintln!("xtask: {} did not finish under KVM; retrying under TCG", kernel.name);
            used = Accel::Tcg;
            outcome = boot(Accel::Tcg).run()?;
        }
        let verdicts = fs::read_to_string(&outcome.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.find("guest-check: ").map(|at| &l[at + "guest-check: ".len()..]))
            .filter(|l| l.starts_with("PASS") || l.starts_with("FAIL"))
            .map(str::to_owned)
            .collect();
        runs.push(KernelRun {
            name: kernel.name,
            package: files.package.clone(),
            accel: used,
            guest_exit: outcome.guest_exit,
            timed_out: outcome.timed_out,
            elapsed: outcome.elapsed,
            verdicts,
            log: outcome.log,
        });
    }

    summarize(&runs, &fetcher, assets_time, build_time, &busybox_package);
    let failed: Vec<&str> = runs.iter().filter(|r| r.guest_exit != Some(0)).map(|r| r.name).collect();
    if !failed.is_empty() {
        bail!("vm-test failed on {}", failed.join(", "));
    }
    Ok(())
}

fn summarize(runs: &[KernelRun], fetcher: &Fetcher, assets_time: Duration, build_time: Duration, busybox: &str) {
    eprintln!("xtask: vm-test summary");
    for run in runs {
        let verdict = match (run.guest_exit, run.timed_out) {
            (Some(0), _) => "PASS".to_owned(),
            (Some(code), _) => format!("FAIL (guest check exited {code})"),
            (None, true) => "FAIL (timed out; no result from the guest)".to_owned(),
            (None, false) => "FAIL (the guest stopped without a result)".to_owned(),
        };
        eprintln!(
            "  {:<13} {verdict}  {:.1} s boot+test+poweroff ({})  {}",
            run.name,
            run.elapsed.as_secs_f64(),
            run.accel.as_str(),
            run.package
        );
        for line in &run.verdicts {
            eprintln!("      {line}");
        }
        if run.guest_exit != Some(0) {
            eprintln!("    console log {}, last lines:", run.log.display());
            for line in qemu::log_tail(&run.log, 25).lines() {
                eprintln!("    | {line}");
            }
        }
    }
    if fetcher.downloaded.is_empty() {
        eprintln!("  downloads: none (all cached; {:.1} s to check)", assets_time.as_secs_f64());
    } else {
        eprintln!("  downloads: {:.1} s for {}", fetcher.download_time.as_secs_f64(), fetcher.downloaded.join(", "));
    }
    eprintln!("  build (tracer, initramfs with {busybox}): {:.1} s", build_time.as_secs_f64());
    // One plain closing line for CI: every guest check, plus a guest that
    // gave no result at all, counts.
    let passed = runs.iter().flat_map(|r| &r.verdicts).filter(|v| v.starts_with("PASS")).count();
    let failed = runs.iter().flat_map(|r| &r.verdicts).filter(|v| v.starts_with("FAIL")).count()
        + runs.iter().filter(|r| r.guest_exit.is_none()).count();
    println!("vm-test: {passed} passed, {failed} failed");
}

fn select_kernels(names: &[String]) -> Result<Vec<&'static GuestKernel>> {
    if names.is_empty() {
        return Ok(KERNELS.iter().collect());
    }
    names
        .iter()
        .map(|name| {
            KERNELS.iter().find(|k| k.name == name).with_context(|| {
                let known: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
                format!("unknown kernel '{name}' (known: {})", known.join(", "))
            })
        })
        .collect()
}

fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TRACER_VM_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("tracer-vm"));
    }
    let home = std::env::var_os("HOME").context("HOME is not set; set TRACER_VM_CACHE")?;
    Ok(PathBuf::from(home).join(".cache").join("tracer-vm"))
}

/// Builds tracer (debug) and returns the binary's path as cargo reports it,
/// wherever the target directory is.
fn build_tracer() -> Result<PathBuf> {
    let mut cmd = crate::cargo();
    cmd.args(["build", "--package", "tracer", "--bin", "tracer", "--message-format", "json-render-diagnostics"]);
    eprintln!("xtask: $ cargo build --package tracer --bin tracer");
    let out =
        cmd.current_dir(crate::workspace_root()).stderr(Stdio::inherit()).output().context("starting cargo build")?;
    if !out.status.success() {
        bail!("cargo build --package tracer failed ({})", out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "tracer")
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .context("cargo build reported no tracer executable")
}

/// Runs `cmd` in `dir`, failing on a non-zero exit (the caller has shown
/// the command in a readable form).
fn run_in(cmd: &mut Command, dir: &Path) -> Result<()> {
    let shown = format!("{cmd:?}").replace('"', "");
    let status = cmd.current_dir(dir).status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout, failing with its stderr.
fn command_output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}
