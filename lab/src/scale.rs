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

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::{self, ApiClient, ApiClientError};
use crate::command::{self, raise_open_files, CommandFailed};
use crate::netns::{self, ip_line, NetnsError};
use crate::procfs::{self, ticks_to_seconds, ticks_with_children};
use crate::procs::{self, ProcError, Spawned};
use crate::stats;
use crate::sync::lock;

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
/// The address pool (1022 addresses; Service `i` asks for [`vip`]`(i)`).
pub const POOL: &str = "10.95.0.1-10.95.3.254";
/// The VIPs' prefix, to flush them.
const VIP_PREFIX: &str = "10.95.0.0/22";
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

// ----- pure parts -----------------------------------------------------------

/// Service `i`'s VIP (`i` < [`MAX_SERVICES`]).
pub fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 95, 0, 0)) + 1 + i as u32)
}

/// Service `i`'s initial nodePorts.
pub fn node_ports(i: usize) -> [u16; 3] {
    let base = NODE_PORT_BASE as usize + 3 * i;
    [base as u16, (base + 1) as u16, (base + 2) as u16]
}

/// The nodePort change `k` moves to: above every initial one.
pub fn changed_node_port(services: usize, k: usize) -> u16 {
    (NODE_PORT_BASE as usize + 3 * services + k) as u16
}

/// Which Service and which of its ports change `k` of `repeats` touches:
/// spread over the Services, cycling through the ports.
pub fn change_target(services: usize, repeats: usize, k: usize) -> (usize, usize) {
    (
        (k * services) / repeats.max(1) % services.max(1),
        k % PORTS.len(),
    )
}

/// Service `i`'s name.
pub fn service_name(i: usize) -> String {
    format!("svc-{i:04}")
}

/// Service `i` as `kubectl apply` would create it: type LoadBalancer of the
/// edge's class, Cluster policy, three TCP ports with the given nodePorts,
/// its VIP requested by annotation.
pub fn service_object(i: usize, node_ports: [u16; 3]) -> Value {
    let name = service_name(i);
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": KUBE_NS,
            "annotations": {"portico.io/load-balancer-ips": vip(i).to_string()},
        },
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": "portico.io/edge",
            "selector": {"app": name},
            "externalTrafficPolicy": "Cluster",
            "ports": ports_json(node_ports),
        },
    })
}

/// The `spec.ports` list with the given nodePorts.
pub fn ports_json(node_ports: [u16; 3]) -> Value {
    Value::Array(
        (0..PORTS.len())
            .map(|p| {
                json!({
                    "name": PORT_NAMES[p],
                    "protocol": "TCP",
                    "port": PORTS[p],
                    "targetPort": 8080,
                    "nodePort": node_ports[p],
                })
            })
            .collect(),
    )
}

/// Node `k` (0-based) as its kubelet registers it.
pub fn node_object(k: usize) -> Value {
    let name = format!("node-{}", k + 1);
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": NODES[k].to_string()},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

/// The edge's config: the Kubernetes watch, VIPs on `eth0`, the pool, the
/// lab's health settings (kube-proxy's `/healthz` on :10256).
pub fn portico_config(kubeconfig: &Path) -> String {
    format!(
        "# Written by portico-lab scale.
settings:
  health:
    interval: 1s
    timeout: 500ms
    rise: 2
    fall: 2
    kubeProxyPort: {HEALTH_PORT}
  proxy:
    connectTimeout: 1s
    connectRetries: 2
    drainTimeout: 1s
  vip:
    interface: eth0
  metricsListen: {EDGE_METRICS}
  adminListen: 127.0.0.1:{EDGE_ADMIN_PORT}
  kubernetes:
    kubeconfig: {}
  addressPools:
    - name: scale
      addresses: [{POOL}]
",
        kubeconfig.display()
    )
}

/// HAProxy doing the edge's job for `services` (each Service's nodePorts):
/// one `listen` per VIP:port to both nodes, whose state tracks one
/// `httpchk GET /healthz` per node (kube-proxy's health server, as the edge
/// checks it); one thread.
pub fn haproxy_config(services: &[[u16; 3]]) -> String {
    let mut out = String::with_capacity(200 + services.len() * 600);
    out.push_str(
        "global
  nbthread 1
  maxconn 6000
defaults
  mode tcp
  timeout connect 1s
  timeout client 1h
  timeout server 1h
  retries 2
  option redispatch
backend health
  option httpchk GET /healthz
",
    );
    for (k, ip) in NODES.iter().enumerate() {
        out.push_str(&format!(
            "  server node-{} {ip}:{HEALTH_PORT} check inter 1s fall 2 rise 2\n",
            k + 1
        ));
    }
    out.push_str(&format!(
        "listen idle\n  bind 127.0.0.1:{HAPROXY_IDLE_PORT}\n"
    ));
    for (i, ports) in services.iter().enumerate() {
        for (p, node_port) in ports.iter().enumerate() {
            out.push_str(&format!(
                "listen s{i}-{port}\n  bind {vip}:{port}\n  balance roundrobin\n",
                port = PORTS[p],
                vip = vip(i)
            ));
            for (k, ip) in NODES.iter().enumerate() {
                out.push_str(&format!(
                    "  server node-{n} {ip}:{node_port} track health/node-{n}\n",
                    n = k + 1
                ));
            }
        }
    }
    out
}

/// Each node's redirect of the whole nodePort range to its one server.
pub fn node_ruleset() -> String {
    let (lo, hi) = NODE_PORT_RANGE;
    format!(
        "table ip pscale {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    tcp dport {lo}-{hi} redirect to :{NODE_SERVER_PORT}
  }}
}}
"
    )
}

/// A node server's answer body: `<node> <port>`.
pub fn parse_answer(body: &str) -> Option<(String, u16)> {
    let mut it = body.split_whitespace();
    let node = it.next()?.to_string();
    let port = it.next()?.parse().ok()?;
    Some((node, port))
}

/// The value of an unlabelled metric in Prometheus text.
pub fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

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

/// The report: versions and setup, then one table.
pub fn markdown(header: &str, services: usize, portico: &Figures, haproxy: &Figures) -> String {
    let mut out = String::new();
    out.push_str(header);
    out.push('\n');
    out.push_str(&format!(
        "{services} Services x {} TCP ports = {} VIP:ports\n\n",
        PORTS.len(),
        services * PORTS.len()
    ));
    out.push_str("| figure | Portico | HAProxy | Portico / HAProxy |\n|---|---|---|---|\n");
    let secs = |d: Duration| d.as_secs_f64();
    let mut row = |name: &str, a: Option<f64>, b: Option<f64>, digits: usize, unit: &str| {
        let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.digits$}{unit}"));
        let ratio = match (a, b) {
            (Some(a), Some(b)) if b.abs() > 1e-12 => format!("{:.2}", a / b),
            _ => "-".to_string(),
        };
        out.push_str(&format!(
            "| {name} | {} | {} | {ratio} |\n",
            cell(a),
            cell(b)
        ));
    };
    row(
        "API writes of all Services",
        portico.api_writes.map(secs),
        None,
        2,
        " s",
    );
    row(
        "warm set-up: all answer (HAProxy: reload from empty)",
        Some(secs(portico.warm)),
        Some(secs(haproxy.warm)),
        2,
        " s",
    );
    row(
        "warm set-up: first answers",
        Some(secs(portico.warm_first)),
        Some(secs(haproxy.warm_first)),
        2,
        " s",
    );
    row(
        "warm set-up: metrics count all listeners",
        portico.warm_listeners.map(secs),
        None,
        2,
        " s",
    );
    row(
        "cold start: all answer",
        Some(secs(portico.cold)),
        Some(secs(haproxy.cold)),
        2,
        " s",
    );
    row(
        "cold start: first answers",
        Some(secs(portico.cold_first)),
        Some(secs(haproxy.cold_first)),
        2,
        " s",
    );
    row(
        "CPU during warm set-up (with reaped children: `ip`, old workers)",
        Some(portico.warm_cpu_s),
        Some(haproxy.warm_cpu_s),
        2,
        " s",
    );
    row(
        "CPU from start to all answering (cold)",
        Some(portico.cold_cpu_s),
        Some(haproxy.cold_cpu_s),
        2,
        " s",
    );
    let mib = |k: u64| Some(k as f64 / 1024.0);
    row(
        "VmRSS, no Service",
        mib(portico.mem_empty.rss_kib),
        mib(haproxy.mem_empty.rss_kib),
        1,
        " MiB",
    );
    row(
        "VmRSS, all Services (warm, after a probe pass)",
        mib(portico.mem_warm.rss_kib),
        mib(haproxy.mem_warm.rss_kib),
        1,
        " MiB",
    );
    row(
        "VmRSS, all Services (cold, after a probe pass)",
        mib(portico.mem_cold.rss_kib),
        mib(haproxy.mem_cold.rss_kib),
        1,
        " MiB",
    );
    row(
        "VmHWM, all Services (cold)",
        mib(portico.mem_cold.hwm_kib),
        mib(haproxy.mem_cold.hwm_kib),
        1,
        " MiB",
    );
    let per = |f: &Figures, m: Mem, hwm: bool| {
        let (e, l) = if hwm {
            (f.mem_empty.hwm_kib, m.hwm_kib)
        } else {
            (f.mem_empty.rss_kib, m.rss_kib)
        };
        Some(per_service_kib(e, l, services))
    };
    row(
        "RSS per Service (warm - empty) / N",
        per(portico, portico.mem_warm, false),
        per(haproxy, haproxy.mem_warm, false),
        1,
        " KiB",
    );
    row(
        "RSS per Service (cold - empty) / N",
        per(portico, portico.mem_cold, false),
        per(haproxy, haproxy.mem_cold, false),
        1,
        " KiB",
    );
    row(
        "HWM per Service (cold - empty) / N",
        per(portico, portico.mem_cold, true),
        per(haproxy, haproxy.mem_cold, true),
        1,
        " KiB",
    );
    let q = |f: &Figures| {
        quantiles(
            &f.changes
                .iter()
                .map(|d| d.as_secs_f64() * 1000.0)
                .collect::<Vec<_>>(),
        )
    };
    let (qa, qb) = (q(portico), q(haproxy));
    row(
        &format!(
            "change -> traffic, median (n = {} / {})",
            portico.changes.len(),
            haproxy.changes.len()
        ),
        qa.map(|q| q.median),
        qb.map(|q| q.median),
        1,
        " ms",
    );
    row(
        "change -> traffic, p90",
        qa.map(|q| q.p90),
        qb.map(|q| q.p90),
        1,
        " ms",
    );
    row(
        "change -> traffic, max",
        qa.map(|q| q.max),
        qb.map(|q| q.max),
        1,
        " ms",
    );
    row(
        "failed connections while polling changes",
        Some(portico.change_errors as f64),
        Some(haproxy.change_errors as f64),
        0,
        "",
    );
    row(
        "VIP:ports answering right in the last pass",
        Some(portico.answered as f64),
        Some(haproxy.answered as f64),
        0,
        "",
    );
    out
}

// ----- options and the run ----------------------------------------------------

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
}

impl ScaleOptions {
    /// 1,000 Services, 20 changes, the contender on CPU 1, 32 probes in flight.
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
        }
    }
}

/// A VIP:port and the nodePort that must answer it.
#[derive(Debug, Clone, Copy)]
struct Target {
    addr: SocketAddr,
    node_port: u16,
}

/// The namespaces, the API server and the node servers. Dropping it stops
/// everything and removes the namespaces.
pub struct Scale {
    opts: ScaleOptions,
    api_server: Option<Spawned>,
    node_servers: Vec<NodeServer>,
    /// Each Service's current nodePorts.
    ports: Vec<[u16; 3]>,
    removed: bool,
}

impl Scale {
    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.opts.prefix)
    }

    /// Builds the topology and starts the node servers and the API server.
    pub fn up(opts: ScaleOptions) -> Result<Scale, ScaleError> {
        down(&opts.prefix, &opts.state_dir)?;
        raise_open_files();
        let services = opts.services.clamp(1, MAX_SERVICES);
        let mut scale = Scale {
            ports: (0..services).map(node_ports).collect(),
            opts,
            api_server: None,
            node_servers: Vec::new(),
            removed: false,
        };
        scale.opts.services = services;
        scale.build()?;
        Ok(scale)
    }

    fn build(&mut self) -> Result<(), ScaleError> {
        for dir in ["logs", "run"] {
            create_dir(&self.opts.state_dir.join(dir))?;
        }
        let (client, lb, api) = (self.ns("client"), self.ns("lb"), self.ns("api"));
        for ns in [&client, &lb] {
            netns::add(ns)?;
        }
        for cmd in [
            format!("-n {lb} link add eth0 type veth peer name eth0 netns {client}"),
            format!("-n {lb} addr add {LB_CLIENT_SIDE}/16 dev eth0"),
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
        let mut leaves: Vec<(String, String, Ipv4Addr)> = vec![(api.clone(), "api".into(), API_IP)];
        for (k, ip) in NODES.iter().enumerate() {
            leaves.push((
                self.ns(&format!("node-{}", k + 1)),
                format!("n{}", k + 1),
                *ip,
            ));
        }
        for (ns, link, ip) in &leaves {
            netns::add(ns)?;
            for cmd in [
                format!("-n {lb} link add {link} type veth peer name eth0 netns {ns}"),
                format!("-n {lb} link set {link} master br0 up"),
                format!("-n {ns} addr add {ip}/16 dev eth0"),
                format!("-n {ns} link set eth0 up"),
                format!("-n {ns} route add default via {LB_NODE_SIDE}"),
            ] {
                ip_line(&cmd)?;
            }
        }
        for k in 0..NODES.len() {
            let ns = self.ns(&format!("node-{}", k + 1));
            run_in(&ns, "nft", &["-f", "-"], Some(&node_ruleset()))?;
            let name = format!("node-{}", k + 1);
            self.node_servers.push(NodeServer::start(&ns, &name)?);
        }
        // Every node answers on a nodePort before anything else starts.
        for (k, ip) in NODES.iter().enumerate() {
            let target = SocketAddr::new((*ip).into(), NODE_PORT_BASE);
            let got = netns::in_netns(&lb, || probe(target))?;
            match got {
                Ok((node, port)) if node == format!("node-{}", k + 1) && port == NODE_PORT_BASE => {
                }
                other => {
                    return Err(ScaleError::Timeout {
                        what: format!("node-{} answering its nodePorts", k + 1),
                        limit: Duration::ZERO,
                        detail: format!("{other:?}"),
                    })
                }
            }
        }
        let state = self.opts.state_dir.display().to_string();
        let api_addr = SocketAddr::new(API_IP.into(), API_PORT);
        self.api_server = Some(procs::spawn(
            &self.opts.state_dir,
            "api-server",
            &api,
            &self.opts.lab_bin,
            &[
                "api-server".into(),
                "--listen".into(),
                api_addr.to_string(),
                "--state-dir".into(),
                state,
            ],
        )?);
        let kubeconfig = self.opts.state_dir.join(api::KUBECONFIG);
        let client = self.api();
        let log = procs::log_path(&self.opts.state_dir, "api-server");
        wait_until("the API server", Duration::from_secs(20), || {
            if !kubeconfig.is_file() {
                return Err(format!(
                    "no kubeconfig yet; log: {}",
                    procs::log_tail(&log, 10)
                ));
            }
            client
                .get("/version")
                .map(|_| ())
                .map_err(|e| e.to_string())
        })?;
        for k in 0..NODES.len() {
            client.create("/api/v1/nodes", &node_object(k))?;
        }
        Ok(())
    }

    fn api(&self) -> ApiClient {
        ApiClient::new(&self.ns("api"), SocketAddr::new(API_IP.into(), API_PORT))
    }

    fn targets(&self) -> Vec<Target> {
        self.ports
            .iter()
            .enumerate()
            .flat_map(|(i, ports)| {
                ports.iter().enumerate().map(move |(p, np)| Target {
                    addr: SocketAddr::new(vip(i).into(), PORTS[p]),
                    node_port: *np,
                })
            })
            .collect()
    }

    fn pinned(&self, program: &str, args: &[String]) -> (String, Vec<String>) {
        let cpu = self.opts.balancer_cpu.map(|c| c.to_string());
        command::pinned(cpu.as_deref(), program, args)
    }

    /// Stops whatever runs in the lb namespace and removes the VIPs from
    /// its `eth0`.
    fn stop_contender(&self, process: Option<Spawned>) -> Result<(), ScaleError> {
        let lb = self.ns("lb");
        procs::stop_all(std::slice::from_ref(&lb), STOP_GRACE)?;
        if let Some(mut p) = process {
            if let Err(e) = p.child.wait() {
                tracing::warn!(process = %p.name, error = %e, "cannot reap a contender");
            }
        }
        ip_line(&format!("-n {lb} addr flush dev eth0 to {VIP_PREFIX}"))?;
        Ok(())
    }

    fn start_edge(&self, name: &str) -> Result<Spawned, ScaleError> {
        let conf = self.opts.state_dir.join("edge.yaml");
        write(
            &conf,
            &portico_config(&self.opts.state_dir.join(api::KUBECONFIG)),
        )?;
        let socket = self.opts.state_dir.join("run").join(format!("{name}.sock"));
        let (program, args) = self.pinned(
            &self.opts.edge_bin.display().to_string(),
            &[
                "run".into(),
                "--config".into(),
                conf.display().to_string(),
                "--upgrade-socket".into(),
                socket.display().to_string(),
                "--threads".into(),
                "1".into(),
            ],
        );
        Ok(procs::spawn(
            &self.opts.state_dir,
            name,
            &self.ns("lb"),
            Path::new(&program),
            &args,
        )?)
    }

    fn edge_metrics(&self) -> Result<String, String> {
        let (code, body) = netns::in_netns(&self.ns("lb"), || {
            api::http_exchange(EDGE_METRICS, "GET", "/metrics", None)
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        if code != 200 {
            return Err(format!("/metrics answered {code}"));
        }
        Ok(body)
    }

    /// Probes every target until each answered with its nodePort; the times
    /// of the first and of the last first answer. `between` runs after
    /// every pass.
    fn probe_all(
        &self,
        since: Instant,
        what: &str,
        log: &Path,
        mut between: impl FnMut() + Send,
    ) -> Result<(Duration, Duration), ScaleError> {
        let targets = self.targets();
        let limit = self.opts.setup_limit;
        let concurrency = self.opts.concurrency.max(1);
        let outcome = netns::in_netns(&self.ns("client"), || {
            let answered: Vec<Mutex<Option<Instant>>> =
                targets.iter().map(|_| Mutex::new(None)).collect();
            let mut pending: Vec<usize> = (0..targets.len()).collect();
            let mut last_error = String::new();
            while !pending.is_empty() {
                if since.elapsed() > limit {
                    let t = targets[pending[0]];
                    return Err(format!(
                        "{} of {} VIP:ports never answered right (first: {} wanting {}; last error: {last_error})",
                        pending.len(),
                        targets.len(),
                        t.addr,
                        t.node_port
                    ));
                }
                let next = AtomicUsize::new(0);
                let error = Mutex::new(String::new());
                std::thread::scope(|s| {
                    for _ in 0..concurrency.min(pending.len()) {
                        s.spawn(|| loop {
                            let j = next.fetch_add(1, Ordering::Relaxed);
                            let Some(&i) = pending.get(j) else { break };
                            let t = targets[i];
                            match probe(t.addr) {
                                Ok((_, port)) if port == t.node_port => {
                                    *lock(&answered[i]) = Some(Instant::now());
                                }
                                Ok((node, port)) => {
                                    *lock(&error) =
                                        format!("{} answered by {node} port {port}", t.addr)
                                }
                                Err(e) => *lock(&error) = format!("{}: {e}", t.addr),
                            }
                        });
                    }
                });
                last_error = lock(&error).clone();
                pending.retain(|i| lock(&answered[*i]).is_none());
                between();
                if !pending.is_empty() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let times: Vec<Instant> = answered.iter().filter_map(|a| *lock(a)).collect();
            let at = |t: Option<&Instant>| {
                t.map_or(Duration::ZERO, |t| t.saturating_duration_since(since))
            };
            Ok((at(times.iter().min()), at(times.iter().max())))
        })?;
        outcome.map_err(|detail| ScaleError::Timeout {
            what: what.to_string(),
            limit,
            detail: format!("{detail}; log tail:\n{}", procs::log_tail(log, 30)),
        })
    }

    /// One pass over every target; how many answered right.
    fn check_pass(&self) -> Result<usize, ScaleError> {
        let targets = self.targets();
        let concurrency = self.opts.concurrency.max(1);
        Ok(netns::in_netns(&self.ns("client"), || {
            let next = AtomicUsize::new(0);
            let ok = AtomicUsize::new(0);
            std::thread::scope(|s| {
                for _ in 0..concurrency {
                    s.spawn(|| loop {
                        let j = next.fetch_add(1, Ordering::Relaxed);
                        let Some(t) = targets.get(j) else { break };
                        if matches!(probe(t.addr), Ok((_, p)) if p == t.node_port) {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            });
            ok.load(Ordering::Relaxed)
        })?)
    }

    /// Polls `target` every [`CHANGE_POLL`] from `since` until it answers
    /// with `node_port`; the time taken and the failed connections.
    fn follow(
        &self,
        target: SocketAddr,
        node_port: u16,
        since: Instant,
        log: &Path,
    ) -> Result<(Duration, usize), ScaleError> {
        let got = netns::in_netns(&self.ns("client"), || {
            let mut errors = 0;
            let mut last = String::new();
            while since.elapsed() < CHANGE_LIMIT {
                match probe(target) {
                    Ok((_, p)) if p == node_port => return Ok((since.elapsed(), errors)),
                    Ok((node, p)) => last = format!("{node} {p}"),
                    Err(e) => {
                        errors += 1;
                        last = e;
                    }
                }
                std::thread::sleep(CHANGE_POLL);
            }
            Err(last)
        })?;
        got.map_err(|last| ScaleError::Timeout {
            what: format!("{target} following nodePort {node_port}"),
            limit: CHANGE_LIMIT,
            detail: format!(
                "last answer: {last}; log tail:\n{}",
                procs::log_tail(log, 30)
            ),
        })
    }

    /// The whole Portico measurement.
    pub fn run_portico(&mut self) -> Result<Figures, ScaleError> {
        let mut f = Figures::default();
        let n = self.opts.services;
        let edge = self.start_edge("edge-warm")?;
        let pid = edge.child.id() as i32;
        let log = edge.log.clone();
        let result = (|| -> Result<(), ScaleError> {
            wait_until("the edge's metrics", Duration::from_secs(30), || {
                self.edge_metrics().map(|_| ())
            })?;
            std::thread::sleep(Duration::from_secs(2));
            f.mem_empty = mem(&[pid]);
            let cpu_before = cpu_ticks(&[pid]);
            let api = self.api();
            let path = format!("/api/v1/namespaces/{KUBE_NS}/services");
            let started = Instant::now();
            for (i, ports) in self.ports.iter().enumerate() {
                api.create(&path, &service_object(i, *ports))?;
            }
            f.api_writes = Some(started.elapsed());
            let want = (n * PORTS.len()) as f64;
            let mut listeners_at: Option<Duration> = None;
            (f.warm_first, f.warm) =
                self.probe_all(started, "warm set-up (Portico)", &log, || {
                    if listeners_at.is_none() {
                        if let Ok(m) = self.edge_metrics() {
                            if metric_value(&m, "portico_edge_listeners").is_some_and(|v| v >= want)
                            {
                                listeners_at = Some(started.elapsed());
                            }
                        }
                    }
                })?;
            f.warm_cpu_s = ticks_to_seconds(cpu_ticks(&[pid]).saturating_sub(cpu_before));
            if listeners_at.is_none() {
                let m = self.edge_metrics().unwrap_or_default();
                if metric_value(&m, "portico_edge_listeners").is_some_and(|v| v >= want) {
                    listeners_at = Some(started.elapsed());
                }
            }
            f.warm_listeners = listeners_at;
            f.answered = self.check_pass()?;
            f.mem_warm = mem(&[pid]);
            for k in 0..self.opts.changes {
                let (i, p) = change_target(n, self.opts.changes, k);
                let new = changed_node_port(n, k);
                let mut ports = self.ports[i];
                ports[p] = new;
                let patch = json!({"spec": {"ports": ports_json(ports)}});
                api.merge_patch(&format!("{path}/{}", service_name(i)), &patch)?;
                let since = Instant::now();
                let (took, errors) =
                    self.follow(SocketAddr::new(vip(i).into(), PORTS[p]), new, since, &log)?;
                self.ports[i] = ports;
                f.changes.push(took);
                f.change_errors += errors;
            }
            Ok(())
        })();
        self.stop_contender(Some(edge))?;
        result?;
        // Cold: everything is in the API server already.
        let started = Instant::now();
        let edge = self.start_edge("edge-cold")?;
        let pid = edge.child.id() as i32;
        let log = edge.log.clone();
        let result = (|| -> Result<(), ScaleError> {
            (f.cold_first, f.cold) =
                self.probe_all(started, "cold start (Portico)", &log, || {})?;
            f.cold_cpu_s = ticks_to_seconds(cpu_ticks(&[pid]));
            let answered = self.check_pass()?;
            f.answered = f.answered.min(answered);
            f.mem_cold = mem(&[pid]);
            Ok(())
        })();
        self.stop_contender(Some(edge))?;
        result?;
        Ok(f)
    }

    fn start_haproxy(&self, conf: &Path, name: &str) -> Result<Spawned, ScaleError> {
        let (program, args) = self.pinned(
            "haproxy",
            &[
                "-W".into(),
                "-db".into(),
                "-f".into(),
                conf.display().to_string(),
            ],
        );
        Ok(procs::spawn(
            &self.opts.state_dir,
            name,
            &self.ns("lb"),
            Path::new(&program),
            &args,
        )?)
    }

    /// HAProxy's processes (master and workers) in the lb namespace.
    fn haproxy_pids(&self) -> Result<Vec<i32>, ScaleError> {
        Ok(netns::pids(&self.ns("lb"))?
            .into_iter()
            .filter(|p| {
                fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "haproxy")
            })
            .collect())
    }

    /// Waits until HAProxy's master logged `loads` successful loads and runs
    /// one worker (a reload signalled before the master finished the last one
    /// can be lost).
    fn haproxy_settled(&self, log: &Path, loads: usize) -> Result<Vec<i32>, ScaleError> {
        let mut pids = Vec::new();
        wait_until(
            "HAProxy: loaded, one master, one worker",
            Duration::from_secs(30),
            || {
                pids = self.haproxy_pids().map_err(|e| e.to_string())?;
                let loaded = fs::read_to_string(log)
                    .unwrap_or_default()
                    .matches("Loading success")
                    .count();
                if pids.len() == 2 && loaded >= loads {
                    Ok(())
                } else {
                    Err(format!(
                        "{} processes, {loaded} of {loads} loads; log: {}",
                        pids.len(),
                        procs::log_tail(log, 10)
                    ))
                }
            },
        )?;
        // The master's signal handling is set up just after its log line.
        std::thread::sleep(Duration::from_millis(200));
        Ok(pids)
    }

    /// The whole HAProxy measurement.
    pub fn run_haproxy(&mut self) -> Result<Figures, ScaleError> {
        let mut f = Figures::default();
        let n = self.opts.services;
        let lb = self.ns("lb");
        // Its VIPs, as the edge's would be: /32 on eth0 (untimed).
        let batch: String = (0..n)
            .map(|i| format!("addr add {}/32 dev eth0\n", vip(i)))
            .collect();
        run_in(&lb, "ip", &["-batch", "-"], Some(&batch))?;
        let conf = self.opts.state_dir.join("haproxy.cfg");
        let initial: Vec<[u16; 3]> = (0..n).map(node_ports).collect();
        self.ports = initial.clone();
        write(&conf, &haproxy_config(&[]))?;
        let master = self.start_haproxy(&conf, "haproxy-warm")?;
        let master_pid = master.child.id() as i32;
        let log = master.log.clone();
        let result = (|| -> Result<(), ScaleError> {
            let pids = self.haproxy_settled(&log, 1)?;
            std::thread::sleep(Duration::from_secs(2));
            f.mem_empty = mem(&pids);
            let before = per_pid_ticks(&pids);
            let started = Instant::now();
            write(&conf, &haproxy_config(&self.ports))?;
            signal(master_pid, nix::sys::signal::Signal::SIGUSR2)?;
            (f.warm_first, f.warm) =
                self.probe_all(started, "warm set-up (HAProxy reload)", &log, || {})?;
            f.warm_cpu_s = ticks_to_seconds(ticks_since(&before, &self.haproxy_pids()?));
            let pids = self.haproxy_settled(&log, 2)?;
            f.answered = self.check_pass()?;
            f.mem_warm = mem(&pids);
            for k in 0..self.opts.changes {
                let (i, p) = change_target(n, self.opts.changes, k);
                let new = changed_node_port(n, k);
                let mut ports = self.ports.clone();
                ports[i][p] = new;
                let since = Instant::now();
                write(&conf, &haproxy_config(&ports))?;
                signal(master_pid, nix::sys::signal::Signal::SIGUSR2)?;
                let (took, errors) =
                    self.follow(SocketAddr::new(vip(i).into(), PORTS[p]), new, since, &log)?;
                self.ports = ports;
                f.changes.push(took);
                f.change_errors += errors;
                // The reload ends and the old worker leaves before the next change.
                self.haproxy_settled(&log, 3 + k)?;
            }
            Ok(())
        })();
        procs::stop_all(std::slice::from_ref(&lb), STOP_GRACE)?;
        let mut master = master;
        if let Err(e) = master.child.wait() {
            tracing::warn!(error = %e, "cannot reap HAProxy");
        }
        result?;
        let started = Instant::now();
        let master = self.start_haproxy(&conf, "haproxy-cold")?;
        let log = master.log.clone();
        let result = (|| -> Result<(), ScaleError> {
            (f.cold_first, f.cold) =
                self.probe_all(started, "cold start (HAProxy)", &log, || {})?;
            let pids = self.haproxy_pids()?;
            f.cold_cpu_s = ticks_to_seconds(cpu_ticks(&pids));
            let answered = self.check_pass()?;
            f.answered = f.answered.min(answered);
            f.mem_cold = mem(&self.haproxy_settled(&log, 1)?);
            Ok(())
        })();
        self.stop_contender(Some(master))?;
        // Back to the Services' state in the API server for a later run.
        self.ports = initial;
        result?;
        Ok(f)
    }

    /// Stops everything and removes the namespaces and the state directory.
    pub fn teardown(&mut self) -> Result<(), ScaleError> {
        self.removed = true;
        for s in &self.node_servers {
            s.stop();
        }
        if let Some(dir) = &self.opts.keep_logs {
            if let Err(e) = copy_logs(&self.opts.state_dir.join("logs"), dir) {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot keep the logs");
            }
        }
        let result = down(&self.opts.prefix, &self.opts.state_dir);
        if let Some(mut api) = self.api_server.take() {
            if let Err(e) = api.child.wait() {
                tracing::warn!(error = %e, "cannot reap the API server");
            }
        }
        for s in self.node_servers.drain(..) {
            s.join();
        }
        result
    }
}

impl Drop for Scale {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = self.teardown() {
                tracing::error!(error = %e, prefix = %self.opts.prefix, "scale teardown failed");
            }
        }
    }
}

/// Removes every namespace of the scale run `prefix` (stopping what runs
/// in them) and its state directory. Safe when nothing is there.
pub fn down(prefix: &str, state_dir: &Path) -> Result<(), ScaleError> {
    procs::remove_namespaces(prefix, &ROLES, STOP_GRACE)?;
    if state_dir.exists() {
        fs::remove_dir_all(state_dir).map_err(|source| ScaleError::File {
            path: state_dir.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

// ----- the node server ----------------------------------------------------------

/// A node's server: threads of this process inside the node's namespace,
/// answering every connection (nodePorts redirected, and :10256) with
/// `HTTP/1.1 200` and `<node> <port>`.
struct NodeServer {
    stop: Arc<AtomicBool>,
    listeners: Vec<TcpListener>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl NodeServer {
    fn start(ns: &str, node: &str) -> Result<NodeServer, ScaleError> {
        let err = |source| ScaleError::NodeServer {
            node: node.to_string(),
            source,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let bound = netns::in_netns(ns, || -> std::io::Result<Vec<TcpListener>> {
            Ok(vec![
                TcpListener::bind(("0.0.0.0", NODE_SERVER_PORT))?,
                TcpListener::bind(("0.0.0.0", HEALTH_PORT))?,
            ])
        })?
        .map_err(err)?;
        let mut listeners = Vec::new();
        let mut threads = Vec::new();
        for l in bound {
            listeners.push(l.try_clone().map_err(err)?);
            let (stop, node) = (stop.clone(), node.to_string());
            threads.push(std::thread::spawn(move || {
                for conn in l.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let node = node.clone();
                    std::thread::spawn(move || answer(conn, &node));
                }
            }));
        }
        Ok(NodeServer {
            stop,
            listeners,
            threads,
        })
    }

    /// Makes the accept loops end (shutdown wakes a blocked `accept`).
    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for l in &self.listeners {
            let how = nix::sys::socket::Shutdown::Both;
            if let Err(e) = nix::sys::socket::shutdown(l.as_raw_fd(), how) {
                tracing::debug!(error = %e, "shutting a node listener down");
            }
        }
    }

    fn join(self) {
        for t in self.threads {
            if t.join().is_err() {
                tracing::warn!("a node server thread panicked");
            }
        }
    }
}

/// Reads the request head (bounded), answers `200` with `<node> <port>`.
fn answer(mut conn: TcpStream, node: &str) {
    let port = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::OriginalDst)
        .map(|a| u16::from_be(a.sin_port))
        .or_else(|_| conn.local_addr().map(|a| a.port()))
        .unwrap_or(0);
    if conn.set_read_timeout(Some(Duration::from_secs(2))).is_err() {
        return;
    }
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => head.extend_from_slice(&buf[..k]),
        }
    }
    let body = format!("{node} {port}\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = conn.write_all(response.as_bytes()) {
        tracing::debug!(error = %e, "answering a probe");
    }
}

/// One request through `target`: the node and nodePort that answered.
///
/// The connect gives up after [`PROBE_CONNECT_TIMEOUT`]: a VIP the edge has
/// not added yet drops the SYN (HAProxy's pre-added VIPs refuse it at once),
/// and waiting out a full second there would make that second the
/// resolution of every set-up time.
fn probe(target: SocketAddr) -> Result<(String, u16), String> {
    let timeout = Duration::from_secs(1);
    let mut s =
        TcpStream::connect_timeout(&target, PROBE_CONNECT_TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: scale\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or_else(|| format!("no answer ({} bytes)", text.len()))?;
    parse_answer(body).ok_or_else(|| format!("answer {body:?}"))
}

// ----- processes, memory, CPU -----------------------------------------------------

fn wait_until(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) -> Result<(), ScaleError> {
    let deadline = Instant::now() + limit;
    loop {
        let last = match check() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(ScaleError::Timeout {
                what: what.to_string(),
                limit,
                detail: last,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) -> Result<(), ScaleError> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).map_err(|e| ScaleError::Command {
        command: format!("kill -{sig} {pid}"),
        reason: e.to_string(),
    })
}

fn mem(pids: &[i32]) -> Mem {
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
fn cpu_ticks(pids: &[i32]) -> u64 {
    pids.iter().filter_map(|p| ticks_with_children(*p)).sum()
}

fn per_pid_ticks(pids: &[i32]) -> BTreeMap<i32, u64> {
    pids.iter()
        .filter_map(|p| Some((*p, ticks_with_children(*p)?)))
        .collect()
}

/// CPU ticks of `now` since `before` (a process new since then counts whole).
fn ticks_since(before: &BTreeMap<i32, u64>, now: &[i32]) -> u64 {
    now.iter()
        .filter_map(|p| {
            Some(ticks_with_children(*p)?.saturating_sub(before.get(p).copied().unwrap_or(0)))
        })
        .sum()
}

/// Runs `program args` in namespace `ns` with `stdin`, bounded; its stdout.
fn run_in(
    ns: &str,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, ScaleError> {
    Ok(command::run_in(ns, program, args, stdin, COMMAND_TIMEOUT)?)
}

/// Copies every file of `from` into `to` (created).
fn copy_logs(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

fn create_dir(path: &Path) -> Result<(), ScaleError> {
    fs::create_dir_all(path).map_err(|source| ScaleError::File {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, text: &str) -> Result<(), ScaleError> {
    // Written whole, then renamed: a reload never reads half a config.
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|source| ScaleError::File {
            path: path.to_path_buf(),
            source,
        })
}

/// Versions, commit, pinning and load: the report's header.
pub fn header(opts: &ScaleOptions) -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let commit = command::first_line("git", &["rev-parse", "HEAD"]);
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    format!(
        "commit {commit}{}\nkernel {}\n{}\n{}\ncontender pinned to CPU {}; {} changes per contender; {} probes in flight; load average {}\n",
        if dirty { " (dirty)" } else { "" },
        kernel.trim(),
        command::first_line(&opts.edge_bin.display().to_string(), &["--version"]),
        command::first_line("haproxy", &["-v"]),
        opts.balancer_cpu
            .map_or("none".to_string(), |c| c.to_string()),
        opts.changes,
        opts.concurrency,
        fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    )
}

/// `portico-lab scale`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// The `portico-edge` binary (default: next to this one).
    #[arg(long)]
    pub edge_bin: Option<PathBuf>,
    /// LoadBalancer Services, each with 3 TCP ports (at most 1022).
    #[arg(long, default_value_t = 1000)]
    pub services: usize,
    /// nodePort changes measured per contender.
    #[arg(long, default_value_t = 20)]
    pub changes: usize,
    /// CPU for the contender; "none" leaves it unpinned.
    #[arg(long, default_value = "1")]
    pub balancer_cpu: String,
    /// Probes in flight at most.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Longest one set-up may take, seconds.
    #[arg(long, default_value_t = 300)]
    pub setup_timeout_secs: u64,
    /// Copy the edge's, HAProxy's and the API server's logs here.
    #[arg(long)]
    pub keep_logs: Option<PathBuf>,
    /// Namespace prefix.
    #[arg(long, default_value = "pscale")]
    pub prefix: String,
    /// Only remove what a run with this prefix left behind.
    #[arg(long)]
    pub down: bool,
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

/// Runs `portico-lab scale`: prints the header, then the table.
pub fn main(args: ScaleArgs) -> std::process::ExitCode {
    use std::process::ExitCode;
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("portico-lab scale: {e}");
        ExitCode::FAILURE
    };
    let state_dir = std::env::temp_dir().join(format!("{}-state", args.prefix));
    if args.down {
        return match down(&args.prefix, &state_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    let me = match std::env::current_exe() {
        Ok(me) => me,
        Err(e) => return fail(&e),
    };
    let edge_bin = args
        .edge_bin
        .clone()
        .unwrap_or_else(|| me.with_file_name("portico-edge"));
    if !command::installed("haproxy") {
        return fail(&"haproxy is not installed");
    }
    let mut opts = ScaleOptions::standard(&args.prefix, edge_bin, me);
    opts.state_dir = state_dir;
    opts.services = args.services.clamp(1, MAX_SERVICES);
    opts.changes = args.changes.max(1);
    opts.concurrency = args.concurrency.max(1);
    opts.setup_limit = Duration::from_secs(args.setup_timeout_secs.max(10));
    opts.keep_logs = args.keep_logs.clone();
    opts.balancer_cpu = if args.balancer_cpu == "none" {
        None
    } else {
        match args.balancer_cpu.parse() {
            Ok(c) => Some(c),
            Err(e) => return fail(&format!("CPU {:?}: {e}", args.balancer_cpu)),
        }
    };
    let header = header(&opts);
    print!("{header}");
    let services = opts.services;
    match run(opts) {
        Ok((portico, haproxy)) => {
            println!();
            print!("{}", markdown("", services, &portico, &haproxy));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vips_and_node_ports_are_distinct_and_in_range() {
        assert_eq!(vip(0), Ipv4Addr::new(10, 95, 0, 1));
        assert_eq!(vip(255), Ipv4Addr::new(10, 95, 1, 0));
        assert_eq!(vip(MAX_SERVICES - 1), Ipv4Addr::new(10, 95, 3, 254));
        assert_eq!(node_ports(0), [20000, 20001, 20002]);
        assert_eq!(node_ports(999), [22997, 22998, 22999]);
        assert_eq!(changed_node_port(1000, 0), 23000);
        assert_eq!(changed_node_port(1000, 19), 23019);
        assert!(changed_node_port(MAX_SERVICES, 100) <= NODE_PORT_RANGE.1);
        let targets: std::collections::BTreeSet<(usize, usize)> =
            (0..20).map(|k| change_target(1000, 20, k)).collect();
        assert_eq!(targets.len(), 20);
        assert_eq!(change_target(1000, 20, 1), (50, 1));
        assert_eq!(change_target(20, 3, 2), (13, 2));
    }

    #[test]
    fn the_service_object_asks_for_its_vip_and_ports() {
        let s = service_object(7, node_ports(7));
        assert_eq!(s["metadata"]["name"], "svc-0007");
        assert_eq!(
            s["metadata"]["annotations"]["portico.io/load-balancer-ips"],
            "10.95.0.8"
        );
        assert_eq!(s["spec"]["type"], "LoadBalancer");
        assert_eq!(s["spec"]["loadBalancerClass"], "portico.io/edge");
        let ports = s["spec"]["ports"].as_array().unwrap();
        assert_eq!(ports.len(), 3);
        assert_eq!(ports[1]["port"], 443);
        assert_eq!(ports[1]["nodePort"], 20022);
        assert_eq!(ports[2]["name"], "alt");
        let n = node_object(1);
        assert_eq!(n["status"]["addresses"][0]["address"], "10.94.0.12");
    }

    #[test]
    fn the_haproxy_config_has_every_frontend_tracking_both_nodes() {
        let text = haproxy_config(&[node_ports(0), [20003, 20004, 23000]]);
        assert_eq!(text.matches("\nlisten s").count(), 6);
        assert!(text.contains("listen s1-8080\n  bind 10.95.0.2:8080\n"));
        assert!(text.contains("  server node-2 10.94.0.12:23000 track health/node-2\n"));
        assert!(text.contains("  server node-1 10.94.0.11:20000 track health/node-1\n"));
        assert!(text.contains("  server node-1 10.94.0.11:10256 check inter 1s fall 2 rise 2\n"));
        assert!(text.contains("option httpchk GET /healthz"));
        assert!(text.contains("nbthread 1"));
        let empty = haproxy_config(&[]);
        assert!(empty.contains("listen idle\n  bind 127.0.0.1:9799\n"));
        assert!(!empty.contains("listen s"));
    }

    #[test]
    fn the_node_ruleset_redirects_the_node_port_range() {
        assert!(node_ruleset().contains("tcp dport 20000-29999 redirect to :9000"));
    }

    #[test]
    fn answers_and_metrics_parse() {
        assert_eq!(
            parse_answer("node-2 20017\n"),
            Some(("node-2".to_string(), 20017))
        );
        assert_eq!(parse_answer("node-2"), None);
        assert_eq!(parse_answer("node-2 x"), None);
        let m = "# HELP portico_edge_listeners x\nportico_edge_listeners_total 9\nportico_edge_listeners 3000\n";
        assert_eq!(metric_value(m, "portico_edge_listeners"), Some(3000.0));
        assert_eq!(metric_value(m, "portico_edge_missing"), None);
    }

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

    #[test]
    fn the_table_gives_both_figures_and_their_ratio() {
        let portico = Figures {
            api_writes: Some(Duration::from_millis(1500)),
            warm: Duration::from_secs(4),
            warm_first: Duration::from_millis(500),
            cold_first: Duration::from_millis(400),
            warm_listeners: Some(Duration::from_secs(3)),
            cold: Duration::from_secs(2),
            warm_cpu_s: 1.0,
            cold_cpu_s: 0.5,
            mem_empty: Mem {
                rss_kib: 10_240,
                hwm_kib: 10_240,
            },
            mem_warm: Mem {
                rss_kib: 30_720,
                hwm_kib: 40_960,
            },
            mem_cold: Mem {
                rss_kib: 20_480,
                hwm_kib: 20_480,
            },
            changes: vec![Duration::from_millis(10), Duration::from_millis(30)],
            change_errors: 0,
            answered: 3000,
        };
        let haproxy = Figures {
            warm: Duration::from_secs(1),
            warm_first: Duration::from_millis(250),
            cold: Duration::from_secs(1),
            warm_cpu_s: 2.0,
            cold_cpu_s: 1.0,
            mem_empty: Mem {
                rss_kib: 5_120,
                hwm_kib: 5_120,
            },
            mem_warm: Mem {
                rss_kib: 10_240,
                hwm_kib: 10_240,
            },
            mem_cold: Mem {
                rss_kib: 10_240,
                hwm_kib: 10_240,
            },
            changes: vec![Duration::from_millis(100), Duration::from_millis(300)],
            answered: 3000,
            ..Figures::default()
        };
        let t = markdown("head\n", 1000, &portico, &haproxy);
        assert!(t.starts_with("head\n"));
        assert!(t.contains("1000 Services x 3 TCP ports = 3000 VIP:ports"));
        assert!(t.contains("| API writes of all Services | 1.50 s | - | - |"));
        assert!(t.contains(
            "| warm set-up: all answer (HAProxy: reload from empty) | 4.00 s | 1.00 s | 4.00 |"
        ));
        assert!(t.contains("| warm set-up: first answers | 0.50 s | 0.25 s | 2.00 |"));
        assert!(t.contains(
            "| CPU during warm set-up (with reaped children: `ip`, old workers) | 1.00 s | 2.00 s | 0.50 |"
        ));
        // (30720 - 10240) / 1000 = 20.48 KiB vs (10240 - 5120) / 1000 = 5.12.
        assert!(t.contains("| RSS per Service (warm - empty) / N | 20.5 KiB | 5.1 KiB | 4.00 |"));
        assert!(t.contains("| change -> traffic, median (n = 2 / 2) | 20.0 ms | 200.0 ms | 0.10 |"));
        assert!(t.contains("| change -> traffic, max | 30.0 ms | 300.0 ms | 0.10 |"));
        assert!(t.contains("| VIP:ports answering right in the last pass | 3000 | 3000 | 1.00 |"));
    }
}
