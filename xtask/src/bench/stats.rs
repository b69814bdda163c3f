//! The bench's arithmetic, as plain data and pure functions: medians and
//! spreads over rounds, traced/untraced ratios, and the added cost per
//! operation and per send/recv syscall.

use super::reference::Reference;

/// One measured run of a workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Run {
    /// Operations in the measured window (client side).
    pub ops: f64,
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
#[derive(Debug, Clone, Default)]
pub struct Pairs {
    pub untraced: Vec<Run>,
    pub traced: Vec<Run>,
    /// The tracer's CPU use during each traced run, in % of one CPU.
    pub tracer_cpu_percent: Vec<f64>,
    /// Runs with a reference program attached instead of the tracer, one
    /// per round, taken between that round's untraced and traced runs.
    pub references: Vec<(Reference, Vec<Run>)>,
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

/// CPU seconds per minute of wall time.
pub fn cpu_seconds_per_minute(cpu_secs: f64, wall_secs: f64) -> f64 {
    cpu_secs / wall_secs * 60.0
}

impl Pairs {
    /// The pairs the figures use: those without another eBPF tracer around,
    /// if there is any such pair; all of them otherwise.
    pub fn used(&self) -> Vec<(Run, Run)> {
        let all: Vec<(Run, Run)> = self.untraced.iter().copied().zip(self.traced.iter().copied()).collect();
        let clean: Vec<(Run, Run)> =
            all.iter().copied().filter(|(a, b)| !a.foreign_tracer && !b.foreign_tracer).collect();
        if clean.is_empty() {
            all
        } else {
            clean
        }
    }

    pub fn basis(&self) -> Basis {
        if self.used().iter().all(|(a, b)| a.cpu_secs.is_some() && b.cpu_secs.is_some()) {
            Basis::Cpu
        } else {
            Basis::Wall
        }
    }

    /// Nanoseconds per operation of one run, in this workload's basis.
    fn ns_per_op(&self, run: &Run) -> f64 {
        match (self.basis(), run.cpu_ns_per_op()) {
            (Basis::Cpu, Some(ns)) => ns,
            _ => 1e9 / run.ops_per_sec(),
        }
    }

    fn side(&self, traced: bool) -> Vec<Run> {
        self.used().into_iter().map(|(a, b)| if traced { b } else { a }).collect()
    }

    /// Nanoseconds per operation of each used run of one side.
    pub fn ns_per_op_list(&self, traced: bool) -> Vec<f64> {
        self.side(traced).iter().map(|r| self.ns_per_op(r)).collect()
    }

    pub fn untraced_ns_per_op(&self) -> f64 {
        median(&self.ns_per_op_list(false))
    }

    pub fn traced_ns_per_op(&self) -> f64 {
        median(&self.ns_per_op_list(true))
    }

    /// Traced/untraced throughput (per CPU-second, or per second), from the
    /// medians.
    pub fn ratio(&self) -> f64 {
        self.untraced_ns_per_op() / self.traced_ns_per_op()
    }

    /// Min and max of the per-round ratios (each traced run against the
    /// untraced run just before it).
    pub fn ratio_spread(&self) -> (f64, f64) {
        let ratios: Vec<f64> = self.used().iter().map(|(a, b)| self.ns_per_op(a) / self.ns_per_op(b)).collect();
        spread(&ratios)
    }

    /// Wall-clock throughput, medians: (untraced, traced).
    pub fn ops_per_sec(&self) -> (f64, f64) {
        let rates = |traced| self.side(traced).iter().map(Run::ops_per_sec).collect::<Vec<_>>();
        (median(&rates(false)), median(&rates(true)))
    }

    /// Share of the pinned CPU the load generator got, medians: (untraced, traced).
    pub fn cpu_share(&self) -> (f64, f64) {
        let shares = |traced| self.side(traced).iter().filter_map(Run::cpu_share).collect::<Vec<_>>();
        (median(&shares(false)), median(&shares(true)))
    }

    /// Send/recv syscalls per operation, median over the used runs.
    pub fn syscalls_per_op(&self) -> f64 {
        let all: Vec<f64> = self.used().iter().flat_map(|(a, b)| [a.syscalls_per_op, b.syscalls_per_op]).collect();
        median(&all)
    }

    pub fn added_ns_per_op(&self) -> f64 {
        self.traced_ns_per_op() - self.untraced_ns_per_op()
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
        let rates = |traced| self.side(traced).iter().map(|r| r.ops_per_sec() * r.payload_per_op).collect::<Vec<_>>();
        (median(&rates(false)), median(&rates(true)))
    }

    /// Runs of `reference`, if it was measured.
    fn reference_runs(&self, reference: Reference) -> Option<&[Run]> {
        self.references.iter().find(|(r, runs)| *r == reference && !runs.is_empty()).map(|(_, runs)| runs.as_slice())
    }

    /// Median time per operation with `reference` attached.
    pub fn reference_ns_per_op(&self, reference: Reference) -> Option<f64> {
        let runs = self.reference_runs(reference)?;
        Some(median(&runs.iter().map(|r| self.ns_per_op(r)).collect::<Vec<_>>()))
    }

    /// Throughput with `reference` attached over untraced throughput.
    pub fn reference_ratio(&self, reference: Reference) -> Option<f64> {
        Some(self.untraced_ns_per_op() / self.reference_ns_per_op(reference)?)
    }

    /// What `reference` adds per send/recv syscall.
    pub fn reference_added_ns_per_syscall(&self, reference: Reference) -> Option<f64> {
        Some((self.reference_ns_per_op(reference)? - self.untraced_ns_per_op()) / self.syscalls_per_op())
    }

    /// Pairs with another eBPF tracer around.
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
            wall_secs: 1.0,
            cpu_secs: cpu_share,
            syscalls_per_op: 4.0,
            payload_per_op: 64.0,
            foreign_tracer: false,
        }
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
            references: vec![(Reference::Floor, vec![run(950.0, None); 3]), (Reference::Hash, vec![])],
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
    fn cpu_per_minute() {
        assert_eq!(cpu_seconds_per_minute(0.5, 30.0), 1.0);
    }
}
