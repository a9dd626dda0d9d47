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
//! With `--family ipv6` ([`BenchOptions::family`]) every address is its IPv6
//! twin ([`Addrs`]): `10.91.0.2/16` is `fd00:91::2/64`, `10.92.0.11` is
//! `fd00:92::11`, the VIP `203.0.113.10` is `2001:db8:113::10`, and each
//! contender is configured in that family; nothing else changes.
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
//! What makes the figures comparable (the usual benchmarking
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
//!
//! - [`topology`]: the namespaces, links and backends ([`Bench`]), fresh
//!   source addresses per run, teardown ([`down`]);
//! - [`contenders`]: each [`Contender`], its configuration and its start;
//! - [`workloads`]: each [`Workload`] and the load generator, wrk;
//! - [`measure`]: one run ([`RunResult`]) and the interleaved rounds
//!   ([`run_all`]);
//! - [`summary`]: medians and within-round ratios ([`Summary`]);
//! - [`report`]: the printed header and tables;
//! - [`cli`]: `portico-lab bench` ([`BenchArgs`], [`main`]);
//! - [`failover`]: the failover measurement.

pub mod cli;
pub mod contenders;
pub mod failover;
pub mod measure;
pub mod report;
pub mod summary;
pub mod topology;
pub mod workloads;

pub use crate::command::installed;
pub use cli::{main, BenchArgs};
pub use contenders::{portico_config, Contender};
pub use failover::{FailoverResult, FailoverSpec};
pub use measure::{run_all, RunResult};
pub use report::versions;
pub use summary::{Cell, Summary};
pub use topology::{down, namespace, Bench};
pub use workloads::{Workload, WrkResult};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use crate::command::CommandFailed;
use crate::netns::NetnsError;
use crate::procs::ProcError;

pub use portico_config::IpFamily;

/// The VIP every balancer listens on (port [`VIP_PORT`]); in IPv6, its
/// [`Addrs::twin`].
pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The VIP's port.
pub const VIP_PORT: u16 = 80;
/// The backends' port (a NodePort).
pub const NODE_PORT: u16 = 30080;
/// The backend nodes' addresses (IPv4; [`Addrs::nodes`] in either family).
pub const NODES: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 92, 0, 11), Ipv4Addr::new(10, 92, 0, 12)];
/// The balancer's address towards the client.
const LB_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 91, 0, 1);
/// The client's first address.
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 91, 0, 2);
/// The balancer's first address towards the nodes.
const LB_NODE_SIDE: Ipv4Addr = Ipv4Addr::new(10, 92, 0, 1);
/// The roles of the bench's namespaces (`<prefix>-<role>`).
const ROLES: [&str; 4] = ["client", "lb", "node-1", "node-2"];
/// The backends' health server (kube-proxy's `healthz` port): `/healthz`
/// answers 200. Portico and HAProxy check it; it is never the NodePort, so
/// probes do not show in the [`failover`] SYN counter.
pub const HEALTH_PORT: u16 = 10256;
/// How long processes get to end on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Longest wait for a contender to answer through its VIP.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest an auxiliary command (`ip`, `nft`, `haproxy -v`) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// The bench's addresses in one family: the IPv4 plan of the module docs,
/// or its IPv6 twin. Every address, prefix and family keyword the topology,
/// the contenders' configs and the load generator use comes from here (the
/// scale test's too: its `10.9x` addresses twin the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs(pub IpFamily);

impl Addrs {
    /// The family.
    pub fn family(self) -> IpFamily {
        self.0
    }

    /// The IPv6 twin of a bench address: `10.<b>.<h>.<l>` is
    /// `fd00:<b>::<h>:<l>` and `203.0.113.<d>` is `2001:db8:113::<d>`,
    /// the decimal digits read as hexadecimal groups so the twin reads like
    /// the original (`10.92.0.11` is `fd00:92::11`).
    pub fn twin(v4: Ipv4Addr) -> Ipv6Addr {
        let hex = crate::topology::decimal_as_hex;
        match v4.octets() {
            [10, b, h, l] => Ipv6Addr::new(0xfd00, hex(b), 0, 0, 0, 0, hex(h), hex(l)),
            [203, 0, 113, d] => Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, hex(d)),
            other => panic!("{other:?} is not a bench address with an IPv6 twin"),
        }
    }

    /// `v4` in this family: itself, or its [`Addrs::twin`].
    pub fn of(self, v4: Ipv4Addr) -> IpAddr {
        match self.0 {
            IpFamily::V4 => IpAddr::V4(v4),
            IpFamily::V6 => IpAddr::V6(Addrs::twin(v4)),
        }
    }

    /// The VIP.
    pub fn vip(self) -> IpAddr {
        self.of(VIP)
    }

    /// The backend nodes.
    pub fn nodes(self) -> [IpAddr; 2] {
        NODES.map(|ip| self.of(ip))
    }

    /// The prefix length of the client link and of the nodes' bridge
    /// (`/16`, `/64`).
    pub fn link_prefix(self) -> u8 {
        match self.0 {
            IpFamily::V4 => 16,
            IpFamily::V6 => 64,
        }
    }

    /// The prefix length of one address (the VIP): `/32`, `/128`.
    pub fn host_prefix(self) -> u8 {
        match self.0 {
            IpFamily::V4 => 32,
            IpFamily::V6 => 128,
        }
    }

    /// `ip addr add` of `ip` on a link of the bench: with its
    /// [`Addrs::link_prefix`], and in IPv6 without duplicate address
    /// detection, so it is usable at once.
    pub fn on_link(self, ip: IpAddr) -> String {
        self.with_prefix(ip, self.link_prefix())
    }

    /// `ip/prefix`, plus `nodad` in IPv6 (an `ip addr add` argument).
    pub fn with_prefix(self, ip: IpAddr, prefix: u8) -> String {
        match self.0 {
            IpFamily::V4 => format!("{ip}/{prefix}"),
            IpFamily::V6 => format!("{ip}/{prefix} nodad"),
        }
    }

    /// The nodes' network (`10.92.0.0/16`, `fd00:92::/64`).
    pub fn node_net(self) -> String {
        match self.0 {
            IpFamily::V4 => "10.92.0.0/16".to_string(),
            IpFamily::V6 => "fd00:92::/64".to_string(),
        }
    }

    /// The metric of the route the kernel adds for a link's prefix (0 in
    /// IPv4, 256 in IPv6): a route replacing it must carry the same.
    pub fn link_route_metric(self) -> u32 {
        match self.0 {
            IpFamily::V4 => 0,
            IpFamily::V6 => 256,
        }
    }

    /// The unspecified address (a server listening on every address).
    pub fn any(self) -> IpAddr {
        match self.0 {
            IpFamily::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpFamily::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }

    /// The forwarding sysctl (under `/proc/sys`).
    pub fn forwarding_sysctl(self) -> &'static str {
        match self.0 {
            IpFamily::V4 => "net/ipv4/ip_forward",
            IpFamily::V6 => "net/ipv6/conf/all/forwarding",
        }
    }

    /// nftables' word for the family: the table family, the header match
    /// (`ip daddr`, `ip6 daddr`) and the NAT family (`dnat ip to`).
    pub fn nft(self) -> &'static str {
        match self.0 {
            IpFamily::V4 => "ip",
            IpFamily::V6 => "ip6",
        }
    }

    /// nftables' type of an address of the family (in a set).
    pub fn nft_addr_type(self) -> &'static str {
        match self.0 {
            IpFamily::V4 => "ipv4_addr",
            IpFamily::V6 => "ipv6_addr",
        }
    }

    /// The family's name on the command line.
    pub fn flag(self) -> &'static str {
        match self.0 {
            IpFamily::V4 => "ipv4",
            IpFamily::V6 => "ipv6",
        }
    }

    /// The family called `name` on the command line (`ipv4`, `ipv6`).
    pub fn parse(name: &str) -> Option<Addrs> {
        [IpFamily::V4, IpFamily::V6]
            .into_iter()
            .map(Addrs)
            .find(|a| a.flag() == name)
    }
}

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
    /// The family of every address of the topology.
    pub family: IpFamily,
}

impl BenchOptions {
    /// The documented set-up: every contender and workload, 3 accepted runs
    /// of 10 s, wrk on CPU 0 and the balancer on CPU 1, a 100 MiB file, IPv4.
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
            family: IpFamily::V4,
        }
    }

    /// The addresses of [`BenchOptions::family`].
    pub fn addrs(&self) -> Addrs {
        Addrs(self.family)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_address_has_an_ipv6_twin() {
        let v6 = Addrs(IpFamily::V6);
        assert_eq!(v6.vip().to_string(), "2001:db8:113::10");
        assert_eq!(
            v6.nodes().map(|ip| ip.to_string()),
            ["fd00:92::11", "fd00:92::12"]
        );
        assert_eq!(v6.of(CLIENT_IP).to_string(), "fd00:91::2");
        assert_eq!(
            v6.of(Ipv4Addr::new(10, 91, 2, 199)).to_string(),
            "fd00:91::2:199"
        );
        assert_eq!(v6.on_link(v6.of(LB_NODE_SIDE)), "fd00:92::1/64 nodad");
        let v4 = Addrs(IpFamily::V4);
        assert_eq!(v4.vip(), IpAddr::V4(VIP));
        assert_eq!(v4.on_link(v4.of(LB_NODE_SIDE)), "10.92.0.1/16");
        assert_eq!(Addrs::parse("ipv6"), Some(v6));
        assert_eq!(Addrs::parse("ipv4").map(Addrs::flag), Some("ipv4"));
        assert_eq!(Addrs::parse("v6"), None);
    }
}
