//! The soak's workload, run as processes of this xtask binary
//! (`xtask soak-load ROLE`), each renamed (`comm`) after its role so the
//! agent's per-process totals can be checked against the bytes it moved:
//!
//! | role | comm | what it does |
//! |---|---|---|
//! | `churn-server` / `churn` | `soak-churn-srv` / `soak-churn` | a new connection every 1/RATE s, from 127.0.0.10-17 in turn: 512 B request, 64 B answer, the client closes first |
//! | `stream-server` / `stream` | `soak-stream-srv` / `soak-stream` | long-lived connections, 16 KiB chunks each answered with 64 B, paced |
//! | `cwait-server` / `cwait` | `soak-cwait-srv` / `soak-cwait` | the client sends 100 B and closes; the server reads to EOF and never closes: a growing CLOSE_WAIT pile |
//! | `short-server` / `short` | `soak-short-srv` / `soak-short` | one short-lived process per connection: connect, send N bytes, exit |
//!
//! Protocol with the soak (lines on stdout): a server prints `port N` once
//! listening; every long-running role runs until its stdin closes, then
//! closes its sockets and prints `done tx=BYTES rx=BYTES conns=N` (what
//! its send and recv calls moved, exactly). `short` prints nothing and
//! exits 0 once its bytes are sent. Every loop is bounded by `--max-secs`.

use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::fd::FromRawFd as _,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::{Args, ValueEnum};

use crate::bench::loadgen::{listen_loopback, raise_open_file_limit};

/// Churn: bytes of the request and of the answer.
pub const CHURN_REQUEST: usize = 512;
pub const CHURN_ANSWER: usize = 64;
/// Churn clients take their source address from 127.0.0.FIRST.. in turn:
/// one address pair runs out of ports in TIME_WAIT above ~450
/// connections/s (28,000 ephemeral ports, 60 s of TIME_WAIT).
pub const CHURN_SOURCES: u8 = 8;
const CHURN_FIRST_SOURCE: u8 = 10;
/// Streams: chunk size and the answer to each chunk.
pub const STREAM_CHUNK: usize = 16 * 1024;
pub const STREAM_ANSWER: usize = 64;
/// CLOSE_WAIT clients: what each sends before closing.
pub const CWAIT_PAYLOAD: usize = 100;
/// The CLOSE_WAIT server holds at most this many sockets (a process may
/// have 20,000 open files here).
pub const CWAIT_MAX_HELD: u64 = 15_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    ChurnServer,
    Churn,
    StreamServer,
    Stream,
    CwaitServer,
    Cwait,
    ShortServer,
    Short,
}

impl Role {
    /// The process name (`comm`, at most 15 bytes) the role runs under.
    pub fn comm(self) -> &'static str {
        match self {
            Role::ChurnServer => "soak-churn-srv",
            Role::Churn => "soak-churn",
            Role::StreamServer => "soak-stream-srv",
            Role::Stream => "soak-stream",
            Role::CwaitServer => "soak-cwait-srv",
            Role::Cwait => "soak-cwait",
            Role::ShortServer => "soak-short-srv",
            Role::Short => "soak-short",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::ChurnServer => "churn-server",
            Role::Churn => "churn",
            Role::StreamServer => "stream-server",
            Role::Stream => "stream",
            Role::CwaitServer => "cwait-server",
            Role::Cwait => "cwait",
            Role::ShortServer => "short-server",
            Role::Short => "short",
        }
    }

    pub const ALL: [Role; 8] = [
        Role::ChurnServer,
        Role::Churn,
        Role::StreamServer,
        Role::Stream,
        Role::CwaitServer,
        Role::Cwait,
        Role::ShortServer,
        Role::Short,
    ];
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    #[arg(value_enum)]
    pub role: Role,
    /// The server to connect to (client roles).
    #[arg(long)]
    pub connect: Option<SocketAddr>,
    /// Connections per second (churn, cwait) or chunks per second per
    /// stream (stream).
    #[arg(long, default_value = "10")]
    pub rate: f64,
    /// Streams (stream).
    #[arg(long, default_value = "4")]
    pub streams: usize,
    /// Bytes to send (short).
    #[arg(long, default_value = "1000")]
    pub bytes: u64,
    /// Exit after this long whatever happens.
    #[arg(long, default_value = "7200")]
    pub max_secs: u64,
}

/// Bytes moved and connections made by one process, shared by its threads.
#[derive(Debug, Default)]
struct Tally {
    tx: AtomicU64,
    rx: AtomicU64,
    conns: AtomicU64,
}

impl Tally {
    fn write_all(&self, stream: &mut TcpStream, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match stream.write(buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.tx.fetch_add(n as u64, Ordering::Relaxed);
                    buf = &buf[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn read(&self, stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match stream.read(buf) {
                Ok(n) => {
                    self.rx.fetch_add(n as u64, Ordering::Relaxed);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Fills `buf`; false if the stream ended before its first byte.
    fn read_exact(&self, stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<bool> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read(stream, &mut buf[filled..])? {
                0 if filled == 0 => return Ok(false),
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => filled += n,
            }
        }
        Ok(true)
    }

    /// Reads until the peer closes.
    fn read_to_end(&self, stream: &mut TcpStream) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        while self.read(stream, &mut buf)? > 0 {}
        Ok(())
    }

    fn report(&self) {
        println!(
            "done tx={} rx={} conns={}",
            self.tx.load(Ordering::Relaxed),
            self.rx.load(Ordering::Relaxed),
            self.conns.load(Ordering::Relaxed)
        );
    }
}

/// Names the calling thread (on the main thread, the process: threads
/// started later inherit the name).
pub fn set_comm(name: &str) -> Result<()> {
    let mut buf = [0u8; 16];
    let bytes = name.as_bytes();
    if bytes.len() > 15 {
        bail!("process name {name:?} is longer than 15 bytes");
    }
    buf[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16
    // bytes from `buf`, which lives across the call.
    if unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error()).context("prctl(PR_SET_NAME)");
    }
    Ok(())
}

pub fn run(args: LoadArgs) -> Result<()> {
    set_comm(args.role.comm())?;
    let deadline = Instant::now() + Duration::from_secs(args.max_secs);
    let stop = Arc::new(AtomicBool::new(false));
    if args.role != Role::Short {
        // Stop when stdin closes (or at the deadline).
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
            stop.store(true, Ordering::Relaxed);
        });
    }
    let until = Until { stop, deadline };
    let connect = || args.connect.context("--connect is needed for this role");
    let tally = Arc::new(Tally::default());
    match args.role {
        Role::ChurnServer | Role::StreamServer | Role::CwaitServer | Role::ShortServer => {
            serve(args.role, &until, &tally)?
        }
        Role::Churn => churn(connect()?, args.rate, &until, &tally)?,
        Role::Stream => stream(connect()?, args.streams, args.rate, &until, &tally)?,
        Role::Cwait => cwait(connect()?, args.rate, &until, &tally)?,
        Role::Short => {
            let mut socket = TcpStream::connect(connect()?).context("connecting")?;
            tally.write_all(&mut socket, &vec![b's'; usize::try_from(args.bytes)?])?;
            return Ok(());
        }
    }
    tally.report();
    io::stdout().flush()?;
    Ok(())
}

/// When a long-running role ends: its stdin closed, or its deadline.
#[derive(Clone)]
struct Until {
    stop: Arc<AtomicBool>,
    deadline: Instant,
}

impl Until {
    fn done(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }
}

/// Paces a series of operations at `rate` per second on the wall clock;
/// a process held back catches up, but by at most a second's worth.
struct Pace {
    every: Duration,
    next: Instant,
}

impl Pace {
    fn new(rate: f64) -> Self {
        Pace { every: Duration::from_secs_f64(1.0 / rate.max(0.01)), next: Instant::now() }
    }

    fn wait(&mut self) {
        let now = Instant::now();
        if self.next > now {
            thread::sleep(self.next - now);
        } else if now - self.next > Duration::from_secs(1) {
            self.next = now;
        }
        self.next += self.every;
    }
}

/// Accepts until told to stop, then drains what the backlog still holds
/// (clients are stopped first, so everything they sent is counted).
fn serve(role: Role, until: &Until, tally: &Arc<Tally>) -> Result<()> {
    if role == Role::CwaitServer {
        raise_open_file_limit()?;
    }
    let listener = listen_loopback(Ipv4Addr::LOCALHOST)?;
    listener.set_nonblocking(true).context("non-blocking listener")?;
    println!("port {}", listener.local_addr()?.port());
    io::stdout().flush()?;
    let mut held = Vec::new();
    let mut workers = Vec::new();
    loop {
        match listener.accept() {
            Ok((socket, _)) => {
                socket.set_nonblocking(false)?;
                socket.set_read_timeout(Some(Duration::from_secs(60)))?;
                tally.conns.fetch_add(1, Ordering::Relaxed);
                match role {
                    Role::ChurnServer => churn_answer(socket, tally)?,
                    Role::StreamServer => {
                        let tally = Arc::clone(tally);
                        workers.push(thread::spawn(move || stream_answer(socket, &tally)));
                    }
                    Role::CwaitServer => {
                        let mut socket = socket;
                        tally.read_to_end(&mut socket)?;
                        // Never closed: it stays in CLOSE_WAIT.
                        held.push(socket);
                    }
                    _ => {
                        let mut socket = socket;
                        tally.read_to_end(&mut socket)?;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if until.done() {
                    break;
                }
                thread::sleep(Duration::from_millis(2));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("accepting"),
        }
    }
    for worker in workers {
        worker.join().map_err(|_| anyhow::anyhow!("a stream thread panicked"))??;
    }
    drop(held);
    Ok(())
}

fn churn_answer(mut socket: TcpStream, tally: &Tally) -> Result<()> {
    let mut request = [0u8; CHURN_REQUEST];
    if tally.read_exact(&mut socket, &mut request)? {
        tally.write_all(&mut socket, &[b'a'; CHURN_ANSWER])?;
        tally.read_to_end(&mut socket)?;
    }
    Ok(())
}

fn stream_answer(mut socket: TcpStream, tally: &Tally) -> Result<()> {
    let mut chunk = vec![0u8; STREAM_CHUNK];
    while tally.read_exact(&mut socket, &mut chunk)? {
        tally.write_all(&mut socket, &[b'a'; STREAM_ANSWER])?;
    }
    Ok(())
}

/// Connects to `remote` from `source` (bound first, any port).
fn connect_from(source: Ipv4Addr, remote: SocketAddr) -> io::Result<TcpStream> {
    // SAFETY: socket(2) with constant arguments; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket nothing else owns; TcpStream closes it.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let SocketAddr::V4(remote) = remote else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "IPv4 only"));
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(ip.octets()) },
        sin_zero: [0; 8],
    };
    let (local, target) = (sockaddr(source, 0), sockaddr(*remote.ip(), remote.port()));
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: both sockaddr_in values live across the calls and `len` is
    // their size.
    unsafe {
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::connect(fd, (&target as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(stream)
}

fn churn(server: SocketAddr, rate: f64, until: &Until, tally: &Tally) -> Result<()> {
    let mut pace = Pace::new(rate);
    let mut answer = [0u8; CHURN_ANSWER];
    let mut index: u64 = 0;
    while !until.done() {
        pace.wait();
        let source = Ipv4Addr::new(127, 0, 0, CHURN_FIRST_SOURCE + (index % u64::from(CHURN_SOURCES)) as u8);
        index += 1;
        let mut socket = connect_from(source, server).with_context(|| format!("connecting from {source}"))?;
        tally.conns.fetch_add(1, Ordering::Relaxed);
        tally.write_all(&mut socket, &[b'c'; CHURN_REQUEST])?;
        if !tally.read_exact(&mut socket, &mut answer)? {
            bail!("the churn server closed without an answer");
        }
        // Closed first by the client: TIME_WAIT stays on this side.
    }
    Ok(())
}

fn stream(server: SocketAddr, streams: usize, rate: f64, until: &Until, tally: &Arc<Tally>) -> Result<()> {
    let workers: Vec<_> = (0..streams)
        .map(|_| {
            let (until, tally) = (until.clone(), Arc::clone(tally));
            thread::spawn(move || -> Result<()> {
                let mut socket = TcpStream::connect(server).context("connecting")?;
                tally.conns.fetch_add(1, Ordering::Relaxed);
                let chunk = vec![b's'; STREAM_CHUNK];
                let mut answer = [0u8; STREAM_ANSWER];
                let mut pace = Pace::new(rate);
                while !until.done() {
                    pace.wait();
                    tally.write_all(&mut socket, &chunk)?;
                    if !tally.read_exact(&mut socket, &mut answer)? {
                        bail!("the stream server closed");
                    }
                }
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.join().map_err(|_| anyhow::anyhow!("a stream thread panicked"))??;
    }
    Ok(())
}

fn cwait(server: SocketAddr, rate: f64, until: &Until, tally: &Tally) -> Result<()> {
    let mut pace = Pace::new(rate);
    let mut made = 0;
    while !until.done() && made < CWAIT_MAX_HELD {
        pace.wait();
        let mut socket = TcpStream::connect(server).context("connecting")?;
        tally.conns.fetch_add(1, Ordering::Relaxed);
        tally.write_all(&mut socket, &[b'w'; CWAIT_PAYLOAD])?;
        made += 1;
    }
    // Past the cap, idle until told to stop.
    while !until.done() {
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comms_fit_and_differ() {
        let mut seen = std::collections::BTreeSet::new();
        for role in Role::ALL {
            assert!(role.comm().len() <= 15, "{}", role.comm());
            assert!(seen.insert(role.comm()), "{} twice", role.comm());
        }
    }

    #[test]
    fn churn_client_and_server_count_the_same_bytes() {
        let listener = listen_loopback(Ipv4Addr::LOCALHOST).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let server_tally = Arc::new(Tally::default());
        let server = {
            let tally = Arc::clone(&server_tally);
            thread::spawn(move || {
                for _ in 0..3 {
                    let (socket, _) = listener.accept().expect("accept");
                    churn_answer(socket, &tally).expect("answer");
                }
            })
        };
        let client_tally = Tally::default();
        for i in 0..3 {
            let mut socket = connect_from(Ipv4Addr::new(127, 0, 0, 10 + i), addr).expect("connect");
            client_tally.write_all(&mut socket, &[b'c'; CHURN_REQUEST]).expect("send");
            let mut answer = [0u8; CHURN_ANSWER];
            assert!(client_tally.read_exact(&mut socket, &mut answer).expect("answer"));
        }
        server.join().expect("server");
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!((load(&client_tally.tx), load(&client_tally.rx)), (3 * 512, 3 * 64));
        assert_eq!((load(&server_tally.tx), load(&server_tally.rx)), (3 * 64, 3 * 512));
    }
}
