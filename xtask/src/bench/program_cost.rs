//! The programs' own run time per call, from the kernel's accounting
//! (`kernel.bpf_stats_enabled`): one ping-pong run with each raw-tracepoint
//! reference program attached, one with the tracer (`ProgramCost`).

use anyhow::{Context as _, Result};

use super::{
    loadgen::Workload,
    plan::{Binaries, Plan},
    proc, reference,
    tracer::{Mode, TracerProcess},
    workload::run_workload,
};

/// Mean run time of the programs per call, from the kernel's own
/// accounting (`kernel.bpf_stats_enabled`), over one ping-pong run each with
/// the reference programs and with the tracer: what each program costs
/// inside the hook, free of the noise of whole-syscall timing. (The
/// accounting itself adds two clock reads per run, to every line alike.)
pub fn program_costs(binaries: &Binaries, mode: &Mode, plan: &Plan) -> Result<Vec<ProgramCost>> {
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
    let before = proc::program_runs_of(tracer.pid(), &proc::HOOKED_PROGRAM_TYPES);
    run_workload(&binaries.loadgen, Workload::PingPong, &plan.load)?;
    let after = proc::program_runs_of(tracer.pid(), &proc::HOOKED_PROGRAM_TYPES);
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
