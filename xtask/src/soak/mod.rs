//! `cargo xtask soak [--duration 10m]`: the release `tracer agent` under a
//! mixed loopback workload for the whole duration, scraped by a real
//! Prometheus every 5 s, and the figures written to SOAK.md. Not part of
//! `cargo xtask test`.
//!
//! The workload (`load`, processes of this binary, one process name per
//! role): connection churn at a few hundred connections per second spread
//! over 127.0.0.10-17, long-lived streams, a growing CLOSE_WAIT pile, and a
//! short-lived process every 1/RATE s, each sending known bytes. Every
//! process counts what its send and recv calls moved.
//!
//! It passes (`checks`) when, after the warm-up, the agent's current RSS
//! (VmRSS) stays within 10% with no upward trend (a fitted line); no event
//! or table drop is counted (`tracer_events_dropped_total` stays 0); every
//! `_total` series Prometheus holds from start to end never goes down (its
//! raw samples, read back through the HTTP API); and the agent's cumulative
//! `tracer_tcp_sent_bytes_total` / `tracer_tcp_received_bytes_total` per
//! process name equal the workload's own counts exactly. The agent runs
//! with a 1 minute `--window` (its history fills during the warm-up, so
//! flat memory means something) and a high `--metrics-top-n`, so other
//! processes on the host never push the workload's series into "other".
//!
//! Every loop is bounded in count and time; traffic stays on loopback;
//! every process the soak starts is stopped by its PID, also on failure.

mod checks;
pub mod load;
mod prometheus;
mod report;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _, Result};
use clap::Args;

use self::{
    checks::{comm_total, judge_rss, parse_exposition, Monotonic, RssVerdict},
    load::Role,
    prometheus::Prometheus,
};
use crate::{
    bench::{
        child::{field, fields, Spawned},
        plan::Binaries,
        proc,
        tracer::{http_get, scrape, Mode, TracerProcess},
        wait_for_exit,
    },
    setup, workspace_root,
};

/// The agent's collection interval and Prometheus' scrape interval.
const INTERVAL: Duration = Duration::from_secs(5);
/// The agent's report window: filled well inside the warm-up.
const WINDOW: &str = "1m";
/// Series per metric before "other": far above what the host holds.
const TOP_N: &str = "5000";
/// Long-lived streams, and chunks each sends per second.
const STREAMS: usize = 4;
const STREAM_RATE: f64 = 32.0;
/// Sockets of other processes on the host above which a look at the
/// agent's memory says more about them than about the soak (another
/// workload holding thousands of sockets): such looks, and the one after,
/// are shown but not judged.
const FOREIGN_SOCKETS: f64 = 1_000.0;
/// Bound on the wait for the agent to show the final totals.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub struct SoakArgs {
    /// How long the workload runs.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time before memory is judged [default: a sixth of the run, at least
    /// 1 minute, at most half of it].
    #[arg(long, value_parser = humantime::parse_duration)]
    warmup: Option<Duration>,
    /// New churn connections per second (over 8 source addresses).
    #[arg(long, default_value = "300")]
    churn_rate: f64,
    /// Sockets added to the CLOSE_WAIT pile per second.
    #[arg(long, default_value = "5")]
    close_wait_rate: f64,
    /// Short-lived processes started per second.
    #[arg(long, default_value = "5")]
    process_rate: f64,
    /// Tracer binary to soak [default: build `target/release/tracer`].
    #[arg(long, value_name = "PATH")]
    tracer: Option<PathBuf>,
    /// Print the results only; leave SOAK.md as it is.
    #[arg(long)]
    no_write: bool,
}

impl SoakArgs {
    fn warmup(&self) -> Duration {
        self.warmup.unwrap_or_else(|| (self.duration / 6).max(Duration::from_secs(60)).min(self.duration / 2))
    }
}

/// One long-running workload process.
struct Worker {
    role: Role,
    process: Spawned,
    stdin: Option<ChildStdin>,
}

impl Worker {
    fn start(loadgen: &Path, role: Role, extra: &[String]) -> Result<Self> {
        let mut cmd = Command::new(loadgen);
        cmd.args(["soak-load", role.name()]).args(extra);
        let mut process = Spawned::start_with_stdin(&mut cmd, Stdio::piped())?;
        let stdin = process.child_mut().stdin.take();
        Ok(Worker { role, process, stdin })
    }

    fn alive(&mut self) -> Result<()> {
        if let Some(status) = self.process.child_mut().try_wait()? {
            bail!("the {} process ({}) ended early ({status})", self.role.name(), self.role.comm());
        }
        Ok(())
    }

    /// Closes its stdin (its signal to finish) and reads its totals.
    fn finish(&mut self) -> Result<Totals> {
        self.stdin = None;
        let line = self.process.line_starting("done ", Duration::from_secs(120))?;
        self.process.finish(Duration::from_secs(30))?;
        let fields = fields(&line);
        let number = |name| field::<u64>(&fields, name);
        Ok(Totals { tx: number("tx")?, rx: number("rx")?, conns: number("conns")? })
    }
}

/// What one role moved, by its own count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub tx: u64,
    pub rx: u64,
    pub conns: u64,
}

/// A role, its own count and the agent's (sent, received) for its name.
pub type Compared = (Role, Totals, (f64, f64));

/// One look at the agent during the run.
#[derive(Debug, Clone, Copy)]
pub struct Tick {
    /// Seconds since the workload started.
    pub secs: f64,
    pub rss_kib: u64,
    pub tracked_sockets: f64,
    /// Tracked sockets of processes other than the workload's.
    pub foreign_sockets: f64,
    pub close_wait: f64,
}

impl Tick {
    fn disturbed(&self) -> bool {
        self.foreign_sockets > FOREIGN_SOCKETS
    }
}

/// The ticks whose memory is judged: after the warm-up, and neither while
/// other processes held many sockets nor just after.
pub fn judged(ticks: &[Tick], warmup: Duration) -> Vec<(f64, f64)> {
    ticks
        .iter()
        .enumerate()
        .filter(|(i, tick)| {
            let before = i.checked_sub(1).and_then(|j| ticks.get(j));
            tick.secs >= warmup.as_secs_f64() && !tick.disturbed() && !before.is_some_and(Tick::disturbed)
        })
        .map(|(_, tick)| (tick.secs, tick.rss_kib as f64))
        .collect()
}

/// Everything the soak found, for the checks and SOAK.md.
pub struct Findings {
    pub started_at: SystemTime,
    pub duration: Duration,
    pub warmup: Duration,
    pub args: String,
    pub agent_command: String,
    pub machine: String,
    pub source: String,
    pub tracer_version: String,
    pub rates: (f64, f64, f64),
    pub ticks: Vec<Tick>,
    pub rss: Option<RssVerdict>,
    pub agent_cpu_secs: f64,
    /// Per role: the workload's count and the agent's (sent, received).
    pub totals: Vec<Compared>,
    pub short_processes: (u64, u64),
    pub dropped: Vec<(String, f64)>,
    pub dropped_ever: f64,
    pub monotonic: Monotonic,
    pub scrapes: (usize, usize),
}

impl Findings {
    pub fn totals_exact(&self) -> bool {
        !self.totals.is_empty()
            && self.totals.iter().all(|(_, own, (sent, received))| own.tx as f64 == *sent && own.rx as f64 == *received)
    }

    pub fn no_drops(&self) -> bool {
        self.dropped_ever == 0.0 && self.dropped.iter().all(|(_, v)| *v == 0.0)
    }

    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        match &self.rss {
            Some(rss) if !rss.within_band => failures.push("RSS left the 10% band after the warm-up".to_owned()),
            Some(rss) if !rss.no_upward_trend => failures.push("RSS trends upward after the warm-up".to_owned()),
            Some(_) => {}
            None => failures.push("too few RSS samples after the warm-up".to_owned()),
        }
        if !self.no_drops() {
            failures.push("events or table entries were dropped".to_owned());
        }
        if !self.monotonic.decreases.is_empty() || self.monotonic.checked == 0 {
            failures.push("a counter series went down (or none was checked)".to_owned());
        }
        if !self.totals_exact() {
            failures.push("per-process byte totals differ from the workload's".to_owned());
        }
        failures
    }
}

pub fn run(args: SoakArgs) -> Result<()> {
    let binaries = Binaries::release(args.tracer.clone())?;
    setup::install_packages(&[("prometheus", "prometheus")], "the soak")?;
    let findings = soak(&args, &binaries)?;
    let failures = findings.failures();
    println!("{}", report::summary(&findings));
    if !args.no_write {
        let path = workspace_root().join("SOAK.md");
        std::fs::write(&path, report::file(&findings)).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("xtask: soak: wrote {}", path.display());
    }
    if !failures.is_empty() {
        bail!("soak failed: {}", failures.join("; "));
    }
    Ok(())
}

/// The servers, then the agent and Prometheus, then the clients.
struct Setup {
    servers: Vec<Worker>,
    ports: Vec<(Role, u16)>,
    agent: TracerProcess,
    agent_addr: SocketAddr,
    prometheus: Prometheus,
}

fn start_all(args: &SoakArgs, binaries: &Binaries) -> Result<(Setup, Vec<Worker>)> {
    let mut servers = Vec::new();
    let mut ports = Vec::new();
    for role in [Role::ChurnServer, Role::StreamServer, Role::CwaitServer, Role::ShortServer] {
        let mut server = Worker::start(&binaries.loadgen, role, &[])?;
        let port = server.process.line_starting("port ", Duration::from_secs(30))?;
        ports.push((role, port.trim_start_matches("port ").parse::<u16>()?));
        servers.push(server);
    }
    let extra: Vec<String> = ["--window", WINDOW, "--metrics-top-n", TOP_N].iter().map(|s| s.to_string()).collect();
    let agent = TracerProcess::start_with_args(&binaries.tracer, &Mode::Agent, INTERVAL, &extra)?;
    let agent_addr = agent.http.context("the agent has no HTTP address")?;
    let prometheus = Prometheus::start(agent_addr, INTERVAL)?;
    let port_of = |role: Role| ports.iter().find(|(r, _)| *r == role).map(|(_, p)| *p).unwrap_or_default();
    let connect = |role: Role| format!("127.0.0.1:{}", port_of(role));
    let clients = vec![
        Worker::start(
            &binaries.loadgen,
            Role::Churn,
            &["--connect".into(), connect(Role::ChurnServer), "--rate".into(), args.churn_rate.to_string()],
        )?,
        Worker::start(
            &binaries.loadgen,
            Role::Stream,
            &[
                "--connect".into(),
                connect(Role::StreamServer),
                "--rate".into(),
                STREAM_RATE.to_string(),
                "--streams".into(),
                STREAMS.to_string(),
            ],
        )?,
        Worker::start(
            &binaries.loadgen,
            Role::Cwait,
            &["--connect".into(), connect(Role::CwaitServer), "--rate".into(), args.close_wait_rate.to_string()],
        )?,
    ];
    Ok((Setup { servers, ports, agent, agent_addr, prometheus }, clients))
}

fn soak(args: &SoakArgs, binaries: &Binaries) -> Result<Findings> {
    let started_at = SystemTime::now();
    let source = crate::bench::source_revision();
    let (mut setup, mut clients) = start_all(args, binaries)?;
    let agent_command = format!(
        "tracer agent --listen {} --interval {}s --window {WINDOW} --metrics-top-n {TOP_N}",
        setup.agent_addr,
        INTERVAL.as_secs()
    );
    eprintln!(
        "xtask: soak: {} of churn {}/s, {STREAMS} streams, CLOSE_WAIT +{}/s, {} processes/s; agent pid {}, \
         prometheus pid {} on {}",
        humantime::format_duration(args.duration),
        args.churn_rate,
        args.close_wait_rate,
        args.process_rate,
        setup.agent.pid(),
        setup.prometheus.pid(),
        setup.prometheus.addr
    );
    let began = Instant::now();
    let began_unix = unix_secs(SystemTime::now());
    let cpu_before = setup.agent.cpu_seconds()?;
    let short_port = setup.ports.iter().find(|(r, _)| *r == Role::ShortServer).map(|(_, p)| *p).unwrap_or_default();
    let spawner = ShortSpawner::start(binaries.loadgen.clone(), short_port, args.process_rate);
    let ticks = watch(args.duration, began, &mut setup, &mut clients);
    let short = spawner.stop();
    let ticks = ticks?;
    let short = short?;
    let agent_cpu_secs = setup.agent.cpu_seconds()? - cpu_before;

    // Clients first (everything they sent is then in the servers' backlog
    // or read), then the servers.
    let mut own: Vec<(Role, Totals)> = Vec::new();
    for worker in clients.iter_mut().chain(setup.servers.iter_mut()) {
        own.push((worker.role, worker.finish()?));
    }
    own.push((Role::Short, Totals { tx: short.bytes, rx: 0, conns: short.ok }));
    let ended_unix = unix_secs(SystemTime::now());
    let totals = settle_totals(setup.agent_addr, &own)?;
    let (dropped, report_drops) = drops(setup.agent_addr)?;

    // One more scrape after the end, then read every counter back, from
    // before the start up to now.
    wait_for_scrape_after(&setup.prometheus, ended_unix)?;
    let now = unix_secs(SystemTime::now());
    let run_secs = (now - began_unix).ceil() as u64 + 2 * INTERVAL.as_secs();
    let counters = setup.prometheus.raw_series("{__name__=~\"tracer_.+_total\"}", now, run_secs)?;
    let slack = 2.0 * INTERVAL.as_secs_f64();
    let monotonic = checks::check_monotonic(&counters, began_unix + slack, ended_unix, slack);
    let dropped_ever = counters
        .iter()
        .filter(|s| s.labels.contains("__name__=tracer_events_dropped_total"))
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        .max(report_drops);
    let scrapes = setup.prometheus.scrapes(now, run_secs)?;
    setup.prometheus.stop()?;
    let tracer_version = crate::bench::tracer_version(&binaries.tracer);
    setup.agent.stop()?;

    let warmup = args.warmup();
    let after_warmup = judged(&ticks, warmup);
    Ok(Findings {
        started_at,
        duration: args.duration,
        warmup,
        args: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        agent_command,
        machine: proc::machine(),
        source,
        tracer_version,
        rates: (args.churn_rate, args.close_wait_rate, args.process_rate),
        rss: judge_rss(&after_warmup),
        ticks,
        agent_cpu_secs,
        totals,
        short_processes: (short.ok, short.failed),
        dropped,
        dropped_ever,
        monotonic,
        scrapes,
    })
}

fn unix_secs(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Every `INTERVAL` until `duration` is over: the agent's RSS, tracked
/// sockets and the CLOSE_WAIT pile; fails as soon as a process is gone.
fn watch(duration: Duration, began: Instant, setup: &mut Setup, clients: &mut [Worker]) -> Result<Vec<Tick>> {
    let mut ticks = Vec::new();
    let mut next = began;
    while began.elapsed() < duration {
        next += INTERVAL;
        std::thread::sleep(
            next.saturating_duration_since(Instant::now()).min(duration.saturating_sub(began.elapsed())),
        );
        for worker in clients.iter_mut().chain(setup.servers.iter_mut()) {
            worker.alive()?;
        }
        let memory = setup.agent.memory().context("the agent's memory (has it exited?)")?;
        let samples = parse_exposition(&scrape(setup.agent_addr).context("scraping the agent")?);
        let sum = |name: &str| samples.iter().filter(|s| s.name == name).map(|s| s.value).sum::<f64>();
        let ours: f64 = samples
            .iter()
            .filter(|s| s.name == "tracer_tcp_sockets" && Role::ALL.iter().any(|r| s.label("comm") == Some(r.comm())))
            .map(|s| s.value)
            .sum();
        let close_wait = samples
            .iter()
            .filter(|s| {
                s.name == "tracer_tcp_sockets"
                    && s.label("comm") == Some(Role::CwaitServer.comm())
                    && s.label("state") == Some("CLOSE_WAIT")
            })
            .map(|s| s.value)
            .sum();
        let tick = Tick {
            secs: began.elapsed().as_secs_f64(),
            rss_kib: memory.current_kib,
            tracked_sockets: sum("tracer_tracked_sockets"),
            foreign_sockets: (sum("tracer_tracked_sockets") - ours).max(0.0),
            close_wait,
        };
        if ticks.len() % 6 == 0 {
            eprintln!(
                "xtask: soak: {:>5.0} s: agent RSS {:.1} MiB, {:.0} sockets tracked, CLOSE_WAIT pile {:.0}",
                tick.secs,
                tick.rss_kib as f64 / 1024.0,
                tick.tracked_sockets,
                tick.close_wait
            );
        }
        ticks.push(tick);
    }
    Ok(ticks)
}

/// Polls the agent's /metrics (bounded) until each role's process name
/// shows the workload's exact sent and received bytes; returns the last
/// values seen.
fn settle_totals(agent: SocketAddr, own: &[(Role, Totals)]) -> Result<Vec<Compared>> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let samples = parse_exposition(&scrape(agent)?);
        let seen: Vec<Compared> = own
            .iter()
            .map(|(role, totals)| {
                let sent = comm_total(&samples, "tracer_tcp_sent_bytes_total", role.comm());
                let received = comm_total(&samples, "tracer_tcp_received_bytes_total", role.comm());
                (*role, *totals, (sent, received))
            })
            .collect();
        let exact = seen.iter().all(|(_, t, (s, r))| t.tx as f64 == *s && t.rx as f64 == *r);
        if exact || Instant::now() >= deadline {
            return Ok(seen);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Every drop counter the agent exports (name, value), and the largest
/// drop count of its JSON report's `tracer` section.
fn drops(agent: SocketAddr) -> Result<(Vec<(String, f64)>, f64)> {
    let samples = parse_exposition(&scrape(agent)?);
    let dropped = samples
        .iter()
        .filter(|s| ["dropped", "untracked", "lost"].iter().any(|word| s.name.contains(word)))
        .map(|s| (s.name.clone(), s.value))
        .collect();
    let report: serde_json::Value =
        serde_json::from_str(&http_get(agent, "/api/v1/report")?).context("the agent's report is not JSON")?;
    let tracer = &report["tracer"];
    let in_report =
        ["events_dropped", "map_full_drops"].iter().filter_map(|key| tracer[*key].as_f64()).fold(0.0, f64::max);
    Ok((dropped, in_report))
}

/// Waits (bounded) until Prometheus has scraped the agent after `after`.
fn wait_for_scrape_after(prometheus: &Prometheus, after: f64) -> Result<()> {
    let deadline = Instant::now() + 6 * INTERVAL;
    loop {
        let result = prometheus.query("timestamp(up)", unix_secs(SystemTime::now()))?;
        let last = result.first().and_then(|r| r["value"][1].as_str()).and_then(|v| v.parse::<f64>().ok());
        if last.is_some_and(|t| t > after) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("Prometheus did not scrape the agent after the run (last scrape {last:?})");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Short-lived processes, started one after another at a rate by a thread
/// of the soak: each sends a known number of bytes and exits.
struct ShortSpawner {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<ShortTally>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct ShortTally {
    ok: u64,
    failed: u64,
    bytes: u64,
}

impl ShortSpawner {
    fn start(loadgen: PathBuf, port: u16, rate: f64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || -> Result<ShortTally> {
            let every = Duration::from_secs_f64(1.0 / rate.max(0.01));
            let mut tally = ShortTally::default();
            let mut next = Instant::now();
            let connect = format!("127.0.0.1:{port}");
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                next = (next + every).max(Instant::now() - Duration::from_secs(1));
                // Known, varying sizes.
                let bytes = 1_000 + (tally.ok + tally.failed) % 97;
                let mut child = Command::new(&loadgen)
                    .args(["soak-load", "short", "--connect", &connect, "--bytes", &bytes.to_string()])
                    .args(["--max-secs", "30"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .context("starting a short-lived process")?;
                match wait_for_exit(&mut child, Duration::from_secs(30))? {
                    Some(status) if status.success() => {
                        tally.ok += 1;
                        tally.bytes += bytes;
                    }
                    Some(_) => tally.failed += 1,
                    None => {
                        let _ = child.kill();
                        let _ = child.wait();
                        tally.failed += 1;
                    }
                }
            }
            Ok(tally)
        });
        ShortSpawner { stop, thread }
    }

    fn stop(self) -> Result<ShortTally> {
        self.stop.store(true, Ordering::Relaxed);
        let tally = self.thread.join().map_err(|_| anyhow::anyhow!("the process spawner panicked"))??;
        if tally.failed > 0 {
            bail!("{} of {} short-lived processes failed", tally.failed, tally.ok + tally.failed);
        }
        Ok(tally)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_during_other_load_and_just_after_are_not_judged() {
        let tick = |secs: f64, foreign: f64| Tick {
            secs,
            rss_kib: secs as u64,
            tracked_sockets: foreign + 10.0,
            foreign_sockets: foreign,
            close_wait: 0.0,
        };
        let ticks = [tick(5.0, 0.0), tick(10.0, 0.0), tick(15.0, 16_000.0), tick(20.0, 0.0), tick(25.0, 0.0)];
        assert_eq!(judged(&ticks, Duration::from_secs(10)), vec![(10.0, 10.0), (25.0, 25.0)]);
    }
}
