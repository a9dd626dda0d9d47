//! A lab of several edges (`portico-lab up --edges N`, N >= 2), drawn in
//! [`crate::topology`]: a router takes the edge's place on the public
//! network (the clients route the VIP block to it) and the edges sit
//! behind it on a network of their own. Each edge runs `portico-edge`
//! with its VIPs on `lo`, announced in its routing table, and BIRD on the
//! shipped `deploy/bird-edge.conf`; the router runs BIRD on the shipped
//! `deploy/bird-router.conf` (a session pair per edge, BFD, multipath) and
//! hashes flows by layer 4. Every edge watches the one API server; leader
//! election picks the one that writes.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::netns::{self, ip_line};
use crate::routing::{self, edge_v4, edge_v6, ROUTER_V4, ROUTER_V6};
use crate::topology;

use super::up::{set_sysctl, write_file};
use super::{Lab, LabError, LabOptions, VipHolding};

/// The edges' network's bridge (in the `net` namespace).
const EDGE_BRIDGE: &str = "br-edge";
/// The prefix lengths on the edges' network.
const EDGE_NET_V4: u8 = 24;
const EDGE_NET_V6: u8 = 64;

impl Lab {
    /// How many edges this lab has.
    pub fn edges(&self) -> usize {
        self.edges
    }

    /// The router, the edges' network and every edge's namespace, linked to
    /// it and to the cluster network; `cluster` attaches a namespace's
    /// `eth1` to the cluster bridge with an address.
    pub(super) fn build_routed(
        &self,
        cluster: &dyn Fn(&str, &str, std::net::Ipv4Addr) -> Result<(), LabError>,
    ) -> Result<(), LabError> {
        let n = &self.names;
        let net = n.net();
        ip_line(&format!("-n {net} link add {EDGE_BRIDGE} type bridge"))?;
        ip_line(&format!("-n {net} link set {EDGE_BRIDGE} up"))?;
        let router = n.router();
        netns::add(&router)?;
        for line in [
            format!("-n {net} link add pub-router type veth peer name eth0 netns {router}"),
            format!("-n {net} link set pub-router master br-pub up"),
            format!(
                "-n {router} addr add {}/{} dev eth0",
                topology::EDGE_PUBLIC_IP,
                topology::PUBLIC_PREFIX
            ),
            format!(
                "-n {router} addr add {}/{} dev eth0 nodad",
                topology::twin(topology::EDGE_PUBLIC_IP),
                topology::PUBLIC_PREFIX6
            ),
            format!("-n {router} link set eth0 up"),
            format!("-n {net} link add edge-router type veth peer name eth1 netns {router}"),
            format!("-n {net} link set edge-router master {EDGE_BRIDGE} up"),
            format!("-n {router} addr add {ROUTER_V4}/{EDGE_NET_V4} dev eth1"),
            format!("-n {router} addr add {ROUTER_V6}/{EDGE_NET_V6} dev eth1 nodad"),
            format!("-n {router} link set eth1 up"),
            format!("-n {router} link set lo up"),
        ] {
            ip_line(&line)?;
        }
        for (sysctl, value) in [
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv6/conf/all/forwarding", "1"),
            ("net/ipv4/fib_multipath_hash_policy", "1"),
            ("net/ipv6/fib_multipath_hash_policy", "1"),
        ] {
            set_sysctl(&router, sysctl, value)?;
        }
        for e in 1..=self.edges {
            let ns = n.edge_n(e);
            netns::add(&ns)?;
            for line in [
                format!("-n {net} link add edge-{e} type veth peer name eth0 netns {ns}"),
                format!("-n {net} link set edge-{e} master {EDGE_BRIDGE} up"),
                format!("-n {ns} addr add {}/{EDGE_NET_V4} dev eth0", edge_v4(e)),
                format!(
                    "-n {ns} addr add {}/{EDGE_NET_V6} dev eth0 nodad",
                    edge_v6(e)
                ),
                format!("-n {ns} link set eth0 up"),
                format!("-n {ns} link set lo up"),
                // Replies to the clients go back through the router.
                format!(
                    "-n {ns} route add {}/{} via {ROUTER_V4}",
                    public_network(),
                    topology::PUBLIC_PREFIX
                ),
                format!(
                    "-n {ns} route add {}/{} via {ROUTER_V6}",
                    topology::twin(public_network()),
                    topology::PUBLIC_PREFIX6
                ),
            ] {
                ip_line(&line)?;
            }
            cluster(&format!("clu-edge{e}"), &ns, topology::edge_cluster_ip(e))?;
        }
        Ok(())
    }

    /// The clients' routes to the VIP blocks through the router.
    pub(super) fn route_clients(&self, client_ns: &str) -> Result<(), LabError> {
        ip_line(&format!(
            "-n {client_ns} route add {} via {}",
            topology::VIP_BLOCK,
            topology::EDGE_PUBLIC_IP
        ))?;
        ip_line(&format!(
            "-n {client_ns} route add {} via {}",
            topology::VIP_BLOCK6,
            topology::twin(topology::EDGE_PUBLIC_IP)
        ))?;
        Ok(())
    }

    /// BIRD on the router and on every edge (the shipped configs, rendered
    /// with the lab's addresses), then every edge.
    pub(super) fn start_routed_edges(
        &mut self,
        opts: &LabOptions,
        kubeconfig: &Path,
    ) -> Result<(), LabError> {
        let bird = crate::command::daemon_program("bird");
        let router_log = crate::procs::log_path(&self.state, "bird-router");
        let config = routing::router_config(self.edges, &router_log).map_err(routing_error)?;
        let router = self.names.router();
        self.start_bird("bird-router", &router, &bird, &config)?;
        for e in 1..=self.edges {
            let name = format!("bird-edge{e}");
            let log = crate::procs::log_path(&self.state, &name);
            let config = routing::edge_config(e, &log).map_err(routing_error)?;
            let ns = self.names.edge_n(e);
            self.start_bird(&name, &ns, &bird, &config)?;
            let socket = self.bird_socket(&name);
            let config =
                super::edge_config(kubeconfig, opts.drain_timeout, VipHolding::Bgp(&socket));
            self.start_edge(e, &opts.binaries.edge, &config)?;
        }
        Ok(())
    }

    /// Waits until the router routes every Service's VIP through every
    /// edge.
    pub(super) fn wait_routes(&mut self, limit: Duration) -> Result<(), LabError> {
        let router = self.names.router();
        let edges = self.edges;
        let want = |vip: &IpAddr| -> std::collections::BTreeSet<IpAddr> {
            (1..=edges)
                .map(|e| routing::edge_ip(e, topology::IpFamily::of(*vip)))
                .collect()
        };
        let vips: Vec<IpAddr> = self.vips().collect();
        self.wait(
            &format!(
                "the router to route every VIP through the {} edges",
                self.edges
            ),
            limit,
            |_: &Lab| {
                for vip in &vips {
                    let have =
                        routing::nexthops(&router, &vip.to_string()).map_err(|e| e.to_string())?;
                    if have != want(vip) {
                        return Err(format!("{vip} via {have:?}"));
                    }
                }
                Ok(())
            },
        )
    }

    /// The control socket of the BIRD process `name`.
    pub(super) fn bird_socket(&self, name: &str) -> PathBuf {
        self.state.join("run").join(format!("{name}.ctl"))
    }

    fn start_bird(
        &mut self,
        name: &str,
        ns: &str,
        bird: &Path,
        config: &str,
    ) -> Result<(), LabError> {
        let file = self.state.join(format!("{name}.conf"));
        write_file(&file, config)?;
        let socket = self.bird_socket(name);
        self.start(
            name,
            ns,
            bird,
            &[
                "-f",
                "-c",
                &file.display().to_string(),
                "-s",
                &socket.display().to_string(),
            ],
        )
    }
}

/// The public network's address (the clients' and the router's).
fn public_network() -> std::net::Ipv4Addr {
    let [a, b, c, _] = topology::EDGE_PUBLIC_IP.octets();
    std::net::Ipv4Addr::new(a, b, c, 0)
}

fn routing_error(e: routing::RoutingError) -> LabError {
    LabError::Routing(e.to_string())
}
