//! Load, attach and collect: the only code that touches aya. It loads the
//! eBPF object with the kernel offsets resolved from BTF, attaches the
//! programs of the chosen backend, and turns map entries and ring-buffer
//! records into model observations.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd},
    path::Path,
};

use aya::{
    maps::Array,
    maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FExit, KProbe, ProgramError, RawTracePoint},
    Ebpf, EbpfLoader,
};
use log::{debug, warn};
use thiserror::Error;
use tokio::io::{unix::AsyncFd, Interest};
use tracer_common::{flags, role, stat, ClosedSock, HealthClock, SockRecord};

use crate::{
    addr, bpf_batch,
    btf::{Btf, BtfError},
    byte_table::ByteTable,
    health::Sampler,
    model::{Counters, KernelRole, SocketObs, Tuple},
    probes::{self, Backend, HookKind, Probe, BACKEND_ORDER, PROBES},
};

/// The compiled eBPF object, embedded at build time.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));
/// The same programs without the byte table, for kernels without BPF
/// compare-and-swap (before 5.12).
static EBPF_OBJECT_LEGACY: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-legacy"));

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("tracer needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN) to load eBPF programs: run it with sudo")]
    NotPrivileged,
    #[error("this kernel has no BTF ({0} is missing): tracer needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")]
    NoBtf(String),
    #[error("cannot use the kernel's BTF: {0}")]
    Btf(#[from] BtfError),
    #[error("the {backend} backend cannot run on this kernel: {reason}")]
    BackendUnavailable { backend: &'static str, reason: String },
    #[error("no attach backend works on this kernel: {0}")]
    NoBackend(String),
    #[error("loading the eBPF programs failed: {0}")]
    Load(String),
    #[error("attaching {program} to {hook} failed: {reason}")]
    Attach { program: &'static str, hook: &'static str, reason: String },
}

/// Whether this process has what loading eBPF programs needs.
fn privileged() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return false };
    let Some(caps) =
        status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    else {
        return false;
    };
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

/// Errors of the kernel that say "you lack privileges".
fn is_permission_error(text: &str) -> bool {
    text.contains("Operation not permitted") || text.contains("Permission denied")
}

/// Kernel counters of the tracer itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub events_total: u64,
    pub events_dropped: u64,
    pub map_full_drops: u64,
}

/// Attached programs and their maps.
pub struct Collector {
    ebpf: Ebpf,
    closed: AsyncFd<RingBuf<MapData>>,
    logger: Option<AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>>,
    backend: Backend,
    /// The hot path's byte counters, mapped (not in the object for kernels
    /// without BPF compare-and-swap).
    bytes: Option<ByteTable>,
    /// The TCP health pass over `SOCKETS` (kernel 5.13+), if it runs here.
    sampler: Option<Sampler>,
}

/// `CLOCK_MONOTONIC` in ns: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Loads and attaches one program; a kernel refusal comes back as text.
fn attach_probe(ebpf: &mut Ebpf, btf: &aya::Btf, probe: &Probe) -> Result<(), String> {
    let program = ebpf.program_mut(probe.program).ok_or("program missing from the eBPF object")?;
    let refused = |e: ProgramError| {
        let text = format!("{e:#}");
        let text = text.trim_end_matches(". Verifier output: ").trim_end().to_owned();
        if is_permission_error(&text) {
            format!("refused by the kernel ({text})")
        } else {
            text
        }
    };
    match probe.kind {
        HookKind::TpBtf => {
            let program: &mut BtfTracePoint = program.try_into().map_err(refused)?;
            program.load(probe.hook, btf).map_err(refused)?;
            program.attach().map_err(refused)?;
        }
        HookKind::FExit => {
            let program: &mut FExit = program.try_into().map_err(refused)?;
            program.load(probe.hook, btf).map_err(refused)?;
            program.attach().map_err(refused)?;
        }
        HookKind::KProbe | HookKind::KRetProbe => {
            let program: &mut KProbe = program.try_into().map_err(refused)?;
            program.load().map_err(refused)?;
            program.attach(probe.hook, 0).map_err(refused)?;
        }
    }
    Ok(())
}

/// Loads the TCP health pass (run on demand, never attached).
fn load_sampler(ebpf: &mut Ebpf) -> Result<Sampler, String> {
    let program = ebpf.program_mut("sample_sockets").ok_or("program missing from the eBPF object")?;
    let program: &mut RawTracePoint = program.try_into().map_err(|e| format!("{e:#}"))?;
    program.load().map_err(|e| format!("loading it: {e:#}"))?;
    let fd = program.fd().map_err(|e| format!("{e:#}"))?.as_fd().try_clone_to_owned().map_err(|e| e.to_string())?;
    Ok(Sampler::new(fd))
}

/// Unloads (and so detaches) a program if it was loaded.
fn unload_probe(ebpf: &mut Ebpf, probe: &Probe) {
    if let Some(program) = ebpf.program_mut(probe.program) {
        let result = match probe.kind {
            HookKind::TpBtf => <&mut BtfTracePoint>::try_from(program).map(|p| p.unload()),
            HookKind::FExit => <&mut FExit>::try_from(program).map(|p| p.unload()),
            HookKind::KProbe | HookKind::KRetProbe => <&mut KProbe>::try_from(program).map(|p| p.unload()),
        };
        if let Ok(Err(e)) = result {
            debug!("unloading {}: {e}", probe.program);
        }
    }
}

/// Attaches every program in `probes` (one backend's), or none of them.
fn attach_backend(ebpf: &mut Ebpf, aya_btf: &aya::Btf, probes: &[&Probe]) -> Result<(), String> {
    for (done, probe) in probes.iter().enumerate() {
        if let Err(reason) = attach_probe(ebpf, aya_btf, probe) {
            for attached in &probes[..=done] {
                unload_probe(ebpf, attached);
            }
            return Err(format!("{} on {}: {reason}", probe.kind.as_str(), probe.hook));
        }
    }
    Ok(())
}

/// What loading needs from the kernel's BTF, read with our small reader:
/// the struct offsets, and per backend either its programs that fit this
/// kernel or why it cannot run. Dropped before aya parses the BTF again,
/// so the two parses never hold memory at the same time.
struct Plan {
    offsets: tracer_common::KernelOffsets,
    /// Load `tracer` (with the byte table), not `tracer-legacy`.
    byte_table: bool,
    backends: Vec<(Backend, Result<Vec<&'static Probe>, String>)>,
}

impl Plan {
    fn read(btf_path: &Path, candidates: &[Backend]) -> Result<Self, LoadError> {
        if !btf_path.exists() {
            return Err(LoadError::NoBtf(btf_path.display().to_string()));
        }
        let btf = Btf::from_file(btf_path)?;
        let offsets = probes::resolve_offsets(&btf)?;
        debug!("kernel offsets: {offsets:?}");
        let backends = candidates
            .iter()
            .map(|&backend| {
                let programs = match probes::backend_blocker(backend, &btf) {
                    Some(reason) => Err(reason),
                    None => Ok(probes::backend_probes(backend, &btf)),
                };
                (backend, programs)
            })
            .collect();
        Ok(Plan { offsets, byte_table: probes::byte_table_status().0, backends })
    }
}

/// Parses the kernel's BTF for aya and loads the eBPF object with this
/// kernel's offsets.
fn load_object(btf_path: &Path, plan: &Plan) -> Result<(Ebpf, aya::Btf), LoadError> {
    let aya_btf = aya::Btf::parse_file(btf_path, aya::Endianness::default())
        .map_err(|e| LoadError::Load(format!("parsing {}: {e}", btf_path.display())))?;
    let ebpf = EbpfLoader::new()
        .btf(Some(&aya_btf))
        .override_global("OFFSETS", &plan.offsets, true)
        .load(if plan.byte_table { EBPF_OBJECT } else { EBPF_OBJECT_LEGACY })
        .map_err(|e| {
            let text = format!("{e:#}");
            if is_permission_error(&text) {
                LoadError::NotPrivileged
            } else {
                LoadError::Load(text)
            }
        })?;
    Ok((ebpf, aya_btf))
}

/// A backend and whether it loaded and attached (or why not).
pub type BackendTrial = (Backend, Result<(), String>);

/// Tries every backend for real (load and attach, then detach): what
/// `doctor` reports. Needs privileges.
pub fn trial_backends(btf_path: &Path) -> Result<Vec<BackendTrial>, LoadError> {
    if !privileged() {
        return Err(LoadError::NotPrivileged);
    }
    let plan = Plan::read(btf_path, BACKEND_ORDER)?;
    let (mut ebpf, aya_btf) = load_object(btf_path, &plan)?;
    let mut results = Vec::new();
    for (backend, programs) in &plan.backends {
        let result = match programs {
            Err(reason) => Err(reason.clone()),
            Ok(programs) => attach_backend(&mut ebpf, &aya_btf, programs).map(|()| {
                for probe in programs {
                    unload_probe(&mut ebpf, probe);
                }
            }),
        };
        results.push((*backend, result));
    }
    Ok(results)
}

impl Collector {
    /// Loads and attaches: the backend asked for, or the cheapest that
    /// works, falling back when the kernel refuses one. Needs a tokio
    /// runtime (ring buffers are polled).
    pub fn start(requested: Option<Backend>, btf_path: &Path) -> Result<Self, LoadError> {
        if !privileged() {
            return Err(LoadError::NotPrivileged);
        }
        let candidates: Vec<Backend> = match requested {
            Some(backend) => vec![backend],
            None => BACKEND_ORDER.to_vec(),
        };
        let plan = Plan::read(btf_path, &candidates)?;
        let (mut ebpf, aya_btf) = load_object(btf_path, &plan)?;

        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            // SAFETY: the logger owns its ring buffer fd and keeps it open
            // while the AsyncFd owns the logger.
            Ok(logger) => unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }.ok(),
            Err(e) => {
                debug!("eBPF logging unavailable: {e}");
                None
            }
        };

        let mut reasons = Vec::new();
        let mut chosen = None;
        for (backend, programs) in &plan.backends {
            let attempt = match programs {
                Err(reason) => Err(reason.clone()),
                Ok(programs) => attach_backend(&mut ebpf, &aya_btf, programs),
            };
            match attempt {
                Ok(()) => {
                    chosen = Some(*backend);
                    break;
                }
                Err(reason) => {
                    debug!("backend {} cannot run: {reason}", backend.as_str());
                    reasons.push((*backend, reason));
                }
            }
        }
        let backend = match (chosen, requested) {
            (Some(backend), _) => backend,
            (None, Some(backend)) => {
                let reason = reasons.pop().map(|(_, r)| r).unwrap_or_default();
                return Err(LoadError::BackendUnavailable { backend: backend.as_str(), reason });
            }
            (None, None) => {
                let all: Vec<String> = reasons.iter().map(|(b, r)| format!("{}: {r}", b.as_str())).collect();
                return Err(LoadError::NoBackend(all.join("; ")));
            }
        };

        for probe in PROBES.iter().filter(|p| p.backend.is_none()) {
            if let Err(reason) = attach_probe(&mut ebpf, &aya_btf, probe) {
                if probe.required {
                    return Err(LoadError::Attach { program: probe.program, hook: probe.hook, reason });
                }
                warn!("{} not attached ({}): {reason}", probe.hook, probe.purpose);
            }
        }
        let sampler = match load_sampler(&mut ebpf) {
            Ok(sampler) => Some(sampler),
            Err(reason) => {
                warn!("TCP health sampling unavailable (RTT, queues, delivery rate): {reason}");
                None
            }
        };
        drop(aya_btf);

        let bytes = match (plan.byte_table, ebpf.map("BYTES")) {
            (false, _) => None,
            (true, Some(Map::Array(data))) => Some(
                ByteTable::map(data.fd().as_fd().as_raw_fd())
                    .map_err(|e| LoadError::Load(format!("mapping map BYTES: {e}")))?,
            ),
            _ => return Err(LoadError::Load("map BYTES missing".into())),
        };
        let closed_map = ebpf.take_map("CLOSED").ok_or_else(|| LoadError::Load("map CLOSED missing".into()))?;
        let closed = RingBuf::try_from(closed_map).map_err(|e| LoadError::Load(format!("map CLOSED: {e}")))?;
        // SAFETY: the ring buffer owns its map fd and keeps it open while the
        // AsyncFd owns it.
        let closed = unsafe { AsyncFd::register_with_interest(closed, Interest::READABLE) }
            .map_err(|e| LoadError::Load(format!("polling map CLOSED: {e}")))?;
        Ok(Collector { ebpf, closed, logger, backend, bytes, sampler })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether the TCP health pass runs here.
    pub fn sampling(&self) -> bool {
        self.sampler.is_some()
    }

    /// Runs the TCP health pass: every tracked socket's record gets a
    /// fresh sample. Returns the clocks it noted at the end of the pass.
    pub fn sample_health(&self) -> Option<HealthClock> {
        let sampler = self.sampler.as_ref()?;
        if let Err(e) = sampler.run() {
            debug!("TCP health pass failed: {e}");
            return None;
        }
        let array = Array::<_, HealthClock>::try_from(self.ebpf.map("HEALTH_CLOCK")?).ok()?;
        array.get(&0, 0).ok()
    }

    /// Waits until destroyed-socket records (or eBPF log lines) are ready.
    pub async fn wait_events(&self) -> io::Result<()> {
        match &self.logger {
            Some(logger) => {
                tokio::select! {
                    guard = self.closed.readable() => { guard?.clear_ready(); }
                    guard = logger.readable() => { guard?.clear_ready(); }
                }
            }
            None => self.closed.readable().await?.clear_ready(),
        }
        Ok(())
    }

    /// Takes every destroyed-socket record waiting in the ring buffer.
    pub fn drain_closed(&mut self) -> Vec<(SocketObs, u64)> {
        if let Some(logger) = &mut self.logger {
            logger.get_mut().flush();
        }
        let ring = self.closed.get_mut();
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<ClosedSock>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole `ClosedSock` (checked size);
            // read unaligned since ring items are only 8-byte aligned.
            let closed: ClosedSock = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const ClosedSock) };
            out.push((observe(closed.sock, &closed.record), closed.destroyed_ns));
        }
        out
    }

    /// Every socket the kernel side tracks now, with its byte slots' counts
    /// added. The slots are read first: a socket destroyed in between is
    /// then missing from the table read (its final record comes through the
    /// ring buffer), never seen with its slots already given back.
    pub fn live(&self) -> Vec<SocketObs> {
        if let Some(clock) = self.sample_health() {
            debug!("health pass {}: {} sampled so far", clock.passes, clock.sampled);
        }
        let slots = self.bytes.as_ref().map(ByteTable::read_and_sweep).unwrap_or_default();
        let with_slots = |id: u64, record: &SockRecord| {
            let mut record = *record;
            if let Some(bytes) = slots.get(&(id, record.first_seen_ns)) {
                record.tx_bytes += bytes.tx;
                record.rx_bytes += bytes.rx;
            }
            observe(id, &record)
        };
        let Some(map) = self.ebpf.map("SOCKETS") else { return Vec::new() };
        if let Map::HashMap(data) = map {
            match bpf_batch::lookup_all::<u64, SockRecord>(data.fd().as_fd().as_raw_fd(), 2048) {
                Ok(entries) => return entries.iter().map(|(id, record)| with_slots(*id, record)).collect(),
                Err(e) => debug!("batch lookup unavailable ({e}); reading the socket table key by key"),
            }
        }
        let Ok(sockets) = BpfHashMap::<_, u64, SockRecord>::try_from(map) else { return Vec::new() };
        // Entries removed while iterating end the walk early or are skipped;
        // their final counts come through the ring buffer.
        sockets.iter().filter_map(Result::ok).map(|(id, record)| with_slots(id, &record)).collect()
    }

    pub fn stats(&self) -> Stats {
        let Some(map) = self.ebpf.map("STATS") else { return Stats::default() };
        let Ok(array) = PerCpuArray::<_, u64>::try_from(map) else { return Stats::default() };
        let sum = |index: u32| array.get(&index, 0).map(|values| values.iter().sum()).unwrap_or(0);
        Stats {
            events_total: sum(stat::EVENTS),
            events_dropped: sum(stat::EVENTS_DROPPED),
            map_full_drops: sum(stat::MAP_FULL),
        }
    }
}

/// Turns a kernel record into a model observation.
pub fn observe(id: u64, record: &SockRecord) -> SocketObs {
    let has = |bit: u32| record.flags & bit != 0;
    let local = SocketAddr::new(addr::from_kernel(record.family, &record.local_addr), record.local_port);
    let remote = SocketAddr::new(addr::from_kernel(record.family, &record.remote_addr), record.remote_port);
    SocketObs {
        id,
        pid: record.pid,
        thread_comm: record.comm,
        tuple: Tuple { netns: record.netns, local, remote },
        role: match record.role {
            role::CLIENT => KernelRole::Client,
            role::SERVER => KernelRole::Server,
            role::LISTENER => KernelRole::Listener,
            _ => KernelRole::Unknown,
        },
        state: record.state,
        state_since_ns: has(flags::STATE_TIMED).then_some(record.state_since_ns),
        first_seen_ns: record.first_seen_ns,
        counters: Counters {
            tx_bytes: record.tx_bytes,
            rx_bytes: record.rx_bytes,
            retransmits: u64::from(record.retrans_total.saturating_sub(record.retrans_base)),
            segments_out: u64::from(record.segs_out.saturating_sub(record.segs_out_base)),
            resets_sent: u64::from(record.resets_sent),
            resets_received: u64::from(record.resets_received),
            opened: u64::from(has(flags::OPENED)),
            closed: 0,
            failed_connects: u64::from(has(flags::FAILED_CONNECT)),
        },
        opened: has(flags::OPENED),
        failed_connect: has(flags::FAILED_CONNECT),
        was_established: has(flags::WAS_ESTABLISHED),
    }
}
