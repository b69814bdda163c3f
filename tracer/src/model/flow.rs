//! Flows and the model's views of its window: what the analysis and every
//! output read ([`Flow`], [`Process`], [`CloseWait`], [`TimelinePoint`]),
//! all plain data with the model's own types (the JSON wire format is
//! built from these in `output::report`).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use super::{container::Identity, Counters, HealthView, LastMax, StateCounts};

/// Which side of a connection a socket is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Role {
    /// It called `connect()`.
    Client,
    /// It was accepted from a listener.
    Server,
}

impl Role {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }
}

/// Flow = (pid, role, remote address, service port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct FlowKey {
    pub(crate) pid: u32,
    pub(crate) role: Role,
    pub(crate) remote: IpAddr,
    /// The listening side's port: the remote port for clients, the local
    /// port for servers.
    pub(crate) port: u16,
}

/// One flow's counters over the window.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Flow {
    pub(crate) key: FlowKey,
    pub(crate) comm: String,
    /// The process's cgroup and container (`None`: not read before it
    /// exited). Outputs show its container.
    pub(crate) identity: Option<Arc<Identity>>,
    pub(crate) counters: Counters,
    pub(crate) health: HealthView,
}

/// One process's counters over the window and its sockets now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Process {
    pub(crate) pid: u32,
    pub(crate) comm: String,
    /// Its cgroup, unit and container (`None`: not read before it exited).
    pub(crate) identity: Option<Arc<Identity>>,
    pub(crate) counters: Counters,
    pub(crate) sockets: StateCounts,
    /// Backlogs summed over the process's sockets at each interval's end
    /// (`None`: no socket of it was sampled).
    pub(crate) recv_queue: Option<LastMax>,
    pub(crate) send_queue: Option<LastMax>,
}

/// A socket in CLOSE_WAIT now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CloseWait {
    pub(crate) pid: u32,
    /// Shared by the entries of one process (a leak lists thousands).
    pub(crate) comm: Arc<str>,
    pub(crate) local: SocketAddr,
    pub(crate) remote: SocketAddr,
    /// Rounded to the millisecond.
    pub(crate) age_secs: f64,
    /// The socket predates the tracer: its age is counted from the start.
    pub(crate) age_is_lower_bound: bool,
}

/// One interval of the per-process timeline.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TimelinePoint {
    /// End of the interval, seconds since the start (rounded to the ms).
    pub(crate) t_secs: f64,
    /// The interval's length in seconds: rates are bytes over this.
    pub(crate) interval_secs: f64,
    pub(crate) processes: Vec<TimelineProcess>,
}

/// One process in one interval.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TimelineProcess {
    pub(crate) pid: u32,
    pub(crate) comm: String,
    /// Moved in this interval.
    pub(crate) tx_bytes: u64,
    pub(crate) rx_bytes: u64,
    /// Counts at the interval's end.
    pub(crate) sockets: StateCounts,
}

/// The kernel side's own counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct KernelStats {
    pub(crate) events_total: u64,
    pub(crate) events_dropped: u64,
    /// Final records that found the ring buffer full and were handed over
    /// later (not lost).
    pub(crate) events_deferred: u64,
    pub(crate) map_full_drops: u64,
}
