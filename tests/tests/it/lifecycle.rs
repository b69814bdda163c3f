//! Socket lifecycle (issue 3): CLOSE_WAIT pile-ups with owner and age
//! (made during the trace and before it), a leaking client in the
//! timeline, failed connects and resets, 20,000 short connections without
//! a leak in the tracer's table, retransmits equal to the kernel's count
//! under injected loss, and sockets in another network namespace found at
//! start.

use std::{
    collections::BTreeSet,
    net::TcpStream,
    thread,
    time::{Duration, Instant},
};

use tracer_tests::{free_port, serial, ss_sockets, wait_until, NetNs, Proc, Report, SsSocket, Tracer};

use crate::{server, traffic, LINE_TIMEOUT, TRAFFIC};

/// Connections piled up in CLOSE_WAIT.
const K: usize = 20;

/// A `cw-server` that accepted `K` connections from this process, whose
/// clients then closed: `K` sockets in CLOSE_WAIT, as `ss` confirms. The
/// two instants bracket the close (just before it, just after it), so ages
/// can be checked however the test thread was scheduled.
fn close_wait_pileup() -> (Proc, u16, u32, (Instant, Instant)) {
    let mut server = traffic("cw-server", &["cw-server", "--conns", &K.to_string()]);
    let ready = server.expect("ready", LINE_TIMEOUT);
    let (port, pid): (u16, u32) = (ready.num("port"), ready.num("pid"));
    let clients: Vec<TcpStream> =
        (0..K).map(|i| TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("client {i}: {e}"))).collect();
    server.expect("accepted", LINE_TIMEOUT);
    let closing = Instant::now();
    drop(clients);
    let closed_at = Instant::now();
    wait_until(&format!("{K} sockets in CLOSE_WAIT on port {port}"), Duration::from_secs(30), || {
        ss_sockets("close-wait", port).len() == K
    });
    (server, port, pid, (closing, closed_at))
}

/// The report agrees with `ss`: `K` CLOSE_WAIT sockets on `port`, all
/// owned by `pid`, the same remote ports, counted in the process's states.
fn assert_close_wait_like_ss(report: &Report, port: u16, pid: u32, ss: &[SsSocket], lower_bound: bool) {
    assert_eq!(ss.len(), K, "ss shows {ss:?}");
    assert!(ss.iter().all(|s| s.pids == [pid]), "ss owners differ from the server's pid {pid}: {ss:?}");
    let listed = report.close_wait_on_port(port);
    assert_eq!(listed.len(), K, "close_wait entries on port {port}: {listed:#?}");
    for entry in &listed {
        assert_eq!(
            (entry.pid, entry.comm.as_str(), entry.local_addr.as_str(), entry.remote_addr.as_str()),
            (pid, "traffic", "127.0.0.1", "127.0.0.1"),
            "{entry:#?}"
        );
        assert_eq!(entry.age_is_lower_bound, lower_bound, "{entry:#?}");
    }
    let reported: BTreeSet<u16> = listed.iter().map(|c| c.remote_port).collect();
    let seen: BTreeSet<u16> = ss.iter().map(|s| s.remote_port).collect();
    assert_eq!(reported, seen, "the report's CLOSE_WAIT peers are not the ones ss shows");
    assert_eq!(report.process(pid).sockets_in("CLOSE_WAIT"), K as u64, "{:#?}", report.process(pid));
    let ages: Vec<f64> = report.close_wait.iter().map(|c| c.age_secs).collect();
    assert!(ages.windows(2).all(|w| w[0] >= w[1]), "close_wait must be oldest first: {ages:?}");
}

#[test]
fn close_wait_pileup_is_reported_with_owner_and_growing_age() {
    let _serial = serial();
    // Two tracers watch the same pile-up; the later report must show older
    // sockets, by the time between the two stops.
    let first = Tracer::start(&[]);
    let second = Tracer::start(&[]);
    let (_server, port, pid, (closing, closed_at)) = close_wait_pileup();
    let ss = ss_sockets("close-wait", port);
    thread::sleep(Duration::from_millis(1000));
    let earliest = closed_at.elapsed().as_secs_f64();
    let first = first.stop();
    let latest = closing.elapsed().as_secs_f64();
    // At least 1.5 s between the two reports (a sleep only runs long).
    thread::sleep(Duration::from_millis(1500));
    let second = second.stop();

    assert_close_wait_like_ss(&first, port, pid, &ss, false);
    assert_close_wait_like_ss(&second, port, pid, &ss, false);
    for entry in first.close_wait_on_port(port) {
        assert!(
            entry.age_secs >= earliest - 0.3 && entry.age_secs <= latest + 0.3,
            "age {} s, but the clients closed {earliest:.2}-{latest:.2} s before the report",
            entry.age_secs
        );
    }
    let oldest_first = first.close_wait_on_port(port).iter().map(|c| c.age_secs).fold(0.0, f64::max);
    let youngest_second = second.close_wait_on_port(port).iter().map(|c| c.age_secs).fold(f64::MAX, f64::min);
    assert!(
        youngest_second >= oldest_first + 1.0,
        "ages must grow between reports 1.5 s apart: first up to {oldest_first} s, second from {youngest_second} s"
    );
}

#[test]
fn close_wait_pileup_from_before_the_trace_is_reported() {
    let _serial = serial();
    let (_server, port, pid, _) = close_wait_pileup();
    let ss = ss_sockets("close-wait", port);
    let launched = Instant::now();
    let tracer = Tracer::start(&[]);
    thread::sleep(Duration::from_millis(1000));
    let report = tracer.stop();
    let run = launched.elapsed().as_secs_f64();

    assert_close_wait_like_ss(&report, port, pid, &ss, true);
    for entry in report.close_wait_on_port(port) {
        // Measured from the tracer's start (not the socket's): at least the
        // report's duration, at most the tracer's whole run (its report
        // may be written a while after the last sample on a busy machine).
        assert!(
            entry.age_secs >= report.duration_secs - 0.1 && entry.age_secs <= run + 0.1,
            "age {} s of a socket found at start, in a {} s report of a tracer run {run:.3} s",
            entry.age_secs,
            report.duration_secs
        );
    }
}

#[test]
fn leaking_client_rises_in_the_timeline_while_a_polite_one_stays_flat() {
    let _serial = serial();
    const COUNT: u64 = 40;
    let (_server, port, _) = server(&["--conns", "200", "--read", "100", "--answer", "100"]);
    let target = format!("127.0.0.1:{port}");
    let tracer = Tracer::start(&[]);
    let count = COUNT.to_string();
    let mut leaky =
        traffic("leaky-client", &["leaky-client", "--connect", &target, "--count", &count, "--every-ms", "100"]);
    let mut polite = traffic(
        "polite-client",
        &[
            "polite-client",
            "--connect",
            &target,
            "--count",
            &count,
            "--every-ms",
            "100",
            "--send",
            "100",
            "--expect",
            "100",
        ],
    );
    let leaky_pid: u32 = leaky.expect("ready", LINE_TIMEOUT).num("pid");
    let polite_pid: u32 = polite.expect("ready", LINE_TIMEOUT).num("pid");
    leaky.expect("done", LINE_TIMEOUT);
    polite.expect("done", LINE_TIMEOUT);
    let report = tracer.stop();

    let leaky_counts: Vec<u64> = report.timeline.iter().map(|s| s.sockets_in(leaky_pid, "ESTABLISHED")).collect();
    let polite_counts: Vec<u64> = report.timeline.iter().map(|s| s.sockets_in(polite_pid, "ESTABLISHED")).collect();
    let context = format!("leaky ESTABLISHED per sample {leaky_counts:?}, polite {polite_counts:?}");
    assert!(leaky_counts.windows(2).all(|w| w[0] <= w[1]), "a leak never shrinks: {context}");
    assert_eq!(leaky_counts.last().copied(), Some(COUNT), "all {COUNT} leaked connections at the end: {context}");
    let rising: Vec<u64> = leaky_counts.iter().copied().filter(|&c| c > 0 && c < COUNT).collect();
    assert!(rising.len() >= 2, "the leak must show as a rise over samples, not one jump: {context}");
    assert!(polite_counts.iter().all(|&c| c <= 1), "the polite client holds at most one connection: {context}");
    assert_eq!(report.process(leaky_pid).sockets_in("ESTABLISHED"), COUNT, "{:#?}", report.process(leaky_pid));
    assert_eq!(report.process(polite_pid).sockets_in("ESTABLISHED"), 0, "{:#?}", report.process(polite_pid));

    let leaky_flow = report.flow(leaky_pid, "client", "127.0.0.1", port);
    assert_eq!((leaky_flow.connections_opened, leaky_flow.connections_closed), (COUNT, 0), "{leaky_flow:#?}");
    let polite_flow = report.flow(polite_pid, "client", "127.0.0.1", port);
    assert_eq!(
        (polite_flow.connections_opened, polite_flow.connections_closed, polite_flow.tx_bytes, polite_flow.rx_bytes),
        (COUNT, COUNT, 100 * COUNT, 100 * COUNT),
        "{polite_flow:#?}"
    );
}

#[test]
fn connect_to_a_closed_port_counts_a_failed_connect_and_a_reset() {
    let _serial = serial();
    let port = free_port("127.0.0.1".parse().expect("ip"));
    let tracer = Tracer::start(&[]);
    let mut client = traffic("refused", &["refused", "--connect", &format!("127.0.0.1:{port}")]);
    let pid: u32 = client.expect("refused", LINE_TIMEOUT).num("pid");
    let report = tracer.stop();

    let flow = report.flow(pid, "client", "127.0.0.1", port);
    assert_eq!(flow.failed_connects, 1, "{flow:#?}");
    assert!(flow.resets >= 1, "the refusal is a reset from that remote: {flow:#?}");
    assert_eq!((flow.tx_bytes, flow.rx_bytes, flow.connections_closed), (0, 0, 0), "{flow:#?}");
    let process = report.process(pid);
    assert_eq!(process.failed_connects, 1, "{process:#?}");
    assert!(process.resets_received >= 1, "{process:#?}");
    assert!(process.sockets.is_empty(), "nothing stays open: {process:#?}");
}

#[test]
fn twenty_thousand_short_connections_are_all_counted_and_none_leaks() {
    let _serial = serial();
    const CONNECTIONS: u64 = 20_000;
    const SIZE: u64 = 1024;
    let baseline = Tracer::start(&[]).stop().tracer.live_sockets;

    let (mut server, port, server_pid) =
        server(&["--conns", &CONNECTIONS.to_string(), "--read", &SIZE.to_string(), "--answer", "0"]);
    let tracer = Tracer::start(&[]);
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
    let done = churn.expect("done", Duration::from_secs(240));
    let client_pid: u32 = done.num("pid");
    assert_eq!(done.num::<u64>("n"), CONNECTIONS, "churn ran out of time: {done:?}");
    server.expect("served", LINE_TIMEOUT);
    let report = tracer.stop();

    let client = report.flow(client_pid, "client", "127.0.0.1", port);
    assert_eq!(
        (client.connections_opened, client.connections_closed, client.tx_bytes, client.rx_bytes),
        (CONNECTIONS, CONNECTIONS, CONNECTIONS * SIZE, 0),
        "client flow after {}: {client:#?}; tracer stats {:?}",
        done.0,
        report.tracer
    );
    assert!(report.process(client_pid).sockets.is_empty(), "{:#?}", report.process(client_pid));
    // TIME_WAIT sockets are not tracked: the table is back to what it was,
    // give or take the host's own comings and goings.
    let after = report.tracer.live_sockets;
    assert!(
        after <= baseline + 50,
        "{after} sockets tracked after {CONNECTIONS} closed connections, {baseline} before: a leak; stats {:?}",
        report.tracer
    );
    let server_flow = report.flow(server_pid, "server", "127.0.0.1", port);
    let on_port: Vec<_> = report.flows.iter().filter(|f| f.service_port() == port && f.pid != client_pid).collect();
    assert_eq!(
        (server_flow.connections_opened, server_flow.connections_closed, server_flow.rx_bytes, server_flow.tx_bytes),
        (CONNECTIONS, CONNECTIONS, CONNECTIONS * SIZE, 0),
        "the server's flow; all server-side flows on port {port}: {on_port:#?}; tracer stats {:?}",
        report.tracer
    );
}

/// Drops ~5% of the packets to `port` inside `netns` while alive (nftables).
struct PacketLoss<'a> {
    netns: &'a NetNs,
}

impl<'a> PacketLoss<'a> {
    const TABLE: &'static str = "tracer_test_loss";

    fn start(netns: &'a NetNs, port: u16) -> Self {
        netns.run("nft", &["add", "table", "inet", Self::TABLE]);
        let loss = PacketLoss { netns };
        netns.run(
            "nft",
            &["add", "chain", "inet", Self::TABLE, "in", "{ type filter hook input priority 0; policy accept; }"],
        );
        let rule = format!("tcp dport {port} numgen random mod 100 < 5 drop");
        let mut args = vec!["add", "rule", "inet", Self::TABLE, "in"];
        args.extend(rule.split(' '));
        netns.run("nft", &args);
        loss
    }
}

impl Drop for PacketLoss<'_> {
    fn drop(&mut self) {
        let _ = self.netns.command("nft", &["delete", "table", "inet", Self::TABLE]).status();
    }
}

#[test]
fn retransmits_equal_the_kernels_count_under_packet_loss() {
    let _serial = serial();
    const SIZE: u64 = 8_000_000;
    let netns = NetNs::create("rtx");
    // A real MTU makes the kernel send multi-segment (GSO) packets: a
    // retransmitted packet can hold several segments.
    netns.run("ip", &["link", "set", "lo", "mtu", "1500"]);
    let mut server = Proc::spawn("server in netns", netns.command(TRAFFIC, &["server", "--answer", "100"]));
    let ready = server.expect("ready", LINE_TIMEOUT);
    let (port, server_pid): (u16, u32) = (ready.num("port"), ready.num("pid"));
    let tracer = Tracer::start(&[]);
    let mut client = Proc::spawn(
        "client in netns",
        netns.command(
            TRAFFIC,
            &[
                "client",
                "--connect",
                &format!("127.0.0.1:{port}"),
                "--send",
                &SIZE.to_string(),
                "--expect",
                "100",
                "--half-close",
                "--wait-go",
                "--wait-close",
            ],
        ),
    );
    let client_pid: u32 = client.expect("connected", LINE_TIMEOUT).num("pid");
    // Loss only once connected: a retransmitted SYN-ACK belongs to a
    // request socket, which no flow owns, yet counts in RetransSegs.
    let before = netns.tcp_counter("RetransSegs");
    let loss = PacketLoss::start(&netns, port);
    client.say("go");
    client.expect("received", Duration::from_secs(120));
    server.expect("served", LINE_TIMEOUT);
    drop(loss);
    // Until no socket of the transfer has anything left to (re)send.
    wait_until("the transfer's sockets to finish closing", Duration::from_secs(30), || {
        let text = netns.run("ss", &["-tanH", "state", "connected", "exclude", "time-wait"]);
        text.lines().all(|l| l.trim().is_empty())
    });
    let after = netns.tcp_counter("RetransSegs");
    client.say("close");
    client.expect("closed", LINE_TIMEOUT);
    let report = tracer.stop();

    let kernel = after - before;
    eprintln!("retransmits: kernel RetransSegs delta {kernel}; report: {:?}", report.flows_of(client_pid));
    assert!(kernel > 0, "5% loss over {SIZE} bytes caused no retransmit: the loss rule did not bite");
    let client_flow = report.flow(client_pid, "client", "127.0.0.1", port);
    let server_flow = report.flow(server_pid, "server", "127.0.0.1", port);
    assert_eq!((client_flow.tx_bytes, client_flow.rx_bytes), (SIZE, 100), "{client_flow:#?}");
    assert_eq!((server_flow.tx_bytes, server_flow.rx_bytes), (100, SIZE), "{server_flow:#?}");
    assert_eq!(
        client_flow.retransmits + server_flow.retransmits,
        kernel,
        "retransmitted segments: client flow {} + server flow {}, kernel RetransSegs delta {kernel}",
        client_flow.retransmits,
        server_flow.retransmits
    );
    assert_eq!(report.process(client_pid).retransmits, client_flow.retransmits);
}

#[test]
fn sockets_in_another_network_namespace_are_found_at_start_with_their_owner() {
    let _serial = serial();
    let netns = NetNs::create("own");
    let mut server = Proc::spawn("cw-server in netns", netns.command(TRAFFIC, &["cw-server", "--conns", "5"]));
    let ready = server.expect("ready", LINE_TIMEOUT);
    let (port, server_pid): (u16, u32) = (ready.num("port"), ready.num("pid"));
    let target = format!("127.0.0.1:{port}");
    let mut holder = Proc::spawn(
        "hold-client in netns",
        netns.command(TRAFFIC, &["hold-client", "--connect", &target, "--conns", "2"]),
    );
    let holder_pid: u32 = holder.expect("connected", LINE_TIMEOUT).num("pid");
    let mut closer = Proc::spawn(
        "closing client in netns",
        netns.command(TRAFFIC, &["hold-client", "--connect", &target, "--conns", "3"]),
    );
    closer.expect("connected", LINE_TIMEOUT);
    server.expect("accepted", LINE_TIMEOUT);
    closer.finish();
    wait_until("3 sockets in CLOSE_WAIT in the namespace", Duration::from_secs(30), || {
        netns.ss_sockets("close-wait", port).len() == 3
    });

    let tracer = Tracer::start(&[]);
    thread::sleep(Duration::from_millis(500));
    let report = tracer.stop();

    let server = report.process(server_pid);
    assert_eq!(
        (server.sockets_in("ESTABLISHED"), server.sockets_in("CLOSE_WAIT")),
        (2, 3),
        "the server's sockets in its namespace: {server:#?}"
    );
    assert_eq!(report.process(holder_pid).sockets_in("ESTABLISHED"), 2, "{:#?}", report.process(holder_pid));
    let listed: Vec<_> = report.close_wait.iter().filter(|c| c.pid == server_pid).collect();
    assert_eq!(listed.len(), 3, "{listed:#?}");
    assert!(listed.iter().all(|c| c.local_port == port && c.age_is_lower_bound && c.comm == "traffic"), "{listed:#?}");
}
