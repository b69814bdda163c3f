//! `tracer_findings{comm,kind,severity}`: 1 for each active finding; names
//! past the first `top_n - 1` (most severe first) fold into `comm="other"`.

use std::collections::BTreeSet;

use prometheus::proto::MetricFamily;

use super::{
    family::{family, gauge, sample, Definition},
    Group, Tick, OTHER,
};

const FINDINGS: Definition =
    gauge("tracer_findings", "Active findings of the analysis (1 while active).", &["comm", "kind", "severity"]);

pub(super) struct FindingGroup {
    top_n: usize,
    /// (comm, kind, severity).
    active: BTreeSet<(String, &'static str, &'static str)>,
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
        let mut kept: BTreeSet<&str> = BTreeSet::new();
        self.active.clear();
        for finding in by_severity {
            if kept.len() < self.top_n.saturating_sub(1) {
                kept.insert(&finding.comm);
            }
            let comm = if kept.contains(finding.comm.as_str()) { finding.comm.as_str() } else { OTHER };
            self.active.insert((comm.to_owned(), finding.kind, finding.severity.as_str()));
        }
    }

    fn families(&self) -> Vec<MetricFamily> {
        vec![family(
            &FINDINGS,
            self.active
                .iter()
                .map(|(comm, kind, severity)| sample(&[("comm", comm), ("kind", kind), ("severity", severity)], 1.0)),
        )]
    }
}
