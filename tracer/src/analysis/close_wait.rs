//! `close_wait_leak`: sockets in CLOSE_WAIT (the peer closed, the process
//! never did) older than `--close-wait-age`, or a CLOSE_WAIT count rising
//! steadily.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::{
    finding,
    fit::steady_rise,
    human_duration, process_label, round,
    window::{socket_pids, Window},
    Finding, Severity,
};
use crate::model::CloseWait;

/// CLOSE_WAIT should stay at 0, so a smaller rise already counts.
const MIN_CLOSE_WAIT_RISE: f64 = 3.0;
/// This many CLOSE_WAIT sockets in one process is critical.
const CRITICAL_CLOSE_WAIT_COUNT: u64 = 50;
/// CLOSE_WAIT older than this many times the threshold is critical.
const CRITICAL_CLOSE_WAIT_AGE_FACTOR: f64 = 10.0;
/// Remote addresses listed in a CLOSE_WAIT finding.
const MAX_REMOTES: usize = 10;

/// `close_wait_leak`: a process holding CLOSE_WAIT sockets older than the
/// threshold, or a CLOSE_WAIT count rising steadily.
pub(super) fn close_wait_leaks(
    window: &Window<'_>,
    close_wait: &[CloseWait],
    age_threshold: f64,
    comm: &dyn Fn(u32) -> String,
) -> Vec<Finding> {
    let mut by_pid: BTreeMap<u32, Vec<&CloseWait>> = BTreeMap::new();
    for socket in close_wait {
        by_pid.entry(socket.pid).or_default().push(socket);
    }
    let mut pids = socket_pids(window);
    pids.extend(by_pid.keys().copied());
    let mut findings = Vec::new();
    for pid in pids {
        let sockets = by_pid.get(&pid).map(Vec::as_slice).unwrap_or_default();
        let aged = sockets.iter().filter(|s| s.age_secs >= age_threshold).count() as u64;
        let series = window.state_series(pid, "CLOSE_WAIT");
        let rising = steady_rise(&series, MIN_CLOSE_WAIT_RISE);
        if aged == 0 && rising.is_none() {
            continue;
        }
        // The list is current at report time; the series only at the last
        // sample, so it speaks only when the list has nothing for the pid.
        let count = match sockets.len() {
            0 => series.last().map(|&(_, c)| c).unwrap_or(0),
            len => len as u64,
        };
        let oldest = sockets.iter().max_by(|a, b| a.age_secs.total_cmp(&b.age_secs));
        // Sorted as they read.
        let remotes: BTreeSet<String> = sockets.iter().map(|s| s.remote.ip().to_string()).collect();
        let critical = count >= CRITICAL_CLOSE_WAIT_COUNT
            || (age_threshold > 0.0
                && oldest.is_some_and(|o| o.age_secs >= CRITICAL_CLOSE_WAIT_AGE_FACTOR * age_threshold));

        let mut summary = format!("{}: {count} socket(s) in CLOSE_WAIT", process_label(pid, comm));
        if let Some(oldest) = oldest.filter(|_| aged > 0) {
            let at_least = if oldest.age_is_lower_bound { " or more" } else { "" };
            summary.push_str(&format!(
                ", {aged} older than {} (oldest {}{at_least})",
                human_duration(age_threshold),
                human_duration(oldest.age_secs)
            ));
        }
        if let Some(rise) = rising {
            summary.push_str(&format!(
                ", rising {:.1}/min over {} ({} -> {})",
                rise.per_sec * 60.0,
                human_duration(rise.span_secs),
                rise.first,
                rise.last
            ));
        }
        findings.push(finding(
            "close_wait_leak",
            if critical { Severity::Critical } else { Severity::Warning },
            pid,
            None,
            comm,
            summary,
            json!({
                "count": count,
                "older_than_threshold": aged,
                "oldest_age_secs": oldest.map(|o| round(o.age_secs, 3)),
                "age_is_lower_bound": oldest.is_some_and(|o| o.age_is_lower_bound),
                "remotes": remotes.iter().take(MAX_REMOTES).collect::<Vec<_>>(),
                "remotes_total": remotes.len(),
                "threshold": age_threshold,
                "rising": rising.is_some(),
                "rise_per_minute": rising.map(|r| round(r.per_sec * 60.0, 3)),
                "r_squared": rising.map(|r| round(r.r_squared, 3)),
                "window_secs": rising.map(|r| round(r.span_secs, 3)),
            }),
        ));
    }
    findings
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use serde_json::json;

    use crate::{
        analysis::{tests::*, Severity},
        model::Sample,
    };

    #[test]
    fn old_close_wait_sockets_are_close_wait_leak() {
        let sockets = [
            close_wait_socket(7, "10.0.0.1", 45.0, true),
            close_wait_socket(7, "10.0.0.1", 40.0, false),
            close_wait_socket(7, "10.0.0.2", 5.0, false),
        ];
        let findings = run_with(&VecDeque::new(), &sockets, &[], &defaults());
        assert_eq!(kinds(&findings), ["close_wait_leak"], "{findings:#?}");
        let leak = &findings[0];
        assert_eq!((leak.pid, leak.severity), (7, Severity::Warning));
        assert_eq!(leak.evidence["count"], 3);
        assert_eq!(leak.evidence["older_than_threshold"], 2);
        assert_eq!(leak.evidence["oldest_age_secs"], 45.0);
        assert_eq!(leak.evidence["age_is_lower_bound"], true);
        assert_eq!(leak.evidence["remotes"], json!(["10.0.0.1", "10.0.0.2"]));
        assert_eq!(leak.summary, "pid 7 (p7): 3 socket(s) in CLOSE_WAIT, 2 older than 30s (oldest 45s or more)");

        let ancient = [close_wait_socket(7, "10.0.0.1", 400.0, false)];
        let findings = run_with(&VecDeque::new(), &ancient, &[], &defaults());
        assert_eq!(findings[0].severity, Severity::Critical);
    }

    #[test]
    fn young_close_wait_sockets_are_no_leak() {
        let sockets = [close_wait_socket(7, "10.0.0.1", 5.0, false)];
        assert!(run_with(&VecDeque::new(), &sockets, &[], &defaults()).is_empty());
    }

    #[test]
    fn rising_close_wait_count_is_close_wait_leak() {
        let samples: VecDeque<Sample> = (0..60)
            .map(|i| with_sockets(sample(i as f64 + 1.0, Vec::new()), 9, &[("ESTABLISHED", 4), ("CLOSE_WAIT", i / 4)]))
            .collect();
        let findings = run(&samples);
        assert_eq!(kinds(&findings), ["close_wait_leak"], "{findings:#?}");
        assert_eq!(findings[0].evidence["rising"], true);
        assert_eq!(findings[0].evidence["count"], 14);
        assert!(findings[0].summary.contains("rising"), "{}", findings[0].summary);
    }
}
