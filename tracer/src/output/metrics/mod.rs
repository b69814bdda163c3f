//! The agent's Prometheus metrics (`/metrics`): the names DESIGN.md lists,
//! with bounded cardinality. [`Metrics`] is plain data, updated once per tick
//! from the per-tick growth of the model's flow counters and that tick's
//! snapshot, and exposed as a custom [`Collector`] rendered by the
//! `prometheus` crate's text encoder (which also escapes the untrusted label
//! values).
//!
//! One file per family group, each a [`Group`]: [`flows`] (the flow
//! counters and latency histograms), [`processes`] (sockets by state, oldest
//! CLOSE_WAIT, backlogs), [`findings`], [`own`] (the tracer's own);
//! [`family`] builds families of counters, gauges and histograms. A new
//! metric is a definition and its samples in its group; a new flow counter
//! is one row of `flows`' table.
//!
//! # Cardinality
//! Flow metrics (`tracer_tcp_*{comm,container,port,remote,role}`: the byte, segment,
//! retransmit, connection, reset and failed-connect counters,
//! `tracer_tcp_rwnd_limited_seconds_total`, and the histograms
//! `tracer_tcp_rtt_seconds` and `tracer_tcp_connect_duration_seconds`):
//! - A flow series is one label set: `comm` (the process name at the tick),
//!   `container` (its process's container: `namespace/pod/container`, else
//!   the name, else the 12-character id; `""` for host processes), `role`,
//!   `remote` (IP) and `port` (the flow's service port, so ephemeral ports
//!   never become labels), plus `pid` with `--metrics-pid-label`. Flows of several processes with the same name
//!   share a series.
//! - All flow metrics share one membership: a label set is a series in all
//!   of them or in none, so they can be divided by each other. `reason`
//!   (failed connects) and `le` (histograms) multiply a flow's series, never
//!   the number of flows.
//! - At most `--metrics-top-n` named flows. A label set is considered when
//!   it first moves something (a counter grows, or an RTT or connect
//!   latency is observed); those first seen in the same tick are admitted
//!   biggest first (bytes sent + received in that tick) while there is room.
//! - Membership is sticky: a named series keeps its own counts and
//!   observations for as long as it lives; a bigger newcomer never
//!   displaces it. Label sets that never got a series are summed into one
//!   overflow series per role, `{comm="other", container="other",
//!   remote="other", port="other", role=...}` (and `pid="other"`), histograms included (a
//!   folded flow's RTT and connect observations go to `other`'s buckets):
//!   the role is kept because it has two values, the port is not because
//!   ports are unbounded. Two of the `top_n` slots are kept for these, so a
//!   flow metric has at most `top_n` flows.
//! - A named series that has not moved for `--metrics-expiry` is dropped,
//!   all its metrics at once, and frees its slot; if its label set moves
//!   again it is a newcomer, counting from then on (a new series to
//!   Prometheus). The overflow series never expire.
//! - Every series value is a sum of per-tick growth of the model's
//!   cumulative per-flow counters and of each tick's observations (the
//!   snapshot's `last_interval_health`), taken in once per model sample, so
//!   no counter goes backwards: not when sockets close (the model folds
//!   their final counts in), not when a process renames itself (its later
//!   traffic goes to the new name's series), not when flows change series.
//! - `tracer_tcp_failed_connects_total` has a `reason` label (`refused`,
//!   `timeout`, `unreachable`, `other`) whose values sum to the failed
//!   connects. Without the kernel's reasons (no `sk_err` offset;
//!   `tracer doctor` says so) every failure is `other` and the three named
//!   reasons have no series: unknown is not zero.
//! - `tracer_tcp_rwnd_limited_seconds_total` appears once the kernel's HZ is
//!   measured (the chrono counters count jiffies), and not on kernels
//!   without the chrono counters; `tracer_tcp_rtt_seconds` not on kernels
//!   without an RTT.
//!
//! Per-process gauges are keyed by `comm` and `container` (the pid label is
//! for flow metrics): `tracer_tcp_sockets{comm,container,state}` keeps the
//! `top_n - 1` names with the most sockets and sums the rest into
//! `comm="other"`; `tracer_tcp_close_wait_oldest_seconds{comm,container}`
//! keeps the `top_n - 1` oldest and takes the maximum of the rest;
//! `tracer_tcp_receive_queue_bytes{comm,container}` and
//! `tracer_tcp_send_queue_bytes{comm,container}` (the last interval's
//! backlogs) keep the `top_n - 1` largest and sum the rest. Gauges are current
//! values, so they are not sticky. `tracer_findings{kind,severity,comm,remote}`
//! is 1 for each active finding (`remote=""` when it names none); pairs of
//! name and remote past the first `top_n - 1` (most severe first) are folded
//! into `comm="other"`, `remote="other"`.

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
        model::{CloseWait, Dist, FlowHealth, HealthSupport, KernelStats, Process, Role, StateCounts},
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

    fn no_container(_pid: u32) -> String {
        String::new()
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
            stats: KernelStats { events_total: 42, events_dropped: 1, events_deferred: 4, map_full_drops: 2 },
            live_sockets: 3,
            hz: None,
            health_support: HealthSupport::default(),
            last_interval_health: Default::default(),
            last_sample_secs: 1.0,
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
            identity: None,
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

    const ALL_HEALTH: HealthSupport = HealthSupport {
        sampling: true,
        rtt: true,
        min_rtt: true,
        queues: true,
        chrono: true,
        delivery_rate: true,
        failure_reasons: true,
    };

    fn dist(values: &[u64]) -> Dist {
        let mut dist = Dist::default();
        for &value in values {
            dist.observe(value);
        }
        dist
    }

    /// One tick of a small host: a client (RTT, a measured connect, a
    /// backlog, refused and timed-out connects, rwnd-limited time) and a
    /// server past the top-n (folded into `other`, histograms included).
    fn golden_tick() -> (HashMap<FlowKey, Counters>, Snapshot) {
        let client = key(1, Role::Client, "10.0.0.1", 443);
        let server = key(2, Role::Server, "192.168.1.9", 80);
        let growth = HashMap::from([
            (
                client,
                Counters {
                    tx_bytes: 100,
                    rx_bytes: 2000,
                    segments_out: 12,
                    retransmits: 1,
                    opened: 1,
                    failed_connects: 3,
                    failed_refused: 2,
                    failed_timeout: 1,
                    connects_timed: 1,
                    busy_jiffies: 250,
                    rwnd_jiffies: 125,
                    ..Counters::default()
                },
            ),
            (server, Counters { tx_bytes: 5, resets_sent: 1, segments_out: 1, ..Counters::default() }),
        ]);
        let mut snapshot = snapshot(
            vec![
                process(1, "curl", &[("ESTABLISHED", 1)]),
                process(2, "nginx", &[("CLOSE_WAIT", 2), ("LISTEN", 1)]),
                process(3, "nginx", &[("ESTABLISHED", 4)]),
            ],
            vec![close_wait(2, "nginx", 31.5), close_wait(1, "curl", 2.0)],
            vec![
                finding("close_wait_leak", Severity::Warning, 2, "nginx", None),
                finding("latency_rise", Severity::Warning, 1, "curl", Some("10.0.0.1")),
            ],
        );
        snapshot.hz = Some(250);
        snapshot.health_support = ALL_HEALTH;
        snapshot.last_interval_health = HashMap::from([
            (
                client,
                FlowHealth {
                    rtt: dist(&[150, 20_000]),
                    connect: dist(&[21_000]),
                    recv_queue: 4096,
                    send_queue: 10,
                    sockets: 2,
                    ..FlowHealth::default()
                },
            ),
            (server, FlowHealth { rtt: dist(&[90]), recv_queue: 0, sockets: 1, ..FlowHealth::default() }),
        ]);
        (growth, snapshot)
    }

    fn finding(kind: &'static str, severity: Severity, pid: u32, comm: &str, remote: Option<&str>) -> Finding {
        Finding {
            kind,
            severity,
            pid,
            comm: comm.into(),
            remote_addr: remote.map(str::to_owned),
            port: None,
            summary: "s".into(),
            evidence: serde_json::Value::Null,
        }
    }

    #[test]
    fn exposition_is_exactly_this() {
        let mut metrics = Metrics::new(config(3), "tracepoint").expect("metrics");
        let (growth, snapshot) = golden_tick();
        metrics.update(&Tick {
            now_secs: 1.0,
            flow_growth: &growth,
            comm: &comm_of,
            container: &|pid| if pid == 1 { "shop/web-7d9f/web".to_owned() } else { String::new() },
            snapshot: &snapshot,
            collect_duration_secs: 0.25,
        });
        let text = metrics.render().expect("renders");
        golden::check("metrics.prom", &text);
    }

    /// The samples of `name` (a histogram's `_bucket`, `_sum`, `_count`)
    /// for the series whose labels contain `labels`, as (le, value).
    fn histogram_lines<'a>(text: &'a str, name: &str, labels: &str) -> Vec<(Option<&'a str>, f64)> {
        text.lines()
            .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(labels))
            .map(|line| {
                let le = line.split(",le=\"").nth(1).and_then(|rest| rest.split('"').next());
                let value = line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("value");
                (le, value)
            })
            .collect()
    }

    #[test]
    fn histogram_buckets_add_up_to_the_count_and_the_sum_matches() {
        let mut metrics = Metrics::new(config(3), "tracepoint").expect("metrics");
        let (growth, snapshot) = golden_tick();
        let tick = |snapshot: &Snapshot, metrics: &mut Metrics| {
            metrics.update(&Tick {
                now_secs: snapshot.last_sample_secs,
                flow_growth: &growth,
                comm: &comm_of,
                container: &no_container,
                snapshot,
                collect_duration_secs: 0.0,
            })
        };
        tick(&snapshot, &mut metrics);
        // The same sample handed in again adds nothing.
        tick(&snapshot, &mut metrics);
        let second = Snapshot { last_sample_secs: 2.0, ..snapshot.clone() };
        tick(&second, &mut metrics);
        let text = metrics.render().expect("renders");

        // Two ticks of the client's RTTs (150 us, 20 ms) and connect (21 ms),
        // and the server's 90 us folded into other's.
        let cases = [
            ("tracer_tcp_rtt_seconds", "comm=\"p1\"", vec![150, 20_000, 150, 20_000]),
            ("tracer_tcp_rtt_seconds", "comm=\"other\"", vec![90, 90]),
            ("tracer_tcp_connect_duration_seconds", "comm=\"p1\"", vec![21_000, 21_000]),
        ];
        for (name, labels, observed_us) in cases {
            let buckets = histogram_lines(&text, &format!("{name}_bucket"), labels);
            let count = histogram_lines(&text, &format!("{name}_count"), labels);
            let sum = histogram_lines(&text, &format!("{name}_sum"), labels);
            assert_eq!(buckets.len(), family::LATENCY_BUCKETS.len() + 1, "{name}{{{labels}}}: every le and +Inf");
            assert_eq!(count, [(None, observed_us.len() as f64)], "{name}{{{labels}}}_count");
            // Cumulative, ending at the count.
            assert!(buckets.windows(2).all(|pair| pair[0].1 <= pair[1].1), "{name}: cumulative");
            assert_eq!(buckets.last(), Some(&(Some("+Inf"), observed_us.len() as f64)), "{name}{{{labels}}}");
            // Each bucket counts the observations at or below its bound.
            for (le, value) in &buckets[..buckets.len() - 1] {
                let bound: f64 = le.expect("le").parse().expect("bound");
                let below = observed_us.iter().filter(|&&us| us as f64 / 1e6 <= bound).count();
                assert_eq!(*value, below as f64, "{name}{{{labels}}} le={bound}");
            }
            let expected_sum = observed_us.iter().sum::<u64>() as f64 / 1e6;
            assert_eq!(sum.len(), 1);
            assert!((sum[0].1 - expected_sum).abs() < 1e-12, "{name}{{{labels}}}_sum {} != {expected_sum}", sum[0].1);
        }
        // Counters took the growth once per sample.
        assert!(text.contains(
            "tracer_tcp_sent_bytes_total{comm=\"p1\",container=\"\",port=\"443\",remote=\"10.0.0.1\",role=\"client\"} 200\n"
        ));
        // Failed connects by reason sum to the total; rwnd in seconds at HZ 250.
        let failed: f64 =
            histogram_lines(&text, "tracer_tcp_failed_connects_total", "comm=\"p1\"").iter().map(|l| l.1).sum();
        assert_eq!(failed, 6.0);
        assert!(text.contains("tracer_tcp_rwnd_limited_seconds_total{comm=\"p1\",container=\"\",port=\"443\",remote=\"10.0.0.1\",role=\"client\"} 1\n"), "{text}");
        crate::output::golden::promtool_check(&text);
    }

    #[test]
    fn without_the_kernels_reasons_or_hz_nothing_is_made_up() {
        let mut metrics = Metrics::new(config(5), "tracepoint").expect("metrics");
        let (growth, mut snapshot) = golden_tick();
        snapshot.health_support = HealthSupport { failure_reasons: false, chrono: true, ..ALL_HEALTH };
        snapshot.hz = None;
        metrics.update(&Tick {
            now_secs: 1.0,
            flow_growth: &growth,
            comm: &comm_of,
            container: &no_container,
            snapshot: &snapshot,
            collect_duration_secs: 0.0,
        });
        let text = metrics.render().expect("renders");
        let failed = histogram_lines(&text, "tracer_tcp_failed_connects_total", "comm=\"p1\"");
        assert_eq!(failed, [(None, 3.0)], "{text}");
        assert!(text.contains("reason=\"other\"") && !text.contains("reason=\"refused\""), "{text}");
        assert!(!text.contains("tracer_tcp_rwnd_limited_seconds_total"), "no HZ yet: {text}");
    }

    #[test]
    fn backlogs_are_the_last_intervals_per_name() {
        let mut metrics = Metrics::new(config(2), "tracepoint").expect("metrics");
        let (growth, mut snapshot) = golden_tick();
        // pid 3 with the largest backlog; top_n 2 keeps one name.
        snapshot.last_interval_health.insert(
            key(3, Role::Client, "10.0.0.3", 5432),
            FlowHealth { recv_queue: 9000, sockets: 1, ..FlowHealth::default() },
        );
        metrics.update(&Tick {
            now_secs: 1.0,
            flow_growth: &growth,
            comm: &comm_of,
            container: &no_container,
            snapshot: &snapshot,
            collect_duration_secs: 0.0,
        });
        let text = metrics.render().expect("renders");
        // pids 2 and 3 are both nginx: 0 + 9000 bytes.
        assert!(text.contains("tracer_tcp_receive_queue_bytes{comm=\"nginx\",container=\"\"} 9000\n"), "{text}");
        assert!(text.contains("tracer_tcp_receive_queue_bytes{comm=\"other\",container=\"other\"} 4096\n"), "{text}");
        assert!(text.contains("tracer_tcp_send_queue_bytes{comm=\"curl\",container=\"\"} 10\n"), "{text}");
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
            container: &no_container,
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
