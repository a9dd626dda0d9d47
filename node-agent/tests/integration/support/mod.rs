//! Shared by the integration tests: small builders for the cluster model,
//! the fixtures ([`fixtures`]), the network namespaces of the privileged
//! tests ([`netns`]) and the agent binary run inside them ([`process`]).

pub mod fixtures;
pub mod netns;
pub mod process;

use std::io::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use portico_config::cluster::{
    AddressType, ClusterService, ClusterServicePort, Endpoint, EndpointPort, EndpointSlice,
    ServiceType, TargetPort,
};
use portico_config::{Node, Protocol, ServiceKey, SessionAffinity, TrafficPolicy};

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// A Service labelled for the `portico` proxy, with no ports yet.
pub fn service(name: &str, service_type: ServiceType, cluster_ips: &[&str]) -> ClusterService {
    ClusterService {
        key: ServiceKey::new("default", name),
        service_type,
        cluster_ips: cluster_ips.iter().map(|s| ip(s)).collect(),
        load_balancer_class: None,
        ip_families: Vec::new(),
        external_ips: Vec::new(),
        load_balancer_ip: None,
        ingress: Vec::new(),
        ports: Vec::new(),
        external_traffic_policy: TrafficPolicy::Cluster,
        internal_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        session_affinity: SessionAffinity::None,
        source_ranges: portico_config::SourceRanges::Any,
        proxy_name: Some("portico".to_string()),
    }
}

pub fn port(
    name: &str,
    protocol: Protocol,
    port: u16,
    node_port: Option<u16>,
    target: TargetPort,
) -> ClusterServicePort {
    ClusterServicePort {
        name: name.to_string(),
        protocol,
        port,
        node_port,
        target_port: target,
    }
}

pub fn affinity(secs: u64) -> SessionAffinity {
    SessionAffinity::ClientIp {
        timeout: Duration::from_secs(secs),
    }
}

/// A ready endpoint on `node`.
pub fn ready(addr: &str, node: &str) -> Endpoint {
    Endpoint {
        addresses: vec![ip(addr)],
        ready: true,
        serving: true,
        terminating: false,
        node_name: Some(node.to_string()),
    }
}

/// A terminating endpoint that still serves.
pub fn terminating(addr: &str, node: &str) -> Endpoint {
    Endpoint {
        ready: false,
        serving: true,
        terminating: true,
        ..ready(addr, node)
    }
}

/// An endpoint that is neither ready nor serving.
pub fn not_ready(addr: &str, node: &str) -> Endpoint {
    Endpoint {
        ready: false,
        serving: false,
        ..ready(addr, node)
    }
}

pub fn slice(
    service: &str,
    suffix: &str,
    address_type: AddressType,
    ports: &[(&str, Protocol, u16)],
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    EndpointSlice {
        key: ServiceKey::new("default", format!("{service}-{suffix}")),
        service: ServiceKey::new("default", service),
        address_type,
        ports: ports
            .iter()
            .map(|(name, protocol, port)| EndpointPort {
                name: name.to_string(),
                protocol: *protocol,
                port: Some(*port),
            })
            .collect(),
        endpoints,
    }
}

pub fn node(name: &str, addr: &str) -> Node {
    Node {
        name: name.to_string(),
        addresses: vec![ip(addr)],
        excluded: Vec::new(),
    }
}

/// Whether privileged tests (root, `nft`, `ip`) can run here. When they
/// cannot, says so loudly; under `CI=true` that is a failure.
pub fn privileged(what: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let tools = ["nft", "ip"].iter().all(|tool| {
        std::process::Command::new(tool)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if root && tools {
        return true;
    }
    let why = format!(
        "SKIPPED {what}: needs root and the nft and ip programs (root={root}, tools={tools})"
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}; CI=true forbids skipping");
    }
    // Straight to the stderr handle: libtest captures `eprintln!` of passing
    // tests, and a skip must be seen.
    if let Err(e) = writeln!(std::io::stderr(), "{why}") {
        panic!("{why} (and stderr failed: {e})");
    }
    false
}
