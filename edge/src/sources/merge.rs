//! The merge: the config file, the Kubernetes source and the hook API
//! each contribute Services and Nodes; [`merge`] makes one [`EdgeConfig`]
//! of them for the edge.
//!
//! Pure. Earlier sources win: the config file first, then the others in the
//! order given. A Service whose name or listener (address, protocol, port)
//! an earlier one already holds is left out whole, with a warning naming
//! both, rather than half-served.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use portico_config::{EdgeConfig, Node, Protocol, Service, ServiceKey};

/// What one source contributes.
#[derive(Debug, Clone, Copy)]
pub struct Contribution<'a> {
    /// The source's name, for warnings (`kubernetes`, `hook API`).
    pub source: &'a str,
    /// Its Services.
    pub services: &'a [Service],
    /// Its Nodes.
    pub nodes: &'a [Node],
}

/// Merges the file's configuration with the other sources' contributions.
/// Returns the configuration and a warning per left-out Service or Node.
pub fn merge(file: &EdgeConfig, others: &[Contribution<'_>]) -> (EdgeConfig, Vec<String>) {
    let mut out = EdgeConfig {
        settings: file.settings.clone(),
        services: Vec::new(),
        nodes: Vec::new(),
    };
    let mut warnings = Vec::new();
    let mut owners: BTreeMap<ServiceKey, &str> = BTreeMap::new();
    let mut listeners: BTreeMap<(IpAddr, Protocol, u16), (ServiceKey, &str)> = BTreeMap::new();
    let mut node_names: BTreeMap<&str, &str> = BTreeMap::new();

    let all = std::iter::once(Contribution {
        source: "the config file",
        services: &file.services,
        nodes: &file.nodes,
    })
    .chain(others.iter().copied());
    for c in all {
        for svc in c.services {
            if let Some(first) = owners.get(&svc.key) {
                warnings.push(format!(
                    "Service {} from {} is left out: {first} defines it too",
                    svc.key, c.source
                ));
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
                warnings.push(format!(
                    "Service {} from {} is left out: {}/{} on {vip} belongs to {holder} from {source}",
                    svc.key,
                    c.source,
                    proto.to_string().to_lowercase(),
                    port
                ));
                continue;
            }
            owners.insert(svc.key.clone(), c.source);
            for l in mine {
                listeners.insert(l, (svc.key.clone(), c.source));
            }
            out.services.push(svc.clone());
        }
        for node in c.nodes {
            if let Some(first) = node_names.get(node.name.as_str()) {
                if *first != c.source {
                    warnings.push(format!(
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
    (out, warnings)
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
        let (merged, warnings) = merge(
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
        let names: Vec<String> = merged
            .services
            .iter()
            .map(|s| format!("{}@{}", s.key, s.vips[0]))
            .collect();
        assert_eq!(names, ["ns/web@192.0.2.1", "ns/dns@192.0.2.1"]);
        let nodes: Vec<&str> = merged.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(nodes, ["n1", "n2"]);
        assert_eq!(
            warnings,
            [
                "Service ns/web from kubernetes is left out: the config file defines it too",
                "Service ns/api from kubernetes is left out: tcp/80 on 192.0.2.1 belongs to ns/web from the config file",
                "Node n1 from kubernetes is left out: the config file defines it too",
                "Service ns/dns from the hook API is left out: kubernetes defines it too",
            ]
        );
    }
}
