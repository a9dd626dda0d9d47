//! The two statistics the benchmarks report: the median and the
//! nearest-rank quantile.

/// The median of `values` (none when empty); sorts them.
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// The index of the `q` quantile (0 < q <= 1) in `n` sorted values, by
/// nearest rank (`n` > 0).
pub fn nearest_rank(n: usize, q: f64) -> usize {
    ((q * n as f64).ceil().max(1.0) as usize).min(n) - 1
}
