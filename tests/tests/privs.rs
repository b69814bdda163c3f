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

// ---- --web.config.file: TLS and basic auth ----------------------------

/// A scratch directory, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("tracer-privs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }

    fn write(&self, name: &str, text: &str) -> String {
        std::fs::write(self.0.join(name), text).expect("write scratch file");
        self.path(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(dir: &Scratch, args: &[&str]) {
    let output =
        Command::new("openssl").args(args).current_dir(&dir.0).output().expect("openssl runs (Debian package openssl)");
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// A CA `NAME-ca.{crt,key}` and a certificate `NAME.{crt,key}` it signs
/// for `subject` (a server: localhost and 127.0.0.1).
fn make_certificates(dir: &Scratch, name: &str) {
    let ca = format!("{name}-ca");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca}"),
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.crt"),
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    dir.write(
        &format!("{name}.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

/// Cost 4: a real bcrypt hash, fast to check.
fn bcrypt_hash(password: &str) -> String {
    bcrypt::hash(password, 4).expect("bcrypt hashes")
}

fn root_agent(args: &[&str]) -> Command {
    let mut command = Command::new(tracer_bin());
    command.args(["agent", "--listen", "127.0.0.1:0", "--interval", "500ms"]).args(args);
    command
}

fn signal(agent: &Agent, signal: libc::c_int) {
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(agent.pid() as libc::pid_t, signal) };
}

#[test]
fn tls_and_basic_auth_from_the_web_config_file_reloaded_on_sighup() {
    let _serial = serial();
    let me = std::process::id();
    let dir = Scratch::new("tls");
    make_certificates(&dir, "server");
    let config = |cert: &str, user: &str, password: &str| {
        format!(
            "tls_server_config:\n  cert_file: {cert}.crt\n  key_file: {cert}.key\n  min_version: TLS12\n\
             http_server_config:\n  headers:\n    X-Frame-Options: deny\n\
             basic_auth_users:\n  {user}: '{}'\n",
            bcrypt_hash(password)
        )
    };
    let web = dir.write("web.yml", &config("server", "prometheus", "s3cret"));
    let traffic = Traffic::before_start();
    let mut command = root_agent(&["--web.config.file", &web]);
    command.args(traffic.agent_args());
    let agent = Agent::start(command);
    assert!(agent.url.starts_with("https://"), "{}", agent.url);
    let url = |path: &str| format!("https://localhost:{}{path}", agent.addr.port());
    let ca = dir.path("server-ca.crt");

    // /healthz needs no credentials; everything else does.
    assert_eq!(curl(&["--cacert", &ca, &url("/healthz")]), (200, "ok".to_owned()));
    let (status, text) = curl(&["--cacert", &ca, "-i", &url("/metrics")]);
    assert_eq!(status, 401, "{text}");
    assert!(text.to_ascii_lowercase().contains("www-authenticate: basic"), "{text}");
    assert!(text.to_ascii_lowercase().contains("x-frame-options: deny"), "{text}");
    assert_eq!(curl(&["--cacert", &ca, "-u", "prometheus:wrong", &url("/metrics")]).0, 401);
    assert_eq!(curl(&["--cacert", &ca, "-u", "nobody:s3cret", &url("/")]).0, 401);
    assert_eq!(curl(&["--cacert", &ca, "-u", "prometheus:s3cret", &url("/nope")]).0, 404);
    // Plain HTTP to the TLS port is refused with a reason.
    let (status, text) = curl(&[&format!("http://127.0.0.1:{}/metrics", agent.addr.port())]);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("Client sent an HTTP request to an HTTPS server."), "{text}");
    // Not trusted without the CA.
    assert_eq!(curl(&[&url("/healthz")]).0, 0);

    // An exact transfer, scraped over TLS with credentials.
    traffic.transfer();
    let deadline = Instant::now() + Duration::from_secs(20);
    let sent_line = loop {
        let (status, metrics) = curl(&["--cacert", &ca, "-u", "prometheus:s3cret", &url("/metrics")]);
        assert_eq!(status, 200, "{metrics}");
        let line = metrics.lines().find(|l| {
            l.starts_with("tracer_tcp_sent_bytes_total{")
                && l.contains("role=\"client\"")
                && l.contains(&format!("port=\"{}\"", traffic.transfer_port))
        });
        if let Some(line) = line.filter(|l| l.ends_with(&format!(" {SENT}"))) {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "no exact client counter over TLS: {line:?}\n{metrics}");
        thread::sleep(Duration::from_millis(300));
    };
    assert!(sent_line.ends_with(&format!(" {SENT}")), "{sent_line}");
    let (status, body) = curl(&["--cacert", &ca, "-u", "prometheus:s3cret", &url("/api/v1/report")]);
    assert_eq!(status, 200);
    let report = Report::parse(&body).expect("report parses");
    assert_eq!(report.flow(me, "client", "127.0.0.1", traffic.transfer_port).tx_bytes, SENT);

    // SIGHUP with a bad file: logged with its line, the old config kept.
    std::fs::write(&web, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_versoin: TLS12\n")
        .expect("write");
    signal(&agent, libc::SIGHUP);
    wait_until("the bad reload is logged", Duration::from_secs(10), || {
        agent.stderr().contains("keeping the previous web config")
    });
    let stderr = agent.stderr();
    assert!(stderr.contains("line 4: tls_server_config: unknown field `min_versoin`"), "{stderr}");
    assert_eq!(curl(&["--cacert", &ca, "-u", "prometheus:s3cret", &url("/metrics")]).0, 200, "old config kept");

    // SIGHUP with a good file: a new certificate (another CA) and user.
    make_certificates(&dir, "renewed");
    std::fs::write(&web, config("renewed", "scraper", "n3w")).expect("write");
    signal(&agent, libc::SIGHUP);
    wait_until("the reload", Duration::from_secs(10), || agent.stderr().contains("web config reloaded"));
    let renewed_ca = dir.path("renewed-ca.crt");
    assert_eq!(
        curl(&["--cacert", &renewed_ca, "-u", "scraper:n3w", &url("/metrics")]).0,
        200,
        "renewed certificate and user"
    );
    assert_eq!(curl(&["--cacert", &ca, "-u", "scraper:n3w", &url("/metrics")]).0, 0, "the old certificate is gone");
    assert_eq!(
        curl(&["--cacert", &renewed_ca, "-u", "prometheus:s3cret", &url("/metrics")]).0,
        401,
        "the old user is gone"
    );
    assert!(agent.terminate().success());
}

#[test]
fn client_certificates_are_required_and_verified_when_asked() {
    let _serial = serial();
    let dir = Scratch::new("mtls");
    make_certificates(&dir, "server");
    make_certificates(&dir, "client");
    make_certificates(&dir, "stranger");
    let web = dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
         client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client-ca.crt\n",
    );
    let agent = Agent::start(root_agent(&["--web.config.file", &web, "--port", "1"]));
    let url = format!("https://localhost:{}/healthz", agent.addr.port());
    let ca = dir.path("server-ca.crt");
    assert_eq!(curl(&["--cacert", &ca, &url]).0, 0, "no client certificate");
    let stranger =
        curl(&["--cacert", &ca, "--cert", &dir.path("stranger.crt"), "--key", &dir.path("stranger.key"), &url]);
    assert_eq!(stranger.0, 0, "a certificate of another CA: {stranger:?}");
    let client = curl(&["--cacert", &ca, "--cert", &dir.path("client.crt"), "--key", &dir.path("client.key"), &url]);
    assert_eq!(client, (200, "ok".to_owned()));
    assert!(agent.terminate().success());
}

#[test]
fn a_bad_web_config_at_start_exits_2_naming_the_line() {
    let _serial = serial();
    let dir = Scratch::new("bad");
    make_certificates(&dir, "server");
    let cases = [
        (
            "basic_auth_users:\n  prometheus: '$2y$10$x'\n",
            "line 2: basic_auth_users: the password of \"prometheus\" is not a bcrypt hash",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_versoin: TLS12\n",
            "line 4: tls_server_config: unknown field `min_versoin`",
        ),
        (
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n",
            "line 2: tls_server_config.cert_file: cannot read",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS10\n",
            "line 4: tls_server_config.min_version: TLS10 is not supported",
        ),
        ("basic_auth_users: [a\n", "line "),
    ];
    for (text, expected) in cases {
        let web = dir.write("web.yml", text);
        let output = root_agent(&["--web.config.file", &web]).stdin(Stdio::null()).output().expect("agent runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{text}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.starts_with(&format!("tracer: web config {web} ")), "{stderr}");
        assert!(stderr.contains(expected), "{text}: expected {expected:?} in {stderr}");
    }
    let output = root_agent(&["--web.config.file", &dir.path("absent.yml")]).output().expect("agent runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read it"));

    // Off loopback without a web config: a warning at start.
    let mut command = Command::new(tracer_bin());
    command.args(["agent", "--listen", "0.0.0.0:0", "--interval", "500ms", "--port", "1"]);
    let agent = Agent::start(command);
    assert!(agent.stderr().contains("serving plain HTTP without authentication on 0.0.0.0:0"), "{}", agent.stderr());
    assert!(agent.terminate().success());
}

/// A Prometheus server (Debian's) with its own config and storage in
/// `dir`, listening on loopback; stopped by its pid.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    fn start(dir: &Scratch, config: &str) -> Prometheus {
        let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let config_path = dir.write("prometheus.yml", config);
        let child = Command::new("prometheus")
            .arg(format!("--config.file={config_path}"))
            .arg(format!("--storage.tsdb.path={}", dir.path("tsdb")))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting prometheus (Debian package `prometheus`): {e}"));
        Prometheus { child, port }
    }

    /// The `data` of an answer of Prometheus' HTTP API, if it gave one.
    fn api(&self, path_and_query: &str) -> Option<serde_json::Value> {
        let (status, body) = curl(&["-G", &format!("http://127.0.0.1:{}{path_and_query}", self.port)]);
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        (status == 200 && json["status"] == "success").then(|| json["data"].clone())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        if wait_bounded(&mut self.child, Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A real Prometheus scrapes the agent over TLS (a CA the test made) with
/// basic auth: the exact byte counter comes back through PromQL; the same
/// scrape with a wrong password shows the target down with 401; with
/// `RequireAndVerifyClientCert`, a job with the client certificate is up
/// and one without is down.
#[test]
fn a_real_prometheus_scrapes_over_https_with_basic_auth() {
    let _serial = serial();
    let dir = Scratch::new("prometheus");
    make_certificates(&dir, "server");
    make_certificates(&dir, "client");
    let web = dir.write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client-ca.crt\n\
             basic_auth_users:\n  prometheus: '{}'\n",
            bcrypt_hash("s3cret")
        ),
    );
    let traffic = Traffic::before_start();
    let mut command = root_agent(&["--web.config.file", &web]);
    command.args(traffic.agent_args());
    let agent = Agent::start(command);
    traffic.transfer();

    let target = format!("localhost:{}", agent.addr.port());
    let job = |name: &str, password: &str, client_cert: bool| {
        let cert = if client_cert {
            format!("\n      cert_file: {}\n      key_file: {}", dir.path("client.crt"), dir.path("client.key"))
        } else {
            String::new()
        };
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {}{cert}\n    \
             basic_auth:\n      username: prometheus\n      password: {password}\n    \
             static_configs:\n      - targets: ['{target}']\n",
            dir.path("server-ca.crt")
        )
    };
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n{}{}{}",
        job("good", "s3cret", true),
        job("wrong_password", "nope", true),
        job("no_client_cert", "s3cret", false)
    );
    let prometheus = Prometheus::start(&dir, &config);

    let query = format!(
        "/api/v1/query?query=tracer_tcp_sent_bytes_total%7Bjob%3D%22good%22%2Crole%3D%22client%22%2Cport%3D%22{}%22%7D",
        traffic.transfer_port
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let value = loop {
        let value = prometheus
            .api(&query)
            .and_then(|data| data["result"].get(0).and_then(|r| r["value"][1].as_str().map(str::to_owned)));
        if value.as_deref() == Some(&SENT.to_string()) {
            break value;
        }
        assert!(Instant::now() < deadline, "Prometheus never read {SENT} through TLS and basic auth: {value:?}");
        thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(value, Some(SENT.to_string()));

    // The other two jobs: down, and why.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let targets = prometheus.api("/api/v1/targets").unwrap_or_default();
        let of = |job: &str| {
            targets["activeTargets"].as_array().into_iter().flatten().find(|t| t["labels"]["job"] == job).map(|t| {
                (t["health"].as_str().unwrap_or("").to_owned(), t["lastError"].as_str().unwrap_or("").to_owned())
            })
        };
        let (wrong, no_cert) = (of("wrong_password"), of("no_client_cert"));
        let wrong_down = wrong.as_ref().is_some_and(|(health, error)| health == "down" && error.contains("401"));
        let no_cert_down = no_cert.as_ref().is_some_and(|(health, error)| health == "down" && !error.is_empty());
        if wrong_down && no_cert_down {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "targets not down as expected: wrong password {wrong:?}, no client cert {no_cert:?}"
        );
        thread::sleep(Duration::from_millis(500));
    }
    drop(prometheus);
    assert!(agent.terminate().success());
}
