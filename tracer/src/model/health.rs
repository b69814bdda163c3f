//! TCP health in the model: what one socket's record says of its health
//! ([`SocketHealth`]), what a flow showed in one interval ([`FlowHealth`]:
//! distributions of RTT and connect latency, backlogs summed over its
//! sockets), and the window's view of a flow ([`HealthView`]), the report's
//! `rtt_us`, `connect_us`, queues, `limited_ms` and delivery rate.
//!
//! Counters that only grow (failures by reason, SYN retransmits, the chrono
//! counters) live with the other counters in [`super::Counters`]; what is
//! sampled (RTT, backlogs) is kept per interval here.

/// Latency buckets of the histograms: 100 us to ~13 s in x2 steps (upper
/// bounds, microseconds).
pub(crate) const LATENCY_BUCKETS_US: [u64; 18] = {
    let mut bounds = [0u64; 18];
    let mut i = 0;
    while i < 18 {
        bounds[i] = 100 << i;
        i += 1;
    }
    bounds
};

/// Why a connect failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum FailReason {
    Refused,
    Timeout,
    Unreachable,
    Other,
}

impl FailReason {
    pub(crate) const ALL: [FailReason; 4] =
        [FailReason::Refused, FailReason::Timeout, FailReason::Unreachable, FailReason::Other];

    pub(crate) fn name(self) -> &'static str {
        match self {
            FailReason::Refused => "refused",
            FailReason::Timeout => "timeout",
            FailReason::Unreachable => "unreachable",
            FailReason::Other => "other",
        }
    }

    /// Failures for this reason among `counters`.
    pub(crate) fn count(self, counters: &super::Counters) -> u64 {
        match self {
            FailReason::Refused => counters.failed_refused,
            FailReason::Timeout => counters.failed_timeout,
            FailReason::Unreachable => counters.failed_unreachable,
            FailReason::Other => counters.failed_other,
        }
    }
}

/// What a socket's kernel record said of its health when it was read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SocketHealth {
    /// Connect latency (client) or handshake round trip (server), us.
    pub(crate) connect_us: Option<u64>,
    /// Sampling passes that read this socket (changes when sampled).
    pub(crate) samples: u32,
    /// Smoothed RTT and the receiver's estimate, us (0: none yet).
    pub(crate) srtt_us: u32,
    pub(crate) rcv_rtt_us: u32,
    /// The kernel's windowed minimum RTT, us (0: none).
    pub(crate) min_rtt_us: u32,
    /// Arrived, not read by the application.
    pub(crate) recv_queue: u32,
    /// Written, not acknowledged.
    pub(crate) send_queue: u32,
    /// The socket's receive buffer (`sk_rcvbuf`).
    pub(crate) rcvbuf: u32,
    /// Bytes per second, as `tcp_info` computes it.
    pub(crate) delivery_rate: Option<u64>,
}

impl SocketHealth {
    /// The RTT one sample of the socket stands for, us: the receiver's
    /// estimate for a socket that received more than it sent since the
    /// previous sample (a receiver's `srtt_us` does not move), the smoothed
    /// RTT otherwise. `None` while the kernel has no estimate.
    pub(crate) fn rtt_us(&self, sent: u64, received: u64) -> Option<u64> {
        let rtt = if self.receiver_estimate(sent, received) { self.rcv_rtt_us } else { self.srtt_us };
        (rtt > 0).then_some(u64::from(rtt))
    }

    /// Whether [`SocketHealth::rtt_us`] takes the receiver's estimate.
    pub(crate) fn receiver_estimate(&self, sent: u64, received: u64) -> bool {
        received > sent && self.rcv_rtt_us > 0
    }

    /// The receive backlog is at least half the receive buffer.
    pub(crate) fn backlogged(&self) -> bool {
        self.rcvbuf > 0 && u64::from(self.recv_queue) * 2 >= u64::from(self.rcvbuf)
    }
}

/// Count, sum, min and max of observations (microseconds), with the
/// histogram's bucket counts (non-cumulative; the last counts past the top).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Dist {
    pub(crate) count: u64,
    pub(crate) sum: u64,
    pub(crate) min: u64,
    pub(crate) max: u64,
    pub(crate) buckets: [u32; LATENCY_BUCKETS_US.len() + 1],
}

impl Dist {
    pub(crate) fn observe(&mut self, value: u64) {
        self.min = if self.count == 0 { value } else { self.min.min(value) };
        self.max = self.max.max(value);
        self.count += 1;
        self.sum = self.sum.saturating_add(value);
        let bucket = LATENCY_BUCKETS_US.iter().position(|&bound| value <= bound).unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[bucket] = self.buckets[bucket].saturating_add(1);
    }

    pub(crate) fn merge(&mut self, other: &Dist) {
        if other.count == 0 {
            return;
        }
        self.min = if self.count == 0 { other.min } else { self.min.min(other.min) };
        self.max = self.max.max(other.max);
        self.count += other.count;
        self.sum = self.sum.saturating_add(other.sum);
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine = mine.saturating_add(theirs);
        }
    }

    pub(crate) fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }
}

/// One flow in one interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct FlowHealth {
    /// One RTT observation per live socket sampled at the interval's end.
    pub(crate) rtt: Dist,
    /// How many of them are the receiver's estimate (a socket that mostly
    /// received), which also grows with a sender's own pauses.
    pub(crate) rtt_by_receiver: u32,
    /// The smallest of the sockets' kernel minimum RTTs.
    pub(crate) min_rtt_us: Option<u64>,
    /// One observation per connection that completed in the interval.
    pub(crate) connect: Dist,
    /// Summed over the flow's live sockets at the interval's end.
    pub(crate) recv_queue: u64,
    pub(crate) send_queue: u64,
    /// Some socket's receive backlog was at least half its buffer.
    pub(crate) backlogged: bool,
    /// Live sockets sampled.
    pub(crate) sockets: u32,
    /// The largest of the sockets' delivery rates.
    pub(crate) delivery_rate: Option<u64>,
    /// The network namespace (inode) the flow's sockets were seen in.
    pub(crate) netns: u32,
}

impl FlowHealth {
    /// Adds what one live socket showed at a sample. `sent` and `received`
    /// are its bytes since the previous sample (which RTT estimate fits).
    pub(crate) fn add_socket(&mut self, health: &SocketHealth, sent: u64, received: u64) {
        if let Some(rtt) = health.rtt_us(sent, received) {
            self.rtt.observe(rtt);
            self.rtt_by_receiver += u32::from(health.receiver_estimate(sent, received));
        }
        if health.min_rtt_us > 0 {
            let min_rtt = u64::from(health.min_rtt_us);
            self.min_rtt_us = Some(self.min_rtt_us.map_or(min_rtt, |m| m.min(min_rtt)));
        }
        self.recv_queue += u64::from(health.recv_queue);
        self.send_queue += u64::from(health.send_queue);
        self.backlogged |= health.backlogged();
        self.sockets += 1;
        if let Some(rate) = health.delivery_rate {
            self.delivery_rate = Some(self.delivery_rate.map_or(rate, |r| r.max(rate)));
        }
    }
}

/// Latest and largest of a value sampled each interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LastMax {
    pub(crate) last: u64,
    pub(crate) max: u64,
}

impl LastMax {
    pub(crate) fn push(&mut self, value: u64) {
        self.last = value;
        self.max = self.max.max(value);
    }
}

/// A flow's health over the window.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct HealthView {
    /// RTT observations of the window (`rtt_us` min/mean/max).
    pub(crate) rtt: Dist,
    /// The mean RTT of the last interval that had an observation.
    pub(crate) rtt_last_us: Option<f64>,
    pub(crate) min_rtt_us: Option<u64>,
    pub(crate) connect: Dist,
    /// `None` when no interval sampled a live socket of the flow.
    pub(crate) recv_queue: Option<LastMax>,
    pub(crate) send_queue: Option<LastMax>,
    pub(crate) delivery_rate: Option<u64>,
    /// Intervals with a sampled live socket, and those backlogged.
    pub(crate) intervals_sampled: u64,
    pub(crate) intervals_backlogged: u64,
    /// The network namespace the flow was last seen in.
    pub(crate) netns: Option<u32>,
}

impl HealthView {
    /// Folds one interval in (oldest first).
    pub(crate) fn add_interval(&mut self, interval: &FlowHealth) {
        self.rtt.merge(&interval.rtt);
        if let Some(mean) = interval.rtt.mean() {
            self.rtt_last_us = Some(mean);
        }
        if let Some(min_rtt) = interval.min_rtt_us {
            self.min_rtt_us = Some(self.min_rtt_us.map_or(min_rtt, |m| m.min(min_rtt)));
        }
        self.connect.merge(&interval.connect);
        if interval.netns != 0 {
            self.netns = Some(interval.netns);
        }
        if interval.sockets > 0 {
            self.recv_queue.get_or_insert_with(LastMax::default).push(interval.recv_queue);
            self.send_queue.get_or_insert_with(LastMax::default).push(interval.send_queue);
            self.intervals_sampled += 1;
            self.intervals_backlogged += u64::from(interval.backlogged);
            if interval.delivery_rate.is_some() {
                self.delivery_rate = interval.delivery_rate;
            }
        }
    }
}

/// Jiffies in milliseconds at `hz`.
pub(crate) fn jiffies_ms(jiffies: u64, hz: u32) -> u64 {
    jiffies.saturating_mul(1000) / u64::from(hz.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_double_from_100_us() {
        assert_eq!(LATENCY_BUCKETS_US[0], 100);
        assert_eq!(LATENCY_BUCKETS_US[1], 200);
        assert_eq!(LATENCY_BUCKETS_US[17], 100 << 17);
        let mut dist = Dist::default();
        for value in [50, 100, 101, 5_000, 100_000_000] {
            dist.observe(value);
        }
        assert_eq!((dist.count, dist.min, dist.max), (5, 50, 100_000_000));
        assert_eq!(dist.buckets[0], 2, "<= 100 us");
        assert_eq!(dist.buckets[1], 1, "<= 200 us");
        assert_eq!(dist.buckets[6], 1, "<= 6.4 ms");
        assert_eq!(dist.buckets[18], 1, "past the top");
        let mut merged = Dist::default();
        merged.merge(&dist);
        merged.merge(&Dist::default());
        assert_eq!(merged, dist);
    }

    #[test]
    fn receive_dominated_sockets_use_the_receivers_estimate() {
        let health = SocketHealth { srtt_us: 100, rcv_rtt_us: 5000, ..SocketHealth::default() };
        assert_eq!(health.rtt_us(10, 1_000_000), Some(5000));
        assert_eq!(health.rtt_us(1_000_000, 10), Some(100));
        assert_eq!(health.rtt_us(0, 0), Some(100));
        assert_eq!(SocketHealth { rcv_rtt_us: 0, ..health }.rtt_us(0, 1000), Some(100));
        assert_eq!(SocketHealth::default().rtt_us(0, 0), None);
    }

    #[test]
    fn a_flow_interval_sums_backlogs_and_keeps_the_smallest_min_rtt() {
        let mut interval = FlowHealth::default();
        let a =
            SocketHealth { srtt_us: 1000, min_rtt_us: 900, recv_queue: 600, rcvbuf: 1000, ..SocketHealth::default() };
        let b = SocketHealth { srtt_us: 3000, min_rtt_us: 700, recv_queue: 10, rcvbuf: 1000, ..a };
        interval.add_socket(&a, 0, 0);
        interval.add_socket(&b, 0, 0);
        assert_eq!((interval.rtt.count, interval.rtt.mean()), (2, Some(2000.0)));
        assert_eq!((interval.min_rtt_us, interval.recv_queue, interval.backlogged), (Some(700), 610, true));
        let mut view = HealthView::default();
        view.add_interval(&interval);
        view.add_interval(&FlowHealth { sockets: 1, recv_queue: 5, ..FlowHealth::default() });
        assert_eq!(view.recv_queue, Some(LastMax { last: 5, max: 610 }));
        assert_eq!((view.intervals_sampled, view.intervals_backlogged), (2, 1));
        assert_eq!(view.rtt_last_us, Some(2000.0));
        assert_eq!(jiffies_ms(250, 250), 1000);
    }
}
