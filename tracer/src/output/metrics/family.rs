//! Metric families as the `prometheus` crate encodes them: a definition
//! (name, HELP, type, label names) and samples (label values and a value)
//! make one [`MetricFamily`]. Counters, gauges and histograms; the text
//! encoder adds the `le="+Inf"` bucket, `_sum` and `_count` of histograms
//! and escapes label values.

use std::collections::HashMap;

use prometheus::{
    core::Desc,
    proto::{
        Bucket, Counter as CounterValue, Gauge as GaugeValue, Histogram as HistogramValue, LabelPair, Metric,
        MetricFamily, MetricType,
    },
};

/// One metric: its name, HELP, type and label names.
#[derive(Debug, Clone, Copy)]
pub(super) struct Definition {
    pub(super) name: &'static str,
    pub(super) help: &'static str,
    pub(super) kind: MetricType,
    pub(super) labels: &'static [&'static str],
}

pub(super) const fn counter(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Definition {
    Definition { name, help, kind: MetricType::COUNTER, labels }
}

pub(super) const fn gauge(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Definition {
    Definition { name, help, kind: MetricType::GAUGE, labels }
}

pub(super) const fn histogram(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Definition {
    Definition { name, help, kind: MetricType::HISTOGRAM, labels }
}

/// Latency buckets in seconds: 100 µs doubling up to 13.1 s, so 10 s
/// falls in a bucket of its own (for `tracer_tcp_rtt_seconds` and
/// `tracer_tcp_connect_duration_seconds`): the model's latency buckets
/// (those of [`Dist`](crate::model::Dist)) in seconds.
pub(super) const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048, 0.4096, 0.8192,
    1.6384, 3.2768, 6.5536, 13.1072,
];

/// Observations in buckets (a histogram series' value): counts per bucket
/// (not cumulative), their number and their sum.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Histogram {
    /// Upper bounds, increasing; above the last is only in `count`.
    bounds: &'static [f64],
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    /// A histogram from its parts: `buckets` holds one (non-cumulative)
    /// count per bound; `count` includes what lies above the last bound.
    pub(super) fn from_counts(bounds: &'static [f64], buckets: Vec<u64>, count: u64, sum: f64) -> Self {
        debug_assert_eq!(bounds.len(), buckets.len());
        debug_assert!(buckets.iter().sum::<u64>() <= count);
        Histogram { bounds, buckets, count, sum }
    }

    fn encode(&self) -> HistogramValue {
        let mut value = HistogramValue::default();
        value.set_sample_count(self.count);
        value.set_sample_sum(self.sum);
        let mut cumulative = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(&self.buckets)
            .map(|(&bound, &count)| {
                cumulative += count;
                let mut bucket = Bucket::default();
                bucket.set_upper_bound(bound);
                bucket.set_cumulative_count(cumulative);
                bucket
            })
            .collect();
        value.set_bucket(buckets);
        value
    }
}

/// A sample's value: a number (counters, gauges) or a histogram.
pub(super) enum Value<'a> {
    Number(f64),
    Histogram(&'a Histogram),
}

/// One sample before its family gives it a type.
pub(super) struct Sample<'a> {
    labels: Vec<LabelPair>,
    value: Value<'a>,
}

fn label_pairs(labels: &[(&str, &str)]) -> Vec<LabelPair> {
    labels
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name((*name).to_owned());
            pair.set_value((*value).to_owned());
            pair
        })
        .collect()
}

/// A counter or gauge sample.
pub(super) fn sample(labels: &[(&str, &str)], value: f64) -> Sample<'static> {
    Sample { labels: label_pairs(labels), value: Value::Number(value) }
}

/// A histogram sample.
pub(super) fn histogram_sample<'a>(labels: &[(&str, &str)], value: &'a Histogram) -> Sample<'a> {
    Sample { labels: label_pairs(labels), value: Value::Histogram(value) }
}

/// The family of `definition` with `samples`. A sample whose value does not
/// fit the definition's type (a number for a histogram) is a bug and is
/// left out.
pub(super) fn family<'a>(definition: &Definition, samples: impl IntoIterator<Item = Sample<'a>>) -> MetricFamily {
    let metrics = samples
        .into_iter()
        .filter_map(|sample| {
            let mut metric = Metric::default();
            metric.set_label(sample.labels);
            match (definition.kind, sample.value) {
                (MetricType::COUNTER, Value::Number(number)) => {
                    let mut counter = CounterValue::default();
                    counter.set_value(number);
                    metric.set_counter(counter);
                }
                (MetricType::GAUGE, Value::Number(number)) => {
                    let mut gauge = GaugeValue::default();
                    gauge.set_value(number);
                    metric.set_gauge(gauge);
                }
                (MetricType::HISTOGRAM, Value::Histogram(histogram)) => metric.set_histogram(histogram.encode()),
                _ => {
                    debug_assert!(false, "{}: a sample of the wrong type", definition.name);
                    return None;
                }
            }
            Some(metric)
        })
        .collect();
    let mut family = MetricFamily::default();
    family.set_name(definition.name.to_owned());
    family.set_help(definition.help.to_owned());
    family.set_field_type(definition.kind);
    family.set_metric(metrics);
    family
}

pub(super) fn desc(definition: &Definition) -> prometheus::Result<Desc> {
    Desc::new(
        definition.name.to_owned(),
        definition.help.to_owned(),
        definition.labels.iter().map(|label| (*label).to_owned()).collect(),
        HashMap::new(),
    )
}

#[cfg(test)]
mod tests {
    use prometheus::TextEncoder;

    use super::*;

    const RTT: Definition = histogram("tracer_test_rtt_seconds", "A test histogram.", &["comm"]);

    #[test]
    fn latency_buckets_double_from_100us_past_10s() {
        assert_eq!(LATENCY_BUCKETS[0], 0.0001);
        for pair in LATENCY_BUCKETS.windows(2) {
            assert!((pair[1] / pair[0] - 2.0).abs() < 1e-9, "{pair:?}");
        }
        assert!(LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 2] < 10.0 && *LATENCY_BUCKETS.last().expect("last") >= 10.0);
    }

    #[test]
    fn latency_buckets_are_the_models_in_seconds() {
        let dist = crate::model::Dist::default();
        assert_eq!(dist.buckets.len(), LATENCY_BUCKETS.len() + 1, "one more in the model: past the top");
        for (i, &bound) in LATENCY_BUCKETS.iter().enumerate() {
            let micros = (bound * 1e6).round() as u64;
            assert_eq!(micros as f64 / 1e6, bound);
            // The bound itself falls in bucket i, one microsecond more in the next.
            let mut at = crate::model::Dist::default();
            at.observe(micros);
            at.observe(micros + 1);
            assert_eq!((at.buckets[i], at.buckets[i + 1]), (1, 1), "bucket {i}");
        }
    }

    #[test]
    fn histograms_count_cumulatively() {
        // 0.0625 and 0.125 in the first bucket, 0.25 in the second, 0.5
        // in the third, 4.0 above the top.
        let a = Histogram::from_counts(&[0.125, 0.25, 1.0], vec![2, 1, 1], 5, 4.9375);
        let families = [family(&RTT, [histogram_sample(&[("comm", "curl")], &a)])];
        let text = TextEncoder::new().encode_to_string(&families).expect("encodes");
        assert_eq!(
            text,
            "# HELP tracer_test_rtt_seconds A test histogram.\n\
             # TYPE tracer_test_rtt_seconds histogram\n\
             tracer_test_rtt_seconds_bucket{comm=\"curl\",le=\"0.125\"} 2\n\
             tracer_test_rtt_seconds_bucket{comm=\"curl\",le=\"0.25\"} 3\n\
             tracer_test_rtt_seconds_bucket{comm=\"curl\",le=\"1\"} 4\n\
             tracer_test_rtt_seconds_bucket{comm=\"curl\",le=\"+Inf\"} 5\n\
             tracer_test_rtt_seconds_sum{comm=\"curl\"} 4.9375\n\
             tracer_test_rtt_seconds_count{comm=\"curl\"} 5\n"
        );
        crate::output::golden::promtool_check(&text);
    }
}
