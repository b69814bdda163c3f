//! The analysed part of the history: the samples inside `--analysis-window`
//! with the length of each one's interval, the socket-count series read from
//! them, and per-flow totals over them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::Input;
use crate::model::{Counters, FlowKey, Sample};

/// Shorter intervals (or negative, NaN) carry no usable rate.
const MIN_INTERVAL_SECS: f64 = 1e-6;

/// An interval this much longer than the usual one, followed by one as
/// much shorter, was stamped late, not read late (see [`Window::new`]).
const LATE_STAMP_TOLERANCE: f64 = 0.1;

/// The analysed samples with the length of each one's interval.
pub(super) struct Window<'a> {
    pub(super) samples: Vec<&'a Sample>,
    /// `None` where the interval is unusable (zero, negative, NaN).
    pub(super) intervals: Vec<Option<f64>>,
    /// When each interval's counts were read, seconds since the start: the
    /// sample's time, except where it was stamped late.
    pub(super) ends: Vec<f64>,
}

impl<'a> Window<'a> {
    pub(super) fn new(all: &'a VecDeque<Sample>, window_secs: Option<f64>) -> Self {
        let cutoff = match (window_secs, all.back()) {
            (Some(window), Some(last)) if !window.is_nan() => last.t_secs - window,
            _ => f64::NEG_INFINITY,
        };
        let mut samples = Vec::new();
        let mut intervals = Vec::new();
        for (i, sample) in all.iter().enumerate() {
            let inside = sample.t_secs >= cutoff;
            if !inside {
                continue;
            }
            // Samples are contiguous: an interval starts where the previous
            // one ended, even when that one is outside the window. The
            // oldest sample's predecessor is gone: its length is the one the
            // model measured, else assumed as long as the next (it cannot
            // start before the trace did).
            let length = match i.checked_sub(1).and_then(|p| all.get(p)) {
                Some(previous) => sample.t_secs - previous.t_secs,
                None if sample.interval_secs.is_finite() && sample.interval_secs > 0.0 => {
                    sample.interval_secs.min(sample.t_secs)
                }
                None => match all.get(1) {
                    Some(next) => sample.t_secs.min(next.t_secs - sample.t_secs),
                    None => sample.t_secs,
                },
            };
            intervals.push(Some(length).filter(|l| l.is_finite() && *l >= MIN_INTERVAL_SECS));
            samples.push(sample);
        }
        let ends = samples.iter().map(|s| s.t_secs).collect();
        let mut window = Window { samples, intervals, ends };
        window.undo_late_stamps();
        window
    }

    /// The collector reads the counters on its tick but stamps the sample
    /// after its /proc reads, which now and then take a few hundred ms: an
    /// interval that looks 1.6 s long and the next 0.4 s then each hold a
    /// second of bytes (a late tick would have made the next interval a full
    /// one). Such pairs, adding up to two usual intervals, get the usual
    /// length each, and the first one's end moves back to match.
    fn undo_late_stamps(&mut self) {
        let mut lengths: Vec<f64> = self.intervals.iter().flatten().copied().collect();
        if lengths.len() < 3 {
            return;
        }
        lengths.sort_by(f64::total_cmp);
        let usual = lengths[lengths.len() / 2];
        let tolerance = LATE_STAMP_TOLERANCE * usual;
        let mut i = 0;
        while i + 1 < self.intervals.len() {
            if let (Some(long), Some(short)) = (self.intervals[i], self.intervals[i + 1]) {
                if long > usual + tolerance && (long + short - 2.0 * usual).abs() <= tolerance {
                    self.intervals[i] = Some(usual);
                    self.intervals[i + 1] = Some(usual);
                    self.ends[i] = self.ends[i + 1] - usual;
                    i += 2;
                    continue;
                }
            }
            i += 1;
        }
    }

    /// Seconds covered by the usable intervals.
    pub(super) fn span_secs(&self) -> f64 {
        self.intervals.iter().flatten().sum()
    }

    /// `(t_secs, count)` of `pid`'s sockets in `state`, from the first sample
    /// that lists the process (before it, it had no sockets to count).
    pub(super) fn state_series(&self, pid: u32, state: &str) -> Vec<(f64, u64)> {
        let first = self.samples.iter().position(|s| s.sockets.contains_key(&pid)).unwrap_or(self.samples.len());
        self.samples
            .iter()
            .skip(first)
            .filter(|s| s.t_secs.is_finite())
            .map(|s| (s.t_secs, s.sockets.get(&pid).and_then(|c| c.get(state)).copied().unwrap_or(0)))
            .collect()
    }
}

/// Every pid with socket counts in the window.
pub(super) fn socket_pids(window: &Window<'_>) -> BTreeSet<u32> {
    window.samples.iter().flat_map(|s| s.sockets.keys().copied()).collect()
}

/// A flow's counters over the analysis window.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct FlowWindow {
    pub(super) counters: Counters,
    /// Intervals in which the flow opened connections.
    pub(super) opening_intervals: usize,
}

/// Per-flow totals from the window's samples, or from the caller's flow
/// totals when there are no samples at all.
pub(super) fn flow_totals(window: &Window<'_>, input: &Input<'_>) -> BTreeMap<FlowKey, FlowWindow> {
    let mut totals: BTreeMap<FlowKey, FlowWindow> = BTreeMap::new();
    if input.samples.is_empty() {
        for flow in input.flows {
            totals.entry(flow.key).or_default().counters.add(&flow.counters);
        }
        return totals;
    }
    for sample in &window.samples {
        for (key, counters) in &sample.flows {
            let entry = totals.entry(*key).or_default();
            entry.counters.add(counters);
            if counters.opened > 0 {
                entry.opening_intervals += 1;
            }
        }
    }
    totals
}
