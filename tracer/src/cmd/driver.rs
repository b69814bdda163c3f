//! The tick driver `trace` and `agent` share: it owns the tracing session,
//! ends an interval every `--interval` (the collector reads the kernel and
//! the model samples), keeps the ring buffer of destroyed sockets drained
//! between ticks, and builds the [`Snapshot`] (model views plus the
//! analysis' findings) that every output reads. A command only says what to
//! do after each tick and when to stop.

use std::{future::Future, path::Path, time::Duration};

use tokio::time::{interval_at, Instant, MissedTickBehavior};

use crate::{
    analysis::Thresholds,
    collect::session::Session,
    load::{
        self,
        kernel::{self, KERNEL_BTF},
        probes::Backend,
        Attached, LoadError,
    },
    model::filter::Filter,
    output::{Snapshot, SnapshotContext},
    sys::monotonic_ns,
};

/// Loads and attaches (the backend asked for, `None` for the cheapest that
/// works, with a socket table of `max_sockets`), then gives up every
/// capability the ticks no longer need. Call it on the main thread before
/// any other thread exists: capabilities are per thread, and threads
/// started later inherit the reduced set.
pub(crate) fn attach(backend: Option<Backend>, max_sockets: u32) -> Result<Attached, LoadError> {
    let attached = load::attach(backend, Path::new(KERNEL_BTF), max_sockets)?;
    kernel::drop_capabilities();
    Ok(attached)
}

/// What a driver traces and how.
pub(crate) struct DriverConfig {
    pub(crate) filter: Filter,
    pub(crate) thresholds: Thresholds,
    /// Between ticks.
    pub(crate) interval: Duration,
    /// History kept (the model drops older samples).
    pub(crate) window: Duration,
}

pub(crate) struct Driver {
    session: Session,
    thresholds: Thresholds,
    interval: Duration,
    started: Instant,
}

impl Driver {
    /// Takes over what [`attach`] attached and loads the sockets that
    /// already exist.
    pub(crate) fn start(attached: Attached, config: DriverConfig) -> Result<Self, LoadError> {
        let session = Session::start(attached, config.filter, config.interval, config.window)?;
        Ok(Driver { session, thresholds: config.thresholds, interval: config.interval, started: Instant::now() })
    }

    pub(crate) fn backend(&self) -> Backend {
        self.session.backend()
    }

    pub(crate) fn session(&self) -> &Session {
        &self.session
    }

    /// When the driver started (ticks are counted from here).
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// Ends an interval now.
    pub(crate) fn tick(&mut self) {
        self.session.tick();
    }

    /// The last tick of a trace (see `Session::finish`).
    pub(crate) fn finish(&mut self) {
        self.session.finish();
    }

    /// Ticks every interval until `stop` completes, draining destroyed
    /// sockets in between; after each tick calls `after_tick` with the
    /// driver and the instant the tick began. Returns what `stop` returned.
    pub(crate) async fn run<T>(
        &mut self,
        stop: impl Future<Output = T>,
        mut after_tick: impl FnMut(&Driver, Instant),
    ) -> T {
        let mut ticks = interval_at(self.started + self.interval, self.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    let began = Instant::now();
                    self.session.tick();
                    after_tick(self, began);
                }
                _ = self.session.pump_events() => {}
                stopped = &mut stop => return stopped,
            }
        }
    }

    /// The model's window as of the last tick, with its findings.
    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot::build(
            self.session.model(),
            &self.thresholds,
            SnapshotContext {
                started_at: self.session.started_at(),
                backend: self.backend().as_str(),
                stats: self.session.stats(),
                now_ns: monotonic_ns(),
            },
        )
    }
}
