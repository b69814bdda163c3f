//! `cargo xtask bench`: what the tracer costs the host, measured and
//! written to BENCHMARKS.md.
//!
//! Two parts. First the tracer's own cost (`cost`): one tracer process, its
//! CPU time and peak memory at idle, under ping-pong load, and with 10,000
//! and 50,000 live loopback sockets, plus the duration of a collection pass.
//! Then the throughput cost: each workload of the load generator
//! (`loadgen`, this binary re-run as separate client and server processes
//! pinned to one CPU) alternately without (A) and with (B) the tracer
//! attached, for several rounds; medians, spreads, the traced/untraced
//! ratio and the added nanoseconds per send/recv syscall (`stats`). The
//! tables and the file are rendered by `report`.
//!
//! Everything runs on loopback, every wait is bounded, and every process the
//! bench starts is stopped by its PID (also when the bench fails half-way).

mod cost;
pub mod loadgen;
mod proc;
pub mod reference;
mod report;
mod stats;
mod tracer;

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    str::FromStr,
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _, Result};
use clap::Args;

use self::{
    loadgen::Workload,
    stats::{Pairs, Run, Sandwich},
    tracer::{Mode, TracerProcess},
};
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
    /// Skip the tracer's own cost (idle, ping-pong, 10k and 50k sockets).
    #[arg(long)]
    no_agent_cost: bool,
    /// Skip the reference programs (empty program, minimal hash tracer,
    /// bpftrace) measured beside the tracer in the ping-pong workload.
    #[arg(long)]
    no_references: bool,
    /// Print the results only; leave BENCHMARKS.md as it is.
    #[arg(long)]
    no_write: bool,
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
    fn from_args(args: &BenchArgs) -> Result<Self> {
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
        })
    }
}

/// The programs the bench runs.
struct Binaries {
    tracer: PathBuf,
    /// A release build of this xtask binary, re-run as the load generator
    /// (a debug build would add its own slowness to every operation).
    loadgen: PathBuf,
}

impl Binaries {
    fn resolve(args: &BenchArgs) -> Result<Self> {
        let target = target_dir();
        let own_build_is_release = !cfg!(debug_assertions);
        let mut packages = Vec::new();
        if args.tracer.is_none() {
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
        let tracer = args.tracer.clone().unwrap_or_else(|| tracer::default_binary(&target));
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

pub fn run(args: BenchArgs) -> Result<()> {
    let mut plan = Plan::from_args(&args)?;
    let binaries = Binaries::resolve(&args)?;
    let mut reference_notes = Vec::new();
    if plan.references.contains(&reference::Reference::Bpftrace) {
        if let Err(why) = reference::bpftrace_available() {
            reference_notes.push(format!("bpftrace not measured: {why}"));
            plan.references.retain(|r| *r != reference::Reference::Bpftrace);
        }
    }
    let began = Instant::now();
    let started_at = SystemTime::now();
    // Taken now: the tree may change while the bench runs, the binaries
    // measured do not.
    let source = source_revision();
    let load_before = proc::load_average();
    eprintln!(
        "xtask: bench: {} rounds x {} workloads, {:.1} s per run, load generator pinned to CPU {}",
        plan.rounds,
        plan.workloads.len(),
        plan.load.window.as_secs_f64(),
        plan.load.cpu
    );
    let mode = tracer::choose_mode(&binaries.tracer, plan.interval)?;
    match &mode {
        Mode::Agent => eprintln!("xtask: bench: measuring `tracer agent`"),
        Mode::Trace { why_not_agent } => eprintln!(
            "xtask: bench: the agent cannot run in this build ({why_not_agent}); measuring `tracer trace` instead"
        ),
    }
    let cost = match &plan.cost {
        Some(cost_plan) => Some(cost::measure(&binaries.tracer, &binaries.loadgen, &mode, &plan, cost_plan)?),
        None => None,
    };
    let mut quiet = Quiet::new(if plan.quick { 15 } else { 120 });
    let workloads = ab_rounds(&binaries, &mode, &plan, &mut quiet, &mut reference_notes)?;
    let program_costs = if plan.references.is_empty() {
        Vec::new()
    } else {
        match program_costs(&binaries, &mode, &plan) {
            Ok(costs) => costs,
            Err(error) => {
                reference_notes.push(format!("program run times not measured: {error:#}"));
                Vec::new()
            }
        }
    };
    let document = report::Document {
        started_at,
        wall_secs: began.elapsed().as_secs_f64(),
        plan: plan.clone(),
        mode,
        machine: proc::machine(),
        load_before,
        load_after: proc::load_average(),
        source,
        tracer_version: tracer_version(&binaries.tracer),
        workloads,
        cost,
        foreign_tracers: quiet.seen.into_iter().collect(),
        reference_notes,
        program_costs,
    };
    println!("{}", report::results(&document));
    if !args.no_write {
        let path = workspace_root().join("BENCHMARKS.md");
        std::fs::write(&path, report::file(&document)).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("xtask: bench: wrote {}", path.display());
    }
    Ok(())
}

/// Waits, within a time budget for the whole bench, until no other process
/// holds eBPF tracing programs: someone else's tracer or test attached to
/// the same hooks would slow the "untraced" runs down.
struct Quiet {
    budget: Duration,
    /// Names of the processes seen holding tracing programs.
    seen: std::collections::BTreeSet<String>,
}

impl Quiet {
    fn new(budget_secs: u64) -> Self {
        Quiet { budget: Duration::from_secs(budget_secs), seen: Default::default() }
    }

    /// True if no foreign tracer is around (now, or after waiting).
    fn check(&mut self, exclude: &[u32], wait: bool) -> bool {
        let started = Instant::now();
        let mut announced = false;
        loop {
            let foreign = proc::foreign_tracers(exclude);
            if foreign.is_empty() {
                self.budget = self.budget.saturating_sub(started.elapsed());
                return true;
            }
            self.seen.extend(foreign.iter().map(|(_, comm)| comm.clone()));
            if !wait || started.elapsed() >= self.budget.min(Duration::from_secs(15)) {
                self.budget = self.budget.saturating_sub(started.elapsed());
                return false;
            }
            if !announced {
                let names: Vec<String> = foreign.iter().map(|(pid, comm)| format!("{comm} ({pid})")).collect();
                eprintln!("xtask: bench: waiting for other eBPF tracers to go: {}", names.join(", "));
                announced = true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Rounds of A (untraced), B (traced), A runs, workloads interleaved so
/// that slow drifts of the machine spread over all of them; in ping-pong,
/// each reference program also runs between two untraced runs
/// (A ref1 A ref2 A ... A B A). Each attached run is compared with the
/// untraced runs on either side of it.
fn ab_rounds(
    binaries: &Binaries,
    mode: &Mode,
    plan: &Plan,
    quiet: &mut Quiet,
    reference_notes: &mut Vec<String>,
) -> Result<Vec<(Workload, Pairs)>> {
    let mut results: Vec<(Workload, Pairs)> = plan.workloads.iter().map(|w| (*w, Pairs::default())).collect();
    let mut references = plan.references.clone();
    let per_op = |run: &Run| match (run.cpu_ns_per_op(), run.low_ns_per_op) {
        (Some(ns), Some(low)) => format!("{ns:>7.0} CPU ns/op (quiet slices {low:>7.0})"),
        (Some(ns), None) => format!("{ns:>7.0} CPU ns/op"),
        _ => format!("{:>7.0} ns/op", 1e9 / run.ops_per_sec()),
    };
    let untraced_run = |workload: Workload, quiet: &mut Quiet| -> Result<Run> {
        let quiet_before = quiet.check(&[], true);
        let mut run = run_workload(&binaries.loadgen, workload, &plan.load)
            .with_context(|| format!("untraced {} run", workload.name()))?;
        run.foreign_tracer = !quiet_before || !quiet.check(&[], false);
        Ok(run)
    };
    for round in 1..=plan.rounds {
        for (workload, pairs) in &mut results {
            if *workload == Workload::PingPong {
                let quiet_before = quiet.check(&[], true);
                let mut phases = ping_pong_phases(binaries, mode, plan, &mut references, reference_notes)?;
                if !quiet_before || !quiet.check(&[], false) {
                    phases.mark_foreign_tracer();
                }
                eprintln!(
                    "xtask: bench: round {round}/{}: ping-pong (one pair of processes throughout): {}",
                    plan.rounds,
                    phases.describe()
                );
                for (reference, sandwich) in phases.references {
                    match pairs.references.iter_mut().find(|(r, _)| *r == reference) {
                        Some((_, runs)) => runs.push(sandwich),
                        None => pairs.references.push((reference, vec![sandwich])),
                    }
                }
                for (reference, added) in phases.quick {
                    match pairs.quick_added.iter_mut().find(|(r, _)| *r == reference) {
                        Some((_, all)) => all.extend(added),
                        None => pairs.quick_added.push((reference, added)),
                    }
                }
                pairs.untraced.push(phases.tracer.before);
                pairs.traced.push(phases.tracer.run);
                pairs.untraced_after.push(phases.tracer.after);
                pairs.tracer_cpu_percent.push(phases.tracer_cpu);
                continue;
            }
            let untraced = untraced_run(*workload, quiet)?;
            let tracer = TracerProcess::start(&binaries.tracer, mode, plan.interval)?;
            std::thread::sleep(plan.settle);
            let quiet_before = quiet.check(&[tracer.pid()], false);
            let (cpu_before, clock) = (tracer.cpu_seconds()?, Instant::now());
            let mut traced = run_workload(&binaries.loadgen, *workload, &plan.load)
                .with_context(|| format!("traced {} run", workload.name()))?;
            let tracer_cpu = (tracer.cpu_seconds()? - cpu_before) / clock.elapsed().as_secs_f64() * 100.0;
            traced.foreign_tracer = !quiet_before || !quiet.check(&[tracer.pid()], false);
            tracer.stop()?;
            let after = untraced_run(*workload, quiet)?;
            eprintln!(
                "xtask: bench: round {round}/{}: {:<9} untraced {}, traced {} (tracer {:.1}% CPU), untraced {}{}",
                plan.rounds,
                workload.name(),
                per_op(&untraced),
                per_op(&traced),
                tracer_cpu,
                per_op(&after),
                if untraced.foreign_tracer || traced.foreign_tracer || after.foreign_tracer {
                    " (another eBPF tracer was around)"
                } else {
                    ""
                }
            );
            pairs.untraced.push(untraced);
            pairs.traced.push(traced);
            pairs.untraced_after.push(after);
            pairs.tracer_cpu_percent.push(tracer_cpu);
        }
    }
    Ok(results)
}

/// What one continuous ping-pong round measured.
struct Phases {
    references: Vec<(reference::Reference, Sandwich)>,
    tracer: Sandwich,
    tracer_cpu: f64,
    /// Rapid alternation: per reference, the CPU ns per operation it added
    /// in each cycle (its phase against the untraced phase of the cycle).
    quick: Vec<(reference::Reference, Vec<f64>)>,
}

impl Phases {
    fn mark_foreign_tracer(&mut self) {
        for sandwich in self.references.iter_mut().map(|(_, s)| s).chain([&mut self.tracer]) {
            for run in [&mut sandwich.before, &mut sandwich.run, &mut sandwich.after] {
                run.foreign_tracer = true;
            }
        }
    }

    fn describe(&self) -> String {
        let ns = |run: &Run| run.low_ns_per_op.map_or("?".into(), |ns| format!("{ns:.0}"));
        let mut parts = Vec::new();
        for (reference, sandwich) in &self.references {
            parts.push(format!("A {} | {} {}", ns(&sandwich.before), reference.short(), ns(&sandwich.run)));
        }
        parts.push(format!(
            "A {} | tracer {} ({:.1}% CPU) | A {}",
            ns(&self.tracer.before),
            ns(&self.tracer.run),
            self.tracer_cpu,
            ns(&self.tracer.after)
        ));
        for (reference, added) in &self.quick {
            parts.push(format!("{} adds {:.0} (rapid alternation)", reference.short(), stats::median(added)));
        }
        format!("{} CPU ns/op (quiet slices)", parts.join(" | "))
    }
}

/// What is attached during one phase of a continuous round.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Untraced,
    Reference(reference::Reference),
    Tracer,
    /// A short phase of the rapid alternation, in cycle N: nothing
    /// attached (None) or a reference.
    Quick(usize, Option<reference::Reference>),
}

/// Length of one phase of the rapid alternation, and the cycles of it per
/// round.
pub const QUICK_PHASE: Duration = Duration::from_millis(300);
pub const QUICK_CYCLES: usize = 12;

/// One ping-pong round on a single client/server pair that runs
/// throughout, while the bench changes what is attached underneath:
/// untraced, then each reference program and the tracer, each followed by
/// another untraced phase. Processes, sockets and their memory stay the
/// same, so the comparison is not disturbed by where a new pair of
/// processes happens to land; each phase's figure is the low quantile of
/// the 100 ms slices that fall wholly inside it.
fn ping_pong_phases(
    binaries: &Binaries,
    mode: &Mode,
    plan: &Plan,
    references: &mut Vec<reference::Reference>,
    reference_notes: &mut Vec<String>,
) -> Result<Phases> {
    let phase_len = (plan.load.window / 2).max(Duration::from_secs(1));
    let cpu = plan.load.cpu.to_string();
    let mut server = Spawned::start(Command::new(&binaries.loadgen).args([
        "loadgen",
        "server",
        "--workload",
        Workload::PingPong.name(),
        "--cpu",
        &cpu,
    ]))?;
    let port: u16 = server.line_starting("port ", Duration::from_secs(10))?.trim_start_matches("port ").parse()?;
    let server_pid = server.child_mut().id().to_string();
    let mut client = Spawned::start_with_stdin(
        Command::new(&binaries.loadgen).args([
            "loadgen",
            "client",
            "--workload",
            Workload::PingPong.name(),
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--duration-ms",
            "0",
            "--warmup-ms",
            &plan.load.warmup.as_millis().to_string(),
            "--cpu",
            &cpu,
            "--server-pid",
            &server_pid,
            "--until-stdin-closes",
        ]),
        Stdio::piped(),
    )?;
    let stdin = client.child_mut().stdin.take().context("the client's stdin")?;
    std::thread::sleep(plan.load.warmup + Duration::from_millis(100));

    let mut timeline: Vec<(Phase, u64, u64)> = Vec::new();
    let measure = |phase: Phase, timeline: &mut Vec<(Phase, u64, u64)>| {
        let start = loadgen::monotonic_ns();
        std::thread::sleep(phase_len);
        timeline.push((phase, start, loadgen::monotonic_ns()));
    };
    let pause = || std::thread::sleep(Duration::from_millis(150));
    measure(Phase::Untraced, &mut timeline);
    let mut kept = Vec::new();
    for reference in references.iter() {
        match reference::Attached::attach(*reference) {
            Ok(attached) => {
                pause();
                measure(Phase::Reference(*reference), &mut timeline);
                drop(attached);
                pause();
                measure(Phase::Untraced, &mut timeline);
                kept.push(*reference);
            }
            Err(error) => {
                let note = format!("{} not measured: {error:#}", reference.short());
                eprintln!("xtask: bench: {note}");
                reference_notes.push(note);
            }
        }
    }
    *references = kept;
    // Rapid alternation of the raw-tracepoint references (attached and
    // detached in a millisecond): the machine's slow swings cancel out.
    let quick_refs: Vec<reference::Reference> =
        references.iter().copied().filter(|r| *r != reference::Reference::Bpftrace).collect();
    if !quick_refs.is_empty() {
        for cycle in 0..QUICK_CYCLES {
            let quick = |phase: Phase, timeline: &mut Vec<(Phase, u64, u64)>| {
                std::thread::sleep(Duration::from_millis(30));
                let start = loadgen::monotonic_ns();
                std::thread::sleep(QUICK_PHASE);
                timeline.push((phase, start, loadgen::monotonic_ns()));
            };
            quick(Phase::Quick(cycle, None), &mut timeline);
            for reference in &quick_refs {
                let attached = reference::Attached::attach(*reference)?;
                quick(Phase::Quick(cycle, Some(*reference)), &mut timeline);
                drop(attached);
            }
        }
        pause();
        measure(Phase::Untraced, &mut timeline);
    }
    let tracer = TracerProcess::start(&binaries.tracer, mode, plan.interval)?;
    std::thread::sleep(plan.settle);
    let (cpu_before, clock) = (tracer.cpu_seconds()?, Instant::now());
    measure(Phase::Tracer, &mut timeline);
    let tracer_cpu = (tracer.cpu_seconds()? - cpu_before) / clock.elapsed().as_secs_f64() * 100.0;
    tracer.stop()?;
    pause();
    measure(Phase::Untraced, &mut timeline);
    drop(stdin);

    let client_line = client.line_starting("client ", Duration::from_secs(30))?;
    client.finish(Duration::from_secs(10))?;
    let server_line = server.line_starting("server ", Duration::from_secs(20))?;
    server.finish(Duration::from_secs(10))?;
    let client_fields = fields(&client_line);
    let server_fields = fields(&server_line);
    let total_ops: f64 = field(&client_fields, "total_ops")?;
    let syscalls: f64 = field::<f64>(&client_fields, "syscalls")? + field::<f64>(&server_fields, "syscalls")?;
    let list = |name: &str| -> Vec<f64> {
        client_fields.get(name).map(|l| l.split(',').filter_map(|v| v.parse().ok()).collect()).unwrap_or_default()
    };
    let (slices, slice_ops, slice_ends) = (list("slices"), list("slice_ops"), list("slice_ends"));
    if slices.is_empty() || slices.len() != slice_ops.len() || slices.len() != slice_ends.len() {
        bail!("the ping-pong client reported no usable slices: {client_line}");
    }
    let runs: Vec<(Phase, Run)> = timeline
        .iter()
        .map(|(phase, start, end)| {
            let inside: Vec<usize> = (1..slices.len())
                .filter(|&i| slice_ends[i - 1] >= *start as f64 && slice_ends[i] <= *end as f64)
                .collect();
            let ops: f64 = inside.iter().map(|&i| slice_ops[i]).sum();
            let wall_secs: f64 = inside.iter().map(|&i| (slice_ends[i] - slice_ends[i - 1]) / 1e9).sum();
            let cpu_secs: f64 = inside.iter().map(|&i| slices[i] * slice_ops[i] / 1e9).sum();
            let values: Vec<f64> = inside.iter().map(|&i| slices[i]).collect();
            let run = Run {
                ops,
                wall_secs,
                cpu_secs: (cpu_secs > 0.0).then_some(cpu_secs),
                syscalls_per_op: syscalls / total_ops,
                payload_per_op: payload_per_op(Workload::PingPong) as f64,
                foreign_tracer: false,
                low_ns_per_op: stats::low_quantile(&values, stats::SLICE_QUANTILE),
            };
            (*phase, run)
        })
        .collect();
    if runs.iter().any(|(phase, run)| run.ops <= 0.0 && !matches!(phase, Phase::Quick(..))) {
        bail!("a ping-pong phase had no whole slice (phases of {} s)", phase_len.as_secs_f64());
    }
    // The rapid alternation: each quick phase against the untraced one of
    // its cycle (mean CPU ns per operation over the phase's slices).
    let mut quick: Vec<(reference::Reference, Vec<f64>)> = Vec::new();
    for cycle in 0..QUICK_CYCLES {
        let mean_of = |want: Option<reference::Reference>| {
            runs.iter()
                .find(|(phase, run)| *phase == Phase::Quick(cycle, want) && run.ops > 0.0)
                .and_then(|(_, run)| run.cpu_ns_per_op())
        };
        let Some(untraced) = mean_of(None) else { continue };
        for reference in references.iter() {
            if let Some(with) = mean_of(Some(*reference)) {
                match quick.iter_mut().find(|(r, _)| r == reference) {
                    Some((_, added)) => added.push(with - untraced),
                    None => quick.push((*reference, vec![with - untraced])),
                }
            }
        }
    }
    let runs: Vec<(Phase, Run)> = runs.into_iter().filter(|(phase, _)| !matches!(phase, Phase::Quick(..))).collect();
    let sandwich = |i: usize| Sandwich { before: runs[i - 1].1, run: runs[i].1, after: runs[i + 1].1 };
    let mut phases = Phases { references: Vec::new(), tracer: sandwich(runs.len() - 2), tracer_cpu, quick };
    for (i, (phase, _)) in runs.iter().enumerate() {
        if let Phase::Reference(reference) = phase {
            phases.references.push((*reference, sandwich(i)));
        }
    }
    Ok(phases)
}

/// Mean run time of the programs per call, from the kernel's own
/// accounting (`kernel.bpf_stats_enabled`), over one ping-pong run each with
/// the reference programs and with the tracer: what each program costs
/// inside the hook, free of the noise of whole-syscall timing. (The
/// accounting itself adds two clock reads per run, to every line alike.)
fn program_costs(binaries: &Binaries, mode: &Mode, plan: &Plan) -> Result<Vec<ProgramCost>> {
    let _stats = proc::BpfStats::enable().context("turning on kernel.bpf_stats_enabled")?;
    let own = std::process::id();
    let mut costs = Vec::new();
    for reference in plan.references.iter().filter(|r| **r != reference::Reference::Bpftrace) {
        let attached = reference::Attached::attach(*reference)?;
        let before = proc::program_runs(own);
        run_workload(&binaries.loadgen, Workload::PingPong, &plan.load)?;
        let after = proc::program_runs(own);
        drop(attached);
        costs.push(ProgramCost::new(reference.name(), before, after));
    }
    let tracer = TracerProcess::start(&binaries.tracer, mode, plan.interval)?;
    std::thread::sleep(plan.settle);
    let before = proc::program_runs(tracer.pid());
    run_workload(&binaries.loadgen, Workload::PingPong, &plan.load)?;
    let after = proc::program_runs(tracer.pid());
    tracer.stop()?;
    costs.push(ProgramCost::new(TRACER_PROGRAMS, before, after));
    for cost in &costs {
        eprintln!(
            "xtask: bench: program run time: {}: {:.1} ns per run over {} runs",
            cost.name,
            cost.ns_per_run(),
            cost.runs
        );
    }
    Ok(costs)
}

/// The tracer's line in the program run times.
pub const TRACER_PROGRAMS: &str = "tracer (all its programs)";

/// Program runs during one ping-pong run, from the kernel's accounting.
#[derive(Debug, Clone)]
pub struct ProgramCost {
    pub name: &'static str,
    pub runs: u64,
    pub run_time_ns: u64,
}

impl ProgramCost {
    fn new(name: &'static str, before: (u64, u64), after: (u64, u64)) -> Self {
        ProgramCost { name, run_time_ns: after.0.saturating_sub(before.0), runs: after.1.saturating_sub(before.1) }
    }

    pub fn ns_per_run(&self) -> f64 {
        if self.runs == 0 {
            f64::NAN
        } else {
            self.run_time_ns as f64 / self.runs as f64
        }
    }
}

/// Bytes the client writes per operation.
fn payload_per_op(workload: Workload) -> usize {
    match workload {
        Workload::PingPong | Workload::Parallel => loadgen::MESSAGE_SIZE,
        Workload::Bulk => loadgen::BULK_CHUNK,
        Workload::Churn => loadgen::CHURN_PAYLOAD,
    }
}

/// One run: a server process, then a client process for the fixed window.
pub fn run_workload(loadgen: &Path, workload: Workload, spec: &LoadSpec) -> Result<Run> {
    let cpu = spec.cpu.to_string();
    let mut server = Spawned::start(Command::new(loadgen).args([
        "loadgen",
        "server",
        "--workload",
        workload.name(),
        "--cpu",
        &cpu,
    ]))?;
    let port: u16 = server.line_starting("port ", Duration::from_secs(10))?.trim_start_matches("port ").parse()?;
    let server_pid = server.child_mut().id().to_string();
    let mut client = Spawned::start(Command::new(loadgen).args([
        "loadgen",
        "client",
        "--workload",
        workload.name(),
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--duration-ms",
        &spec.window.as_millis().to_string(),
        "--warmup-ms",
        &spec.warmup.as_millis().to_string(),
        "--connections",
        &spec.parallel_connections.to_string(),
        "--cpu",
        &cpu,
        "--server-pid",
        &server_pid,
    ]))?;
    let client_line = client.line_starting("client ", spec.window + spec.warmup + Duration::from_secs(60))?;
    client.finish(Duration::from_secs(10))?;
    let server_line = server.line_starting("server ", Duration::from_secs(20))?;
    server.finish(Duration::from_secs(10))?;

    let client_fields = fields(&client_line);
    let server_fields = fields(&server_line);
    let ops: f64 = field(&client_fields, "ops")?;
    let secs: f64 = field(&client_fields, "secs")?;
    let cpu_secs: f64 = field(&client_fields, "cpu_secs")?;
    let total_ops: f64 = field(&client_fields, "total_ops")?;
    let syscalls: f64 = field::<f64>(&client_fields, "syscalls")? + field::<f64>(&server_fields, "syscalls")?;
    if ops <= 0.0 || secs <= 0.0 || total_ops <= 0.0 {
        bail!("the {} client did no work: {client_line}", workload.name());
    }
    Ok(Run {
        ops,
        wall_secs: secs,
        cpu_secs: (cpu_secs > 0.0).then_some(cpu_secs),
        syscalls_per_op: syscalls / total_ops,
        payload_per_op: payload_per_op(workload) as f64,
        foreign_tracer: false,
        low_ns_per_op: client_fields.get("slices").and_then(|list| {
            let slices: Vec<f64> = list.split(',').filter_map(|v| v.parse().ok()).collect();
            stats::low_quantile(&slices, stats::SLICE_QUANTILE)
        }),
    })
}

fn fields(line: &str) -> HashMap<&str, &str> {
    line.split_whitespace().filter_map(|word| word.split_once('=')).collect()
}

fn field<T: FromStr>(fields: &HashMap<&str, &str>, name: &str) -> Result<T> {
    fields
        .get(name)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no number '{name}' in the load generator's report"))
}

/// A child process whose stdout is read line by line; killed by PID if it is
/// still running when dropped.
pub struct Spawned {
    child: Child,
    lines: Receiver<String>,
    shown: String,
}

impl Spawned {
    pub fn start(cmd: &mut Command) -> Result<Self> {
        Self::start_with_stdin(cmd, Stdio::null())
    }

    pub fn start_with_stdin(cmd: &mut Command, stdin: Stdio) -> Result<Self> {
        let shown = format!("{cmd:?}").replace('"', "");
        let mut child = cmd.stdin(stdin).stdout(Stdio::piped()).spawn().with_context(|| format!("starting {shown}"))?;
        let stdout = child.stdout.take().context("the child's stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        Ok(Spawned { child, lines, shown })
    }

    /// Waits for the next line starting with `prefix` (others are skipped).
    pub fn line_starting(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    bail!("{} said no '{prefix}...' within {}s", self.shown, timeout.as_secs())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    bail!("{} ended ({status}) before saying '{prefix}...'", self.shown);
                }
            }
        }
    }

    /// Waits for a clean exit.
    pub fn finish(&mut self, timeout: Duration) -> Result<()> {
        match wait_for_exit(&mut self.child, timeout)? {
            Some(status) if status.success() => Ok(()),
            Some(status) => bail!("{} failed ({status})", self.shown),
            None => bail!("{} did not exit within {}s", self.shown, timeout.as_secs()),
        }
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Child::kill sends SIGKILL to this child's PID.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls until the child exits or `timeout` passes (None).
pub fn wait_for_exit(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The commit the tracer was built from, and whether the tree had changes.
fn source_revision() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(workspace_root())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if !changes.is_empty() => format!("{commit} + uncommitted changes"),
            _ => commit,
        },
        None => "unknown".into(),
    }
}

fn tracer_version(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
