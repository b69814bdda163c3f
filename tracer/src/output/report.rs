//! The JSON report: `tracer trace --format json` and the agent's
//! `/api/v1/report`. These structs are the wire format (schema
//! `tracer.report/v1`, DESIGN.md); field order and names are the contract.
//!
//! ```text
//! { "schema", "started_at" (RFC 3339 UTC), "duration_secs", "backend",
//!   "flows": [{ pid, comm, role, local_port, remote_addr, remote_port,
//!               tx_bytes, rx_bytes, retransmits, connections_opened,
//!               connections_closed, failed_connects, resets,
//!               // TCP health (null where the kernel or the samples give nothing):
//!               rtt_us: { min, mean, max, last, min_rtt },
//!               connect_us: { count, min, mean, max },
//!               failed_connects_by_reason: { refused, timeout, unreachable, other },
//!               syn_retransmits, recv_queue_bytes: { last, max },
//!               send_queue_bytes: { last, max }, limited_ms: { busy, rwnd, sndbuf },
//!               delivery_rate_bytes_per_sec, segments_out, netns,
//!               container }],
//!   "processes": [{ pid, comm, tx_bytes, rx_bytes, retransmits,
//!                   connections_opened, connections_closed, failed_connects,
//!                   resets_sent, resets_received, sockets: {STATE: n},
//!                   recv_queue_bytes: { last, max }, send_queue_bytes: { last, max },
//!                   cgroup, unit, container }],
//!   "close_wait": [{ pid, comm, local_addr, local_port, remote_addr,
//!                    remote_port, age_secs, age_is_lower_bound }],  // oldest first
//!   "timeline": [{ t_secs, processes: [{ pid, comm, tx_bytes, rx_bytes, sockets }] }],
//!   "findings": [{ kind, severity, pid, comm, remote_addr, port, summary, evidence }],
//!   "host": { sockets: {STATE: n} },
//!   "tracer": { events_total, events_dropped, events_deferred, map_full_drops,
//!               untracked_sockets, live_sockets, tcp_health_sampling, hz } }
//! ```
//! `container` is null for host processes (systemd services included), else
//! `{ id, runtime, name, pod: null | { uid, name, namespace, qos } }`; names
//! are null when no runtime could be asked. `cgroup` and `unit` are null for
//! a process that exited before its cgroup was read.
//! Byte counts are those moved during the report's window. Zero state counts
//! are left out. Strings are escaped by serde_json exactly.
//!
//! These types are the wire format only: [`Report::new`] builds one from a
//! [`Snapshot`] of the model, which knows nothing of them.

use serde::Serialize;

use super::Snapshot;
use crate::{
    analysis::Finding,
    model::{
        container::{Container, Identity},
        jiffies_ms, CloseWait, Dist, FailReason, Flow, HealthSupport, LastMax, Process, Role, StateCounts,
        TimelinePoint, TimelineProcess,
    },
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
    pub(crate) rtt_us: RttReport,
    pub(crate) connect_us: ConnectReport,
    /// Sums to `failed_connects`; null where the kernel gives no reason.
    pub(crate) failed_connects_by_reason: Option<ReasonsReport>,
    pub(crate) syn_retransmits: u64,
    pub(crate) recv_queue_bytes: Option<LastMaxReport>,
    pub(crate) send_queue_bytes: Option<LastMaxReport>,
    pub(crate) limited_ms: Option<LimitedReport>,
    pub(crate) delivery_rate_bytes_per_sec: Option<u64>,
    /// Segments sent: the denominator of a retransmit ratio.
    pub(crate) segments_out: u64,
    /// The network namespace (inode) the flow was seen in.
    pub(crate) netns: Option<u32>,
    /// The owner's container; null for host processes.
    pub(crate) container: Option<ContainerReport>,
}

/// A container (DESIGN.md "Containers").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ContainerReport {
    /// The full id (64 hex digits).
    pub(crate) id: String,
    /// `docker`, `containerd`, `crio`, `podman` or `unknown`.
    pub(crate) runtime: &'static str,
    /// Null when no runtime could be asked.
    pub(crate) name: Option<String>,
    pub(crate) pod: Option<PodReport>,
}

/// A Kubernetes pod.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct PodReport {
    pub(crate) uid: String,
    pub(crate) name: Option<String>,
    pub(crate) namespace: Option<String>,
    /// `guaranteed`, `burstable` or `besteffort`.
    pub(crate) qos: &'static str,
}

impl ContainerReport {
    fn of(identity: Option<&Identity>) -> Option<Self> {
        identity?.container.as_ref().map(Self::new)
    }

    fn new(container: &Container) -> Self {
        ContainerReport {
            id: container.id.clone(),
            runtime: container.runtime.as_str(),
            name: container.name.clone(),
            pod: container.pod.as_ref().map(|pod| PodReport {
                uid: pod.uid.clone(),
                name: pod.name.clone(),
                namespace: pod.namespace.clone(),
                qos: pod.qos.as_str(),
            }),
        }
    }
}

/// The kernel's smoothed RTT of the flow's live sockets, one observation
/// per socket per interval (the receiver's estimate for receive-dominated
/// sockets); `min_rtt` is the kernel's windowed minimum. Microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct RttReport {
    pub(crate) min: Option<u64>,
    pub(crate) mean: Option<f64>,
    pub(crate) max: Option<u64>,
    pub(crate) last: Option<f64>,
    pub(crate) min_rtt: Option<u64>,
}

/// Connect latency (clients: connect() to ESTABLISHED; servers: the
/// handshake round trip the kernel measured), microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ConnectReport {
    pub(crate) count: u64,
    pub(crate) min: Option<u64>,
    pub(crate) mean: Option<f64>,
    pub(crate) max: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ReasonsReport {
    pub(crate) refused: u64,
    pub(crate) timeout: u64,
    pub(crate) unreachable: u64,
    pub(crate) other: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct LastMaxReport {
    pub(crate) last: u64,
    pub(crate) max: u64,
}

/// The kernel's chrono counters over the window: time sending (`busy`, the
/// sum of the three, as `ss` prints it), limited by the receiver's window,
/// limited by the send buffer.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct LimitedReport {
    pub(crate) busy: u64,
    pub(crate) rwnd: u64,
    pub(crate) sndbuf: u64,
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
    /// Summed over the process's sockets at each interval's end.
    pub(crate) recv_queue_bytes: Option<LastMaxReport>,
    pub(crate) send_queue_bytes: Option<LastMaxReport>,
    /// The cgroup path that says the most about the process.
    pub(crate) cgroup: Option<String>,
    /// Its systemd unit (`nginx.service`), if a host process in one.
    pub(crate) unit: Option<String>,
    /// Its container; null for host processes.
    pub(crate) container: Option<ContainerReport>,
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
    /// Final records that found the ring buffer full and came later (not lost).
    pub(crate) events_deferred: u64,
    pub(crate) map_full_drops: u64,
    /// Sockets the socket table could not hold (`--max-sockets`), each
    /// counted once: the same number as `map_full_drops`.
    pub(crate) untracked_sockets: u64,
    pub(crate) live_sockets: u64,
    /// The TCP health pass runs (RTT, backlogs, delivery rate).
    pub(crate) tcp_health_sampling: bool,
    /// The kernel's HZ as measured (null until known).
    pub(crate) hz: Option<u32>,
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
            flows: snapshot.flows.iter().map(|f| FlowReport::new(f, snapshot.health_support, snapshot.hz)).collect(),
            processes: snapshot.processes.iter().map(ProcessReport::new).collect(),
            close_wait: snapshot.close_wait.iter().map(CloseWaitReport::new).collect(),
            timeline: snapshot.timeline.iter().map(TimelineSample::new).collect(),
            findings: snapshot.findings.clone(),
            host: HostReport { sockets: snapshot.host_sockets.clone() },
            tracer: TracerReport {
                events_total: snapshot.stats.events_total,
                events_dropped: snapshot.stats.events_dropped,
                events_deferred: snapshot.stats.events_deferred,
                map_full_drops: snapshot.stats.map_full_drops,
                untracked_sockets: snapshot.stats.map_full_drops,
                live_sockets: snapshot.live_sockets,
                tcp_health_sampling: snapshot.health_support.sampling,
                hz: snapshot.hz,
            },
        }
    }
}

impl FlowReport {
    fn new(flow: &Flow, support: HealthSupport, hz: Option<u32>) -> Self {
        let (key, c, health) = (&flow.key, &flow.counters, &flow.health);
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
            rtt_us: RttReport {
                min: observed(&health.rtt).map(|d| d.min),
                mean: health.rtt.mean().map(round1),
                max: observed(&health.rtt).map(|d| d.max),
                last: health.rtt_last_us.map(round1),
                min_rtt: health.min_rtt_us.filter(|_| support.min_rtt),
            },
            connect_us: ConnectReport {
                count: health.connect.count,
                min: observed(&health.connect).map(|d| d.min),
                mean: health.connect.mean().map(round1),
                max: observed(&health.connect).map(|d| d.max),
            },
            failed_connects_by_reason: support.failure_reasons.then(|| ReasonsReport {
                refused: FailReason::Refused.count(c),
                timeout: FailReason::Timeout.count(c),
                unreachable: FailReason::Unreachable.count(c),
                other: FailReason::Other.count(c),
            }),
            syn_retransmits: c.syn_retransmits,
            recv_queue_bytes: health.recv_queue.filter(|_| support.queues).map(LastMaxReport::from),
            send_queue_bytes: health.send_queue.filter(|_| support.queues).map(LastMaxReport::from),
            limited_ms: hz.filter(|_| support.chrono).map(|hz| LimitedReport {
                busy: jiffies_ms(c.busy_jiffies, hz),
                rwnd: jiffies_ms(c.rwnd_jiffies, hz),
                sndbuf: jiffies_ms(c.sndbuf_jiffies, hz),
            }),
            delivery_rate_bytes_per_sec: health.delivery_rate.filter(|_| support.delivery_rate),
            segments_out: c.segments_out,
            netns: health.netns,
            container: ContainerReport::of(flow.identity.as_deref()),
        }
    }
}

/// A distribution with at least one observation.
fn observed(dist: &Dist) -> Option<&Dist> {
    (dist.count > 0).then_some(dist)
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

impl From<LastMax> for LastMaxReport {
    fn from(value: LastMax) -> Self {
        LastMaxReport { last: value.last, max: value.max }
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
            recv_queue_bytes: process.recv_queue.map(LastMaxReport::from),
            send_queue_bytes: process.send_queue.map(LastMaxReport::from),
            cgroup: process.identity.as_ref().map(|i| i.cgroup.clone()),
            unit: process.identity.as_ref().and_then(|i| i.unit.clone()),
            container: ContainerReport::of(process.identity.as_deref()),
        }
    }
}

impl CloseWaitReport {
    fn new(socket: &CloseWait) -> Self {
        CloseWaitReport {
            pid: socket.pid,
            comm: socket.comm.to_string(),
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
