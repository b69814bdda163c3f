//! The tracer's own metrics: events handled, lost and deferred by the eBPF
//! programs, sockets tracked and those the socket table could not hold, how
//! long a collection took, the backend and version.

use prometheus::proto::MetricFamily;

use super::{
    family::{counter, family, gauge, sample, Definition},
    Group, Tick,
};

const EVENTS: Definition = counter("tracer_events_total", "Events the eBPF programs handled.", &[]);
const EVENTS_DROPPED: Definition = counter(
    "tracer_events_dropped_total",
    "Final records of destroyed sockets the eBPF programs lost (ring buffer and overflow map full).",
    &[],
);
const EVENTS_DEFERRED: Definition = counter(
    "tracer_events_deferred_total",
    "Final records that found the ring buffer full and were handed over later (not lost).",
    &[],
);
const UNTRACKED_SOCKETS: Definition = counter(
    "tracer_untracked_sockets_total",
    "Sockets the tracer's socket table could not hold (raise --max-sockets), each counted once.",
    &[],
);
const TRACKED_SOCKETS: Definition = gauge("tracer_tracked_sockets", "Sockets the tracer tracks now.", &[]);
const COLLECT_DURATION: Definition =
    gauge("tracer_collect_duration_seconds", "Time the last collection (read, sample, report) took.", &[]);
const BACKEND_INFO: Definition = gauge("tracer_backend_info", "The attach backend in use (always 1).", &["backend"]);
const BUILD_INFO: Definition = gauge("tracer_build_info", "The tracer's version (always 1).", &["version"]);

pub(super) struct OwnGroup {
    backend: String,
    version: &'static str,
    events_total: u64,
    events_dropped: u64,
    events_deferred: u64,
    untracked_sockets: u64,
    tracked_sockets: u64,
    collect_duration_secs: f64,
}

impl OwnGroup {
    pub(super) fn new(backend: &str) -> Self {
        OwnGroup {
            backend: backend.to_owned(),
            version: env!("CARGO_PKG_VERSION"),
            events_total: 0,
            events_dropped: 0,
            events_deferred: 0,
            untracked_sockets: 0,
            tracked_sockets: 0,
            collect_duration_secs: 0.0,
        }
    }
}

impl Group for OwnGroup {
    fn definitions(&self) -> Vec<Definition> {
        vec![
            EVENTS,
            EVENTS_DROPPED,
            EVENTS_DEFERRED,
            UNTRACKED_SOCKETS,
            TRACKED_SOCKETS,
            COLLECT_DURATION,
            BACKEND_INFO,
            BUILD_INFO,
        ]
    }

    fn update(&mut self, tick: &Tick<'_>) {
        let snapshot = tick.snapshot;
        // The kernel's counters only grow; max() keeps that true for the
        // exported counters even if a read came back short.
        self.events_total = self.events_total.max(snapshot.stats.events_total);
        let stats = &snapshot.stats;
        self.events_dropped = self.events_dropped.max(stats.events_dropped);
        self.events_deferred = self.events_deferred.max(stats.events_deferred);
        self.untracked_sockets = self.untracked_sockets.max(stats.map_full_drops);
        self.tracked_sockets = snapshot.live_sockets;
        self.collect_duration_secs = tick.collect_duration_secs;
    }

    fn families(&self) -> Vec<MetricFamily> {
        vec![
            family(&EVENTS, [sample(&[], self.events_total as f64)]),
            family(&EVENTS_DROPPED, [sample(&[], self.events_dropped as f64)]),
            family(&EVENTS_DEFERRED, [sample(&[], self.events_deferred as f64)]),
            family(&UNTRACKED_SOCKETS, [sample(&[], self.untracked_sockets as f64)]),
            family(&TRACKED_SOCKETS, [sample(&[], self.tracked_sockets as f64)]),
            family(&COLLECT_DURATION, [sample(&[], self.collect_duration_secs)]),
            family(&BACKEND_INFO, [sample(&[("backend", &self.backend)], 1.0)]),
            family(&BUILD_INFO, [sample(&[("version", self.version)], 1.0)]),
        ]
    }
}
