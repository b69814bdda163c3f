//! Byte counts and rates for people, in binary units (`1.5 KiB`,
//! `800.0 KiB/s`) and latencies (`12.3 ms`): one convention for the table
//! and the findings' summaries.

const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];

/// The unit that suits `value` bytes: (divisor, unit name).
fn unit_for(value: f64) -> (f64, &'static str) {
    let mut divisor = 1.0;
    let mut unit = 0;
    while value.abs() >= 1024.0 * divisor && unit + 1 < UNITS.len() {
        divisor *= 1024.0;
        unit += 1;
    }
    (divisor, UNITS[unit])
}

/// `1536` -> `1.5 KiB`.
pub(crate) fn bytes(n: u64) -> String {
    match unit_for(n as f64) {
        (_, "B") => format!("{n} B"),
        (divisor, unit) => format!("{:.1} {unit}", n as f64 / divisor),
    }
}

/// Bytes per second in human units; `-` without a duration.
pub(crate) fn rate(n: u64, secs: f64) -> String {
    if secs <= 0.0 {
        return "-".into();
    }
    format!("{}/s", bytes((n as f64 / secs).round() as u64))
}

/// Two rates (bytes per second) in the unit that suits the larger, so they
/// compare at a glance.
pub(crate) fn rate_pair(a: f64, b: f64) -> (String, String) {
    match unit_for(a.abs().max(b.abs())) {
        (_, "B") => (format!("{a:.0} B/s"), format!("{b:.0} B/s")),
        (divisor, unit) => (format!("{:.1} {unit}/s", a / divisor), format!("{:.1} {unit}/s", b / divisor)),
    }
}

/// A duration in microseconds for people: `850 us`, `12.3 ms`, `1.50 s`.
pub(crate) fn duration_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} us")
    } else if us < 1_000_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(rate(2048, 2.0), "1.0 KiB/s");
        assert_eq!(rate(1, 0.0), "-");
        assert_eq!(rate_pair(204_800.0, 819_200.0), ("200.0 KiB/s".to_owned(), "800.0 KiB/s".to_owned()));
        assert_eq!(rate_pair(100.0, 2_097_152.0), ("0.0 MiB/s".to_owned(), "2.0 MiB/s".to_owned()));
        assert_eq!(rate_pair(12.4, 900.0), ("12 B/s".to_owned(), "900 B/s".to_owned()));
        assert_eq!(duration_us(850.0), "850 us");
        assert_eq!(duration_us(12_345.0), "12.3 ms");
        assert_eq!(duration_us(1_500_000.0), "1.50 s");
    }
}
