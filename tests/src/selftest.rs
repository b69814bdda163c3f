//! Self-checks of the TCP health tooling (not tracer tests): `netdelay`,
//! [`DelayedLink`] and its failure fixtures, and the `traffic` health modes,
//! checked against the kernel's own numbers. Root, `iptables` needed;
//! ignored by default (they cost ~15 s):
//! `cargo test -p tracer-tests --test tooling -- --ignored --test-threads=1`.

use std::{process::Command, time::Duration};

use tracer_tests::{DelayedLink, Line, Proc};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_traffic");
const WAIT: Duration = Duration::from_secs(20);

fn traffic(command: Command) -> Proc {
    Proc::spawn("traffic", command)
}

fn server_traffic(link: &DelayedLink, args: &[&str]) -> Proc {
    traffic(link.server_command(TRAFFIC, args))
}

fn client_traffic(link: &DelayedLink, args: &[&str]) -> Proc {
    traffic(link.client_command(TRAFFIC, args))
}

fn info(proc: &mut Proc) -> Line {
    proc.say("info");
    proc.expect("info", WAIT)
}

fn near(value: f64, target: f64, tolerance: f64) -> bool {
    (value - target).abs() <= tolerance
}

#[test]
#[ignore = "root, iptables; run by hand with --ignored"]
fn delayed_rtt_and_connect_latency() {
    let mut link = DelayedLink::new(100);
    let bind = link.server_addr(5001).to_string();
    let mut echo = server_traffic(&link, &["echo-server", "--bind", &bind, "--conns", "2"]);
    echo.expect("ready", WAIT);
    let mut probe = client_traffic(&link, &["rtt-probe", "--connect", &bind, "--every-ms", "50"]);
    probe.expect("connected", WAIT);
    std::thread::sleep(Duration::from_secs(2));
    let client = info(&mut probe);
    let server = info(&mut echo);
    eprintln!("client {}\nserver {}", client.0, server.0);
    let rtt: f64 = client.num("rtt_us");
    assert!(near(rtt, 100_000.0, 15_000.0), "client rtt {rtt} us, delay 100 ms");
    let app: f64 = client.num("app_rtt_us");
    assert!(near(app, 100_000.0, 20_000.0), "ping took {app} us");
    let server_rtt: f64 = server.num("rtt_us");
    assert!(near(server_rtt, 100_000.0, 15_000.0), "server rtt {server_rtt} us");

    link.set_delay(300);
    // srtt moves 1/8 of the way per sample: ~20 pings to settle.
    std::thread::sleep(Duration::from_secs(6));
    let stepped = info(&mut probe);
    eprintln!("after step {}", stepped.0);
    let rtt: f64 = stepped.num("rtt_us");
    assert!(near(rtt, 300_000.0, 40_000.0), "client rtt {rtt} us after the step to 300 ms");
    let min_rtt: f64 = stepped.num("min_rtt_us");
    assert!(near(min_rtt, 100_000.0, 15_000.0), "min rtt {min_rtt} us keeps the old minimum");

    // Connect latency from the client side: one delay (the SYN and the ACK
    // are delayed, the SYN-ACK is not).
    let mut one = client_traffic(&link, &["connect-fail", "--connect", &bind, "--count", "1"]);
    let connected = one.expect("connected", WAIT);
    eprintln!("{}", connected.0);
    let ms: f64 = connected.num("ms");
    assert!(near(ms, 300.0, 40.0), "connect took {ms} ms with a 300 ms delay");
    let stats = link.delay_stats();
    eprintln!("{}", stats.0);
    assert!(stats.num::<u64>("packets") > 20);
}

#[test]
#[ignore = "root, iptables; run by hand with --ignored"]
fn failed_connects_by_reason() {
    let link = DelayedLink::new(20);
    // Refused: RST from a closed port.
    let refused = link.closed_port(5002).to_string();
    let mut proc = client_traffic(&link, &["connect-fail", "--connect", &refused, "--count", "3"]);
    let done = proc.expect("done", WAIT);
    eprintln!("refused: {}", done.0);
    assert_eq!(done.num::<u64>("failed"), 3);
    assert_eq!(done.num::<u64>("syn_retrans_total"), 0);

    // Unreachable: ICMP host-unreachable from the peer (no rate limit there).
    let unreachable = link.reject_unreachable(5003).to_string();
    let mut proc = client_traffic(&link, &["connect-fail", "--connect", &unreachable, "--count", "10"]);
    let first = proc.expect("failed", WAIT);
    eprintln!("unreachable: {}", first.0);
    assert_eq!(first.get("reason"), "unreachable");
    assert_eq!(first.num::<i32>("errno"), libc::EHOSTUNREACH);
    let done = proc.expect("done", WAIT);
    assert_eq!((done.num::<u64>("failed"), done.num::<u64>("syn_retrans_total")), (10, 0), "{}", done.0);

    // Timeout by the kernel: TCP_SYNCNT 1 -> ~3 s. SYN retransmits: 1 with
    // exponential backoff, 2 where `net.ipv4.tcp_syn_linear_timeouts` (6.x,
    // default 4) spaces the first SYN retransmits 1 s apart, as here.
    let timeout = link.drop_syns(5004).to_string();
    let args = ["connect-fail", "--connect", &timeout, "--count", "1", "--syn-retries", "1"];
    let mut proc = client_traffic(&link, &args);
    let failed = proc.expect("failed", WAIT);
    eprintln!("kernel timeout: {}", failed.0);
    assert_eq!(failed.num::<i32>("errno"), libc::ETIMEDOUT);
    assert!((1..=2).contains(&failed.num::<u32>("syn_retrans")));
    assert!(near(failed.num::<f64>("ms"), 3000.0, 300.0));

    // Timeout by the application: gives up in SYN_SENT after 1.5 s (one
    // retransmit at 1 s).
    let args = ["connect-fail", "--connect", &timeout, "--count", "2", "--give-up-ms", "1500"];
    let mut proc = client_traffic(&link, &args);
    let failed = proc.expect("failed", WAIT);
    eprintln!("gave up: {}", failed.0);
    assert_eq!((failed.num::<i32>("errno"), failed.get("reason")), (0, "timeout"));
    assert_eq!(failed.num::<u32>("syn_retrans"), 1);
    let done = proc.expect("done", WAIT);
    assert_eq!(done.num::<u64>("syn_retrans_total"), 2, "{}", done.0);
}

#[test]
#[ignore = "root, iptables; run by hand with --ignored"]
fn slow_reader_backlog_and_bulk_throughput() {
    let link = DelayedLink::new(50);
    // Bulk: 20 MB through the delay line, every byte arrives.
    let bulk = link.server_addr(5005).to_string();
    let mut sink = server_traffic(&link, &["server", "--bind", &bulk]);
    sink.expect("ready", WAIT);
    let started = std::time::Instant::now();
    let mut sender = client_traffic(&link, &["fast-sender", "--connect", &bulk, "--bytes", "20000000"]);
    sender.expect("done", Duration::from_secs(60));
    sender.finish();
    let served = sink.expect("served", Duration::from_secs(60));
    let secs = started.elapsed().as_secs_f64();
    eprintln!("bulk: {} in {secs:.2} s = {:.1} MB/s", served.0, 20.0 / secs);
    assert_eq!(served.num::<u64>("rx"), 20_000_000);

    // Slow reader: the backlog approaches the receive buffer.
    let slow = link.server_addr(5006).to_string();
    let args = ["slow-reader", "--bind", &slow, "--rcvbuf", "262144", "--read-every-ms", "200", "--read-chunk", "1000"];
    let mut reader = server_traffic(&link, &args);
    reader.expect("ready", WAIT);
    let mut sender = client_traffic(&link, &["fast-sender", "--connect", &slow, "--bytes", "5000000"]);
    let accepted = reader.expect("accepted", WAIT);
    let rcvbuf: f64 = accepted.num("rcvbuf");
    let mut last = 0.0;
    for _ in 0..8 {
        last = reader.expect("queue", WAIT).num::<f64>("rx");
    }
    let outq = sender.expect("outq", WAIT);
    eprintln!("slow reader: rcvbuf={rcvbuf} backlog={last}; sender {}", outq.0);
    assert!(last >= 0.4 * rcvbuf, "backlog {last} of a {rcvbuf}-byte receive buffer");
    let sender_info = info(&mut sender);
    eprintln!("sender {}", sender_info.0);
    reader.say("close");
    reader.expect("done", WAIT);
}
