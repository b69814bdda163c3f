//! The command line (DESIGN.md): bad flags are usage errors (exit code 2,
//! one clear line, no panic), `--version`, `doctor` in both formats, and a
//! timed `trace` that writes the documented JSON report to `--output`.

use std::{
    process::{Command, Output, Stdio},
    time::Instant,
};

use tracer_tests::{serial, tracer_bin, Report};

fn tracer(args: &[&str]) -> Output {
    Command::new(tracer_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run tracer {args:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Each bad invocation with a piece of text its message must quote.
const BAD: &[(&[&str], &str)] = &[
    (&["trace", "--port", "70000"], "70000"),
    (&["trace", "--port", "0"], "'0'"),
    (&["trace", "--duration", "soon"], "soon"),
    (&["trace", "--duration", "0s"], "0s"),
    (&["trace", "--remote", "10.0.0.0/33"], "10.0.0.0/33"),
    (&["trace", "--remote", "not-a-network"], "not-a-network"),
    (&["trace", "--pid", "-3"], "-3"),
    (&["trace", "--format", "xml"], "xml"),
    (&["trace", "--bogus"], "--bogus"),
    (&["no-such-command"], "no-such-command"),
    (&["agent", "--listen", "nowhere"], "nowhere"),
];

#[test]
fn bad_flags_exit_2_with_one_clear_line() {
    for (args, quoted) in BAD {
        let output = tracer(args);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "tracer {args:?} must be a usage error; stderr:\n{stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "tracer {args:?} must say what is wrong in one line, said:\n{stderr}");
        assert!(lines[0].contains(quoted), "tracer {args:?}: the message should name {quoted:?}: {stderr}");
        let lower = stderr.to_lowercase();
        assert!(!lower.contains("panicked") && !lower.contains("backtrace"), "tracer {args:?} panicked:\n{stderr}");
        assert!(output.stdout.is_empty(), "tracer {args:?} printed on stdout: {}", text(&output.stdout));
    }
}

#[test]
fn version_prints_the_version() {
    let output = tracer(&["--version"]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert_eq!(stdout.trim(), format!("tracer {}", env!("CARGO_PKG_VERSION")), "--version printed {stdout:?}");
}

#[test]
fn doctor_names_the_backend() {
    let output = tracer(&["doctor"]);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "doctor failed; stdout:\n{stdout}\nstderr:\n{}", text(&output.stderr));
    assert!(stdout.contains("tracepoint"), "doctor should name the tracepoint backend:\n{stdout}");
}

#[test]
fn doctor_json_parses() {
    let output = tracer(&["doctor", "--format", "json"]);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "doctor failed; stderr:\n{}", text(&output.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("doctor --format json is not JSON ({e}):\n{stdout}"));
    assert!(json.is_object(), "doctor JSON is not an object: {json}");
    assert!(stdout.contains("tracepoint"), "doctor JSON should name the tracepoint backend:\n{stdout}");
}

#[test]
fn timed_trace_writes_the_documented_report_to_output() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("tracer-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("report.json");
    let _ = std::fs::remove_file(&path);
    let path_text = path.to_str().expect("UTF-8 temp path");
    let began = Instant::now();
    let output = tracer(&["trace", "--duration", "2s", "--format", "json", "--output", path_text]);
    let ran_secs = began.elapsed().as_secs_f64();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "trace failed:\n{stderr}");
    assert!(stderr.contains("tracer: attached"), "no attach line on stderr:\n{stderr}");
    assert!(output.stdout.is_empty(), "with --output, stdout stays empty: {}", text(&output.stdout));
    let written = std::fs::read_to_string(&path).expect("the report file");
    let _ = std::fs::remove_dir_all(&dir);
    let report = Report::parse(&written).unwrap_or_else(|e| panic!("not the documented report ({e}):\n{written}"));

    assert_eq!(report.schema, "tracer.report/v1");
    assert_eq!(report.backend, "tracepoint");
    // At least the 2 s asked for, at most as long as the process ran
    // (attaching on a busy host may take longer than the trace itself).
    assert!(
        report.duration_secs >= 1.99 && report.duration_secs <= ran_secs,
        "a 2 s trace lasted {} s, in a process that ran {ran_secs:.2} s",
        report.duration_secs
    );
    let started = &report.started_at;
    assert!(
        started.len() == 20 && started.ends_with('Z') && started.as_bytes()[10] == b'T',
        "started_at is not RFC 3339 UTC: {started}"
    );
    let keys: Vec<&str> = report.json.as_object().expect("object").keys().map(String::as_str).collect();
    for key in [
        "schema",
        "started_at",
        "duration_secs",
        "backend",
        "flows",
        "processes",
        "close_wait",
        "timeline",
        "findings",
        "host",
        "tracer",
    ] {
        assert!(keys.contains(&key), "report lacks {key:?}: has {keys:?}");
    }
    assert!(report.timeline.len() >= 2, "2 s at 1 s intervals: {} samples", report.timeline.len());
    for process in &report.processes {
        assert!(process.sockets.values().all(|&n| n > 0), "zero state counts must be left out: {process:#?}");
        assert!(!process.sockets.contains_key("TIME_WAIT"), "TIME_WAIT belongs to no process: {process:#?}");
    }
}
