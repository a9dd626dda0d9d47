//! The scale benchmark: N LoadBalancer Services x 3 TCP ports against the
//! edge, with HAProxy doing the same job as the reference on the same
//! machine in the same run.
//!
//! ```text
//!   <p>-client  eth0 10.93.0.2/16           the prober (bounded concurrency)
//!        │
//!   <p>-lb      eth0 10.93.0.1/16 + VIPs 10.95.0.1.. (one per Service)
//!               br0  10.94.0.1/16            the contender, pinned to one CPU
//!        ├── <p>-api     eth0 10.94.0.5/16   portico-lab api-server :6443
//!        ├── <p>-node-1  eth0 10.94.0.11/16  every nodePort -> one server
//!        └── <p>-node-2  eth0 10.94.0.12/16  (nft redirect), + :10256/healthz
//! ```
//!
//! With `--family ipv6` ([`ScaleOptions::family`]) every address is its IPv6
//! twin, as in the bench ([`Addrs`]): `10.94.0.11` is `fd00:94::11`, the VIPs
//! `10.95.0.1..` are `fd00:95::1..`, the Services ask for IPv6 only and the
//! Nodes register an IPv6 InternalIP.
//!
//! Each node redirects the whole nodePort range ([`NODE_PORT_RANGE`]) to one
//! listener, which answers every request with `<node> <nodePort>` (the port
//! read back with `SO_ORIGINAL_DST`), so a changed nodePort is observable
//! from the client. The node servers run on threads of this process, inside
//! the node namespaces.
//!
//! Portico: the real `portico-edge` with `settings.kubernetes` against the
//! API server (run as the lab runs it, in a namespace of its own so neither
//! its memory nor its CPU is counted), VIPs from an address pool on the lb
//! namespace's `eth0`. Each Service asks for its address
//! (`portico.io/load-balancer-ips`), so the prober knows the VIPs up front.
//!
//! HAProxy: the same frontends in a generated config (`mode tcp`, both nodes,
//! their state tracked from one `httpchk GET /healthz` per node on :10256,
//! as the edge checks kube-proxy once per node), one thread, master-worker;
//! changes by rewriting the config and `SIGUSR2` to the master. Its VIPs are
//! put on `eth0` beforehand (untimed): HAProxy does not manage addresses.
//!
//! Figures ([`Figures`]): set-up time warm (Portico: Services created on a
//! running edge; HAProxy: reload from an empty config) and cold (process start
//! with everything present), until every VIP:port answered with the right
//! nodePort; CPU seconds of the warm set-up; VmRSS and VmHWM empty and loaded
//! (-> KiB per Service); time from a change (API write returned / config
//! written) to the first connection that sees it. [`markdown`] renders both
//! with their ratio. Every wait is bounded; the namespaces are removed when
//! the [`Scale`] is dropped, and `portico-lab scale --down` removes what a
//! killed run left.
//!
//! - [`topology`]: the namespaces, the API server and the nodes ([`Scale`]),
//!   teardown ([`down`]);
//! - [`node_server`]: each node's one server behind the nodePort redirect;
//! - [`cluster`]: the Services and Nodes created, and the nodePort changes;
//! - [`probe`]: the prober (every VIP:port, until each answers right);
//! - [`portico`], [`haproxy`]: each contender's config, process and
//!   measurement ([`Scale::run_portico`], [`Scale::run_haproxy`]);
//! - [`figures`]: what is measured ([`Figures`]);
//! - [`report`]: the header and the table ([`markdown`]);
//! - [`cli`]: `portico-lab scale` ([`ScaleArgs`], [`main`]).

pub mod cli;
pub mod cluster;
pub mod figures;
pub mod haproxy;
pub mod node_server;
pub mod portico;
pub mod probe;
pub mod report;
pub mod topology;

pub use cli::{main, ScaleArgs};
pub use cluster::{
    change_target, changed_node_port, node_object, node_ports, ports_json, service_name,
    service_object, vip,
};
pub use figures::{per_service_kib, quantiles, Figures, Mem, Quantiles};
pub use haproxy::haproxy_config;
pub use node_server::node_ruleset;
pub use portico::{metric_value, portico_config};
pub use probe::parse_answer;
pub use report::{header, markdown};
pub use topology::{down, Scale};

use std::net::{Ipv4Addr, SocketAddr};

pub use crate::bench::{Addrs, IpFamily};
use std::path::PathBuf;
use std::time::Duration;

use crate::api::ApiClientError;
use crate::command::CommandFailed;
use crate::netns::NetnsError;
use crate::procs::ProcError;

/// The Service ports every Service has (TCP).
pub const PORTS: [u16; 3] = [80, 443, 8080];
/// Their names.
const PORT_NAMES: [&str; 3] = ["http", "https", "alt"];
/// The first nodePort handed out: Service `i`'s port `p` gets
/// `NODE_PORT_BASE + 3 i + p` (distinct, and outside the default range so
/// the API server never allocates one of them itself).
pub const NODE_PORT_BASE: u16 = 20000;
/// The nodePorts the nodes answer on (redirected to [`NODE_SERVER_PORT`]).
pub const NODE_PORT_RANGE: (u16, u16) = (20000, 29999);
/// Where the node server really listens.
pub const NODE_SERVER_PORT: u16 = 9000;
/// How long a probe waits for its connect (all of it on veths between
/// namespaces of one machine).
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_millis(100);

/// kube-proxy's node health port (`/healthz`).
pub const HEALTH_PORT: u16 = 10256;
/// The most Services: the pool's size.
pub const MAX_SERVICES: usize = 1022;
/// The address pool's first and last address in IPv4 (1022 addresses;
/// Service `i` asks for [`vip`]`(i)`); [`pool`] in either family.
pub const POOL: (Ipv4Addr, Ipv4Addr) = (Ipv4Addr::new(10, 95, 0, 1), Ipv4Addr::new(10, 95, 3, 254));

/// The address pool in the family of `addrs`: [`POOL`], or the range of
/// its twins (which holds every twin of a VIP).
pub fn pool(addrs: Addrs) -> String {
    format!("{}-{}", addrs.of(POOL.0), addrs.of(POOL.1))
}

/// The prefix holding every VIP in the family of `addrs`, to flush them.
fn vip_prefix(addrs: Addrs) -> &'static str {
    match addrs.family() {
        IpFamily::V4 => "10.95.0.0/22",
        IpFamily::V6 => "fd00:95::/64",
    }
}
/// The backend nodes.
pub const NODES: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 94, 0, 11), Ipv4Addr::new(10, 94, 0, 12)];
const LB_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 93, 0, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 93, 0, 2);
const LB_NODE_SIDE: Ipv4Addr = Ipv4Addr::new(10, 94, 0, 1);
const API_IP: Ipv4Addr = Ipv4Addr::new(10, 94, 0, 5);
const API_PORT: u16 = 6443;
/// The edge's metrics and admin addresses (inside the lb namespace).
const EDGE_METRICS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9730);
const EDGE_ADMIN_PORT: u16 = 9731;
/// HAProxy's always-present listener (it refuses to start with none).
const HAPROXY_IDLE_PORT: u16 = 9799;
const STOP_GRACE: Duration = Duration::from_secs(10);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a change may take to be followed.
const CHANGE_LIMIT: Duration = Duration::from_secs(30);
/// How often a change is polled for.
const CHANGE_POLL: Duration = Duration::from_millis(5);
/// Namespace roles.
const ROLES: [&str; 5] = ["client", "lb", "api", "node-1", "node-2"];
/// The Services' Kubernetes namespace.
const KUBE_NS: &str = "default";

impl From<CommandFailed> for ScaleError {
    fn from(e: CommandFailed) -> Self {
        ScaleError::Command {
            command: e.command,
            reason: e.reason,
        }
    }
}

/// A scale benchmark failure.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    /// A namespace or link operation failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A process could not be started or stopped.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// The API server refused a request.
    #[error(transparent)]
    Api(#[from] ApiClientError),
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
    /// Something did not happen in time.
    #[error("{what} not within {limit:?}: {detail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it was given.
        limit: Duration,
        /// The last state seen, and log tails.
        detail: String,
    },
    /// The node server could not start.
    #[error("node server {node}: {source}")]
    NodeServer {
        /// Which node.
        node: String,
        /// Why.
        source: std::io::Error,
    },
}

/// How to run.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    /// Namespace prefix.
    pub prefix: String,
    /// Configs, logs, kubeconfig; removed at the end.
    pub state_dir: PathBuf,
    /// `portico-edge`.
    pub edge_bin: PathBuf,
    /// `portico-lab` (for its `api-server`).
    pub lab_bin: PathBuf,
    /// Services (each with [`PORTS`]).
    pub services: usize,
    /// Changes measured per contender.
    pub changes: usize,
    /// CPU the contender is pinned to.
    pub balancer_cpu: Option<usize>,
    /// Probes in flight at most.
    pub concurrency: usize,
    /// Longest any set-up may take.
    pub setup_limit: Duration,
    /// Copy the processes' logs here before the state directory goes.
    pub keep_logs: Option<PathBuf>,
    /// The family of every address of the topology.
    pub family: IpFamily,
}

impl ScaleOptions {
    /// 1,000 Services, 20 changes, the contender on CPU 1, 32 probes in
    /// flight, IPv4.
    pub fn standard(prefix: &str, edge_bin: PathBuf, lab_bin: PathBuf) -> ScaleOptions {
        ScaleOptions {
            prefix: prefix.to_string(),
            state_dir: std::env::temp_dir().join(format!("{prefix}-state")),
            edge_bin,
            lab_bin,
            services: 1000,
            changes: 20,
            balancer_cpu: Some(1),
            concurrency: 32,
            setup_limit: Duration::from_secs(300),
            keep_logs: None,
            family: IpFamily::V4,
        }
    }

    /// The addresses of [`ScaleOptions::family`].
    pub fn addrs(&self) -> Addrs {
        Addrs(self.family)
    }
}

/// Runs both contenders; the figures.
pub fn run(opts: ScaleOptions) -> Result<(Figures, Figures), ScaleError> {
    let mut scale = Scale::up(opts)?;
    let portico = scale.run_portico();
    let haproxy = match &portico {
        Ok(_) => scale.run_haproxy(),
        Err(_) => Ok(Figures::default()),
    };
    let teardown = scale.teardown();
    let both = (portico?, haproxy?);
    teardown?;
    Ok(both)
}
