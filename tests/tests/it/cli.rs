//! The command line (DESIGN.md): bad flags are usage errors (exit code 2,
//! one clear line, no panic), `--version`, `doctor` in both formats (and
//! its choice of backend is the one a trace attaches), and a timed `trace`
//! that writes the documented JSON report to `--output`.

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

/// The backends in order of cost, as doctor lists them and `auto` tries them.
const BACKENDS: [&str; 3] = ["tracepoint", "fentry", "kprobe"];

/// What `tracer doctor --format json` says of each backend, in its order:
/// (backend, usable), and the backend `auto` would use.
fn doctor_backends() -> (Vec<(String, bool)>, Option<String>) {
    let output = tracer(&["doctor", "--format", "json"]);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "doctor failed; stderr:\n{}", text(&output.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("doctor --format json is not JSON ({e}):\n{stdout}"));
    let backends = json["backends"]
        .as_array()
        .unwrap_or_else(|| panic!("doctor JSON has no backends list:\n{stdout}"))
        .iter()
        .map(|b| {
            let name = b["backend"].as_str().unwrap_or_else(|| panic!("a backend without a name:\n{stdout}"));
            let usable = b["usable"].as_bool().unwrap_or_else(|| panic!("{name}: no usable flag:\n{stdout}"));
            (name.to_owned(), usable)
        })
        .collect();
    (backends, json["auto_backend"].as_str().map(str::to_owned))
}

/// Doctor (run as root, so it tries each backend for real) names as `auto`
/// the cheapest backend this kernel can run, the table says the same, and a
/// real trace attaches with exactly that backend.
#[test]
fn doctor_names_the_backend() {
    let _serial = serial();
    let (backends, auto) = doctor_backends();
    let names: Vec<&str> = backends.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, BACKENDS, "doctor lists the backends in order of cost");
    let cheapest_usable = backends.iter().find(|(_, usable)| *usable).map(|(name, _)| name.clone());
    let auto = auto.unwrap_or_else(|| panic!("doctor found no usable backend on this kernel: {backends:?}"));
    assert_eq!(Some(&auto), cheapest_usable.as_ref(), "auto must be the cheapest usable backend: {backends:?}");

    let output = tracer(&["doctor"]);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "doctor failed; stdout:\n{stdout}\nstderr:\n{}", text(&output.stderr));
    let said = format!("auto would use: {auto} (the cheapest that works)");
    assert!(stdout.lines().any(|l| l == said), "doctor's table should say {said:?}:\n{stdout}");
    for (name, usable) in &backends {
        let line = stdout.lines().find(|l| l.split_whitespace().next() == Some(name.as_str()));
        let line = line.unwrap_or_else(|| panic!("doctor's table has no line for {name}:\n{stdout}"));
        assert_eq!(line.contains("not usable"), !usable, "{name}: table and JSON disagree:\n{stdout}");
    }

    let output = tracer(&["trace", "--duration", "1s", "--format", "json"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "trace failed:\n{stderr}");
    let stdout = text(&output.stdout);
    let report = Report::parse(&stdout).unwrap_or_else(|e| panic!("not the documented report ({e}):\n{stdout}"));
    assert_eq!(report.backend, auto, "the trace attached another backend than doctor's choice");
    assert!(stderr.contains(&format!("attached ({auto} backend)")), "trace should say its backend:\n{stderr}");
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
