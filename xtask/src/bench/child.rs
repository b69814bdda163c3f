//! The bench's child processes: `Spawned`, a process whose stdout is read
//! line by line (the load generator speaks in `word key=value` lines) and
//! that is killed by PID if still running when dropped; `wait_for_exit`,
//! a bounded wait; and the parsing of those `key=value` lines.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    process::{Child, Command, ExitStatus, Stdio},
    str::FromStr,
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// The `key=value` words of a line.
pub fn fields(line: &str) -> HashMap<&str, &str> {
    line.split_whitespace().filter_map(|word| word.split_once('=')).collect()
}

/// The number `name` of a line's fields.
pub fn field<T: FromStr>(fields: &HashMap<&str, &str>, name: &str) -> Result<T> {
    fields
        .get(name)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no number '{name}' in the load generator's report"))
}

/// A child process whose stdout is read line by line; killed by PID if it is
/// still running when dropped.
pub struct Spawned {
    child: Child,
    lines: Receiver<String>,
    shown: String,
}

impl Spawned {
    pub fn start(cmd: &mut Command) -> Result<Self> {
        Self::start_with_stdin(cmd, Stdio::null())
    }

    pub fn start_with_stdin(cmd: &mut Command, stdin: Stdio) -> Result<Self> {
        let shown = format!("{cmd:?}").replace('"', "");
        let mut child = cmd.stdin(stdin).stdout(Stdio::piped()).spawn().with_context(|| format!("starting {shown}"))?;
        let stdout = child.stdout.take().context("the child's stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        Ok(Spawned { child, lines, shown })
    }

    /// Waits for the next line starting with `prefix` (others are skipped).
    pub fn line_starting(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    bail!("{} said no '{prefix}...' within {}s", self.shown, timeout.as_secs())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    bail!("{} ended ({status}) before saying '{prefix}...'", self.shown);
                }
            }
        }
    }

    /// Waits for a clean exit.
    pub fn finish(&mut self, timeout: Duration) -> Result<()> {
        match wait_for_exit(&mut self.child, timeout)? {
            Some(status) if status.success() => Ok(()),
            Some(status) => bail!("{} failed ({status})", self.shown),
            None => bail!("{} did not exit within {}s", self.shown, timeout.as_secs()),
        }
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Child::kill sends SIGKILL to this child's PID.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls until the child exits or `timeout` passes (None).
pub fn wait_for_exit(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
