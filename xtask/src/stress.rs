//! `cargo xtask unit-stress [--runs 50]`: the unit tests (`cargo test` of
//! the tracer, tracer-common and xtask crates, nothing that needs root) run
//! again and again while a CPU hog keeps every core busy, to show that no
//! test depends on being scheduled promptly (no sleep-then-assert, no "at
//! least N ms"). It passes when every run passes.
//!
//! The hog is Debian's `stress-ng --cpu N` (N = the CPUs this process may
//! use), installed when missing; where it cannot be, busy-loop threads of
//! this process take its place. The tests are built once before the hog
//! starts, so the runs measure tests, not the compiler. Every run is
//! bounded in time; the hog and any run that overstays are stopped by PID.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{bench::wait_for_exit, cargo, run, setup, workspace_root};

/// The crates whose unit tests run (no root, no kernel programs loaded).
const PACKAGES: [&str; 3] = ["tracer", "tracer-common", "xtask"];
/// Bound on one run of all the unit tests, however loaded the machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the hog may take to stop after SIGTERM before it is killed.
const HOG_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The `cargo test` arguments of one run.
fn test_args() -> Vec<&'static str> {
    let mut args = vec!["test"];
    for package in PACKAGES {
        args.extend(["--package", package]);
    }
    args.extend(["--lib", "--bins"]);
    args
}

pub fn unit_stress(runs: u32) -> Result<()> {
    setup::setup()?;
    // Built once, without the hog; each run then only checks freshness.
    run(cargo().args(test_args()).arg("--no-run"))?;
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let bound = RUN_TIMEOUT * runs + Duration::from_secs(120);
    let mut hog = Hog::start(cpus, bound)?;
    eprintln!("xtask: unit-stress: {runs} runs of `cargo {}` under {}", test_args().join(" "), hog.describe());
    let logs = workspace_root().join("target").join("unit-stress");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let began = Instant::now();
    let mut passed = 0;
    let mut failures = Vec::new();
    let mut tests_per_run = 0;
    for index in 1..=runs {
        hog.check_running()?;
        let outcome = run_once(&logs, index)?;
        tests_per_run = tests_per_run.max(outcome.tests_passed);
        let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let load = load.split_whitespace().next().unwrap_or("?");
        if outcome.passed {
            passed += 1;
            eprintln!(
                "xtask: unit-stress: run {index}/{runs}: pass, {} tests in {:.1} s (load {load})",
                outcome.tests_passed, outcome.secs
            );
        } else {
            eprintln!(
                "xtask: unit-stress: run {index}/{runs}: FAIL in {:.1} s: {} (log {})",
                outcome.secs,
                outcome.failed.join(", "),
                outcome.log.display()
            );
            failures.push((index, outcome.failed));
        }
    }
    hog.stop()?;
    println!(
        "unit-stress: {passed}/{runs} runs passed ({tests_per_run} tests each) under {}, in {:.0} s",
        hog.describe(),
        began.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        for (index, failed) in &failures {
            println!("  run {index}: {}", failed.join(", "));
        }
        bail!("{} of {runs} runs failed", failures.len());
    }
    Ok(())
}

/// What one run of the unit tests did.
struct Outcome {
    passed: bool,
    tests_passed: u64,
    /// Names of the failed tests (or why the run failed as a whole).
    failed: Vec<String>,
    secs: f64,
    log: PathBuf,
}

fn run_once(logs: &std::path::Path, index: u32) -> Result<Outcome> {
    let log = logs.join(format!("run-{index}.log"));
    let file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let started = Instant::now();
    let mut child = cargo()
        .args(test_args())
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(file.try_clone().context("duplicating the log file")?)
        .stderr(file)
        .spawn()
        .context("starting cargo test")?;
    let status = match wait_for_exit(&mut child, RUN_TIMEOUT)? {
        Some(status) => Some(status),
        None => {
            stop_tree(&mut child);
            None
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let text = fs::read_to_string(&log).unwrap_or_default();
    let (tests_passed, mut failed) = summarize(&text);
    let passed = status.is_some_and(|s| s.success());
    match status {
        None => failed.push(format!("did not finish within {} s; stopped", RUN_TIMEOUT.as_secs())),
        Some(status) if !passed && failed.is_empty() => failed.push(format!("cargo test failed ({status})")),
        _ => {}
    }
    if passed {
        // Keep only the logs worth reading.
        let _ = fs::remove_file(&log);
    }
    Ok(Outcome { passed, tests_passed, failed, secs, log })
}

/// Tests passed (summed over the `test result:` lines) and the names of
/// the failed ones, from `cargo test` output.
fn summarize(output: &str) -> (u64, Vec<String>) {
    let mut passed = 0;
    let mut failed = Vec::new();
    for line in output.lines() {
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += rest
                .split(';')
                .find_map(|part| part.trim().strip_suffix(" passed"))
                .and_then(|n| n.rsplit(' ').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        } else if let Some(name) = line.strip_prefix("test ").and_then(|l| l.strip_suffix(" ... FAILED")) {
            failed.push(name.to_owned());
        }
    }
    (passed, failed)
}

/// The PIDs of a process's descendants, deepest first
/// (`/proc/PID/task/TID/children`).
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return found };
    for task in tasks.flatten() {
        let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
            found.extend(descendants(child));
            found.push(child);
        }
    }
    found
}

fn signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no pointer arguments; the PIDs are our child's
        // and its descendants', read just before.
        unsafe { libc::kill(pid, signal) };
    }
}

/// Kills a child that overstayed and everything it started, by PID,
/// deepest first, then reaps it.
fn stop_tree(child: &mut Child) {
    for pid in descendants(child.id()) {
        signal(pid, libc::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// What keeps every CPU busy during the runs.
enum Hog {
    StressNg { child: Child, cpus: usize },
    Threads { stop: Arc<AtomicBool>, threads: Vec<JoinHandle<()>> },
}

impl Hog {
    /// `stress-ng --cpu CPUS` (installed if missing), ending on its own
    /// after `bound` at the latest; busy-loop threads if it cannot run.
    fn start(cpus: usize, bound: Duration) -> Result<Self> {
        match setup::install_packages(&[("stress-ng", "stress-ng")], "unit-stress") {
            Ok(()) => {
                let child = Command::new("stress-ng")
                    .args(["--cpu", &cpus.to_string(), "--timeout", &format!("{}s", bound.as_secs()), "--quiet"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .context("starting stress-ng")?;
                let mut hog = Hog::StressNg { child, cpus };
                // Its workers start at once; give them a moment, then make
                // sure it did not refuse its arguments.
                std::thread::sleep(Duration::from_millis(500));
                hog.check_running()?;
                Ok(hog)
            }
            Err(error) => {
                eprintln!("xtask: unit-stress: stress-ng unavailable ({error:#}); busy-loop threads instead");
                let stop = Arc::new(AtomicBool::new(false));
                let threads = (0..cpus)
                    .map(|_| {
                        let stop = Arc::clone(&stop);
                        std::thread::spawn(move || {
                            let mut x = 0u64;
                            while !stop.load(Ordering::Relaxed) {
                                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                            }
                        })
                    })
                    .collect();
                Ok(Hog::Threads { stop, threads })
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Hog::StressNg { cpus, .. } => format!("`stress-ng --cpu {cpus}` (one busy worker per CPU)"),
            Hog::Threads { threads, .. } => format!("{} busy-loop threads (one per CPU)", threads.len()),
        }
    }

    fn check_running(&mut self) -> Result<()> {
        if let Hog::StressNg { child, .. } = self {
            if let Some(status) = child.try_wait()? {
                bail!("stress-ng stopped early ({status})");
            }
        }
        Ok(())
    }

    /// Stops the hog: SIGTERM to stress-ng's PID (it stops its workers and
    /// waits for them), killed by PID with its workers if it lingers.
    fn stop(&mut self) -> Result<()> {
        match self {
            Hog::StressNg { child, .. } => {
                if child.try_wait()?.is_some() {
                    return Ok(());
                }
                signal(child.id(), libc::SIGTERM);
                if wait_for_exit(child, HOG_STOP_TIMEOUT)?.is_none() {
                    stop_tree(child);
                    bail!("stress-ng did not stop within {} s of SIGTERM; killed", HOG_STOP_TIMEOUT.as_secs());
                }
            }
            Hog::Threads { stop, threads } => {
                stop.store(true, Ordering::Relaxed);
                for thread in threads.drain(..) {
                    let _ = thread.join();
                }
            }
        }
        Ok(())
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            eprintln!("xtask: unit-stress: {error:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_test_output_is_summarized() {
        let output = "running 3 tests\ntest a::b ... ok\ntest a::c ... FAILED\ntest d ... ignored\n\n\
                      test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out\n\
                      test result: ok. 41 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.2s\n";
        assert_eq!(summarize(output), (42, vec!["a::c".to_owned()]));
        assert_eq!(summarize("error: could not compile"), (0, Vec::new()));
    }

    #[test]
    fn a_process_without_children_has_no_descendants() {
        assert_eq!(descendants(u32::MAX), Vec::<u32>::new());
    }
}
