//! Per-process gauges, keyed by `comm` only (the pid label is for flow
//! counters): `tracer_tcp_sockets{comm,state}` keeps the `top_n - 1` names
//! with the most sockets and sums the rest into `comm="other"`;
//! `tracer_tcp_close_wait_oldest_seconds{comm}` keeps the `top_n - 1`
//! oldest and takes the maximum of the rest. Gauges are current values, so
//! they are not sticky; a zero count is absent.

use std::collections::{BTreeMap, BTreeSet};

use prometheus::proto::MetricFamily;

use super::{
    family::{family, gauge, sample, Definition},
    Group, Tick, OTHER,
};

const SOCKETS: Definition =
    gauge("tracer_tcp_sockets", "TCP sockets owned by processes of this name, by state.", &["comm", "state"]);
const CLOSE_WAIT_OLDEST: Definition = gauge(
    "tracer_tcp_close_wait_oldest_seconds",
    "Age of the oldest CLOSE_WAIT socket of processes of this name (a lower bound for sockets found at start).",
    &["comm"],
);

pub(super) struct ProcessGroup {
    top_n: usize,
    /// (comm, state) -> sockets.
    sockets: BTreeMap<(String, &'static str), u64>,
    close_wait_oldest: BTreeMap<String, f64>,
}

impl ProcessGroup {
    pub(super) fn new(top_n: usize) -> Self {
        ProcessGroup { top_n, sockets: BTreeMap::new(), close_wait_oldest: BTreeMap::new() }
    }
}

impl Group for ProcessGroup {
    fn definitions(&self) -> Vec<Definition> {
        vec![SOCKETS, CLOSE_WAIT_OLDEST]
    }

    fn update(&mut self, tick: &Tick<'_>) {
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
    }

    fn families(&self) -> Vec<MetricFamily> {
        vec![
            family(
                &SOCKETS,
                self.sockets
                    .iter()
                    .map(|((comm, state), count)| sample(&[("comm", comm), ("state", state)], *count as f64)),
            ),
            family(
                &CLOSE_WAIT_OLDEST,
                self.close_wait_oldest.iter().map(|(comm, age)| sample(&[("comm", comm)], *age)),
            ),
        ]
    }
}

/// The `top_n` names with the largest values (ties by name).
fn top_names<'a>(values: impl Iterator<Item = (&'a str, f64)>, top_n: usize) -> BTreeSet<&'a str> {
    let mut ranked: Vec<(&str, f64)> = values.collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    ranked.into_iter().take(top_n).map(|(name, _)| name).collect()
}
