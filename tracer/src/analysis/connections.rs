//! `connection_leak`: a process's ESTABLISHED sockets rising steadily.

use serde_json::json;

use super::{
    finding,
    fit::steady_rise,
    human_duration, process_label, round,
    window::{socket_pids, Window},
    Finding, Severity,
};

/// ESTABLISHED sockets a process must gain (fitted) to be leaking.
const MIN_ESTABLISHED_RISE: f64 = 5.0;
/// A leak that gained this many ESTABLISHED sockets is critical.
const CRITICAL_ESTABLISHED_RISE: u64 = 50;

/// `connection_leak`: ESTABLISHED sockets of a process rising steadily.
pub(super) fn connection_leaks(window: &Window<'_>, comm: &dyn Fn(u32) -> String) -> Vec<Finding> {
    let mut findings = Vec::new();
    for pid in socket_pids(window) {
        let Some(rise) = steady_rise(&window.state_series(pid, "ESTABLISHED"), MIN_ESTABLISHED_RISE) else {
            continue;
        };
        let per_minute = rise.per_sec * 60.0;
        let summary = format!(
            "{}: ESTABLISHED connections rising {per_minute:.1}/min over {} ({} -> {})",
            process_label(pid, comm),
            human_duration(rise.span_secs),
            rise.first,
            rise.last
        );
        let critical = rise.last.saturating_sub(rise.first) >= CRITICAL_ESTABLISHED_RISE;
        findings.push(finding(
            "connection_leak",
            if critical { Severity::Critical } else { Severity::Warning },
            pid,
            None,
            comm,
            summary,
            json!({
                "start_count": rise.first,
                "current_count": rise.last,
                "rise_per_minute": round(per_minute, 3),
                "r_squared": round(rise.r_squared, 3),
                "window_secs": round(rise.span_secs, 3),
                "samples": rise.samples,
            }),
        ));
    }
    findings
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use crate::{analysis::tests::*, model::Sample};

    fn established_series(counts: impl Iterator<Item = u64>) -> VecDeque<Sample> {
        counts
            .enumerate()
            .map(|(i, n)| with_sockets(sample(i as f64 + 1.0, Vec::new()), PID, &[("ESTABLISHED", n)]))
            .collect()
    }

    #[test]
    fn rising_established_count_is_connection_leak() {
        let mut seed = 11;
        let findings =
            run(&established_series((0..60).map(|i| (10.0 + i as f64 / 3.0 + 2.0 * noise(&mut seed)).round() as u64)));
        assert_eq!(kinds(&findings), ["connection_leak"], "{findings:#?}");
        let leak = &findings[0];
        let per_minute = leak.evidence["rise_per_minute"].as_f64().expect("rise");
        assert!((15.0..25.0).contains(&per_minute), "{per_minute}");
        assert!(leak.evidence["r_squared"].as_f64().expect("r2") >= 0.8);
        assert!(leak.evidence["current_count"].as_u64().expect("count") > 20);
    }

    #[test]
    fn flat_or_warming_up_established_count_is_no_leak() {
        let mut seed = 5;
        let flat = established_series((0..60).map(|_| (10.0 + 3.0 * noise(&mut seed)).round() as u64));
        assert!(run(&flat).is_empty());
        let pool_warm_up = established_series((0..60).map(|i| i.min(20)));
        assert!(run(&pool_warm_up).is_empty());
    }
}
