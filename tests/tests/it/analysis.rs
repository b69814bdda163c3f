//! Findings on real traffic (issue 4): a send rate ramping 200 -> 800 KB/s
//! over 60 s is `traffic_growth` (ratio 3-5), its mirror is
//! `throughput_decay`, a constant-rate client next to them is not reported;
//! a ramp that stops well before the trace does is still `traffic_growth`
//! over its active span (issue 19);
//! a CLOSE_WAIT pile-up older than `--close-wait-age` is `close_wait_leak`
//! with the exact count; a leaking client is `connection_leak` while a
//! polite one has no finding at all; dozens of short connections a second
//! are `connection_churn`. The host is shared: every check looks only at the
//! pids (and ports) of its own processes.

use std::{
    net::TcpStream,
    thread,
    time::{Duration, Instant},
};

use tracer_tests::{serial, ss_sockets, wait_until, Finding, Proc, Report, Tracer};

use crate::{server, traffic, LINE_TIMEOUT};

/// Length of the rate ramps.
const RAMP_SECS: u64 = 60;
/// Rates of the ramps and of the steady client, bytes/s.
const LOW_RATE: u64 = 200_000;
const HIGH_RATE: u64 = 800_000;
const STEADY_RATE: u64 = 400_000;

/// A `traffic paced-client` sending to `127.0.0.1:port` at a rate moving
/// from `from` to `to` over [`RAMP_SECS`], then staying at `to`; returns
/// it with its pid once connected.
fn paced_client(name: &str, port: u16, from: u64, to: u64) -> (Proc, u32) {
    paced_client_over(name, port, from, to, RAMP_SECS)
}

/// [`paced_client`] with a ramp of `secs`.
fn paced_client_over(name: &str, port: u16, from: u64, to: u64, secs: u64) -> (Proc, u32) {
    let mut client = traffic(
        name,
        &[
            "paced-client",
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--from-rate",
            &from.to_string(),
            "--to-rate",
            &to.to_string(),
            "--secs",
            &secs.to_string(),
            "--step-ms",
            "10",
            "--max-secs",
            &(secs + 90).to_string(),
        ],
    );
    let pid = client.expect("connected", LINE_TIMEOUT).num("pid");
    (client, pid)
}

/// What the report knows about `pid`, for failure messages: its findings
/// and its bytes per timeline sample, with the sample's end (the interval
/// lengths matter to the rates).
fn describe(report: &Report, pid: u32) -> String {
    let tx: Vec<String> = report
        .timeline
        .iter()
        .map(|s| format!("{}s: {}", s.t_secs, s.process(pid).map(|p| p.tx_bytes.max(p.rx_bytes)).unwrap_or(0)))
        .collect();
    format!("pid {pid}: findings {:#?}\nbytes per sample (max of tx, rx): {tx:?}", report.findings_of(pid))
}

/// Checks a rate trend finding: its kind, direction and ratio range; a
/// flow-level one must name the flow to 127.0.0.1 on `port`.
fn assert_trend(finding: &Finding, kind: &str, direction: &str, ratio: (f64, f64), port: u16, context: &str) {
    assert_eq!(
        (finding.kind.as_str(), finding.text("direction")),
        (kind, direction),
        "unexpected finding {finding:#?}\n{context}"
    );
    let value = finding.number("ratio");
    assert!(value >= ratio.0 && value <= ratio.1, "{kind} ratio {value} outside {ratio:?}: {finding:#?}\n{context}");
    if finding.remote_addr.is_some() {
        assert_eq!(
            (finding.remote_addr.as_deref(), finding.port),
            (Some("127.0.0.1"), Some(port)),
            "the trend is on another flow: {finding:#?}\n{context}"
        );
    }
}

#[test]
fn a_ramping_send_rate_is_traffic_growth_its_mirror_throughput_decay_and_a_steady_rate_nothing() {
    let _serial = serial();
    let (_growing_server, growing_port, growing_server_pid) = server(&["--conns", "1"]);
    let (_decaying_server, decaying_port, decaying_server_pid) = server(&["--conns", "1"]);
    let (_steady_server, steady_port, steady_server_pid) = server(&["--conns", "1"]);
    let tracer = Tracer::start(&[]);
    // Start the clients after the first sample: the analysis leaves a
    // key's partial first interval out when it is not the window's first.
    tracer.wait_samples(1);
    let started = Instant::now();
    let (mut growing, growing_pid) = paced_client("growing client", growing_port, LOW_RATE, HIGH_RATE);
    let (mut decaying, decaying_pid) = paced_client("decaying client", decaying_port, HIGH_RATE, LOW_RATE);
    let (mut steady, steady_pid) = paced_client("steady client", steady_port, STEADY_RATE, STEADY_RATE);
    let ramp_timeout = Duration::from_secs(RAMP_SECS + 30);
    for client in [&mut growing, &mut decaying, &mut steady] {
        client.expect("ramped", ramp_timeout);
    }
    let report = tracer.stop();
    let traced = started.elapsed();
    // The clients keep sending at their final rate until here.
    drop((growing, decaying, steady));

    for (name, pid) in [
        ("growing client", growing_pid),
        ("growing client's server", growing_server_pid),
        ("decaying client", decaying_pid),
        ("decaying client's server", decaying_server_pid),
    ] {
        for finding in report.findings_of(pid) {
            eprintln!("{name} (pid {pid}): {}\n  evidence {}", finding.summary, finding.evidence);
        }
    }
    eprintln!("clients ran {traced:?}; report covers {} s", report.duration_secs);

    // A 200 -> 800 KB/s ramp: fitted start and end rates read at the
    // series' first and last points (the first after the partial interval).
    let growth = report.findings_of(growing_pid);
    let growth_context = describe(&report, growing_pid);
    assert!(!growth.is_empty(), "no traffic_growth for the growing client\n{growth_context}");
    for finding in &growth {
        assert_trend(finding, "traffic_growth", "tx", (3.0, 5.0), growing_port, &growth_context);
        let (start, end) = (finding.number("start_rate"), finding.number("end_rate"));
        assert!(
            (150_000.0..=300_000.0).contains(&start) && (650_000.0..=950_000.0).contains(&end),
            "fitted rates {start} -> {end} B/s for a {LOW_RATE} -> {HIGH_RATE} B/s ramp: {finding:#?}\n{growth_context}"
        );
    }
    // The sink server sees the same ramp on its receive side, if anything.
    let mirror_context = describe(&report, growing_server_pid);
    for finding in report.findings_of(growing_server_pid) {
        assert_trend(&finding, "traffic_growth", "rx", (3.0, 5.0), growing_port, &mirror_context);
    }

    let decay = report.findings_of(decaying_pid);
    let decay_context = describe(&report, decaying_pid);
    assert!(!decay.is_empty(), "no throughput_decay for the decaying client\n{decay_context}");
    for finding in &decay {
        assert_trend(finding, "throughput_decay", "tx", (0.2, 1.0 / 3.0), decaying_port, &decay_context);
    }
    let mirror_context = describe(&report, decaying_server_pid);
    for finding in report.findings_of(decaying_server_pid) {
        assert_trend(&finding, "throughput_decay", "rx", (0.2, 1.0 / 3.0), decaying_port, &mirror_context);
    }

    // Constant 400 KB/s on both ends: no finding of any kind.
    for pid in [steady_pid, steady_server_pid] {
        assert!(report.findings_of(pid).is_empty(), "false alarm on the steady transfer\n{}", describe(&report, pid));
    }
    // The steady client really moved data during the trace.
    let steady_flow = report.flow(steady_pid, "client", "127.0.0.1", steady_port);
    let expected = STEADY_RATE as f64 * RAMP_SECS as f64;
    assert!(
        steady_flow.tx_bytes as f64 >= 0.9 * expected,
        "the steady client sent {} bytes, expected about {expected}: {steady_flow:#?}",
        steady_flow.tx_bytes
    );
}

/// Issue 19: users rarely stop a trace the moment a flow ends. A paced ramp
/// (200 -> 800 KB/s over 30 s) that stops several seconds before the trace
/// does is `traffic_growth` with the ratio of its active span (about 4.0),
/// and the evidence says which span that is.
#[test]
fn a_ramp_that_stops_before_the_trace_ends_is_traffic_growth_over_its_active_span() {
    let _serial = serial();
    const SECS: u64 = 30;
    /// Samples taken after the client closed.
    const SILENT_SAMPLES: usize = 6;
    let (_server, port, server_pid) = server(&["--conns", "1"]);
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    tracer.wait_samples(1);
    let (mut client, pid) = paced_client_over("stopping client", port, LOW_RATE, HIGH_RATE, SECS);
    client.expect("ramped", Duration::from_secs(SECS + 30));
    client.say("stop");
    client.expect("closed", LINE_TIMEOUT);
    let closed_at = tracer.elapsed().as_secs_f64();
    tracer.wait_samples(SILENT_SAMPLES);
    let report = tracer.stop();

    let context = describe(&report, pid);
    let findings = report.findings_of(pid);
    for finding in &findings {
        eprintln!("stopping client (pid {pid}): {}\n  evidence {}", finding.summary, finding.evidence);
    }
    let growth: Vec<&Finding> = findings.iter().filter(|f| f.kind == "traffic_growth").collect();
    let [growth] = growth.as_slice() else { panic!("expected one traffic_growth for the client\n{context}") };
    assert_trend(growth, "traffic_growth", "tx", (3.0, 5.0), port, &context);
    let (first, last) = (growth.number("first_active_secs"), growth.number("last_active_secs"));
    assert!(
        first >= 0.0 && last > first + SECS as f64 * 0.7 && last <= closed_at + 1.0,
        "span {first}-{last} s of a {SECS} s ramp that ended by {closed_at:.1} s: {growth:#?}\n{context}"
    );
    assert!(
        report.duration_secs - last >= (SILENT_SAMPLES - 2) as f64,
        "the span ends {last} s, the trace {} s: the silent tail is not in it: {growth:#?}\n{context}",
        report.duration_secs
    );
    // Its sink server saw the same ramp, if anything.
    let mirror = describe(&report, server_pid);
    for finding in report.findings_of(server_pid) {
        assert_trend(&finding, "traffic_growth", "rx", (3.0, 5.0), port, &mirror);
    }
}

/// Connections piled up in CLOSE_WAIT.
const K: usize = 20;

#[test]
fn close_wait_older_than_the_threshold_is_close_wait_leak_with_the_exact_count() {
    let _serial = serial();
    let tracer = Tracer::start(&["--close-wait-age", "2s"]);
    // The same pile-up under the default threshold (30 s) is no leak yet.
    let default_tracer = Tracer::start(&[]);
    let mut server = traffic("cw-server", &["cw-server", "--conns", &K.to_string()]);
    let ready = server.expect("ready", LINE_TIMEOUT);
    let (port, server_pid): (u16, u32) = (ready.num("port"), ready.num("pid"));
    let clients: Vec<TcpStream> =
        (0..K).map(|i| TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("client {i}: {e}"))).collect();
    server.expect("accepted", LINE_TIMEOUT);
    // The sockets enter CLOSE_WAIT between these two instants, so their age
    // at the report is bracketed however the test thread is scheduled.
    let closing = Instant::now();
    drop(clients);
    let closed_at = Instant::now();
    wait_until(&format!("{K} sockets in CLOSE_WAIT on port {port}"), Duration::from_secs(30), || {
        ss_sockets("close-wait", port).len() == K
    });
    thread::sleep(Duration::from_secs(4).saturating_sub(closed_at.elapsed()));
    let earliest = closed_at.elapsed().as_secs_f64();
    let report = tracer.stop();
    let latest = closing.elapsed().as_secs_f64();
    let default_report = default_tracer.stop();

    let findings = report.findings_of(server_pid);
    for finding in &findings {
        eprintln!("cw-server (pid {server_pid}): {}\n  evidence {}", finding.summary, finding.evidence);
    }
    let context =
        format!("{}\nclose_wait on port {port}: {:#?}", describe(&report, server_pid), report.close_wait_on_port(port));
    let [leak] = findings.as_slice() else {
        panic!("expected exactly one finding (close_wait_leak) for the cw-server\n{context}")
    };
    assert_eq!(leak.kind, "close_wait_leak", "{context}");
    assert_eq!(leak.remote_addr, None, "a process-level finding: {leak:#?}");
    assert_eq!(
        (&leak.evidence["count"], &leak.evidence["older_than_threshold"], &leak.evidence["threshold"]),
        (&serde_json::json!(K), &serde_json::json!(K), &serde_json::json!(2.0)),
        "{leak:#?}"
    );
    assert_eq!(leak.evidence["remotes"], serde_json::json!(["127.0.0.1"]), "{leak:#?}");
    assert_eq!(leak.evidence["age_is_lower_bound"], false, "the pile-up happened during the trace: {leak:#?}");
    let oldest = leak.number("oldest_age_secs");
    assert!(
        oldest >= earliest - 0.3 && oldest <= latest + 0.3,
        "oldest CLOSE_WAIT {oldest} s, but the clients closed {earliest:.2}-{latest:.2} s before the report: {leak:#?}"
    );

    let under_default = default_report.findings_of(server_pid);
    assert!(
        under_default.iter().all(|f| f.kind != "close_wait_leak"),
        "{K} sockets {latest:.1} s in CLOSE_WAIT, appeared at once, are no leak under the default 30 s: {under_default:#?}"
    );
}

#[test]
fn a_leaking_client_is_connection_leak_and_a_polite_one_has_no_finding() {
    let _serial = serial();
    const LEAKED: u64 = 60;
    const POLITE: u64 = 30;
    let (_server, port, _) = server(&["--conns", "200", "--read", "100", "--answer", "100"]);
    let target = format!("127.0.0.1:{port}");
    let tracer = Tracer::start(&[]);
    let mut leaky = traffic(
        "leaky-client",
        &["leaky-client", "--connect", &target, "--count", &LEAKED.to_string(), "--every-ms", "100"],
    );
    let mut polite = traffic(
        "polite-client",
        &[
            "polite-client",
            "--connect",
            &target,
            "--count",
            &POLITE.to_string(),
            "--every-ms",
            "200",
            "--send",
            "100",
            "--expect",
            "100",
        ],
    );
    let leaky_pid: u32 = leaky.expect("ready", LINE_TIMEOUT).num("pid");
    let polite_pid: u32 = polite.expect("ready", LINE_TIMEOUT).num("pid");
    let leaked_in: f64 = leaky.expect("done", LINE_TIMEOUT).num("secs");
    polite.expect("done", LINE_TIMEOUT);
    let report = tracer.stop();
    // The rise the client really made (nominally one every 100 ms, ~600 a
    // minute), by its own clock: a busy host may have stretched it.
    let made_per_minute = (LEAKED - 1) as f64 / leaked_in.max(1e-3) * 60.0;

    let established: Vec<u64> = report.timeline.iter().map(|s| s.sockets_in(leaky_pid, "ESTABLISHED")).collect();
    let context = format!(
        "{}\nESTABLISHED per sample: {established:?}; the client opened {made_per_minute:.0}/min",
        describe(&report, leaky_pid)
    );
    let findings = report.findings_of(leaky_pid);
    for finding in &findings {
        eprintln!("leaky client (pid {leaky_pid}): {}\n  evidence {}", finding.summary, finding.evidence);
    }
    let leaks: Vec<&Finding> = findings.iter().filter(|f| f.kind == "connection_leak").collect();
    let [leak] = leaks.as_slice() else { panic!("expected one connection_leak for the leaky client\n{context}") };
    assert_eq!(leak.remote_addr, None, "a process-level finding: {leak:#?}");
    assert_eq!(
        leak.evidence["current_count"], LEAKED,
        "all {LEAKED} leaked connections are open: {leak:#?}\n{context}"
    );
    let start = leak.number("start_count");
    assert!(start < LEAKED as f64 / 2.0, "the leak started during the trace: {leak:#?}\n{context}");
    // The fitted rise is the client's own, less the flat tail (300-700 a
    // minute for the nominal 600).
    let per_minute = leak.number("rise_per_minute");
    assert!(
        (0.5 * made_per_minute..=1.17 * made_per_minute).contains(&per_minute),
        "rise {per_minute}/min: {leak:#?}\n{context}"
    );

    let polite_flow = report.flow(polite_pid, "client", "127.0.0.1", port);
    assert_eq!((polite_flow.connections_opened, polite_flow.connections_closed), (POLITE, POLITE), "{polite_flow:#?}");
    assert!(
        report.findings_of(polite_pid).is_empty(),
        "the polite client must have no finding\n{}",
        describe(&report, polite_pid)
    );
}

#[test]
fn dozens_of_short_connections_a_second_are_connection_churn() {
    let _serial = serial();
    const CONNECTIONS: u64 = 225;
    let count = CONNECTIONS.to_string();
    let (_server, port, _) = server(&["--conns", &count, "--read", "100", "--answer", "100"]);
    let tracer = Tracer::start(&[]);
    let mut client = traffic(
        "churning client",
        &[
            "polite-client",
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--count",
            &count,
            "--every-ms",
            "20",
            "--send",
            "100",
            "--expect",
            "100",
        ],
    );
    let pid: u32 = client.expect("ready", LINE_TIMEOUT).num("pid");
    // Paced by the wall clock at 50/s; its own clock says what it made.
    let secs: f64 = client.expect("done", Duration::from_secs(60)).num("secs");
    let made = CONNECTIONS as f64 / secs.max(1e-3);
    let report = tracer.stop();
    assert!(made >= 20.0, "the client made only {made:.1} connections/s (host too busy?); the scenario needs >= 20/s");

    let findings = report.findings_of(pid);
    for finding in &findings {
        eprintln!("churning client (pid {pid}): {}\n  evidence {}", finding.summary, finding.evidence);
    }
    let context = format!("client made {made:.1} connections/s; {}", describe(&report, pid));
    let churn: Vec<&Finding> = findings.iter().filter(|f| f.kind == "connection_churn").collect();
    let [churn] = churn.as_slice() else { panic!("expected one connection_churn for the client\n{context}") };
    assert_eq!(
        (churn.remote_addr.as_deref(), churn.port),
        (Some("127.0.0.1"), Some(port)),
        "churn of the client's flow: {churn:#?}"
    );
    assert_eq!(
        (&churn.evidence["opened"], &churn.evidence["closed"], &churn.evidence["threshold"]),
        (&serde_json::json!(CONNECTIONS), &serde_json::json!(CONNECTIONS), &serde_json::json!(10.0)),
        "{churn:#?}"
    );
    let (per_sec, window) = (churn.number("per_sec"), churn.number("window_secs"));
    assert!(
        (window - report.duration_secs).abs() <= 1.0,
        "churn window {window} s, report {} s: {churn:#?}",
        report.duration_secs
    );
    assert!(
        (per_sec - CONNECTIONS as f64 / window).abs() <= 0.01 && per_sec > 10.0 && per_sec <= made,
        "per_sec {per_sec}: {CONNECTIONS} over {window} s, made at {made:.1}/s: {churn:#?}"
    );
    assert!(churn.number("intervals_with_opens") >= 3.0, "{churn:#?}");
}
