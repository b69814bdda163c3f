//! Reference programs the tracer is measured against on the same machine,
//! so the per-syscall figures can be read against this machine's own floor
//! instead of against figures taken elsewhere:
//!
//! - `floor`: an empty eBPF program on `sock:sock_send_length` and
//!   `sock:sock_recv_length` (what any eBPF tracer on these hooks pays);
//! - `hash`: the hand-written minimal tracer, one hash-map update per call
//!   (`tx[pid] += ret`), as the C/libbpf reference does;
//! - `bpftrace`: the one-liner `@tx[pid] = sum(args->ret)` on both
//!   tracepoints, when bpftrace is installed;
//! - `conn-floor`: the empty program on every tracepoint the tracer
//!   attaches (`TRACER_TRACEPOINTS`: state changes, destruction,
//!   retransmits, resets, error reports, and the send/receive pair), one
//!   program per tracepoint so the kernel accounts each hook apart; what
//!   any eBPF tracer on those hooks pays on the connection path. A
//!   tracepoint this kernel lacks is skipped (and said).
//!
//! `floor`, `hash` and `conn-floor` are a few instructions of eBPF bytecode
//! loaded here with the bpf(2) syscall as raw tracepoint programs (the same
//! dispatch as the tracer's BTF tracepoints), so the bench needs no
//! compiler for them.

use std::{
    ffi::CString,
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// A reference the tracer's ping-pong cost is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Reference {
    Floor,
    Hash,
    Bpftrace,
    ConnFloor,
    /// The tracer's own programs, taken over from its agent and attached by
    /// the bench ([`TakenOver`]), the agent stopped: measured in the
    /// ping-pong rounds only, beside the agent's phase.
    #[value(skip)]
    TracerPrograms,
}

impl Reference {
    pub fn name(self) -> &'static str {
        match self {
            Reference::Floor => "empty program (floor)",
            Reference::Hash => "minimal tracer: one hash update per call",
            Reference::Bpftrace => "bpftrace `@tx[pid] = sum(args->ret)`",
            Reference::ConnFloor => "empty programs on every tracer hook (connection floor)",
            Reference::TracerPrograms => "tracer's programs without its agent (taken over, same maps)",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Reference::Floor => "floor",
            Reference::Hash => "hash",
            Reference::Bpftrace => "bpftrace",
            Reference::ConnFloor => "conn-floor",
            Reference::TracerPrograms => "tracer-programs",
        }
    }
}

/// The send/receive pair: the hooks of `floor`, `hash` and `bpftrace`.
pub const TRACEPOINTS: [&str; 2] = ["sock_send_length", "sock_recv_length"];

/// Every tracepoint the tracer attaches (its tracepoint backend,
/// `tracer/src/load/probes.rs`): the hooks of `conn-floor`.
pub const TRACER_TRACEPOINTS: [&str; 8] = [
    "inet_sock_set_state",
    "tcp_destroy_sock",
    "tcp_retransmit_skb",
    "tcp_send_reset",
    "tcp_receive_reset",
    "inet_sk_error_report",
    "sock_send_length",
    "sock_recv_length",
];

/// A reference attached for one run; detached when dropped.
pub enum Attached {
    /// Raw tracepoint links, the programs and the map they hold.
    Raw {
        _links: Vec<OwnedFd>,
        /// Each program with the tracepoints it is attached to.
        programs: Vec<(OwnedFd, Vec<&'static str>)>,
        _map: Option<OwnedFd>,
        /// Tracepoints this kernel lacks, left out.
        missing: Vec<&'static str>,
    },
    Bpftrace(Child),
}

impl Attached {
    pub fn attach(reference: Reference) -> Result<Self> {
        match reference {
            Reference::Floor => attach_raw(&floor_program(), None, &TRACEPOINTS),
            Reference::Hash => {
                let map = create_hash_map()?;
                let program = hash_program(raw_fd(&map));
                attach_raw(&program, Some(map), &TRACEPOINTS)
            }
            Reference::Bpftrace => start_bpftrace(),
            Reference::ConnFloor => attach_per_tracepoint(&floor_program(), &TRACER_TRACEPOINTS),
            Reference::TracerPrograms => bail!("the tracer's programs are taken over from a running agent"),
        }
    }

    /// Tracepoints left out because this kernel lacks them.
    pub fn missing(&self) -> &[&'static str] {
        match self {
            Attached::Raw { missing, .. } => missing,
            Attached::Bpftrace(_) => &[],
        }
    }

    /// The note saying which tracepoints were left out, if any.
    pub fn missing_note(&self, reference: Reference) -> Option<String> {
        let missing = self.missing();
        (!missing.is_empty()).then(|| {
            format!(
                "{}: this kernel has no tracepoint {}; left out (the tracer cannot attach there either)",
                reference.short(),
                missing.join(", ")
            )
        })
    }

    /// The programs (raw fds, valid while `self` lives) with the
    /// tracepoints each one runs on.
    pub fn programs(&self) -> Vec<(i32, Vec<&'static str>)> {
        match self {
            Attached::Raw { programs, .. } => programs.iter().map(|(fd, hooks)| (raw_fd(fd), hooks.clone())).collect(),
            Attached::Bpftrace(_) => Vec::new(),
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Attached::Bpftrace(child) = self {
            // SIGINT to its PID: bpftrace prints its maps and exits.
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Attaches `reference` for `seconds` (`xtask reference`).
pub fn hold(reference: Reference, seconds: u64) -> Result<()> {
    if reference == Reference::Bpftrace {
        bpftrace_available().map_err(|why| anyhow::anyhow!(why))?;
    }
    let attached = Attached::attach(reference)?;
    if let Some(note) = attached.missing_note(reference) {
        eprintln!("xtask: {note}");
    }
    eprintln!("xtask: {} attached for {seconds} s", reference.name());
    std::thread::sleep(Duration::from_secs(seconds));
    drop(attached);
    Ok(())
}

/// Whether bpftrace can be used (installed, or installable from Debian's
/// packages); the reason when not.
pub fn bpftrace_available() -> std::result::Result<(), String> {
    if crate::setup::install_packages(&[("bpftrace", "bpftrace")], "the bench's reference").is_err() {
        return Err("bpftrace is not installed and could not be installed".into());
    }
    // bpftrace attaches classic tracepoints, which need tracefs.
    if !Path::new("/sys/kernel/tracing/events/sock").is_dir() && !Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        let _ = std::fs::create_dir_all("/sys/kernel/tracing");
        let mounted = Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            return Err("tracefs is not mounted and could not be mounted".into());
        }
    }
    Ok(())
}

fn start_bpftrace() -> Result<Attached> {
    let script = "tracepoint:sock:sock_send_length, tracepoint:sock:sock_recv_length { @tx[pid] = sum(args->ret); }";
    let mut child = Command::new("bpftrace")
        .args(["-e", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting bpftrace")?;
    // bpftrace prints "Attaching 2 probes..." before attaching; wait until
    // its programs show up in its fdinfo instead (bounded).
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("bpftrace exited ({status}) before attaching");
        }
        if super::proc::foreign_tracers(&[]).iter().any(|(p, _)| *p == pid) && links_of(pid) >= 2 {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("bpftrace did not attach within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Attached::Bpftrace(child))
}

/// Perf-event or link fds of a process: bpftrace attaches a classic
/// tracepoint through a perf event per probe.
fn links_of(pid: u32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return 0 };
    fds.flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .map(|target| {
                    let t = target.to_string_lossy();
                    t.contains("perf_event") || t.contains("bpf_link")
                })
                .unwrap_or(false)
        })
        .count()
}

/// The tracer's own programs, taken over from a running agent
/// (by program id, from its fdinfo) so the rapid alternation can attach
/// and detach them in a millisecond, like the references: the same
/// programs and maps the agent ran, compared in the same cycles with the
/// empty program. Their state (maps) lives as long as this does.
pub struct TakenOver {
    programs: Vec<(OwnedFd, String)>,
}

impl TakenOver {
    /// The programs of process `pid` named after one of `names` (cut to
    /// the kernel's 15 characters). Fails unless every one of `required`
    /// is among them.
    pub fn from_process(pid: u32, names: &[&str], required: &[&str]) -> Result<Self> {
        let cut = |n: &str| n[..n.len().min(15)].to_owned();
        let mut programs: Vec<(OwnedFd, String)> = Vec::new();
        for id in super::proc::program_stats(pid).iter().map(|p| p.id) {
            let mut attr = Attr::new();
            attr.put_u32(0, id);
            let Ok(fd) = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr, "taking the tracer's program") else { continue };
            let name = program_name_of(&fd)?;
            if names.iter().any(|n| cut(n) == name) && !programs.iter().any(|(_, n)| *n == name) {
                programs.push((fd, name));
            }
        }
        for n in required {
            if !programs.iter().any(|(_, name)| *name == cut(n)) {
                bail!("the tracer (pid {pid}) holds no program named {}", cut(n));
            }
        }
        Ok(TakenOver { programs })
    }

    /// Attaches every program where it was attached (its BTF tracepoint);
    /// detached when the links are dropped.
    pub fn attach(&self) -> Result<Vec<OwnedFd>> {
        let mut links = Vec::new();
        for (prog, name) in &self.programs {
            let mut attr = Attr::new();
            attr.put_u64(0, 0).put_u32(8, raw_fd(prog) as u32);
            links.push(bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr, &format!("attaching the tracer's {name}"))?);
        }
        Ok(links)
    }
}

/// The name of the program behind `fd` (`struct bpf_prog_info.name`).
fn program_name_of(fd: &OwnedFd) -> Result<String> {
    // `struct bpf_prog_info` up to and including `name[16]` at 64.
    let mut info = [0u8; 80];
    let mut attr = Attr::new();
    attr.put_u32(0, raw_fd(fd) as u32).put_u32(4, info.len() as u32).put_u64(8, info.as_mut_ptr() as u64);
    // SAFETY: a valid bpf_attr for BPF_OBJ_GET_INFO_BY_FD; `info` outlives
    // the call and its length is given.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, attr.0.as_mut_ptr(), attr.0.len()) };
    if rc < 0 {
        return Err(anyhow::Error::new(std::io::Error::last_os_error()).context("reading a program's info"));
    }
    let name = &info[64..80];
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

// ---- bpf(2) by hand: just what the raw-tracepoint references need.

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;

/// `union bpf_attr` is at most this big for the commands used here; the
/// kernel accepts a larger zero-padded one.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Attr([0; 128])
    }

    fn put_u32(&mut self, offset: usize, value: u32) -> &mut Self {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
        self
    }

    fn put_u64(&mut self, offset: usize, value: u64) -> &mut Self {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
        self
    }

    /// A NUL-terminated name of at most 15 bytes (`BPF_OBJ_NAME_LEN`).
    fn put_name(&mut self, offset: usize, name: &str) -> &mut Self {
        let bytes = &name.as_bytes()[..name.len().min(15)];
        self.0[offset..offset + bytes.len()].copy_from_slice(bytes);
        self.0[offset + bytes.len()] = 0;
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr, what: &str) -> Result<OwnedFd> {
    // SAFETY: `attr` is a valid, zero-padded bpf_attr for `cmd`, and every
    // pointer in it outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len()) };
    if fd < 0 {
        return Err(anyhow::Error::new(std::io::Error::last_os_error()).context(what.to_owned()));
    }
    // SAFETY: a new fd the kernel just handed us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn raw_fd(fd: &OwnedFd) -> i32 {
    use std::os::fd::AsRawFd as _;
    fd.as_raw_fd()
}

/// `tx[pid]`: u32 key, u64 value.
fn create_hash_map() -> Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.put_u32(0, BPF_MAP_TYPE_HASH).put_u32(4, 4).put_u32(8, 8).put_u32(12, 10_240);
    bpf(BPF_MAP_CREATE, &mut attr, "creating the reference's hash map")
}

/// One program attached to every tracepoint of `tracepoints` (all must
/// exist).
fn attach_raw(program: &[Insn], map: Option<OwnedFd>, tracepoints: &[&'static str]) -> Result<Attached> {
    let prog = load_raw(program, "reference")?;
    let mut links = Vec::new();
    for tracepoint in tracepoints {
        links.push(open_raw_tracepoint(&prog, tracepoint)?.context("no such tracepoint on this kernel")?);
    }
    Ok(Attached::Raw { _links: links, programs: vec![(prog, tracepoints.to_vec())], _map: map, missing: Vec::new() })
}

/// A program of its own on each tracepoint of `tracepoints`, so the
/// kernel's accounting tells the hooks apart; tracepoints this kernel lacks
/// are skipped (`Attached::missing`).
fn attach_per_tracepoint(program: &[Insn], tracepoints: &[&'static str]) -> Result<Attached> {
    let (mut links, mut programs, mut missing) = (Vec::new(), Vec::new(), Vec::new());
    for tracepoint in tracepoints {
        let prog = load_raw(program, &program_name(tracepoint))?;
        match open_raw_tracepoint(&prog, tracepoint)? {
            Some(link) => {
                links.push(link);
                programs.push((prog, vec![*tracepoint]));
            }
            None => missing.push(*tracepoint),
        }
    }
    if programs.is_empty() {
        bail!("none of the tracer's tracepoints exists on this kernel");
    }
    Ok(Attached::Raw { _links: links, programs, _map: None, missing })
}

/// A program name the kernel takes (at most 15 characters of
/// `[A-Za-z0-9_.]`) for the empty program on `tracepoint`.
pub fn program_name(tracepoint: &str) -> String {
    let clean: String =
        tracepoint.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' }).collect();
    format!("e_{clean}").chars().take(15).collect()
}

/// Loads `program` as a raw tracepoint program named `name`.
fn load_raw(program: &[Insn], name: &str) -> Result<OwnedFd> {
    let license = CString::new("GPL").expect("no NUL");
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = Attr::new();
    attr.put_u32(0, BPF_PROG_TYPE_RAW_TRACEPOINT)
        .put_u32(4, program.len() as u32)
        .put_u64(8, program.as_ptr() as u64)
        .put_u64(16, license.as_ptr() as u64)
        .put_u32(24, 1)
        .put_u32(28, log.len() as u32)
        .put_u64(32, log.as_mut_ptr() as u64)
        .put_name(48, name);
    bpf(BPF_PROG_LOAD, &mut attr, "loading the reference program").map_err(|e| {
        let end = log.iter().position(|b| *b == 0).unwrap_or(0);
        let text = String::from_utf8_lossy(&log[..end]);
        let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        anyhow::anyhow!("{e} ({last})")
    })
}

/// Attaches `prog` to the raw tracepoint `tracepoint`; None if this kernel
/// has no such tracepoint.
fn open_raw_tracepoint(prog: &OwnedFd, tracepoint: &str) -> Result<Option<OwnedFd>> {
    let name = CString::new(tracepoint).expect("no NUL");
    let mut attr = Attr::new();
    attr.put_u64(0, name.as_ptr() as u64).put_u32(8, raw_fd(prog) as u32);
    match bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr, &format!("attaching the reference to {tracepoint}")) {
        Ok(link) => Ok(Some(link)),
        Err(error)
            if error.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error) == Some(libc::ENOENT) =>
        {
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | (dst & 0x0f), off, imm }
}

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R7: u8 = 7;
const R10: u8 = 10;

const fn mov_imm(dst: u8, imm: i32) -> Insn {
    insn(0xb7, dst, 0, 0, imm)
}
const fn mov_reg(dst: u8, src: u8) -> Insn {
    insn(0xbf, dst, src, 0, 0)
}
const fn add_imm(dst: u8, imm: i32) -> Insn {
    insn(0x07, dst, 0, 0, imm)
}
const fn call(helper: i32) -> Insn {
    insn(0x85, 0, 0, 0, helper)
}
const fn exit() -> Insn {
    insn(0x95, 0, 0, 0, 0)
}
/// `r = map` (two instructions: `BPF_LD | BPF_IMM | BPF_DW`, `BPF_PSEUDO_MAP_FD`).
const fn load_map(dst: u8, map_fd: i32) -> [Insn; 2] {
    [insn(0x18, dst, 1, 0, map_fd), insn(0, 0, 0, 0, 0)]
}

const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_MAP_UPDATE_ELEM: i32 = 2;
const HELPER_GET_CURRENT_PID_TGID: i32 = 14;

/// `return 0;`
pub fn floor_program() -> Vec<Insn> {
    vec![mov_imm(R0, 0), exit()]
}

/// `ret = ctx->args[1]; if (ret > 0) { key = pid; v = lookup(key); if (v)
/// atomic_add(v, ret) else update(key, ret) } return 0;`
pub fn hash_program(map_fd: i32) -> Vec<Insn> {
    let mut p = vec![
        mov_reg(R6, R1),
        call(HELPER_GET_CURRENT_PID_TGID),
        insn(0x77, R0, 0, 0, 32),   // r0 >>= 32 (the tgid)
        insn(0x63, R10, R0, -4, 0), // *(u32 *)(r10 - 4) = r0
        insn(0x79, R7, R6, 8, 0),   // r7 = ctx->args[1] (ret)
        insn(0x67, R7, 0, 0, 32),   // r7 <<= 32
        insn(0xc7, R7, 0, 0, 32),   // r7 s>>= 32: sign-extend the int
        insn(0xd5, R7, 0, 17, 0),   // if r7 s<= 0 goto out
    ];
    p.extend(load_map(R1, map_fd));
    p.extend([
        mov_reg(R2, R10),
        add_imm(R2, -4),
        call(HELPER_MAP_LOOKUP_ELEM),
        insn(0x15, R0, 0, 2, 0),     // if r0 == 0 goto insert
        insn(0xdb, R0, R7, 0, 0),    // lock *(u64 *)(r0 + 0) += r7
        insn(0x05, 0, 0, 9, 0),      // goto out
        insn(0x7b, R10, R7, -16, 0), // insert: *(u64 *)(r10 - 16) = r7
    ]);
    p.extend(load_map(R1, map_fd));
    p.extend([
        mov_reg(R2, R10),
        add_imm(R2, -4),
        mov_reg(R3, R10),
        add_imm(R3, -16),
        mov_imm(R4, 0),
        call(HELPER_MAP_UPDATE_ELEM),
        mov_imm(R0, 0), // out:
        exit(),
    ]);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_floor_program_names_fit_the_kernel() {
        assert_eq!(program_name("inet_sock_set_state"), "e_inet_sock_set");
        assert_eq!(program_name("tcp_send_reset"), "e_tcp_send_rese");
        for tracepoint in TRACER_TRACEPOINTS {
            let name = program_name(tracepoint);
            assert!(name.len() <= 15 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{name}");
        }
        // The tracer's own hooks: the send/receive pair of `floor` among them.
        assert!(TRACEPOINTS.iter().all(|t| TRACER_TRACEPOINTS.contains(t)));
        let mut attr = Attr::new();
        attr.put_name(48, "a_name_longer_than_fifteen");
        assert_eq!(&attr.0[48..64], b"a_name_longer_t\0");
    }

    #[test]
    fn hash_program_jumps_land_where_meant() {
        let p = hash_program(3);
        assert_eq!(p.len(), 27);
        let out = p.iter().rposition(|i| *i == mov_imm(R0, 0)).expect("an out label");
        assert_eq!(out, 25);
        // The three jumps: target = index + 1 + off.
        assert_eq!(7 + 1 + p[7].off as usize, out);
        assert_eq!(13 + 1 + p[13].off as usize, 16);
        assert_eq!(p[16].code, 0x7b);
        assert_eq!(15 + 1 + p[15].off as usize, out);
        assert_eq!(p[8].code, 0x18);
        assert_eq!(p[8].regs >> 4, 1, "pseudo map fd");
        assert_eq!(p[17].code, 0x18);
    }

    #[test]
    fn insn_is_eight_bytes() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        assert_eq!(insn(0xbf, 6, 1, 0, 0).regs, 0x16);
    }
}
