//! Metric families in the Prometheus text exposition format (what
//! `/metrics` answers), and how the series names a query uses map onto them.

use std::collections::BTreeMap;

/// A family's type, from its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MetricType {
    /// Only goes up (reset on restart): read it through `rate`/`increase`.
    Counter,
    /// A current value.
    Gauge,
    /// `_bucket{le}`, `_sum`, `_count` series.
    Histogram,
    /// `{quantile}`, `_sum`, `_count` series.
    Summary,
    /// No type given.
    Untyped,
}

/// Family name -> type, for every family a scrape declares with `# TYPE` or
/// shows a sample of (those without a `# TYPE` line are [`MetricType::Untyped`]).
pub type Families = BTreeMap<String, MetricType>;

/// The families in one scrape.
pub fn families(text: &str) -> Families {
    let mut out = Families::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                let kind = match kind {
                    "counter" => MetricType::Counter,
                    "gauge" => MetricType::Gauge,
                    "histogram" => MetricType::Histogram,
                    "summary" => MetricType::Summary,
                    _ => MetricType::Untyped,
                };
                out.insert(name.to_string(), kind);
            }
        }
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        if !name.is_empty() && resolve(name, &out).is_none() {
            out.insert(name.to_string(), MetricType::Untyped);
        }
    }
    out
}

/// The family a series name belongs to: the name itself, or for
/// `x_bucket`, `x_sum` and `x_count`, the histogram (or, without `_bucket`,
/// summary) family `x`.
pub fn resolve<'a>(series: &str, families: &'a Families) -> Option<(&'a str, MetricType)> {
    if let Some((name, kind)) = families.get_key_value(series) {
        return Some((name, *kind));
    }
    for (suffix, kinds) in [
        ("_bucket", &[MetricType::Histogram][..]),
        ("_sum", &[MetricType::Histogram, MetricType::Summary][..]),
        ("_count", &[MetricType::Histogram, MetricType::Summary][..]),
    ] {
        if let Some(base) = series.strip_suffix(suffix) {
            if let Some((name, kind)) = families.get_key_value(base) {
                if kinds.contains(kind) {
                    return Some((name, *kind));
                }
            }
        }
    }
    None
}

/// Functions that turn a counter (or a histogram's series) into a rate or
/// increase; they make no sense on gauges.
pub const COUNTER_FUNCTIONS: &[&str] = &["rate", "irate", "increase", "resets"];

/// What is wrong with reading `series` directly through `function` (the
/// innermost call around it), given its family's type: counters must go
/// through [`COUNTER_FUNCTIONS`], gauges must not, and a histogram's
/// `_bucket` series is for `histogram_quantile` over a rate.
pub fn misuse(series: &str, kind: MetricType, function: Option<&str>) -> Option<String> {
    let rated = function.is_some_and(|f| COUNTER_FUNCTIONS.contains(&f));
    match kind {
        MetricType::Counter if !rated => Some(format!(
            "{series} is a counter: read it through one of {COUNTER_FUNCTIONS:?}, not {}",
            function.unwrap_or("directly")
        )),
        MetricType::Gauge if rated => Some(format!(
            "{series} is a gauge: {} of it means nothing",
            function.unwrap_or_default()
        )),
        MetricType::Histogram | MetricType::Summary if series.ends_with("_bucket") && !rated => {
            Some(format!(
                "{series}: take histogram_quantile over a rate of the buckets, not {}",
                function.unwrap_or("the raw buckets")
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "\
# HELP a_total A counter.
# TYPE a_total counter
a_total{x=\"1\"} 3
# HELP lat_seconds A histogram.
# TYPE lat_seconds histogram
lat_seconds_bucket{le=\"0.1\"} 1
lat_seconds_bucket{le=\"+Inf\"} 1
lat_seconds_sum 0.05
lat_seconds_count 1
# TYPE g gauge
g 1
bare 2
";

    #[test]
    fn families_come_with_their_types_and_series_resolve_to_them() {
        let f = families(SCRAPE);
        assert_eq!(
            f.keys().map(String::as_str).collect::<Vec<_>>(),
            ["a_total", "bare", "g", "lat_seconds"]
        );
        assert_eq!(
            resolve("lat_seconds_bucket", &f),
            Some(("lat_seconds", MetricType::Histogram))
        );
        assert_eq!(
            resolve("lat_seconds_count", &f),
            Some(("lat_seconds", MetricType::Histogram))
        );
        assert_eq!(
            resolve("a_total", &f),
            Some(("a_total", MetricType::Counter))
        );
        assert_eq!(resolve("bare", &f), Some(("bare", MetricType::Untyped)));
        assert_eq!(resolve("g_bucket", &f), None, "a gauge has no buckets");
        assert_eq!(resolve("nope", &f), None);
    }

    #[test]
    fn counters_are_rated_and_gauges_are_not() {
        assert_eq!(misuse("a_total", MetricType::Counter, Some("rate")), None);
        assert!(misuse("a_total", MetricType::Counter, Some("sum")).is_some());
        assert!(misuse("g", MetricType::Gauge, Some("rate")).is_some());
        assert_eq!(misuse("g", MetricType::Gauge, Some("max")), None);
        assert_eq!(
            misuse("lat_seconds_bucket", MetricType::Histogram, Some("rate")),
            None
        );
        assert!(misuse("lat_seconds_bucket", MetricType::Histogram, Some("sum")).is_some());
    }
}
