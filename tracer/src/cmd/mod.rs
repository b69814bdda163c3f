//! The subcommands: [`trace`] (one-shot), [`agent`] (long-running, HTTP)
//! and [`doctor`] (what this kernel supports). `trace` and `agent` run on
//! the one tick driver in [`driver`]; each only says what to do after a
//! tick and when to stop.

pub(crate) mod agent;
pub(crate) mod doctor;
mod driver;
pub(crate) mod trace;
