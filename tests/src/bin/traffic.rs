//! `traffic`: the loopback traffic generator the integration tests spawn when
//! a scenario needs its own process (its own pid, name or network
//! namespace). It moves exact byte counts and says what it did in
//! `word key=value` lines on stdout, e.g. `ready port=40123 pid=777`.
//!
//! Commands read lines on stdin where they wait for the test (`go`,
//! `close`), and once done they stay alive, holding their sockets, until
//! stdin closes, so the tracer can still read their names. Every loop is
//! bounded in count, and the whole process exits after `--max-secs`
//! (default 300) whatever happens.
//!
//! ```text
//! traffic server        [--bind ADDR] [--read N] [--answer M] [--conns C]
//! traffic cw-server     [--bind ADDR] --conns K          accept K, never close
//! traffic client        --connect ADDR [--bind IP] [--send N] [--expect M]
//!                       [--half-close] [--peek] [--name NAME] [--wait-go] [--wait-close]
//! traffic hold-client   --connect ADDR --conns K         connect K, never close
//! traffic leaky-client  --connect ADDR --count C [--every-ms 100]
//! traffic polite-client --connect ADDR --count C [--every-ms 100] [--send N] [--expect M]
//! traffic refused       --connect ADDR                   expects ECONNREFUSED
//! traffic churn         --connect ADDR --count C [--send N]
//! traffic paced-client  --connect ADDR --from-rate B --to-rate B --secs S [--step-ms 10]
//! traffic idle-pairs    --conns K [--wait-go]            K idle loopback connections, both ends held
//! traffic bursty-client --connect ADDR --count C [--every-ms 5] [--chunks 6] [--chunk 1000] [--pause-ms 50]
//! traffic connect-fail  --connect ADDR --count N [--syn-retries R] [--give-up-ms T] [--every-ms 0]
//! traffic slow-reader   [--bind ADDR] [--rcvbuf B] [--read-every-ms 100] [--read-chunk 4096] [--report-ms 500]
//! traffic fast-sender   --connect ADDR --bytes N [--sndbuf B] [--report-ms 500]
//! traffic rtt-probe     --connect ADDR [--size 100] [--every-ms 50] [--secs S]
//! traffic echo-server   [--bind ADDR] [--conns 1]
//! traffic reconnect     --fd FD --connect ADDR [--send N]
//! ```
//! `reconnect` connects the socket it inherited as `--fd` (one its parent
//! left unconnected with a disconnect, `connect(AF_UNSPEC)`), sends
//! `--send` bytes and closes it (`connected pid= port=`, then `closed`).
//! A paced client sends at a rate (bytes/s) moving linearly from
//! `--from-rate` to `--to-rate` over `--secs` (paced by the wall clock, so
//! the ramp holds under CPU contention), prints `ramped`, then keeps
//! sending at `--to-rate` until stdin closes, closes and exits.
//! Leaky and polite clients are paced by the wall clock too, and their
//! `done` line says how long the series took (`secs`).
//! A server without `--read` reads each connection to EOF; it answers
//! `--answer` bytes, then closes.
//! `idle-pairs` raises its soft fd limit to the hard one, then connects K
//! times to its own listener and keeps both ends of every connection
//! (2K fds), idle, until stdin closes. With `--wait-go`, on `go` each
//! connection moves one byte each way (so a tracer started after them
//! knows all 2K sockets), then they stay idle; each further `go` does it
//! again (`touched n=K pid=P round=R` after each round).
//! A bursty client starts a connection every `--every-ms` (paced by the
//! wall clock), `--count` in all, each in its own thread: `--chunks` writes
//! of `--chunk` bytes with `--pause-ms` after each, then close; it prints
//! `done n=C tx=BYTES` once all are closed.
//!
//! TCP health modes (the kernel's own numbers are printed as an oracle;
//! on stdin, `info` prints `info rtt_us=.. min_rtt_us=.. rcv_rtt_us=..
//! total_retrans=.. bytes_acked=.. rwnd_limited_us=.. fionread=.. outq=..
//! ...` from `TCP_INFO` of the mode's socket, see `health::info_line`):
//! - `connect-fail`: `--count` sequential connects expected to fail
//!   (non-blocking connect + poll). `--syn-retries R` sets `TCP_SYNCNT`
//!   (the kernel gives up after ~2^(R+1)-1 s: R=1 -> 3 s); `--give-up-ms T`
//!   closes the socket still in SYN_SENT after T ms. Per attempt it prints
//!   `failed errno=E reason=R syn_retrans=K local_port=P ms=M` (errno from
//!   `SO_ERROR`, 0 when we gave up; reason as DESIGN.md maps it; K is
//!   `tcpi_total_retrans`, read before closing), or `connected
//!   local_port=P ms=M` if one succeeds, then `done failed=N connected=C
//!   syn_retrans_total=K pid=PID`.
//! - `slow-reader`: accepts one connection (`ready port= pid=`, then
//!   `accepted pid= rcvbuf=`; `--rcvbuf` sets `SO_RCVBUF` on the listener,
//!   so the accepted socket's window is sized by it) and reads at most
//!   `--read-chunk` bytes every `--read-every-ms`, so a backlog builds.
//!   Every `--report-ms` it prints `queue rx=<FIONREAD> read=<bytes read>`.
//!   On stdin `close` (or the peer's EOF, printed `eof read=N`) it stops
//!   reading, closes and prints `done rx=<bytes read>`.
//! - `fast-sender`: connects, writes `--bytes` as fast as the socket takes
//!   them, printing `outq bytes=<SIOCOUTQ> tx=<written>` every
//!   `--report-ms`; then `sent tx=N` and `done tx=N`, and keeps printing
//!   `outq` lines while the value changes; stdin `outq` prints one now,
//!   `close` closes the socket.
//! - `rtt-probe`: one connection to an echo server; every `--every-ms` it
//!   sends `--size` bytes and reads them back (`connected pid= port=`
//!   first). After `--secs` (default: until stdin closes) it prints `done
//!   pings=N`. Its `info` line adds `app_rtt_us=` (the last ping's wall
//!   time) and `pings=`.
//! - `echo-server`: accepts `--conns` connections (`accepted n=I
//!   peer_port=P` each) and echoes each to EOF; `info` reports the latest
//!   accepted socket (the server side's RTT, handshake included).

use std::{
    collections::HashMap,
    io::BufRead,
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    process::exit,
    sync::mpsc::{self, Receiver, TryRecvError},
    thread,
    time::{Duration, Instant},
};

use std::{
    io::{ErrorKind, Read, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::mpsc::RecvTimeoutError,
};

use tracer_tests::{
    connect_from,
    health::{failure_reason, fionread, info_line, int_sockopt, set_int_sockopt, siocoutq, tcp_info},
    receive_exactly, receive_to_end, send_exactly, set_process_name, sockaddr,
};

/// `--key value` options and `--flag`s after the command word.
struct Options {
    values: HashMap<String, String>,
}

impl Options {
    const FLAGS: [&'static str; 5] = ["half-close", "peek", "wait-go", "wait-close", "help"];

    fn parse(args: &[String]) -> Options {
        let mut values = HashMap::new();
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            let Some(key) = arg.strip_prefix("--") else { fail(&format!("unexpected argument {arg:?}")) };
            if Self::FLAGS.contains(&key) {
                values.insert(key.to_owned(), String::new());
            } else {
                let value = iter.next().unwrap_or_else(|| fail(&format!("--{key} needs a value")));
                values.insert(key.to_owned(), value.clone());
            }
        }
        Options { values }
    }

    fn flag(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    fn text(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    fn num(&self, key: &str, default: u64) -> u64 {
        match self.text(key) {
            None => default,
            Some(text) => text.parse().unwrap_or_else(|_| fail(&format!("--{key} {text:?} is not a number"))),
        }
    }

    fn addr(&self, key: &str, default: Option<&str>) -> SocketAddr {
        let text = self.text(key).or(default).unwrap_or_else(|| fail(&format!("--{key} ADDR is required")));
        text.parse().unwrap_or_else(|_| fail(&format!("--{key} {text:?} is not an address")))
    }
}

fn fail(message: &str) -> ! {
    eprintln!("traffic: {message}");
    exit(2)
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

struct Control {
    stdin: Receiver<String>,
}

impl Control {
    /// Waits for the test's next command line (`go`, `close`).
    fn wait_for(&self, word: &str) {
        match self.stdin.recv() {
            Ok(line) if line.trim() == word => {}
            Ok(line) => fail(&format!("expected {word:?} on stdin, got {line:?}")),
            Err(_) => fail(&format!("stdin closed while waiting for {word:?}")),
        }
    }

    /// Stays alive (holding whatever the caller holds) until stdin closes.
    fn hold(&self) {
        while self.stdin.recv().is_ok() {}
    }
}

fn pid() -> u32 {
    std::process::id()
}

fn connect(options: &Options, target: SocketAddr) -> TcpStream {
    let result = match options.text("bind") {
        Some(ip) => {
            let ip: IpAddr = ip.parse().unwrap_or_else(|_| fail(&format!("--bind {ip:?} is not an IP")));
            connect_from(ip, target)
        }
        None => TcpStream::connect(target),
    };
    result.unwrap_or_else(|e| fail(&format!("connect to {target}: {e}")))
}

fn listen(options: &Options) -> TcpListener {
    let bind = options.addr("bind", Some("127.0.0.1:0"));
    let listener = TcpListener::bind(bind).unwrap_or_else(|e| fail(&format!("listen on {bind}: {e}")));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| fail(&format!("local address: {e}")));
    println!("ready port={port} pid={}", pid());
    listener
}

fn accept(listener: &TcpListener) -> TcpStream {
    listener.accept().map(|(stream, _)| stream).unwrap_or_else(|e| fail(&format!("accept: {e}")))
}

/// Accepts `--conns` connections, each served in its own thread: read
/// `--read` bytes (or to EOF), answer `--answer` bytes, close.
fn server(options: &Options, control: &Control) {
    let listener = listen(options);
    let read = options.text("read").map(|_| options.num("read", 0));
    let answer = options.num("answer", 0);
    let conns = options.num("conns", 1);
    let mut workers = Vec::new();
    for _ in 0..conns {
        let mut stream = accept(&listener);
        workers.push(thread::spawn(move || {
            let got = match read {
                Some(count) => {
                    receive_exactly(&mut stream, count);
                    count
                }
                None => receive_to_end(&mut stream),
            };
            send_exactly(&mut stream, answer);
            got
        }));
    }
    let received: u64 =
        workers.into_iter().map(|w| w.join().unwrap_or_else(|_| fail("a server thread panicked"))).sum();
    println!("served n={conns} rx={received} tx={}", conns * answer);
    control.hold();
}

/// Accepts `--conns` connections and never reads or closes them: when the
/// clients close, they sit in CLOSE_WAIT.
fn cw_server(options: &Options, control: &Control) {
    let listener = listen(options);
    let conns = options.num("conns", 1);
    let held: Vec<TcpStream> = (0..conns).map(|_| accept(&listener)).collect();
    println!("accepted n={} pid={}", held.len(), pid());
    control.hold();
    drop(held);
}

fn client(options: &Options, control: &Control) {
    if let Some(name) = options.text("name") {
        set_process_name(name.as_bytes());
    }
    let target = options.addr("connect", None);
    let send = options.num("send", 0);
    let expect = options.num("expect", 0);
    let mut stream = connect(options, target);
    let local = stream.local_addr().map(|a| a.port()).unwrap_or(0);
    println!("connected pid={} port={local}", pid());
    if options.flag("wait-go") {
        control.wait_for("go");
    }
    send_exactly(&mut stream, send);
    if options.flag("half-close") {
        stream.shutdown(Shutdown::Write).unwrap_or_else(|e| fail(&format!("shutdown(SHUT_WR): {e}")));
    }
    if options.flag("peek") && expect > 0 {
        peek_until(&stream, expect);
    }
    receive_exactly(&mut stream, expect);
    let extra = receive_to_end(&mut stream);
    if extra != 0 {
        fail(&format!("the server sent {extra} bytes more than --expect {expect}"));
    }
    println!("received n={expect}");
    if options.flag("wait-close") {
        control.wait_for("close");
    }
    drop(stream);
    println!("closed pid={}", pid());
    control.hold();
}

fn reconnect(options: &Options, control: &Control) {
    let fd =
        options.text("fd").and_then(|text| text.parse::<RawFd>().ok()).unwrap_or_else(|| fail("--fd FD is required"));
    let target = options.addr("connect", None);
    let (address, length) = sockaddr(target);
    // SAFETY: the sockaddr buffer lives across the call and `length` is its
    // size; `fd` is the socket this process inherited, owned from here on.
    if unsafe { libc::connect(fd, address.as_ptr().cast(), length) } != 0 {
        fail(&format!("connect of fd {fd} to {target}: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: as above; the stream closes it.
    let mut stream = unsafe { TcpStream::from_raw_fd(fd) };
    let local = stream.local_addr().map(|a| a.port()).unwrap_or(0);
    println!("connected pid={} port={local}", pid());
    send_exactly(&mut stream, options.num("send", 0));
    drop(stream);
    println!("closed pid={}", pid());
    control.hold();
}

/// Peeks (recv with MSG_PEEK) until `count` bytes are queued, a bounded
/// number of times; those reads must not be counted.
fn peek_until(stream: &TcpStream, count: u64) {
    let mut buf = vec![0u8; usize::try_from(count).unwrap_or(usize::MAX).min(1 << 20)];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut peeks = 0u32;
    loop {
        let seen = stream.peek(&mut buf).unwrap_or_else(|e| fail(&format!("peek: {e}")));
        peeks += 1;
        if seen as u64 >= count.min(buf.len() as u64) && peeks >= 3 {
            println!("peeked n={seen} times={peeks}");
            return;
        }
        if Instant::now() > deadline {
            fail(&format!("only {seen} of {count} bytes arrived in 10 s"));
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn hold_client(options: &Options, control: &Control) {
    let target = options.addr("connect", None);
    let held: Vec<TcpStream> = (0..options.num("conns", 1)).map(|_| connect(options, target)).collect();
    println!("connected n={} pid={}", held.len(), pid());
    control.hold();
    drop(held);
}

/// Sleeps until connection `i` of a series started at `started` is due
/// (one every `every`): paced by the wall clock, so a process the scheduler
/// held back catches up instead of running slower.
fn wait_turn(started: Instant, every: Duration, i: u64) {
    let due = started + every * u32::try_from(i).unwrap_or(u32::MAX);
    thread::sleep(due.saturating_duration_since(Instant::now()));
}

/// Opens a connection every `--every-ms` and never closes one; `done`
/// says how long the series took (`secs`, first connect to last).
fn leaky_client(options: &Options, control: &Control) {
    let target = options.addr("connect", None);
    let every = Duration::from_millis(options.num("every-ms", 100));
    println!("ready pid={}", pid());
    let started = Instant::now();
    let mut held = Vec::new();
    for i in 0..options.num("count", 1) {
        wait_turn(started, every, i);
        held.push(connect(options, target));
    }
    println!("done n={} pid={} secs={:.3}", held.len(), pid(), started.elapsed().as_secs_f64());
    control.hold();
}

/// Every `--every-ms`: connect, send, read the answer, close; `done` says
/// how long the series took (`secs`, first connect to last close).
fn polite_client(options: &Options, control: &Control) {
    let target = options.addr("connect", None);
    let every = Duration::from_millis(options.num("every-ms", 100));
    let (send, expect) = (options.num("send", 0), options.num("expect", 0));
    println!("ready pid={}", pid());
    let count = options.num("count", 1);
    let started = Instant::now();
    for i in 0..count {
        wait_turn(started, every, i);
        let mut stream = connect(options, target);
        send_exactly(&mut stream, send);
        receive_exactly(&mut stream, expect);
        receive_to_end(&mut stream);
        drop(stream);
    }
    println!("done n={count} pid={} secs={:.3}", pid(), started.elapsed().as_secs_f64());
    control.hold();
}

fn refused(options: &Options, control: &Control) {
    let target = options.addr("connect", None);
    match TcpStream::connect(target) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => println!("refused pid={}", pid()),
        Err(e) => fail(&format!("connect to {target} failed, but not with a refusal: {e}")),
        Ok(_) => fail(&format!("connect to {target} succeeded; expected a refusal")),
    }
    control.hold();
}

/// `--count` short connections, one after another: connect, send `--send`
/// bytes, read until the server closes, close.
fn churn(options: &Options, control: &Control, deadline: Instant) {
    let target = options.addr("connect", None);
    let (count, send) = (options.num("count", 1), options.num("send", 0));
    let started = Instant::now();
    let mut done = 0;
    // Leave time for the test to read the result before the watchdog fires.
    while done < count && Instant::now() + Duration::from_secs(30) < deadline {
        let mut stream = connect(options, target);
        send_exactly(&mut stream, send);
        receive_to_end(&mut stream);
        done += 1;
    }
    println!("done n={done} pid={} secs={:.2}", pid(), started.elapsed().as_secs_f64());
    control.hold();
}

/// Bytes a paced client should have sent `t` seconds after it started: the
/// integral of a rate going linearly from `from` to `to` over `secs`, then
/// staying at `to`.
fn paced_target(t: f64, from: f64, to: f64, secs: f64) -> u64 {
    let ramp = t.min(secs);
    let ramped = from * ramp + (to - from) * ramp * ramp / (2.0 * secs);
    let after = to * (t - secs).max(0.0);
    (ramped + after) as u64
}

/// Sends at a linearly changing rate for `--secs`, then at the final rate
/// until stdin closes (or `deadline`); every `--step-ms` it tops the bytes
/// sent up to what the elapsed time asks for.
fn paced_client(options: &Options, control: &Control, deadline: Instant) {
    let target = options.addr("connect", None);
    let (from, to) = (options.num("from-rate", 0) as f64, options.num("to-rate", 0) as f64);
    let secs = options.num("secs", 0) as f64;
    if secs <= 0.0 {
        fail("--secs must be positive");
    }
    let step = Duration::from_millis(options.num("step-ms", 10).max(1));
    let mut stream = connect(options, target);
    let local = stream.local_addr().map(|a| a.port()).unwrap_or(0);
    println!("connected pid={} port={local}", pid());
    let started = Instant::now();
    let mut sent = 0u64;
    let mut ramped = false;
    // Bounded by the deadline, and by count: one step per --step-ms.
    let max_steps = deadline.saturating_duration_since(started).as_millis() / step.as_millis().max(1) + 1;
    for _ in 0..max_steps {
        match control.stdin.try_recv() {
            Err(TryRecvError::Disconnected) => break,
            Ok(line) if line.trim() == "stop" => break,
            _ => {}
        }
        if Instant::now() + Duration::from_secs(5) >= deadline {
            break;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let due = paced_target(elapsed, from, to, secs);
        if due > sent {
            send_exactly(&mut stream, due - sent);
            sent = due;
        }
        if !ramped && elapsed >= secs {
            ramped = true;
            println!("ramped pid={} sent={sent} secs={elapsed:.3}", pid());
        }
        thread::sleep(step);
    }
    drop(stream);
    println!("closed pid={} sent={sent} secs={:.3}", pid(), started.elapsed().as_secs_f64());
}

/// Raises the soft limit on open files to the hard one.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the rlimit struct, which
    // lives across both calls.
    let rc = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            -1
        } else {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit)
        }
    };
    if rc != 0 {
        fail(&format!("cannot raise RLIMIT_NOFILE: {}", std::io::Error::last_os_error()));
    }
    limit.rlim_cur
}

/// `--conns` idle loopback connections to our own listener, both ends
/// held (2 fds each) until stdin closes.
fn idle_pairs(options: &Options, control: &Control) {
    let conns = options.num("conns", 1);
    let fds = raise_fd_limit();
    if 2 * conns + 64 > fds {
        fail(&format!("--conns {conns} needs {} fds, the limit is {fds}", 2 * conns + 64));
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| fail(&format!("listen: {e}")));
    let target = listener.local_addr().unwrap_or_else(|e| fail(&format!("local address: {e}")));
    let mut held = Vec::new();
    for _ in 0..conns {
        let client = TcpStream::connect(target).unwrap_or_else(|e| fail(&format!("connect to {target}: {e}")));
        held.push((client, accept(&listener)));
    }
    println!("ready n={} port={} pid={}", held.len(), target.port(), pid());
    if options.flag("wait-go") {
        control.wait_for("go");
        let mut round = 0;
        loop {
            round += 1;
            for (client, served) in &mut held {
                send_exactly(client, 1);
                receive_exactly(served, 1);
                send_exactly(served, 1);
                receive_exactly(client, 1);
            }
            println!("touched n={} pid={} round={round}", held.len(), pid());
            // Another `go` touches them all again; stdin closing ends it.
            match control.stdin.recv() {
                Ok(line) if line.trim() == "go" => {}
                Ok(line) => fail(&format!("expected \"go\" on stdin, got {line:?}")),
                Err(_) => break,
            }
        }
    } else {
        control.hold();
    }
    drop(held);
}

/// One bursty connection: `chunks` writes of `chunk` bytes, a pause after
/// each, then close. Returns the bytes sent.
fn burst(target: SocketAddr, chunks: u64, chunk: u64, pause: Duration) -> u64 {
    let mut stream = TcpStream::connect(target).unwrap_or_else(|e| fail(&format!("connect to {target}: {e}")));
    for _ in 0..chunks {
        send_exactly(&mut stream, chunk);
        thread::sleep(pause);
    }
    drop(stream);
    chunks * chunk
}

/// `--count` bursty connections, one started every `--every-ms`, each in
/// its own thread, overlapping.
fn bursty_client(options: &Options, control: &Control) {
    let target = options.addr("connect", None);
    let count = options.num("count", 1);
    let every = Duration::from_millis(options.num("every-ms", 5));
    let (chunks, chunk) = (options.num("chunks", 6), options.num("chunk", 1000));
    let pause = Duration::from_millis(options.num("pause-ms", 50));
    println!("ready pid={}", pid());
    let started = Instant::now();
    let mut workers = Vec::new();
    for i in 0..count {
        wait_turn(started, every, i);
        workers.push(thread::spawn(move || burst(target, chunks, chunk, pause)));
    }
    let sent: u64 = workers.into_iter().map(|w| w.join().unwrap_or_else(|_| fail("a burst thread panicked"))).sum();
    println!("done n={count} tx={sent} pid={} secs={:.2}", pid(), started.elapsed().as_secs_f64());
    control.hold();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else { fail("usage: traffic COMMAND [--option value]...") };
    let options = Options::parse(rest);
    let max = Duration::from_secs(options.num("max-secs", 300));
    let deadline = Instant::now() + max;
    thread::spawn(move || {
        thread::sleep(max);
        eprintln!("traffic: still running after {max:?}; exiting");
        exit(3);
    });
    let control = Control { stdin: stdin_lines() };
    match command.as_str() {
        "server" => server(&options, &control),
        "cw-server" => cw_server(&options, &control),
        "client" => client(&options, &control),
        "hold-client" => hold_client(&options, &control),
        "leaky-client" => leaky_client(&options, &control),
        "polite-client" => polite_client(&options, &control),
        "refused" => refused(&options, &control),
        "churn" => churn(&options, &control, deadline),
        "paced-client" => paced_client(&options, &control, deadline),
        "idle-pairs" => idle_pairs(&options, &control),
        "bursty-client" => bursty_client(&options, &control),
        "connect-fail" => connect_fail(&options, &control, deadline),
        "slow-reader" => slow_reader(&options, &control, deadline),
        "fast-sender" => fast_sender(&options, &control, deadline),
        "rtt-probe" => rtt_probe(&options, &control, deadline),
        "echo-server" => echo_server(&options, &control, deadline),
        "reconnect" => reconnect(&options, &control),
        other => fail(&format!("unknown command {other:?}")),
    }
}

/// What a command loop ended on.
#[derive(PartialEq, Eq)]
enum Ended {
    Close,
    StdinClosed,
    Deadline,
}

/// Serves stdin commands (`info` about `fd`, `close`) until `close`, stdin
/// closing or `deadline`; calls `tick` every `every` (and may end the loop
/// by returning false). Bounded by the deadline and by count.
fn command_loop(
    control: &Control,
    fd: RawFd,
    deadline: Instant,
    every: Duration,
    mut tick: impl FnMut() -> bool,
    mut other: impl FnMut(&str),
) -> Ended {
    let every = every.max(Duration::from_millis(1));
    let mut next = Instant::now() + every;
    let max_turns = deadline.saturating_duration_since(Instant::now()).as_millis() as u64 + 1_000_000;
    for _ in 0..max_turns {
        let now = Instant::now();
        if now >= deadline {
            return Ended::Deadline;
        }
        match control.stdin.recv_timeout(next.saturating_duration_since(now)) {
            Ok(line) if line.trim() == "close" => return Ended::Close,
            Ok(line) if line.trim() == "info" => println!("{}", info_line(fd)),
            Ok(line) => other(line.trim()),
            Err(RecvTimeoutError::Disconnected) => return Ended::StdinClosed,
            Err(RecvTimeoutError::Timeout) => {
                next += every;
                if !tick() {
                    return Ended::Close;
                }
            }
        }
    }
    Ended::Deadline
}

/// Polls `fd` for `events` up to `timeout`; true if it became ready.
fn poll_fd(fd: RawFd, events: libc::c_short, timeout: Duration) -> bool {
    let mut poll = libc::pollfd { fd, events, revents: 0 };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one live pollfd.
    let rc = unsafe { libc::poll(&raw mut poll, 1, ms) };
    rc > 0
}

fn local_port(fd: RawFd) -> u16 {
    // SAFETY: storage is a zeroed sockaddr_storage of the length given.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getsockname(fd, (&raw mut storage).cast(), &mut len) != 0 {
            return 0;
        }
        // sin_port and sin6_port sit at the same offset.
        let sin = &*(&raw const storage).cast::<libc::sockaddr_in>();
        u16::from_be(sin.sin_port)
    }
}

/// One connect expected to fail: (errno, SYN retransmits, local port, connected?).
fn attempt_connect(
    target: SocketAddr,
    syn_retries: Option<i32>,
    give_up: Option<Duration>,
    deadline: Instant,
) -> (i32, u32, u16, bool) {
    let family = if target.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: socket(2) with constant arguments; the fd is owned below.
    let raw = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        fail(&format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: raw is a fresh socket we own; OwnedFd closes it on drop.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    let fd = socket.as_raw_fd();
    if let Some(retries) = syn_retries {
        set_int_sockopt(fd, libc::IPPROTO_TCP, libc::TCP_SYNCNT, retries)
            .unwrap_or_else(|e| fail(&format!("setsockopt(TCP_SYNCNT, {retries}): {e}")));
    }
    let (address, len) = sockaddr(target);
    // SAFETY: address is a live sockaddr buffer of len bytes.
    let rc = unsafe { libc::connect(fd, address.as_ptr().cast(), len) };
    let port = local_port(fd);
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINPROGRESS) {
            // Failed inside connect() (e.g. no route): no SYN was sent.
            return (error.raw_os_error().unwrap_or(-1), 0, port, false);
        }
        // Leave the watchdog time to spare when no give-up is set.
        let wait =
            give_up.unwrap_or_else(|| deadline.saturating_duration_since(Instant::now() + Duration::from_secs(5)));
        if !poll_fd(fd, libc::POLLOUT, wait) {
            // Gave up while still in SYN_SENT: read the retransmits, then close.
            let retrans = tcp_info(fd).map(|(info, _)| info.total_retrans).unwrap_or(0);
            let errno = int_sockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR).unwrap_or(-1) as i32;
            return (errno, retrans, port, false);
        }
    }
    let retrans = tcp_info(fd).map(|(info, _)| info.total_retrans).unwrap_or(0);
    let errno = int_sockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR).unwrap_or(-1) as i32;
    (errno, retrans, port, errno == 0)
}

/// `--count` sequential connects that are expected to fail.
fn connect_fail(options: &Options, control: &Control, deadline: Instant) {
    let target = options.addr("connect", None);
    let count = options.num("count", 1);
    let syn_retries = options
        .text("syn-retries")
        .map(|_| i32::try_from(options.num("syn-retries", 0)).unwrap_or_else(|_| fail("--syn-retries is too large")));
    let give_up = options.text("give-up-ms").map(|_| Duration::from_millis(options.num("give-up-ms", 0)));
    let every = Duration::from_millis(options.num("every-ms", 0));
    println!("ready pid={}", pid());
    let (mut failed, mut connected, mut retrans_total) = (0u64, 0u64, 0u64);
    for _ in 0..count {
        if Instant::now() + Duration::from_secs(5) >= deadline {
            break;
        }
        let started = Instant::now();
        let (errno, retrans, port, ok) = attempt_connect(target, syn_retries, give_up, deadline);
        let ms = started.elapsed().as_millis();
        retrans_total += u64::from(retrans);
        if ok {
            connected += 1;
            println!("connected local_port={port} ms={ms} syn_retrans={retrans}");
        } else {
            failed += 1;
            let reason = failure_reason(errno);
            println!("failed errno={errno} reason={reason} syn_retrans={retrans} local_port={port} ms={ms}");
        }
        thread::sleep(every);
    }
    println!("done failed={failed} connected={connected} syn_retrans_total={retrans_total} pid={}", pid());
    control.hold();
}

/// Accepts one connection and reads it slowly, so a receive backlog builds.
fn slow_reader(options: &Options, control: &Control, deadline: Instant) {
    let bind = options.addr("bind", Some("127.0.0.1:0"));
    let listener = TcpListener::bind(bind).unwrap_or_else(|e| fail(&format!("listen on {bind}: {e}")));
    if options.text("rcvbuf").is_some() {
        let bytes = i32::try_from(options.num("rcvbuf", 0)).unwrap_or(i32::MAX);
        set_int_sockopt(listener.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, bytes)
            .unwrap_or_else(|e| fail(&format!("setsockopt(SO_RCVBUF): {e}")));
    }
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    println!("ready port={port} pid={}", pid());
    let mut stream = accept(&listener);
    let fd = stream.as_raw_fd();
    let rcvbuf = int_sockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF).unwrap_or(-1);
    println!("accepted pid={} rcvbuf={rcvbuf}", pid());
    stream.set_nonblocking(true).unwrap_or_else(|e| fail(&format!("set_nonblocking: {e}")));
    let every = Duration::from_millis(options.num("read-every-ms", 100));
    let chunk = usize::try_from(options.num("read-chunk", 4096)).unwrap_or(usize::MAX).max(1);
    let report = Duration::from_millis(options.num("report-ms", 500)).max(every);
    let mut buf = vec![0u8; chunk.min(1 << 20)];
    let (mut total, mut eof) = (0u64, false);
    let mut next_report = Instant::now();
    let ended = command_loop(
        control,
        fd,
        deadline,
        every,
        || {
            // Read at most `chunk` bytes now (a bounded number of reads).
            let mut left = chunk;
            for _ in 0..chunk.div_ceil(buf.len()) + 1 {
                if left == 0 {
                    break;
                }
                let want = left.min(buf.len());
                match stream.read(&mut buf[..want]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        total += n as u64;
                        left -= n;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => break,
                    Err(e) => fail(&format!("read: {e}")),
                }
            }
            if Instant::now() >= next_report {
                next_report += report;
                println!("queue rx={} read={total}", fionread(fd).unwrap_or(0));
            }
            if eof {
                println!("eof read={total}");
            }
            !eof
        },
        |_| {},
    );
    drop(stream);
    println!("done rx={total}");
    if ended != Ended::StdinClosed {
        control.hold();
    }
}

/// Writes `--bytes` as fast as the socket takes them, reporting SIOCOUTQ.
fn fast_sender(options: &Options, control: &Control, deadline: Instant) {
    let target = options.addr("connect", None);
    let bytes = options.num("bytes", 0);
    let report = Duration::from_millis(options.num("report-ms", 500).max(1));
    let mut stream = connect(options, target);
    let fd = stream.as_raw_fd();
    if options.text("sndbuf").is_some() {
        let size = i32::try_from(options.num("sndbuf", 0)).unwrap_or(i32::MAX);
        set_int_sockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, size)
            .unwrap_or_else(|e| fail(&format!("setsockopt(SO_SNDBUF): {e}")));
    }
    let local = stream.local_addr().map(|a| a.port()).unwrap_or(0);
    println!("connected pid={} port={local}", pid());
    stream.set_write_timeout(Some(Duration::from_millis(100))).unwrap_or_else(|e| fail(&format!("timeout: {e}")));
    let buf = vec![0x5au8; 64 * 1024];
    let mut sent = 0u64;
    let mut next_report = Instant::now() + report;
    let mut stdin_closed = false;
    // Bounded by the deadline; each turn writes or waits up to 100 ms.
    while sent < bytes && Instant::now() + Duration::from_secs(5) < deadline {
        let want = usize::try_from(bytes - sent).unwrap_or(usize::MAX).min(buf.len());
        match stream.write(&buf[..want]) {
            Ok(n) => sent += n as u64,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(e) => fail(&format!("write: {e}")),
        }
        if Instant::now() >= next_report {
            next_report += report;
            println!("outq bytes={} tx={sent}", siocoutq(fd).unwrap_or(0));
        }
        match control.stdin.try_recv() {
            Ok(line) if line.trim() == "info" => println!("{}", info_line(fd)),
            Ok(line) if line.trim() == "close" => break,
            Ok(_) | Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => {
                stdin_closed = true;
                break;
            }
        }
    }
    println!("sent tx={sent}");
    println!("done tx={sent}");
    if stdin_closed {
        return;
    }
    let mut last = u64::MAX;
    let ended = command_loop(
        control,
        fd,
        deadline,
        report,
        || {
            let now = siocoutq(fd).unwrap_or(0);
            if now != last {
                println!("outq bytes={now} tx={sent}");
                last = now;
            }
            true
        },
        |line| {
            if line == "outq" {
                println!("outq bytes={} tx={sent}", siocoutq(fd).unwrap_or(0));
            }
        },
    );
    drop(stream);
    if ended == Ended::Close {
        println!("closed pid={}", pid());
        control.hold();
    }
}

/// Small request/response ping-pongs over one connection.
fn rtt_probe(options: &Options, control: &Control, deadline: Instant) {
    let target = options.addr("connect", None);
    let size = options.num("size", 100).max(1);
    let every = Duration::from_millis(options.num("every-ms", 50).max(1));
    let secs = options.text("secs").map(|_| Duration::from_secs(options.num("secs", 0)));
    let mut stream = connect(options, target);
    let fd = stream.as_raw_fd();
    stream.set_nodelay(true).unwrap_or_else(|e| fail(&format!("TCP_NODELAY: {e}")));
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap_or_else(|e| fail(&format!("timeout: {e}")));
    let local = stream.local_addr().map(|a| a.port()).unwrap_or(0);
    println!("connected pid={} port={local}", pid());
    let started = Instant::now();
    let (mut pings, mut app_rtt) = (0u64, Duration::ZERO);
    let mut stdin_closed = false;
    let max_pings = deadline.saturating_duration_since(started).as_millis() / every.as_millis() + 1;
    for _ in 0..max_pings {
        if Instant::now() + Duration::from_secs(5) >= deadline || secs.is_some_and(|s| started.elapsed() >= s) {
            break;
        }
        let sent_at = Instant::now();
        send_exactly(&mut stream, size);
        receive_exactly(&mut stream, size);
        app_rtt = sent_at.elapsed();
        pings += 1;
        match control.stdin.try_recv() {
            Ok(line) if line.trim() == "info" => {
                println!("{} app_rtt_us={} pings={pings}", info_line(fd), app_rtt.as_micros())
            }
            Ok(_) | Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => {
                stdin_closed = true;
                break;
            }
        }
        thread::sleep((sent_at + every).saturating_duration_since(Instant::now()));
    }
    println!("done pings={pings} app_rtt_us={} pid={}", app_rtt.as_micros(), pid());
    if !stdin_closed {
        command_loop(control, fd, deadline, Duration::from_secs(1), || true, |_| {});
    }
}

/// Accepts `--conns` connections and echoes each until EOF.
fn echo_server(options: &Options, control: &Control, deadline: Instant) {
    let listener = listen(options);
    let conns = options.num("conns", 1);
    let (sender, accepted) = mpsc::channel::<TcpStream>();
    thread::spawn(move || {
        for n in 1..=conns {
            let stream = accept(&listener);
            let peer = stream.peer_addr().map(|a| a.port()).unwrap_or(0);
            println!("accepted n={n} peer_port={peer}");
            let Ok(probe) = stream.try_clone() else { fail("try_clone") };
            thread::spawn(move || echo(stream));
            if sender.send(probe).is_err() {
                break;
            }
        }
    });
    let mut latest: Option<TcpStream> = None;
    let max_turns = deadline.saturating_duration_since(Instant::now()).as_millis() as u64 / 50 + 1;
    for _ in 0..max_turns {
        if let Ok(stream) = accepted.try_recv() {
            latest = Some(stream);
        }
        match control.stdin.recv_timeout(Duration::from_millis(50)) {
            Ok(line) if line.trim() == "info" => match &latest {
                Some(stream) => println!("{}", info_line(stream.as_raw_fd())),
                None => println!("info none=1"),
            },
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() >= deadline {
            break;
        }
    }
}

/// Echoes one connection until EOF (a bounded number of reads: each moves
/// at least one byte, and the process has a deadline).
fn echo(mut stream: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..u32::MAX {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
}
