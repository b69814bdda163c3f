//! Facts about the running kernel and this process that decide what can be
//! loaded: effective capabilities, the kernel release, lockdown, kprobe
//! support and symbols, the BTF path. Each is read and parsed here once;
//! the parsers take text so they are testable without the real files.

use std::path::Path;

/// The default location of the running kernel's BTF.
pub(crate) const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Where the kernel exposes the kprobe PMU that kprobes attach through.
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe/type";

/// This process's effective capabilities (`CapEff:` of `/proc/self/status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Capabilities {
    /// As the kernel prints it (hex), for people.
    pub(crate) text: String,
    bits: u64,
}

impl Capabilities {
    const SYS_ADMIN: u32 = 21;
    const PERFMON: u32 = 38;
    const BPF: u32 = 39;

    /// This process's, or `None` if /proc does not say.
    pub(crate) fn current() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/self/status").ok()?)
    }

    /// From the text of a `/proc/PID/status`.
    pub(crate) fn parse(status: &str) -> Option<Self> {
        let text = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
        let bits = u64::from_str_radix(text, 16).ok()?;
        Some(Capabilities { text: text.to_owned(), bits })
    }

    fn has(&self, cap: u32) -> bool {
        self.bits & (1u64 << cap) != 0
    }

    /// Whether these allow loading and attaching the tracer's programs.
    pub(crate) fn can_trace(&self) -> bool {
        self.has(Self::SYS_ADMIN) || (self.has(Self::BPF) && self.has(Self::PERFMON))
    }
}

/// Whether this process has what loading eBPF programs needs.
pub(crate) fn privileged() -> bool {
    Capabilities::current().is_some_and(|caps| caps.can_trace())
}

/// The running kernel's release (`uname -r`), if readable.
pub(crate) fn release() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_owned())
}

/// The major and minor version of a kernel release such as `6.1.0-50-cloud-amd64`.
pub(crate) fn version(release: &str) -> Option<(u32, u32)> {
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().ok());
    Some((numbers.next().flatten()?, numbers.next().flatten()?))
}

/// The active lockdown mode, or why it is unknown.
pub(crate) fn lockdown() -> String {
    parse_lockdown(&std::fs::read_to_string("/sys/kernel/security/lockdown").unwrap_or_default())
        .unwrap_or_else(|| "unknown (securityfs not mounted)".into())
}

/// The active mode is the bracketed one: "none [integrity] confidentiality".
fn parse_lockdown(text: &str) -> Option<String> {
    text.split_whitespace().find(|w| w.starts_with('[')).map(|w| w.trim_matches(|c| c == '[' || c == ']').to_owned())
}

/// Whether kprobes are built into this kernel.
pub(crate) fn has_kprobes() -> bool {
    Path::new(KPROBE_PMU).exists()
}

/// Whether `function` is a kernel symbol (`/proc/kallsyms`).
pub(crate) fn kallsyms_has(function: &str) -> bool {
    std::fs::read_to_string("/proc/kallsyms")
        .map(|text| text.lines().any(|l| l.split_whitespace().nth(2) == Some(function)))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_capabilities() {
        let root = Capabilities::parse("Name:\tx\nCapInh:\t0\nCapEff:\t000001ffffffffff\n").expect("parses");
        assert_eq!(root.text, "000001ffffffffff");
        assert!(root.can_trace());
        let bpf_and_perfmon = Capabilities::parse(&format!("CapEff:\t{:016x}\n", (1u64 << 39) | (1 << 38)));
        assert!(bpf_and_perfmon.is_some_and(|c| c.can_trace()));
        let bpf_only = Capabilities::parse(&format!("CapEff:\t{:016x}\n", 1u64 << 39));
        assert!(bpf_only.is_some_and(|c| !c.can_trace()));
        assert_eq!(Capabilities::parse("CapEff:\tzz\n"), None);
        assert_eq!(Capabilities::parse("nothing"), None);
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(version("5.10.0-30-amd64"), Some((5, 10)));
        assert_eq!(version("4.18.0-553.el8_10.x86_64"), Some((4, 18)));
        assert_eq!(version("garbage"), None);
    }

    #[test]
    fn lockdown_mode() {
        assert_eq!(parse_lockdown("none [integrity] confidentiality\n").as_deref(), Some("integrity"));
        assert_eq!(parse_lockdown(""), None);
    }
}
