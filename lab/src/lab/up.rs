//! Building a lab: [`Lab::up`] checks that no lab of the prefix is up,
//! makes the state directory, then builds the namespaces and links, starts
//! the API server, the edge, the node agents and the pods, creates the
//! Kubernetes objects and waits, phase by phase (each timed), until traffic
//! flows. [`edge_config`] is the configuration the edge runs with.

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::api::{self, ApiClient};
use crate::netns::{self, in_netns, ip_line, NetnsError};
use crate::objects;
use crate::pod;
use crate::procs;
use crate::topology::{self, Client, IpFamily, Names, NodeSpec};

use super::observe::{edge_metrics, health_settled, nft, observe_table};
use super::teardown::{owned_namespaces, remove_state_dir};
use super::{Binaries, Lab, LabError, LabOptions, MARKER};

impl Lab {
    /// Builds the lab and waits until every Service answers the inside
    /// client through the edge. On failure everything made so far is removed.
    pub fn up(opts: &LabOptions) -> Result<Lab, LabError> {
        if !topology::valid_prefix(&opts.prefix) {
            return Err(LabError::BadPrefix(opts.prefix.clone()));
        }
        if !(1..=crate::routing::MAX_EDGES).contains(&opts.edges)
            || (opts.vrrp && opts.edges != crate::routing::EDGES)
        {
            return Err(LabError::Edges {
                edges: opts.edges,
                vrrp: opts.vrrp,
            });
        }
        let names = Names::new(&opts.prefix);
        let existing = owned_namespaces(&names)?;
        if !existing.is_empty() {
            return Err(LabError::AlreadyUp {
                prefix: opts.prefix.clone(),
                namespaces: existing,
            });
        }
        // A state directory left by a lab whose namespaces are gone is stale.
        remove_state_dir(&opts.state_dir)?;
        if opts.state_dir.exists() {
            return Err(LabError::ForeignStateDir(opts.state_dir.clone()));
        }
        for dir in ["logs", "run"] {
            let path = opts.state_dir.join(dir);
            fs::create_dir_all(&path).map_err(|source| LabError::File { path, source })?;
        }
        let marker = opts.state_dir.join(MARKER);
        fs::write(&marker, format!("prefix={}\n", opts.prefix)).map_err(|source| {
            LabError::File {
                path: marker,
                source,
            }
        })?;
        let mut lab = Lab {
            names,
            state: opts.state_dir.clone(),
            processes: Vec::new(),
            stopped: Vec::new(),
            edge: "edge".to_string(),
            edge_generation: 1,
            drain_timeout: opts.drain_timeout,
            edges: opts.edges,
            vrrp: opts.vrrp,
            vips: BTreeMap::new(),
            timings: Vec::new(),
            binaries: opts.binaries.clone(),
            detached: false,
        };
        // From here on an error drops `lab`, which removes everything.
        lab.build(opts)?;
        Ok(lab)
    }

    /// The phases of [`Lab::up`], each timed.
    fn build(&mut self, opts: &LabOptions) -> Result<(), LabError> {
        let started = Instant::now();
        let mut phase = Instant::now();
        let mut mark = |lab: &mut Lab, what: &'static str| {
            lab.timings.push((what, phase.elapsed()));
            phase = Instant::now();
        };
        self.build_network()?;
        mark(self, "network namespaces and links");

        let api = self.start_api_server(&opts.binaries)?;
        mark(self, "API server");

        self.start_processes(opts)?;
        mark(self, "processes started");

        create_objects(&api)?;
        mark(self, "Kubernetes objects created");

        self.vips = self.wait_addresses(&api, opts.ready_timeout)?;
        mark(self, "addresses assigned");

        for e in 1..=self.edges {
            let edge_ns = self.names.edge_n(e);
            self.wait(
                &format!("{edge_ns}'s health checks to settle (every node up; Local Services only where they have pods)"),
                opts.ready_timeout,
                |_: &Lab| health_settled(&edge_metrics(&edge_ns).map_err(|e| e.to_string())?),
            )?;
        }
        mark(self, "health checks settled");

        if self.vrrp {
            self.wait_vrrp(opts.ready_timeout)?;
            mark(self, "VIPs held by one edge (VRRP)");
        } else if self.edges > 1 {
            self.wait_routes(opts.ready_timeout)?;
            mark(self, "routes at the router");
        }

        self.wait_traffic(opts.ready_timeout)?;
        mark(self, "traffic flowing");
        self.timings.push(("total", started.elapsed()));
        Ok(())
    }

    /// The API server, in the edge namespace; returns a client of it once
    /// it answers.
    fn start_api_server(&mut self, bins: &Binaries) -> Result<ApiClient, LabError> {
        let edge_ns = self.names.edge();
        let api_addr = SocketAddr::new(topology::EDGE_CLUSTER_IP.into(), topology::API_PORT);
        let state = self.state.display().to_string();
        self.start(
            "api-server",
            &edge_ns,
            &bins.lab,
            &[
                "api-server",
                "--listen",
                &api_addr.to_string(),
                "--state-dir",
                &state,
            ],
        )?;
        let kubeconfig = self.state.join(api::KUBECONFIG);
        let api = self.api();
        self.wait("the API server", Duration::from_secs(15), |_: &Lab| {
            if !kubeconfig.is_file() {
                return Err("no kubeconfig yet".to_string());
            }
            api.get("/version").map(|_| ()).map_err(|e| e.to_string())
        })?;
        Ok(api)
    }

    /// The edge (with its config written), a node agent per node and a
    /// server per pod.
    fn start_processes(&mut self, opts: &LabOptions) -> Result<(), LabError> {
        let bins = &opts.binaries;
        let kubeconfig = self.state.join(api::KUBECONFIG);
        if self.vrrp {
            self.start_pair(opts, &kubeconfig)?;
        } else if self.edges > 1 {
            self.start_routed_edges(opts, &kubeconfig)?;
        } else {
            let config = edge_config(&kubeconfig, opts.drain_timeout, VipHolding::Alone);
            self.start_edge(1, &bins.edge, &config)?;
        }
        for node in topology::nodes() {
            let ns = self.names.node(&node);
            self.start(
                &format!("agent-{}", node.name),
                &ns,
                &bins.agent,
                &[
                    "run",
                    "--kubernetes",
                    "--kubeconfig",
                    &kubeconfig.display().to_string(),
                    "--node-name",
                    &node.name,
                    // Both families: the edge checks a node on the address of
                    // the VIP's family.
                    "--health-addr",
                    &format!("[::]:{}", topology::NODE_HEALTH_PORT),
                    "--health-bind-ip",
                    "::",
                    "--metrics-addr",
                    &format!("127.0.0.1:{}", topology::AGENT_METRICS_PORT),
                    "--cluster-cidr",
                    &format!("{},{}", topology::CLUSTER_CIDR, topology::CLUSTER_CIDR6),
                ],
            )?;
        }
        for p in topology::pods() {
            let ns = self.names.pod(&p);
            self.start(
                &format!("pod-{}", p.name),
                &ns,
                &bins.lab,
                &[
                    "pod-server",
                    "--name",
                    &p.name,
                    "--node",
                    &format!("node-{}", p.node),
                    "--listen",
                    &format!("[::]:{}", topology::POD_PORT),
                ],
            )?;
        }
        Ok(())
    }

    /// Waits until the edge wrote every Service's addresses, one per
    /// family it asks for; the addresses.
    fn wait_addresses(
        &mut self,
        api: &ApiClient,
        limit: Duration,
    ) -> Result<BTreeMap<String, Vec<IpAddr>>, LabError> {
        let wanted = topology::services();
        self.wait(
            "the edge to write every Service's addresses",
            limit,
            |_: &Lab| {
                let services = api.services().map_err(|e| e.to_string())?;
                let vips: BTreeMap<String, Vec<IpAddr>> = services
                    .iter()
                    .filter_map(|s| {
                        let name = s["metadata"]["name"].as_str()?.to_string();
                        Some((name, ApiClient::ingress_ips(s)))
                    })
                    .collect();
                for svc in &wanted {
                    let have: Vec<topology::IpFamily> = vips
                        .get(svc.name)
                        .into_iter()
                        .flatten()
                        .map(|ip| topology::IpFamily::of(*ip))
                        .collect();
                    if have != svc.families {
                        return Err(format!(
                            "{} has addresses of {have:?}, wants {:?}",
                            svc.name, svc.families
                        ));
                    }
                }
                Ok(vips)
            },
        )
    }

    /// Waits until every address of every Service answers the inside client.
    fn wait_traffic(&mut self, limit: Duration) -> Result<(), LabError> {
        let wanted: Vec<(String, IpAddr)> = self
            .vips
            .iter()
            .flat_map(|(name, ips)| ips.iter().map(move |ip| (name.clone(), *ip)))
            .collect();
        for (name, ip) in wanted {
            let addr = SocketAddr::new(ip, topology::SERVICE_PORT);
            let client = self.names.client(Client::Inside);
            self.wait(
                &format!("{name} ({addr}) to answer the inside client"),
                limit,
                |_: &Lab| {
                    in_netns(&client, || pod::get(addr))
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())
                },
            )?;
        }
        Ok(())
    }

    /// The namespaces, bridges, veths, addresses, routes and forwarding.
    fn build_network(&mut self) -> Result<(), LabError> {
        let n = &self.names;
        let net = n.net();
        netns::add(&net)?;
        for br in ["br-pub", "br-clu"] {
            ip_line(&format!("-n {net} link add {br} type bridge"))?;
            ip_line(&format!("-n {net} link set {br} up"))?;
        }
        // A veth from `bridge` to `iface` in `ns`, with `cidr`'s address and
        // its IPv6 twin (without duplicate address detection: the lab's
        // addresses are unique by construction, and usable at once).
        let attach = |bridge: &str, port: &str, ns: &str, iface: &str, cidr: &Cidr| {
            for cmd in [
                format!("-n {net} link add {port} type veth peer name {iface} netns {ns}"),
                format!("-n {net} link set {port} master {bridge} up"),
                format!("-n {ns} addr add {} dev {iface}", cidr.v4()),
                format!("-n {ns} addr add {} dev {iface} nodad", cidr.v6()),
                format!("-n {ns} link set {iface} up"),
            ] {
                ip_line(&cmd)?;
            }
            Ok::<_, NetnsError>(())
        };
        let public = Cidr::public;
        let cluster = Cidr::cluster;
        if self.vrrp {
            for e in 1..=self.edges {
                let ns = n.edge_n(e);
                netns::add(&ns)?;
                let public_ip = public(topology::edge_public_ip(e));
                attach("br-pub", &format!("pub-edge{e}"), &ns, "eth0", &public_ip)?;
                let cluster_ip = cluster(topology::edge_cluster_ip(e));
                attach("br-clu", &format!("clu-edge{e}"), &ns, "eth1", &cluster_ip)?;
            }
        } else if self.edges > 1 {
            self.build_routed(&|port, ns, ip| {
                Ok(attach("br-clu", port, ns, "eth1", &cluster(ip))?)
            })?;
        } else {
            let edge = n.edge();
            netns::add(&edge)?;
            attach(
                "br-pub",
                "pub-edge",
                &edge,
                "eth0",
                &public(topology::EDGE_PUBLIC_IP),
            )?;
            attach(
                "br-clu",
                "clu-edge",
                &edge,
                "eth1",
                &cluster(topology::EDGE_CLUSTER_IP),
            )?;
        }
        for (client, port) in [(Client::Inside, "pub-cin"), (Client::Outside, "pub-cout")] {
            let ns = n.client(client);
            netns::add(&ns)?;
            let IpAddr::V4(ip) = client.ip() else {
                continue;
            };
            attach("br-pub", port, &ns, "eth0", &public(ip))?;
            if self.edges > 1 && !self.vrrp {
                self.route_clients(&ns)?;
            }
        }
        let nodes = topology::nodes();
        for node in &nodes {
            let ns = n.node(node);
            netns::add(&ns)?;
            set_sysctl(&ns, "net/ipv4/ip_forward", "1")?;
            set_sysctl(&ns, "net/ipv6/conf/all/forwarding", "1")?;
            nft(&ns, &["-f", "-"], Some(&observe_table()))?;
            attach(
                "br-clu",
                &format!("clu-{}", node.name),
                &ns,
                "eth0",
                &cluster(node.ip()),
            )?;
            for other in nodes.iter().filter(|o| o.index != node.index) {
                ip_line(&format!(
                    "-n {ns} route add {} via {}",
                    other.pod_cidr(),
                    other.ip()
                ))?;
                ip_line(&format!(
                    "-n {ns} route add {} via {}",
                    other.pod_cidr6(),
                    other.ip_of(IpFamily::V6)
                ))?;
            }
        }
        self.build_pods()
    }

    /// Each pod's namespace, routed from its node: a veth pair (`vp-<pod>`
    /// on the node, `eth0` in the pod), the pod's addresses as host
    /// addresses on `eth0`, the node's gateway addresses on `vp-<pod>`, a
    /// host route to the pod on the node and a default route via the
    /// gateway in the pod.
    fn build_pods(&self) -> Result<(), LabError> {
        let n = &self.names;
        for p in topology::pods() {
            let ns = n.pod(&p);
            netns::add(&ns)?;
            let node_ns = n.ns(&format!("node-{}", p.node));
            let node = NodeSpec {
                index: p.node,
                name: String::new(),
            };
            let port = format!("vp-{}", p.name);
            let (gw, gw6) = (node.gateway_ip(), node.gateway_ip_of(IpFamily::V6));
            let (ip, ip6) = (p.ip, p.ip_of(IpFamily::V6));
            for cmd in [
                format!("-n {node_ns} link add {port} type veth peer name eth0 netns {ns}"),
                format!("-n {node_ns} addr add {gw}/32 dev {port}"),
                format!("-n {node_ns} addr add {gw6}/128 dev {port} nodad"),
                format!("-n {node_ns} link set {port} up"),
                format!("-n {ns} addr add {ip}/32 dev eth0"),
                format!("-n {ns} addr add {ip6}/128 dev eth0 nodad"),
                format!("-n {ns} link set eth0 up"),
                format!("-n {ns} link set lo up"),
                format!("-n {node_ns} route add {ip}/32 dev {port}"),
                format!("-n {node_ns} route add {ip6}/128 dev {port}"),
                format!("-n {ns} route add {gw} dev eth0"),
                format!("-n {ns} route add default via {gw}"),
                format!("-n {ns} route add {gw6} dev eth0"),
                format!("-n {ns} route add default via {gw6}"),
            ] {
                ip_line(&cmd)?;
            }
        }
        Ok(())
    }

    /// Writes edge `e`'s configuration file and starts it (process `edge`,
    /// `edge2`, ...), with its upgrade socket in the state directory.
    pub(super) fn start_edge(
        &mut self,
        e: usize,
        binary: &Path,
        config: &str,
    ) -> Result<(), LabError> {
        let file = self.edge_config_file(e);
        write_file(&file, config)?;
        let name = edge_process(e);
        let upgrade = self.state.join("run").join(format!("{name}-upgrade.sock"));
        let ns = self.names.edge_n(e);
        self.start(
            &name,
            &ns,
            binary,
            &[
                "run",
                "--config",
                &file.display().to_string(),
                "--upgrade-socket",
                &upgrade.display().to_string(),
            ],
        )
    }

    /// The configuration file of edge `e`.
    pub fn edge_config_file(&self, e: usize) -> PathBuf {
        match e {
            1 => self.edge_config_path(),
            e => self.state.join(format!("edge{e}.yaml")),
        }
    }

    /// Starts a lab process (tracked by its pid file in the state directory).
    pub(super) fn start(
        &mut self,
        name: &str,
        ns: &str,
        program: &Path,
        args: &[&str],
    ) -> Result<(), LabError> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let spawned = procs::spawn(&self.state, name, ns, program, &args)?;
        self.processes.push(spawned);
        Ok(())
    }
}

/// The Nodes, Services and EndpointSlices of the topology, created through
/// the API server.
fn create_objects(api: &ApiClient) -> Result<(), LabError> {
    let pods = topology::pods();
    for node in topology::nodes() {
        api.create(objects::NODES_PATH, &objects::node(&node))?;
    }
    for svc in topology::services() {
        api.create(&objects::services_path(), &objects::service(&svc))?;
        for slice in objects::slices(&svc, &pods) {
            api.create(&objects::slices_path(), &slice)?;
        }
    }
    Ok(())
}

/// The process name of edge `e`: `edge` for edge 1 (as in a lab of one).
pub fn edge_process(e: usize) -> String {
    match e {
        1 => "edge".to_string(),
        e => format!("edge{e}"),
    }
}

/// Writes `text` to `path`.
pub(super) fn write_file(path: &Path, text: &str) -> Result<(), LabError> {
    fs::write(path, text).map_err(|source| LabError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes the sysctl `name` (`net/ipv4/ip_forward`...) under /proc/sys in
/// namespace `ns`: network sysctls are per namespace, the host's is not
/// touched.
pub(super) fn set_sysctl(ns: &str, name: &str, value: &str) -> Result<(), LabError> {
    let path = Path::new("/proc/sys").join(name);
    in_netns(ns, || fs::write(&path, value))?.map_err(|source| LabError::File {
        path: path.clone(),
        source,
    })
}

/// An address of the lab with its prefix length, and its IPv6 twin's.
pub(super) struct Cidr {
    ip: std::net::Ipv4Addr,
    len: u8,
    len6: u8,
}

impl Cidr {
    /// An address on the public network.
    pub(super) fn public(ip: std::net::Ipv4Addr) -> Cidr {
        Cidr {
            ip,
            len: topology::PUBLIC_PREFIX,
            len6: topology::PUBLIC_PREFIX6,
        }
    }

    /// An address on the cluster network.
    pub(super) fn cluster(ip: std::net::Ipv4Addr) -> Cidr {
        Cidr {
            ip,
            len: topology::CLUSTER_PREFIX,
            len6: topology::CLUSTER_PREFIX6,
        }
    }

    fn v4(&self) -> String {
        format!("{}/{}", self.ip, self.len)
    }

    fn v6(&self) -> String {
        format!("{}/{}", topology::twin(self.ip), self.len6)
    }
}

/// How an edge of the lab holds its VIPs.
#[derive(Debug, Clone, Copy)]
pub enum VipHolding<'a> {
    /// Alone: on its public interface (and a route each in its table, with
    /// no BIRD to read it).
    Alone,
    /// Behind a router: on `lo`, announced through the BIRD beside it,
    /// whose control socket this is.
    Bgp(&'a Path),
    /// In a VRRP pair: keepalived puts them on the active edge.
    Vrrp,
}

/// The edge's configuration: the Kubernetes watch, the VIPs held as
/// `holding` says, the address pool, and health checks quick enough for a
/// lab.
pub fn edge_config(kubeconfig: &Path, drain_timeout: Duration, holding: VipHolding<'_>) -> String {
    let vips = match holding {
        VipHolding::Alone => "  vip:
    interface: eth0
  # The host routes a BIRD beside the edge would export (table 4242).
  announce: {}
"
        .to_string(),
        VipHolding::Bgp(socket) => format!(
            "  vip:
    interface: lo
  # The host routes the BIRD beside the edge exports by BGP (table 4242).
  announce:
    birdSocket: {}
",
            socket.display()
        ),
        VipHolding::Vrrp => "  # keepalived holds the VIPs; the edge listens on them all the same.
  vip: {}
"
        .to_string(),
    };
    format!(
        "# Written by portico-lab.
settings:
  health:
    interval: 1s
    timeout: 500ms
    rise: 2
    fall: 2
    kubeProxyPort: {health}
  proxy:
    connectTimeout: 1s
    connectRetries: 2
    drainTimeout: {drain}ms
{vips}  metricsListen: 127.0.0.1:{metrics}
  adminListen: 127.0.0.1:{admin}
  kubernetes:
    kubeconfig: {kubeconfig}
  addressPools:
    - name: public
      addresses: [{pool}, {pool6}]
",
        health = topology::NODE_HEALTH_PORT,
        metrics = topology::EDGE_METRICS_PORT,
        admin = topology::EDGE_ADMIN_PORT,
        kubeconfig = kubeconfig.display(),
        pool = topology::ADDRESS_POOL,
        pool6 = topology::ADDRESS_POOL6,
        drain = drain_timeout.as_millis(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::DEFAULT_DRAIN_TIMEOUT;
    use super::*;

    #[test]
    fn the_edge_config_passes_the_real_validator() {
        let yaml = edge_config(
            Path::new("/run/portico-lab/kubeconfig"),
            DEFAULT_DRAIN_TIMEOUT,
            VipHolding::Alone,
        );
        let config =
            portico_config::parse_edge_config(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let s = &config.settings;
        assert_eq!(s.vip.interface.as_deref(), Some("eth0"));
        assert!(s.kubernetes.is_some());
        assert_eq!(s.address_pools.len(), 1);
        assert_eq!(s.proxy.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
    }
}
