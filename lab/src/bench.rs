//! Benchmarks of the edge against its anchors: the same client, the same two
//! backend nodes and the same load generator, with the balancer in between
//! swapped run by run.
//!
//! ```text
//!   <p>-client  eth0 10.91.0.2/16 (+ a fresh address per run)
//!        │   wrk, pinned to the client CPU
//!   <p>-lb      eth0 10.91.0.1/16 + VIP 203.0.113.10/32     the contender, pinned to
//!               br0  10.92.0.1/16 (+ a fresh address per run)  the balancer CPU
//!        ├── <p>-node-1  eth0 10.92.0.11/16   nginx :30080  (/small, /big)
//!        └── <p>-node-2  eth0 10.92.0.12/16   nginx :30080
//! ```
//!
//! Contenders ([`Contender`]): `direct` (client -> node 1 through the lb
//! namespace's plain IP forwarding: the ceiling), the Portico edge, HAProxy
//! `mode tcp` with checks, nginx `stream`, and nftables DNAT + SNAT in the lb
//! namespace (the in-kernel ceiling). Workloads ([`Workload`]): kept-alive
//! requests, one request per connection, and the download of a large
//! page-cached file over one and over eight connections. Apart from those,
//! [`failover`] measures what clients see when node 2 dies under a stream of
//! new connections (`--workloads failover`).
//!
//! What makes the figures comparable (`/work/shared/docs/benchmarking.md`'s
//! traps): runs are interleaved (every contender once per round, per
//! workload) and ratios are taken within a round; each run gets fresh source
//! addresses on the client and on the balancer's node side, so no run meets
//! the previous run's TIME_WAIT sockets, and SYN retransmits are counted
//! anyway (a run with any is rejected); CPU steal is read from `/proc/stat`
//! and a run above [`BenchOptions::max_steal`] is rejected; rounds continue
//! (up to [`BenchOptions::max_rounds`]) until every pair has
//! [`BenchOptions::runs`] accepted runs. The balancer's CPU seconds come from
//! `/proc/<pid>/stat` before and after the load, its peak memory from
//! `VmHWM`. Every wait and every child process is bounded in time; the
//! namespaces are removed when the [`Bench`] is dropped.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::command::{self, pinned, raise_open_files, run, wait_bounded, CommandFailed};
use crate::netns::{self, ip_line, NetnsError};
use crate::procfs::{self, cpu_ticks, netstat_counter, ticks_to_seconds, ProcStat};
use crate::procs::{self, ProcError, Spawned};
use crate::stats::median;

pub use crate::command::installed;

pub mod failover;

pub use failover::{FailoverResult, FailoverSpec, HEALTH_PORT};

/// The VIP every balancer listens on (port [`VIP_PORT`]).
pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The VIP's port.
pub const VIP_PORT: u16 = 80;
/// The backends' port (a NodePort).
pub const NODE_PORT: u16 = 30080;
/// The backend nodes' addresses.
pub const NODES: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 92, 0, 11), Ipv4Addr::new(10, 92, 0, 12)];
/// The balancer's address towards the client.
const LB_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 91, 0, 1);
/// The client's first address.
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 91, 0, 2);
/// The balancer's first address towards the nodes.
const LB_NODE_SIDE: Ipv4Addr = Ipv4Addr::new(10, 92, 0, 1);
/// The roles of the bench's namespaces (`<prefix>-<role>`).
const ROLES: [&str; 4] = ["client", "lb", "node-1", "node-2"];
/// How long processes get to end on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Longest wait for a contender to answer through its VIP.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest an auxiliary command (`ip`, `nft`, `haproxy -v`) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

impl From<CommandFailed> for BenchError {
    fn from(e: CommandFailed) -> Self {
        BenchError::Command {
            command: e.command,
            reason: e.reason,
        }
    }
}

/// A benchmark failure.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A namespace or link operation failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A process could not be started or stopped.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A command failed or timed out.
    #[error("`{command}` failed: {reason}")]
    Command {
        /// The command line.
        command: String,
        /// What it said, or why it did not run.
        reason: String,
    },
    /// A contender never answered through its address.
    #[error("{contender} not ready within {limit:?}: {last}; log tail:\n{log}")]
    NotReady {
        /// Which.
        contender: Contender,
        /// How long it was given.
        limit: Duration,
        /// The last failure seen.
        last: String,
        /// The end of its log.
        log: String,
    },
    /// wrk's output had no result line.
    #[error("cannot read wrk's result from: {0}")]
    WrkOutput(String),
}

/// A balancer under test (or none, for `direct`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Contender {
    /// Client to node 1, forwarded by the lb namespace's kernel: the ceiling.
    Direct,
    /// `portico-edge run`, one worker thread.
    Portico,
    /// A second edge binary ([`BenchOptions::edge_bin_b`], say another
    /// branch), run the same way in the same rounds.
    PorticoB,
    /// HAProxy `mode tcp`, `check`, one thread, splice-auto, redispatch.
    Haproxy,
    /// nginx `stream`, one worker.
    Nginx,
    /// nftables DNAT + SNAT in the lb namespace, no health checks.
    Nftables,
}

impl Contender {
    /// Every contender, in report order.
    pub const ALL: [Contender; 6] = [
        Contender::Direct,
        Contender::Portico,
        Contender::PorticoB,
        Contender::Haproxy,
        Contender::Nginx,
        Contender::Nftables,
    ];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::Portico => "portico",
            Contender::PorticoB => "portico-b",
            Contender::Haproxy => "haproxy",
            Contender::Nginx => "nginx",
            Contender::Nftables => "nftables",
        }
    }

    /// The contender called `name`.
    pub fn parse(name: &str) -> Option<Contender> {
        Contender::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The program it needs that is not installed, if any.
    pub fn missing_program(self) -> Option<&'static str> {
        let program = match self {
            Contender::Direct | Contender::Portico | Contender::PorticoB => return None,
            Contender::Haproxy => "haproxy",
            Contender::Nginx => "nginx",
            Contender::Nftables => "nft",
        };
        (!installed(program)).then_some(program)
    }

    /// Where the client connects.
    fn target(self) -> SocketAddr {
        match self {
            Contender::Direct => SocketAddr::new(NODES[0].into(), NODE_PORT),
            _ => SocketAddr::new(VIP.into(), VIP_PORT),
        }
    }

    /// How many nodes must have answered before it counts as ready.
    fn nodes_reached(self) -> usize {
        match self {
            Contender::Direct => 1,
            _ => NODES.len(),
        }
    }
}

impl std::fmt::Display for Contender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

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

/// How to benchmark.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Namespace prefix: `<prefix>-client`, `-lb`, `-node-1`, `-node-2`.
    pub prefix: String,
    /// Configs, logs, the large file; removed at the end.
    pub state_dir: PathBuf,
    /// The `portico-edge` binary.
    pub edge_bin: PathBuf,
    /// The binary of [`Contender::PorticoB`].
    pub edge_bin_b: Option<PathBuf>,
    /// The contenders, in the order they run within a round.
    pub contenders: Vec<Contender>,
    /// The workloads.
    pub workloads: Vec<Workload>,
    /// Length of one run.
    pub duration: Duration,
    /// Accepted runs wanted per contender and workload.
    pub runs: usize,
    /// Rounds at most (rejected runs are made up in further rounds).
    pub max_rounds: usize,
    /// wrk's connections for the request workloads.
    pub connections: u32,
    /// CPU the load generator is pinned to (none: unpinned).
    pub client_cpu: Option<usize>,
    /// CPU the balancer is pinned to (none: unpinned).
    pub balancer_cpu: Option<usize>,
    /// CPUs the backend nginx servers are pinned to (none: unpinned).
    pub backend_cpus: Option<String>,
    /// Size of the large file, in MiB.
    pub big_file_mib: u64,
    /// A run whose share of CPU steal is above this is rejected.
    pub max_steal: f64,
    /// Record a `perf` profile of each Portico run into this directory.
    pub perf_dir: Option<PathBuf>,
    /// Measure failover too (after the workloads), this way.
    pub failover: Option<FailoverSpec>,
}

impl BenchOptions {
    /// The documented set-up: every contender and workload, 3 accepted runs
    /// of 10 s, wrk on CPU 0 and the balancer on CPU 1, a 100 MiB file.
    pub fn standard(prefix: &str, edge_bin: PathBuf) -> BenchOptions {
        BenchOptions {
            prefix: prefix.to_string(),
            state_dir: std::env::temp_dir().join(format!("{prefix}-state")),
            edge_bin,
            edge_bin_b: None,
            contenders: Contender::ALL
                .into_iter()
                .filter(|c| *c != Contender::PorticoB)
                .collect(),
            workloads: Workload::ALL.to_vec(),
            duration: Duration::from_secs(10),
            runs: 3,
            max_rounds: 5,
            connections: 50,
            client_cpu: Some(0),
            balancer_cpu: Some(1),
            backend_cpus: None,
            big_file_mib: 100,
            max_steal: 0.05,
            perf_dir: None,
            failover: None,
        }
    }
}

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

/// The namespaces, the backends and the state of one benchmark. Dropping it
/// stops every process in its namespaces and removes them.
pub struct Bench {
    opts: BenchOptions,
    backends: Vec<Spawned>,
    /// Runs so far, for fresh addresses.
    sequence: u32,
    wrk_script: PathBuf,
    removed: bool,
}

impl Bench {
    fn ns(&self, role: &str) -> String {
        namespace(&self.opts.prefix, role)
    }

    /// Builds the topology, writes the large file and starts the backends.
    /// Leftovers of an earlier bench with the same prefix are removed first.
    pub fn up(opts: BenchOptions) -> Result<Bench, BenchError> {
        down(&opts.prefix, &opts.state_dir)?;
        raise_open_files();
        let wrk_script = opts.state_dir.join("result.lua");
        let mut bench = Bench {
            opts,
            backends: Vec::new(),
            sequence: 0,
            wrk_script,
            removed: false,
        };
        // From here on an error drops `bench`, which removes everything.
        bench.build()?;
        Ok(bench)
    }

    fn build(&mut self) -> Result<(), BenchError> {
        for dir in ["logs", "run", "www"] {
            create_dir(&self.opts.state_dir.join(dir))?;
        }
        write(&self.wrk_script, WRK_SCRIPT)?;
        let (client, lb) = (self.ns("client"), self.ns("lb"));
        netns::add(&client)?;
        netns::add(&lb)?;
        for cmd in [
            format!("-n {lb} link add eth0 type veth peer name eth0 netns {client}"),
            format!("-n {lb} addr add {LB_CLIENT_SIDE}/16 dev eth0"),
            format!("-n {lb} addr add {VIP}/32 dev eth0"),
            format!("-n {lb} link set eth0 up"),
            format!("-n {client} addr add {CLIENT_IP}/16 dev eth0"),
            format!("-n {client} link set eth0 up"),
            format!("-n {client} route add default via {LB_CLIENT_SIDE}"),
            format!("-n {lb} link add br0 type bridge"),
            format!("-n {lb} addr add {LB_NODE_SIDE}/16 dev br0"),
            format!("-n {lb} link set br0 up"),
        ] {
            ip_line(&cmd)?;
        }
        // Forwarding inside the lb namespace only: `direct` and DNAT need it.
        set_sysctl(&lb, "net/ipv4/ip_forward", "1")?;
        // Whichever side closes a connection first keeps it in TIME_WAIT.
        // When that is the client (wrk closes as soon as a `Connection:
        // close` response is complete, before a balancer that forwards the
        // server's FIN late), tens of thousands of TIME_WAIT sockets make
        // every connect search the port range, and wrk's core, not the
        // balancer, sets the rate. Both connecting namespaces may reuse a
        // TIME_WAIT port for a new outgoing connection (safe with TCP
        // timestamps) from the whole range, so no contender is measured
        // through its client's port search.
        for ns in [&client, &lb] {
            set_sysctl(ns, "net/ipv4/tcp_tw_reuse", "1")?;
            set_sysctl(ns, "net/ipv4/ip_local_port_range", "1024 65535")?;
        }
        let big = self.opts.state_dir.join("www").join("big");
        write_big_file(&big, self.opts.big_file_mib)?;
        for (i, node_ip) in NODES.iter().enumerate() {
            let index = i + 1;
            let ns = self.ns(&format!("node-{index}"));
            netns::add(&ns)?;
            for cmd in [
                format!("-n {lb} link add n{index} type veth peer name eth0 netns {ns}"),
                format!("-n {lb} link set n{index} master br0 up"),
                format!("-n {ns} addr add {node_ip}/16 dev eth0"),
                format!("-n {ns} link set eth0 up"),
                format!("-n {ns} route add default via {LB_NODE_SIDE}"),
            ] {
                ip_line(&cmd)?;
            }
            let dir = self.opts.state_dir.join(format!("node-{index}"));
            create_dir(&dir.join("logs"))?;
            let conf = dir.join("nginx.conf");
            write(
                &conf,
                &backend_nginx_conf(&format!("node-{index}"), &dir, &self.opts.state_dir),
            )?;
            let (program, args) = pinned(
                self.opts.backend_cpus.as_deref(),
                "nginx",
                &[
                    "-p".into(),
                    format!("{}/", dir.display()),
                    "-c".into(),
                    conf.display().to_string(),
                    "-e".into(),
                    "stderr".into(),
                ],
            );
            self.backends.push(procs::spawn(
                &self.opts.state_dir,
                &format!("backend-node-{index}"),
                &ns,
                Path::new(&program),
                &args,
            )?);
        }
        for (i, node_ip) in NODES.iter().enumerate() {
            let target = SocketAddr::new((*node_ip).into(), NODE_PORT);
            let log = procs::log_path(&self.opts.state_dir, &format!("backend-node-{}", i + 1));
            self.wait_answers(&self.ns("client"), target, 1, || procs::log_tail(&log, 20))
                .map_err(|(last, log)| BenchError::NotReady {
                    contender: Contender::Direct,
                    limit: READY_TIMEOUT,
                    last: format!("backend node-{}: {last}", i + 1),
                    log,
                })?;
        }
        Ok(())
    }

    /// Waits until `nodes` distinct nodes answered `/small` at `target`.
    fn wait_answers(
        &self,
        ns: &str,
        target: SocketAddr,
        nodes: usize,
        log: impl Fn() -> String,
    ) -> Result<(), (String, String)> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut seen = std::collections::BTreeSet::new();
        let mut last = String::from("no attempt");
        while Instant::now() < deadline {
            match netns::in_netns(ns, || http_get_small(target)) {
                Ok(Ok(node)) => {
                    seen.insert(node);
                    if seen.len() >= nodes {
                        return Ok(());
                    }
                }
                Ok(Err(e)) => last = e,
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err((format!("{last} (nodes answered: {seen:?})"), log()))
    }

    /// Gives the client and the balancer's node side a fresh source address
    /// (trap 4: no run meets the previous run's TIME_WAIT sockets); returns
    /// the balancer's.
    fn fresh_sources(&mut self) -> Result<Ipv4Addr, BenchError> {
        self.sequence += 1;
        let s = self.sequence;
        let (hi, lo) = ((1 + s / 200) as u8, (10 + s % 200) as u8);
        let client_src = Ipv4Addr::new(10, 91, hi, lo);
        let lb_src = Ipv4Addr::new(10, 92, hi, lo);
        let (client, lb) = (self.ns("client"), self.ns("lb"));
        for cmd in [
            format!("-n {client} addr add {client_src}/16 dev eth0"),
            format!("-n {client} route replace default via {LB_CLIENT_SIDE} src {client_src}"),
            format!("-n {lb} addr add {lb_src}/16 dev br0"),
            format!("-n {lb} route replace 10.92.0.0/16 dev br0 src {lb_src}"),
        ] {
            ip_line(&cmd)?;
        }
        Ok(lb_src)
    }

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
            nft(&lb, &["delete", "table", "ip", "pbench"], None)?;
        }
        if let Some(p) = process.as_mut() {
            procs::stop_all(std::slice::from_ref(&lb), STOP_GRACE)?;
            if let Err(e) = p.child.wait() {
                tracing::warn!(process = %p.name, error = %e, "cannot reap a contender");
            }
        }
        result
    }

    fn start_contender(
        &self,
        contender: Contender,
        lb_src: Ipv4Addr,
        name: &str,
    ) -> Result<Option<Spawned>, BenchError> {
        let state = &self.opts.state_dir;
        let lb = self.ns("lb");
        let cpu = self.opts.balancer_cpu.map(|c| c.to_string());
        let (program, args) = match contender {
            Contender::Direct => return Ok(None),
            Contender::Nftables => {
                nft(&lb, &["-f", "-"], Some(&nftables_ruleset(lb_src)))?;
                return Ok(None);
            }
            Contender::Portico | Contender::PorticoB => {
                let conf = state.join(format!("{name}.yaml"));
                write(&conf, &portico_config())?;
                let socket = state.join("run").join(format!("{name}.sock"));
                let mut args = vec![
                    "run".to_string(),
                    "--config".into(),
                    conf.display().to_string(),
                    "--upgrade-socket".into(),
                    socket.display().to_string(),
                    "--threads".into(),
                    "1".into(),
                ];
                let bin = match (contender, &self.opts.edge_bin_b) {
                    (Contender::PorticoB, Some(b)) => b,
                    _ => &self.opts.edge_bin,
                };
                let edge = bin.display().to_string();
                args.insert(0, edge);
                let program = args.remove(0);
                pinned(cpu.as_deref(), &program, &args)
            }
            Contender::Haproxy => {
                let conf = state.join(format!("{name}.cfg"));
                write(&conf, &haproxy_conf())?;
                pinned(
                    cpu.as_deref(),
                    "haproxy",
                    &["-db".into(), "-f".into(), conf.display().to_string()],
                )
            }
            Contender::Nginx => {
                let dir = state.join(name);
                create_dir(&dir.join("logs"))?;
                let conf = dir.join("nginx.conf");
                write(&conf, &stream_nginx_conf(&dir))?;
                pinned(
                    cpu.as_deref(),
                    "nginx",
                    &[
                        "-p".into(),
                        format!("{}/", dir.display()),
                        "-c".into(),
                        conf.display().to_string(),
                        "-e".into(),
                        "stderr".into(),
                    ],
                )
            }
        };
        let spawned = procs::spawn(state, name, &lb, Path::new(&program), &args)?;
        Ok(Some(spawned))
    }

    fn measure(
        &self,
        contender: Contender,
        workload: Workload,
        round: usize,
        name: &str,
        process: Option<&Spawned>,
    ) -> Result<RunResult, BenchError> {
        let (client, lb) = (self.ns("client"), self.ns("lb"));
        let log = process.map(|p| p.log.clone());
        self.wait_answers(
            &client,
            contender.target(),
            contender.nodes_reached(),
            || {
                log.as_deref()
                    .map_or(String::new(), |l| procs::log_tail(l, 20))
            },
        )
        .map_err(|(last, log)| BenchError::NotReady {
            contender,
            limit: READY_TIMEOUT,
            last,
            log,
        })?;
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

    /// Runs wrk in the client namespace, pinned; its stdout.
    fn wrk(&self, contender: Contender, workload: Workload) -> Result<String, BenchError> {
        let target = contender.target();
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

    /// Stops everything and removes the namespaces and the state directory.
    pub fn teardown(&mut self) -> Result<(), BenchError> {
        self.removed = true;
        down(&self.opts.prefix, &self.opts.state_dir)?;
        for b in &mut self.backends {
            if let Err(e) = b.child.wait() {
                tracing::warn!(process = %b.name, error = %e, "cannot reap a backend");
            }
        }
        Ok(())
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = self.teardown() {
                tracing::error!(error = %e, prefix = %self.opts.prefix, "bench teardown failed");
            }
        }
    }
}

/// The namespace of `role` under `prefix`.
pub fn namespace(prefix: &str, role: &str) -> String {
    format!("{prefix}-{role}")
}

/// Removes every namespace of the bench `prefix` (stopping what runs in
/// them) and its state directory. Safe when nothing is there.
pub fn down(prefix: &str, state_dir: &Path) -> Result<(), BenchError> {
    procs::remove_namespaces(prefix, &ROLES, STOP_GRACE)?;
    if state_dir.exists() {
        fs::remove_dir_all(state_dir).map_err(|source| BenchError::File {
            path: state_dir.to_path_buf(),
            source,
        })?;
    }
    Ok(())
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

    /// The report's tables, in Markdown.
    pub fn markdown(&self) -> String {
        let contenders: Vec<Contender> = Contender::ALL
            .into_iter()
            .filter(|c| Workload::ALL.iter().any(|w| self.cell(*c, *w).is_some()))
            .collect();
        let mut out = String::new();
        out.push_str(
            "| contender | keep-alive req/s | new conn per request, req/s | 1 stream Gbit/s | 8 streams Gbit/s |\n|---|---|---|---|---|\n",
        );
        for c in &contenders {
            out.push_str(&format!("| {c} |"));
            for w in Workload::ALL {
                let text = self.cell(*c, w).map_or("-".to_string(), |cell| {
                    let figure = cell.figure.map_or("-".to_string(), |f| {
                        if w.is_stream() {
                            format!("{f:.2}")
                        } else {
                            format!("{:.1}k", f / 1000.0)
                        }
                    });
                    let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
                    format!(
                        "{figure} ({} / {}) n={}",
                        ratio(cell.vs_direct),
                        ratio(cell.vs_haproxy),
                        cell.runs
                    )
                });
                out.push_str(&format!(" {text} |"));
            }
            out.push('\n');
        }
        out.push_str("\n(ratio to direct / ratio to HAProxy, each the median of per-round ratios; n = accepted runs)\n\n");
        out.push_str("| contender | keep-alive p50 / p99 | new conn p50 / p99 | CPU us per kept-alive request | CPU us per new connection | CPU s per GB (1 stream / 8 streams) | peak RSS |\n|---|---|---|---|---|---|---|\n");
        let ms = |us: Option<f64>| us.map_or("-".to_string(), |u| format!("{:.2} ms", u / 1000.0));
        for c in &contenders {
            let cell = |w| self.cell(*c, w).cloned().unwrap_or_default();
            let (ka, nc, s1, s8) = (
                cell(Workload::KeepAlive),
                cell(Workload::NewConn),
                cell(Workload::Stream1),
                cell(Workload::Stream8),
            );
            let num = |v: Option<f64>, digits: usize| {
                v.map_or("-".to_string(), |v| format!("{v:.digits$}"))
            };
            let rss = [&ka, &nc, &s1, &s8]
                .iter()
                .filter_map(|c| c.peak_rss_kib)
                .max()
                .map_or("-".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
            out.push_str(&format!(
                "| {c} | {} / {} | {} / {} | {} | {} | {} / {} | {rss} |\n",
                ms(ka.p50_us),
                ms(ka.p99_us),
                ms(nc.p50_us),
                ms(nc.p99_us),
                num(ka.cost, 1),
                num(nc.cost, 1),
                num(s1.cost, 2),
                num(s8.cost, 2),
            ));
        }
        out
    }
}

/// wrk's `done()` hook: one machine-readable line (latency in us).
const WRK_SCRIPT: &str = r#"done = function(summary, latency, requests)
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

/// Each backend node: `/small` answers its name, `/big` is the large file;
/// kept-alive connections are never closed by a request count (trap 8). A
/// health server on [`HEALTH_PORT`] answers `/healthz` as kube-proxy's does,
/// so health checks never touch the NodePort.
fn backend_nginx_conf(node: &str, dir: &Path, state: &Path) -> String {
    let dir = dir.display();
    let www = state.join("www");
    let www = www.display();
    format!(
        "user root;
worker_processes 2;
worker_rlimit_nofile 20000;
daemon off;
pid {dir}/nginx.pid;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{
    listen {NODE_PORT} reuseport backlog=16384;
    location = /small {{ return 200 \"{node}\\n\"; }}
    location = /big {{ root {www}; }}
  }}
  server {{
    listen {HEALTH_PORT};
    location = /healthz {{ return 200 \"ok\\n\"; }}
  }}
}}
"
    )
}

/// HAProxy's documented set-up for a TCP balancer on one core: one thread,
/// active checks (1 s, fall 2, rise 2; HTTP `GET /healthz` on the nodes'
/// health port, as Portico's kube-proxy check), a failed connect retried
/// elsewhere (`option redispatch`), kernel splicing where it pays
/// (`splice-auto`).
fn haproxy_conf() -> String {
    let servers: String = NODES
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            format!(
                "  server node-{} {ip}:{NODE_PORT} check port {HEALTH_PORT} inter 1s fall 2 rise 2\n",
                i + 1
            )
        })
        .collect();
    format!(
        "global
  nbthread 1
  maxconn 7000
defaults
  mode tcp
  timeout connect 2s
  timeout client 1h
  timeout server 1h
  retries 2
  option redispatch
  option splice-auto
frontend vip
  bind {VIP}:{VIP_PORT}
  default_backend nodes
backend nodes
  balance roundrobin
  option httpchk GET /healthz
{servers}"
    )
}

/// nginx `stream` on one worker (passive health: a failed connect takes the
/// node out for 10 s and the next one is tried).
fn stream_nginx_conf(dir: &Path) -> String {
    let dir = dir.display();
    let servers: String = NODES
        .iter()
        .map(|ip| format!("    server {ip}:{NODE_PORT} max_fails=1 fail_timeout=10s;\n"))
        .collect();
    let module = "/usr/lib/nginx/modules/ngx_stream_module.so";
    let load = if Path::new(module).is_file() {
        format!("load_module {module};\n")
    } else {
        String::new()
    };
    format!(
        "{load}user root;
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid {dir}/nginx.pid;
events {{ worker_connections 16384; }}
stream {{
  upstream nodes {{
{servers}  }}
  server {{
    listen {VIP}:{VIP_PORT} backlog=16384;
    proxy_pass nodes;
    proxy_connect_timeout 2s;
    proxy_timeout 1h;
    proxy_next_upstream on;
  }}
}}
"
    )
}

/// The edge's config file: the two nodes, health checks on (kube-proxy's:
/// HTTP `GET /healthz` on the nodes' [`HEALTH_PORT`], as HAProxy's
/// `check`), same intervals as HAProxy.
pub fn portico_config() -> String {
    let nodes: String = NODES
        .iter()
        .enumerate()
        .map(|(i, ip)| format!("  - name: node-{}\n    addresses: [{ip}]\n", i + 1))
        .collect();
    format!(
        "settings:
  health:
    interval: 1s
    timeout: 500ms
    rise: 2
    fall: 2
    clusterCheck: kube-proxy
    kubeProxyPort: {HEALTH_PORT}
  proxy:
    connectTimeout: 2s
    connectRetries: 2
    drainTimeout: 1s
  metricsListen: 127.0.0.1:9720
  adminListen: 127.0.0.1:9721
nodes:
{nodes}services:
  - namespace: default
    name: bench
    vips: [{VIP}]
    ports:
      - name: http
        protocol: TCP
        port: {VIP_PORT}
        nodePort: {NODE_PORT}
"
    )
}

/// DNAT to the nodes in turn, SNAT to the run's fresh address.
fn nftables_ruleset(snat: Ipv4Addr) -> String {
    let map: Vec<String> = NODES
        .iter()
        .enumerate()
        .map(|(i, ip)| format!("{i} : {ip}"))
        .collect();
    let nodes: Vec<String> = NODES.iter().map(|ip| ip.to_string()).collect();
    format!(
        "table ip pbench {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {VIP} tcp dport {VIP_PORT} dnat to numgen inc mod {} map {{ {} }} : {NODE_PORT}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip daddr {{ {} }} tcp dport {NODE_PORT} ct status dnat snat to {snat}
  }}
}}
",
        NODES.len(),
        map.join(", "),
        nodes.join(", ")
    )
}

/// Runs `nft args` in namespace `ns`, bounded; its stdout.
fn nft(ns: &str, args: &[&str], stdin: Option<&str>) -> Result<String, BenchError> {
    Ok(command::run_in(ns, "nft", args, stdin, COMMAND_TIMEOUT)?)
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

/// GETs `/small` once; the node that answered.
fn http_get_small(target: SocketAddr) -> Result<String, String> {
    let timeout = Duration::from_secs(1);
    let mut s = TcpStream::connect_timeout(&target, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /small HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    if !answer.starts_with("HTTP/1.1 200") {
        return Err(format!("answer: {:?}", answer.lines().next()));
    }
    answer
        .split("\r\n\r\n")
        .nth(1)
        .map(|body| body.trim().to_string())
        .ok_or_else(|| "no body".to_string())
}

/// Writes `mib` MiB of a repeating pattern and reads it once (page cache).
fn write_big_file(path: &Path, mib: u64) -> Result<(), BenchError> {
    let err = |source| BenchError::File {
        path: path.to_path_buf(),
        source,
    };
    let chunk: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut f = fs::File::create(path).map_err(err)?;
    for _ in 0..mib.max(1) {
        f.write_all(&chunk).map_err(err)?;
    }
    drop(f);
    let mut sink = Vec::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut sink))
        .map_err(err)?;
    Ok(())
}

/// Sets `/proc/sys/<key>` inside namespace `ns` (these are per namespace).
fn set_sysctl(ns: &str, key: &str, value: &str) -> Result<(), BenchError> {
    let path = Path::new("/proc/sys").join(key);
    netns::in_netns(ns, || fs::write(&path, value))?.map_err(|source| BenchError::File {
        path: path.clone(),
        source,
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

/// Versions of the programs involved, one per line.
pub fn versions(edge_bin: &Path) -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    [
        format!("kernel {}", kernel.trim()),
        command::first_line(&edge_bin.display().to_string(), &["--version"]),
        command::first_line("haproxy", &["-v"]),
        command::first_line("nginx", &["-v"]),
        command::first_line("wrk", &["-v"]),
        command::first_line("nft", &["-V"]),
    ]
    .join("\n")
}

/// Reads `/proc/stat`.
fn read_proc_stat() -> Result<ProcStat, BenchError> {
    ProcStat::read().map_err(|source| BenchError::File {
        path: PathBuf::from(ProcStat::PATH),
        source,
    })
}

fn create_dir(path: &Path) -> Result<(), BenchError> {
    fs::create_dir_all(path).map_err(|source| BenchError::File {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, text: &str) -> Result<(), BenchError> {
    fs::write(path, text).map_err(|source| BenchError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// `portico-lab bench`'s arguments.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The `portico-edge` binary (default: next to this one).
    #[arg(long)]
    pub edge_bin: Option<PathBuf>,
    /// A second edge binary, run as contender `portico-b` right after `portico`.
    #[arg(long)]
    pub edge_bin_b: Option<PathBuf>,
    /// Contenders, in run order within a round (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,portico,haproxy,nginx,nftables"
    )]
    pub contenders: Vec<String>,
    /// Workloads (comma-separated): keepalive, newconn, stream1, stream8;
    /// `failover` adds the failover measurement (node 2's link down under a
    /// stream of new connections, per contender but direct).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "keepalive,newconn,stream1,stream8"
    )]
    pub workloads: Vec<String>,
    /// Seconds per run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Accepted runs wanted per contender and workload.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Rounds at most.
    #[arg(long, default_value_t = 5)]
    pub max_rounds: usize,
    /// wrk connections for the request workloads.
    #[arg(long, default_value_t = 50)]
    pub connections: u32,
    /// CPU for wrk; "none" leaves it unpinned.
    #[arg(long, default_value = "0")]
    pub client_cpu: String,
    /// CPU for the balancer; "none" leaves it unpinned.
    #[arg(long, default_value = "1")]
    pub balancer_cpu: String,
    /// CPUs for the backend nginx servers (taskset list); unpinned if absent.
    #[arg(long)]
    pub backend_cpus: Option<String>,
    /// Size of the large file, MiB.
    #[arg(long, default_value_t = 100)]
    pub big_file_mib: u64,
    /// Reject runs with more CPU steal than this share.
    #[arg(long, default_value_t = 0.05)]
    pub max_steal: f64,
    /// Record a perf profile of each Portico run into this directory.
    #[arg(long)]
    pub perf_dir: Option<PathBuf>,
    /// Failover measurements per contender (with `--workloads failover`).
    #[arg(long, default_value_t = 1)]
    pub failover_runs: usize,
    /// Namespace prefix.
    #[arg(long, default_value = "pbench")]
    pub prefix: String,
    /// Only remove what a bench with this prefix left behind.
    #[arg(long)]
    pub down: bool,
}

/// Runs `portico-lab bench`: prints each run as it ends, then the versions,
/// the pinning and the tables.
pub fn main(args: BenchArgs) -> std::process::ExitCode {
    use std::process::ExitCode;
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("portico-lab bench: {e}");
        ExitCode::FAILURE
    };
    let state_dir = std::env::temp_dir().join(format!("{}-state", args.prefix));
    if args.down {
        return match down(&args.prefix, &state_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    let edge_bin = match args.edge_bin.clone().map_or_else(
        || {
            std::env::current_exe()
                .map(|me| me.with_file_name("portico-edge"))
                .map_err(|e| e.to_string())
        },
        Ok,
    ) {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    let mut opts = BenchOptions::standard(&args.prefix, edge_bin);
    opts.state_dir = state_dir;
    let mut contenders = Vec::new();
    for name in &args.contenders {
        let Some(c) = Contender::parse(name) else {
            return fail(&format!("unknown contender {name:?}"));
        };
        if let Some(program) = c.missing_program() {
            eprintln!("SKIPPING {c}: {program} is not installed");
            continue;
        }
        contenders.push(c);
    }
    let mut workloads = Vec::new();
    for name in &args.workloads {
        if name == "failover" {
            opts.failover = Some(FailoverSpec {
                runs: args.failover_runs.max(1),
                ..FailoverSpec::standard()
            });
            continue;
        }
        match Workload::parse(name) {
            Some(w) => workloads.push(w),
            None => return fail(&format!("unknown workload {name:?}")),
        }
    }
    let cpu = |s: &str| -> Result<Option<usize>, String> {
        if s == "none" {
            return Ok(None);
        }
        s.parse().map(Some).map_err(|e| format!("CPU {s:?}: {e}"))
    };
    let (client_cpu, balancer_cpu) = match (cpu(&args.client_cpu), cpu(&args.balancer_cpu)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return fail(&e),
    };
    if let Some(b) = &args.edge_bin_b {
        if !contenders.contains(&Contender::PorticoB) {
            let at = contenders
                .iter()
                .position(|c| *c == Contender::Portico)
                .map_or(contenders.len(), |i| i + 1);
            contenders.insert(at, Contender::PorticoB);
        }
        opts.edge_bin_b = Some(b.clone());
    } else if contenders.contains(&Contender::PorticoB) {
        return fail(&"contender portico-b needs --edge-bin-b");
    }
    opts.contenders = contenders;
    opts.workloads = workloads;
    opts.duration = Duration::from_secs(args.seconds.max(1));
    opts.runs = args.runs.max(1);
    opts.max_rounds = args.max_rounds.max(opts.runs);
    opts.connections = args.connections.max(1);
    opts.client_cpu = client_cpu;
    opts.balancer_cpu = balancer_cpu;
    opts.backend_cpus = args.backend_cpus.clone();
    opts.big_file_mib = args.big_file_mib;
    opts.max_steal = args.max_steal;
    opts.perf_dir = args.perf_dir.clone();
    let b_version = opts
        .edge_bin_b
        .as_ref()
        .map_or(String::new(), |b| format!("portico-b: {}\n", b.display()));
    let header = format!(
        "portico: {}\n{b_version}{}\npinning: wrk on CPU {}, balancer on CPU {}, backends on {}\nload average at start: {}\n{} accepted runs of {} s wanted per pair, at most {} rounds; {} connections for request workloads; {} MiB file\n",
        opts.edge_bin.display(),
        versions(&opts.edge_bin),
        args.client_cpu,
        args.balancer_cpu,
        args.backend_cpus.as_deref().unwrap_or("any CPU"),
        fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        opts.runs,
        opts.duration.as_secs(),
        opts.max_rounds,
        opts.connections,
        opts.big_file_mib,
    );
    print!("{header}");
    let mut bench = match Bench::up(opts) {
        Ok(b) => b,
        Err(e) => return fail(&e),
    };
    let failover_spec = bench.opts.failover.clone();
    let results = run_all(&mut bench, |r| println!("{}", r.line())).and_then(|results| {
        let failovers = match &failover_spec {
            Some(spec) => failover::run_failovers(&mut bench, spec, |r| println!("{}", r.line()))?,
            None => Vec::new(),
        };
        Ok((results, failovers))
    });
    let teardown = bench.teardown();
    let (results, failovers) = match results {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if let Err(e) = teardown {
        return fail(&e);
    }
    println!(
        "\nload average at end: {}\n",
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    if !results.is_empty() {
        print!("{}", Summary::new(&results).markdown());
    }
    if let Some(spec) = &failover_spec {
        println!(
            "\n### Failover: node 2's link down at {} s for {} s under {} new connections/s (GET /small, {} s timeout; slow = above {} ms); the counter read every {} ms\n",
            spec.kill_at.as_secs_f64(),
            spec.down_for.as_secs_f64(),
            spec.rate,
            spec.timeout.as_secs_f64(),
            spec.slow.as_millis(),
            spec.poll.as_millis(),
        );
        print!("{}", failover::failover_markdown(&failovers));
        println!("\nnftables DNAT has no health check: it sends to the dead node until the link is back.\n");
        for r in &failovers {
            println!("{}", r.timeline_text());
        }
    }
    ExitCode::SUCCESS
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

    #[test]
    fn configs_name_both_nodes() {
        for text in [
            haproxy_conf(),
            stream_nginx_conf(Path::new("/x")),
            portico_config(),
            nftables_ruleset(Ipv4Addr::new(10, 92, 1, 10)),
        ] {
            for node in NODES {
                assert!(text.contains(&node.to_string()), "{text}");
            }
        }
    }
}
