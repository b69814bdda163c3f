//! The JSON report: `tracer trace --format json` and the agent's
//! `/api/v1/report`. These structs are the wire format (schema
//! `tracer.report/v1`, DESIGN.md); field order and names are the contract.
//!
//! ```text
//! { "schema", "started_at" (RFC 3339 UTC), "duration_secs", "backend",
//!   "flows": [{ pid, comm, role, local_port, remote_addr, remote_port,
//!               tx_bytes, rx_bytes, retransmits, connections_opened,
//!               connections_closed, failed_connects, resets }],
//!   "processes": [{ pid, comm, tx_bytes, rx_bytes, retransmits,
//!                   connections_opened, connections_closed, failed_connects,
//!                   resets_sent, resets_received, sockets: {STATE: n} }],
//!   "close_wait": [{ pid, comm, local_addr, local_port, remote_addr,
//!                    remote_port, age_secs, age_is_lower_bound }],  // oldest first
//!   "timeline": [{ t_secs, processes: [{ pid, comm, tx_bytes, rx_bytes, sockets }] }],
//!   "findings": [{ kind, severity, pid, comm, remote_addr, port, summary, evidence }],
//!   "host": { sockets: {STATE: n} },
//!   "tracer": { events_total, events_dropped, map_full_drops, live_sockets } }
//! ```
//! Byte counts are those moved during the report's window. Zero state counts
//! are left out. Strings are escaped by serde_json exactly.
//!
//! These types are the wire format only: [`Report::new`] builds one from a
//! [`Snapshot`] of the model, which knows nothing of them.

use serde::Serialize;

use super::Snapshot;
use crate::{
    analysis::Finding,
    model::{CloseWait, Flow, Process, Role, StateCounts, TimelinePoint, TimelineProcess},
};

pub(crate) const SCHEMA: &str = "tracer.report/v1";

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) schema: &'static str,
    pub(crate) started_at: String,
    pub(crate) duration_secs: f64,
    pub(crate) backend: &'static str,
    pub(crate) flows: Vec<FlowReport>,
    pub(crate) processes: Vec<ProcessReport>,
    pub(crate) close_wait: Vec<CloseWaitReport>,
    pub(crate) timeline: Vec<TimelineSample>,
    pub(crate) findings: Vec<Finding>,
    pub(crate) host: HostReport,
    pub(crate) tracer: TracerReport,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct FlowReport {
    pub(crate) pid: u32,
    pub(crate) comm: String,
    /// `client` or `server`.
    pub(crate) role: &'static str,
    /// The service port for servers, else 0.
    pub(crate) local_port: u16,
    pub(crate) remote_addr: String,
    /// The service port for clients, else 0.
    pub(crate) remote_port: u16,
    pub(crate) tx_bytes: u64,
    pub(crate) rx_bytes: u64,
    pub(crate) retransmits: u64,
    pub(crate) connections_opened: u64,
    pub(crate) connections_closed: u64,
    pub(crate) failed_connects: u64,
    pub(crate) resets: u64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ProcessReport {
    pub(crate) pid: u32,
    pub(crate) comm: String,
    pub(crate) tx_bytes: u64,
    pub(crate) rx_bytes: u64,
    pub(crate) retransmits: u64,
    pub(crate) connections_opened: u64,
    pub(crate) connections_closed: u64,
    pub(crate) failed_connects: u64,
    pub(crate) resets_sent: u64,
    pub(crate) resets_received: u64,
    pub(crate) sockets: StateCounts,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct CloseWaitReport {
    pub(crate) pid: u32,
    pub(crate) comm: String,
    pub(crate) local_addr: String,
    pub(crate) local_port: u16,
    pub(crate) remote_addr: String,
    pub(crate) remote_port: u16,
    pub(crate) age_secs: f64,
    pub(crate) age_is_lower_bound: bool,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct TimelineSample {
    /// End of the interval, seconds since the start.
    pub(crate) t_secs: f64,
    pub(crate) processes: Vec<TimelineProcessReport>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct TimelineProcessReport {
    pub(crate) pid: u32,
    pub(crate) comm: String,
    /// Moved in this interval.
    pub(crate) tx_bytes: u64,
    pub(crate) rx_bytes: u64,
    /// Counts at the interval's end.
    pub(crate) sockets: StateCounts,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct HostReport {
    pub(crate) sockets: StateCounts,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct TracerReport {
    pub(crate) events_total: u64,
    pub(crate) events_dropped: u64,
    pub(crate) map_full_drops: u64,
    pub(crate) live_sockets: u64,
}

/// Formats an instant as RFC 3339 UTC with whole seconds.
pub(crate) fn rfc3339(time: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

impl Report {
    pub(crate) fn new(snapshot: &Snapshot) -> Self {
        Report {
            schema: SCHEMA,
            started_at: rfc3339(snapshot.started_at),
            duration_secs: snapshot.duration_secs,
            backend: snapshot.backend,
            flows: snapshot.flows.iter().map(FlowReport::new).collect(),
            processes: snapshot.processes.iter().map(ProcessReport::new).collect(),
            close_wait: snapshot.close_wait.iter().map(CloseWaitReport::new).collect(),
            timeline: snapshot.timeline.iter().map(TimelineSample::new).collect(),
            findings: snapshot.findings.clone(),
            host: HostReport { sockets: snapshot.host_sockets.clone() },
            tracer: TracerReport {
                events_total: snapshot.stats.events_total,
                events_dropped: snapshot.stats.events_dropped,
                map_full_drops: snapshot.stats.map_full_drops,
                live_sockets: snapshot.live_sockets,
            },
        }
    }
}

impl FlowReport {
    fn new(flow: &Flow) -> Self {
        let (key, c) = (&flow.key, &flow.counters);
        FlowReport {
            pid: key.pid,
            comm: flow.comm.clone(),
            role: key.role.as_str(),
            local_port: if key.role == Role::Server { key.port } else { 0 },
            remote_addr: key.remote.to_string(),
            remote_port: if key.role == Role::Client { key.port } else { 0 },
            tx_bytes: c.tx_bytes,
            rx_bytes: c.rx_bytes,
            retransmits: c.retransmits,
            connections_opened: c.opened,
            connections_closed: c.closed,
            failed_connects: c.failed_connects,
            resets: c.resets(),
        }
    }
}

impl ProcessReport {
    fn new(process: &Process) -> Self {
        let c = &process.counters;
        ProcessReport {
            pid: process.pid,
            comm: process.comm.clone(),
            tx_bytes: c.tx_bytes,
            rx_bytes: c.rx_bytes,
            retransmits: c.retransmits,
            connections_opened: c.opened,
            connections_closed: c.closed,
            failed_connects: c.failed_connects,
            resets_sent: c.resets_sent,
            resets_received: c.resets_received,
            sockets: process.sockets.clone(),
        }
    }
}

impl CloseWaitReport {
    fn new(socket: &CloseWait) -> Self {
        CloseWaitReport {
            pid: socket.pid,
            comm: socket.comm.clone(),
            local_addr: socket.local.ip().to_string(),
            local_port: socket.local.port(),
            remote_addr: socket.remote.ip().to_string(),
            remote_port: socket.remote.port(),
            age_secs: socket.age_secs,
            age_is_lower_bound: socket.age_is_lower_bound,
        }
    }
}

impl TimelineSample {
    fn new(point: &TimelinePoint) -> Self {
        TimelineSample {
            t_secs: point.t_secs,
            processes: point
                .processes
                .iter()
                .map(|p: &TimelineProcess| TimelineProcessReport {
                    pid: p.pid,
                    comm: p.comm.clone(),
                    tx_bytes: p.tx_bytes,
                    rx_bytes: p.rx_bytes,
                    sockets: p.sockets.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_comm_survives_json_exactly() {
        let comm = "a\"b<c\\d\ne\tf";
        let cw = CloseWaitReport {
            pid: 1,
            comm: comm.to_owned(),
            local_addr: "127.0.0.1".into(),
            local_port: 1,
            remote_addr: "::1".into(),
            remote_port: 2,
            age_secs: 1.5,
            age_is_lower_bound: false,
        };
        let text = serde_json::to_string(&cw).expect("serializes");
        assert!(!text.contains('\n'));
        let back: serde_json::Value = serde_json::from_str(&text).expect("parses");
        assert_eq!(back["comm"], comm);
    }
}
