//! `tracer_findings{comm,kind,remote,severity}`: 1 for each active finding;
//! `remote` is the finding's remote address, `""` when it has none. The
//! first `top_n - 1` (name, remote) pairs, most severe first, keep their
//! labels; the rest fold into `comm="other"` with `remote="other"` (or
//! `""` for findings without a remote), so the series stay bounded however
//! many remotes a finding kind names.

use std::collections::BTreeSet;

use prometheus::proto::MetricFamily;

use super::{
    family::{family, gauge, sample, Definition},
    Group, Tick, OTHER,
};

const FINDINGS: Definition = gauge(
    "tracer_findings",
    "Active findings of the analysis (1 while active); remote is empty when the finding names none.",
    &["comm", "kind", "remote", "severity"],
);

pub(super) struct FindingGroup {
    top_n: usize,
    /// (comm, kind, remote, severity).
    active: BTreeSet<(String, &'static str, String, &'static str)>,
}

impl FindingGroup {
    pub(super) fn new(top_n: usize) -> Self {
        FindingGroup { top_n, active: BTreeSet::new() }
    }
}

impl Group for FindingGroup {
    fn definitions(&self) -> Vec<Definition> {
        vec![FINDINGS]
    }

    fn update(&mut self, tick: &Tick<'_>) {
        let mut by_severity: Vec<_> = tick.snapshot.findings.iter().collect();
        by_severity.sort_by_key(|finding| std::cmp::Reverse(finding.severity));
        let mut kept: BTreeSet<(&str, &str)> = BTreeSet::new();
        self.active.clear();
        for finding in by_severity {
            let remote = finding.remote_addr.as_deref().unwrap_or("");
            let labels = (finding.comm.as_str(), remote);
            if kept.len() < self.top_n.saturating_sub(1) {
                kept.insert(labels);
            }
            let (comm, remote) =
                if kept.contains(&labels) { labels } else { (OTHER, if remote.is_empty() { "" } else { OTHER }) };
            self.active.insert((comm.to_owned(), finding.kind, remote.to_owned(), finding.severity.as_str()));
        }
    }

    fn families(&self) -> Vec<MetricFamily> {
        vec![family(
            &FINDINGS,
            self.active.iter().map(|(comm, kind, remote, severity)| {
                sample(&[("comm", comm), ("kind", kind), ("remote", remote), ("severity", severity)], 1.0)
            }),
        )]
    }
}
