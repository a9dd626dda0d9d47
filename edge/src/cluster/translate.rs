//! Kubernetes objects in, the edge's model out: which Services are ours,
//! and what each one and each Node means for the edge.
//!
//! Pure. The objects themselves are read by the shared reader
//! ([`portico_config::kube`]), the one the node agent uses too; this module
//! adds what only the edge reads: its class, its annotations and the
//! address request for the IPAM. A mistake in one object never costs another
//! object anything: an object the reader refuses is left out and reported;
//! an invalid annotation falls back to its default and is reported; invalid
//! source ranges make that Service fail closed; a Node without a usable
//! address is left out. Every problem names the object and the field.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use portico_config::cluster::{ClusterService, ServiceType};
use portico_config::kube::{quoted, read_node, read_service, Read};
use portico_config::{
    Algorithm, ClusterHealthCheck, IpFamily, KubernetesSettings, Node, ProxyProtocol, Service,
    ServicePort,
};

pub use portico_config::kube::FieldProblem;

use crate::ipam::AddressRequest;

/// The longest problem message the edge's own reading gives.
const MAX_PROBLEM: usize = 512;

/// The annotations a Service may carry, with what each one means: the
/// README's annotation table is written from this list (a test keeps them
/// in step).
pub const ANNOTATIONS: &[(&str, &str)] = &[
    (LOAD_BALANCER_IPS, "Comma-separated addresses the Service must get (one per family); each must lie in a pool and be free. Takes precedence over `spec.loadBalancerIP`."),
    (ADDRESS_POOL, "The address pool to assign from (default: the first pool with a free address)."),
    (ALLOW_SHARED_IP, "Sharing key: Services with the same key may share an address when no port (protocol and number) clashes."),
    (ALGORITHM, "`maglev` (default), `round-robin` or `least-connections`."),
    (PROXY_PROTOCOL, "`off` (default), `v1` or `v2`: send a PROXY protocol header to the node."),
    (HEALTH_CHECK, "`kube-proxy` or `tcp-node-port`: how nodes are checked for this Service under `externalTrafficPolicy: Cluster` (default: `settings.health.clusterCheck`)."),
];

/// `portico.io/load-balancer-ips`.
pub const LOAD_BALANCER_IPS: &str = "portico.io/load-balancer-ips";
/// `portico.io/address-pool`.
pub const ADDRESS_POOL: &str = "portico.io/address-pool";
/// `portico.io/allow-shared-ip`.
pub const ALLOW_SHARED_IP: &str = "portico.io/allow-shared-ip";
/// `portico.io/algorithm`.
pub const ALGORITHM: &str = "portico.io/algorithm";
/// `portico.io/proxy-protocol`.
pub const PROXY_PROTOCOL: &str = "portico.io/proxy-protocol";
/// `portico.io/health-check`.
pub const HEALTH_CHECK: &str = "portico.io/health-check";

/// Whether a Service is one the edge implements: `type: LoadBalancer` with
/// our `loadBalancerClass` (or none, when the edge is the default class).
pub fn is_ours(svc: &ClusterService, settings: &KubernetesSettings) -> bool {
    svc.service_type == ServiceType::LoadBalancer
        && match svc.load_balancer_class.as_deref() {
            Some(class) => class == settings.load_balancer_class,
            None => settings.default_class,
        }
}

/// One of our Services, translated: the model (without VIPs, which the
/// IPAM decides), what it asks of the IPAM, and every problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslatedService {
    /// The model Service; `vips` is empty.
    pub service: Service,
    /// Its address request.
    pub request: AddressRequest,
    /// Problems, each already acted on (default used, Service closed, ...).
    pub problems: Vec<FieldProblem>,
}

/// Reads and translates a Service; the `Err` is the shared reader's
/// refusal, naming the field.
pub fn translate_service(svc: &core::Service) -> Result<TranslatedService, FieldProblem> {
    let read = read_service(svc)?;
    Ok(translate(read, svc.metadata.annotations.as_ref()))
}

/// Translates a Service the shared reader has read; `annotations` are the
/// object's own (the edge's options live there).
pub fn translate(
    read: Read<ClusterService>,
    annotations: Option<&BTreeMap<String, String>>,
) -> TranslatedService {
    let Read {
        value: svc,
        mut problems,
    } = read;
    let mut notes = Annotations {
        object: format!("Service {}", svc.key),
        annotations,
        problems: &mut problems,
    };
    let options = notes.options();
    let request = notes.address_request(&svc);
    let ports = svc
        .ports
        .iter()
        .map(|p| ServicePort {
            name: p.name.clone(),
            protocol: p.protocol,
            port: p.port,
            node_port: p.node_port,
        })
        .collect();
    TranslatedService {
        service: Service {
            key: svc.key,
            vips: Vec::new(),
            ports,
            external_traffic_policy: svc.external_traffic_policy,
            health_check_node_port: svc.health_check_node_port,
            session_affinity: svc.session_affinity,
            source_ranges: svc.source_ranges,
            algorithm: options.algorithm,
            proxy_protocol: options.proxy_protocol,
            cluster_check: options.cluster_check,
        },
        request,
        problems,
    }
}

/// The per-Service options the edge's annotations set.
struct Options {
    algorithm: Algorithm,
    proxy_protocol: ProxyProtocol,
    cluster_check: Option<ClusterHealthCheck>,
}

/// A Service's annotations as the edge reads them; what cannot be used is
/// reported (and its default used).
struct Annotations<'a> {
    object: String,
    annotations: Option<&'a BTreeMap<String, String>>,
    problems: &'a mut Vec<FieldProblem>,
}

impl Annotations<'_> {
    /// The annotation's value, trimmed; `None` when absent or blank.
    fn get(&self, name: &str) -> Option<&str> {
        self.annotations
            .and_then(|a| a.get(name))
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// Reports a problem; a message longer than [`MAX_PROBLEM`] (one that
    /// quotes a long value) is cut, with its length noted.
    fn problem(&mut self, field: String, mut message: String) {
        if message.len() > MAX_PROBLEM {
            let total = message.len();
            let mut cut = MAX_PROBLEM;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(&format!("... ({total} bytes)"));
        }
        self.problems.push(FieldProblem {
            object: self.object.clone(),
            field,
            message,
        });
    }

    /// An annotation parsed by `T::from_str`; its default (`None`) with a
    /// problem saying `fallback` when it does not parse.
    fn parsed<T>(&mut self, name: &str, fallback: &str) -> Option<T>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        let parsed = self.get(name)?.parse::<T>();
        match parsed {
            Ok(value) => Some(value),
            Err(e) => {
                self.problem(
                    format!("metadata.annotations[{name}]"),
                    format!("{e}; {fallback}"),
                );
                None
            }
        }
    }

    fn options(&mut self) -> Options {
        Options {
            algorithm: self.parsed(ALGORITHM, "using maglev").unwrap_or_default(),
            proxy_protocol: self
                .parsed(PROXY_PROTOCOL, "sending no PROXY header")
                .unwrap_or(ProxyProtocol::Off),
            cluster_check: self.parsed(HEALTH_CHECK, "using settings.health.clusterCheck"),
        }
    }

    /// What the Service asks of the IPAM. Wanted addresses come from the
    /// annotation, else the deprecated `spec.loadBalancerIP`, and name
    /// their families themselves; an unreadable wish asks for nothing.
    fn address_request(&mut self, svc: &ClusterService) -> AddressRequest {
        let (wanted_text, wanted_field) = match self.get(LOAD_BALANCER_IPS) {
            Some(t) => (
                Some(t.to_owned()),
                format!("metadata.annotations[{LOAD_BALANCER_IPS}]"),
            ),
            None => (
                svc.load_balancer_ip.clone(),
                "spec.loadBalancerIP".to_string(),
            ),
        };
        let mut wanted: Vec<IpAddr> = Vec::new();
        let mut wanted_ok = true;
        for text in wanted_text.iter().flat_map(|t| t.split(',')) {
            match text.trim().parse::<IpAddr>() {
                Ok(ip) if wanted.iter().any(|w| w.is_ipv4() == ip.is_ipv4()) => {
                    self.problem(
                        wanted_field.clone(),
                        format!("more than one address of the family of {ip}; no address assigned"),
                    );
                    wanted_ok = false;
                }
                Ok(ip) => wanted.push(ip),
                Err(_) => {
                    self.problem(
                        wanted_field.clone(),
                        format!(
                            "{} is not an IP address; no address assigned",
                            quoted(text.trim())
                        ),
                    );
                    wanted_ok = false;
                }
            }
        }
        let families = if !wanted_ok {
            Vec::new()
        } else if !wanted.is_empty() {
            wanted.iter().map(|a| IpFamily::of(*a)).collect()
        } else if svc.ip_families.is_empty() {
            vec![IpFamily::V4]
        } else {
            svc.ip_families.clone()
        };
        AddressRequest {
            owner: svc.key.to_string(),
            // The reading carries no metadata; the reconcile fills it in.
            created: None,
            families,
            wanted,
            current: svc.ingress.iter().map(|i| i.ip).collect(),
            pool: self.get(ADDRESS_POOL).map(str::to_string),
            sharing_key: self.get(ALLOW_SHARED_IP).map(str::to_string),
            ports: svc.ports.iter().map(|p| (p.protocol, p.port)).collect(),
        }
    }
}

/// Reads a Node for the edge: its addresses (InternalIP first, then
/// ExternalIP) and why it must not receive traffic, with what the reader
/// worked around. A Node the reader refuses, or without a usable address,
/// is the `Err` and is left out.
pub fn translate_node(node: &core::Node) -> Result<Read<Node>, FieldProblem> {
    let read = read_node(node)?;
    if read.value.addresses.is_empty() {
        return Err(FieldProblem {
            object: format!("Node {}", read.value.name),
            field: "status.addresses".into(),
            message: "no InternalIP or ExternalIP address; node not used".into(),
        });
    }
    Ok(read)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use portico_config::names::{
        EXCLUDE_FROM_LOAD_BALANCERS_LABEL as EXCLUDE_LABEL,
        LEGACY_SOURCE_RANGES_ANNOTATION as LEGACY_SOURCE_RANGES, TO_BE_DELETED_TAINT,
    };
    use portico_config::{
        ExclusionReason, Protocol, ServiceKey, SessionAffinity, SourceRanges, TrafficPolicy,
    };

    use super::*;

    /// What the edge serves of a Service, in the shared table's terms.
    pub(crate) fn outcome(s: &Service) -> portico_config::kube::cases::Outcome {
        portico_config::kube::cases::Outcome {
            key: s.key.clone(),
            ports: s
                .ports
                .iter()
                .map(|p| (p.protocol, p.port, p.node_port))
                .collect(),
            external_traffic_policy: s.external_traffic_policy,
            health_check_node_port: s.health_check_node_port,
            session_affinity: s.session_affinity,
            source_ranges: s.source_ranges.clone(),
        }
    }

    /// [`is_ours`] of a Service as the shared reader reads it.
    fn owned(svc: &core::Service, settings: &KubernetesSettings) -> bool {
        is_ours(&read_service(svc).expect("reads").value, settings)
    }

    fn svc(json: serde_json::Value) -> core::Service {
        serde_json::from_value(json).expect("a Service")
    }

    fn lb(extra_spec: serde_json::Value, annotations: serde_json::Value) -> core::Service {
        let mut spec = serde_json::json!({
            "type": "LoadBalancer",
            "loadBalancerClass": "portico.io/edge",
            "ipFamilies": ["IPv4"],
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "nodePort": 30080}],
        });
        spec.as_object_mut()
            .unwrap()
            .extend(extra_spec.as_object().unwrap().clone());
        svc(serde_json::json!({
            "metadata": {"namespace": "shop", "name": "web", "annotations": annotations},
            "spec": spec,
        }))
    }

    #[test]
    fn the_readme_documents_every_annotation_as_it_is() {
        let readme = include_str!("../../../README.md");
        let rows: Vec<&str> = readme
            .lines()
            .filter(|l| l.starts_with("| `portico.io/"))
            .collect();
        let expected: Vec<String> = ANNOTATIONS
            .iter()
            .map(|(name, meaning)| format!("| `{name}` | {meaning} |"))
            .collect();
        assert_eq!(
            rows, expected,
            "README's annotation table is out of step with ANNOTATIONS"
        );
    }

    #[test]
    fn ownership_follows_type_and_class() {
        let ours = KubernetesSettings::default();
        let default_class = KubernetesSettings {
            default_class: true,
            ..Default::default()
        };
        let classless = lb(
            serde_json::json!({"loadBalancerClass": null}),
            serde_json::json!({}),
        );
        assert!(owned(
            &lb(serde_json::json!({}), serde_json::json!({})),
            &ours
        ));
        assert!(!owned(&classless, &ours));
        assert!(owned(&classless, &default_class));
        let other = lb(
            serde_json::json!({"loadBalancerClass": "example.com/other"}),
            serde_json::json!({}),
        );
        assert!(!owned(&other, &default_class));
        let node_port = lb(
            serde_json::json!({"type": "NodePort"}),
            serde_json::json!({}),
        );
        assert!(!owned(&node_port, &default_class));
    }

    #[test]
    fn spec_fields_become_the_model() {
        let t = translate_service(&lb(
            serde_json::json!({
                "externalTrafficPolicy": "Local",
                "healthCheckNodePort": 32000,
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                "loadBalancerSourceRanges": ["192.0.2.0/24", "10.1.2.3/8"],
                "ipFamilies": ["IPv6", "IPv4"],
                "ports": [
                    {"name": "dns", "protocol": "UDP", "port": 53, "nodePort": 30053},
                    {"name": "tcp", "port": 5353},
                ],
            }),
            serde_json::json!({
                "portico.io/algorithm": "least-connections",
                "portico.io/proxy-protocol": "v2",
                "portico.io/health-check": "tcp-node-port",
                "portico.io/address-pool": "public",
                "portico.io/allow-shared-ip": "dns",
            }),
        ))
        .unwrap();
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        let s = &t.service;
        assert_eq!(s.key, ServiceKey::new("shop", "web"));
        assert_eq!(s.external_traffic_policy, TrafficPolicy::Local);
        assert_eq!(s.health_check_node_port, Some(32000));
        assert_eq!(
            s.session_affinity,
            SessionAffinity::ClientIp {
                timeout: Duration::from_secs(60)
            }
        );
        assert_eq!(s.algorithm, Algorithm::LeastConnections);
        assert_eq!(s.proxy_protocol, ProxyProtocol::V2);
        assert_eq!(s.cluster_check, Some(ClusterHealthCheck::TcpNodePort));
        assert_eq!(
            s.ports,
            [
                ServicePort {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    port: 53,
                    node_port: Some(30053)
                },
                ServicePort {
                    name: "tcp".into(),
                    protocol: Protocol::Tcp,
                    port: 5353,
                    node_port: None
                },
            ]
        );
        let SourceRanges::Only(nets) = &s.source_ranges else {
            panic!("{:?}", s.source_ranges)
        };
        assert_eq!(nets.len(), 2);
        assert_eq!(t.request.families, [IpFamily::V6, IpFamily::V4]);
        assert_eq!(t.request.pool.as_deref(), Some("public"));
        assert_eq!(t.request.sharing_key.as_deref(), Some("dns"));
        assert_eq!(
            t.request.ports,
            [(Protocol::Udp, 53), (Protocol::Tcp, 5353)]
        );
    }

    #[test]
    fn bad_annotations_fall_back_and_name_the_annotation() {
        let t = translate_service(&lb(
            serde_json::json!({}),
            serde_json::json!({
                "portico.io/algorithm": "random",
                "portico.io/proxy-protocol": "v3",
                "portico.io/health-check": "ping",
            }),
        ))
        .unwrap();
        assert_eq!(t.service.algorithm, Algorithm::Maglev);
        assert_eq!(t.service.proxy_protocol, ProxyProtocol::Off);
        assert_eq!(t.service.cluster_check, None);
        let fields: Vec<&str> = t.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.annotations[portico.io/algorithm]",
                "metadata.annotations[portico.io/proxy-protocol]",
                "metadata.annotations[portico.io/health-check]",
            ]
        );
        assert!(t.problems[0]
            .to_string()
            .starts_with("Service shop/web: metadata.annotations[portico.io/algorithm]: "));
    }

    #[test]
    fn invalid_source_ranges_close_the_service_and_the_legacy_annotation_counts() {
        let t = translate_service(&lb(
            serde_json::json!({}),
            serde_json::json!({LEGACY_SOURCE_RANGES: "192.0.2.0/24, 10.0.0.0/33"}),
        ))
        .unwrap();
        assert!(matches!(
            t.service.source_ranges,
            SourceRanges::Invalid { .. }
        ));
        assert_eq!(
            t.problems[0].field,
            format!("metadata.annotations[{LEGACY_SOURCE_RANGES}]")
        );
        assert!(t.problems[0].message.contains("\"10.0.0.0/33\""));
    }

    #[test]
    fn wanted_addresses_come_from_the_annotation_before_the_spec_field() {
        let t = translate_service(&lb(
            serde_json::json!({"loadBalancerIP": "203.0.113.9"}),
            serde_json::json!({LOAD_BALANCER_IPS: "203.0.113.7, 2001:db8::7"}),
        ))
        .unwrap();
        assert_eq!(
            t.request.wanted,
            [
                "203.0.113.7".parse::<IpAddr>().unwrap(),
                "2001:db8::7".parse().unwrap()
            ]
        );
        assert_eq!(t.request.families, [IpFamily::V4, IpFamily::V6]);

        let spec_only = translate_service(&lb(
            serde_json::json!({"loadBalancerIP": "203.0.113.9"}),
            serde_json::json!({}),
        ))
        .unwrap();
        assert_eq!(
            spec_only.request.wanted,
            ["203.0.113.9".parse::<IpAddr>().unwrap()]
        );

        let bad = translate_service(&lb(
            serde_json::json!({}),
            serde_json::json!({LOAD_BALANCER_IPS: "203.0.113.7,nope"}),
        ))
        .unwrap();
        assert!(bad.request.families.is_empty(), "no address for a bad wish");
        assert!(bad.problems[0]
            .message
            .contains("\"nope\" is not an IP address"));
    }

    #[test]
    fn current_status_addresses_are_carried_to_the_request() {
        let mut s = lb(serde_json::json!({}), serde_json::json!({}));
        s.status = Some(
            serde_json::from_value(serde_json::json!({
                "loadBalancer": {"ingress": [{"ip": "203.0.113.1", "ipMode": "Proxy"}, {"hostname": "x"}]}
            }))
            .unwrap(),
        );
        let t = translate_service(&s).unwrap();
        assert_eq!(
            t.request.current,
            ["203.0.113.1".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn nodes_carry_addresses_in_preference_order_and_exclusions() {
        let node: core::Node = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "n1",
                "labels": {EXCLUDE_LABEL: ""},
                "deletionTimestamp": "2026-11-25T00:00:00Z",
            },
            "spec": {"taints": [{"key": TO_BE_DELETED_TAINT, "effect": "NoSchedule"}]},
            "status": {"addresses": [
                {"type": "Hostname", "address": "n1"},
                {"type": "ExternalIP", "address": "198.51.100.1"},
                {"type": "InternalIP", "address": "10.0.0.1"},
                {"type": "InternalIP", "address": "fd00::1"},
            ]},
        }))
        .unwrap();
        let n = translate_node(&node).unwrap().value;
        assert_eq!(n.name, "n1");
        let shown: Vec<String> = n.addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(shown, ["10.0.0.1", "fd00::1", "198.51.100.1"]);
        assert_eq!(
            n.excluded,
            [
                ExclusionReason::Deleting,
                ExclusionReason::ExcludeLabel,
                ExclusionReason::ToBeDeletedTaint
            ]
        );
        let bare: core::Node =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "n2"}})).unwrap();
        let err = translate_node(&bare).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Node n2: status.addresses: no InternalIP or ExternalIP address; node not used"
        );
    }
}
