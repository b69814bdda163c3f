//! What `tracer top` has learned since it started, fed one tick at a time:
//! per process and per flow the totals since start (the sum of every
//! interval's counter growth the model attributed: no second accounting),
//! the last interval's growth (the rates), a short history per row, and
//! whether the row is still live. Rows of exited processes and closed flows
//! stay, marked not live, for [`AGE_OUT_SECS`]. Plain data, no terminal.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::{
    analysis::Finding,
    model::{CloseWait, Counters, FlowKey, StateCounts},
    output::Snapshot,
};

/// Rows not live for this long are dropped.
pub(crate) const AGE_OUT_SECS: f64 = 60.0;
/// Intervals of history kept per row (the sparklines).
pub(crate) const HISTORY: usize = 120;

/// What one tick hands the UI: the snapshot every output reads, plus the
/// model's last interval per flow (its counter growth, and which flows had
/// a live socket sampled).
#[derive(Debug, Clone)]
pub(crate) struct TickInput {
    pub(crate) snapshot: Snapshot,
    /// Counter growth per flow in the interval that just ended.
    pub(crate) flow_growth: HashMap<FlowKey, Counters>,
    /// Flows with a live socket at the interval's end (where the kernel
    /// lets the tracer sample its sockets).
    pub(crate) flows_open: HashSet<FlowKey>,
}

/// Growth of a row over its life and per interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Activity {
    /// Since `tracer top` started.
    pub(crate) totals: Counters,
    /// In the last interval.
    pub(crate) last: Counters,
    /// Bytes (received, sent) per interval, oldest first; one entry per
    /// tick since the row appeared, so histories of rows line up at the end.
    pub(crate) history: VecDeque<(u64, u64)>,
    pub(crate) live: bool,
    /// When (seconds since start) it was last live.
    pub(crate) last_live_secs: f64,
}

impl Activity {
    fn push(&mut self, growth: &Counters) {
        self.totals.add(growth);
        self.last = *growth;
        self.history.push_back((growth.rx_bytes, growth.tx_bytes));
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }

    fn set_live(&mut self, live: bool, now_secs: f64) {
        self.live = live;
        if live {
            self.last_live_secs = now_secs;
        }
    }

    fn aged_out(&self, now_secs: f64) -> bool {
        !self.live && now_secs - self.last_live_secs > AGE_OUT_SECS
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProcessEntry {
    pub(crate) comm: String,
    /// The container's label, if it runs in one.
    pub(crate) container: Option<String>,
    /// Its sockets by state now (empty once it has none).
    pub(crate) sockets: StateCounts,
    pub(crate) activity: Activity,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FlowEntry {
    pub(crate) comm: String,
    pub(crate) container: Option<String>,
    /// The latest RTT observed (the TCP health view).
    pub(crate) rtt_last_us: Option<f64>,
    /// Received, not yet read, at the last sample.
    pub(crate) recv_queue: Option<u64>,
    pub(crate) activity: Activity,
}

/// Everything the views show.
#[derive(Debug, Clone, Default)]
pub(crate) struct Data {
    pub(crate) ticks: u64,
    /// End of the last interval, seconds since start.
    pub(crate) now_secs: f64,
    /// The last interval's length: rates are bytes over this.
    pub(crate) interval_secs: f64,
    pub(crate) processes: BTreeMap<u32, ProcessEntry>,
    pub(crate) flows: BTreeMap<FlowKey, FlowEntry>,
    /// Oldest first.
    pub(crate) close_wait: Vec<CloseWait>,
    /// Most severe first.
    pub(crate) findings: Vec<Finding>,
    pub(crate) host_sockets: StateCounts,
    pub(crate) live_sockets: u64,
    pub(crate) events_dropped: u64,
}

impl FlowEntry {
    fn new(comm: String) -> Self {
        FlowEntry { comm, container: None, rtt_last_us: None, recv_queue: None, activity: Activity::default() }
    }
}

fn container_label(identity: Option<&std::sync::Arc<crate::model::container::Identity>>) -> Option<String> {
    identity.and_then(|i| i.container.as_ref()).map(|c| c.label())
}

impl Data {
    /// Folds one tick in.
    pub(crate) fn apply(&mut self, tick: &TickInput) {
        let snapshot = &tick.snapshot;
        let Some(point) = snapshot.timeline.last() else { return };
        self.ticks += 1;
        self.now_secs = point.t_secs;
        self.interval_secs = point.interval_secs;
        let now = self.now_secs;

        // Flows: every known flow gets this interval's growth (zero if idle).
        for flow in &snapshot.flows {
            let entry = self.flows.entry(flow.key).or_insert_with(|| FlowEntry::new(flow.comm.clone()));
            entry.comm.clone_from(&flow.comm);
            entry.container = container_label(flow.identity.as_ref());
            entry.rtt_last_us = flow.health.rtt_last_us;
            entry.recv_queue = flow.health.recv_queue.map(|q| q.last);
        }
        // Growth the window no longer lists (cannot happen: the window
        // holds the last interval) still counts.
        for key in tick.flow_growth.keys() {
            self.flows.entry(*key).or_insert_with(|| FlowEntry::new(String::new()));
        }
        let mut per_pid: HashMap<u32, Counters> = HashMap::new();
        for (key, entry) in &mut self.flows {
            let growth = tick.flow_growth.get(key).copied().unwrap_or_default();
            entry.activity.push(&growth);
            per_pid.entry(key.pid).or_default().add(&growth);
            entry.activity.set_live(!growth.is_zero() || tick.flows_open.contains(key), now);
        }

        // Processes: names and sockets from the snapshot, growth summed
        // over their flows' growth (as the model sums them).
        let mut listed: HashSet<u32> = HashSet::new();
        for process in &snapshot.processes {
            listed.insert(process.pid);
            let entry = self.processes.entry(process.pid).or_insert_with(|| ProcessEntry {
                comm: process.comm.clone(),
                container: None,
                sockets: StateCounts::new(),
                activity: Activity::default(),
            });
            entry.comm.clone_from(&process.comm);
            entry.container = container_label(process.identity.as_ref());
            entry.sockets.clone_from(&process.sockets);
        }
        for (pid, entry) in &mut self.processes {
            if !listed.contains(pid) {
                entry.sockets.clear();
            }
            let growth = per_pid.get(pid).copied().unwrap_or_default();
            entry.activity.push(&growth);
            entry.activity.set_live(!growth.is_zero() || !entry.sockets.is_empty(), now);
        }

        self.flows.retain(|_, f| !f.activity.aged_out(now));
        self.processes.retain(|_, p| !p.activity.aged_out(now));
        self.close_wait.clone_from(&snapshot.close_wait);
        self.findings.clone_from(&snapshot.findings);
        self.host_sockets.clone_from(&snapshot.host_sockets);
        self.live_sockets = snapshot.live_sockets;
        self.events_dropped = snapshot.stats.events_dropped;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{net::IpAddr, time::SystemTime};

    use super::*;
    use crate::model::{Flow, HealthSupport, KernelStats, Process, Role, TimelinePoint};

    pub(crate) fn key(pid: u32, remote: &str, port: u16) -> FlowKey {
        FlowKey { pid, role: Role::Client, remote: remote.parse::<IpAddr>().expect("ip"), port }
    }

    pub(crate) fn empty_snapshot(t_secs: f64) -> Snapshot {
        Snapshot {
            started_at: SystemTime::UNIX_EPOCH,
            duration_secs: t_secs,
            backend: "fentry",
            flows: Vec::new(),
            processes: Vec::new(),
            close_wait: Vec::new(),
            timeline: vec![TimelinePoint { t_secs, interval_secs: 1.0, processes: Vec::new() }],
            findings: Vec::new(),
            host_sockets: StateCounts::new(),
            stats: KernelStats::default(),
            live_sockets: 0,
            hz: None,
            health_support: HealthSupport::default(),
            last_interval_health: HashMap::new(),
            last_sample_secs: t_secs,
        }
    }

    /// A tick at `t_secs` where each (flow, comm, rx, tx) moved those
    /// bytes; `open` flows keep a live socket; processes with `sockets`.
    pub(crate) fn tick(t_secs: f64, moved: &[(FlowKey, &str, u64, u64)], open: bool) -> TickInput {
        let mut snapshot = empty_snapshot(t_secs);
        let mut flow_growth = HashMap::new();
        for (key, comm, rx, tx) in moved {
            let growth = Counters { rx_bytes: *rx, tx_bytes: *tx, ..Counters::default() };
            flow_growth.insert(*key, growth);
            snapshot.flows.push(Flow {
                key: *key,
                comm: (*comm).to_owned(),
                identity: None,
                counters: growth,
                health: crate::model::HealthView { rtt_last_us: Some(1500.0), ..Default::default() },
            });
            let mut sockets = StateCounts::new();
            if open {
                sockets.insert("ESTABLISHED", 1);
            }
            snapshot.processes.push(Process {
                pid: key.pid,
                comm: (*comm).to_owned(),
                identity: None,
                counters: growth,
                sockets,
                recv_queue: None,
                send_queue: None,
            });
        }
        let flows_open = if open { flow_growth.keys().copied().collect() } else { HashSet::new() };
        TickInput { snapshot, flow_growth, flows_open }
    }

    #[test]
    fn totals_sum_every_interval_and_rates_are_the_last() {
        let mut data = Data::default();
        let a = key(10, "10.0.0.1", 443);
        data.apply(&tick(1.0, &[(a, "curl", 100, 10)], true));
        data.apply(&tick(2.0, &[(a, "curl", 300, 30)], true));
        let flow = &data.flows[&a];
        assert_eq!((flow.activity.totals.rx_bytes, flow.activity.totals.tx_bytes), (400, 40));
        assert_eq!(flow.activity.last.rx_bytes, 300);
        assert_eq!(flow.activity.history, [(100, 10), (300, 30)]);
        let process = &data.processes[&10];
        assert_eq!((process.comm.as_str(), process.activity.totals.rx_bytes), ("curl", 400));
        assert!(process.activity.live && flow.activity.live);
    }

    #[test]
    fn closed_rows_stay_not_live_until_they_age_out() {
        let mut data = Data::default();
        let a = key(10, "10.0.0.1", 443);
        data.apply(&tick(1.0, &[(a, "curl", 100, 10)], false));
        // Idle from here on, no socket left.
        data.apply(&tick(2.0, &[], false));
        assert!(!data.flows[&a].activity.live && !data.processes[&10].activity.live);
        assert_eq!(data.flows[&a].activity.totals.rx_bytes, 100, "totals survive the close");
        assert_eq!(data.flows[&a].activity.history, [(100, 10), (0, 0)]);
        data.apply(&tick(1.0 + AGE_OUT_SECS, &[], false));
        assert!(data.flows.contains_key(&a));
        data.apply(&tick(2.0 + AGE_OUT_SECS, &[], false));
        assert!(data.flows.is_empty() && data.processes.is_empty());
    }

    #[test]
    fn history_is_bounded() {
        let mut data = Data::default();
        let a = key(10, "10.0.0.1", 443);
        for i in 0..HISTORY + 10 {
            data.apply(&tick(i as f64 + 1.0, &[(a, "curl", i as u64, 0)], true));
        }
        let history = &data.flows[&a].activity.history;
        assert_eq!(history.len(), HISTORY);
        assert_eq!(history.back(), Some(&((HISTORY + 9) as u64, 0)));
    }
}
