//! tracer's integration tests, all in one binary (ripgrep style). They run
//! the real `tracer` as root against real loopback traffic and check its
//! JSON report number by number. Run them one at a time:
//! `cargo test -p tracer-tests --tests -- --test-threads=1` (as
//! `cargo xtask test` does).
//!
//! - `bytes`: per-flow byte accounting and filters (issue 2);
//! - `lifecycle`: socket states, CLOSE_WAIT, failed connects, resets,
//!   churn, retransmits, sockets that predate the tracer (issue 3);
//! - `cli`: flags, exit codes, `--version`, `doctor`;
//! - `analysis`: findings on real traffic (issue 4);
//! - `race`: sockets destroyed while the tracer reads its tables, counted
//!   once and exactly;
//! - `health`: TCP health (RTT, connect latency, failures by reason,
//!   backlogs, window-limited senders) against the kernel's own numbers
//!   (issue 12);
//! - `reliability`: past the socket table's limit and a full ring buffer,
//!   counts stay exact and losses are counted (issue 13);
//! - `top`: `tracer top` driven in tmux, the pane checked (issue 17).

mod analysis;
mod bytes;
mod cli;
mod containers;
mod health;
mod lifecycle;
mod race;
mod reliability;
mod top;

use std::{process::Command, time::Duration};

use tracer_tests::Proc;

/// How long a traffic process may take to print a line it owes us.
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// The traffic generator of this crate (`src/bin/traffic.rs`).
const TRAFFIC: &str = env!("CARGO_BIN_EXE_traffic");

/// Spawns `traffic ARGS` in the host's network namespace.
fn traffic(name: &str, args: &[&str]) -> Proc {
    let mut command = Command::new(TRAFFIC);
    command.args(args);
    Proc::spawn(name, command)
}

/// Starts `traffic server ARGS` and returns it with its port and pid.
fn server(args: &[&str]) -> (Proc, u16, u32) {
    let mut server = traffic("server", &[&["server"], args].concat());
    let ready = server.expect("ready", LINE_TIMEOUT);
    (server, ready.num("port"), ready.num("pid"))
}
