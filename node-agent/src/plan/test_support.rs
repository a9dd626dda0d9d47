//! Inputs the planner's tests share: the Service `default/web` (NodePort
//! 30080 -> 8080), its slice with one ready endpoint on `node-a`, and
//! `node-a`.

use portico_config::cluster::{
    AddressType, ClusterService, ClusterServicePort, Endpoint, EndpointPort, EndpointSlice,
    ServiceType, TargetPort,
};
use portico_config::{Node, Protocol, ServiceKey, SessionAffinity, TrafficPolicy};

use super::Plan;

/// `default/web`: a NodePort Service (80 -> 8080, NodePort 30080),
/// labelled for `proxy_name`.
pub(super) fn web(proxy_name: Option<&str>) -> ClusterService {
    ClusterService {
        key: ServiceKey::new("default", "web"),
        service_type: ServiceType::NodePort,
        cluster_ips: vec!["10.96.0.10".parse().expect("ip")],
        load_balancer_class: None,
        ip_families: Vec::new(),
        external_ips: Vec::new(),
        load_balancer_ip: None,
        ingress: Vec::new(),
        ports: vec![ClusterServicePort {
            name: "http".to_string(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: Some(30080),
            target_port: TargetPort::Number(8080),
        }],
        external_traffic_policy: TrafficPolicy::Cluster,
        internal_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        session_affinity: SessionAffinity::None,
        source_ranges: portico_config::SourceRanges::Any,
        proxy_name: proxy_name.map(str::to_string),
    }
}

/// `default/web`'s slice: one ready endpoint, on `node-a`.
pub(super) fn web_slice() -> EndpointSlice {
    EndpointSlice {
        key: ServiceKey::new("default", "web-1"),
        service: ServiceKey::new("default", "web"),
        address_type: AddressType::IPv4,
        ports: vec![EndpointPort {
            name: "http".to_string(),
            protocol: Protocol::Tcp,
            port: Some(8080),
        }],
        endpoints: vec![Endpoint {
            addresses: vec!["10.244.0.10".parse().expect("ip")],
            ready: true,
            serving: true,
            terminating: false,
            node_name: Some("node-a".to_string()),
        }],
    }
}

/// The node the tests plan for.
pub(super) fn node() -> Node {
    Node {
        name: "node-a".to_string(),
        ..Node::default()
    }
}

/// The names of `default/web`'s `service-` chains.
pub(super) fn service_chains(p: &Plan) -> Vec<&str> {
    p.ruleset
        .chains
        .keys()
        .filter(|n| n.starts_with("service-") && n.contains("/web/"))
        .map(String::as_str)
        .collect()
}
