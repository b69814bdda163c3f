//! The human-readable report: findings first (most severe first), then top
//! flows (with their latest RTT, mean connect latency and largest receive
//! backlog), processes with socket states, and CLOSE_WAIT sockets. When any
//! process runs in a container, flows and processes gain a CONTAINER column
//! (`namespace/pod/container`, the name, or the 12-character id; `-` for
//! host processes). Process and container names are untrusted: control
//! characters are escaped so every record stays on one line.

use std::{fmt::Write as _, net::IpAddr, sync::Arc};

use super::{report::rfc3339, Snapshot};
use crate::{
    model::{container::Identity, Role},
    units::{bytes, duration_us, rate},
};

/// Escapes control characters (newline, tab, ...) and backslashes.
pub(crate) fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V6(_) => format!("[{addr}]:{port}"),
        IpAddr::V4(_) => format!("{addr}:{port}"),
    }
}

/// The CONTAINER cell of a process.
fn container_cell(identity: Option<&Arc<Identity>>) -> String {
    identity.and_then(|i| i.container.as_ref()).map_or_else(|| "-".to_owned(), |c| printable(&c.label()))
}

/// `cell` and a space when the column is shown, else nothing.
fn column(show: bool, cell: &str) -> String {
    if show {
        format!("{cell:<24} ")
    } else {
        String::new()
    }
}

/// Renders `report` as text tables, at most `top` rows per section.
pub(crate) fn render(report: &Snapshot, top: usize) -> String {
    let mut out = String::new();
    let containers = report.processes.iter().any(|p| p.identity.as_ref().is_some_and(|i| i.container.is_some()));
    let secs = report.duration_secs;
    let _ = writeln!(
        out,
        "tracer report: {} from {} ({:.1}s, {} backend)",
        if report.flows.is_empty() { "no TCP traffic" } else { "TCP traffic" },
        rfc3339(report.started_at),
        secs,
        report.backend
    );

    let _ = writeln!(out, "\nFindings");
    if report.findings.is_empty() {
        let _ = writeln!(out, "  none");
    }
    let mut findings: Vec<_> = report.findings.iter().collect();
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    for finding in findings {
        let _ = writeln!(out, "  [{}] {}: {}", finding.severity.as_str(), finding.kind, printable(&finding.summary));
    }

    let _ = writeln!(out, "\nTop flows ({} in all)", report.flows.len());
    let _ = writeln!(
        out,
        "  {:>7} {:<16} {}{:<6} {:<28} {:>10} {:>10} {:>12} {:>12} {:>7} {:>6} {:>6} {:>6} {:>6} {:>9} {:>9} {:>10}",
        "PID",
        "COMM",
        column(containers, "CONTAINER"),
        "ROLE",
        "REMOTE (SERVICE PORT)",
        "TX",
        "RX",
        "TX RATE",
        "RX RATE",
        "RETRANS",
        "OPEN",
        "CLOSE",
        "FAIL",
        "RST",
        "RTT",
        "CONNECT",
        "RECV-Q"
    );
    for flow in report.flows.iter().take(top) {
        let (key, c) = (&flow.key, &flow.counters);
        let remote = match key.role {
            Role::Client => format!("-> {}", endpoint(key.remote, key.port)),
            Role::Server => format!("<- {} :{}", key.remote, key.port),
        };
        let health = &flow.health;
        let _ = writeln!(
            out,
            "  {:>7} {:<16} {}{:<6} {:<28} {:>10} {:>10} {:>12} {:>12} {:>7} {:>6} {:>6} {:>6} {:>6} {:>9} {:>9} {:>10}",
            key.pid,
            printable(&flow.comm),
            column(containers, &container_cell(flow.identity.as_ref())),
            key.role.as_str(),
            remote,
            bytes(c.tx_bytes),
            bytes(c.rx_bytes),
            rate(c.tx_bytes, secs),
            rate(c.rx_bytes, secs),
            c.retransmits,
            c.opened,
            c.closed,
            c.failed_connects,
            c.resets(),
            health.rtt_last_us.map_or_else(|| "-".to_owned(), duration_us),
            health.connect.mean().map_or_else(|| "-".to_owned(), duration_us),
            health.recv_queue.map_or_else(|| "-".to_owned(), |q| bytes(q.max)),
        );
    }

    let _ = writeln!(out, "\nProcesses ({} in all)", report.processes.len());
    let _ = writeln!(
        out,
        "  {:>7} {:<16} {}{:>10} {:>10} {:>7} {:>6} {:>6} {:>6} {:>9}  SOCKETS",
        "PID",
        "COMM",
        column(containers, "CONTAINER"),
        "TX",
        "RX",
        "RETRANS",
        "OPEN",
        "CLOSE",
        "FAIL",
        "RST OUT/IN"
    );
    for process in report.processes.iter().take(top) {
        let c = &process.counters;
        let sockets: Vec<String> = process.sockets.iter().map(|(state, n)| format!("{state}={n}")).collect();
        let _ = writeln!(
            out,
            "  {:>7} {:<16} {}{:>10} {:>10} {:>7} {:>6} {:>6} {:>6} {:>9}  {}",
            process.pid,
            printable(&process.comm),
            column(containers, &container_cell(process.identity.as_ref())),
            bytes(c.tx_bytes),
            bytes(c.rx_bytes),
            c.retransmits,
            c.opened,
            c.closed,
            c.failed_connects,
            format!("{}/{}", c.resets_sent, c.resets_received),
            sockets.join(" ")
        );
    }

    if !report.close_wait.is_empty() {
        let _ = writeln!(out, "\nCLOSE_WAIT sockets ({}, oldest first)", report.close_wait.len());
        let _ = writeln!(out, "  {:>7} {:<16} {:<28} {:<28} {:>10}", "PID", "COMM", "LOCAL", "REMOTE", "AGE");
        for socket in report.close_wait.iter().take(top) {
            let _ = writeln!(
                out,
                "  {:>7} {:<16} {:<28} {:<28} {:>9.1}s{}",
                socket.pid,
                printable(&socket.comm),
                endpoint(socket.local.ip(), socket.local.port()),
                endpoint(socket.remote.ip(), socket.remote.port()),
                socket.age_secs,
                if socket.age_is_lower_bound { "+" } else { "" }
            );
        }
    }

    let host: Vec<String> = report.host_sockets.iter().map(|(state, n)| format!("{state}={n}")).collect();
    let _ = writeln!(out, "\nHost sockets: {}", if host.is_empty() { "none".into() } else { host.join(" ") });
    let _ = writeln!(
        out,
        "Tracer: {} events, {} dropped, {} untracked (map full), {} live sockets",
        report.stats.events_total, report.stats.events_dropped, report.stats.map_full_drops, report.live_sockets
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_control_characters() {
        assert_eq!(printable("a\nb\tc\\d\"<"), "a\\nb\\tc\\\\d\"<");
    }
}
