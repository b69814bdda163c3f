//! Outputs, each reading one [`Snapshot`] of the model and the analysis:
//! the JSON report ([`report`], `tracer.report/v1`), the text tables
//! ([`table`]), the Prometheus metrics ([`metrics`]) and the agent's HTTP
//! side with its dashboard ([`http`]).

pub(crate) mod http;
pub(crate) mod metrics;
pub(crate) mod report;
pub(crate) mod table;

use std::time::SystemTime;

use crate::{
    analysis::Finding,
    model::{CloseWait, Flow, KernelStats, Process, StateCounts, TimelinePoint},
};

/// The model's window and its findings as of one tick: all any output reads.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    /// When the window starts (it slides in the agent).
    pub(crate) started_at: SystemTime,
    /// The window's length in seconds, rounded to the millisecond.
    pub(crate) duration_secs: f64,
    /// The attach backend in use.
    pub(crate) backend: &'static str,
    /// Biggest first.
    pub(crate) flows: Vec<Flow>,
    /// Biggest first.
    pub(crate) processes: Vec<Process>,
    /// Oldest first.
    pub(crate) close_wait: Vec<CloseWait>,
    pub(crate) timeline: Vec<TimelinePoint>,
    /// Most severe first.
    pub(crate) findings: Vec<Finding>,
    /// Host-wide socket counts (TIME_WAIT included).
    pub(crate) host_sockets: StateCounts,
    pub(crate) stats: KernelStats,
    /// Sockets the tracer tracks now.
    pub(crate) live_sockets: u64,
}
