//! The human-readable report: findings first (most severe first), then top
//! flows, processes with socket states, and CLOSE_WAIT sockets. Process
//! names are untrusted: control characters are escaped so every record
//! stays on one line.

use std::fmt::Write as _;

use crate::report::Report;

/// Escapes control characters (newline, tab, ...) and backslashes.
pub fn printable(text: &str) -> String {
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

/// `1536` -> `1.5 KiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Bytes per second in human units.
pub fn rate(n: u64, secs: f64) -> String {
    if secs <= 0.0 {
        return "-".into();
    }
    format!("{}/s", bytes((n as f64 / secs).round() as u64))
}

fn endpoint(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// Renders `report` as text tables, at most `top` rows per section.
pub fn render(report: &Report, top: usize) -> String {
    let mut out = String::new();
    let secs = report.duration_secs;
    let _ = writeln!(
        out,
        "tracer report: {} from {} ({:.1}s, {} backend)",
        if report.flows.is_empty() { "no TCP traffic" } else { "TCP traffic" },
        report.started_at,
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
        "  {:>7} {:<16} {:<6} {:<28} {:>10} {:>10} {:>12} {:>12} {:>7} {:>6} {:>6} {:>6} {:>6}",
        "PID",
        "COMM",
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
        "RST"
    );
    for flow in report.flows.iter().take(top) {
        let remote = match flow.role {
            crate::report::Role::Client => format!("-> {}", endpoint(&flow.remote_addr, flow.remote_port)),
            crate::report::Role::Server => format!("<- {} :{}", flow.remote_addr, flow.local_port),
        };
        let _ = writeln!(
            out,
            "  {:>7} {:<16} {:<6} {:<28} {:>10} {:>10} {:>12} {:>12} {:>7} {:>6} {:>6} {:>6} {:>6}",
            flow.pid,
            printable(&flow.comm),
            flow.role.as_str(),
            remote,
            bytes(flow.tx_bytes),
            bytes(flow.rx_bytes),
            rate(flow.tx_bytes, secs),
            rate(flow.rx_bytes, secs),
            flow.retransmits,
            flow.connections_opened,
            flow.connections_closed,
            flow.failed_connects,
            flow.resets
        );
    }

    let _ = writeln!(out, "\nProcesses ({} in all)", report.processes.len());
    let _ = writeln!(
        out,
        "  {:>7} {:<16} {:>10} {:>10} {:>7} {:>6} {:>6} {:>6} {:>9}  SOCKETS",
        "PID", "COMM", "TX", "RX", "RETRANS", "OPEN", "CLOSE", "FAIL", "RST OUT/IN"
    );
    for process in report.processes.iter().take(top) {
        let sockets: Vec<String> = process.sockets.iter().map(|(state, n)| format!("{state}={n}")).collect();
        let _ = writeln!(
            out,
            "  {:>7} {:<16} {:>10} {:>10} {:>7} {:>6} {:>6} {:>6} {:>9}  {}",
            process.pid,
            printable(&process.comm),
            bytes(process.tx_bytes),
            bytes(process.rx_bytes),
            process.retransmits,
            process.connections_opened,
            process.connections_closed,
            process.failed_connects,
            format!("{}/{}", process.resets_sent, process.resets_received),
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
                endpoint(&socket.local_addr, socket.local_port),
                endpoint(&socket.remote_addr, socket.remote_port),
                socket.age_secs,
                if socket.age_is_lower_bound { "+" } else { "" }
            );
        }
    }

    let host: Vec<String> = report.host.sockets.iter().map(|(state, n)| format!("{state}={n}")).collect();
    let _ = writeln!(out, "\nHost sockets: {}", if host.is_empty() { "none".into() } else { host.join(" ") });
    let _ = writeln!(
        out,
        "Tracer: {} events, {} dropped, {} untracked (map full), {} live sockets",
        report.tracer.events_total,
        report.tracer.events_dropped,
        report.tracer.map_full_drops,
        report.tracer.live_sockets
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

    #[test]
    fn human_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(rate(2048, 2.0), "1.0 KiB/s");
        assert_eq!(rate(1, 0.0), "-");
    }
}
