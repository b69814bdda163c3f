//! tracer: kernel-exact TCP socket and bandwidth tracing with eBPF.
//!
//! Pipeline: [`collect`] (load/attach, the only aya user) -> [`model`]
//! (plain data) -> [`analysis`] (pure findings) -> outputs ([`report`] JSON,
//! [`table`], the agent's metrics, HTTP API and dashboard).

pub mod addr;
pub mod agent;
pub mod analysis;
pub mod bpf_batch;
pub mod btf;
pub mod byte_table;
pub mod cli;
pub mod collect;
pub mod doctor;
pub mod filter;
pub mod health;
pub mod http;
pub mod metrics;
pub mod model;
pub mod probes;
pub mod procfs;
pub mod report;
pub mod session;
pub mod table;
pub mod trace;
