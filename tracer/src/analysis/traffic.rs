//! `traffic_growth` and `throughput_decay`: a least-squares line through a
//! rate series, per process and per flow, in each direction.

use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use super::{
    finding,
    fit::{fit_without_outliers, Point, MIN_TREND_POINTS},
    flow_label, human_duration, process_label, round,
    window::Window,
    Finding, Severity,
};
use crate::{
    model::{Counters, FlowKey},
    units,
};

/// A rate series is judged on its averages over at most this many runs of
/// consecutive intervals (bins: bytes over seconds). Bursty traffic (100 ms
/// bursts, +-30% per second) hides a 4x ramp in 1-s noise, not in 3-5 s
/// averages; an interval stamped late next to one stamped early (the
/// collector's stamp follows its /proc reads: 1.6 s and 0.4 s holding a
/// second of bytes each) cancels out inside a bin; a lone burst stays one
/// bin of a dozen (R² <= 3/13) and a sawtooth stays a sawtooth.
const FIT_BINS: usize = 12;
/// How well a line must explain the binned series to call it a trend.
const MIN_TREND_R_SQUARED: f64 = 0.6;
/// How many standard errors the fitted slope must be from flat: noise that
/// happens to line up (bursty traffic over 30 one-second intervals) is no
/// trend.
const MIN_SLOPE_T: f64 = 4.0;
/// Below this mean rate (bytes/s) a trend is noise, whatever its ratio.
const MIN_MEAN_RATE: f64 = 1024.0;
/// Fitted rates below this (bytes/s) count as this in ratios.
const RATE_FLOOR: f64 = 1024.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Direction {
    Tx,
    Rx,
}

impl Direction {
    pub(super) fn bytes(self, counters: &Counters) -> u64 {
        match self {
            Direction::Tx => counters.tx_bytes,
            Direction::Rx => counters.rx_bytes,
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Direction::Tx => "tx",
            Direction::Rx => "rx",
        }
    }

    pub(super) fn noun(self) -> &'static str {
        match self {
            Direction::Tx => "send",
            Direction::Rx => "receive",
        }
    }

    /// Which way the data moves relative to the process.
    pub(super) fn arrow(self) -> &'static str {
        match self {
            Direction::Tx => "->",
            Direction::Rx => "<-",
        }
    }
}

/// What a trend is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Subject {
    Process(u32),
    Flow(FlowKey),
}

impl Subject {
    pub(super) fn pid(self) -> u32 {
        match self {
            Subject::Process(pid) => pid,
            Subject::Flow(key) => key.pid,
        }
    }
}

/// A rate series that passed the trend tests.
#[derive(Debug, Clone)]
pub(super) struct Trend {
    pub(super) subject: Subject,
    pub(super) direction: Direction,
    pub(super) growth: bool,
    pub(super) ratio: f64,
    pub(super) start_rate: f64,
    pub(super) end_rate: f64,
    pub(super) slope: f64,
    /// Of the line through the bins.
    pub(super) r_squared: f64,
    /// The series averaged into this many bins of about `bin_secs`.
    pub(super) bins: usize,
    pub(super) bin_secs: f64,
    pub(super) mean_rate: f64,
    pub(super) span_secs: f64,
    pub(super) samples: usize,
    /// Bins left out of the fit, far off the line (a lone burst).
    pub(super) outlier_bins: usize,
    /// The part of the window the fit covers: from the start of its first
    /// interval to the end of its last, seconds since the start.
    pub(super) first_active_secs: f64,
    pub(super) last_active_secs: f64,
}

/// `traffic_growth` and `throughput_decay`, per process and per flow, for
/// each direction.
/// `cause` gives a flow's `likely_cause` evidence; a process's comes from
/// its flow that moved the most in the trend's direction.
pub(super) fn traffic_trends(
    window: &Window<'_>,
    growth_ratio: f64,
    comm: &dyn Fn(u32) -> String,
    cause: &dyn Fn(&FlowKey) -> serde_json::Value,
) -> Vec<Finding> {
    // A ratio of 1 or less would call every flat series a trend.
    if growth_ratio.is_nan() || growth_ratio <= 1.0 {
        return Vec::new();
    }
    // Sparse (interval index, bytes): most flows on a busy host are small
    // and short, and are dropped before a dense series is built.
    let mut series: BTreeMap<(Subject, Direction), Vec<(usize, u64)>> = BTreeMap::new();
    for (i, sample) in window.samples.iter().enumerate() {
        for (key, counters) in &sample.flows {
            for direction in [Direction::Tx, Direction::Rx] {
                let bytes = direction.bytes(counters);
                if bytes == 0 {
                    continue;
                }
                for subject in [Subject::Flow(*key), Subject::Process(key.pid)] {
                    let active = series.entry((subject, direction)).or_default();
                    match active.last_mut() {
                        Some((last, total)) if *last == i => *total = total.saturating_add(bytes),
                        _ => active.push((i, bytes)),
                    }
                }
            }
        }
    }
    let mut trends: Vec<Trend> = series
        .iter()
        .filter_map(|(&(subject, direction), active)| rate_trend(window, active, growth_ratio, subject, direction))
        .collect();

    let mut flow_findings: HashMap<(u32, bool, Direction), usize> = HashMap::new();
    for trend in &trends {
        if let Subject::Flow(key) = trend.subject {
            *flow_findings.entry((key.pid, trend.growth, trend.direction)).or_default() += 1;
        }
    }
    trends.retain(|t| match t.subject {
        Subject::Process(pid) => flow_findings.get(&(pid, t.growth, t.direction)) != Some(&1),
        Subject::Flow(_) => true,
    });
    trends
        .iter()
        .map(|t| {
            let mut finding = trend_finding(t, growth_ratio, comm);
            let key = match t.subject {
                Subject::Flow(key) => Some(key),
                Subject::Process(pid) => biggest_flow(&series, pid, t.direction),
            };
            if let (Some(key), Some(evidence)) = (key, finding.evidence.as_object_mut()) {
                if let Some(found) = cause(&key).as_object() {
                    evidence.extend(found.clone());
                }
            }
            finding
        })
        .collect()
}

/// The flow of `pid` that moved the most bytes in `direction`.
fn biggest_flow(
    series: &BTreeMap<(Subject, Direction), Vec<(usize, u64)>>,
    pid: u32,
    direction: Direction,
) -> Option<FlowKey> {
    series
        .iter()
        .filter_map(|((subject, d), active)| match subject {
            Subject::Flow(key) if key.pid == pid && *d == direction => {
                Some((active.iter().fold(0u64, |sum, &(_, b)| sum.saturating_add(b)), *key))
            }
            _ => None,
        })
        .max()
        .map(|(_, key)| key)
}

/// Fits one key's rate series over its active span; `Some` when it is a
/// trend worth reporting.
///
/// The span runs from the key's first active interval to its last. Either
/// end is partial when it is not the window's own end (the key started, or
/// stopped, somewhere inside that interval), so it is left out: a ramp that
/// ended before the trace did still grew, and a flow that starts mid-window
/// at a constant rate did not. Silent intervals inside the span stay in.
pub(super) fn rate_trend(
    window: &Window<'_>,
    active: &[(usize, u64)],
    growth_ratio: f64,
    subject: Subject,
    direction: Direction,
) -> Option<Trend> {
    let &(first_active, _) = active.first()?;
    let &(last_active, _) = active.last()?;
    let start = if first_active > 0 { first_active + 1 } else { 0 };
    let end = if last_active + 1 < window.samples.len() { last_active } else { window.samples.len() };
    if end < start + MIN_TREND_POINTS {
        return None;
    }
    // A cheap first test, so most small flows never get a dense series.
    let total =
        active.iter().filter(|&&(i, _)| (start..end).contains(&i)).fold(0u64, |sum, &(_, b)| sum.saturating_add(b));
    let covered_secs: f64 = window.intervals.get(start..end).unwrap_or_default().iter().flatten().sum();
    let busy_enough = total as f64 >= MIN_MEAN_RATE * covered_secs;
    if !busy_enough {
        return None;
    }
    let mut bytes = vec![0u64; end - start];
    for &(i, b) in active {
        if let Some(slot) = i.checked_sub(start).and_then(|j| bytes.get_mut(j)) {
            *slot = b;
        }
    }
    let points: Vec<Point> = (start..end)
        .zip(&bytes)
        .filter_map(|(i, &moved)| {
            let end = *window.ends.get(i)?;
            let length = (*window.intervals.get(i)?)?;
            Some(Point { x: end - length / 2.0, y: moved as f64 / length, weight: length })
        })
        .collect();
    if points.len() < MIN_TREND_POINTS {
        return None;
    }
    let span_secs: f64 = points.iter().map(|p| p.weight).sum();
    let mean_rate = points.iter().map(|p| p.y * p.weight).sum::<f64>() / span_secs;
    let (first, last) = (*points.first()?, *points.last()?);
    let bins = binned(&points, FIT_BINS);
    let (line, kept) = fit_without_outliers(&bins)?;
    let well_fitted = line.r_squared >= MIN_TREND_R_SQUARED
        && slope_t(line.r_squared, kept.len()) >= MIN_SLOPE_T
        && mean_rate >= MIN_MEAN_RATE;
    if !well_fitted {
        return None;
    }
    // Read at the span's ends, whether or not those points were kept.
    let start_rate = line.at(first.x).max(0.0);
    let end_rate = line.at(last.x).max(0.0);
    let ratio = end_rate / start_rate.max(RATE_FLOOR);
    let growth = ratio >= growth_ratio;
    let decay = ratio <= 1.0 / growth_ratio;
    if !(growth || decay) {
        return None;
    }
    Some(Trend {
        subject,
        direction,
        growth,
        ratio,
        start_rate,
        end_rate,
        slope: line.slope,
        r_squared: line.r_squared,
        bins: bins.len(),
        bin_secs: span_secs / bins.len() as f64,
        mean_rate,
        span_secs,
        samples: points.len(),
        outlier_bins: bins.len() - kept.len(),
        first_active_secs: first.x - first.weight / 2.0,
        last_active_secs: last.x + last.weight / 2.0,
    })
}

/// The t statistic of a fitted slope, from the fit's R² over `n` points.
fn slope_t(r_squared: f64, n: usize) -> f64 {
    if r_squared >= 1.0 {
        return f64::INFINITY;
    }
    (r_squared * n.saturating_sub(2) as f64 / (1.0 - r_squared)).sqrt()
}

/// `points` averaged (weighted) over runs of consecutive points, into at
/// most `bins` points.
fn binned(points: &[Point], bins: usize) -> Vec<Point> {
    let per_bin = points.len().div_ceil(bins.max(1)).max(1);
    points
        .chunks(per_bin)
        .filter_map(|chunk| {
            let weight: f64 = chunk.iter().map(|p| p.weight).sum();
            (weight > 0.0).then(|| Point {
                x: chunk.iter().map(|p| p.x * p.weight).sum::<f64>() / weight,
                y: chunk.iter().map(|p| p.y * p.weight).sum::<f64>() / weight,
                weight,
            })
        })
        .collect()
}

pub(super) fn trend_finding(trend: &Trend, growth_ratio: f64, comm: &dyn Fn(u32) -> String) -> Finding {
    let (kind, critical, change) = if trend.growth {
        ("traffic_growth", trend.ratio >= 2.0 * growth_ratio, format!("grew {:.1}x", trend.ratio))
    } else {
        let change =
            if trend.ratio < 0.01 { "fell to near zero".to_owned() } else { format!("fell {:.1}x", 1.0 / trend.ratio) };
        ("throughput_decay", trend.ratio <= 1.0 / (2.0 * growth_ratio), change)
    };
    let pid = trend.subject.pid();
    let label = match trend.subject {
        Subject::Process(_) => process_label(pid, comm),
        Subject::Flow(key) => flow_label(&key, comm, trend.direction.arrow()),
    };
    let (from, to) = units::rate_pair(trend.start_rate, trend.end_rate);
    let summary = format!(
        "{label}: {} rate {change} in {} ({from} -> {to})",
        trend.direction.noun(),
        human_duration(trend.span_secs)
    );
    let flow = match trend.subject {
        Subject::Flow(key) => Some(key),
        Subject::Process(_) => None,
    };
    finding(
        kind,
        if critical { Severity::Critical } else { Severity::Warning },
        pid,
        flow.as_ref(),
        comm,
        summary,
        json!({
            "direction": trend.direction.as_str(),
            "start_rate": round(trend.start_rate, 1),
            "end_rate": round(trend.end_rate, 1),
            "ratio": round(trend.ratio, 3),
            "slope_bytes_per_sec2": round(trend.slope, 3),
            "r_squared": round(trend.r_squared, 3),
            "bins": trend.bins,
            "bin_secs": round(trend.bin_secs, 3),
            "mean_rate": round(trend.mean_rate, 1),
            "window_secs": round(trend.span_secs, 3),
            "samples": trend.samples,
            "outlier_bins": trend.outlier_bins,
            "first_active_secs": round(trend.first_active_secs, 3),
            "last_active_secs": round(trend.last_active_secs, 3),
        }),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use crate::{
        analysis::{tests::*, Severity},
        model::{Counters, FlowKey, Role, Sample},
    };

    #[test]
    fn linear_ramp_is_traffic_growth_of_the_flow() {
        let key = client(PID, "52.218.1.9", 443);
        let findings = run(&rx_series(key, &ramp(200_000.0, 800_000.0, 60)));
        assert_eq!(kinds(&findings), ["traffic_growth"], "{findings:#?}");
        let growth = &findings[0];
        let ratio = growth.evidence["ratio"].as_f64().expect("ratio");
        assert!((3.0..=5.0).contains(&ratio), "ratio {ratio}");
        assert_eq!((growth.remote_addr.as_deref(), growth.port), (Some("52.218.1.9"), Some(443)));
        assert_eq!(growth.severity, Severity::Critical);
        assert_eq!(growth.evidence["direction"], "rx");
        assert_eq!(growth.evidence["samples"], 60);
        assert!(
            growth.summary.starts_with("pid 4242 (p4242) <- 52.218.1.9:443: receive rate grew 4.0x in 60s"),
            "{}",
            growth.summary
        );
        assert!(growth.summary.ends_with("(195.3 KiB/s -> 781.2 KiB/s)"), "{}", growth.summary);
    }

    #[test]
    fn flat_noise_with_a_spike_is_no_trend() {
        let key = client(PID, "10.0.0.1", 443);
        for spike_at in [20, 59] {
            let mut seed = 7;
            let mut rates: Vec<f64> = (0..60).map(|_| 500_000.0 * (1.0 + 0.1 * noise(&mut seed))).collect();
            rates[spike_at] = 5_000_000.0;
            let findings = run(&rx_series(key, &rates));
            assert!(findings.is_empty(), "spike at {spike_at}: {findings:#?}");
        }
    }

    #[test]
    fn sawtooth_is_no_trend() {
        let key = client(PID, "10.0.0.1", 443);
        let rates: Vec<f64> = (0..60).map(|i| 200_000.0 + 60_000.0 * (i % 10) as f64).collect();
        assert!(run(&rx_series(key, &rates)).is_empty());
    }

    #[test]
    fn slow_steady_decay_is_throughput_decay() {
        let key = client(PID, "10.0.0.2", 9000);
        let mut seed = 3;
        let rates: Vec<f64> =
            ramp(1_000_000.0, 400_000.0, 120).into_iter().map(|r| r * (1.0 + 0.05 * noise(&mut seed))).collect();
        let findings = run(&rx_series(key, &rates));
        assert_eq!(kinds(&findings), ["throughput_decay"], "{findings:#?}");
        let ratio = findings[0].evidence["ratio"].as_f64().expect("ratio");
        assert!((0.3..0.5).contains(&ratio), "ratio {ratio}");
        assert_eq!(findings[0].severity, Severity::Warning);
        assert!(findings[0].summary.contains("receive rate fell 2.5x"), "{}", findings[0].summary);
    }

    #[test]
    fn a_flow_that_stopped_is_no_decay() {
        let key = client(PID, "10.0.0.3", 443);
        let rates: Vec<f64> = (0..60).map(|i| if i < 30 { 1_000_000.0 } else { 0.0 }).collect();
        assert!(run(&rx_series(key, &rates)).is_empty());
    }

    #[test]
    fn a_flow_starting_mid_window_at_a_steady_rate_is_no_growth() {
        let key = client(PID, "10.0.0.4", 443);
        // Idle, then a partial first interval, then steady.
        let mut rates = vec![0.0; 54];
        rates.push(100_000.0);
        rates.extend([1_000_000.0; 5]);
        assert!(run(&rx_series(key, &rates)).is_empty());
    }

    #[test]
    fn growth_spread_over_many_flows_is_reported_for_the_process() {
        // A new steady flow every 10 s: no flow grows, the process does.
        let samples: VecDeque<Sample> = (0..60)
            .map(|i| {
                let flows = (0..=i / 10).map(|j| (client(PID, &format!("10.0.1.{j}"), 443), rx(200_000))).collect();
                sample(i as f64 + 1.0, flows)
            })
            .collect();
        let findings = run(&samples);
        assert_eq!(kinds(&findings), ["traffic_growth"], "{findings:#?}");
        assert_eq!((findings[0].pid, findings[0].remote_addr.as_deref()), (PID, None));
        assert!(findings[0].summary.starts_with("pid 4242 (p4242): receive rate grew"), "{}", findings[0].summary);
    }

    #[test]
    fn two_growing_flows_keep_the_process_finding_too() {
        let (a, b) = (client(PID, "10.0.0.1", 443), client(PID, "10.0.0.2", 443));
        let samples: VecDeque<Sample> = ramp(200_000.0, 800_000.0, 60)
            .into_iter()
            .enumerate()
            .map(|(i, rate)| sample(i as f64 + 1.0, vec![(a, rx(rate as u64)), (b, rx(rate as u64))]))
            .collect();
        let findings = run(&samples);
        assert_eq!(findings.len(), 3, "{findings:#?}");
        assert_eq!(findings.iter().filter(|f| f.remote_addr.is_none()).count(), 1);
    }

    #[test]
    fn server_flow_is_labelled_with_the_local_port() {
        let key = FlowKey { pid: 80, role: Role::Server, remote: "2001:db8::1".parse().expect("ip"), port: 8080 };
        let samples: VecDeque<Sample> = ramp(200_000.0, 800_000.0, 30)
            .into_iter()
            .enumerate()
            .map(|(i, rate)| {
                sample(i as f64 + 1.0, vec![(key, Counters { tx_bytes: rate as u64, ..Counters::default() })])
            })
            .collect();
        let findings = run(&samples);
        assert_eq!(kinds(&findings), ["traffic_growth"], "{findings:#?}");
        assert!(findings[0].summary.starts_with("pid 80 (p80) :8080 -> 2001:db8::1: send rate grew"));
        assert_eq!((findings[0].port, findings[0].evidence["direction"].as_str()), (Some(8080), Some("tx")));
    }
}
