//! TCP health in user space (the fields it reads are resolved at load, in
//! `load::health`): running the `sample_sockets` iterator over the
//! socket table once per tick, the kernel's HZ (for the chrono counters,
//! which count jiffies), and the kernel's raw values turned into the
//! report's units (failure reasons, delivery rate).
//!
//! Kernel facts the numbers respect:
//! - `srtt_us` is stored << 3 and only moves when data *we* sent is
//!   acknowledged: a socket that only receives keeps its handshake RTT, so
//!   a receive-dominated socket is measured by the receiver's estimate
//!   (`rcv_rtt_est.rtt_us`, also << 3; `ss`'s `rcv_rtt`).
//! - `chrono_stat[]` is in jiffies, and HZ is not in BTF: it is measured
//!   from the kernel's jiffies against its monotonic clock, both read by
//!   the iterator at the end of each pass.
//! - A failed connect's reason comes from `sk_err` when SYN_SENT ends in
//!   CLOSE: ECONNREFUSED (RST, or ICMP port unreachable) is `refused`;
//!   ETIMEDOUT, or no error after SYNs left (the application gave up), is
//!   `timeout`; EHOSTUNREACH, ENETUNREACH, EACCES (ICMP errors) are
//!   `unreachable`; anything else, or no SYN ever sent (no free ephemeral
//!   port), is `other`.

use std::os::fd::AsFd;

use tracer_common::{health_flags, HealthClock, TcpHealth};

use crate::{load::SamplerFd, model::FailReason, sys};

/// The TCP health pass, run on demand: one pass samples every socket of
/// the socket table.
#[derive(Debug)]
pub(crate) struct Sampler {
    loaded: SamplerFd,
}

impl Sampler {
    pub(crate) fn new(loaded: SamplerFd) -> Self {
        Sampler { loaded }
    }

    /// One pass over every tracked socket: each record's health block is
    /// refreshed in the map, and `HEALTH_CLOCK` notes the clocks.
    pub(crate) fn run(&self) -> std::io::Result<()> {
        match &self.loaded {
            // A raw tracepoint program's context: its arguments (none read).
            SamplerFd::TestRun(prog) => sys::bpf::prog_test_run(prog.as_fd(), &[0u64; 1]),
            SamplerFd::Iterator(link) => sys::bpf::iter_run(link.as_fd()),
        }
    }
}

/// The kernel's HZ, measured from the clocks of two sampling passes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct HzMeter {
    first: Option<HealthClock>,
    hz: Option<u32>,
}

/// Kernels are built with one of these.
const HZ_VALUES: [u32; 5] = [100, 250, 300, 500, 1000];

impl HzMeter {
    /// Notes the clocks of the latest pass.
    pub(crate) fn observe(&mut self, clock: HealthClock) {
        if self.hz.is_some() || clock.passes == 0 {
            return;
        }
        let Some(first) = self.first else {
            self.first = Some(clock);
            return;
        };
        let nanos = clock.ktime_ns.saturating_sub(first.ktime_ns);
        // Half a second gives a jiffy count within 1-2% even at HZ=100.
        if nanos < 500_000_000 {
            return;
        }
        let measured = clock.jiffies.saturating_sub(first.jiffies) as f64 * 1e9 / nanos as f64;
        self.hz = HZ_VALUES.iter().copied().find(|&hz| (measured - hz as f64).abs() <= hz as f64 * 0.08);
        if self.hz.is_none() {
            // An unusual HZ: keep the measurement, rounded.
            self.hz = Some(measured.round().max(1.0) as u32);
        }
    }

    pub(crate) fn hz(&self) -> Option<u32> {
        self.hz
    }
}

/// The reason of a failed connect from the socket's error and whether a
/// SYN ever left (the mapping in this file's opening comment).
pub(crate) fn fail_reason(sk_err: u32, syn_sent: bool) -> FailReason {
    match sk_err as i32 {
        libc::ECONNREFUSED => FailReason::Refused,
        libc::ETIMEDOUT => FailReason::Timeout,
        libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EACCES => FailReason::Unreachable,
        0 if syn_sent => FailReason::Timeout,
        _ => FailReason::Other,
    }
}

/// The reason of a record's failed connect, if it failed. An error
/// reported while connecting that left no code on the socket is an ICMP
/// error that came while the owner held the socket: the kernel keeps those
/// in `sk_err_soft` only until the application reads them, and they are
/// unreachable errors (a closed port answers with a reset instead).
pub(crate) fn failed_connect_reason(health: &TcpHealth) -> Option<FailReason> {
    if health.flags & health_flags::CONNECT_FAILED == 0 {
        return None;
    }
    if health.connect_error == 0 && health.flags & health_flags::SOFT_ERROR_REPORTED != 0 {
        return Some(FailReason::Unreachable);
    }
    Some(fail_reason(health.connect_error, health.flags & health_flags::SYN_SENT_OUT != 0))
}

/// The delivery rate as `tcp_get_info` computes it, bytes per second.
pub(crate) fn delivery_rate(health: &TcpHealth) -> Option<u64> {
    // u128: the product of two u32 and 10^6 overflows u64 for large values.
    (health.rate_interval_us > 0).then(|| {
        let rate = u128::from(health.rate_delivered) * u128::from(health.mss_cache) * 1_000_000
            / u128::from(health.rate_interval_us);
        u64::try_from(rate).unwrap_or(u64::MAX)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reasons_follow_the_socket_error() {
        assert_eq!(fail_reason(libc::ECONNREFUSED as u32, true), FailReason::Refused);
        assert_eq!(fail_reason(libc::ETIMEDOUT as u32, true), FailReason::Timeout);
        assert_eq!(fail_reason(libc::EHOSTUNREACH as u32, true), FailReason::Unreachable);
        assert_eq!(fail_reason(libc::ENETUNREACH as u32, true), FailReason::Unreachable);
        assert_eq!(fail_reason(libc::EACCES as u32, true), FailReason::Unreachable);
        // The application gave up while SYNs were unanswered.
        assert_eq!(fail_reason(0, true), FailReason::Timeout);
        // No SYN ever left (no free ephemeral port).
        assert_eq!(fail_reason(0, false), FailReason::Other);
        assert_eq!(fail_reason(libc::EPROTO as u32, true), FailReason::Other);
        let health = TcpHealth { flags: 0, connect_error: libc::ECONNREFUSED as u32, ..TcpHealth::default() };
        assert_eq!(failed_connect_reason(&health), None);
        let failed = TcpHealth { flags: health_flags::CONNECT_FAILED, ..health };
        assert_eq!(failed_connect_reason(&failed), Some(FailReason::Refused));
        // An ICMP error the application read before the socket closed.
        let soft = TcpHealth {
            flags: health_flags::CONNECT_FAILED | health_flags::SYN_SENT_OUT | health_flags::SOFT_ERROR_REPORTED,
            connect_error: 0,
            ..health
        };
        assert_eq!(failed_connect_reason(&soft), Some(FailReason::Unreachable));
    }

    #[test]
    fn hz_is_measured_and_snapped() {
        let clock =
            |jiffies: u64, ms: u64, passes: u64| HealthClock { jiffies, ktime_ns: ms * 1_000_000, sampled: 0, passes };
        let mut meter = HzMeter::default();
        meter.observe(clock(1_000, 0, 1));
        meter.observe(clock(1_050, 200, 2));
        assert_eq!(meter.hz(), None, "too short to tell");
        meter.observe(clock(1_251, 1_000, 3));
        assert_eq!(meter.hz(), Some(250));
        let mut meter = HzMeter::default();
        meter.observe(clock(0, 0, 1));
        meter.observe(clock(1_003, 1_000, 2));
        assert_eq!(meter.hz(), Some(1000));
    }

    #[test]
    fn delivery_rate_as_tcp_info_computes_it() {
        let health = TcpHealth { rate_delivered: 10, mss_cache: 1448, rate_interval_us: 1000, ..TcpHealth::default() };
        assert_eq!(delivery_rate(&health), Some(14_480_000));
        assert_eq!(delivery_rate(&TcpHealth::default()), None);
    }
}
