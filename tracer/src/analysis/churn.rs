//! `connection_churn`: a flow opening connections faster than
//! `--churn-rate` over the window, in several intervals (no reuse).

use std::collections::BTreeMap;

use serde_json::json;

use super::{
    finding, flow_label, human_duration, role_arrow, round,
    window::{FlowWindow, Window},
    Finding, Severity, CRITICAL_FACTOR,
};
use crate::model::FlowKey;

/// Churn must show opens in at least this many intervals (not one burst).
const MIN_CHURN_INTERVALS: usize = 3;

/// `connection_churn`: a flow opening connections faster than the threshold
/// over the window, in several intervals.
pub(super) fn connection_churn(
    window: &Window<'_>,
    totals: &BTreeMap<FlowKey, FlowWindow>,
    threshold: f64,
    comm: &dyn Fn(u32) -> String,
) -> Vec<Finding> {
    let span_secs = window.span_secs();
    if span_secs.is_nan() || span_secs <= 0.0 {
        return Vec::new();
    }
    let mut findings = Vec::new();
    for (key, flow) in totals {
        let c = &flow.counters;
        let per_sec = c.opened as f64 / span_secs;
        if flow.opening_intervals < MIN_CHURN_INTERVALS || per_sec.is_nan() || per_sec <= threshold {
            continue;
        }
        let summary = format!(
            "{}: {per_sec:.1} new connections/s over {} ({} opened, {} closed; threshold {threshold}/s)",
            flow_label(key, comm, role_arrow(key.role)),
            human_duration(span_secs),
            c.opened,
            c.closed
        );
        findings.push(finding(
            "connection_churn",
            if per_sec >= CRITICAL_FACTOR * threshold { Severity::Critical } else { Severity::Warning },
            key.pid,
            Some(key),
            comm,
            summary,
            json!({
                "opened": c.opened,
                "closed": c.closed,
                "failed_connects": c.failed_connects,
                "resets": c.resets(),
                "per_sec": round(per_sec, 3),
                "threshold": threshold,
                "window_secs": round(span_secs, 3),
                "intervals_with_opens": flow.opening_intervals,
            }),
        ));
    }
    findings
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use crate::{
        analysis::{tests::*, Severity},
        model::Sample,
    };

    #[test]
    fn many_short_connections_are_churn() {
        let key = client(PID, "198.51.100.7", 443);
        let findings = run(&totals_series(key, churn(20), 60));
        assert_eq!(kinds(&findings), ["connection_churn"], "{findings:#?}");
        assert_eq!(findings[0].evidence["per_sec"], 20.0);
        assert_eq!(findings[0].evidence["opened"], 1200);
        assert_eq!(findings[0].severity, Severity::Warning);
    }

    #[test]
    fn slow_or_single_burst_connections_are_no_churn() {
        let key = client(PID, "198.51.100.7", 443);
        assert!(run(&totals_series(key, churn(5), 60)).is_empty());
        let mut burst: VecDeque<Sample> = (0..60).map(|i| sample(i as f64 + 1.0, Vec::new())).collect();
        burst[30] = sample(31.0, vec![(key, churn(2000))]);
        assert!(run(&burst).is_empty());
    }
}
