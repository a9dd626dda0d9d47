//! One measured run and the rounds of them: the contender started on fresh
//! source addresses, wrk against it, and what the run cost (the balancer's
//! CPU seconds and peak memory, CPU steal, SYN retransmits), in a
//! [`RunResult`] that says why it does not count if it does not;
//! [`run_all`] interleaves the runs, round by round.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::command::wait_bounded;
use crate::netns;
use crate::procfs::{self, cpu_ticks, netstat_counter, ticks_to_seconds, ProcStat};
use crate::procs::{self, Spawned};

use super::contenders::NFT_TABLE;
use super::topology::{create_dir, nft};
use super::{Bench, BenchError, Contender, Workload, WrkResult, READY_TIMEOUT, STOP_GRACE};

/// One run's measurements.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Who.
    pub contender: Contender,
    /// What.
    pub workload: Workload,
    /// Which round (from 1).
    pub round: usize,
    /// Requests completed.
    pub requests: u64,
    /// Bytes the client read.
    pub bytes: u64,
    /// wrk's measured duration, in seconds.
    pub seconds: f64,
    /// Median latency, in microseconds.
    pub p50_us: u64,
    /// 99th percentile latency, in microseconds.
    pub p99_us: u64,
    /// wrk's socket and status errors.
    pub errors: u64,
    /// The balancer's CPU seconds during the load (none for in-kernel ones).
    pub cpu_seconds: Option<f64>,
    /// The balancer's peak resident memory, in KiB (summed over its processes).
    pub peak_rss_kib: Option<u64>,
    /// Share of CPU time stolen by the hypervisor during the run.
    pub steal: f64,
    /// Busy share of each CPU during the run.
    pub cpu_busy: Vec<f64>,
    /// SYN retransmits in the client and balancer namespaces.
    pub syn_retransmits: u64,
    /// Why the run does not count, if it does not.
    pub rejected: Option<String>,
}

impl RunResult {
    /// Requests per second.
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1e-9)
    }

    /// Throughput, in Gbit/s.
    pub fn gbit_per_second(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds.max(1e-9) / 1e9
    }

    /// The workload's figure: requests/s, or Gbit/s for the streams.
    pub fn figure(&self) -> f64 {
        if self.workload.is_stream() {
            self.gbit_per_second()
        } else {
            self.requests_per_second()
        }
    }

    /// One line for the run log.
    pub fn line(&self) -> String {
        let figure = if self.workload.is_stream() {
            format!("{:.2} Gbit/s", self.gbit_per_second())
        } else {
            format!("{:.0} req/s", self.requests_per_second())
        };
        format!(
            "round {} {:<9} {:<9} {:>14}  p50 {:>7} us  p99 {:>7} us  errors {}  cpu {}  rss {}  steal {:.1}%  busy {}  synretrans {}{}",
            self.round,
            self.contender.name(),
            self.workload.name(),
            figure,
            self.p50_us,
            self.p99_us,
            self.errors,
            self.cpu_seconds
                .map_or("-".to_string(), |s| format!("{s:.2} s")),
            self.peak_rss_kib
                .map_or("-".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
            self.steal * 100.0,
            self.cpu_busy
                .iter()
                .map(|b| format!("{:.0}%", b * 100.0))
                .collect::<Vec<_>>()
                .join("/"),
            self.syn_retransmits,
            self.rejected
                .as_ref()
                .map_or(String::new(), |r| format!("  REJECTED: {r}")),
        )
    }
}

impl Bench {
    /// Runs `workload` against `contender` once.
    pub fn run_one(
        &mut self,
        contender: Contender,
        workload: Workload,
        round: usize,
    ) -> Result<RunResult, BenchError> {
        let lb_src = self.fresh_sources()?;
        let lb = self.ns("lb");
        let name = format!("{}-{}-{}", contender.name(), workload.name(), self.sequence);
        let mut process = self.start_contender(contender, lb_src, &name)?;
        let result = self.measure(contender, workload, round, &name, process.as_ref());
        if contender == Contender::Nftables {
            let family = self.opts.addrs().nft();
            nft(&lb, &["delete", "table", family, NFT_TABLE], None)?;
        }
        if let Some(p) = process.as_mut() {
            procs::stop_all(std::slice::from_ref(&lb), STOP_GRACE)?;
            if let Err(e) = p.child.wait() {
                tracing::warn!(process = %p.name, error = %e, "cannot reap a contender");
            }
        }
        result
    }

    /// Waits until `nodes` distinct nodes answered through `contender`
    /// (`process`, whose log tail a failure carries, if it has one).
    pub(super) fn wait_contender(
        &self,
        contender: Contender,
        nodes: usize,
        process: Option<&Spawned>,
    ) -> Result<(), BenchError> {
        let log = process.map(|p| p.log.clone());
        let target = contender.target(self.opts.addrs());
        self.wait_answers(&self.ns("client"), target, nodes, || {
            log.as_deref()
                .map_or(String::new(), |l| procs::log_tail(l, 20))
        })
        .map_err(|(last, log)| BenchError::NotReady {
            contender,
            limit: READY_TIMEOUT,
            last,
            log,
        })
    }

    /// Waits until `contender` answers, then loads it with `workload` and
    /// measures the run.
    fn measure(
        &self,
        contender: Contender,
        workload: Workload,
        round: usize,
        name: &str,
        process: Option<&Spawned>,
    ) -> Result<RunResult, BenchError> {
        let (client, lb) = (self.ns("client"), self.ns("lb"));
        self.wait_contender(contender, contender.nodes_reached(), process)?;
        let lb_pids = || -> Result<Vec<i32>, BenchError> {
            Ok(if process.is_some() {
                netns::pids(&lb)?
            } else {
                Vec::new()
            })
        };
        let syn_before = syn_retransmits(&client)? + syn_retransmits(&lb)?;
        let cpu_before = cpu_ticks(&lb_pids()?);
        let stat_before = read_proc_stat()?;
        let perf = match (&self.opts.perf_dir, contender, process) {
            (Some(dir), Contender::Portico | Contender::PorticoB, Some(p)) => {
                Some(start_perf(dir, name, p.child.id(), self.opts.duration)?)
            }
            _ => None,
        };
        let output = self.wrk(contender, workload)?;
        let stat_after = read_proc_stat()?;
        let pids = lb_pids()?;
        let cpu_after = cpu_ticks(&pids);
        let syn_after = syn_retransmits(&client)? + syn_retransmits(&lb)?;
        if let Some(mut perf) = perf {
            wait_bounded(&mut perf, Duration::from_secs(60), "perf record")?;
        }
        let wrk = WrkResult::parse(&output)?;
        let (steal, cpu_busy) = stat_after.since(&stat_before);
        let mut result = RunResult {
            contender,
            workload,
            round,
            requests: wrk.requests,
            bytes: wrk.bytes,
            seconds: wrk.duration_us as f64 / 1e6,
            p50_us: wrk.p50_us,
            p99_us: wrk.p99_us,
            errors: wrk.errors,
            cpu_seconds: process.map(|_| ticks_to_seconds(cpu_after.saturating_sub(cpu_before))),
            peak_rss_kib: process.map(|_| {
                pids.iter()
                    .filter_map(|p| procfs::status_kib(*p, "VmHWM:"))
                    .sum()
            }),
            steal,
            cpu_busy,
            syn_retransmits: syn_after.saturating_sub(syn_before),
            rejected: None,
        };
        result.rejected = rejection(&result, self.opts.max_steal);
        Ok(result)
    }
}

/// Runs every round: each workload, each contender, interleaved, until every
/// pair has `runs` accepted runs or `max_rounds` is reached. `progress`
/// sees each run as it ends.
pub fn run_all(
    bench: &mut Bench,
    mut progress: impl FnMut(&RunResult),
) -> Result<Vec<RunResult>, BenchError> {
    let opts = bench.opts.clone();
    let mut results: Vec<RunResult> = Vec::new();
    for round in 1..=opts.max_rounds.max(1) {
        let accepted = |results: &[RunResult], c: Contender, w: Workload| {
            results
                .iter()
                .filter(|r| r.contender == c && r.workload == w && r.rejected.is_none())
                .count()
        };
        // A round is run whole (every contender) wherever one pair still
        // lacks runs, so ratios always have a same-round partner.
        let workloads: Vec<Workload> = opts
            .workloads
            .iter()
            .copied()
            .filter(|w| {
                opts.contenders
                    .iter()
                    .any(|c| accepted(&results, *c, *w) < opts.runs)
            })
            .collect();
        if workloads.is_empty() {
            break;
        }
        for workload in workloads {
            for contender in &opts.contenders {
                let result = bench.run_one(*contender, workload, round)?;
                progress(&result);
                results.push(result);
            }
        }
    }
    Ok(results)
}

/// Why a run does not count, if it does not.
fn rejection(r: &RunResult, max_steal: f64) -> Option<String> {
    let mut why = Vec::new();
    if r.steal > max_steal {
        why.push(format!("steal {:.1}%", r.steal * 100.0));
    }
    if r.syn_retransmits > 0 {
        why.push(format!("{} SYN retransmits", r.syn_retransmits));
    }
    if r.errors > 0 {
        why.push(format!("{} wrk errors", r.errors));
    }
    if r.requests == 0 && r.bytes == 0 {
        why.push("nothing transferred".to_string());
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// `perf record` of process `pid` for `duration` into `<dir>/<name>.data`.
fn start_perf(
    dir: &Path,
    name: &str,
    pid: u32,
    duration: Duration,
) -> Result<std::process::Child, BenchError> {
    create_dir(dir)?;
    let out = dir.join(format!("{name}.data"));
    Command::new("perf")
        .args(["record", "-F", "499", "-g", "-o"])
        .arg(&out)
        .args(["-p", &pid.to_string(), "--", "sleep"])
        .arg(duration.as_secs().max(1).to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| BenchError::Command {
            command: "perf record".into(),
            reason: e.to_string(),
        })
}

/// `TcpExtTCPSynRetrans` of namespace `ns`.
fn syn_retransmits(ns: &str) -> Result<u64, BenchError> {
    let path = Path::new("/proc/thread-self/net/netstat");
    let text =
        netns::in_netns(ns, || fs::read_to_string(path))?.map_err(|source| BenchError::File {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(netstat_counter(&text, "TcpExt", "TCPSynRetrans").unwrap_or(0))
}

/// Reads `/proc/stat`.
fn read_proc_stat() -> Result<ProcStat, BenchError> {
    ProcStat::read().map_err(|source| BenchError::File {
        path: PathBuf::from(ProcStat::PATH),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_runs_say_why() {
        let mut r = RunResult {
            contender: Contender::Haproxy,
            workload: Workload::NewConn,
            round: 1,
            requests: 10,
            bytes: 10,
            seconds: 1.0,
            p50_us: 1,
            p99_us: 1,
            errors: 0,
            cpu_seconds: None,
            peak_rss_kib: None,
            steal: 0.2,
            cpu_busy: vec![],
            syn_retransmits: 3,
            rejected: None,
        };
        let why = rejection(&r, 0.05).unwrap();
        assert!(why.contains("steal 20.0%") && why.contains("3 SYN retransmits"));
        r.steal = 0.0;
        r.syn_retransmits = 0;
        assert_eq!(rejection(&r, 0.05), None);
    }
}
