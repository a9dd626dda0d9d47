//! The merge: the config file, the Kubernetes source and the hook API
//! each contribute Services and Nodes; [`merge`] makes one [`EdgeConfig`]
//! of them for the edge, and [`Merged::fit`] keeps it inside the
//! descriptor budget ([`crate::budget`]).
//!
//! Pure. Earlier sources win: the config file first, then the others in the
//! order given. A Service whose name or listener (address, protocol, port)
//! an earlier one already holds is left out whole, with the reason naming
//! both, rather than half-served; so is a Service the budget cannot afford
//! after every earlier one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use portico_config::{EdgeConfig, Node, Protocol, Service, ServiceKey};

use crate::budget;

/// The config file's name as a source.
pub const FILE: &str = "the config file";

/// What one source contributes.
#[derive(Debug, Clone, Copy)]
pub struct Contribution<'a> {
    /// The source's name, for warnings (`kubernetes`, `the hook API`).
    pub source: &'a str,
    /// Its Services.
    pub services: &'a [Service],
    /// Its Nodes.
    pub nodes: &'a [Node],
}

/// A Service the merge left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    /// The Service.
    pub service: ServiceKey,
    /// The source that gave it.
    pub source: String,
    /// Why.
    pub reason: Reason,
}

/// Why a Service was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// An earlier source defines a Service of the same name.
    SameName {
        /// That source.
        first: String,
    },
    /// An earlier Service holds one of its listeners.
    ListenerTaken {
        /// The listener (`tcp/80 on 192.0.2.1`).
        listener: String,
        /// Its holder.
        holder: ServiceKey,
        /// The holder's source.
        source: String,
    },
    /// The descriptor budget cannot afford it.
    OverBudget(budget::Refused),
}

impl fmt::Display for LeftOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Service {} from {} is left out: ",
            self.service, self.source
        )?;
        match &self.reason {
            Reason::SameName { first } => write!(f, "{first} defines it too"),
            Reason::ListenerTaken {
                listener,
                holder,
                source,
            } => write!(f, "{listener} belongs to {holder} from {source}"),
            Reason::OverBudget(r) => write!(f, "{}", r.why()),
        }
    }
}

/// The merged configuration, and what was left out of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// What the edge serves.
    pub config: EdgeConfig,
    /// How many of its Services, first in order, are the config file's.
    pub from_file: usize,
    /// The Services left out, in order.
    pub left_out: Vec<LeftOut>,
    /// The Nodes left out (a later source naming a Node again).
    pub node_warnings: Vec<String>,
    /// The source of each Service that is not the config file's.
    sources: BTreeMap<ServiceKey, String>,
}

impl Merged {
    /// Leaves out the Services, after the config file's, that `budget`
    /// descriptors of listeners and probes cannot afford ([`budget::fit`]).
    /// The ones in `served` (admitted by an earlier merge) are weighed
    /// first, so a new Service never pushes out one already served.
    pub fn fit(mut self, budget: u64, served: &BTreeSet<ServiceKey>) -> Merged {
        // A stable sort: the file's first, then the served, each in order.
        let from_file = self.from_file;
        self.config.services[from_file..].sort_by_key(|s| !served.contains(&s.key));
        for refused in budget::fit(&mut self.config, from_file, budget) {
            self.left_out.push(LeftOut {
                source: self
                    .sources
                    .get(&refused.service)
                    .cloned()
                    .unwrap_or_default(),
                service: refused.service.clone(),
                reason: Reason::OverBudget(refused),
            });
        }
        self
    }

    /// Every warning: the Services left out, then the Nodes.
    pub fn warnings(&self) -> Vec<String> {
        self.left_out
            .iter()
            .map(ToString::to_string)
            .chain(self.node_warnings.iter().cloned())
            .collect()
    }
}

/// Merges the file's configuration with the other sources' contributions.
pub fn merge(file: &EdgeConfig, others: &[Contribution<'_>]) -> Merged {
    let mut out = EdgeConfig {
        settings: file.settings.clone(),
        services: Vec::new(),
        nodes: Vec::new(),
    };
    let mut left_out = Vec::new();
    let mut node_warnings = Vec::new();
    let mut sources = BTreeMap::new();
    let mut from_file = 0;
    let mut owners: BTreeMap<ServiceKey, &str> = BTreeMap::new();
    let mut listeners: BTreeMap<(IpAddr, Protocol, u16), (ServiceKey, &str)> = BTreeMap::new();
    let mut node_names: BTreeMap<&str, &str> = BTreeMap::new();

    let all = std::iter::once(Contribution {
        source: FILE,
        services: &file.services,
        nodes: &file.nodes,
    })
    .chain(others.iter().copied());
    for c in all {
        for svc in c.services {
            let leave_out = |reason| LeftOut {
                service: svc.key.clone(),
                source: c.source.to_string(),
                reason,
            };
            if let Some(first) = owners.get(&svc.key) {
                left_out.push(leave_out(Reason::SameName {
                    first: (*first).to_string(),
                }));
                continue;
            }
            let mine: BTreeSet<(IpAddr, Protocol, u16)> = svc
                .vips
                .iter()
                .flat_map(|vip| svc.ports.iter().map(move |p| (*vip, p.protocol, p.port)))
                .collect();
            if let Some(((vip, proto, port), (holder, source))) =
                mine.iter().find_map(|l| listeners.get(l).map(|h| (l, h)))
            {
                left_out.push(leave_out(Reason::ListenerTaken {
                    listener: format!("{}/{port} on {vip}", proto.to_string().to_lowercase()),
                    holder: holder.clone(),
                    source: (*source).to_string(),
                }));
                continue;
            }
            owners.insert(svc.key.clone(), c.source);
            for l in mine {
                listeners.insert(l, (svc.key.clone(), c.source));
            }
            out.services.push(svc.clone());
            if c.source == FILE {
                from_file += 1;
            } else {
                sources.insert(svc.key.clone(), c.source.to_string());
            }
        }
        for node in c.nodes {
            if let Some(first) = node_names.get(node.name.as_str()) {
                if *first != c.source {
                    node_warnings.push(format!(
                        "Node {} from {} is left out: {first} defines it too",
                        node.name, c.source
                    ));
                }
                continue;
            }
            node_names.insert(&node.name, c.source);
            out.nodes.push(node.clone());
        }
    }
    Merged {
        config: out,
        from_file,
        left_out,
        node_warnings,
        sources,
    }
}

#[cfg(test)]
mod tests {
    use portico_config::{
        Algorithm, ProxyProtocol, ServicePort, SessionAffinity, SourceRanges, TrafficPolicy,
    };

    use super::*;

    fn svc(name: &str, vip: &str, port: u16) -> Service {
        Service {
            key: ServiceKey::new("ns", name),
            vips: vec![vip.parse().unwrap()],
            ports: vec![ServicePort {
                name: "p".into(),
                protocol: Protocol::Tcp,
                port,
                node_port: Some(30000),
            }],
            external_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            session_affinity: SessionAffinity::None,
            source_ranges: SourceRanges::Any,
            algorithm: Algorithm::Maglev,
            proxy_protocol: ProxyProtocol::Off,
            cluster_check: None,
        }
    }

    fn node(name: &str) -> Node {
        Node {
            name: name.into(),
            addresses: vec!["10.0.0.1".parse().unwrap()],
            excluded: vec![],
        }
    }

    #[test]
    fn sources_add_up_and_the_file_wins_clashes() {
        let file = EdgeConfig {
            services: vec![svc("web", "192.0.2.1", 80)],
            nodes: vec![node("n1")],
            ..Default::default()
        };
        let kube_services = [
            svc("web", "192.0.2.9", 80), // same name as the file's
            svc("api", "192.0.2.1", 80), // same listener as the file's
            svc("dns", "192.0.2.1", 53), // fine: another port
        ];
        let kube_nodes = [node("n1"), node("n2")];
        let hook_services = [svc("dns", "192.0.2.2", 53)];
        let merged = merge(
            &file,
            &[
                Contribution {
                    source: "kubernetes",
                    services: &kube_services,
                    nodes: &kube_nodes,
                },
                Contribution {
                    source: "the hook API",
                    services: &hook_services,
                    nodes: &[],
                },
            ],
        );
        let warnings = merged.warnings();
        let names: Vec<String> = merged
            .config
            .services
            .iter()
            .map(|s| format!("{}@{}", s.key, s.vips[0]))
            .collect();
        assert_eq!(names, ["ns/web@192.0.2.1", "ns/dns@192.0.2.1"]);
        let nodes: Vec<&str> = merged
            .config
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(nodes, ["n1", "n2"]);
        assert_eq!(
            warnings,
            [
                "Service ns/web from kubernetes is left out: the config file defines it too",
                "Service ns/api from kubernetes is left out: tcp/80 on 192.0.2.1 belongs to ns/web from the config file",
                "Service ns/dns from the hook API is left out: kubernetes defines it too",
                "Node n1 from kubernetes is left out: the config file defines it too",
            ]
        );
    }

    #[test]
    fn the_budget_weighs_the_file_then_the_served_then_the_new() {
        let file = EdgeConfig {
            services: vec![svc("file", "192.0.2.1", 80)],
            nodes: vec![node("n1")],
            ..Default::default()
        };
        // No NodePort-less ports: each Service costs its listener plus the
        // shared probe of n1.
        let kube = [svc("a-new", "192.0.2.2", 80), svc("z-old", "192.0.2.3", 80)];
        let contribution = [Contribution {
            source: "kubernetes",
            services: &kube,
            nodes: &[],
        }];
        let served: BTreeSet<ServiceKey> = [ServiceKey::new("ns", "z-old")].into();
        // file: a listener (2 descriptors) and a probe; one more listener
        // fits in 5.
        let merged = merge(&file, &contribution).fit(5, &served);
        let names: Vec<&str> = merged
            .config
            .services
            .iter()
            .map(|s| s.key.name.as_str())
            .collect();
        assert_eq!(names, ["file", "z-old"]);
        assert_eq!(merged.left_out.len(), 1);
        assert_eq!(merged.left_out[0].service.name, "a-new");
        assert_eq!(merged.left_out[0].source, "kubernetes");
        assert_eq!(
            merged.left_out[0].to_string(),
            "Service ns/a-new from kubernetes is left out: its 1 listeners and 0 health probes \
             would pass this edge's descriptor budget (0 of 5 left for listeners and probes)"
        );
        // With nothing served before, the merge's order decides.
        let fresh = merge(&file, &contribution).fit(5, &BTreeSet::new());
        assert_eq!(fresh.left_out[0].service.name, "z-old");
        // The file's Services are kept even over the budget.
        let tight = merge(&file, &contribution).fit(0, &served);
        assert_eq!(tight.config.services.len(), 1);
        assert_eq!(tight.left_out.len(), 2);
    }
}
