//! `retransmit_spike`: retransmitted / sent segments of a flow above
//! `--retransmit-ratio`, with enough traffic to mean something.

use std::collections::BTreeMap;

use serde_json::json;

use super::{finding, flow_label, role_arrow, round, window::FlowWindow, Finding, Severity, CRITICAL_FACTOR};
use crate::model::FlowKey;

/// A retransmit ratio means something with this many segments sent...
const MIN_RETRANSMIT_SEGMENTS: u64 = 100;
/// ...or this many retransmits.
const MIN_RETRANSMITS: u64 = 10;
/// Payload per segment assumed when the kernel's segment count is missing
/// or stale (Ethernet MSS with timestamps).
const ASSUMED_MSS: u64 = 1448;

/// `retransmit_spike`: retransmitted / sent segments of a flow above the
/// threshold, with enough traffic to mean something.
pub(super) fn retransmit_spikes(
    totals: &BTreeMap<FlowKey, FlowWindow>,
    threshold: f64,
    comm: &dyn Fn(u32) -> String,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (key, flow) in totals {
        let c = &flow.counters;
        if c.retransmits == 0 {
            continue;
        }
        // The kernel's count includes retransmits but is read only at
        // retransmits and teardown, so for a live socket it may be stale or
        // missing; bytes sent give a floor, and the larger floor is nearer.
        let estimate = c.tx_bytes.div_ceil(ASSUMED_MSS).saturating_add(c.retransmits);
        let (segments, estimated) = if c.segments_out >= estimate { (c.segments_out, false) } else { (estimate, true) };
        let enough = segments >= MIN_RETRANSMIT_SEGMENTS || c.retransmits >= MIN_RETRANSMITS;
        let ratio = c.retransmits as f64 / segments as f64;
        if !enough || segments == 0 || ratio.is_nan() || ratio <= threshold {
            continue;
        }
        let of = if estimated { format!("~{segments} estimated from bytes sent") } else { segments.to_string() };
        let summary = format!(
            "{}: {:.1}% of sent segments retransmitted ({} of {of}; threshold {:.1}%)",
            flow_label(key, comm, role_arrow(key.role)),
            ratio * 100.0,
            c.retransmits,
            threshold * 100.0
        );
        findings.push(finding(
            "retransmit_spike",
            if ratio >= CRITICAL_FACTOR * threshold { Severity::Critical } else { Severity::Warning },
            key.pid,
            Some(key),
            comm,
            summary,
            json!({
                "retransmits": c.retransmits,
                "segments_out": segments,
                "segments_estimated": estimated,
                "segments_reported": c.segments_out,
                "tx_bytes": c.tx_bytes,
                "ratio": round(ratio, 4),
                "threshold": threshold,
            }),
        ));
    }
    findings
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use crate::model::Flow;
    use crate::{
        analysis::{tests::*, Severity},
        model::Counters,
    };

    #[test]
    fn retransmit_ratio_above_threshold_is_spike() {
        let key = client(PID, "203.0.113.5", 443);
        // The kernel's count (data, retransmits and ACKs) exceeds what the bytes
        // imply, so it is the denominator.
        let lossy = Counters { tx_bytes: 90 * 1448, retransmits: 5, segments_out: 100, ..Counters::default() };
        let findings = run(&totals_series(key, lossy, 10));
        assert_eq!(kinds(&findings), ["retransmit_spike"], "{findings:#?}");
        let spike = &findings[0];
        assert_eq!(
            (spike.evidence["retransmits"].as_u64(), spike.evidence["segments_out"].as_u64()),
            (Some(50), Some(1000))
        );
        assert_eq!(spike.evidence["ratio"], 0.05);
        assert_eq!(spike.evidence["segments_estimated"], false);
        assert_eq!(spike.severity, Severity::Warning);
        assert!(spike.summary.starts_with("pid 4242 (p4242) -> 203.0.113.5:443: 5.0% of sent segments"));
    }

    #[test]
    fn retransmits_below_threshold_or_on_little_traffic_are_no_spike() {
        let key = client(PID, "203.0.113.5", 443);
        let healthy = Counters { tx_bytes: 100 * 1448, retransmits: 1, segments_out: 100, ..Counters::default() };
        assert!(run(&totals_series(key, healthy, 10)).is_empty());
        let tiny = Counters { tx_bytes: 10 * 1448, retransmits: 2, segments_out: 20, ..Counters::default() };
        assert!(run(&totals_series(key, tiny, 1)).is_empty());
    }

    #[test]
    fn unknown_segment_count_is_estimated_from_bytes() {
        let key = client(PID, "203.0.113.5", 443);
        let unknown = Counters { tx_bytes: 1000 * 1448, retransmits: 40, segments_out: 0, ..Counters::default() };
        let findings = run(&totals_series(key, unknown, 1));
        assert_eq!(kinds(&findings), ["retransmit_spike"], "{findings:#?}");
        assert_eq!(findings[0].evidence["segments_estimated"], true);
        assert_eq!(findings[0].evidence["segments_out"], 1040);
        assert!(findings[0].summary.contains("estimated from bytes sent"));
    }

    #[test]
    fn flow_totals_are_used_without_samples() {
        let flow = Flow {
            key: client(PID, "203.0.113.5", 443),
            comm: comm(PID),
            identity: None,
            counters: Counters {
                tx_bytes: 1000 * 1448,
                retransmits: 100,
                opened: 1,
                segments_out: 1100,
                ..Counters::default()
            },
            health: Default::default(),
        };
        let findings = run_with(&VecDeque::new(), &[], &[flow], &defaults());
        assert_eq!(kinds(&findings), ["retransmit_spike"], "{findings:#?}");
        assert_eq!(findings[0].port, Some(443));
    }
}
