//! The agent's Prometheus metrics (`/metrics`): the names DESIGN.md lists,
//! with bounded cardinality. [`Metrics`] is plain data, updated once per tick
//! from the per-tick growth of the model's flow counters and that tick's
//! snapshot, and exposed as a custom [`Collector`] rendered by the
//! `prometheus` crate's text encoder (which also escapes the untrusted label
//! values).
//!
//! One file per family group, each a [`Group`]: [`flows`] (the flow
//! counters), [`processes`] (sockets by state, oldest CLOSE_WAIT),
//! [`findings`], [`own`] (the tracer's own); [`family`] builds families of
//! counters, gauges and histograms. A new metric is a definition and its
//! samples in its group; a new flow counter is one row of `flows`' table.
//!
//! # Cardinality
//! Flow counters (`tracer_tcp_*_total{comm,container,port,remote,role}`):
//! - A series is one label set: `comm` (the process name at the tick),
//!   `container` (its process's container: `namespace/pod/container`, else
//!   the name, else the 12-character id; `""` for host processes), `role`,
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
//! Per-process gauges are keyed by `comm` and `container` (the pid label is
//! for flow counters): `tracer_tcp_sockets{comm,container,state}` keeps the `top_n - 1` names
//! with the most sockets and sums the rest into `comm="other"`;
//! `tracer_tcp_close_wait_oldest_seconds{comm}` keeps the `top_n - 1` oldest
//! and takes the maximum of the rest. Gauges are current values, so they are not
//! sticky; a zero count is absent. `tracer_findings{kind,severity,comm}` is 1
//! for each active finding; names past the first `top_n - 1` (most severe first)
//! are folded into `comm="other"`.

mod family;
mod findings;
mod flows;
mod own;
mod processes;

use std::collections::HashMap;

use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    TextEncoder,
};

use self::{family::Definition, findings::FindingGroup, flows::FlowGroup, own::OwnGroup, processes::ProcessGroup};
use super::Snapshot;
use crate::model::{Counters, FlowKey};

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

/// What one tick hands to [`Metrics::update`].
pub(crate) struct Tick<'a> {
    /// Seconds since the agent started.
    pub(crate) now_secs: f64,
    /// What each flow moved in this tick (the model's last sample).
    pub(crate) flow_growth: &'a HashMap<FlowKey, Counters>,
    /// The process name of a pid, as of this tick.
    pub(crate) comm: &'a dyn Fn(u32) -> String,
    /// The `container` label of a pid (`""` for host processes).
    pub(crate) container: &'a dyn Fn(u32) -> String,
    pub(crate) snapshot: &'a Snapshot,
    /// How long collecting this tick took.
    pub(crate) collect_duration_secs: f64,
}

/// One group of metric families: what it defines, how a tick changes it,
/// and its families now.
trait Group {
    fn definitions(&self) -> Vec<Definition>;
    fn update(&mut self, tick: &Tick<'_>);
    fn families(&self) -> Vec<MetricFamily>;
}

/// All the agent's metrics: plain data, rendered on demand.
pub(crate) struct Metrics {
    flows: FlowGroup,
    processes: ProcessGroup,
    findings: FindingGroup,
    own: OwnGroup,
    descs: Vec<Desc>,
}

impl Metrics {
    pub(crate) fn new(config: MetricsConfig, backend: &str) -> prometheus::Result<Self> {
        let top_n = config.top_n;
        let mut metrics = Metrics {
            flows: FlowGroup::new(config),
            processes: ProcessGroup::new(top_n),
            findings: FindingGroup::new(top_n),
            own: OwnGroup::new(backend),
            descs: Vec::new(),
        };
        metrics.descs = metrics
            .groups()
            .iter()
            .flat_map(|group| group.definitions())
            .map(|d| family::desc(&d))
            .collect::<Result<_, _>>()?;
        Ok(metrics)
    }

    fn groups(&self) -> [&dyn Group; 4] {
        [&self.flows, &self.processes, &self.findings, &self.own]
    }

    pub(crate) fn update(&mut self, tick: &Tick<'_>) {
        let groups: [&mut dyn Group; 4] = [&mut self.flows, &mut self.processes, &mut self.findings, &mut self.own];
        for group in groups {
            group.update(tick);
        }
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
        let mut families: Vec<MetricFamily> = self.groups().iter().flat_map(|group| group.families()).collect();
        families.sort_by(|a, b| a.name().cmp(b.name()));
        families
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::{
        analysis::{Finding, Severity},
        model::{CloseWait, KernelStats, Process, Role, StateCounts},
        output::golden,
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
            hz: None,
            health_support: Default::default(),
            last_interval_health: Default::default(),
            last_sample_secs: 1.0,
        }
    }

    fn process(pid: u32, comm: &str, sockets: &[(&'static str, u64)]) -> Process {
        Process {
            pid,
            comm: comm.into(),
            identity: None,
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
            container: &|pid| if pid == 1 { "shop/web-7d9f/web".to_owned() } else { String::new() },
            snapshot: &snapshot,
            collect_duration_secs: 0.25,
        });
        let text = metrics.render().expect("renders");
        golden::check("metrics.prom", &text);
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
            container: &|_| String::new(),
            snapshot: &snapshot,
            collect_duration_secs: 0.0,
        });
        let text = metrics.render().expect("renders");
        assert!(
            text.contains(
                r#"tracer_tcp_sent_bytes_total{comm="a\"b\\c\nd<e>",container="",port="8080",remote="127.0.0.1",role="client"} 11"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"tracer_tcp_sockets{comm="a\"b\\c\nd<e>",container="",state="ESTABLISHED"} 1"#),
            "{text}"
        );
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
        assert_eq!(sent.variable_labels, ["comm", "container", "pid", "port", "remote", "role"]);
    }
}
