//! The deployment artefacts under `deploy/`, tested for real:
//! - the Debian package (`cargo xtask dist`): `dpkg -i` installs a
//!   `/usr/bin/tracer` that runs `doctor` and a trace with exact bytes,
//!   enables and starts nothing, and `dpkg -P` removes it and its system
//!   user, leaving the machine as found;
//! - the systemd unit: `systemd-analyze verify` is clean, `systemd-analyze
//!   security --offline=yes` rates it "OK" or better, and its `ExecStart`
//!   run under `setpriv` with the unit's user, capabilities and
//!   no-new-privileges counts an exact transfer; `strace` of that run checks
//!   that every system call and address family the agent used is allowed by
//!   the unit's `SystemCallFilter` and `RestrictAddressFamilies`, and that
//!   it opened no file `ProtectSystem=strict`, `ProtectHome` or
//!   `PrivateDevices` would refuse (systemd is not PID 1 here, so they
//!   cannot be enforced by starting the unit);
//! - the Kubernetes manifests: `kubernetes-validate --strict` (the
//!   Kubernetes API schemas, offline) for the core kinds, and validators
//!   compiled from the published prometheus-operator CRD schemas (npm
//!   `@kubernetes-models/prometheus-operator`) for the PodMonitor and the
//!   PrometheusRule;
//! - the alert rules: `promtool check rules` and `promtool test rules`, with
//!   a firing and a silent case for every alert;
//! - the Grafana dashboard: a real agent, real traffic creating each panel's
//!   condition (a CLOSE_WAIT finding, retransmits, a failed connect, a
//!   reset), a real Prometheus scraping it, and every panel's PromQL (its
//!   variables substituted) returning data through the HTTP API.
//!
//! Needs root, and what `cargo xtask test` prepares: `TRACER_DEB` (the
//! binary under test packaged by `xtask dist`), `TRACER_DEPLOY_VENV` (a
//! venv with kubernetes-validate and PyYAML), `TRACER_DEPLOY_NPM` (the CRD
//! validators). Fails, never skips, when something is missing.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tracer_tests::{receive_exactly, send_exactly, serial, tracer_bin, wait_bounded, NetNs, Proc};

/// Panels of deploy/grafana/tracer.json whose metric (or label) the agent
/// does not export yet (title, what is missing), for a panel added ahead of
/// its metric: such panels are queried and their state printed, but not
/// required to return data. Remove the entry once `main` exports what it
/// names: the test then fails if the panel returns nothing. Empty since the
/// TCP health metrics landed: every panel must return data.
const PENDING: &[(&str, &str)] = &[];

/// Panels whose healthy value is 0: data is required, a positive value not.
const ZERO_IS_HEALTHY: &[&str] = &["Events dropped", "Untracked sockets"];

/// The metric names the agent exports or will (DESIGN.md): anything else in
/// a panel or rule is a typo. `up` is Prometheus' own.
const KNOWN_METRICS: &[&str] = &[
    "tracer_tcp_sent_bytes_total",
    "tracer_tcp_received_bytes_total",
    "tracer_tcp_retransmits_total",
    "tracer_tcp_connections_opened_total",
    "tracer_tcp_failed_connects_total",
    "tracer_tcp_resets_total",
    "tracer_tcp_sockets",
    "tracer_tcp_close_wait_oldest_seconds",
    "tracer_findings",
    "tracer_events_total",
    "tracer_events_dropped_total",
    "tracer_tracked_sockets",
    "tracer_collect_duration_seconds",
    "tracer_backend_info",
    "tracer_build_info",
    "tracer_tcp_sent_segments_total",
    "tracer_untracked_sockets_total",
    "tracer_tcp_rtt_seconds_bucket",
    "tracer_tcp_connect_duration_seconds_bucket",
    "tracer_tcp_receive_queue_bytes",
    "tracer_tcp_send_queue_bytes",
    "tracer_tcp_rwnd_limited_seconds_total",
];

/// The unit as the package installs it.
const UNIT_PATH: &str = "/usr/lib/systemd/system/tracer.service";
/// Attaching can take a while on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(40);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

fn deploy(path: &str) -> PathBuf {
    repo().join("deploy").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A path `cargo xtask test` passes in the environment.
fn prepared(name: &str) -> PathBuf {
    let path = std::env::var_os(name).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{name} is not set: run the deployment tests with `cargo xtask test`, which builds the package and installs their tools")
    });
    assert!(path.exists(), "{name}={} does not exist: run `cargo xtask test` again", path.display());
    path
}

fn venv_bin(name: &str) -> PathBuf {
    prepared("TRACER_DEPLOY_VENV").join(name)
}

/// Runs a command; panics with its output unless it succeeds.
fn must(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let output = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        output.status.success(),
        "{shown} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The YAML documents of `paths`, as JSON (PyYAML from the test venv).
fn yaml_docs(paths: &[PathBuf]) -> Vec<Value> {
    const SCRIPT: &str = "import json, sys, yaml\n\
        print(json.dumps([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d is not None]))";
    let output = must(Command::new(venv_bin("python")).arg("-c").arg(SCRIPT).args(paths));
    serde_json::from_slice(&output.stdout).expect("PyYAML printed JSON")
}

fn yaml_doc(path: &Path) -> Value {
    let mut docs = yaml_docs(&[path.to_path_buf()]);
    assert_eq!(docs.len(), 1, "{} holds one document", path.display());
    docs.remove(0)
}

/// `[Service]` (and other sections') `Key=value` lines of a unit; repeated
/// keys keep every value.
fn unit_directives(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not a directive: {line:?}"));
        map.entry(key.to_owned()).or_default().push(value.to_owned());
    }
    map
}

fn directive<'a>(unit: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match unit.get(key).map(Vec::as_slice) {
        Some([value]) => value,
        other => panic!("the unit must set {key} once, has {other:?}"),
    }
}

/// The unit's capability names, e.g. `["CAP_BPF", ...]`.
fn unit_capabilities(unit: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let ambient: Vec<String> = directive(unit, "AmbientCapabilities").split_whitespace().map(str::to_owned).collect();
    let bounding: Vec<String> =
        directive(unit, "CapabilityBoundingSet").split_whitespace().map(str::to_owned).collect();
    assert_eq!(ambient, bounding, "the unit's ambient and bounding sets must be the same");
    ambient
}

/// The capability mask of `CAP_NAME`s (linux/capability.h numbers).
fn capability_mask(names: &[String]) -> u64 {
    names
        .iter()
        .map(|name| match name.as_str() {
            "CAP_DAC_READ_SEARCH" => 1u64 << 2,
            "CAP_NET_ADMIN" => 1 << 12,
            "CAP_SYS_PTRACE" => 1 << 19,
            "CAP_SYS_ADMIN" => 1 << 21,
            "CAP_SYS_RESOURCE" => 1 << 24,
            "CAP_PERFMON" => 1 << 38,
            "CAP_BPF" => 1 << 39,
            other => panic!("capability {other} is not one the project documents"),
        })
        .fold(0, |mask, bit| mask | bit)
}

fn own_comm() -> String {
    read(Path::new("/proc/self/comm")).trim_end().to_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

fn send_signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) on a process this test started and has not reaped.
    unsafe { libc::kill(pid, signal) };
}

// ---------------------------------------------------------------- HTTP

struct Response {
    status: u16,
    body: String,
}

/// One HTTP/1.1 GET with `Connection: close` (chunked bodies decoded).
fn http_get(addr: SocketAddr, path: &str) -> Option<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let headers = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut body = raw[split + 4..].to_vec();
    if headers.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    let status = headers.split(' ').nth(1)?.parse().ok()?;
    Some(Response { status, body: String::from_utf8_lossy(&body).into_owned() })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        let Some(end) = data.windows(2).position(|w| w == b"\r\n") else { break };
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 || data.len() < end + 2 + size {
            break;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[(end + 4 + size).min(data.len())..];
    }
    out
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of the sample `name{labels...}` in a Prometheus text scrape
/// whose labels include all of `labels`.
fn scraped(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        if metric != name || !labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))) {
            return None;
        }
        value.parse().ok()
    })
}

/// A directory of this test run under the temporary directory, removed
/// when dropped (also on a panic).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tracer-deploy-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------- processes

/// A child whose stderr is collected; killed by its pid when dropped.
struct Daemon {
    name: &'static str,
    child: Child,
    stderr: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
}

impl Daemon {
    fn spawn(name: &'static str, mut cmd: Command) -> Daemon {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (sender, lines) = mpsc::channel();
        let pipe = child.stderr.take().expect("stderr is piped");
        let transcript = Arc::clone(&stderr);
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut text) = transcript.lock() {
                    text.push_str(&line);
                    text.push('\n');
                }
                let _ = sender.send(line);
            }
        });
        Daemon { name, child, stderr, lines }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits for a stderr line starting with `prefix`; returns its rest.
    fn wait_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_owned();
                    }
                }
                Err(_) => {
                    let status = wait_bounded(&mut self.child, Duration::from_secs(2));
                    panic!("{} printed no {prefix:?} ({status:?}); stderr:\n{}", self.name, self.stderr());
                }
            }
        }
    }

    /// The address of a `tracer agent` started with this daemon.
    fn agent_address(&mut self) -> SocketAddr {
        let rest = self.wait_line("tracer: agent listening on http://");
        let addr = rest.split_whitespace().next().unwrap_or_default();
        addr.parse().unwrap_or_else(|e| panic!("bad agent address {addr:?}: {e}"))
    }

    /// SIGTERM to `pid` (this child or a process it exec'd into), then a
    /// bounded wait for the child.
    fn terminate(mut self, pid: u32) -> String {
        send_signal(pid, libc::SIGTERM);
        let status = wait_bounded(&mut self.child, Duration::from_secs(20));
        thread::sleep(Duration::from_millis(50));
        let stderr = self.stderr();
        assert!(
            status.is_some_and(|s| s.success()),
            "{} did not exit cleanly ({status:?}); stderr:\n{stderr}",
            self.name
        );
        stderr
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A loopback transfer: the client sends `sent` bytes, the server answers
/// `answered`, both close. Returns once both ends are closed.
fn transfer(listener: &TcpListener, sent: u64, answered: u64) {
    let addr = listener.local_addr().expect("listener address");
    let client = thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        send_exactly(&mut stream, sent);
        receive_exactly(&mut stream, answered);
    });
    let (mut stream, _) = listener.accept().expect("accept");
    receive_exactly(&mut stream, sent);
    send_exactly(&mut stream, answered);
    drop(stream);
    client.join().expect("client thread");
}

// ---------------------------------------------------------------- the package

fn dpkg_status() -> Option<String> {
    let output = Command::new("dpkg-query").args(["-W", "-f=${Status}", "tracer"]).output().ok()?;
    output.status.success().then(|| text(&output)).filter(|s| !s.contains("not-installed"))
}

fn user_exists(name: &str) -> bool {
    Command::new("getent").args(["passwd", name]).output().is_ok_and(|o| o.status.success())
}

fn group_exists(name: &str) -> bool {
    Command::new("getent").args(["group", name]).output().is_ok_and(|o| o.status.success())
}

/// The account databases, to compare before and after.
fn accounts() -> BTreeMap<&'static str, String> {
    ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"]
        .into_iter()
        .map(|path| (path, std::fs::read_to_string(path).unwrap_or_default()))
        .collect()
}

/// Purges the package if a test that installed it fails half-way.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        if dpkg_status().is_some() {
            let _ = Command::new("dpkg").args(["-P", "tracer"]).stdout(Stdio::null()).status();
        }
    }
}

/// Processes running `exe`.
fn processes_running(exe: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|target| target == exe))
        .collect()
}

/// `tracer trace` of the installed binary with a loopback transfer the
/// test makes: exact bytes in its JSON report.
fn installed_trace_counts_exactly(tracer: &Path) {
    const SENT: u64 = 1_234_567;
    const ANSWERED: u64 = 76_543;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let mut trace = Command::new(tracer);
    trace.args(["trace", "--format", "json", "--duration", "120s", "--interval", "1s", "--port", &port.to_string()]);
    let mut child = trace
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tracer.display()));
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let report = thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let mut daemon = Daemon::spawn_attached("installed tracer trace", child);
    daemon.wait_line("tracer: attached");
    transfer(&listener, SENT, ANSWERED);
    thread::sleep(tracer_tests::SETTLE);
    send_signal(daemon.child.id(), libc::SIGINT);
    let status = wait_bounded(&mut daemon.child, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "trace failed ({status:?}); stderr:\n{}", daemon.stderr());
    let report: Value = serde_json::from_str(&report.join().expect("stdout reader"))
        .unwrap_or_else(|e| panic!("the report is not JSON ({e}); stderr:\n{}", daemon.stderr()));
    let pid = std::process::id();
    let flow = |role: &str| {
        report["flows"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| {
                f["pid"] == pid
                    && f["role"] == role
                    && (f["local_port"] == u64::from(port) || f["remote_port"] == u64::from(port))
            })
            .cloned()
            .unwrap_or_else(|| panic!("no {role} flow on port {port} in {report:#}"))
    };
    let (client, server) = (flow("client"), flow("server"));
    assert_eq!((client["tx_bytes"].as_u64(), client["rx_bytes"].as_u64()), (Some(SENT), Some(ANSWERED)), "{client:#}");
    assert_eq!((server["tx_bytes"].as_u64(), server["rx_bytes"].as_u64()), (Some(ANSWERED), Some(SENT)), "{server:#}");
    eprintln!("deploy: installed tracer trace counted {SENT} + {ANSWERED} bytes exactly");
}

impl Daemon {
    /// Wraps a child spawned elsewhere (stderr piped).
    fn spawn_attached(name: &'static str, mut child: Child) -> Daemon {
        let stderr = Arc::new(Mutex::new(String::new()));
        let (sender, lines) = mpsc::channel();
        let pipe = child.stderr.take().expect("stderr is piped");
        let transcript = Arc::clone(&stderr);
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut text) = transcript.lock() {
                    text.push_str(&line);
                    text.push('\n');
                }
                let _ = sender.send(line);
            }
        });
        Daemon { name, child, stderr, lines }
    }
}

/// The syscalls of a `systemd-analyze syscall-filter` group, nested groups
/// expanded.
fn syscall_group(name: &str, cache: &mut BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    if let Some(set) = cache.get(name) {
        return set.clone();
    }
    let output = must(Command::new("systemd-analyze").args(["syscall-filter", name]));
    let mut set = BTreeSet::new();
    for line in text(&output).lines().skip(1) {
        let entry = line.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        if entry.starts_with('@') {
            set.extend(syscall_group(entry, cache));
        } else {
            set.insert(entry.to_owned());
        }
    }
    assert!(!set.is_empty(), "systemd-analyze knows no syscall group {name}");
    cache.insert(name.to_owned(), set.clone());
    set
}

/// The system calls the unit's `SystemCallFilter` lines allow.
fn allowed_syscalls(unit: &BTreeMap<String, Vec<String>>) -> BTreeSet<String> {
    let mut cache = BTreeMap::new();
    let mut allowed: Option<BTreeSet<String>> = None;
    for line in unit.get("SystemCallFilter").into_iter().flatten() {
        let (deny, list) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, line.as_str()),
        };
        let mut set = BTreeSet::new();
        for entry in list.split_whitespace() {
            if entry.starts_with('@') {
                set.extend(syscall_group(entry, &mut cache));
            } else {
                set.insert(entry.to_owned());
            }
        }
        allowed = Some(match (allowed, deny) {
            (None, false) => set,
            (Some(current), false) => current.union(&set).cloned().collect(),
            (Some(current), true) => current.difference(&set).cloned().collect(),
            (None, true) => panic!("the unit's first SystemCallFilter must be an allow list"),
        });
    }
    allowed.expect("the unit sets SystemCallFilter")
}

/// The system calls and socket families in an `strace -f` log, from the
/// exec of `exe` on.
fn strace_calls(log: &str, exe: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let start = format!("execve(\"{}\"", exe.display());
    let mut seen = false;
    let (mut calls, mut families) = (BTreeSet::new(), BTreeSet::new());
    for line in log.lines() {
        let rest = line.split_once(' ').map(|(_, r)| r.trim_start()).unwrap_or(line);
        if !seen {
            seen = rest.starts_with(&start);
            continue;
        }
        if rest.starts_with("<...") || rest.starts_with("---") || rest.starts_with("+++") {
            continue;
        }
        let Some((name, args)) = rest.split_once('(') else { continue };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            continue;
        }
        calls.insert(name.to_owned());
        if name == "socket" {
            families.insert(args.split(',').next().unwrap_or_default().trim().to_owned());
        }
    }
    assert!(seen, "no exec of {} in the strace log", exe.display());
    (calls, families)
}

/// Whether root may raise RLIMIT_MEMLOCK to unlimited here: the hard limit
/// already is, or the process holds CAP_SYS_RESOURCE.
fn memlock_hard_limit_is_unlimited() -> bool {
    let limits = read(Path::new("/proc/self/limits"));
    let hard_unlimited = limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))
        .and_then(|l| l.split_whitespace().nth(4))
        .is_some_and(|hard| hard == "unlimited");
    let status = read(Path::new("/proc/self/status"));
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    hard_unlimited || effective & (1 << 24) != 0
}

/// Files the agent opened (from the exec of `exe` on in an `strace -f`
/// log) that the unit's mount sandbox would refuse: writes outside the
/// writable API and private paths (`ProtectSystem=strict`, `PrivateTmp`),
/// home directories (`ProtectHome`), devices beyond the pseudo devices
/// (`PrivateDevices`).
fn sandbox_violations(log: &str, exe: &Path) -> Vec<String> {
    const WRITABLE: &[&str] = &["/dev/", "/tmp/", "/var/tmp/", "/proc/self/", "/proc/thread-self/"];
    const HOMES: &[&str] = &["/home/", "/root/", "/run/user/"];
    const DEVICES: &[&str] =
        &["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/pts/", "/dev/shm/"];
    let start = format!("execve(\"{}\"", exe.display());
    let mut seen = false;
    let mut violations = Vec::new();
    for line in log.lines() {
        let rest = line.split_once(' ').map(|(_, r)| r.trim_start()).unwrap_or(line);
        if !seen {
            seen = rest.starts_with(&start);
            continue;
        }
        let Some(args) = rest.strip_prefix("openat(") else { continue };
        let Some(path) = args.split('"').nth(1) else { continue };
        let writes = ["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC"].iter().any(|flag| args.contains(flag));
        if (writes && !WRITABLE.iter().any(|p| path.starts_with(p)))
            || HOMES.iter().any(|p| path.starts_with(p))
            || (path.starts_with("/dev/") && !DEVICES.iter().any(|d| path.starts_with(d)))
        {
            violations.push(rest.to_owned());
        }
    }
    violations
}

/// The unit's `ExecStart` under setpriv with the unit's user, group,
/// capabilities and no-new-privileges (and under strace): exact counters
/// in /metrics, exactly the unit's capabilities, no system call or address
/// family the unit would refuse.
fn unit_exec_start_counts_exactly(unit_text: &str, defaults: &str) {
    const SENT: u64 = 2_345_678;
    const ANSWERED: u64 = 8_765;
    let unit = unit_directives(unit_text);
    let capabilities = unit_capabilities(&unit);
    let caps_arg = capabilities
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect::<Vec<_>>()
        .join(",");
    let user = directive(&unit, "User");
    let group = directive(&unit, "Group");
    assert_eq!(directive(&unit, "NoNewPrivileges"), "yes");
    assert_eq!(directive(&unit, "LimitMEMLOCK"), "infinity");
    assert!(
        defaults.lines().any(|l| l.starts_with("TRACER_ARGS=")),
        "/etc/default/tracer sets no TRACER_ARGS:\n{defaults}"
    );
    let exec_start = directive(&unit, "ExecStart");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    // What an operator would put in /etc/default/tracer for this check.
    let test_args = format!("--listen 127.0.0.1:0 --interval 1s --port {port}");
    let argv: Vec<String> =
        exec_start.replace("$TRACER_ARGS", &test_args).split_whitespace().map(str::to_owned).collect();
    let exe = PathBuf::from(&argv[0]);
    let dir = TempDir::new("strace");
    let strace_log = dir.0.join("strace.log");
    let mut cmd = Command::new("strace");
    // The environment systemd gives a service with User= (no LD_LIBRARY_PATH
    // or HOME from `cargo test`), plus its EnvironmentFile's variables.
    let home = text(&must(Command::new("getent").args(["passwd", user])));
    let home = home.trim().split(':').nth(5).unwrap_or("/").to_owned();
    cmd.env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", home)
        .env("USER", user)
        .env("LOGNAME", user)
        .env("TRACER_ARGS", &test_args);
    cmd.args(["-f", "-qq", "-o"]).arg(&strace_log);
    // LimitMEMLOCK=infinity, where this machine lets root raise the hard
    // limit (without CAP_SYS_RESOURCE it cannot; kernels >= 5.11 do not
    // charge BPF memory to it anyway).
    if memlock_hard_limit_is_unlimited() {
        cmd.args(["prlimit", "--memlock=unlimited:unlimited"]);
    } else {
        eprintln!("deploy: RLIMIT_MEMLOCK cannot be raised here; running with the current limit");
    }
    cmd.arg("setpriv")
        .arg(format!("--reuid={user}"))
        .arg(format!("--regid={group}"))
        .arg("--clear-groups")
        .arg(format!("--inh-caps=-all,{caps_arg}"))
        .arg(format!("--ambient-caps=-all,{caps_arg}"))
        .arg(format!("--bounding-set=-all,{caps_arg}"))
        .arg("--no-new-privs")
        .args(&argv);
    let mut agent = Daemon::spawn("the unit's ExecStart under setpriv", cmd);
    let addr = agent.agent_address();
    // strace's child exec'd prlimit, setpriv, then the agent: one pid.
    let strace_pid = agent.child.id();
    let children = read(Path::new(&format!("/proc/{strace_pid}/task/{strace_pid}/children")));
    let agent_pid: u32 = children.split_whitespace().next().and_then(|p| p.parse().ok()).expect("strace has a child");
    assert_eq!(std::fs::read_link(format!("/proc/{agent_pid}/exe")).ok(), Some(exe.clone()));

    transfer(&listener, SENT, ANSWERED);
    let comm = own_comm();
    let port_text = port.to_string();
    let expected = [
        ("tracer_tcp_sent_bytes_total", "client", SENT),
        ("tracer_tcp_received_bytes_total", "client", ANSWERED),
        ("tracer_tcp_sent_bytes_total", "server", ANSWERED),
        ("tracer_tcp_received_bytes_total", "server", SENT),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut metrics = String::new();
    loop {
        if let Some(response) = http_get(addr, "/metrics").filter(|r| r.status == 200) {
            metrics = response.body;
        }
        let got: Vec<Option<f64>> = expected
            .iter()
            .map(|(name, role, _)| {
                scraped(
                    &metrics,
                    name,
                    &[("comm", &comm), ("role", role), ("remote", "127.0.0.1"), ("port", &port_text)],
                )
            })
            .collect();
        if expected.iter().zip(&got).all(|((_, _, want), got)| *got == Some(*want as f64)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent under the unit's privileges did not count {expected:?} (got {got:?}); metrics:\n{metrics}\nstderr:\n{}",
            agent.stderr()
        );
        thread::sleep(Duration::from_millis(200));
    }
    // Every thread: the unit's user, its bounding set, no new privileges,
    // and no capability beyond the unit's.
    let uid = text(&must(Command::new("id").args(["-u", user]))).trim().to_owned();
    let mask = capability_mask(&capabilities);
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{agent_pid}/task")).expect("tasks").flatten().collect();
    assert!(!tasks.is_empty());
    for task in tasks {
        let status = read(&task.path().join("status"));
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("no {name} in {status}"))
        };
        let hex = |name: &str| u64::from_str_radix(&field(name), 16).expect("hex mask");
        assert_eq!(field("Uid:").split_whitespace().next(), Some(uid.as_str()), "{status}");
        assert_eq!(field("NoNewPrivs:"), "1", "{status}");
        assert_eq!(hex("CapBnd:"), mask, "bounding set of {}:\n{status}", task.path().display());
        assert_eq!(hex("CapEff:") & !mask, 0, "capabilities beyond the unit's in {}:\n{status}", task.path().display());
    }
    agent.terminate(agent_pid);

    let log = read(&strace_log);
    drop(dir);
    let (calls, families) = strace_calls(&log, &exe);
    let violations = sandbox_violations(&log, &exe);
    assert!(violations.is_empty(), "the agent opened files the unit's sandbox refuses: {violations:#?}");
    let allowed = allowed_syscalls(&unit);
    let refused: Vec<&String> = calls.iter().filter(|c| !allowed.contains(*c)).collect();
    assert!(refused.is_empty(), "the agent made system calls the unit's SystemCallFilter refuses: {refused:?}");
    let allowed_families: BTreeSet<String> =
        directive(&unit, "RestrictAddressFamilies").split_whitespace().map(str::to_owned).collect();
    let foreign: Vec<&String> = families.iter().filter(|f| !allowed_families.contains(*f)).collect();
    assert!(foreign.is_empty(), "the agent opened sockets the unit's RestrictAddressFamilies refuses: {foreign:?}");
    eprintln!(
        "deploy: the unit's ExecStart as {user} with {capabilities:?} counted exactly; system calls {calls:?}, families {families:?}, all allowed"
    );
}

/// `systemd-analyze verify` is clean; `security --offline=yes` is "OK" or
/// better. Returns the exposure line.
fn unit_verifies_and_is_hardened(unit: &Path) -> String {
    let verify = Command::new("systemd-analyze").arg("verify").arg(unit).output().expect("run systemd-analyze");
    let said = format!("{}{}", String::from_utf8_lossy(&verify.stdout), String::from_utf8_lossy(&verify.stderr));
    assert!(
        verify.status.success() && !said.contains("tracer.service"),
        "systemd-analyze verify {} is not clean ({}):\n{said}",
        unit.display(),
        verify.status
    );
    let security = must(Command::new("systemd-analyze").args(["security", "--offline=yes", "--no-pager"]).arg(unit));
    let report = text(&security);
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"))
        .to_owned();
    let words: Vec<&str> = line.split_whitespace().collect();
    let position = words.iter().position(|w| w.ends_with("tracer.service:")).expect("exposure line names the unit");
    let score: f64 = words[position + 1].parse().unwrap_or_else(|_| panic!("no score in {line:?}"));
    let level = words[position + 2];
    assert!(
        ["OK", "SAFE", "PERFECT"].contains(&level) && score < 5.0,
        "exposure must be OK or better: {line}\n{report}"
    );
    line
}

#[test]
fn deploy_debian_package_installs_runs_exactly_and_purges() {
    let _serial = serial();
    let deb = prepared("TRACER_DEB");
    let installed_exe = Path::new("/usr/bin/tracer");
    assert!(
        dpkg_status().is_none() && !installed_exe.exists() && !user_exists("tracer") && !group_exists("tracer"),
        "a tracer package, /usr/bin/tracer or a tracer user/group is already on this machine; this test installs and \
         purges its own: remove them first (dpkg -P tracer)"
    );
    let before = accounts();
    let version = env!("CARGO_PKG_VERSION");
    let fields = text(&must(Command::new("dpkg-deb").args(["-f"]).arg(&deb).args(["Package", "Version", "Depends"])));
    assert!(fields.contains("Package: tracer") && fields.contains(&format!("Version: {version}")), "{fields}");
    assert!(fields.contains("libc6 (>= 2.") && fields.contains("adduser"), "{fields}");

    let guard = Installed;
    must(Command::new("dpkg").arg("-i").arg(&deb));
    let files = text(&must(Command::new("dpkg").args(["-L", "tracer"])));
    for path in [
        "/usr/bin/tracer",
        UNIT_PATH,
        "/etc/default/tracer",
        "/usr/share/doc/tracer/README.md",
        "/usr/share/doc/tracer/copyright",
        "/usr/share/tracer/grafana/tracer.json",
        "/usr/share/tracer/prometheus/rules.yml",
    ] {
        assert!(files.lines().any(|l| l == path), "the package does not hold {path}:\n{files}");
    }
    let conffiles = text(&must(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "tracer"])));
    assert!(conffiles.contains("/etc/default/tracer"), "/etc/default/tracer is not a conffile: {conffiles}");
    assert_eq!(read(Path::new(UNIT_PATH)), read(&deploy("systemd/tracer.service")), "the installed unit");
    // Its system user, and nothing enabled or started.
    let passwd = text(&must(Command::new("getent").args(["passwd", "tracer"])));
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    let uid: u32 = fields[2].parse().expect("uid");
    assert!(uid < 1000 && fields[6].ends_with("nologin"), "not a system user: {passwd}");
    assert!(group_exists("tracer"), "no tracer group");
    let wants: Vec<_> = std::fs::read_dir("/etc/systemd/system")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("tracer.service").symlink_metadata().is_ok())
        .map(|e| e.path())
        .collect();
    assert!(wants.is_empty(), "installing enabled the unit: {wants:?}");
    assert!(processes_running(installed_exe).is_empty(), "installing started the agent");
    let shown = text(&must(Command::new(installed_exe).arg("--version")));
    assert!(shown.contains(version), "tracer --version: {shown}");

    let exposure = unit_verifies_and_is_hardened(Path::new(UNIT_PATH));
    let doctor = must(Command::new(installed_exe).arg("doctor"));
    assert!(!text(&doctor).trim().is_empty(), "doctor printed nothing");
    installed_trace_counts_exactly(installed_exe);
    unit_exec_start_counts_exactly(&read(Path::new(UNIT_PATH)), &read(Path::new("/etc/default/tracer")));

    // What `systemctl enable tracer` makes: purge must take it away too.
    let wants_dir = Path::new("/etc/systemd/system/multi-user.target.wants");
    let created_wants_dir = !wants_dir.exists();
    std::fs::create_dir_all(wants_dir).expect("wants dir");
    let link = wants_dir.join("tracer.service");
    std::os::unix::fs::symlink(UNIT_PATH, &link).expect("enable link");
    must(Command::new("dpkg").args(["-P", "tracer"]));
    drop(guard);
    let link_left = link.symlink_metadata().is_ok();
    if created_wants_dir {
        let _ = std::fs::remove_dir(wants_dir);
    }
    assert!(!link_left, "purge left the enable link {}", link.display());
    assert!(dpkg_status().is_none(), "still installed after dpkg -P");
    for path in
        [installed_exe, Path::new(UNIT_PATH), Path::new("/etc/default/tracer"), Path::new("/usr/share/doc/tracer")]
    {
        assert!(!path.exists(), "purge left {}", path.display());
    }
    assert!(!user_exists("tracer") && !group_exists("tracer"), "purge left the tracer user or group");
    assert_eq!(accounts(), before, "the account files differ from before the install");
    eprintln!("deploy: {exposure}");
}

// ---------------------------------------------------------------- Kubernetes

/// Validators compiled from the published prometheus-operator CRD schemas.
const CRD_VALIDATE: &str = r#"
import { pathToFileURL } from "node:url";
import { readFileSync } from "node:fs";
const base = process.argv[1] + "/node_modules/@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/";
const docs = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const doc of docs) {
  const mod = await import(pathToFileURL(base + doc.kind + ".js").href);
  try { new mod[doc.kind](doc).validate(); console.log(`ok ${doc.kind}/${doc.metadata.name}`); }
  catch (e) { failed++; console.log(`FAIL ${doc.kind}/${doc.metadata?.name}: ${e.message}`); }
}
process.exit(failed ? 1 : 0);
"#;

const CUSTOM_KINDS: &[&str] = &["PodMonitor", "PrometheusRule"];

/// Validates custom resources with the CRD validators; Err holds the output.
fn validate_custom(docs: &[Value]) -> Result<String, String> {
    let mut child = Command::new("node")
        .args(["--input-type=module", "-e", CRD_VALIDATE])
        .arg(prepared("TRACER_DEPLOY_NPM"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    let input = serde_json::to_vec(docs).expect("JSON");
    child.stdin.take().expect("stdin").write_all(&input).expect("write to node");
    let output = child.wait_with_output().expect("node output");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() {
        Ok(said)
    } else {
        Err(said)
    }
}

/// `kubernetes-validate --strict` on files; Err holds the output.
fn validate_core(files: &[PathBuf]) -> Result<String, String> {
    let output = Command::new(venv_bin("kubernetes-validate")).arg("--strict").args(files).output().expect("run");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() && !said.contains("ERROR") && !said.contains("WARN") {
        Ok(said)
    } else {
        Err(said)
    }
}

#[test]
fn deploy_kubernetes_manifests_validate_offline() {
    let dir = deploy("kubernetes");
    let kustomization = yaml_doc(&dir.join("kustomization.yaml"));
    let resources: Vec<String> = kustomization["resources"]
        .as_array()
        .expect("kustomization resources")
        .iter()
        .map(|r| r.as_str().expect("a file name").to_owned())
        .collect();
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    on_disk.sort();
    let mut listed = resources.clone();
    listed.sort();
    assert_eq!(listed, on_disk, "kustomization.yaml must list every manifest");

    let mut core_files = Vec::new();
    let mut custom = Vec::new();
    let mut by_kind: BTreeMap<String, Value> = BTreeMap::new();
    for file in &resources {
        let path = dir.join(file);
        for doc in yaml_docs(std::slice::from_ref(&path)) {
            let kind = doc["kind"].as_str().unwrap_or_else(|| panic!("{file}: no kind")).to_owned();
            if CUSTOM_KINDS.contains(&kind.as_str()) {
                custom.push(doc.clone());
            } else if !core_files.contains(&path) {
                core_files.push(path.clone());
            }
            by_kind.insert(kind, doc);
        }
    }
    let said = validate_core(&core_files).unwrap_or_else(|e| panic!("kubernetes-validate --strict failed:\n{e}"));
    eprintln!("deploy: kubernetes-validate --strict:\n{said}");
    let said = validate_custom(&custom).unwrap_or_else(|e| panic!("the CRD schemas refuse a custom resource:\n{e}"));
    eprintln!("deploy: prometheus-operator CRD schemas:\n{said}");
    for kind in ["Namespace", "ServiceAccount", "DaemonSet", "Service", "PodMonitor", "PrometheusRule"] {
        assert!(by_kind.contains_key(kind), "no {kind} in deploy/kubernetes");
    }

    // The validators are not no-ops: a typo and a wrong type are refused.
    let broken = dir.join("daemonset.yaml");
    let typo = std::env::temp_dir().join(format!("tracer-deploy-typo-{}.yaml", std::process::id()));
    std::fs::write(&typo, read(&broken).replace("hostPID:", "hostPid:")).expect("write");
    let refused = validate_core(std::slice::from_ref(&typo));
    let _ = std::fs::remove_file(&typo);
    assert!(refused.is_err(), "kubernetes-validate accepted an unknown field: {refused:?}");
    let mut wrong = by_kind["PodMonitor"].clone();
    wrong["spec"]["podMetricsEndpoints"][0]["interval"] = Value::from(15);
    assert!(validate_custom(&[wrong]).is_err(), "the PodMonitor schema accepted a number as interval");

    // The DaemonSet: host PID namespace, BTF, exactly the unit's
    // capabilities and nothing else, /healthz probes on the metrics port.
    let daemonset = &by_kind["DaemonSet"];
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert_ne!(pod["hostNetwork"], true, "the agent does not need the host network");
    let container = &pod["containers"][0];
    assert_eq!(container["image"], format!("tracer:{}", env!("CARGO_PKG_VERSION")));
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let added: Vec<String> = security["capabilities"]["add"]
        .as_array()
        .expect("added capabilities")
        .iter()
        .map(|c| format!("CAP_{}", c.as_str().expect("name")))
        .collect();
    let unit = unit_directives(&read(&deploy("systemd/tracer.service")));
    assert_eq!(added, unit_capabilities(&unit), "the DaemonSet and the unit must grant the same capabilities");
    let mounts = container["volumeMounts"].as_array().expect("mounts");
    assert!(mounts.iter().any(|m| m["mountPath"] == "/sys/kernel/btf" && m["readOnly"] == true), "{mounts:?}");
    let port = &container["ports"][0];
    assert_eq!((port["name"].as_str(), port["containerPort"].as_u64()), (Some("metrics"), Some(9669)));
    let args: Vec<&str> = container["args"].as_array().expect("args").iter().filter_map(Value::as_str).collect();
    assert!(args.windows(2).any(|w| w == ["--listen", "0.0.0.0:9669"]), "{args:?}");
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!((get["path"].as_str(), get["port"].as_str()), (Some("/healthz"), Some("metrics")), "{probe}");
    }
    let endpoint = &by_kind["PodMonitor"]["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(by_kind["Service"]["spec"]["ports"][0]["targetPort"], "metrics");
    // The PrometheusRule carries exactly deploy/prometheus/rules.yml.
    let rules = yaml_doc(&deploy("prometheus/rules.yml"));
    assert_eq!(by_kind["PrometheusRule"]["spec"]["groups"], rules["groups"], "prometheusrule.yaml != rules.yml");
}

// ---------------------------------------------------------------- rules

#[test]
fn deploy_alert_rules_pass_promtool_with_a_test_for_every_alert() {
    let dir = deploy("prometheus");
    must(Command::new("promtool").args(["check", "rules"]).arg(dir.join("rules.yml")));
    let tested = must(Command::new("promtool").args(["test", "rules", "rules_test.yml"]).current_dir(&dir));
    eprintln!("deploy: promtool test rules:\n{}{}", text(&tested), String::from_utf8_lossy(&tested.stderr));

    let rules = yaml_doc(&dir.join("rules.yml"));
    let alerts: Vec<&Value> = rules["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .filter(|r| r.get("alert").is_some())
        .collect();
    let required = [
        "TracerCloseWaitLeak",
        "TracerConnectionLeak",
        "TracerTrafficGrowth",
        "TracerRetransmitSpike",
        "TracerEventsDropped",
        "TracerSocketTableFull",
        "TracerAgentDown",
    ];
    let names: Vec<&str> = alerts.iter().filter_map(|a| a["alert"].as_str()).collect();
    for name in required {
        assert!(names.contains(&name), "no {name} alert in rules.yml");
    }
    let tests = yaml_doc(&dir.join("rules_test.yml"));
    let cases: Vec<&Value> = tests["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .collect();
    for alert in &alerts {
        let name = alert["alert"].as_str().expect("alert name");
        let of_alert = || cases.iter().filter(|c| c["alertname"] == name);
        let fires = of_alert().any(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()));
        let silent = of_alert().any(|c| c["exp_alerts"].as_array().is_some_and(Vec::is_empty));
        assert!(fires && silent, "{name} needs a unit test where it fires and one where it stays silent");
        // Every summary names the host, and the process and remote where
        // the expression keeps them.
        let expr = alert["expr"].as_str().expect("expr");
        let summary = alert["annotations"]["summary"].as_str().expect("summary");
        assert!(summary.contains("$labels.instance"), "{name}'s summary does not name the host");
        for label in ["comm", "remote"] {
            if expr.contains(&format!("by (instance, {label}")) || expr.contains(&format!(", {label}")) {
                assert!(summary.contains(&format!("$labels.{label}")), "{name}'s summary does not name its {label}");
            }
        }
        for metric in metrics_in(expr) {
            assert!(
                metric == "up" || KNOWN_METRICS.contains(&metric.as_str()),
                "{name} uses {metric}, which the agent does not export"
            );
        }
    }
}

/// Metric names (`tracer_*`, `up`) in a PromQL expression.
fn metrics_in(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        let word = &expr[start..i];
        let quoted = start > 0 && bytes[start - 1] == b'"';
        if !quoted && (word.starts_with("tracer_") || word == "up") {
            names.insert(word.to_owned());
        }
        if i == start {
            i += 1;
        }
    }
    names
}

// ---------------------------------------------------------------- dashboard

/// Every `(panel title, expr)` of the dashboard, rows skipped.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String, String)> {
    let mut queries = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().expect("panels").iter().collect();
    let nested: Vec<&Value> =
        panels.iter().flat_map(|p| p["panels"].as_array().into_iter().flatten()).collect::<Vec<_>>();
    panels.extend(nested);
    for panel in panels {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().expect("panel title");
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty());
        let targets = targets.unwrap_or_else(|| panic!("panel {title:?} has no query"));
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
            let legend = target["legendFormat"].as_str().unwrap_or_default();
            queries.push((title.to_owned(), expr.to_owned(), legend.to_owned()));
        }
    }
    queries
}

/// Drops ~10% of the packets from `port` inside `netns` while alive (on input:
/// a drop on output would be an error the sender sees, not a loss).
struct PacketLoss<'a> {
    netns: &'a NetNs,
}

impl<'a> PacketLoss<'a> {
    const TABLE: &'static str = "tracer_deploy_loss";

    fn start(netns: &'a NetNs, port: u16) -> Self {
        netns.run("nft", &["add", "table", "inet", Self::TABLE]);
        let loss = PacketLoss { netns };
        netns.run(
            "nft",
            &["add", "chain", "inet", Self::TABLE, "in", "{ type filter hook input priority 0; policy accept; }"],
        );
        let rule = format!("tcp sport {port} numgen random mod 100 < 10 drop");
        let mut args = vec!["add", "rule", "inet", Self::TABLE, "in"];
        args.extend(rule.split(' '));
        netns.run("nft", &args);
        loss
    }
}

impl Drop for PacketLoss<'_> {
    fn drop(&mut self) {
        let _ = self.netns.command("nft", &["delete", "table", "inet", Self::TABLE]).status();
    }
}

/// Sets SO_LINGER to 0: closing the stream then sends a reset.
fn linger_zero(stream: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on an open socket with a correctly sized struct
    // that lives across the call.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt(SO_LINGER): {}", std::io::Error::last_os_error());
}

/// A Prometheus server (Debian's) scraping `target` every second, with its
/// own config and storage in a temporary directory; stopped by its pid.
struct Prometheus {
    daemon: Option<Daemon>,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("tracer-deploy-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: tracer\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write config");
        let addr: SocketAddr = (Ipv4Addr::LOCALHOST, free_port()).into();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"));
        let daemon = Daemon::spawn("prometheus", cmd);
        Prometheus { daemon: Some(daemon), addr, dir }
    }

    fn api(&self, path: &str) -> Result<Value, String> {
        let response = http_get(self.addr, path).ok_or_else(|| "no answer".to_owned())?;
        let json: Value = serde_json::from_str(&response.body).map_err(|e| format!("{e}: {}", response.body))?;
        if response.status != 200 || json["status"] != "success" {
            return Err(format!("HTTP {}: {}", response.status, response.body));
        }
        Ok(json["data"].clone())
    }

    fn query_range(&self, expr: &str, start: f64, end: f64) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step=1", percent_encode(expr));
        let data = self.api(&path)?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            send_signal(daemon.child.id(), libc::SIGTERM);
            if wait_bounded(&mut daemon.child, Duration::from_secs(10)).is_none() {
                let _ = daemon.child.kill();
                let _ = daemon.child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Rounds of the dashboard test's events.
const ROUNDS: usize = 2;
/// Bytes the lossy server answers each round.
const LOSSY_ANSWER: &str = "6000000";

/// Waits (bounded) until every PromQL selector returns a series; on
/// timeout, panics with what Prometheus and the agent said.
fn wait_for_series(prometheus: &Prometheus, agent: SocketAddr, selectors: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut missing: Vec<&String> = selectors.iter().collect();
    let mut last = BTreeMap::new();
    while !missing.is_empty() {
        if Instant::now() >= deadline {
            let metrics = http_get(agent, "/metrics").map(|r| r.body).unwrap_or_default();
            let counters: Vec<&str> = metrics
                .lines()
                .filter(|l| ["retransmits", "resets", "failed_connects"].iter().any(|m| l.contains(m)))
                .collect();
            panic!(
                "Prometheus never had series for {missing:?}; its last answers: {last:#?}\nthe agent's counters:\n{}",
                counters.join("\n")
            );
        }
        thread::sleep(Duration::from_millis(500));
        missing.retain(|selector| {
            let data = prometheus.api(&format!("/api/v1/query?query={}", percent_encode(selector)));
            let found = data.as_ref().is_ok_and(|d| d["result"].as_array().is_some_and(|r| !r.is_empty()));
            last.insert(selector.to_string(), format!("{data:?}"));
            !found
        });
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_secs_f64()
}

/// What one panel query returned: series, whether one value was > 0, and
/// the legend labels no series had.
struct Answer {
    series: usize,
    positive: bool,
    missing_labels: Vec<String>,
}

fn answer(result: &[Value], legend: &str) -> Answer {
    let positive = result.iter().any(|s| {
        s["values"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| v[1].as_str().and_then(|x| x.parse::<f64>().ok()) > Some(0.0))
    });
    let missing_labels = legend
        .split("{{")
        .skip(1)
        .filter_map(|part| part.split_once("}}").map(|(label, _)| label.trim().to_owned()))
        .filter(|label| !result.iter().any(|s| s["metric"].get(label).is_some()))
        .collect();
    Answer { series: result.len(), positive, missing_labels }
}

#[test]
fn deploy_dashboard_panels_return_data_from_a_real_agent_and_prometheus() {
    let _serial = serial();
    let dashboard: Value = serde_json::from_str(&read(&deploy("grafana/tracer.json"))).expect("the dashboard is JSON");
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(variables.contains(&"instance") && variables.contains(&"comm"), "variables: {variables:?}");
    let queries = dashboard_queries(&dashboard);
    for (title, expr, _) in &queries {
        for metric in metrics_in(expr) {
            assert!(KNOWN_METRICS.contains(&metric.as_str()), "panel {title:?} uses {metric}, not an agent metric");
        }
    }
    let titles: BTreeSet<&str> = queries.iter().map(|(t, _, _)| t.as_str()).collect();
    for (pending, _) in PENDING {
        assert!(titles.contains(pending), "PENDING names {pending:?}, which is not a panel");
    }

    // A server in a network namespace whose answers lose 10% of their
    // packets. Loopback sends 64 KB GSO packets whatever the MTU: 6 MB is
    // ~90 packets, so a round without a single loss is a 1-in-10^4 event.
    let netns = NetNs::create("deploy");
    netns.run("ip", &["link", "set", "lo", "mtu", "1500"]);
    let traffic = env!("CARGO_BIN_EXE_traffic");
    let mut lossy_server = Proc::spawn(
        "server in netns",
        netns.command(traffic, &["server", "--answer", LOSSY_ANSWER, "--conns", &ROUNDS.to_string()]),
    );
    let ready = lossy_server.expect("ready", Duration::from_secs(20));
    let (lossy_port, lossy_pid): (u16, u32) = (ready.num("port"), ready.num("pid"));
    let loss = PacketLoss::start(&netns, lossy_port);

    let own_pid = std::process::id().to_string();
    let mut agent_cmd = Command::new(tracer_bin());
    agent_cmd.args(["agent", "--listen", "127.0.0.1:0", "--interval", "1s", "--close-wait-age", "2s"]).args([
        "--pid",
        &own_pid,
        "--pid",
        &lossy_pid.to_string(),
    ]);
    let mut agent = Daemon::spawn("tracer agent", agent_cmd);
    let agent_addr = agent.agent_address();
    let prometheus = Prometheus::start(agent_addr);
    let start = unix_now();
    let comm = own_comm();
    let comm_regex = format!("{comm}|traffic");

    // A CLOSE_WAIT socket held for the whole test (and the finding it makes).
    let cw_listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let cw_client = TcpStream::connect(cw_listener.local_addr().expect("address")).expect("connect");
    let (close_wait, _) = cw_listener.accept().expect("accept");
    drop(cw_client);
    // A reader that does not read: queues fill, the sender is window-limited.
    let slow_listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut slow_client = TcpStream::connect(slow_listener.local_addr().expect("address")).expect("connect");
    let (slow_server, _) = slow_listener.accept().expect("accept");
    slow_client.set_nonblocking(true).expect("nonblocking");
    let chunk = [0x5au8; 65536];
    for _ in 0..1000 {
        match slow_client.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("write to the slow reader: {e}"),
        }
    }
    // The events, in rounds: a counter's first sample holds what happened
    // before its series existed, which rate() cannot see; the second round
    // moves counters Prometheus already has.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let refused_port = free_port();
    let mut lossy_clients = Vec::new();
    let mut held = Vec::new();
    for round in 0..ROUNDS {
        // Traffic, both ways, in this process.
        transfer(&listener, 3_000_000, 1_000_000);
        // Failed connects: refused by a port nobody listens on.
        for _ in 0..3 {
            let refused = TcpStream::connect(("127.0.0.1", refused_port));
            assert!(refused.is_err(), "port {refused_port} accepted a connection");
        }
        // A reset: closing with SO_LINGER 0.
        let reset_client = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (reset_server, _) = listener.accept().expect("accept");
        linger_zero(&reset_client);
        drop(reset_client);
        held.push(reset_server);
        // Retransmits: the lossy server answers 6 MB to a client in the netns.
        let mut lossy_client = Proc::spawn(
            "client in netns",
            netns.command(
                traffic,
                &[
                    "client",
                    "--connect",
                    &format!("127.0.0.1:{lossy_port}"),
                    "--send",
                    "1000",
                    "--expect",
                    LOSSY_ANSWER,
                    "--half-close",
                ],
            ),
        );
        lossy_client.expect("received", Duration::from_secs(60));
        lossy_clients.push(lossy_client);
        if round + 1 < ROUNDS {
            wait_for_series(
                &prometheus,
                agent_addr,
                &[
                    format!("tracer_tcp_failed_connects_total{{comm=~\"{comm_regex}\"}}"),
                    format!("tracer_tcp_resets_total{{comm=~\"{comm_regex}\"}}"),
                    "tracer_tcp_retransmits_total{comm=\"traffic\"} > 0".to_owned(),
                ],
            );
        }
    }
    lossy_server.expect("served", Duration::from_secs(20));
    drop(loss);
    eprintln!("deploy: {} segments retransmitted in the lossy netns", netns.tcp_counter("RetransSegs"));

    // Every panel's queries, variables substituted, until all return data.
    let instance = agent_addr.to_string();
    let substitute = |expr: &str| {
        expr.replace("$__rate_interval", "10s")
            .replace("${instance}", &instance)
            .replace("$instance", &instance)
            .replace("${comm}", &comm_regex)
            .replace("$comm", &comm_regex)
    };
    let pending = |title: &str| PENDING.iter().find(|(t, _)| *t == title).map(|(_, what)| *what);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut failures: Vec<String>;
    let mut answers: Vec<(String, String, Result<Answer, String>)>;
    loop {
        thread::sleep(Duration::from_secs(1));
        let end = unix_now();
        answers = queries
            .iter()
            .map(|(title, expr, legend)| {
                let expr = substitute(expr);
                let result = prometheus.query_range(&expr, start, end).map(|r| answer(&r, legend));
                (title.clone(), expr, result)
            })
            .collect();
        failures = answers
            .iter()
            .filter(|(title, _, _)| pending(title).is_none())
            .filter_map(|(title, expr, result)| match result {
                Err(e) => Some(format!("{title}: {expr}: error {e}")),
                Ok(a) if a.series == 0 => Some(format!("{title}: {expr}: no data")),
                Ok(a) if !a.positive && !ZERO_IS_HEALTHY.contains(&title.as_str()) => {
                    Some(format!("{title}: {expr}: only zeros"))
                }
                Ok(a) if !a.missing_labels.is_empty() => {
                    Some(format!("{title}: {expr}: no series has {:?}", a.missing_labels))
                }
                Ok(_) => None,
            })
            .collect();
        if failures.is_empty() || Instant::now() >= deadline {
            break;
        }
    }
    // The variables' own queries.
    let instances = prometheus.api("/api/v1/label/instance/values?match[]=tracer_build_info");
    let comms = prometheus.api(&format!(
        "/api/v1/label/comm/values?match[]={}",
        percent_encode(&format!("tracer_tcp_sockets{{instance=~\"{instance}\"}}"))
    ));
    for (title, expr, result) in &answers {
        let state = match result {
            Ok(a) => format!("{} series{}", a.series, if a.positive { ", positive" } else { "" }),
            Err(e) => format!("error {e}"),
        };
        let note = pending(title).map(|what| format!(" [PENDING: {what}]")).unwrap_or_default();
        eprintln!("deploy: panel {title:?}{note}: {state}: {expr}");
    }
    drop((close_wait, held, slow_server, slow_client));
    for client in lossy_clients {
        client.finish();
    }
    lossy_server.finish();
    drop(prometheus);
    let agent_pid = agent.child.id();
    let stderr = agent.terminate(agent_pid);
    assert!(failures.is_empty(), "dashboard panels without data:\n{}\nagent stderr:\n{stderr}", failures.join("\n"));
    let instances = instances.unwrap_or_else(|e| panic!("instance variable: {e}"));
    assert!(
        instances.as_array().is_some_and(|v| v.iter().any(|i| i == instance.as_str())),
        "instance values: {instances}"
    );
    let comms = comms.unwrap_or_else(|e| panic!("comm variable: {e}"));
    assert!(comms.as_array().is_some_and(|v| v.iter().any(|c| c == comm.as_str())), "comm values: {comms}");
}
