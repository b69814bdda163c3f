//! Renders what the soak found as Markdown: the verdict lines printed at
//! the end of a run, and SOAK.md (with the date, the machine, the workload,
//! the agent's memory over time and the per-process totals). Pure
//! functions of the findings.

use std::fmt::Write as _;

use super::{
    checks::{RSS_BAND, RSS_MAX_RISE},
    load::{self, Role},
    Findings, INTERVAL, STREAMS, STREAM_RATE,
};
use crate::bench::report::utc;

fn verdict(ok: bool) -> &'static str {
    if ok {
        "pass"
    } else {
        "FAIL"
    }
}

/// The pass criteria, one line each, with their figures.
pub fn summary(f: &Findings) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| criterion | result | figures |\n|---|---|---|");
    match &f.rss {
        Some(rss) => {
            let _ = writeln!(
                out,
                "| current RSS within {:.0}% after the warm-up | {} | {:.1}-{:.1} MiB over {} samples (max/min {:.3}); {} taken during other processes' load not judged |",
                RSS_BAND * 100.0,
                verdict(rss.within_band),
                rss.min_kib / 1024.0,
                rss.max_kib / 1024.0,
                rss.samples,
                rss.max_kib / rss.min_kib,
                f.ticks.iter().filter(|t| t.secs >= f.warmup.as_secs_f64()).count() - rss.samples
            );
            let _ = writeln!(
                out,
                "| no upward trend (fitted line rises < {:.0}% of the mean over the span) | {} | {:+.1} KiB/min, {:+.2}% over the span; first {:.1} MiB, last {:.1} MiB |",
                RSS_MAX_RISE * 100.0,
                verdict(rss.no_upward_trend),
                rss.slope_kib_per_min,
                rss.rise * 100.0,
                rss.first_kib / 1024.0,
                rss.last_kib / 1024.0
            );
        }
        None => {
            let _ = writeln!(out, "| current RSS after the warm-up | FAIL | too few samples |");
        }
    }
    let drops: Vec<String> = f.dropped.iter().map(|(name, value)| format!("`{name}` {value}")).collect();
    let _ = writeln!(
        out,
        "| no event or table drops | {} | {}; highest over the run (Prometheus, report) {} |",
        verdict(f.no_drops()),
        if drops.is_empty() { "no drop counter exported".to_owned() } else { drops.join(", ") },
        f.dropped_ever
    );
    let m = &f.monotonic;
    let _ = writeln!(
        out,
        "| every `_total` series present throughout is monotonic | {} | {} series, {} raw samples, {} decreases ({} series came or went, not checked); {} of {} scrapes up |",
        verdict(m.decreases.is_empty() && m.checked > 0),
        m.checked,
        m.points,
        m.decreases.len(),
        m.partial,
        f.scrapes.1,
        f.scrapes.0
    );
    let _ = writeln!(
        out,
        "| per-process byte totals equal the workload's | {} | {} process names, {} bytes in all |",
        verdict(f.totals_exact()),
        f.totals.len(),
        thousands(f.totals.iter().map(|(_, own, _)| own.tx + own.rx).sum::<u64>())
    );
    for (labels, time, before, after) in m.decreases.iter().take(10) {
        let _ = writeln!(out, "\ndecrease: {labels} at {time:.0}: {before} -> {after}");
    }
    out
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn totals_table(f: &Findings) -> String {
    let mut out = String::from(
        "| role | process name | connections | sent (workload) | sent (agent) | received (workload) | received (agent) | exact |\n\
         |---|---|---:|---:|---:|---:|---:|---|\n",
    );
    for (role, own, (sent, received)) in &f.totals {
        let _ = writeln!(
            out,
            "| {} | `{}` | {} | {} | {} | {} | {} | {} |",
            role.name(),
            role.comm(),
            thousands(own.conns),
            thousands(own.tx),
            thousands(*sent as u64),
            thousands(own.rx),
            thousands(*received as u64),
            if own.tx as f64 == *sent && own.rx as f64 == *received { "yes" } else { "NO" }
        );
    }
    out
}

fn memory_table(f: &Findings) -> String {
    let mut out = String::from(
        "| time | agent RSS | sockets tracked (of other processes) | CLOSE_WAIT pile | judged |\n\
         |---:|---:|---:|---:|---|\n",
    );
    let judged = super::judged(&f.ticks, f.warmup);
    let every = (f.ticks.len() / 40).max(1);
    for (i, tick) in f.ticks.iter().enumerate() {
        let shown = i % every == 0 || i + 1 == f.ticks.len() || tick.foreign_sockets > super::FOREIGN_SOCKETS;
        if !shown {
            continue;
        }
        let why_not = if tick.secs < f.warmup.as_secs_f64() {
            "no (warm-up)"
        } else if judged.iter().any(|(secs, _)| *secs == tick.secs) {
            "yes"
        } else {
            "no (other load)"
        };
        let _ = writeln!(
            out,
            "| {:.0} s | {:.1} MiB | {:.0} ({:.0}) | {:.0} | {why_not} |",
            tick.secs,
            tick.rss_kib as f64 / 1024.0,
            tick.tracked_sockets,
            tick.foreign_sockets,
            tick.close_wait
        );
    }
    out
}

/// SOAK.md.
pub fn file(f: &Findings) -> String {
    let (churn, close_wait, processes) = f.rates;
    let mut out = String::new();
    let failures = f.failures();
    let _ = writeln!(
        out,
        "# Soak\n\n\
         Written by `cargo xtask {}` (not part of `cargo xtask test`). \
         {} of mixed loopback load on the release agent, scraped by a real Prometheus every {} s; \
         memory judged after a {} s warm-up.\n",
        f.args,
        humantime::format_duration(f.duration),
        INTERVAL.as_secs(),
        f.warmup.as_secs()
    );
    let _ = writeln!(
        out,
        "- Run: {}, source {}, {}\n- Machine: {}\n- Agent: `{}`; {:.1} CPU seconds over the run ({:.2}% of one CPU)\n- Verdict: **{}**\n",
        utc(f.started_at),
        f.source,
        f.tracer_version,
        f.machine,
        f.agent_command,
        f.agent_cpu_secs,
        f.agent_cpu_secs / f.duration.as_secs_f64() * 100.0,
        if failures.is_empty() { "pass".to_owned() } else { format!("FAIL ({})", failures.join("; ")) }
    );
    let _ = writeln!(out, "## Criteria\n\n{}", summary(f));
    let _ = writeln!(
        out,
        "## Workload\n\n\
         Processes of the xtask binary (`xtask soak-load ROLE`), each named after its role; \
         each counts what its send and recv calls moved.\n\n\
         - churn: {churn} connections/s from 127.0.0.10-17 in turn (one address pair would run out of ports in \
         TIME_WAIT above ~450/s); {} B request, {} B answer, the client closes first;\n\
         - streams: {STREAMS} long-lived connections, {STREAM_RATE} chunks/s of {} KiB each, each answered with {} B;\n\
         - CLOSE_WAIT pile: {close_wait} connections/s send {} B and close; the server reads to EOF and never \
         closes (at most {} held);\n\
         - short-lived processes: {processes}/s, each connects, sends 1,000-1,096 B and exits \
         ({} ran, {} failed).\n",
        load::CHURN_REQUEST,
        load::CHURN_ANSWER,
        load::STREAM_CHUNK / 1024,
        load::STREAM_ANSWER,
        load::CWAIT_PAYLOAD,
        thousands(load::CWAIT_MAX_HELD),
        thousands(f.short_processes.0),
        f.short_processes.1,
    );
    let _ = writeln!(
        out,
        "## Per-process totals\n\n\
         The agent's cumulative `tracer_tcp_sent_bytes_total` and `tracer_tcp_received_bytes_total`, summed \
         over the series of each process name, after the workload stopped, against the workload's own \
         counts.\n\n{}",
        totals_table(f)
    );
    let _ = writeln!(out, "## Agent memory and sockets over the run\n\n{}", memory_table(f));
    let _ = writeln!(
        out,
        "## Method\n\n\
         - RSS is `VmRSS` of `/proc/PID/status`, read every {} s. After the warm-up (the agent's {}-second \
         history is full by then) it must stay within {:.0}% (max over min), and a least-squares line through \
         it must rise by less than {:.0}% of the mean over the measured span. The agent sees the whole \
         host: a look taken while other processes held more than {:.0} tracked sockets (another workload on a \
         shared machine), and the one after it, is shown but not judged.\n\
         - Drops: every counter of the agent whose name says `dropped`, `untracked` or `lost`, at the end, \
         the report's `events_dropped` and `map_full_drops`, and `tracer_events_dropped_total` in every scrape.\n\
         - Monotonic: the raw samples of every `tracer_*_total` series Prometheus holds (a range selector over \
         the run, so no interpolation); series present within two scrapes of both the start and the end must \
         never go down.\n\
         - Totals: the agent's `/metrics` is read (bounded wait) until each process name shows the workload's \
         exact counts, and the last values read are reported.\n\
         - {} processes: {}.",
        INTERVAL.as_secs(),
        60,
        RSS_BAND * 100.0,
        RSS_MAX_RISE * 100.0,
        super::FOREIGN_SOCKETS,
        Role::ALL.len(),
        Role::ALL.iter().map(|r| format!("`{}`", r.comm())).collect::<Vec<_>>().join(", ")
    );
    out
}
