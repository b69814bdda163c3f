//! `xtask guest-check`: the tracer's integration check as it runs inside a
//! VM guest (`/init` starts it; see vm/initramfs.rs). It asks `tracer
//! doctor` which backends this kernel supports, then for each of them (and
//! for `auto`) traces a loopback transfer of known size that this process
//! makes itself, and checks the report: exact bytes both ways, the
//! connections opened, a CLOSE_WAIT socket, the backend named, and TCP
//! health where the doctor says the kernel provides it: a refused connect
//! counted by reason and an RTT for the live socket.
//! The guest has no Python or curl; all traffic comes from here.

use std::{
    io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

/// Backends from cheapest to dearest: what `auto` must pick the first
/// usable one of.
const COST_ORDER: &[&str] = &["tracepoint", "fentry", "kprobe"];

/// Bytes the client sends and the server answers: different sizes, so a
/// swapped direction shows; the client's is larger than any socket buffer,
/// so it takes many sendmsg/recvmsg calls.
const CLIENT_BYTES: usize = 1_000_000;
const SERVER_BYTES: usize = 54_321;

/// Loading BTF and attaching is slow under emulation with a debug build.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(90);
/// Every socket read or write, and every accept.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(15);
/// From SIGINT to the report on stdout.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);
/// Lets the tracer drain the events of the CLOSE_WAIT socket and take a
/// sample before it is stopped.
const SETTLE: Duration = Duration::from_millis(1500);

/// `expect`: the backends this kernel is known to support (vm/assets.rs
/// says which); empty to trust the doctor. A backend expected but found
/// unusable is a failure: it means the tracer's programs do not load where
/// they should, which "test what the doctor offers" alone would hide.
pub fn guest_check(tracer: &Path, expect: &[String]) -> Result<()> {
    // `--expect ""` (no TRACER_EXPECT on the command line) means no expectation.
    let expect: Vec<String> = expect.iter().filter(|e| !e.is_empty()).cloned().collect();
    println!("guest-check: started {:.1} s after boot; expected backends: {expect:?}", uptime());
    let doctor_started = Instant::now();
    let doctor = doctor(tracer)?;
    let usable: Vec<&str> = doctor["backends"]
        .as_array()
        .context("doctor JSON has no backends list")?
        .iter()
        .filter(|b| b["usable"] == true)
        .filter_map(|b| b["backend"].as_str())
        .collect();
    let auto = doctor["auto_backend"].as_str();

    let mut results: Vec<(String, Result<String>)> = Vec::new();
    let cheapest = COST_ORDER.iter().copied().find(|b| usable.contains(b));
    let doctor_check = if usable.is_empty() {
        let reasons: Vec<String> = doctor["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| format!("{}: {}", b["backend"].as_str().unwrap_or("?"), b["reason"].as_str().unwrap_or("?")))
            .collect();
        Err(anyhow::anyhow!("no backend usable on this kernel ({})", reasons.join("; ")))
    } else if let Some(problem) = expectation_problem(&doctor, &usable, &expect) {
        Err(anyhow::anyhow!(problem))
    } else if auto != cheapest {
        Err(anyhow::anyhow!("auto_backend is {auto:?}, but the cheapest usable backend is {cheapest:?}"))
    } else if doctor["btf"] != true {
        Err(anyhow::anyhow!("doctor reports no BTF, yet the Debian cloud kernels have it"))
    } else {
        Ok(format!(
            "kernel {}, usable: {}, auto: {} ({:.1} s)",
            doctor["kernel"],
            usable.join(", "),
            auto.unwrap_or("-"),
            doctor_started.elapsed().as_secs_f64()
        ))
    };
    report_line("doctor", &doctor_check);
    results.push(("doctor".into(), doctor_check));

    let health = doctor["tcp_health"]["provides"].clone();
    for backend in &usable {
        let outcome = traced_transfer(tracer, Some(backend), backend, &health);
        report_line(backend, &outcome);
        results.push(((*backend).to_owned(), outcome));
    }
    if let Some(auto) = auto {
        let outcome = traced_transfer(tracer, None, auto, &health);
        report_line("auto", &outcome);
        results.push(("auto".into(), outcome));
    }

    let failed: Vec<&str> = results.iter().filter(|(_, r)| r.is_err()).map(|(name, _)| name.as_str()).collect();
    println!(
        "guest-check: {} passed, {} failed ({:.1} s after boot)",
        results.len() - failed.len(),
        failed.len(),
        uptime()
    );
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

/// How the doctor's verdicts differ from what this kernel is known to
/// support, if they do.
fn expectation_problem(doctor: &Value, usable: &[&str], expect: &[String]) -> Option<String> {
    if expect.is_empty() {
        return None;
    }
    let reason = |backend: &str| {
        doctor["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["backend"] == backend)
            .and_then(|b| b["reason"].as_str())
            .unwrap_or("no reason given")
            .to_owned()
    };
    let problems: Vec<String> = COST_ORDER
        .iter()
        .filter_map(|&backend| match (expect.iter().any(|e| e == backend), usable.contains(&backend)) {
            (true, false) => {
                Some(format!("{backend} should work on this kernel, but the doctor says: {}", reason(backend)))
            }
            (false, true) => Some(format!("{backend} cannot work on this kernel, but the doctor calls it usable")),
            _ => None,
        })
        .collect();
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Seconds since the guest booted.
fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|text| text.split_whitespace().next().and_then(|s| s.parse().ok()))
        .unwrap_or(0.0)
}

fn report_line(what: &str, outcome: &Result<String>) {
    match outcome {
        Ok(detail) => println!("guest-check: PASS {what}: {detail}"),
        Err(err) => println!("guest-check: FAIL {what}: {err:#}"),
    }
}

/// Runs `tracer doctor --format json`, prints it, and parses it.
fn doctor(tracer: &Path) -> Result<Value> {
    let mut cmd = Command::new(tracer);
    cmd.args(["doctor", "--format", "json"]);
    // The doctor loads and attaches every backend and the TCP health pass
    // for real: under emulation (TCG) the verifier alone takes a minute.
    let out = output_within(&mut cmd, 2 * ATTACH_TIMEOUT)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("guest-check: tracer doctor --format json:\n{}", stdout.trim_end());
    if !out.status.success() {
        bail!("tracer doctor failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_str(&stdout).context("tracer doctor printed no valid JSON")
}

/// Runs `cmd` to completion, killing it after `timeout`.
fn output_within(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());
    let status = wait_within(&mut child, timeout)?;
    let Some(status) = status else {
        bail!("{cmd:?} did not finish within {timeout:?}; killed");
    };
    Ok(Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() })
}

fn read_all<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut data = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut data);
        }
        data
    })
}

/// Waits for `child` at most `timeout`; past it, kills it (by PID) and
/// returns `None`.
fn wait_within(child: &mut Child, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A running `tracer trace`; killed on drop if still running, so that an
/// early return never leaves programs attached for the next case.
struct TraceRun {
    child: Child,
    stderr_lines: Receiver<String>,
    stdout: Option<JoinHandle<Vec<u8>>>,
}

impl Drop for TraceRun {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl TraceRun {
    fn start(tracer: &Path, backend: Option<&str>, port: u16) -> Result<Self> {
        let mut cmd = Command::new(tracer);
        cmd.args(["trace", "--format", "json", "--duration", "30s", "--interval", "1s", "--port", &port.to_string()]);
        if let Some(backend) = backend {
            cmd.args(["--backend", backend]);
        }
        println!("guest-check: $ {}", format!("{cmd:?}").replace('"', ""));
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", tracer.display()))?;
        let stdout = read_all(child.stdout.take());
        let stderr = child.stderr.take().context("tracer has no stderr")?;
        let (line_tx, stderr_lines) = mpsc::channel();
        // Echoes the tracer's stderr and hands each line to the waiter.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("  tracer| {line}");
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, stderr_lines, stdout: Some(stdout) })
    }

    /// Waits for the "attached" line; fails with what the tracer said if
    /// it exits or stays silent.
    fn wait_attached(&mut self) -> Result<()> {
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        let mut said = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) if line.contains("tracer: attached") => return Ok(()),
                Ok(line) => said.push(line),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = wait_within(&mut self.child, Duration::from_secs(5))?;
                    bail!("tracer exited before attaching ({status:?}): {}", said.join(" | "));
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!("tracer did not attach within {ATTACH_TIMEOUT:?}: {}", said.join(" | "));
                }
            }
        }
    }

    /// SIGINT (the documented early stop, which still reports), then the
    /// report from stdout.
    fn stop_and_report(mut self) -> Result<Value> {
        let pid = libc::pid_t::try_from(self.child.id()).context("tracer PID out of range")?;
        // SAFETY: kill(2) with the PID of our own child, which has not been
        // reaped yet (we hold its Child), so the PID cannot be reused.
        if unsafe { libc::kill(pid, libc::SIGINT) } != 0 {
            bail!("cannot send SIGINT to tracer (pid {pid}): {}", std::io::Error::last_os_error());
        }
        let status = wait_within(&mut self.child, REPORT_TIMEOUT)?
            .with_context(|| format!("tracer did not exit within {REPORT_TIMEOUT:?} of SIGINT; killed"))?;
        let stdout = self.stdout.take().context("stdout already read")?.join().unwrap_or_default();
        if !status.success() {
            bail!("tracer exited with {status} after SIGINT");
        }
        serde_json::from_slice(&stdout).with_context(|| {
            format!("tracer's report is not JSON: {}", String::from_utf8_lossy(&stdout[..stdout.len().min(300)]))
        })
    }
}

/// One traced transfer: attach with `backend` (`None`: auto), move the
/// known bytes, leave a CLOSE_WAIT socket, stop, and check the report.
fn traced_transfer(tracer: &Path, backend: Option<&str>, expected_backend: &str, health: &Value) -> Result<String> {
    let started = Instant::now();
    // The listener exists before the tracer, as a real server's would.
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback listener")?;
    let server_addr = listener.local_addr().context("listener address")?;
    let port = server_addr.port();
    let mut run = TraceRun::start(tracer, backend, port)?;
    run.wait_attached()?;
    let close_wait_socket = transfer(&listener, server_addr)?;
    // Nothing listens on the port any more: a connect is refused (the
    // CLOSE_WAIT socket stays).
    drop(listener);
    match TcpStream::connect_timeout(&server_addr, SOCKET_TIMEOUT) {
        Err(err) if err.kind() == ErrorKind::ConnectionRefused => {}
        other => bail!("a connect to the closed port {port} was not refused: {other:?}"),
    }
    thread::sleep(SETTLE);
    let report = run.stop_and_report()?;
    drop(close_wait_socket);

    let mut problems = check_report(&report, expected_backend, port, std::process::id());
    problems.extend(check_health(&report, health, port, std::process::id()));
    if !problems.is_empty() {
        bail!("{} (report: {})", problems.join("; "), brief(&report, port));
    }
    Ok(format!(
        "port {port}: client tx {CLIENT_BYTES} rx {SERVER_BYTES}, server tx {SERVER_BYTES} rx {CLIENT_BYTES}, \
         2+2 connections, CLOSE_WAIT listed, refused connect and RTT per the doctor ({:.1} s)",
        started.elapsed().as_secs_f64()
    ))
}

/// The byte pattern of a transfer: position-dependent, so a lost or
/// repeated chunk shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i % 251) as u8).wrapping_add(seed)).collect()
}

/// The client sends CLIENT_BYTES and half-closes, the server checks them
/// and answers SERVER_BYTES; then a second client connects and closes at
/// once while the server keeps its end, which is left in CLOSE_WAIT and
/// returned (the caller keeps it open until the tracer has reported).
fn transfer(listener: &TcpListener, server_addr: SocketAddr) -> Result<TcpStream> {
    thread::scope(|scope| {
        let server = scope.spawn(|| -> Result<TcpStream> {
            let mut conn = accept_within(listener)?;
            let expected = pattern(CLIENT_BYTES, 7);
            let mut received = Vec::with_capacity(CLIENT_BYTES);
            let mut buf = vec![0u8; 64 * 1024];
            // Ends at the client's FIN; a peer sending too much ends it too.
            while received.len() <= CLIENT_BYTES {
                let n = conn.read(&mut buf).context("server reading")?;
                if n == 0 {
                    break;
                }
                received.extend_from_slice(&buf[..n]);
            }
            if received != expected {
                bail!("server received {} bytes, not the {CLIENT_BYTES} sent (or they differ)", received.len());
            }
            conn.write_all(&pattern(SERVER_BYTES, 11)).context("server writing")?;
            drop(conn);

            let mut idle = accept_within(listener)?;
            // EOF here means the client's FIN arrived: this end is in CLOSE_WAIT.
            let n = idle.read(&mut buf).context("server waiting for the idle client's FIN")?;
            if n != 0 {
                bail!("the idle client sent {n} bytes");
            }
            Ok(idle)
        });

        let client = || -> Result<()> {
            let mut conn = connect(server_addr)?;
            conn.write_all(&pattern(CLIENT_BYTES, 7)).context("client writing")?;
            conn.shutdown(Shutdown::Write).context("client half-closing")?;
            let mut answer = Vec::new();
            conn.read_to_end(&mut answer).context("client reading the answer")?;
            if answer != pattern(SERVER_BYTES, 11) {
                bail!("client received {} bytes, not the {SERVER_BYTES} answered (or they differ)", answer.len());
            }
            drop(conn);
            drop(connect(server_addr)?);
            Ok(())
        };
        let client_result = client();
        let server_result = server.join().map_err(|_| anyhow::anyhow!("server thread panicked"))?;
        client_result?;
        server_result
    })
}

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let conn = TcpStream::connect_timeout(&addr, SOCKET_TIMEOUT).with_context(|| format!("connecting to {addr}"))?;
    conn.set_read_timeout(Some(SOCKET_TIMEOUT)).context("socket timeout")?;
    conn.set_write_timeout(Some(SOCKET_TIMEOUT)).context("socket timeout")?;
    Ok(conn)
}

/// accept(2), giving up after SOCKET_TIMEOUT so that a client that never
/// came cannot hang the check.
fn accept_within(listener: &TcpListener) -> Result<TcpStream> {
    listener.set_nonblocking(true).context("listener non-blocking")?;
    let deadline = Instant::now() + SOCKET_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                conn.set_nonblocking(false).context("accepted socket blocking")?;
                conn.set_read_timeout(Some(SOCKET_TIMEOUT)).context("socket timeout")?;
                conn.set_write_timeout(Some(SOCKET_TIMEOUT)).context("socket timeout")?;
                return Ok(conn);
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(err) => return Err(err).context("accepting a loopback connection"),
        }
    }
}

/// Sums the flows of `pid` in `role` whose service port is `port`: both
/// connections of a side fold into one flow, but sum in case a tracer
/// version splits them.
fn flow_totals(report: &Value, pid: u32, role: &str, port: u16) -> (u64, u64, u64, usize) {
    let port_field = if role == "client" { "remote_port" } else { "local_port" };
    report["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["pid"] == pid && f["role"] == role && f[port_field] == port)
        .fold((0, 0, 0, 0), |(tx, rx, opened, n), f| {
            (
                tx + f["tx_bytes"].as_u64().unwrap_or(0),
                rx + f["rx_bytes"].as_u64().unwrap_or(0),
                opened + f["connections_opened"].as_u64().unwrap_or(0),
                n + 1,
            )
        })
}

/// Every way the report differs from the transfer this process made.
fn check_report(report: &Value, expected_backend: &str, port: u16, pid: u32) -> Vec<String> {
    let mut problems = Vec::new();
    if report["backend"] != expected_backend {
        problems.push(format!("backend is {}, expected \"{expected_backend}\"", report["backend"]));
    }
    for (role, tx_expected, rx_expected) in
        [("client", CLIENT_BYTES, SERVER_BYTES), ("server", SERVER_BYTES, CLIENT_BYTES)]
    {
        let (tx, rx, opened, flows) = flow_totals(report, pid, role, port);
        if flows == 0 {
            problems.push(format!("no {role} flow of pid {pid} on port {port}"));
            continue;
        }
        if tx != tx_expected as u64 {
            problems.push(format!("{role} tx_bytes {tx} != {tx_expected}"));
        }
        if rx != rx_expected as u64 {
            problems.push(format!("{role} rx_bytes {rx} != {rx_expected}"));
        }
        if opened != 2 {
            problems.push(format!("{role} connections_opened {opened} != 2"));
        }
    }
    let close_wait_listed =
        report["close_wait"].as_array().into_iter().flatten().any(|s| s["local_port"] == port && s["pid"] == pid);
    if !close_wait_listed {
        problems.push(format!("no CLOSE_WAIT socket of pid {pid} on local port {port} in close_wait"));
    }
    let close_wait_counted = report["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["pid"] == pid)
        .any(|p| p["sockets"]["CLOSE_WAIT"].as_u64().unwrap_or(0) >= 1);
    if !close_wait_counted {
        problems.push(format!("process {pid} has no CLOSE_WAIT in its socket counts"));
    }
    problems
}

/// TCP health where the kernel provides it (`doctor`'s `tcp_health`): the
/// refused connect counted by reason, and an RTT for the server flow,
/// whose CLOSE_WAIT socket was live at the last sample.
fn check_health(report: &Value, health: &Value, port: u16, pid: u32) -> Vec<String> {
    let mut problems = Vec::new();
    let flow = |role: &str| {
        let port_field = if role == "client" { "remote_port" } else { "local_port" };
        report["flows"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["pid"] == pid && f["role"] == role && f[port_field] == port)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let client = flow("client");
    if client["failed_connects"] != 1 {
        problems.push(format!("client failed_connects {} != 1", client["failed_connects"]));
    }
    if health["failure_reasons"] == true && client["failed_connects_by_reason"]["refused"] != 1 {
        problems.push(format!("refused connects {} != 1", client["failed_connects_by_reason"]));
    }
    let rtt = &flow("server")["rtt_us"]["max"];
    match (health["rtt"] == true, rtt.as_f64()) {
        (true, Some(us)) if us > 0.0 && us < 1_000_000.0 => {}
        (true, _) => problems.push(format!("server flow RTT {rtt} where the kernel provides one")),
        (false, Some(_)) => problems.push(format!("server flow RTT {rtt} where the doctor says the kernel gives none")),
        (false, None) => {}
    }
    problems
}

/// The parts of a report that matter here, for a failure message.
fn brief(report: &Value, port: u16) -> String {
    let flows: Vec<String> = report["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["local_port"] == port || f["remote_port"] == port)
        .map(|f| {
            format!(
                "{} pid {} tx {} rx {} opened {}",
                f["role"], f["pid"], f["tx_bytes"], f["rx_bytes"], f["connections_opened"]
            )
        })
        .collect();
    format!("backend {}, flows [{}], close_wait {}", report["backend"], flows.join(", "), report["close_wait"])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good_report(pid: u32, port: u16) -> Value {
        json!({
            "backend": "kprobe",
            "flows": [
                { "pid": pid, "role": "client", "local_port": 0, "remote_port": port, "tx_bytes": CLIENT_BYTES,
                  "rx_bytes": SERVER_BYTES, "connections_opened": 2 },
                { "pid": pid, "role": "server", "local_port": port, "remote_port": 0, "tx_bytes": SERVER_BYTES,
                  "rx_bytes": CLIENT_BYTES, "connections_opened": 2 },
            ],
            "processes": [{ "pid": pid, "sockets": { "CLOSE_WAIT": 1, "ESTABLISHED": 0 } }],
            "close_wait": [{ "pid": pid, "local_port": port, "remote_port": 40000 }],
        })
    }

    #[test]
    fn an_exact_report_passes() {
        assert_eq!(check_report(&good_report(42, 5000), "kprobe", 5000, 42), Vec::<String>::new());
    }

    #[test]
    fn one_byte_off_or_a_wrong_backend_fails() {
        let mut report = good_report(42, 5000);
        report["flows"][1]["rx_bytes"] = json!(CLIENT_BYTES - 1);
        report["backend"] = json!("fentry");
        let problems = check_report(&report, "kprobe", 5000, 42);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("server rx_bytes 999999")));
    }

    #[test]
    fn a_missing_close_wait_fails() {
        let mut report = good_report(42, 5000);
        report["close_wait"] = json!([]);
        report["processes"][0]["sockets"] = json!({});
        assert_eq!(check_report(&report, "kprobe", 5000, 42).len(), 2);
    }

    #[test]
    fn the_doctor_must_offer_exactly_what_the_kernel_supports() {
        let doctor = json!({ "backends": [
            { "backend": "tracepoint", "usable": false, "reason": "tracepoints are missing" },
            { "backend": "fentry", "usable": false, "reason": "refused by the verifier" },
            { "backend": "kprobe", "usable": true, "reason": null },
        ]});
        let expect = ["fentry".to_owned(), "kprobe".to_owned()];
        let problem = expectation_problem(&doctor, &["kprobe"], &expect).expect("fentry is missing");
        assert!(problem.contains("fentry should work") && problem.contains("refused by the verifier"), "{problem}");
        assert_eq!(expectation_problem(&doctor, &["fentry", "kprobe"], &expect), None);
        let problem = expectation_problem(&doctor, &["tracepoint", "fentry", "kprobe"], &expect).expect("too many");
        assert!(problem.contains("tracepoint cannot work"), "{problem}");
        assert_eq!(expectation_problem(&doctor, &["kprobe"], &[]), None);
    }

    #[test]
    fn patterns_differ_by_seed_and_position() {
        let a = pattern(600, 7);
        assert_ne!(a, pattern(600, 11));
        assert_ne!(a[..251], a[1..252]);
    }
}
