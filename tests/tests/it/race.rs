//! Regression: a socket destroyed while the tracer reads its socket table
//! was counted twice. The read did not return it (or returned a new socket
//! that already reused its kernel address), so the model dropped it with
//! what earlier samples had already attributed, and its final record from
//! the ring buffer, drained just after, was then counted in full again
//! (bytes and the open/close). A slow read, a short interval and a steady
//! stream of overlapping short connections make destroys land in the read
//! often; every byte and every connection must still count exactly once.
//! The read is slow because 16,000 idle sockets, opened before the trace,
//! sit in the kernel table: each moves one byte once the tracer is attached
//! (sockets that never do an event are not in that table).

use std::time::{Duration, Instant};

use tracer_tests::{serial, Tracer};

use crate::{server, traffic, LINE_TIMEOUT};

/// Idle connections held by one process, both ends (2 fds each, under the
/// 20,000 fds a process may hold), on a port the trace filters out.
const IDLE: u64 = 8_000;
/// Short connections, one started every `EVERY_MS`: about 5 s of churn.
const CONNECTIONS: u64 = 1_000;
const EVERY_MS: u64 = 5;
/// Each short connection writes `CHUNKS` x `CHUNK` bytes, `PAUSE_MS` apart.
const CHUNKS: u64 = 6;
const CHUNK: u64 = 1_000;
const PAUSE_MS: u64 = 50;

#[test]
fn sockets_destroyed_while_the_table_is_read_are_counted_once() {
    let _serial = serial();
    let started = Instant::now();
    let mut idle = traffic("idle-pairs", &["idle-pairs", "--conns", &IDLE.to_string(), "--wait-go"]);
    assert_eq!(idle.expect("ready", Duration::from_secs(60)).num::<u64>("n"), IDLE);
    let (mut sink, port, sink_pid) = server(&["--conns", &CONNECTIONS.to_string()]);
    // Many table reads while sockets come and go.
    let tracer = Tracer::start_with_interval("100ms", &["--port", &port.to_string()]);
    idle.say("go");
    idle.expect("touched", LINE_TIMEOUT);
    let mut client = traffic(
        "bursty-client",
        &[
            "bursty-client",
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--count",
            &CONNECTIONS.to_string(),
            "--every-ms",
            &EVERY_MS.to_string(),
            "--chunks",
            &CHUNKS.to_string(),
            "--chunk",
            &CHUNK.to_string(),
            "--pause-ms",
            &PAUSE_MS.to_string(),
        ],
    );
    let client_pid: u32 = client.expect("ready", LINE_TIMEOUT).num("pid");
    let done = client.expect("done", LINE_TIMEOUT);
    let sent: u64 = done.num("tx");
    assert_eq!((done.num::<u64>("n"), sent), (CONNECTIONS, CONNECTIONS * CHUNKS * CHUNK), "{done:?}");
    let served = sink.expect("served", LINE_TIMEOUT);
    assert_eq!(served.num::<u64>("rx"), sent, "{served:?}");
    let report = tracer.stop();
    eprintln!(
        "race: {IDLE} idle connections, {CONNECTIONS} short ones in {} s; {:.1} s in all; tracer stats {:?}",
        done.get("secs"),
        started.elapsed().as_secs_f64(),
        report.tracer
    );

    let client_flow = report.flow(client_pid, "client", "127.0.0.1", port);
    assert_eq!(
        (client_flow.tx_bytes, client_flow.rx_bytes, client_flow.connections_opened, client_flow.connections_closed),
        (sent, 0, CONNECTIONS, CONNECTIONS),
        "client flow (the client sent {sent} bytes over {CONNECTIONS} connections): {client_flow:#?}"
    );
    let server_flow = report.flow(sink_pid, "server", "127.0.0.1", port);
    assert_eq!(
        (server_flow.rx_bytes, server_flow.tx_bytes, server_flow.connections_opened, server_flow.connections_closed),
        (sent, 0, CONNECTIONS, CONNECTIONS),
        "server flow (the sink read {sent} bytes over {CONNECTIONS} connections): {server_flow:#?}"
    );
    assert_eq!(report.tracer.events_dropped, 0, "{:?}", report.tracer);
}
