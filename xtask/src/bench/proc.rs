//! What the bench reads about a process and the machine: CPU time
//! (`/proc/PID/stat` utime+stime over `CLK_TCK`), memory (`VmHWM`, `VmRSS`
//! in `/proc/PID/status`), the machine's description, and the figures of a
//! Prometheus text exposition. The parsers are plain functions over text.

use std::{collections::HashMap, fs};

use anyhow::{Context as _, Result};

/// Peak and current resident memory of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub peak_kib: u64,
    pub current_kib: u64,
}

pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = parse_stat_cpu_ticks(&text).with_context(|| format!("parsing {path}"))?;
    Ok(ticks as f64 / clock_ticks_per_second())
}

pub fn memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_memory(&text).with_context(|| format!("parsing {path}"))
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no pointer arguments.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command
/// name (field 2) may hold spaces and parentheses: count from the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace().skip(11); // fields 3..=13
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

pub fn parse_status_memory(status: &str) -> Option<Memory> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    };
    Some(Memory { peak_kib: field("VmHWM:")?, current_kib: field("VmRSS:")? })
}

/// Sample values of a Prometheus text exposition by metric name (labels
/// dropped; series of the same name are summed).
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut values = HashMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, rest) = match line.find('{') {
            Some(open) => match line[open..].find('}') {
                Some(close) => (&line[..open], &line[open + close + 1..]),
                None => continue,
            },
            None => match line.split_once(char::is_whitespace) {
                Some((name, rest)) => (name, rest),
                None => continue,
            },
        };
        let Some(Ok(value)) = rest.split_whitespace().next().map(str::parse::<f64>) else { continue };
        *values.entry(series.to_owned()).or_insert(0.0) += value;
    }
    values
}

/// eBPF program types that tracers attach to the socket and TCP hooks:
/// kprobe, tracepoint, raw tracepoint, tracing (tp_btf, fentry).
const TRACING_PROGRAM_TYPES: [u32; 4] = [2, 5, 17, 26];

/// Processes other than `exclude` that hold eBPF tracing programs (another
/// tracer or a test run by someone else on this machine): (pid, comm).
pub fn foreign_tracers(exclude: &[u32]) -> Vec<(u32, String)> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    let own = std::process::id();
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == own || exclude.contains(&pid) {
            continue;
        }
        let Ok(fds) = fs::read_dir(entry.path().join("fdinfo")) else { continue };
        let holds_program = fds.flatten().any(|fd| {
            fs::read_to_string(fd.path())
                .ok()
                .and_then(|info| parse_fdinfo_program_type(&info))
                .is_some_and(|t| TRACING_PROGRAM_TYPES.contains(&t))
        });
        if holds_program {
            let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            found.push((pid, comm.trim().to_owned()));
        }
    }
    found
}

/// The `prog_type` of a `/proc/PID/fdinfo/FD` text, if the fd is an eBPF program.
pub fn parse_fdinfo_program_type(info: &str) -> Option<u32> {
    info.lines().find_map(|l| l.strip_prefix("prog_type:")).and_then(|v| v.trim().parse().ok())
}

/// One line about the machine: CPU model, CPUs, memory, kernel.
pub fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cpus} CPUs, {mem_gib:.0} GiB RAM, Linux {}", kernel.trim())
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// Run time and run count, summed over the eBPF tracing programs `pid`
/// holds (`run_time_ns` / `run_cnt` of their fdinfo; counted only while
/// `kernel.bpf_stats_enabled` is 1).
pub fn program_runs(pid: u32) -> (u64, u64) {
    program_runs_of(pid, &TRACING_PROGRAM_TYPES)
}

/// The tracer's programs that run on hooks: its TCP health pass (the one
/// raw tracepoint program, run by `BPF_PROG_TEST_RUN` once per collection
/// over every tracked socket) is collection work, not a cost per syscall,
/// and is left out.
pub const HOOKED_PROGRAM_TYPES: [u32; 3] = [2, 5, 26];

/// [`program_runs`] over the programs of these types only.
pub fn program_runs_of(pid: u32, types: &[u32]) -> (u64, u64) {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return (0, 0) };
    let mut total = (0, 0);
    for fd in fds.flatten() {
        let Ok(info) = fs::read_to_string(fd.path()) else { continue };
        if !parse_fdinfo_program_type(&info).is_some_and(|t| types.contains(&t)) {
            continue;
        }
        if let Some((time, count)) = parse_fdinfo_runs(&info) {
            total.0 += time;
            total.1 += count;
        }
    }
    total
}

/// One eBPF program's identity and the kernel's accounting of its runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramStat {
    pub id: u32,
    pub prog_type: u32,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Every eBPF tracing program `pid` holds, with its run time and count
/// (one per program id, however many fds point at it).
pub fn program_stats(pid: u32) -> Vec<ProgramStat> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return Vec::new() };
    let mut found: Vec<ProgramStat> = fds
        .flatten()
        .filter_map(|fd| fs::read_to_string(fd.path()).ok())
        .filter_map(|info| parse_fdinfo_program(&info))
        .collect();
    found.sort_by_key(|p| p.id);
    found.dedup_by_key(|p| p.id);
    found
}

/// [`ProgramStat`] of the program behind fd `fd` of `pid`.
pub fn fd_program_stat(pid: u32, fd: i32) -> Option<ProgramStat> {
    parse_fdinfo_program(&fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?)
}

/// A tracing program's [`ProgramStat`] from its fdinfo text.
pub fn parse_fdinfo_program(info: &str) -> Option<ProgramStat> {
    let (run_time_ns, run_cnt) = parse_fdinfo_runs(info)?;
    let id = info.lines().find_map(|l| l.strip_prefix("prog_id:")).and_then(|v| v.trim().parse().ok())?;
    Some(ProgramStat { id, prog_type: parse_fdinfo_program_type(info)?, run_time_ns, run_cnt })
}

/// Names of the loaded eBPF programs by id, from `bpftool -j prog show`
/// (the kernel keeps 15 characters of a name; bpftool shows the full
/// function name where the program has BTF). Empty if bpftool is missing.
pub fn program_names() -> HashMap<u32, String> {
    std::process::Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| parse_bpftool_names(&String::from_utf8_lossy(&out.stdout)))
        .unwrap_or_default()
}

/// `id -> name` of a `bpftool -j prog show` listing.
pub fn parse_bpftool_names(json: &str) -> HashMap<u32, String> {
    let Ok(serde_json::Value::Array(programs)) = serde_json::from_str(json) else { return HashMap::new() };
    programs
        .iter()
        .filter_map(|p| {
            let id = u32::try_from(p.get("id")?.as_u64()?).ok()?;
            Some((id, p.get("name")?.as_str()?.to_owned()))
        })
        .collect()
}

/// `(run_time_ns, run_cnt)` of a tracing program's fdinfo text.
pub fn parse_fdinfo_runs(info: &str) -> Option<(u64, u64)> {
    if !parse_fdinfo_program_type(info).is_some_and(|t| TRACING_PROGRAM_TYPES.contains(&t)) {
        return None;
    }
    let field = |name: &str| {
        info.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim_start_matches(':').trim().parse().ok())
    };
    Some((field("run_time_ns")?, field("run_cnt")?))
}

/// Turns `kernel.bpf_stats_enabled` on for its lifetime (and back to what
/// it was when dropped).
pub struct BpfStats {
    previous: String,
}

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Whether `kernel.bpf_stats_enabled` is on (someone else may have turned
/// it on: then every program run pays two clock reads more).
pub fn bpf_stats_enabled() -> bool {
    fs::read_to_string(BPF_STATS_SYSCTL).is_ok_and(|v| v.trim() == "1")
}

impl BpfStats {
    pub fn enable() -> std::io::Result<Self> {
        let previous = fs::read_to_string(BPF_STATS_SYSCTL)?.trim().to_owned();
        fs::write(BPF_STATS_SYSCTL, "1")?;
        Ok(BpfStats { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS_SYSCTL, &self.previous);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_runs_from_fdinfo() {
        let info = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nprog_jited:\t1\nrun_time_ns:\t1500\nrun_cnt:\t30\n";
        assert_eq!(parse_fdinfo_runs(info), Some((1500, 30)));
        // A socket filter is not a tracing program.
        assert_eq!(parse_fdinfo_runs(&info.replace("prog_type:\t26", "prog_type:\t1")), None);
        assert_eq!(parse_fdinfo_runs("pos:\t0\n"), None);
    }

    #[test]
    fn program_stats_from_fdinfo_and_names_from_bpftool() {
        let info = "pos:\t0\nprog_type:\t17\nprog_jited:\t1\nprog_id:\t812\nrun_time_ns:\t900\nrun_cnt:\t3\n";
        assert_eq!(
            parse_fdinfo_program(info),
            Some(ProgramStat { id: 812, prog_type: 17, run_time_ns: 900, run_cnt: 3 })
        );
        assert_eq!(parse_fdinfo_program(&info.replace("prog_id:\t812\n", "")), None);
        let json = r#"[{"id":812,"type":"raw_tracepoint","name":"e_tcp_destroy_s","run_time_ns":900},
                       {"id":813,"type":"tracing","name":"inet_sock_set_state"},{"id":5}]"#;
        let names = parse_bpftool_names(json);
        assert_eq!(names.get(&812).map(String::as_str), Some("e_tcp_destroy_s"));
        assert_eq!(names.get(&813).map(String::as_str), Some("inet_sock_set_state"));
        assert_eq!(names.len(), 2);
        assert!(parse_bpftool_names("not json").is_empty());
    }

    #[test]
    fn stat_counts_from_the_last_parenthesis() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("4242 (x) S 1"), None);
    }

    #[test]
    fn status_gives_peak_and_current_rss() {
        let status = "Name:\ttracer\nVmPeak:\t  900000 kB\nVmHWM:\t   31000 kB\nVmRSS:\t   29000 kB\n";
        assert_eq!(parse_status_memory(status), Some(Memory { peak_kib: 31000, current_kib: 29000 }));
        assert_eq!(parse_status_memory("Name:\tkthread\n"), None);
    }

    #[test]
    fn fdinfo_program_type() {
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t2072\nprog_type:\t26\nprog_jited:\t1\n";
        assert_eq!(parse_fdinfo_program_type(info), Some(26));
        assert_eq!(parse_fdinfo_program_type("pos:\t0\nflags:\t02\n"), None);
    }

    #[test]
    fn metrics_are_summed_by_name() {
        let text = "# HELP tracer_collect_duration_seconds x\n# TYPE tracer_collect_duration_seconds gauge\n\
                    tracer_collect_duration_seconds 0.012\n\
                    tracer_tcp_sockets{comm=\"a b\",state=\"LISTEN\"} 2\n\
                    tracer_tcp_sockets{comm=\"c\",state=\"ESTABLISHED\"} 3 1700000000\n\
                    tracer_scan_seconds_sum 1.5\ntracer_scan_seconds_count 3\nbroken{\n";
        let values = parse_metrics(text);
        assert_eq!(values.get("tracer_collect_duration_seconds"), Some(&0.012));
        assert_eq!(values.get("tracer_tcp_sockets"), Some(&5.0));
        assert_eq!(values.get("tracer_scan_seconds_count"), Some(&3.0));
        assert_eq!(values.len(), 4);
    }
}
