//! Outputs, each reading one [`Snapshot`] of the model and the analysis:
//! the JSON report ([`report`], `tracer.report/v1`), the text tables
//! ([`table`]), the Prometheus metrics ([`metrics`]), and the agent's HTTP
//! side ([`http`]) with its dashboard ([`dashboard`]) and its TLS and basic
//! auth ([`webconfig`], `--web.config.file`).

pub(crate) mod dashboard;
#[cfg(test)]
mod golden;
pub(crate) mod http;
pub(crate) mod metrics;
pub(crate) mod report;
pub(crate) mod table;
pub(crate) mod webconfig;

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use crate::{
    analysis::{self, Finding, Thresholds},
    model::{
        CloseWait, Flow, FlowHealth, FlowKey, HealthSupport, KernelStats, Model, Process, StateCounts, TimelinePoint,
    },
};

/// What a snapshot needs besides the model.
pub(crate) struct SnapshotContext {
    /// When tracing started (the model's time zero).
    pub(crate) started_at: SystemTime,
    pub(crate) backend: &'static str,
    pub(crate) stats: KernelStats,
    /// The monotonic clock now (CLOSE_WAIT ages are taken at it).
    pub(crate) now_ns: u64,
}

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
    /// The kernel's HZ, once measured (converts the chrono counters).
    pub(crate) hz: Option<u32>,
    /// Which TCP health values this kernel provides (the rest are null).
    pub(crate) health_support: HealthSupport,
    /// Each flow's TCP health in the last interval only: the observations
    /// (RTT per live socket, connect latency per connection) that the
    /// metrics' histograms take in once per tick.
    pub(crate) last_interval_health: HashMap<FlowKey, FlowHealth>,
    /// End of the last interval, seconds since the start (tells ticks apart).
    pub(crate) last_sample_secs: f64,
}

impl Snapshot {
    /// The model's window as of its last sample, with its findings.
    pub(crate) fn build(model: &Model, thresholds: &Thresholds, context: SnapshotContext) -> Self {
        // The agent's window slides: the report starts where its oldest
        // sample does, not when the agent started.
        let window_secs = model.window_secs();
        let started_at =
            context.started_at + Duration::from_secs_f64((model.last_sample_secs() - window_secs).max(0.0));
        let flows = model.flows();
        let close_wait = model.close_wait(context.now_ns);
        let comm = |pid: u32| model.comm(pid).to_owned();
        let findings = analysis::analyze(
            &analysis::Input {
                samples: model.samples(),
                close_wait: &close_wait,
                flows: &flows,
                comm: &comm,
                hz: model.hz(),
            },
            thresholds,
        );
        Snapshot {
            started_at,
            duration_secs: (window_secs * 1000.0).round() / 1000.0,
            backend: context.backend,
            processes: model.processes(),
            flows,
            close_wait,
            timeline: model.timeline(),
            findings,
            host_sockets: model.host_sockets(),
            stats: context.stats,
            live_sockets: model.live_sockets(),
            hz: model.hz(),
            health_support: model.health_support(),
            last_interval_health: model.samples().back().map(|s| s.health.clone()).unwrap_or_default(),
            last_sample_secs: model.last_sample_secs(),
        }
    }
}
