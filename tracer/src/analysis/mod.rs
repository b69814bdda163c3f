//! Findings: the report's verdicts (`traffic_growth`, `throughput_decay`,
//! `connection_leak`, `close_wait_leak`, `retransmit_spike`,
//! `connection_churn`), computed by pure functions over the model's time
//! series, the current CLOSE_WAIT sockets and per-flow totals. No I/O and no
//! aya: everything arrives in [`Input`], so every rule is tested on synthetic
//! series.
//!
//! How the rules avoid crying wolf:
//! - Rates are interval averages, so a rate series is fitted at interval
//!   midpoints, weighted by interval length, and the fitted start/end rates
//!   are read at the first and last points (a 200 -> 800 KiB/s ramp reads 4.0).
//! - A series covers its key's active span, from its first active interval
//!   to its last. Either end is partial when it is not the window's own end
//!   (the key started, or stopped, inside it) and is left out: a ramp that
//!   ended before the trace did still grew (silent intervals after it would
//!   look like a collapse and spoil the fit), and a flow that starts
//!   mid-window at a constant rate did not. A download that finished is
//!   judged on the part where it ran. The evidence says which part that is
//!   (`first_active_secs`, `last_active_secs`).
//! - A trend needs >= 5 points, a mean of >= 1 KiB/s and R² >= 0.6: a lone
//!   burst (R² <= 0.5 even at the end of a 5-point series), a sawtooth or
//!   noise does not pass. Fitted rates below 1 KiB/s count as 1 KiB/s in the
//!   ratio, so a ramp from nothing gives a finite ratio.
//! - A process-level trend is dropped when exactly one of its flows carries
//!   the same finding (same kind and direction): the flow says it with the
//!   remote. Aggregate trends no single flow shows stay process-level.
//! - Socket counts (ESTABLISHED, CLOSE_WAIT) must rise steadily: positive
//!   slope, R² >= 0.8, a fitted rise of a few sockets, and each third of the
//!   series higher on average than the one before (a pool that warmed up and
//!   then stayed flat is not a leak).
//! - Retransmit ratios and churn need enough traffic, or opens in several
//!   intervals, to mean something.
//!
//! One file per finding family ([`traffic`], [`connections`],
//! [`close_wait`], [`retransmits`], [`churn`]); what they share is the
//! analysed [`window`] and the [`fit`]ting.

mod churn;
mod close_wait;
mod connections;
#[cfg(test)]
mod eval;
mod fit;
mod health;
mod retransmits;
#[cfg(test)]
mod tests;
mod traffic;
mod window;

use std::{cmp::Reverse, collections::VecDeque, net::SocketAddr};

use serde::Serialize;

use self::window::Window;
use crate::model::{CloseWait, Flow, FlowKey, Role, Sample};

/// Retransmit ratio or churn rate this many times the threshold is critical.
pub(super) const CRITICAL_FACTOR: f64 = 5.0;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// One verdict with the numbers behind it. Serialized as is into the
/// report's `findings` (its fields are that part of the wire format).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Finding {
    /// `traffic_growth`, `throughput_decay`, `connection_leak`,
    /// `close_wait_leak`, `retransmit_spike`, `connection_churn`.
    pub(crate) kind: &'static str,
    pub(crate) severity: Severity,
    pub(crate) pid: u32,
    pub(crate) comm: String,
    pub(crate) remote_addr: Option<String>,
    pub(crate) port: Option<u16>,
    pub(crate) summary: String,
    pub(crate) evidence: serde_json::Value,
}

/// Thresholds of the analysis (the commands fill them from their flags).
#[derive(Debug, Clone)]
pub(crate) struct Thresholds {
    pub(crate) growth_ratio: f64,
    pub(crate) close_wait_age_secs: f64,
    pub(crate) retransmit_ratio: f64,
    pub(crate) churn_rate: f64,
    /// How much a remote's RTT must rise to be `latency_rise`.
    pub(crate) rtt_ratio: f64,
    /// Analyse only the last this-many seconds of history.
    pub(crate) window_secs: Option<f64>,
}

/// What the analysis reads.
pub(crate) struct Input<'a> {
    pub(crate) samples: &'a VecDeque<Sample>,
    pub(crate) close_wait: &'a [CloseWait],
    /// Per-flow totals over the model's window; used only when there are no
    /// samples (the samples give the same totals, restricted to the
    /// analysis window).
    pub(crate) flows: &'a [Flow],
    pub(crate) comm: &'a dyn Fn(u32) -> String,
    /// The kernel's HZ, once measured: the chrono counters count jiffies.
    pub(crate) hz: Option<u32>,
}

/// All findings, most severe first, then by kind, pid and remote.
pub(crate) fn analyze(input: &Input<'_>, thresholds: &Thresholds) -> Vec<Finding> {
    let window = Window::new(input.samples, thresholds.window_secs);
    let totals = window::flow_totals(&window, input);
    let cause =
        |key: &FlowKey| health::likely_cause(&window, key, totals.get(key), thresholds.retransmit_ratio, input.hz);
    let mut findings = traffic::traffic_trends(&window, thresholds.growth_ratio, input.comm, &cause);
    findings.extend(health::health_findings(&window, &totals, thresholds.rtt_ratio, input.hz, input.comm));
    findings.extend(connections::connection_leaks(&window, input.comm));
    findings.extend(close_wait::close_wait_leaks(
        &window,
        input.close_wait,
        thresholds.close_wait_age_secs,
        input.comm,
    ));
    findings.extend(retransmits::retransmit_spikes(&totals, thresholds.retransmit_ratio, input.comm));
    findings.extend(churn::connection_churn(&window, &totals, thresholds.churn_rate, input.comm));
    findings.sort_by(|a, b| order(a).cmp(&order(b)));
    findings
}

/// Most severe first; the rest only makes the order stable.
fn order(finding: &Finding) -> (Reverse<Severity>, &str, u32, Option<&str>, Option<u16>, &str) {
    (
        Reverse(finding.severity),
        finding.kind,
        finding.pid,
        finding.remote_addr.as_deref(),
        finding.port,
        &finding.summary,
    )
}

pub(super) fn finding(
    kind: &'static str,
    severity: Severity,
    pid: u32,
    flow: Option<&FlowKey>,
    comm: &dyn Fn(u32) -> String,
    summary: String,
    evidence: serde_json::Value,
) -> Finding {
    Finding {
        kind,
        severity,
        pid,
        comm: comm(pid),
        remote_addr: flow.map(|f| f.remote.to_string()),
        port: flow.map(|f| f.port),
        summary,
        evidence,
    }
}

pub(super) fn process_label(pid: u32, comm: &dyn Fn(u32) -> String) -> String {
    format!("pid {pid} ({})", comm(pid))
}

/// `pid 1 (curl) -> 1.2.3.4:443` for clients (the port is the remote's);
/// `pid 2 (nginx) :80 <- 1.2.3.4` for servers (the port is ours, the remote's
/// is ephemeral).
pub(super) fn flow_label(key: &FlowKey, comm: &dyn Fn(u32) -> String, arrow: &str) -> String {
    let process = process_label(key.pid, comm);
    match key.role {
        Role::Client => format!("{process} {arrow} {}", SocketAddr::new(key.remote, key.port)),
        Role::Server => format!("{process} :{} {arrow} {}", key.port, key.remote),
    }
}

/// Who connects to whom, for findings without a data direction.
pub(super) fn role_arrow(role: Role) -> &'static str {
    match role {
        Role::Client => "->",
        Role::Server => "<-",
    }
}

pub(super) fn human_duration(secs: f64) -> String {
    if secs.is_nan() || secs < 0.0 {
        "?".to_owned()
    } else if secs < 100.0 {
        format!("{secs:.0}s")
    } else if secs < 100.0 * 60.0 {
        format!("{:.0}m", secs / 60.0)
    } else {
        format!("{:.1}h", secs / 3600.0)
    }
}

pub(super) fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}
