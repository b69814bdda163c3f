//! The tracer under test, as a child process of the bench: starting it in
//! agent mode (or, when this build's agent cannot run, in `trace` mode),
//! waiting until it is attached, reading its CPU time and memory from
//! /proc, scraping its /metrics, and stopping it by PID.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::proc::{self, Memory};

/// How the tracer runs during the bench.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// `tracer agent --listen 127.0.0.1:PORT --interval I`.
    Agent,
    /// `tracer trace --duration 1h --interval I --format json --output /dev/null`,
    /// used when the agent of this build cannot run (the reason is kept).
    Trace { why_not_agent: String },
}

impl Mode {
    pub fn describe(&self, interval: Duration) -> String {
        let secs = interval.as_secs();
        match self {
            Mode::Agent => format!("`tracer agent --listen 127.0.0.1:<free port> --interval {secs}s`"),
            Mode::Trace { .. } => {
                format!("`tracer trace --duration 1h --interval {secs}s --format json --output /dev/null`")
            }
        }
    }
}

/// How long the tracer may take to attach (BTF parsing and program loading
/// on a busy machine).
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it may take to stop after SIGINT (the trace command writes its
/// report first) before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

pub struct TracerProcess {
    child: Child,
    lines: Receiver<String>,
    /// The agent's HTTP address (agent mode only).
    pub http: Option<SocketAddr>,
    /// Wall time from spawn to the "attached"/"listening" line.
    pub attach_secs: f64,
}

impl TracerProcess {
    /// Starts the tracer and waits until it says it is attached (a stderr
    /// line containing "attached" or "listening").
    pub fn start(binary: &Path, mode: &Mode, interval: Duration) -> Result<Self> {
        Self::start_with_args(binary, mode, interval, &[])
    }

    /// [`TracerProcess::start`] with more arguments for the tracer.
    pub fn start_with_args(binary: &Path, mode: &Mode, interval: Duration, extra: &[String]) -> Result<Self> {
        let interval_arg = format!("{}ms", interval.as_millis());
        let mut cmd = Command::new(binary);
        let mut http = None;
        match mode {
            Mode::Agent => {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
                cmd.args(["agent", "--listen", &addr.to_string(), "--interval", &interval_arg]);
                http = Some(addr);
            }
            Mode::Trace { .. } => {
                cmd.args(["trace", "--duration", "1h", "--interval", &interval_arg]).args([
                    "--format",
                    "json",
                    "--output",
                    "/dev/null",
                ]);
            }
        }
        cmd.args(extra).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().context("the tracer's stderr")?;
        let (tx, lines) = mpsc::channel();
        // Drains stderr for the tracer's whole life, so it never blocks on a
        // full pipe; lines nobody reads any more are dropped.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut tracer = TracerProcess { child, lines, http, attach_secs: 0.0 };
        let mut said = Vec::new();
        loop {
            let left = ATTACH_TIMEOUT.saturating_sub(started.elapsed());
            match tracer.lines.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    let attached = line.contains("attached") || line.contains("listening");
                    said.push(line);
                    if attached {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) if left.is_zero() => {
                    bail!("the tracer did not attach within {}s", ATTACH_TIMEOUT.as_secs())
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let status = tracer.child.wait()?;
                    let last = said.iter().rev().find(|l| !l.trim().is_empty()).cloned();
                    bail!("{} ({status})", last.unwrap_or_else(|| "the tracer exited without a word".into()));
                }
            }
        }
        tracer.attach_secs = started.elapsed().as_secs_f64();
        if let Some(addr) = tracer.http {
            // "listening" can come before the first scrape works.
            let deadline = Instant::now() + Duration::from_secs(10);
            while scrape(addr).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(tracer)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User+system CPU seconds the tracer has used so far.
    pub fn cpu_seconds(&self) -> Result<f64> {
        proc::cpu_seconds(self.pid())
    }

    pub fn memory(&self) -> Result<Memory> {
        proc::memory(self.pid())
    }

    /// The stderr lines printed since the last call.
    pub fn new_lines(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Sends SIGINT to the tracer's PID and waits; kills it if it does not
    /// stop in time.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.pid()).context("pid out of range")?;
        // SAFETY: kill has no pointer arguments; the PID is our own child,
        // which has not been reaped (try_wait above), so it is not reused.
        unsafe { libc::kill(pid, libc::SIGINT) };
        if super::child::wait_for_exit(&mut self.child, STOP_TIMEOUT)?.is_none() {
            self.child.kill().context("killing the tracer")?;
            self.child.wait()?;
            bail!("the tracer did not stop within {}s of SIGINT; killed", STOP_TIMEOUT.as_secs());
        }
        Ok(())
    }
}

impl Drop for TracerProcess {
    fn drop(&mut self) {
        if let Err(err) = self.stop_inner() {
            eprintln!("xtask: bench: {err:#}");
        }
    }
}

/// Decides whether this build's agent can run: starts it once; if it fails,
/// says why and falls back to `trace`.
pub fn choose_mode(binary: &Path, interval: Duration) -> Result<Mode> {
    match TracerProcess::start(binary, &Mode::Agent, interval) {
        Ok(agent) => {
            agent.stop()?;
            Ok(Mode::Agent)
        }
        Err(err) => Ok(Mode::Trace { why_not_agent: format!("{err:#}") }),
    }
}

/// A loopback port free right now.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The agent's /metrics text.
pub fn scrape(addr: SocketAddr) -> Result<String> {
    http_get(addr, "/metrics")
}

/// The body of `GET path` (HTTP/1.0, so never chunked), failing unless
/// the status is 200.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("malformed HTTP response")?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        bail!("GET {path}: {status}");
    }
    Ok(body.to_owned())
}

/// The release tracer binary of this workspace (cargo's target directory).
pub fn default_binary(target_dir: &Path) -> PathBuf {
    target_dir.join("release").join("tracer")
}
