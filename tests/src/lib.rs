//! Harness of tracer's integration tests: run the real `tracer` binary
//! against real traffic and read its JSON report.
//!
//! The tests need root (they load eBPF programs into the running kernel) and
//! see the whole host, so each test filters the report by its own pids and
//! ports. Tests that start a tracer must not overlap: run them with
//! `cargo test -p tracer-tests --tests -- --test-threads=1` (what
//! `cargo xtask test` does); [`serial`] also serialises them inside one
//! binary. A test that cannot load the programs fails with the tracer's
//! stderr; it never skips.
//!
//! The `tracer` binary is found through `TRACER_BIN`, else next to the
//! test binary's directory (`target/debug/tracer` for
//! `target/debug/deps/it-*`): build it first (`cargo build -p tracer`).
//!
//! What lives here:
//! - [`Tracer`]: `tracer trace --format json` started and stopped by SIGINT;
//! - [`Report`] and its records: the JSON report, typed, with look-ups;
//! - [`Proc`]: a child process (usually the `traffic` binary) that speaks
//!   in `word key=value` lines on stdout;
//! - byte-exact loopback helpers ([`send_exactly`], [`receive_exactly`],
//!   [`connect_from`], ...), also used by the `traffic` binary;
//! - [`health`]: the TCP health tooling: `TCP_INFO`/`FIONREAD`/`SIOCOUTQ`
//!   oracles and [`DelayedLink`], two namespaces joined by a veth pair with
//!   a delay (the `netdelay` binary) and failure fixtures;
//! - [`bpf`]: the BPF programs and maps a process holds (by id, from
//!   `/proc/PID/fdinfo`) and what `bpftool` says is loaded.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::FromRawFd,
    path::PathBuf,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError},
        Arc, Mutex, MutexGuard,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use serde::Deserialize;

pub mod bpf;
pub mod health;
pub use health::DelayedLink;

/// How long the tracer may take to load and attach its programs.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the tracer may take to print its report after SIGINT.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Time given to the kernel to finish socket teardown (destroy events fire
/// in softirq, just after `close` returns) before a tracer is stopped.
pub const SETTLE: Duration = Duration::from_millis(300);

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the host for one test: tests that trace must not run at the same
/// time (they would see, and disturb, each other's sockets).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The `tracer` binary under test.
pub fn tracer_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("TRACER_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    // target/debug/deps/it-HASH -> target/debug/tracer
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("tracer"))
        .expect("the test binary lives in target/<profile>/deps");
    assert!(
        path.exists(),
        "no tracer binary at {}: build it first (`cargo build -p tracer`) or set TRACER_BIN",
        path.display()
    );
    path
}

fn collect_stream(mut stream: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        bytes
    })
}

/// Reads lines into a channel and a shared transcript.
fn stream_lines(stream: impl Read + Send + 'static, transcript: Arc<Mutex<String>>) -> Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut text) = transcript.lock() {
                text.push_str(&line);
                text.push('\n');
            }
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

fn transcript(text: &Arc<Mutex<String>>) -> String {
    text.lock().map(|t| t.clone()).unwrap_or_default()
}

/// Waits for a child's exit, at most `timeout`.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// A running `tracer trace --format json --duration 120s --interval 1s ARGS`
/// (or another interval),
/// attached. Killed if dropped without [`Tracer::stop`].
pub struct Tracer {
    child: Child,
    stderr: Arc<Mutex<String>>,
    /// Its stderr lines after the attach line (the transcript keeps them
    /// all; this channel is read by [`Tracer::wait_samples`]).
    lines: Receiver<String>,
    stdout: Option<JoinHandle<Vec<u8>>>,
    started: Instant,
}

impl Tracer {
    /// Starts the tracer and waits until it says it is attached; panics with
    /// its stderr if it exits or does not attach in time.
    pub fn start(args: &[&str]) -> Tracer {
        Tracer::start_with_interval("1s", args)
    }

    /// [`Tracer::start`] with another sampling interval (e.g. `100ms`, for
    /// tests that need many table reads).
    pub fn start_with_interval(interval: &str, args: &[&str]) -> Tracer {
        Tracer::start_with_env(interval, args, &[])
    }

    /// [`Tracer::start_with_interval`] with extra environment variables.
    pub fn start_with_env(interval: &str, args: &[&str], env: &[(&str, &str)]) -> Tracer {
        let mut child = Command::new(tracer_bin())
            .args(["trace", "--format", "json", "--duration", "120s", "--interval", interval])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", tracer_bin().display()));
        let stdout = collect_stream(child.stdout.take().expect("stdout is piped"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let lines = stream_lines(child.stderr.take().expect("stderr is piped"), stderr.clone());
        let started = Instant::now();
        let mut tracer = Tracer { child, stderr, lines, stdout: Some(stdout), started };
        let deadline = started + ATTACH_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tracer.lines.recv_timeout(left) {
                Ok(line) if line.starts_with("tracer: attached") => break,
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let status = wait_bounded(&mut tracer.child, Duration::from_secs(5));
                    panic!(
                        "tracer {args:?} exited before attaching ({status:?}); stderr:\n{}",
                        transcript(&tracer.stderr)
                    );
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "tracer {args:?} did not attach within {ATTACH_TIMEOUT:?}; stderr:\n{}",
                    transcript(&tracer.stderr)
                ),
            }
        }
        // The reader thread keeps draining the pipe; the progress lines wait
        // in the channel (one per interval) for `wait_samples`.
        tracer
    }

    /// Waits until the tracer has taken `count` samples from now on (its progress
    /// line after each tick: `tracer:   2.0s / 120s  events ...`), at most
    /// [`ATTACH_TIMEOUT`]: a test that must act between two samples waits
    /// for them instead of sleeping for an interval and hoping.
    pub fn wait_samples(&self, count: usize) {
        // Samples taken before this call do not count.
        while self.lines.try_recv().is_ok() {}
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        let mut seen = 0;
        while seen < count {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.starts_with("tracer: ") && line.contains("s / ") => seen += 1,
                Ok(_) => {}
                Err(e) => panic!(
                    "tracer took no {count} samples within {ATTACH_TIMEOUT:?} ({e}); stderr:\n{}",
                    transcript(&self.stderr)
                ),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stderr so far (the attach line, progress lines, warnings).
    pub fn stderr(&self) -> String {
        transcript(&self.stderr)
    }

    /// Time since the tracer was spawned.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Lets in-flight socket teardown land ([`SETTLE`]), sends SIGINT, and
    /// parses the report the tracer prints. Panics with the tracer's stderr
    /// if it fails or prints something else.
    pub fn stop(mut self) -> Report {
        thread::sleep(SETTLE);
        self.interrupt();
        let status = wait_bounded(&mut self.child, STOP_TIMEOUT).unwrap_or_else(|| {
            panic!("tracer did not stop within {STOP_TIMEOUT:?} of SIGINT; stderr:\n{}", transcript(&self.stderr))
        });
        let stdout = self.stdout.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        // The stderr reader may still hold the last lines.
        thread::sleep(Duration::from_millis(50));
        let stderr = transcript(&self.stderr);
        assert!(status.success(), "tracer failed ({status}); stderr:\n{stderr}");
        let text = String::from_utf8(stdout).unwrap_or_else(|e| panic!("report is not UTF-8 ({e}); stderr:\n{stderr}"));
        Report::parse(&text)
            .unwrap_or_else(|e| panic!("report is not the documented JSON ({e}); stderr:\n{stderr}\nstdout:\n{text}"))
    }

    /// Sends SIGINT, as Ctrl-C would.
    pub fn interrupt(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: plain kill(2) on our own child's pid; it has not been
        // reaped yet (we hold its Child), so the pid cannot be reused.
        let rc = unsafe { libc::kill(pid, libc::SIGINT) };
        assert_eq!(rc, 0, "kill(SIGINT) on the tracer failed: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The JSON report (`tracer.report/v1`, DESIGN.md), typed. Unknown fields
/// are accepted; a missing documented field is an error.
#[derive(Debug, Clone, Deserialize)]
pub struct Report {
    pub schema: String,
    pub started_at: String,
    pub duration_secs: f64,
    pub backend: String,
    pub flows: Vec<Flow>,
    pub processes: Vec<Process>,
    pub close_wait: Vec<CloseWait>,
    pub timeline: Vec<Sample>,
    pub findings: Vec<serde_json::Value>,
    pub host: Host,
    pub tracer: TracerStats,
    /// The report as printed, for checks on the raw JSON.
    #[serde(skip)]
    pub json: serde_json::Value,
}

/// Socket counts by state name, zeros left out.
pub type StateCounts = BTreeMap<String, u64>;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Flow {
    pub pid: u32,
    pub comm: String,
    pub role: String,
    pub local_port: u16,
    pub remote_addr: String,
    pub remote_port: u16,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub retransmits: u64,
    pub connections_opened: u64,
    pub connections_closed: u64,
    pub failed_connects: u64,
    pub resets: u64,
}

impl Flow {
    /// The listening side's port of this flow.
    pub fn service_port(&self) -> u16 {
        if self.role == "server" {
            self.local_port
        } else {
            self.remote_port
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub retransmits: u64,
    pub connections_opened: u64,
    pub connections_closed: u64,
    pub failed_connects: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub sockets: StateCounts,
}

impl Process {
    /// Sockets of this process in `state` (0 when left out).
    pub fn sockets_in(&self, state: &str) -> u64 {
        self.sockets.get(state).copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CloseWait {
    pub pid: u32,
    pub comm: String,
    pub local_addr: String,
    pub local_port: u16,
    pub remote_addr: String,
    pub remote_port: u16,
    pub age_secs: f64,
    pub age_is_lower_bound: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Sample {
    pub t_secs: f64,
    pub processes: Vec<SampleProcess>,
}

impl Sample {
    pub fn process(&self, pid: u32) -> Option<&SampleProcess> {
        self.processes.iter().find(|p| p.pid == pid)
    }

    /// Sockets of `pid` in `state` at the end of this interval (0 if absent).
    pub fn sockets_in(&self, pid: u32, state: &str) -> u64 {
        self.process(pid).and_then(|p| p.sockets.get(state).copied()).unwrap_or(0)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct SampleProcess {
    pub pid: u32,
    pub comm: String,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub sockets: StateCounts,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Host {
    pub sockets: StateCounts,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TracerStats {
    pub events_total: u64,
    pub events_dropped: u64,
    pub events_deferred: u64,
    pub map_full_drops: u64,
    pub live_sockets: u64,
}

impl Report {
    pub fn parse(text: &str) -> Result<Report, serde_json::Error> {
        let json: serde_json::Value = serde_json::from_str(text)?;
        let mut report: Report = serde_json::from_value(json.clone())?;
        report.json = json;
        Ok(report)
    }

    pub fn flows_of(&self, pid: u32) -> Vec<&Flow> {
        self.flows.iter().filter(|f| f.pid == pid).collect()
    }

    /// The one flow (pid, role, remote address, service port); panics with
    /// the pid's flows if there is none or more than one.
    pub fn flow(&self, pid: u32, role: &str, remote_addr: &str, service_port: u16) -> &Flow {
        let found: Vec<&Flow> = self
            .flows
            .iter()
            .filter(|f| {
                f.pid == pid && f.role == role && f.remote_addr == remote_addr && f.service_port() == service_port
            })
            .collect();
        match found.as_slice() {
            [flow] => flow,
            _ => panic!(
                "expected exactly one {role} flow of pid {pid} with {remote_addr} on service port {service_port}, \
                 found {}; flows of pid {pid}: {:#?}",
                found.len(),
                self.flows_of(pid)
            ),
        }
    }

    /// The process record of `pid`; panics with the pids present if absent.
    pub fn process(&self, pid: u32) -> &Process {
        self.processes.iter().find(|p| p.pid == pid).unwrap_or_else(|| {
            panic!(
                "no process {pid} in the report; processes: {:?}",
                self.processes.iter().map(|p| (p.pid, p.comm.as_str())).collect::<Vec<_>>()
            )
        })
    }

    pub fn close_wait_on_port(&self, local_port: u16) -> Vec<&CloseWait> {
        self.close_wait.iter().filter(|c| c.local_port == local_port).collect()
    }

    /// The findings, typed; panics with the JSON if one does not have the
    /// documented fields.
    pub fn typed_findings(&self) -> Vec<Finding> {
        self.findings
            .iter()
            .map(|f| {
                serde_json::from_value(f.clone())
                    .unwrap_or_else(|e| panic!("finding is not the documented JSON ({e}): {f:#}"))
            })
            .collect()
    }

    /// The findings about process `pid` (process- or flow-level).
    pub fn findings_of(&self, pid: u32) -> Vec<Finding> {
        self.typed_findings().into_iter().filter(|f| f.pid == pid).collect()
    }
}

/// One entry of the report's `findings` (DESIGN.md, Findings).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Finding {
    pub kind: String,
    pub severity: String,
    pub pid: u32,
    pub comm: String,
    /// Set for flow-level findings.
    pub remote_addr: Option<String>,
    /// The flow's service port, for flow-level findings.
    pub port: Option<u16>,
    pub summary: String,
    pub evidence: serde_json::Value,
}

impl Finding {
    /// `evidence[key]` as a number; panics with the finding if it is not one.
    pub fn number(&self, key: &str) -> f64 {
        self.evidence
            .get(key)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or_else(|| panic!("no number {key} in {self:#?}"))
    }

    /// `evidence[key]` as a string; panics with the finding if it is not one.
    pub fn text(&self, key: &str) -> &str {
        self.evidence
            .get(key)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_else(|| panic!("no string {key} in {self:#?}"))
    }
}

/// One `word key=value ...` line printed by a child.
#[derive(Debug, Clone)]
pub struct Line(pub String);

impl Line {
    /// The value of `key`; panics if the line has none.
    pub fn get(&self, key: &str) -> &str {
        self.0
            .split_whitespace()
            .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key}= in line {:?}", self.0))
    }

    pub fn num<T: std::str::FromStr>(&self, key: &str) -> T {
        let text = self.get(key);
        text.parse().unwrap_or_else(|_| panic!("{key}={text} is not a number in line {:?}", self.0))
    }
}

/// A child process that prints `word key=value` lines on stdout and reads
/// commands on stdin (closing stdin tells it to exit). Killed, by its pid,
/// when dropped.
pub struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    /// Spawns `command` with piped stdio; `name` appears in panics.
    pub fn spawn(name: &str, mut command: Command) -> Proc {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let lines = stream_lines(child.stdout.take().expect("stdout is piped"), stdout.clone());
        let errors = stream_lines(child.stderr.take().expect("stderr is piped"), stderr.clone());
        thread::spawn(move || while errors.recv().is_ok() {});
        let stdin = child.stdin.take();
        Proc { name: name.to_owned(), child, stdin, lines, stdout, stderr }
    }

    /// The pid of the spawned process (for `ip netns exec`, use the pid the
    /// child prints: that is the traffic process).
    pub fn child_pid(&self) -> u32 {
        self.child.id()
    }

    fn describe(&self) -> String {
        format!(
            "{} stdout:\n{}\n{} stderr:\n{}",
            self.name,
            transcript(&self.stdout),
            self.name,
            transcript(&self.stderr)
        )
    }

    /// Waits for the next line starting with `word`, skipping others.
    pub fn expect(&mut self, word: &str, timeout: Duration) -> Line {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.split_whitespace().next() == Some(word) => return Line(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{} printed no '{word}' line within {timeout:?}; {}", self.name, self.describe())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = wait_bounded(&mut self.child, Duration::from_secs(5));
                    thread::sleep(Duration::from_millis(50));
                    panic!("{} exited ({status:?}) before printing '{word}'; {}", self.name, self.describe())
                }
            }
        }
    }

    /// Writes one command line to the child's stdin.
    pub fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap_or_else(|| panic!("{}'s stdin is closed", self.name));
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("cannot write to {}: {e}", self.name));
    }

    /// Closes stdin (the child's signal to exit) and waits for a clean exit.
    pub fn finish(mut self) {
        self.stdin = None;
        let status = wait_bounded(&mut self.child, Duration::from_secs(30));
        thread::sleep(Duration::from_millis(50));
        match status {
            Some(status) if status.success() => {}
            _ => panic!("{} did not exit cleanly ({status:?}); {}", self.name, self.describe()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stdin = None;
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Output of a command that must succeed; panics with its stderr.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (is it installed?)"));
    assert!(
        output.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Polls `condition` every 20 ms until it holds; panics with `what` after
/// `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// One socket line of `ss -tanpH`: local port, remote port, owning pids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsSocket {
    pub local_port: u16,
    pub remote_port: u16,
    pub pids: Vec<u32>,
}

/// The arguments of `ss` listing TCP sockets in `state` (e.g.
/// `close-wait`) with local port `port`, owners included.
pub fn ss_args(state: &str, port: u16) -> Vec<String> {
    ["-tanpH", "state", state, "sport", "="].iter().map(|s| s.to_string()).chain([format!(":{port}")]).collect()
}

/// Parses what `ss -tanpH state STATE ...` prints.
pub fn parse_ss(text: &str) -> Vec<SsSocket> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let ports: Vec<u16> = line
                .split_whitespace()
                .filter(|f| !f.starts_with("users:"))
                .filter_map(|f| f.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
                .collect();
            let pids = line
                .split("pid=")
                .skip(1)
                .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
                .collect();
            match ports.as_slice() {
                [local_port, remote_port] => SsSocket { local_port: *local_port, remote_port: *remote_port, pids },
                _ => panic!("cannot read ss line {line:?}"),
            }
        })
        .collect()
}

/// Sockets `ss` shows in `state` with local port `port`, in the caller's
/// network namespace.
pub fn ss_sockets(state: &str, port: u16) -> Vec<SsSocket> {
    let args = ss_args(state, port);
    parse_ss(&run("ss", &args.iter().map(String::as_str).collect::<Vec<_>>()))
}

/// A port nobody listens on (bound, then released) on `ip`.
pub fn free_port(ip: IpAddr) -> u16 {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// Writes exactly `count` bytes, counting what each write moved.
pub fn send_exactly(stream: &mut TcpStream, count: u64) {
    let chunk = [0x5au8; 65536];
    let mut left = count;
    while left > 0 {
        let size = usize::try_from(left.min(chunk.len() as u64)).expect("chunk fits usize");
        match stream.write(&chunk[..size]) {
            Ok(0) => panic!("peer stopped reading with {left} of {count} bytes unsent"),
            Ok(moved) => left -= moved as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("send failed with {left} of {count} bytes unsent: {e}"),
        }
    }
}

/// Reads exactly `count` bytes.
pub fn receive_exactly(stream: &mut TcpStream, count: u64) {
    let mut buf = vec![0u8; 65536];
    let mut got = 0;
    while got < count {
        let size = usize::try_from((count - got).min(buf.len() as u64)).expect("chunk fits usize");
        match stream.read(&mut buf[..size]) {
            Ok(0) => panic!("peer closed after {got} of {count} bytes"),
            Ok(moved) => got += moved as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("receive failed after {got} of {count} bytes: {e}"),
        }
    }
}

/// Reads until the peer closes; returns how many bytes came.
pub fn receive_to_end(stream: &mut TcpStream) -> u64 {
    let mut buf = vec![0u8; 65536];
    let mut got = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(moved) => got += moved as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("receive failed after {got} bytes: {e}"),
        }
    }
}

/// Connects to `remote` from `local_ip` (an explicit source address, e.g.
/// 127.0.0.2 to look like another client host).
pub fn connect_from(local_ip: IpAddr, remote: SocketAddr) -> std::io::Result<TcpStream> {
    let family = match local_ip {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: socket(2) with constant arguments; the fd is owned below.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own; TcpStream closes it on drop.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let bind = sockaddr(SocketAddr::new(local_ip, 0));
    let target = sockaddr(remote);
    // SAFETY: the sockaddr buffers live across the calls, lengths match.
    unsafe {
        if libc::bind(fd, bind.0.as_ptr().cast(), bind.1) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::connect(fd, target.0.as_ptr().cast(), target.1) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(stream)
}

/// A socket address in the kernel's layout: (bytes of sockaddr_storage, length).
pub fn sockaddr(address: SocketAddr) -> (Vec<u8>, libc::socklen_t) {
    match address {
        SocketAddr::V4(v4) => {
            let raw = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            (struct_bytes(&raw), std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(v6) => {
            let raw = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: v6.scope_id(),
            };
            (struct_bytes(&raw), std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

fn struct_bytes<T: Copy>(value: &T) -> Vec<u8> {
    // Over-aligned storage: the kernel reads it as a sockaddr.
    let mut storage = vec![0u64; std::mem::size_of::<T>().div_ceil(8)];
    // SAFETY: storage is at least size_of::<T>() bytes and 8-aligned; T is
    // a plain C struct (Copy, no padding read back).
    unsafe { std::ptr::write_unaligned(storage.as_mut_ptr().cast::<T>(), *value) };
    let mut bytes: Vec<u8> = storage.iter().flat_map(|w| w.to_ne_bytes()).collect();
    bytes.truncate(std::mem::size_of::<T>());
    bytes
}

/// Sets the calling thread's name (`prctl(PR_SET_NAME)`); on the main
/// thread that is the process name `/proc/PID/comm` shows.
pub fn set_process_name(name: &[u8]) {
    assert!(name.len() <= 15, "a process name has at most 15 bytes");
    let mut buf = [0u8; 16];
    buf[..name.len()].copy_from_slice(name);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes
    // from buf, which lives across the call.
    let rc = unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0) };
    assert_eq!(rc, 0, "prctl(PR_SET_NAME) failed: {}", std::io::Error::last_os_error());
}

/// A network namespace made for one test; deleted on drop (also on panic).
/// Drop the processes inside it first (declare this guard before them).
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// Creates `tracer-test-<our pid>-<tag>` with loopback up.
    pub fn create(tag: &str) -> NetNs {
        let name = format!("tracer-test-{}-{tag}", std::process::id());
        // A leftover from a crashed run of this same pid is unlikely but harmless to clear.
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        run("ip", &["netns", "add", &name]);
        let netns = NetNs { name };
        run("ip", &["-n", &netns.name, "link", "set", "lo", "up"]);
        netns
    }

    /// `ip netns exec NAME program args...`, to spawn inside the namespace.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]).args(args);
        command
    }

    /// Runs a command inside the namespace; returns its stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Sockets `ss` shows in `state` with local port `port`, inside the namespace.
    pub fn ss_sockets(&self, state: &str, port: u16) -> Vec<SsSocket> {
        let args = ss_args(state, port);
        parse_ss(&self.run("ss", &args.iter().map(String::as_str).collect::<Vec<_>>()))
    }

    /// A counter of the namespace's `/proc/net/snmp` `Tcp:` table (e.g.
    /// `RetransSegs`).
    pub fn tcp_counter(&self, name: &str) -> u64 {
        let text = self.run("cat", &["/proc/net/snmp"]);
        let rows: Vec<Vec<&str>> =
            text.lines().filter(|l| l.starts_with("Tcp:")).map(|l| l.split_whitespace().collect()).collect();
        let [header, values] = rows.as_slice() else { panic!("no Tcp: rows in /proc/net/snmp:\n{text}") };
        let column = header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no Tcp counter {name}"));
        values[column].parse().unwrap_or_else(|_| panic!("Tcp {name} is not a number: {text}"))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).stderr(Stdio::null()).status();
    }
}
