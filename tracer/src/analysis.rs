//! Findings: the report's verdicts (`traffic_growth`, `throughput_decay`,
//! `connection_leak`, `close_wait_leak`, `retransmit_spike`,
//! `connection_churn`), computed by pure functions over the model's time
//! series, the current CLOSE_WAIT sockets and per-flow totals. No I/O and no
//! aya: everything arrives in [`Input`], so every rule is tested on synthetic
//! series.
//!
//! How the rules avoid crying wolf:
//! - Rates are interval averages, so a rate series is fitted at interval
//!   midpoints, weighted by interval length, and the fitted start/end rates
//!   are read at the first and last points (a 200 -> 800 KiB/s ramp reads 4.0).
//!   A series starts at its key's first active interval; if that is not the
//!   window's first interval the key started somewhere inside it, so that
//!   partial interval is left out (it would look like growth).
//! - A trend needs >= 5 points, a mean of >= 1 KiB/s and R² >= 0.6: a lone
//!   burst (R² <= 0.5 even at the end of a 5-point series), a sawtooth or
//!   noise does not pass. Fitted rates below 1 KiB/s count as 1 KiB/s in the
//!   ratio, so a ramp from nothing gives a finite ratio.
//! - A key whose trailing intervals are silent has stopped (a download that
//!   finished), which is not a decay and is not reported.
//! - A process-level trend is dropped when exactly one of its flows carries
//!   the same finding (same kind and direction): the flow says it with the
//!   remote. Aggregate trends no single flow shows stay process-level.
//! - Socket counts (ESTABLISHED, CLOSE_WAIT) must rise steadily: positive
//!   slope, R² >= 0.8, a fitted rise of a few sockets, and each third of the
//!   series higher on average than the one before (a pool that warmed up and
//!   then stayed flat is not a leak).
//! - Retransmit ratios and churn need enough traffic, or opens in several
//!   intervals, to mean something.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::SocketAddr,
};

use serde::Serialize;
use serde_json::json;

use crate::{
    model::{CloseWait, Counters, Flow, FlowKey, Role, Sample},
    units,
};

/// Shorter intervals (or negative, NaN) carry no usable rate.
const MIN_INTERVAL_SECS: f64 = 1e-6;
/// Fewer points than this are too few to call a trend.
const MIN_TREND_POINTS: usize = 5;
/// How well a line must explain a rate series to call it a trend.
const MIN_TREND_R_SQUARED: f64 = 0.6;
/// Below this mean rate (bytes/s) a trend is noise, whatever its ratio.
const MIN_MEAN_RATE: f64 = 1024.0;
/// Fitted rates below this (bytes/s) count as this in ratios.
const RATE_FLOOR: f64 = 1024.0;
/// Trailing silent intervals (at least this many, and a fifth of the series)
/// mean the key stopped rather than decayed.
const MIN_STOPPED_INTERVALS: usize = 3;
/// How well a line must explain a socket-count series to call it a rise.
const MIN_RISE_R_SQUARED: f64 = 0.8;
/// ESTABLISHED sockets a process must gain (fitted) to be leaking.
const MIN_ESTABLISHED_RISE: f64 = 5.0;
/// A leak that gained this many ESTABLISHED sockets is critical.
const CRITICAL_ESTABLISHED_RISE: u64 = 50;
/// CLOSE_WAIT should stay at 0, so a smaller rise already counts.
const MIN_CLOSE_WAIT_RISE: f64 = 3.0;
/// This many CLOSE_WAIT sockets in one process is critical.
const CRITICAL_CLOSE_WAIT_COUNT: u64 = 50;
/// CLOSE_WAIT older than this many times the threshold is critical.
const CRITICAL_CLOSE_WAIT_AGE_FACTOR: f64 = 10.0;
/// Remote addresses listed in a CLOSE_WAIT finding.
const MAX_REMOTES: usize = 10;
/// A retransmit ratio means something with this many segments sent...
const MIN_RETRANSMIT_SEGMENTS: u64 = 100;
/// ...or this many retransmits.
const MIN_RETRANSMITS: u64 = 10;
/// Payload per segment assumed when the kernel's segment count is missing
/// or stale (Ethernet MSS with timestamps).
const ASSUMED_MSS: u64 = 1448;
/// Churn must show opens in at least this many intervals (not one burst).
const MIN_CHURN_INTERVALS: usize = 3;
/// Retransmit ratio or churn rate this many times the threshold is critical.
const CRITICAL_FACTOR: f64 = 5.0;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// One verdict with the numbers behind it. Serialized as is into the
/// report's `findings` (its fields are that part of the wire format).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Finding {
    /// `traffic_growth`, `throughput_decay`, `connection_leak`,
    /// `close_wait_leak`, `retransmit_spike`, `connection_churn`.
    pub(crate) kind: &'static str,
    pub(crate) severity: Severity,
    pub(crate) pid: u32,
    pub(crate) comm: String,
    pub(crate) remote_addr: Option<String>,
    pub(crate) port: Option<u16>,
    pub(crate) summary: String,
    pub(crate) evidence: serde_json::Value,
}

/// Thresholds of the analysis (the commands fill them from their flags).
#[derive(Debug, Clone)]
pub(crate) struct Thresholds {
    pub(crate) growth_ratio: f64,
    pub(crate) close_wait_age_secs: f64,
    pub(crate) retransmit_ratio: f64,
    pub(crate) churn_rate: f64,
    /// Analyse only the last this-many seconds of history.
    pub(crate) window_secs: Option<f64>,
}

/// What the analysis reads.
pub(crate) struct Input<'a> {
    pub(crate) samples: &'a VecDeque<Sample>,
    pub(crate) close_wait: &'a [CloseWait],
    /// Per-flow totals over the model's window; used only when there are no
    /// samples (the samples give the same totals, restricted to the
    /// analysis window).
    pub(crate) flows: &'a [Flow],
    pub(crate) comm: &'a dyn Fn(u32) -> String,
}

/// All findings, most severe first, then by kind, pid and remote.
pub(crate) fn analyze(input: &Input<'_>, thresholds: &Thresholds) -> Vec<Finding> {
    let window = Window::new(input.samples, thresholds.window_secs);
    let totals = flow_totals(&window, input);
    let mut findings = traffic_trends(&window, thresholds.growth_ratio, input.comm);
    findings.extend(connection_leaks(&window, input.comm));
    findings.extend(close_wait_leaks(&window, input.close_wait, thresholds.close_wait_age_secs, input.comm));
    findings.extend(retransmit_spikes(&totals, thresholds.retransmit_ratio, input.comm));
    findings.extend(connection_churn(&window, &totals, thresholds.churn_rate, input.comm));
    findings.sort_by(|a, b| order(a).cmp(&order(b)));
    findings
}

/// Most severe first; the rest only makes the order stable.
fn order(finding: &Finding) -> (Reverse<Severity>, &str, u32, Option<&str>, Option<u16>, &str) {
    (
        Reverse(finding.severity),
        finding.kind,
        finding.pid,
        finding.remote_addr.as_deref(),
        finding.port,
        &finding.summary,
    )
}

/// The analysed samples with the length of each one's interval.
struct Window<'a> {
    samples: Vec<&'a Sample>,
    /// `None` where the interval is unusable (zero, negative, NaN).
    intervals: Vec<Option<f64>>,
}

impl<'a> Window<'a> {
    fn new(all: &'a VecDeque<Sample>, window_secs: Option<f64>) -> Self {
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
            // one ended, even when that one is outside the window. The first
            // retained interval is assumed as long as the next (it cannot
            // start before the trace did).
            let length = match i.checked_sub(1).and_then(|p| all.get(p)) {
                Some(previous) => sample.t_secs - previous.t_secs,
                None => match all.get(1) {
                    Some(next) => sample.t_secs.min(next.t_secs - sample.t_secs),
                    None => sample.t_secs,
                },
            };
            intervals.push(Some(length).filter(|l| l.is_finite() && *l >= MIN_INTERVAL_SECS));
            samples.push(sample);
        }
        Window { samples, intervals }
    }

    /// Seconds covered by the usable intervals.
    fn span_secs(&self) -> f64 {
        self.intervals.iter().flatten().sum()
    }

    /// `(t_secs, count)` of `pid`'s sockets in `state`, from the first sample
    /// that lists the process (before it, it had no sockets to count).
    fn state_series(&self, pid: u32, state: &str) -> Vec<(f64, u64)> {
        let first = self.samples.iter().position(|s| s.sockets.contains_key(&pid)).unwrap_or(self.samples.len());
        self.samples
            .iter()
            .skip(first)
            .filter(|s| s.t_secs.is_finite())
            .map(|s| (s.t_secs, s.sockets.get(&pid).and_then(|c| c.get(state)).copied().unwrap_or(0)))
            .collect()
    }
}

/// One point of a series for a weighted least-squares fit.
#[derive(Debug, Clone, Copy)]
struct Point {
    x: f64,
    y: f64,
    weight: f64,
}

#[derive(Debug, Clone, Copy)]
struct Line {
    slope: f64,
    intercept: f64,
    r_squared: f64,
}

impl Line {
    fn at(&self, x: f64) -> f64 {
        self.intercept + self.slope * x
    }
}

/// Weighted least squares; `None` when the points cannot define a line.
fn fit(points: &[Point]) -> Option<Line> {
    let total: f64 = points.iter().map(|p| p.weight).sum();
    if total.is_nan() || total <= 0.0 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.weight * p.x).sum::<f64>() / total;
    let mean_y = points.iter().map(|p| p.weight * p.y).sum::<f64>() / total;
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for p in points {
        let (dx, dy) = (p.x - mean_x, p.y - mean_y);
        sxx += p.weight * dx * dx;
        sxy += p.weight * dx * dy;
        syy += p.weight * dy * dy;
    }
    if sxx.is_nan() || sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    // A constant series is explained exactly by a flat line.
    let r_squared = if syy > 0.0 { (sxy * sxy / (sxx * syy)).clamp(0.0, 1.0) } else { 1.0 };
    let line = Line { slope, intercept: mean_y - slope * mean_x, r_squared };
    [line.slope, line.intercept, line.r_squared].iter().all(|v| v.is_finite()).then_some(line)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Direction {
    Tx,
    Rx,
}

impl Direction {
    fn bytes(self, counters: &Counters) -> u64 {
        match self {
            Direction::Tx => counters.tx_bytes,
            Direction::Rx => counters.rx_bytes,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Direction::Tx => "tx",
            Direction::Rx => "rx",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Direction::Tx => "send",
            Direction::Rx => "receive",
        }
    }

    /// Which way the data moves relative to the process.
    fn arrow(self) -> &'static str {
        match self {
            Direction::Tx => "->",
            Direction::Rx => "<-",
        }
    }
}

/// What a trend is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Subject {
    Process(u32),
    Flow(FlowKey),
}

impl Subject {
    fn pid(self) -> u32 {
        match self {
            Subject::Process(pid) => pid,
            Subject::Flow(key) => key.pid,
        }
    }
}

/// A rate series that passed the trend tests.
#[derive(Debug, Clone)]
struct Trend {
    subject: Subject,
    direction: Direction,
    growth: bool,
    ratio: f64,
    start_rate: f64,
    end_rate: f64,
    slope: f64,
    r_squared: f64,
    mean_rate: f64,
    span_secs: f64,
    samples: usize,
}

/// `traffic_growth` and `throughput_decay`, per process and per flow, for
/// each direction.
fn traffic_trends(window: &Window<'_>, growth_ratio: f64, comm: &dyn Fn(u32) -> String) -> Vec<Finding> {
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
    trends.iter().map(|t| trend_finding(t, growth_ratio, comm)).collect()
}

/// Fits one key's rate series; `Some` when it is a trend worth reporting.
fn rate_trend(
    window: &Window<'_>,
    active: &[(usize, u64)],
    growth_ratio: f64,
    subject: Subject,
    direction: Direction,
) -> Option<Trend> {
    let &(first_active, _) = active.first()?;
    let start = if first_active > 0 { first_active + 1 } else { 0 };
    // A cheap first test, so most small flows never get a dense series.
    let total = active.iter().filter(|&&(i, _)| i >= start).fold(0u64, |sum, &(_, b)| sum.saturating_add(b));
    let covered_secs: f64 = window.intervals.iter().skip(start).flatten().sum();
    let busy_enough = total as f64 >= MIN_MEAN_RATE * covered_secs;
    if !busy_enough {
        return None;
    }
    let mut bytes = vec![0u64; window.samples.len()];
    for &(i, b) in active {
        if let Some(slot) = bytes.get_mut(i) {
            *slot = b;
        }
    }
    let points: Vec<Point> = (start..bytes.len())
        .filter_map(|i| {
            let sample = window.samples.get(i)?;
            let length = (*window.intervals.get(i)?)?;
            let moved = *bytes.get(i)? as f64;
            Some(Point { x: sample.t_secs - length / 2.0, y: moved / length, weight: length })
        })
        .collect();
    if points.len() < MIN_TREND_POINTS {
        return None;
    }
    let line = fit(&points)?;
    let span_secs: f64 = points.iter().map(|p| p.weight).sum();
    let mean_rate = points.iter().map(|p| p.y * p.weight).sum::<f64>() / span_secs;
    let well_fitted = line.r_squared >= MIN_TREND_R_SQUARED && mean_rate >= MIN_MEAN_RATE;
    if !well_fitted {
        return None;
    }
    let start_rate = line.at(points.first()?.x).max(0.0);
    let end_rate = line.at(points.last()?.x).max(0.0);
    let ratio = end_rate / start_rate.max(RATE_FLOOR);
    let growth = ratio >= growth_ratio;
    let decay = ratio <= 1.0 / growth_ratio;
    if !(growth || decay) || (decay && stopped(&points)) {
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
        mean_rate,
        span_secs,
        samples: points.len(),
    })
}

/// Whether the series ends with a silent stretch: the key stopped.
fn stopped(points: &[Point]) -> bool {
    let silent = points.iter().rev().take_while(|p| p.y <= 0.0).count();
    silent >= MIN_STOPPED_INTERVALS.max(points.len() / 5)
}

fn trend_finding(trend: &Trend, growth_ratio: f64, comm: &dyn Fn(u32) -> String) -> Finding {
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
            "mean_rate": round(trend.mean_rate, 1),
            "window_secs": round(trend.span_secs, 3),
            "samples": trend.samples,
        }),
    )
}

/// A socket count that rose steadily.
#[derive(Debug, Clone, Copy)]
struct Rise {
    first: u64,
    last: u64,
    per_sec: f64,
    r_squared: f64,
    span_secs: f64,
    samples: usize,
}

fn steady_rise(series: &[(f64, u64)], min_rise: f64) -> Option<Rise> {
    if series.len() < MIN_TREND_POINTS {
        return None;
    }
    let points: Vec<Point> = series.iter().map(|&(t, count)| Point { x: t, y: count as f64, weight: 1.0 }).collect();
    let line = fit(&points)?;
    let (first_t, first) = *series.first()?;
    let (last_t, last) = *series.last()?;
    let span_secs = last_t - first_t;
    let steady = line.slope > 0.0
        && line.r_squared >= MIN_RISE_R_SQUARED
        && line.slope * span_secs >= min_rise
        && last > first
        && thirds_increasing(&points);
    steady.then_some(Rise {
        first,
        last,
        per_sec: line.slope,
        r_squared: line.r_squared,
        span_secs,
        samples: points.len(),
    })
}

/// Whether each third of the series is higher on average than the one
/// before: a rise that went on, not one step and a plateau.
fn thirds_increasing(points: &[Point]) -> bool {
    let n = points.len();
    let mean = |part: Option<&[Point]>| match part {
        Some(part) if !part.is_empty() => Some(part.iter().map(|p| p.y).sum::<f64>() / part.len() as f64),
        _ => None,
    };
    match (mean(points.get(..n / 3)), mean(points.get(n / 3..2 * n / 3)), mean(points.get(2 * n / 3..))) {
        (Some(a), Some(b), Some(c)) => a < b && b < c,
        _ => false,
    }
}

/// Every pid with socket counts in the window.
fn socket_pids(window: &Window<'_>) -> BTreeSet<u32> {
    window.samples.iter().flat_map(|s| s.sockets.keys().copied()).collect()
}

/// `connection_leak`: ESTABLISHED sockets of a process rising steadily.
fn connection_leaks(window: &Window<'_>, comm: &dyn Fn(u32) -> String) -> Vec<Finding> {
    let mut findings = Vec::new();
    for pid in socket_pids(window) {
        let Some(rise) = steady_rise(&window.state_series(pid, "ESTABLISHED"), MIN_ESTABLISHED_RISE) else {
            continue;
        };
        let per_minute = rise.per_sec * 60.0;
        let summary = format!(
            "{}: ESTABLISHED connections rising {per_minute:.1}/min over {} ({} -> {})",
            process_label(pid, comm),
            human_duration(rise.span_secs),
            rise.first,
            rise.last
        );
        let critical = rise.last.saturating_sub(rise.first) >= CRITICAL_ESTABLISHED_RISE;
        findings.push(finding(
            "connection_leak",
            if critical { Severity::Critical } else { Severity::Warning },
            pid,
            None,
            comm,
            summary,
            json!({
                "start_count": rise.first,
                "current_count": rise.last,
                "rise_per_minute": round(per_minute, 3),
                "r_squared": round(rise.r_squared, 3),
                "window_secs": round(rise.span_secs, 3),
                "samples": rise.samples,
            }),
        ));
    }
    findings
}

/// `close_wait_leak`: a process holding CLOSE_WAIT sockets older than the
/// threshold, or a CLOSE_WAIT count rising steadily.
fn close_wait_leaks(
    window: &Window<'_>,
    close_wait: &[CloseWait],
    age_threshold: f64,
    comm: &dyn Fn(u32) -> String,
) -> Vec<Finding> {
    let mut by_pid: BTreeMap<u32, Vec<&CloseWait>> = BTreeMap::new();
    for socket in close_wait {
        by_pid.entry(socket.pid).or_default().push(socket);
    }
    let mut pids = socket_pids(window);
    pids.extend(by_pid.keys().copied());
    let mut findings = Vec::new();
    for pid in pids {
        let sockets = by_pid.get(&pid).map(Vec::as_slice).unwrap_or_default();
        let aged = sockets.iter().filter(|s| s.age_secs >= age_threshold).count() as u64;
        let series = window.state_series(pid, "CLOSE_WAIT");
        let rising = steady_rise(&series, MIN_CLOSE_WAIT_RISE);
        if aged == 0 && rising.is_none() {
            continue;
        }
        // The list is current at report time; the series only at the last
        // sample, so it speaks only when the list has nothing for the pid.
        let count = match sockets.len() {
            0 => series.last().map(|&(_, c)| c).unwrap_or(0),
            len => len as u64,
        };
        let oldest = sockets.iter().max_by(|a, b| a.age_secs.total_cmp(&b.age_secs));
        // Sorted as they read.
        let remotes: BTreeSet<String> = sockets.iter().map(|s| s.remote.ip().to_string()).collect();
        let critical = count >= CRITICAL_CLOSE_WAIT_COUNT
            || (age_threshold > 0.0
                && oldest.is_some_and(|o| o.age_secs >= CRITICAL_CLOSE_WAIT_AGE_FACTOR * age_threshold));

        let mut summary = format!("{}: {count} socket(s) in CLOSE_WAIT", process_label(pid, comm));
        if let Some(oldest) = oldest.filter(|_| aged > 0) {
            let at_least = if oldest.age_is_lower_bound { " or more" } else { "" };
            summary.push_str(&format!(
                ", {aged} older than {} (oldest {}{at_least})",
                human_duration(age_threshold),
                human_duration(oldest.age_secs)
            ));
        }
        if let Some(rise) = rising {
            summary.push_str(&format!(
                ", rising {:.1}/min over {} ({} -> {})",
                rise.per_sec * 60.0,
                human_duration(rise.span_secs),
                rise.first,
                rise.last
            ));
        }
        findings.push(finding(
            "close_wait_leak",
            if critical { Severity::Critical } else { Severity::Warning },
            pid,
            None,
            comm,
            summary,
            json!({
                "count": count,
                "older_than_threshold": aged,
                "oldest_age_secs": oldest.map(|o| round(o.age_secs, 3)),
                "age_is_lower_bound": oldest.is_some_and(|o| o.age_is_lower_bound),
                "remotes": remotes.iter().take(MAX_REMOTES).collect::<Vec<_>>(),
                "remotes_total": remotes.len(),
                "threshold": age_threshold,
                "rising": rising.is_some(),
                "rise_per_minute": rising.map(|r| round(r.per_sec * 60.0, 3)),
                "r_squared": rising.map(|r| round(r.r_squared, 3)),
                "window_secs": rising.map(|r| round(r.span_secs, 3)),
            }),
        ));
    }
    findings
}

/// A flow's counters over the analysis window.
#[derive(Debug, Clone, Copy, Default)]
struct FlowWindow {
    counters: Counters,
    /// Intervals in which the flow opened connections.
    opening_intervals: usize,
}

/// Per-flow totals from the window's samples, or from the caller's flow
/// totals when there are no samples at all.
fn flow_totals(window: &Window<'_>, input: &Input<'_>) -> BTreeMap<FlowKey, FlowWindow> {
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

/// `retransmit_spike`: retransmitted / sent segments of a flow above the
/// threshold, with enough traffic to mean something.
fn retransmit_spikes(
    totals: &BTreeMap<FlowKey, FlowWindow>,
    threshold: f64,
    comm: &dyn Fn(u32) -> String,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (key, flow) in totals {
        let c = &flow.counters;
        if c.retransmits == 0 {
            continue;
        }
        // The kernel's count includes retransmits but is read only at
        // retransmits and teardown, so for a live socket it may be stale or
        // missing; bytes sent give a floor, and the larger floor is nearer.
        let estimate = c.tx_bytes.div_ceil(ASSUMED_MSS).saturating_add(c.retransmits);
        let (segments, estimated) = if c.segments_out >= estimate { (c.segments_out, false) } else { (estimate, true) };
        let enough = segments >= MIN_RETRANSMIT_SEGMENTS || c.retransmits >= MIN_RETRANSMITS;
        let ratio = c.retransmits as f64 / segments as f64;
        if !enough || segments == 0 || ratio.is_nan() || ratio <= threshold {
            continue;
        }
        let of = if estimated { format!("~{segments} estimated from bytes sent") } else { segments.to_string() };
        let summary = format!(
            "{}: {:.1}% of sent segments retransmitted ({} of {of}; threshold {:.1}%)",
            flow_label(key, comm, role_arrow(key.role)),
            ratio * 100.0,
            c.retransmits,
            threshold * 100.0
        );
        findings.push(finding(
            "retransmit_spike",
            if ratio >= CRITICAL_FACTOR * threshold { Severity::Critical } else { Severity::Warning },
            key.pid,
            Some(key),
            comm,
            summary,
            json!({
                "retransmits": c.retransmits,
                "segments_out": segments,
                "segments_estimated": estimated,
                "segments_reported": c.segments_out,
                "tx_bytes": c.tx_bytes,
                "ratio": round(ratio, 4),
                "threshold": threshold,
            }),
        ));
    }
    findings
}

/// `connection_churn`: a flow opening connections faster than the threshold
/// over the window, in several intervals.
fn connection_churn(
    window: &Window<'_>,
    totals: &BTreeMap<FlowKey, FlowWindow>,
    threshold: f64,
    comm: &dyn Fn(u32) -> String,
) -> Vec<Finding> {
    let span_secs = window.span_secs();
    if span_secs.is_nan() || span_secs <= 0.0 {
        return Vec::new();
    }
    let mut findings = Vec::new();
    for (key, flow) in totals {
        let c = &flow.counters;
        let per_sec = c.opened as f64 / span_secs;
        if flow.opening_intervals < MIN_CHURN_INTERVALS || per_sec.is_nan() || per_sec <= threshold {
            continue;
        }
        let summary = format!(
            "{}: {per_sec:.1} new connections/s over {} ({} opened, {} closed; threshold {threshold}/s)",
            flow_label(key, comm, role_arrow(key.role)),
            human_duration(span_secs),
            c.opened,
            c.closed
        );
        findings.push(finding(
            "connection_churn",
            if per_sec >= CRITICAL_FACTOR * threshold { Severity::Critical } else { Severity::Warning },
            key.pid,
            Some(key),
            comm,
            summary,
            json!({
                "opened": c.opened,
                "closed": c.closed,
                "failed_connects": c.failed_connects,
                "resets": c.resets(),
                "per_sec": round(per_sec, 3),
                "threshold": threshold,
                "window_secs": round(span_secs, 3),
                "intervals_with_opens": flow.opening_intervals,
            }),
        ));
    }
    findings
}

fn finding(
    kind: &'static str,
    severity: Severity,
    pid: u32,
    flow: Option<&FlowKey>,
    comm: &dyn Fn(u32) -> String,
    summary: String,
    evidence: serde_json::Value,
) -> Finding {
    Finding {
        kind,
        severity,
        pid,
        comm: comm(pid),
        remote_addr: flow.map(|f| f.remote.to_string()),
        port: flow.map(|f| f.port),
        summary,
        evidence,
    }
}

fn process_label(pid: u32, comm: &dyn Fn(u32) -> String) -> String {
    format!("pid {pid} ({})", comm(pid))
}

/// `pid 1 (curl) -> 1.2.3.4:443` for clients (the port is the remote's);
/// `pid 2 (nginx) :80 <- 1.2.3.4` for servers (the port is ours, the remote's
/// is ephemeral).
fn flow_label(key: &FlowKey, comm: &dyn Fn(u32) -> String, arrow: &str) -> String {
    let process = process_label(key.pid, comm);
    match key.role {
        Role::Client => format!("{process} {arrow} {}", SocketAddr::new(key.remote, key.port)),
        Role::Server => format!("{process} :{} {arrow} {}", key.port, key.remote),
    }
}

/// Who connects to whom, for findings without a data direction.
fn role_arrow(role: Role) -> &'static str {
    match role {
        Role::Client => "->",
        Role::Server => "<-",
    }
}

fn human_duration(secs: f64) -> String {
    if secs.is_nan() || secs < 0.0 {
        "?".to_owned()
    } else if secs < 100.0 {
        format!("{secs:.0}s")
    } else if secs < 100.0 * 60.0 {
        format!("{:.0}m", secs / 60.0)
    } else {
        format!("{:.1}h", secs / 3600.0)
    }
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StateCounts;

    const PID: u32 = 4242;

    fn defaults() -> Thresholds {
        Thresholds {
            growth_ratio: 1.5,
            close_wait_age_secs: 30.0,
            retransmit_ratio: 0.02,
            churn_rate: 10.0,
            window_secs: None,
        }
    }

    fn comm(pid: u32) -> String {
        format!("p{pid}")
    }

    fn client(pid: u32, remote: &str, port: u16) -> FlowKey {
        FlowKey { pid, role: Role::Client, remote: remote.parse().expect("ip"), port }
    }

    fn rx(bytes: u64) -> Counters {
        Counters { rx_bytes: bytes, ..Counters::default() }
    }

    fn sample(t_secs: f64, flows: Vec<(FlowKey, Counters)>) -> Sample {
        Sample { t_secs, flows: flows.into_iter().collect(), sockets: HashMap::new() }
    }

    fn with_sockets(mut sample: Sample, pid: u32, states: &[(&'static str, u64)]) -> Sample {
        let counts: StateCounts = states.iter().copied().filter(|&(_, n)| n > 0).collect();
        sample.sockets.insert(pid, counts);
        sample
    }

    /// One flow receiving `rates[i]` bytes/s in 1-s interval `i`; a zero rate
    /// leaves the flow out of the sample, as the model does.
    fn rx_series(key: FlowKey, rates: &[f64]) -> VecDeque<Sample> {
        rates
            .iter()
            .enumerate()
            .map(|(i, &rate)| {
                let flows = if rate > 0.0 { vec![(key, rx(rate as u64))] } else { Vec::new() };
                sample(i as f64 + 1.0, flows)
            })
            .collect()
    }

    /// Deterministic noise in [-1, 1].
    fn noise(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    fn run_with(
        samples: &VecDeque<Sample>,
        close_wait: &[CloseWait],
        flows: &[Flow],
        thresholds: &Thresholds,
    ) -> Vec<Finding> {
        analyze(&Input { samples, close_wait, flows, comm: &comm }, thresholds)
    }

    fn run(samples: &VecDeque<Sample>) -> Vec<Finding> {
        run_with(samples, &[], &[], &defaults())
    }

    fn kinds(findings: &[Finding]) -> Vec<&'static str> {
        findings.iter().map(|f| f.kind).collect()
    }

    fn ramp(from: f64, to: f64, n: usize) -> Vec<f64> {
        (0..n).map(|i| from + (to - from) * i as f64 / (n - 1) as f64).collect()
    }

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

    fn established_series(counts: impl Iterator<Item = u64>) -> VecDeque<Sample> {
        counts
            .enumerate()
            .map(|(i, n)| with_sockets(sample(i as f64 + 1.0, Vec::new()), PID, &[("ESTABLISHED", n)]))
            .collect()
    }

    #[test]
    fn rising_established_count_is_connection_leak() {
        let mut seed = 11;
        let findings =
            run(&established_series((0..60).map(|i| (10.0 + i as f64 / 3.0 + 2.0 * noise(&mut seed)).round() as u64)));
        assert_eq!(kinds(&findings), ["connection_leak"], "{findings:#?}");
        let leak = &findings[0];
        let per_minute = leak.evidence["rise_per_minute"].as_f64().expect("rise");
        assert!((15.0..25.0).contains(&per_minute), "{per_minute}");
        assert!(leak.evidence["r_squared"].as_f64().expect("r2") >= 0.8);
        assert!(leak.evidence["current_count"].as_u64().expect("count") > 20);
    }

    #[test]
    fn flat_or_warming_up_established_count_is_no_leak() {
        let mut seed = 5;
        let flat = established_series((0..60).map(|_| (10.0 + 3.0 * noise(&mut seed)).round() as u64));
        assert!(run(&flat).is_empty());
        let pool_warm_up = established_series((0..60).map(|i| i.min(20)));
        assert!(run(&pool_warm_up).is_empty());
    }

    fn close_wait_socket(pid: u32, remote: &str, age_secs: f64, age_is_lower_bound: bool) -> CloseWait {
        CloseWait {
            pid,
            comm: comm(pid),
            local: "10.0.0.9:40000".parse().expect("address"),
            remote: SocketAddr::new(remote.parse().expect("ip"), 443),
            age_secs,
            age_is_lower_bound,
        }
    }

    #[test]
    fn old_close_wait_sockets_are_close_wait_leak() {
        let sockets = [
            close_wait_socket(7, "10.0.0.1", 45.0, true),
            close_wait_socket(7, "10.0.0.1", 40.0, false),
            close_wait_socket(7, "10.0.0.2", 5.0, false),
        ];
        let findings = run_with(&VecDeque::new(), &sockets, &[], &defaults());
        assert_eq!(kinds(&findings), ["close_wait_leak"], "{findings:#?}");
        let leak = &findings[0];
        assert_eq!((leak.pid, leak.severity), (7, Severity::Warning));
        assert_eq!(leak.evidence["count"], 3);
        assert_eq!(leak.evidence["older_than_threshold"], 2);
        assert_eq!(leak.evidence["oldest_age_secs"], 45.0);
        assert_eq!(leak.evidence["age_is_lower_bound"], true);
        assert_eq!(leak.evidence["remotes"], json!(["10.0.0.1", "10.0.0.2"]));
        assert_eq!(leak.summary, "pid 7 (p7): 3 socket(s) in CLOSE_WAIT, 2 older than 30s (oldest 45s or more)");

        let ancient = [close_wait_socket(7, "10.0.0.1", 400.0, false)];
        let findings = run_with(&VecDeque::new(), &ancient, &[], &defaults());
        assert_eq!(findings[0].severity, Severity::Critical);
    }

    #[test]
    fn young_close_wait_sockets_are_no_leak() {
        let sockets = [close_wait_socket(7, "10.0.0.1", 5.0, false)];
        assert!(run_with(&VecDeque::new(), &sockets, &[], &defaults()).is_empty());
    }

    #[test]
    fn rising_close_wait_count_is_close_wait_leak() {
        let samples: VecDeque<Sample> = (0..60)
            .map(|i| with_sockets(sample(i as f64 + 1.0, Vec::new()), 9, &[("ESTABLISHED", 4), ("CLOSE_WAIT", i / 4)]))
            .collect();
        let findings = run(&samples);
        assert_eq!(kinds(&findings), ["close_wait_leak"], "{findings:#?}");
        assert_eq!(findings[0].evidence["rising"], true);
        assert_eq!(findings[0].evidence["count"], 14);
        assert!(findings[0].summary.contains("rising"), "{}", findings[0].summary);
    }

    fn totals_series(key: FlowKey, per_interval: Counters, n: usize) -> VecDeque<Sample> {
        (0..n).map(|i| sample(i as f64 + 1.0, vec![(key, per_interval)])).collect()
    }

    #[test]
    fn retransmit_ratio_above_threshold_is_spike() {
        let key = client(PID, "203.0.113.5", 443);
        // The kernel's count (data, retransmits and ACKs) exceeds what the bytes
        // imply, so it is the denominator.
        let lossy = Counters { tx_bytes: 90 * 1448, retransmits: 5, segments_out: 100, ..Counters::default() };
        let findings = run(&totals_series(key, lossy, 10));
        assert_eq!(kinds(&findings), ["retransmit_spike"], "{findings:#?}");
        let spike = &findings[0];
        assert_eq!(
            (spike.evidence["retransmits"].as_u64(), spike.evidence["segments_out"].as_u64()),
            (Some(50), Some(1000))
        );
        assert_eq!(spike.evidence["ratio"], 0.05);
        assert_eq!(spike.evidence["segments_estimated"], false);
        assert_eq!(spike.severity, Severity::Warning);
        assert!(spike.summary.starts_with("pid 4242 (p4242) -> 203.0.113.5:443: 5.0% of sent segments"));
    }

    #[test]
    fn retransmits_below_threshold_or_on_little_traffic_are_no_spike() {
        let key = client(PID, "203.0.113.5", 443);
        let healthy = Counters { tx_bytes: 100 * 1448, retransmits: 1, segments_out: 100, ..Counters::default() };
        assert!(run(&totals_series(key, healthy, 10)).is_empty());
        let tiny = Counters { tx_bytes: 10 * 1448, retransmits: 2, segments_out: 20, ..Counters::default() };
        assert!(run(&totals_series(key, tiny, 1)).is_empty());
    }

    #[test]
    fn unknown_segment_count_is_estimated_from_bytes() {
        let key = client(PID, "203.0.113.5", 443);
        let unknown = Counters { tx_bytes: 1000 * 1448, retransmits: 40, segments_out: 0, ..Counters::default() };
        let findings = run(&totals_series(key, unknown, 1));
        assert_eq!(kinds(&findings), ["retransmit_spike"], "{findings:#?}");
        assert_eq!(findings[0].evidence["segments_estimated"], true);
        assert_eq!(findings[0].evidence["segments_out"], 1040);
        assert!(findings[0].summary.contains("estimated from bytes sent"));
    }

    #[test]
    fn flow_totals_are_used_without_samples() {
        let flow = Flow {
            key: client(PID, "203.0.113.5", 443),
            comm: comm(PID),
            counters: Counters {
                tx_bytes: 1000 * 1448,
                retransmits: 100,
                opened: 1,
                segments_out: 1100,
                ..Counters::default()
            },
        };
        let findings = run_with(&VecDeque::new(), &[], &[flow], &defaults());
        assert_eq!(kinds(&findings), ["retransmit_spike"], "{findings:#?}");
        assert_eq!(findings[0].port, Some(443));
    }

    fn churn(opened: u64) -> Counters {
        Counters { opened, closed: opened, tx_bytes: opened * 100, ..Counters::default() }
    }

    #[test]
    fn many_short_connections_are_churn() {
        let key = client(PID, "198.51.100.7", 443);
        let findings = run(&totals_series(key, churn(20), 60));
        assert_eq!(kinds(&findings), ["connection_churn"], "{findings:#?}");
        assert_eq!(findings[0].evidence["per_sec"], 20.0);
        assert_eq!(findings[0].evidence["opened"], 1200);
        assert_eq!(findings[0].severity, Severity::Warning);
    }

    #[test]
    fn slow_or_single_burst_connections_are_no_churn() {
        let key = client(PID, "198.51.100.7", 443);
        assert!(run(&totals_series(key, churn(5), 60)).is_empty());
        let mut burst: VecDeque<Sample> = (0..60).map(|i| sample(i as f64 + 1.0, Vec::new())).collect();
        burst[30] = sample(31.0, vec![(key, churn(2000))]);
        assert!(run(&burst).is_empty());
    }

    #[test]
    fn window_restricts_the_analysis() {
        let key = client(PID, "10.0.0.1", 443);
        let mut rates = ramp(200_000.0, 800_000.0, 40);
        rates.extend([800_000.0; 20]);
        let samples = rx_series(key, &rates);
        assert_eq!(kinds(&run(&samples)), ["traffic_growth"]);
        let recent = Thresholds { window_secs: Some(15.0), ..defaults() };
        assert!(run_with(&samples, &[], &[], &recent).is_empty());

        let churning = totals_series(key, churn(20), 60);
        let nothing = Thresholds { window_secs: Some(-1.0), ..defaults() };
        assert!(run_with(&churning, &[], &[], &nothing).is_empty());
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let key = client(0, "10.0.0.1", 443);
        assert!(run(&VecDeque::new()).is_empty());
        assert!(run(&rx_series(key, &[1e9])).is_empty());
        let odd: VecDeque<Sample> = [0.0, 0.0, f64::NAN, 3.0, 3.0, 5.0, f64::INFINITY, 7.0]
            .into_iter()
            .map(|t| {
                let s = sample(
                    t,
                    vec![(
                        key,
                        Counters { tx_bytes: u64::MAX, retransmits: u64::MAX, opened: u64::MAX, ..Counters::default() },
                    )],
                );
                with_sockets(s, 0, &[("ESTABLISHED", u64::MAX), ("CLOSE_WAIT", 1)])
            })
            .collect();
        for window_secs in [None, Some(f64::NAN), Some(0.0), Some(f64::INFINITY)] {
            let thresholds =
                Thresholds { window_secs, growth_ratio: f64::NAN, close_wait_age_secs: f64::NAN, ..defaults() };
            let findings = run_with(&odd, &[close_wait_socket(0, "10.0.0.1", f64::NAN, true)], &[], &thresholds);
            for f in &findings {
                assert!(serde_json::to_string(f).is_ok());
            }
            run_with(&odd, &[], &[], &Thresholds { window_secs, ..defaults() });
        }
    }

    #[test]
    fn findings_are_sorted_most_severe_first() {
        let lossy = Counters { tx_bytes: 100 * 1448, retransmits: 30, segments_out: 100, ..Counters::default() };
        let mut samples = totals_series(client(2, "10.0.0.1", 443), lossy, 10);
        for s in samples.iter_mut() {
            s.flows.insert(client(1, "10.0.0.2", 443), churn(20));
            s.flows.insert(client(3, "10.0.0.3", 443), Counters { retransmits: 5, segments_out: 100, ..lossy });
        }
        let findings = run(&samples);
        let order: Vec<(Severity, &str, u32)> = findings.iter().map(|f| (f.severity, f.kind, f.pid)).collect();
        assert_eq!(
            order,
            [
                (Severity::Critical, "retransmit_spike", 2),
                (Severity::Warning, "connection_churn", 1),
                (Severity::Warning, "retransmit_spike", 3),
            ]
        );
    }
}
