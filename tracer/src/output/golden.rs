//! Golden files of the user-facing outputs, under `src/output/golden/`:
//! the JSON report (`report.json`), the table (`report.txt`) and the
//! dashboard's rates (`dashboard.json`) rendered from one fixed model, and the Prometheus exposition (`metrics.prom`,
//! from `metrics`' own test), which must also pass `promtool check metrics`.
//!
//! A test compares what the code renders with the file; after an intended
//! change, rewrite the files with `UPDATE_GOLDEN=1 cargo test -p tracer`
//! and review the diff.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use tracer_common::tcp_state;

use super::{report::Report, table, Snapshot, SnapshotContext};
use crate::{
    analysis::Thresholds,
    model::{
        container::{Container, Identity, Pod, Qos, Runtime},
        filter::Filter,
        Counters, HealthSupport, KernelRole, KernelStats, Model, ProcSocket, SocketHealth, SocketObs, Tuple,
    },
};

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/output/golden").join(name)
}

/// Compares `actual` with the golden file `name`, or rewrites the file
/// when `UPDATE_GOLDEN=1`.
pub(crate) fn check(name: &str, actual: &str) {
    let path = path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the golden file {} ({e}); create it with UPDATE_GOLDEN=1 cargo test -p tracer",
            path.display()
        )
    });
    assert!(
        actual == expected,
        "{name} differs from its golden file {}; if the change is intended, run \
         UPDATE_GOLDEN=1 cargo test -p tracer and review the diff.\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

/// Runs `promtool check metrics` on `exposition`: it must pass without a
/// word. Fails (never skips) when promtool is missing.
pub(crate) fn promtool_check(exposition: &str) {
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = spawned.unwrap_or_else(|e| {
        panic!(
            "promtool is needed to check the metrics exposition and cannot be run ({e}): install it with \
             `apt-get install -y prometheus` (Debian), or run `cargo xtask test`, which installs it"
        )
    });
    child.stdin.take().expect("promtool's stdin").write_all(exposition.as_bytes()).expect("feeding promtool");
    let output = child.wait_with_output().expect("promtool's output");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}\n{said}\nexposition:\n{exposition}",
        output.status
    );
}

const SEC: u64 = 1_000_000_000;

fn obs(id: u64, pid: u32, role: KernelRole, local: &str, remote: &str, counters: Counters) -> SocketObs {
    SocketObs {
        id,
        pid,
        thread_comm: [0; 16],
        tuple: Tuple {
            netns: 4026531840,
            local: local.parse::<SocketAddr>().expect("local address"),
            remote: remote.parse::<SocketAddr>().expect("remote address"),
        },
        role,
        state: tcp_state::ESTABLISHED,
        state_since_ns: Some(0),
        first_seen_ns: 1,
        counters,
        was_established: true,
        health: SocketHealth::default(),
    }
}

/// Where the fixture's processes run: the client in a user session, the
/// server in a Kubernetes pod (containerd, named by the runtime), the
/// churner in a Docker container no runtime named.
fn identities() -> [(u32, Identity); 3] {
    let id = |digit: &str| digit.repeat(64);
    [
        (
            100,
            Identity {
                cgroup: "/user.slice/user-1000.slice/session-3.scope".into(),
                unit: Some("session-3.scope".into()),
                container: None,
            },
        ),
        (
            200,
            Identity {
                cgroup: format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a3c6b2e_5d4f_4e1a_9b8c_7d6e5f4a3b2c.slice/cri-containerd-{}.scope",
                    id("a")
                ),
                unit: None,
                container: Some(Container {
                    id: id("a"),
                    runtime: Runtime::Containerd,
                    name: Some("web".into()),
                    pod: Some(Pod {
                        uid: "0a3c6b2e-5d4f-4e1a-9b8c-7d6e5f4a3b2c".into(),
                        name: Some("web-7d9f".into()),
                        namespace: Some("shop".into()),
                        qos: Qos::Burstable,
                    }),
                }),
            },
        ),
        (
            300,
            Identity {
                cgroup: format!("/docker/{}", id("c")),
                unit: None,
                container: Some(Container { id: id("c"), runtime: Runtime::Docker, name: None, pod: None }),
            },
        ),
    ]
}

/// Ten one-second intervals of a small host: a client downloading over
/// IPv4, a server with an untrusted name answering over IPv6 and holding
/// a CLOSE_WAIT socket (45 s old at report time), a listener found at
/// start, and a client opening 20 short connections a second.
fn fixture() -> Snapshot {
    let mut model = Model::new(Filter::default(), 0, 100);
    model.set_health_support(HealthSupport {
        sampling: true,
        rtt: true,
        min_rtt: true,
        queues: true,
        chrono: true,
        delivery_rate: true,
        failure_reasons: true,
    });
    model.load_preexisting(vec![ProcSocket {
        tuple: Tuple {
            netns: 4026531840,
            local: "[::]:8080".parse().expect("address"),
            remote: "[::]:0".parse().expect("address"),
        },
        state: tcp_state::LISTEN,
        inode: 7,
        pid: Some(200),
    }]);
    for k in 1..=10u64 {
        let download = Counters {
            tx_bytes: 300 * k,
            rx_bytes: 150_000 * k,
            opened: 1,
            connects_timed: 1,
            busy_jiffies: 25 * k,
            rwnd_jiffies: 5 * k,
            ..Counters::default()
        };
        // The download's RTT rises 20 -> 29 ms; its backlog grows.
        let mut downloading = obs(1, 100, KernelRole::Client, "10.0.0.2:40000", "93.184.216.34:443", download);
        downloading.health = SocketHealth {
            connect_us: Some(21_000),
            samples: k as u32,
            srtt_us: 19_000,
            rcv_rtt_us: 19_000 + 1000 * k as u32,
            min_rtt_us: 18_500,
            recv_queue: 4096 * k as u32,
            send_queue: 0,
            rcvbuf: 131_072,
            delivery_rate: Some(150_000),
        };
        let answers = Counters { tx_bytes: 4096 * k, rx_bytes: 512 * k, retransmits: k / 5, ..Counters::default() };
        let mut close_wait = obs(3, 200, KernelRole::Server, "[::1]:8080", "[2001:db8::9]:52000", Counters::default());
        close_wait.state = tcp_state::CLOSE_WAIT;
        model.replace_live(vec![
            downloading,
            obs(2, 200, KernelRole::Server, "[::1]:8080", "[2001:db8::7]:51000", answers),
            close_wait,
        ]);
        for j in 0..20 {
            let id = 1000 + k * 100 + j;
            // Every fifth short connection is refused.
            let counters = if j % 5 == 4 {
                Counters { failed_connects: 1, failed_refused: 1, syn_retransmits: 0, ..Counters::default() }
            } else {
                Counters { tx_bytes: 100, rx_bytes: 20, opened: 1, ..Counters::default() }
            };
            let mut short = obs(id, 300, KernelRole::Client, "10.0.0.2:30000", "10.0.0.5:80", counters);
            short.was_established = counters.opened > 0;
            short.first_seen_ns = k * SEC - SEC / 2;
            short.state = tcp_state::CLOSE;
            model.socket_closed(short, k * SEC - 1);
        }
        model.set_comm(100, "curl".into());
        model.set_comm(200, "ngi\"nx\n<b>".into());
        model.set_comm(300, "churner".into());
        for (pid, identity) in identities() {
            model.set_identity(pid, Arc::new(identity));
        }
        model.set_host_time_wait(7);
        model.set_hz(Some(250));
        model.sample(k * SEC);
    }
    let thresholds = Thresholds {
        growth_ratio: 1.5,
        close_wait_age_secs: 30.0,
        retransmit_ratio: 0.02,
        churn_rate: 10.0,
        rtt_ratio: 2.0,
        window_secs: None,
    };
    Snapshot::build(
        &model,
        &thresholds,
        SnapshotContext {
            started_at: UNIX_EPOCH + Duration::from_secs(1_767_225_600),
            backend: "tracepoint",
            stats: KernelStats { events_total: 12_345, events_dropped: 2, map_full_drops: 1, ..KernelStats::default() },
            now_ns: 45 * SEC,
        },
    )
}

#[test]
fn report_json_is_golden() {
    let mut json = serde_json::to_string_pretty(&Report::new(&fixture())).expect("serializes");
    json.push('\n');
    check("report.json", &json);
}

/// The default output of `tracer trace` (`--format table`).
#[test]
fn table_is_golden() {
    check("report.txt", &table::render(&fixture(), 20));
}

/// The rates the dashboard draws.
#[test]
fn dashboard_rates_are_golden() {
    let mut json = serde_json::to_string_pretty(&super::dashboard::Rates::new(&fixture())).expect("serializes");
    json.push('\n');
    check("dashboard.json", &json);
}

#[test]
fn golden_exposition_passes_promtool() {
    let exposition = std::fs::read_to_string(path("metrics.prom")).expect("the golden exposition");
    promtool_check(&exposition);
}
