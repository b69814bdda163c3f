//! `cargo xtask bench`: what the tracer costs the host, measured and
//! written to BENCHMARKS.md.
//!
//! Two parts. First the tracer's own cost (`cost`): one tracer process, its
//! CPU time and peak memory at idle, under ping-pong load, and with 10,000
//! and 100,000 live loopback sockets, plus the duration of a collection pass.
//! Then the throughput cost (`rounds`): each workload of the load generator
//! (`loadgen`, this binary re-run as separate client and server processes
//! pinned to one CPU, one run driven by `workload`) alternately without (A)
//! and with (B) the tracer attached, for several rounds, the other
//! workloads also with the connection floor (empty programs on every hook
//! the tracer uses, `reference`); ping-pong as one continuous round with
//! the reference programs (`phases`, `reference`); medians, spreads, the
//! traced/untraced ratio, the gap to the floor and the added nanoseconds
//! per send/recv syscall (`stats`); the programs' run time per call and,
//! on the churn path, per connection and per program, from the kernel's
//! accounting (`program_cost`). The tables and the file are rendered by
//! `report`.
//!
//! This file runs the parts in order and assembles the document. What to
//! run comes from `plan`; child processes are handled by `child` and
//! `tracer`, /proc by `proc`. Everything runs on loopback, every wait is
//! bounded, and every process the bench starts is stopped by its PID (also
//! when the bench fails half-way).

pub mod child;
mod cost;
pub mod loadgen;
mod phases;
pub mod plan;
pub mod proc;
mod program_cost;
pub mod reference;
pub mod report;
mod rounds;
mod stats;
pub mod tracer;
mod workload;

use std::{
    path::Path,
    process::Command,
    time::{Instant, SystemTime},
};

use anyhow::{Context as _, Result};

pub use self::{child::wait_for_exit, plan::BenchArgs};
use self::{
    loadgen::Workload,
    plan::{Binaries, Plan},
    program_cost::{path_costs, program_costs, PathCosts, ProgramCost},
    rounds::{ab_rounds, Quiet},
    tracer::Mode,
};
use crate::workspace_root;

pub fn run(args: BenchArgs) -> Result<()> {
    let mut plan = Plan::from_args(&args)?;
    let binaries = Binaries::resolve(&args)?;
    let reference_notes = drop_unavailable_references(&mut plan);
    let document = measure(&binaries, plan, reference_notes)?;
    println!("{}", report::results(&document));
    if !args.no_write {
        let path = workspace_root().join("BENCHMARKS.md");
        std::fs::write(&path, report::file(&document)).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("xtask: bench: wrote {}", path.display());
    }
    Ok(())
}

/// Leaves bpftrace out of the plan when it cannot run here; returns the
/// note saying why.
fn drop_unavailable_references(plan: &mut Plan) -> Vec<String> {
    let mut notes = Vec::new();
    if plan.references.contains(&reference::Reference::Bpftrace) {
        if let Err(why) = reference::bpftrace_available() {
            notes.push(format!("bpftrace not measured: {why}"));
            plan.references.retain(|r| *r != reference::Reference::Bpftrace);
        }
    }
    notes
}

/// Both parts of the bench, in order, and everything the report says
/// about the run.
fn measure(binaries: &Binaries, plan: Plan, mut reference_notes: Vec<String>) -> Result<report::Document> {
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
    let mode = choose_mode(binaries, &plan)?;
    let cost = match &plan.cost {
        Some(cost_plan) => Some(cost::measure(&binaries.tracer, &binaries.loadgen, &mode, &plan, cost_plan)?),
        None => None,
    };
    let mut quiet = Quiet::new(if plan.quick { 15 } else { 120 });
    let stats_on_before = proc::bpf_stats_enabled();
    let workloads = ab_rounds(binaries, &mode, &plan, &mut quiet, &mut reference_notes)?;
    if stats_on_before || proc::bpf_stats_enabled() {
        reference_notes.push(
            "kernel.bpf_stats_enabled was on during the rounds (turned on by another process): every \
             program run, the floors' and the tracer's alike, paid the accounting's two clock reads"
                .into(),
        );
    }
    let program_costs = measured_program_costs(binaries, &mode, &plan, &mut reference_notes);
    let path_costs = measured_path_costs(binaries, &mode, &plan, &mut reference_notes);
    Ok(report::Document {
        started_at,
        wall_secs: began.elapsed().as_secs_f64(),
        plan,
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
        path_costs,
    })
}

/// The agent if this build's can run, else `trace`; says which.
fn choose_mode(binaries: &Binaries, plan: &Plan) -> Result<Mode> {
    let mode = tracer::choose_mode(&binaries.tracer, plan.interval)?;
    match &mode {
        Mode::Agent => eprintln!("xtask: bench: measuring `tracer agent`"),
        Mode::Trace { why_not_agent } => eprintln!(
            "xtask: bench: the agent cannot run in this build ({why_not_agent}); measuring `tracer trace` instead"
        ),
    }
    Ok(mode)
}

/// The programs' run times when references are measured; a failure is a
/// note in the report, not the end of the bench.
fn measured_program_costs(
    binaries: &Binaries,
    mode: &Mode,
    plan: &Plan,
    reference_notes: &mut Vec<String>,
) -> Vec<ProgramCost> {
    if plan.references.is_empty() {
        return Vec::new();
    }
    match program_costs(binaries, mode, plan) {
        Ok(costs) => costs,
        Err(error) => {
            reference_notes.push(format!("program run times not measured: {error:#}"));
            Vec::new()
        }
    }
}

/// The churn path's program run times when the connection floor is
/// measured and churn runs; a failure is a note, as above.
fn measured_path_costs(
    binaries: &Binaries,
    mode: &Mode,
    plan: &Plan,
    reference_notes: &mut Vec<String>,
) -> Option<PathCosts> {
    if !plan.conn_floor || !plan.workloads.contains(&Workload::Churn) {
        return None;
    }
    match path_costs(binaries, mode, plan) {
        Ok(costs) => Some(costs),
        Err(error) => {
            reference_notes.push(format!("program run times on the churn path not measured: {error:#}"));
            None
        }
    }
}

/// The commit the tracer was built from, and whether the tree had changes.
pub fn source_revision() -> String {
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

pub fn tracer_version(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
