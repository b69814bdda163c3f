//! Reliability at the tracer's limits (issue 13): a socket table smaller
//! than the live sockets (`--max-sockets`), where sockets past the limit
//! are counted once each, never tracked later, and the tracked ones stay
//! exact; and a destroyed-socket ring buffer too small for the churn
//! (`TRACER_RING_BYTES`), where the final records wait in the overflow map
//! and every byte and connection still counts.
//!
//! The kernel's own counters (`STATS`) are read with `bpftool` from the
//! maps of the tracer under test (found by its pid), between the phases of
//! a test. The host is shared: bounds that other sockets could move are
//! computed from the host's own TCP counters over the same window.

use std::{process::Command, time::Duration};

use tracer_tests::{bpf, run, serial, ss_sockets, wait_until, Flow, Report, Tracer};

use crate::{server, traffic, LINE_TIMEOUT};

/// Index of `map_full_drops` (untracked sockets) in the kernel's `STATS`
/// (`tracer_common::stat::MAP_FULL`).
const STAT_MAP_FULL: u32 = 2;
/// Index of deferred final records (`tracer_common::stat::EVENTS_DEFERRED`).
const STAT_EVENTS_DEFERRED: u32 = 3;

/// Generous bound on a condition the tracer reaches within a few ticks.
const TICKS_TIMEOUT: Duration = Duration::from_secs(30);

/// Network namespaces to count sockets in: the host's and every named one
/// (other tests on the host may be running in theirs).
fn namespaces() -> Vec<Option<String>> {
    let listed = run("ip", &["netns", "list"]);
    let named = listed.lines().filter_map(|line| line.split_whitespace().next()).map(|name| Some(name.to_owned()));
    std::iter::once(None).chain(named).collect()
}

/// `program args` in namespace `netns` (None: the host's); its stdout,
/// empty if the namespace went away meanwhile.
fn run_in(netns: &Option<String>, program: &str, args: &[&str]) -> String {
    let mut command = match netns {
        None => Command::new(program),
        Some(name) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", name, program]);
            command
        }
    };
    let output = command.args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// TCP sockets that exist now, host-wide: every state `ss -tan` lists but
/// TIME_WAIT (a full socket's memory is freed at TIME_WAIT, and no
/// tracepoint fires on what is left).
fn host_sockets() -> u64 {
    namespaces().iter().map(|ns| run_in(ns, "ss", &["-tanH", "exclude", "time-wait"]).lines().count() as u64).sum()
}

/// Connections the host's stacks have opened so far (`ActiveOpens` +
/// `PassiveOpens` of `/proc/net/snmp`, every namespace): each made one
/// socket.
fn host_opens() -> u64 {
    namespaces()
        .iter()
        .map(|ns| {
            let text = run_in(ns, "cat", &["/proc/net/snmp"]);
            let rows: Vec<Vec<&str>> =
                text.lines().filter(|l| l.starts_with("Tcp:")).map(|l| l.split_whitespace().collect()).collect();
            let [header, values] = rows.as_slice() else { return 0 };
            ["ActiveOpens", "PassiveOpens"]
                .iter()
                .filter_map(|name| header.iter().position(|h| h == name))
                .filter_map(|column| values.get(column)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// The flows of `pid`, each checked to have moved `per_connection` bytes
/// each way on every connection it opened: a socket tracked from its birth
/// counts in full, one that was never tracked not at all. Returns the
/// connections they opened.
fn assert_whole_connections(report: &Report, pid: u32, per_connection: u64) -> u64 {
    let flows: Vec<&Flow> = report.flows_of(pid);
    for flow in &flows {
        assert_eq!(
            (flow.tx_bytes, flow.rx_bytes),
            (per_connection * flow.connections_opened, per_connection * flow.connections_opened),
            "every tracked connection of pid {pid} moved {per_connection} byte(s) each way, and no socket may be \
             counted in part: {flow:#?}"
        );
    }
    flows.iter().map(|f| f.connections_opened).sum()
}

/// `--max-sockets 1024` with more live sockets than that: an exact transfer
/// on a connection opened first (tracked), then two floods of idle
/// loopback connections. Sockets past the table's capacity are counted
/// once each (not once per event: the late flood's sockets move bytes while
/// the table is full, and the count does not move with them), a warning
/// says the table is full, the early transfer is exact, and once the first
/// flood is gone and the table has room, the late flood's sockets, which
/// were counted, are still not tracked (a partial count would not be
/// exact).
#[test]
fn sockets_past_max_sockets_are_counted_once_and_the_tracked_ones_stay_exact() {
    let _serial = serial();
    const MAX_SOCKETS: u64 = 1024;
    /// The table's slots for it (twice as many, a power of two): at most
    /// this many sockets are tracked.
    const SLOTS: u64 = 2048;
    /// Connections of the first flood (two sockets each) and of the late
    /// one, which moves bytes while the table is full and after.
    const FILLER: u64 = 600;
    const LATE: u64 = 500;
    /// The early transfer, on a connection opened before the floods.
    const N: u64 = 123_457;
    const M: u64 = 65_537;

    let sockets_before = host_sockets();
    let opens_before = host_opens();
    let tracer = Tracer::start(&["--max-sockets", &MAX_SOCKETS.to_string()]);
    let stats = bpf::owned_by(tracer.pid()).map("STATS");
    let untracked = || bpf::percpu_u64_sum(stats, STAT_MAP_FULL);

    // The early connection: established (both ends, so both are in the
    // table) before the floods, its bytes moved once the table is full.
    let (mut early_server, port, early_server_pid) = server(&["--read", &N.to_string(), "--answer", &M.to_string()]);
    let mut early_client = traffic(
        "early client",
        &[
            "client",
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--send",
            &N.to_string(),
            "--expect",
            &M.to_string(),
            "--wait-go",
        ],
    );
    let early_client_pid: u32 = early_client.expect("connected", LINE_TIMEOUT).num("pid");
    wait_until("the early connection established on the server side", TICKS_TIMEOUT, || {
        ss_sockets("established", port).len() == 1
    });
    // The table must still have room for the early pair, or the test shows
    // nothing: only a host with more than MAX_SOCKETS busy sockets of its
    // own (another load running) fills it this early.
    let early = untracked();
    assert_eq!(
        early,
        0,
        "{early} sockets already untracked before this test's first connection: the host's other sockets \
         ({sockets_before} at the start, {} opened since) filled the {MAX_SOCKETS}-entry table",
        host_opens() - opens_before
    );

    // The floods: together far more sockets than the table holds.
    let mut filler = traffic("filler flood", &["idle-pairs", "--conns", &FILLER.to_string()]);
    let filler_ready = filler.expect("ready", Duration::from_secs(60));
    assert_eq!(filler_ready.num::<u64>("n"), FILLER);
    let filler_port: u16 = filler_ready.num("port");
    let mut late = traffic("late flood", &["idle-pairs", "--conns", &LATE.to_string(), "--wait-go"]);
    let ready = late.expect("ready", Duration::from_secs(60));
    let late_pid: u32 = ready.num("pid");
    // Ours, alive now: the early pair and its listener, both floods with
    // their listeners. At most SLOTS of them can be in the table.
    let ours = 3 + 2 * FILLER + 1 + 2 * LATE + 1;
    wait_until("the table-full warning on the tracer's stderr", TICKS_TIMEOUT, || {
        tracer.stderr().contains("the socket table is full")
    });
    // Each count below is bracketed by the host's opens, read before and
    // after it: a socket another process opens in between may be counted.
    let opens_before_peak = host_opens();
    let at_peak = untracked();
    let opens_to_peak = host_opens() - opens_before;
    let bound = |opens_since: u64| sockets_before + opens_since + 64;
    assert!(
        at_peak >= ours - SLOTS,
        "{ours} live sockets of this test with a table of {SLOTS} slots, but only {at_peak} counted as untracked"
    );
    assert!(
        at_peak <= bound(opens_to_peak),
        "{at_peak} sockets counted as untracked, more than could exist: {sockets_before} TCP sockets on the host \
         at the start, {opens_to_peak} opened since (this test's {ours} included)"
    );

    // The late flood moves a byte each way on every connection while the
    // table is full: its untracked sockets are not counted again.
    late.say("go");
    late.expect("touched", LINE_TIMEOUT);
    let after_touch = untracked();
    let opened_meanwhile = host_opens() - opens_before_peak;
    assert!(
        after_touch - at_peak <= sockets_before + opened_meanwhile + 64,
        "untracked sockets went from {at_peak} to {after_touch} while only the late flood's (already counted) \
         sockets moved bytes ({sockets_before} TCP sockets on the host at the start, {opened_meanwhile} connections \
         opened on the host meanwhile): counted per event, not per socket"
    );

    // The early transfer, table full.
    early_client.say("go");
    early_client.expect("received", LINE_TIMEOUT);
    early_client.expect("closed", LINE_TIMEOUT);
    let served = early_server.expect("served", LINE_TIMEOUT);
    assert_eq!((served.num::<u64>("rx"), served.num::<u64>("tx")), (N, M), "{served:?}");

    // Room again: the first flood goes (its tracked sockets leave the
    // table), and the late flood moves another byte each way.
    filler.finish();
    let filler_port = format!(":{filler_port}");
    wait_until("the first flood's sockets destroyed", TICKS_TIMEOUT, || {
        let args =
            ["-tanH", "exclude", "time-wait", "(", "sport", "=", &filler_port, "or", "dport", "=", &filler_port, ")"];
        run("ss", &args).trim().is_empty()
    });
    late.say("go");
    late.expect("touched", LINE_TIMEOUT);

    let report = tracer.stop();
    let stderr_note = format!("tracer stats {:?}", report.tracer);
    assert!(
        report.tracer.map_full_drops >= after_touch,
        "the report's map_full_drops ({}) is below what the kernel counted before ({after_touch}); {stderr_note}",
        report.tracer.map_full_drops
    );
    let opens_total = host_opens() - opens_before;
    assert!(
        report.tracer.map_full_drops <= bound(opens_total),
        "{} untracked sockets reported, more than could exist ({sockets_before} at the start, {opens_total} \
         opened since); {stderr_note}",
        report.tracer.map_full_drops
    );

    let client = report.flow(early_client_pid, "client", "127.0.0.1", port);
    assert_eq!(
        (client.tx_bytes, client.rx_bytes, client.connections_opened, client.connections_closed),
        (N, M, 1, 1),
        "the early client's flow (sent {N}, received {M} on one connection): {client:#?}"
    );
    let server = report.flow(early_server_pid, "server", "127.0.0.1", port);
    assert_eq!(
        (server.tx_bytes, server.rx_bytes, server.connections_opened, server.connections_closed),
        (M, N, 1, 1),
        "the early server's flow (received {N}, answered {M} on one connection): {server:#?}"
    );
    // The late flood's connections: two bytes each way on each tracked
    // one; none tracked halfway (after the table had room again).
    let late_tracked = assert_whole_connections(&report, late_pid, 2);
    assert!(late_tracked <= 2 * LATE, "pid {late_pid} opened {late_tracked} connections, more than its {LATE}");
    late.finish();
    eprintln!(
        "max-sockets {MAX_SOCKETS}: {ours} live sockets of this test; {at_peak} untracked at the peak, \
         {after_touch} after the late flood moved bytes, {} reported ({sockets_before} host sockets at the start, \
         {opens_total} opened during the test); late-flood connections tracked: {late_tracked} of {}",
        report.tracer.map_full_drops,
        2 * LATE
    );
}

/// `TRACER_RING_BYTES=4096` (room for about ten final records), the tracer
/// stopped (SIGSTOP: nothing drains the ring) and a few thousand short
/// connections: the final records that find the ring full wait in the
/// overflow map, the kernel counts them as deferred, and once the tracer
/// runs again every byte and connection is in the report; none is lost.
#[test]
fn a_full_ring_buffer_defers_final_records_and_every_byte_counts() {
    let _serial = serial();
    const CONNECTIONS: u64 = 3_000;
    const SIZE: u64 = 1_001;
    let (mut sink, port, sink_pid) =
        server(&["--conns", &CONNECTIONS.to_string(), "--read", &SIZE.to_string(), "--answer", "0"]);
    let tracer = Tracer::start_with_env("1s", &["--port", &port.to_string()], &[("TRACER_RING_BYTES", "4096")]);
    let stats = bpf::owned_by(tracer.pid()).map("STATS");
    let deferred_at_start = bpf::percpu_u64_sum(stats, STAT_EVENTS_DEFERRED);
    signal(tracer.pid(), libc::SIGSTOP);

    let mut churn = traffic(
        "churn",
        &[
            "churn",
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--count",
            &CONNECTIONS.to_string(),
            "--send",
            &SIZE.to_string(),
        ],
    );
    let done = churn.expect("done", Duration::from_secs(120));
    let churn_pid: u32 = done.num("pid");
    assert_eq!(done.num::<u64>("n"), CONNECTIONS, "{done:?}");
    let served = sink.expect("served", LINE_TIMEOUT);
    assert_eq!(served.num::<u64>("rx"), CONNECTIONS * SIZE, "{served:?}");
    // 2 final records per connection; a 4 KiB ring that nothing drains
    // passes only a dozen of them.
    let deferred = bpf::percpu_u64_sum(stats, STAT_EVENTS_DEFERRED) - deferred_at_start;
    signal(tracer.pid(), libc::SIGCONT);
    let report = tracer.stop();
    eprintln!(
        "ring 4096 B: {CONNECTIONS} connections in {} s, {deferred} final records deferred to the overflow map; \
         tracer stats {:?}",
        done.get("secs"),
        report.tracer
    );
    assert!(
        deferred >= CONNECTIONS,
        "{} final records of {CONNECTIONS} connections, a 4 KiB ring, and only {deferred} deferred",
        2 * CONNECTIONS
    );
    assert_eq!(report.tracer.events_dropped, 0, "no final record may be lost: {:?}", report.tracer);
    assert!(
        report.tracer.events_deferred >= deferred_at_start + deferred,
        "the report's events_deferred is below the kernel's count ({} before the churn, {deferred} in it): {:?}",
        deferred_at_start,
        report.tracer
    );

    let client = report.flow(churn_pid, "client", "127.0.0.1", port);
    assert_eq!(
        (client.tx_bytes, client.rx_bytes, client.connections_opened, client.connections_closed),
        (CONNECTIONS * SIZE, 0, CONNECTIONS, CONNECTIONS),
        "churn client ({CONNECTIONS} connections of {SIZE} bytes): {client:#?}; every flow on port {port}: {:#?}",
        report.flows
    );
    let server = report.flow(sink_pid, "server", "127.0.0.1", port);
    assert_eq!(
        (server.tx_bytes, server.rx_bytes, server.connections_opened, server.connections_closed),
        (0, CONNECTIONS * SIZE, CONNECTIONS, CONNECTIONS),
        "sink ({CONNECTIONS} connections of {SIZE} bytes): {server:#?}; every flow on port {port}: {:#?}",
        report.flows
    );
}

/// Sends `signal` to the process `pid` (one this test started).
fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a pid this test started; no memory is involved.
    let ret = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(ret, 0, "kill({pid}, {signal}): {}", std::io::Error::last_os_error());
}
