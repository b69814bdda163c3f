//! What the analysis tests share: synthetic series and a runner with the
//! default thresholds; and the tests across finding families (order,
//! window, degenerate input).

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
};

use super::*;
use crate::model::{CloseWait, Counters, Flow, FlowKey, Role, Sample, StateCounts};

pub(crate) const PID: u32 = 4242;

pub(crate) fn defaults() -> Thresholds {
    Thresholds {
        growth_ratio: 1.5,
        close_wait_age_secs: 30.0,
        retransmit_ratio: 0.02,
        churn_rate: 10.0,
        rtt_ratio: 2.0,
        window_secs: None,
    }
}

pub(crate) fn comm(pid: u32) -> String {
    format!("p{pid}")
}

pub(crate) fn client(pid: u32, remote: &str, port: u16) -> FlowKey {
    FlowKey { pid, role: Role::Client, remote: remote.parse().expect("ip"), port }
}

pub(crate) fn rx(bytes: u64) -> Counters {
    Counters { rx_bytes: bytes, ..Counters::default() }
}

pub(crate) fn sample(t_secs: f64, flows: Vec<(FlowKey, Counters)>) -> Sample {
    // The analysis takes interval lengths from `t_secs` (its window may
    // start inside an interval), never from `interval_secs`.
    Sample {
        t_secs,
        interval_secs: 1.0,
        flows: flows.into_iter().collect(),
        sockets: HashMap::new(),
        health: HashMap::new(),
    }
}

pub(crate) fn with_sockets(mut sample: Sample, pid: u32, states: &[(&'static str, u64)]) -> Sample {
    let counts: StateCounts = states.iter().copied().filter(|&(_, n)| n > 0).collect();
    sample.sockets.insert(pid, counts);
    sample
}

/// One flow receiving `rates[i]` bytes/s in 1-s interval `i`; a zero rate
/// leaves the flow out of the sample, as the model does.
pub(crate) fn rx_series(key: FlowKey, rates: &[f64]) -> VecDeque<Sample> {
    rates
        .iter()
        .enumerate()
        .map(|(i, &rate)| {
            let flows = if rate > 0.0 { vec![(key, rx(rate as u64))] } else { Vec::new() };
            sample(i as f64 + 1.0, flows)
        })
        .collect()
}

/// Deterministic noise in [-1, 1].
pub(crate) fn noise(seed: &mut u64) -> f64 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}

pub(crate) fn run_with(
    samples: &VecDeque<Sample>,
    close_wait: &[CloseWait],
    flows: &[Flow],
    thresholds: &Thresholds,
) -> Vec<Finding> {
    analyze(&Input { samples, close_wait, flows, comm: &comm, hz: None }, thresholds)
}

/// [`run`] with the kernel's HZ known (the chrono counters count).
pub(crate) fn run_health(samples: &VecDeque<Sample>, hz: Option<u32>) -> Vec<Finding> {
    analyze(&Input { samples, close_wait: &[], flows: &[], comm: &comm, hz }, &defaults())
}

pub(crate) fn run(samples: &VecDeque<Sample>) -> Vec<Finding> {
    run_with(samples, &[], &[], &defaults())
}

pub(crate) fn kinds(findings: &[Finding]) -> Vec<&'static str> {
    findings.iter().map(|f| f.kind).collect()
}

pub(crate) fn ramp(from: f64, to: f64, n: usize) -> Vec<f64> {
    (0..n).map(|i| from + (to - from) * i as f64 / (n - 1) as f64).collect()
}

pub(crate) fn close_wait_socket(pid: u32, remote: &str, age_secs: f64, age_is_lower_bound: bool) -> CloseWait {
    CloseWait {
        pid,
        comm: comm(pid).into(),
        local: "10.0.0.9:40000".parse().expect("address"),
        remote: SocketAddr::new(remote.parse().expect("ip"), 443),
        age_secs,
        age_is_lower_bound,
    }
}

pub(crate) fn totals_series(key: FlowKey, per_interval: Counters, n: usize) -> VecDeque<Sample> {
    (0..n).map(|i| sample(i as f64 + 1.0, vec![(key, per_interval)])).collect()
}

pub(crate) fn churn(opened: u64) -> Counters {
    Counters { opened, closed: opened, tx_bytes: opened * 100, ..Counters::default() }
}

#[test]
fn window_restricts_the_analysis() {
    let key = client(PID, "10.0.0.1", 443);
    let mut rates = ramp(200_000.0, 800_000.0, 40);
    rates.extend([800_000.0; 20]);
    let samples = rx_series(key, &rates);
    assert_eq!(kinds(&run(&samples)), ["traffic_growth"]);
    let recent = Thresholds { window_secs: Some(15.0), ..defaults() };
    assert!(run_with(&samples, &[], &[], &recent).is_empty());

    let churning = totals_series(key, churn(20), 60);
    let nothing = Thresholds { window_secs: Some(-1.0), ..defaults() };
    assert!(run_with(&churning, &[], &[], &nothing).is_empty());
}

#[test]
fn degenerate_inputs_do_not_panic() {
    let key = client(0, "10.0.0.1", 443);
    assert!(run(&VecDeque::new()).is_empty());
    assert!(run(&rx_series(key, &[1e9])).is_empty());
    let odd: VecDeque<Sample> = [0.0, 0.0, f64::NAN, 3.0, 3.0, 5.0, f64::INFINITY, 7.0]
        .into_iter()
        .map(|t| {
            let s = sample(
                t,
                vec![(
                    key,
                    Counters { tx_bytes: u64::MAX, retransmits: u64::MAX, opened: u64::MAX, ..Counters::default() },
                )],
            );
            with_sockets(s, 0, &[("ESTABLISHED", u64::MAX), ("CLOSE_WAIT", 1)])
        })
        .collect();
    for window_secs in [None, Some(f64::NAN), Some(0.0), Some(f64::INFINITY)] {
        let thresholds =
            Thresholds { window_secs, growth_ratio: f64::NAN, close_wait_age_secs: f64::NAN, ..defaults() };
        let findings = run_with(&odd, &[close_wait_socket(0, "10.0.0.1", f64::NAN, true)], &[], &thresholds);
        for f in &findings {
            assert!(serde_json::to_string(f).is_ok());
        }
        run_with(&odd, &[], &[], &Thresholds { window_secs, ..defaults() });
    }
}

#[test]
fn findings_are_sorted_most_severe_first() {
    let lossy = Counters { tx_bytes: 100 * 1448, retransmits: 30, segments_out: 100, ..Counters::default() };
    let mut samples = totals_series(client(2, "10.0.0.1", 443), lossy, 10);
    for s in samples.iter_mut() {
        s.flows.insert(client(1, "10.0.0.2", 443), churn(20));
        s.flows.insert(client(3, "10.0.0.3", 443), Counters { retransmits: 5, segments_out: 100, ..lossy });
    }
    let findings = run(&samples);
    let order: Vec<(Severity, &str, u32)> = findings.iter().map(|f| (f.severity, f.kind, f.pid)).collect();
    assert_eq!(
        order,
        [
            (Severity::Critical, "retransmit_spike", 2),
            (Severity::Warning, "connection_churn", 1),
            (Severity::Warning, "retransmit_spike", 3),
        ]
    );
}

/// A decay as an integration run measured it (bytes per 1-s interval of a
/// client pacing 800 -> 200 KB/s, with one burst): `throughput_decay`.
#[test]
fn a_measured_decay_with_a_burst_is_throughput_decay() {
    let rates: Vec<f64> = vec![
        0.0, 742723.0, 787425.0, 771893.0, 759669.0, 761049.0, 750000.0, 736388.0, 737062.0, 702715.0, 700563.0,
        697819.0, 690939.0, 683726.0, 660332.0, 661128.0, 642736.0, 896761.0, 604791.0, 600545.0, 630317.0, 585139.0,
        574550.0, 573637.0, 576418.0, 537460.0, 559207.0, 530529.0, 509110.0, 511895.0, 501638.0, 490562.0, 480241.0,
        471596.0, 460680.0, 452927.0, 443274.0, 427859.0, 424017.0, 412371.0, 397694.0, 392260.0, 381830.0, 372826.0,
        360239.0, 353263.0, 342095.0, 330068.0, 320985.0, 312487.0, 302073.0, 290550.0, 281303.0, 272470.0, 261299.0,
        250574.0, 240646.0, 232340.0, 221065.0, 211056.0, 193367.0,
    ];
    let key = client(PID, "127.0.0.1", 40000);
    let findings = run(&rx_series(key, &rates));
    assert_eq!(kinds(&findings), ["throughput_decay"], "{findings:#?}");
}
