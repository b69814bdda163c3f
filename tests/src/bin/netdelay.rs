//! `netdelay`: a delay line for the TCP health tests, since this kernel has
//! no netem. It binds an nfnetlink_queue queue (the iptables `NFQUEUE`
//! target sends packets there), holds every queued packet for the current
//! delay, in arrival order, then accepts it. It talks netlink itself
//! (`NETLINK_NETFILTER`, copy mode "meta": packet ids only, no payload) and
//! asks for GSO packets unsegmented, so a bulk flow of several MB/s costs a
//! few hundred messages a second.
//!
//! ```text
//! netdelay --queue Q --delay-ms D [--max-len 65536] [--max-secs 300]
//! ```
//! Queues are per network namespace: run it inside the namespace whose
//! iptables rule queues the packets (`ip netns exec NS netdelay ...`).
//!
//! stdout, `word key=value` lines:
//! - `ready queue=Q pid=P delay_ms=D` once bound and configured;
//! - `delay ms=D` after each change of delay;
//! - `stats packets=N held=H max_held=M delay_ms=D` on request;
//! - `done packets=N max_held=M` on exit.
//!
//! stdin lines: `delay ms=D` changes the delay for packets queued from now
//! on (packets already held keep their release time, and release stays in
//! arrival order: a packet never overtakes an earlier one); `stats` prints a
//! stats line. When stdin closes, or after `--max-secs`, it accepts every
//! packet it holds and exits. Every loop is bounded in count and time.

use std::{
    collections::VecDeque,
    io::BufRead,
    process::exit,
    sync::mpsc::{self, Receiver, TryRecvError},
    thread,
    time::{Duration, Instant},
};

const NETLINK_NETFILTER: libc::c_int = 12;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_NO_ENOBUFS: libc::c_int = 5;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;

const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQNL_MSG_VERDICT_BATCH: u16 = 3;

const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
const NFQA_CFG_F_GSO: u32 = 1 << 2;
const NF_ACCEPT: u32 = 1;

/// Upper bound on loop turns (each turn waits up to 20 ms or handles at
/// least one event); the deadline normally ends the loop long before.
const MAX_TURNS: u64 = 200_000_000;

fn fail(message: &str) -> ! {
    eprintln!("netdelay: {message}");
    exit(2)
}

fn os_error(what: &str) -> ! {
    fail(&format!("{what}: {}", std::io::Error::last_os_error()))
}

/// One nfnetlink message being built: netlink header, nfgenmsg, attributes.
struct Message(Vec<u8>);

impl Message {
    fn new(kind: u16, flags: u16, family: u8, queue: u16) -> Message {
        let mut bytes = vec![0u8; NLMSG_HDRLEN];
        bytes[4..6].copy_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
        bytes[6..8].copy_from_slice(&flags.to_ne_bytes());
        // struct nfgenmsg: family, version 0, resource id (the queue) big-endian.
        bytes.extend_from_slice(&[family, 0]);
        bytes.extend_from_slice(&queue.to_be_bytes());
        Message(bytes)
    }

    fn attr(mut self, kind: u16, payload: &[u8]) -> Message {
        let len = u16::try_from(4 + payload.len()).unwrap_or_else(|_| fail("attribute too long"));
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(payload);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
        self
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = u32::try_from(self.0.len()).unwrap_or(u32::MAX);
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        self.0[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.0
    }
}

/// What a received netlink message said.
enum Event {
    Packet(u32),
    Ack { seq: u32, error: i32 },
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Parses the messages in one datagram.
fn parse(bytes: &[u8], events: &mut Vec<Event>) {
    let mut at = 0;
    while at + NLMSG_HDRLEN <= bytes.len() {
        let len = u32_at(bytes, at) as usize;
        if len < NLMSG_HDRLEN || at + len > bytes.len() {
            break;
        }
        let (kind, seq) = (u16_at(bytes, at + 4), u32_at(bytes, at + 8));
        let body = &bytes[at + NLMSG_HDRLEN..at + len];
        if kind == NLMSG_ERROR && body.len() >= 4 {
            events.push(Event::Ack { seq, error: i32::from_ne_bytes([body[0], body[1], body[2], body[3]]) });
        } else if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET && body.len() >= 4 {
            let mut attr = 4; // after struct nfgenmsg
            while attr + 4 <= body.len() {
                let attr_len = u16_at(body, attr) as usize;
                let attr_kind = u16_at(body, attr + 2) & 0x7fff;
                if attr_len < 4 || attr + attr_len > body.len() {
                    break;
                }
                if attr_kind == NFQA_PACKET_HDR && attr_len >= 8 {
                    let id = &body[attr + 4..attr + 8];
                    events.push(Event::Packet(u32::from_be_bytes([id[0], id[1], id[2], id[3]])));
                }
                attr += attr_len.div_ceil(4) * 4;
            }
        }
        at += len.div_ceil(4) * 4;
    }
}

struct Queue {
    fd: libc::c_int,
    queue: u16,
    seq: u32,
    buf: Vec<u8>,
}

impl Queue {
    fn open(queue: u16) -> Queue {
        // SAFETY: plain socket syscalls on an fd this function owns; every
        // pointer passed points to a live local of the size given.
        unsafe {
            let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_NETFILTER);
            if fd < 0 {
                os_error("socket(AF_NETLINK, NETLINK_NETFILTER)");
            }
            let mut address: libc::sockaddr_nl = std::mem::zeroed();
            address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            let size = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            if libc::bind(fd, (&raw const address).cast(), size) != 0 {
                os_error("bind(netlink)");
            }
            let big: libc::c_int = 64 << 20;
            let one: libc::c_int = 1;
            let int = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // Root has CAP_NET_ADMIN: force the buffer past rmem_max.
            if libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, (&raw const big).cast(), int) != 0
                && libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, (&raw const big).cast(), int) != 0
            {
                os_error("setsockopt(SO_RCVBUF)");
            }
            // Best effort: an overrun then loses messages instead of failing recv.
            libc::setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, (&raw const one).cast(), int);
            Queue { fd, queue, seq: 0, buf: vec![0u8; 1 << 18] }
        }
    }

    fn send(&mut self, message: Message) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        let bytes = message.finish(self.seq);
        // SAFETY: bytes is a live buffer of the given length.
        let sent = unsafe { libc::send(self.fd, bytes.as_ptr().cast(), bytes.len(), 0) };
        if sent < 0 {
            os_error("send(netlink)");
        }
        self.seq
    }

    /// Reads what is waiting (without blocking); false once nothing is.
    fn receive(&mut self, events: &mut Vec<Event>) -> bool {
        // SAFETY: buf is a live buffer of the given length.
        let got = unsafe { libc::recv(self.fd, self.buf.as_mut_ptr().cast(), self.buf.len(), libc::MSG_DONTWAIT) };
        if got < 0 {
            let error = std::io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => return false,
                // Overrun: the kernel dropped messages (and so packets); go on.
                Some(libc::ENOBUFS) => return true,
                _ => fail(&format!("recv(netlink): {error}")),
            }
        }
        parse(&self.buf[..got as usize], events);
        true
    }

    /// Waits up to `timeout` for something to read.
    fn wait(&self, timeout: Duration) {
        let mut poll = libc::pollfd { fd: self.fd, events: libc::POLLIN, revents: 0 };
        let ms = libc::c_int::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one live pollfd.
        unsafe { libc::poll(&raw mut poll, 1, ms) };
    }

    /// Sends a config message and waits (bounded) for its acknowledgement.
    fn configure(&mut self, message: Message, what: &str, early: &mut Vec<Event>) {
        let seq = self.send(message);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            self.wait(Duration::from_millis(100));
            let mut events = Vec::new();
            for _ in 0..1000 {
                if !self.receive(&mut events) {
                    break;
                }
            }
            for event in events {
                match event {
                    Event::Ack { seq: acked, error } if acked == seq => {
                        if error != 0 {
                            fail(&format!("{what}: {}", std::io::Error::from_raw_os_error(-error)));
                        }
                        return;
                    }
                    Event::Ack { .. } => {}
                    packet => early.push(packet),
                }
            }
        }
        fail(&format!("{what}: no acknowledgement from the kernel in 5 s"))
    }

    fn bind(&mut self, max_len: u32, early: &mut Vec<Event>) {
        let flags = NLM_F_REQUEST | NLM_F_ACK;
        let kind = NFQNL_MSG_CONFIG;
        // struct nfqnl_msg_config_cmd { u8 command; u8 pad; be16 pf; }
        let mut command = vec![NFQNL_CFG_CMD_BIND, 0];
        command.extend_from_slice(&(libc::AF_INET as u16).to_be_bytes());
        let bind = Message::new(kind, flags, libc::AF_INET as u8, self.queue).attr(NFQA_CFG_CMD, &command);
        self.configure(bind, &format!("binding queue {}", self.queue), early);
        // struct nfqnl_msg_config_params { be32 copy_range; u8 copy_mode; } (packed)
        let mut params = 0u32.to_be_bytes().to_vec();
        params.push(NFQNL_COPY_META);
        let setup = Message::new(kind, flags, libc::AF_UNSPEC as u8, self.queue)
            .attr(NFQA_CFG_PARAMS, &params)
            .attr(NFQA_CFG_QUEUE_MAXLEN, &max_len.to_be_bytes())
            .attr(NFQA_CFG_MASK, &NFQA_CFG_F_GSO.to_be_bytes())
            .attr(NFQA_CFG_FLAGS, &NFQA_CFG_F_GSO.to_be_bytes());
        self.configure(setup, "configuring the queue (meta copy, max length, GSO)", early);
    }

    /// Accepts every queued packet with an id up to `id`.
    fn accept_through(&mut self, id: u32) {
        let mut header = NF_ACCEPT.to_be_bytes().to_vec();
        header.extend_from_slice(&id.to_be_bytes());
        let verdict = Message::new(NFQNL_MSG_VERDICT_BATCH, NLM_F_REQUEST, libc::AF_UNSPEC as u8, self.queue)
            .attr(NFQA_VERDICT_HDR, &header);
        self.send(verdict);
    }
}

/// Lines from stdin; the channel closes when stdin does.
fn stdin_lines() -> Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

fn option(args: &[String], key: &str, default: Option<u64>) -> u64 {
    let flag = format!("--{key}");
    match args.iter().position(|a| *a == flag) {
        Some(at) => {
            let text = args.get(at + 1).unwrap_or_else(|| fail(&format!("{flag} needs a value")));
            text.parse().unwrap_or_else(|_| fail(&format!("{flag} {text:?} is not a number")))
        }
        None => default.unwrap_or_else(|| fail(&format!("{flag} is required"))),
    }
}

fn parse_delay(line: &str) -> Option<u64> {
    let mut words = line.split_whitespace();
    (words.next() == Some("delay")).then_some(())?;
    words.next()?.strip_prefix("ms=")?.parse().ok()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    for (at, arg) in args.iter().enumerate() {
        let known = ["--queue", "--delay-ms", "--max-len", "--max-secs"];
        if at.is_multiple_of(2) && !known.contains(&arg.as_str()) {
            fail(&format!(
                "unexpected argument {arg:?}; usage: netdelay --queue Q --delay-ms D [--max-len N] [--max-secs S]"
            ));
        }
    }
    let queue = u16::try_from(option(&args, "queue", None)).unwrap_or_else(|_| fail("--queue is 0..65535"));
    let mut delay = Duration::from_millis(option(&args, "delay-ms", None));
    let max_len = u32::try_from(option(&args, "max-len", Some(65536))).unwrap_or(u32::MAX);
    let max = Duration::from_secs(option(&args, "max-secs", Some(300)));
    let deadline = Instant::now() + max;
    thread::spawn(move || {
        thread::sleep(max + Duration::from_secs(10));
        eprintln!("netdelay: still running after {max:?}; exiting");
        exit(3);
    });

    let mut nfq = Queue::open(queue);
    let mut events = Vec::new();
    nfq.bind(max_len, &mut events);
    let stdin = stdin_lines();
    println!("ready queue={queue} pid={} delay_ms={}", std::process::id(), delay.as_millis());

    // Held packets in arrival order with their release times (non-decreasing).
    let mut held: VecDeque<(u32, Instant)> = VecDeque::new();
    let (mut packets, mut max_held) = (0u64, 0usize);
    let mut last_due = Instant::now();
    for _ in 0..MAX_TURNS {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        for event in events.drain(..) {
            if let Event::Packet(id) = event {
                last_due = last_due.max(now + delay);
                held.push_back((id, last_due));
                packets += 1;
            }
        }
        max_held = max_held.max(held.len());
        let mut release = None;
        while let Some(&(id, due)) = held.front() {
            if due > now {
                break;
            }
            release = Some(id);
            held.pop_front();
        }
        if let Some(id) = release {
            nfq.accept_through(id);
        }
        match stdin.try_recv() {
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {}
            Ok(line) if line.trim() == "stats" => println!(
                "stats packets={packets} held={} max_held={max_held} delay_ms={}",
                held.len(),
                delay.as_millis()
            ),
            Ok(line) => match parse_delay(&line) {
                Some(ms) => {
                    delay = Duration::from_millis(ms);
                    println!("delay ms={ms}");
                }
                None => eprintln!("netdelay: ignoring stdin line {line:?}"),
            },
        }
        let wait = held
            .front()
            .map_or(Duration::from_millis(20), |&(_, due)| due.saturating_duration_since(Instant::now()))
            .min(Duration::from_millis(20));
        nfq.wait(wait);
        // At most 1000 datagrams a turn, so releases are never starved.
        for _ in 0..1000 {
            if !nfq.receive(&mut events) {
                break;
            }
        }
    }
    // Let everything still held go, so no connection is left stalled.
    if let Some(&(id, _)) = held.back() {
        nfq.accept_through(id);
    }
    println!("done packets={packets} max_held={max_held}");
}
