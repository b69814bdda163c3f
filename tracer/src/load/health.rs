//! The kernel fields TCP health reads, resolved from BTF at load (absent
//! ones named, and left at 0: never read), and what the report can say
//! with the fields this kernel has.

use tracer_common::KernelOffsets;

use super::btf::{Btf, BtfError};

/// Resolves the offsets of the fields TCP health reads into `offsets`, and
/// returns the fields the running kernel lacks (left at 0: never read,
/// reported as absent).
pub(crate) fn resolve_offsets(btf: &Btf, offsets: &mut KernelOffsets) -> Vec<&'static str> {
    let mut missing = Vec::new();
    let mut field = |name: &'static str, offset: Result<u32, BtfError>| match offset {
        Ok(offset) => offset,
        Err(_) => {
            missing.push(name);
            0
        }
    };
    let tcp = |member: &str| btf.member_offset("tcp_sock", member);
    offsets.sk_err = field("sock.sk_err", btf.member_offset("sock", "sk_err"));
    offsets.sk_err_soft = field("sock.sk_err_soft", btf.member_offset("sock", "sk_err_soft"));
    offsets.sk_rcvbuf = field("sock.sk_rcvbuf", btf.member_offset("sock", "sk_rcvbuf"));
    offsets.tcp_srtt_us = field("tcp_sock.srtt_us", tcp("srtt_us"));
    // `struct { u32 rtt_us; u32 seq; u64 time; } rcv_rtt_est`: `rtt_us`
    // first, as in every kernel since it was added.
    offsets.tcp_rcv_rtt_us = field("tcp_sock.rcv_rtt_est", tcp("rcv_rtt_est"));
    // `struct minmax { struct minmax_sample { u32 t; u32 v; } s[3]; }`:
    // the minimum is `s[0].v`.
    offsets.tcp_min_rtt =
        field("tcp_sock.rtt_min", tcp("rtt_min").and_then(|at| Ok(at + btf.member_offset("minmax_sample", "v")?)));
    offsets.tcp_rcv_nxt = field("tcp_sock.rcv_nxt", tcp("rcv_nxt"));
    offsets.tcp_copied_seq = field("tcp_sock.copied_seq", tcp("copied_seq"));
    offsets.tcp_write_seq = field("tcp_sock.write_seq", tcp("write_seq"));
    offsets.tcp_snd_una = field("tcp_sock.snd_una", tcp("snd_una"));
    offsets.tcp_rate_delivered = field("tcp_sock.rate_delivered", tcp("rate_delivered"));
    offsets.tcp_rate_interval_us = field("tcp_sock.rate_interval_us", tcp("rate_interval_us"));
    offsets.tcp_mss_cache = field("tcp_sock.mss_cache", tcp("mss_cache"));
    // The programs read `chrono_start` and `chrono_stat[3]` in one go, and
    // the 2-bit `chrono_type` from its byte.
    let chrono_start = tcp("chrono_start").ok();
    let chrono_stat = tcp("chrono_stat").ok();
    let chrono_type = btf.member_bits("tcp_sock", "chrono_type").ok();
    match (chrono_start, chrono_stat, chrono_type) {
        // `chrono_type` is a 2-bit field in most kernels, a whole byte in
        // recent ones (bitfield width 0 in BTF); its values are 0-3 either way.
        (Some(start), Some(stat), Some((bits, 0 | 2))) if stat == start + 4 && bits % 8 <= 6 => {
            offsets.tcp_chrono_start = start;
            offsets.tcp_chrono_type_byte = bits / 8;
            offsets.tcp_chrono_type_shift = bits % 8;
        }
        _ => missing.push("tcp_sock.chrono_stat"),
    }
    missing
}

/// Sets the span(s) of `struct tcp_sock` the TCP health pass copies: one
/// span from the first to the end of the last `tcp_sock` field it reads
/// (8-byte aligned), or two when the fields fall in two clusters and two
/// spans touch fewer cache lines (the sockets are cold when sampled: the
/// lines, not the bytes, cost). None if no choice fits the buffer (the
/// fields are then read one by one).
pub(crate) fn set_tcp_block(offsets: &mut KernelOffsets) {
    /// (start, length) of a span copied.
    type Span = (u32, u32);
    let chrono_end = (offsets.tcp_chrono_start != 0).then_some(offsets.tcp_chrono_start + 16);
    let chrono_type = (offsets.tcp_chrono_type_byte != 0).then_some(offsets.tcp_chrono_type_byte + 1);
    let fields = [
        offsets.tcp_srtt_us,
        offsets.tcp_rcv_rtt_us,
        offsets.tcp_min_rtt,
        offsets.tcp_rcv_nxt,
        offsets.tcp_copied_seq,
        offsets.tcp_write_seq,
        offsets.tcp_snd_una,
        offsets.tcp_rate_delivered,
        offsets.tcp_rate_interval_us,
        offsets.tcp_mss_cache,
        offsets.tcp_segs_out,
        offsets.tcp_total_retrans,
    ];
    // [start, end) of every field read.
    let mut spans: Vec<(u32, u32)> = fields.iter().filter(|&&at| at != 0).map(|&at| (at, at + 4)).collect();
    spans.extend(chrono_end.map(|end| (offsets.tcp_chrono_start, end)));
    spans.extend(chrono_type.map(|end| (end - 1, end)));
    spans.sort_unstable();
    offsets.tcp_block_start = 0;
    offsets.tcp_block_len = 0;
    offsets.tcp_block2_start = 0;
    offsets.tcp_block2_len = 0;
    let Some(first) = spans.first().map(|s| s.0) else { return };
    let aligned = |start: u32, end: u32| (start & !7, (end - (start & !7)).div_ceil(8) * 8);
    let lines = |start: u32, len: u32| (start + len - 1) / 64 - start / 64 + 1;
    let whole_end = spans.iter().map(|s| s.1).max().unwrap_or(first);
    // (cost in cache lines, one read counting as one more line; spans).
    let mut best: Option<(u32, Span, Span)> = None;
    let (start, len) = aligned(first, whole_end);
    if len <= tracer_common::TCP_BLOCK_MAX {
        best = Some((lines(start, len) + 1, (start, len), (0, 0)));
    }
    for split in 1..spans.len() {
        let end1 = spans[..split].iter().map(|s| s.1).max().unwrap_or(first);
        let start2 = spans[split].0;
        if start2 < end1 {
            continue;
        }
        let one = aligned(first, end1);
        let two = aligned(start2, whole_end);
        if one.1 > tracer_common::TCP_BLOCK_HALF || two.1 > tracer_common::TCP_BLOCK_HALF {
            continue;
        }
        let cost = lines(one.0, one.1) + lines(two.0, two.1) + 2;
        if best.is_none_or(|(c, _, _)| cost < c) {
            best = Some((cost, one, two));
        }
    }
    if let Some((_, (start, len), (start2, len2))) = best {
        offsets.tcp_block_start = start;
        offsets.tcp_block_len = len;
        offsets.tcp_block2_start = start2;
        offsets.tcp_block2_len = len2;
    }
}

/// Which TCP health values this kernel provides (a value it lacks is
/// reported as null, never as a made-up zero).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct HealthSupport {
    /// The sampling pass runs (RTT, backlogs, delivery rate each tick).
    pub(crate) sampling: bool,
    pub(crate) rtt: bool,
    pub(crate) min_rtt: bool,
    pub(crate) queues: bool,
    /// The chrono counters (`limited_ms`).
    pub(crate) chrono: bool,
    pub(crate) delivery_rate: bool,
    pub(crate) failure_reasons: bool,
}

/// What the report can say with the fields this kernel has, and whether
/// the sampling pass runs.
pub(crate) fn support(offsets: &KernelOffsets, sampling: bool) -> HealthSupport {
    HealthSupport {
        sampling,
        rtt: sampling && offsets.tcp_srtt_us != 0,
        min_rtt: sampling && offsets.tcp_min_rtt != 0,
        queues: sampling
            && [offsets.tcp_rcv_nxt, offsets.tcp_copied_seq, offsets.tcp_write_seq, offsets.tcp_snd_una]
                .iter()
                .all(|&o| o != 0),
        chrono: offsets.tcp_chrono_start != 0,
        delivery_rate: sampling
            && [offsets.tcp_rate_delivered, offsets.tcp_rate_interval_us, offsets.tcp_mss_cache]
                .iter()
                .all(|&o| o != 0),
        failure_reasons: offsets.sk_err != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This kernel's (6.18) offsets of the fields the health pass reads.
    fn offsets() -> KernelOffsets {
        KernelOffsets {
            tcp_total_retrans: 2200,
            tcp_segs_out: 1536,
            sk_rcvbuf: 244,
            tcp_srtt_us: 1680,
            tcp_rcv_rtt_us: 1832,
            tcp_min_rtt: 1500,
            tcp_rcv_nxt: 1664,
            tcp_copied_seq: 1464,
            tcp_write_seq: 1576,
            tcp_snd_una: 1672,
            tcp_chrono_start: 1560,
            tcp_chrono_type_byte: 1556,
            tcp_rate_delivered: 1780,
            tcp_rate_interval_us: 1784,
            tcp_mss_cache: 1441,
            ..KernelOffsets::default()
        }
    }

    #[test]
    fn the_tcp_block_spans_every_field_read_from_an_8_byte_boundary() {
        // The far `total_retrans` gone: one span; 1441 rounds down to 1440,
        // the last field left (`srtt_us`, 1680..1684) is rounded up.
        let mut offsets = offsets_without_far_ones();
        set_tcp_block(&mut offsets);
        assert_eq!((offsets.tcp_block_start, offsets.tcp_block_len, offsets.tcp_block2_len), (1440, 248, 0));
    }

    #[test]
    fn two_clusters_are_copied_as_two_spans_and_fields_too_far_apart_one_by_one() {
        // This kernel's layout: 1440..1856 (7 lines) and `total_retrans`
        // at 2200 (one line), instead of 1440..2208 (13 lines).
        let mut offsets = offsets();
        set_tcp_block(&mut offsets);
        let spans = (offsets.tcp_block_start, offsets.tcp_block_len, offsets.tcp_block2_start, offsets.tcp_block2_len);
        assert_eq!(spans, (1440, 400, 2200, 8));
        // Three clusters, each too far from the others: no span fits.
        let mut offsets = offsets_without_far_ones();
        offsets.tcp_total_retrans = 1440 + 2 * tracer_common::TCP_BLOCK_MAX;
        offsets.tcp_rcv_rtt_us = 1440 + 4 * tracer_common::TCP_BLOCK_MAX;
        set_tcp_block(&mut offsets);
        assert_eq!((offsets.tcp_block_len, offsets.tcp_block2_len), (0, 0));
    }

    fn offsets_without_far_ones() -> KernelOffsets {
        KernelOffsets {
            tcp_total_retrans: 0,
            tcp_rcv_rtt_us: 0,
            tcp_rate_delivered: 0,
            tcp_rate_interval_us: 0,
            ..offsets()
        }
    }
}
