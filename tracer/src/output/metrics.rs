//! The agent's Prometheus metrics (`/metrics`): the names DESIGN.md lists,
//! with bounded cardinality. [`Metrics`] is plain data, updated once per tick
//! from the per-tick growth of the model's flow counters and that tick's snapshot, and
//! exposed as a custom [`Collector`] rendered by the `prometheus` crate's
//! text encoder (which also escapes the untrusted label values).
//!
//! # Cardinality
//! Flow counters (`tracer_tcp_*_total{comm,port,remote,role}`):
//! - A series is one label set: `comm` (the process name at the tick), `role`,
//!   `remote` (IP) and `port` (the flow's service port, so ephemeral ports
//!   never become labels), plus `pid` with `--metrics-pid-label`. Flows of
//!   several processes with the same name share a series.
//! - The six flow counters share one membership: a label set is a series in
//!   all of them or in none, so they can be divided by each other.
//! - At most `--metrics-top-n` named series. A label set is considered when
//!   it first moves something; those first seen in the same tick are admitted
//!   biggest first (bytes sent + received in that tick) while there is room.
//! - Membership is sticky: a named series keeps its own counts for as long as
//!   it lives; a bigger newcomer never displaces it. Label sets that never got
//!   a series are summed into one overflow series per role,
//!   `{comm="other", remote="other", port="other", role=...}` (and
//!   `pid="other"`): the role is kept because it has two values, the port is
//!   not because ports are unbounded. Two of the `top_n` series are kept
//!   for these, so a flow metric has at most `top_n` series.
//! - A named series that has not moved for `--metrics-expiry` is dropped and
//!   frees its slot; if its label set moves again it is a newcomer, counting
//!   from then on (a new series to Prometheus). The overflow series never
//!   expire.
//! - Every series value is a sum of per-tick growth of the model's
//!   cumulative per-flow counters, so no counter goes backwards: not when
//!   sockets close (the model folds their final counts in), not when a
//!   process renames itself (its later traffic goes to the new name's
//!   series), not when flows change series.
//!
//! Per-process gauges are keyed by `comm` only (the pid label is for flow
//! counters): `tracer_tcp_sockets{comm,state}` keeps the `top_n - 1` names
//! with the most sockets and sums the rest into `comm="other"`;
//! `tracer_tcp_close_wait_oldest_seconds{comm}` keeps the `top_n - 1` oldest
//! and takes the maximum of the rest. Gauges are current values, so they are not
//! sticky; a zero count is absent. `tracer_findings{kind,severity,comm}` is 1
//! for each active finding; names past the first `top_n - 1` (most severe first)
//! are folded into `comm="other"`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Series of each flow metric kept for the overflow (`other`), one per role.
const OVERFLOW_SERIES: usize = 2;

use prometheus::{
    core::{Collector, Desc},
    proto::{Counter as CounterValue, Gauge as GaugeValue, LabelPair, Metric, MetricFamily, MetricType},
    TextEncoder,
};

use super::Snapshot;
use crate::model::{Counters, FlowKey, Role};

/// The label value of series that sum what has no series of its own.
pub(crate) const OTHER: &str = "other";

/// The `Content-Type` of the exposition.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The cardinality flags of `tracer agent`.
#[derive(Debug, Clone)]
pub(crate) struct MetricsConfig {
    /// Named series per metric (`--metrics-top-n`).
    pub(crate) top_n: usize,
    /// Add a `pid` label to flow counters (`--metrics-pid-label`).
    pub(crate) pid_label: bool,
    /// Drop named flow series quiet for this long (`--metrics-expiry`).
    pub(crate) expiry_secs: f64,
}

/// The labels of one flow series, in the exposition's (alphabetical) order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct FlowLabels {
    pub(crate) comm: String,
    /// Present only with `--metrics-pid-label`.
    pub(crate) pid: Option<String>,
    pub(crate) port: String,
    pub(crate) remote: String,
    pub(crate) role: Role,
}

impl FlowLabels {
    fn of(key: &FlowKey, comm: String, pid_label: bool) -> Self {
        FlowLabels {
            comm,
            pid: pid_label.then(|| key.pid.to_string()),
            port: key.port.to_string(),
            remote: key.remote.to_string(),
            role: key.role,
        }
    }

    fn other(role: Role, pid_label: bool) -> Self {
        FlowLabels {
            comm: OTHER.to_owned(),
            pid: pid_label.then(|| OTHER.to_owned()),
            port: OTHER.to_owned(),
            remote: OTHER.to_owned(),
            role,
        }
    }

    fn pairs(&self) -> Vec<(&'static str, &str)> {
        let mut pairs = vec![("comm", self.comm.as_str())];
        if let Some(pid) = &self.pid {
            pairs.push(("pid", pid.as_str()));
        }
        pairs.extend([("port", self.port.as_str()), ("remote", self.remote.as_str()), ("role", self.role.as_str())]);
        pairs
    }
}

#[derive(Debug, Clone)]
struct NamedSeries {
    totals: Counters,
    /// Seconds since the agent started when it last moved.
    last_active_secs: f64,
}

/// The flow series with top-n, sticky membership, overflow and expiry (see
/// the module doc).
#[derive(Debug)]
pub(crate) struct FlowSeries {
    config: MetricsConfig,
    named: HashMap<FlowLabels, NamedSeries>,
    other: BTreeMap<Role, Counters>,
}

impl FlowSeries {
    pub(crate) fn new(config: MetricsConfig) -> Self {
        FlowSeries { config, named: HashMap::new(), other: BTreeMap::new() }
    }

    /// Takes in what each flow moved in the tick that ended at `now_secs`
    /// (seconds since the agent started); `comm` names a pid as of now.
    /// Only growth comes in, so memory follows active flows and series, not
    /// every flow ever seen.
    pub(crate) fn update(
        &mut self,
        now_secs: f64,
        flow_growth: &HashMap<FlowKey, Counters>,
        comm: &dyn Fn(u32) -> String,
    ) {
        let mut growth: HashMap<FlowLabels, Counters> = HashMap::new();
        for (key, counters) in flow_growth {
            if moves(counters) {
                growth.entry(FlowLabels::of(key, comm(key.pid), self.config.pid_label)).or_default().add(counters);
            }
        }

        let mut newcomers = Vec::new();
        for (labels, delta) in growth {
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
            b.bytes().cmp(&a.bytes()).then(b.opened.cmp(&a.opened)).then(a_labels.cmp(b_labels))
        });
        for (labels, delta) in newcomers {
            if self.named.len() < self.config.top_n.saturating_sub(OVERFLOW_SERIES) {
                self.named.insert(labels, NamedSeries { totals: delta, last_active_secs: now_secs });
            } else {
                self.other.entry(labels.role).or_default().add(&delta);
            }
        }
    }

    /// Every series with its values, sorted by labels.
    pub(crate) fn series(&self) -> Vec<(FlowLabels, Counters)> {
        let mut series: Vec<(FlowLabels, Counters)> =
            self.named.iter().map(|(labels, series)| (labels.clone(), series.totals)).collect();
        series
            .extend(self.other.iter().map(|(role, totals)| (FlowLabels::other(*role, self.config.pid_label), *totals)));
        series.sort_by(|a, b| a.0.cmp(&b.0));
        series
    }
}

/// What one tick hands to [`Metrics::update`].
pub(crate) struct Tick<'a> {
    /// Seconds since the agent started.
    pub(crate) now_secs: f64,
    /// What each flow moved in this tick (the model's last sample).
    pub(crate) flow_growth: &'a HashMap<FlowKey, Counters>,
    /// The process name of a pid, as of this tick.
    pub(crate) comm: &'a dyn Fn(u32) -> String,
    pub(crate) snapshot: &'a Snapshot,
    /// How long collecting this tick took.
    pub(crate) collect_duration_secs: f64,
}

/// One metric: its name, HELP, type and label names.
struct Definition {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
}

const FLOW_LABELS: &[&str] = &["comm", "port", "remote", "role"];
const FLOW_LABELS_WITH_PID: &[&str] = &["comm", "pid", "port", "remote", "role"];

const fn counter(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Definition {
    Definition { name, help, kind: MetricType::COUNTER, labels }
}

const fn gauge(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Definition {
    Definition { name, help, kind: MetricType::GAUGE, labels }
}

/// One flow counter: its name, HELP, and its value from a flow's counters.
struct FlowCounter {
    name: &'static str,
    help: &'static str,
    value: fn(&Counters) -> u64,
}

/// The flow counters: a new one is a row here.
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
        name: "tracer_tcp_connections_opened_total",
        help: "TCP connections of the flow that were opened (connected or accepted).",
        value: |c| c.opened,
    },
    FlowCounter {
        name: "tracer_tcp_failed_connects_total",
        help: "Connection attempts of the flow that failed.",
        value: |c| c.failed_connects,
    },
    FlowCounter {
        name: "tracer_tcp_resets_total",
        help: "TCP resets sent or received on sockets of the flow.",
        value: |c| c.resets(),
    },
];

/// Whether some flow metric shows growth in `counters` (growth of other
/// counters, such as segments sent or connections closed, does not make a
/// series move).
fn moves(counters: &Counters) -> bool {
    FLOW_COUNTERS.iter().any(|flow_counter| (flow_counter.value)(counters) > 0)
}

const SOCKETS: Definition =
    gauge("tracer_tcp_sockets", "TCP sockets owned by processes of this name, by state.", &["comm", "state"]);
const CLOSE_WAIT_OLDEST: Definition = gauge(
    "tracer_tcp_close_wait_oldest_seconds",
    "Age of the oldest CLOSE_WAIT socket of processes of this name (a lower bound for sockets found at start).",
    &["comm"],
);
const FINDINGS: Definition =
    gauge("tracer_findings", "Active findings of the analysis (1 while active).", &["comm", "kind", "severity"]);
const EVENTS: Definition = counter("tracer_events_total", "Events the eBPF programs handled.", &[]);
const EVENTS_DROPPED: Definition =
    counter("tracer_events_dropped_total", "Events the eBPF programs lost (ring buffer or socket table full).", &[]);
const TRACKED_SOCKETS: Definition = gauge("tracer_tracked_sockets", "Sockets the tracer tracks now.", &[]);
const COLLECT_DURATION: Definition =
    gauge("tracer_collect_duration_seconds", "Time the last collection (read, sample, report) took.", &[]);
const BACKEND_INFO: Definition = gauge("tracer_backend_info", "The attach backend in use (always 1).", &["backend"]);
const BUILD_INFO: Definition = gauge("tracer_build_info", "The tracer's version (always 1).", &["version"]);

/// All the agent's metrics: plain data, rendered on demand.
pub(crate) struct Metrics {
    flows: FlowSeries,
    top_n: usize,
    pid_label: bool,
    backend: String,
    version: &'static str,
    /// (comm, state) -> sockets.
    sockets: BTreeMap<(String, &'static str), u64>,
    close_wait_oldest: BTreeMap<String, f64>,
    /// (comm, kind, severity).
    findings: BTreeSet<(String, &'static str, &'static str)>,
    events_total: u64,
    events_dropped: u64,
    tracked_sockets: u64,
    collect_duration_secs: f64,
    descs: Vec<Desc>,
}

impl Metrics {
    pub(crate) fn new(config: MetricsConfig, backend: &str) -> prometheus::Result<Self> {
        let flow_labels = if config.pid_label { FLOW_LABELS_WITH_PID } else { FLOW_LABELS };
        let mut descs = Vec::new();
        for flow_counter in FLOW_COUNTERS {
            descs.push(desc(&counter(flow_counter.name, flow_counter.help, flow_labels))?);
        }
        for definition in [
            &SOCKETS,
            &CLOSE_WAIT_OLDEST,
            &FINDINGS,
            &EVENTS,
            &EVENTS_DROPPED,
            &TRACKED_SOCKETS,
            &COLLECT_DURATION,
            &BACKEND_INFO,
            &BUILD_INFO,
        ] {
            descs.push(desc(definition)?);
        }
        Ok(Metrics {
            top_n: config.top_n,
            pid_label: config.pid_label,
            flows: FlowSeries::new(config),
            backend: backend.to_owned(),
            version: env!("CARGO_PKG_VERSION"),
            sockets: BTreeMap::new(),
            close_wait_oldest: BTreeMap::new(),
            findings: BTreeSet::new(),
            events_total: 0,
            events_dropped: 0,
            tracked_sockets: 0,
            collect_duration_secs: 0.0,
            descs,
        })
    }

    pub(crate) fn update(&mut self, tick: &Tick<'_>) {
        self.flows.update(tick.now_secs, tick.flow_growth, tick.comm);
        let snapshot = tick.snapshot;

        let mut sockets_by_comm: BTreeMap<&str, BTreeMap<&'static str, u64>> = BTreeMap::new();
        for process in &snapshot.processes {
            let entry = sockets_by_comm.entry(&process.comm).or_default();
            for (state, count) in &process.sockets {
                *entry.entry(state).or_default() += count;
            }
        }
        let kept = top_names(
            sockets_by_comm.iter().map(|(comm, states)| (*comm, states.values().sum::<u64>() as f64)),
            self.top_n.saturating_sub(1),
        );
        self.sockets.clear();
        for (comm, states) in sockets_by_comm {
            let label = if kept.contains(comm) { comm } else { OTHER };
            for (state, count) in states {
                if count > 0 {
                    *self.sockets.entry((label.to_owned(), state)).or_default() += count;
                }
            }
        }

        let mut oldest: BTreeMap<&str, f64> = BTreeMap::new();
        for socket in &snapshot.close_wait {
            let age = oldest.entry(&socket.comm).or_insert(0.0);
            *age = age.max(socket.age_secs);
        }
        let kept = top_names(oldest.iter().map(|(comm, age)| (*comm, *age)), self.top_n.saturating_sub(1));
        self.close_wait_oldest.clear();
        for (comm, age) in oldest {
            let label = if kept.contains(comm) { comm } else { OTHER };
            let entry = self.close_wait_oldest.entry(label.to_owned()).or_insert(0.0);
            *entry = entry.max(age);
        }

        let mut by_severity: Vec<_> = snapshot.findings.iter().collect();
        by_severity.sort_by_key(|finding| std::cmp::Reverse(finding.severity));
        let mut kept: BTreeSet<&str> = BTreeSet::new();
        self.findings.clear();
        for finding in by_severity {
            if kept.len() < self.top_n.saturating_sub(1) {
                kept.insert(&finding.comm);
            }
            let comm = if kept.contains(finding.comm.as_str()) { finding.comm.as_str() } else { OTHER };
            self.findings.insert((comm.to_owned(), finding.kind, finding.severity.as_str()));
        }

        // The kernel's counters only grow; max() keeps that true for the
        // exported counters even if a read came back short.
        self.events_total = self.events_total.max(snapshot.stats.events_total);
        self.events_dropped = self.events_dropped.max(snapshot.stats.events_dropped + snapshot.stats.map_full_drops);
        self.tracked_sockets = snapshot.live_sockets;
        self.collect_duration_secs = tick.collect_duration_secs;
    }

    /// The exposition in Prometheus text format.
    pub(crate) fn render(&self) -> prometheus::Result<String> {
        let families: Vec<MetricFamily> =
            self.collect().into_iter().filter(|family| !family.get_metric().is_empty()).collect();
        TextEncoder::new().encode_to_string(&families)
    }
}

impl Collector for Metrics {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let flow_labels = if self.pid_label { FLOW_LABELS_WITH_PID } else { FLOW_LABELS };
        let series = self.flows.series();
        let mut families = Vec::new();
        for flow_counter in FLOW_COUNTERS {
            let samples =
                series.iter().map(|(labels, totals)| sample(&labels.pairs(), (flow_counter.value)(totals) as f64));
            families.push(family(&counter(flow_counter.name, flow_counter.help, flow_labels), samples));
        }
        families.push(family(
            &SOCKETS,
            self.sockets
                .iter()
                .map(|((comm, state), count)| sample(&[("comm", comm), ("state", state)], *count as f64)),
        ));
        families.push(family(
            &CLOSE_WAIT_OLDEST,
            self.close_wait_oldest.iter().map(|(comm, age)| sample(&[("comm", comm)], *age)),
        ));
        families.push(family(
            &FINDINGS,
            self.findings
                .iter()
                .map(|(comm, kind, severity)| sample(&[("comm", comm), ("kind", kind), ("severity", severity)], 1.0)),
        ));
        families.push(family(&EVENTS, [sample(&[], self.events_total as f64)]));
        families.push(family(&EVENTS_DROPPED, [sample(&[], self.events_dropped as f64)]));
        families.push(family(&TRACKED_SOCKETS, [sample(&[], self.tracked_sockets as f64)]));
        families.push(family(&COLLECT_DURATION, [sample(&[], self.collect_duration_secs)]));
        families.push(family(&BACKEND_INFO, [sample(&[("backend", &self.backend)], 1.0)]));
        families.push(family(&BUILD_INFO, [sample(&[("version", self.version)], 1.0)]));
        families.sort_by(|a, b| a.name().cmp(b.name()));
        families
    }
}

/// The `top_n` names with the largest values (ties by name).
fn top_names<'a>(values: impl Iterator<Item = (&'a str, f64)>, top_n: usize) -> BTreeSet<&'a str> {
    let mut ranked: Vec<(&str, f64)> = values.collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    ranked.into_iter().take(top_n).map(|(name, _)| name).collect()
}

fn desc(definition: &Definition) -> prometheus::Result<Desc> {
    Desc::new(
        definition.name.to_owned(),
        definition.help.to_owned(),
        definition.labels.iter().map(|label| (*label).to_owned()).collect(),
        HashMap::new(),
    )
}

/// One sample before its family gives it a type.
struct Sample {
    labels: Vec<LabelPair>,
    value: f64,
}

fn sample(labels: &[(&str, &str)], value: f64) -> Sample {
    let labels = labels
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name((*name).to_owned());
            pair.set_value((*value).to_owned());
            pair
        })
        .collect();
    Sample { labels, value }
}

fn family(definition: &Definition, samples: impl IntoIterator<Item = Sample>) -> MetricFamily {
    let metrics = samples
        .into_iter()
        .map(|sample| {
            let mut metric = Metric::default();
            metric.set_label(sample.labels);
            if definition.kind == MetricType::COUNTER {
                let mut counter = CounterValue::default();
                counter.set_value(sample.value);
                metric.set_counter(counter);
            } else {
                let mut gauge = GaugeValue::default();
                gauge.set_value(sample.value);
                metric.set_gauge(gauge);
            }
            metric
        })
        .collect();
    let mut family = MetricFamily::default();
    family.set_name(definition.name.to_owned());
    family.set_help(definition.help.to_owned());
    family.set_field_type(definition.kind);
    family.set_metric(metrics);
    family
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::{
        analysis::{Finding, Severity},
        model::{CloseWait, KernelStats, Process, StateCounts},
    };

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
        series.series().into_iter().find(|(labels, _)| labels.comm == comm).map(|(_, totals)| totals)
    }

    fn other(series: &FlowSeries, role: Role) -> Option<Counters> {
        series
            .series()
            .into_iter()
            .find(|(labels, _)| labels.comm == OTHER && labels.role == role)
            .map(|(_, totals)| totals)
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
        series.update(1.0, &cumulative, &comm_of);
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
        series.update(1.0, &HashMap::from([(small, bytes(5, 0))]), &comm_of);
        // A much bigger newcomer does not displace the member.
        series.update(2.0, &HashMap::from([(small, bytes(1, 0)), (big, bytes(1_000_000, 0))]), &comm_of);
        assert_eq!(named(&series, "p1").map(|t| t.tx_bytes), Some(6));
        assert_eq!(other(&series, Role::Client).map(|t| t.tx_bytes), Some(1_000_000));
        // The big flow keeps feeding other with its growth only.
        series.update(3.0, &HashMap::from([(big, bytes(100, 0))]), &comm_of);
        assert_eq!(other(&series, Role::Client).map(|t| t.tx_bytes), Some(1_000_100));

        // A renamed process: its later growth moves to the new name; the old
        // series keeps its value.
        let renamed = |pid: u32| if pid == 1 { "renamed".to_owned() } else { comm_of(pid) };
        let mut series = FlowSeries::new(config(10));
        series.update(1.0, &HashMap::from([(small, bytes(5, 0))]), &comm_of);
        series.update(2.0, &HashMap::from([(small, bytes(3, 0))]), &renamed);
        assert_eq!(named(&series, "p1").map(|t| t.tx_bytes), Some(5));
        assert_eq!(named(&series, "renamed").map(|t| t.tx_bytes), Some(3));
    }

    #[test]
    fn quiet_series_expire_and_free_their_slot() {
        let mut series = FlowSeries::new(MetricsConfig { top_n: 3, pid_label: false, expiry_secs: 10.0 });
        let first = key(1, Role::Client, "10.0.0.1", 443);
        let second = key(2, Role::Client, "10.0.0.2", 443);
        series.update(1.0, &HashMap::from([(first, bytes(5, 0))]), &comm_of);
        series.update(5.0, &HashMap::from([(second, bytes(1, 0))]), &comm_of);
        assert!(named(&series, "p2").is_none());
        // At 11 s the first has been quiet for 10 s: it goes, the second
        // (growing again) takes its slot with this tick's growth only.
        series.update(11.0, &HashMap::from([(second, bytes(2, 0))]), &comm_of);
        assert!(named(&series, "p1").is_none());
        assert_eq!(named(&series, "p2").map(|t| t.tx_bytes), Some(2));
        // The overflow series stays, never going backwards.
        assert_eq!(other(&series, Role::Client).map(|t| t.tx_bytes), Some(1));
    }

    #[test]
    fn pid_label_only_when_asked() {
        let cumulative = HashMap::from([(key(7, Role::Server, "::1", 8080), bytes(1, 1))]);
        let mut series = FlowSeries::new(MetricsConfig { top_n: 5, pid_label: true, expiry_secs: 60.0 });
        series.update(1.0, &cumulative, &comm_of);
        assert_eq!(series.series()[0].0.pid.as_deref(), Some("7"));
        let mut series = FlowSeries::new(config(5));
        series.update(1.0, &cumulative, &comm_of);
        assert_eq!(series.series()[0].0.pid, None);
    }

    fn snapshot(processes: Vec<Process>, close_wait: Vec<CloseWait>, findings: Vec<Finding>) -> Snapshot {
        Snapshot {
            started_at: std::time::UNIX_EPOCH,
            duration_secs: 1.0,
            backend: "tracepoint",
            flows: Vec::new(),
            processes,
            close_wait,
            timeline: Vec::new(),
            findings,
            host_sockets: StateCounts::new(),
            stats: KernelStats { events_total: 42, events_dropped: 1, map_full_drops: 2, ..KernelStats::default() },
            live_sockets: 3,
        }
    }

    fn process(pid: u32, comm: &str, sockets: &[(&'static str, u64)]) -> Process {
        Process {
            pid,
            comm: comm.into(),
            counters: Counters::default(),
            sockets: sockets.iter().copied().collect(),
            recv_queue: None,
            send_queue: None,
        }
    }

    fn close_wait(pid: u32, comm: &str, age_secs: f64) -> CloseWait {
        CloseWait {
            pid,
            comm: comm.into(),
            local: "127.0.0.1:80".parse().expect("address"),
            remote: "127.0.0.1:5000".parse().expect("address"),
            age_secs,
            age_is_lower_bound: false,
        }
    }

    #[test]
    fn exposition_is_exactly_this() {
        let mut metrics = Metrics::new(config(3), "tracepoint").expect("metrics");
        let cumulative = HashMap::from([
            (
                key(1, Role::Client, "10.0.0.1", 443),
                Counters { tx_bytes: 100, rx_bytes: 2000, opened: 1, ..Counters::default() },
            ),
            (key(2, Role::Server, "192.168.1.9", 80), Counters { tx_bytes: 5, resets_sent: 1, ..Counters::default() }),
        ]);
        let snapshot = snapshot(
            vec![
                process(1, "curl", &[("ESTABLISHED", 1)]),
                process(2, "nginx", &[("CLOSE_WAIT", 2), ("LISTEN", 1)]),
                process(3, "nginx", &[("ESTABLISHED", 4)]),
            ],
            vec![close_wait(2, "nginx", 31.5), close_wait(1, "curl", 2.0)],
            vec![Finding {
                kind: "close_wait_leak",
                severity: Severity::Warning,
                pid: 2,
                comm: "nginx".into(),
                remote_addr: None,
                port: None,
                summary: "s".into(),
                evidence: serde_json::Value::Null,
            }],
        );
        metrics.update(&Tick {
            now_secs: 1.0,
            flow_growth: &cumulative,
            comm: &comm_of,
            snapshot: &snapshot,
            collect_duration_secs: 0.25,
        });
        let text = metrics.render().expect("renders");
        let version = env!("CARGO_PKG_VERSION");
        let expected = format!(
            r#"# HELP tracer_backend_info The attach backend in use (always 1).
# TYPE tracer_backend_info gauge
tracer_backend_info{{backend="tracepoint"}} 1
# HELP tracer_build_info The tracer's version (always 1).
# TYPE tracer_build_info gauge
tracer_build_info{{version="{version}"}} 1
# HELP tracer_collect_duration_seconds Time the last collection (read, sample, report) took.
# TYPE tracer_collect_duration_seconds gauge
tracer_collect_duration_seconds 0.25
# HELP tracer_events_dropped_total Events the eBPF programs lost (ring buffer or socket table full).
# TYPE tracer_events_dropped_total counter
tracer_events_dropped_total 3
# HELP tracer_events_total Events the eBPF programs handled.
# TYPE tracer_events_total counter
tracer_events_total 42
# HELP tracer_findings Active findings of the analysis (1 while active).
# TYPE tracer_findings gauge
tracer_findings{{comm="nginx",kind="close_wait_leak",severity="warning"}} 1
# HELP tracer_tcp_close_wait_oldest_seconds Age of the oldest CLOSE_WAIT socket of processes of this name (a lower bound for sockets found at start).
# TYPE tracer_tcp_close_wait_oldest_seconds gauge
tracer_tcp_close_wait_oldest_seconds{{comm="curl"}} 2
tracer_tcp_close_wait_oldest_seconds{{comm="nginx"}} 31.5
# HELP tracer_tcp_connections_opened_total TCP connections of the flow that were opened (connected or accepted).
# TYPE tracer_tcp_connections_opened_total counter
tracer_tcp_connections_opened_total{{comm="other",port="other",remote="other",role="server"}} 0
tracer_tcp_connections_opened_total{{comm="p1",port="443",remote="10.0.0.1",role="client"}} 1
# HELP tracer_tcp_failed_connects_total Connection attempts of the flow that failed.
# TYPE tracer_tcp_failed_connects_total counter
tracer_tcp_failed_connects_total{{comm="other",port="other",remote="other",role="server"}} 0
tracer_tcp_failed_connects_total{{comm="p1",port="443",remote="10.0.0.1",role="client"}} 0
# HELP tracer_tcp_received_bytes_total Bytes received by receive syscalls on TCP sockets of the flow (MSG_PEEK excluded).
# TYPE tracer_tcp_received_bytes_total counter
tracer_tcp_received_bytes_total{{comm="other",port="other",remote="other",role="server"}} 0
tracer_tcp_received_bytes_total{{comm="p1",port="443",remote="10.0.0.1",role="client"}} 2000
# HELP tracer_tcp_resets_total TCP resets sent or received on sockets of the flow.
# TYPE tracer_tcp_resets_total counter
tracer_tcp_resets_total{{comm="other",port="other",remote="other",role="server"}} 1
tracer_tcp_resets_total{{comm="p1",port="443",remote="10.0.0.1",role="client"}} 0
# HELP tracer_tcp_retransmits_total TCP segments retransmitted on sockets of the flow.
# TYPE tracer_tcp_retransmits_total counter
tracer_tcp_retransmits_total{{comm="other",port="other",remote="other",role="server"}} 0
tracer_tcp_retransmits_total{{comm="p1",port="443",remote="10.0.0.1",role="client"}} 0
# HELP tracer_tcp_sent_bytes_total Bytes sent by send syscalls on TCP sockets of the flow (what each call moved).
# TYPE tracer_tcp_sent_bytes_total counter
tracer_tcp_sent_bytes_total{{comm="other",port="other",remote="other",role="server"}} 5
tracer_tcp_sent_bytes_total{{comm="p1",port="443",remote="10.0.0.1",role="client"}} 100
# HELP tracer_tcp_sockets TCP sockets owned by processes of this name, by state.
# TYPE tracer_tcp_sockets gauge
tracer_tcp_sockets{{comm="curl",state="ESTABLISHED"}} 1
tracer_tcp_sockets{{comm="nginx",state="CLOSE_WAIT"}} 2
tracer_tcp_sockets{{comm="nginx",state="ESTABLISHED"}} 4
tracer_tcp_sockets{{comm="nginx",state="LISTEN"}} 1
# HELP tracer_tracked_sockets Sockets the tracer tracks now.
# TYPE tracer_tracked_sockets gauge
tracer_tracked_sockets 3
"#
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn untrusted_comm_is_escaped_in_label_values() {
        let comm = "a\"b\\c\nd<e>";
        let mut metrics = Metrics::new(config(5), "fentry").expect("metrics");
        let cumulative = HashMap::from([(key(9, Role::Client, "127.0.0.1", 8080), bytes(11, 0))]);
        let snapshot = snapshot(vec![process(9, comm, &[("ESTABLISHED", 1)])], Vec::new(), Vec::new());
        let name = |_pid: u32| comm.to_owned();
        metrics.update(&Tick {
            now_secs: 1.0,
            flow_growth: &cumulative,
            comm: &name,
            snapshot: &snapshot,
            collect_duration_secs: 0.0,
        });
        let text = metrics.render().expect("renders");
        assert!(
            text.contains(
                r#"tracer_tcp_sent_bytes_total{comm="a\"b\\c\nd<e>",port="8080",remote="127.0.0.1",role="client"} 11"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"tracer_tcp_sockets{comm="a\"b\\c\nd<e>",state="ESTABLISHED"} 1"#), "{text}");
        // Every sample stays on one line.
        assert!(text.lines().all(|line| line.starts_with('#') || line.starts_with("tracer_")), "{text}");
    }

    #[test]
    fn descriptions_match_the_families() {
        let metrics =
            Metrics::new(MetricsConfig { top_n: 3, pid_label: true, expiry_secs: 1.0 }, "kprobe").expect("metrics");
        let mut described: Vec<&str> = metrics.desc().iter().map(|d| d.fq_name.as_str()).collect();
        described.sort_unstable();
        let collected: Vec<String> = metrics.collect().iter().map(|f| f.name().to_owned()).collect();
        assert_eq!(described, collected);
        let sent = metrics.desc().into_iter().find(|d| d.fq_name == "tracer_tcp_sent_bytes_total").expect("sent");
        assert_eq!(sent.variable_labels, ["comm", "pid", "port", "remote", "role"]);
    }
}
