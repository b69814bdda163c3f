//! Kernel records (`tracer_common::SockRecord`) to model observations: the
//! one place that knows the record's layout, flags and baselines. Pure, so
//! tested on hand-made records.

use std::net::SocketAddr;

use tracer_common::{flags, health_flags, role, SockRecord, TcpHealth};

use super::health::{delivery_rate, failed_connect_reason};
use crate::model::{addr, Counters, FailReason, KernelRole, SocketHealth, SocketObs, Tuple};

/// Turns a kernel record into a model observation.
pub(crate) fn observe(id: u64, record: &SockRecord) -> SocketObs {
    let has = |bit: u32| record.flags & bit != 0;
    let local = SocketAddr::new(addr::from_kernel(record.family, &record.local_addr), record.local_port);
    let remote = SocketAddr::new(addr::from_kernel(record.family, &record.remote_addr), record.remote_port);
    SocketObs {
        id,
        pid: record.pid,
        thread_comm: record.comm,
        tuple: Tuple { netns: record.netns, local, remote },
        role: match record.role {
            role::CLIENT => KernelRole::Client,
            role::SERVER => KernelRole::Server,
            role::LISTENER => KernelRole::Listener,
            _ => KernelRole::Unknown,
        },
        state: record.state,
        state_since_ns: has(flags::STATE_TIMED).then_some(record.state_since_ns),
        first_seen_ns: record.first_seen_ns,
        counters: Counters {
            tx_bytes: record.tx_bytes,
            rx_bytes: record.rx_bytes,
            retransmits: u64::from(record.retrans_total.saturating_sub(record.retrans_base)),
            segments_out: u64::from(record.segs_out.saturating_sub(record.segs_out_base)),
            resets_sent: u64::from(record.resets_sent),
            resets_received: u64::from(record.resets_received),
            opened: u64::from(has(flags::OPENED)),
            closed: 0,
            failed_connects: u64::from(has(flags::FAILED_CONNECT)),
            ..health_counters(record)
        },
        was_established: has(flags::WAS_ESTABLISHED),
        health: socket_health(&record.health),
    }
}

/// The counters of a record's health block: failures by reason, SYN
/// retransmits, a measured connect, and the chrono counters (busy is the
/// sum of the three, as `tcp_info` reports it).
fn health_counters(record: &SockRecord) -> Counters {
    let health = &record.health;
    let reason = failed_connect_reason(health);
    let failed = |r: FailReason| u64::from(reason == Some(r));
    let chrono = |i: usize| if health.flags & health_flags::CHRONO != 0 { u64::from(health.chrono[i]) } else { 0 };
    Counters {
        failed_refused: failed(FailReason::Refused),
        failed_timeout: failed(FailReason::Timeout),
        failed_unreachable: failed(FailReason::Unreachable),
        failed_other: failed(FailReason::Other),
        syn_retransmits: u64::from(record.syn_retrans),
        connects_timed: u64::from(health.flags & health_flags::CONNECT_TIMED != 0),
        busy_jiffies: chrono(0) + chrono(1) + chrono(2),
        rwnd_jiffies: chrono(1),
        sndbuf_jiffies: chrono(2),
        ..Counters::default()
    }
}

/// What the sampling pass last read of the socket, in the model's units.
fn socket_health(health: &TcpHealth) -> SocketHealth {
    SocketHealth {
        connect_us: (health.flags & health_flags::CONNECT_TIMED != 0).then_some(health.connect_ns / 1000),
        samples: health.samples,
        srtt_us: health.srtt_us8 >> 3,
        rcv_rtt_us: health.rcv_rtt_us8 >> 3,
        min_rtt_us: health.min_rtt_us,
        recv_queue: health.recv_queue,
        send_queue: health.send_queue,
        rcvbuf: health.rcvbuf,
        delivery_rate: delivery_rate(health),
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::AF_INET6;

    use super::*;

    #[test]
    fn a_record_becomes_an_observation() {
        let mut remote = [0u8; 16];
        remote[10..].copy_from_slice(&[0xff, 0xff, 10, 1, 2, 3]);
        let mut local = [0u8; 16];
        local[15] = 1;
        let record = SockRecord {
            family: AF_INET6,
            local_addr: local,
            remote_addr: remote,
            local_port: 40000,
            remote_port: 443,
            netns: 4026531840,
            pid: 42,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            role: role::CLIENT,
            state: tracer_common::tcp_state::ESTABLISHED,
            flags: flags::OPENED | flags::WAS_ESTABLISHED | flags::STATE_TIMED,
            state_since_ns: 7,
            first_seen_ns: 5,
            tx_bytes: 100,
            rx_bytes: 2000,
            retrans_total: 9,
            retrans_base: 4,
            segs_out: 30,
            segs_out_base: 10,
            resets_sent: 1,
            resets_received: 2,
            ..SockRecord::default()
        };
        let obs = observe(0xffff_1234, &record);
        assert_eq!(obs.id, 0xffff_1234);
        assert_eq!((obs.pid, obs.role, obs.state_since_ns, obs.first_seen_ns), (42, KernelRole::Client, Some(7), 5));
        assert_eq!(obs.tuple.netns, 4026531840);
        assert_eq!(obs.tuple.local.to_string(), "[::1]:40000");
        // IPv4-mapped IPv6 is shown as IPv4.
        assert_eq!(obs.tuple.remote.to_string(), "10.1.2.3:443");
        assert!(obs.was_established);
        assert_eq!(
            obs.counters,
            Counters {
                tx_bytes: 100,
                rx_bytes: 2000,
                // Counted since the tracer first saw the socket.
                retransmits: 5,
                segments_out: 20,
                resets_sent: 1,
                resets_received: 2,
                opened: 1,
                closed: 0,
                failed_connects: 0,
                ..Counters::default()
            }
        );
    }

    #[test]
    fn flags_and_roles_decode() {
        let failed = SockRecord {
            role: role::SERVER,
            flags: flags::FAILED_CONNECT,
            // A baseline above the total (a counter the kernel reset) is no
            // negative count.
            retrans_total: 1,
            retrans_base: 3,
            ..SockRecord::default()
        };
        let obs = observe(1, &failed);
        assert_eq!((obs.role, obs.state_since_ns, obs.was_established), (KernelRole::Server, None, false));
        assert_eq!((obs.counters.failed_connects, obs.counters.opened, obs.counters.retransmits), (1, 0, 0));
        assert_eq!(
            observe(1, &SockRecord { role: role::LISTENER, ..SockRecord::default() }).role,
            KernelRole::Listener
        );
        assert_eq!(observe(1, &SockRecord { role: 200, ..SockRecord::default() }).role, KernelRole::Unknown);
    }
}
