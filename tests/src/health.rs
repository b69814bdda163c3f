//! Tooling for the TCP health tests: the kernel's own view of a socket
//! (`TCP_INFO`, `FIONREAD`, `SIOCOUTQ`) as an oracle to compare the tracer
//! with, and [`DelayedLink`], two network namespaces joined by a veth pair
//! whose one direction is delayed by the `netdelay` binary (NFQUEUE; this
//! kernel has no netem), with failure fixtures (SYNs dropped, ICMP host
//! unreachable, closed port).
//!
//! Everything here runs as root, and traffic stays inside the namespaces a
//! fixture creates. Needs the `iptables` Debian package.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::RawFd,
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicU8, Ordering},
    time::Duration,
};

use crate::{run, Line, NetNs, Proc};

/// `struct tcp_info` of `<linux/tcp.h>` up to `tcpi_snd_wnd` (kernel 5.4+
/// layout; the kernel fills `min(len, its size)` bytes, see
/// [`tcp_info`]). Times are in microseconds unless named otherwise.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpInfo {
    pub state: u8,
    pub ca_state: u8,
    pub retransmits: u8,
    pub probes: u8,
    pub backoff: u8,
    pub options: u8,
    /// `tcpi_snd_wscale : 4, tcpi_rcv_wscale : 4`.
    pub wscale: u8,
    /// `tcpi_delivery_rate_app_limited : 1, tcpi_fastopen_client_fail : 2`.
    pub app_limited_bits: u8,
    pub rto: u32,
    pub ato: u32,
    pub snd_mss: u32,
    pub rcv_mss: u32,
    pub unacked: u32,
    pub sacked: u32,
    pub lost: u32,
    pub retrans: u32,
    pub fackets: u32,
    pub last_data_sent: u32,
    pub last_ack_sent: u32,
    pub last_data_recv: u32,
    pub last_ack_recv: u32,
    pub pmtu: u32,
    pub rcv_ssthresh: u32,
    /// Smoothed RTT (`srtt_us >> 3`), what `ss -ti` shows as `rtt:`.
    pub rtt: u32,
    pub rttvar: u32,
    pub snd_ssthresh: u32,
    pub snd_cwnd: u32,
    pub advmss: u32,
    pub reordering: u32,
    /// The receiver's RTT estimate (`rcv_rtt_est.rtt_us >> 3`).
    pub rcv_rtt: u32,
    pub rcv_space: u32,
    pub total_retrans: u32,
    pub pacing_rate: u64,
    pub max_pacing_rate: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub segs_out: u32,
    pub segs_in: u32,
    pub notsent_bytes: u32,
    pub min_rtt: u32,
    pub data_segs_in: u32,
    pub data_segs_out: u32,
    /// Bytes per second.
    pub delivery_rate: u64,
    pub busy_time: u64,
    pub rwnd_limited: u64,
    pub sndbuf_limited: u64,
    pub delivered: u32,
    pub delivered_ce: u32,
    pub bytes_sent: u64,
    pub bytes_retrans: u64,
    pub dsack_dups: u32,
    pub reord_seen: u32,
    pub rcv_ooopack: u32,
    pub snd_wnd: u32,
}

/// `getsockopt(TCP_INFO)`: the struct and how many bytes of it the kernel
/// filled (fields past that are zero, not measured).
pub fn tcp_info(fd: RawFd) -> std::io::Result<(TcpInfo, usize)> {
    let mut info = TcpInfo::default();
    let mut len = std::mem::size_of::<TcpInfo>() as libc::socklen_t;
    // SAFETY: info is a live, writable repr(C) struct of len bytes.
    let rc = unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &mut len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((info, len as usize))
}

fn int_ioctl(fd: RawFd, request: libc::c_ulong) -> std::io::Result<u64> {
    let mut value: libc::c_int = 0;
    // SAFETY: both requests write one int to the pointer given.
    let rc = unsafe { libc::ioctl(fd, request, &raw mut value) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(u64::try_from(value).unwrap_or(0))
}

/// `FIONREAD` (`SIOCINQ`): bytes received and not yet read.
pub fn fionread(fd: RawFd) -> std::io::Result<u64> {
    int_ioctl(fd, libc::FIONREAD)
}

/// `SIOCOUTQ` (= `TIOCOUTQ`, 0x5411): bytes written and not yet
/// acknowledged (includes bytes not sent yet).
pub fn siocoutq(fd: RawFd) -> std::io::Result<u64> {
    int_ioctl(fd, libc::TIOCOUTQ)
}

/// An integer socket option (`getsockopt`).
pub fn int_sockopt(fd: RawFd, level: libc::c_int, name: libc::c_int) -> std::io::Result<i64> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value is a live int of len bytes.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &mut len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(i64::from(value))
}

/// Sets an integer socket option (`setsockopt`).
pub fn set_int_sockopt(fd: RawFd, level: libc::c_int, name: libc::c_int, value: i32) -> std::io::Result<()> {
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value is a live int of len bytes.
    let rc = unsafe { libc::setsockopt(fd, level, name, (&raw const value).cast(), len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The `info ...` line the `traffic` health modes print: the kernel's view
/// of one socket. Keys: `state rtt_us rttvar_us min_rtt_us rcv_rtt_us
/// total_retrans retrans unacked bytes_acked bytes_received bytes_sent
/// delivery_rate busy_us rwnd_limited_us sndbuf_limited_us snd_cwnd
/// rcv_space snd_wnd rcvbuf sndbuf fionread outq`.
pub fn info_line(fd: RawFd) -> String {
    let (i, _) = tcp_info(fd).unwrap_or_default();
    let rcvbuf = int_sockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF).unwrap_or(-1);
    let sndbuf = int_sockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF).unwrap_or(-1);
    format!(
        "info state={} rtt_us={} rttvar_us={} min_rtt_us={} rcv_rtt_us={} total_retrans={} retrans={} \
         unacked={} bytes_acked={} bytes_received={} bytes_sent={} delivery_rate={} busy_us={} \
         rwnd_limited_us={} sndbuf_limited_us={} snd_cwnd={} rcv_space={} snd_wnd={} rcvbuf={rcvbuf} \
         sndbuf={sndbuf} fionread={} outq={}",
        i.state,
        i.rtt,
        i.rttvar,
        i.min_rtt,
        i.rcv_rtt,
        i.total_retrans,
        i.retrans,
        i.unacked,
        i.bytes_acked,
        i.bytes_received,
        i.bytes_sent,
        i.delivery_rate,
        i.busy_time,
        i.rwnd_limited,
        i.sndbuf_limited,
        i.snd_cwnd,
        i.rcv_space,
        i.snd_wnd,
        fionread(fd).unwrap_or(0),
        siocoutq(fd).unwrap_or(0),
    )
}

/// The failure reason DESIGN.md ("TCP health") pins for a connect's error
/// (`sk_err`; 0 = the application gave up after SYNs were sent).
pub fn failure_reason(errno: i32) -> &'static str {
    match errno {
        libc::ECONNREFUSED => "refused",
        0 | libc::ETIMEDOUT => "timeout",
        libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EACCES => "unreachable",
        _ => "other",
    }
}

/// A binary of this package (`traffic`, `netdelay`): `<NAME>_BIN` (upper
/// case) if set, else next to the running test binary's directory
/// (`target/debug/netdelay` for `target/debug/deps/it-*`). Cargo builds the
/// package's binaries before its integration tests.
pub fn sibling_bin(name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(format!("{}_BIN", name.to_uppercase())) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join(name))
        .expect("the test binary lives in target/<profile>/deps");
    assert!(path.exists(), "no {name} binary at {}: `cargo build -p tracer-tests --bins`", path.display());
    path
}

/// Deletes `tracer-test-<pid>-*` namespaces whose pid is gone (left by a
/// crashed or killed run). Namespaces of live processes are left alone.
pub fn sweep_stale_namespaces() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).stderr(Stdio::null()).output() else { return };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(rest) = name.strip_prefix("tracer-test-") else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
        }
    }
}

static LINK_SERIAL: AtomicU8 = AtomicU8::new(1);

/// The NFQUEUE queue number the fixture uses (queues are per namespace).
pub const DELAY_QUEUE: u16 = 7;

/// Two network namespaces joined by a veth pair, `client` (10.213.N.1) and
/// `server` (10.213.N.2), where every TCP packet from client to server is
/// held `delay_ms` by `netdelay` (an NFQUEUE rule in the server's INPUT
/// chain, the delayer running in the server namespace). Server-to-client
/// packets are not delayed, so a round trip between them takes the delay
/// plus a few tens of microseconds: the kernel's RTT on either end, the
/// client's connect latency and the server's handshake RTT all read about
/// `delay_ms`.
///
/// Delaying on the receiving side matters: a packet held on the sender's
/// OUTPUT would still be charged to the sending socket (TCP small queues)
/// and throttle bulk flows; veth hands it over uncharged.
///
/// Spawn processes with [`DelayedLink::client_command`] /
/// [`DelayedLink::server_command`] (or through the [`NetNs`] fields), and
/// declare this fixture *before* those processes, so they are dropped (killed
/// by pid) first; the fixture's drop stops the delayer by pid and deletes
/// both namespaces (and with them the veth pair and the rules).
pub struct DelayedLink {
    delayer: Proc,
    pub client: NetNs,
    pub server: NetNs,
    pub client_ip: Ipv4Addr,
    pub server_ip: Ipv4Addr,
    delay_ms: u64,
}

impl DelayedLink {
    /// Builds the link with a client-to-server delay of `delay_ms`
    /// (0 is allowed: packets still go through the queue).
    pub fn new(delay_ms: u64) -> DelayedLink {
        sweep_stale_namespaces();
        let serial = LINK_SERIAL.fetch_add(1, Ordering::Relaxed);
        let client = NetNs::create(&format!("dl{serial}a"));
        let server = NetNs::create(&format!("dl{serial}b"));
        let client_ip = Ipv4Addr::new(10, 213, serial, 1);
        let server_ip = Ipv4Addr::new(10, 213, serial, 2);
        // Created straight inside the namespaces: no name ever exists in the host's.
        run(
            "ip",
            &[
                "-n",
                &client.name,
                "link",
                "add",
                "veth-c",
                "type",
                "veth",
                "peer",
                "name",
                "veth-s",
                "netns",
                &server.name,
            ],
        );
        for (netns, dev, ip) in [(&client, "veth-c", client_ip), (&server, "veth-s", server_ip)] {
            run("ip", &["-n", &netns.name, "addr", "add", &format!("{ip}/24"), "dev", dev]);
            run("ip", &["-n", &netns.name, "link", "set", dev, "up"]);
        }
        // Many refusals in a row must all get their ICMP error.
        server.run("sh", &["-c", "echo 0 > /proc/sys/net/ipv4/icmp_ratelimit"]);
        let queue = DELAY_QUEUE.to_string();
        server.run(
            "iptables",
            &[
                "-w",
                "-A",
                "INPUT",
                "-i",
                "veth-s",
                "-p",
                "tcp",
                "-j",
                "NFQUEUE",
                "--queue-num",
                &queue,
                "--queue-bypass",
            ],
        );
        let netdelay = sibling_bin("netdelay");
        let netdelay = netdelay.to_str().expect("a UTF-8 path");
        let command =
            server.command(netdelay, &["--queue", &queue, "--delay-ms", &delay_ms.to_string(), "--max-secs", "600"]);
        let mut delayer = Proc::spawn("netdelay", command);
        delayer.expect("ready", Duration::from_secs(10));
        DelayedLink { delayer, client, server, client_ip, server_ip, delay_ms }
    }

    /// The current client-to-server delay.
    pub fn delay_ms(&self) -> u64 {
        self.delay_ms
    }

    /// Changes the delay for packets queued from now on (held packets keep
    /// their release time; order is kept).
    pub fn set_delay(&mut self, ms: u64) {
        self.delayer.say(&format!("delay ms={ms}"));
        self.delayer.expect("delay", Duration::from_secs(5));
        self.delay_ms = ms;
    }

    /// The delayer's counters: `stats packets=N held=H max_held=M delay_ms=D`.
    pub fn delay_stats(&mut self) -> Line {
        self.delayer.say("stats");
        self.delayer.expect("stats", Duration::from_secs(5))
    }

    /// `ip netns exec CLIENT program args...`.
    pub fn client_command(&self, program: &str, args: &[&str]) -> Command {
        self.client.command(program, args)
    }

    /// `ip netns exec SERVER program args...`.
    pub fn server_command(&self, program: &str, args: &[&str]) -> Command {
        self.server.command(program, args)
    }

    /// `SERVER_IP:port`.
    pub fn server_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.server_ip, port))
    }

    /// Failure fixture "timeout": the server namespace silently drops SYNs
    /// to `port` (before the delay queue), so connects there time out.
    pub fn drop_syns(&self, port: u16) -> SocketAddr {
        let port_text = port.to_string();
        let rule = ["-w", "-I", "INPUT", "1", "-p", "tcp", "--syn", "--dport", &port_text, "-j", "DROP"];
        self.server.run("iptables", &rule);
        self.server_addr(port)
    }

    /// Failure fixture "unreachable": the server namespace answers TCP to
    /// `port` with ICMP host-unreachable (connect fails with EHOSTUNREACH).
    pub fn reject_unreachable(&self, port: u16) -> SocketAddr {
        let port_text = port.to_string();
        let rule = [
            "-w",
            "-I",
            "INPUT",
            "1",
            "-p",
            "tcp",
            "--dport",
            &port_text,
            "-j",
            "REJECT",
            "--reject-with",
            "icmp-host-unreachable",
        ];
        self.server.run("iptables", &rule);
        self.server_addr(port)
    }

    /// Failure fixture "refused": a server port nothing listens on and no
    /// rule touches (the kernel answers RST; the SYN is delayed as usual).
    pub fn closed_port(&self, port: u16) -> SocketAddr {
        self.server_addr(port)
    }
}
