//! The planner: Services + EndpointSlices + this Node -> the desired
//! [`Ruleset`]. Pure: no IO, no clock, deterministic output for a given input.
//!
//! The layout follows kube-proxy's nftables mode (KEP-3866):
//! - verdict maps keyed `addr . l4proto . port` send ClusterIP and external
//!   (LB / external IP) traffic to a per-Service-port chain (`service-ips`);
//!   NodePorts are keyed `l4proto . port` and matched after
//!   `fib daddr type local` (`service-nodeports`);
//! - a `service-` chain picks any usable endpoint, a `local-` chain one of
//!   this node's; ClusterIP keys go to the one `internalTrafficPolicy` asks
//!   for;
//! - external keys (LB / external IPs, NodePorts) of an
//!   `externalTrafficPolicy: Cluster` port go straight to its `service-`
//!   chain, and the `services` chain marks them for masquerade first, by one
//!   rule per key kind and family on the sets `external-masquerade` (`addr .
//!   l4proto . port`) and `nodeport-masquerade` (`l4proto . port`), each
//!   right before the dispatch on the same key (so only traffic that is
//!   DNATed is marked; ports without endpoints are never in the sets);
//! - external keys of a `Local` port go to its `external-` chain, the only
//!   per-Service chain left between a map and the endpoints: traffic from
//!   this node itself (`fib saddr type local`) is marked and may use any
//!   endpoint (`service-`), as kube-proxy lets it; everything else goes to
//!   `local-` unmasqueraded, keeping the client address;
//! - ports without a usable endpoint go into `no-endpoint-services` /
//!   `no-endpoint-nodeports`, checked in the filter hooks (reject is not
//!   allowed in nat chains): reject when the Service has no endpoint at all,
//!   drop when only the traffic policy leaves none;
//! - `firewall-ips` sends new connections to an LB address through a
//!   `firewall-` chain that drops sources outside `loadBalancerSourceRanges`.
//!
//! Where it departs from kube-proxy, for speed at scale (10,000 Services x
//! 10 endpoints, measured on kernel 6.18 with nft 1.0.6; `benches/sync.rs`):
//! - A `service-` / `local-` chain WITHOUT ClientIP affinity picks its
//!   endpoint itself, with a cascade of DNAT rules, as kube-proxy's iptables
//!   mode does: rule `i` of `N` is `numgen random mod (N-i) 0 ... dnat to
//!   <endpoint i>` and the last one is unconditional, so every endpoint gets
//!   `1/N`. No `endpoint-` chains, no per-chain map. kube-proxy's layout
//!   (a named `endpoints-<chain>` verdict map per chain plus a chain per
//!   endpoint) took 13-16 s to load: the kernel finds a set by name in a
//!   linear list per table, so each of 10,000 named maps made every map
//!   operation of the batch O(sets); and with 110,000 chains, every later
//!   `nft` transaction spent ~0.6 s listing them. Alternatives measured and
//!   rejected: one shared data map (`numgen ... map @eps`) bound by 10,000
//!   rules, 51 s (binding walks every element); anonymous inline maps, 8.9 s
//!   (the kernel names each `__set%d` by walking all sets).
//! - Hairpin traffic (a pod reaching itself through its Service) is marked
//!   for masquerade in `masquerading` by `ct status dnat ip saddr . ip daddr
//!   @hairpin-endpoints` (one `addr . addr` element per endpoint, one set per
//!   family) instead of a rule in every endpoint chain.
//! - No `external-` chain for `Cluster` ports (kube-proxy has one per
//!   Service port, marking and going on to `service-`): the marks come from
//!   the two sets above. Any rule with a NAT expression, or any verdict map
//!   element, makes the kernel validate the whole table at commit: from
//!   each base chain it walks every rule of every chain it can reach,
//!   through every verdict map. Kernel 6.18 remembers a chain validated
//!   for a (chain type, hook) at a call depth and skips it when reached
//!   again at that depth or less, so the cost is the rules reachable per
//!   NAT hook (prerouting and output) and how many depths a chain is
//!   reached at, not how many paths lead to it. The `external-` chains
//!   added 10,000 chains and 20,000 rules and reached each `service-` chain
//!   a second time one level deeper, so it was validated twice per hook.
//!   Without them (10k x 10, the bench before and after back to back): a
//!   one-endpoint `nft` transaction 108 -> 86 ms (its commit `sendmsg`
//!   86 -> 60 ms, and `nft` lists 10,000 chains fewer before it), the full
//!   load 3.8 -> 3.3 s, kernel memory 65 -> 55 MiB. Measured and
//!   not taken: no NodePort dispatch at all (no gain: those paths were
//!   already memoised), the `services` rules copied into both NAT base
//!   chains instead of a jump (no gain), `jump` instead of `goto` in the
//!   maps (no gain: both are validated alike), no `services` dispatch from
//!   `nat-output` (halves the commit, but the node itself could no longer
//!   reach ClusterIPs, external IPs or its own NodePorts). A `Local`
//!   port's `service-` chain is still also reached one level deeper,
//!   through its `external-` chain (node-originated traffic), so it is
//!   validated twice per hook; few Services are `Local`.
//! - Ports WITH ClientIP affinity keep kube-proxy's layout: an `endpoint-`
//!   chain per endpoint (hairpin mark, `update @affinity-<chain>`, DNAT), the
//!   affinity checks, then `numgen random mod N vmap @endpoints-<chain>`.
//!
//! IPv4 and IPv6 each get their own maps (IPv6 names end in `6`) and chains.
//! Bad input is skipped at the smallest scope that keeps the rules correct
//! (one endpoint, one Service port, one Service) and reported as a
//! [`Skipped`]; every other Service keeps its rules.
//!
//! Planning is incremental ([`Planner`]): each Service is planned on its own
//! into a fragment (its chains, its own sets, its elements of the shared
//! maps), reused while the Service, its EndpointSlices and the claims it won
//! are unchanged. Only the claims (NodePorts and `addr . proto . port` keys,
//! which two Services cannot share) are checked across Services, in a cheap
//! pass over every Service at each update, so a Service that loses or wins a
//! key is re-planned. [`plan`] is the same planner run once from nothing.
//!
//! The modules follow the data:
//! - `units`: a Service -> its units (port x family), checked on their own;
//! - `claims`: the keys two Services cannot share, first by key wins;
//! - `fragment`: one Service's units -> its chains, sets and map elements
//!   (its endpoints, its dispatch, ClientIP affinity, source ranges);
//! - `layout`: the chains and shared sets that exist whatever the Services;
//! - `names`: chain names and the object names in messages;
//! - `flows`: which UDP conntrack entries the planned rules no longer want;
//! - `planner`: the incremental [`Planner`] putting them together.

mod claims;
mod flows;
mod fragment;
mod layout;
mod names;
mod planner;
mod units;

#[cfg(test)]
mod test_support;

use std::collections::HashMap;
use std::fmt;

use portico_config::cluster::{ClusterService, EndpointSlice, DEFAULT_PROXY_NAME};
use portico_config::{Node, DEFAULT_LOAD_BALANCER_CLASS};

pub use flows::UdpTargets;
pub use planner::{PlanChange, Planner};

use crate::ruleset::Ruleset;

/// The packet mark bit kube-proxy uses for "masquerade this connection".
pub const DEFAULT_MASQUERADE_MARK: u32 = 0x4000;

/// Longest chain name we generate. nft allows 256 bytes (with the NUL);
/// set names add `affinity-` or `endpoints-` to a chain's name and must fit
/// too.
pub const MAX_CHAIN_NAME: usize = 200;

/// Settings of the planner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOptions {
    /// Only Services whose `service.kubernetes.io/service-proxy-name` label
    /// equals this are handled.
    pub proxy_name: String,
    /// The mark bit that asks `nat-postrouting` to masquerade a connection.
    pub masquerade_mark: u32,
    /// The `spec.loadBalancerClass` of the Services the Portico edge
    /// serves. The edge proxies to NodePorts, so their load-balancer
    /// addresses are never captured on the node, whether or not the API
    /// server kept the `ipMode: Proxy` the edge wrote (servers older than
    /// 1.29 drop the field).
    pub load_balancer_class: String,
    /// The cluster's pod ranges (kube-proxy's `--cluster-cidr`): traffic to
    /// a ClusterIP from a source outside them (another host routing the
    /// service range to this node, this node itself) is masqueraded, so the
    /// replies of an endpoint on another node come back through this one.
    /// A family without a range is not masqueraded (kube-proxy's default).
    pub cluster_cidrs: Vec<ipnetwork::IpNetwork>,
}

impl PlanOptions {
    /// Whether traffic of `family` to ClusterIPs from outside the cluster
    /// CIDRs is masqueraded (there are cluster CIDRs of the family).
    pub(crate) fn masquerades_off_cluster(&self, family: crate::ruleset::Family) -> bool {
        self.cluster_cidrs
            .iter()
            .any(|c| crate::ruleset::Family::of(&c.ip()) == family)
    }

    /// The cluster CIDRs of `family`, as one nft value: `10.244.0.0/16`,
    /// or an anonymous set `{ 10.244.0.0/16, 10.245.0.0/16 }`; `None`
    /// without any.
    pub(crate) fn cluster_cidrs_of(&self, family: crate::ruleset::Family) -> Option<String> {
        let of: Vec<String> = self
            .cluster_cidrs
            .iter()
            .filter(|c| crate::ruleset::Family::of(&c.ip()) == family)
            .map(|c| format!("{}/{}", c.network(), c.prefix()))
            .collect();
        match of.as_slice() {
            [] => None,
            [one] => Some(one.clone()),
            many => Some(format!("{{ {} }}", many.join(", "))),
        }
    }
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            proxy_name: DEFAULT_PROXY_NAME.to_string(),
            masquerade_mark: DEFAULT_MASQUERADE_MARK,
            load_balancer_class: DEFAULT_LOAD_BALANCER_CLASS.to_string(),
            cluster_cidrs: Vec::new(),
        }
    }
}

/// A piece of input the planner could not program, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Skipped {
    /// The object (`Service default/web`, `EndpointSlice default/web-abc`).
    pub object: String,
    /// The offending field (`spec.ports[1].nodePort`).
    pub field: String,
    /// What is wrong and what was left out.
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.object, self.field, self.reason)
    }
}

/// What the planner decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// The desired content of the agent's table.
    pub ruleset: Ruleset,
    /// Input left out, sorted and without duplicates.
    pub skipped: Vec<Skipped>,
}

/// Plans the ruleset for `node` from every Service and EndpointSlice.
///
/// Services are handled in key order and ports in spec order, so when two
/// Services claim the same NodePort, or the same address, protocol and port
/// (ClusterIP or external), the first by key keeps it and the other port is
/// reported.
pub fn plan(
    services: &[ClusterService],
    slices: &[EndpointSlice],
    node: &Node,
    opts: &PlanOptions,
) -> Plan {
    let mut planner = Planner::new(opts.clone());
    planner.update(services, slices, node);
    Plan {
        ruleset: planner.ruleset(),
        skipped: planner.skipped(),
    }
}

/// A hash map with a fast hasher: the planner's keys come from the
/// cluster's own objects, and every update hashes tens of thousands.
type FastMap<K, V> = HashMap<K, V, xxhash_rust::xxh3::Xxh3DefaultBuilder>;

#[cfg(test)]
mod tests {
    use portico_config::ServiceKey;

    use super::test_support::{node, service_chains, web, web_slice};
    use super::*;

    #[test]
    fn only_services_labelled_for_our_proxy_are_planned() {
        let slices = [web_slice()];
        let ours = plan(
            &[web(Some("portico"))],
            &slices,
            &node(),
            &PlanOptions::default(),
        );
        assert_eq!(service_chains(&ours).len(), 1);

        for other in [None, Some("kube-proxy")] {
            let p = plan(&[web(other)], &slices, &node(), &PlanOptions::default());
            assert!(service_chains(&p).is_empty(), "{other:?}");
            assert!(
                p.ruleset.sets.values().all(|s| s.elements.is_empty()),
                "{other:?}"
            );
        }

        let custom = PlanOptions {
            proxy_name: "edge-a".to_string(),
            ..PlanOptions::default()
        };
        let p = plan(&[web(Some("edge-a"))], &slices, &node(), &custom);
        assert_eq!(service_chains(&p).len(), 1);
    }

    /// Whether the plan sends anything to `addr`.
    fn reaches(p: &Plan, addr: &str) -> bool {
        format!("{:?}", p.ruleset).contains(addr)
    }

    #[test]
    fn a_slice_port_without_a_number_is_ignored_as_kube_proxy_does() {
        let svc = web(Some("portico"));
        let opts = PlanOptions::default();
        assert!(reaches(
            &plan(std::slice::from_ref(&svc), &[web_slice()], &node(), &opts),
            "10.244.0.10"
        ));
        // Absent or 0: not replaced by the Service's targetPort (8080).
        for port in [None, Some(0)] {
            let mut slice = web_slice();
            slice.ports[0].port = port;
            let p = plan(std::slice::from_ref(&svc), &[slice], &node(), &opts);
            assert!(!reaches(&p, "10.244.0.10"), "{port:?}");
            assert!(
                p.skipped.iter().any(|s| s.field == "ports[0].port"),
                "{port:?}: {:?}",
                p.skipped
            );
        }
    }

    #[test]
    fn a_malformed_endpoint_address_costs_that_endpoint_only() {
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "default", "name": "web-1",
                    "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
                "endpoints": [
                    {"addresses": ["10.244.0.10"], "nodeName": "node-a"},
                    {"addresses": ["10.244.0.x"], "nodeName": "node-a"},
                    {"addresses": ["10.244.0.12"], "nodeName": "node-a"},
                ],
            }))
            .unwrap();
        let read = portico_config::kube::read_endpoint_slice(&slice).expect("the slice is read");
        assert_eq!(read.problems.len(), 1, "{:?}", read.problems);
        assert_eq!(read.problems[0].field, "endpoints[1].addresses[0]");
        let p = plan(
            &[web(Some("portico"))],
            &[read.value],
            &node(),
            &PlanOptions::default(),
        );
        assert!(reaches(&p, "10.244.0.10") && reaches(&p, "10.244.0.12"));
    }

    #[test]
    fn udp_ports_give_their_destinations_and_serving_endpoints() {
        use portico_config::cluster::{Endpoint, IpMode, LoadBalancerIngress, ServiceType};
        use portico_config::{Protocol, DEFAULT_LOAD_BALANCER_CLASS};
        use portico_conntrack::Flow;

        let udp = |mut svc: ClusterService| {
            svc.service_type = ServiceType::LoadBalancer;
            svc.ports.push(portico_config::cluster::ClusterServicePort {
                name: "dns".to_string(),
                protocol: Protocol::Udp,
                port: 53,
                node_port: Some(30053),
                target_port: portico_config::cluster::TargetPort::Number(5353),
            });
            svc.external_ips = vec!["192.0.2.9".parse().expect("ip")];
            svc.ingress = vec![LoadBalancerIngress {
                ip: "192.0.2.10".parse().expect("ip"),
                ip_mode: Some(IpMode::Vip),
            }];
            svc
        };
        let mut slice = web_slice();
        slice.ports.push(portico_config::cluster::EndpointPort {
            name: "dns".to_string(),
            protocol: Protocol::Udp,
            port: Some(5353),
        });
        let endpoint = |ip: &str, ready: bool, serving: bool| Endpoint {
            addresses: vec![ip.parse().expect("ip")],
            ready,
            serving,
            terminating: !ready,
            node_name: Some("node-b".to_string()),
        };
        slice.endpoints = vec![
            endpoint("10.244.0.10", true, true),
            // Terminating but serving: its flows stay.
            endpoint("10.244.0.11", false, true),
            // Neither: its flows go.
            endpoint("10.244.0.12", false, false),
        ];
        let flow = |to: &str, from: &str| {
            Flow::new(
                portico_conntrack::Protocol::Udp,
                "198.51.100.1:4000".parse().expect("addr"),
                to.parse().expect("addr"),
                from.parse().expect("addr"),
            )
        };
        let stale_in = |svc: ClusterService, flows: &[Flow]| {
            let mut planner = Planner::new(PlanOptions::default());
            planner.update(&[svc], std::slice::from_ref(&slice), &node());
            planner.udp_targets().stale(flows)
        };

        let mut flows = Vec::new();
        for to in [
            "10.96.0.10:53",
            "192.0.2.9:53",
            "192.0.2.10:53",
            "192.168.1.1:30053",
        ] {
            for from in ["10.244.0.10:5353", "10.244.0.11:5353", "10.244.0.12:5353"] {
                flows.push(flow(to, from));
            }
        }
        // The TCP port's destinations are no UDP target.
        flows.push(flow("10.96.0.10:80", "10.244.0.12:8080"));
        flows.push(flow("192.168.1.1:30080", "10.244.0.12:8080"));
        let stale: Vec<String> = stale_in(udp(web(Some("portico"))), &flows)
            .iter()
            .map(|f| f.original.dst.to_string())
            .collect();
        assert_eq!(
            stale,
            [
                "10.96.0.10:53",
                "192.0.2.9:53",
                "192.0.2.10:53",
                "192.168.1.1:30053"
            ],
            "only the flows on the endpoint that is not serving"
        );

        // The edge's Services: their load-balancer address is not captured
        // on the node, so it is no target (the edge's flows go to the
        // NodePort).
        let mut edge = udp(web(Some("portico")));
        edge.load_balancer_class = Some(DEFAULT_LOAD_BALANCER_CLASS.to_string());
        let stale: Vec<String> = stale_in(edge, &flows)
            .iter()
            .map(|f| f.original.dst.to_string())
            .collect();
        assert_eq!(
            stale,
            ["10.96.0.10:53", "192.0.2.9:53", "192.168.1.1:30053"]
        );

        // Not ours: no targets.
        let mut planner = Planner::new(PlanOptions::default());
        planner.update(&[udp(web(None))], std::slice::from_ref(&slice), &node());
        assert!(planner.udp_targets().is_empty());
    }

    #[test]
    fn planning_does_not_depend_on_input_order() {
        let mut other = web(Some("portico"));
        other.key = ServiceKey::new("default", "api");
        other.cluster_ips = vec!["10.96.0.11".parse().expect("ip")];
        other.ports[0].node_port = Some(30081);
        let a = plan(
            &[web(Some("portico")), other.clone()],
            &[web_slice()],
            &node(),
            &PlanOptions::default(),
        );
        let b = plan(
            &[other, web(Some("portico"))],
            &[web_slice()],
            &node(),
            &PlanOptions::default(),
        );
        assert_eq!(a, b);
    }
}
