//! The tracer's own cost: one tracer process, measured in stages — idle,
//! under ping-pong load, with 10,000 and with 100,000 live loopback sockets,
//! and after those sockets are gone. For each stage: CPU seconds per minute
//! of wall time, peak and current RSS, tracked sockets, and the duration of
//! one collection pass (scraped from the agent's /metrics when it exports
//! `tracer_collect_duration_seconds`; otherwise the tracer's CPU time per
//! collection interval, an upper bound).
//!
//! The sockets are held by `xtask loadgen hold` processes, each with
//! `CONNECTIONS_PER_HOLDER` connections (both ends, so twice as many
//! sockets) towards its own 127.0.0.x address: a process may have at most
//! 20,000 open files here, and one address pair has ~28,000 ephemeral ports
//! (100,000 sockets: 20 processes, 127.0.0.10 to 127.0.0.29). The tracer
//! is sized for them with `--max-sockets` [`COST_MAX_SOCKETS`]: its
//! default need not hold the largest stage.

use std::{
    collections::HashMap,
    io::Write as _,
    net::Ipv4Addr,
    path::Path,
    process::{ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    child::Spawned,
    loadgen::Workload,
    plan::Plan,
    proc::{self, Memory},
    tracer::{self, Mode, TracerProcess},
    workload::run_workload,
};

/// Connections per holder process: 5,000 sockets, a quarter of the
/// open-file limit.
pub const CONNECTIONS_PER_HOLDER: usize = 2_500;
/// Further scrapes of a gauge collection duration in a full run.
pub const FULL_RUN_EXTRA_GAUGE_SAMPLES: usize = 2;
/// Live socket counts measured.
pub const SOCKET_STAGES: [usize; 2] = [10_000, 100_000];
/// `--max-sockets` of the tracer whose own cost is measured: the largest
/// stage and a tenth more for the host's own sockets, rounded up to a
/// power of two (the size the tracer's table gets anyway).
pub const COST_MAX_SOCKETS: u32 = max_sockets_for(SOCKET_STAGES[SOCKET_STAGES.len() - 1]);

/// The smallest power of two at least `sockets` and a tenth more.
pub const fn max_sockets_for(sockets: usize) -> u32 {
    ((sockets + sockets / 10) as u32).next_power_of_two()
}

#[derive(Debug, Clone)]
pub struct CostPlan {
    pub idle: Duration,
    pub ping_pong: Duration,
    pub sockets: Duration,
    pub interval: Duration,
    /// Further scrapes of a gauge collection duration after a socket stage.
    pub extra_gauge_samples: usize,
}

impl CostPlan {
    pub fn new(quick: bool, interval: Duration) -> Self {
        if quick {
            CostPlan {
                idle: Duration::from_secs(10),
                ping_pong: Duration::from_secs(4),
                sockets: Duration::from_secs(5),
                interval,
                extra_gauge_samples: 0,
            }
        } else {
            CostPlan {
                idle: Duration::from_secs(30),
                ping_pong: Duration::from_secs(10),
                sockets: Duration::from_secs(20),
                interval,
                extra_gauge_samples: FULL_RUN_EXTRA_GAUGE_SAMPLES,
            }
        }
    }
}

/// How a stage's collection pass was measured.
#[derive(Debug, Clone, PartialEq)]
pub enum CollectPass {
    /// `tracer_collect_duration_seconds` as a histogram or summary: the
    /// mean of the passes in the stage (`_sum`/`_count` differences).
    ScrapedMean {
        secs: f64,
        passes: f64,
    },
    /// `tracer_collect_duration_seconds` as a gauge (the last pass),
    /// scraped once or more, an interval apart.
    ScrapedGauge {
        samples: Vec<f64>,
    },
    /// The tracer's CPU seconds over the stage divided by the collection
    /// passes in it (counted from its progress lines): an upper bound.
    CpuPerPass {
        secs: f64,
        passes: usize,
    },
    NotMeasured,
}

#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    /// Sockets the bench holds open during the stage.
    pub sockets_held: usize,
    pub wall_secs: f64,
    pub cpu_secs: f64,
    pub memory: Memory,
    /// What the tracer says it tracks, when it says.
    pub tracked_sockets: Option<f64>,
    /// Events the tracer handled during the stage (agent: `tracer_events_total`),
    /// which shows how idle the host really was.
    pub events: Option<f64>,
    pub collect: CollectPass,
    /// Time to open the held sockets, for socket stages.
    pub open_secs: Option<f64>,
}

impl CollectPass {
    /// The typical pass: the mean, the median of the samples, or the bound.
    pub fn typical_secs(&self) -> Option<f64> {
        match self {
            CollectPass::ScrapedMean { secs, .. } | CollectPass::CpuPerPass { secs, .. } => Some(*secs),
            CollectPass::ScrapedGauge { samples } => {
                let median = super::stats::median(samples);
                median.is_finite().then_some(median)
            }
            CollectPass::NotMeasured => None,
        }
    }
}

impl Stage {
    pub fn cpu_seconds_per_minute(&self) -> f64 {
        super::stats::cpu_seconds_per_minute(self.cpu_secs, self.wall_secs)
    }
}

#[derive(Debug, Clone)]
pub struct CostResults {
    pub attach_secs: f64,
    pub attach_cpu_secs: f64,
    /// Memory right after attaching (start-up work sets the first peak).
    pub attach_memory: Memory,
    pub stages: Vec<Stage>,
    /// Memory after the held sockets closed and a pass went by.
    pub after_close: Memory,
}

pub fn measure(tracer_bin: &Path, loadgen: &Path, mode: &Mode, plan: &Plan, cost: &CostPlan) -> Result<CostResults> {
    eprintln!("xtask: bench: the tracer's own cost (idle, ping-pong, live sockets)");
    let sized = ["--max-sockets".to_owned(), COST_MAX_SOCKETS.to_string()];
    let tracer = TracerProcess::start_with_args(tracer_bin, mode, cost.interval, &sized)?;
    let attach_cpu_secs = tracer.cpu_seconds()?;
    let attach_memory = tracer.memory()?;
    // Idle starts after the first collection pass.
    std::thread::sleep(cost.interval + Duration::from_secs(1));
    let mut stages = Vec::new();

    let idle = stage(&tracer, mode, "idle", 0, None, || {
        std::thread::sleep(cost.idle);
        Ok(())
    })?;
    report_stage(&idle);
    stages.push(idle);

    let mut ping_pong_spec = plan.load;
    ping_pong_spec.window = cost.ping_pong;
    let loaded = stage(&tracer, mode, "ping-pong load", 0, None, || {
        run_workload(loadgen, Workload::PingPong, &ping_pong_spec).map(|_| ())
    })?;
    report_stage(&loaded);
    stages.push(loaded);

    let mut holders: Vec<Holder> = Vec::new();
    for sockets in SOCKET_STAGES {
        let opening = Instant::now();
        while holders.len() * 2 * CONNECTIONS_PER_HOLDER < sockets {
            holders.push(Holder::start(loadgen, holders.len())?);
        }
        for holder in &mut holders {
            holder.wait_ready()?;
        }
        let open_secs = opening.elapsed().as_secs_f64();
        // Let at least one collection pass see them before measuring.
        std::thread::sleep(cost.interval + Duration::from_secs(1));
        let held = holders.len() * 2 * CONNECTIONS_PER_HOLDER;
        let mut measured = stage(&tracer, mode, &format!("{held} live sockets"), held, Some(open_secs), || {
            std::thread::sleep(cost.sockets);
            Ok(())
        })?;
        // A gauge shows one pass: sample more passes, outside the CPU window
        // (scraping costs the agent CPU too).
        if let (CollectPass::ScrapedGauge { samples }, Some(addr)) = (&mut measured.collect, tracer.http) {
            for _ in 0..cost.extra_gauge_samples {
                std::thread::sleep(cost.interval);
                let metrics = proc::parse_metrics(&tracer::scrape(addr)?);
                samples.extend(metrics.get(COLLECT_METRIC).copied());
            }
        }
        report_stage(&measured);
        stages.push(measured);
    }
    for holder in holders.drain(..) {
        holder.close()?;
    }
    std::thread::sleep(cost.interval + Duration::from_secs(1));
    let after_close = tracer.memory()?;
    eprintln!(
        "xtask: bench: after the sockets closed: RSS {:.1} MB (peak {:.1} MB)",
        mb(after_close.current_kib),
        mb(after_close.peak_kib)
    );
    let attach_secs = tracer.attach_secs;
    tracer.stop()?;
    Ok(CostResults { attach_secs, attach_cpu_secs, attach_memory, stages, after_close })
}

fn report_stage(stage: &Stage) {
    let collect = match &stage.collect {
        CollectPass::ScrapedMean { secs, .. } => format!("collection pass {:.1} ms", secs * 1e3),
        CollectPass::ScrapedGauge { samples } => {
            let ms: Vec<String> = samples.iter().map(|s| format!("{:.1}", s * 1e3)).collect();
            format!("collection pass {} ms", ms.join(", "))
        }
        CollectPass::CpuPerPass { secs, passes } => format!("CPU per pass <= {:.1} ms ({passes} passes)", secs * 1e3),
        CollectPass::NotMeasured => "collection pass not measured".into(),
    };
    eprintln!(
        "xtask: bench: {:<20} {:.3} CPU s/min ({:.2}% of a CPU), peak RSS {:.1} MB, {collect}",
        stage.name,
        stage.cpu_seconds_per_minute(),
        stage.cpu_seconds_per_minute() / 60.0 * 100.0,
        mb(stage.memory.peak_kib)
    );
}

/// KiB to MB (10^6 bytes).
pub fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

/// Measures the tracer over `body`.
fn stage(
    tracer: &TracerProcess,
    mode: &Mode,
    name: &str,
    sockets_held: usize,
    open_secs: Option<f64>,
    body: impl FnOnce() -> Result<()>,
) -> Result<Stage> {
    let _ = tracer.new_lines();
    let before = tracer.http.and_then(|addr| tracer::scrape(addr).ok()).map(|text| proc::parse_metrics(&text));
    let (cpu_before, clock) = (tracer.cpu_seconds()?, Instant::now());
    body().with_context(|| format!("stage '{name}'"))?;
    let cpu_secs = tracer.cpu_seconds()? - cpu_before;
    let wall_secs = clock.elapsed().as_secs_f64();
    let memory = tracer.memory()?;
    let after = tracer.http.and_then(|addr| tracer::scrape(addr).ok()).map(|text| proc::parse_metrics(&text));
    let lines = tracer.new_lines();

    let counter = |metrics: &Option<HashMap<String, f64>>| metrics.as_ref()?.get("tracer_events_total").copied();
    let events = counter(&after).zip(counter(&before)).map(|(end, start)| end - start);
    let (tracked_sockets, collect) = match (mode, &before, &after) {
        (Mode::Agent, Some(before), Some(after)) => {
            (after.get("tracer_tracked_sockets").copied(), scraped_pass(before, after))
        }
        (Mode::Agent, _, _) => (None, CollectPass::NotMeasured),
        (Mode::Trace { .. }, _, _) => {
            let progress: Vec<&String> = lines.iter().filter(|l| l.contains(" events ")).collect();
            let tracked = progress.last().and_then(|line| progress_sockets(line));
            let collect = match progress.len() {
                0 => CollectPass::NotMeasured,
                passes => CollectPass::CpuPerPass { secs: cpu_secs / passes as f64, passes },
            };
            (tracked, collect)
        }
    };
    Ok(Stage {
        name: name.to_owned(),
        sockets_held,
        wall_secs,
        cpu_secs,
        memory,
        tracked_sockets,
        events,
        collect,
        open_secs,
    })
}

const COLLECT_METRIC: &str = "tracer_collect_duration_seconds";

/// The collection pass as the agent reports it between two scrapes.
fn scraped_pass(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> CollectPass {
    let sum = |m: &HashMap<String, f64>| m.get(&format!("{COLLECT_METRIC}_sum")).copied();
    let count = |m: &HashMap<String, f64>| m.get(&format!("{COLLECT_METRIC}_count")).copied();
    if let (Some(s0), Some(s1), Some(c0), Some(c1)) = (sum(before), sum(after), count(before), count(after)) {
        if c1 > c0 {
            return CollectPass::ScrapedMean { secs: (s1 - s0) / (c1 - c0), passes: c1 - c0 };
        }
    }
    match after.get(COLLECT_METRIC) {
        Some(&secs) => CollectPass::ScrapedGauge { samples: vec![secs] },
        None => CollectPass::NotMeasured,
    }
}

/// "sockets N" in a `tracer trace` progress line.
fn progress_sockets(line: &str) -> Option<f64> {
    let mut words = line.split_whitespace();
    words.by_ref().find(|w| *w == "sockets")?;
    words.next()?.parse().ok()
}

/// A `loadgen hold` process keeping connections open until its stdin closes.
struct Holder {
    process: Spawned,
    stdin: Option<ChildStdin>,
    ready: bool,
}

impl Holder {
    fn start(loadgen: &Path, index: usize) -> Result<Self> {
        let octet = u8::try_from(10 + index).context("too many holder processes")?;
        let addr = Ipv4Addr::new(127, 0, 0, octet);
        let mut cmd = Command::new(loadgen);
        cmd.args(["loadgen", "hold", "--addr", &addr.to_string()])
            .args(["--connections", &CONNECTIONS_PER_HOLDER.to_string()]);
        let mut process = Spawned::start_with_stdin(&mut cmd, Stdio::piped())?;
        let stdin = process.child_mut().stdin.take();
        Ok(Holder { process, stdin, ready: false })
    }

    fn wait_ready(&mut self) -> Result<()> {
        if !self.ready {
            self.process.line_starting("ready ", Duration::from_secs(120))?;
            self.ready = true;
        }
        Ok(())
    }

    /// Closes its stdin; it closes its connections and exits.
    fn close(mut self) -> Result<()> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        self.process.finish(Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tracer_is_sized_for_the_largest_stage() {
        assert_eq!(max_sockets_for(100_000), 131_072);
        assert_eq!(max_sockets_for(10_000), 16_384);
        assert_eq!(max_sockets_for(120_000), 262_144);
        assert!(COST_MAX_SOCKETS as usize >= SOCKET_STAGES[SOCKET_STAGES.len() - 1]);
    }

    #[test]
    fn progress_line_sockets() {
        let line = "tracer:  10.0s / 3600s  events 123  sockets 10042  top: pid 7 (x) 1.2 MB";
        assert_eq!(progress_sockets(line), Some(10042.0));
        assert_eq!(progress_sockets("tracer: attached"), None);
    }

    #[test]
    fn collect_pass_from_a_histogram_or_a_gauge() {
        let map = |pairs: &[(&str, f64)]| pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let before =
            map(&[("tracer_collect_duration_seconds_sum", 1.0), ("tracer_collect_duration_seconds_count", 10.0)]);
        let after =
            map(&[("tracer_collect_duration_seconds_sum", 1.2), ("tracer_collect_duration_seconds_count", 14.0)]);
        let CollectPass::ScrapedMean { secs, passes } = scraped_pass(&before, &after) else { panic!("not a mean") };
        assert!((secs - 0.05).abs() < 1e-9 && passes == 4.0);
        let gauge = map(&[("tracer_collect_duration_seconds", 0.007)]);
        assert_eq!(scraped_pass(&HashMap::new(), &gauge), CollectPass::ScrapedGauge { samples: vec![0.007] });
        assert_eq!(scraped_pass(&HashMap::new(), &HashMap::new()), CollectPass::NotMeasured);
    }
}
