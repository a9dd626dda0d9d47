//! What the load generator does: the workloads ([`Workload`]), wrk's
//! command line for each, and the result line wrk's `done()` hook writes
//! ([`WrkResult`]).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::command::{pinned, run};

use super::{Bench, BenchError, Contender};

/// What the load generator does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    /// Short requests on kept-alive connections.
    KeepAlive,
    /// One short request per connection (`Connection: close`).
    NewConn,
    /// The large file over one connection.
    Stream1,
    /// The large file over eight connections.
    Stream8,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 4] = [
        Workload::KeepAlive,
        Workload::NewConn,
        Workload::Stream1,
        Workload::Stream8,
    ];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::KeepAlive => "keepalive",
            Workload::NewConn => "newconn",
            Workload::Stream1 => "stream1",
            Workload::Stream8 => "stream8",
        }
    }

    /// The workload called `name`.
    pub fn parse(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }

    /// Whether its figure is a throughput (else requests per second).
    pub fn is_stream(self) -> bool {
        matches!(self, Workload::Stream1 | Workload::Stream8)
    }

    fn path(self) -> &'static str {
        if self.is_stream() {
            "/big"
        } else {
            "/small"
        }
    }

    fn connections(self, request_connections: u32) -> u32 {
        match self {
            Workload::KeepAlive | Workload::NewConn => request_connections,
            Workload::Stream1 => 1,
            Workload::Stream8 => 8,
        }
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// wrk's `done()` hook: one machine-readable line (latency in us).
pub(super) const WRK_SCRIPT: &str = r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "PBENCH requests=%d bytes=%d duration_us=%d p50_us=%d p99_us=%d errors=%d\n",
    summary.requests, summary.bytes, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"#;

/// What wrk reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrkResult {
    /// Requests completed.
    pub requests: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Duration, us.
    pub duration_us: u64,
    /// Median latency, us.
    pub p50_us: u64,
    /// 99th percentile latency, us.
    pub p99_us: u64,
    /// Socket and status errors.
    pub errors: u64,
}

impl WrkResult {
    /// Reads the `PBENCH` line of [`WRK_SCRIPT`] out of wrk's output.
    pub fn parse(output: &str) -> Result<WrkResult, BenchError> {
        let bad = || BenchError::WrkOutput(output.trim().to_string());
        let line = output
            .lines()
            .find_map(|l| l.strip_prefix("PBENCH "))
            .ok_or_else(bad)?;
        let fields: BTreeMap<&str, u64> = line
            .split_whitespace()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k, v.parse().ok()?))
            })
            .collect();
        let get = |k: &str| fields.get(k).copied().ok_or_else(bad);
        Ok(WrkResult {
            requests: get("requests")?,
            bytes: get("bytes")?,
            duration_us: get("duration_us")?,
            p50_us: get("p50_us")?,
            p99_us: get("p99_us")?,
            errors: get("errors")?,
        })
    }
}

impl Bench {
    /// Runs wrk in the client namespace, pinned; its stdout.
    pub(super) fn wrk(
        &self,
        contender: Contender,
        workload: Workload,
    ) -> Result<String, BenchError> {
        let target = contender.target(self.opts.addrs());
        let secs = self.opts.duration.as_secs().max(1);
        let mut args = vec![
            "-t1".to_string(),
            format!("-c{}", workload.connections(self.opts.connections)),
            format!("-d{secs}s"),
            "--timeout".into(),
            "10s".into(),
            "-s".into(),
            self.wrk_script.display().to_string(),
        ];
        if workload == Workload::NewConn {
            args.extend(["-H".into(), "Connection: close".into()]);
        }
        args.push(format!("http://{target}{}", workload.path()));
        let cpu = self.opts.client_cpu.map(|c| c.to_string());
        let (program, args) = pinned(cpu.as_deref(), "wrk", &args);
        let mut full = vec![
            "netns".to_string(),
            "exec".into(),
            self.ns("client"),
            program,
        ];
        full.extend(args);
        Ok(run(
            "ip",
            &full,
            None,
            self.opts.duration + Duration::from_secs(30),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_line_parses() {
        let out = "Running 1s test\nPBENCH requests=120 bytes=4096 duration_us=1000500 p50_us=310 p99_us=2200 errors=0\n";
        let r = WrkResult::parse(out).unwrap();
        assert_eq!(r.requests, 120);
        assert_eq!(r.bytes, 4096);
        assert_eq!(r.duration_us, 1_000_500);
        assert_eq!((r.p50_us, r.p99_us, r.errors), (310, 2200, 0));
        assert!(WrkResult::parse("Running 1s test\n").is_err());
        assert!(WrkResult::parse("PBENCH requests=x").is_err());
    }
}
