//! The generator of the labelled cases: a seeded random source, the scales
//! (one-shot and agent), and timelines built the way the model builds its
//! samples: bytes of flows whose rate follows a shape, sent in 100 ms
//! chunks (smooth, or bursty like WebSocket market data), summed per
//! interval; socket counts at each interval's end; health per interval.

use std::collections::VecDeque;

use crate::model::{Counters, Dist, FlowHealth, FlowKey, Sample, StateCounts};

/// A small seeded generator (splitmix64): the same seed gives the same case
/// on every machine.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x2545_F491_4F6C_DD1D)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(super) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(super) fn range(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }

    /// Uniform integer in [low, high).
    pub(super) fn below(&mut self, low: usize, high: usize) -> usize {
        low + ((high - low) as f64 * self.unit()) as usize
    }

    /// Standard normal (Box-Muller).
    pub(super) fn normal(&mut self) -> f64 {
        let u = self.unit().max(f64::MIN_POSITIVE);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Log-normal with mean 1: a multiplicative noise factor.
    pub(super) fn factor(&mut self, sigma: f64) -> f64 {
        (sigma * self.normal() - sigma * sigma / 2.0).exp()
    }
}

/// How long an interval is and how long a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Scale {
    pub(super) interval: f64,
    pub(super) secs: f64,
}

impl Scale {
    pub(super) const fn new(interval: f64, secs: f64) -> Self {
        Scale { interval, secs }
    }

    pub(super) fn intervals(&self) -> usize {
        (self.secs / self.interval).round() as usize
    }

    pub(super) fn is_agent(&self) -> bool {
        self.interval >= 5.0
    }

    pub(super) fn name(&self) -> String {
        if self.secs >= 300.0 {
            format!("{} s x {} min", self.interval, self.secs / 60.0)
        } else {
            format!("{} s x {} s", self.interval, self.secs)
        }
    }
}

/// One-shot traces (`tracer trace`, 1 s interval) and the agent's window
/// (5 s interval, 15 min).
pub(super) const ONE_SHOT_30: Scale = Scale::new(1.0, 30.0);
pub(super) const ONE_SHOT_60: Scale = Scale::new(1.0, 60.0);
pub(super) const ONE_SHOT_120: Scale = Scale::new(1.0, 120.0);
pub(super) const AGENT: Scale = Scale::new(5.0, 900.0);

/// How a flow's bytes arrive within an interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Arrival {
    /// A paced sender: 100 ms chunks within ~15% of the rate.
    Smooth,
    /// Bursts every 100 ms of widely varying size (log-normal, sigma 0.8:
    /// about +-30% per second), as market data arrives.
    Bursty,
}

/// Granularity of the simulated sends.
const TICK_SECS: f64 = 0.1;

/// The samples of one case under construction. Interval ends are the
/// nominal ticks, each a little late or early (the tick driver's jitter);
/// the bytes follow the real interval boundaries.
pub(super) struct Timeline {
    pub(super) scale: Scale,
    ends: Vec<f64>,
    samples: Vec<Sample>,
}

impl Timeline {
    pub(super) fn new(scale: Scale, rng: &mut Rng) -> Self {
        let n = scale.intervals();
        let ends: Vec<f64> =
            (1..=n).map(|i| i as f64 * scale.interval + 0.01 * scale.interval * rng.range(-1.0, 1.0)).collect();
        let samples = ends
            .iter()
            .enumerate()
            .map(|(i, &t_secs)| Sample {
                t_secs,
                interval_secs: t_secs - i.checked_sub(1).map_or(0.0, |p| ends[p]),
                flows: Default::default(),
                sockets: Default::default(),
                health: Default::default(),
            })
            .collect();
        Timeline { scale, ends, samples }
    }

    pub(super) fn len(&self) -> usize {
        self.samples.len()
    }

    /// End of interval `i`, seconds.
    pub(super) fn end(&self, i: usize) -> f64 {
        self.ends[i]
    }

    /// Bytes per interval of a flow sending at `rate(t)` bytes/s (0: silent).
    pub(super) fn bytes(&self, rng: &mut Rng, arrival: Arrival, rate: &dyn Fn(f64) -> f64) -> Vec<u64> {
        let mut per_interval = vec![0u64; self.len()];
        let ticks = (self.scale.secs / TICK_SECS).round() as usize;
        let mut interval = 0;
        for k in 0..ticks {
            let t = (k as f64 + 0.5) * TICK_SECS;
            while interval + 1 < self.len() && t >= self.ends[interval] {
                interval += 1;
            }
            let expected = rate(t).max(0.0) * TICK_SECS;
            if expected <= 0.0 {
                continue;
            }
            let sigma = match arrival {
                Arrival::Smooth => 0.15,
                Arrival::Bursty => 0.8,
            };
            per_interval[interval] += (expected * rng.factor(sigma)).round() as u64;
        }
        per_interval
    }

    /// Adds per-interval counters of a flow (all-zero intervals leave the
    /// flow out of the sample, as the model does).
    pub(super) fn add_flow(&mut self, key: FlowKey, per_interval: impl IntoIterator<Item = Counters>) {
        for (sample, counters) in self.samples.iter_mut().zip(per_interval) {
            if !counters.is_zero() {
                sample.flows.entry(key).or_default().add(&counters);
            }
        }
    }

    /// Adds received bytes per interval to a flow.
    pub(super) fn add_rx(&mut self, key: FlowKey, bytes: &[u64]) {
        self.add_flow(key, bytes.iter().map(|&b| Counters { rx_bytes: b, ..Counters::default() }));
    }

    /// Adds sent bytes per interval to a flow.
    pub(super) fn add_tx(&mut self, key: FlowKey, bytes: &[u64]) {
        self.add_flow(key, bytes.iter().map(|&b| Counters { tx_bytes: b, ..Counters::default() }));
    }

    /// Socket counts of `pid` in `state` at each interval's end.
    pub(super) fn set_sockets(&mut self, pid: u32, state: &'static str, counts: &[u64]) {
        for (sample, &count) in self.samples.iter_mut().zip(counts) {
            let states: &mut StateCounts = sample.sockets.entry(pid).or_default();
            if count > 0 {
                states.insert(state, count);
            }
        }
    }

    /// A flow's health in each interval (`None`: no live socket sampled).
    pub(super) fn set_health(&mut self, key: FlowKey, health: impl IntoIterator<Item = Option<FlowHealth>>) {
        for (sample, health) in self.samples.iter_mut().zip(health) {
            if let Some(health) = health {
                sample.health.insert(key, health);
            }
        }
    }

    /// Stamps each sample a little after its counters were read, as the
    /// collector does (the time goes after the table read, the owner
    /// lookups and the /proc reads): usually ~20 ms, in one sample of 7 a
    /// stall of 0.2-0.7 s, never two in a row (as measured on a busy host: 1.6 s and 0.4 s
    /// intervals each holding a second of bytes). The bytes stay those of
    /// the real interval.
    pub(super) fn stamp_late(&mut self, rng: &mut Rng) {
        let mut previous = 0.0;
        let mut stalled = false;
        for sample in &mut self.samples {
            // A stall, then a stamp on time (as measured).
            stalled = !stalled && rng.unit() < 0.15;
            let stall = if stalled { rng.range(0.2, 0.7) } else { 0.0 };
            sample.t_secs += 0.02 + 0.01 * rng.normal().abs() + stall;
            sample.interval_secs = sample.t_secs - previous;
            previous = sample.t_secs;
        }
    }

    pub(super) fn into_samples(self) -> VecDeque<Sample> {
        self.samples.into()
    }
}

/// A flow's health in one interval: one live socket with this RTT (us) and
/// receive backlog.
pub(super) fn health(rtt_us: Option<u64>, recv_queue: u64, backlogged: bool) -> FlowHealth {
    let mut rtt = Dist::default();
    if let Some(value) = rtt_us {
        rtt.observe(value);
    }
    FlowHealth { rtt, sockets: 1, recv_queue, backlogged, ..FlowHealth::default() }
}

/// Linear interpolation from `from` at `u0` to `to` at `u1` (clamped).
pub(super) fn lerp(u: f64, u0: f64, u1: f64, from: f64, to: f64) -> f64 {
    let x = ((u - u0) / (u1 - u0)).clamp(0.0, 1.0);
    from + (to - from) * x
}
