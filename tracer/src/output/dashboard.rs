//! The agent's dashboard: the page (`/`, `dashboard.html`, self-contained)
//! and the rates it draws (`/api/v1/dashboard`), computed here from the
//! snapshot's timeline (bytes over each interval's length, as the model
//! measured it) and window, so the page only formats and draws numbers.
//! Everything else on the page comes from `/api/v1/report`.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::Snapshot;

/// The page: no external requests.
pub(crate) const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// Processes drawn on their own in the rate charts; the rest are "others".
const TOP_PROCESSES: usize = 6;
/// Service ports in the port chart.
const TOP_PORTS: usize = 10;
/// Flows in the RTT chart.
const TOP_RTT: usize = 10;
/// Shorter intervals (or windows) carry no usable rate.
const MIN_SECS: f64 = 1e-3;

/// What `/api/v1/dashboard` serves.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Rates {
    /// Send rate per interval of the busiest processes, then `others`.
    tx: Vec<Series>,
    /// Receive rate per interval, likewise.
    rx: Vec<Series>,
    /// All processes' rates in the last interval.
    tx_now: f64,
    rx_now: f64,
    /// The busiest service ports, average rates over the window.
    ports: Vec<PortRate>,
    /// Each flow's average rate (both ways) over the window, in the report's
    /// flow order.
    flows: Vec<f64>,
    /// The flows with the highest RTT now (latest first, then largest),
    /// among those with an RTT observed in the window.
    rtt: Vec<FlowRtt>,
}

/// One flow's RTT over the window, microseconds.
#[derive(Debug, Clone, Serialize)]
struct FlowRtt {
    pid: u32,
    comm: String,
    role: &'static str,
    remote: String,
    /// The service port.
    port: u16,
    /// The mean over the flow's sockets in the last interval that had one.
    last_us: f64,
    max_us: u64,
    min_us: u64,
    mean_us: f64,
}

/// One process's (or the others') rate per interval: `[t_secs, bytes/s]`.
#[derive(Debug, Clone, Serialize)]
struct Series {
    /// `None` for the sum of the other processes.
    pid: Option<u32>,
    comm: String,
    points: Vec<[f64; 2]>,
}

#[derive(Debug, Clone, Serialize)]
struct PortRate {
    port: u16,
    tx: f64,
    rx: f64,
}

#[derive(Clone, Copy)]
enum Direction {
    Tx,
    Rx,
}

impl Rates {
    pub(crate) fn new(snapshot: &Snapshot) -> Self {
        let (tx_now, rx_now) = snapshot.timeline.last().map_or((0.0, 0.0), |point| {
            let interval = point.interval_secs.max(MIN_SECS);
            let (tx, rx) = point.processes.iter().fold((0u64, 0u64), |(tx, rx), p| (tx + p.tx_bytes, rx + p.rx_bytes));
            (tx as f64 / interval, rx as f64 / interval)
        });
        let window = snapshot.duration_secs.max(MIN_SECS);
        let mut by_port: BTreeMap<u16, (u64, u64)> = BTreeMap::new();
        for flow in &snapshot.flows {
            let entry = by_port.entry(flow.key.port).or_default();
            entry.0 += flow.counters.tx_bytes;
            entry.1 += flow.counters.rx_bytes;
        }
        let mut ports: Vec<(u16, (u64, u64))> = by_port.into_iter().filter(|(_, (tx, rx))| tx + rx > 0).collect();
        ports.sort_by_key(|&(port, (tx, rx))| (std::cmp::Reverse(tx + rx), port));
        Rates {
            tx: process_series(snapshot, Direction::Tx),
            rx: process_series(snapshot, Direction::Rx),
            tx_now,
            rx_now,
            ports: ports
                .into_iter()
                .take(TOP_PORTS)
                .map(|(port, (tx, rx))| PortRate { port, tx: tx as f64 / window, rx: rx as f64 / window })
                .collect(),
            flows: snapshot.flows.iter().map(|flow| flow.counters.bytes() as f64 / window).collect(),
            rtt: flow_rtts(snapshot),
        }
    }
}

/// The flows with the highest latest RTT, then the highest largest.
fn flow_rtts(snapshot: &Snapshot) -> Vec<FlowRtt> {
    if !snapshot.health_support.rtt {
        return Vec::new();
    }
    let mut rtts: Vec<FlowRtt> = snapshot
        .flows
        .iter()
        .filter_map(|flow| {
            let rtt = &flow.health.rtt;
            Some(FlowRtt {
                pid: flow.key.pid,
                comm: flow.comm.clone(),
                role: flow.key.role.as_str(),
                remote: flow.key.remote.to_string(),
                port: flow.key.port,
                last_us: flow.health.rtt_last_us?,
                max_us: rtt.max,
                min_us: rtt.min,
                mean_us: rtt.mean()?,
            })
        })
        .collect();
    // The report's flow order (biggest first) breaks ties.
    rtts.sort_by(|a, b| b.last_us.total_cmp(&a.last_us).then(b.max_us.cmp(&a.max_us)));
    rtts.truncate(TOP_RTT);
    rtts
}

/// The busiest processes' rate series in `direction` (busiest first), and
/// the others summed when they moved anything.
fn process_series(snapshot: &Snapshot, direction: Direction) -> Vec<Series> {
    let moved = |tx: u64, rx: u64| match direction {
        Direction::Tx => tx,
        Direction::Rx => rx,
    };
    // Totals in order of first appearance, so ties keep a stable order.
    let mut totals: Vec<(u32, u64)> = Vec::new();
    let mut names: HashMap<u32, &str> = HashMap::new();
    for point in &snapshot.timeline {
        for p in &point.processes {
            match totals.iter_mut().find(|(pid, _)| *pid == p.pid) {
                Some((_, total)) => *total += moved(p.tx_bytes, p.rx_bytes),
                None => totals.push((p.pid, moved(p.tx_bytes, p.rx_bytes))),
            }
            names.insert(p.pid, &p.comm);
        }
    }
    totals.retain(|&(_, total)| total > 0);
    totals.sort_by_key(|&(_, total)| std::cmp::Reverse(total));
    let top: Vec<u32> = totals.iter().take(TOP_PROCESSES).map(|&(pid, _)| pid).collect();
    let mut series: Vec<Series> = top
        .iter()
        .map(|&pid| Series {
            pid: Some(pid),
            comm: names.get(&pid).copied().unwrap_or_default().to_owned(),
            points: Vec::new(),
        })
        .collect();
    let mut others = Series { pid: None, comm: "others".to_owned(), points: Vec::new() };
    let mut any_others = false;
    for point in &snapshot.timeline {
        let interval = point.interval_secs.max(MIN_SECS);
        let mut rest = 0;
        let mut values = vec![0u64; top.len()];
        for p in &point.processes {
            match top.iter().position(|&pid| pid == p.pid) {
                Some(i) => values[i] += moved(p.tx_bytes, p.rx_bytes),
                None => rest += moved(p.tx_bytes, p.rx_bytes),
            }
        }
        for (one, value) in series.iter_mut().zip(values) {
            one.points.push([point.t_secs, value as f64 / interval]);
        }
        others.points.push([point.t_secs, rest as f64 / interval]);
        any_others |= rest > 0;
    }
    if any_others {
        series.push(others);
    }
    series
}
