//! One workload run of the load generator: a `loadgen server` process, then
//! a `loadgen client` process against it, both pinned to the bench's CPU;
//! their closing lines become a `Run` (operations, wall and CPU time,
//! syscalls and payload per operation, the quiet-slice quantile). The
//! server start and the closing handshake are shared with the continuous
//! ping-pong round (`phases`).

use std::{path::Path, process::Command, time::Duration};

use anyhow::{bail, Result};

use super::{
    child::{field, fields, Spawned},
    loadgen::{self, Workload},
    plan::LoadSpec,
    stats::{self, Run},
};

/// Bytes the client writes per operation.
pub fn payload_per_op(workload: Workload) -> usize {
    match workload {
        Workload::PingPong | Workload::Parallel => loadgen::MESSAGE_SIZE,
        Workload::Bulk => loadgen::BULK_CHUNK,
        Workload::Churn => loadgen::CHURN_PAYLOAD,
    }
}

/// Starts `loadgen server` for `workload` pinned to `cpu`; returns it with
/// the port it listens on.
pub fn start_server(loadgen: &Path, workload: Workload, cpu: &str) -> Result<(Spawned, u16)> {
    let mut server =
        Spawned::start(Command::new(loadgen).args(["loadgen", "server", "--workload", workload.name(), "--cpu", cpu]))?;
    let port: u16 = server.line_starting("port ", Duration::from_secs(10))?.trim_start_matches("port ").parse()?;
    Ok((server, port))
}

/// `loadgen client` for `workload` against the server on `port`, pinned to
/// `cpu`, counting the server's CPU time with its own; the caller adds how
/// long it runs.
pub fn client_command(loadgen: &Path, workload: Workload, port: u16, cpu: &str, server: &mut Spawned) -> Command {
    let server_pid = server.child_mut().id().to_string();
    let mut cmd = Command::new(loadgen);
    cmd.args(["loadgen", "client", "--workload", workload.name(), "--connect", &format!("127.0.0.1:{port}")]).args([
        "--cpu",
        cpu,
        "--server-pid",
        &server_pid,
    ]);
    cmd
}

/// Waits for the client's closing line and exit (within `client_timeout`),
/// then the server's (it ends once the client is gone); returns both lines.
pub fn finish_pair(client: &mut Spawned, server: &mut Spawned, client_timeout: Duration) -> Result<(String, String)> {
    let client_line = client.line_starting("client ", client_timeout)?;
    client.finish(Duration::from_secs(10))?;
    let server_line = server.line_starting("server ", Duration::from_secs(20))?;
    server.finish(Duration::from_secs(10))?;
    Ok((client_line, server_line))
}

/// One run: a server process, then a client process for the fixed window.
pub fn run_workload(loadgen: &Path, workload: Workload, spec: &LoadSpec) -> Result<Run> {
    let cpu = spec.cpu.to_string();
    let (mut server, port) = start_server(loadgen, workload, &cpu)?;
    let mut client = Spawned::start(client_command(loadgen, workload, port, &cpu, &mut server).args([
        "--duration-ms",
        &spec.window.as_millis().to_string(),
        "--warmup-ms",
        &spec.warmup.as_millis().to_string(),
        "--connections",
        &spec.parallel_connections.to_string(),
    ]))?;
    let (client_line, server_line) =
        finish_pair(&mut client, &mut server, spec.window + spec.warmup + Duration::from_secs(60))?;
    run_from_lines(workload, &client_line, &server_line)
}

/// The `Run` a client's and a server's closing lines describe.
fn run_from_lines(workload: Workload, client_line: &str, server_line: &str) -> Result<Run> {
    let client_fields = fields(client_line);
    let server_fields = fields(server_line);
    let ops: f64 = field(&client_fields, "ops")?;
    let secs: f64 = field(&client_fields, "secs")?;
    let cpu_secs: f64 = field(&client_fields, "cpu_secs")?;
    let total_ops: f64 = field(&client_fields, "total_ops")?;
    let syscalls: f64 = field::<f64>(&client_fields, "syscalls")? + field::<f64>(&server_fields, "syscalls")?;
    if ops <= 0.0 || secs <= 0.0 || total_ops <= 0.0 {
        bail!("the {} client did no work: {client_line}", workload.name());
    }
    Ok(Run {
        ops,
        total_ops,
        wall_secs: secs,
        cpu_secs: (cpu_secs > 0.0).then_some(cpu_secs),
        syscalls_per_op: syscalls / total_ops,
        payload_per_op: payload_per_op(workload) as f64,
        foreign_tracer: false,
        low_ns_per_op: client_fields.get("slices").and_then(|list| {
            let slices: Vec<f64> = list.split(',').filter_map(|v| v.parse().ok()).collect();
            stats::low_quantile(&slices, stats::SLICE_QUANTILE)
        }),
    })
}
