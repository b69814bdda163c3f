//! The continuous ping-pong round: one client/server pair runs throughout
//! while the bench changes what is attached underneath — untraced, each
//! reference program, a rapid alternation of the raw-tracepoint references,
//! the tracer — each attached phase between two untraced ones. The phases
//! are stamped on CLOCK_MONOTONIC (`Timeline`) and matched afterwards with
//! the 100 ms slices the client reported, into one `Run` per phase
//! (`Phases`).

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{
    child::{field, fields, Spawned},
    loadgen::{self, Workload},
    plan::{Binaries, Plan},
    reference::{self, Reference},
    stats::{self, Run, Sandwich},
    tracer::{Mode, TracerProcess},
    workload::{client_command, finish_pair, payload_per_op, start_server},
};

/// What one continuous ping-pong round measured.
pub struct Phases {
    pub references: Vec<(Reference, Sandwich)>,
    pub tracer: Sandwich,
    pub tracer_cpu: f64,
    /// Rapid alternation: per reference, the CPU ns per operation it added
    /// in each cycle (its phase against the untraced phase of the cycle).
    pub quick: Vec<(Reference, Vec<f64>)>,
    /// Rapid alternation of the tracer's own programs (taken over from the
    /// agent, on every hook it attached): per cycle, (CPU ns per operation they added,
    /// the same less what the empty program added in that cycle).
    pub quick_tracer: Vec<(f64, f64)>,
}

impl Phases {
    pub fn mark_foreign_tracer(&mut self) {
        for sandwich in self.references.iter_mut().map(|(_, s)| s).chain([&mut self.tracer]) {
            for run in [&mut sandwich.before, &mut sandwich.run, &mut sandwich.after] {
                run.foreign_tracer = true;
            }
        }
    }

    pub fn describe(&self) -> String {
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
        if !self.quick_tracer.is_empty() {
            let added: Vec<f64> = self.quick_tracer.iter().map(|q| q.0).collect();
            let above: Vec<f64> = self.quick_tracer.iter().map(|q| q.1).collect();
            parts.push(format!(
                "tracer's programs add {:.0}, {:.0} above the floor (rapid alternation)",
                stats::median(&added),
                stats::median(&above)
            ));
        }
        format!("{} CPU ns/op (quiet slices)", parts.join(" | "))
    }
}

/// What is attached during one phase of a continuous round.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Untraced,
    Reference(Reference),
    Tracer,
    /// A short phase of the rapid alternation, in cycle N: nothing
    /// attached (None) or a reference.
    Quick(usize, Option<Reference>),
    /// A short phase of the rapid alternation, in cycle N, with the
    /// tracer's own programs attached (the agent stopped).
    QuickTracer(usize),
}

/// Length of one phase of the rapid alternation, and the cycles of it per
/// round.
pub const QUICK_PHASE: Duration = Duration::from_millis(300);
pub const QUICK_CYCLES: usize = 12;

/// What was attached when, as the bench stamped it (CLOCK_MONOTONIC ns,
/// the clock of the client's slice ends).
struct Timeline {
    /// Length of a full phase.
    phase_len: Duration,
    stamps: Vec<(Phase, u64, u64)>,
}

impl Timeline {
    /// A full phase: `phase_len` of whatever is attached now.
    fn measure(&mut self, phase: Phase) {
        let start = loadgen::monotonic_ns();
        std::thread::sleep(self.phase_len);
        self.stamps.push((phase, start, loadgen::monotonic_ns()));
    }

    /// A short phase of the rapid alternation, after 30 ms for the attach
    /// or detach to settle.
    fn quick(&mut self, phase: Phase) {
        std::thread::sleep(Duration::from_millis(30));
        let start = loadgen::monotonic_ns();
        std::thread::sleep(QUICK_PHASE);
        self.stamps.push((phase, start, loadgen::monotonic_ns()));
    }
}

/// The gap between attaching or detaching and the next full phase.
fn pause() {
    std::thread::sleep(Duration::from_millis(150));
}

/// One ping-pong round on a single client/server pair that runs
/// throughout, while the bench changes what is attached underneath:
/// untraced, then each reference program and the tracer (the tracer first
/// in even rounds, last in odd ones, so neither side always follows the
/// round's first phase), each followed by another untraced phase, then the
/// rapid alternation. Processes, sockets and their memory stay the
/// same, so the comparison is not disturbed by where a new pair of
/// processes happens to land; each phase's figure is the low quantile of
/// the 100 ms slices that fall wholly inside it. References that cannot
/// attach are dropped from `references` (and said in `reference_notes`).
pub fn ping_pong_phases(
    round: u32,
    binaries: &Binaries,
    mode: &Mode,
    plan: &Plan,
    references: &mut Vec<Reference>,
    reference_notes: &mut Vec<String>,
) -> Result<Phases> {
    let phase_len = (plan.load.window / 2).max(Duration::from_secs(1));
    let cpu = plan.load.cpu.to_string();
    let (mut server, port) = start_server(&binaries.loadgen, Workload::PingPong, &cpu)?;
    let mut client = Spawned::start_with_stdin(
        client_command(&binaries.loadgen, Workload::PingPong, port, &cpu, &mut server).args([
            "--duration-ms",
            "0",
            "--warmup-ms",
            &plan.load.warmup.as_millis().to_string(),
            "--until-stdin-closes",
        ]),
        Stdio::piped(),
    )?;
    let stdin = client.child_mut().stdin.take().context("the client's stdin")?;
    std::thread::sleep(plan.load.warmup + Duration::from_millis(100));

    let mut timeline = Timeline { phase_len, stamps: Vec::new() };
    timeline.measure(Phase::Untraced);
    let tracer_first = round.is_multiple_of(2);
    let mut tracer = None;
    if tracer_first {
        tracer = Some(tracer_phase(&mut timeline, binaries, mode, plan)?);
    }
    *references = reference_phases(&mut timeline, references, reference_notes);
    if !tracer_first {
        tracer = Some(tracer_phase(&mut timeline, binaries, mode, plan)?);
    }
    let (tracer_cpu, taken) = tracer.context("the tracer's phase")?;
    let taken = match taken {
        Ok(taken) => Some(taken),
        Err(error) => {
            let note = format!("the tracer's own programs not alternated rapidly: {error:#}");
            if !reference_notes.contains(&note) {
                eprintln!("xtask: bench: {note}");
                reference_notes.push(note);
            }
            None
        }
    };
    rapid_alternation(&mut timeline, references, taken.as_ref())?;
    drop(taken);
    drop(stdin);

    let (client_line, server_line) = finish_pair(&mut client, &mut server, Duration::from_secs(30))?;
    let runs = runs_per_phase(&timeline.stamps, &client_line, &server_line)?;
    if runs.iter().any(|(phase, run)| run.ops <= 0.0 && !matches!(phase, Phase::Quick(..) | Phase::QuickTracer(_))) {
        bail!("a ping-pong phase had no whole slice (phases of {} s)", phase_len.as_secs_f64());
    }
    let quick = quick_added(&runs, references);
    let quick_tracer = quick_tracer_added(&runs);
    Ok(assemble(runs, tracer_cpu, quick, quick_tracer))
}

/// Each reference attached for a full phase, then an untraced phase;
/// returns the references that could attach.
fn reference_phases(
    timeline: &mut Timeline,
    references: &[Reference],
    reference_notes: &mut Vec<String>,
) -> Vec<Reference> {
    let mut kept = Vec::new();
    for reference in references {
        match reference::Attached::attach(*reference) {
            Ok(attached) => {
                pause();
                timeline.measure(Phase::Reference(*reference));
                drop(attached);
                pause();
                timeline.measure(Phase::Untraced);
                kept.push(*reference);
            }
            Err(error) => {
                let note = format!("{} not measured: {error:#}", reference.short());
                eprintln!("xtask: bench: {note}");
                reference_notes.push(note);
            }
        }
    }
    kept
}

/// Rapid alternation of the raw-tracepoint references and, when taken
/// over from the agent, the tracer's own programs on all their hooks (each
/// attached and detached in a millisecond): the machine's slow swings
/// cancel out. Odd cycles run the tracer's programs before the references,
/// even ones after. Ends with an untraced full phase.
fn rapid_alternation(
    timeline: &mut Timeline,
    references: &[Reference],
    tracer: Option<&reference::TakenOver>,
) -> Result<()> {
    let quick_refs: Vec<Reference> = references.iter().copied().filter(|r| *r != Reference::Bpftrace).collect();
    if quick_refs.is_empty() && tracer.is_none() {
        return Ok(());
    }
    let tracer_quick = |timeline: &mut Timeline, cycle: usize| -> Result<()> {
        if let Some(tracer) = tracer {
            let links = tracer.attach()?;
            timeline.quick(Phase::QuickTracer(cycle));
            drop(links);
        }
        Ok(())
    };
    for cycle in 0..QUICK_CYCLES {
        timeline.quick(Phase::Quick(cycle, None));
        if cycle % 2 == 1 {
            tracer_quick(timeline, cycle)?;
        }
        for reference in &quick_refs {
            let attached = reference::Attached::attach(*reference)?;
            timeline.quick(Phase::Quick(cycle, Some(*reference)));
            drop(attached);
        }
        if cycle % 2 == 0 {
            tracer_quick(timeline, cycle)?;
        }
    }
    pause();
    timeline.measure(Phase::Untraced);
    Ok(())
}

/// The tracer attached for a full phase, then an untraced one, then its
/// programs without the agent (taken over) and another untraced one; returns the
/// tracer's CPU use during its phase, in percent of one CPU, and its
/// programs (those on the tracepoints of `conn-floor`; the send/receive
/// pair at least), taken over before it was stopped (for the rapid
/// alternation).
fn tracer_phase(
    timeline: &mut Timeline,
    binaries: &Binaries,
    mode: &Mode,
    plan: &Plan,
) -> Result<(f64, Result<reference::TakenOver>)> {
    let tracer = TracerProcess::start(&binaries.tracer, mode, plan.interval)?;
    std::thread::sleep(plan.settle);
    let (cpu_before, clock) = (tracer.cpu_seconds()?, Instant::now());
    timeline.measure(Phase::Tracer);
    let tracer_cpu = (tracer.cpu_seconds()? - cpu_before) / clock.elapsed().as_secs_f64() * 100.0;
    let taken =
        reference::TakenOver::from_process(tracer.pid(), &reference::TRACER_TRACEPOINTS, &reference::TRACEPOINTS);
    tracer.stop()?;
    pause();
    timeline.measure(Phase::Untraced);
    // The same programs and maps for a full phase without the agent, right
    // after the agent's: what the agent process adds apart from them.
    if let Ok(taken) = &taken {
        let links = taken.attach()?;
        pause();
        timeline.measure(Phase::Reference(Reference::TracerPrograms));
        drop(links);
        pause();
        timeline.measure(Phase::Untraced);
    }
    Ok((tracer_cpu, taken))
}

/// One `Run` per stamped phase, from the client's slices that fall wholly
/// inside it (syscalls per operation over the whole round).
fn runs_per_phase(stamps: &[(Phase, u64, u64)], client_line: &str, server_line: &str) -> Result<Vec<(Phase, Run)>> {
    let client_fields = fields(client_line);
    let server_fields = fields(server_line);
    let total_ops: f64 = field(&client_fields, "total_ops")?;
    let syscalls: f64 = field::<f64>(&client_fields, "syscalls")? + field::<f64>(&server_fields, "syscalls")?;
    let list = |name: &str| -> Vec<f64> {
        client_fields.get(name).map(|l| l.split(',').filter_map(|v| v.parse().ok()).collect()).unwrap_or_default()
    };
    let (slices, slice_ops, slice_ends) = (list("slices"), list("slice_ops"), list("slice_ends"));
    if slices.is_empty() || slices.len() != slice_ops.len() || slices.len() != slice_ends.len() {
        bail!("the ping-pong client reported no usable slices: {client_line}");
    }
    let runs = stamps
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
                total_ops: ops,
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
    Ok(runs)
}

/// The rapid alternation: per reference, each quick phase against the
/// untraced one of its cycle (mean CPU ns per operation over the phase's
/// slices).
fn quick_added(runs: &[(Phase, Run)], references: &[Reference]) -> Vec<(Reference, Vec<f64>)> {
    let mut quick: Vec<(Reference, Vec<f64>)> = Vec::new();
    for cycle in 0..QUICK_CYCLES {
        let mean_of = |want: Option<Reference>| quick_mean(runs, Phase::Quick(cycle, want));
        let Some(untraced) = mean_of(None) else { continue };
        for reference in references {
            if let Some(with) = mean_of(Some(*reference)) {
                match quick.iter_mut().find(|(r, _)| r == reference) {
                    Some((_, added)) => added.push(with - untraced),
                    None => quick.push((*reference, vec![with - untraced])),
                }
            }
        }
    }
    quick
}

/// Mean CPU ns per operation over the slices of a short phase (`None` if
/// it had none).
fn quick_mean(runs: &[(Phase, Run)], want: Phase) -> Option<f64> {
    runs.iter().find(|(phase, run)| *phase == want && run.ops > 0.0).and_then(|(_, run)| run.cpu_ns_per_op())
}

/// The rapid alternation of the tracer's own programs: per cycle, what they
/// added against the cycle's untraced phase, and that less what the empty
/// program added in the same cycle (cycles missing either are left out).
fn quick_tracer_added(runs: &[(Phase, Run)]) -> Vec<(f64, f64)> {
    let mean_of = |want: Phase| quick_mean(runs, want);
    (0..QUICK_CYCLES)
        .filter_map(|cycle| {
            let untraced = mean_of(Phase::Quick(cycle, None))?;
            let tracer = mean_of(Phase::QuickTracer(cycle))?;
            let floor = mean_of(Phase::Quick(cycle, Some(Reference::Floor)))?;
            Some((tracer - untraced, tracer - floor))
        })
        .collect()
}

/// Each attached full phase with the untraced phases on either side of it.
fn assemble(
    runs: Vec<(Phase, Run)>,
    tracer_cpu: f64,
    quick: Vec<(Reference, Vec<f64>)>,
    quick_tracer: Vec<(f64, f64)>,
) -> Phases {
    let runs: Vec<(Phase, Run)> =
        runs.into_iter().filter(|(phase, _)| !matches!(phase, Phase::Quick(..) | Phase::QuickTracer(_))).collect();
    let sandwich = |i: usize| Sandwich { before: runs[i - 1].1, run: runs[i].1, after: runs[i + 1].1 };
    let tracer_at = runs.iter().position(|(phase, _)| *phase == Phase::Tracer).expect("a tracer phase");
    let mut phases = Phases { references: Vec::new(), tracer: sandwich(tracer_at), tracer_cpu, quick, quick_tracer };
    for (i, (phase, _)) in runs.iter().enumerate() {
        if let Phase::Reference(reference) = phase {
            phases.references.push((*reference, sandwich(i)));
        }
    }
    phases
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(ns_per_op: f64) -> Run {
        Run {
            ops: 1000.0,
            total_ops: 1000.0,
            wall_secs: 0.3,
            cpu_secs: Some(ns_per_op * 1000.0 / 1e9),
            syscalls_per_op: 4.0,
            payload_per_op: 64.0,
            foreign_tracer: false,
            low_ns_per_op: Some(ns_per_op),
        }
    }

    #[test]
    fn the_tracers_programs_are_read_against_untraced_and_the_floor_of_their_own_cycle() {
        let runs = vec![
            (Phase::Quick(0, None), run(10_000.0)),
            (Phase::Quick(0, Some(Reference::Floor)), run(10_300.0)),
            (Phase::QuickTracer(0), run(10_350.0)),
            // A slow cycle: everything 2,000 ns slower, the differences the same.
            (Phase::QuickTracer(1), run(12_360.0)),
            (Phase::Quick(1, None), run(12_000.0)),
            (Phase::Quick(1, Some(Reference::Floor)), run(12_290.0)),
            // No floor phase in this cycle: left out.
            (Phase::Quick(2, None), run(10_000.0)),
            (Phase::QuickTracer(2), run(10_400.0)),
        ];
        let quick = quick_tracer_added(&runs);
        assert_eq!(quick.len(), 2);
        assert!((quick[0].0 - 350.0).abs() < 1e-6 && (quick[0].1 - 50.0).abs() < 1e-6, "{quick:?}");
        assert!((quick[1].0 - 360.0).abs() < 1e-6 && (quick[1].1 - 70.0).abs() < 1e-6, "{quick:?}");
    }

    #[test]
    fn the_tracer_is_found_wherever_it_ran_in_the_round() {
        // Even rounds: the tracer right after the first untraced phase.
        let runs = vec![
            (Phase::Untraced, run(10_000.0)),
            (Phase::Tracer, run(10_100.0)),
            (Phase::Untraced, run(10_200.0)),
            (Phase::Reference(Reference::Floor), run(10_050.0)),
            (Phase::Quick(0, None), run(1.0)),
            (Phase::Untraced, run(10_400.0)),
        ];
        let phases = assemble(runs, 0.1, Vec::new(), Vec::new());
        assert_eq!(phases.tracer.before.low_ns_per_op, Some(10_000.0));
        assert_eq!(phases.tracer.run.low_ns_per_op, Some(10_100.0));
        assert_eq!(phases.tracer.after.low_ns_per_op, Some(10_200.0));
        let (reference, floor) = &phases.references[0];
        assert_eq!(*reference, Reference::Floor);
        assert_eq!((floor.before.low_ns_per_op, floor.after.low_ns_per_op), (Some(10_200.0), Some(10_400.0)));
    }
}
