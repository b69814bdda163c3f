//! The soak's pass criteria, as plain functions over what it collected:
//! the agent's memory over time (a band and a fitted line), counter series
//! read back from Prometheus (each must never go down), and a Prometheus
//! text exposition read per series, labels kept (for the per-process byte
//! totals).

/// One series of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// The series of an exposition (comments and malformed lines skipped;
/// label values unescaped).
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inside) = rest.strip_prefix('{') {
        let mut chars = inside.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &inside[i + 1..];
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample { name, labels, value })
}

/// Sum of `name` over the series whose `comm` label is `comm`.
pub fn comm_total(samples: &[Sample], name: &str, comm: &str) -> f64 {
    samples.iter().filter(|s| s.name == name && s.label("comm") == Some(comm)).map(|s| s.value).sum()
}

/// Least-squares line through (x, y): (slope, intercept).
pub fn fit_line(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let slope = sxy / sxx;
    Some((slope, mean_y - slope * mean_x))
}

/// Most the agent's current RSS may vary after the warm-up: max over min.
pub const RSS_BAND: f64 = 0.10;
/// Most the fitted line may rise over the measured span, as a share of the
/// mean (half the band: a leak that would leave the band within twice the
/// span shows here first).
pub const RSS_MAX_RISE: f64 = 0.05;

/// The agent's memory after the warm-up.
#[derive(Debug, Clone, PartialEq)]
pub struct RssVerdict {
    pub samples: usize,
    pub first_kib: f64,
    pub last_kib: f64,
    pub min_kib: f64,
    pub max_kib: f64,
    pub mean_kib: f64,
    /// Fitted slope, KiB per minute.
    pub slope_kib_per_min: f64,
    /// The fitted line's rise over the span, as a share of the mean.
    pub rise: f64,
    pub within_band: bool,
    pub no_upward_trend: bool,
}

/// Judges RSS samples (seconds since start, KiB) taken after the warm-up.
pub fn judge_rss(samples: &[(f64, f64)]) -> Option<RssVerdict> {
    let (first, last) = (samples.first()?, samples.last()?);
    let (slope, _) = fit_line(samples)?;
    let min = samples.iter().map(|s| s.1).fold(f64::INFINITY, f64::min);
    let max = samples.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
    let mean = samples.iter().map(|s| s.1).sum::<f64>() / samples.len() as f64;
    let rise = slope * (last.0 - first.0) / mean;
    Some(RssVerdict {
        samples: samples.len(),
        first_kib: first.1,
        last_kib: last.1,
        min_kib: min,
        max_kib: max,
        mean_kib: mean,
        slope_kib_per_min: slope * 60.0,
        rise,
        within_band: max <= min * (1.0 + RSS_BAND),
        no_upward_trend: rise <= RSS_MAX_RISE,
    })
}

/// One counter series read back from Prometheus: its labels and raw
/// samples (seconds, value).
#[derive(Debug, Clone)]
pub struct Series {
    pub labels: String,
    pub points: Vec<(f64, f64)>,
}

/// What the monotonic check found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Monotonic {
    /// Series present from the start to the end of the checked span.
    pub checked: usize,
    /// Series that appeared or went away during it (not checked).
    pub partial: usize,
    /// Samples compared in all.
    pub points: usize,
    /// Each decrease: series, time, value before, value after.
    pub decreases: Vec<(String, f64, f64, f64)>,
}

/// Checks that each series present over the whole span (a sample within
/// `slack` of both `start` and `end`) never goes down.
pub fn check_monotonic(series: &[Series], start: f64, end: f64, slack: f64) -> Monotonic {
    let mut found = Monotonic::default();
    for one in series {
        let (Some(first), Some(last)) = (one.points.first(), one.points.last()) else { continue };
        if first.0 > start + slack || last.0 < end - slack {
            found.partial += 1;
            continue;
        }
        found.checked += 1;
        found.points += one.points.len();
        for pair in one.points.windows(2) {
            if pair[1].1 < pair[0].1 {
                found.decreases.push((one.labels.clone(), pair[1].0, pair[0].1, pair[1].1));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_keeps_labels_and_unescapes_them() {
        let text = "# HELP x y\n# TYPE x counter\n\
                    tracer_tcp_sent_bytes_total{comm=\"soak-churn\",port=\"80\",remote=\"127.0.0.1\",role=\"client\"} 1536\n\
                    tracer_tcp_sent_bytes_total{comm=\"a\\\"b\\\\c\\nd\",role=\"server\"} 7\n\
                    tracer_events_total 42\nbroken{\n";
        let samples = parse_exposition(text);
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].label("comm"), Some("soak-churn"));
        assert_eq!(samples[0].value, 1536.0);
        assert_eq!(samples[1].label("comm"), Some("a\"b\\c\nd"));
        assert_eq!(samples[2], Sample { name: "tracer_events_total".into(), labels: Vec::new(), value: 42.0 });
        assert_eq!(comm_total(&samples, "tracer_tcp_sent_bytes_total", "soak-churn"), 1536.0);
    }

    #[test]
    fn a_line_fits_exactly() {
        let (slope, intercept) = fit_line(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]).expect("fit");
        assert!((slope - 2.0).abs() < 1e-12 && (intercept - 1.0).abs() < 1e-12);
        assert_eq!(fit_line(&[(1.0, 1.0)]), None);
    }

    #[test]
    fn flat_memory_passes_and_a_leak_does_not() {
        let flat: Vec<(f64, f64)> = (0..30).map(|i| (i as f64 * 5.0, 30_000.0 + (i % 3) as f64 * 200.0)).collect();
        let verdict = judge_rss(&flat).expect("verdict");
        assert!(verdict.within_band && verdict.no_upward_trend, "{verdict:?}");
        // 1% per sample: out of the band and rising.
        let leak: Vec<(f64, f64)> = (0..30).map(|i| (i as f64 * 5.0, 30_000.0 * (1.0 + 0.01 * i as f64))).collect();
        let verdict = judge_rss(&leak).expect("verdict");
        assert!(!verdict.within_band && !verdict.no_upward_trend, "{verdict:?}");
    }

    #[test]
    fn a_counter_going_down_is_found_and_partial_series_are_not_checked() {
        let series = vec![
            Series { labels: "a".into(), points: vec![(0.0, 1.0), (5.0, 2.0), (10.0, 2.0)] },
            Series { labels: "b".into(), points: vec![(0.0, 5.0), (5.0, 4.0), (10.0, 6.0)] },
            Series { labels: "late".into(), points: vec![(5.0, 9.0), (10.0, 1.0)] },
        ];
        let found = check_monotonic(&series, 0.0, 10.0, 1.0);
        assert_eq!((found.checked, found.partial, found.points), (2, 1, 6));
        assert_eq!(found.decreases, vec![("b".to_owned(), 5.0, 5.0, 4.0)]);
    }
}
