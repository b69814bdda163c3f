//! The table of eBPF programs and their hooks, the kernel offsets they need,
//! and the one place that decides which attach backend can run here and
//! says, in plain words, why another cannot.

use tracer_common::{CommonBlock, KernelOffsets};

use super::{
    btf::{Btf, BtfError},
    kernel,
};

/// How the send/receive path is hooked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// BTF tracepoints `sock:sock_send_length`/`sock_recv_length` (kernel >= 6.3).
    Tracepoint,
    /// fexit on `tcp_sendmsg`/`tcp_recvmsg` (BTF kernels >= 5.5).
    Fentry,
    /// kprobes on `tcp_sendmsg`/`tcp_recvmsg` (any kernel with kprobes).
    Kprobe,
}

impl Backend {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Backend::Tracepoint => "tracepoint",
            Backend::Fentry => "fentry",
            Backend::Kprobe => "kprobe",
        }
    }
}

/// How a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HookKind {
    /// BTF tracepoint (`tp_btf`); the kernel has `btf_trace_<hook>`.
    TpBtf,
    /// fexit on a kernel function (BPF trampoline).
    FExit,
    /// kprobe on a kernel function's entry.
    KProbe,
    /// kretprobe on a kernel function's return.
    KRetProbe,
}

impl HookKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            HookKind::TpBtf => "tp_btf",
            HookKind::FExit => "fexit",
            HookKind::KProbe => "kprobe",
            HookKind::KRetProbe => "kretprobe",
        }
    }
}

/// One program and where it attaches.
pub(crate) struct Probe {
    /// Program name in the eBPF object.
    pub(crate) program: &'static str,
    pub(crate) kind: HookKind,
    /// Tracepoint or kernel function it attaches to.
    pub(crate) hook: &'static str,
    /// Which backend needs it; `None` for programs every backend uses.
    pub(crate) backend: Option<Backend>,
    /// Whether tracing can go on without it.
    pub(crate) required: bool,
    /// What it gives the user.
    pub(crate) purpose: &'static str,
    /// For fexit programs written for one prototype of the hooked function:
    /// its number of parameters.
    pub(crate) params: Option<usize>,
}

const fn probe(
    program: &'static str,
    kind: HookKind,
    hook: &'static str,
    backend: Option<Backend>,
    required: bool,
    purpose: &'static str,
) -> Probe {
    Probe { program, kind, hook, backend, required, purpose, params: None }
}

/// An fexit program for the prototype of `hook` with `params` parameters.
const fn fexit_for(program: &'static str, hook: &'static str, params: usize, purpose: &'static str) -> Probe {
    Probe { params: Some(params), ..probe(program, FExit, hook, Some(Backend::Fentry), true, purpose) }
}

use HookKind::{FExit, KProbe, KRetProbe, TpBtf};

/// Every program tracer loads: the send/receive path of each backend, then
/// the lifecycle programs every backend shares.
pub(crate) const PROBES: &[Probe] = &[
    probe("sock_send_length", TpBtf, "sock_send_length", Some(Backend::Tracepoint), true, "bytes sent (kernel >= 6.3)"),
    probe(
        "sock_recv_length",
        TpBtf,
        "sock_recv_length",
        Some(Backend::Tracepoint),
        true,
        "bytes received (kernel >= 6.3)",
    ),
    probe("tcp_sendmsg_exit", FExit, "tcp_sendmsg", Some(Backend::Fentry), true, "bytes sent (fexit, kernel >= 5.5)"),
    fexit_for("tcp_recvmsg_exit4", "tcp_recvmsg", 4, "bytes received (fexit, kernel >= 5.5)"),
    fexit_for("tcp_recvmsg_exit5", "tcp_recvmsg", 5, "bytes received (fexit, kernel >= 5.5)"),
    fexit_for("tcp_recvmsg_exit6", "tcp_recvmsg", 6, "bytes received (fexit, kernel >= 5.5)"),
    probe("tcp_sendmsg_entry", KProbe, "tcp_sendmsg", Some(Backend::Kprobe), true, "send arguments (kprobe)"),
    probe("tcp_sendmsg_return", KRetProbe, "tcp_sendmsg", Some(Backend::Kprobe), true, "bytes sent (kretprobe)"),
    probe("tcp_recvmsg_entry", KProbe, "tcp_recvmsg", Some(Backend::Kprobe), true, "receive arguments (kprobe)"),
    probe("tcp_recvmsg_return", KRetProbe, "tcp_recvmsg", Some(Backend::Kprobe), true, "bytes received (kretprobe)"),
    probe("inet_sock_set_state", TpBtf, "inet_sock_set_state", None, true, "TCP state changes, connects, accepts"),
    probe("tcp_destroy_sock", TpBtf, "tcp_destroy_sock", None, true, "final counts of destroyed sockets"),
    probe("tcp_retransmit_skb", TpBtf, "tcp_retransmit_skb", None, false, "retransmitted segments"),
    probe("tcp_send_reset", TpBtf, "tcp_send_reset", None, false, "resets sent"),
    probe("tcp_receive_reset", TpBtf, "tcp_receive_reset", None, false, "resets received"),
    probe(
        "inet_sk_error_report",
        TpBtf,
        "inet_sk_error_report",
        None,
        false,
        "why connects fail when the application reads the error first (kernel >= 5.14)",
    ),
];

/// Backends in order of cost, cheapest first.
pub(crate) const BACKEND_ORDER: &[Backend] = &[Backend::Tracepoint, Backend::Fentry, Backend::Kprobe];

/// Whether this kernel's BTF has the tracepoint `hook`.
pub(crate) fn has_tracepoint(btf: &Btf, hook: &str) -> bool {
    btf.has_type(&format!("btf_trace_{hook}"))
}

/// Whether the hook of `probe` exists on this kernel, as far as can be told
/// without loading anything.
pub(crate) fn hook_available(probe: &Probe, btf: &Btf) -> bool {
    match probe.kind {
        TpBtf => has_tracepoint(btf, probe.hook),
        FExit => btf.function_params(probe.hook).is_some_and(|p| probe.params.is_none_or(|n| n == p.len())),
        KProbe | KRetProbe => kernel::has_kprobes() && kernel::kallsyms_has(probe.hook),
    }
}

/// The programs to show for this kernel: of the programs written for
/// different prototypes of one function, the one this kernel's prototype
/// fits (or all of them, if none does or there is no BTF).
pub(crate) fn shown_probes(btf: Option<&Btf>) -> impl Iterator<Item = &'static Probe> + '_ {
    let fits = move |p: &Probe| btf.is_some_and(|b| hook_available(p, b));
    PROBES.iter().filter(move |p| {
        p.params.is_none()
            || fits(p)
            || !PROBES.iter().any(|q| q.params.is_some() && q.hook == p.hook && q.kind == p.kind && fits(q))
    })
}

/// Per backend of `candidates`, in order: the programs that fit this
/// kernel, or why the backend cannot run (as far as BTF and /proc tell,
/// before trying).
pub(crate) fn backend_programs(
    candidates: &[Backend],
    btf: &Btf,
) -> Vec<(Backend, Result<Vec<&'static Probe>, String>)> {
    candidates
        .iter()
        .map(|&backend| {
            let programs = match backend_blocker(backend, btf) {
                Some(reason) => Err(reason),
                None => Ok(backend_probes(backend, btf)),
            };
            (backend, programs)
        })
        .collect()
}

/// Why `backend` cannot run here, or `None` if it can as far as the kernel
/// says before trying (the kernel may still refuse at load).
fn backend_blocker(backend: Backend, btf: &Btf) -> Option<String> {
    if backend == Backend::Kprobe && !kernel::has_kprobes() {
        return Some("kprobes are not built into this kernel (CONFIG_KPROBES is not set)".into());
    }
    // A hook is covered when one of its programs fits this kernel.
    let mut missing: Vec<&str> = PROBES
        .iter()
        .filter(|p| p.backend == Some(backend))
        .filter(|p| {
            !PROBES
                .iter()
                .any(|q| q.backend == Some(backend) && q.hook == p.hook && q.kind == p.kind && hook_available(q, btf))
        })
        .map(|p| p.hook)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return None;
    }
    Some(match backend {
        Backend::Tracepoint => {
            format!("tracepoints {} are missing (they appeared in Linux 6.3)", missing.join(", "))
        }
        Backend::Fentry => format!("kernel functions {} are not in the kernel's BTF", missing.join(", ")),
        Backend::Kprobe => format!("kernel functions {} cannot be probed", missing.join(", ")),
    })
}

/// The programs of `backend` that fit this kernel (of several programs
/// for different prototypes of one function, the one that matches).
fn backend_probes(backend: Backend, btf: &Btf) -> Vec<&'static Probe> {
    PROBES.iter().filter(|p| p.backend == Some(backend) && (p.params.is_none() || hook_available(p, btf))).collect()
}

/// Resolves every struct offset the programs read.
pub(crate) fn resolve_offsets(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    let common = |member: &str| btf.member_offset("sock_common", member);
    // `struct sock` starts with `struct sock_common __sk_common`.
    let sk_common = btf.member_offset("sock", "__sk_common")?;
    // Only the fentry and kprobe backends read these; a kernel without the
    // function in its BTF cannot run them anyway.
    let recvmsg = btf.function_params("tcp_recvmsg").unwrap_or_default();
    let daddr = common("skc_daddr")?;
    let at = |member: &str, relative: u32| common(member).is_ok_and(|o| o == daddr + relative);
    let common_block = at("skc_rcv_saddr", CommonBlock::RCV_SADDR)
        && at("skc_dport", CommonBlock::DPORT)
        && at("skc_num", CommonBlock::NUM)
        && at("skc_family", CommonBlock::FAMILY)
        && at("skc_state", CommonBlock::STATE);
    let v6_block = common("skc_v6_rcv_saddr")? == common("skc_v6_daddr")? + 16;
    let mut offsets = KernelOffsets {
        skc_family: sk_common + common("skc_family")?,
        skc_state: sk_common + common("skc_state")?,
        skc_num: sk_common + common("skc_num")?,
        skc_dport: sk_common + common("skc_dport")?,
        skc_rcv_saddr: sk_common + common("skc_rcv_saddr")?,
        skc_daddr: sk_common + common("skc_daddr")?,
        skc_v6_rcv_saddr: sk_common + common("skc_v6_rcv_saddr")?,
        skc_v6_daddr: sk_common + common("skc_v6_daddr")?,
        skc_net: sk_common + common("skc_net")?,
        net_ns_inum: btf.member_offset("net", "ns")? + btf.member_offset("ns_common", "inum")?,
        sk_protocol: btf.member_offset("sock", "sk_protocol")?,
        tcp_total_retrans: btf.member_offset("tcp_sock", "total_retrans")?,
        tcp_segs_out: btf.member_offset("tcp_sock", "segs_out")?,
        recvmsg_flags_arg: recvmsg.iter().position(|p| p == "flags").unwrap_or(3) as u32,
        recvmsg_nargs: if recvmsg.is_empty() { 5 } else { recvmsg.len() as u32 },
        common_block: u32::from(common_block),
        v6_block: u32::from(v6_block),
        ..KernelOffsets::default()
    };
    super::health::resolve_offsets(btf, &mut offsets);
    super::health::set_tcp_block(&mut offsets);
    Ok(offsets)
}

/// Whether to load the object with the `BYTES` table (`tracer`) rather than
/// `tracer-legacy`, and why: if the kernel has BPF compare-and-swap, unless
/// `TRACER_BYTE_SLOTS=0` (a switch for checking, on a recent kernel, the
/// path older kernels take). `tracer doctor` shows the reason.
pub(crate) fn byte_table_status() -> (bool, &'static str) {
    if std::env::var_os("TRACER_BYTE_SLOTS").is_some_and(|v| v == "0") {
        return (false, "off (TRACER_BYTE_SLOTS=0): bytes counted in the per-socket records");
    }
    match kernel::release() {
        Some(release) if !has_bpf_cmpxchg(&release) => {
            (false, "off (kernel before 5.12, no BPF compare-and-swap): bytes counted in the per-socket records")
        }
        _ => (true, "on (bytes counted without a map call on send/receive)"),
    }
}

/// Whether a kernel of this release (`uname -r`) has the BPF atomic
/// compare-and-swap instruction (5.12). An unreadable release is taken to
/// be recent.
fn has_bpf_cmpxchg(release: &str) -> bool {
    kernel::version(release).is_none_or(|version| version >= (5, 12))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_swap_from_5_12() {
        assert!(has_bpf_cmpxchg("6.18.44-fc-v669"));
        assert!(has_bpf_cmpxchg("5.12.0"));
        assert!(has_bpf_cmpxchg("6.1.0-50-cloud-amd64"));
        assert!(!has_bpf_cmpxchg("5.10.0-30-amd64"));
        assert!(!has_bpf_cmpxchg("4.18.0-553.el8_10.x86_64"));
        assert!(has_bpf_cmpxchg("garbage"));
    }
}
