//! The load generator of `cargo xtask bench`, run as separate processes of
//! the xtask binary itself (`xtask loadgen server|client|hold`), so that the
//! client and the server of a workload are two processes, both pinned to the
//! same CPU: the pinned CPU is then always busy with one of them, and the
//! time per operation is the CPU cost per operation — what a tracer adds
//! shows up one to one in the throughput.
//!
//! Wire protocol with the parent (one line each on stdout):
//! - server: `port N` once listening, `server syscalls=N bytes=N` at the end
//!   (after the client is gone);
//! - client: `client ops=N secs=F cpu_secs=F total_ops=N syscalls=N bytes=N`,
//!   where `ops`, `secs` and `cpu_secs` cover the measured window only (after
//!   the warm-up) and `total_ops` / `syscalls` / `bytes` the whole run.
//!   `cpu_secs` is the CPU time client and server got in the window (from
//!   `/proc/PID/schedstat`, nanoseconds), or -1 if it could not be read: on
//!   a shared machine the pinned CPU is not all ours, and CPU time per
//!   operation is what stays comparable; `slices` the CPU ns per operation
//!   of each 100 ms slice of the window, comma-separated (`-` if none),
//!   `slice_ops` their operations and `slice_ends` when they ended
//!   (CLOCK_MONOTONIC ns);
//! - hold: `ready N` once N connections are open; it keeps them until its
//!   stdin closes.
//!
//! `syscalls` counts the send/recv calls this process made (each `send` or
//! `recv` call, partial ones included), which are the calls the tracer's
//! byte-accounting hooks run on.

use std::{
    io::{self, BufRead as _, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand, ValueEnum};

/// Size of one ping-pong / parallel message.
pub const MESSAGE_SIZE: usize = 64;
/// Size of one bulk write.
pub const BULK_CHUNK: usize = 64 * 1024;
/// Bytes a churn connection sends before it is closed.
pub const CHURN_PAYLOAD: usize = 1024;
/// Bytes each side of a held connection sends once, so the tracer has byte
/// counters for every held socket, as for real connections.
const HOLD_HELLO: usize = 16;
/// Listen backlog, raised past std's default so that many connects in a row
/// never wait for a SYN retransmit.
const BACKLOG: i32 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// One connection, 64-byte request, 64-byte answer, blocking calls.
    PingPong,
    /// One connection, 64 KiB writes one way.
    Bulk,
    /// Many connections, each echoing 64-byte messages, driven by epoll.
    Parallel,
    /// A new connection per operation: connect, send 1 KB, close.
    Churn,
}

impl Workload {
    pub const ALL: [Workload; 4] = [Workload::PingPong, Workload::Bulk, Workload::Parallel, Workload::Churn];

    pub fn name(self) -> &'static str {
        match self {
            Workload::PingPong => "ping-pong",
            Workload::Bulk => "bulk",
            Workload::Parallel => "parallel",
            Workload::Churn => "churn",
        }
    }

    /// What one operation of this workload is, for the tables.
    pub fn operation(self, parallel_connections: usize) -> String {
        match self {
            Workload::PingPong => "64 B request + 64 B answer, 1 connection".into(),
            Workload::Bulk => "one 64 KiB write (1 connection)".into(),
            Workload::Parallel => format!("64 B request + answer, {parallel_connections} connections (epoll)"),
            Workload::Churn => "connect, send 1 KB, server closes, client closes".into(),
        }
    }
}

#[derive(Debug, Args)]
pub struct LoadgenArgs {
    #[command(subcommand)]
    pub role: Role,
}

#[derive(Debug, Subcommand)]
pub enum Role {
    /// Listen on 127.0.0.1 (any port) and serve one workload's client.
    Server {
        #[arg(long, value_enum)]
        workload: Workload,
        /// Pin this process to this CPU.
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Drive one workload against a server for a fixed time.
    Client {
        #[arg(long, value_enum)]
        workload: Workload,
        #[arg(long)]
        connect: SocketAddr,
        /// Measured window, after the warm-up.
        #[arg(long)]
        duration_ms: u64,
        #[arg(long, default_value = "250")]
        warmup_ms: u64,
        /// Connections of the parallel workload.
        #[arg(long, default_value = "128")]
        connections: usize,
        /// Pin this process to this CPU.
        #[arg(long)]
        cpu: Option<usize>,
        /// The server's PID, to count its CPU time with the client's.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Run until stdin closes instead of for DURATION_MS, and report
        /// when each slice ended (`slice_ends`, CLOCK_MONOTONIC ns), so the
        /// bench can change what is attached while one pair of processes
        /// runs on.
        #[arg(long)]
        until_stdin_closes: bool,
    },
    /// Open CONNECTIONS loopback connections to ADDR (both ends in this
    /// process) and keep them until stdin closes.
    Hold {
        #[arg(long)]
        addr: Ipv4Addr,
        #[arg(long)]
        connections: usize,
    },
}

pub fn run(args: LoadgenArgs) -> Result<()> {
    match args.role {
        Role::Server { workload, cpu } => {
            pin(cpu)?;
            serve(workload)
        }
        Role::Client {
            workload,
            connect,
            duration_ms,
            warmup_ms,
            connections,
            cpu,
            server_pid,
            until_stdin_closes,
        } => {
            pin(cpu)?;
            let window =
                if until_stdin_closes { Duration::from_secs(3600) } else { Duration::from_millis(duration_ms) };
            let mut clock = Clock::new(Duration::from_millis(warmup_ms), window, server_pid);
            if until_stdin_closes {
                let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                clock.stop = Some(stop.clone());
                std::thread::spawn(move || {
                    let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                });
            }
            let tally = match workload {
                Workload::PingPong => ping_pong_client(connect, clock)?,
                Workload::Bulk => bulk_client(connect, clock)?,
                Workload::Parallel => parallel_client(connect, connections, clock)?,
                Workload::Churn => churn_client(connect, clock)?,
            };
            let (ops, secs) = tally.window.measured().context("the run ended before its measured window did")?;
            let cpu_secs = tally.window.measured_cpu_secs().unwrap_or(-1.0);
            let list = |values: Vec<String>| if values.is_empty() { "-".to_owned() } else { values.join(",") };
            let slices = list(tally.window.slices.iter().map(|s| format!("{:.1}", s.ns_per_op)).collect());
            let slice_ops = list(tally.window.slices.iter().map(|s| s.ops.to_string()).collect());
            let slice_ends = list(tally.window.slices.iter().map(|s| s.end_ns.to_string()).collect());
            println!(
                "client ops={ops} secs={secs:.6} cpu_secs={cpu_secs:.6} total_ops={} syscalls={} bytes={} slices={slices} \
                 slice_ops={slice_ops} slice_ends={slice_ends}",
                tally.ops, tally.io.syscalls, tally.io.bytes,
            );
            Ok(())
        }
        Role::Hold { addr, connections } => hold(addr, connections),
    }
}

/// Pins the calling process (it has one thread) to one CPU.
fn pin(cpu: Option<usize>) -> Result<()> {
    let Some(cpu) = cpu else { return Ok(()) };
    // SAFETY: cpu_set_t is a plain bit set; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit of `set` (it checks the bound);
    // sched_setaffinity reads `size_of::<cpu_set_t>()` bytes of `set`.
    let rc = unsafe {
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("pinning to CPU {cpu}"));
    }
    Ok(())
}

/// Send/recv calls made and bytes moved by one process.
#[derive(Debug, Default, Clone, Copy)]
struct Io {
    syscalls: u64,
    bytes: u64,
}

impl Io {
    fn write_all(&mut self, stream: &mut TcpStream, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            self.syscalls += 1;
            match stream.write(buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.bytes += n as u64;
                    buf = &buf[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// One recv call; returns what it read (0 at end of stream).
    fn read(&mut self, stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.syscalls += 1;
            match stream.read(buf) {
                Ok(n) => {
                    self.bytes += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Fills `buf`; `Ok(false)` if the stream ended before the first byte.
    fn read_exact(&mut self, stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<bool> {
        let mut filled = 0;
        while filled < buf.len() {
            let n = self.read(stream, &mut buf[filled..])?;
            if n == 0 {
                if filled == 0 {
                    return Ok(false);
                }
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            filled += n;
        }
        Ok(true)
    }
}

/// Warm-up, then the measured window: records the operation count, the
/// time and the CPU time (this process's and the server's) as each boundary
/// is crossed.
#[derive(Debug, Clone)]
struct Clock {
    warm_until: Instant,
    stop_at: Instant,
    server_pid: Option<u32>,
    start: Option<(u64, Instant)>,
    end: Option<(u64, Instant)>,
    cpu_start_ns: Option<u64>,
    cpu_end_ns: Option<u64>,
    /// Start of the current slice: (ops, when, CPU ns).
    slice: Option<(u64, Instant, u64)>,
    /// The finished slices of the window.
    slices: Vec<Slice>,
    /// Set when the window is to end now (`--until-stdin-closes`).
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// One slice of the measured window.
#[derive(Debug, Clone, Copy)]
struct Slice {
    ops: u64,
    /// CPU ns of client and server per operation.
    ns_per_op: f64,
    /// When it ended, CLOCK_MONOTONIC ns.
    end_ns: u64,
}

/// CLOCK_MONOTONIC in ns (the clock the bench stamps its phases with).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Length of one slice of the measured window. Interference from outside
/// (another VM on the host, a busy sibling hyperthread) only ever adds
/// time, in bursts of a second or two; the low quantile of the slices is
/// the cost of the operation itself.
const SLICE: Duration = Duration::from_millis(100);

impl Clock {
    fn new(warmup: Duration, window: Duration, server_pid: Option<u32>) -> Self {
        Self::starting_at(Instant::now(), warmup, window, server_pid)
    }

    fn starting_at(now: Instant, warmup: Duration, window: Duration, server_pid: Option<u32>) -> Self {
        Clock {
            warm_until: now + warmup,
            stop_at: now + warmup + window,
            server_pid,
            start: None,
            end: None,
            cpu_start_ns: None,
            cpu_end_ns: None,
            slice: None,
            slices: Vec::new(),
            stop: None,
        }
    }

    /// Notes `ops` done so far; false once the measured window is over
    /// (its time is up and it holds at least one operation).
    fn keep_going(&mut self, ops: u64) -> bool {
        self.keep_going_at(ops, Instant::now())
    }

    /// [`Clock::keep_going`] at a given instant (the tests drive it with
    /// instants of their own, so no assertion depends on the scheduler).
    fn keep_going_at(&mut self, ops: u64, now: Instant) -> bool {
        if self.end.is_some() {
            return false;
        }
        if self.start.is_none() && now >= self.warm_until {
            self.cpu_start_ns = cpu_ns(self.server_pid);
            self.start = Some((ops, now));
            self.slice = self.cpu_start_ns.map(|cpu| (ops, now, cpu));
        }
        let stopped = self.stop.as_ref().is_some_and(|stop| stop.load(std::sync::atomic::Ordering::Relaxed));
        if let Some((slice_ops, since, slice_cpu)) = self.slice {
            if now.duration_since(since) >= SLICE || now >= self.stop_at || stopped {
                match cpu_ns(self.server_pid) {
                    Some(cpu) => {
                        if ops > slice_ops && cpu > slice_cpu {
                            self.slices.push(Slice {
                                ops: ops - slice_ops,
                                ns_per_op: (cpu - slice_cpu) as f64 / (ops - slice_ops) as f64,
                                end_ns: monotonic_ns(),
                            });
                        }
                        self.slice = Some((ops, now, cpu));
                    }
                    None => self.slice = None,
                }
            }
        }
        // A window holds at least one operation, however late the
        // scheduler lets this process run: a run never measures nothing.
        let measured_some = self.start.is_some_and(|(start_ops, _)| ops > start_ops);
        if (now >= self.stop_at || stopped) && measured_some {
            self.end = Some((ops, now));
            self.cpu_end_ns = cpu_ns(self.server_pid);
            return false;
        }
        true
    }

    /// CPU seconds of client and server in the measured window.
    fn measured_cpu_secs(&self) -> Option<f64> {
        Some(self.cpu_end_ns?.checked_sub(self.cpu_start_ns?)? as f64 / 1e9)
    }

    /// Operations and seconds in the measured window.
    fn measured(&self) -> Option<(u64, f64)> {
        let ((ops0, t0), (ops1, t1)) = (self.start?, self.end?);
        Some((ops1 - ops0, t1.duration_since(t0).as_secs_f64()))
    }
}

/// CPU time, in nanoseconds, of this process plus the server (both have a
/// single thread, so the process's schedstat is all of it).
fn cpu_ns(server_pid: Option<u32>) -> Option<u64> {
    let read =
        |path: &str| -> Option<u64> { std::fs::read_to_string(path).ok()?.split_whitespace().next()?.parse().ok() };
    let own = read("/proc/self/schedstat")?;
    match server_pid {
        Some(pid) => Some(own + read(&format!("/proc/{pid}/schedstat"))?),
        None => Some(own),
    }
}

struct Tally {
    ops: u64,
    io: Io,
    window: Clock,
}

pub fn listen_loopback(addr: Ipv4Addr) -> Result<TcpListener> {
    let listener = TcpListener::bind((addr, 0)).with_context(|| format!("listening on {addr}"))?;
    // SAFETY: listen on a socket this listener owns; calling it again on a
    // listening socket only changes the backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
        return Err(io::Error::last_os_error()).context("raising the listen backlog");
    }
    Ok(listener)
}

fn serve(workload: Workload) -> Result<()> {
    let listener = listen_loopback(Ipv4Addr::LOCALHOST)?;
    let port = listener.local_addr()?.port();
    println!("port {port}");
    io::stdout().flush()?;
    let io = match workload {
        Workload::PingPong => ping_pong_server(&listener)?,
        Workload::Bulk => bulk_server(&listener)?,
        Workload::Parallel => parallel_server(listener)?,
        Workload::Churn => churn_server(&listener)?,
    };
    println!("server syscalls={} bytes={}", io.syscalls, io.bytes);
    Ok(())
}

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn ping_pong_server(listener: &TcpListener) -> Result<Io> {
    let (mut stream, _) = listener.accept().context("accepting")?;
    stream.set_nodelay(true)?;
    let mut io = Io::default();
    let mut buf = [0u8; MESSAGE_SIZE];
    while io.read_exact(&mut stream, &mut buf)? {
        io.write_all(&mut stream, &buf)?;
    }
    Ok(io)
}

fn ping_pong_client(addr: SocketAddr, mut clock: Clock) -> Result<Tally> {
    let mut stream = connect(addr)?;
    let mut io = Io::default();
    let mut buf = [7u8; MESSAGE_SIZE];
    let mut ops = 0;
    while clock.keep_going(ops) {
        io.write_all(&mut stream, &buf)?;
        if !io.read_exact(&mut stream, &mut buf)? {
            bail!("the server closed the connection");
        }
        ops += 1;
    }
    Ok(Tally { ops, io, window: clock })
}

fn bulk_server(listener: &TcpListener) -> Result<Io> {
    let (mut stream, _) = listener.accept().context("accepting")?;
    let mut io = Io::default();
    let mut buf = vec![0u8; BULK_CHUNK];
    while io.read(&mut stream, &mut buf)? > 0 {}
    Ok(io)
}

fn bulk_client(addr: SocketAddr, mut clock: Clock) -> Result<Tally> {
    let mut stream = connect(addr)?;
    let mut io = Io::default();
    let chunk = vec![7u8; BULK_CHUNK];
    let mut ops = 0;
    while clock.keep_going(ops) {
        io.write_all(&mut stream, &chunk)?;
        ops += 1;
    }
    Ok(Tally { ops, io, window: clock })
}

fn churn_server(listener: &TcpListener) -> Result<Io> {
    let mut io = Io::default();
    let mut buf = [0u8; 2 * CHURN_PAYLOAD];
    loop {
        let (mut stream, _) = listener.accept().context("accepting")?;
        let mut got = 0;
        while got < CHURN_PAYLOAD {
            match io.read(&mut stream, &mut buf)? {
                0 => break,
                n => got += n,
            }
        }
        // A connection that ends before its payload is the client's signal
        // that the run is over.
        if got < CHURN_PAYLOAD {
            return Ok(io);
        }
    }
}

fn churn_client(addr: SocketAddr, mut clock: Clock) -> Result<Tally> {
    let mut io = Io::default();
    let payload = [7u8; CHURN_PAYLOAD];
    let mut buf = [0u8; 64];
    let mut ops = 0;
    while clock.keep_going(ops) {
        let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        io.write_all(&mut stream, &payload)?;
        // The server closes first (so TIME_WAIT is on its side and this
        // side's ephemeral ports free up at once): wait for its FIN.
        if io.read(&mut stream, &mut buf)? != 0 {
            bail!("the churn server answered with data");
        }
        drop(stream);
        ops += 1;
    }
    let mut stop = TcpStream::connect(addr).context("telling the churn server to stop")?;
    stop.write_all(b"q")?;
    Ok(Tally { ops, io, window: clock })
}

/// A level-triggered epoll set.
struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 has no pointer arguments.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        Ok(Epoll { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
        // SAFETY: `event` is a valid epoll_event for the duration of the call.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms`; returns the ready events, at the start of
    /// `events`.
    fn wait<'a>(&self, events: &'a mut [libc::epoll_event], timeout_ms: i32) -> io::Result<&'a [libc::epoll_event]> {
        let capacity = i32::try_from(events.len()).unwrap_or(i32::MAX);
        // SAFETY: the kernel writes at most `capacity` entries into `events`.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), capacity, timeout_ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted { Ok(&[]) } else { Err(err) };
        }
        Ok(&events[..n as usize])
    }
}

fn empty_events(n: usize) -> Vec<libc::epoll_event> {
    vec![libc::epoll_event { events: 0, u64: 0 }; n]
}

/// Echoes whatever each connection sends; ends when every accepted
/// connection has closed.
fn parallel_server(listener: TcpListener) -> Result<Io> {
    const LISTENER: u64 = u64::MAX;
    let epoll = Epoll::new()?;
    epoll.add(listener.as_raw_fd(), LISTENER)?;
    let mut conns: Vec<Option<TcpStream>> = Vec::new();
    let mut open = 0usize;
    let mut io = Io::default();
    let mut buf = [0u8; 4096];
    let mut events = empty_events(256);
    loop {
        for event in epoll.wait(&mut events, 1000)? {
            let token = event.u64;
            if token == LISTENER {
                let (stream, _) = listener.accept().context("accepting")?;
                stream.set_nodelay(true)?;
                epoll.add(stream.as_raw_fd(), conns.len() as u64)?;
                conns.push(Some(stream));
                open += 1;
                continue;
            }
            let Some(slot) = conns.get_mut(token as usize) else { continue };
            let Some(stream) = slot.as_mut() else { continue };
            let n = io.read(stream, &mut buf)?;
            if n == 0 {
                *slot = None;
                open -= 1;
                if open == 0 {
                    return Ok(io);
                }
                continue;
            }
            io.write_all(stream, &buf[..n])?;
        }
    }
}

fn parallel_client(addr: SocketAddr, connections: usize, mut clock: Clock) -> Result<Tally> {
    if connections == 0 {
        bail!("the parallel workload needs at least one connection");
    }
    let epoll = Epoll::new()?;
    let mut conns = Vec::with_capacity(connections);
    for token in 0..connections {
        let stream = connect(addr)?;
        epoll.add(stream.as_raw_fd(), token as u64)?;
        conns.push(stream);
    }
    let mut io = Io::default();
    let message = [7u8; MESSAGE_SIZE];
    let mut received = vec![0usize; connections];
    let mut buf = [0u8; MESSAGE_SIZE];
    for stream in &mut conns {
        io.write_all(stream, &message)?;
    }
    let mut in_flight = connections;
    let mut ops = 0;
    let mut going = true;
    let mut events = empty_events(connections.min(1024));
    while in_flight > 0 {
        for event in epoll.wait(&mut events, 1000)? {
            let i = event.u64 as usize;
            let (Some(stream), Some(got)) = (conns.get_mut(i), received.get_mut(i)) else { continue };
            let n = io.read(stream, &mut buf[..MESSAGE_SIZE - *got])?;
            if n == 0 {
                bail!("the server closed connection {i}");
            }
            *got += n;
            if *got < MESSAGE_SIZE {
                continue;
            }
            *got = 0;
            ops += 1;
            if going {
                io.write_all(stream, &message)?;
            } else {
                in_flight -= 1;
            }
        }
        going = going && clock.keep_going(ops);
    }
    Ok(Tally { ops, io, window: clock })
}

/// Raises the soft open-file limit to the hard one (no privilege needed).
pub fn raise_open_file_limit() -> Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error()).context("reading the open-file limit");
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads one rlimit from `limit`.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error()).context("raising the open-file limit");
    }
    Ok(limit.rlim_max)
}

/// Makes close() reset the connection, so that thousands of held
/// connections leave no TIME_WAIT sockets behind when the holder exits.
fn reset_on_close(stream: &TcpStream) -> io::Result<()> {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt reads `size_of::<linger>()` bytes from `linger`.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn hold(addr: Ipv4Addr, connections: usize) -> Result<()> {
    let limit = raise_open_file_limit()?;
    if (2 * connections + 16) as u64 > limit {
        bail!("{connections} connections need {} open files; the limit is {limit}", 2 * connections + 16);
    }
    let listener = listen_loopback(addr)?;
    let target = listener.local_addr()?;
    let hello = [7u8; HOLD_HELLO];
    let mut buf = [0u8; HOLD_HELLO];
    let mut io = Io::default();
    let mut held = Vec::with_capacity(2 * connections);
    for i in 0..connections {
        let mut client = TcpStream::connect(target).with_context(|| format!("connection {i} to {target}"))?;
        let (mut server, _) = listener.accept().context("accepting")?;
        io.write_all(&mut client, &hello)?;
        io.read_exact(&mut server, &mut buf)?;
        io.write_all(&mut server, &hello)?;
        io.read_exact(&mut client, &mut buf)?;
        reset_on_close(&client)?;
        held.push(client);
        held.push(server);
    }
    println!("ready {connections}");
    io::stdout().flush()?;
    // Hold until the parent closes our stdin (or goes away).
    let mut line = String::new();
    while io::stdin().lock().read_line(&mut line)? > 0 {
        line.clear();
    }
    drop(held);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_measures_only_after_the_warm_up() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut clock = Clock::starting_at(t0, Duration::from_millis(20), Duration::from_millis(30), None);
        // Warm-up: ops 0..=3 at 0, 5, 10, 15 ms are not measured.
        for (ops, ms) in [(0, 0), (1, 5), (2, 10), (3, 15)] {
            assert!(clock.keep_going_at(ops, at(ms)));
        }
        assert!(clock.measured().is_none(), "nothing measured during the warm-up");
        // The window opens at the first call past the warm-up (op 4 at 21 ms)
        // and closes at the first call past 50 ms (op 10 at 52 ms).
        for (ops, ms) in [(4, 21), (5, 30), (6, 35), (7, 40), (8, 45), (9, 49)] {
            assert!(clock.keep_going_at(ops, at(ms)));
        }
        assert!(!clock.keep_going_at(10, at(52)));
        let (measured, secs) = clock.measured().expect("both boundaries crossed");
        assert_eq!(measured, 6);
        assert!((secs - 0.031).abs() < 1e-9, "{secs}");
        assert!(!clock.keep_going_at(11, at(60)), "the window stays closed");
        assert_eq!(clock.measured().expect("still measured").0, 6);
    }

    #[test]
    fn a_window_opened_late_still_holds_an_operation() {
        // The process was not scheduled from the start until past the
        // whole window: the window opens there and closes after one more
        // operation, whenever that comes.
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut clock = Clock::starting_at(t0, Duration::from_millis(10), Duration::from_millis(50), None);
        assert!(clock.keep_going_at(0, at(500)), "the window opens at the first call, already late");
        assert!(!clock.keep_going_at(1, at(900)));
        assert_eq!(clock.measured().map(|(ops, _)| ops), Some(1));
    }

    #[test]
    fn clock_reads_cpu_time_at_both_ends() {
        let t0 = Instant::now();
        let mut clock = Clock::starting_at(t0, Duration::ZERO, Duration::from_millis(1), Some(std::process::id()));
        assert!(clock.keep_going_at(0, t0));
        assert!(!clock.keep_going_at(1, t0 + Duration::from_millis(2)));
        let cpu = clock.measured_cpu_secs().expect("schedstat is readable");
        assert!(cpu >= 0.0, "{cpu}");
    }

    #[test]
    fn every_workload_runs_briefly() {
        for workload in Workload::ALL {
            let exe = std::thread::spawn(move || {
                let listener = listen_loopback(Ipv4Addr::LOCALHOST).expect("listen");
                let addr = listener.local_addr().expect("addr");
                let server = std::thread::spawn(move || match workload {
                    Workload::PingPong => ping_pong_server(&listener),
                    Workload::Bulk => bulk_server(&listener),
                    Workload::Parallel => parallel_server(listener),
                    Workload::Churn => churn_server(&listener),
                });
                let clock = Clock::new(Duration::from_millis(10), Duration::from_millis(50), None);
                let tally = match workload {
                    Workload::PingPong => ping_pong_client(addr, clock),
                    Workload::Bulk => bulk_client(addr, clock),
                    Workload::Parallel => parallel_client(addr, 8, clock),
                    Workload::Churn => churn_client(addr, clock),
                }
                .expect("client");
                let server_io = server.join().expect("server thread").expect("server");
                (tally, server_io)
            });
            let (tally, server_io) = exe.join().expect("workload thread");
            let (ops, _) = tally.window.measured().expect("measured");
            assert!(ops > 0, "{workload:?}");
            assert!(tally.io.syscalls >= tally.ops && server_io.syscalls >= tally.ops, "{workload:?}");
        }
    }
}
