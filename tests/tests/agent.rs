//! `tracer agent` against real traffic: exact byte counters in `/metrics`
//! that keep their values after the sockets close, the JSON API, errors,
//! the dashboard, escaping of an untrusted process name, `promtool check
//! metrics`, a real Prometheus server scraping the agent, a clean exit
//! on SIGTERM; `kill -9` leaving no program or map behind, and a restarted
//! agent counting exactly beside a `tracer trace` that counts the same;
//! hostile HTTP peers (1,000 idle connections, slowloris headers, a 1 MB
//! header, pipelined garbage, clients that never read) that cannot keep a
//! well-behaved scrape out.
//!
//! Needs root (the agent loads eBPF programs) and fails, never skips, when
//! the agent cannot start. The agent runs with `--pid <this test process>`
//! so other traffic on the host cannot push the test's flows out of the
//! top-n. promtool, the Prometheus server, Chromium and bpftool come from
//! Debian's `prometheus`, `chromium` and `bpftool` packages, which
//! `cargo xtask test` installs: no check is skipped, a missing tool fails
//! the test with a message that says so.
//!
//! The tracer binary is `TRACER_BIN`, else `target/<profile>/tracer` next to
//! this test's directory: build it first (`cargo build -p tracer`).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

// Agents running side by side would see each other's programs (the bpftool
// check) and traffic: tests hold the harness's `serial()` lock.
use tracer_tests::{bpf, serial, tracer_bin, wait_bounded, wait_until, Tracer};

/// Attaching can take a while on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on waiting for a counter to show a transfer (a few intervals on
/// an idle host; generous, as a busy one may delay the agent's ticks).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A binary on PATH, if installed.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

fn send_signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: kill(2) on our own child, not yet reaped (we hold its Child),
    // so the pid cannot have been reused.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({signal}) failed: {}", std::io::Error::last_os_error());
}

/// A running `tracer agent`, killed if dropped without [`Agent::terminate`].
struct Agent {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Agent {
    fn start(args: &[&str]) -> Agent {
        let mut child = Command::new(tracer_bin())
            .args(["agent", "--listen", "127.0.0.1:0", "--interval", "1s"])
            .env("RUST_LOG", "tracer::cmd::agent=debug")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", tracer_bin().display()));
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
        let addr = loop {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("tracer: agent listening on http://") {
                        let addr = rest.split_whitespace().next().unwrap_or_default();
                        assert!(rest.ends_with("backend)"), "unexpected listening line: {line}");
                        break addr.parse::<SocketAddr>().unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
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
        Agent { child, addr, stderr }
    }

    fn get(&self, path: &str) -> Response {
        http_get(self.addr, path)
    }

    fn metrics(&self) -> Vec<PromSample> {
        let response = self.get("/metrics");
        assert_eq!(response.status, 200, "{}", response.body);
        parse_exposition(&response.body)
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// SIGTERM; returns the exit status, how long the exit took and stderr.
    fn terminate(mut self) -> (ExitStatus, Duration, String) {
        let sent = Instant::now();
        send_signal(&self.child, libc::SIGTERM);
        let status = wait_bounded(&mut self.child, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("the agent ignored SIGTERM; stderr:\n{}", self.stderr()));
        let took = sent.elapsed();
        // The reader thread may still hold the last lines.
        thread::sleep(Duration::from_millis(50));
        (status, took, self.stderr())
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

struct Response {
    status: u16,
    headers: String,
    body: String,
}

/// One HTTP/1.1 GET with `Connection: close` (chunked bodies decoded).
fn http_get(addr: SocketAddr, path: &str) -> Response {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    stream.set_write_timeout(Some(Duration::from_secs(10))).expect("write timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("send request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no header end in GET {path}"));
    let headers = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    if headers.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    let status =
        headers.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad status line: {headers}"));
    Response { status, headers, body: String::from_utf8(body).expect("UTF-8 body") }
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

/// One sample of the text exposition, label values unescaped.
#[derive(Debug, Clone)]
struct PromSample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_exposition(text: &str) -> Vec<PromSample> {
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => panic!("bad sample line {line:?}"),
        };
        let mut labels = BTreeMap::new();
        let mut rest = rest;
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices();
            let mut key = String::new();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '}' => {
                        end = Some(i + 1);
                        break;
                    }
                    ',' => {}
                    '=' => {
                        assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                        let mut value = String::new();
                        loop {
                            match chars.next().map(|(_, c)| c) {
                                Some('\\') => match chars.next().map(|(_, c)| c) {
                                    Some('n') => value.push('\n'),
                                    Some(other) => value.push(other),
                                    None => panic!("{line}"),
                                },
                                Some('"') => break,
                                Some(other) => value.push(other),
                                None => panic!("unterminated label value in {line:?}"),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), value);
                    }
                    c => key.push(c),
                }
            }
            rest = &inner[end.unwrap_or_else(|| panic!("no closing brace in {line:?}"))..];
        }
        let value = rest.trim().parse::<f64>().unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
        samples.push(PromSample { name: name.to_owned(), labels, value });
    }
    samples
}

/// The value of the one sample `name{labels...}` (a subset match), if any.
fn value(samples: &[PromSample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<&PromSample> = samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .collect();
    assert!(found.len() <= 1, "more than one {name}{labels:?}: {found:?}");
    found.first().map(|s| s.value)
}

/// `name`'s histogram series with `labels`: cumulative buckets ending in
/// `le="+Inf"` at `_count`, and a `_sum`.
fn assert_histogram_consistent(samples: &[PromSample], name: &str, labels: &[(&str, &str)]) {
    let matches = |s: &&PromSample| labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v));
    let buckets: Vec<&PromSample> =
        samples.iter().filter(|s| s.name == format!("{name}_bucket")).filter(matches).collect();
    let count = value(samples, &format!("{name}_count"), labels).unwrap_or_else(|| panic!("no {name}_count"));
    assert!(value(samples, &format!("{name}_sum"), labels).is_some_and(|sum| sum >= 0.0), "{name}_sum");
    assert_eq!(buckets.len(), 19, "{name}: 18 bounds and +Inf: {buckets:?}");
    assert!(buckets.windows(2).all(|pair| pair[0].value <= pair[1].value), "{name}: not cumulative: {buckets:?}");
    let last = buckets.last().expect("buckets");
    assert_eq!((last.labels.get("le").map(String::as_str), last.value), (Some("+Inf"), count), "{name}");
}

/// Counters must never decrease between two scrapes.
fn assert_monotonic(before: &[PromSample], after: &[PromSample]) {
    for old in before.iter().filter(|s| s.name.ends_with("_total")) {
        if let Some(new) = after.iter().find(|s| s.name == old.name && s.labels == old.labels) {
            assert!(
                new.value >= old.value,
                "{}{:?} went backwards: {} -> {}",
                old.name,
                old.labels,
                old.value,
                new.value
            );
        }
    }
}

/// A client in this process sends `sent` bytes to a server in this process,
/// which answers `answered` bytes; returns the server port and both open
/// sockets (the server's after it has read everything).
fn transfer(sent: usize, answered: usize) -> (u16, TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind server");
    let port = listener.local_addr().expect("server addr").port();
    let server = thread::spawn(move || {
        let (mut socket, _) = listener.accept().expect("accept");
        let mut request = vec![0u8; sent];
        socket.read_exact(&mut request).expect("server reads the request");
        socket.write_all(&vec![b'r'; answered]).expect("server answers");
        socket
    });
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    client.write_all(&vec![b'q'; sent]).expect("client sends");
    let mut answer = vec![0u8; answered];
    client.read_exact(&mut answer).expect("client reads the answer");
    let server_socket = server.join().expect("server thread");
    (port, client, server_socket)
}

/// Scrapes until `name{labels}` reaches `at_least` or the time is up.
fn scrape_until(agent: &Agent, name: &str, labels: &[(&str, &str)], at_least: f64) -> Vec<PromSample> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let samples = agent.metrics();
        let reached = value(&samples, name, labels).is_some_and(|v| v >= at_least);
        if reached || Instant::now() >= deadline {
            return samples;
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// Polls the agent's report until the flows on service port `port` have
/// counted `closes` closed connections (bounded by [`SETTLE_TIMEOUT`]).
fn wait_for_closes(agent: &Agent, port: u16, closes: u64) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let response = agent.get("/api/v1/report");
        let closed: u64 = serde_json::from_str::<serde_json::Value>(&response.body)
            .ok()
            .and_then(|report| {
                let flows = report["flows"].as_array()?.clone();
                Some(
                    flows
                        .iter()
                        .filter(|f| f["remote_port"] == port || f["local_port"] == port)
                        .filter_map(|f| f["connections_closed"].as_u64())
                        .sum(),
                )
            })
            .unwrap_or(0);
        if closed >= closes {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agent counted {closed} of {closes} closes on port {port} within {SETTLE_TIMEOUT:?}: {}",
            response.body
        );
        thread::sleep(Duration::from_millis(250));
    }
}

fn own_comm() -> String {
    std::fs::read_to_string("/proc/self/comm").expect("read /proc/self/comm").trim_end_matches('\n').to_owned()
}

fn set_own_comm(name: &str) {
    // /proc/self/comm names the thread-group leader, which the tracer
    // reports (the test itself runs on another thread).
    std::fs::write("/proc/self/comm", name.as_bytes()).expect("write /proc/self/comm");
}

fn promtool_check(scrape: &str) {
    let Some(promtool) = which("promtool") else {
        panic!("a test tool is missing: run the tests with `cargo xtask test`, which installs it");
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child.stdin.take().expect("stdin").write_all(scrape.as_bytes()).expect("feed promtool");
    let output = child.wait_with_output().expect("promtool output");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}\n{said}\nscrape:\n{scrape}",
        output.status
    );
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// Starts Debian's Prometheus server scraping the agent every second and
/// waits until PromQL returns `expected` for `query`.
fn prometheus_scrapes(agent: &Agent, query: &str, expected: f64) {
    let Some(prometheus) = which("prometheus") else {
        panic!("a test tool is missing: run the tests with `cargo xtask test`, which installs it");
    };
    let dir = std::env::temp_dir().join(format!("tracer-agent-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: tracer\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['{}']\n",
            agent.addr
        ),
    )
    .expect("write config");
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
    let mut child = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={listen}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    let path = format!("/api/v1/query?query={}", percent_encode(query));
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = String::from("(no answer)");
    let mut found = None;
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(500));
        if let Ok(Some(status)) = child.try_wait() {
            last = format!("prometheus exited: {status}");
            break;
        }
        if TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_err() {
            continue;
        }
        let response = http_get(listen, &path);
        last = response.body.clone();
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&response.body) else { continue };
        let result = &json["data"]["result"];
        if let Some(series) = result.as_array().filter(|r| r.len() == 1) {
            let value = series[0]["value"][1].as_str().and_then(|v| v.parse::<f64>().ok());
            if value == Some(expected) {
                found = Some(series[0].clone());
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let series = found.unwrap_or_else(|| {
        panic!("PromQL {query} never returned {expected}; last answer: {last}\nprometheus log:\n{log}")
    });
    eprintln!("prometheus: {query} = {expected} ({series})");
}

/// Loads the dashboard in headless Chromium: the page must have loaded a
/// report, drawn its charts, and shown `comm` as text.
fn chromium_renders(agent: &Agent, comm_fragment_escaped: &str) {
    let Some(chromium) = which("chromium").or_else(|| which("chromium-browser")) else {
        panic!("a test tool is missing: run the tests with `cargo xtask test`, which installs it");
    };
    let url = format!("http://{}/", agent.addr);
    let profile = std::env::temp_dir().join(format!("tracer-agent-chromium-{}", std::process::id()));
    let artifacts = tracer_bin().parent().map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
    let screenshot = artifacts.join("agent-dashboard.png");
    let run = |extra: &[String]| -> String {
        let mut child = Command::new(&chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=8000"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(&url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let mut stdout = child.stdout.take().expect("stdout");
        let reader = thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let status = wait_bounded(&mut child, Duration::from_secs(90));
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let text = reader.join().unwrap_or_default();
        assert!(status.is_some_and(|s| s.success()), "chromium failed or hung ({status:?})");
        text
    };
    let dom = run(&["--dump-dom".to_owned()]);
    let _ = run(&[format!("--screenshot={}", screenshot.display()), "--window-size=1400,2400".to_owned()]);
    let _ = std::fs::remove_dir_all(&profile);
    assert!(dom.contains("data-loaded=\"true\""), "the dashboard never loaded a report:\n{dom}");
    for chart in ["chart-tx", "chart-rx", "chart-sockets", "chart-ports", "chart-rtt"] {
        let tag = dom.split(&format!("id=\"{chart}\"")).nth(1).and_then(|rest| rest.split('>').next()).unwrap_or("");
        let points =
            tag.split("data-points=\"").nth(1).and_then(|v| v.split('"').next()).and_then(|v| v.parse::<u64>().ok());
        assert!(points.is_some_and(|p| p > 0), "chart {chart} drew nothing: {tag}");
    }
    assert!(dom.contains(comm_fragment_escaped), "process name not shown as text ({comm_fragment_escaped}):\n{dom}");
    assert!(!dom.contains("<svg"), "a process name became markup:\n{dom}");
    eprintln!("chromium: dashboard rendered; screenshot at {}", screenshot.display());
}

#[test]
fn agent_exports_exact_counters_api_and_dashboard() {
    let _serial = serial();
    let comm = own_comm();
    let pid = std::process::id().to_string();
    let agent = Agent::start(&["--pid", &pid]);
    // Programs are attached before the agent says it listens.
    let agent_bpf = bpf::owned_by(agent.child.id());
    assert!(!agent_bpf.programs.is_empty(), "the agent holds no BPF program: {agent_bpf:#?}");

    // Endpoints have data from the first tick on.
    let health = agent.get("/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));
    let first_scrape = agent.metrics();
    assert_eq!(value(&first_scrape, "tracer_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));
    assert!(first_scrape.iter().any(|s| s.name == "tracer_backend_info"));

    // A known transfer, sockets still open.
    const SENT: usize = 1_234_567;
    const ANSWERED: usize = 765_431;
    let (port, client, server) = transfer(SENT, ANSWERED);
    let port_label = port.to_string();
    let client_labels =
        [("comm", comm.as_str()), ("role", "client"), ("remote", "127.0.0.1"), ("port", port_label.as_str())];
    let server_labels =
        [("comm", comm.as_str()), ("role", "server"), ("remote", "127.0.0.1"), ("port", port_label.as_str())];
    let open = scrape_until(&agent, "tracer_tcp_received_bytes_total", &server_labels, SENT as f64);
    let open = if value(&open, "tracer_tcp_sent_bytes_total", &server_labels) == Some(ANSWERED as f64) {
        open
    } else {
        scrape_until(&agent, "tracer_tcp_sent_bytes_total", &server_labels, ANSWERED as f64)
    };
    assert_eq!(value(&open, "tracer_tcp_sent_bytes_total", &client_labels), Some(SENT as f64), "client sent");
    assert_eq!(
        value(&open, "tracer_tcp_received_bytes_total", &client_labels),
        Some(ANSWERED as f64),
        "client received"
    );
    assert_eq!(value(&open, "tracer_tcp_sent_bytes_total", &server_labels), Some(ANSWERED as f64), "server sent");
    assert_eq!(value(&open, "tracer_tcp_received_bytes_total", &server_labels), Some(SENT as f64), "server received");
    assert_eq!(value(&open, "tracer_tcp_connections_opened_total", &client_labels), Some(1.0));
    assert!(
        value(&open, "tracer_tcp_sockets", &[("comm", comm.as_str()), ("state", "ESTABLISHED")])
            .is_some_and(|n| n >= 2.0),
        "both ends are ESTABLISHED sockets of this process"
    );
    assert!(open.iter().filter(|s| s.name.starts_with("tracer_tcp_")).all(|s| !s.labels.contains_key("pid")));
    assert_monotonic(&first_scrape, &open);
    eprintln!("open: client sent {SENT} / received {ANSWERED} on port {port}, exact");

    // TCP health: the live client's RTT is observed every tick, its connect
    // once; the histograms are consistent.
    let health = scrape_until(&agent, "tracer_tcp_rtt_seconds_count", &client_labels, 2.0);
    assert_histogram_consistent(&health, "tracer_tcp_rtt_seconds", &client_labels);
    assert_histogram_consistent(&health, "tracer_tcp_connect_duration_seconds", &client_labels);
    assert_eq!(value(&health, "tracer_tcp_connect_duration_seconds_count", &client_labels), Some(1.0), "one connect");
    assert!(
        value(&health, "tracer_tcp_receive_queue_bytes", &[("comm", comm.as_str())]).is_some(),
        "the backlog of this process"
    );
    for name in ["tracer_untracked_sockets_total", "tracer_events_deferred_total"] {
        assert!(value(&health, name, &[]).is_some(), "{name}");
    }
    // A refused connect: counted under its reason, the reasons sum to it.
    let closed_port = free_port();
    let refused = TcpStream::connect(("127.0.0.1", closed_port)).expect_err("nothing listens");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let closed_label = closed_port.to_string();
    let refused_labels =
        [("comm", comm.as_str()), ("role", "client"), ("remote", "127.0.0.1"), ("port", closed_label.as_str())];
    let with_reason = |reason: &'static str| {
        let mut labels = refused_labels.to_vec();
        labels.push(("reason", reason));
        labels
    };
    let failed = scrape_until(&agent, "tracer_tcp_failed_connects_total", &with_reason("refused"), 1.0);
    assert_eq!(value(&failed, "tracer_tcp_failed_connects_total", &with_reason("refused")), Some(1.0), "refused");
    let all_reasons: f64 = failed
        .iter()
        .filter(|s| {
            s.name == "tracer_tcp_failed_connects_total"
                && refused_labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum();
    assert_eq!(all_reasons, 1.0, "the reasons sum to the failed connects");
    eprintln!("health: RTT and connect histograms consistent, a refused connect counted under reason=\"refused\"");

    // Closed: the counts stay (the final counts are folded in). Wait until
    // the agent has seen both ends close (the report counts the closes).
    drop(client);
    drop(server);
    wait_for_closes(&agent, port, 2);
    let closed = agent.metrics();
    assert_eq!(value(&closed, "tracer_tcp_sent_bytes_total", &client_labels), Some(SENT as f64), "after close");
    assert_eq!(value(&closed, "tracer_tcp_received_bytes_total", &client_labels), Some(ANSWERED as f64), "after close");
    assert_eq!(value(&closed, "tracer_tcp_sent_bytes_total", &server_labels), Some(ANSWERED as f64), "after close");
    assert_eq!(value(&closed, "tracer_tcp_received_bytes_total", &server_labels), Some(SENT as f64), "after close");
    assert_monotonic(&open, &closed);
    // A live socket's segments are read at retransmits and at its end.
    assert!(value(&closed, "tracer_tcp_sent_segments_total", &client_labels).is_some_and(|n| n > 0.0), "segments");
    let raw_scrape = agent.get("/metrics");
    assert!(
        raw_scrape.headers.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"),
        "{}",
        raw_scrape.headers
    );
    promtool_check(&raw_scrape.body);

    // The JSON API.
    let report = agent.get("/api/v1/report");
    assert_eq!(report.status, 200);
    let report: serde_json::Value = serde_json::from_str(&report.body).expect("report is JSON");
    assert_eq!(report["schema"], "tracer.report/v1");
    let flow = report["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .find(|f| f["role"] == "client" && f["remote_port"] == port && f["remote_addr"] == "127.0.0.1")
        .unwrap_or_else(|| panic!("no client flow to port {port} in {report}"));
    assert_eq!((flow["tx_bytes"].as_u64(), flow["rx_bytes"].as_u64()), (Some(SENT as u64), Some(ANSWERED as u64)));
    let findings = agent.get("/api/v1/findings");
    assert_eq!(findings.status, 200);
    assert!(serde_json::from_str::<serde_json::Value>(&findings.body).expect("findings JSON").is_array());
    let missing = agent.get("/no/such/thing");
    assert_eq!(missing.status, 404);
    assert!(serde_json::from_str::<serde_json::Value>(&missing.body).expect("404 is JSON")["error"].is_string());
    let dashboard = agent.get("/");
    assert_eq!(dashboard.status, 200);
    assert!(dashboard.body.contains("<canvas"), "no charts in the dashboard");
    assert!(
        !dashboard.body.contains("http://") && !dashboard.body.contains("https://"),
        "the dashboard refers to another origin"
    );

    // A real Prometheus scrapes the agent.
    prometheus_scrapes(
        &agent,
        &format!("tracer_tcp_sent_bytes_total{{port=\"{port}\",role=\"client\",remote=\"127.0.0.1\"}}"),
        SENT as f64,
    );

    // An untrusted process name: quotes, backslash, newline, markup.
    let hostile = "t\"q\\b\nx<svg>";
    set_own_comm(hostile);
    let renamed = own_comm();
    assert_eq!(renamed, hostile, "the kernel kept the name as written");
    const SENT_AGAIN: usize = 4_321;
    let (port2, client2, server2) = transfer(SENT_AGAIN, 17);
    let port2_label = port2.to_string();
    let hostile_labels =
        [("comm", hostile), ("role", "client"), ("remote", "127.0.0.1"), ("port", port2_label.as_str())];
    let scrape = scrape_until(&agent, "tracer_tcp_sent_bytes_total", &hostile_labels, SENT_AGAIN as f64);
    assert_eq!(
        value(&scrape, "tracer_tcp_sent_bytes_total", &hostile_labels),
        Some(SENT_AGAIN as f64),
        "escaped comm label"
    );
    let raw = agent.get("/metrics").body;
    assert!(raw.contains(r#"comm="t\"q\\b\nx<svg>""#), "label value not escaped as the format says");
    promtool_check(&raw);
    let report: serde_json::Value = serde_json::from_str(&agent.get("/api/v1/report").body).expect("report JSON");
    let flow = report["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .find(|f| f["role"] == "client" && f["remote_port"] == port2)
        .unwrap_or_else(|| panic!("no flow to port {port2}"));
    assert_eq!(flow["comm"].as_str(), Some(hostile), "JSON round-trips the name exactly");
    chromium_renders(&agent, "x&lt;svg&gt;");
    drop(client2);
    drop(server2);
    set_own_comm(&comm);

    let after = agent.metrics();
    assert_monotonic(&closed, &after);
    let collect_secs = value(&after, "tracer_collect_duration_seconds", &[]).expect("collect duration");
    eprintln!("last collection took {collect_secs:.3} s");
    // Exiting at all within `terminate`'s bound is the check; how long it
    // took is printed, not asserted (a busy host would make that flaky).
    let (status, took, stderr) = agent.terminate();
    eprintln!("{stderr}");
    assert_eq!(status.code(), Some(0), "SIGTERM must exit 0");
    wait_until("the agent's programs and maps unloaded", SETTLE_TIMEOUT, || agent_bpf.still_loaded().is_empty());
    eprintln!(
        "bpftool: all {} programs and {} maps of the agent are gone",
        agent_bpf.programs.len(),
        agent_bpf.maps.len()
    );
    eprintln!("SIGTERM: exit 0 in {took:?}");
}

/// Waits until the agent's sent/received counters of both ends of a
/// `transfer(sent, answered)` on `port` show it, and checks them exact.
fn assert_transfer_exported(agent: &Agent, port: u16, sent: usize, answered: usize) -> Vec<PromSample> {
    let comm = own_comm();
    let port_label = port.to_string();
    let client = [("comm", comm.as_str()), ("role", "client"), ("remote", "127.0.0.1"), ("port", port_label.as_str())];
    let server = [("comm", comm.as_str()), ("role", "server"), ("remote", "127.0.0.1"), ("port", port_label.as_str())];
    let expected = [
        ("tracer_tcp_sent_bytes_total", client, sent),
        ("tracer_tcp_received_bytes_total", client, answered),
        ("tracer_tcp_sent_bytes_total", server, answered),
        ("tracer_tcp_received_bytes_total", server, sent),
    ];
    let mut samples = Vec::new();
    for (name, labels, count) in expected {
        samples = scrape_until(agent, name, &labels, count as f64);
    }
    for (name, labels, count) in expected {
        assert_eq!(value(&samples, name, &labels), Some(count as f64), "{name}{labels:?}");
    }
    samples
}

/// `kill -9` of the agent: the kernel releases every program and map it
/// held (checked by id with bpftool, so other tracers on the host do not
/// count), and an agent started again attaches and counts a transfer
/// exactly, while a `tracer trace` attached at the same time counts the
/// same transfer exactly too.
#[test]
fn a_killed_agent_leaves_nothing_loaded_and_a_restarted_one_counts_exactly_beside_a_trace() {
    let _serial = serial();
    let pid = std::process::id();
    let pid_arg = pid.to_string();
    let agent = Agent::start(&["--pid", &pid_arg]);
    let held = bpf::owned_by(agent.child.id());
    let programs: Vec<&str> = held.programs.values().map(String::as_str).collect();
    let maps: Vec<&str> = held.maps.values().map(String::as_str).collect();
    for program in ["inet_sock_set_state", "tcp_destroy_sock"] {
        assert!(programs.contains(&program), "the agent holds no {program} program: {held:#?}");
    }
    for map in ["BYTES", "RECORDS", "CLOSED", "OVERFLOW", "STATS"] {
        assert!(maps.contains(&map), "the agent holds no {map} map: {held:#?}");
    }
    // Counting before the crash, so the kill lands on a working agent.
    let (port, client, server) = transfer(10_007, 20_011);
    assert_transfer_exported(&agent, port, 10_007, 20_011);
    drop((client, server));

    let mut killed = agent;
    send_signal(&killed.child, libc::SIGKILL);
    let status = wait_bounded(&mut killed.child, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the agent survived SIGKILL; stderr:\n{}", killed.stderr()));
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL), "{status:?}");
    wait_until("the killed agent's programs and maps unloaded", SETTLE_TIMEOUT, || held.still_loaded().is_empty());
    eprintln!(
        "kill -9: all {} programs and {} maps of the agent unloaded ({programs:?})",
        held.programs.len(),
        held.maps.len()
    );

    // Restarted, with a trace beside it; both count the same transfer.
    let agent = Agent::start(&["--pid", &pid_arg]);
    let trace = Tracer::start(&["--pid", &pid_arg]);
    const SENT: usize = 2_345_679;
    const ANSWERED: usize = 345_681;
    let (port, client, server) = transfer(SENT, ANSWERED);
    let open = assert_transfer_exported(&agent, port, SENT, ANSWERED);
    drop((client, server));
    wait_for_closes(&agent, port, 2);
    let closed = assert_transfer_exported(&agent, port, SENT, ANSWERED);
    assert_monotonic(&open, &closed);
    let report = trace.stop();
    let client = report.flow(pid, "client", "127.0.0.1", port);
    assert_eq!(
        (client.tx_bytes, client.rx_bytes, client.connections_opened, client.connections_closed),
        (SENT as u64, ANSWERED as u64, 1, 1),
        "the trace's client flow: {client:#?}"
    );
    let server = report.flow(pid, "server", "127.0.0.1", port);
    assert_eq!(
        (server.tx_bytes, server.rx_bytes, server.connections_opened, server.connections_closed),
        (ANSWERED as u64, SENT as u64, 1, 1),
        "the trace's server flow: {server:#?}"
    );
    let (status, _, stderr) = agent.terminate();
    assert_eq!(status.code(), Some(0), "{stderr}");
    eprintln!("restart: the agent and a trace beside it both counted {SENT}/{ANSWERED} bytes exactly");
}

/// The bound on a scrape while hostile peers hold connections: half of
/// Prometheus' default scrape timeout (10 s), and half of the agent's header
/// timeout (also 10 s), which is how long a scrape waits if it needs a slot
/// that only that timeout frees (9.5 s measured before connections were
/// evicted at capacity). A bound, not a timing: a scrape of a flooded agent
/// takes well under a second (figures printed by the test).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Raises this process's soft limit on open files to the hard one.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the rlimit struct, which
    // lives across both calls.
    let rc = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            -1
        } else {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit)
        }
    };
    assert_eq!(rc, 0, "cannot raise RLIMIT_NOFILE: {}", std::io::Error::last_os_error());
    limit.rlim_cur
}

/// `VmRSS` of a process, in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"))
}

/// `GET /metrics` as Prometheus does it, all of it (connect, request, the
/// whole response) within [`SCRAPE_TIMEOUT`]; returns the time it took.
/// Panics if the scrape fails or takes longer.
fn scrape_within_timeout(addr: SocketAddr, held: &str) -> Duration {
    let started = Instant::now();
    let deadline = started + SCRAPE_TIMEOUT;
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let fail = |what: String| -> ! {
        panic!("a scrape did not complete within {SCRAPE_TIMEOUT:?} ({what}; {:?}) while {held}", started.elapsed())
    };
    let mut stream = TcpStream::connect_timeout(&addr, left()).unwrap_or_else(|e| fail(format!("connect: {e}")));
    stream.set_write_timeout(Some(left())).expect("write timeout");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .unwrap_or_else(|e| fail(format!("send: {e}")));
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        stream.set_read_timeout(Some(left())).expect("read timeout");
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => fail(format!("read after {} bytes: {e}", raw.len())),
        }
        if Instant::now() >= deadline {
            fail(format!("{} bytes so far", raw.len()));
        }
    }
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "scrape answered {:?} while {held}", text.lines().next());
    assert!(text.contains("tracer_build_info"), "scrape without the metrics while {held}: {text}");
    started.elapsed()
}

/// What a hostile connection got back: the status line, or how it ended.
fn outcome(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) if raw.is_empty() => "closed".to_owned(),
        Ok(_) => String::from_utf8_lossy(&raw).lines().next().unwrap_or_default().to_owned(),
        Err(e) => format!("{:?}", e.kind()),
    }
}

/// 1,000 idle connections, slowloris clients trickling headers, a 1 MB
/// header, pipelined garbage and clients that pipeline requests and never
/// read, all held while well-behaved scrapes come: each scrape succeeds
/// within [`SCRAPE_TIMEOUT`] (the server makes room by closing the oldest
/// connections that have no request being handled), the agent's
/// memory stays bounded, and it still exits cleanly on SIGTERM.
#[test]
fn hostile_http_peers_cannot_keep_a_scrape_out() {
    let _serial = serial();
    const IDLE: usize = 1_000;
    const SLOWLORIS: usize = 50;
    const NEVER_READ: usize = 20;
    const SCRAPES: usize = 5;
    raise_fd_limit();
    let pid = std::process::id().to_string();
    let agent = Agent::start(&["--pid", &pid]);
    let addr = agent.addr;
    let agent_pid = agent.child.id();
    let quiet = scrape_within_timeout(addr, "nothing else is connected");
    let rss_before = vm_rss_kib(agent_pid);

    let idle: Vec<TcpStream> =
        (0..IDLE).map(|i| TcpStream::connect(addr).unwrap_or_else(|e| panic!("idle connection {i}: {e}"))).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slowloris = {
        let stop = Arc::clone(&stop);
        let mut clients: Vec<TcpStream> = (0..SLOWLORIS)
            .map(|i| {
                let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("slowloris {i}: {e}"));
                stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").expect("slowloris request line");
                stream
            })
            .collect();
        thread::spawn(move || {
            // One more header line on each every 200 ms, for as long as the
            // test runs (bounded: 10 minutes).
            for line in 0..3_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                for client in &mut clients {
                    let _ = write!(client, "X-Slow-{line}: a\r\n");
                }
                thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let big_header = thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).expect("connect (1 MB header)");
        let mut request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        request.resize(request.len() + (1 << 20), b'a');
        request.extend_from_slice(b"\r\n\r\n");
        stream.set_write_timeout(Some(Duration::from_secs(30))).expect("write timeout");
        let sent =
            stream.write_all(&request).map_or_else(|e| format!("write ended: {:?}", e.kind()), |()| "sent".into());
        format!("{sent}; {}", outcome(&mut stream))
    });
    let garbage = thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).expect("connect (garbage)");
        let junk = b"\x16\x03\x01 NOT HTTP \x00\xff\r\n\r\n".repeat(1_000);
        stream.set_write_timeout(Some(Duration::from_secs(30))).expect("write timeout");
        let sent = stream.write_all(&junk).map_or_else(|e| format!("write ended: {:?}", e.kind()), |()| "sent".into());
        format!("{sent}; {}", outcome(&mut stream))
    });
    // Pipelined requests, never a byte read: what fits in the socket
    // buffers (non-blocking writes), then nothing.
    let never_read: Vec<TcpStream> = (0..NEVER_READ)
        .map(|i| {
            let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("never-reader {i}: {e}"));
            stream.set_nonblocking(true).expect("non-blocking");
            let requests = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2_000);
            let mut written = 0;
            while written < requests.len() {
                match stream.write(&requests[written..]) {
                    Ok(n) => written += n,
                    Err(_) => break,
                }
            }
            stream
        })
        .collect();

    let held = format!(
        "{IDLE} idle connections, {SLOWLORIS} slowloris clients, a 1 MB header, pipelined garbage and \
         {NEVER_READ} clients that never read are held"
    );
    let latencies: Vec<Duration> = (0..SCRAPES).map(|_| scrape_within_timeout(addr, &held)).collect();
    let health = agent.get("/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok"), "/healthz while {held}");
    let rss_flooded = vm_rss_kib(agent_pid);
    let big_header = big_header.join().expect("1 MB header thread");
    let garbage = garbage.join().expect("garbage thread");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    slowloris.join().expect("slowloris thread");
    // Bounded memory: the connections beyond capacity are closed, not
    // buffered (a generous bound; the figures are printed).
    assert!(
        rss_flooded < rss_before + 64 * 1024,
        "the agent grew from {rss_before} KiB to {rss_flooded} KiB under the flood"
    );
    let (status, _, stderr) = agent.terminate();
    assert_eq!(status.code(), Some(0), "SIGTERM with the flood held: {stderr}");
    drop((idle, never_read));
    let max = latencies.iter().max().copied().unwrap_or_default();
    eprintln!(
        "hostile peers: scrape {quiet:?} alone; with {held}: {latencies:?} (max {max:?}); 1 MB header: {big_header}; \
         garbage: {garbage}; agent VmRSS {rss_before} KiB before, {rss_flooded} KiB under the flood"
    );
}

#[test]
fn agent_reports_a_taken_port_in_one_line() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let mut child = Command::new(tracer_bin())
        .args(["agent", "--listen", &addr.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tracer");
    let status = wait_bounded(&mut child, Duration::from_secs(30));
    if status.is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot listen on") && stderr.contains(&addr.to_string()), "{stderr}");
}

/// Environment variable that turns this test binary into a short-lived
/// client for [`cardinality_stays_bounded`]: `NAME PORT BYTES`.
const HELPER_ENV: &str = "TRACER_AGENT_TEST_HELPER";

#[test]
#[ignore = "helper process of cardinality_stays_bounded"]
fn helper_short_lived_client() {
    let Ok(spec) = std::env::var(HELPER_ENV) else { return };
    let mut parts = spec.split(' ');
    let (Some(name), Some(port), Some(bytes)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("bad helper spec {spec:?}")
    };
    // The tracer names an exited process after the thread that used the
    // socket, a live one after its leader: name both.
    set_own_comm(name);
    std::fs::write("/proc/thread-self/comm", name).expect("name this thread");
    let mut stream = TcpStream::connect(("127.0.0.1", port.parse::<u16>().expect("port"))).expect("connect");
    stream.write_all(&vec![b'h'; bytes.parse().expect("bytes")]).expect("send");
}

/// 2,000 connections from distinct ephemeral ports and 50 short-lived
/// processes with distinct names: every flow metric stays within top-n
/// named series plus the overflow ones, and nothing is lost on the way.
#[test]
fn cardinality_stays_bounded() {
    let _serial = serial();
    const TOP_N: usize = 10;
    const CONNECTIONS: usize = 2_000;
    const PROCESSES: usize = 50;
    const PER_CONNECTION: usize = 10;
    const PER_PROCESS: usize = 1_000;

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let expected_connections = CONNECTIONS + PROCESSES;
    let server = thread::spawn(move || {
        let mut received = 0usize;
        for _ in 0..expected_connections {
            let (mut socket, _) = listener.accept().expect("accept");
            socket.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            let mut sink = Vec::new();
            received += socket.read_to_end(&mut sink).expect("read to EOF");
        }
        received
    });

    let port_label = port.to_string();
    let agent = Agent::start(&["--port", &port_label, "--metrics-top-n", &TOP_N.to_string()]);
    for _ in 0..CONNECTIONS {
        let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        client.write_all(&[b'c'; PER_CONNECTION]).expect("send");
    }
    let exe = std::env::current_exe().expect("test binary");
    for i in 0..PROCESSES {
        let status = Command::new(&exe)
            .args(["--exact", "helper_short_lived_client", "--ignored", "--test-threads=1", "--quiet"])
            .env(HELPER_ENV, format!("shortlived-{i:02} {port} {PER_PROCESS}"))
            .stdout(Stdio::null())
            .status()
            .expect("run helper");
        assert!(status.success(), "helper {i} failed");
    }
    let received = server.join().expect("server");
    let total = CONNECTIONS * PER_CONNECTION + PROCESSES * PER_PROCESS;
    assert_eq!(received, total);

    let sum = |samples: &[PromSample], name: &str| -> f64 {
        samples.iter().filter(|s| s.name == name).map(|s| s.value).sum()
    };
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let samples = loop {
        let samples = agent.metrics();
        let done = sum(&samples, "tracer_tcp_sent_bytes_total") >= total as f64
            && sum(&samples, "tracer_tcp_received_bytes_total") >= total as f64;
        if done || Instant::now() >= deadline {
            break samples;
        }
        thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(sum(&samples, "tracer_tcp_sent_bytes_total"), total as f64, "sent bytes across all series");
    assert_eq!(sum(&samples, "tracer_tcp_received_bytes_total"), total as f64, "received bytes across all series");
    let mut counts = BTreeMap::new();
    // Flows are label sets of comm, role, remote and port: `reason` and
    // `le` multiply a flow's series, never the number of flows.
    for name in [
        "tracer_tcp_sent_bytes_total",
        "tracer_tcp_received_bytes_total",
        "tracer_tcp_retransmits_total",
        "tracer_tcp_sent_segments_total",
        "tracer_tcp_connections_opened_total",
        "tracer_tcp_failed_connects_total",
        "tracer_tcp_resets_total",
        "tracer_tcp_rtt_seconds_bucket",
        "tracer_tcp_connect_duration_seconds_bucket",
        "tracer_tcp_connect_duration_seconds_count",
    ] {
        let series: Vec<&PromSample> = samples.iter().filter(|s| s.name == name).collect();
        let flows: BTreeSet<Vec<(&String, &String)>> =
            series.iter().map(|s| s.labels.iter().filter(|(k, _)| *k != "reason" && *k != "le").collect()).collect();
        assert!(flows.len() <= TOP_N, "{name} has {} flows: {flows:?}", flows.len());
        assert!(series.iter().all(|s| s.labels.get("port").is_some_and(|p| p == &port_label || p == "other")));
        counts.insert(name, flows.len());
    }
    let overflow = value(&samples, "tracer_tcp_sent_bytes_total", &[("comm", "other"), ("role", "client")]);
    assert!(overflow.is_some_and(|v| v > 0.0), "the processes past the top-n are summed into comm=\"other\"");
    let all_series = samples.iter().filter(|s| s.name.starts_with("tracer_")).count();
    eprintln!(
        "cardinality: {CONNECTIONS} connections + {PROCESSES} processes -> {counts:?} flow series per metric, {all_series} series in all (top-n {TOP_N})"
    );
    promtool_check(&agent.get("/metrics").body);
    let (status, _, _) = agent.terminate();
    assert_eq!(status.code(), Some(0));
}
