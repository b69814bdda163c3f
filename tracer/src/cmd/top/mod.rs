//! `tracer top`: a full-screen live view (ratatui + crossterm) on the same
//! tick driver and session as `trace` and `agent`. After each tick the
//! driver hands the UI the snapshot and the model's last interval
//! ([`data::TickInput`]); the UI folds it into totals since start, rates
//! and histories ([`data`]), arranges rows per view ([`rows`], [`app`]) and
//! draws them ([`render`]). Runs until `q`, SIGTERM, SIGINT or SIGHUP, and
//! puts the terminal back on every way out, a panic included.

mod app;
mod data;
mod render;
mod rows;

use std::{
    io::{IsTerminal, Stdout},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context as _;
use ratatui::{
    backend::CrosstermBackend,
    crossterm::{
        cursor,
        event::{self, Event},
        execute,
        terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
    },
    Terminal,
};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use self::{
    app::{App, Control},
    data::TickInput,
    render::{draw, Theme},
};
use super::driver::{self, Driver, DriverConfig};
use crate::{cli::TopArgs, load::Attached};

/// `tracer top` draws on a terminal; `Err` holds the line saying what to
/// use instead (a usage error: exit code 2).
pub(crate) fn check_terminal() -> Result<(), &'static str> {
    if std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
        Ok(())
    } else {
        Err("top needs a terminal (stdin and stdout are not both a tty); use `tracer trace` for a report to a pipe or file")
    }
}

/// Puts the terminal back: main screen, cooked mode, cursor shown.
/// Idempotent, so the panic hook, a signal and `Drop` may all call it.
fn restore_terminal() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(std::io::stdout(), LeaveAlternateScreen, cursor::Show);
}

/// The terminal in raw mode on the alternate screen, put back when dropped.
struct TerminalGuard {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl TerminalGuard {
    fn enter() -> anyhow::Result<Self> {
        // A panic anywhere (the UI, the driver) restores the terminal
        // before the message is printed, so the message is readable.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        terminal::enable_raw_mode().context("cannot put the terminal in raw mode")?;
        let guard = || -> anyhow::Result<Self> {
            execute!(std::io::stdout(), EnterAlternateScreen, cursor::Hide)
                .context("cannot switch to the alternate screen")?;
            let terminal =
                Terminal::new(CrosstermBackend::new(std::io::stdout())).context("cannot draw on the terminal")?;
            Ok(TerminalGuard { terminal })
        };
        guard().inspect_err(|_| restore_terminal())
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Reads terminal events on a thread of its own (crossterm's reads
/// block) until `stop` is set or nobody listens.
fn spawn_input(stop: Arc<AtomicBool>) -> mpsc::UnboundedReceiver<Event> {
    let (sender, receiver) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match event::poll(Duration::from_millis(200)) {
                Ok(true) => match event::read() {
                    Ok(event) => {
                        if sender.send(event).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                },
                Ok(false) => {}
                Err(_) => return,
            }
        }
    });
    receiver
}

/// The model's last interval, as the UI needs it.
fn tick_input(driver: &Driver) -> TickInput {
    let snapshot = driver.snapshot();
    let last = driver.session().model().samples().back();
    TickInput {
        snapshot,
        flow_growth: last.map(|sample| sample.flows.clone()).unwrap_or_default(),
        flows_open: last
            .map(|sample| sample.health.iter().filter(|(_, h)| h.sockets > 0).map(|(key, _)| *key).collect())
            .unwrap_or_default(),
    }
}

/// Attaches (and drops the capabilities no longer needed) on this thread,
/// before the terminal is taken (its errors print on a normal screen), then
/// runs the UI on the async runtime.
pub(crate) fn run(args: TopArgs) -> anyhow::Result<()> {
    let attached = driver::attach(args.backend.map(Into::into), args.max_sockets)?;
    super::runtime()?.block_on(top(args, attached))
}

async fn top(args: TopArgs, attached: Attached) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut driver = Driver::start(
        attached,
        DriverConfig {
            filter: args.filters.filter(),
            thresholds: args.analysis.thresholds(),
            interval: args.interval,
            window: args.window,
        },
    )?;
    let theme = Theme::from_env();
    let mut app = App::new(driver.backend().as_str());
    let mut guard = TerminalGuard::enter()?;
    let stop_input = Arc::new(AtomicBool::new(false));
    let mut input = spawn_input(Arc::clone(&stop_input));
    let (ticks, mut tick_rx) = mpsc::unbounded_channel::<TickInput>();

    let ui = async {
        guard.terminal.draw(|frame| draw(frame, &mut app, theme)).context("drawing")?;
        loop {
            tokio::select! {
                Some(tick) = tick_rx.recv() => app.on_tick(&tick),
                event = input.recv() => match event {
                    Some(Event::Key(key)) => {
                        if app.on_key(key) == Control::Quit {
                            return Ok(());
                        }
                    }
                    Some(_) => {}
                    None => anyhow::bail!("the terminal's input closed"),
                },
                _ = sigterm.recv() => return Ok(()),
                _ = sigint.recv() => return Ok(()),
                _ = sighup.recv() => return Ok(()),
            }
            guard.terminal.draw(|frame| draw(frame, &mut app, theme)).context("drawing")?;
        }
    };
    let result: anyhow::Result<()> = driver
        .run(ui, |driver, _| {
            let _ = ticks.send(tick_input(driver));
        })
        .await;
    stop_input.store(true, Ordering::Relaxed);
    drop(guard);
    // Detaches the programs.
    drop(driver);
    result
}
