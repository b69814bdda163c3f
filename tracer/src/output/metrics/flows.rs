//! Flow counters (`tracer_tcp_*_total{comm,container,port,remote,role}`): one table
//! of counters over the model's per-flow [`Counters`], and the series they
//! share, with top-n, sticky membership, overflow and expiry (see the
//! module doc of [`super`]).

use std::collections::{BTreeMap, HashMap};

use prometheus::proto::MetricFamily;

use super::{
    family::{counter, family, sample, Definition},
    Group, MetricsConfig, Tick, OTHER,
};
use crate::model::{Counters, FlowKey, Role};

/// Series of each flow metric kept for the overflow (`other`), one per role.
const OVERFLOW_SERIES: usize = 2;

const FLOW_LABELS: &[&str] = &["comm", "container", "port", "remote", "role"];
const FLOW_LABELS_WITH_PID: &[&str] = &["comm", "container", "pid", "port", "remote", "role"];

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

    fn pairs(&self) -> Vec<(&'static str, &str)> {
        let mut pairs = vec![("comm", self.comm.as_str()), ("container", self.container.as_str())];
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
pub(super) struct FlowSeries {
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
    #[cfg(test)]
    pub(crate) fn update(
        &mut self,
        now_secs: f64,
        flow_growth: &HashMap<FlowKey, Counters>,
        comm: &dyn Fn(u32) -> String,
    ) {
        self.update_with_containers(now_secs, flow_growth, comm, &|_| String::new());
    }

    /// [`FlowSeries::update`] with each pid's `container` label.
    pub(crate) fn update_with_containers(
        &mut self,
        now_secs: f64,
        flow_growth: &HashMap<FlowKey, Counters>,
        comm: &dyn Fn(u32) -> String,
        container: &dyn Fn(u32) -> String,
    ) {
        let mut growth: HashMap<FlowLabels, Counters> = HashMap::new();
        for (key, counters) in flow_growth {
            if moves(counters) {
                let labels = FlowLabels::of(key, comm(key.pid), container(key.pid), self.config.pid_label);
                growth.entry(labels).or_default().add(counters);
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

/// The flow counters as a group of families.
pub(super) struct FlowGroup {
    series: FlowSeries,
    labels: &'static [&'static str],
}

impl FlowGroup {
    pub(super) fn new(config: MetricsConfig) -> Self {
        let labels = if config.pid_label { FLOW_LABELS_WITH_PID } else { FLOW_LABELS };
        FlowGroup { series: FlowSeries::new(config), labels }
    }
}

impl Group for FlowGroup {
    fn definitions(&self) -> Vec<Definition> {
        FLOW_COUNTERS.iter().map(|flow_counter| counter(flow_counter.name, flow_counter.help, self.labels)).collect()
    }

    fn update(&mut self, tick: &Tick<'_>) {
        self.series.update_with_containers(tick.now_secs, tick.flow_growth, tick.comm, tick.container);
    }

    fn families(&self) -> Vec<MetricFamily> {
        let series = self.series.series();
        FLOW_COUNTERS
            .iter()
            .map(|flow_counter| {
                let samples =
                    series.iter().map(|(labels, totals)| sample(&labels.pairs(), (flow_counter.value)(totals) as f64));
                family(&counter(flow_counter.name, flow_counter.help, self.labels), samples)
            })
            .collect()
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

    #[test]
    fn short_lived_containers_stay_within_top_n_and_expire() {
        // 200 containers, one flow each (same comm, remote and port): the
        // container label splits them, and the top-n bounds them.
        let mut series = FlowSeries::new(MetricsConfig { top_n: 10, pid_label: false, expiry_secs: 60.0 });
        let container = |pid: u32| format!("c{pid:03}");
        let same_name = |_pid: u32| "worker".to_owned();
        for pid in 1..=200u32 {
            let growth = HashMap::from([(key(pid, Role::Client, "10.0.0.1", 443), bytes(u64::from(pid), 0))]);
            series.update_with_containers(f64::from(pid) / 10.0, &growth, &same_name, &container);
        }
        let all = series.series();
        assert!(all.len() <= 10, "{} series", all.len());
        let named: Vec<&FlowLabels> = all.iter().map(|(l, _)| l).filter(|l| l.comm != OTHER).collect();
        assert_eq!(named.len(), 8, "top_n minus the two overflow series");
        assert!(named.iter().all(|l| l.container.starts_with('c')));
        let overflow = all.iter().find(|(l, _)| l.comm == OTHER).expect("other");
        assert_eq!(overflow.0.container, OTHER);
        // Every byte is in some series.
        let total: u64 = all.iter().map(|(_, c)| c.tx_bytes).sum();
        assert_eq!(total, (1..=200u64).sum::<u64>());
        // The containers are gone: after the expiry none of their series stay.
        series.update_with_containers(100.0, &HashMap::new(), &same_name, &container);
        assert!(series.series().iter().all(|(l, _)| l.comm == OTHER), "{:?}", series.series());
    }
}
