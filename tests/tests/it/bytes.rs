//! Byte accounting (issue 2): exact per-flow tx/rx for clients and servers
//! over IPv4 and IPv6, connections opened and closed mid-trace, sockets
//! that predate the trace, half-close, one process on both ends, server
//! flows folding per remote address, `--pid`/`--port` filters, untrusted
//! process names, and MSG_PEEK.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    thread,
};

use tracer_tests::{receive_exactly, receive_to_end, send_exactly, serial, Proc, Report, Tracer};

use crate::{server, traffic, LINE_TIMEOUT};

/// Odd sizes, so that no count is a round number of buffers.
const N: u64 = 1_000_003;
const M: u64 = 77_777;

/// Runs `traffic client --connect ADDR ARGS` to completion (connection
/// closed); the process stays alive until the returned `Proc` is dropped.
fn client(connect: &str, args: &[&str]) -> (Proc, u32) {
    let mut client = traffic("client", &[&["client", "--connect", connect], args].concat());
    let pid = client.expect("connected", LINE_TIMEOUT).num("pid");
    client.expect("closed", LINE_TIMEOUT);
    (client, pid)
}

fn n() -> String {
    N.to_string()
}

fn m() -> String {
    M.to_string()
}

/// Checks the client's flow (tx N, rx M) and the server's (the mirror),
/// each the only flow of its process, with one connection opened and closed.
fn assert_exact_pair(report: &Report, client_pid: u32, server_pid: u32, remote: &str, port: u16) {
    let client = report.flow(client_pid, "client", remote, port);
    assert_eq!(
        (client.tx_bytes, client.rx_bytes, client.local_port, client.remote_port),
        (N, M, 0, port),
        "client flow {client:#?}"
    );
    let server = report.flow(server_pid, "server", remote, port);
    assert_eq!(
        (server.tx_bytes, server.rx_bytes, server.local_port, server.remote_port),
        (M, N, port, 0),
        "server flow {server:#?}"
    );
    for (flow, pid) in [(client, client_pid), (server, server_pid)] {
        assert_eq!(report.flows_of(pid).len(), 1, "flows of pid {pid}: {:#?}", report.flows_of(pid));
        assert_eq!((flow.connections_opened, flow.connections_closed), (1, 1), "{flow:#?}");
        // Not retransmits: loopback does retransmit now and then on a busy host.
        assert_eq!((flow.failed_connects, flow.resets), (0, 0), "{flow:#?}");
    }
    let process = report.process(client_pid);
    assert_eq!((process.tx_bytes, process.rx_bytes), (N, M), "client process {process:#?}");
    let process = report.process(server_pid);
    assert_eq!((process.tx_bytes, process.rx_bytes), (M, N), "server process {process:#?}");
}

fn exact_bytes_between_processes(ip: &str) {
    exact_bytes_between_processes_with(ip, &[]);
}

fn exact_bytes_between_processes_with(ip: &str, env: &[(&str, &str)]) {
    let _serial = serial();
    let bind = SocketAddr::new(ip.parse().expect("ip"), 0).to_string();
    let (mut server, port, server_pid) = server(&["--bind", &bind, "--read", &n(), "--answer", &m()]);
    let tracer = Tracer::start_with_env("1s", &[], env);
    let target = SocketAddr::new(ip.parse().expect("ip"), port).to_string();
    let (_client, client_pid) = client(&target, &["--send", &n(), "--expect", &m()]);
    server.expect("served", LINE_TIMEOUT);
    let report = tracer.stop();
    assert_exact_pair(&report, client_pid, server_pid, ip, port);
    assert_eq!(report.flow(client_pid, "client", ip, port).comm, "traffic");
}

#[test]
fn client_and_server_bytes_are_exact_over_ipv4() {
    exact_bytes_between_processes("127.0.0.1");
}

#[test]
fn client_and_server_bytes_are_exact_over_ipv6() {
    exact_bytes_between_processes("::1");
}

/// Kernels before 5.12 have no BPF compare-and-swap: there the byte table
/// is switched off (the verifier drops its code) and every byte is counted
/// in the socket records. The same switch, forced here, must count exactly.
#[test]
fn bytes_are_exact_without_the_byte_table() {
    exact_bytes_between_processes_with("127.0.0.1", &[("TRACER_BYTE_SLOTS", "0")]);
}

#[test]
fn connection_opened_and_closed_between_samples_is_counted_exactly() {
    let _serial = serial();
    let (mut server, port, server_pid) = server(&["--read", &n(), "--answer", &m()]);
    let tracer = Tracer::start(&[]);
    // Open and close well inside the trace, just after a sample (so, on
    // an idle host, before the next one), so the counts can only come from
    // the socket's destroy record; then another sample before the stop.
    tracer.wait_samples(1);
    let (_client, client_pid) = client(&format!("127.0.0.1:{port}"), &["--send", &n(), "--expect", &m()]);
    server.expect("served", LINE_TIMEOUT);
    tracer.wait_samples(1);
    let report = tracer.stop();
    assert_exact_pair(&report, client_pid, server_pid, "127.0.0.1", port);
}

#[test]
fn connection_open_before_the_trace_counts_only_what_it_moves_after_start() {
    let _serial = serial();
    let me = std::process::id();
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("address").port();
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let (mut accepted, _) = listener.accept().expect("accept");
    // Moved before the trace: must not count.
    send_exactly(&mut client, 5_000);
    receive_exactly(&mut accepted, 5_000);
    send_exactly(&mut accepted, 3_000);
    receive_exactly(&mut client, 3_000);

    let tracer = Tracer::start(&[]);
    send_exactly(&mut client, N);
    let reader = thread::spawn(move || {
        receive_exactly(&mut accepted, N);
        send_exactly(&mut accepted, M);
        accepted
    });
    receive_exactly(&mut client, M);
    let accepted = reader.join().expect("server thread");
    drop(client);
    drop(accepted);
    let report = tracer.stop();
    drop(listener);

    let client = report.flow(me, "client", "127.0.0.1", port);
    assert_eq!((client.tx_bytes, client.rx_bytes), (N, M), "client flow {client:#?}");
    let server = report.flow(me, "server", "127.0.0.1", port);
    assert_eq!((server.tx_bytes, server.rx_bytes), (M, N), "server flow {server:#?}");
}

#[test]
fn half_closed_connection_counts_every_byte() {
    let _serial = serial();
    // No --read: the server reads until the client's FIN, then answers
    // on a socket whose peer already shut down its sending side.
    let (mut server, port, server_pid) = server(&["--answer", &m()]);
    let tracer = Tracer::start(&[]);
    let (_client, client_pid) =
        client(&format!("127.0.0.1:{port}"), &["--send", &n(), "--expect", &m(), "--half-close"]);
    let served = server.expect("served", LINE_TIMEOUT);
    assert_eq!(served.num::<u64>("rx"), N, "the server read {served:?}");
    let report = tracer.stop();
    assert_exact_pair(&report, client_pid, server_pid, "127.0.0.1", port);
}

/// A connection born at the address of a socket the tracer still holds a
/// record for gets a record of its own: the earlier one's bytes stay with
/// the process that moved them. (In the soak, the kernel freed client
/// sockets in FIN_WAIT1 without `tcp:tcp_destroy_sock`, and the next
/// socket at the address, another process's, took over their bytes. Here
/// the address is reused deterministically: one socket, disconnected with
/// `connect(AF_UNSPEC)`, then connected again by another process that
/// inherited it.) The interval is long so that no sample falls between the
/// two connections: both are counted from their final records.
#[test]
fn a_connection_born_at_an_earlier_sockets_address_does_not_take_its_bytes() {
    let _serial = serial();
    let me = std::process::id();
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("address").port();
    let tracer = Tracer::start_with_interval("60s", &[]);
    let (first_read, read) = std::sync::mpsc::channel();
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        receive_exactly(&mut stream, N);
        first_read.send(()).expect("the test waits");
        // The disconnect resets the first connection.
        let mut buf = [0u8; 16];
        let _ = std::io::Read::read(&mut stream, &mut buf);
        let (mut stream, _) = listener.accept().expect("accept the second connection");
        receive_to_end(&mut stream)
    });
    let mut first = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    send_exactly(&mut first, N);
    read.recv().expect("the server read the first connection");
    let fd = first.as_raw_fd();
    let unspec = libc::sockaddr { sa_family: libc::AF_UNSPEC as libc::sa_family_t, sa_data: [0; 14] };
    // SAFETY: connect(2) on our own socket with a valid AF_UNSPEC sockaddr
    // (a disconnect); fcntl(2) clearing FD_CLOEXEC so the child inherits it.
    unsafe {
        assert_eq!(
            libc::connect(fd, &unspec, std::mem::size_of::<libc::sockaddr>() as libc::socklen_t),
            0,
            "disconnect: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(libc::fcntl(fd, libc::F_SETFD, 0), 0, "fcntl: {}", std::io::Error::last_os_error());
    }
    let target = format!("127.0.0.1:{port}");
    let mut second =
        traffic("reconnect", &["reconnect", "--fd", &fd.to_string(), "--connect", &target, "--send", &m()]);
    let second_pid = second.expect("connected", LINE_TIMEOUT).num("pid");
    second.expect("closed", LINE_TIMEOUT);
    drop(first);
    assert_eq!(server.join().expect("server thread"), M);
    let report = tracer.stop();

    let flow = report.flow(me, "client", "127.0.0.1", port);
    assert_eq!((flow.tx_bytes, flow.connections_opened, flow.connections_closed), (N, 1, 1), "{flow:#?}");
    let flow = report.flow(second_pid, "client", "127.0.0.1", port);
    assert_eq!((flow.tx_bytes, flow.connections_opened, flow.connections_closed), (M, 1, 1), "{flow:#?}");
}

#[test]
fn one_process_on_both_ends_keeps_two_flows() {
    let _serial = serial();
    let me = std::process::id();
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("address").port();
    let tracer = Tracer::start(&[]);
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        receive_exactly(&mut stream, N);
        send_exactly(&mut stream, M);
    });
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    send_exactly(&mut client, N);
    receive_exactly(&mut client, M);
    server.join().expect("server thread");
    assert_eq!(receive_to_end(&mut client), 0);
    drop(client);
    let report = tracer.stop();

    let client = report.flow(me, "client", "127.0.0.1", port);
    assert_eq!((client.tx_bytes, client.rx_bytes, client.connections_opened), (N, M, 1), "{client:#?}");
    let server = report.flow(me, "server", "127.0.0.1", port);
    assert_eq!((server.tx_bytes, server.rx_bytes, server.connections_opened), (M, N, 1), "{server:#?}");
}

#[test]
fn many_clients_fold_into_one_server_flow_per_remote_address() {
    let _serial = serial();
    let (mut server, port, server_pid) = server(&["--conns", "4", "--read", &n(), "--answer", &m()]);
    let tracer = Tracer::start(&[]);
    let target = format!("127.0.0.1:{port}");
    let mut clients = Vec::new();
    for source in ["127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"] {
        clients.push((source, client(&target, &["--bind", source, "--send", &n(), "--expect", &m()])));
    }
    server.expect("served", LINE_TIMEOUT);
    let report = tracer.stop();

    let server_flows = report.flows_of(server_pid);
    assert_eq!(server_flows.len(), 2, "one server flow per remote address: {server_flows:#?}");
    for remote in ["127.0.0.2", "127.0.0.3"] {
        let flow = report.flow(server_pid, "server", remote, port);
        assert_eq!(
            (flow.tx_bytes, flow.rx_bytes, flow.connections_opened, flow.connections_closed, flow.remote_port),
            (2 * M, 2 * N, 2, 2, 0),
            "server flow from {remote}: {flow:#?}"
        );
    }
    for (source, (_, pid)) in &clients {
        // The client's remote is the server's address, whatever its own source.
        let flow = report.flow(*pid, "client", "127.0.0.1", port);
        assert_eq!((flow.tx_bytes, flow.rx_bytes), (N, M), "client from {source}: {flow:#?}");
    }
}

#[test]
fn pid_filter_includes_exactly_that_process() {
    let _serial = serial();
    let (mut server, port, _) = server(&["--conns", "2", "--read", &n(), "--answer", &m()]);
    let target = format!("127.0.0.1:{port}");
    // The filtered process must exist before the tracer starts, so the
    // client waits for "go" once connected.
    let mut chosen =
        traffic("client", &["client", "--connect", &target, "--send", &n(), "--expect", &m(), "--wait-go"]);
    let chosen_pid: u32 = chosen.expect("connected", LINE_TIMEOUT).num("pid");
    let tracer = Tracer::start(&["--pid", &chosen_pid.to_string()]);
    chosen.say("go");
    chosen.expect("closed", LINE_TIMEOUT);
    let (_other, other_pid) = client(&target, &["--send", &n(), "--expect", &m()]);
    server.expect("served", LINE_TIMEOUT);
    let report = tracer.stop();

    let flow = report.flow(chosen_pid, "client", "127.0.0.1", port);
    assert_eq!((flow.tx_bytes, flow.rx_bytes), (N, M), "{flow:#?}");
    let strangers: Vec<_> = report.flows.iter().filter(|f| f.pid != chosen_pid).collect();
    assert!(strangers.is_empty(), "--pid {chosen_pid} let other flows in: {strangers:#?}");
    let strangers: Vec<_> = report.processes.iter().filter(|p| p.pid != chosen_pid).map(|p| p.pid).collect();
    assert!(strangers.is_empty(), "--pid {chosen_pid} let other processes in: {strangers:?}");
    for sample in &report.timeline {
        assert!(sample.processes.iter().all(|p| p.pid == chosen_pid), "timeline at {}s: {:?}", sample.t_secs, sample);
    }
    assert!(report.close_wait.iter().all(|c| c.pid == chosen_pid), "{:#?}", report.close_wait);
    assert_ne!(other_pid, chosen_pid);
}

#[test]
fn port_filter_includes_exactly_that_port() {
    let _serial = serial();
    let (mut server_a, port_a, server_a_pid) = server(&["--read", &n(), "--answer", &m()]);
    let (mut server_b, port_b, server_b_pid) = server(&["--read", &n(), "--answer", &m()]);
    let tracer = Tracer::start(&["--port", &port_a.to_string()]);
    let (_a, client_a_pid) = client(&format!("127.0.0.1:{port_a}"), &["--send", &n(), "--expect", &m()]);
    let (_b, client_b_pid) = client(&format!("127.0.0.1:{port_b}"), &["--send", &n(), "--expect", &m()]);
    server_a.expect("served", LINE_TIMEOUT);
    server_b.expect("served", LINE_TIMEOUT);
    let report = tracer.stop();

    assert_exact_pair(&report, client_a_pid, server_a_pid, "127.0.0.1", port_a);
    let strangers: Vec<_> = report.flows.iter().filter(|f| f.local_port != port_a && f.remote_port != port_a).collect();
    assert!(strangers.is_empty(), "--port {port_a} let other flows in: {strangers:#?}");
    for pid in [client_b_pid, server_b_pid] {
        assert!(report.flows_of(pid).is_empty(), "--port {port_a} let port {port_b}'s pid {pid} in");
        assert!(report.processes.iter().all(|p| p.pid != pid), "--port {port_a} reports pid {pid} of port {port_b}");
    }
}

#[test]
fn renamed_process_is_reported_under_its_exact_name() {
    let _serial = serial();
    // A quote, a '<', a backslash and a newline, 9 bytes (at most 15).
    let name = "a\"b<c\\d\ne";
    let (mut server, port, _) = server(&["--read", &n(), "--answer", &m()]);
    let tracer = Tracer::start(&[]);
    let (_client, pid) = client(&format!("127.0.0.1:{port}"), &["--name", name, "--send", &n(), "--expect", &m()]);
    server.expect("served", LINE_TIMEOUT);
    let on_proc = std::fs::read(format!("/proc/{pid}/comm")).expect("read /proc/PID/comm");
    assert_eq!(on_proc, format!("{name}\n").into_bytes(), "the rename itself did not take");
    let report = tracer.stop();

    let flow = report.flow(pid, "client", "127.0.0.1", port);
    assert_eq!(flow.comm, name, "flow comm");
    assert_eq!((flow.tx_bytes, flow.rx_bytes), (N, M));
    assert_eq!(report.process(pid).comm, name, "process comm");
    let raw = report.json["processes"]
        .as_array()
        .and_then(|list| list.iter().find(|p| p["pid"] == pid))
        .expect("process in the raw JSON");
    assert_eq!(raw["comm"].as_str(), Some(name));
}

#[test]
fn peeked_bytes_are_not_counted() {
    let _serial = serial();
    let (mut server, port, server_pid) = server(&["--read", &n(), "--answer", &m()]);
    let tracer = Tracer::start(&[]);
    // The client peeks (MSG_PEEK) at the whole answer at least 3 times,
    // then reads it once.
    let (_client, client_pid) = client(&format!("127.0.0.1:{port}"), &["--send", &n(), "--expect", &m(), "--peek"]);
    server.expect("served", LINE_TIMEOUT);
    let report = tracer.stop();
    assert_exact_pair(&report, client_pid, server_pid, "127.0.0.1", port);
}
