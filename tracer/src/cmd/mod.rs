//! The subcommands: [`trace`] (one-shot), [`agent`] (long-running, HTTP),
//! [`top`] (live terminal view) and [`doctor`] (what this kernel supports).
//! `trace`, `agent` and `top` run on the one tick driver in [`driver`]; each only says what to do after a
//! tick and when to stop.
//!
//! `trace`, `agent` and `top` attach on the main thread and drop the capabilities
//! they no longer need *before* they build the async runtime
//! ([`runtime`]): capabilities are per thread, and the runtime's threads
//! inherit the main thread's reduced set.

pub(crate) mod agent;
pub(crate) mod doctor;
mod driver;
pub(crate) mod top;
pub(crate) mod trace;

use anyhow::Context as _;

/// A mistake in what the user asked for, found after the flags parsed (a
/// bad `--web.config.file`): exit code 2, as for a bad flag.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

/// The async runtime `trace`, `agent` and `top` run on, built after the attach.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
