//! Collect: the only code that reads maps and events. It takes over what
//! [`crate::load`] attached, reads the socket table (in batches,
//! [`crate::sys::bpf`]) with the byte table's counts ([`byte_table`]),
//! drains destroyed-socket records from the ring buffer, and turns kernel
//! records into model observations ([`observe`]). [`session`] feeds the
//! model with them each tick, with what /proc adds ([`procfs`]), and each
//! process's cgroup and container ([`cgroup`], named by [`runtime`]).

mod byte_table;
mod cgroup;
mod closed;
mod health;
mod observe;
mod procfs;
mod runtime;
pub(crate) mod session;

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, PerCpuArray, RingBuf},
    Ebpf,
};
use log::debug;
use tokio::io::{unix::AsyncFd, Interest};
use tracer_common::{stat, ClosedSock, HealthClock, OverflowKey, SockRecord};

use self::{byte_table::ByteTable, closed::ClosedRing, health::Sampler, observe::observe};
use crate::{
    load::{self, probes::Backend, LoadError},
    model::{HealthSupport, KernelStats, Model, SocketObs},
    sys,
};

/// Attached programs and their maps.
pub(crate) struct Collector {
    ebpf: Ebpf,
    /// The destroyed-socket ring buffer, drained by its own thread.
    closed: ClosedRing,
    logger: Option<AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>>,
    backend: Backend,
    /// The hot path's byte counters, mapped (not in the object for kernels
    /// without BPF compare-and-swap).
    bytes: Option<ByteTable>,
    /// The TCP health pass over the socket table, if it runs here.
    sampler: Option<Sampler>,
    /// What TCP health the kernel side provides here.
    health: HealthSupport,
}

impl Collector {
    /// Takes over what [`load::attach`] attached and opens the maps. Needs
    /// a tokio runtime (ring buffers are polled); needs no capability.
    pub(crate) fn start(attached: load::Attached) -> Result<Self, LoadError> {
        let load::Attached { mut ebpf, backend, byte_table, byte_slots, sampler, health } = attached;
        let sampler = sampler.map(Sampler::new);
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            // SAFETY: the logger owns its ring buffer fd and keeps it open
            // while the AsyncFd owns the logger.
            Ok(logger) => unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }.ok(),
            Err(e) => {
                debug!("eBPF logging unavailable: {e}");
                None
            }
        };
        let bytes = match (byte_table, ebpf.map("BYTES")) {
            (false, _) => None,
            (true, Some(Map::Array(data))) => Some(
                ByteTable::map(data.fd().as_fd().as_raw_fd(), byte_slots)
                    .map_err(|e| LoadError::Load(format!("mapping map BYTES: {e}")))?,
            ),
            _ => return Err(LoadError::Load("map BYTES missing".into())),
        };
        let closed_map = ebpf.take_map("CLOSED").ok_or_else(|| LoadError::Load("map CLOSED missing".into()))?;
        let closed = RingBuf::try_from(closed_map).map_err(|e| LoadError::Load(format!("map CLOSED: {e}")))?;
        let closed = ClosedRing::start(closed).map_err(|e| LoadError::Load(format!("draining map CLOSED: {e}")))?;
        Ok(Collector { ebpf, closed, logger, backend, bytes, sampler, health })
    }

    pub(crate) fn backend(&self) -> Backend {
        self.backend
    }

    /// What TCP health the kernel side provides here.
    pub(crate) fn health_support(&self) -> HealthSupport {
        self.health
    }

    /// Runs the TCP health pass: every tracked socket's record gets a
    /// fresh sample. Returns the clocks it noted at the end of the pass.
    pub(crate) fn sample_health(&self) -> Option<HealthClock> {
        let sampler = self.sampler.as_ref()?;
        if let Err(e) = sampler.run() {
            debug!("TCP health pass failed: {e}");
            return None;
        }
        let array = Array::<_, HealthClock>::try_from(self.ebpf.map("HEALTH_CLOCK")?).ok()?;
        array.get(&0, 0).ok()
    }

    /// Waits until destroyed-socket records (or eBPF log lines) are ready.
    pub(crate) async fn wait_events(&self) -> io::Result<()> {
        match &self.logger {
            Some(logger) => {
                tokio::select! {
                    () = self.closed.ready() => {}
                    guard = logger.readable() => { guard?.clear_ready(); }
                }
            }
            None => self.closed.ready().await,
        }
        Ok(())
    }

    /// Hands every destroyed-socket record drained from the ring buffer to
    /// `each`, with the clock it last read.
    pub(crate) fn drain_closed(&mut self, mut each: impl FnMut(SocketObs, u64)) {
        if let Some(logger) = &mut self.logger {
            logger.get_mut().flush();
        }
        for closed in self.closed.take() {
            each(observe(closed.sock, &closed.record), closed.last_clock_ns);
        }
    }

    /// Takes the final records that found the ring buffer full (kept in
    /// `OVERFLOW` by the kernel side instead of being lost).
    pub(crate) fn drain_overflow(&mut self) -> Vec<(SocketObs, u64)> {
        let Some(map) = self.ebpf.map_mut("OVERFLOW") else { return Vec::new() };
        let Ok(mut overflow) = BpfHashMap::<_, OverflowKey, ClosedSock>::try_from(map) else { return Vec::new() };
        let mut entries: Vec<(OverflowKey, ClosedSock)> = overflow.iter().filter_map(Result::ok).collect();
        // Several records of one address (reused under churn): oldest first.
        entries.sort_by_key(|(key, _)| key.first_seen_ns);
        let mut out = Vec::with_capacity(entries.len());
        for (key, closed) in entries {
            // Taken once: only a record this call removed is handed over.
            if overflow.remove(&key).is_ok() {
                out.push((observe(closed.sock, &closed.record), closed.last_clock_ns));
            }
        }
        out
    }

    /// Hands every socket the kernel side tracks now, with its bytes, to
    /// the model as it is read (one table read: `begin_live` ..
    /// `end_live`).
    pub(crate) fn read_live(&self, model: &mut Model) {
        if let (Some(table), Some(records @ Map::Array(_))) = (&self.bytes, self.ebpf.map("RECORDS")) {
            live_in_table(table, records, model);
            return;
        }
        let Some(map) = self.ebpf.map("SOCKETS") else {
            model.begin_live();
            model.end_live();
            return;
        };
        if let Map::HashMap(data) = map {
            match sys::bpf::lookup_all::<u64, SockRecord>(data.fd().as_fd().as_raw_fd(), 2048) {
                Ok(entries) => {
                    model.begin_live();
                    for (id, record) in &entries {
                        model.observe_live(&observe(*id, record));
                    }
                    model.end_live();
                    return;
                }
                Err(e) => debug!("batch lookup unavailable ({e}); reading the socket table key by key"),
            }
        }
        model.begin_live();
        if let Ok(sockets) = BpfHashMap::<_, u64, SockRecord>::try_from(map) {
            // Entries removed while iterating end the walk early or are
            // skipped; their final counts come through the ring buffer.
            for (id, record) in sockets.iter().filter_map(Result::ok) {
                model.observe_live(&observe(id, &record));
            }
        }
        model.end_live();
    }

    pub(crate) fn stats(&self) -> KernelStats {
        let Some(map) = self.ebpf.map("STATS") else { return KernelStats::default() };
        let Ok(array) = PerCpuArray::<_, u64>::try_from(map) else { return KernelStats::default() };
        let sum = |index: u32| array.get(&index, 0).map(|values| values.iter().sum()).unwrap_or(0);
        KernelStats {
            events_total: sum(stat::EVENTS),
            events_dropped: sum(stat::EVENTS_DROPPED),
            events_deferred: sum(stat::EVENTS_DEFERRED),
            map_full_drops: sum(stat::MAP_FULL),
        }
    }
}

/// Most records read per syscall from `RECORDS` (about 50 KB).
const RECORDS_PER_READ: usize = 256;

/// Untaken slots worth reading between two taken ones to save a syscall:
/// a syscall costs about as much as copying a few records.
const GAP_READ: u32 = 4;

/// Slots of `RECORDS` mapped at a time (800 KB): the records are read
/// through a window onto the array, mapped and unmapped in turn, so the
/// process never has more than one window of the kernel's table in its
/// resident memory.
const WINDOW_SLOTS: u32 = 4096;

/// The sockets of the main object's table: the taken slots of `BYTES` (read
/// through the mapping, which also sweeps tombstones), and the records at
/// their indexes in `RECORDS`, read in place through a window onto the
/// array (or, where it cannot be mapped, with one batch lookup per run of
/// nearby taken slots). A record whose birth time is not its slot's was
/// being created (or replaced) while the two were read: left for the next
/// read.
fn live_in_table(table: &ByteTable, records: &Map, model: &mut Model) {
    model.begin_live();
    let Map::Array(data) = records else {
        model.end_live();
        return;
    };
    let fd = data.fd().as_fd().as_raw_fd();
    // Only where a window cannot be mapped.
    let mut batched: Option<Batched> = None;
    // Window by window, from the last (the sweep goes backwards): no list
    // of every taken slot is ever held.
    let window = WINDOW_SLOTS as usize;
    let mut in_window = Vec::with_capacity(window);
    for start in (0..table.slots()).step_by(window).rev() {
        in_window.clear();
        table.sweep_range(start..start + window, &mut in_window);
        if in_window.is_empty() {
            continue;
        }
        in_window.reverse();
        if read_window(fd, &in_window, model).is_err() {
            batched.get_or_insert_with(|| Batched::new(fd)).read(records, &in_window, model);
        }
    }
    model.end_live();
}

/// A taken slot's record, with the slot's bytes added, if it is the slot's
/// (same birth time).
fn slot_record(slot: &byte_table::TakenSlot, record: &SockRecord) -> Option<SockRecord> {
    if record.first_seen_ns != slot.born_ns {
        return None;
    }
    let mut record = *record;
    record.tx_bytes += slot.bytes.tx;
    record.rx_bytes += slot.bytes.rx;
    Some(record)
}

/// Reads the records of `slots` (all in one window of `RECORDS`) through a
/// read-only mapping of the pages they span.
fn read_window(fd: std::os::fd::RawFd, slots: &[byte_table::TakenSlot], model: &mut Model) -> io::Result<()> {
    const RECORD: usize = std::mem::size_of::<SockRecord>();
    let (Some(first), Some(last)) = (slots.first(), slots.last()) else { return Ok(()) };
    let page = sys::page_size();
    let start = first.index as usize * RECORD / page * page;
    let end = ((last.index as usize + 1) * RECORD).div_ceil(page) * page;
    let window = sys::mmap::Mapping::shared_read_only(fd, start, end - start)?;
    for slot in slots {
        let at = slot.index as usize * RECORD - start;
        if at + RECORD > window.len() {
            continue;
        }
        // SAFETY: within the mapping (checked above); array values are
        // 8-byte aligned (page-aligned base, 8-byte multiple value size);
        // the kernel may write the record meanwhile, so it is copied once
        // with a volatile read and judged by its birth time.
        let record = unsafe { std::ptr::read_volatile(window.as_ptr().add(at).cast::<SockRecord>()) };
        if let Some(record) = slot_record(slot, &record) {
            model.observe_live(&observe(slot.sock, &record));
        }
    }
    Ok(())
}

/// Batch lookups of `RECORDS`, where the array cannot be mapped.
struct Batched {
    ranges: io::Result<sys::bpf::ArrayRanges<SockRecord>>,
    buffer: Vec<SockRecord>,
}

impl Batched {
    fn new(fd: std::os::fd::RawFd) -> Self {
        Batched { ranges: sys::bpf::ArrayRanges::<SockRecord>::new(fd, RECORDS_PER_READ), buffer: Vec::new() }
    }

    /// One batch lookup per run of nearby taken slots.
    fn read(&mut self, records: &Map, slots: &[byte_table::TakenSlot], model: &mut Model) {
        if self.buffer.is_empty() {
            if let Err(e) = &self.ranges {
                debug!("batch reads of RECORDS unavailable ({e}); reading them one by one");
            }
            self.buffer = vec![SockRecord::default(); RECORDS_PER_READ];
        }
        let buffer = &mut self.buffer;
        let mut next = 0;
        while next < slots.len() {
            // A run: taken slots at most GAP_READ apart, within one read.
            let start = slots[next].index;
            let mut end = next + 1;
            while end < slots.len()
                && slots[end].index - slots[end - 1].index <= GAP_READ + 1
                && ((slots[end].index - start) as usize) < RECORDS_PER_READ
            {
                end += 1;
            }
            let span = (slots[end - 1].index - start) as usize + 1;
            let batch = self.ranges.as_mut().map_err(|e| io::Error::new(e.kind(), e.to_string()));
            let read = match batch.and_then(|ranges| ranges.read(start, &mut buffer[..span])) {
                Ok(read) => read,
                Err(_) => read_one_by_one(records, start, &mut buffer[..span]),
            };
            for slot in &slots[next..end] {
                let Some(record) = buffer[..read].get((slot.index - start) as usize) else { continue };
                if let Some(record) = slot_record(slot, record) {
                    model.observe_live(&observe(slot.sock, &record));
                }
            }
            next = end;
        }
    }
}

/// The fallback of [`live_in_table`] without batch reads.
fn read_one_by_one(records: &Map, start: u32, buffer: &mut [SockRecord]) -> usize {
    let Ok(array) = Array::<_, SockRecord>::try_from(records) else { return 0 };
    let mut read = 0;
    for (i, value) in buffer.iter_mut().enumerate() {
        match array.get(&(start + i as u32), 0) {
            Ok(record) => {
                *value = record;
                read = i + 1;
            }
            Err(_) => break,
        }
    }
    read
}
