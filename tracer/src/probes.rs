//! The table of eBPF programs and their hooks, the kernel offsets they need,
//! and the one place that decides which attach backend can run here and
//! says, in plain words, why another cannot.

use std::path::Path;

use tracer_common::KernelOffsets;

use crate::btf::{Btf, BtfError};

/// How the send/receive path is hooked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// BTF tracepoints `sock:sock_send_length`/`sock_recv_length` (kernel >= 6.3).
    Tracepoint,
    /// fexit on `tcp_sendmsg`/`tcp_recvmsg` (BTF kernels >= 5.5).
    Fentry,
    /// kprobes on `tcp_sendmsg`/`tcp_recvmsg` (any kernel with kprobes).
    Kprobe,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Tracepoint => "tracepoint",
            Backend::Fentry => "fentry",
            Backend::Kprobe => "kprobe",
        }
    }
}

/// One program and where it attaches.
pub struct Probe {
    /// Program name in the eBPF object.
    pub program: &'static str,
    /// BTF tracepoint it attaches to (the kernel has `btf_trace_<hook>`).
    pub hook: &'static str,
    /// Which backend needs it; `None` for programs every backend uses.
    pub backend: Option<Backend>,
    /// Whether tracing can go on without it.
    pub required: bool,
    /// What it gives the user.
    pub purpose: &'static str,
}

/// Every program tracer loads.
pub const PROBES: &[Probe] = &[
    Probe {
        program: "sock_send_length",
        hook: "sock_send_length",
        backend: Some(Backend::Tracepoint),
        required: true,
        purpose: "bytes sent (kernel >= 6.3)",
    },
    Probe {
        program: "sock_recv_length",
        hook: "sock_recv_length",
        backend: Some(Backend::Tracepoint),
        required: true,
        purpose: "bytes received (kernel >= 6.3)",
    },
    Probe {
        program: "inet_sock_set_state",
        hook: "inet_sock_set_state",
        backend: None,
        required: true,
        purpose: "TCP state changes, connects, accepts",
    },
    Probe {
        program: "tcp_destroy_sock",
        hook: "tcp_destroy_sock",
        backend: None,
        required: true,
        purpose: "final counts of destroyed sockets",
    },
    Probe {
        program: "tcp_retransmit_skb",
        hook: "tcp_retransmit_skb",
        backend: None,
        required: false,
        purpose: "retransmitted segments",
    },
    Probe {
        program: "tcp_send_reset",
        hook: "tcp_send_reset",
        backend: None,
        required: false,
        purpose: "resets sent",
    },
    Probe {
        program: "tcp_receive_reset",
        hook: "tcp_receive_reset",
        backend: None,
        required: false,
        purpose: "resets received",
    },
];

/// Backends in order of cost, cheapest first.
pub const BACKEND_ORDER: &[Backend] = &[Backend::Tracepoint, Backend::Fentry, Backend::Kprobe];

/// Whether this kernel's BTF has the tracepoint `hook`.
pub fn has_tracepoint(btf: &Btf, hook: &str) -> bool {
    btf.has_type(&format!("btf_trace_{hook}"))
}

/// Why `backend` cannot run here, or `None` if it can as far as the kernel
/// says before trying.
pub fn backend_blocker(backend: Backend, btf: &Btf) -> Option<String> {
    match backend {
        Backend::Tracepoint => {
            let missing: Vec<&str> = PROBES
                .iter()
                .filter(|p| p.backend == Some(Backend::Tracepoint) && !has_tracepoint(btf, p.hook))
                .map(|p| p.hook)
                .collect();
            (!missing.is_empty()).then(|| {
                format!("tracepoints {} are missing (they appeared in Linux 6.3)", missing.join(", "))
            })
        }
        Backend::Fentry | Backend::Kprobe => Some(format!(
            "the {} backend is not built into this version of tracer yet; use a kernel >= 6.3 (tracepoint backend)",
            backend.as_str()
        )),
    }
}

/// Resolves every struct offset the programs read.
pub fn resolve_offsets(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    let common = |member: &str| btf.member_offset("sock_common", member);
    // `struct sock` starts with `struct sock_common __sk_common`.
    let sk_common = btf.member_offset("sock", "__sk_common")?;
    Ok(KernelOffsets {
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
        _pad: 0,
    })
}

/// The default location of the running kernel's BTF.
pub fn kernel_btf_path() -> &'static Path {
    Path::new("/sys/kernel/btf/vmlinux")
}
