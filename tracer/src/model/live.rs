//! A live socket as the model keeps it between two table reads: what the
//! last observation said, packed (216 bytes instead of the ~480 of an
//! observation and its attributed counters), since the model holds one per
//! socket of the host: 100,000 sockets take ~23 MB, not ~100.
//!
//! Packing loses nothing the model uses: per-socket event counts (opened,
//! closed, failures by reason, connects timed) are 0 or 1 and kept in a
//! byte; segments, retransmits and chrono times are 32-bit in the kernel
//! (busy, their sum, saturates after ~50 days of a socket's busy time at
//! 1000 Hz), resets and SYN retransmits too; byte counters stay 64-bit.
//! Each saturates rather than wraps.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Counters, KernelRole, SocketHealth, SocketObs, Tuple};

const NONE_U64: u64 = u64::MAX;
const NONE_U32: u32 = u32::MAX;

/// [`Counters`] of one socket, packed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct PackedCounters {
    /// tx, rx.
    wide: [u64; 2],
    /// retransmits and segments out (the kernel's counters are 32-bit),
    /// busy, rwnd and sndbuf (jiffies, 32-bit in the kernel; busy sums
    /// the three), resets sent, resets received, SYN retransmits.
    mid: [u32; 8],
    /// opened, closed, failed, refused, timeout, unreachable, other,
    /// connects timed.
    small: [u8; 8],
}

fn narrow32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn narrow8(v: u64) -> u8 {
    u8::try_from(v).unwrap_or(u8::MAX)
}

impl From<&Counters> for PackedCounters {
    fn from(c: &Counters) -> Self {
        PackedCounters {
            wide: [c.tx_bytes, c.rx_bytes],
            mid: [
                narrow32(c.retransmits),
                narrow32(c.segments_out),
                narrow32(c.busy_jiffies),
                narrow32(c.rwnd_jiffies),
                narrow32(c.sndbuf_jiffies),
                narrow32(c.resets_sent),
                narrow32(c.resets_received),
                narrow32(c.syn_retransmits),
            ],
            small: [
                narrow8(c.opened),
                narrow8(c.closed),
                narrow8(c.failed_connects),
                narrow8(c.failed_refused),
                narrow8(c.failed_timeout),
                narrow8(c.failed_unreachable),
                narrow8(c.failed_other),
                narrow8(c.connects_timed),
            ],
        }
    }
}

impl PackedCounters {
    pub(super) fn unpack(&self) -> Counters {
        let [tx_bytes, rx_bytes] = self.wide;
        let [retransmits, segments_out, busy_jiffies, rwnd_jiffies, sndbuf_jiffies, resets_sent, resets_received, syn_retransmits] =
            self.mid.map(u64::from);
        let [opened, closed, failed_connects, failed_refused, failed_timeout, failed_unreachable, failed_other, connects_timed] =
            self.small.map(u64::from);
        Counters {
            tx_bytes,
            rx_bytes,
            retransmits,
            segments_out,
            resets_sent,
            resets_received,
            opened,
            closed,
            failed_connects,
            failed_refused,
            failed_timeout,
            failed_unreachable,
            failed_other,
            syn_retransmits,
            connects_timed,
            busy_jiffies,
            rwnd_jiffies,
            sndbuf_jiffies,
        }
    }
}

const WAS_ESTABLISHED: u8 = 1;
const LOCAL_V6: u8 = 2;
const REMOTE_V6: u8 = 4;

fn ip_bytes(ip: IpAddr) -> ([u8; 16], bool) {
    match ip {
        IpAddr::V4(v4) => {
            let mut bytes = [0; 16];
            bytes[..4].copy_from_slice(&v4.octets());
            (bytes, false)
        }
        IpAddr::V6(v6) => (v6.octets(), true),
    }
}

fn ip_of(bytes: &[u8; 16], v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

/// One live (or vanished) socket: its last observation, packed, and the
/// counters already attributed to flows.
#[derive(Debug, Clone)]
pub(super) struct LiveSocket {
    pub(super) first_seen_ns: u64,
    state_since_ns: u64,
    delivery_rate: u64,
    counters: PackedCounters,
    attributed: PackedCounters,
    local_ip: [u8; 16],
    remote_ip: [u8; 16],
    netns: u32,
    pub(super) pid: u32,
    /// connect_us, samples, srtt, rcv_rtt, min_rtt, recv_queue, send_queue, rcvbuf.
    health: [u32; 8],
    local_port: u16,
    remote_port: u16,
    pub(super) role: KernelRole,
    pub(super) state: u8,
    flags: u8,
    /// The table read that last saw it.
    pub(super) generation: u8,
}

impl LiveSocket {
    pub(super) fn new(obs: &SocketObs, attributed: &Counters, generation: u8) -> Self {
        let (local_ip, local_v6) = ip_bytes(obs.tuple.local.ip());
        let (remote_ip, remote_v6) = ip_bytes(obs.tuple.remote.ip());
        let mut flags = 0;
        if obs.was_established {
            flags |= WAS_ESTABLISHED;
        }
        if local_v6 {
            flags |= LOCAL_V6;
        }
        if remote_v6 {
            flags |= REMOTE_V6;
        }
        let h = &obs.health;
        LiveSocket {
            first_seen_ns: obs.first_seen_ns,
            state_since_ns: obs.state_since_ns.unwrap_or(NONE_U64),
            delivery_rate: h.delivery_rate.unwrap_or(NONE_U64),
            counters: PackedCounters::from(&obs.counters),
            attributed: PackedCounters::from(attributed),
            local_ip,
            remote_ip,
            netns: obs.tuple.netns,
            pid: obs.pid,
            health: [
                h.connect_us.map_or(NONE_U32, |us| narrow32(us).min(NONE_U32 - 1)),
                h.samples,
                h.srtt_us,
                h.rcv_rtt_us,
                h.min_rtt_us,
                h.recv_queue,
                h.send_queue,
                h.rcvbuf,
            ],
            local_port: obs.tuple.local.port(),
            remote_port: obs.tuple.remote.port(),
            role: obs.role,
            state: obs.state,
            flags,
            generation,
        }
    }

    /// Takes a newer observation of the same socket, keeping what was
    /// attributed.
    pub(super) fn update(&mut self, obs: &SocketObs, generation: u8) {
        let attributed = self.attributed;
        *self = LiveSocket::new(obs, &Counters::default(), generation);
        self.attributed = attributed;
    }

    pub(super) fn attributed(&self) -> Counters {
        self.attributed.unpack()
    }

    pub(super) fn set_attributed(&mut self, attributed: &Counters) {
        self.attributed = PackedCounters::from(attributed);
    }

    pub(super) fn tuple(&self) -> Tuple {
        Tuple {
            netns: self.netns,
            local: SocketAddr::new(ip_of(&self.local_ip, self.flags & LOCAL_V6 != 0), self.local_port),
            remote: SocketAddr::new(ip_of(&self.remote_ip, self.flags & REMOTE_V6 != 0), self.remote_port),
        }
    }

    pub(super) fn netns(&self) -> u32 {
        self.netns
    }

    pub(super) fn local_port(&self) -> u16 {
        self.local_port
    }

    pub(super) fn state_since_ns(&self) -> Option<u64> {
        (self.state_since_ns != NONE_U64).then_some(self.state_since_ns)
    }

    /// The observation it was made from (without the thread name, which
    /// the model took when it first saw it).
    pub(super) fn obs(&self, id: u64) -> SocketObs {
        let [connect_us, samples, srtt_us, rcv_rtt_us, min_rtt_us, recv_queue, send_queue, rcvbuf] = self.health;
        SocketObs {
            id,
            pid: self.pid,
            thread_comm: [0; 16],
            tuple: self.tuple(),
            role: self.role,
            state: self.state,
            state_since_ns: self.state_since_ns(),
            first_seen_ns: self.first_seen_ns,
            counters: self.counters.unpack(),
            was_established: self.flags & WAS_ESTABLISHED != 0,
            health: SocketHealth {
                connect_us: (connect_us != NONE_U32).then_some(u64::from(connect_us)),
                samples,
                srtt_us,
                rcv_rtt_us,
                min_rtt_us,
                recv_queue,
                send_queue,
                rcvbuf,
                delivery_rate: (self.delivery_rate != NONE_U64).then_some(self.delivery_rate),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::tcp_state;

    use super::*;

    #[test]
    fn packing_keeps_every_field_and_saturates() {
        let tuple = Tuple {
            netns: 7,
            local: "[2001:db8::1]:443".parse().expect("addr"),
            remote: "10.1.2.3:5555".parse().expect("addr"),
        };
        let counters = Counters {
            tx_bytes: u64::MAX - 1,
            rx_bytes: 5,
            retransmits: 3,
            segments_out: 9,
            resets_sent: 1 << 40,
            resets_received: 2,
            opened: 1,
            closed: 300,
            failed_connects: 1,
            failed_refused: 1,
            failed_timeout: 0,
            failed_unreachable: 0,
            failed_other: 0,
            syn_retransmits: 4,
            connects_timed: 1,
            busy_jiffies: 1 << 35,
            rwnd_jiffies: 11,
            sndbuf_jiffies: 12,
        };
        let obs = SocketObs {
            id: 42,
            pid: 10,
            thread_comm: [0; 16],
            tuple,
            role: KernelRole::Server,
            state: tcp_state::CLOSE_WAIT,
            state_since_ns: Some(0),
            first_seen_ns: 3,
            counters,
            was_established: true,
            health: SocketHealth {
                connect_us: Some(150),
                samples: 2,
                srtt_us: 20,
                rcv_rtt_us: 30,
                min_rtt_us: 10,
                recv_queue: 100,
                send_queue: 200,
                rcvbuf: 1 << 20,
                delivery_rate: Some(0),
            },
        };
        let attributed = Counters { tx_bytes: 1, ..Counters::default() };
        let socket = LiveSocket::new(&obs, &attributed, 1);
        let back = socket.obs(42);
        let expected =
            Counters { resets_sent: u64::from(u32::MAX), busy_jiffies: u64::from(u32::MAX), closed: 255, ..counters };
        assert_eq!(back.counters, expected);
        assert_eq!((back.tuple, back.role, back.state, back.state_since_ns), (tuple, obs.role, obs.state, Some(0)));
        assert_eq!((back.first_seen_ns, back.pid, back.was_established, back.health), (3, 10, true, obs.health));
        assert_eq!(socket.attributed(), attributed);
        let none = SocketObs { state_since_ns: None, was_established: false, health: SocketHealth::default(), ..obs };
        let back = LiveSocket::new(&none, &attributed, 1).obs(42);
        assert_eq!((back.state_since_ns, back.was_established, back.health), (None, false, SocketHealth::default()));
        assert!(std::mem::size_of::<LiveSocket>() <= 216, "{}", std::mem::size_of::<LiveSocket>());
    }
}
