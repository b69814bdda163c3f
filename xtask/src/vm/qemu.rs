//! Boots one guest under qemu with a hard time limit, copies its serial
//! console to a log file (and, prefixed, to our stderr), and reads the
//! guest check's exit status from the `/init` marker line.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::initramfs::RESULT_MARKER;

/// How the guest CPU is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation; only where the CPU offers it.
    Kvm,
    /// qemu's emulator: slower, but boots stock kernels anywhere (the
    /// paravirtual nested KVM of these machines cannot).
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// KVM if the CPU advertises vmx/svm and /dev/kvm opens, else TCG.
    /// `TRACER_VM_ACCEL=tcg|kvm` overrides.
    pub fn detect() -> Accel {
        match std::env::var("TRACER_VM_ACCEL").as_deref() {
            Ok("tcg") => return Accel::Tcg,
            Ok("kvm") => return Accel::Kvm,
            _ => {}
        }
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let has_virt = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|flag| flag == "vmx" || flag == "svm"));
        let kvm_opens = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
        if has_virt && kvm_opens {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }
}

/// One boot to run.
pub struct Boot<'a> {
    pub qemu: &'a Path,
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mib: u32,
    pub timeout: Duration,
    /// Added to the kernel command line (for init's environment).
    pub extra_cmdline: &'a str,
    pub log: &'a Path,
    /// Put before each console line echoed to stderr.
    pub prefix: &'a str,
}

/// How a boot ended.
pub struct Outcome {
    /// The guest check's exit status, if the marker was printed.
    pub guest_exit: Option<i32>,
    pub timed_out: bool,
    pub elapsed: Duration,
    pub log: PathBuf,
}

/// After the marker, how long the guest may take to power off.
const POWEROFF_GRACE: Duration = Duration::from_secs(20);

impl Boot<'_> {
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(self.qemu);
        match self.accel {
            Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => cmd.args(["-accel", "tcg", "-cpu", "max"]),
        };
        cmd.args(["-m", &self.memory_mib.to_string(), "-smp", &self.cpus.to_string()])
            // The test traffic is on the guest's loopback; no NIC, no display,
            // no monitor: the serial console on stdout is the only channel.
            .args(["-nic", "none", "-no-reboot", "-display", "none", "-monitor", "none", "-serial", "stdio"])
            .arg("-kernel")
            .arg(self.kernel)
            .arg("-initrd")
            .arg(self.initramfs)
            .arg("-append")
            .arg(format!("console=ttyS0 panic=-1 quiet {}", self.extra_cmdline));
        cmd
    }

    /// Boots and waits for the guest to power off, at most `timeout`.
    pub fn run(&self) -> Result<Outcome> {
        let mut log = File::create(self.log).with_context(|| format!("creating {}", self.log.display()))?;
        let mut cmd = self.command();
        writeln!(log, "# {cmd:?}").context("writing the console log")?;
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.qemu.display()))?;
        let (marker_tx, marker_rx) = mpsc::channel();
        let stdout = child.stdout.take().context("qemu has no stdout")?;
        let stderr = child.stderr.take().context("qemu has no stderr")?;
        let prefix = self.prefix.to_owned();
        let console = thread::spawn(move || -> std::io::Result<()> {
            for line in BufReader::new(stdout).split(b'\n') {
                let line = String::from_utf8_lossy(&line?).trim_end_matches('\r').to_owned();
                writeln!(log, "{line}")?;
                eprintln!("{prefix}{line}");
                if let Some(code) = parse_marker(&line) {
                    // The receiver is gone only when the wait is over.
                    let _ = marker_tx.send(code);
                }
            }
            log.flush()
        });
        let qemu_errors = thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
            text
        });

        let mut guest_exit = None;
        let mut deadline = started + self.timeout;
        let mut timed_out = false;
        loop {
            if let Ok(code) = marker_rx.recv_timeout(Duration::from_millis(100)) {
                guest_exit = Some(code);
                deadline = deadline.min(Instant::now() + POWEROFF_GRACE);
            }
            if child.try_wait().context("waiting for qemu")?.is_some() {
                break;
            }
            if Instant::now() >= deadline {
                timed_out = guest_exit.is_none();
                stop(&mut child);
                break;
            }
        }
        let elapsed = started.elapsed();
        match console.join() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("{}warning: console log incomplete: {err}", self.prefix),
            Err(_) => eprintln!("{}warning: the console reader panicked", self.prefix),
        }
        // A marker sent just before qemu exited.
        if guest_exit.is_none() {
            guest_exit = marker_rx.try_recv().ok();
        }
        let qemu_errors = qemu_errors.join().unwrap_or_default();
        if !qemu_errors.trim().is_empty() {
            eprintln!("{}qemu: {}", self.prefix, qemu_errors.trim());
        }
        Ok(Outcome { guest_exit, timed_out, elapsed, log: self.log.to_owned() })
    }
}

/// Kills qemu by its PID and reaps it.
fn stop(child: &mut Child) {
    if let Err(err) = child.kill() {
        eprintln!("xtask: warning: cannot kill qemu (pid {}): {err}", child.id());
    }
    let _ = child.wait();
}

fn parse_marker(line: &str) -> Option<i32> {
    let rest = &line[line.find(RESULT_MARKER)? + RESULT_MARKER.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The last `lines` lines of the console log, for a failure report.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_is_found_even_after_console_noise() {
        assert_eq!(parse_marker("TRACER-VM-RESULT exit=0"), Some(0));
        assert_eq!(parse_marker("[    3.1] random: crng TRACER-VM-RESULT exit=17"), Some(17));
        assert_eq!(parse_marker("TRACER-VM-RESULT exit="), None);
        assert_eq!(parse_marker("guest-check: PASS"), None);
    }
}
