//! A VRRP pair of edges (`portico-lab up --edges 2 --vrrp`): both edges on
//! the public network (198.51.100.1 and .2) and the cluster network,
//! keepalived on the shipped `deploy/keepalived.conf` beside each, holding
//! the whole address pool on the active edge's `eth0` (the IPv6 pool rides
//! along as excluded addresses, as the shipped file's comment offers) and
//! tracking the edge's `/readyz`. The edges run without `vip.interface` (keepalived owns
//! the addresses; the standby already listens) and the clients reach the
//! VIPs on the segment, by ARP, wherever keepalived put them.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use crate::routing::vrrp::{self, replace_line};
use crate::topology;

use super::up::write_file;
use super::{Lab, LabError, LabOptions, VipHolding};

/// The VRRP priorities of edge 1 and edge 2: edge 1 is the active one.
const PRIORITIES: [u8; 2] = [150, 100];

impl Lab {
    /// Whether the edges are a VRRP pair.
    pub fn vrrp(&self) -> bool {
        self.vrrp
    }

    /// keepalived beside each edge, then the edges.
    pub(super) fn start_pair(
        &mut self,
        opts: &LabOptions,
        kubeconfig: &Path,
    ) -> Result<(), LabError> {
        let program = crate::command::daemon_program("keepalived");
        for (e, priority) in (1..=2).zip(PRIORITIES) {
            let ns = self.names.edge_n(e);
            let name = format!("keepalived-edge{e}");
            let conf = self.state.join(format!("{name}.conf"));
            write_file(&conf, &keepalived_config(e, priority)?)?;
            let pid = |what: &str| {
                self.state
                    .join("run")
                    .join(format!("{name}.{what}"))
                    .display()
                    .to_string()
            };
            let (main, vrrp_pid, checkers) = (pid("main"), pid("vrrp"), pid("checkers"));
            // As the routing tests run it: no fork, log to the console (its
            // log file), VRRP only, pid files of its own.
            self.start(
                &name,
                &ns,
                &program,
                &[
                    "-n",
                    "-l",
                    "-D",
                    "-G",
                    "-P",
                    "-f",
                    &conf.display().to_string(),
                    "-p",
                    &main,
                    "-r",
                    &vrrp_pid,
                    "-c",
                    &checkers,
                ],
            )?;
            let config = super::edge_config(kubeconfig, opts.drain_timeout, VipHolding::Vrrp);
            self.start_edge(e, &opts.binaries.edge, &config)?;
        }
        Ok(())
    }

    /// Waits until one edge holds every address of the pool and the other
    /// none.
    pub(super) fn wait_vrrp(&mut self, limit: Duration) -> Result<(), LabError> {
        let namespaces = [self.names.edge_n(1), self.names.edge_n(2)];
        self.wait(
            "keepalived to put the pool on one edge",
            limit,
            |_: &Lab| {
                let mut held = [0, 0];
                let pool = all_pool_addresses();
                for addr in &pool {
                    for (i, ns) in namespaces.iter().enumerate() {
                        if vrrp::holds(ns, *addr).map_err(|e| e.to_string())? {
                            held[i] += 1;
                        }
                    }
                }
                let pool = pool.len();
                match held {
                    [n, 0] | [0, n] if n == pool => Ok(()),
                    _ => Err(format!("addresses held by edge 1, edge 2: {held:?}")),
                }
            },
        )
    }
}

/// Both address pools, IPv4 first.
fn all_pool_addresses() -> Vec<IpAddr> {
    let v4 = topology::pool_addresses().into_iter().map(IpAddr::V4);
    v4.chain(topology::pool_addresses6().into_iter().map(IpAddr::V6))
        .collect()
}

/// `deploy/keepalived.conf` for edge `e` of the lab's pair: its router id
/// and priority ([`vrrp::keepalived_config`]), and the lab's whole address
/// pool in place of the example VIPs: the IPv4 pool in the advertised
/// `virtual_ipaddress`, the IPv6 pool in a `virtual_ipaddress_excluded`
/// block after it (moved with the IPv4 ones, not advertised).
pub fn keepalived_config(e: usize, priority: u8) -> Result<String, LabError> {
    let routing = |e: crate::routing::RoutingError| LabError::Routing(e.to_string());
    let text = vrrp::keepalived_config(e, priority).map_err(routing)?;
    let pool: Vec<String> = topology::pool_addresses()
        .iter()
        .map(|a| format!("{a}/32 dev eth0"))
        .collect();
    let pool6: Vec<IpAddr> = topology::pool_addresses6()
        .into_iter()
        .map(IpAddr::V6)
        .collect();
    let name = "keepalived.conf";
    // The example's two lines become the pool's, the first and the rest.
    let text = replace_line(name, &text, "192.0.2.10/32 dev eth0", &pool[0]).map_err(routing)?;
    let text = replace_line(
        name,
        &text,
        "192.0.2.11/32 dev eth0",
        &pool[1..].join("\n\t\t"),
    )
    .map_err(routing)?;
    vrrp::with_excluded(name, &text, &pool6).map_err(routing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pair_holds_the_whole_pool_and_differs_in_priority_only() {
        let one = keepalived_config(1, PRIORITIES[0]).unwrap();
        let two = keepalived_config(2, PRIORITIES[1]).unwrap();
        let excluded = one
            .find("\tvirtual_ipaddress_excluded {")
            .expect("an excluded block");
        for addr in all_pool_addresses() {
            let len = if addr.is_ipv4() { 32 } else { 128 };
            let line = format!("\t\t{addr}/{len} dev eth0");
            assert_eq!(
                one.lines().filter(|l| *l == line).count(),
                1,
                "{line:?} in\n{one}"
            );
            let at = one.find(&line).unwrap();
            assert_eq!(
                addr.is_ipv6(),
                at > excluded,
                "{line:?} in its block:\n{one}"
            );
        }
        assert!(!one.contains("192.0.2.1"), "{one}");
        let differ: Vec<(&str, &str)> = one
            .lines()
            .zip(two.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(
            differ,
            [
                ("\trouter_id portico-edge-1", "\trouter_id portico-edge-2"),
                ("\tpriority 150", "\tpriority 100"),
            ]
        );
    }
}
