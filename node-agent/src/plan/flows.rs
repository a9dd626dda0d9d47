//! The UDP flows the planned rules no longer want, as kube-proxy finds
//! them after each sync.
//!
//! NAT rules only see a flow's first packet; a UDP client that keeps
//! sending stays on the endpoint its first datagram went to, even after
//! that endpoint left the Service, and datagrams that came before the rules
//! stay untranslated. So a conntrack entry of a UDP Service port is stale
//! when its reply does not come from one of the port's serving endpoints
//! (its address and target port), terminating ones included (as
//! kube-proxy: a change of policy or topology never moves a flow, only an
//! endpoint going). Entries are matched by their original destination: a
//! ClusterIP or captured external address with the Service port, or any
//! address with the NodePort (as kube-proxy; a flow of this node to a
//! remote port of that number is deleted too, and comes back with its next
//! datagram, untranslated as before).
//!
//! Beyond kube-proxy: a destination that was a UDP Service port at the last
//! clean-up and is no longer one (the Service deleted, the port removed,
//! the address moved) keeps no flow either ([`UdpTargets::with_gone`]),
//! where kube-proxy leaves its entries to expire.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use portico_conntrack::{Flow, Protocol};

/// One UDP Service port in one family, as planned: where clients reach it
/// and the endpoints its flows may be on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct UdpPort {
    /// The ClusterIP and the captured external addresses, with the port.
    pub(super) addrs: Vec<SocketAddr>,
    /// Its NodePort.
    pub(super) node_port: Option<u16>,
    /// The serving endpoints (address and target port).
    pub(super) endpoints: BTreeSet<SocketAddr>,
}

/// Every planned UDP Service port: its destinations and, for each, the
/// endpoints a flow to it may be on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UdpTargets {
    by_addr: BTreeMap<SocketAddr, BTreeSet<SocketAddr>>,
    by_node_port: BTreeMap<u16, BTreeSet<SocketAddr>>,
}

impl UdpTargets {
    /// Adds one planned port. The claims give each address one Service
    /// port; a NodePort is shared by the port's two families.
    pub(super) fn add(&mut self, port: &UdpPort) {
        for addr in &port.addrs {
            self.by_addr
                .entry(*addr)
                .or_default()
                .extend(&port.endpoints);
        }
        if let Some(node_port) = port.node_port {
            self.by_node_port
                .entry(node_port)
                .or_default()
                .extend(&port.endpoints);
        }
    }

    /// Whether there is no UDP Service port at all (no flow can be stale).
    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty() && self.by_node_port.is_empty()
    }

    /// These targets, plus every destination of `previous` that is not one
    /// any more, with no endpoint: their flows are all stale.
    pub fn with_gone(&self, previous: &UdpTargets) -> UdpTargets {
        let mut out = self.clone();
        for addr in previous.by_addr.keys() {
            out.by_addr.entry(*addr).or_default();
        }
        for port in previous.by_node_port.keys() {
            out.by_node_port.entry(*port).or_default();
        }
        out
    }

    /// The flows among `flows` that are stale: UDP flows to one of these
    /// destinations whose reply does not come from one of its endpoints.
    pub fn stale(&self, flows: &[Flow]) -> Vec<Flow> {
        flows
            .iter()
            .filter(|flow| flow.protocol == Protocol::Udp)
            .filter(|flow| {
                let dst = flow.original.dst;
                let endpoints = self
                    .by_addr
                    .get(&dst)
                    .or_else(|| self.by_node_port.get(&dst.port()));
                endpoints.is_some_and(|eps| !eps.contains(&flow.reply.src))
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn udp(client: &str, to: &str, reply_from: &str) -> Flow {
        Flow::new(Protocol::Udp, addr(client), addr(to), addr(reply_from))
    }

    fn dns() -> UdpTargets {
        let mut targets = UdpTargets::default();
        targets.add(&UdpPort {
            addrs: vec![addr("10.96.0.53:53"), addr("192.0.2.53:53")],
            node_port: Some(30053),
            endpoints: [addr("10.244.0.10:5353")].into(),
        });
        targets
    }

    #[test]
    fn a_flow_not_answered_by_a_serving_endpoint_is_stale() {
        let live = udp("192.0.2.1:4000", "10.96.0.53:53", "10.244.0.10:5353");
        let gone_endpoint = udp("192.0.2.1:4001", "10.96.0.53:53", "10.244.0.11:5353");
        let old_target_port = udp("192.0.2.1:4002", "192.0.2.53:53", "10.244.0.10:53");
        let untranslated = udp("192.0.2.1:4003", "10.96.0.53:53", "10.96.0.53:53");
        let node_port_live = udp("192.0.2.1:4004", "192.168.1.5:30053", "10.244.0.10:5353");
        let node_port_gone = udp("192.0.2.1:4005", "192.168.1.5:30053", "10.244.0.11:5353");
        let other_port = udp("192.0.2.1:4006", "10.96.0.53:54", "10.244.0.11:5353");
        let unrelated = udp("192.0.2.1:4007", "198.51.100.1:53", "198.51.100.1:53");
        let mut tcp = gone_endpoint.clone();
        tcp.protocol = Protocol::Tcp;
        let flows = [
            live,
            gone_endpoint.clone(),
            old_target_port.clone(),
            untranslated.clone(),
            node_port_live,
            node_port_gone.clone(),
            other_port,
            unrelated,
            tcp,
        ];
        assert_eq!(
            dns().stale(&flows),
            [gone_endpoint, old_target_port, untranslated, node_port_gone]
        );
    }

    #[test]
    fn a_port_without_endpoints_keeps_no_flow() {
        let mut targets = UdpTargets::default();
        targets.add(&UdpPort {
            addrs: vec![addr("10.96.0.53:53")],
            node_port: None,
            endpoints: BTreeSet::new(),
        });
        let flow = udp("192.0.2.1:4000", "10.96.0.53:53", "10.244.0.10:5353");
        assert_eq!(targets.stale(std::slice::from_ref(&flow)), [flow]);
    }

    #[test]
    fn the_two_families_of_a_port_share_its_node_port() {
        let mut targets = dns();
        targets.add(&UdpPort {
            addrs: vec![addr("[fd00:96::53]:53")],
            node_port: Some(30053),
            endpoints: [addr("[fd00:244::10]:5353")].into(),
        });
        let v4 = udp("192.0.2.1:4000", "192.168.1.5:30053", "10.244.0.10:5353");
        let v6 = udp(
            "[2001:db8::1]:4000",
            "[fd00::5]:30053",
            "[fd00:244::10]:5353",
        );
        assert!(targets.stale(&[v4, v6]).is_empty());
    }

    #[test]
    fn destinations_that_are_gone_keep_no_flow() {
        let before = dns();
        let now = UdpTargets::default();
        assert!(now.is_empty());
        let merged = now.with_gone(&before);
        assert!(!merged.is_empty());
        let flows = [
            udp("192.0.2.1:4000", "10.96.0.53:53", "10.244.0.10:5353"),
            udp("192.0.2.1:4001", "192.168.1.5:30053", "10.244.0.10:5353"),
        ];
        assert_eq!(merged.stale(&flows), flows);
        // What is still a target keeps its endpoints.
        assert_eq!(before.with_gone(&before), before);
    }
}
