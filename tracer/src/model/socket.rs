//! Sockets as the model sees them: their identity ([`Tuple`]), what the
//! kernel side last said of one ([`SocketObs`]), what /proc says
//! ([`ProcSocket`]), and TCP state names.

use std::{collections::BTreeMap, net::SocketAddr};

use tracer_common::tcp_state;

use super::{Counters, SocketHealth};

/// Socket counts by state name (`ESTABLISHED`, `CLOSE_WAIT`, ...), zeros left out.
pub(crate) type StateCounts = BTreeMap<&'static str, u64>;

/// Socket counts by state number, while counting many sockets (an array
/// add per socket, not a map insert by name).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StateTally([u64; 16]);

impl StateTally {
    pub(crate) fn add(&mut self, state: u8) {
        self.0[usize::from(state & 15)] += 1;
    }

    /// Adds the counts to `counts` by name.
    pub(crate) fn add_to(&self, counts: &mut StateCounts) {
        for (state, &n) in self.0.iter().enumerate() {
            if n > 0 {
                *counts.entry(state_name(state as u8)).or_default() += n;
            }
        }
    }
}

/// The kernel's name of a TCP state, without the `TCP_` prefix.
pub(crate) fn state_name(state: u8) -> &'static str {
    match state {
        tcp_state::ESTABLISHED => "ESTABLISHED",
        tcp_state::SYN_SENT => "SYN_SENT",
        tcp_state::SYN_RECV => "SYN_RECV",
        tcp_state::FIN_WAIT1 => "FIN_WAIT1",
        tcp_state::FIN_WAIT2 => "FIN_WAIT2",
        tcp_state::TIME_WAIT => "TIME_WAIT",
        tcp_state::CLOSE => "CLOSE",
        tcp_state::CLOSE_WAIT => "CLOSE_WAIT",
        tcp_state::LAST_ACK => "LAST_ACK",
        tcp_state::LISTEN => "LISTEN",
        tcp_state::CLOSING => "CLOSING",
        tcp_state::NEW_SYN_RECV => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// A socket's identity on the host: its network namespace and addresses
/// (canonical: IPv4-mapped shown as IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Tuple {
    pub(crate) netns: u32,
    pub(crate) local: SocketAddr,
    pub(crate) remote: SocketAddr,
}

/// What the kernel side knows of a socket's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KernelRole {
    Unknown,
    Client,
    Server,
    Listener,
}

/// A task name as the kernel keeps it: up to 16 bytes, NUL-padded.
pub(crate) type RawComm = [u8; 16];

/// The text of a kernel task name.
pub(crate) fn comm_text(raw: &RawComm) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// One socket as the kernel record last described it (plain, `Copy`: the
/// model handles tens of thousands of these per tick without allocating).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SocketObs {
    /// The kernel's socket address: unique among live sockets.
    pub(crate) id: u64,
    /// Owner's tgid, 0 if unknown.
    pub(crate) pid: u32,
    /// Name of the owning thread when ownership was taken.
    pub(crate) thread_comm: RawComm,
    pub(crate) tuple: Tuple,
    pub(crate) role: KernelRole,
    pub(crate) state: u8,
    /// Monotonic ns when it entered `state`, if a transition was seen.
    pub(crate) state_since_ns: Option<u64>,
    pub(crate) first_seen_ns: u64,
    pub(crate) counters: Counters,
    /// It reached ESTABLISHED: its destruction closes a connection.
    pub(crate) was_established: bool,
    pub(crate) health: SocketHealth,
}

/// A socket found in /proc (at start, or when resolving owners).
#[derive(Debug, Clone)]
pub(crate) struct ProcSocket {
    pub(crate) tuple: Tuple,
    pub(crate) state: u8,
    pub(crate) inode: u64,
    pub(crate) pid: Option<u32>,
}
