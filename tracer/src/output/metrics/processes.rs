//! Per-process gauges, keyed by `comm` and `container` (the pid label is
//! for flow counters): `tracer_tcp_sockets{comm,container,state}` keeps the
//! `top_n - 1` (comm, container) pairs with the most sockets and sums the
//! rest into `comm="other",container="other"`;
//! `tracer_tcp_close_wait_oldest_seconds{comm,container}` keeps the
//! `top_n - 1` oldest and takes the maximum of the rest. Gauges are current
//! values, so they are not sticky (a gone container's series goes at once);
//! a zero count is absent. `tracer_tcp_receive_queue_bytes{comm,container}`
//! and `tracer_tcp_send_queue_bytes{comm,container}` are the backlogs of the
//! last interval, summed over the sockets sampled then, keeping the
//! `top_n - 1` largest and summing the rest; a zero backlog is not absent
//! (a process with no socket sampled in the last interval, or a kernel
//! without queues, has no backlog series). `container` is the process's container label
//! (`namespace/pod/container`, name or short id), `""` for host processes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prometheus::proto::MetricFamily;

use super::{
    family::{family, gauge, sample, Definition},
    Group, Tick, OTHER,
};
use crate::model::Process;

const SOCKETS: Definition = gauge(
    "tracer_tcp_sockets",
    "TCP sockets owned by processes of this name in this container, by state.",
    &["comm", "container", "state"],
);
const CLOSE_WAIT_OLDEST: Definition = gauge(
    "tracer_tcp_close_wait_oldest_seconds",
    "Age of the oldest CLOSE_WAIT socket of processes of this name in this container (a lower bound for sockets found at start).",
    &["comm", "container"],
);

/// A process's series: (comm, container label).
type Name = (String, String);

fn container_label(process: &Process) -> String {
    process.identity.as_ref().and_then(|i| i.container.as_ref()).map(|c| c.label()).unwrap_or_default()
}

fn other() -> Name {
    (OTHER.to_owned(), OTHER.to_owned())
}

const RECEIVE_QUEUE: Definition = gauge(
    "tracer_tcp_receive_queue_bytes",
    "Bytes that arrived on TCP sockets of processes of this name in this container and are not read yet, at the last collection.",
    &["comm", "container"],
);
const SEND_QUEUE: Definition = gauge(
    "tracer_tcp_send_queue_bytes",
    "Bytes written to TCP sockets of processes of this name in this container and not yet acknowledged, at the last collection.",
    &["comm", "container"],
);

pub(super) struct ProcessGroup {
    top_n: usize,
    /// ((comm, container), state) -> sockets.
    sockets: BTreeMap<(Name, &'static str), u64>,
    close_wait_oldest: BTreeMap<Name, f64>,
    receive_queue: BTreeMap<Name, u64>,
    send_queue: BTreeMap<Name, u64>,
}

impl ProcessGroup {
    pub(super) fn new(top_n: usize) -> Self {
        ProcessGroup {
            top_n,
            sockets: BTreeMap::new(),
            close_wait_oldest: BTreeMap::new(),
            receive_queue: BTreeMap::new(),
            send_queue: BTreeMap::new(),
        }
    }
}

impl Group for ProcessGroup {
    fn definitions(&self) -> Vec<Definition> {
        vec![SOCKETS, CLOSE_WAIT_OLDEST, RECEIVE_QUEUE, SEND_QUEUE]
    }

    fn update(&mut self, tick: &Tick<'_>) {
        let snapshot = tick.snapshot;
        let mut names: HashMap<u32, Name> = HashMap::new();
        let mut sockets_by_name: BTreeMap<Name, BTreeMap<&'static str, u64>> = BTreeMap::new();
        for process in &snapshot.processes {
            let name = (process.comm.clone(), container_label(process));
            names.insert(process.pid, name.clone());
            let entry = sockets_by_name.entry(name).or_default();
            for (state, count) in &process.sockets {
                *entry.entry(state).or_default() += count;
            }
        }
        let kept = top_names(
            sockets_by_name.iter().map(|(name, states)| (name, states.values().sum::<u64>() as f64)),
            self.top_n.saturating_sub(1),
        );
        self.sockets.clear();
        for (name, states) in &sockets_by_name {
            let label = if kept.contains(name) { name.clone() } else { other() };
            for (state, count) in states {
                if *count > 0 {
                    *self.sockets.entry((label.clone(), state)).or_default() += count;
                }
            }
        }

        let mut oldest: BTreeMap<Name, f64> = BTreeMap::new();
        for socket in &snapshot.close_wait {
            let name = names.get(&socket.pid).cloned().unwrap_or_else(|| (socket.comm.to_string(), String::new()));
            let age = oldest.entry(name).or_insert(0.0);
            *age = age.max(socket.age_secs);
        }
        let kept = top_names(oldest.iter().map(|(name, age)| (name, *age)), self.top_n.saturating_sub(1));
        self.close_wait_oldest.clear();
        for (name, age) in &oldest {
            let label = if kept.contains(name) { name.clone() } else { other() };
            let entry = self.close_wait_oldest.entry(label).or_insert(0.0);
            *entry = entry.max(*age);
        }

        // The last interval's backlogs per pid, then per name.
        let mut by_pid: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        let support = snapshot.health_support;
        if support.sampling && support.queues {
            for (key, interval) in snapshot.last_interval_health.iter().filter(|(_, h)| h.sockets > 0) {
                let sums = by_pid.entry(key.pid).or_default();
                sums.0 = sums.0.saturating_add(interval.recv_queue);
                sums.1 = sums.1.saturating_add(interval.send_queue);
            }
        }
        let mut by_name: BTreeMap<Name, (u64, u64)> = BTreeMap::new();
        for (pid, (recv, send)) in by_pid {
            let name = names.get(&pid).cloned().unwrap_or_else(|| ((tick.comm)(pid), (tick.container)(pid)));
            let sums = by_name.entry(name).or_default();
            sums.0 = sums.0.saturating_add(recv);
            sums.1 = sums.1.saturating_add(send);
        }
        let keep = self.top_n.saturating_sub(1);
        self.receive_queue = top_sums(by_name.iter().map(|(name, sums)| (name, sums.0)), keep);
        self.send_queue = top_sums(by_name.iter().map(|(name, sums)| (name, sums.1)), keep);
    }

    fn families(&self) -> Vec<MetricFamily> {
        vec![
            family(
                &SOCKETS,
                self.sockets.iter().map(|(((comm, container), state), count)| {
                    sample(&[("comm", comm), ("container", container), ("state", state)], *count as f64)
                }),
            ),
            family(
                &CLOSE_WAIT_OLDEST,
                self.close_wait_oldest
                    .iter()
                    .map(|((comm, container), age)| sample(&[("comm", comm), ("container", container)], *age)),
            ),
            family(
                &RECEIVE_QUEUE,
                self.receive_queue.iter().map(|((comm, container), bytes)| {
                    sample(&[("comm", comm), ("container", container)], *bytes as f64)
                }),
            ),
            family(
                &SEND_QUEUE,
                self.send_queue.iter().map(|((comm, container), bytes)| {
                    sample(&[("comm", comm), ("container", container)], *bytes as f64)
                }),
            ),
        ]
    }
}

/// The `top_n` names with the largest values (ties by name).
fn top_names<'a>(values: impl Iterator<Item = (&'a Name, f64)>, top_n: usize) -> BTreeSet<&'a Name> {
    let mut ranked: Vec<(&Name, f64)> = values.collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    ranked.into_iter().take(top_n).map(|(name, _)| name).collect()
}

/// The `top_n` names with the largest values as they are, the others
/// summed into `other`.
fn top_sums<'a>(values: impl Iterator<Item = (&'a Name, u64)> + Clone, top_n: usize) -> BTreeMap<Name, u64> {
    let kept = top_names(values.clone().map(|(name, value)| (name, value as f64)), top_n);
    let mut sums = BTreeMap::new();
    for (name, value) in values {
        let label = if kept.contains(name) { name.clone() } else { other() };
        let sum: &mut u64 = sums.entry(label).or_default();
        *sum = sum.saturating_add(value);
    }
    sums
}
