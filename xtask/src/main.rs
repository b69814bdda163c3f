//! Project tasks, `cargo xtask TASK`:
//!
//! - `setup`: makes a fresh machine able to build the eBPF programs: the
//!   nightly toolchain's `rust-src`, and `bpf-linker` built against the
//!   nightly toolchain's own libLLVM (no system LLVM of nightly's version is
//!   packaged; the toolchain ships `libLLVM.so`, which a prefix of symlinks
//!   offers to bpf-linker's build). Idempotent, and fast when everything is
//!   in place; `build`, `run` and `test` call it first.
//! - `build [--release]`: the tracer binary, eBPF programs embedded.
//! - `run [--release] -- ARGS`: builds and runs the tracer (as root).
//! - `test`: fmt and clippy, the unit tests, the integration tests against
//!   the running kernel (installing the Debian packages they call), then
//!   `vm-test`.
//! - `unit-stress [--runs 50]`: the unit tests again and again under a CPU
//!   hog on every core (`stress`).
//! - `bench`: the tracer's overhead, written to BENCHMARKS.md (`bench`).
//! - `dist [--binary PATH]`: a release build packaged as
//!   `target/dist/tracer_<version>_<arch>.deb` (`dist`; `test` also packages
//!   the binary under test this way for the deployment tests).
//! - `eval`: the findings' labelled evaluation (precision and recall per
//!   kind, tuned and held-out seeds, recorded timelines), written to
//!   EVALUATION.md (`eval`; the unit tests run the same cases).
//! - `soak [--duration 10m]`: the release agent under mixed load, scraped
//!   by Prometheus; memory, drops, counters and exact totals, written to
//!   SOAK.md (`soak`).
//! - `vm-test [--kernel K]`: stock Debian kernels under qemu, every attach
//!   backend each supports checked inside (`vm`).
//!
//! Hidden helpers run by the tasks above: `loadgen` (a load-generator
//! process of the bench), `soak-load` (a workload process of the soak),
//! `reference` (attach one of the bench's reference programs by hand) and
//! `guest-check` (the checks inside a vm-test guest, `guest`).

mod bench;
mod dist;
mod eval;
mod guest;
mod setup;
mod soak;
mod stress;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "tracer project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install rust-src (nightly) and bpf-linker if missing.
    Setup,
    /// Build the tracer binary (eBPF programs embedded).
    Build {
        /// Build with optimisations.
        #[arg(long)]
        release: bool,
    },
    /// Build and run tracer with the given arguments (as root).
    Run {
        /// Build with optimisations.
        #[arg(long)]
        release: bool,
        /// Arguments for tracer, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Lint, unit tests, integration tests against the running kernel, then
    /// the kernel matrix (`vm-test`).
    Test {
        /// Skip fmt/clippy.
        #[arg(long)]
        no_lint: bool,
        /// Skip the kernel matrix in qemu.
        #[arg(long)]
        no_vm: bool,
        /// Only run integration tests whose name contains this.
        filter: Option<String>,
    },
    /// Run the unit tests (no root) RUNS times in a row under a CPU hog on
    /// every core (stress-ng); passes when every run passes.
    UnitStress {
        #[arg(long, default_value = "50", value_parser = clap::value_parser!(u32).range(1..=1000))]
        runs: u32,
    },
    /// The findings' labelled evaluation: precision and recall per kind,
    /// written to EVALUATION.md.
    Eval {
        #[command(flatten)]
        args: eval::EvalArgs,
    },
    /// The release agent under mixed load for a long while, scraped by
    /// Prometheus; checks memory, drops, counters and exact totals; writes
    /// SOAK.md.
    Soak {
        #[command(flatten)]
        args: soak::SoakArgs,
    },
    /// Internal: one workload process of `soak`.
    #[command(hide = true)]
    SoakLoad {
        #[command(flatten)]
        args: soak::load::LoadArgs,
    },
    /// Measure the tracer's overhead (A/B throughput, own CPU and memory); writes BENCHMARKS.md.
    Bench {
        #[command(flatten)]
        args: bench::BenchArgs,
    },
    /// Internal: one load-generator process of `bench`.
    #[command(hide = true)]
    Loadgen {
        #[command(flatten)]
        args: bench::loadgen::LoadgenArgs,
    },
    /// Internal: attach one of the bench's reference programs (floor, hash,
    /// bpftrace) for SECONDS, to reproduce its figures by hand.
    #[command(hide = true)]
    Reference {
        #[arg(value_enum)]
        reference: bench::reference::Reference,
        #[arg(long, default_value = "10")]
        seconds: u64,
    },
    /// Release build and Debian package (target/dist/tracer_<version>_<arch>.deb).
    Dist {
        #[command(flatten)]
        args: dist::DistArgs,
    },
    /// Boot stock Debian kernels under qemu and run the tracer's checks in each.
    VmTest {
        /// Kernel to boot (bullseye-5.10, bookworm-6.1, trixie-6.12); repeatable; default all.
        #[arg(long)]
        kernel: Vec<String>,
    },
    /// Inside a vm-test guest: check each backend the kernel supports.
    #[command(hide = true)]
    GuestCheck {
        /// The tracer binary to check.
        #[arg(long)]
        tracer: PathBuf,
        /// Backends this kernel supports (comma-separated); the doctor must agree.
        #[arg(long, value_delimiter = ',')]
        expect: Vec<String>,
    },
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command in the workspace root, failing on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("xtask: $ {}", shown.replace('"', ""));
    let status = cmd.current_dir(workspace_root()).status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn build(release: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "tracer"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    Ok(workspace_root().join("target").join(if release { "release" } else { "debug" }).join("tracer"))
}

fn test(no_lint: bool, no_vm: bool, filter: Option<String>) -> Result<()> {
    setup::install_test_packages()?;
    if !no_lint {
        run(cargo().args(["fmt", "--all", "--check"]))?;
        // The eBPF crate only builds for the bpf target: linted there, with
        // the nightly toolchain its build uses.
        run(Command::new("rustup")
            .args(["run", "nightly", "cargo", "clippy", "--package", "tracer-ebpf", "--target", "bpfel-unknown-none"])
            .args(["-Z", "build-std=core", "--bins", "--", "-D", "warnings"])
            // What `cargo xtask` sets for its own run must not pick the
            // stable toolchain for this nightly build.
            .env_remove("CARGO")
            .env_remove("RUSTC")
            .env_remove("RUSTC_WRAPPER")
            .env_remove("RUSTUP_TOOLCHAIN"))?;
        run(cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            "tracer-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    // Unit tests: pure logic, no root needed.
    run(cargo().args(["test", "--workspace", "--exclude", "tracer-ebpf", "--lib", "--bins"]))?;
    // Integration tests load the real programs into the running kernel and
    // share the host's sockets: one at a time.
    let tracer = build(false)?;
    let mut cmd = cargo();
    cmd.args(["test", "--package", "tracer-tests", "--tests", "--"]);
    let filtered = filter.is_some();
    if let Some(filter) = filter {
        cmd.arg(filter);
    }
    cmd.args(["--test-threads=1"]).env("TRACER_BIN", &tracer).envs(dist::prepare_tests(&tracer)?);
    run(&mut cmd)?;
    // The fentry and kprobe backends cannot run on every host kernel: boot
    // stock kernels that can, and run the checks there.
    if no_vm || filtered {
        return Ok(());
    }
    vm::vm_test(&[])
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::setup(),
        Task::Build { release } => setup::setup().and_then(|()| build(release)).map(|_| ()),
        Task::Run { release, args } => setup::setup().and_then(|()| build(release)).and_then(|tracer| {
            let status =
                Command::new(&tracer).args(&args).status().with_context(|| format!("starting {}", tracer.display()))?;
            if !status.success() {
                std::process::exit(status.code().unwrap_or(1));
            }
            Ok(())
        }),
        Task::Test { no_lint, no_vm, filter } => setup::setup().and_then(|()| test(no_lint, no_vm, filter)),
        Task::UnitStress { runs } => stress::unit_stress(runs),
        Task::Eval { args } => eval::eval(args),
        Task::Soak { args } => soak::run(args),
        Task::SoakLoad { args } => soak::load::run(args),
        Task::Bench { args } => bench::run(args),
        Task::Loadgen { args } => bench::loadgen::run(args),
        Task::Reference { reference, seconds } => bench::reference::hold(reference, seconds),
        Task::Dist { args } => dist::dist(args),
        Task::VmTest { kernel } => vm::vm_test(&kernel),
        Task::GuestCheck { tracer, expect } => guest::guest_check(&tracer, &expect),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
