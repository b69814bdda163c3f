//! Facts about the running kernel and this process that decide what can be
//! loaded: effective capabilities (which ones tracing uses, what each
//! missing one costs, and which are dropped after attach), the kernel
//! release, lockdown, kprobe support and symbols, the BTF path. Each is
//! read and parsed here once; the parsers take text so they are testable
//! without the real files.

use std::path::Path;

/// The default location of the running kernel's BTF.
pub(crate) const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Where the kernel exposes the kprobe PMU that kprobes attach through.
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe/type";

/// A capability the tracer uses (numbers from `linux/capability.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cap {
    DacReadSearch = 2,
    SysPtrace = 19,
    SysAdmin = 21,
    SysResource = 24,
    Perfmon = 38,
    Bpf = 39,
}

impl Cap {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Cap::DacReadSearch => "CAP_DAC_READ_SEARCH",
            Cap::SysPtrace => "CAP_SYS_PTRACE",
            Cap::SysAdmin => "CAP_SYS_ADMIN",
            Cap::SysResource => "CAP_SYS_RESOURCE",
            Cap::Perfmon => "CAP_PERFMON",
            Cap::Bpf => "CAP_BPF",
        }
    }

    pub(crate) fn bit(self) -> u64 {
        1 << self as u32
    }
}

/// What the tracer keeps once its programs are attached: the /proc scans
/// of every tick read other users' `/proc/PID/fd` (listing needs
/// CAP_DAC_READ_SEARCH, the links and `/proc/PID/ns/net` need
/// CAP_SYS_PTRACE). Reading maps, running the TCP health pass
/// (`BPF_PROG_TEST_RUN`, or an iterator) and detaching go through the file
/// descriptors already held and need no capability.
pub(crate) const KEPT_AFTER_ATTACH: [Cap; 2] = [Cap::SysPtrace, Cap::DacReadSearch];

/// Before 6.5 the kernel checks CAP_BPF (or CAP_SYS_ADMIN) on every
/// `bpf(2)` command while unprivileged BPF is disabled (the default), map
/// reads on held descriptors included: on those kernels the one of them
/// the process has is kept too.
pub(crate) const BPF_CHECKS_EVERY_COMMAND_BEFORE: (u32, u32) = (6, 5);

/// The capabilities kept after attach on a kernel of `version`.
pub(crate) fn kept_after_attach(version: Option<(u32, u32)>) -> u64 {
    let mut keep: u64 = KEPT_AFTER_ATTACH.iter().map(|c| c.bit()).sum();
    if version.is_none_or(|v| v < BPF_CHECKS_EVERY_COMMAND_BEFORE) {
        keep |= Cap::Bpf.bit() | Cap::SysAdmin.bit();
    }
    keep
}

/// Gives up every capability but [`kept_after_attach`] for good (effective,
/// permitted, inheritable, ambient and, where allowed, bounding sets), on
/// the calling thread: call it while it is the only thread. A failure is
/// logged and tracing goes on with what the process has.
pub(crate) fn drop_capabilities() {
    let keep = kept_after_attach(release().as_deref().and_then(version));
    match crate::sys::caps::restrict_to(keep) {
        Ok(sets) => log::debug!("capabilities after attach: {}", names(sets.effective).join(", ")),
        Err(err) => log::warn!("could not drop the capabilities no longer needed after attach: {err}"),
    }
}

/// Names of the capabilities in `bits` the tracer knows, then the others
/// by number.
pub(crate) fn names(bits: u64) -> Vec<String> {
    const KNOWN: [Cap; 6] =
        [Cap::Bpf, Cap::Perfmon, Cap::SysAdmin, Cap::SysPtrace, Cap::DacReadSearch, Cap::SysResource];
    let mut names: Vec<String> = KNOWN.iter().filter(|c| bits & c.bit() != 0).map(|c| c.name().to_owned()).collect();
    let others = (0..64).filter(|n| bits & (1u64 << n) != 0 && !KNOWN.iter().any(|c| *c as u32 == *n));
    names.extend(others.map(|n| format!("cap {n}")));
    names
}

/// This process's effective capabilities (`CapEff:` of `/proc/self/status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Capabilities {
    /// As the kernel prints it (hex), for people.
    pub(crate) text: String,
    pub(crate) bits: u64,
}

impl Capabilities {
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

    pub(crate) fn has(&self, cap: Cap) -> bool {
        self.bits & cap.bit() != 0
    }

    /// Whether these allow loading and attaching the tracer's programs.
    pub(crate) fn can_trace(&self) -> bool {
        self.has(Cap::SysAdmin) || (self.has(Cap::Bpf) && self.has(Cap::Perfmon))
    }

    /// Why these cannot load the programs (one line), if they cannot.
    pub(crate) fn load_blocker(&self) -> Option<String> {
        if self.can_trace() {
            return None;
        }
        let missing: Vec<&str> =
            [Cap::Bpf, Cap::Perfmon].into_iter().filter(|c| !self.has(*c)).map(Cap::name).collect();
        Some(format!(
            "no {} (loading and attaching eBPF programs needs CAP_BPF and CAP_PERFMON on kernel 5.8+, \
             CAP_SYS_ADMIN before): run it as root or grant them (README, \"Capabilities\")",
            missing.join(" or ")
        ))
    }

    /// Each capability the tracer uses on a kernel of `version`, whether
    /// this process has it, and what its absence costs.
    pub(crate) fn assess(&self, version: Option<(u32, u32)>, memlock_unlimited: bool) -> Vec<CapabilityUse> {
        let has_cap_bpf = version.is_none_or(|v| v >= (5, 8));
        let admin = self.has(Cap::SysAdmin);
        let loading_cost = "the eBPF programs cannot be loaded: trace and agent exit with an error";
        let mut uses = Vec::new();
        let mut add = |cap: Cap, needed: bool, role: &'static str, cost: &'static str| {
            uses.push(CapabilityUse { cap, held: self.has(cap), needed, role, cost });
        };
        if has_cap_bpf {
            add(Cap::Bpf, !admin, "create the maps, load the programs (CAP_SYS_ADMIN also does)", loading_cost);
            add(Cap::Perfmon, !admin, "load tracing programs that read kernel memory, attach them", loading_cost);
            add(
                Cap::SysAdmin,
                false,
                "instead of CAP_BPF and CAP_PERFMON (the only way before kernel 5.8)",
                "nothing here",
            );
        } else {
            add(Cap::SysAdmin, true, "load and attach (this kernel predates CAP_BPF and CAP_PERFMON)", loading_cost);
        }
        add(
            Cap::SysPtrace,
            true,
            "read other users' /proc/PID/fd links and /proc/PID/ns/net",
            "owners of other users' sockets unknown (accepted sockets that never moved a byte, sockets open \
             before the start); sockets open before the start in network namespaces of other users' \
             processes not loaded, nor their TIME_WAIT counts",
        );
        add(
            Cap::DacReadSearch,
            true,
            "list other users' /proc/PID/fd",
            "owners of other users' sockets unknown (accepted sockets that never moved a byte, sockets open \
             before the start)",
        );
        let old_memlock = version.is_some_and(|v| v < (5, 11));
        add(
            Cap::SysResource,
            old_memlock && !memlock_unlimited,
            if old_memlock {
                "raise RLIMIT_MEMLOCK, which this kernel (before 5.11) charges BPF maps to"
            } else {
                "raise RLIMIT_MEMLOCK (kernels 5.11+ charge BPF maps to the memory cgroup instead)"
            },
            "maps past the locked-memory limit cannot be created: loading fails (or set LimitMEMLOCK=infinity)",
        );
        uses
    }
}

/// One capability's part in tracing, for `doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CapabilityUse {
    pub(crate) cap: Cap,
    pub(crate) held: bool,
    /// Needed here (on this kernel, with the others this process has).
    pub(crate) needed: bool,
    pub(crate) role: &'static str,
    /// What tracing loses without it.
    pub(crate) cost: &'static str,
}

/// Whether this process may lock unlimited memory (`RLIMIT_MEMLOCK`).
pub(crate) fn memlock_unlimited() -> bool {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("Max locked memory"))?;
            Some(line.split_whitespace().nth(3)? == "unlimited")
        })
        .unwrap_or(false)
}

/// Why this process cannot load the programs, if it cannot.
pub(crate) fn load_blocker() -> Option<String> {
    match Capabilities::current() {
        Some(caps) => caps.load_blocker(),
        None => Some("cannot read this process's capabilities (/proc/self/status)".to_owned()),
    }
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
    fn older_kernels_keep_the_bpf_capability_for_map_reads() {
        let base = Cap::SysPtrace.bit() | Cap::DacReadSearch.bit();
        assert_eq!(kept_after_attach(Some((6, 18))), base);
        assert_eq!(kept_after_attach(Some((6, 5))), base);
        assert_eq!(kept_after_attach(Some((6, 1))), base | Cap::Bpf.bit() | Cap::SysAdmin.bit());
        assert_eq!(kept_after_attach(Some((5, 10))), base | Cap::Bpf.bit() | Cap::SysAdmin.bit());
        assert_eq!(kept_after_attach(None), base | Cap::Bpf.bit() | Cap::SysAdmin.bit());
    }

    #[test]
    fn effective_capabilities() {
        let root = Capabilities::parse("Name:\tx\nCapInh:\t0\nCapEff:\t000001ffffffffff\n").expect("parses");
        assert_eq!(root.text, "000001ffffffffff");
        assert!(root.can_trace());
        let bpf_and_perfmon = Capabilities::parse(&format!("CapEff:\t{:016x}\n", (1u64 << 39) | (1 << 38)));
        assert!(bpf_and_perfmon.is_some_and(|c| c.can_trace()));
        let bpf_only = Capabilities::parse(&format!("CapEff:\t{:016x}\n", 1u64 << 39)).expect("parses");
        assert!(!bpf_only.can_trace());
        assert!(bpf_only.load_blocker().is_some_and(|line| line.starts_with("no CAP_PERFMON (")));
        assert_eq!(root.load_blocker(), None);
        assert_eq!(Capabilities::parse("CapEff:\tzz\n"), None);
        assert_eq!(Capabilities::parse("nothing"), None);
    }

    #[test]
    fn what_each_capability_costs() {
        let caps = |list: &[Cap]| Capabilities { text: String::new(), bits: list.iter().map(|c| c.bit()).sum() };
        let documented = caps(&[Cap::Bpf, Cap::Perfmon, Cap::SysPtrace, Cap::DacReadSearch]);
        let missing = |c: &Capabilities, version, memlock| -> Vec<&str> {
            c.assess(version, memlock).iter().filter(|u| u.needed && !u.held).map(|u| u.cap.name()).collect()
        };
        assert!(missing(&documented, Some((6, 18)), false).is_empty());
        let no_ptrace = caps(&[Cap::Bpf, Cap::Perfmon, Cap::DacReadSearch]);
        assert_eq!(missing(&no_ptrace, Some((6, 18)), false), ["CAP_SYS_PTRACE"]);
        // CAP_SYS_ADMIN stands in for both loading capabilities.
        let admin = caps(&[Cap::SysAdmin, Cap::SysPtrace, Cap::DacReadSearch]);
        assert!(missing(&admin, Some((6, 1)), false).is_empty());
        // Before 5.8 only CAP_SYS_ADMIN loads; before 5.11 memlock matters.
        assert_eq!(missing(&documented, Some((5, 4)), false), ["CAP_SYS_ADMIN", "CAP_SYS_RESOURCE"]);
        assert_eq!(missing(&admin, Some((5, 10)), true), Vec::<&str>::new());
        assert_eq!(names(Cap::Bpf.bit() | Cap::SysPtrace.bit() | (1 << 12)), ["CAP_BPF", "CAP_SYS_PTRACE", "cap 12"]);
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
