//! TCP health on real traffic (issue 12): RTT and connect latency across a
//! link with a known added delay, compared with the kernel's own
//! `TCP_INFO`; failed connects by reason with the SYN retransmits the
//! kernel counted; a slow reader and the sender it holds back; an RTT that
//! steps up mid-run. The delayed link is two network namespaces joined by a
//! veth pair, one direction delayed by `netdelay` ([`DelayedLink`]).

use std::time::Duration;

use serde_json::Value;
use tracer_tests::{serial, DelayedLink, Finding, Line, Proc, Report, Tracer};

use super::{traffic, LINE_TIMEOUT, TRAFFIC};

fn in_server(link: &DelayedLink, args: &[&str]) -> Proc {
    Proc::spawn("traffic (server ns)", link.server_command(TRAFFIC, args))
}

fn in_client(link: &DelayedLink, args: &[&str]) -> Proc {
    Proc::spawn("traffic (client ns)", link.client_command(TRAFFIC, args))
}

fn info(proc: &mut Proc) -> Line {
    proc.say("info");
    proc.expect("info", LINE_TIMEOUT)
}

/// The report's JSON object of one flow (with the TCP health fields).
fn flow_json<'a>(report: &'a Report, pid: u32, role: &str, service_port: u16) -> &'a Value {
    let flows = report.json["flows"].as_array().expect("flows");
    flows
        .iter()
        .find(|f| {
            f["pid"] == pid
                && f["role"] == role
                && (f["remote_port"] == service_port || f["local_port"] == service_port)
        })
        .unwrap_or_else(|| panic!("no {role} flow of pid {pid} on port {service_port} in {flows:#?}"))
}

fn number(value: &Value, path: &[&str]) -> f64 {
    let mut at = value;
    for key in path {
        at = &at[*key];
    }
    at.as_f64().unwrap_or_else(|| panic!("{} is not a number in {value:#}", path.join(".")))
}

fn within(value: f64, target: f64, share: f64) -> bool {
    (value - target).abs() <= share * target
}

fn findings(report: &Report, pid: u32, kind: &str) -> Vec<Finding> {
    report.findings_of(pid).into_iter().filter(|f| f.kind == kind).collect()
}

/// RTT and connect latency across a 100 ms link, then an RTT step to 400 ms
/// mid-run: the RTT reported at the end matches the kernel's smoothed RTT
/// at the same moment, connect latency matches the delay (client: the SYN
/// is delayed; server: the handshake's ACK is), `latency_rise` names the
/// remote, and a request/response flow whose throughput fell with it gets
/// `throughput_decay` with `likely_cause: rtt_rise`. A loopback control
/// keeps its tiny RTT and gets neither.
#[test]
fn rtt_and_connect_latency_follow_the_link_and_a_step_is_latency_rise() {
    let _serial = serial();
    let mut link = DelayedLink::new(100);
    let port = 5101;
    let bind = link.server_addr(port).to_string();
    let mut echo = in_server(&link, &["echo-server", "--bind", &bind, "--conns", "2"]);
    let echo_pid: u32 = echo.expect("ready", LINE_TIMEOUT).num("pid");
    let (control_server, control_port, _) = super::server(&["--conns", "1"]);
    let tracer = Tracer::start(&["--port", &port.to_string(), "--port", &control_port.to_string()]);
    tracer.wait_samples(1);

    // A prober (small pings, kept for the RTT) and a pusher (20 KB
    // request/response back to back: its throughput is one exchange per RTT).
    let mut probe = in_client(&link, &["rtt-probe", "--connect", &bind, "--every-ms", "50"]);
    let probe_pid: u32 = probe.expect("connected", LINE_TIMEOUT).num("pid");
    let mut pusher = in_client(&link, &["rtt-probe", "--connect", &bind, "--every-ms", "1", "--size", "20000"]);
    let pusher_pid: u32 = pusher.expect("connected", LINE_TIMEOUT).num("pid");
    let control_addr = format!("127.0.0.1:{control_port}");
    let mut control = traffic(
        "control",
        &["paced-client", "--connect", &control_addr, "--from-rate", "20000", "--to-rate", "20000", "--secs", "60"],
    );
    let control_pid: u32 = control.expect("connected", LINE_TIMEOUT).num("pid");

    tracer.wait_samples(8);
    link.set_delay(400);
    tracer.wait_samples(9);
    let kernel = info(&mut probe);
    let report = tracer.stop();
    drop((pusher, control));
    control_server.finish();
    echo.say("close");

    let flow = flow_json(&report, probe_pid, "client", port);
    eprintln!("probe flow: {flow:#}\nkernel: {}", kernel.0);
    let rtt_last = number(flow, &["rtt_us", "last"]);
    let kernel_rtt: f64 = kernel.num("rtt_us");
    assert!(within(rtt_last, kernel_rtt, 0.10), "tracer RTT {rtt_last} us vs the kernel's {kernel_rtt} us");
    assert!(within(rtt_last, 400_000.0, 0.10), "tracer RTT {rtt_last} us with a 400 ms delay");
    let min_rtt = number(flow, &["rtt_us", "min_rtt"]);
    assert!(within(min_rtt, kernel.num::<f64>("min_rtt_us"), 0.10), "min_rtt {min_rtt} vs the kernel's");
    assert!(within(min_rtt, 100_000.0, 0.10), "min_rtt {min_rtt} us with a 100 ms delay at first");
    assert!(number(flow, &["rtt_us", "min"]) < 120_000.0 && number(flow, &["rtt_us", "max"]) > 350_000.0);
    // Client connect latency: the SYN waited 100 ms.
    assert_eq!(number(flow, &["connect_us", "count"]), 1.0, "{flow:#}");
    let connect = number(flow, &["connect_us", "mean"]);
    assert!(within(connect, 100_000.0, 0.10), "client connect latency {connect} us");
    // Server side: the handshake round trip the kernel measured (its ACK
    // waited 100 ms).
    let server_flow = flow_json(&report, echo_pid, "server", port);
    let accepted = number(server_flow, &["connect_us", "mean"]);
    assert!(within(accepted, 100_000.0, 0.10), "server handshake RTT {accepted} us: {server_flow:#}");
    assert_eq!(number(server_flow, &["connect_us", "count"]), 2.0);

    let rises = findings(&report, probe_pid, "latency_rise");
    assert_eq!(rises.len(), 1, "{:#?}", report.findings_of(probe_pid));
    assert!(rises[0].number("ratio") >= 2.0, "{:#?}", rises[0]);
    assert_eq!(rises[0].remote_addr.as_deref(), Some(link.server_addr(port).ip().to_string().as_str()));
    let decay = findings(&report, pusher_pid, "throughput_decay");
    assert!(
        !decay.is_empty(),
        "no throughput_decay for the request/response flow: {:#?}",
        report.findings_of(pusher_pid)
    );
    assert_eq!(decay[0].evidence["likely_cause"], "rtt_rise", "{:#?}", decay[0]);

    let control_flow = flow_json(&report, control_pid, "client", control_port);
    assert!(number(control_flow, &["rtt_us", "max"]) < 5_000.0, "loopback RTT: {control_flow:#}");
    assert!(report.findings_of(control_pid).is_empty(), "{:#?}", report.findings_of(control_pid));
}

/// Connects to a closed port (refused), to a port answered with ICMP
/// host-unreachable, and to one whose SYNs are dropped (the client gives
/// up): exact counts per reason per remote, the SYN retransmits the kernel
/// counted for those sockets, and `connect_failures` with the split.
#[test]
fn failed_connects_are_counted_by_reason_with_the_kernels_syn_retransmits() {
    let _serial = serial();
    let link = DelayedLink::new(1);
    let (refused_port, unreachable_port, timeout_port) = (5111, 5112, 5113);
    let refused = link.closed_port(refused_port).to_string();
    let unreachable = link.reject_unreachable(unreachable_port).to_string();
    let timeout = link.drop_syns(timeout_port).to_string();
    let ports = [refused_port, unreachable_port, timeout_port].map(|p| p.to_string());
    let tracer = Tracer::start(&["--port", &ports[0], "--port", &ports[1], "--port", &ports[2]]);

    let run = |addr: &str, extra: &[&str]| {
        let mut proc = in_client(&link, &[&["connect-fail", "--connect", addr, "--count", "3"], extra].concat());
        let pid: u32 = proc.expect("ready", LINE_TIMEOUT).num("pid");
        (proc, pid)
    };
    let (mut refusing, refused_pid) = run(&refused, &[]);
    let (mut unreached, unreachable_pid) = run(&unreachable, &[]);
    let (mut waiting, timeout_pid) = run(&timeout, &["--give-up-ms", "1200"]);
    let mut expected = Vec::new();
    for (proc, pid, port, reason) in [
        (&mut refusing, refused_pid, refused_port, "refused"),
        (&mut unreached, unreachable_pid, unreachable_port, "unreachable"),
        (&mut waiting, timeout_pid, timeout_port, "timeout"),
    ] {
        let done = proc.expect("done", Duration::from_secs(60));
        assert_eq!(done.num::<u64>("failed"), 3, "{}", done.0);
        expected.push((pid, port, reason, done.num::<u64>("syn_retrans_total")));
    }
    tracer.wait_samples(2);
    let report = tracer.stop();

    for (pid, port, reason, syn_retransmits) in expected {
        let flow = flow_json(&report, pid, "client", port);
        eprintln!("{reason}: {flow:#}");
        assert_eq!(number(flow, &["failed_connects"]), 3.0, "{flow:#}");
        for name in ["refused", "timeout", "unreachable", "other"] {
            let want = if name == reason { 3.0 } else { 0.0 };
            assert_eq!(number(flow, &["failed_connects_by_reason", name]), want, "{name} for {reason}: {flow:#}");
        }
        assert_eq!(number(flow, &["syn_retransmits"]), syn_retransmits as f64, "{reason}: {flow:#}");
        let found = findings(&report, pid, "connect_failures");
        assert_eq!(found.len(), 1, "{reason}: {:#?}", report.findings_of(pid));
        assert_eq!(found[0].evidence["by_reason"][reason], 3, "{:#?}", found[0]);
        assert_eq!(found[0].evidence["attempts"], 3);
    }
}

/// A reader that reads 4 KB every 200 ms while its peer sends as fast as
/// it can: the reader's backlog reaches most of its receive buffer
/// (`slow_reader`), the sender spends its busy time limited by the
/// reader's window (`peer_not_reading`). A fast reader beside them, with a
/// sender of its own, gets neither.
#[test]
fn a_slow_reader_and_the_sender_it_holds_back_are_named() {
    let _serial = serial();
    let mut reader = traffic(
        "slow-reader",
        &[
            "slow-reader",
            "--bind",
            "127.0.0.1:0",
            "--rcvbuf",
            "262144",
            "--read-every-ms",
            "200",
            "--read-chunk",
            "4096",
        ],
    );
    let ready = reader.expect("ready", LINE_TIMEOUT);
    let (slow_port, reader_pid): (u16, u32) = (ready.num("port"), ready.num("pid"));
    let (fast_server, fast_port, fast_server_pid) = super::server(&["--conns", "1"]);
    let ports = [slow_port.to_string(), fast_port.to_string()];
    let tracer = Tracer::start(&["--port", &ports[0], "--port", &ports[1]]);
    tracer.wait_samples(1);
    let slow_addr = format!("127.0.0.1:{slow_port}");
    let mut sender = traffic("fast-sender", &["fast-sender", "--connect", &slow_addr, "--bytes", "500000000"]);
    let sender_pid: u32 = sender.expect("connected", LINE_TIMEOUT).num("pid");
    let fast_addr = format!("127.0.0.1:{fast_port}");
    let mut fast = traffic(
        "paced",
        &["paced-client", "--connect", &fast_addr, "--from-rate", "2000000", "--to-rate", "2000000", "--secs", "60"],
    );
    let fast_pid: u32 = fast.expect("connected", LINE_TIMEOUT).num("pid");
    let accepted = reader.expect("accepted", LINE_TIMEOUT);
    let rcvbuf: f64 = accepted.num("rcvbuf");

    tracer.wait_samples(13);
    let mut backlog = 0.0f64;
    for _ in 0..4 {
        backlog = backlog.max(reader.expect("queue", LINE_TIMEOUT).num::<f64>("rx"));
    }
    let report = tracer.stop();
    reader.say("close");
    drop((sender, fast));
    fast_server.finish();

    let reader_flow = flow_json(&report, reader_pid, "server", slow_port);
    eprintln!("reader: {reader_flow:#}\nFIONREAD up to {backlog} of rcvbuf {rcvbuf}");
    let reported = number(reader_flow, &["recv_queue_bytes", "max"]);
    assert!(reported >= 0.5 * rcvbuf && reported <= rcvbuf, "backlog {reported} of a {rcvbuf}-byte buffer");
    assert!(within(reported, backlog, 0.15), "tracer backlog {reported} vs FIONREAD {backlog}");
    let slow = findings(&report, reader_pid, "slow_reader");
    assert_eq!(slow.len(), 1, "{:#?}", report.findings_of(reader_pid));
    let process = report.json["processes"].as_array().expect("processes").iter().find(|p| p["pid"] == reader_pid);
    assert!(process.is_some_and(|p| p["recv_queue_bytes"]["max"].as_f64() >= Some(0.5 * rcvbuf)), "{process:#?}");

    let sender_flow = flow_json(&report, sender_pid, "client", slow_port);
    eprintln!("sender: {sender_flow:#}");
    let (busy, rwnd) = (number(sender_flow, &["limited_ms", "busy"]), number(sender_flow, &["limited_ms", "rwnd"]));
    assert!(busy >= 5000.0 && rwnd >= 0.5 * busy, "busy {busy} ms, rwnd-limited {rwnd} ms");
    assert!(number(sender_flow, &["send_queue_bytes", "max"]) > 0.0);
    let blocked = findings(&report, sender_pid, "peer_not_reading");
    assert_eq!(blocked.len(), 1, "{:#?}", report.findings_of(sender_pid));

    for pid in [fast_pid, fast_server_pid] {
        for kind in ["slow_reader", "peer_not_reading"] {
            assert!(
                findings(&report, pid, kind).is_empty(),
                "{kind} for the fast pair: {:#?}",
                report.findings_of(pid)
            );
        }
    }
}
