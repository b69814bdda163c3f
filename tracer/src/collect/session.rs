//! One tracing session: the collector feeds the model at each tick
//! (destroyed sockets, the live table, owners from /proc, process names and
//! containers, TIME_WAIT counts). The tick driver of the commands
//! (`cmd::driver`) owns one.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::{cgroup::Identities, health::HzMeter, procfs, runtime::Runtimes, Collector};
use crate::{
    load::{probes::Backend, Attached, LoadError},
    model::{
        container::{Container, Identity},
        filter::Filter,
        KernelStats, Model, Tuple,
    },
    sys::{monotonic_ns, release_free_memory},
};

pub(crate) struct Session {
    collector: Collector,
    model: Model,
    proc_root: PathBuf,
    interval: Duration,
    started_at: SystemTime,
    /// Unowned sockets already looked up in /proc without success.
    owner_misses: HashSet<Tuple>,
    stats: KernelStats,
    hz: HzMeter,
    /// Cgroup identities per process lifetime.
    identities: Identities,
    /// Container names from the runtimes, asked off the tick.
    runtimes: Runtimes,
}

impl Session {
    /// Takes over the attached programs, then loads the sockets that
    /// already exist.
    pub(crate) fn start(
        attached: Attached,
        filter: Filter,
        interval: Duration,
        window: Duration,
    ) -> Result<Self, LoadError> {
        let collector = Collector::start(attached)?;
        let started_at = SystemTime::now();
        let start_ns = monotonic_ns();
        let max_samples = (window.as_secs_f64() / interval.as_secs_f64()).ceil() as usize + 2;
        let proc_root = PathBuf::from("/proc");
        let mut model = Model::new(filter, start_ns, max_samples);
        model.set_health_support(collector.health_support());
        model.load_preexisting(procfs::scan_sockets(&proc_root));
        release_free_memory();
        Ok(Session {
            collector,
            model,
            proc_root,
            interval,
            started_at,
            owner_misses: HashSet::new(),
            stats: KernelStats::default(),
            hz: HzMeter::default(),
            identities: Identities::default(),
            runtimes: Runtimes::start(),
        })
    }

    pub(crate) fn backend(&self) -> Backend {
        self.collector.backend()
    }

    pub(crate) fn model(&self) -> &Model {
        &self.model
    }

    pub(crate) fn stats(&self) -> KernelStats {
        self.stats
    }

    pub(crate) fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// Waits for destroyed-socket records and hands them to the model, so
    /// the ring buffer never fills between ticks.
    pub(crate) async fn pump_events(&mut self) {
        if self.collector.wait_events().await.is_ok() {
            self.take_closed();
        }
    }

    /// Final records: the ring buffer's, then those that found it full and
    /// wait in the overflow map.
    fn take_closed(&mut self) {
        let model = &mut self.model;
        self.collector.drain_closed(|obs, destroyed_ns| model.socket_closed(obs, destroyed_ns));
        for (obs, destroyed_ns) in self.collector.drain_overflow() {
            self.model.socket_closed(obs, destroyed_ns);
        }
    }

    /// Ends an interval: reads everything and samples the model.
    pub(crate) fn tick(&mut self) {
        // Most accepted sockets name their owner with their first receive;
        // only those unowned for a whole interval are worth a /proc scan.
        let seen_by = monotonic_ns().saturating_sub(self.interval.as_nanos() as u64);
        self.collect(seen_by);
    }

    /// The last tick of a trace: every unowned socket is looked up, however
    /// young, so the report names all owners it can.
    pub(crate) fn finish(&mut self) {
        self.collect(u64::MAX);
    }

    fn collect(&mut self, unowned_seen_by_ns: u64) {
        let began = monotonic_ns();
        self.take_closed();
        // Fresh RTT, backlogs and chrono counters in every record, just
        // before the table is read.
        if let Some(clock) = self.collector.sample_health() {
            self.hz.observe(clock);
            self.model.set_hz(self.hz.hz());
        }
        let health_ns = monotonic_ns();
        self.collector.read_live(&mut self.model);
        // The interval ends when the counters were read, not after the
        // /proc scans below (slow on a busy host): rates divide by it.
        let read_ns = monotonic_ns();
        // Sockets destroyed while the table was read: their records were
        // submitted before their entries went, so they are in the ring (or,
        // if it was full, the overflow map) now.
        self.take_closed();
        self.model.forget_vanished();
        let owners_ns = monotonic_ns();
        self.resolve_owners(unowned_seen_by_ns);
        let names_ns = monotonic_ns();
        let pids = self.model.pids();
        for &pid in &pids {
            if let Some(comm) = procfs::read_comm(&self.proc_root, pid) {
                self.model.set_comm(pid, comm);
            }
            if let Some(identity) = self.identity(pid) {
                self.model.set_identity(pid, identity);
            }
        }
        self.identities.retain(&pids);
        self.model.set_host_time_wait(procfs::time_wait_count(&self.proc_root));
        let stats = self.collector.stats();
        if stats.map_full_drops > self.stats.map_full_drops {
            log::warn!(
                "{} sockets not tracked so far: the socket table is full (raise --max-sockets); the tracked ones stay exact",
                stats.map_full_drops
            );
        }
        if stats.events_dropped > self.stats.events_dropped {
            log::warn!(
                "the final counts of {} destroyed sockets were lost (ring buffer and overflow map full)",
                stats.events_dropped
            );
        }
        self.stats = stats;
        let sample_ns = monotonic_ns();
        self.model.sample(read_ns);
        release_free_memory();
        let ms = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e6;
        let end = monotonic_ns();
        log::debug!(
            "collection: {:.1} ms (health pass {:.1}, table {:.1}, owners {:.1}, names {:.1}, sample {:.1}) over {} sockets",
            ms(began, end),
            ms(began, health_ns),
            ms(health_ns, owners_ns),
            ms(owners_ns, names_ns),
            ms(names_ns, sample_ns),
            ms(sample_ns, end),
            self.model.live_sockets()
        );
    }

    /// The cgroup identity of `pid`, with its container's names once its
    /// runtime answered (never waits for one).
    fn identity(&mut self, pid: u32) -> Option<Arc<Identity>> {
        let identity = self.identities.lookup(&self.proc_root, pid)?;
        let Some(container) = identity.container.as_ref().filter(|c| unnamed(c)) else { return Some(identity) };
        let Some(names) = self.runtimes.names(container) else { return Some(identity) };
        let named = Arc::new(Identity { container: Some(names.apply(container)), ..(*identity).clone() });
        self.identities.update(pid, named.clone());
        Some(named)
    }

    /// Accepted sockets that never moved a byte have no owner in their
    /// record: find who holds them, as `ss -p` does.
    fn resolve_owners(&mut self, seen_by_ns: u64) {
        let unowned: HashSet<Tuple> = self.model.unowned(seen_by_ns).into_iter().collect();
        self.owner_misses.retain(|t| unowned.contains(t));
        if self.owner_misses.capacity() > 4 * self.owner_misses.len() + 1024 {
            self.owner_misses.shrink_to(2 * self.owner_misses.len());
        }
        if unowned.iter().all(|t| self.owner_misses.contains(t)) {
            return;
        }
        let found: HashMap<Tuple, u32> = procfs::scan_sockets(&self.proc_root)
            .into_iter()
            .filter(|s| unowned.contains(&s.tuple))
            .filter_map(|s| Some((s.tuple, s.pid?)))
            .collect();
        self.model.assign_owners(&found);
        self.owner_misses.extend(unowned.into_iter().filter(|t| !found.contains_key(t)));
    }
}

/// A container no runtime has named yet.
fn unnamed(container: &Container) -> bool {
    container.name.is_none() && container.pod.as_ref().is_none_or(|p| p.name.is_none())
}
