//! The statistics of the accepted runs: per contender and workload the
//! median figure, latency, cost and peak memory, and the ratios to `direct`
//! and to HAProxy, each taken within a round ([`Summary`]).

use std::collections::BTreeMap;

use crate::stats::median;

use super::{Contender, RunResult, Workload};

/// Medians over accepted runs, and ratios taken within a round.
#[derive(Debug, Default)]
pub struct Summary {
    cells: BTreeMap<(Contender, Workload), Cell>,
}

/// One contender x workload.
#[derive(Debug, Default, Clone)]
pub struct Cell {
    /// Accepted runs.
    pub runs: usize,
    /// Median figure (req/s or Gbit/s).
    pub figure: Option<f64>,
    /// Median of the per-round ratios to `direct`.
    pub vs_direct: Option<f64>,
    /// Median of the per-round ratios to HAProxy.
    pub vs_haproxy: Option<f64>,
    /// Median p50 latency, us.
    pub p50_us: Option<f64>,
    /// Median p99 latency, us.
    pub p99_us: Option<f64>,
    /// Median balancer CPU microseconds per request (request workloads) or
    /// CPU seconds per GB (streams).
    pub cost: Option<f64>,
    /// Largest peak RSS seen, KiB.
    pub peak_rss_kib: Option<u64>,
}

impl Summary {
    /// Summarises `results`.
    pub fn new(results: &[RunResult]) -> Summary {
        let ok: Vec<&RunResult> = results.iter().filter(|r| r.rejected.is_none()).collect();
        let mut summary = Summary::default();
        let find = |c: Contender, w: Workload, round: usize| {
            ok.iter()
                .find(|r| r.contender == c && r.workload == w && r.round == round)
        };
        for contender in Contender::ALL {
            for workload in Workload::ALL {
                let mine: Vec<&&RunResult> = ok
                    .iter()
                    .filter(|r| r.contender == contender && r.workload == workload)
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                let collect = |f: &dyn Fn(&RunResult) -> Option<f64>| {
                    let mut v: Vec<f64> = mine.iter().filter_map(|r| f(r)).collect();
                    median(&mut v)
                };
                let ratio = |to: Contender| {
                    collect(&|r: &RunResult| {
                        let other = find(to, workload, r.round)?;
                        (other.figure() > 0.0).then(|| r.figure() / other.figure())
                    })
                };
                let cell = Cell {
                    runs: mine.len(),
                    figure: collect(&|r| Some(r.figure())),
                    vs_direct: ratio(Contender::Direct),
                    vs_haproxy: ratio(Contender::Haproxy),
                    p50_us: collect(&|r| Some(r.p50_us as f64)),
                    p99_us: collect(&|r| Some(r.p99_us as f64)),
                    cost: collect(&|r| {
                        let cpu = r.cpu_seconds?;
                        if workload.is_stream() {
                            (r.bytes > 0).then(|| cpu / (r.bytes as f64 / 1e9))
                        } else {
                            (r.requests > 0).then(|| cpu * 1e6 / r.requests as f64)
                        }
                    }),
                    peak_rss_kib: mine.iter().filter_map(|r| r.peak_rss_kib).max(),
                };
                summary.cells.insert((contender, workload), cell);
            }
        }
        summary
    }

    /// The cell of `contender` x `workload`.
    pub fn cell(&self, contender: Contender, workload: Workload) -> Option<&Cell> {
        self.cells.get(&(contender, workload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_taken_within_a_round() {
        let run = |c, round, requests| RunResult {
            contender: c,
            workload: Workload::KeepAlive,
            round,
            requests,
            bytes: 1,
            seconds: 1.0,
            p50_us: 100,
            p99_us: 200,
            errors: 0,
            cpu_seconds: Some(1.0),
            peak_rss_kib: Some(1024),
            steal: 0.0,
            cpu_busy: vec![],
            syn_retransmits: 0,
            rejected: None,
        };
        // Round 2 is twice as fast for everyone: ratios stay 0.5.
        let results = vec![
            run(Contender::Direct, 1, 100),
            run(Contender::Portico, 1, 50),
            run(Contender::Direct, 2, 200),
            run(Contender::Portico, 2, 100),
            run(Contender::Direct, 3, 120),
            run(Contender::Portico, 3, 60),
        ];
        let s = Summary::new(&results);
        let cell = s.cell(Contender::Portico, Workload::KeepAlive).unwrap();
        assert_eq!(cell.runs, 3);
        assert_eq!(cell.figure, Some(60.0));
        assert_eq!(cell.vs_direct, Some(0.5));
        assert_eq!(cell.vs_haproxy, None);
        // 1 CPU second over 60 requests (the median run).
        assert!((cell.cost.unwrap() - 1e6 / 60.0).abs() < 1e-6);
        assert!(s.markdown().contains("| portico |"));
    }
}
