//! Kubernetes objects in, the shared model out: which Services are ours, and
//! what each one and each Node means for the edge.
//!
//! Pure. A mistake in one object never costs another object anything: an
//! invalid annotation falls back to its default and is reported; invalid
//! source ranges make that Service fail closed; a Node without a usable
//! address is left out. Every problem names the object and the field.

use std::net::IpAddr;
use std::time::Duration;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1 as core;
use portico_config::{
    Algorithm, ClusterHealthCheck, ExclusionReason, KubernetesSettings, Node, Protocol,
    ProxyProtocol, Service, ServiceKey, ServicePort, SessionAffinity, SourceRanges, TrafficPolicy,
    DEFAULT_AFFINITY_TIMEOUT,
};

use crate::ipam::{AddressRequest, Family};

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

/// The legacy source-range annotation, read when the field is empty (as
/// kube-proxy and cloud providers do).
pub const LEGACY_SOURCE_RANGES: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";
/// The Node label that keeps a node out of load balancers.
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// The cluster autoscaler's taint on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// A problem with one field of one object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {message}")]
pub struct FieldProblem {
    /// `Service ns/name` or `Node name`.
    pub object: String,
    /// The field or annotation, e.g. `spec.ports[1].nodePort`.
    pub field: String,
    /// What is wrong and what was done instead.
    pub message: String,
}

/// Whether a Service is one the edge implements: `type: LoadBalancer` with
/// our `loadBalancerClass` (or none, when the edge is the default class).
pub fn is_ours(svc: &core::Service, settings: &KubernetesSettings) -> bool {
    let Some(spec) = &svc.spec else {
        return false;
    };
    spec.type_.as_deref() == Some("LoadBalancer")
        && match spec.load_balancer_class.as_deref() {
            Some(class) => class == settings.load_balancer_class,
            None => settings.default_class,
        }
}

/// The key of a Service, if it has a name.
pub fn service_key(svc: &core::Service) -> Option<ServiceKey> {
    Some(ServiceKey::new(
        svc.metadata.namespace.clone().unwrap_or_default(),
        svc.metadata.name.clone()?,
    ))
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

/// Translates one of our Services. `None` only when it has no name or no
/// spec (nothing to serve).
pub fn translate_service(svc: &core::Service) -> Option<TranslatedService> {
    let key = service_key(svc)?;
    let spec = svc.spec.as_ref()?;
    let object = format!("Service {key}");
    let mut problems = Vec::new();
    let mut problem = |field: &str, message: String| {
        problems.push(FieldProblem {
            object: object.clone(),
            field: field.to_string(),
            message,
        })
    };
    let annotations = svc.metadata.annotations.clone().unwrap_or_default();
    let annotation = |name: &str| {
        annotations
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };

    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            other => {
                problem(
                    &format!("spec.ports[{i}].protocol"),
                    format!("{other:?} is not TCP, UDP or SCTP; port skipped"),
                );
                continue;
            }
        };
        let Some(port) = u16::try_from(p.port).ok().filter(|p| *p > 0) else {
            problem(
                &format!("spec.ports[{i}].port"),
                format!("{} is outside 1-65535; port skipped", p.port),
            );
            continue;
        };
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => match u16::try_from(n) {
                Ok(n) => Some(n),
                Err(_) => {
                    problem(
                        &format!("spec.ports[{i}].nodePort"),
                        format!("{n} is outside 1-65535; port not forwarded"),
                    );
                    None
                }
            },
        };
        ports.push(ServicePort {
            name: p.name.clone().unwrap_or_default(),
            protocol,
            port,
            node_port,
        });
    }

    let external_traffic_policy = match spec.external_traffic_policy.as_deref() {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    };
    let health_check_node_port = spec
        .health_check_node_port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0);

    let session_affinity = match spec.session_affinity.as_deref() {
        Some("ClientIP") => SessionAffinity::ClientIp {
            timeout: spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|s| u64::try_from(s).ok())
                .filter(|s| *s > 0)
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT),
        },
        _ => SessionAffinity::None,
    };

    let (ranges, ranges_field) = match spec.load_balancer_source_ranges.as_deref() {
        Some(list) if !list.is_empty() => {
            (list.to_vec(), "spec.loadBalancerSourceRanges".to_string())
        }
        _ => match annotation(LEGACY_SOURCE_RANGES) {
            Some(text) => (
                text.split(',').map(|s| s.trim().to_string()).collect(),
                format!("metadata.annotations[{LEGACY_SOURCE_RANGES}]"),
            ),
            None => (Vec::new(), String::new()),
        },
    };
    let source_ranges = source_ranges(&ranges);
    if let SourceRanges::Invalid { errors } = &source_ranges {
        problem(
            &ranges_field,
            format!("{}; the Service accepts no client", errors.join("; ")),
        );
    }

    let algorithm = match annotation(ALGORITHM) {
        None => Algorithm::default(),
        Some(text) => text.parse().unwrap_or_else(|e| {
            problem(
                &format!("metadata.annotations[{ALGORITHM}]"),
                format!("{e}; using maglev"),
            );
            Algorithm::default()
        }),
    };
    let proxy_protocol = match annotation(PROXY_PROTOCOL) {
        None => ProxyProtocol::Off,
        Some(text) => text.parse().unwrap_or_else(|e| {
            problem(
                &format!("metadata.annotations[{PROXY_PROTOCOL}]"),
                format!("{e}; sending no PROXY header"),
            );
            ProxyProtocol::Off
        }),
    };
    let cluster_check = match annotation(HEALTH_CHECK) {
        None => None,
        Some(text) => match text.parse::<ClusterHealthCheck>() {
            Ok(c) => Some(c),
            Err(e) => {
                problem(
                    &format!("metadata.annotations[{HEALTH_CHECK}]"),
                    format!("{e}; using settings.health.clusterCheck"),
                );
                None
            }
        },
    };

    // Addresses: the annotation wins over the deprecated spec field.
    let mut wanted = Vec::new();
    let (wanted_text, wanted_field) = match annotation(LOAD_BALANCER_IPS) {
        Some(t) => (
            Some(t),
            format!("metadata.annotations[{LOAD_BALANCER_IPS}]"),
        ),
        None => (
            spec.load_balancer_ip.as_deref().filter(|s| !s.is_empty()),
            "spec.loadBalancerIP".to_string(),
        ),
    };
    let mut wanted_ok = true;
    for text in wanted_text.into_iter().flat_map(|t| t.split(',')) {
        match text.trim().parse::<IpAddr>() {
            Ok(ip) if wanted.iter().any(|w: &IpAddr| w.is_ipv4() == ip.is_ipv4()) => {
                problem(
                    &wanted_field,
                    format!("more than one address of the family of {ip}; no address assigned"),
                );
                wanted_ok = false;
            }
            Ok(ip) => wanted.push(ip),
            Err(_) => {
                problem(
                    &wanted_field,
                    format!(
                        "{:?} is not an IP address; no address assigned",
                        text.trim()
                    ),
                );
                wanted_ok = false;
            }
        }
    }
    let mut families: Vec<Family> = spec
        .ip_families
        .iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        })
        .collect();
    if families.is_empty() {
        families.push(Family::V4);
    }
    // Wanted addresses name their families themselves.
    if wanted_ok && !wanted.is_empty() {
        families = wanted.iter().map(|a| Family::of(*a)).collect();
    }
    let current = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect();
    let request = AddressRequest {
        owner: key.to_string(),
        families: if wanted_ok { families } else { Vec::new() },
        wanted,
        current,
        pool: annotation(ADDRESS_POOL).map(str::to_string),
        sharing_key: annotation(ALLOW_SHARED_IP).map(str::to_string),
        ports: ports.iter().map(|p| (p.protocol, p.port)).collect(),
    };

    Some(TranslatedService {
        service: Service {
            key,
            vips: Vec::new(),
            ports,
            external_traffic_policy,
            health_check_node_port,
            session_affinity,
            source_ranges,
            algorithm,
            proxy_protocol,
            cluster_check,
        },
        request,
        problems,
    })
}

/// Parses source ranges as Kubernetes does (host bits allowed); any bad
/// entry makes the whole set invalid, so the Service fails closed.
fn source_ranges(ranges: &[String]) -> SourceRanges {
    if ranges.is_empty() {
        return SourceRanges::Any;
    }
    let mut nets = Vec::new();
    let mut errors = Vec::new();
    for r in ranges {
        let parsed = r
            .split_once('/')
            .and_then(|(a, p)| Some((a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?)))
            .and_then(|(a, p)| IpNetwork::new(a, p).ok());
        match parsed {
            Some(net) => nets.push(net),
            None => errors.push(format!("{r:?} is not a valid CIDR")),
        }
    }
    if errors.is_empty() {
        SourceRanges::Only(nets)
    } else {
        SourceRanges::Invalid { errors }
    }
}

/// Translates a Node: its addresses (InternalIP first, then ExternalIP) and
/// why it must not receive traffic. A Node with no usable address is
/// reported and left out.
pub fn translate_node(node: &core::Node) -> Result<Node, FieldProblem> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let problem = |field: &str, message: &str| FieldProblem {
        object: format!("Node {name}"),
        field: field.to_string(),
        message: message.to_string(),
    };
    let all = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    let mut addresses: Vec<IpAddr> = Vec::new();
    for kind in ["InternalIP", "ExternalIP"] {
        for a in all.iter().filter(|a| a.type_ == kind) {
            if let Ok(ip) = a.address.parse::<IpAddr>() {
                if !addresses.contains(&ip) {
                    addresses.push(ip);
                }
            }
        }
    }
    if addresses.is_empty() {
        return Err(problem(
            "status.addresses",
            "no InternalIP or ExternalIP address; node not used",
        ));
    }
    let mut excluded = Vec::new();
    if node.metadata.deletion_timestamp.is_some() {
        excluded.push(ExclusionReason::Deleting);
    }
    if node
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(EXCLUDE_LABEL))
    {
        excluded.push(ExclusionReason::ExcludeLabel);
    }
    if node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT))
    {
        excluded.push(ExclusionReason::ToBeDeletedTaint);
    }
    Ok(Node {
        name,
        addresses,
        excluded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(is_ours(
            &lb(serde_json::json!({}), serde_json::json!({})),
            &ours
        ));
        assert!(!is_ours(&classless, &ours));
        assert!(is_ours(&classless, &default_class));
        let other = lb(
            serde_json::json!({"loadBalancerClass": "example.com/other"}),
            serde_json::json!({}),
        );
        assert!(!is_ours(&other, &default_class));
        let node_port = lb(
            serde_json::json!({"type": "NodePort"}),
            serde_json::json!({}),
        );
        assert!(!is_ours(&node_port, &default_class));
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
        assert_eq!(t.request.families, [Family::V6, Family::V4]);
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
        assert_eq!(t.request.families, [Family::V4, Family::V6]);

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
        let n = translate_node(&node).unwrap();
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
