//! TCP health findings: `latency_rise`, `slow_reader`, `peer_not_reading`
//! and `connect_failures`, per flow, and the `likely_cause` that
//! `traffic_growth` and `throughput_decay` carry.
//!
//! How they avoid crying wolf:
//! - An RTT rise needs >= 5 sampled intervals, a ratio of at least
//!   `--rtt-ratio` between the fitted (or, for a step, the first and last
//!   thirds') RTTs and at least +5 ms: 50 us -> 120 us on loopback is no
//!   news. A line that explains the series (R² >= 0.6) or a lasting level
//!   shift (the later part's lower quartile above the earlier part's upper
//!   quartile) is a rise; a lone spike is neither.
//! - A slow reader keeps at least half its receive buffer unread in >= 60%
//!   of >= 10 s of sampled intervals, or its backlog rises steadily.
//! - A peer that does not read holds the sender rwnd-limited for >= 50% of
//!   >= 5 s of busy time (the kernel's own chrono counters).
//! - Connect failures: >= 3, and >= 10% of the attempts to that remote.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{
    finding,
    fit::{fit, steady_rise, Point, MIN_TREND_POINTS},
    flow_label, human_duration, round,
    window::{FlowWindow, Window},
    Finding, Severity, CRITICAL_FACTOR,
};
use crate::{
    model::{jiffies_ms, FailReason, FlowKey, Role},
    units,
};

/// How well a line must explain an RTT series to call it a rise.
const MIN_RTT_R_SQUARED: f64 = 0.6;
/// The least RTT rise worth a finding, us.
const MIN_RTT_RISE_US: f64 = 5_000.0;
/// Share of sampled intervals a slow reader is backlogged in...
const SLOW_READER_SHARE: f64 = 0.6;
/// ...over at least this long.
const SLOW_READER_MIN_SECS: f64 = 10.0;
/// A backlog that rises steadily by this much is a slow reader too.
const SLOW_READER_MIN_RISE: f64 = 64.0 * 1024.0;
/// Share of busy time limited by the peer's window...
const RWND_SHARE: f64 = 0.5;
/// ...with at least this much busy time, ms.
const RWND_MIN_BUSY_MS: u64 = 5_000;
/// Failed connects to one remote worth a finding...
const MIN_FAILED_CONNECTS: u64 = 3;
/// ...and their share of the attempts.
const MIN_FAILED_SHARE: f64 = 0.1;
/// How much a receiver's rate must fall for its own RTT estimate's rise
/// to count.
const RECEIVER_RATE_FALL: f64 = 1.25;
/// A trend's cause: an RTT this many times higher at the end...
const CAUSE_RTT_RATIO: f64 = 1.5;
/// ...or limited by one side for this share of the busy time...
const CAUSE_LIMITED_SHARE: f64 = 0.5;
/// ...of at least this much, ms.
const CAUSE_MIN_BUSY_MS: u64 = 1_000;

/// The health findings of every flow in the window.
pub(super) fn health_findings(
    window: &Window<'_>,
    totals: &BTreeMap<FlowKey, FlowWindow>,
    rtt_ratio: f64,
    hz: Option<u32>,
    comm: &dyn Fn(u32) -> String,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    for key in flow_keys(window) {
        if let Some(rise) = rtt_rise(window, &key) {
            if rise.ratio >= rtt_ratio
                && rise.end_us - rise.start_us >= MIN_RTT_RISE_US
                && !paced_receiver(window, &key)
            {
                findings.push(latency_rise(&key, &rise, rtt_ratio, comm));
            }
        }
        if let Some(finding) = slow_reader(window, &key, comm) {
            findings.push(finding);
        }
    }
    for (key, flow) in totals {
        if let Some(finding) = hz.and_then(|hz| peer_not_reading(key, flow, hz, comm)) {
            findings.push(finding);
        }
        if let Some(finding) = connect_failures(key, flow, comm) {
            findings.push(finding);
        }
    }
    findings
}

/// Flows with health samples in the window.
fn flow_keys(window: &Window<'_>) -> Vec<FlowKey> {
    let mut keys: Vec<FlowKey> = window.samples.iter().flat_map(|s| s.health.keys().copied()).collect();
    keys.sort();
    keys.dedup();
    keys
}

/// An RTT series' rise.
#[derive(Debug, Clone, Copy)]
pub(super) struct RttRise {
    pub(super) start_us: f64,
    pub(super) end_us: f64,
    pub(super) ratio: f64,
    pub(super) r_squared: f64,
    pub(super) first_secs: f64,
    pub(super) last_secs: f64,
    pub(super) samples: usize,
}

/// The flow's RTT at the window's start and end: fitted when a line
/// explains the series, else the medians before and after a lasting step
/// up ([`level_shift`]). `None` without a rise of either shape.
pub(super) fn rtt_rise(window: &Window<'_>, key: &FlowKey) -> Option<RttRise> {
    let points: Vec<Point> = window
        .samples
        .iter()
        .filter_map(|s| {
            let mean = s.health.get(key)?.rtt.mean()?;
            Some(Point { x: s.t_secs, y: mean, weight: 1.0 })
        })
        .collect();
    if points.len() < MIN_TREND_POINTS {
        return None;
    }
    let line = fit(&points)?;
    let (first, last) = (points.first()?, points.last()?);
    let rise = |start_us: f64, end_us: f64| RttRise {
        start_us,
        end_us,
        ratio: end_us / start_us.max(1.0),
        r_squared: line.r_squared,
        first_secs: first.x,
        last_secs: last.x,
        samples: points.len(),
    };
    if line.slope > 0.0 && line.r_squared >= MIN_RTT_R_SQUARED {
        return Some(rise(line.at(first.x).max(0.0), line.at(last.x)));
    }
    level_shift(&points).map(|(before, after)| rise(before, after))
}

/// A step up that lasts: the split of the series whose later part's median
/// is the highest multiple of the earlier part's, where the later part's
/// lower quartile clears the earlier part's upper quartile (noise and a
/// lone spike do not), and the later part spans at least three points and
/// a sixth of the series. Returns the two medians.
fn level_shift(points: &[Point]) -> Option<(f64, f64)> {
    let n = points.len();
    let shortest = 3.max(n / 6);
    if n < 3 + shortest {
        return None;
    }
    let stride = (n / 20).max(1);
    let mut best: Option<(f64, f64)> = None;
    for split in (3..=n - shortest).step_by(stride) {
        let before: Vec<f64> = points[..split].iter().map(|p| p.y).collect();
        let after: Vec<f64> = points[split..].iter().map(|p| p.y).collect();
        if quantile(&after, 0.25) <= quantile(&before, 0.75) {
            continue;
        }
        let (from, to) = (median(&before), median(&after));
        if best.is_none_or(|(f, t)| to / from.max(1.0) > t / f.max(1.0)) {
            best = Some((from, to));
        }
    }
    best
}

fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n => sorted[((n - 1) as f64 * q).round() as usize],
    }
}

/// A receiver's RTT estimate also measures the sender's own pauses (the
/// kernel times it from the timestamp the sender echoes, which is old when
/// the sender was idle), so it rises when a pacing sender sends more at
/// once. A rise of the path's RTT slows a download: a receiver's estimate
/// counts as a rise only when the receive rate fell with it (the last
/// third of the window 1.25 times below the first). True (no rise) when
/// most RTT observations are the receiver's and the rate did not fall.
fn paced_receiver(window: &Window<'_>, key: &FlowKey) -> bool {
    let (mut observations, mut by_receiver) = (0u64, 0u64);
    let mut received = Vec::new();
    for (sample, length) in window.samples.iter().zip(&window.intervals) {
        if let Some(health) = sample.health.get(key) {
            observations += health.rtt.count;
            by_receiver += u64::from(health.rtt_by_receiver);
        }
        if let (Some(length), Some(counters)) = (length, sample.flows.get(key)) {
            received.push(counters.rx_bytes as f64 / length);
        }
    }
    if by_receiver * 2 <= observations || received.len() < 3 {
        return false;
    }
    let third = received.len() / 3;
    let mean = |part: &[f64]| part.iter().sum::<f64>() / part.len().max(1) as f64;
    mean(&received[received.len() - third..]) * RECEIVER_RATE_FALL > mean(&received[..third])
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn latency_rise(key: &FlowKey, rise: &RttRise, rtt_ratio: f64, comm: &dyn Fn(u32) -> String) -> Finding {
    let summary = format!(
        "{}: RTT rose {:.1}x in {} ({} -> {})",
        flow_label(key, comm, "->"),
        rise.ratio,
        human_duration(rise.last_secs - rise.first_secs),
        units::duration_us(rise.start_us),
        units::duration_us(rise.end_us),
    );
    let severity = if rise.ratio >= 2.0 * rtt_ratio { Severity::Critical } else { Severity::Warning };
    finding(
        "latency_rise",
        severity,
        key.pid,
        Some(key),
        comm,
        summary,
        json!({
            "start_rtt_us": round(rise.start_us, 1),
            "end_rtt_us": round(rise.end_us, 1),
            "ratio": round(rise.ratio, 3),
            "r2": round(rise.r_squared, 3),
            "samples": rise.samples,
            "first_active_secs": round(rise.first_secs, 3),
            "last_active_secs": round(rise.last_secs, 3),
        }),
    )
}

fn slow_reader(window: &Window<'_>, key: &FlowKey, comm: &dyn Fn(u32) -> String) -> Option<Finding> {
    let mut intervals = 0u64;
    let mut backlogged = 0u64;
    let mut secs = 0.0;
    let mut max_queue = 0u64;
    let mut series = Vec::new();
    for (sample, length) in window.samples.iter().zip(&window.intervals) {
        let Some(health) = sample.health.get(key).filter(|h| h.sockets > 0) else { continue };
        intervals += 1;
        backlogged += u64::from(health.backlogged);
        secs += length.unwrap_or(0.0);
        max_queue = max_queue.max(health.recv_queue);
        series.push((sample.t_secs, health.recv_queue));
    }
    let mostly_backlogged =
        secs >= SLOW_READER_MIN_SECS && intervals > 0 && backlogged as f64 >= SLOW_READER_SHARE * intervals as f64;
    let rising = steady_rise(&series, SLOW_READER_MIN_RISE);
    if !mostly_backlogged && rising.is_none() {
        return None;
    }
    let summary = format!(
        "{}: received data left unread ({} backlogged at most, {backlogged} of {intervals} intervals with half the receive buffer full)",
        flow_label(key, comm, "<-"),
        units::bytes(max_queue),
    );
    let severity = if intervals > 0 && backlogged == intervals { Severity::Critical } else { Severity::Warning };
    Some(finding(
        "slow_reader",
        severity,
        key.pid,
        Some(key),
        comm,
        summary,
        json!({
            "recv_queue_bytes_max": max_queue,
            "intervals_backlogged": backlogged,
            "intervals": intervals,
            "rising": rising.is_some(),
        }),
    ))
}

/// Busy, rwnd-limited and sndbuf-limited ms of a flow's window.
fn limited_ms(flow: &FlowWindow, hz: u32) -> (u64, u64, u64) {
    let counters = &flow.counters;
    (
        jiffies_ms(counters.busy_jiffies, hz),
        jiffies_ms(counters.rwnd_jiffies, hz),
        jiffies_ms(counters.sndbuf_jiffies, hz),
    )
}

fn peer_not_reading(key: &FlowKey, flow: &FlowWindow, hz: u32, comm: &dyn Fn(u32) -> String) -> Option<Finding> {
    let (busy_ms, rwnd_ms, _) = limited_ms(flow, hz);
    if busy_ms < RWND_MIN_BUSY_MS || (rwnd_ms as f64) < RWND_SHARE * busy_ms as f64 {
        return None;
    }
    let share = rwnd_ms as f64 / busy_ms as f64;
    let summary = format!(
        "{}: the peer does not read fast enough: sending was limited by its receive window {:.0}% of {} busy",
        flow_label(key, comm, "->"),
        share * 100.0,
        human_duration(busy_ms as f64 / 1000.0),
    );
    let severity = if share >= 0.9 { Severity::Critical } else { Severity::Warning };
    Some(finding(
        "peer_not_reading",
        severity,
        key.pid,
        Some(key),
        comm,
        summary,
        json!({ "rwnd_limited_ms": rwnd_ms, "busy_ms": busy_ms, "share": round(share, 3) }),
    ))
}

fn connect_failures(key: &FlowKey, flow: &FlowWindow, comm: &dyn Fn(u32) -> String) -> Option<Finding> {
    let counters = &flow.counters;
    let failed = counters.failed_connects;
    if key.role != Role::Client || failed < MIN_FAILED_CONNECTS {
        return None;
    }
    let attempts = failed + counters.opened;
    let share = failed as f64 / attempts as f64;
    if share < MIN_FAILED_SHARE {
        return None;
    }
    let by_reason: serde_json::Map<String, Value> =
        FailReason::ALL.iter().map(|r| (r.name().to_owned(), json!(r.count(counters)))).collect();
    let reasons: Vec<String> = FailReason::ALL
        .iter()
        .filter(|r| r.count(counters) > 0)
        .map(|r| format!("{} {}", r.count(counters), r.name()))
        .collect();
    let summary =
        format!("{}: {failed} of {attempts} connects failed ({})", flow_label(key, comm, "->"), reasons.join(", "));
    let severity = if share >= CRITICAL_FACTOR * MIN_FAILED_SHARE { Severity::Critical } else { Severity::Warning };
    Some(finding(
        "connect_failures",
        severity,
        key.pid,
        Some(key),
        comm,
        summary,
        json!({
            "attempts": attempts,
            "failed": failed,
            "share": round(share, 3),
            "by_reason": by_reason,
            "syn_retransmits": counters.syn_retransmits,
        }),
    ))
}

/// Why a flow's throughput moved, from its health over the window: its RTT
/// rose, it retransmitted, the receiver's window or its own send buffer
/// held it back, or `unknown`; with the numbers that decided it.
pub(super) fn likely_cause(
    window: &Window<'_>,
    key: &FlowKey,
    flow: Option<&FlowWindow>,
    retransmit_ratio: f64,
    hz: Option<u32>,
) -> Value {
    let rise = rtt_rise(window, key);
    let counters = flow.map(|f| f.counters).unwrap_or_default();
    let retransmits =
        if counters.segments_out > 0 { Some(counters.retransmits as f64 / counters.segments_out as f64) } else { None };
    let limited = flow.zip(hz).map(|(f, hz)| limited_ms(f, hz));
    let share = |part: u64, busy: u64| if busy >= CAUSE_MIN_BUSY_MS { part as f64 / busy as f64 } else { 0.0 };
    let cause = if rise.is_some_and(|r| r.ratio >= CAUSE_RTT_RATIO && r.end_us - r.start_us >= MIN_RTT_RISE_US) {
        "rtt_rise"
    } else if retransmits.is_some_and(|r| r >= retransmit_ratio) && counters.retransmits > 0 {
        "retransmits"
    } else if limited.is_some_and(|(busy, rwnd, _)| share(rwnd, busy) >= CAUSE_LIMITED_SHARE) {
        "receiver_window"
    } else if limited.is_some_and(|(busy, _, sndbuf)| share(sndbuf, busy) >= CAUSE_LIMITED_SHARE) {
        "sender_limited"
    } else {
        "unknown"
    };
    json!({
        "likely_cause": cause,
        "cause_evidence": {
            "start_rtt_us": rise.map(|r| round(r.start_us, 1)),
            "end_rtt_us": rise.map(|r| round(r.end_us, 1)),
            "retransmit_ratio": retransmits.map(|r| round(r, 4)),
            "busy_ms": limited.map(|l| l.0),
            "rwnd_limited_ms": limited.map(|l| l.1),
            "sndbuf_limited_ms": limited.map(|l| l.2),
        },
    })
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use crate::{
        analysis::{tests::*, Severity},
        model::{Counters, Dist, FlowHealth, Sample},
    };

    /// One client flow with one sampled socket per 1-s interval and the RTT
    /// (us) and receive backlog given.
    fn health_series(key: crate::model::FlowKey, rtts: &[u64], backlog: Option<(u64, bool)>) -> VecDeque<Sample> {
        rtts.iter()
            .enumerate()
            .map(|(i, &rtt)| {
                let mut s = sample(i as f64 + 1.0, vec![(key, rx(1000))]);
                let mut dist = Dist::default();
                dist.observe(rtt);
                let (recv_queue, backlogged) = backlog.unwrap_or((0, false));
                s.health
                    .insert(key, FlowHealth { rtt: dist, sockets: 1, recv_queue, backlogged, ..FlowHealth::default() });
                s
            })
            .collect()
    }

    #[test]
    fn an_rtt_step_mid_run_is_a_latency_rise_and_a_steady_one_is_not() {
        let key = client(PID, "10.213.0.2", 5000);
        let mut rtts: Vec<u64> = vec![100_000; 15];
        rtts.extend(vec![300_000; 15]);
        let findings = run(&health_series(key, &rtts, None));
        assert_eq!(kinds(&findings), ["latency_rise"], "{findings:#?}");
        let rise = &findings[0];
        assert!(rise.evidence["ratio"].as_f64().expect("ratio") >= 2.0, "{rise:#?}");
        assert_eq!((rise.remote_addr.as_deref(), rise.port), (Some("10.213.0.2"), Some(5000)));
        // A step late in the run (a fifth of the points) still shows.
        let mut late: Vec<u64> = vec![100_000; 24];
        late.extend(vec![300_000; 6]);
        assert_eq!(kinds(&run(&health_series(key, &late, None))), ["latency_rise"]);
        let mut seed = 3;
        let steady: Vec<u64> = (0..30).map(|_| (100_000.0 * (1.0 + 0.2 * noise(&mut seed))) as u64).collect();
        assert!(run(&health_series(key, &steady, None)).is_empty());
        // Loopback: 50 us -> 120 us is a ratio, not news.
        let tiny: Vec<u64> = (0..30).map(|i| 50 + i * 3).collect();
        assert!(run(&health_series(key, &tiny, None)).is_empty());
        // One spike is no rise.
        let mut spike = vec![100_000u64; 30];
        spike[29] = 900_000;
        assert!(run(&health_series(key, &spike, None)).is_empty());
    }

    #[test]
    fn a_receivers_estimate_counts_only_when_the_download_slows() {
        let key = client(PID, "127.0.0.1", 40000);
        // 8 -> 43 ms of receiver-side RTT while the data rate ramps 4x.
        let samples: VecDeque<Sample> = (0..30)
            .map(|i| {
                let mut s = sample(i as f64 + 1.0, vec![(key, rx(200_000 + 20_000 * i))]);
                let mut dist = Dist::default();
                dist.observe(8_000 + 1_200 * i);
                s.health.insert(key, FlowHealth { rtt: dist, rtt_by_receiver: 1, sockets: 1, ..FlowHealth::default() });
                s
            })
            .collect();
        assert!(!kinds(&run(&samples)).contains(&"latency_rise"), "{:#?}", run(&samples));
        // The same estimate at a steady rate is still the sender's pacing...
        let steady: VecDeque<Sample> = samples
            .iter()
            .cloned()
            .map(|mut s| {
                s.flows.insert(key, rx(300_000));
                s
            })
            .collect();
        assert!(!kinds(&run(&steady)).contains(&"latency_rise"));
        // ...but a download that slows down as it rises is a rise.
        let slowing: VecDeque<Sample> = samples
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, mut s)| {
                s.flows.insert(key, rx(800_000 - 20_000 * i as u64));
                s
            })
            .collect();
        assert!(kinds(&run(&slowing)).contains(&"latency_rise"), "{:#?}", run(&slowing));
    }

    #[test]
    fn a_backlogged_reader_is_a_slow_reader() {
        let key = client(PID, "10.0.0.1", 443);
        let backlogged = health_series(key, &[1000; 20], Some((400_000, true)));
        let findings = run(&backlogged);
        assert_eq!(kinds(&findings), ["slow_reader"], "{findings:#?}");
        assert_eq!(findings[0].evidence["recv_queue_bytes_max"], 400_000);
        assert_eq!(findings[0].evidence["intervals_backlogged"], 20);
        assert_eq!(findings[0].severity, Severity::Critical);
        // Too short to tell.
        assert!(run(&health_series(key, &[1000; 6], Some((400_000, true)))).is_empty());
        assert!(run(&health_series(key, &[1000; 20], Some((100, false)))).is_empty());
    }

    #[test]
    fn a_sender_held_by_the_peers_window_is_peer_not_reading() {
        let key = client(PID, "10.0.0.1", 443);
        // HZ 250: 250 jiffies a second; 10 s busy, 8 s of it rwnd-limited.
        let counters = Counters { tx_bytes: 1, busy_jiffies: 2500, rwnd_jiffies: 2000, ..Counters::default() };
        let samples = totals_series(key, counters, 1);
        let findings = run_health(&samples, Some(250));
        assert_eq!(kinds(&findings), ["peer_not_reading"], "{findings:#?}");
        assert_eq!(findings[0].evidence["rwnd_limited_ms"], 8000);
        assert_eq!(findings[0].evidence["busy_ms"], 10000);
        // Without HZ the chrono counters say nothing.
        assert!(run_health(&samples, None).is_empty());
        let fine = Counters { rwnd_jiffies: 200, ..counters };
        assert!(run_health(&totals_series(key, fine, 1), Some(250)).is_empty());
    }

    #[test]
    fn failing_connects_to_one_remote_are_connect_failures_with_reasons() {
        let key = client(PID, "10.213.0.2", 81);
        let counters = Counters {
            failed_connects: 4,
            failed_refused: 3,
            failed_timeout: 1,
            syn_retransmits: 2,
            opened: 6,
            ..Counters::default()
        };
        let findings = run(&totals_series(key, counters, 1));
        assert_eq!(kinds(&findings), ["connect_failures"], "{findings:#?}");
        let evidence = &findings[0].evidence;
        assert_eq!((evidence["attempts"].as_u64(), evidence["failed"].as_u64()), (Some(10), Some(4)));
        assert_eq!(evidence["by_reason"]["refused"], 3);
        assert_eq!(evidence["by_reason"]["timeout"], 1);
        assert_eq!(evidence["by_reason"]["unreachable"], 0);
        assert!(
            findings[0].summary.contains("4 of 10 connects failed (3 refused, 1 timeout)"),
            "{}",
            findings[0].summary
        );
        // Two failures, or 2% of attempts, are not a pattern.
        assert!(run(&totals_series(key, Counters { failed_connects: 2, ..counters }, 1)).is_empty());
        assert!(run(&totals_series(key, Counters { opened: 200, ..counters }, 1)).is_empty());
    }
}
