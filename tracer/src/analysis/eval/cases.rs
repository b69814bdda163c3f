//! The generated cases: shapes users meet, each labelled with the findings
//! it must raise (every other kind must stay silent), built at the scales
//! where the shape makes sense, for any seed.

use std::net::SocketAddr;

use super::{
    gen::{health, lerp, Arrival, Rng, Scale, Timeline, AGENT, ONE_SHOT_120, ONE_SHOT_30, ONE_SHOT_60},
    Case, Check,
};
use crate::model::{CloseWait, Counters, FlowHealth, FlowKey, Role};

/// The traced process of every generated case.
pub(super) const PID: u32 = 4242;

const GROWTH: &str = "traffic_growth";
const DECAY: &str = "throughput_decay";
const LEAK: &str = "connection_leak";
const CLOSE_WAIT: &str = "close_wait_leak";
const RETRANSMITS: &str = "retransmit_spike";
const CHURN: &str = "connection_churn";
const LATENCY: &str = "latency_rise";
const SLOW_READER: &str = "slow_reader";
const PEER: &str = "peer_not_reading";
const CONNECTS: &str = "connect_failures";

const ALL_SCALES: &[Scale] = &[ONE_SHOT_30, ONE_SHOT_60, ONE_SHOT_120, AGENT];
const LONG_SCALES: &[Scale] = &[ONE_SHOT_60, ONE_SHOT_120, AGENT];
const AGENT_ONLY: &[Scale] = &[AGENT];

/// What a shape adds besides the samples.
#[derive(Default)]
struct Extra {
    close_wait: Vec<CloseWait>,
    hz: Option<u32>,
    checks: Vec<Check>,
}

type Build = Box<dyn Fn(&mut Timeline, &mut Rng) -> Extra>;

struct Shape {
    family: &'static str,
    name: &'static str,
    expect: &'static [&'static str],
    scales: &'static [Scale],
    build: Build,
}

fn shape(
    family: &'static str,
    name: &'static str,
    expect: &'static [&'static str],
    scales: &'static [Scale],
    build: impl Fn(&mut Timeline, &mut Rng) -> Extra + 'static,
) -> Shape {
    Shape { family, name, expect, scales, build: Box::new(build) }
}

fn key() -> FlowKey {
    FlowKey { pid: PID, role: Role::Client, remote: "203.0.113.10".parse().expect("ip"), port: 443 }
}

/// A received-bytes flow whose rate at `u` (0..1 of the window) is `rate(u, rng)`.
fn download(tl: &mut Timeline, rng: &mut Rng, arrival: Arrival, rate: impl Fn(f64) -> f64) {
    let secs = tl.scale.secs;
    let bytes = tl.bytes(rng, arrival, &|t| rate(t / secs));
    tl.add_rx(key(), &bytes);
}

fn ratio(kind: &'static str, low: f64, high: f64) -> Check {
    Check::Range { kind, key: "ratio", low, high }
}

fn checks(checks: Vec<Check>) -> Extra {
    Extra { checks, ..Extra::default() }
}

/// A rate trend's span: the fit covers `[first, last]` seconds, give or take
/// `slack` intervals.
fn span(kind: &'static str, tl: &Timeline, first: f64, last: f64, slack: f64) -> Vec<Check> {
    let d = slack * tl.scale.interval;
    vec![
        Check::Range { kind, key: "first_active_secs", low: first - d, high: first + d },
        Check::Range { kind, key: "last_active_secs", low: last - d, high: last + d },
    ]
}

/// Every generated shape.
fn shapes() -> Vec<Shape> {
    let mut shapes = traffic_shapes();
    shapes.extend(quiet_traffic_shapes());
    shapes.extend(socket_shapes());
    shapes.extend(counter_shapes());
    shapes.extend(health_shapes());
    shapes
}

fn traffic_shapes() -> Vec<Shape> {
    vec![
        shape("traffic", "linear ramp 200 -> 800 KB/s", &[GROWTH], ALL_SCALES, |tl, rng| {
            download(tl, rng, Arrival::Smooth, |u| lerp(u, 0.0, 1.0, 200e3, 800e3));
            checks(vec![ratio(GROWTH, 3.2, 4.8)])
        }),
        shape("traffic", "ramp starting at 30% of the window", &[GROWTH], ALL_SCALES, |tl, rng| {
            let start = rng.range(0.25, 0.35);
            download(tl, rng, Arrival::Smooth, |u| if u < start { 0.0 } else { lerp(u, start, 1.0, 200e3, 800e3) });
            checks(vec![ratio(GROWTH, 2.8, 5.2)])
        }),
        shape("traffic", "ramp stopping at 80% of the window (trailing silence)", &[GROWTH], ALL_SCALES, |tl, rng| {
            let stop = rng.range(0.7, 0.85);
            download(tl, rng, Arrival::Smooth, |u| if u >= stop { 0.0 } else { lerp(u, 0.0, stop, 200e3, 800e3) });
            let mut checks = vec![ratio(GROWTH, 3.0, 5.0)];
            let secs = tl.scale.secs;
            checks.extend(span(GROWTH, tl, 0.0, stop * secs, 1.6));
            Extra { checks, ..Extra::default() }
        }),
        shape("traffic", "ramp followed by one silent interval", &[GROWTH], ALL_SCALES, |tl, rng| {
            let stop = 1.0 - tl.scale.interval / tl.scale.secs;
            download(tl, rng, Arrival::Smooth, |u| if u >= stop { 0.0 } else { lerp(u, 0.0, stop, 200e3, 800e3) });
            checks(vec![ratio(GROWTH, 3.0, 5.0)])
        }),
        shape("traffic", "ramp inside the window (starts late, stops early)", &[GROWTH], ALL_SCALES, |tl, rng| {
            let (start, stop) = (rng.range(0.1, 0.25), rng.range(0.7, 0.85));
            download(tl, rng, Arrival::Smooth, |u| {
                if u < start || u >= stop {
                    0.0
                } else {
                    lerp(u, start, stop, 200e3, 800e3)
                }
            });
            let secs = tl.scale.secs;
            let mut checks = vec![ratio(GROWTH, 2.8, 5.2)];
            checks.extend(span(GROWTH, tl, start * secs, stop * secs, 2.1));
            Extra { checks, ..Extra::default() }
        }),
        // The field report: +18-26%/min for 5 min, flat for 3, then +40%
        // (a 15-min window; a one-shot trace sees the same shape faster).
        shape("traffic", "ramp, plateau, then a +40% jump", &[GROWTH], ALL_SCALES, |tl, rng| {
            let per_step = rng.range(1.18, 1.26);
            download(tl, rng, Arrival::Smooth, |u| {
                let minutes = u * 15.0;
                let ramp = per_step.powf(minutes.min(5.0));
                let jump = if minutes >= 8.0 { 1.4 } else { 1.0 };
                900e3 * ramp * jump
            });
            checks(vec![ratio(GROWTH, 1.8, 6.0)])
        }),
        shape("traffic", "exponential growth x4", &[GROWTH], ALL_SCALES, |tl, rng| {
            download(tl, rng, Arrival::Smooth, |u| 200e3 * 4f64.powf(u));
            checks(vec![ratio(GROWTH, 3.0, 8.0)])
        }),
        shape("traffic", "ramp under bursty traffic (100 ms bursts)", &[GROWTH], ALL_SCALES, |tl, rng| {
            download(tl, rng, Arrival::Bursty, |u| lerp(u, 0.0, 1.0, 200e3, 800e3));
            checks(vec![ratio(GROWTH, 2.0, 10.0)])
        }),
        shape("traffic", "gentle ramp x1.8", &[GROWTH], ALL_SCALES, |tl, rng| {
            download(tl, rng, Arrival::Smooth, |u| lerp(u, 0.0, 1.0, 500e3, 900e3));
            checks(vec![ratio(GROWTH, 1.5, 2.2)])
        }),
        shape("traffic", "ramp of an upload (tx)", &[GROWTH], ALL_SCALES, |tl, rng| {
            let secs = tl.scale.secs;
            let bytes = tl.bytes(rng, Arrival::Smooth, &|t| lerp(t / secs, 0.0, 1.0, 100e3, 400e3));
            tl.add_tx(key(), &bytes);
            checks(vec![ratio(GROWTH, 3.0, 5.0), Check::Text { kind: GROWTH, key: "direction", value: "tx" }])
        }),
        // The same flow key over new connections: a short gap, then the
        // ramp goes on.
        shape("traffic", "ramp of a flow that reconnects mid-window", &[GROWTH], ALL_SCALES, |tl, rng| {
            let at = rng.range(0.4, 0.6);
            // A reconnect with a back-off: 0.3-2 s without data.
            let gap = rng.range(0.3, 2.0) / tl.scale.secs;
            download(tl, rng, Arrival::Smooth, |u| {
                if (at..at + gap).contains(&u) {
                    0.0
                } else {
                    lerp(u, 0.0, 1.0, 200e3, 800e3)
                }
            });
            let opens: Vec<Counters> = (0..tl.len())
                .map(|i| {
                    let resumed = (at + gap) * tl.scale.secs;
                    let reopened = i == 0 || (tl.end(i) - tl.scale.interval..tl.end(i)).contains(&resumed);
                    Counters { opened: u64::from(reopened), ..Counters::default() }
                })
                .collect();
            tl.add_flow(key(), opens);
            checks(vec![ratio(GROWTH, 2.5, 6.0)])
        }),
        shape("traffic", "linear decay 800 -> 200 KB/s", &[DECAY], ALL_SCALES, |tl, rng| {
            download(tl, rng, Arrival::Smooth, |u| lerp(u, 0.0, 1.0, 800e3, 200e3));
            checks(vec![ratio(DECAY, 0.2, 0.32)])
        }),
        shape("traffic", "decay under bursty traffic", &[DECAY], ALL_SCALES, |tl, rng| {
            download(tl, rng, Arrival::Bursty, |u| lerp(u, 0.0, 1.0, 800e3, 200e3));
            checks(vec![ratio(DECAY, 0.1, 0.5)])
        }),
        shape("traffic", "decay, then the flow stops", &[DECAY], ALL_SCALES, |tl, rng| {
            let stop = rng.range(0.7, 0.85);
            download(tl, rng, Arrival::Smooth, |u| if u >= stop { 0.0 } else { lerp(u, 0.0, stop, 800e3, 200e3) });
            checks(vec![ratio(DECAY, 0.18, 0.34)])
        }),
        // The RTT rises with it: the decay says why.
        shape("traffic", "decay while the RTT rises 20 -> 80 ms", &[DECAY, LATENCY], LONG_SCALES, |tl, rng| {
            download(tl, rng, Arrival::Smooth, |u| lerp(u, 0.0, 1.0, 800e3, 200e3));
            let n = tl.len();
            let rtts: Vec<_> = (0..n)
                .map(|i| {
                    let rtt = lerp(i as f64 / n as f64, 0.0, 1.0, 20e3, 80e3) * rng.factor(0.1);
                    Some(health(Some(rtt as u64), 0, false))
                })
                .collect();
            tl.set_health(key(), rtts);
            checks(vec![ratio(DECAY, 0.2, 0.32), Check::Text { kind: DECAY, key: "likely_cause", value: "rtt_rise" }])
        }),
    ]
}

fn quiet_traffic_shapes() -> Vec<Shape> {
    vec![
        shape("traffic", "steady 500 KB/s", &[], ALL_SCALES, |tl, rng| {
            download(tl, rng, Arrival::Smooth, |_| 500e3);
            Extra::default()
        }),
        shape("traffic", "steady but bursty (100 ms bursts)", &[], ALL_SCALES, |tl, rng| {
            download(tl, rng, Arrival::Bursty, |_| 500e3);
            Extra::default()
        }),
        shape("traffic", "sawtooth 200 -> 800 KB/s", &[], ALL_SCALES, |tl, rng| {
            let teeth = rng.below(3, 7) as f64;
            let phase = rng.unit();
            download(tl, rng, Arrival::Smooth, |u| 200e3 + 600e3 * (u * teeth + phase).fract());
            Extra::default()
        }),
        shape("traffic", "steady with a single 10x spike", &[], ALL_SCALES, |tl, rng| {
            let at = rng.range(0.05, 1.0);
            let width = tl.scale.interval / tl.scale.secs;
            download(tl, rng, Arrival::Smooth, |u| if (at - width..at).contains(&u) { 5e6 } else { 500e3 });
            Extra::default()
        }),
        shape("traffic", "steady with a 10x spike in the last interval", &[], ALL_SCALES, |tl, rng| {
            let last = 1.0 - tl.scale.interval / tl.scale.secs;
            download(tl, rng, Arrival::Smooth, |u| if u >= last { 5e6 } else { 500e3 });
            Extra::default()
        }),
        shape("traffic", "on/off duty cycle", &[], ALL_SCALES, |tl, rng| {
            let periods = rng.below(3, 8) as f64;
            let duty = rng.range(0.3, 0.7);
            let phase = rng.unit();
            download(tl, rng, Arrival::Smooth, |u| if (u * periods + phase).fract() < duty { 1e6 } else { 0.0 });
            Extra::default()
        }),
        shape("traffic", "a download that finishes", &[], ALL_SCALES, |tl, rng| {
            let stop = rng.range(0.4, 0.85);
            download(tl, rng, Arrival::Smooth, |u| if u < stop { 1e6 } else { 0.0 });
            Extra::default()
        }),
        shape("traffic", "a flow starting mid-window at a constant rate", &[], ALL_SCALES, |tl, rng| {
            let start = rng.range(0.3, 0.8);
            download(tl, rng, Arrival::Smooth, |u| if u >= start { 1e6 } else { 0.0 });
            Extra::default()
        }),
        shape("traffic", "a steady flow inside the window", &[], ALL_SCALES, |tl, rng| {
            let (start, stop) = (rng.range(0.1, 0.3), rng.range(0.6, 0.9));
            download(tl, rng, Arrival::Bursty, |u| if (start..stop).contains(&u) { 1e6 } else { 0.0 });
            Extra::default()
        }),
        shape("traffic", "steady, reconnecting now and then", &[], ALL_SCALES, |tl, rng| {
            let gaps: Vec<f64> = (0..3).map(|_| rng.range(0.1, 0.9)).collect();
            let width = 1.5 * tl.scale.interval / tl.scale.secs;
            download(tl, rng, Arrival::Smooth, |u| {
                if gaps.iter().any(|g| (g..&(g + width)).contains(&&u)) {
                    0.0
                } else {
                    500e3
                }
            });
            Extra::default()
        }),
        shape("traffic", "slow drift +20% (below --growth-ratio)", &[], ALL_SCALES, |tl, rng| {
            download(tl, rng, Arrival::Smooth, |u| lerp(u, 0.0, 1.0, 500e3, 600e3));
            Extra::default()
        }),
        shape("traffic", "a short burst of a few intervals", &[], ALL_SCALES, |tl, rng| {
            let at = rng.range(0.2, 0.7);
            let width = 4.0 * tl.scale.interval / tl.scale.secs;
            download(tl, rng, Arrival::Smooth, |u| {
                if (at..at + width).contains(&u) {
                    lerp(u, at, at + width, 1e6, 4e6)
                } else {
                    0.0
                }
            });
            Extra::default()
        }),
    ]
}

/// Socket counts at each interval's end from `count(t_secs)`.
fn counts(tl: &Timeline, count: impl Fn(f64) -> f64) -> Vec<u64> {
    (0..tl.len()).map(|i| count(tl.end(i)).round().max(0.0) as u64).collect()
}

fn close_wait_socket(age_secs: f64, i: usize) -> CloseWait {
    CloseWait {
        pid: PID,
        comm: format!("p{PID}").into(),
        local: SocketAddr::new("10.0.0.9".parse().expect("ip"), 40000 + i as u16),
        remote: SocketAddr::new("203.0.113.20".parse().expect("ip"), 443),
        age_secs,
        age_is_lower_bound: false,
    }
}

/// CLOSE_WAIT sockets entering at `arrivals` (seconds) and each closed
/// `hold` seconds later (`None`: never): the count at each interval's end
/// and the sockets still in CLOSE_WAIT at the window's end.
fn close_waits(tl: &mut Timeline, arrivals: &[f64], hold: impl Fn(usize) -> Option<f64>) -> Vec<CloseWait> {
    let until = |i: usize, at: f64| hold(i).map_or(f64::INFINITY, |h| at + h);
    let series =
        counts(tl, |t| arrivals.iter().enumerate().filter(|&(i, &at)| at <= t && t < until(i, at)).count() as f64);
    tl.set_sockets(PID, "CLOSE_WAIT", &series);
    let end = tl.end(tl.len() - 1);
    arrivals
        .iter()
        .enumerate()
        .filter(|&(i, &at)| at <= end && end < until(i, at))
        .map(|(i, &at)| close_wait_socket(end - at, i))
        .collect()
}

fn socket_shapes() -> Vec<Shape> {
    vec![
        shape("leaks", "slow leak: one socket a minute over 15 min", &[LEAK], AGENT_ONLY, |tl, rng| {
            let jitter: Vec<f64> = (0..tl.len()).map(|_| rng.normal()).collect();
            let offset = rng.range(0.0, 60.0);
            let series = counts(tl, |t| 8.0 + ((t + offset) / 60.0).floor());
            let series: Vec<u64> = series.iter().zip(&jitter).map(|(&c, j)| c + u64::from(j.abs() > 1.5)).collect();
            tl.set_sockets(PID, "ESTABLISHED", &series);
            Extra::default()
        }),
        shape("leaks", "leak: one socket every 3 s", &[LEAK], &[ONE_SHOT_60, ONE_SHOT_120], |tl, rng| {
            let offset = rng.range(0.0, 3.0);
            let series = counts(tl, |t| 5.0 + ((t + offset) / 3.0).floor());
            tl.set_sockets(PID, "ESTABLISHED", &series);
            Extra::default()
        }),
        shape("leaks", "pool warming up to 20, then flat", &[], ALL_SCALES, |tl, rng| {
            let warm = rng.range(0.1, 0.25) * tl.scale.secs;
            let noise: Vec<f64> = (0..tl.len()).map(|_| rng.range(-1.0, 1.0)).collect();
            let series: Vec<u64> = counts(tl, |t| 20.0 * (t / warm).min(1.0))
                .iter()
                .zip(&noise)
                .map(|(&c, n)| (c as f64 + n).max(0.0) as u64)
                .collect();
            tl.set_sockets(PID, "ESTABLISHED", &series);
            Extra::default()
        }),
        shape("leaks", "pool of 10 +- 2", &[], ALL_SCALES, |tl, rng| {
            let series: Vec<u64> = (0..tl.len()).map(|_| (10.0 + 2.0 * rng.range(-1.0, 1.0)).round() as u64).collect();
            tl.set_sockets(PID, "ESTABLISHED", &series);
            Extra::default()
        }),
        shape("leaks", "pool growing, then reaped (sawtooth)", &[], ALL_SCALES, |tl, rng| {
            let cycles = rng.below(3, 6) as f64;
            let secs = tl.scale.secs;
            let series = counts(tl, |t| 5.0 + 20.0 * (t / secs * cycles).fract());
            tl.set_sockets(PID, "ESTABLISHED", &series);
            Extra::default()
        }),
        shape("close_wait", "CLOSE_WAIT piles that drain", &[], LONG_SCALES, |tl, rng| {
            let secs = tl.scale.secs;
            let piles = rng.below(3, 6);
            let mut arrivals = Vec::new();
            for p in 0..piles {
                let at = (p as f64 + rng.range(0.0, 0.5)) * secs / piles as f64;
                arrivals.extend((0..10).map(|_| at + rng.range(0.0, 2.0)));
            }
            let holds: Vec<f64> = arrivals.iter().map(|_| rng.range(3.0, 15.0)).collect();
            let close_wait = close_waits(tl, &arrivals, |i| Some(holds[i]));
            Extra { close_wait, ..Extra::default() }
        }),
        shape("close_wait", "CLOSE_WAIT turnover (each closed within 10 s)", &[], ALL_SCALES, |tl, rng| {
            let secs = tl.scale.secs;
            let arrivals: Vec<f64> = (0..(secs / 2.0) as usize).map(|_| rng.range(0.0, secs)).collect();
            let holds: Vec<f64> = arrivals.iter().map(|_| rng.range(1.0, 10.0)).collect();
            let close_wait = close_waits(tl, &arrivals, |i| Some(holds[i]));
            Extra { close_wait, ..Extra::default() }
        }),
        shape("close_wait", "CLOSE_WAIT rising (never closed)", &[CLOSE_WAIT], ALL_SCALES, |tl, rng| {
            let every = if tl.scale.is_agent() { 20.0 } else { 2.0 };
            let offset = rng.range(0.0, every);
            let arrivals: Vec<f64> =
                (0..).map(|i| offset + i as f64 * every).take_while(|&t| t < tl.scale.secs).collect();
            let close_wait = close_waits(tl, &arrivals, |_| None);
            Extra { close_wait, ..Extra::default() }
        }),
        shape("close_wait", "one socket stuck in CLOSE_WAIT", &[CLOSE_WAIT], LONG_SCALES, |tl, rng| {
            let at = rng.range(1.0, 10.0);
            let close_wait = close_waits(tl, &[at], |_| None);
            Extra { close_wait, ..Extra::default() }
        }),
    ]
}

/// A flow with `per_interval` counters in every interval.
fn every_interval(tl: &mut Timeline, per_interval: impl Fn(&mut Rng) -> Counters, rng: &mut Rng) {
    let counters: Vec<Counters> = (0..tl.len()).map(|_| per_interval(rng)).collect();
    tl.add_flow(key(), counters);
}

/// Segments sent, `share` of them retransmitted (binomial-ish).
fn sending(rng: &mut Rng, segments: u64, share: f64) -> Counters {
    let retransmits = (segments as f64 * share * rng.factor(0.3)).round() as u64;
    Counters { tx_bytes: segments * 1448, segments_out: segments + retransmits, retransmits, ..Counters::default() }
}

fn counter_shapes() -> Vec<Shape> {
    vec![
        shape("retransmits", "5% of segments retransmitted", &[RETRANSMITS], ALL_SCALES, |tl, rng| {
            let per_interval = (300.0 * tl.scale.interval) as u64;
            every_interval(tl, |rng| sending(rng, per_interval, 0.05), rng);
            Extra::default()
        }),
        shape("retransmits", "0.5% of segments retransmitted", &[], ALL_SCALES, |tl, rng| {
            let per_interval = (300.0 * tl.scale.interval) as u64;
            every_interval(tl, |rng| sending(rng, per_interval, 0.005), rng);
            Extra::default()
        }),
        shape("retransmits", "a few retransmits on little traffic", &[], ALL_SCALES, |tl, rng| {
            let at = rng.below(0, tl.len());
            let lossy = Counters { tx_bytes: 40 * 1448, segments_out: 43, retransmits: 3, ..Counters::default() };
            tl.add_flow(key(), (0..tl.len()).map(|i| if i == at { lossy } else { Counters::default() }));
            Extra::default()
        }),
        shape("churn", "20 new connections a second", &[CHURN], ALL_SCALES, |tl, rng| {
            let interval = tl.scale.interval;
            every_interval(
                tl,
                |rng| {
                    let opened = (20.0 * interval * rng.factor(0.2)).round() as u64;
                    Counters {
                        opened,
                        closed: opened,
                        tx_bytes: opened * 300,
                        rx_bytes: opened * 2000,
                        ..Counters::default()
                    }
                },
                rng,
            );
            Extra::default()
        }),
        shape("churn", "5 new connections a second", &[], ALL_SCALES, |tl, rng| {
            let interval = tl.scale.interval;
            every_interval(
                tl,
                |rng| {
                    let opened = (5.0 * interval * rng.factor(0.2)).round() as u64;
                    Counters { opened, closed: opened, tx_bytes: opened * 300, ..Counters::default() }
                },
                rng,
            );
            Extra::default()
        }),
        shape("churn", "one burst of 2000 connections", &[], ALL_SCALES, |tl, rng| {
            let at = rng.below(0, tl.len());
            let burst = Counters { opened: 2000, closed: 2000, tx_bytes: 600_000, ..Counters::default() };
            tl.add_flow(key(), (0..tl.len()).map(|i| if i == at { burst } else { Counters::default() }));
            Extra::default()
        }),
        shape("health", "25% of connects failing", &[CONNECTS], ALL_SCALES, |tl, rng| {
            // 15 connects succeed, 5 in a row fail: 25% of 20 attempts.
            let failing = rng.below(0, tl.len().saturating_sub(5));
            let n = tl.len();
            tl.add_flow(
                key(),
                (0..n).map(|i| {
                    let failed = u64::from((failing..failing + 5).contains(&i));
                    let opened = (15 * (i + 1) / n - 15 * i / n) as u64;
                    Counters { opened, failed_connects: failed, failed_refused: failed, ..Counters::default() }
                }),
            );
            Extra::default()
        }),
        shape("health", "two connects failing", &[], ALL_SCALES, |tl, rng| {
            let at = rng.below(0, tl.len().saturating_sub(2));
            tl.add_flow(
                key(),
                (0..tl.len()).map(|i| {
                    let failed = u64::from(i == at || i == at + 1);
                    Counters { opened: 1, failed_connects: failed, failed_timeout: failed, ..Counters::default() }
                }),
            );
            Extra::default()
        }),
        shape("health", "2% of 200 connects failing", &[], ALL_SCALES, |tl, rng| {
            let n = tl.len();
            let failures: Vec<usize> = (0..4).map(|_| rng.below(0, n)).collect();
            let per_interval = 200 / n as u64 + 1;
            tl.add_flow(
                key(),
                (0..n).map(|i| {
                    let failed = failures.iter().filter(|&&f| f == i).count() as u64;
                    Counters {
                        opened: per_interval,
                        closed: per_interval,
                        failed_connects: failed,
                        failed_refused: failed,
                        ..Counters::default()
                    }
                }),
            );
            Extra::default()
        }),
        // HZ 250: 250 jiffies a second of busy time.
        shape("health", "sender held by the peer's window 70% of the time", &[PEER], ALL_SCALES, |tl, rng| {
            let interval = tl.scale.interval;
            every_interval(
                tl,
                |rng| {
                    let busy = (250.0 * interval * rng.range(0.8, 1.0)) as u64;
                    Counters {
                        tx_bytes: 100_000,
                        busy_jiffies: busy,
                        rwnd_jiffies: busy * 7 / 10,
                        ..Counters::default()
                    }
                },
                rng,
            );
            Extra { hz: Some(250), ..Extra::default() }
        }),
        shape("health", "sender held by the peer's window 20% of the time", &[], ALL_SCALES, |tl, rng| {
            let interval = tl.scale.interval;
            every_interval(
                tl,
                |rng| {
                    let busy = (250.0 * interval * rng.range(0.8, 1.0)) as u64;
                    Counters { tx_bytes: 100_000, busy_jiffies: busy, rwnd_jiffies: busy / 5, ..Counters::default() }
                },
                rng,
            );
            Extra { hz: Some(250), ..Extra::default() }
        }),
    ]
}

/// A flow receiving steadily with one health reading per interval.
fn with_health(tl: &mut Timeline, rng: &mut Rng, reading: impl Fn(usize, &mut Rng) -> Option<FlowHealth>) {
    download(tl, rng, Arrival::Smooth, |_| 300e3);
    let readings: Vec<_> = (0..tl.len()).map(|i| reading(i, rng)).collect();
    tl.set_health(key(), readings);
}

fn health_shapes() -> Vec<Shape> {
    vec![
        shape("health", "RTT steady 20 ms with noise", &[], ALL_SCALES, |tl, rng| {
            with_health(tl, rng, |_, rng| Some(health(Some((20e3 * rng.factor(0.25)) as u64), 0, false)));
            Extra::default()
        }),
        shape("health", "RTT ramp 20 -> 80 ms", &[LATENCY], ALL_SCALES, |tl, rng| {
            let n = tl.len() as f64;
            with_health(tl, rng, |i, rng| {
                Some(health(Some((lerp(i as f64 / n, 0.0, 1.0, 20e3, 80e3) * rng.factor(0.15)) as u64), 0, false))
            });
            Extra::default()
        }),
        shape("health", "RTT step 20 -> 60 ms", &[LATENCY], ALL_SCALES, |tl, rng| {
            let n = tl.len();
            let at = rng.below(n / 3, n * 4 / 5);
            with_health(tl, rng, |i, rng| {
                let rtt = if i >= at { 60e3 } else { 20e3 };
                Some(health(Some((rtt * rng.factor(0.15)) as u64), 0, false))
            });
            Extra::default()
        }),
        shape("health", "RTT with a single 200 ms spike", &[], ALL_SCALES, |tl, rng| {
            let at = rng.below(0, tl.len());
            with_health(tl, rng, |i, rng| {
                let rtt = if i == at { 200e3 } else { 20e3 * rng.factor(0.15) };
                Some(health(Some(rtt as u64), 0, false))
            });
            Extra::default()
        }),
        shape("health", "RTT with short bufferbloat episodes", &[], ALL_SCALES, |tl, rng| {
            let n = tl.len();
            // One in each third of the window: spread, not a late level.
            let episodes: Vec<usize> = (0..3).map(|k| rng.below(k * n / 3, (k + 1) * n / 3 - 2)).collect();
            with_health(tl, rng, |i, rng| {
                let bloated = episodes.iter().any(|&e| (e..e + 2).contains(&i));
                let rtt = if bloated { 100e3 } else { 20e3 } * rng.factor(0.15);
                Some(health(Some(rtt as u64), 0, false))
            });
            Extra::default()
        }),
        shape("health", "loopback RTT drifting 50 -> 150 us", &[], ALL_SCALES, |tl, rng| {
            let n = tl.len() as f64;
            with_health(tl, rng, |i, rng| {
                Some(health(Some((lerp(i as f64 / n, 0.0, 1.0, 50.0, 150.0) * rng.factor(0.1)) as u64), 0, false))
            });
            Extra::default()
        }),
        shape("health", "reader backlogged most of the time", &[SLOW_READER], ALL_SCALES, |tl, rng| {
            with_health(tl, rng, |_, rng| {
                let backlogged = rng.unit() < 0.85;
                let queue = if backlogged { rng.range(200e3, 400e3) } else { rng.range(0.0, 50e3) };
                Some(health(Some(1000), queue as u64, backlogged))
            });
            Extra::default()
        }),
        shape("health", "reader briefly backlogged", &[], ALL_SCALES, |tl, rng| {
            let at = rng.below(0, tl.len().saturating_sub(3));
            with_health(tl, rng, |i, rng| {
                let backlogged = (at..at + 3).contains(&i);
                let queue = if backlogged { rng.range(200e3, 400e3) } else { rng.range(0.0, 20e3) };
                Some(health(Some(1000), queue as u64, backlogged))
            });
            Extra::default()
        }),
    ]
}

/// Every generated case for `seed`.
pub(super) fn generated(seed: u64) -> Vec<Case> {
    let mut cases = Vec::new();
    for (s, shape) in shapes().into_iter().enumerate() {
        for (k, &scale) in shape.scales.iter().enumerate() {
            // One stream per (seed, shape, scale): adding a shape does not
            // change the others.
            let mut rng = Rng::new(seed.wrapping_mul(1_000_003).wrapping_add((s * 16 + k) as u64));
            let mut timeline = Timeline::new(scale, &mut rng);
            let extra = (shape.build)(&mut timeline, &mut rng);
            timeline.stamp_late(&mut rng);
            cases.push(Case {
                family: shape.family,
                name: shape.name.to_owned(),
                scale: scale.name(),
                seed: Some(seed),
                expect: shape.expect.to_vec(),
                samples: timeline.into_samples(),
                close_wait: extra.close_wait,
                hz: extra.hz,
                checks: extra.checks,
                pid: None,
            });
        }
    }
    cases
}

/// The decay an integration run missed once (bytes per 1-s sample of a
/// client pacing 800 -> 200 KB/s, with one burst), replayed with the
/// collector's late time stamps (see [`Timeline::stamp_late`]).
pub(super) fn measured_decay(seed: u64) -> Case {
    const BYTES: [u64; 61] = [
        0, 742723, 787425, 771893, 759669, 761049, 750000, 736388, 737062, 702715, 700563, 697819, 690939, 683726,
        660332, 661128, 642736, 896761, 604791, 600545, 630317, 585139, 574550, 573637, 576418, 537460, 559207, 530529,
        509110, 511895, 501638, 490562, 480241, 471596, 460680, 452927, 443274, 427859, 424017, 412371, 397694, 392260,
        381830, 372826, 360239, 353263, 342095, 330068, 320985, 312487, 302073, 290550, 281303, 272470, 261299, 250574,
        240646, 232340, 221065, 211056, 193367,
    ];
    let mut rng = Rng::new(seed ^ 0xdeca7);
    let mut timeline = Timeline::new(Scale::new(1.0, BYTES.len() as f64), &mut rng);
    timeline.add_tx(key(), &BYTES);
    timeline.stamp_late(&mut rng);
    Case {
        family: "traffic",
        name: "measured decay with a burst, stamped late".to_owned(),
        scale: "1 s x 61 s".to_owned(),
        seed: Some(seed),
        expect: vec![DECAY],
        samples: timeline.into_samples(),
        close_wait: Vec::new(),
        hz: None,
        checks: vec![ratio(DECAY, 0.2, 0.34)],
        pid: None,
    }
}
