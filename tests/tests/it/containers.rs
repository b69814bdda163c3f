//! Containers (issue 16): every process and flow carries its cgroup, unit
//! and container, read from `/proc/PID/cgroup`.
//!
//! - `podman_container_is_named_with_exact_bytes`: a real Podman container
//!   (runc, cgroupfs manager, an image imported from a tar of Debian's
//!   busybox-static) sends exact bytes over loopback with `--network host`;
//!   the report names it by runtime, id and name (asked through Podman's
//!   API socket, which the test starts and stops by pid).
//! - `fake_layouts_end_to_end`: cgroups made under the v2 hierarchy in the
//!   layouts of Kubernetes (systemd driver with containerd, cgroupfs driver
//!   with a bare id), a systemd service and an unknown layout; a process
//!   moved into each makes exact traffic. Checks ids, pod UIDs, QoS, units,
//!   paths, `--container ID-PREFIX`, and that a runtime socket that accepts
//!   and never answers leaves names null without stopping the ticks.
//!
//! The Debian packages podman, runc and busybox-static are installed by
//! the first test that needs them (`cargo xtask test` may list them).

use std::{
    fs,
    net::TcpListener,
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc,
    },
    thread,
    time::Duration,
};

use serde_json::Value;
use tracer_tests::{receive_exactly, run, send_exactly, serial, wait_until, Proc, Report, Tracer};

use crate::{server, LINE_TIMEOUT, TRAFFIC};

const N: u64 = 300_007;
const M: u64 = 40_009;

const V2: &str = "/sys/fs/cgroup/unified";
const IMAGE: &str = "localhost/tracer-test-busybox:latest";

/// The report's flow of `pid` to `port` (client side), as raw JSON.
fn flow(report: &Report, pid: u32, port: u16) -> &Value {
    report.json["flows"]
        .as_array()
        .and_then(|flows| flows.iter().find(|f| f["pid"] == pid && f["remote_port"] == port && f["role"] == "client"))
        .unwrap_or_else(|| panic!("no client flow of pid {pid} to port {port}: {:#}", report.json["flows"]))
}

fn process(report: &Report, pid: u32) -> &Value {
    report.json["processes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["pid"] == pid))
        .unwrap_or_else(|| panic!("no process {pid}: {:#}", report.json["processes"]))
}

/// Installs Debian packages that are missing (cached by apt after the
/// first run).
fn ensure_packages(packages: &[&str]) {
    let installed = |package: &str| {
        Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", package])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
    };
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return;
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .expect("apt-get runs");
    assert!(status.success(), "apt-get install {missing:?} failed ({status})");
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!("tracer-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("scratch dir");
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Imports a busybox-static root filesystem as [`IMAGE`], once (later
/// runs reuse it rather than leave dangling images behind).
fn import_image(scratch: &Path) {
    if Command::new("podman").args(["image", "exists", IMAGE]).status().is_ok_and(|s| s.success()) {
        return;
    }
    let rootfs = scratch.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).expect("rootfs");
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static");
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).expect("symlink");
    let tar = scratch.join("rootfs.tar");
    run("tar", &["-C", rootfs.to_str().expect("utf-8"), "-cf", tar.to_str().expect("utf-8"), "."]);
    run("podman", &["import", tar.to_str().expect("utf-8"), IMAGE]);
}

/// A child killed by its pid when dropped.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes the container (by name) when dropped.
struct PodmanContainer(String);

impl Drop for PodmanContainer {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "-f", "-t", "0", &self.0]).stdout(Stdio::null()).status();
    }
}

#[test]
fn podman_container_is_named_with_exact_bytes() {
    let _serial = serial();
    ensure_packages(&["podman", "runc", "busybox-static"]);
    let scratch = Scratch::new("podman");
    import_image(&scratch.0);

    // Podman's API, on a socket of our own.
    let socket = scratch.0.join("podman.sock");
    let service = Service(
        Command::new("podman")
            .args(["system", "service", "--time=0", &format!("unix://{}", socket.display())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("podman system service"),
    );
    wait_until("podman's API socket", LINE_TIMEOUT, || socket.exists());

    // The host side: read N, answer M, then hold the connection open until
    // the report is taken (so the container's process stays alive).
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (release, released) = mpsc::channel::<()>();
    let host = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        receive_exactly(&mut stream, N);
        send_exactly(&mut stream, M);
        let _ = released.recv();
    });

    let tracer = Tracer::start_with_env(
        "500ms",
        &["--port", &port.to_string()],
        &[("CONTAINER_HOST", &format!("unix://{}", socket.display())), ("DOCKER_HOST", "unix:///nonexistent.sock")],
    );
    let name = format!("tracer-test-{}", std::process::id());
    let _cleanup = PodmanContainer(name.clone());
    // nc sends N bytes, then waits (its stdin stays open); `got` once it
    // has read all M bytes.
    let script = format!(
        "(head -c {N} /dev/zero; sleep 120) | nc 127.0.0.1 {port} | (head -c {M} >/dev/null; echo got; sleep 120)"
    );
    let mut command = Command::new("podman");
    command.args([
        "--runtime",
        "runc",
        "--cgroup-manager",
        "cgroupfs",
        "run",
        "--rm",
        "--name",
        &name,
        "--network",
        "host",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        IMAGE,
        "sh",
        "-c",
        &script,
    ]);
    let mut container = Proc::spawn("podman run", command);
    container.expect("got", LINE_TIMEOUT);
    let id = run("podman", &["inspect", "--format", "{{.Id}}", &name]).trim().to_owned();
    // Ticks that read the process's cgroup and ask Podman for the name.
    tracer.wait_samples(3);
    let report = tracer.stop();
    let _ = release.send(());
    host.join().expect("host side");
    drop(container);
    drop(service);

    let flows: Vec<&Value> = report.json["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .filter(|f| f["remote_port"] == port && f["role"] == "client")
        .collect();
    assert_eq!(flows.len(), 1, "one client flow to port {port}: {flows:#?}");
    let nc = flows[0];
    assert_eq!((nc["comm"].as_str(), nc["tx_bytes"].as_u64(), nc["rx_bytes"].as_u64()), (Some("nc"), Some(N), Some(M)));
    assert_eq!(id.len(), 64, "podman's id {id:?}");
    let expected = serde_json::json!({ "id": id, "runtime": "podman", "name": name, "pod": null });
    assert_eq!(nc["container"], expected, "{nc:#}");
    let pid = nc["pid"].as_u64().expect("pid") as u32;
    let owner = process(&report, pid);
    assert_eq!(owner["container"], expected, "{owner:#}");
    assert_eq!(owner["cgroup"], format!("/libpod_parent/libpod-{id}"), "{owner:#}");
    assert_eq!(owner["unit"], Value::Null);
}

/// A cgroup made under the v2 hierarchy, and the directories made for it
/// (removed, deepest first, when dropped).
struct FakeCgroup {
    path: String,
    made: Vec<PathBuf>,
}

impl FakeCgroup {
    fn new(path: &str) -> FakeCgroup {
        let mut made = Vec::new();
        let mut dir = PathBuf::from(V2);
        for part in path.trim_start_matches('/').split('/') {
            dir.push(part);
            if !dir.exists() {
                fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                made.push(dir.clone());
            }
        }
        FakeCgroup { path: path.to_owned(), made }
    }

    /// `traffic client` run from inside this cgroup (its shell moves
    /// itself there, then becomes the client).
    fn client(&self, port: u16) -> (Proc, u32) {
        let procs = format!("{V2}{}/cgroup.procs", self.path);
        let script =
            format!("echo $$ > {procs} && exec {TRAFFIC} client --connect 127.0.0.1:{port} --send {N} --expect {M}");
        let mut command = Command::new("sh");
        command.args(["-c", &script]);
        let mut client = Proc::spawn(&self.path, command);
        let pid = client.expect("connected", LINE_TIMEOUT).num("pid");
        client.expect("closed", LINE_TIMEOUT);
        (client, pid)
    }
}

impl Drop for FakeCgroup {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            // The processes are gone once their Proc is dropped; the kernel
            // may take a moment to empty the cgroup.
            for _ in 0..100 {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A runtime socket that accepts connections and never answers.
fn hanging_runtime(socket: &Path) -> Arc<AtomicUsize> {
    let listener = UnixListener::bind(socket).expect("bind the hanging socket");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    accepted
}

#[test]
fn fake_layouts_end_to_end() {
    let _serial = serial();
    let me = std::process::id();
    let uid = format!("0a3c6b2e-5d4f-4e1a-9b8c-{me:012x}");
    let k8s_id = format!("c0ffee{me:058x}");
    let bare_id = format!("beef{me:060x}");
    let k8s = FakeCgroup::new(&format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{k8s_id}.scope",
        uid.replace('-', "_")
    ));
    let cgroupfs = FakeCgroup::new(&format!("/kubepods/besteffort/pod{uid}/{bare_id}"));
    let service = FakeCgroup::new(&format!("/system.slice/tracer-test-{me}.service"));
    let odd = FakeCgroup::new(&format!("/tracer-test-{me}/odd"));

    let scratch = Scratch::new("hang");
    let hang = scratch.0.join("docker.sock");
    let accepted = hanging_runtime(&hang);
    let env =
        [("DOCKER_HOST", format!("unix://{}", hang.display())), ("CONTAINER_HOST", "unix:///nonexistent.sock".into())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let (mut server, port, _) = server(&["--read", &N.to_string(), "--answer", &M.to_string(), "--conns", "4"]);
    let all = Tracer::start_with_env("500ms", &["--port", &port.to_string()], &env);
    let only_k8s = Tracer::start_with_env("500ms", &["--container", &k8s_id[..12]], &env);
    let clients: Vec<(Proc, u32)> = [&k8s, &cgroupfs, &service, &odd].iter().map(|c| c.client(port)).collect();
    server.expect("served", LINE_TIMEOUT);
    all.wait_samples(2);
    // The runtime was asked (and never answered).
    wait_until("a lookup at the hanging runtime socket", LINE_TIMEOUT, || accepted.load(Ordering::SeqCst) > 0);
    all.wait_samples(2);
    let report = all.stop();
    let filtered = only_k8s.stop();
    let pids: Vec<u32> = clients.iter().map(|(_, pid)| *pid).collect();
    drop(clients);
    drop(server);

    for (pid, cgroup) in pids.iter().zip([&k8s, &cgroupfs, &service, &odd]) {
        let flow = flow(&report, *pid, port);
        assert_eq!((flow["tx_bytes"].as_u64(), flow["rx_bytes"].as_u64()), (Some(N), Some(M)), "{flow:#}");
        let owner = process(&report, *pid);
        assert_eq!(owner["cgroup"], cgroup.path, "{owner:#}");
        assert_eq!(owner["container"], flow["container"], "{owner:#}");
    }
    let container = |pid: u32| process(&report, pid)["container"].clone();
    assert_eq!(
        container(pids[0]),
        serde_json::json!({ "id": k8s_id, "runtime": "containerd", "name": null,
                            "pod": { "uid": uid, "name": null, "namespace": null, "qos": "burstable" } })
    );
    assert_eq!(
        container(pids[1]),
        serde_json::json!({ "id": bare_id, "runtime": "unknown", "name": null,
                            "pod": { "uid": uid, "name": null, "namespace": null, "qos": "besteffort" } })
    );
    assert_eq!(container(pids[2]), Value::Null);
    assert_eq!(process(&report, pids[2])["unit"], format!("tracer-test-{me}.service"));
    assert_eq!(container(pids[3]), Value::Null);
    assert_eq!(process(&report, pids[3])["unit"], Value::Null);
    // The ticks went on while the runtime hung.
    assert!(report.timeline.len() >= 4, "{} samples", report.timeline.len());

    // `--container ID-PREFIX`: only the containerd container's flow.
    let ours: Vec<&Value> =
        filtered.json["flows"].as_array().expect("flows").iter().filter(|f| f["remote_port"] == port).collect();
    assert_eq!(ours.len(), 1, "{ours:#?}");
    assert_eq!((ours[0]["pid"].as_u64(), ours[0]["tx_bytes"].as_u64()), (Some(u64::from(pids[0])), Some(N)));
    assert!(
        filtered.json["processes"].as_array().expect("processes").iter().all(|p| p["container"]["id"] == k8s_id),
        "{:#}",
        filtered.json["processes"]
    );
}
