//! What the scale run measures of each contender ([`Figures`]): set-up
//! times, CPU seconds, memory ([`Mem`]) and change -> traffic times, with the
//! readings of its processes they come from.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::procfs::{self, ticks_with_children};
use crate::stats;

/// Median, 90th percentile (nearest rank) and maximum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantiles {
    /// Median (mean of the middle two for an even count).
    pub median: f64,
    /// 90th percentile, nearest rank.
    pub p90: f64,
    /// Largest.
    pub max: f64,
}

/// The [`Quantiles`] of `values` (none when empty).
pub fn quantiles(values: &[f64]) -> Option<Quantiles> {
    let mut v = values.to_vec();
    let median = stats::median(&mut v)?;
    let n = v.len();
    Some(Quantiles {
        median,
        p90: v[stats::nearest_rank(n, 0.9)],
        max: v[n - 1],
    })
}

/// Resident memory of a contender, KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mem {
    /// VmRSS (summed over its processes).
    pub rss_kib: u64,
    /// VmHWM (summed over its processes).
    pub hwm_kib: u64,
}

/// KiB per Service between an empty and a loaded reading.
pub fn per_service_kib(empty: u64, loaded: u64, services: usize) -> f64 {
    (loaded as f64 - empty as f64) / services.max(1) as f64
}

/// One contender's figures.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Creating the Services through the API (Portico only).
    pub api_writes: Option<Duration>,
    /// Warm set-up: start of the change until every VIP:port answered.
    pub warm: Duration,
    /// Warm set-up: until the first VIP:port answered.
    pub warm_first: Duration,
    /// Cold start: process start until the first VIP:port answered.
    pub cold_first: Duration,
    /// Warm set-up until the edge's metrics counted every listener.
    pub warm_listeners: Option<Duration>,
    /// Cold start: process start until every VIP:port answered.
    pub cold: Duration,
    /// CPU seconds spent during the warm set-up.
    pub warm_cpu_s: f64,
    /// CPU seconds from process start until every VIP:port answered.
    pub cold_cpu_s: f64,
    /// Memory with no Service, settled.
    pub mem_empty: Mem,
    /// Memory after the warm set-up and a probe pass.
    pub mem_warm: Mem,
    /// Memory after the cold start and a probe pass.
    pub mem_cold: Mem,
    /// Each change's time to be followed.
    pub changes: Vec<Duration>,
    /// Connections that failed while changes were polled for.
    pub change_errors: usize,
    /// VIP:ports that answered with the right nodePort in the last pass.
    pub answered: usize,
}

pub(super) fn mem(pids: &[i32]) -> Mem {
    let kib = |field: &str| -> u64 {
        pids.iter()
            .map(|p| procfs::status_kib(*p, field).unwrap_or(0))
            .sum()
    };
    Mem {
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
    }
}

/// CPU ticks of `pids` and of their reaped children.
pub(super) fn cpu_ticks(pids: &[i32]) -> u64 {
    pids.iter().filter_map(|p| ticks_with_children(*p)).sum()
}

pub(super) fn per_pid_ticks(pids: &[i32]) -> BTreeMap<i32, u64> {
    pids.iter()
        .filter_map(|p| Some((*p, ticks_with_children(*p)?)))
        .collect()
}

/// CPU ticks of `now` since `before` (a process new since then counts whole).
pub(super) fn ticks_since(before: &BTreeMap<i32, u64>, now: &[i32]) -> u64 {
    now.iter()
        .filter_map(|p| {
            Some(ticks_with_children(*p)?.saturating_sub(before.get(p).copied().unwrap_or(0)))
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_median_nearest_rank_p90_and_max() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        let q = quantiles(&v).unwrap();
        assert_eq!(q.median, 10.5);
        assert_eq!(q.p90, 18.0);
        assert_eq!(q.max, 20.0);
        let q = quantiles(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((q.median, q.p90, q.max), (3.0, 5.0, 5.0));
        assert_eq!(quantiles(&[]), None);
        assert_eq!(per_service_kib(10_000, 30_480, 1000), 20.48);
    }
}
