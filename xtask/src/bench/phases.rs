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
/// untraced, then each reference program and the tracer, each followed by
/// another untraced phase. Processes, sockets and their memory stay the
/// same, so the comparison is not disturbed by where a new pair of
/// processes happens to land; each phase's figure is the low quantile of
/// the 100 ms slices that fall wholly inside it. References that cannot
/// attach are dropped from `references` (and said in `reference_notes`).
pub fn ping_pong_phases(
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
    *references = reference_phases(&mut timeline, references, reference_notes);
    rapid_alternation(&mut timeline, references)?;
    let tracer_cpu = tracer_phase(&mut timeline, binaries, mode, plan)?;
    drop(stdin);

    let (client_line, server_line) = finish_pair(&mut client, &mut server, Duration::from_secs(30))?;
    let runs = runs_per_phase(&timeline.stamps, &client_line, &server_line)?;
    if runs.iter().any(|(phase, run)| run.ops <= 0.0 && !matches!(phase, Phase::Quick(..))) {
        bail!("a ping-pong phase had no whole slice (phases of {} s)", phase_len.as_secs_f64());
    }
    let quick = quick_added(&runs, references);
    Ok(assemble(runs, tracer_cpu, quick))
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

/// Rapid alternation of the raw-tracepoint references (attached and
/// detached in a millisecond): the machine's slow swings cancel out. Ends
/// with an untraced full phase.
fn rapid_alternation(timeline: &mut Timeline, references: &[Reference]) -> Result<()> {
    let quick_refs: Vec<Reference> = references.iter().copied().filter(|r| *r != Reference::Bpftrace).collect();
    if quick_refs.is_empty() {
        return Ok(());
    }
    for cycle in 0..QUICK_CYCLES {
        timeline.quick(Phase::Quick(cycle, None));
        for reference in &quick_refs {
            let attached = reference::Attached::attach(*reference)?;
            timeline.quick(Phase::Quick(cycle, Some(*reference)));
            drop(attached);
        }
    }
    pause();
    timeline.measure(Phase::Untraced);
    Ok(())
}

/// The tracer attached for a full phase, then an untraced one; returns the
/// tracer's CPU use during its phase, in percent of one CPU.
fn tracer_phase(timeline: &mut Timeline, binaries: &Binaries, mode: &Mode, plan: &Plan) -> Result<f64> {
    let tracer = TracerProcess::start(&binaries.tracer, mode, plan.interval)?;
    std::thread::sleep(plan.settle);
    let (cpu_before, clock) = (tracer.cpu_seconds()?, Instant::now());
    timeline.measure(Phase::Tracer);
    let tracer_cpu = (tracer.cpu_seconds()? - cpu_before) / clock.elapsed().as_secs_f64() * 100.0;
    tracer.stop()?;
    pause();
    timeline.measure(Phase::Untraced);
    Ok(tracer_cpu)
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
        let mean_of = |want: Option<Reference>| {
            runs.iter()
                .find(|(phase, run)| *phase == Phase::Quick(cycle, want) && run.ops > 0.0)
                .and_then(|(_, run)| run.cpu_ns_per_op())
        };
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

/// Each attached full phase with the untraced phases on either side of it;
/// the tracer's is the last but one.
fn assemble(runs: Vec<(Phase, Run)>, tracer_cpu: f64, quick: Vec<(Reference, Vec<f64>)>) -> Phases {
    let runs: Vec<(Phase, Run)> = runs.into_iter().filter(|(phase, _)| !matches!(phase, Phase::Quick(..))).collect();
    let sandwich = |i: usize| Sandwich { before: runs[i - 1].1, run: runs[i].1, after: runs[i + 1].1 };
    let mut phases = Phases { references: Vec::new(), tracer: sandwich(runs.len() - 2), tracer_cpu, quick };
    for (i, (phase, _)) in runs.iter().enumerate() {
        if let Phase::Reference(reference) = phase {
            phases.references.push((*reference, sandwich(i)));
        }
    }
    phases
}
