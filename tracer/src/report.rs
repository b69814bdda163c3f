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

use std::collections::BTreeMap;

use serde::Serialize;

pub const SCHEMA: &str = "tracer.report/v1";

/// Socket counts by state name (`ESTABLISHED`, `CLOSE_WAIT`, ...), zeros left out.
pub type StateCounts = BTreeMap<&'static str, u64>;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub started_at: String,
    pub duration_secs: f64,
    pub backend: &'static str,
    pub flows: Vec<FlowReport>,
    pub processes: Vec<ProcessReport>,
    pub close_wait: Vec<CloseWaitReport>,
    pub timeline: Vec<TimelineSample>,
    pub findings: Vec<Finding>,
    pub host: HostReport,
    pub tracer: TracerReport,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Client,
    Server,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FlowReport {
    pub pid: u32,
    pub comm: String,
    pub role: Role,
    /// The service port for servers, else 0.
    pub local_port: u16,
    pub remote_addr: String,
    /// The service port for clients, else 0.
    pub remote_port: u16,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub retransmits: u64,
    pub connections_opened: u64,
    pub connections_closed: u64,
    pub failed_connects: u64,
    pub resets: u64,
    /// Segments sent, where known (denominator of retransmit ratios); not
    /// part of the wire format.
    #[serde(skip)]
    pub segments_out: u64,
}

impl FlowReport {
    /// The listening side's port of this flow.
    pub fn service_port(&self) -> u16 {
        match self.role {
            Role::Client => self.remote_port,
            Role::Server => self.local_port,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    pub comm: String,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub retransmits: u64,
    pub connections_opened: u64,
    pub connections_closed: u64,
    pub failed_connects: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub sockets: StateCounts,
}

#[derive(Debug, Clone, Serialize)]
pub struct CloseWaitReport {
    pub pid: u32,
    pub comm: String,
    pub local_addr: String,
    pub local_port: u16,
    pub remote_addr: String,
    pub remote_port: u16,
    pub age_secs: f64,
    pub age_is_lower_bound: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimelineSample {
    /// End of the interval, seconds since the start.
    pub t_secs: f64,
    pub processes: Vec<TimelineProcess>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimelineProcess {
    pub pid: u32,
    pub comm: String,
    /// Moved in this interval.
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Counts at the interval's end.
    pub sockets: StateCounts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// `traffic_growth`, `throughput_decay`, `connection_leak`,
    /// `close_wait_leak`, `retransmit_spike`, `connection_churn`.
    pub kind: &'static str,
    pub severity: Severity,
    pub pid: u32,
    pub comm: String,
    pub remote_addr: Option<String>,
    pub port: Option<u16>,
    pub summary: String,
    pub evidence: serde_json::Value,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HostReport {
    pub sockets: StateCounts,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TracerReport {
    pub events_total: u64,
    pub events_dropped: u64,
    pub map_full_drops: u64,
    pub live_sockets: u64,
}

/// Formats an instant as RFC 3339 UTC with whole seconds.
pub fn rfc3339(time: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
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

    #[test]
    fn roles_and_severities_serialize_lowercase() {
        assert_eq!(serde_json::to_string(&Role::Server).expect("ok"), "\"server\"");
        assert_eq!(serde_json::to_string(&Severity::Critical).expect("ok"), "\"critical\"");
    }
}
