//! The A/B rounds of the throughput part: workloads interleaved round
//! after round, each run untraced (A), with the tracer (B), untraced again,
//! so that slow drifts of the machine spread over all of them; with the
//! connection floor (`Reference::ConnFloor`: empty programs on every hook
//! the tracer uses) the round is A floor A B A, or A B A floor A in every
//! other round, so the floor and the tracer are each read against the
//! untraced runs on either side of them. Ping-pong runs as one continuous
//! round with the reference programs (`phases`).
//!
//! Churn stays with separate runs: measured on this machine (2 CPUs, shared
//! with builds), untraced 2 s runs compared with the mean of their
//! neighbours swung by 4.0-5.6 points (standard deviation) as separate
//! processes, by 6.2-13.7 as phases of one continuous client. Every churn
//! operation makes new sockets, so keeping one process pair buys nothing,
//! and a continuous client blocked in connect() cannot end its phase.
//! `Quiet` waits until no other eBPF tracer is around, and marks the runs
//! it could not keep clean.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    loadgen::Workload,
    phases::{ping_pong_phases, Phases},
    plan::{Binaries, Plan},
    proc,
    reference::{self, Reference},
    stats::{Pairs, Run, Sandwich},
    tracer::{Mode, TracerProcess},
    workload::run_workload,
};

/// Waits, within a time budget for the whole bench, until no other process
/// holds eBPF tracing programs: someone else's tracer or test attached to
/// the same hooks would slow the "untraced" runs down.
pub struct Quiet {
    budget: Duration,
    /// Names of the processes seen holding tracing programs.
    pub seen: BTreeSet<String>,
}

impl Quiet {
    pub fn new(budget_secs: u64) -> Self {
        Quiet { budget: Duration::from_secs(budget_secs), seen: Default::default() }
    }

    /// True if no foreign tracer is around (now, or after waiting).
    pub fn check(&mut self, exclude: &[u32], wait: bool) -> bool {
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
/// that slow drifts of the machine spread over all of them; with the
/// connection floor, A floor A B A (odd rounds) or A B A floor A (even
/// ones); in ping-pong, each reference program also runs between two
/// untraced runs (A ref1 A ref2 A ... A B A). Each attached run is
/// compared with the untraced runs on either side of it.
pub fn ab_rounds(
    binaries: &Binaries,
    mode: &Mode,
    plan: &Plan,
    quiet: &mut Quiet,
    reference_notes: &mut Vec<String>,
) -> Result<Vec<(Workload, Pairs)>> {
    let mut results: Vec<(Workload, Pairs)> = plan.workloads.iter().map(|w| (*w, Pairs::default())).collect();
    let mut references = plan.references.clone();
    for round in 1..=plan.rounds {
        for (workload, pairs) in &mut results {
            if *workload == Workload::PingPong {
                let quiet_before = quiet.check(&[], true);
                let mut phases = ping_pong_phases(round, binaries, mode, plan, &mut references, reference_notes)?;
                if !quiet_before || !quiet.check(&[], false) {
                    phases.mark_foreign_tracer();
                }
                eprintln!(
                    "xtask: bench: round {round}/{}: ping-pong (one pair of processes throughout): {}",
                    plan.rounds,
                    phases.describe()
                );
                add_phases(pairs, phases);
            } else if plan.conn_floor {
                floor_round(binaries, mode, plan, quiet, *workload, round, pairs, reference_notes)?;
            } else {
                ab_triplet(binaries, mode, plan, quiet, *workload, round, pairs)?;
            }
        }
    }
    Ok(results)
}

/// Files one continuous ping-pong round under its workload's results.
fn add_phases(pairs: &mut Pairs, phases: Phases) {
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
    pairs.quick_tracer.extend(phases.quick_tracer);
    pairs.untraced.push(phases.tracer.before);
    pairs.traced.push(phases.tracer.run);
    pairs.untraced_after.push(phases.tracer.after);
    pairs.tracer_cpu_percent.push(phases.tracer_cpu);
}

/// One untraced run, after waiting for other tracers to go.
fn untraced_run(binaries: &Binaries, plan: &Plan, quiet: &mut Quiet, workload: Workload) -> Result<Run> {
    let quiet_before = quiet.check(&[], true);
    let mut run = run_workload(&binaries.loadgen, workload, &plan.load)
        .with_context(|| format!("untraced {} run", workload.name()))?;
    run.foreign_tracer = !quiet_before || !quiet.check(&[], false);
    Ok(run)
}

/// One run with the tracer attached; also returns the tracer's CPU use
/// during it, in percent of one CPU.
fn traced_run(
    binaries: &Binaries,
    mode: &Mode,
    plan: &Plan,
    quiet: &mut Quiet,
    workload: Workload,
) -> Result<(Run, f64)> {
    let tracer = TracerProcess::start(&binaries.tracer, mode, plan.interval)?;
    std::thread::sleep(plan.settle);
    let quiet_before = quiet.check(&[tracer.pid()], false);
    let (cpu_before, clock) = (tracer.cpu_seconds()?, Instant::now());
    let mut traced = run_workload(&binaries.loadgen, workload, &plan.load)
        .with_context(|| format!("traced {} run", workload.name()))?;
    let tracer_cpu = (tracer.cpu_seconds()? - cpu_before) / clock.elapsed().as_secs_f64() * 100.0;
    traced.foreign_tracer = !quiet_before || !quiet.check(&[tracer.pid()], false);
    tracer.stop()?;
    Ok((traced, tracer_cpu))
}

/// Untraced, traced, untraced runs of one workload (not ping-pong), filed
/// under its results.
fn ab_triplet(
    binaries: &Binaries,
    mode: &Mode,
    plan: &Plan,
    quiet: &mut Quiet,
    workload: Workload,
    round: u32,
    pairs: &mut Pairs,
) -> Result<()> {
    let untraced = untraced_run(binaries, plan, quiet, workload)?;
    let (traced, tracer_cpu) = traced_run(binaries, mode, plan, quiet, workload)?;
    let after = untraced_run(binaries, plan, quiet, workload)?;
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
    Ok(())
}

/// One run with `reference` attached, after waiting for other tracers to
/// go; a note for the report if some of its tracepoints are missing here.
fn reference_run(
    binaries: &Binaries,
    plan: &Plan,
    quiet: &mut Quiet,
    workload: Workload,
    reference: Reference,
    reference_notes: &mut Vec<String>,
) -> Result<Run> {
    let quiet_before = quiet.check(&[], true);
    let attached =
        reference::Attached::attach(reference).with_context(|| format!("attaching {}", reference.short()))?;
    if let Some(note) = attached.missing_note(reference) {
        if !reference_notes.contains(&note) {
            eprintln!("xtask: bench: {note}");
            reference_notes.push(note);
        }
    }
    let mut run = run_workload(&binaries.loadgen, workload, &plan.load)
        .with_context(|| format!("{} {} run", reference.short(), workload.name()))?;
    drop(attached);
    run.foreign_tracer = !quiet_before || !quiet.check(&[], false);
    Ok(run)
}

/// Where the connection floor goes in round `round`: before the tracer
/// in odd rounds, after it in even ones, so neither always runs first.
pub fn floor_first(round: u32) -> bool {
    round % 2 == 1
}

/// One round of a workload (not ping-pong) with the connection floor: five
/// runs, A floor A B A or A B A floor A; the floor and the tracer share the
/// untraced run between them. Filed under the workload's results: the
/// tracer's triplet as in [`ab_triplet`], the floor's as a reference
/// sandwich.
#[allow(clippy::too_many_arguments)]
fn floor_round(
    binaries: &Binaries,
    mode: &Mode,
    plan: &Plan,
    quiet: &mut Quiet,
    workload: Workload,
    round: u32,
    pairs: &mut Pairs,
    reference_notes: &mut Vec<String>,
) -> Result<()> {
    let floor = Reference::ConnFloor;
    let first = untraced_run(binaries, plan, quiet, workload)?;
    let (floor_sandwich, tracer, tracer_cpu) = if floor_first(round) {
        let floor_run = reference_run(binaries, plan, quiet, workload, floor, reference_notes)?;
        let middle = untraced_run(binaries, plan, quiet, workload)?;
        let (traced, tracer_cpu) = traced_run(binaries, mode, plan, quiet, workload)?;
        let last = untraced_run(binaries, plan, quiet, workload)?;
        (
            Sandwich { before: first, run: floor_run, after: middle },
            Sandwich { before: middle, run: traced, after: last },
            tracer_cpu,
        )
    } else {
        let (traced, tracer_cpu) = traced_run(binaries, mode, plan, quiet, workload)?;
        let middle = untraced_run(binaries, plan, quiet, workload)?;
        let floor_run = reference_run(binaries, plan, quiet, workload, floor, reference_notes)?;
        let last = untraced_run(binaries, plan, quiet, workload)?;
        (
            Sandwich { before: middle, run: floor_run, after: last },
            Sandwich { before: first, run: traced, after: middle },
            tracer_cpu,
        )
    };
    // The five runs in the order they ran.
    let order: [(&str, &Run); 5] = if floor_first(round) {
        [
            ("A", &floor_sandwich.before),
            ("conn-floor", &floor_sandwich.run),
            ("A", &tracer.before),
            ("tracer", &tracer.run),
            ("A", &tracer.after),
        ]
    } else {
        [
            ("A", &tracer.before),
            ("tracer", &tracer.run),
            ("A", &floor_sandwich.before),
            ("conn-floor", &floor_sandwich.run),
            ("A", &floor_sandwich.after),
        ]
    };
    let parts: Vec<String> = order
        .iter()
        .map(|(what, run)| match *what {
            "tracer" => format!("tracer {} ({tracer_cpu:.1}% CPU)", low_ns(run)),
            _ => format!("{what} {}", low_ns(run)),
        })
        .collect();
    eprintln!(
        "xtask: bench: round {round}/{}: {:<9} {} CPU ns/op (quiet slices){}",
        plan.rounds,
        workload.name(),
        parts.join(" | "),
        if order.iter().any(|(_, r)| r.foreign_tracer) { " (another eBPF tracer was around)" } else { "" }
    );
    match pairs.references.iter_mut().find(|(r, _)| *r == floor) {
        Some((_, sandwiches)) => sandwiches.push(floor_sandwich),
        None => pairs.references.push((floor, vec![floor_sandwich])),
    }
    pairs.untraced.push(tracer.before);
    pairs.traced.push(tracer.run);
    pairs.untraced_after.push(tracer.after);
    pairs.tracer_cpu_percent.push(tracer_cpu);
    Ok(())
}

/// A run's quiet-slice cost per operation (or its mean), for the
/// progress lines.
fn low_ns(run: &Run) -> String {
    match run.low_ns_per_op.or(run.cpu_ns_per_op()) {
        Some(ns) => format!("{ns:.0}"),
        None => format!("{:.0} (wall)", 1e9 / run.ops_per_sec()),
    }
}

/// A run's cost per operation, for the progress lines.
fn per_op(run: &Run) -> String {
    match (run.cpu_ns_per_op(), run.low_ns_per_op) {
        (Some(ns), Some(low)) => format!("{ns:>7.0} CPU ns/op (quiet slices {low:>7.0})"),
        (Some(ns), None) => format!("{ns:>7.0} CPU ns/op"),
        _ => format!("{:>7.0} ns/op", 1e9 / run.ops_per_sec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_and_the_tracer_take_turns_going_first() {
        assert!(floor_first(1));
        assert!(!floor_first(2));
        assert_eq!((1..=5).filter(|r| floor_first(*r)).count(), 3);
    }
}
