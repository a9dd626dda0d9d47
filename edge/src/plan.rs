//! The edge's planner: the shared model in, the routing plan out.
//!
//! Pure: no sockets, no clocks, no metrics. Everything the edge decides about
//! *where* traffic may go (which listeners exist, who may connect through
//! them, which nodes back them and how each node is health-checked) is decided
//! here and can be tested without a network. Health state is not an input: the
//! snapshot builder combines this plan with the current health view.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use portico_config::{
    Algorithm, ClusterHealthCheck, EdgeConfig, HealthSettings, Node, Protocol, ProxyProtocol,
    ServiceKey, SessionAffinity, SourceRanges, TrafficPolicy,
};

use crate::source_ranges::SourceRangeSet;

/// One listening socket: a VIP, a port and a protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerKey {
    /// The L4 protocol.
    pub protocol: Protocol,
    /// VIP and port.
    pub addr: SocketAddr,
}

impl fmt::Display for ListenerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.protocol.to_string().to_lowercase(),
            self.addr
        )
    }
}

/// What a health probe checks, and where. Probes are shared: every Service
/// port that needs the same target uses one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HealthTarget {
    /// kube-proxy's node health server: `GET http://node:10256/healthz`.
    NodeProxy(SocketAddr),
    /// A `Local` Service's `healthCheckNodePort`: `GET http://node:port/`,
    /// 200 when the node has local endpoints, 503 when not; the
    /// `X-Load-Balancing-Endpoint-Weight` header is the node's weight.
    ServiceLocal(SocketAddr),
    /// A TCP connect to the NodePort (fallback where nothing serves 10256).
    TcpConnect(SocketAddr),
}

impl HealthTarget {
    /// The address probed.
    pub fn addr(&self) -> SocketAddr {
        match *self {
            HealthTarget::NodeProxy(a)
            | HealthTarget::ServiceLocal(a)
            | HealthTarget::TcpConnect(a) => a,
        }
    }

    /// A short name of the kind of check, used as a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            HealthTarget::NodeProxy(_) => "node-proxy",
            HealthTarget::ServiceLocal(_) => "service-local",
            HealthTarget::TcpConnect(_) => "tcp",
        }
    }
}

impl fmt::Display for HealthTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.addr())
    }
}

/// One node behind a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PlannedBackend {
    /// The node's name: its identity for consistent hashing.
    pub node: Arc<str>,
    /// `nodeAddress:nodePort`, in the VIP's address family when the node has one.
    pub addr: SocketAddr,
    /// How this backend's health is judged.
    pub health: HealthTarget,
}

/// Who may connect through a route.
#[derive(Debug, Clone)]
pub enum Access {
    /// Everyone.
    Any,
    /// Only clients inside these ranges.
    Ranges(Arc<SourceRangeSet>),
    /// No one: the ranges could not be parsed (fail closed).
    Closed {
        /// Why, naming the offending entries.
        reason: Arc<str>,
    },
}

impl Access {
    /// Whether `client` may connect.
    pub fn allows(&self, client: IpAddr) -> bool {
        match self {
            Access::Any => true,
            Access::Ranges(set) => set.contains(client),
            Access::Closed { .. } => false,
        }
    }
}

/// Why a planned route cannot carry traffic although its listener exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteProblem {
    /// The Service port has no NodePort (`allocateLoadBalancerNodePorts: false`).
    NoNodePort,
    /// No node is eligible (all excluded, or none known).
    NoEligibleNodes,
}

impl fmt::Display for RouteProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RouteProblem::NoNodePort => "no NodePort allocated for this port",
            RouteProblem::NoEligibleNodes => "no eligible nodes",
        })
    }
}

/// Everything the data path needs for one listener.
#[derive(Debug, Clone)]
pub struct PlannedRoute {
    /// The Service.
    pub service: ServiceKey,
    /// The Service port's name.
    pub port_name: Arc<str>,
    /// The Service port (as clients see it).
    pub port: u16,
    /// Source-range policy.
    pub access: Access,
    /// Eligible nodes, sorted by node name.
    pub backends: Vec<PlannedBackend>,
    /// Node selection.
    pub algorithm: Algorithm,
    /// ClientIP affinity.
    pub affinity: SessionAffinity,
    /// PROXY protocol towards nodes.
    pub proxy_protocol: ProxyProtocol,
    /// Why the route cannot carry traffic, if it cannot.
    pub problem: Option<RouteProblem>,
}

/// A problem the planner found in its input; the rest of the plan is intact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanWarning {
    /// The Service concerned.
    pub service: ServiceKey,
    /// What is wrong.
    pub message: String,
}

/// The planner's output.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// One entry per listener.
    pub routes: BTreeMap<ListenerKey, Arc<PlannedRoute>>,
    /// Every health target any route needs.
    pub targets: BTreeSet<HealthTarget>,
    /// Which node each health target belongs to (for status and metrics).
    pub target_nodes: BTreeMap<HealthTarget, Arc<str>>,
    /// Problems found (each also visible on its route).
    pub warnings: Vec<PlanWarning>,
}

/// Picks the address of `node` to use for a VIP of `family_v4`'s family:
/// the first address of the same family, else the first address.
pub fn node_address(node: &Node, vip: IpAddr) -> Option<IpAddr> {
    node.addresses
        .iter()
        .copied()
        .find(|a| a.is_ipv4() == vip.is_ipv4())
        .or_else(|| node.addresses.first().copied())
}

/// Builds the routing plan for `config`.
pub fn plan(config: &EdgeConfig) -> Plan {
    let health = &config.settings.health;
    let mut nodes: Vec<&Node> = config.nodes.iter().filter(|n| n.eligible()).collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let node_names: BTreeMap<&str, Arc<str>> = nodes
        .iter()
        .map(|n| (n.name.as_str(), Arc::from(n.name.as_str())))
        .collect();

    let mut out = Plan::default();
    for svc in &config.services {
        if svc.ports.iter().any(|p| p.protocol == Protocol::Sctp) {
            out.warnings.push(PlanWarning {
                service: svc.key.clone(),
                message: "SCTP ports are not forwarded by the edge; they are skipped".into(),
            });
        }
        let access = match &svc.source_ranges {
            SourceRanges::Any => Access::Any,
            SourceRanges::Only(nets) => Access::Ranges(Arc::new(SourceRangeSet::new(nets))),
            SourceRanges::Invalid { errors } => {
                let reason = format!("invalid loadBalancerSourceRanges: {}", errors.join("; "));
                out.warnings.push(PlanWarning {
                    service: svc.key.clone(),
                    message: format!("{reason}; failing closed"),
                });
                Access::Closed {
                    reason: reason.into(),
                }
            }
        };
        for port in svc.ports.iter().filter(|p| p.protocol != Protocol::Sctp) {
            for &vip in &svc.vips {
                let key = ListenerKey {
                    protocol: port.protocol,
                    addr: SocketAddr::new(vip, port.port),
                };
                let mut backends = Vec::new();
                let problem = match port.node_port {
                    None => Some(RouteProblem::NoNodePort),
                    Some(_) if nodes.is_empty() => Some(RouteProblem::NoEligibleNodes),
                    Some(node_port) => {
                        for node in &nodes {
                            let Some(ip) = node_address(node, vip) else {
                                continue;
                            };
                            let target = health_target(
                                svc.external_traffic_policy,
                                svc.health_check_node_port,
                                svc.cluster_check.unwrap_or(health.cluster_check),
                                health,
                                port.protocol,
                                ip,
                                node_port,
                            );
                            let name = node_names[node.name.as_str()].clone();
                            out.targets.insert(target);
                            out.target_nodes.insert(target, name.clone());
                            backends.push(PlannedBackend {
                                node: name,
                                addr: SocketAddr::new(ip, node_port),
                                health: target,
                            });
                        }
                        if backends.is_empty() {
                            Some(RouteProblem::NoEligibleNodes)
                        } else {
                            None
                        }
                    }
                };
                if let Some(p) = &problem {
                    out.warnings.push(PlanWarning {
                        service: svc.key.clone(),
                        message: format!("port {} ({}): {p}", port.port, port.name),
                    });
                }
                out.routes.insert(
                    key,
                    Arc::new(PlannedRoute {
                        service: svc.key.clone(),
                        port_name: Arc::from(port.name.as_str()),
                        port: port.port,
                        access: access.clone(),
                        backends,
                        algorithm: svc.algorithm,
                        affinity: svc.session_affinity,
                        proxy_protocol: svc.proxy_protocol,
                        problem,
                    }),
                );
            }
        }
    }
    out.warnings.dedup();
    out
}

fn health_target(
    policy: TrafficPolicy,
    hc_node_port: Option<u16>,
    cluster_check: ClusterHealthCheck,
    health: &HealthSettings,
    protocol: Protocol,
    ip: IpAddr,
    node_port: u16,
) -> HealthTarget {
    match (policy, hc_node_port) {
        (TrafficPolicy::Local, Some(hc)) => HealthTarget::ServiceLocal(SocketAddr::new(ip, hc)),
        // A Local Service without a health check port cannot come from the
        // config file (validation refuses it); from other sources, judging
        // the node by its NodePort is the closest safe reading.
        (TrafficPolicy::Local, None) => HealthTarget::TcpConnect(SocketAddr::new(ip, node_port)),
        (TrafficPolicy::Cluster, _) => match cluster_check {
            ClusterHealthCheck::KubeProxy => {
                HealthTarget::NodeProxy(SocketAddr::new(ip, health.kube_proxy_port))
            }
            // A UDP NodePort cannot be probed with a TCP connect: UDP ports
            // are judged by the node health server even in fallback mode
            // (and fail open when nothing serves it).
            ClusterHealthCheck::TcpNodePort if protocol == Protocol::Udp => {
                HealthTarget::NodeProxy(SocketAddr::new(ip, health.kube_proxy_port))
            }
            ClusterHealthCheck::TcpNodePort => {
                HealthTarget::TcpConnect(SocketAddr::new(ip, node_port))
            }
        },
    }
}

/// How long a ClientIP affinity entry lives, if the route has affinity.
pub fn affinity_timeout(route: &PlannedRoute) -> Option<Duration> {
    match route.affinity {
        SessionAffinity::None => None,
        SessionAffinity::ClientIp { timeout } => Some(timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_config::{ExclusionReason, Service, ServicePort};

    fn node(name: &str, addrs: &[&str]) -> Node {
        Node {
            name: name.into(),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            excluded: vec![],
        }
    }

    fn service(name: &str, vips: &[&str], ports: &[(u16, Option<u16>)]) -> Service {
        Service {
            key: ServiceKey::new("default", name),
            vips: vips.iter().map(|a| a.parse().unwrap()).collect(),
            ports: ports
                .iter()
                .enumerate()
                .map(|(i, &(port, node_port))| ServicePort {
                    name: format!("p{i}"),
                    protocol: Protocol::Tcp,
                    port,
                    node_port,
                })
                .collect(),
            external_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            session_affinity: SessionAffinity::None,
            source_ranges: SourceRanges::Any,
            algorithm: Algorithm::Maglev,
            proxy_protocol: ProxyProtocol::Off,
            cluster_check: None,
        }
    }

    fn config(services: Vec<Service>, nodes: Vec<Node>) -> EdgeConfig {
        EdgeConfig {
            settings: Default::default(),
            services,
            nodes,
        }
    }

    #[test]
    fn one_listener_per_vip_and_port_backed_by_every_eligible_node() {
        let mut excluded = node("c", &["10.0.0.3"]);
        excluded.excluded.push(ExclusionReason::ExcludeLabel);
        let cfg = config(
            vec![service(
                "web",
                &["192.0.2.1", "2001:db8::1"],
                &[(80, Some(30080)), (443, Some(30443))],
            )],
            vec![
                node("b", &["10.0.0.2", "fd00::2"]),
                node("a", &["10.0.0.1"]),
                excluded,
            ],
        );
        let p = plan(&cfg);
        let keys: Vec<String> = p.routes.keys().map(|k| k.to_string()).collect();
        assert_eq!(
            keys,
            [
                "tcp/192.0.2.1:80",
                "tcp/192.0.2.1:443",
                "tcp/[2001:db8::1]:80",
                "tcp/[2001:db8::1]:443"
            ]
        );
        let v4 = &p.routes[&ListenerKey {
            protocol: Protocol::Tcp,
            addr: "192.0.2.1:80".parse().unwrap(),
        }];
        let got: Vec<(String, String)> = v4
            .backends
            .iter()
            .map(|b| (b.node.to_string(), b.addr.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("a".into(), "10.0.0.1:30080".into()),
                ("b".into(), "10.0.0.2:30080".into())
            ]
        );
        // The v6 VIP uses a node's v6 address when it has one, else its first.
        let v6 = &p.routes[&ListenerKey {
            protocol: Protocol::Tcp,
            addr: "[2001:db8::1]:443".parse().unwrap(),
        }];
        let got: Vec<String> = v6.backends.iter().map(|b| b.addr.to_string()).collect();
        assert_eq!(got, ["10.0.0.1:30443", "[fd00::2]:30443"]);
        // Cluster policy: one kube-proxy probe per node address, shared by every port.
        let targets: Vec<String> = p.targets.iter().map(|t| t.to_string()).collect();
        assert_eq!(
            targets,
            [
                "node-proxy:10.0.0.1:10256",
                "node-proxy:10.0.0.2:10256",
                "node-proxy:[fd00::2]:10256"
            ]
        );
    }

    #[test]
    fn local_policy_probes_the_health_check_node_port() {
        let mut svc = service("web", &["192.0.2.1"], &[(80, Some(30080))]);
        svc.external_traffic_policy = TrafficPolicy::Local;
        svc.health_check_node_port = Some(32000);
        let p = plan(&config(vec![svc], vec![node("a", &["10.0.0.1"])]));
        let targets: Vec<String> = p.targets.iter().map(|t| t.to_string()).collect();
        assert_eq!(targets, ["service-local:10.0.0.1:32000"]);
    }

    #[test]
    fn tcp_fallback_probes_the_node_port() {
        let mut cfg = config(
            vec![service("web", &["192.0.2.1"], &[(80, Some(30080))])],
            vec![node("a", &["10.0.0.1"])],
        );
        cfg.settings.health.cluster_check = ClusterHealthCheck::TcpNodePort;
        let p = plan(&cfg);
        let targets: Vec<String> = p.targets.iter().map(|t| t.to_string()).collect();
        assert_eq!(targets, ["tcp:10.0.0.1:30080"]);
    }

    #[test]
    fn a_service_can_override_the_cluster_check() {
        let mut tcp = service("tcp", &["192.0.2.1"], &[(80, Some(30080))]);
        tcp.cluster_check = Some(ClusterHealthCheck::TcpNodePort);
        let mut cfg = config(
            vec![tcp, service("proxy", &["192.0.2.2"], &[(80, Some(30081))])],
            vec![node("a", &["10.0.0.1"])],
        );
        cfg.settings.health.cluster_check = ClusterHealthCheck::KubeProxy;
        let targets: Vec<String> = plan(&cfg).targets.iter().map(|t| t.to_string()).collect();
        assert_eq!(targets, ["node-proxy:10.0.0.1:10256", "tcp:10.0.0.1:30080"]);
    }

    #[test]
    fn invalid_ranges_close_only_that_service() {
        let mut bad = service("bad", &["192.0.2.1"], &[(80, Some(30080))]);
        bad.source_ranges = SourceRanges::Invalid {
            errors: vec!["10.0.0.0/33".into()],
        };
        let mut ranged = service("ranged", &["192.0.2.2"], &[(80, Some(30081))]);
        ranged.source_ranges = SourceRanges::Only(vec!["10.0.0.0/8".parse().unwrap()]);
        let open = service("open", &["192.0.2.3"], &[(80, Some(30082))]);
        let p = plan(&config(
            vec![bad, ranged, open],
            vec![node("a", &["10.0.0.1"])],
        ));
        let access = |ip: &str| {
            let key = ListenerKey {
                protocol: Protocol::Tcp,
                addr: SocketAddr::new(ip.parse().unwrap(), 80),
            };
            p.routes[&key].access.clone()
        };
        assert!(!access("192.0.2.1").allows("10.1.2.3".parse().unwrap()));
        assert!(access("192.0.2.2").allows("10.1.2.3".parse().unwrap()));
        assert!(!access("192.0.2.2").allows("11.1.2.3".parse().unwrap()));
        assert!(access("192.0.2.3").allows("11.1.2.3".parse().unwrap()));
        assert_eq!(p.warnings.len(), 1);
        assert!(
            p.warnings[0].message.contains("10.0.0.0/33"),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn ports_without_node_ports_or_nodes_are_reported_not_dropped() {
        let p = plan(&config(
            vec![service(
                "web",
                &["192.0.2.1"],
                &[(80, None), (81, Some(30081))],
            )],
            vec![],
        ));
        let problems: Vec<Option<RouteProblem>> =
            p.routes.values().map(|r| r.problem.clone()).collect();
        assert_eq!(
            problems,
            [
                Some(RouteProblem::NoNodePort),
                Some(RouteProblem::NoEligibleNodes)
            ]
        );
        assert_eq!(p.warnings.len(), 2);
    }
}
