//! The bench's arithmetic, as plain data and pure functions: medians and
//! spreads over rounds, traced/untraced ratios, and the added cost per
//! operation and per send/recv syscall.

use super::reference::Reference;

/// One measured run of a workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Run {
    /// Operations in the measured window (client side).
    pub ops: f64,
    /// Operations of the whole run, warm-up included (what the kernel's
    /// program accounting over the run is divided by).
    pub total_ops: f64,
    pub wall_secs: f64,
    /// CPU time client and server got in the window, when readable.
    pub cpu_secs: Option<f64>,
    /// Send/recv syscalls of client and server per operation (whole run).
    pub syscalls_per_op: f64,
    /// Payload bytes the client writes per operation.
    pub payload_per_op: f64,
    /// Another process had eBPF tracing programs loaded before or after the
    /// run (another tracer or test may have been attached during it).
    pub foreign_tracer: bool,
    /// CPU ns per operation of the run's quieter slices: the
    /// [`SLICE_QUANTILE`] of its 100 ms slices (see [`low_quantile`]).
    pub low_ns_per_op: Option<f64>,
}

/// Which quantile of a run's slices stands for the run. Interference from
/// outside the machine's control only ever adds time, in bursts: a low
/// quantile is the operation's own cost, and stable from run to run where
/// the mean of the run is not.
pub const SLICE_QUANTILE: f64 = 0.2;

/// The `q` quantile (0..=1, nearest rank) of `values`; None if empty.
pub fn low_quantile(values: &[f64], q: f64) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let rank = ((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    Some(sorted[rank])
}

impl Run {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops / self.wall_secs
    }

    pub fn cpu_ns_per_op(&self) -> Option<f64> {
        Some(self.cpu_secs? * 1e9 / self.ops)
    }

    /// Share of the pinned CPU the load generator got (1.0 on a quiet machine).
    pub fn cpu_share(&self) -> Option<f64> {
        Some(self.cpu_secs? / self.wall_secs)
    }
}

/// What "time per operation" is measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// CPU time of client and server per operation: stays comparable when
    /// other work shares the pinned CPU.
    Cpu,
    /// Wall time per operation (1 / throughput): CPU time when the pinned
    /// CPU is all ours.
    Wall,
}

/// The untraced (A) and traced (B) runs of one workload, round by round.
/// Each traced run is compared with the untraced runs just before and just
/// after it (when there is one after), so that slow drifts of the machine
/// cancel out.
#[derive(Debug, Clone, Default)]
pub struct Pairs {
    /// The untraced run just before each traced run.
    pub untraced: Vec<Run>,
    pub traced: Vec<Run>,
    /// The untraced run just after each traced run (may be empty).
    pub untraced_after: Vec<Run>,
    /// The tracer's CPU use during each traced run, in % of one CPU.
    pub tracer_cpu_percent: Vec<f64>,
    /// Runs with a reference program attached instead of the tracer, one
    /// per round, each between two untraced runs.
    pub references: Vec<(Reference, Vec<Sandwich>)>,
    /// Rapid alternation (ping-pong): CPU ns per operation each reference
    /// added, one figure per cycle.
    pub quick_added: Vec<(Reference, Vec<f64>)>,
    /// Rapid alternation (ping-pong) of the tracer's own send/receive
    /// programs: per cycle, (CPU ns per operation they added, the same
    /// less what the empty program added in that cycle).
    pub quick_tracer: Vec<(f64, f64)>,
}

/// A run with something attached, between two untraced runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sandwich {
    pub before: Run,
    pub run: Run,
    pub after: Run,
}

/// The median; the mean of the middle two for an even count; NaN if empty.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// (min, max); NaNs if empty.
pub fn spread(values: &[f64]) -> (f64, f64) {
    let finite = values.iter().copied().filter(|v| !v.is_nan());
    let min = finite.clone().fold(f64::INFINITY, f64::min);
    let max = finite.fold(f64::NEG_INFINITY, f64::max);
    if min.is_finite() || max.is_finite() {
        (min, max)
    } else {
        (f64::NAN, f64::NAN)
    }
}

/// How far `ratio` is below `floor_ratio`, in points (hundredths of a
/// throughput ratio): 0.95 against a floor of 0.97 is a gap of 2 points.
pub fn gap_points(floor_ratio: f64, ratio: f64) -> f64 {
    (floor_ratio - ratio) * 100.0
}

/// The gap in points that `above_ns` more per operation than the floor's
/// would make: untraced `untraced_ns` per operation, `floor_ns` with the
/// floor attached (what the kernel's accounting of the programs predicts
/// for the throughput).
pub fn derived_gap_points(untraced_ns: f64, floor_ns: f64, above_ns: f64) -> f64 {
    gap_points(untraced_ns / floor_ns, untraced_ns / (floor_ns + above_ns))
}

/// CPU seconds per minute of wall time.
pub fn cpu_seconds_per_minute(cpu_secs: f64, wall_secs: f64) -> f64 {
    cpu_secs / wall_secs * 60.0
}

impl Pairs {
    /// The rounds the figures use: (untraced before, traced, untraced
    /// after), without those with another eBPF tracer around if there is
    /// any such round; all of them otherwise.
    pub fn used(&self) -> Vec<(Run, Run, Option<Run>)> {
        let all: Vec<(Run, Run, Option<Run>)> = self
            .untraced
            .iter()
            .zip(&self.traced)
            .enumerate()
            .map(|(i, (a, b))| (*a, *b, self.untraced_after.get(i).copied()))
            .collect();
        let clean: Vec<(Run, Run, Option<Run>)> = all
            .iter()
            .copied()
            .filter(|(a, b, after)| !a.foreign_tracer && !b.foreign_tracer && !after.is_some_and(|r| r.foreign_tracer))
            .collect();
        if clean.is_empty() {
            all
        } else {
            clean
        }
    }

    pub fn basis(&self) -> Basis {
        let runs = self.used().into_iter().flat_map(|(a, b, after)| [Some(a), Some(b), after]).flatten();
        if runs.clone().all(|r| r.cpu_secs.is_some()) {
            Basis::Cpu
        } else {
            Basis::Wall
        }
    }

    /// Nanoseconds per operation of one run, in this workload's basis: the
    /// low quantile of its slices where the load generator measured them.
    fn ns_per_op(&self, run: &Run) -> f64 {
        match (self.basis(), run.low_ns_per_op, run.cpu_ns_per_op()) {
            (Basis::Cpu, Some(ns), _) => ns,
            (Basis::Cpu, None, Some(ns)) => ns,
            _ => 1e9 / run.ops_per_sec(),
        }
    }

    /// The untraced time per operation around one attached run: the mean
    /// of the runs before and after it.
    fn baseline(&self, before: &Run, after: Option<&Run>) -> f64 {
        match after {
            Some(after) => (self.ns_per_op(before) + self.ns_per_op(after)) / 2.0,
            None => self.ns_per_op(before),
        }
    }

    /// Nanoseconds per operation of each used untraced baseline (traced:
    /// false) or traced run (true).
    pub fn ns_per_op_list(&self, traced: bool) -> Vec<f64> {
        self.used()
            .iter()
            .map(|(a, b, after)| if traced { self.ns_per_op(b) } else { self.baseline(a, after.as_ref()) })
            .collect()
    }

    pub fn untraced_ns_per_op(&self) -> f64 {
        median(&self.ns_per_op_list(false))
    }

    pub fn traced_ns_per_op(&self) -> f64 {
        median(&self.ns_per_op_list(true))
    }

    /// Per-round traced/untraced throughput ratios.
    fn ratios(&self) -> Vec<f64> {
        self.used().iter().map(|(a, b, after)| self.baseline(a, after.as_ref()) / self.ns_per_op(b)).collect()
    }

    /// Traced/untraced throughput (per CPU-second, or per second): the
    /// median of the per-round ratios.
    pub fn ratio(&self) -> f64 {
        median(&self.ratios())
    }

    /// Min and max of the per-round ratios.
    pub fn ratio_spread(&self) -> (f64, f64) {
        spread(&self.ratios())
    }

    /// Wall-clock throughput, medians: (untraced, traced).
    pub fn ops_per_sec(&self) -> (f64, f64) {
        let used = self.used();
        let untraced: Vec<f64> = used.iter().map(|(a, _, _)| a.ops_per_sec()).collect();
        let traced: Vec<f64> = used.iter().map(|(_, b, _)| b.ops_per_sec()).collect();
        (median(&untraced), median(&traced))
    }

    /// Share of the pinned CPU the load generator got, medians: (untraced, traced).
    pub fn cpu_share(&self) -> (f64, f64) {
        let used = self.used();
        let untraced: Vec<f64> = used.iter().filter_map(|(a, _, _)| a.cpu_share()).collect();
        let traced: Vec<f64> = used.iter().filter_map(|(_, b, _)| b.cpu_share()).collect();
        (median(&untraced), median(&traced))
    }

    /// Send/recv syscalls per operation, median over the used runs.
    pub fn syscalls_per_op(&self) -> f64 {
        let all: Vec<f64> = self.used().iter().flat_map(|(a, b, _)| [a.syscalls_per_op, b.syscalls_per_op]).collect();
        median(&all)
    }

    /// What the tracer adds per operation: the median over rounds of the
    /// traced time minus its untraced baseline.
    pub fn added_ns_per_op(&self) -> f64 {
        let added: Vec<f64> =
            self.used().iter().map(|(a, b, after)| self.ns_per_op(b) - self.baseline(a, after.as_ref())).collect();
        median(&added)
    }

    /// The added time per operation shared among its send/recv syscalls.
    pub fn added_ns_per_syscall(&self) -> f64 {
        self.added_ns_per_op() / self.syscalls_per_op()
    }

    /// Time of one send/recv syscall without the tracer (the whole
    /// operation's time shared among its syscalls).
    pub fn untraced_ns_per_syscall(&self) -> f64 {
        self.untraced_ns_per_op() / self.syscalls_per_op()
    }

    /// Payload rate, medians: (untraced, traced), bytes per second of wall time.
    pub fn bytes_per_sec(&self) -> (f64, f64) {
        let used = self.used();
        let untraced: Vec<f64> = used.iter().map(|(a, _, _)| a.ops_per_sec() * a.payload_per_op).collect();
        let traced: Vec<f64> = used.iter().map(|(_, b, _)| b.ops_per_sec() * b.payload_per_op).collect();
        (median(&untraced), median(&traced))
    }

    /// Runs of `reference`, if it was measured: as with [`Pairs::used`],
    /// without those with another eBPF tracer around if there is any such
    /// run; all of them otherwise.
    fn reference_runs(&self, reference: Reference) -> Option<Vec<Sandwich>> {
        let (_, all) = self.references.iter().find(|(r, runs)| *r == reference && !runs.is_empty())?;
        let clean: Vec<Sandwich> = all
            .iter()
            .copied()
            .filter(|s| !s.before.foreign_tracer && !s.run.foreign_tracer && !s.after.foreign_tracer)
            .collect();
        Some(if clean.is_empty() { all.clone() } else { clean })
    }

    /// Median time per operation with `reference` attached.
    pub fn reference_ns_per_op(&self, reference: Reference) -> Option<f64> {
        let runs = self.reference_runs(reference)?;
        Some(median(&runs.iter().map(|s| self.ns_per_op(&s.run)).collect::<Vec<_>>()))
    }

    /// Throughput with `reference` attached over untraced throughput
    /// (median of the per-round ratios).
    pub fn reference_ratio(&self, reference: Reference) -> Option<f64> {
        let runs = self.reference_runs(reference)?;
        let ratios: Vec<f64> =
            runs.iter().map(|s| self.baseline(&s.before, Some(&s.after)) / self.ns_per_op(&s.run)).collect();
        Some(median(&ratios))
    }

    /// What `reference` adds per send/recv syscall (median over rounds).
    pub fn reference_added_ns_per_syscall(&self, reference: Reference) -> Option<f64> {
        let runs = self.reference_runs(reference)?;
        let added: Vec<f64> =
            runs.iter().map(|s| self.ns_per_op(&s.run) - self.baseline(&s.before, Some(&s.after))).collect();
        Some(median(&added) / self.syscalls_per_op())
    }

    /// What `reference` adds per send/recv syscall in the rapid
    /// alternation: (median, min of the middle half, max of it).
    pub fn quick_added_ns_per_syscall(&self, reference: Reference) -> Option<(f64, f64, f64)> {
        let (_, added) = self.quick_added.iter().find(|(r, added)| *r == reference && !added.is_empty())?;
        Some(self.per_syscall_spread(added.iter().copied()))
    }

    /// Added ns per operation, one figure per cycle, as ns per syscall:
    /// (median, min of the middle half, max of it).
    fn per_syscall_spread(&self, added: impl Iterator<Item = f64>) -> (f64, f64, f64) {
        let per_syscall: Vec<f64> = added.map(|a| a / self.syscalls_per_op()).collect();
        (
            median(&per_syscall),
            low_quantile(&per_syscall, 0.25).unwrap_or(f64::NAN),
            low_quantile(&per_syscall, 0.75).unwrap_or(f64::NAN),
        )
    }

    /// The tracer's own programs in the rapid alternation: added ns per
    /// syscall, median (quartiles), like `quick_added_ns_per_syscall`.
    pub fn quick_tracer_added_ns_per_syscall(&self) -> Option<(f64, f64, f64)> {
        (!self.quick_tracer.is_empty()).then(|| self.per_syscall_spread(self.quick_tracer.iter().map(|q| q.0)))
    }

    /// The tracer's own programs above the empty program, ns per
    /// operation: the median over the cycles of each cycle's difference.
    pub fn quick_tracer_above_floor_ns_per_op(&self) -> Option<f64> {
        let above: Vec<f64> = self.quick_tracer.iter().map(|q| q.1).collect();
        (!above.is_empty()).then(|| median(&above))
    }

    /// Min and max of the per-round ratios with `reference` attached.
    pub fn reference_ratio_spread(&self, reference: Reference) -> Option<(f64, f64)> {
        let runs = self.reference_runs(reference)?;
        let ratios: Vec<f64> =
            runs.iter().map(|s| self.baseline(&s.before, Some(&s.after)) / self.ns_per_op(&s.run)).collect();
        Some(spread(&ratios))
    }

    /// What `reference` adds per operation (median over rounds).
    pub fn reference_added_ns_per_op(&self, reference: Reference) -> Option<f64> {
        let runs = self.reference_runs(reference)?;
        let added: Vec<f64> =
            runs.iter().map(|s| self.ns_per_op(&s.run) - self.baseline(&s.before, Some(&s.after))).collect();
        Some(median(&added))
    }

    /// How far the tracer's throughput ratio is below `reference`'s, in
    /// points ([`gap_points`]).
    pub fn gap_to(&self, reference: Reference) -> Option<f64> {
        Some(gap_points(self.reference_ratio(reference)?, self.ratio()))
    }

    /// Rounds with another eBPF tracer around.
    pub fn foreign_pairs(&self) -> usize {
        self.untraced.iter().zip(&self.traced).filter(|(a, b)| a.foreign_tracer || b.foreign_tracer).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of one second, with CPU time `cpu_share` of it.
    fn run(ops_per_sec: f64, cpu_share: Option<f64>) -> Run {
        Run {
            ops: ops_per_sec,
            total_ops: ops_per_sec,
            wall_secs: 1.0,
            cpu_secs: cpu_share,
            syscalls_per_op: 4.0,
            payload_per_op: 64.0,
            foreign_tracer: false,
            low_ns_per_op: None,
        }
    }

    #[test]
    fn traced_runs_are_compared_with_the_untraced_runs_around_them() {
        // The machine slows down over the rounds; each traced run costs 5%
        // more than the mean of its neighbours.
        let a = [1000.0, 900.0, 800.0];
        let after = [950.0, 850.0, 750.0];
        let pairs = Pairs {
            untraced: a.iter().map(|r| run(*r, None)).collect(),
            // Time per operation of the traced run: the neighbours' mean / 0.95.
            traced: a.iter().zip(&after).map(|(x, y)| run(0.95 * 2.0 / (1.0 / x + 1.0 / y), None)).collect(),
            untraced_after: after.iter().map(|r| run(*r, None)).collect(),
            ..Default::default()
        };
        assert!((pairs.ratio() - 0.95).abs() < 1e-9, "{}", pairs.ratio());
        let (low, high) = pairs.ratio_spread();
        assert!((low - 0.95).abs() < 1e-9 && (high - 0.95).abs() < 1e-9);
    }

    #[test]
    fn low_quantiles_ignore_bursts() {
        // A steady 2,230 with bursts of interference.
        let slices = [2230.0, 2900.0, 2231.0, 2229.0, 2650.0, 2232.0, 2800.0, 2228.0, 2233.0, 2400.0];
        let low = low_quantile(&slices, SLICE_QUANTILE).expect("some");
        assert!((2228.0..=2233.0).contains(&low), "{low}");
        assert_eq!(low_quantile(&[], 0.2), None);
        assert_eq!(low_quantile(&[5.0], 0.2), Some(5.0));
        let mut with_low = run(1000.0, Some(1.0));
        with_low.low_ns_per_op = Some(900_000.0);
        let pairs = Pairs { untraced: vec![with_low], traced: vec![with_low], ..Default::default() };
        assert_eq!(pairs.untraced_ns_per_op(), 900_000.0);
    }

    #[test]
    fn medians_and_spreads() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(spread(&[3.0, 1.0, 2.0]), (1.0, 3.0));
        assert!(spread(&[]).0.is_nan());
    }

    #[test]
    fn the_issue_anchor_is_reproduced() {
        // ~1,075 ns per syscall, 4 syscalls per round trip; the empty BPF
        // program's 0.950 ratio is ~56 ns per syscall.
        let untraced = 1e9 / (4.0 * 1075.0);
        let pairs = Pairs {
            untraced: vec![run(untraced, None); 3],
            traced: vec![run(untraced * 0.95, None); 3],
            ..Default::default()
        };
        assert_eq!(pairs.basis(), Basis::Wall);
        assert!((pairs.ratio() - 0.95).abs() < 1e-9);
        assert!((pairs.added_ns_per_syscall() - 56.6).abs() < 0.1, "{}", pairs.added_ns_per_syscall());
        assert!((pairs.untraced_ns_per_syscall() - 1075.0).abs() < 1e-6);
    }

    #[test]
    fn cpu_time_discounts_a_shared_cpu() {
        // The traced run got half the CPU: its wall throughput halves, its
        // CPU time per operation does not.
        let pairs =
            Pairs { untraced: vec![run(1000.0, Some(1.0))], traced: vec![run(475.0, Some(0.5))], ..Default::default() };
        assert_eq!(pairs.basis(), Basis::Cpu);
        assert!((pairs.ratio() - 0.95).abs() < 1e-9);
        assert_eq!(pairs.ops_per_sec(), (1000.0, 475.0));
        assert_eq!(pairs.cpu_share(), (1.0, 0.5));
    }

    #[test]
    fn ratio_spread_pairs_rounds() {
        let pairs = Pairs {
            untraced: vec![run(100.0, None), run(200.0, None)],
            traced: vec![run(90.0, None), run(190.0, None)],
            ..Default::default()
        };
        let (low, high) = pairs.ratio_spread();
        assert!((low - 0.9).abs() < 1e-12 && (high - 0.95).abs() < 1e-12);
    }

    #[test]
    fn pairs_with_a_foreign_tracer_are_left_out_when_others_exist() {
        let mut disturbed = run(50.0, None);
        disturbed.foreign_tracer = true;
        let pairs = Pairs {
            untraced: vec![run(100.0, None), disturbed],
            traced: vec![run(90.0, None), run(90.0, None)],
            ..Default::default()
        };
        assert_eq!(pairs.used().len(), 1);
        assert_eq!(pairs.foreign_pairs(), 1);
        assert!((pairs.ratio() - 0.9).abs() < 1e-12);
    }

    #[test]
    fn references_are_read_against_the_same_untraced_runs() {
        let pairs = Pairs {
            untraced: vec![run(1000.0, None); 3],
            traced: vec![run(900.0, None); 3],
            references: vec![
                (
                    Reference::Floor,
                    vec![Sandwich { before: run(1000.0, None), run: run(950.0, None), after: run(1000.0, None) }; 3],
                ),
                (Reference::Hash, vec![]),
            ],
            ..Default::default()
        };
        assert!((pairs.reference_ratio(Reference::Floor).expect("measured") - 0.95).abs() < 1e-12);
        // 1e9/950 - 1e9/1000 ns per op, over 4 syscalls.
        let added = (1e9 / 950.0 - 1e6) / 4.0;
        assert!((pairs.reference_added_ns_per_syscall(Reference::Floor).expect("measured") - added).abs() < 1e-6);
        assert_eq!(pairs.reference_ratio(Reference::Hash), None);
        assert_eq!(pairs.reference_ratio(Reference::Bpftrace), None);
    }

    #[test]
    fn reference_runs_with_a_foreign_tracer_are_left_out_when_others_exist() {
        let clean = Sandwich { before: run(1000.0, None), run: run(950.0, None), after: run(1000.0, None) };
        let mut disturbed = Sandwich { before: run(1000.0, None), run: run(500.0, None), after: run(1000.0, None) };
        disturbed.after.foreign_tracer = true;
        let pairs =
            Pairs { references: vec![(Reference::ConnFloor, vec![clean, disturbed, clean])], ..Default::default() };
        assert!((pairs.reference_ratio(Reference::ConnFloor).expect("measured") - 0.95).abs() < 1e-12);
        // All disturbed: all of them are used.
        let pairs = Pairs { references: vec![(Reference::ConnFloor, vec![disturbed])], ..Default::default() };
        assert!((pairs.reference_ratio(Reference::ConnFloor).expect("measured") - 0.5).abs() < 1e-12);
    }

    #[test]
    fn gaps_in_points() {
        assert!((gap_points(0.97, 0.95) - 2.0).abs() < 1e-9);
        assert!((gap_points(0.95, 0.97) + 2.0).abs() < 1e-9);
        // 50,000 ns untraced, 52,000 with the floor (0.9615), 2,000 more
        // with the tracer (0.9259): 3.56 points.
        let derived = derived_gap_points(50_000.0, 52_000.0, 2_000.0);
        assert!((derived - (50.0 / 52.0 - 50.0 / 54.0) * 100.0).abs() < 1e-9, "{derived}");
        assert_eq!(derived_gap_points(50_000.0, 52_000.0, 0.0), 0.0);
    }

    #[test]
    fn the_tracer_is_read_against_the_floor_of_the_same_rounds() {
        // Untraced 1000 ops/s; floor 970; tracer 950: floor 0.97, tracer
        // 0.95, 2 points apart.
        let sandwich = Sandwich { before: run(1000.0, None), run: run(970.0, None), after: run(1000.0, None) };
        let pairs = Pairs {
            untraced: vec![run(1000.0, None); 3],
            traced: vec![run(950.0, None); 3],
            untraced_after: vec![run(1000.0, None); 3],
            references: vec![(Reference::ConnFloor, vec![sandwich; 3])],
            ..Default::default()
        };
        assert!((pairs.gap_to(Reference::ConnFloor).expect("measured") - 2.0).abs() < 1e-9);
        assert_eq!(pairs.gap_to(Reference::Floor), None);
        let (low, high) = pairs.reference_ratio_spread(Reference::ConnFloor).expect("measured");
        assert!((low - 0.97).abs() < 1e-12 && (high - 0.97).abs() < 1e-12);
        let added = pairs.reference_added_ns_per_op(Reference::ConnFloor).expect("measured");
        assert!((added - (1e9 / 970.0 - 1e6)).abs() < 1e-6);
    }

    #[test]
    fn cpu_per_minute() {
        assert_eq!(cpu_seconds_per_minute(0.5, 30.0), 1.0);
    }
}
