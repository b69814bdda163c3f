//! Load and attach: the kernel's BTF is read ([`btf`]) for struct offsets
//! and hook prototypes, the table of programs ([`probes`]) says which
//! backend can run, facts about the kernel and this process come from
//! [`kernel`], and the eBPF object is loaded with aya and its programs
//! attached. The collector ([`crate::collect`]) takes over what is loaded.

pub(crate) mod btf;
pub(crate) mod health;
pub(crate) mod kernel;
pub(crate) mod probes;

use std::{
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use aya::{
    programs::{BtfTracePoint, FExit, Iter, KProbe, ProgramError, RawTracePoint},
    Ebpf, EbpfLoader,
};
use log::{debug, warn};
use thiserror::Error;

use self::health::HealthSupport;
use crate::sys;

use self::{
    btf::{Btf, BtfError},
    probes::{Backend, HookKind, Probe, BACKEND_ORDER, PROBES},
};

/// The compiled eBPF object, embedded at build time.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));
/// The same programs without the byte table, for kernels without BPF
/// compare-and-swap (before 5.12).
static EBPF_OBJECT_LEGACY: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-legacy"));

#[derive(Debug, Error)]
pub(crate) enum LoadError {
    #[error("cannot load eBPF programs: {0}")]
    NotPrivileged(String),
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

/// Errors of the kernel that say "you lack privileges".
fn is_permission_error(text: &str) -> bool {
    text.contains("Operation not permitted") || text.contains("Permission denied")
}

/// The loaded object with one backend's programs and the shared lifecycle
/// programs attached.
pub(crate) struct Attached {
    pub(crate) ebpf: Ebpf,
    pub(crate) backend: Backend,
    /// The object has the `BYTES` table (`tracer`, not `tracer-legacy`).
    pub(crate) byte_table: bool,
    /// Slots of the `BYTES` table, as sized at load.
    pub(crate) byte_slots: u32,
    /// The TCP health pass (`sample_sockets`), loaded to be run on demand,
    /// if it loads here (kernel 5.13+).
    pub(crate) sampler: Option<SamplerFd>,
    /// What TCP health the kernel side provides here.
    pub(crate) health: HealthSupport,
}

/// The TCP health pass as loaded: a raw tracepoint program run with
/// `BPF_PROG_TEST_RUN` (5.13+), or a map-element iterator's link (5.9+).
#[derive(Debug)]
pub(crate) enum SamplerFd {
    TestRun(OwnedFd),
    Iterator(OwnedFd),
}

/// `TRACER_RING_BYTES`: the size of the destroyed-socket ring buffer
/// (default `tracer_common::CLOSED_RING_BYTES`), a power of two of at
/// least a page. Small values make the ring overflow under churn, to check
/// that no count is lost when it does.
fn ring_bytes() -> Option<u32> {
    let value: u32 = std::env::var("TRACER_RING_BYTES").ok()?.parse().ok()?;
    (value >= 4096 && value.is_power_of_two()).then_some(value)
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
fn load_sampler(ebpf: &mut Ebpf, btf: &aya::Btf, byte_table: bool) -> Result<SamplerFd, String> {
    let test_run = (|| {
        let program = ebpf.program_mut("sample_sockets").ok_or("program missing from the eBPF object")?;
        let program: &mut RawTracePoint = program.try_into().map_err(|e| format!("{e:#}"))?;
        program.load().map_err(|e| format!("loading it: {e:#}"))?;
        program.fd().map_err(|e| format!("{e:#}"))?.as_fd().try_clone_to_owned().map_err(|e| e.to_string())
    })();
    let first = match test_run {
        Ok(fd) => return Ok(SamplerFd::TestRun(fd)),
        Err(reason) => reason,
    };
    debug!("TCP health pass by test run unavailable ({first}); trying the map iterator");
    let iterator = (|| {
        let program = ebpf.program_mut("sample_sockets_iter").ok_or("program missing from the eBPF object")?;
        let program: &mut Iter = program.try_into().map_err(|e| format!("{e:#}"))?;
        program.load("bpf_map_elem", btf).map_err(|e| format!("loading it: {e:#}"))?;
        let prog =
            program.fd().map_err(|e| format!("{e:#}"))?.as_fd().try_clone_to_owned().map_err(|e| e.to_string())?;
        let table = match ebpf.map("RECORDS") {
            Some(aya::maps::Map::Array(records)) if byte_table => records,
            _ => match ebpf.map("SOCKETS") {
                Some(aya::maps::Map::HashMap(sockets)) => sockets,
                _ => return Err("map SOCKETS missing".to_owned()),
            },
        };
        sys::bpf::map_iter_link(prog.as_fd(), table.fd().as_fd()).map_err(|e| format!("attaching it: {e}"))
    })();
    match iterator {
        Ok(link) => Ok(SamplerFd::Iterator(link)),
        Err(second) => Err(format!("{first}; as an iterator: {second}")),
    }
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
    /// Capacity of the socket table.
    max_sockets: u32,
    backends: Vec<(Backend, Result<Vec<&'static Probe>, String>)>,
}

impl Plan {
    fn read(btf_path: &Path, candidates: &[Backend], max_sockets: u32) -> Result<Self, LoadError> {
        if !btf_path.exists() {
            return Err(LoadError::NoBtf(btf_path.display().to_string()));
        }
        let btf = Btf::from_file(btf_path)?;
        let mut offsets = probes::resolve_offsets(&btf)?;
        let byte_table = probes::byte_table_status().0;
        // The open-addressing table gets twice the slots of the sockets it
        // is sized for: its probe sequences stay short, and it can place
        // every one of them.
        let slots_for = if byte_table { max_sockets.saturating_mul(2) } else { 1 };
        offsets.byte_slots_log2 = tracer_common::byte_table::slots_log2_for(slots_for);
        debug!("kernel offsets: {offsets:?}");
        let backends = probes::backend_programs(candidates, &btf);
        Ok(Plan { offsets, byte_table, max_sockets, backends })
    }
}

/// Parses the kernel's BTF for aya and loads the eBPF object with this
/// kernel's offsets.
fn load_object(btf_path: &Path, plan: &Plan) -> Result<(Ebpf, aya::Btf), LoadError> {
    let aya_btf = aya::Btf::parse_file(btf_path, aya::Endianness::default())
        .map_err(|e| LoadError::Load(format!("parsing {}: {e}", btf_path.display())))?;
    let mut loader = EbpfLoader::new();
    // Records live in `RECORDS` (main object) or in `SOCKETS` (legacy);
    // the other holds one entry.
    let slots = 1 << plan.offsets.byte_slots_log2;
    let (records, sockets) = if plan.byte_table { (slots, 1) } else { (1, plan.max_sockets) };
    loader
        .btf(Some(&aya_btf))
        .map_max_entries("SOCKETS", sockets)
        .map_max_entries("RECORDS", records)
        .map_max_entries("BYTES", slots);
    if let Some(bytes) = ring_bytes() {
        loader.map_max_entries("CLOSED", bytes);
    }
    let ebpf = loader
        .override_global("OFFSETS", &plan.offsets, true)
        .load(if plan.byte_table { EBPF_OBJECT } else { EBPF_OBJECT_LEGACY })
        .map_err(|e| {
            let text = format!("{e:#}");
            if is_permission_error(&text) {
                LoadError::NotPrivileged(format!(
                    "the kernel refused ({text}); loading needs CAP_BPF and CAP_PERFMON (kernel 5.8+) or \
                     CAP_SYS_ADMIN, and CAP_SYS_RESOURCE or an unlimited RLIMIT_MEMLOCK before 5.11"
                ))
            } else {
                LoadError::Load(text)
            }
        })?;
    Ok((ebpf, aya_btf))
}

/// A backend and whether it loaded and attached (or why not).
pub(crate) type BackendTrial = (Backend, Result<(), String>);

/// What [`walk_backends`] does with a backend that attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// Keep it attached and stop: tracing.
    KeepFirst,
    /// Detach it again and go on to the next: `doctor`.
    TryAll,
}

/// Tries the plan's backends in order, cheapest first: the one place that
/// decides which backend runs.
fn walk_backends(ebpf: &mut Ebpf, aya_btf: &aya::Btf, plan: &Plan, walk: Walk) -> Vec<BackendTrial> {
    let mut trials = Vec::new();
    for (backend, programs) in &plan.backends {
        let result = match programs {
            Err(reason) => Err(reason.clone()),
            Ok(programs) => attach_backend(ebpf, aya_btf, programs),
        };
        match (&result, walk) {
            (Ok(()), Walk::KeepFirst) => {
                trials.push((*backend, result));
                break;
            }
            (Ok(()), Walk::TryAll) => {
                for probe in programs.iter().flatten() {
                    unload_probe(ebpf, probe);
                }
            }
            (Err(reason), _) => debug!("backend {} cannot run: {reason}", backend.as_str()),
        }
        trials.push((*backend, result));
    }
    trials
}

/// What `doctor` learns by loading for real.
pub(crate) struct Trials {
    pub(crate) backends: Vec<BackendTrial>,
    /// Whether the TCP health pass loads, or why not.
    pub(crate) sampling: Result<(), String>,
}

/// Tries every backend for real (load and attach, then detach), and the
/// TCP health pass: what `doctor` reports. Needs privileges.
pub(crate) fn trial_backends(btf_path: &Path) -> Result<Trials, LoadError> {
    if let Some(blocker) = kernel::load_blocker() {
        return Err(LoadError::NotPrivileged(blocker));
    }
    let plan = Plan::read(btf_path, BACKEND_ORDER, tracer_common::MAX_SOCKETS)?;
    let (mut ebpf, aya_btf) = load_object(btf_path, &plan)?;
    let backends = walk_backends(&mut ebpf, &aya_btf, &plan, Walk::TryAll);
    let sampling = load_sampler(&mut ebpf, &aya_btf, plan.byte_table).map(drop);
    Ok(Trials { backends, sampling })
}

/// Loads and attaches: the backend asked for, or the cheapest that works,
/// falling back when the kernel refuses one; then the lifecycle programs
/// every backend shares.
pub(crate) fn attach(requested: Option<Backend>, btf_path: &Path, max_sockets: u32) -> Result<Attached, LoadError> {
    if let Some(blocker) = kernel::load_blocker() {
        return Err(LoadError::NotPrivileged(blocker));
    }
    let candidates: Vec<Backend> = match requested {
        Some(backend) => vec![backend],
        None => BACKEND_ORDER.to_vec(),
    };
    let plan = Plan::read(btf_path, &candidates, max_sockets)?;
    let (mut ebpf, aya_btf) = load_object(btf_path, &plan)?;

    let mut trials = walk_backends(&mut ebpf, &aya_btf, &plan, Walk::KeepFirst);
    let backend = match (trials.last(), requested) {
        (Some((backend, Ok(()))), _) => *backend,
        (_, Some(backend)) => {
            let reason = trials.pop().and_then(|(_, r)| r.err()).unwrap_or_default();
            return Err(LoadError::BackendUnavailable { backend: backend.as_str(), reason });
        }
        (_, None) => {
            let all: Vec<String> =
                trials.iter().filter_map(|(b, r)| r.as_ref().err().map(|r| format!("{}: {r}", b.as_str()))).collect();
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
    let sampler = match load_sampler(&mut ebpf, &aya_btf, plan.byte_table) {
        Ok(sampler) => Some(sampler),
        Err(reason) => {
            warn!("TCP health sampling unavailable (RTT, queues, delivery rate): {reason}");
            None
        }
    };
    let byte_slots = 1 << plan.offsets.byte_slots_log2;
    let health = health::support(&plan.offsets, sampler.is_some());
    Ok(Attached { ebpf, backend, byte_table: plan.byte_table, byte_slots, sampler, health })
}
