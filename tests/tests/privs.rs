//! Least privilege: `tracer agent` run as uid 65534 with exactly the
//! capabilities the README documents (through `setpriv`) counts an exact
//! transfer and names the owner of a CLOSE_WAIT socket of another user
//! (found through `/proc`), and after the attach every one of its threads
//! holds only CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH. Without
//! CAP_SYS_PTRACE, `doctor` says what is lost and the agent shows it: the
//! owner stays unknown, the bytes stay exact. Without CAP_PERFMON it
//! refuses to start with one line and exit code 1.
//!
//! Needs root (to hand the capabilities out) and Debian's `setpriv` and
//! `curl`; fails, never skips, when one is missing.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use tracer_tests::{serial, tracer_bin, wait_bounded, wait_until, Report};

/// Attaching can take a while on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The unprivileged user the agent runs as.
const NOBODY: &str = "65534";
/// The documented set for kernels 5.8+ (README, "Capabilities").
const DOCUMENTED: [&str; 4] = ["bpf", "perfmon", "sys_ptrace", "dac_read_search"];
/// CAP_DAC_READ_SEARCH (2) and CAP_SYS_PTRACE (19): what is kept after attach.
const KEPT_AFTER_ATTACH: u64 = (1 << 2) | (1 << 19);

/// `setpriv` arguments running a command as uid/gid 65534 with exactly
/// `caps` (inheritable, ambient and bounding sets).
fn as_nobody(caps: &[&str]) -> Vec<String> {
    let set = std::iter::once("-all".to_owned()).chain(caps.iter().map(|c| format!("+{c}"))).collect::<Vec<_>>();
    let set = set.join(",");
    [
        "--reuid",
        NOBODY,
        "--regid",
        NOBODY,
        "--clear-groups",
        "--inh-caps",
        &set,
        "--ambient-caps",
        &set,
        "--bounding-set",
        &set,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A running `tracer agent`, killed when dropped.
pub struct Agent {
    child: Child,
    /// `http://ADDR` or `https://ADDR` as the agent announced it.
    pub url: String,
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Agent {
    /// Starts `program args..` (the tracer, or `setpriv ... tracer`) and
    /// waits for the listening line.
    pub fn start(mut command: Command) -> Agent {
        let mut child = command
            .env("RUST_LOG", "tracer=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (lines_tx, lines) = mpsc::channel::<String>();
        let pipe = child.stderr.take().expect("stderr is piped");
        let transcript = Arc::clone(&stderr);
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut text) = transcript.lock() {
                    text.push_str(&line);
                    text.push('\n');
                }
                let _ = lines_tx.send(line);
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let url = loop {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("tracer: agent listening on ") {
                        break rest.split_whitespace().next().unwrap_or_default().to_owned();
                    }
                }
                Err(_) => {
                    let status = wait_bounded(&mut child, Duration::from_secs(2));
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "the agent did not start ({status:?}); stderr:\n{}",
                        stderr.lock().map(|s| s.clone()).unwrap_or_default()
                    );
                }
            }
        };
        let addr = url.rsplit("://").next().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("bad url {url}"));
        Agent { child, url, addr, stderr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The JSON report, once `ready` accepts it (bounded wait).
    fn report_until(&self, what: &str, mut ready: impl FnMut(&Report) -> bool) -> Report {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = curl(&[&format!("{}/api/v1/report", self.url)]);
            assert_eq!(status, 200, "report: {body}");
            let report = Report::parse(&body).expect("the agent's report parses");
            if ready(&report) {
                return report;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not seen within 20 s; last report: {body}\nstderr:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(300));
        }
    }

    /// SIGTERM, then the exit status (bounded wait).
    pub fn terminate(mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        wait_bounded(&mut self.child, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("the agent ignored SIGTERM; stderr:\n{}", self.stderr()))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `curl -sS ARGS`: the HTTP status and the body (status 0: no answer).
pub fn curl(args: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs (Debian package curl)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), format!("{body}{}", String::from_utf8_lossy(&output.stderr)))
}

/// Every thread's effective capabilities, by thread id.
fn thread_capabilities(pid: u32) -> Vec<(String, u64)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the agent's threads").flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("");
        let effective = u64::from_str_radix(field("CapEff:"), 16).expect("CapEff is hex");
        threads.push((format!("{} ({})", task.file_name().to_string_lossy(), field("Name:")), effective));
    }
    threads
}

/// The traffic of one run: a CLOSE_WAIT socket that never moved a byte
/// (its owner is only found through /proc), made before the agent starts,
/// and an exact transfer after.
struct Traffic {
    close_wait_port: u16,
    transfer_port: u16,
    _held: (TcpListener, TcpStream),
    transfer: TcpListener,
}

const SENT: u64 = 1_234_567;
const ANSWERED: u64 = 54_321;

impl Traffic {
    fn before_start() -> Traffic {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let close_wait_port = listener.local_addr().expect("addr").port();
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        drop(client);
        let transfer = TcpListener::bind("127.0.0.1:0").expect("bind");
        let transfer_port = transfer.local_addr().expect("addr").port();
        Traffic { close_wait_port, transfer_port, _held: (listener, accepted), transfer }
    }

    fn transfer(&self) {
        let addr = self.transfer.local_addr().expect("addr");
        let server = {
            let listener = self.transfer.try_clone().expect("clone");
            thread::spawn(move || {
                let (mut stream, _) = listener.accept().expect("accept");
                let mut received = 0u64;
                let mut buffer = [0u8; 65536];
                while received < SENT {
                    let n = stream.read(&mut buffer).expect("read");
                    assert!(n > 0, "early EOF");
                    received += n as u64;
                }
                stream.write_all(&vec![7u8; ANSWERED as usize]).expect("answer");
            })
        };
        let mut client = TcpStream::connect(addr).expect("connect");
        client.write_all(&vec![1u8; SENT as usize]).expect("send");
        let mut answer = vec![0u8; ANSWERED as usize];
        client.read_exact(&mut answer).expect("answer");
        server.join().expect("server thread");
        client.shutdown(Shutdown::Both).ok();
    }

    fn agent_args(&self) -> Vec<String> {
        ["--port".into(), self.close_wait_port.to_string(), "--port".into(), self.transfer_port.to_string()].to_vec()
    }
}

fn agent_command(prefix: &[String], args: &[String]) -> Command {
    let mut command = Command::new("setpriv");
    command.args(prefix).arg(tracer_bin()).args(["agent", "--listen", "127.0.0.1:0", "--interval", "500ms"]).args(args);
    command
}

/// `tracer doctor` run as uid 65534 with `caps`.
fn doctor_as_nobody(caps: &[&str]) -> String {
    let output =
        Command::new("setpriv").args(as_nobody(caps)).arg(tracer_bin()).arg("doctor").output().expect("doctor runs");
    assert!(output.status.success(), "doctor failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn documented_capabilities_count_exactly_and_are_dropped_after_attach() {
    let _serial = serial();
    let me = std::process::id();
    let doctor = doctor_as_nobody(&DOCUMENTED);
    assert!(doctor.contains("  missing: none\n"), "doctor with the documented set:\n{doctor}");

    let traffic = Traffic::before_start();
    let agent = Agent::start(agent_command(&as_nobody(&DOCUMENTED), &traffic.agent_args()));
    // Every thread, the runtime's workers and the runtime-names thread
    // included, holds only what the /proc scans need.
    wait_until("the agent's threads start", Duration::from_secs(10), || thread_capabilities(agent.pid()).len() >= 3);
    for (thread, effective) in thread_capabilities(agent.pid()) {
        assert_eq!(effective, KEPT_AFTER_ATTACH, "thread {thread} has CapEff {effective:016x}");
    }
    traffic.transfer();
    let report = agent.report_until("the exact transfer and the CLOSE_WAIT owner", |report| {
        let client =
            report.flows.iter().find(|f| f.pid == me && f.role == "client" && f.remote_port == traffic.transfer_port);
        client.is_some_and(|f| f.tx_bytes == SENT && f.rx_bytes == ANSWERED)
            && report.close_wait_on_port(traffic.close_wait_port).iter().any(|c| c.pid == me)
    });
    let server = report.flow(me, "server", "127.0.0.1", traffic.transfer_port);
    assert_eq!((server.tx_bytes, server.rx_bytes), (ANSWERED, SENT), "server side");
    let close_wait = report.close_wait_on_port(traffic.close_wait_port);
    assert_eq!(close_wait.len(), 1, "{close_wait:?}");
    assert_eq!(close_wait[0].pid, me, "the CLOSE_WAIT owner, found through /proc as uid 65534");
    // Still only those after a few ticks.
    for (thread, effective) in thread_capabilities(agent.pid()) {
        assert_eq!(effective, KEPT_AFTER_ATTACH, "thread {thread} has CapEff {effective:016x}");
    }
    let stderr = agent.stderr();
    assert!(!stderr.contains("TCP health pass failed"), "the health pass needs no capability after attach:\n{stderr}");
    let status = agent.terminate();
    assert!(status.success(), "agent exit: {status:?}");
}

#[test]
fn without_sys_ptrace_owners_stay_unknown_and_doctor_says_so() {
    let _serial = serial();
    let me = std::process::id();
    let caps = ["bpf", "perfmon", "dac_read_search"];
    let doctor = doctor_as_nobody(&caps);
    assert!(doctor.contains("  missing: CAP_SYS_PTRACE\n"), "{doctor}");
    assert!(doctor.contains("without it: owners of other users' sockets unknown"), "{doctor}");

    let traffic = Traffic::before_start();
    let agent = Agent::start(agent_command(&as_nobody(&caps), &traffic.agent_args()));
    traffic.transfer();
    let report = agent.report_until("the exact transfer", |report| {
        report
            .flows
            .iter()
            .any(|f| f.pid == me && f.role == "client" && f.remote_port == traffic.transfer_port && f.tx_bytes == SENT)
    });
    // Bytes stay exact (the kernel names the owner of a socket that moves
    // data); the CLOSE_WAIT socket that never did stays unowned.
    let server = report.flow(me, "server", "127.0.0.1", traffic.transfer_port);
    assert_eq!((server.tx_bytes, server.rx_bytes), (ANSWERED, SENT));
    let close_wait = report.close_wait_on_port(traffic.close_wait_port);
    assert_eq!(close_wait.len(), 1, "{close_wait:?}");
    assert_eq!(close_wait[0].pid, 0, "owner unknown without CAP_SYS_PTRACE: {close_wait:?}");
    for (thread, effective) in thread_capabilities(agent.pid()) {
        assert_eq!(effective, 1 << 2, "thread {thread} keeps only CAP_DAC_READ_SEARCH, has {effective:016x}");
    }
    assert!(agent.terminate().success());
}

#[test]
fn without_perfmon_the_agent_refuses_with_one_line() {
    let _serial = serial();
    let output = agent_command(&as_nobody(&["bpf", "sys_ptrace", "dac_read_search"]), &[])
        .stdin(Stdio::null())
        .output()
        .expect("the agent runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("tracer: error: cannot load eBPF programs: no CAP_PERFMON"), "{stderr}");
}
