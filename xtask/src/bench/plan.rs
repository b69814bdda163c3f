//! What one `cargo xtask bench` does, resolved from its flags: the
//! command-line arguments (`BenchArgs`), the plan they resolve to (`Plan`:
//! rounds, workloads, run windows, the tracer's interval, which reference
//! programs and cost stages run) and the binaries it runs (`Binaries`: the
//! tracer, and a release build of this xtask as the load generator).

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{bail, Context as _, Result};
use clap::Args;

use super::{cost, loadgen::Workload, reference, tracer};
use crate::{run as run_command, setup, workspace_root};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Shorter windows and two rounds (about 2 minutes instead of 10).
    #[arg(long)]
    quick: bool,
    /// Untraced/traced pairs per workload [default: 5, --quick: 2].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=50))]
    rounds: Option<u32>,
    /// Seconds each run is measured, after a 0.25 s warm-up [default: 4, --quick: 1.5].
    #[arg(long, value_name = "SECS", value_parser = parse_run_secs)]
    duration: Option<f64>,
    /// Workloads to run, comma-separated [default: all].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    workloads: Vec<Workload>,
    /// Tracer binary to measure [default: build `target/release/tracer`].
    #[arg(long, value_name = "PATH")]
    tracer: Option<PathBuf>,
    /// CPU that the load generator's client and server are pinned to [default: the last one].
    #[arg(long, value_name = "N")]
    cpu: Option<usize>,
    /// Connections of the parallel workload.
    #[arg(long, value_name = "N", default_value = "128", value_parser = clap::value_parser!(u64).range(1..=2000))]
    parallel_connections: u64,
    /// Skip the tracer's own cost (idle, ping-pong, 10k and 100k sockets).
    #[arg(long)]
    no_agent_cost: bool,
    /// Skip the reference programs: the empty program, minimal hash tracer
    /// and bpftrace beside the tracer in the ping-pong workload, and the
    /// connection floor (empty programs on every tracer hook) in the other
    /// workloads' rounds.
    #[arg(long)]
    no_references: bool,
    /// Print the results only; leave BENCHMARKS.md as it is.
    #[arg(long)]
    pub no_write: bool,
}

fn parse_run_secs(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if (0.1..=60.0).contains(&secs) => Ok(secs),
        _ => Err(format!("'{text}' is not a number of seconds between 0.1 and 60")),
    }
}

/// What one bench invocation does, resolved from the flags.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    pub rounds: u32,
    pub workloads: Vec<Workload>,
    pub load: LoadSpec,
    /// The tracer's collection interval (the agent's default, 5 s).
    pub interval: Duration,
    /// Pause between "attached" and the traced run, so start-up work (the
    /// initial /proc scan) is not billed to the workload.
    pub settle: Duration,
    pub cost: Option<cost::CostPlan>,
    /// Reference programs measured in the ping-pong rounds.
    pub references: Vec<reference::Reference>,
    /// Whether the other workloads' rounds also run with the connection
    /// floor (`Reference::ConnFloor`) attached, and the program run times
    /// on the churn path are measured.
    pub conn_floor: bool,
}

/// How one workload run is driven.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    pub window: Duration,
    pub warmup: Duration,
    pub cpu: usize,
    pub parallel_connections: usize,
}

impl Plan {
    pub fn from_args(args: &BenchArgs) -> Result<Self> {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let cpu = args.cpu.unwrap_or(cpus - 1);
        if cpu >= cpus {
            bail!("--cpu {cpu}: this machine has CPUs 0-{}", cpus - 1);
        }
        let run_secs = args.duration.unwrap_or(if args.quick { 1.5 } else { 4.0 });
        let workloads = if args.workloads.is_empty() { Workload::ALL.to_vec() } else { args.workloads.clone() };
        let args_has_ping_pong = workloads.contains(&Workload::PingPong);
        let load = LoadSpec {
            window: Duration::from_secs_f64(run_secs),
            warmup: Duration::from_millis(250),
            cpu,
            parallel_connections: args.parallel_connections as usize,
        };
        let interval = Duration::from_secs(5);
        Ok(Plan {
            quick: args.quick,
            rounds: args.rounds.unwrap_or(if args.quick { 2 } else { 5 }),
            workloads,
            load,
            interval,
            settle: Duration::from_millis(500),
            cost: (!args.no_agent_cost).then(|| cost::CostPlan::new(args.quick, interval)),
            references: if args.no_references || !args_has_ping_pong {
                Vec::new()
            } else {
                vec![reference::Reference::Floor, reference::Reference::Hash, reference::Reference::Bpftrace]
            },
            conn_floor: !args.no_references,
        })
    }
}

/// The programs the bench runs.
pub struct Binaries {
    pub tracer: PathBuf,
    /// A release build of this xtask binary, re-run as the load generator
    /// (a debug build would add its own slowness to every operation).
    pub loadgen: PathBuf,
}

impl Binaries {
    pub fn resolve(args: &BenchArgs) -> Result<Self> {
        Self::release(args.tracer.clone())
    }

    /// `tracer` (built in release mode when not given) and a release build
    /// of this xtask (this very binary if it is one), built as
    /// `cargo xtask build --release` would.
    pub fn release(tracer: Option<PathBuf>) -> Result<Self> {
        let target = target_dir();
        let own_build_is_release = !cfg!(debug_assertions);
        let mut packages = Vec::new();
        if tracer.is_none() {
            setup::setup()?;
            packages.push("tracer");
        }
        if !own_build_is_release {
            packages.push("xtask");
        }
        if !packages.is_empty() {
            let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cmd.args(["build", "--release"]);
            for package in &packages {
                cmd.args(["--package", package]);
            }
            run_command(&mut cmd)?;
        }
        let tracer = tracer.unwrap_or_else(|| tracer::default_binary(&target));
        let loadgen = if own_build_is_release {
            std::env::current_exe().context("locating this program")?
        } else {
            target.join("release").join("xtask")
        };
        for path in [&tracer, &loadgen] {
            if !path.is_file() {
                bail!("{} does not exist", path.display());
            }
        }
        Ok(Binaries { tracer, loadgen })
    }
}

/// Cargo's target directory (honouring CARGO_TARGET_DIR, as cargo does).
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}
