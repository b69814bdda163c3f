//! `tracer trace`: attach, show live progress on stderr, then print a report
//! (table or JSON) to stdout or `--output`. Ctrl-C ends early and still
//! reports.

use std::io::{IsTerminal, Write};

use anyhow::Context as _;
use tokio::time::{interval_at, sleep_until, Instant, MissedTickBehavior};

use crate::{
    analysis::Thresholds,
    cli::{Format, TraceArgs},
    session::Session,
    table,
};

pub async fn run(args: TraceArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.output {
        // Fail before tracing, not after.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
    }
    let thresholds = Thresholds::from(&args.analysis);
    let mut session = Session::start(args.backend, args.filters.filter(), thresholds, args.interval, args.duration)?;
    eprintln!(
        "tracer: attached ({} backend); tracing for {}; Ctrl-C stops early",
        session.backend().as_str(),
        humantime::format_duration(args.duration)
    );

    let start = Instant::now();
    let deadline = start + args.duration;
    let mut ticks = interval_at(start + args.interval, args.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let live = std::io::stderr().is_terminal();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                session.tick();
                progress(&session, start.elapsed().as_secs_f64(), args.duration.as_secs_f64(), live);
            }
            _ = session.pump_events() => {}
            _ = &mut ctrl_c => break,
            _ = sleep_until(deadline) => break,
        }
    }
    session.finish();
    if live {
        eprintln!();
    }
    let report = session.report();
    let text = match args.format {
        Format::Json => {
            let mut text = serde_json::to_string_pretty(&report).context("serializing the report")?;
            text.push('\n');
            text
        }
        Format::Table => table::render(&report, 20),
    };
    match &args.output {
        Some(path) => std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(text.as_bytes())?;
            stdout.flush()?;
        }
    }
    Ok(())
}

/// One status line: elapsed / total, events, current top talker.
fn progress(session: &Session, elapsed: f64, total: f64, live: bool) {
    let model = session.model();
    let top = model.samples().back().and_then(|sample| {
        sample
            .flows
            .iter()
            .max_by_key(|(_, c)| c.tx_bytes + c.rx_bytes)
            .filter(|(_, c)| c.tx_bytes + c.rx_bytes > 0)
            .map(|(key, c)| (key.pid, c.tx_bytes + c.rx_bytes))
    });
    let top = match top {
        Some((pid, moved)) => format!("top: pid {pid} ({}) {}", table::printable(model.comm(pid)), table::bytes(moved)),
        None => "top: -".into(),
    };
    let line = format!(
        "tracer: {:>5.1}s / {:.0}s  events {}  sockets {}  {top}",
        elapsed.min(total),
        total,
        session.stats().events_total,
        model.live_sockets()
    );
    if live {
        eprint!("\r\x1b[2K{line}");
    } else {
        eprintln!("{line}");
    }
}
