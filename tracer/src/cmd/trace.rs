//! `tracer trace`: attach, show live progress on stderr, then print a report
//! (table or JSON) to stdout or `--output`. Ctrl-C ends early and still
//! reports.

use std::io::{IsTerminal, Write};

use anyhow::Context as _;
use tokio::time::sleep_until;

use super::driver::{self, Driver, DriverConfig};
use crate::{
    cli::{Format, TraceArgs},
    load::Attached,
    output::{report::Report, table},
    units,
};

/// Attaches (and drops the capabilities no longer needed) on this thread,
/// then traces on the async runtime.
pub(crate) fn run(args: TraceArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.output {
        // Fail before tracing, not after.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
    }
    let attached = driver::attach(args.backend.map(Into::into), args.max_sockets)?;
    super::runtime()?.block_on(trace(args, attached))
}

async fn trace(args: TraceArgs, attached: Attached) -> anyhow::Result<()> {
    let mut driver = Driver::start(
        attached,
        DriverConfig {
            filter: args.filters.filter(),
            thresholds: args.analysis.thresholds(),
            interval: args.interval,
            window: args.duration,
        },
    )?;
    eprintln!(
        "tracer: attached ({} backend); tracing for {}; Ctrl-C stops early",
        driver.backend().as_str(),
        humantime::format_duration(args.duration)
    );

    let start = driver.started();
    let deadline = start + args.duration;
    let live = std::io::stderr().is_terminal();
    let stop = async {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sleep_until(deadline) => {}
        }
    };
    driver
        .run(stop, |driver, _| progress(driver, start.elapsed().as_secs_f64(), args.duration.as_secs_f64(), live))
        .await;
    driver.finish();
    if live {
        eprintln!();
    }
    let snapshot = driver.snapshot();
    let text = match args.format {
        Format::Json => {
            let mut text = serde_json::to_string_pretty(&Report::new(&snapshot)).context("serializing the report")?;
            text.push('\n');
            text
        }
        Format::Table => table::render(&snapshot, 20),
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
fn progress(driver: &Driver, elapsed: f64, total: f64, live: bool) {
    let session = driver.session();
    let model = session.model();
    let top = model.samples().back().and_then(|sample| {
        sample
            .flows
            .iter()
            .max_by_key(|(_, c)| c.bytes())
            .filter(|(_, c)| c.bytes() > 0)
            .map(|(key, c)| (key.pid, c.bytes()))
    });
    let top = match top {
        Some((pid, moved)) => format!("top: pid {pid} ({}) {}", table::printable(model.comm(pid)), units::bytes(moved)),
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
