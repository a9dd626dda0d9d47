//! The cluster model the node agent programs from: Services with their
//! ClusterIPs and target ports, EndpointSlices, and the agent's own Node.
//!
//! These mirror the Kubernetes objects closely (a source converts `v1`
//! Service, `discovery.k8s.io/v1` EndpointSlice and `v1` Node into them) but
//! keep only what the datapath needs, already parsed: addresses are
//! `IpAddr`s, ports are numbers, names are resolved where they can be.
//! Validation that depends on several objects (a target port named in the
//! Service but absent from a slice, an endpoint of the wrong family) is the
//! planner's job, per Service port, so one bad object never costs another
//! Service its rules.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::model::{Protocol, ServiceKey, SessionAffinity, TrafficPolicy};

/// The label that hands a Service to an alternative proxy (kube-proxy
/// ignores every Service that carries it).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// The node agent's default proxy name.
pub const DEFAULT_PROXY_NAME: &str = "portico";

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `spec.type` of a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ServiceType {
    /// Reachable on its ClusterIP only.
    #[default]
    ClusterIp,
    /// Plus a port on every node.
    NodePort,
    /// Plus an external load balancer (and usually NodePorts).
    LoadBalancer,
    /// A DNS alias; nothing to program.
    ExternalName,
}

/// `ports[].targetPort`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetPort {
    /// A port number on the endpoints.
    Number(u16),
    /// A named container port, resolved through the EndpointSlice's port
    /// whose name equals the Service port's name.
    Name(String),
}

/// One port of a Service, as the node agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClusterServicePort {
    /// The port's name (matches `EndpointSlice.ports[].name`).
    pub name: String,
    /// L4 protocol.
    pub protocol: Protocol,
    /// The port on the ClusterIP and LB addresses.
    pub port: u16,
    /// The NodePort, if one is allocated.
    pub node_port: Option<u16>,
    /// Where the endpoints listen.
    pub target_port: TargetPort,
}

/// A Service, as the node agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClusterService {
    /// `namespace/name`.
    pub key: ServiceKey,
    /// `spec.type`.
    pub service_type: ServiceType,
    /// `spec.clusterIPs` (empty or `None` for headless: nothing to program).
    pub cluster_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` plus `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `spec.ports`.
    pub ports: Vec<ClusterServicePort>,
    /// `spec.externalTrafficPolicy`.
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.internalTrafficPolicy`.
    pub internal_traffic_policy: TrafficPolicy,
    /// `spec.healthCheckNodePort`.
    pub health_check_node_port: Option<u16>,
    /// `spec.sessionAffinity` (+ timeout).
    pub session_affinity: SessionAffinity,
    /// `spec.loadBalancerSourceRanges` (or the legacy annotation), parsed;
    /// entries that do not parse are in `invalid_source_ranges`.
    pub source_ranges: Vec<IpNetwork>,
    /// Source range entries that did not parse: the LB addresses of this
    /// Service fail closed.
    pub invalid_source_ranges: Vec<String>,
    /// The value of the `service.kubernetes.io/service-proxy-name` label.
    pub proxy_name: Option<String>,
}

/// The address family of an EndpointSlice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressType {
    /// IPv4.
    IPv4,
    /// IPv6.
    IPv6,
    /// FQDN: not programmable, skipped.
    Fqdn,
}

/// `EndpointSlice.ports[]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointPort {
    /// Matches the Service port's name (empty for an unnamed port).
    pub name: String,
    /// L4 protocol.
    pub protocol: Protocol,
    /// The port on the endpoints; `None` when the slice gives none.
    pub port: Option<u16>,
}

/// `EndpointSlice.endpoints[]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Its addresses (Kubernetes uses the first).
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready` (absent = true).
    pub ready: bool,
    /// `conditions.serving` (absent = ready).
    pub serving: bool,
    /// `conditions.terminating` (absent = false).
    pub terminating: bool,
    /// `nodeName`, for `Local` traffic policies.
    pub node_name: Option<String>,
}

/// A `discovery.k8s.io/v1` EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointSlice {
    /// The slice's own `namespace/name`.
    pub key: ServiceKey,
    /// The Service it belongs to (label `kubernetes.io/service-name`).
    pub service: ServiceKey,
    /// Its address family.
    pub address_type: AddressType,
    /// Its ports.
    pub ports: Vec<EndpointPort>,
    /// Its endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// The node the agent runs on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct NodeInfo {
    /// `metadata.name`.
    pub name: String,
    /// Its addresses (InternalIP first).
    pub addresses: Vec<IpAddr>,
    /// It has a `deletionTimestamp`.
    pub deleting: bool,
    /// It carries the `ToBeDeletedByClusterAutoscaler` taint.
    pub to_be_deleted: bool,
}
