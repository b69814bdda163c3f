//! The labelled evaluation of the findings (issue 19): series shaped like
//! what users meet, each labelled with the findings it must raise (every
//! other kind must stay silent), generated with a seed at the one-shot
//! scale (1 s intervals, 30-120 s) and the agent's (5 s, 15 min), plus
//! timelines recorded from real traffic ([`fixture`]). Precision and recall
//! per kind are measured on the seeds the rules were tuned on and on
//! held-out seeds; the unit test fails when any labelled case goes wrong,
//! and `cargo xtask eval` writes the tables to `EVALUATION.md`.
//!
//! A case passes when the kinds that fired (for its pid) are exactly the
//! kinds it expects and the evidence checks hold (e.g. a 200 -> 800 KB/s
//! ramp reads a ratio of about 4). Per kind, a case counts as a true
//! positive (expected, fired, evidence right), a false negative (expected,
//! not fired or evidence wrong) or a false positive (fired, not expected).

mod cases;
mod fixture;
mod gen;

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt::Write as _,
};

use super::{analyze, tests::defaults, Finding, Input, Thresholds};
use crate::model::{CloseWait, Sample};

/// Every finding kind, in the report's order.
pub(super) const KINDS: [&str; 10] = [
    "traffic_growth",
    "throughput_decay",
    "connection_leak",
    "close_wait_leak",
    "retransmit_spike",
    "connection_churn",
    "latency_rise",
    "slow_reader",
    "peer_not_reading",
    "connect_failures",
];

/// Seeds the rules were tuned on.
pub(super) const TUNED_SEEDS: [u64; 4] = [1, 2, 3, 4];
/// Seeds looked at only to measure, never to tune.
pub(super) const HELD_OUT_SEEDS: [u64; 8] = [3001, 3002, 3003, 3004, 3005, 3006, 3007, 3008];
/// Cases known to fail (shape, scale, seed): measured and reported, not
/// hidden; the unit test fails on any other failing case, and on a known
/// one that passes again (so the list stays true).
const KNOWN_MISSES: &[(&str, &str, u64)] = &[
    // Bursty traffic (+-30% a second) over 30 one-second intervals, with
    // late stamps: the trend does not clear the noise.
    ("ramp under bursty traffic (100 ms bursts)", "1 s x 30 s", 3002),
    ("decay under bursty traffic", "1 s x 30 s", 3001),
    // Fires, reading 3.19 for a 4.0 ramp (the check wants 3.2-4.8).
    ("linear ramp 200 -> 800 KB/s", "1 s x 30 s", 3001),
];

/// `--growth-ratio` values of the sweep.
const GROWTH_RATIOS: [f64; 6] = [1.2, 1.3, 1.5, 2.0, 2.5, 3.0];

/// The recorded timelines (`fixtures/`).
const FIXTURES: [(&str, &str); 2] = [
    ("loopback-ramps.json", include_str!("fixtures/loopback-ramps.json")),
    ("loopback-leak.json", include_str!("fixtures/loopback-leak.json")),
];

pub(super) fn kind_name(kind: &str) -> Option<&'static str> {
    KINDS.iter().copied().find(|k| *k == kind)
}

/// One labelled case.
pub(super) struct Case {
    pub(super) family: &'static str,
    pub(super) name: String,
    pub(super) scale: String,
    pub(super) seed: Option<u64>,
    /// Kinds that must fire; every other kind must not.
    pub(super) expect: Vec<&'static str>,
    pub(super) samples: VecDeque<Sample>,
    pub(super) close_wait: Vec<CloseWait>,
    pub(super) hz: Option<u32>,
    pub(super) checks: Vec<Check>,
    /// Only this pid's findings are judged (recorded timelines hold others).
    pub(super) pid: Option<u32>,
}

/// What a fired finding's evidence must say.
pub(super) enum Check {
    Range { kind: &'static str, key: &'static str, low: f64, high: f64 },
    Text { kind: &'static str, key: &'static str, value: &'static str },
}

impl Check {
    fn kind(&self) -> &'static str {
        match self {
            Check::Range { kind, .. } | Check::Text { kind, .. } => kind,
        }
    }

    /// `None` when every finding of the kind satisfies it, else what is wrong.
    fn failure(&self, findings: &[&Finding]) -> Option<String> {
        findings.iter().filter(|f| f.kind == self.kind()).find_map(|f| match self {
            Check::Range { key, low, high, .. } => {
                let value = f.evidence[*key].as_f64();
                (!value.is_some_and(|v| (*low..=*high).contains(&v)))
                    .then(|| format!("{} {key} {value:?} outside {low}..{high}", f.kind))
            }
            Check::Text { key, value, .. } => (f.evidence[*key].as_str() != Some(*value))
                .then(|| format!("{} {key} {} is not {value:?}", f.kind, f.evidence[*key])),
        })
    }
}

/// Which seeds a case came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Set {
    Tuned,
    HeldOut,
    Recorded,
}

impl Set {
    fn name(self) -> &'static str {
        match self {
            Set::Tuned => "tuned seeds",
            Set::HeldOut => "held-out seeds",
            Set::Recorded => "recorded timelines",
        }
    }
}

/// What the analysis said of one case.
pub(super) struct Outcome {
    pub(super) set: Set,
    pub(super) family: &'static str,
    pub(super) name: String,
    pub(super) scale: String,
    pub(super) seed: Option<u64>,
    pub(super) expected: BTreeSet<&'static str>,
    pub(super) fired: BTreeSet<&'static str>,
    /// Expected kinds that fired with wrong evidence.
    pub(super) wrong: BTreeMap<&'static str, String>,
    pub(super) summaries: Vec<String>,
}

impl Outcome {
    pub(super) fn passed(&self) -> bool {
        self.expected == self.fired && self.wrong.is_empty()
    }

    /// Listed in [`KNOWN_MISSES`].
    fn known_miss(&self) -> bool {
        KNOWN_MISSES
            .iter()
            .any(|&(name, scale, seed)| name == self.name && scale == self.scale && Some(seed) == self.seed)
    }

    /// Kinds counted as found: fired, and with the right evidence.
    fn found(&self, kind: &str) -> bool {
        self.fired.contains(kind) && !self.wrong.contains_key(kind)
    }

    fn describe(&self) -> String {
        let seed = self.seed.map(|s| format!(" seed {s}")).unwrap_or_default();
        let mut text = format!(
            "[{}] {} ({}{seed}): expected {:?}, fired {:?}",
            self.family, self.name, self.scale, self.expected, self.fired
        );
        for (kind, wrong) in &self.wrong {
            let _ = write!(text, "; {kind}: {wrong}");
        }
        for summary in &self.summaries {
            let _ = write!(text, "\n    {summary}");
        }
        text
    }
}

pub(super) fn run_case(case: &Case, set: Set, thresholds: &Thresholds) -> Outcome {
    let comm = |pid: u32| format!("p{pid}");
    let input = Input { samples: &case.samples, close_wait: &case.close_wait, flows: &[], comm: &comm, hz: case.hz };
    let findings = analyze(&input, thresholds);
    let mine: Vec<&Finding> = findings.iter().filter(|f| case.pid.is_none_or(|pid| f.pid == pid)).collect();
    let fired: BTreeSet<&'static str> = mine.iter().map(|f| f.kind).collect();
    let wrong = case.checks.iter().filter_map(|check| Some((check.kind(), check.failure(&mine)?))).collect();
    Outcome {
        set,
        family: case.family,
        name: case.name.clone(),
        scale: case.scale.clone(),
        seed: case.seed,
        expected: case.expect.iter().copied().collect(),
        fired,
        wrong,
        summaries: mine.iter().map(|f| format!("{}: {}", f.kind, f.summary)).collect(),
    }
}

/// Every case: generated for the tuned and held-out seeds, the measured
/// decay replayed, and the recorded timelines.
pub(super) fn all_cases() -> Vec<(Set, Case)> {
    let mut all = Vec::new();
    for (set, seeds) in [(Set::Tuned, &TUNED_SEEDS[..]), (Set::HeldOut, &HELD_OUT_SEEDS[..])] {
        for &seed in seeds {
            all.extend(cases::generated(seed).into_iter().map(|c| (set, c)));
            all.push((set, cases::measured_decay(seed)));
        }
    }
    for (file, text) in FIXTURES {
        let recording: fixture::Recording =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("fixture {file}: {e}"));
        assert_eq!(recording.schema, fixture::SCHEMA, "fixture {file}");
        all.extend(recording.cases(file).into_iter().map(|c| (Set::Recorded, c)));
    }
    all
}

pub(super) fn evaluate(cases: &[(Set, Case)], thresholds: &Thresholds) -> Vec<Outcome> {
    cases.iter().map(|(set, case)| run_case(case, *set, thresholds)).collect()
}

/// True positives, false negatives, false positives of one kind.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    tp: usize,
    fn_: usize,
    fp: usize,
    /// Cases labelled must-not-fire for the kind.
    negatives: usize,
}

impl Counts {
    fn precision(&self) -> Option<f64> {
        (self.tp + self.fp > 0).then(|| self.tp as f64 / (self.tp + self.fp) as f64)
    }

    fn recall(&self) -> Option<f64> {
        (self.tp + self.fn_ > 0).then(|| self.tp as f64 / (self.tp + self.fn_) as f64)
    }
}

fn counts<'a>(outcomes: impl Iterator<Item = &'a Outcome>) -> BTreeMap<&'static str, Counts> {
    let mut table: BTreeMap<&'static str, Counts> = KINDS.iter().map(|k| (*k, Counts::default())).collect();
    for outcome in outcomes {
        for kind in KINDS {
            let c = table.entry(kind).or_default();
            match (outcome.expected.contains(kind), outcome.found(kind), outcome.fired.contains(kind)) {
                (true, true, _) => c.tp += 1,
                (true, false, _) => c.fn_ += 1,
                (false, _, fired) => {
                    c.negatives += 1;
                    c.fp += usize::from(fired);
                }
            }
        }
    }
    table
}

fn share(value: Option<f64>) -> String {
    value.map_or("-".to_owned(), |v| format!("{:.3}", v))
}

/// Precision and recall per kind for one set of cases, as a Markdown table.
fn quality_table(outcomes: &[Outcome], set: Set) -> String {
    let mine: Vec<&Outcome> = outcomes.iter().filter(|o| o.set == set).collect();
    let passed = mine.iter().filter(|o| o.passed()).count();
    let mut text = format!("### {} ({} cases, {passed} passed)\n\n", set.name(), mine.len());
    text.push_str("| kind | should fire | must not fire | TP | FN | FP | precision | recall |\n");
    text.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    let table = counts(mine.iter().copied());
    for (kind, c) in KINDS.iter().map(|k| (*k, table[k])) {
        let _ = writeln!(
            text,
            "| `{kind}` | {} | {} | {} | {} | {} | {} | {} |",
            c.tp + c.fn_,
            c.negatives,
            c.tp,
            c.fn_,
            c.fp,
            share(c.precision()),
            share(c.recall())
        );
    }
    text
}

/// Recall and false alarms of the rate trends under other `--growth-ratio`s
/// (the labels are those of the default, 1.5).
fn growth_sweep(cases: &[(Set, Case)]) -> String {
    let mut text = String::from(
        "| `--growth-ratio` | trends found (recall) | false trend alarms | missed cases (shape: count) |\n|---:|---:|---:|---|\n",
    );
    for ratio in GROWTH_RATIOS {
        let thresholds = Thresholds { growth_ratio: ratio, ..defaults() };
        let outcomes: Vec<Outcome> = cases
            .iter()
            .filter(|(set, c)| *set != Set::Recorded && c.family == "traffic")
            .map(|(set, case)| run_case(case, *set, &thresholds))
            .collect();
        let table = counts(outcomes.iter());
        let (mut tp, mut fn_, mut fp, mut negatives) = (0, 0, 0, 0);
        for kind in ["traffic_growth", "throughput_decay"] {
            let c = table[kind];
            tp += c.tp;
            fn_ += c.fn_;
            fp += c.fp;
            negatives += c.negatives;
        }
        let mut missed: BTreeMap<&str, usize> = BTreeMap::new();
        let mut alarms: BTreeMap<&str, usize> = BTreeMap::new();
        for o in &outcomes {
            for kind in ["traffic_growth", "throughput_decay"] {
                if o.expected.contains(kind) && !o.found(kind) {
                    *missed.entry(o.name.as_str()).or_default() += 1;
                }
                if !o.expected.contains(kind) && o.fired.contains(kind) {
                    *alarms.entry(o.name.as_str()).or_default() += 1;
                }
            }
        }
        let list = |m: &BTreeMap<&str, usize>| {
            if m.is_empty() {
                "none".to_owned()
            } else {
                m.iter().map(|(n, c)| format!("{n}: {c}")).collect::<Vec<_>>().join("; ")
            }
        };
        let _ = writeln!(
            text,
            "| {ratio}{} | {tp}/{} ({}) | {fp} of {negatives} | missed: {}; alarms: {} |",
            if ratio == defaults().growth_ratio { " (default)" } else { "" },
            tp + fn_,
            share((tp + fn_ > 0).then(|| tp as f64 / (tp + fn_) as f64)),
            list(&missed),
            list(&alarms),
        );
    }
    text
}

/// The cases, grouped by shape: label, scales and how many generated.
fn case_list(cases: &[(Set, Case)]) -> String {
    // (family, name) -> (label, scales, cases)
    type Shapes<'a> = BTreeMap<(&'a str, &'a str), (Vec<&'static str>, BTreeSet<&'a str>, usize)>;
    let mut shapes: Shapes = BTreeMap::new();
    for (_, case) in cases {
        let entry = shapes
            .entry((case.family, case.name.as_str()))
            .or_insert_with(|| (case.expect.clone(), BTreeSet::new(), 0));
        entry.1.insert(case.scale.as_str());
        entry.2 += 1;
    }
    let mut text =
        String::from("| family | case | must fire (nothing else may) | scales | cases |\n|---|---|---|---|---:|\n");
    for ((family, name), (expect, scales, n)) in shapes {
        let expect = if expect.is_empty() { "nothing".to_owned() } else { expect.join(", ") };
        let scales: Vec<&str> = scales.into_iter().collect();
        let _ = writeln!(text, "| {family} | {name} | {expect} | {} | {n} |", scales.join("; "));
    }
    text
}

/// The whole report (`EVALUATION.md`).
pub(super) fn report() -> String {
    let cases = all_cases();
    let outcomes = evaluate(&cases, &defaults());
    let mut text = String::from(
        "# Findings evaluation\n\n\
         Written by `cargo xtask eval` from the labelled cases in `tracer/src/analysis/eval/`\n\
         (do not edit by hand; the unit tests run the same cases and fail when one goes wrong).\n\n\
         Every case is a series fed to the analysis as the model would, labelled with the findings\n\
         it must raise; every other kind must stay silent. Generated cases use a seed (noise,\n\
         positions, phases) and come at the one-shot scale (1 s intervals, 30-120 s) and the\n\
         agent's (5 s, 15 min). The rules were tuned on the tuned seeds only; the held-out seeds\n\
         measure them. Recorded timelines are real loopback traffic (`fixtures/`). A fired finding\n\
         whose evidence is wrong (e.g. a 200 -> 800 KB/s ramp not reading a ratio of about 4)\n\
         counts as a miss. Thresholds are the defaults.\n\n## Precision and recall per kind\n\n",
    );
    for set in [Set::Tuned, Set::HeldOut, Set::Recorded] {
        text.push_str(&quality_table(&outcomes, set));
        text.push('\n');
    }
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.passed()).collect();
    text.push_str("## Cases that fail\n\nKnown misses (listed in the evaluation, so the unit test tolerates them) are marked.\n\n");
    if failed.is_empty() {
        text.push_str("None.\n\n");
    } else {
        text.push_str("```text\n");
        for o in failed {
            let known = if o.known_miss() { "known miss: " } else { "" };
            let _ = writeln!(text, "{known}{}", o.describe());
        }
        text.push_str("```\n\n");
    }
    text.push_str(
        "## What `--growth-ratio` buys\n\n\
         The traffic cases (tuned and held-out seeds) under other thresholds, judged by the labels\n\
         of the default: a lower ratio also flags the +20% drift (and more noise); a higher one\n\
         misses the gentle x1.8 ramp, then the field report's shape.\n\n",
    );
    text.push_str(&growth_sweep(&cases));
    text.push_str("\n## The cases\n\n");
    text.push_str(&case_list(&cases));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every labelled case holds: the evaluation, as a unit test.
    #[test]
    fn every_labelled_case_holds() {
        let cases = all_cases();
        let outcomes = evaluate(&cases, &defaults());
        for set in [Set::Tuned, Set::HeldOut, Set::Recorded] {
            println!("{}", quality_table(&outcomes, set));
        }
        let failed: Vec<String> =
            outcomes.iter().filter(|o| !o.passed() && !o.known_miss()).map(Outcome::describe).collect();
        assert!(
            failed.is_empty(),
            "{} of {} labelled cases fail:\n{}",
            failed.len(),
            outcomes.len(),
            failed.join("\n")
        );
        let fixed: Vec<String> =
            outcomes.iter().filter(|o| o.passed() && o.known_miss()).map(Outcome::describe).collect();
        assert!(fixed.is_empty(), "known misses that pass now (take them off KNOWN_MISSES):\n{}", fixed.join("\n"));
    }

    #[test]
    fn generated_cases_are_the_same_for_the_same_seed() {
        let dump = |seed| {
            cases::generated(seed)
                .iter()
                .map(|c| {
                    serde_json::to_string(&fixture::Recording::from_samples("", Vec::new(), &c.samples)).expect("json")
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(dump(7), dump(7));
        assert_ne!(dump(7), dump(8));
    }

    #[test]
    fn a_recording_replays_the_samples_it_dumped() {
        let case = cases::generated(1).into_iter().find(|c| c.name.starts_with("RTT ramp")).expect("case");
        let label = fixture::Label { pid: cases::PID, name: "rtt".to_owned(), expect: vec!["latency_rise".to_owned()] };
        let recording = fixture::Recording::from_samples("test", vec![label], &case.samples);
        let text = serde_json::to_string(&recording).expect("json");
        let back: fixture::Recording = serde_json::from_str(&text).expect("parse");
        let replayed = back.cases("test.json");
        let outcome = run_case(&replayed[0], Set::Recorded, &defaults());
        assert!(outcome.passed(), "{}", outcome.describe());
        let original = back.samples();
        assert_eq!(original.len(), case.samples.len());
        for (a, b) in original.iter().zip(&case.samples) {
            assert!((a.t_secs - b.t_secs).abs() < 1e-9);
            assert_eq!((&a.flows, &a.sockets), (&b.flows, &b.sockets));
        }
    }

    /// `cargo xtask eval`: prints the tables and writes the report to
    /// `$EVAL_REPORT` (default: EVALUATION.md at the workspace root).
    #[test]
    #[ignore = "writes EVALUATION.md; run by cargo xtask eval"]
    fn write_report() {
        let text = report();
        let path = std::env::var("EVAL_REPORT")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../EVALUATION.md").to_owned());
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("writing {path}: {e}"));
        println!("{text}\nwritten to {path}");
    }

    /// `cargo xtask eval --record REPORT --label PID=KIND,...`: a recorded
    /// timeline from a real report (see [`fixture::from_report`]).
    #[test]
    #[ignore = "converts a real report into a fixture; run by cargo xtask eval --record"]
    fn record_fixture() {
        let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(var("EVAL_RECORD")).expect("report")).expect("json");
        // PID=NAME=KIND+KIND;PID=NAME=  (no kind: must not fire)
        let labels = var("EVAL_LABELS")
            .split(';')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let mut parts = l.splitn(3, '=');
                let pid = parts.next().and_then(|p| p.trim().parse().ok()).expect("PID=NAME=KINDS");
                let name = parts.next().expect("PID=NAME=KINDS").to_owned();
                let expect =
                    parts.next().unwrap_or("").split('+').filter(|k| !k.is_empty()).map(str::to_owned).collect();
                fixture::Label { pid, name, expect }
            })
            .collect();
        let recording = fixture::from_report(&report, &var("EVAL_SOURCE"), labels).expect("recording");
        let out = var("EVAL_OUT");
        std::fs::write(&out, serde_json::to_string_pretty(&recording).expect("json") + "\n").expect("write");
        println!("written to {out}");
    }
}
