//! Flow metrics (`tracer_tcp_*{comm,container,port,remote,role}`): one table of
//! counters over the model's per-flow [`Counters`], failed connects by
//! `reason`, the receive-window-limited time, and the RTT and connect
//! latency histograms, all sharing one set of series with top-n, sticky
//! membership, overflow and expiry (see the module doc of [`super`]).

use std::collections::{BTreeMap, HashMap};

use prometheus::proto::MetricFamily;

use super::{
    family::{counter, family, histogram, histogram_sample, sample, Definition, Histogram, LATENCY_BUCKETS},
    Group, MetricsConfig, Tick, OTHER,
};
use crate::model::{Counters, Dist, FailReason, FlowHealth, FlowKey, HealthSupport, Role};

/// Series of each flow metric kept for the overflow (`other`), one per role.
const OVERFLOW_SERIES: usize = 2;

const FLOW_LABELS: &[&str] = &["comm", "container", "port", "remote", "role"];
const FLOW_LABELS_WITH_PID: &[&str] = &["comm", "container", "pid", "port", "remote", "role"];
const FAILED_LABELS: &[&str] = &["comm", "container", "port", "reason", "remote", "role"];
const FAILED_LABELS_WITH_PID: &[&str] = &["comm", "container", "pid", "port", "reason", "remote", "role"];

/// One flow counter: its name, HELP, and its value from a flow's counters.
struct FlowCounter {
    name: &'static str,
    help: &'static str,
    value: fn(&Counters) -> u64,
}

/// The flow counters with one value per series: a new one is a row here.
const FLOW_COUNTERS: &[FlowCounter] = &[
    FlowCounter {
        name: "tracer_tcp_sent_bytes_total",
        help: "Bytes sent by send syscalls on TCP sockets of the flow (what each call moved).",
        value: |c| c.tx_bytes,
    },
    FlowCounter {
        name: "tracer_tcp_received_bytes_total",
        help: "Bytes received by receive syscalls on TCP sockets of the flow (MSG_PEEK excluded).",
        value: |c| c.rx_bytes,
    },
    FlowCounter {
        name: "tracer_tcp_retransmits_total",
        help: "TCP segments retransmitted on sockets of the flow.",
        value: |c| c.retransmits,
    },
    FlowCounter {
        name: "tracer_tcp_sent_segments_total",
        help: "TCP segments sent on sockets of the flow, retransmissions included (the denominator of a retransmit ratio).",
        value: |c| c.segments_out,
    },
    FlowCounter {
        name: "tracer_tcp_connections_opened_total",
        help: "TCP connections of the flow that were opened (connected or accepted).",
        value: |c| c.opened,
    },
    FlowCounter {
        name: "tracer_tcp_resets_total",
        help: "TCP resets sent or received on sockets of the flow.",
        value: |c| c.resets(),
    },
];

const FAILED_CONNECTS: &str = "tracer_tcp_failed_connects_total";
const FAILED_CONNECTS_HELP: &str = "Connection attempts of the flow that failed, by reason: refused (RST or ICMP port \
     unreachable), timeout (SYNs unanswered, or the application gave up), unreachable (ICMP host/net unreachable or \
     prohibited), other (anything else, or no SYN sent; every failure when the kernel gives no reasons).";
const RWND_LIMITED: &str = "tracer_tcp_rwnd_limited_seconds_total";
const RWND_LIMITED_HELP: &str =
    "Time the flow's sockets had data to send but were limited by the peer's receive window (kernel chrono counters).";
const RTT: &str = "tracer_tcp_rtt_seconds";
const RTT_HELP: &str = "Smoothed RTT of the flow's live sockets (the receiver's estimate for receive-dominated \
     sockets), one observation per socket per collection.";
const CONNECT_DURATION: &str = "tracer_tcp_connect_duration_seconds";
const CONNECT_DURATION_HELP: &str = "Connect latency of the flow's connections, one observation per connection: \
     connect() to ESTABLISHED for clients, the handshake round trip the kernel measured for accepted sockets.";

/// A series' failed connects per reason (sums to `failed_connects`). With
/// the kernel's reasons, `other` takes whatever the three named reasons
/// do not explain; without them, every failure is `other` and the named
/// reasons have no series (unknown, not zero).
fn failed_by_reason(counters: &Counters, reasons: bool) -> Vec<(FailReason, u64)> {
    if !reasons {
        return vec![(FailReason::Other, counters.failed_connects)];
    }
    let named = [FailReason::Refused, FailReason::Timeout, FailReason::Unreachable];
    let mut explained = 0u64;
    let mut values: Vec<(FailReason, u64)> = named
        .iter()
        .map(|&reason| {
            let count = reason.count(counters);
            explained = explained.saturating_add(count);
            (reason, count)
        })
        .collect();
    values.push((FailReason::Other, counters.failed_connects.saturating_sub(explained)));
    values
}

/// What one label set moved in one tick: its counters' growth and the
/// observations of its RTT and connect latency.
#[derive(Debug, Clone, Default)]
pub(super) struct Growth {
    pub(super) counters: Counters,
    pub(super) rtt: Dist,
    pub(super) connect: Dist,
}

impl Growth {
    /// Whether some flow metric moves (growth of other counters, such as
    /// connections closed, does not make a series move).
    fn moves(&self) -> bool {
        let c = &self.counters;
        FLOW_COUNTERS.iter().any(|flow_counter| (flow_counter.value)(c) > 0)
            || c.failed_connects > 0
            || c.rwnd_jiffies > 0
            || self.rtt.count > 0
            || self.connect.count > 0
    }
}

/// Latency observations of a series since it was created: bucket counts
/// over the model's latency buckets, as [`Dist`] has them (the last counts
/// past the top), their number and their sum in microseconds, all exact
/// integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Latency {
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    count: u64,
    sum_us: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency { buckets: [0; LATENCY_BUCKETS.len() + 1], count: 0, sum_us: 0 }
    }
}

impl Latency {
    /// Takes in one interval's observations.
    fn add(&mut self, dist: &Dist) {
        for (mine, &theirs) in self.buckets.iter_mut().zip(&dist.buckets) {
            *mine = mine.saturating_add(u64::from(theirs));
        }
        // Counted from the buckets, so they always add up to the count.
        self.count = self.count.saturating_add(dist.buckets.iter().map(|&b| u64::from(b)).sum());
        self.sum_us = self.sum_us.saturating_add(dist.sum);
    }

    #[cfg(test)]
    fn merge(&mut self, other: &Latency) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine = mine.saturating_add(theirs);
        }
        self.count = self.count.saturating_add(other.count);
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    /// The histogram in seconds.
    pub(super) fn histogram(&self) -> Histogram {
        Histogram::from_counts(
            LATENCY_BUCKETS,
            self.buckets[..LATENCY_BUCKETS.len()].to_vec(),
            self.count,
            self.sum_us as f64 / 1e6,
        )
    }
}

/// A series' values: counter totals and latency histograms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Totals {
    pub(super) counters: Counters,
    pub(super) rtt: Latency,
    pub(super) connect: Latency,
}

impl Totals {
    fn add(&mut self, growth: &Growth) {
        self.counters.add(&growth.counters);
        self.rtt.add(&growth.rtt);
        self.connect.add(&growth.connect);
    }

    #[cfg(test)]
    fn merge(&mut self, other: &Totals) {
        self.counters.add(&other.counters);
        self.rtt.merge(&other.rtt);
        self.connect.merge(&other.connect);
    }
}

/// The labels of one flow series, in the exposition's (alphabetical) order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct FlowLabels {
    pub(crate) comm: String,
    /// The process's container (`namespace/pod/container`, name or short
    /// id; empty for host processes): an attribute of the flow's process,
    /// so it splits no flow that `comm` does not already keep apart from
    /// others, and every label set counts against the same top-n.
    pub(crate) container: String,
    /// Present only with `--metrics-pid-label`.
    pub(crate) pid: Option<String>,
    pub(crate) port: String,
    pub(crate) remote: String,
    pub(crate) role: Role,
}

impl FlowLabels {
    fn of(key: &FlowKey, comm: String, container: String, pid_label: bool) -> Self {
        FlowLabels {
            comm,
            container,
            pid: pid_label.then(|| key.pid.to_string()),
            port: key.port.to_string(),
            remote: key.remote.to_string(),
            role: key.role,
        }
    }

    fn other(role: Role, pid_label: bool) -> Self {
        FlowLabels {
            comm: OTHER.to_owned(),
            container: OTHER.to_owned(),
            pid: pid_label.then(|| OTHER.to_owned()),
            port: OTHER.to_owned(),
            remote: OTHER.to_owned(),
            role,
        }
    }

    /// The label pairs, with `reason` in its (alphabetical) place if given.
    fn pairs(&self, reason: Option<&'static str>) -> Vec<(&'static str, &str)> {
        let mut pairs = vec![("comm", self.comm.as_str()), ("container", self.container.as_str())];
        if let Some(pid) = &self.pid {
            pairs.push(("pid", pid.as_str()));
        }
        pairs.push(("port", self.port.as_str()));
        if let Some(reason) = reason {
            pairs.push(("reason", reason));
        }
        pairs.extend([("remote", self.remote.as_str()), ("role", self.role.as_str())]);
        pairs
    }
}

#[derive(Debug, Clone)]
struct NamedSeries {
    totals: Totals,
    /// Seconds since the agent started when it last moved.
    last_active_secs: f64,
}

/// The flow series with top-n, sticky membership, overflow and expiry (see
/// the module doc).
#[derive(Debug)]
pub(super) struct FlowSeries {
    config: MetricsConfig,
    named: HashMap<FlowLabels, NamedSeries>,
    other: BTreeMap<Role, Totals>,
}

impl FlowSeries {
    pub(crate) fn new(config: MetricsConfig) -> Self {
        FlowSeries { config, named: HashMap::new(), other: BTreeMap::new() }
    }

    /// Takes in what each flow moved in the tick that ended at `now_secs`
    /// (seconds since the agent started) and the tick's observations of
    /// RTT and connect latency; `comm` names a pid as of now. Only growth
    /// comes in, so memory follows active flows and series, not every flow
    /// ever seen. Call once per tick: every call adds.
    #[cfg(test)]
    pub(crate) fn update(
        &mut self,
        now_secs: f64,
        flow_growth: &HashMap<FlowKey, Counters>,
        health: &HashMap<FlowKey, FlowHealth>,
        comm: &dyn Fn(u32) -> String,
    ) {
        self.update_with_containers(now_secs, flow_growth, health, comm, &|_| String::new());
    }

    /// [`FlowSeries::update`] with each pid's `container` label.
    pub(crate) fn update_with_containers(
        &mut self,
        now_secs: f64,
        flow_growth: &HashMap<FlowKey, Counters>,
        health: &HashMap<FlowKey, FlowHealth>,
        comm: &dyn Fn(u32) -> String,
        container: &dyn Fn(u32) -> String,
    ) {
        let pid_label = self.config.pid_label;
        let labels = |key: &FlowKey| FlowLabels::of(key, comm(key.pid), container(key.pid), pid_label);
        let mut growth: HashMap<FlowLabels, Growth> = HashMap::new();
        for (key, counters) in flow_growth {
            growth.entry(labels(key)).or_default().counters.add(counters);
        }
        for (key, interval) in health {
            if interval.rtt.count > 0 || interval.connect.count > 0 {
                let entry = growth.entry(labels(key)).or_default();
                entry.rtt.merge(&interval.rtt);
                entry.connect.merge(&interval.connect);
            }
        }

        let mut newcomers = Vec::new();
        for (labels, delta) in growth.into_iter().filter(|(_, delta)| delta.moves()) {
            match self.named.get_mut(&labels) {
                Some(series) => {
                    series.totals.add(&delta);
                    series.last_active_secs = now_secs;
                }
                None => newcomers.push((labels, delta)),
            }
        }
        // Expire before admitting, so newcomers can take the freed slots.
        let expiry = self.config.expiry_secs;
        self.named.retain(|_, series| now_secs - series.last_active_secs < expiry);

        newcomers.sort_by(|(a_labels, a), (b_labels, b)| {
            b.counters
                .bytes()
                .cmp(&a.counters.bytes())
                .then(b.counters.opened.cmp(&a.counters.opened))
                .then(a_labels.cmp(b_labels))
        });
        for (labels, delta) in newcomers {
            if self.named.len() < self.config.top_n.saturating_sub(OVERFLOW_SERIES) {
                let mut totals = Totals::default();
                totals.add(&delta);
                self.named.insert(labels, NamedSeries { totals, last_active_secs: now_secs });
            } else {
                self.other.entry(labels.role).or_default().add(&delta);
            }
        }
    }

    /// Every series with its values, sorted by labels.
    pub(crate) fn series(&self) -> Vec<(FlowLabels, Totals)> {
        let mut series: Vec<(FlowLabels, Totals)> =
            self.named.iter().map(|(labels, series)| (labels.clone(), series.totals)).collect();
        series
            .extend(self.other.iter().map(|(role, totals)| (FlowLabels::other(*role, self.config.pid_label), *totals)));
        series.sort_by(|a, b| a.0.cmp(&b.0));
        series
    }

    /// Everything every series holds, summed (what a `sum()` over the
    /// series shows).
    #[cfg(test)]
    pub(crate) fn sum(&self) -> Totals {
        let mut sum = Totals::default();
        for (_, totals) in self.series() {
            sum.merge(&totals);
        }
        sum
    }
}

/// The flow metrics as a group of families.
pub(super) struct FlowGroup {
    series: FlowSeries,
    pid_label: bool,
    /// What the kernel provides and its HZ, as of the last tick.
    support: HealthSupport,
    hz: Option<u32>,
    /// The model sample last taken in (`Snapshot::last_sample_secs`): a
    /// sample's growth and observations are added once, however often the
    /// same snapshot is handed in.
    last_sample_secs: Option<f64>,
}

impl FlowGroup {
    pub(super) fn new(config: MetricsConfig) -> Self {
        let pid_label = config.pid_label;
        FlowGroup {
            series: FlowSeries::new(config),
            pid_label,
            support: HealthSupport::default(),
            hz: None,
            last_sample_secs: None,
        }
    }

    fn labels(&self) -> &'static [&'static str] {
        if self.pid_label {
            FLOW_LABELS_WITH_PID
        } else {
            FLOW_LABELS
        }
    }

    fn failed_connects(&self) -> Definition {
        let labels = if self.pid_label { FAILED_LABELS_WITH_PID } else { FAILED_LABELS };
        counter(FAILED_CONNECTS, FAILED_CONNECTS_HELP, labels)
    }

    fn rwnd_limited(&self) -> Definition {
        counter(RWND_LIMITED, RWND_LIMITED_HELP, self.labels())
    }

    fn rtt(&self) -> Definition {
        histogram(RTT, RTT_HELP, self.labels())
    }

    fn connect_duration(&self) -> Definition {
        histogram(CONNECT_DURATION, CONNECT_DURATION_HELP, self.labels())
    }
}

impl Group for FlowGroup {
    fn definitions(&self) -> Vec<Definition> {
        let mut definitions: Vec<Definition> = FLOW_COUNTERS
            .iter()
            .map(|flow_counter| counter(flow_counter.name, flow_counter.help, self.labels()))
            .collect();
        definitions.extend([self.failed_connects(), self.rwnd_limited(), self.rtt(), self.connect_duration()]);
        definitions
    }

    fn update(&mut self, tick: &Tick<'_>) {
        let snapshot = tick.snapshot;
        self.support = snapshot.health_support;
        self.hz = snapshot.hz;
        if self.last_sample_secs == Some(snapshot.last_sample_secs) {
            return;
        }
        self.last_sample_secs = Some(snapshot.last_sample_secs);
        self.series.update_with_containers(
            tick.now_secs,
            tick.flow_growth,
            &snapshot.last_interval_health,
            tick.comm,
            tick.container,
        );
    }

    fn families(&self) -> Vec<MetricFamily> {
        let series = self.series.series();
        let mut families: Vec<MetricFamily> = FLOW_COUNTERS
            .iter()
            .map(|flow_counter| {
                let samples = series
                    .iter()
                    .map(|(labels, totals)| sample(&labels.pairs(None), (flow_counter.value)(&totals.counters) as f64));
                family(&counter(flow_counter.name, flow_counter.help, self.labels()), samples)
            })
            .collect();

        let reasons = self.support.failure_reasons;
        families.push(family(
            &self.failed_connects(),
            series.iter().flat_map(|(labels, totals)| {
                failed_by_reason(&totals.counters, reasons)
                    .into_iter()
                    .map(|(reason, count)| sample(&labels.pairs(Some(reason.name())), count as f64))
            }),
        ));

        // Seconds only once HZ is known (the counters count jiffies); HZ
        // is measured once, so the value never goes backwards. A family
        // the kernel cannot fill has no samples (and is not rendered).
        let hz = self.hz.filter(|_| self.support.chrono);
        families.push(family(
            &self.rwnd_limited(),
            series.iter().filter(|_| hz.is_some()).map(|(labels, totals)| {
                let hz = f64::from(hz.unwrap_or(1).max(1));
                sample(&labels.pairs(None), totals.counters.rwnd_jiffies as f64 / hz)
            }),
        ));

        let has_rtt = self.support.sampling && self.support.rtt;
        let rtt: Vec<Histogram> = series.iter().filter(|_| has_rtt).map(|(_, totals)| totals.rtt.histogram()).collect();
        families.push(family(
            &self.rtt(),
            series.iter().zip(&rtt).map(|((labels, _), histogram)| histogram_sample(&labels.pairs(None), histogram)),
        ));
        let connect: Vec<Histogram> = series.iter().map(|(_, totals)| totals.connect.histogram()).collect();
        families.push(family(
            &self.connect_duration(),
            series
                .iter()
                .zip(&connect)
                .map(|((labels, _), histogram)| histogram_sample(&labels.pairs(None), histogram)),
        ));
        families
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn config(top_n: usize) -> MetricsConfig {
        MetricsConfig { top_n, pid_label: false, expiry_secs: 600.0 }
    }

    fn key(pid: u32, role: Role, remote: &str, port: u16) -> FlowKey {
        FlowKey { pid, role, remote: remote.parse::<IpAddr>().expect("ip"), port }
    }

    fn bytes(tx: u64, rx: u64) -> Counters {
        Counters { tx_bytes: tx, rx_bytes: rx, ..Counters::default() }
    }

    fn comm_of(pid: u32) -> String {
        format!("p{pid}")
    }

    fn named(series: &FlowSeries, comm: &str) -> Option<Counters> {
        series.series().into_iter().find(|(labels, _)| labels.comm == comm).map(|(_, totals)| totals.counters)
    }

    fn other(series: &FlowSeries, role: Role) -> Option<Counters> {
        series
            .series()
            .into_iter()
            .find(|(labels, _)| labels.comm == OTHER && labels.role == role)
            .map(|(_, totals)| totals.counters)
    }

    #[test]
    fn newcomers_are_admitted_biggest_first_and_the_rest_feed_other() {
        let mut series = FlowSeries::new(config(4));
        let cumulative = HashMap::from([
            (key(1, Role::Client, "10.0.0.1", 443), bytes(10, 0)),
            (key(2, Role::Client, "10.0.0.2", 443), bytes(300, 0)),
            (key(3, Role::Client, "10.0.0.3", 443), bytes(200, 0)),
            (key(4, Role::Server, "10.0.0.4", 80), bytes(0, 7)),
        ]);
        series.update(1.0, &cumulative, &HashMap::new(), &comm_of);
        assert_eq!(named(&series, "p2").map(|t| t.tx_bytes), Some(300));
        assert_eq!(named(&series, "p3").map(|t| t.tx_bytes), Some(200));
        assert!(named(&series, "p1").is_none());
        assert_eq!(other(&series, Role::Client).map(|t| t.tx_bytes), Some(10));
        assert_eq!(other(&series, Role::Server).map(|t| t.rx_bytes), Some(7));
        let labels: Vec<FlowLabels> = series.series().into_iter().map(|(labels, _)| labels).collect();
        assert_eq!(labels.len(), 4, "two named + one other per role");
        let overflow = labels.iter().find(|l| l.comm == OTHER).expect("other");
        assert_eq!((overflow.remote.as_str(), overflow.port.as_str()), (OTHER, OTHER));
    }

    #[test]
    fn membership_is_sticky_and_counters_never_go_backwards() {
        let mut series = FlowSeries::new(config(3));
        let small = key(1, Role::Client, "10.0.0.1", 443);
        let big = key(2, Role::Client, "10.0.0.2", 443);
        series.update(1.0, &HashMap::from([(small, bytes(5, 0))]), &HashMap::new(), &comm_of);
        // A much bigger newcomer does not displace the member.
        series.update(
            2.0,
            &HashMap::from([(small, bytes(1, 0)), (big, bytes(1_000_000, 0))]),
            &HashMap::new(),
            &comm_of,
        );
        assert_eq!(named(&series, "p1").map(|t| t.tx_bytes), Some(6));
        assert_eq!(other(&series, Role::Client).map(|t| t.tx_bytes), Some(1_000_000));
        // The big flow keeps feeding other with its growth only.
        series.update(3.0, &HashMap::from([(big, bytes(100, 0))]), &HashMap::new(), &comm_of);
        assert_eq!(other(&series, Role::Client).map(|t| t.tx_bytes), Some(1_000_100));

        // A renamed process: its later growth moves to the new name; the old
        // series keeps its value.
        let renamed = |pid: u32| if pid == 1 { "renamed".to_owned() } else { comm_of(pid) };
        let mut series = FlowSeries::new(config(10));
        series.update(1.0, &HashMap::from([(small, bytes(5, 0))]), &HashMap::new(), &comm_of);
        series.update(2.0, &HashMap::from([(small, bytes(3, 0))]), &HashMap::new(), &renamed);
        assert_eq!(named(&series, "p1").map(|t| t.tx_bytes), Some(5));
        assert_eq!(named(&series, "renamed").map(|t| t.tx_bytes), Some(3));
    }

    #[test]
    fn quiet_series_expire_and_free_their_slot() {
        let mut series = FlowSeries::new(MetricsConfig { top_n: 3, pid_label: false, expiry_secs: 10.0 });
        let first = key(1, Role::Client, "10.0.0.1", 443);
        let second = key(2, Role::Client, "10.0.0.2", 443);
        series.update(1.0, &HashMap::from([(first, bytes(5, 0))]), &HashMap::new(), &comm_of);
        series.update(5.0, &HashMap::from([(second, bytes(1, 0))]), &HashMap::new(), &comm_of);
        assert!(named(&series, "p2").is_none());
        // At 11 s the first has been quiet for 10 s: it goes, the second
        // (growing again) takes its slot with this tick's growth only.
        series.update(11.0, &HashMap::from([(second, bytes(2, 0))]), &HashMap::new(), &comm_of);
        assert!(named(&series, "p1").is_none());
        assert_eq!(named(&series, "p2").map(|t| t.tx_bytes), Some(2));
        // The overflow series stays, never going backwards.
        assert_eq!(other(&series, Role::Client).map(|t| t.tx_bytes), Some(1));
    }

    #[test]
    fn pid_label_only_when_asked() {
        let cumulative = HashMap::from([(key(7, Role::Server, "::1", 8080), bytes(1, 1))]);
        let mut series = FlowSeries::new(MetricsConfig { top_n: 5, pid_label: true, expiry_secs: 60.0 });
        series.update(1.0, &cumulative, &HashMap::new(), &comm_of);
        assert_eq!(series.series()[0].0.pid.as_deref(), Some("7"));
        let mut series = FlowSeries::new(config(5));
        series.update(1.0, &cumulative, &HashMap::new(), &comm_of);
        assert_eq!(series.series()[0].0.pid, None);
    }

    fn observed(values: &[u64]) -> Dist {
        let mut dist = Dist::default();
        for &value in values {
            dist.observe(value);
        }
        dist
    }

    fn rtt(values: &[u64]) -> FlowHealth {
        FlowHealth { rtt: observed(values), sockets: values.len() as u32, ..FlowHealth::default() }
    }

    #[test]
    fn histograms_follow_membership_and_fold_into_other() {
        let mut series = FlowSeries::new(config(3));
        let member = key(1, Role::Client, "10.0.0.1", 443);
        let outsider = key(2, Role::Client, "10.0.0.2", 443);
        // An idle flow whose sockets only show an RTT still moves.
        series.update(1.0, &HashMap::new(), &HashMap::from([(member, rtt(&[150]))]), &comm_of);
        let connect = FlowHealth { connect: observed(&[900, 30_000]), ..rtt(&[5_000]) };
        series.update(
            2.0,
            &HashMap::from([(outsider, bytes(10, 0))]),
            &HashMap::from([(member, rtt(&[250])), (outsider, connect)]),
            &comm_of,
        );
        let all = series.series();
        let (_, mine) = all.iter().find(|(labels, _)| labels.comm == "p1").expect("member");
        assert_eq!((mine.rtt.count, mine.rtt.sum_us), (2, 400));
        assert_eq!((mine.rtt.buckets[1], mine.rtt.buckets[2]), (1, 1), "<= 200 us, <= 400 us");
        let (_, other) = all.iter().find(|(labels, _)| labels.comm == OTHER).expect("other");
        assert_eq!((other.rtt.count, other.rtt.sum_us), (1, 5_000));
        assert_eq!((other.connect.count, other.connect.sum_us), (2, 30_900));
        assert_eq!(other.counters.tx_bytes, 10);
        // Nothing is lost or counted twice on the way.
        let sum = series.sum();
        assert_eq!((sum.rtt.count, sum.rtt.sum_us, sum.connect.count), (3, 5_400, 2));

        // A series that stops moving expires with all its values.
        let mut series = FlowSeries::new(MetricsConfig { top_n: 4, pid_label: false, expiry_secs: 10.0 });
        series.update(1.0, &HashMap::new(), &HashMap::from([(member, rtt(&[150]))]), &comm_of);
        series.update(20.0, &HashMap::from([(outsider, bytes(1, 0))]), &HashMap::new(), &comm_of);
        assert!(series.series().iter().all(|(labels, _)| labels.comm != "p1"));
    }

    #[test]
    fn latency_histograms_are_exact_in_seconds() {
        let mut latency = Latency::default();
        latency.add(&observed(&[100, 101, 1_000_000, 20_000_000]));
        latency.add(&observed(&[300]));
        let histogram = latency.histogram();
        let expected_sum = (100 + 101 + 1_000_000 + 20_000_000 + 300) as f64 / 1e6;
        assert_eq!(histogram, Histogram::from_counts(LATENCY_BUCKETS, histogram_buckets(&latency), 5, expected_sum));
        assert_eq!(latency.buckets.iter().sum::<u64>(), latency.count, "the overflow bucket included");
        assert_eq!(latency.buckets[LATENCY_BUCKETS.len()], 1, "20 s is past the top");
    }

    fn histogram_buckets(latency: &Latency) -> Vec<u64> {
        latency.buckets[..LATENCY_BUCKETS.len()].to_vec()
    }

    #[test]
    fn failed_connects_split_by_reason_sum_to_the_total() {
        let counters = Counters {
            failed_connects: 7,
            failed_refused: 3,
            failed_timeout: 2,
            failed_unreachable: 1,
            failed_other: 1,
            ..Counters::default()
        };
        let split = failed_by_reason(&counters, true);
        assert_eq!(
            split,
            [(FailReason::Refused, 3), (FailReason::Timeout, 2), (FailReason::Unreachable, 1), (FailReason::Other, 1)]
        );
        // Without the kernel's reasons, all are `other`; the rest are unknown.
        assert_eq!(failed_by_reason(&counters, false), [(FailReason::Other, 7)]);
        // `other` takes what the named reasons leave, so the sum holds.
        let unexplained = Counters { failed_connects: 4, failed_refused: 1, ..Counters::default() };
        assert_eq!(failed_by_reason(&unexplained, true).iter().map(|(_, n)| n).sum::<u64>(), 4);
    }

    #[test]
    fn short_lived_containers_stay_within_top_n_and_expire() {
        // 200 containers, one flow each (same comm, remote and port): the
        // container label splits them, and the top-n bounds them.
        let mut series = FlowSeries::new(MetricsConfig { top_n: 10, pid_label: false, expiry_secs: 60.0 });
        let container = |pid: u32| format!("c{pid:03}");
        let same_name = |_pid: u32| "worker".to_owned();
        for pid in 1..=200u32 {
            let growth = HashMap::from([(key(pid, Role::Client, "10.0.0.1", 443), bytes(u64::from(pid), 0))]);
            series.update_with_containers(f64::from(pid) / 10.0, &growth, &HashMap::new(), &same_name, &container);
        }
        let all = series.series();
        assert!(all.len() <= 10, "{} series", all.len());
        let named: Vec<&FlowLabels> = all.iter().map(|(l, _)| l).filter(|l| l.comm != OTHER).collect();
        assert_eq!(named.len(), 8, "top_n minus the two overflow series");
        assert!(named.iter().all(|l| l.container.starts_with('c')));
        let overflow = all.iter().find(|(l, _)| l.comm == OTHER).expect("other");
        assert_eq!(overflow.0.container, OTHER);
        // Every byte is in some series.
        let total: u64 = all.iter().map(|(_, t)| t.counters.tx_bytes).sum();
        assert_eq!(total, (1..=200u64).sum::<u64>());
        // The containers are gone: after the expiry none of their series stay.
        series.update_with_containers(100.0, &HashMap::new(), &HashMap::new(), &same_name, &container);
        assert!(series.series().iter().all(|(l, _)| l.comm == OTHER), "{:?}", series.series());
    }
}
