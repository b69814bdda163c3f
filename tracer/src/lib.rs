//! tracer: kernel-exact TCP socket and bandwidth tracing with eBPF.
//!
//! User space is a pipeline, one folder per stage, each depending only on
//! the stages before it:
//! [`load`] (BTF, the table of programs, backend choice, attach) ->
//! [`collect`] (the only reader of maps and events; feeds the model each
//! tick) -> [`model`] (plain data: sockets, flows, processes, time series)
//! -> [`analysis`] (findings; pure functions) -> [`output`] (report JSON,
//! table, metrics, HTTP, dashboard). [`cmd`] holds the subcommands, which
//! share one tick driver; [`cli`] is the only module that knows clap, and
//! [`sys`] the only one that makes raw system calls.
//!
//! The crate's one public item is [`main`]: the binary is a thin wrapper,
//! so the compiler sees every other item's uses and reports dead code.

mod analysis;
mod cli;
mod cmd;
mod collect;
mod load;
mod model;
mod output;
mod sys;
mod units;

use std::process::ExitCode;

use clap::{error::ErrorKind, Parser};

use crate::cli::{Cli, Command};

/// Parses flags, runs the command, and maps the outcome to an exit code
/// (0 ok, 2 usage error, 1 runtime error) with one clear line.
pub fn main() -> ExitCode {
    sys::tune_allocator();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            return match err.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = err.print();
                    ExitCode::SUCCESS
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
                    let _ = err.print();
                    ExitCode::from(2)
                }
                _ => {
                    let text = err.render().to_string();
                    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid arguments");
                    eprintln!("tracer: {} (see tracer --help)", line.trim_start_matches("error: "));
                    ExitCode::from(2)
                }
            };
        }
    };
    if let (Command::Top(_), Err(line)) = (&cli.command, cmd::top::check_terminal()) {
        eprintln!("tracer: {line}");
        return ExitCode::from(2);
    }
    // Log lines would tear `top`'s screen: there only RUST_LOG turns them on.
    let log_level = if matches!(cli.command, Command::Top(_)) { "off" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(log_level)).init();

    let result = match cli.command {
        Command::Trace(args) => cmd::trace::run(args),
        Command::Agent(args) => cmd::agent::run(args),
        Command::Doctor(args) => cmd::doctor::run(args),
        Command::Top(args) => cmd::top::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            if let Some(usage) = err.downcast_ref::<cmd::UsageError>() {
                eprintln!("tracer: {usage}");
                return ExitCode::from(2);
            }
            let line = format!("{err:#}").replace('\n', " ");
            eprintln!("tracer: error: {line}");
            ExitCode::from(1)
        }
    }
}
