//! The programs' own run time per call, from the kernel's accounting
//! (`kernel.bpf_stats_enabled`): one ping-pong run with each raw-tracepoint
//! reference program attached, one with the tracer (`ProgramCost`); and
//! the churn path per program and per connection, one churn run with the
//! connection floor (an empty program of its own on each hook) and one
//! with the tracer (`PathCosts`), the tracer's programs told apart by id
//! from its fdinfo and named by `bpftool`, its TCP health pass apart.

use std::time::{Duration, Instant};

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

/// Program runs on the connection path: one churn run with the
/// connection floor attached, one with the tracer, each program's runs and
/// run time from the kernel's accounting; the tracer's TCP health pass
/// apart (collection work run once per tick, not per connection).
#[derive(Debug, Clone)]
pub struct PathCosts {
    pub floor: PathRun,
    pub tracer: PathRun,
    /// `sample_sockets` (run by `BPF_PROG_TEST_RUN` once per collection
    /// tick) during the tracer's run, when it ran.
    pub health: Option<ProgramRuns>,
}

/// One churn run with a set of programs attached.
#[derive(Debug, Clone)]
pub struct PathRun {
    /// Connections (operations) of the whole run, warm-up included.
    pub ops: f64,
    pub programs: Vec<ProgramRuns>,
}

/// One program's runs over one churn run.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramRuns {
    /// The program's name, as the kernel (or bpftool) has it.
    pub name: String,
    /// The hook it runs on: the tracepoint (from the name when the kernel
    /// kept only its first 15 characters), or the name itself.
    pub hook: String,
    pub runs: u64,
    pub run_time_ns: u64,
}

impl ProgramRuns {
    pub fn ns_per_run(&self) -> f64 {
        if self.runs == 0 {
            f64::NAN
        } else {
            self.run_time_ns as f64 / self.runs as f64
        }
    }
}

impl PathRun {
    pub fn runs_per_op(&self, program: &ProgramRuns) -> f64 {
        program.runs as f64 / self.ops
    }

    pub fn ns_per_op(&self, program: &ProgramRuns) -> f64 {
        program.run_time_ns as f64 / self.ops
    }

    /// Run time of all its programs per operation.
    pub fn total_ns_per_op(&self) -> f64 {
        self.programs.iter().map(|p| p.run_time_ns as f64).sum::<f64>() / self.ops
    }

    pub fn total_runs_per_op(&self) -> f64 {
        self.programs.iter().map(|p| p.runs as f64).sum::<f64>() / self.ops
    }

    pub fn hook(&self, hook: &str) -> Option<&ProgramRuns> {
        self.programs.iter().find(|p| p.hook == hook)
    }
}

impl PathCosts {
    /// What the tracer's programs take above the empty programs, ns per
    /// connection (kernel accounting).
    pub fn tracer_above_floor_ns_per_op(&self) -> f64 {
        self.tracer.total_ns_per_op() - self.floor.total_ns_per_op()
    }

    /// Every hook either side ran on, the tracer's tracepoints first (in
    /// their order), then any other hook of the tracer's.
    pub fn hooks(&self) -> Vec<String> {
        let mut hooks: Vec<String> = reference::TRACER_TRACEPOINTS.iter().map(|h| h.to_string()).collect();
        for program in self.floor.programs.iter().chain(&self.tracer.programs) {
            if !hooks.contains(&program.hook) {
                hooks.push(program.hook.clone());
            }
        }
        hooks
    }
}

/// The hook a tracer program runs on, from its name: its programs on
/// tracepoints are named after them, and the kernel keeps only the first
/// 15 characters of a name.
pub fn hook_of(name: &str) -> String {
    reference::TRACER_TRACEPOINTS
        .iter()
        .find(|hook| **hook == name || (name.len() >= 15 && hook.starts_with(name)))
        .map_or_else(|| name.to_owned(), |hook| hook.to_string())
}

/// Whether a program of the tracer is its TCP health pass: `sample_sockets`
/// (or `sample_sockets_iter` on kernels before 5.13), or, nameless, the
/// one raw tracepoint program it holds.
pub fn is_health_pass(name: Option<&str>, prog_type: u32) -> bool {
    match name {
        Some(name) => name.starts_with("sample_sockets"),
        None => prog_type == RAW_TRACEPOINT,
    }
}

const RAW_TRACEPOINT: u32 = 17;

/// The churn path's program run times: the connection floor for one churn
/// run, then the tracer for one.
pub fn path_costs(binaries: &Binaries, mode: &Mode, plan: &Plan) -> Result<PathCosts> {
    let _stats = proc::BpfStats::enable().context("turning on kernel.bpf_stats_enabled")?;
    let own = std::process::id();

    let attached = reference::Attached::attach(reference::Reference::ConnFloor)?;
    let fds = attached.programs();
    let read_floor = || -> Vec<(String, Option<proc::ProgramStat>)> {
        fds.iter().map(|(fd, hooks)| (hooks.join(", "), proc::fd_program_stat(own, *fd))).collect()
    };
    let before = read_floor();
    let run = run_workload(&binaries.loadgen, Workload::Churn, &plan.load)?;
    let after = read_floor();
    drop(attached);
    let floor_programs = before
        .into_iter()
        .zip(after)
        .filter_map(|((hook, b), (_, a))| {
            let (b, a) = (b?, a?);
            Some(ProgramRuns {
                name: reference::program_name(&hook),
                hook,
                runs: a.run_cnt.saturating_sub(b.run_cnt),
                run_time_ns: a.run_time_ns.saturating_sub(b.run_time_ns),
            })
        })
        .collect();
    // The churn client's last connection tells the server to stop.
    let floor = PathRun { ops: run.total_ops + 1.0, programs: floor_programs };

    let tracer = TracerProcess::start(&binaries.tracer, mode, plan.interval)?;
    std::thread::sleep(plan.settle);
    let before = proc::program_stats(tracer.pid());
    let run = run_workload(&binaries.loadgen, Workload::Churn, &plan.load)?;
    let after = proc::program_stats(tracer.pid());
    let names = proc::program_names();
    let name_of = |id: u32| names.get(&id).map(String::as_str);
    let delta = |a: &proc::ProgramStat, before: &[proc::ProgramStat]| {
        let b = before.iter().find(|b| b.id == a.id);
        let name = name_of(a.id);
        ProgramRuns {
            name: name.map_or_else(|| format!("program {} (type {})", a.id, a.prog_type), str::to_owned),
            hook: name.map_or_else(|| format!("program {}", a.id), hook_of),
            runs: a.run_cnt.saturating_sub(b.map_or(0, |b| b.run_cnt)),
            run_time_ns: a.run_time_ns.saturating_sub(b.map_or(0, |b| b.run_time_ns)),
        }
    };
    let (health_after, hooked): (Vec<_>, Vec<_>) =
        after.iter().partition(|a| is_health_pass(name_of(a.id), a.prog_type));
    let programs: Vec<ProgramRuns> = hooked.into_iter().map(|a| delta(a, &before)).collect();
    // The health pass runs once per tick: when none fell in the churn run,
    // wait (bounded) for one.
    let mut health = health_after.first().map(|a| delta(a, &before));
    let deadline = Instant::now() + plan.interval + Duration::from_secs(1);
    while health.as_ref().is_some_and(|h| h.runs == 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = proc::program_stats(tracer.pid());
        health = now.iter().find(|a| is_health_pass(name_of(a.id), a.prog_type)).map(|a| delta(a, &before));
    }
    tracer.stop()?;
    let costs = PathCosts { floor, tracer: PathRun { ops: run.total_ops + 1.0, programs }, health };
    if let Some(health) = &costs.health {
        eprintln!(
            "xtask: bench: the tracer's TCP health pass ({}): {} runs, {:.1} µs per run",
            health.name,
            health.runs,
            health.ns_per_run() / 1e3
        );
    }
    eprintln!(
        "xtask: bench: churn path, kernel accounting: empty programs {:.0} ns per connection ({:.1} runs), \
         tracer {:.0} ns ({:.1} runs): {:.0} ns per connection above the floor",
        costs.floor.total_ns_per_op(),
        costs.floor.total_runs_per_op(),
        costs.tracer.total_ns_per_op(),
        costs.tracer.total_runs_per_op(),
        costs.tracer_above_floor_ns_per_op()
    );
    Ok(costs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(hook: &str, runs: u64, run_time_ns: u64) -> ProgramRuns {
        ProgramRuns { name: hook.into(), hook: hook.into(), runs, run_time_ns }
    }

    #[test]
    fn truncated_names_map_to_their_tracepoints() {
        assert_eq!(hook_of("inet_sock_set_s"), "inet_sock_set_state");
        assert_eq!(hook_of("inet_sock_set_state"), "inet_sock_set_state");
        assert_eq!(hook_of("tcp_destroy_soc"), "tcp_destroy_sock");
        // Short names are not prefixes of anything by accident.
        assert_eq!(hook_of("tcp_"), "tcp_");
        assert_eq!(hook_of("tcp_sendmsg_exit"), "tcp_sendmsg_exit");
    }

    #[test]
    fn the_health_pass_is_told_apart() {
        assert!(is_health_pass(Some("sample_sockets"), 17));
        assert!(is_health_pass(Some("sample_sockets_iter"), 26));
        assert!(!is_health_pass(Some("inet_sock_set_state"), 26));
        assert!(is_health_pass(None, 17));
        assert!(!is_health_pass(None, 26));
    }

    #[test]
    fn per_connection_figures_and_the_gap_above_the_floor() {
        let floor = PathRun { ops: 1000.0, programs: vec![runs("inet_sock_set_state", 9000, 450_000)] };
        let tracer = PathRun {
            ops: 2000.0,
            programs: vec![runs("inet_sock_set_state", 18_000, 3_600_000), runs("tcp_destroy_sock", 4000, 800_000)],
        };
        let costs = PathCosts { floor, tracer, health: Some(runs("sample_sockets", 1, 5_000_000)) };
        let set_state = costs.tracer.hook("inet_sock_set_state").expect("there");
        assert_eq!(costs.tracer.runs_per_op(set_state), 9.0);
        assert_eq!(set_state.ns_per_run(), 200.0);
        assert_eq!(costs.tracer.ns_per_op(set_state), 1800.0);
        assert_eq!(costs.floor.total_ns_per_op(), 450.0);
        assert_eq!(costs.tracer.total_ns_per_op(), 2200.0);
        assert_eq!(costs.tracer.total_runs_per_op(), 11.0);
        assert_eq!(costs.tracer_above_floor_ns_per_op(), 1750.0);
        assert!(runs("x", 0, 0).ns_per_run().is_nan());
        let hooks = costs.hooks();
        assert_eq!(hooks.len(), reference::TRACER_TRACEPOINTS.len());
        assert_eq!(hooks[0], "inet_sock_set_state");
    }
}
