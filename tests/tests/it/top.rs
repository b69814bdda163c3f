//! `tracer top` driven for real in tmux (issue 17): the UI in a detached
//! 80x24 session, real loopback traffic from processes with known names and
//! byte counts, and the pane read back with `tmux capture-pane`. It must
//! show the process, its remote and its exact totals since start, a banner
//! for the findings (failed connects), a hostile name inert, sort, filter
//! and help keys at work, and `q` must exit 0 with the terminal put back
//! (main screen, cursor shown). Without a terminal: exit 2, one line
//! pointing to `trace`. Every wait is a bounded poll of the pane.

use std::{
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use tracer_tests::{free_port, serial, tracer_bin, ATTACH_TIMEOUT};

use crate::{server, traffic, LINE_TIMEOUT};

const N: u64 = 123_457;
const M: u64 = 654_321;
/// How long the UI may take to show what the kernel already counted.
const SHOW_TIMEOUT: Duration = Duration::from_secs(15);

/// A detached tmux session on a server of its own, killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn tmux(&self, args: &[&str]) -> String {
        let output = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run tmux {args:?}: {e}"));
        assert!(output.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `command` (a shell line) in a new `width`x`height` session.
    fn start(command: &str, width: u16, height: u16) -> Tmux {
        ensure_tmux();
        let tmux = Tmux { socket: format!("tracer-top-{}", std::process::id()) };
        tmux.tmux(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            command,
        ]);
        tmux
    }

    fn pane(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "top"])
    }

    fn keys(&self, keys: &[&str]) {
        self.tmux(&[&["send-keys", "-t", "top"], keys].concat());
    }

    /// Types `text` literally.
    fn type_text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "top", "-l", text]);
    }

    /// Escape on its own (sent with the next key, the terminal would read
    /// Alt+key), until the filter is gone.
    fn clear_filter(&self) {
        self.keys(&["Escape"]);
        self.wait_for("the filter cleared", SHOW_TIMEOUT, |pane| !pane.contains("filter:"));
    }

    /// Polls the pane until `shows` holds; panics with the pane after `timeout`.
    fn wait_for(&self, what: &str, timeout: Duration, shows: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let pane = self.pane();
            if shows(&pane) {
                return pane;
            }
            assert!(Instant::now() < deadline, "the pane never showed {what}:\n{pane}");
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).stderr(Stdio::null()).status();
    }
}

/// tmux (Debian package `tmux`, in xtask's test packages) installed if missing.
fn ensure_tmux() {
    if Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success()) {
        return;
    }
    let apt = |args: &[&str]| {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .unwrap_or_else(|e| panic!("tmux is missing and apt-get cannot run: {e}"));
        assert!(status.success(), "apt-get {args:?} failed");
    };
    apt(&["update", "-q"]);
    apt(&["install", "-y", "-q", "--no-install-recommends", "tmux"]);
}

#[test]
fn top_without_a_terminal_points_to_trace() {
    let output = Command::new(tracer_bin())
        .args(["top", "--interval", "1s"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run tracer top: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line, said:\n{stderr}");
    assert!(lines[0].contains("terminal") && lines[0].contains("tracer trace"), "{stderr}");
    assert!(output.stdout.is_empty(), "printed on stdout: {}", String::from_utf8_lossy(&output.stdout));
}

#[test]
fn top_shows_processes_flows_totals_and_findings_in_tmux() {
    let _serial = serial();
    let (mut server, port, _) = server(&["--read", &N.to_string(), "--answer", &M.to_string(), "--conns", "2"]);
    let refused = free_port("127.0.0.1".parse().expect("ip"));
    let command = format!(
        "{} top --interval 1s --port {port} --port {refused}; echo TOP-EXIT=$?; sleep 120",
        tracer_bin().display()
    );
    let tmux = Tmux::start(&command, 80, 24);
    tmux.wait_for("the processes view", ATTACH_TIMEOUT, |pane| pane.contains("1 processes") && pane.contains("sort:"));

    let sized = ["--send", &N.to_string(), "--expect", &M.to_string()];
    let target = format!("127.0.0.1:{port}");
    let mut client =
        traffic("client", &[&["client", "--connect", &target, "--name", "topclient"], &sized[..]].concat());
    let pid: u32 = client.expect("connected", LINE_TIMEOUT).num("pid");
    client.expect("closed", LINE_TIMEOUT);
    // Escape sequences and a right-to-left override in a process name.
    let hostile = "ev\x1b[2J\u{202e}il";
    let mut evil = traffic("client", &[&["client", "--connect", &target, "--name", hostile], &sized[..]].concat());
    evil.expect("closed", LINE_TIMEOUT);
    server.expect("served", LINE_TIMEOUT);
    let failing = format!("127.0.0.1:{refused}");
    let mut fails = traffic("connect-fail", &["connect-fail", "--connect", &failing, "--count", "5"]);
    fails.expect("done", LINE_TIMEOUT);

    // The named process, filtered, with its exact totals since start.
    tmux.keys(&["/"]);
    tmux.type_text("topclient");
    tmux.keys(&["Enter"]);
    let pane = tmux.wait_for("topclient's exact totals", SHOW_TIMEOUT, |pane| {
        pane.contains(&format!("in {M} B")) && pane.contains(&format!("out {N} B"))
    });
    assert!(pane.contains(&format!("pid {pid} topclient")), "{pane}");
    assert!(pane.contains("filter: topclient"), "{pane}");
    assert!(!pane.contains("ev\\u{1b}"), "the filter must hide the other client:\n{pane}");

    // Its flow: the remote and the service port.
    tmux.keys(&["2"]);
    let pane = tmux.wait_for("the flows view", SHOW_TIMEOUT, |pane| pane.contains(&format!("127.0.0.1:{port}")));
    assert!(pane.contains(&format!("pid {pid} topclient client 127.0.0.1:{port}")), "{pane}");
    assert!(pane.contains(&format!("in {M} B")), "{pane}");

    // The failed connects raise a finding, announced by the banner.
    let pane = tmux.wait_for("the findings banner", SHOW_TIMEOUT, |pane| pane.contains("connect_failures"));
    let banner = pane.lines().nth(1).unwrap_or_default();
    assert!(banner.contains("active: connect_failures"), "{pane}");

    // The hostile name is drawn inert (escaped), and did not clear the screen.
    tmux.clear_filter();
    tmux.keys(&["1", "/"]);
    tmux.type_text("2j");
    tmux.keys(&["Enter"]);
    let pane =
        tmux.wait_for("the hostile name, escaped", SHOW_TIMEOUT, |pane| pane.contains("ev\\u{1b}[2J\\u{202e}il"));
    assert!(!pane.contains('\u{202e}') && !pane.contains('\x1b'), "{pane}");
    assert!(pane.contains("1 processes"), "the screen was cleared:\n{pane}");

    // Sorting: s moves to the next column.
    tmux.clear_filter();
    tmux.keys(&["s"]);
    tmux.wait_for("the sort on OUT/s", SHOW_TIMEOUT, |pane| pane.contains("sort: OUT/s"));
    tmux.keys(&["r"]);
    tmux.wait_for("the reversed sort", SHOW_TIMEOUT, |pane| pane.contains("sort: OUT/s (A-Z / smallest first)"));

    // Help, closed by any key.
    tmux.keys(&["?"]);
    tmux.wait_for("the help", SHOW_TIMEOUT, |pane| pane.contains("tracer top: keys") && pane.contains("pause"));
    tmux.keys(&["x"]);
    tmux.wait_for("the help closed", SHOW_TIMEOUT, |pane| !pane.contains("tracer top: keys"));

    // q exits 0 and gives the terminal back.
    tmux.keys(&["q"]);
    tmux.wait_for("tracer top exiting 0", ATTACH_TIMEOUT, |pane| pane.contains("TOP-EXIT=0"));
    let state = tmux.tmux(&["display-message", "-p", "-t", "top", "#{alternate_on} #{cursor_flag}"]);
    assert_eq!(state.trim(), "0 1", "alternate screen still on, or cursor hidden");
}
