//! The per-socket counters, declared once. [`Counters`] is generated from
//! the list at the bottom, with the arithmetic the model and the analysis
//! need (difference, sum, maximum, each saturating), so a new counter is
//! one line here plus the code that fills it (the collector's
//! [`observe`](crate::collect)) and the outputs that show it.

/// Declares [`Counters`] from a list of `u64` fields; every operation works
/// field by field over the whole list.
macro_rules! counters {
    ($($(#[$doc:meta])* $field:ident,)*) => {
        /// Monotonic counters of one socket (or sums of them).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub(crate) struct Counters {
            $($(#[$doc])* pub(crate) $field: u64,)*
        }

        impl Counters {
            /// `f` applied to each pair of fields.
            fn zip(&self, other: &Counters, f: impl Fn(u64, u64) -> u64) -> Counters {
                Counters { $($field: f(self.$field, other.$field),)* }
            }
        }
    };
}

impl Counters {
    /// Growth from `earlier` to `self`, never below zero.
    pub(crate) fn saturating_sub(&self, earlier: &Counters) -> Counters {
        self.zip(earlier, u64::saturating_sub)
    }

    /// Field-wise maximum. What is attributed only ever grows: a live
    /// reading a little behind an earlier one (a socket's byte slot given
    /// back while the table was read) must not make counts already
    /// attributed count again.
    pub(crate) fn max_each(&self, other: &Counters) -> Counters {
        self.zip(other, u64::max)
    }

    /// Adds `other`, saturating: sums over whatever the kernel reported
    /// must not overflow.
    pub(crate) fn add(&mut self, other: &Counters) {
        *self = self.zip(other, u64::saturating_add);
    }

    pub(crate) fn is_zero(&self) -> bool {
        *self == Counters::default()
    }

    /// Bytes moved either way.
    pub(crate) fn bytes(&self) -> u64 {
        self.tx_bytes.saturating_add(self.rx_bytes)
    }

    /// Resets either way.
    pub(crate) fn resets(&self) -> u64 {
        self.resets_sent.saturating_add(self.resets_received)
    }
}

counters! {
    /// Bytes that send syscalls moved.
    tx_bytes,
    /// Bytes that receive syscalls moved (`MSG_PEEK` excluded).
    rx_bytes,
    /// Segments retransmitted.
    retransmits,
    /// Segments sent, where known (the denominator of retransmit ratios).
    segments_out,
    resets_sent,
    resets_received,
    /// Connections opened (connected or accepted).
    opened,
    /// Connections that were established and have been destroyed.
    closed,
    /// Connection attempts that failed (the sum of the four reasons).
    failed_connects,
    /// ... refused: a reset, or ICMP port unreachable.
    failed_refused,
    /// ... timed out: the SYNs went unanswered (or the application gave up).
    failed_timeout,
    /// ... unreachable: an ICMP error (host, network, prohibited).
    failed_unreachable,
    /// ... for another reason (or no SYN ever left).
    failed_other,
    /// SYNs retransmitted while connecting.
    syn_retransmits,
    /// Connections whose connect latency was measured (the observation
    /// itself goes to the interval's `FlowHealth`).
    connects_timed,
    /// The kernel's chrono counters, in jiffies (the model's HZ converts):
    /// time sending, limited by the receiver's window, by the send buffer.
    busy_jiffies,
    rwnd_jiffies,
    sndbuf_jiffies,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_is_field_by_field_and_saturates() {
        let a = Counters { tx_bytes: 10, rx_bytes: 5, opened: 1, ..Counters::default() };
        let b = Counters { tx_bytes: 4, rx_bytes: 7, closed: 1, ..Counters::default() };
        assert_eq!(a.saturating_sub(&b), Counters { tx_bytes: 6, opened: 1, ..Counters::default() });
        assert_eq!(a.max_each(&b), Counters { tx_bytes: 10, rx_bytes: 7, opened: 1, closed: 1, ..Counters::default() });
        let mut sum = Counters { retransmits: u64::MAX, ..a };
        sum.add(&Counters { retransmits: 1, ..b });
        assert_eq!((sum.tx_bytes, sum.rx_bytes, sum.retransmits, sum.closed), (14, 12, u64::MAX, 1));
        assert!(Counters::default().is_zero() && !a.is_zero());
        assert_eq!((a.bytes(), Counters { resets_sent: 1, resets_received: 2, ..a }.resets()), (15, 3));
    }
}
