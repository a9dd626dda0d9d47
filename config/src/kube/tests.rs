//! The shared reader's tests: the recorded API bodies, the table of Service
//! cases, and each reading rule of the [module docs](super).

use std::net::IpAddr;
use std::time::Duration;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::cases::{self, Outcome};
use super::*;
use crate::cluster::{
    AddressType, ClusterService, ClusterServicePort, Endpoint, EndpointPort, EndpointSlice, IpMode,
    LoadBalancerIngress, ServiceType, TargetPort,
};
use crate::model::{
    ExclusionReason, IpFamily, Node, Protocol, SessionAffinity, SourceRanges, TrafficPolicy,
    DEFAULT_AFFINITY_TIMEOUT,
};

// Bodies recorded from a real API server.
const SERVICE_LIST: &str = include_str!("fixtures/01-list-services.body");
const SERVICE: &str = include_str!("fixtures/02-get-service.body");
const NODE_LIST: &str = include_str!("fixtures/03-list-nodes.body");
const SLICE_LIST: &str = include_str!("fixtures/04-list-endpointslices-selector.body");

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

fn net(s: &str) -> IpNetwork {
    s.parse().expect("test CIDR")
}

/// The items of a recorded `...List` body (they carry no `kind`), each
/// decoded as `T`.
fn list_items<T: DeserializeOwned>(body: &str) -> Vec<T> {
    let list: serde_json::Value = serde_json::from_str(body).expect("fixture is JSON");
    list["items"]
        .as_array()
        .expect("a list body has items")
        .iter()
        .map(|item| serde_json::from_value(item.clone()).expect("fixture item"))
        .collect()
}

/// Reads a Service that must read without problems.
fn service(yaml: &str) -> ClusterService {
    let read = read_service(&serde_yaml_ng::from_str(yaml).expect("test Service")).expect("reads");
    assert!(read.problems.is_empty(), "{:?}", read.problems);
    read.value
}

fn service_err(yaml: &str) -> FieldProblem {
    read_service(&serde_yaml_ng::from_str(yaml).expect("test Service")).expect_err(yaml)
}

fn service_read(yaml: &str) -> Read<ClusterService> {
    read_service(&serde_yaml_ng::from_str(yaml).expect("test Service")).expect("reads")
}

fn slice(yaml: &str) -> Result<Read<EndpointSlice>, FieldProblem> {
    read_endpoint_slice(&serde_yaml_ng::from_str(yaml).expect("test EndpointSlice"))
}

fn node(yaml: &str) -> Result<Read<Node>, FieldProblem> {
    read_node(&serde_yaml_ng::from_str(yaml).expect("test Node"))
}

/// `default/web` of the recorded bodies, as read.
fn web_fixture() -> ClusterService {
    ClusterService {
        key: ServiceKey::new("default", "web"),
        service_type: ServiceType::LoadBalancer,
        load_balancer_class: None,
        cluster_ips: vec![ip("10.96.107.50")],
        ip_families: vec![IpFamily::V4],
        // No `spec.externalIPs`: the status address is `ingress`, not here.
        external_ips: vec![],
        load_balancer_ip: None,
        ingress: vec![LoadBalancerIngress {
            ip: ip("203.0.113.11"),
            ip_mode: None,
        }],
        ports: vec![ClusterServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: Some(31690),
            target_port: TargetPort::Number(8080),
        }],
        external_traffic_policy: TrafficPolicy::Cluster,
        internal_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        session_affinity: SessionAffinity::None,
        source_ranges: SourceRanges::Only(vec![net("192.0.2.0/24"), net("198.51.100.7/32")]),
        proxy_name: None,
    }
}

#[test]
fn get_service_fixture_reads_field_by_field() {
    let k8s: core::Service = serde_json::from_str(SERVICE).expect("fixture");
    let read = read_service(&k8s).expect("reads");
    assert!(read.problems.is_empty(), "{:?}", read.problems);
    let svc = read.value;
    assert_eq!(svc.key, ServiceKey::new("default", "web"));
    assert_eq!(svc.service_type, ServiceType::LoadBalancer);
    assert_eq!(svc.load_balancer_class, None);
    assert_eq!(svc.cluster_ips, [ip("10.96.107.50")]);
    assert_eq!(svc.ip_families, [IpFamily::V4]);
    assert!(svc.external_ips.is_empty());
    assert_eq!(svc.load_balancer_ip, None);
    assert_eq!(
        svc.ingress,
        [LoadBalancerIngress {
            ip: ip("203.0.113.11"),
            ip_mode: None
        }]
    );
    assert_eq!(svc.ports.len(), 1);
    assert_eq!(svc.ports[0].name, "http");
    assert_eq!(svc.ports[0].protocol, Protocol::Tcp);
    assert_eq!(svc.ports[0].port, 80);
    assert_eq!(svc.ports[0].node_port, Some(31690));
    assert_eq!(svc.ports[0].target_port, TargetPort::Number(8080));
    assert_eq!(svc.external_traffic_policy, TrafficPolicy::Cluster);
    assert_eq!(svc.internal_traffic_policy, TrafficPolicy::Cluster);
    assert_eq!(svc.health_check_node_port, None);
    assert_eq!(svc.session_affinity, SessionAffinity::None);
    assert_eq!(
        svc.source_ranges,
        SourceRanges::Only(vec![net("192.0.2.0/24"), net("198.51.100.7/32")])
    );
    assert_eq!(svc.proxy_name, None);
    assert_eq!(svc, web_fixture());
}

#[test]
fn service_list_items_without_kind_are_services() {
    let items: Vec<core::Service> = list_items(SERVICE_LIST);
    let reads: Vec<Read<ClusterService>> = items
        .iter()
        .map(|s| read_service(s).expect("reads"))
        .collect();
    let [kubernetes, web] = &reads[..] else {
        panic!("expected two Services, got {reads:?}");
    };
    assert!(kubernetes.problems.is_empty() && web.problems.is_empty());
    assert_eq!(
        kubernetes.value,
        ClusterService {
            key: ServiceKey::new("default", "kubernetes"),
            service_type: ServiceType::ClusterIp,
            load_balancer_class: None,
            cluster_ips: vec![ip("10.96.0.1")],
            ip_families: vec![IpFamily::V4],
            external_ips: vec![],
            load_balancer_ip: None,
            ingress: vec![],
            ports: vec![ClusterServicePort {
                name: "https".into(),
                protocol: Protocol::Tcp,
                port: 443,
                node_port: None,
                target_port: TargetPort::Number(6443),
            }],
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            session_affinity: SessionAffinity::None,
            source_ranges: SourceRanges::Any,
            proxy_name: None,
        }
    );
    assert_eq!(web.value, web_fixture());
}

#[test]
fn node_list_fixture() {
    let items: Vec<core::Node> = list_items(NODE_LIST);
    let reads: Vec<Read<Node>> = items.iter().map(|n| read_node(n).expect("reads")).collect();
    assert_eq!(
        reads,
        [Read {
            value: Node {
                name: "node-1".into(),
                addresses: vec![],
                // Only `node.kubernetes.io/not-ready`: not the autoscaler's.
                excluded: vec![],
            },
            problems: vec![],
        }]
    );
    assert!(reads[0].value.eligible() && !reads[0].value.leaving());
}

#[test]
fn endpoint_slice_list_fixture() {
    let items: Vec<discovery::EndpointSlice> = list_items(SLICE_LIST);
    let reads: Vec<Read<EndpointSlice>> = items
        .iter()
        .map(|s| read_endpoint_slice(s).expect("reads"))
        .collect();
    let [read] = &reads[..] else {
        panic!("expected one EndpointSlice, got {reads:?}");
    };
    assert!(read.problems.is_empty(), "{:?}", read.problems);
    let slice = &read.value;
    assert_eq!(slice.key, ServiceKey::new("default", "web-abc12"));
    assert_eq!(slice.service, ServiceKey::new("default", "web"));
    assert_eq!(slice.address_type, AddressType::IPv4);
    assert_eq!(
        slice.ports,
        [EndpointPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: Some(8080),
        }]
    );
    assert_eq!(
        slice.endpoints,
        [
            Endpoint {
                addresses: vec![ip("10.244.1.10")],
                ready: true,
                serving: true,
                terminating: false,
                node_name: Some("node-1".into()),
            },
            Endpoint {
                addresses: vec![ip("10.244.1.11")],
                ready: false,
                // serving absent = ready
                serving: false,
                terminating: false,
                node_name: Some("node-1".into()),
            },
        ]
    );
}

#[test]
fn service_defaults_as_the_api_server() {
    let svc = service(
        "
metadata: {name: api}
spec:
  clusterIP: 10.96.0.20
  sessionAffinity: ClientIP
  ports:
    - port: 8080
    - {name: dns, port: 53, protocol: UDP, targetPort: 0}
    - {name: metrics, port: 9000, targetPort: ''}
",
    );
    assert_eq!(svc.key, ServiceKey::new("default", "api"));
    assert_eq!(svc.service_type, ServiceType::ClusterIp);
    assert_eq!(svc.load_balancer_class, None);
    assert_eq!(svc.cluster_ips, [ip("10.96.0.20")]);
    assert!(svc.ip_families.is_empty());
    assert!(svc.external_ips.is_empty() && svc.ingress.is_empty());
    assert_eq!(svc.load_balancer_ip, None);
    assert_eq!(svc.external_traffic_policy, TrafficPolicy::Cluster);
    assert_eq!(svc.internal_traffic_policy, TrafficPolicy::Cluster);
    assert_eq!(
        svc.session_affinity,
        SessionAffinity::ClientIp {
            timeout: DEFAULT_AFFINITY_TIMEOUT
        }
    );
    assert_eq!(DEFAULT_AFFINITY_TIMEOUT, Duration::from_secs(10800));
    assert_eq!(
        svc.ports,
        [
            ClusterServicePort {
                name: String::new(),
                protocol: Protocol::Tcp,
                port: 8080,
                node_port: None,
                target_port: TargetPort::Number(8080),
            },
            ClusterServicePort {
                name: "dns".into(),
                protocol: Protocol::Udp,
                port: 53,
                node_port: None,
                target_port: TargetPort::Number(53),
            },
            ClusterServicePort {
                name: "metrics".into(),
                protocol: Protocol::Tcp,
                port: 9000,
                node_port: None,
                target_port: TargetPort::Number(9000),
            },
        ]
    );
    assert_eq!(svc.source_ranges, SourceRanges::Any);
    assert_eq!(svc.health_check_node_port, None);
    assert_eq!(svc.proxy_name, None);
}

#[test]
fn service_explicit_values() {
    let svc = service(
        r#"
metadata:
  name: web
  namespace: shop
  labels: {service.kubernetes.io/service-proxy-name: portico}
spec:
  type: NodePort
  clusterIPs: [10.96.0.30, "fd00::30"]
  ipFamilies: [IPv4, IPv6]
  externalIPs: [192.0.2.50]
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  healthCheckNodePort: 32000
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports:
    - {name: http, port: 80, targetPort: http, nodePort: 30080, protocol: SCTP}
    - {name: alt, port: 81, targetPort: "8081"}
"#,
    );
    assert_eq!(svc.key, ServiceKey::new("shop", "web"));
    assert_eq!(svc.service_type, ServiceType::NodePort);
    assert_eq!(svc.cluster_ips, [ip("10.96.0.30"), ip("fd00::30")]);
    assert_eq!(svc.ip_families, [IpFamily::V4, IpFamily::V6]);
    assert_eq!(svc.external_ips, [ip("192.0.2.50")]);
    assert_eq!(svc.external_traffic_policy, TrafficPolicy::Local);
    assert_eq!(svc.internal_traffic_policy, TrafficPolicy::Local);
    assert_eq!(svc.health_check_node_port, Some(32000));
    assert_eq!(
        svc.session_affinity,
        SessionAffinity::ClientIp {
            timeout: Duration::from_secs(600)
        }
    );
    assert_eq!(svc.ports[0].target_port, TargetPort::Name("http".into()));
    assert_eq!(svc.ports[0].node_port, Some(30080));
    assert_eq!(svc.ports[0].protocol, Protocol::Sctp);
    assert_eq!(svc.ports[1].target_port, TargetPort::Number(8081));
    assert_eq!(svc.proxy_name.as_deref(), Some("portico"));

    // The load-balancer fields: the class as given, `loadBalancerIP` trimmed
    // and kept as text (the API server does not validate it).
    let svc = service(
        r#"
metadata: {name: web}
spec:
  type: LoadBalancer
  loadBalancerClass: portico.io/edge
  loadBalancerIP: " 203.0.113.9 "
"#,
    );
    assert_eq!(svc.load_balancer_class.as_deref(), Some("portico.io/edge"));
    assert_eq!(svc.load_balancer_ip.as_deref(), Some("203.0.113.9"));
    let svc = service("metadata: {name: web}\nspec: {type: LoadBalancer, loadBalancerClass: '', loadBalancerIP: ' '}");
    assert_eq!(svc.load_balancer_class, None);
    assert_eq!(svc.load_balancer_ip, None);
}

#[test]
fn headless_and_external_addresses() {
    let svc = service(
        "
metadata: {name: db, namespace: data}
spec: {clusterIP: None, clusterIPs: [None], externalIPs: [203.0.113.7, 203.0.113.5, 203.0.113.7]}
status:
  loadBalancer:
    ingress:
      - ip: 203.0.113.5
      - hostname: lb.example.com
      - {ip: 203.0.113.6, ipMode: Proxy}
      - {ip: 203.0.113.8, ipMode: VIP}
",
    );
    assert!(svc.cluster_ips.is_empty());
    // `externalIPs` only, in order, each once; the status addresses are
    // `ingress`, with their mode (hostname-only entries are not kept).
    assert_eq!(svc.external_ips, [ip("203.0.113.7"), ip("203.0.113.5")]);
    assert_eq!(
        svc.ingress,
        [
            LoadBalancerIngress {
                ip: ip("203.0.113.5"),
                ip_mode: None
            },
            LoadBalancerIngress {
                ip: ip("203.0.113.6"),
                ip_mode: Some(IpMode::Proxy)
            },
            LoadBalancerIngress {
                ip: ip("203.0.113.8"),
                ip_mode: Some(IpMode::Vip)
            },
        ]
    );

    let svc = service("metadata: {name: x}\nspec: {clusterIP: None}\n");
    assert!(svc.cluster_ips.is_empty());
    assert!(svc.ports.is_empty());
}

#[test]
fn legacy_source_range_annotation() {
    let annotated = r#"
metadata:
  name: web
  annotations:
    service.beta.kubernetes.io/load-balancer-source-ranges: " 10.0.0.0/8, 2001:db8::/32 "
spec: {type: LoadBalancer}
"#;
    let svc = service(annotated);
    assert_eq!(
        svc.source_ranges,
        SourceRanges::Only(vec![net("10.0.0.0/8"), net("2001:db8::/32")])
    );

    // The field wins over the annotation.
    let both = format!("{annotated}  loadBalancerSourceRanges: [192.0.2.0/24]\n").replace(
        "spec: {type: LoadBalancer}\n",
        "spec:\n  type: LoadBalancer\n",
    );
    let svc = service(&both);
    assert_eq!(
        svc.source_ranges,
        SourceRanges::Only(vec![net("192.0.2.0/24")])
    );

    // An empty annotation is no restriction.
    let svc = service(
        r#"
metadata:
  name: web
  annotations: {service.beta.kubernetes.io/load-balancer-source-ranges: " "}
spec: {type: LoadBalancer}
"#,
    );
    assert_eq!(svc.source_ranges, SourceRanges::Any);
}

#[test]
fn source_ranges_are_read_as_the_api_server_reads_them() {
    // Blanks trimmed, host bits cleared, IPv4 leading zeros decimal,
    // duplicates (after clearing) kept once.
    let svc = service(
        r#"
metadata: {name: web}
spec:
  type: LoadBalancer
  loadBalancerSourceRanges: [" 192.0.2.9/24 ", "192.0.2.0/24", "010.001.002.003/32", "10.1.2.3/32"]
"#,
    );
    assert_eq!(
        svc.source_ranges,
        SourceRanges::Only(vec![net("192.0.2.0/24"), net("10.1.2.3/32")])
    );
}

#[test]
fn invalid_source_ranges_close_the_service_and_are_reported_not_fatal() {
    let read = service_read(
        r#"
metadata: {name: web}
spec:
  type: LoadBalancer
  loadBalancerSourceRanges: ["10.0.0.0/33", " 192.0.2.9/24 ", "bogus", "198.51.100.7", ""]
"#,
    );
    // A bare address is not a CIDR for Kubernetes either.
    let errors = [
        r#""10.0.0.0/33" is not a valid CIDR (the prefix length must be a number from 0 to 32)"#,
        r#""bogus" is not a valid CIDR (a prefix length is required)"#,
        r#""198.51.100.7" is not a valid CIDR (a prefix length is required, e.g. 198.51.100.7/32)"#,
        r#""" is not a valid CIDR (a prefix length is required)"#,
    ];
    assert_eq!(
        read.value.source_ranges,
        SourceRanges::Invalid {
            errors: errors.iter().map(|e| e.to_string()).collect()
        }
    );
    assert_eq!(
        read.problems,
        [FieldProblem {
            object: "Service default/web".into(),
            field: "spec.loadBalancerSourceRanges".into(),
            message: format!(
                "{}; the load-balancer addresses accept no client",
                errors.join("; ")
            ),
        }]
    );
    // The rest of the Service is read.
    assert_eq!(read.value.service_type, ServiceType::LoadBalancer);

    // The annotation too, including an empty entry from a stray comma.
    let read = service_read(
        r#"
metadata:
  name: web
  annotations: {service.beta.kubernetes.io/load-balancer-source-ranges: "10.0.0.0/8,,300.0.0.0/8"}
spec: {}
"#,
    );
    assert_eq!(
        read.value.source_ranges,
        SourceRanges::Invalid {
            errors: vec![
                r#""" is not a valid CIDR (a prefix length is required)"#.into(),
                r#""300.0.0.0/8" is not a valid CIDR ("300.0.0.0" is not an IP address)"#.into(),
            ]
        }
    );
    let [problem] = &read.problems[..] else {
        panic!("expected one problem, got {:?}", read.problems);
    };
    assert_eq!(
        problem.field,
        format!(
            "metadata.annotations[{}]",
            names::LEGACY_SOURCE_RANGES_ANNOTATION
        )
    );
    assert!(
        problem
            .message
            .contains(r#""300.0.0.0/8" is not a valid CIDR"#),
        "{problem}"
    );
}

#[test]
fn bad_values_are_refusals_with_object_and_path() {
    let cases = [
        (
            "spec: {ports: [{port: 80}, {port: 81, nodePort: 99999}]}",
            "Service default/web: spec.ports[1].nodePort: 99999 is outside 1-65535",
        ),
        (
            "spec: {ports: [{port: 80, targetPort: -1}]}",
            "Service default/web: spec.ports[0].targetPort: -1 is outside 1-65535",
        ),
        (
            "spec: {ports: [{name: x}]}",
            "Service default/web: spec.ports[0].port: required",
        ),
        (
            "spec: {ports: [{port: 70000}]}",
            "Service default/web: spec.ports[0].port: 70000 is outside 1-65535",
        ),
        (
            "spec: {healthCheckNodePort: 65536}",
            "Service default/web: spec.healthCheckNodePort: 65536 is outside 1-65535",
        ),
        (
            "spec: {clusterIP: 10.0.0.300}",
            r#"Service default/web: spec.clusterIP: "10.0.0.300" is not a valid IP address"#,
        ),
        (
            "spec: {clusterIPs: [10.0.0.1, 'fd00::zz']}",
            r#"Service default/web: spec.clusterIPs[1]: "fd00::zz" is not a valid IP address"#,
        ),
        (
            "spec: {externalIPs: [nope]}",
            r#"Service default/web: spec.externalIPs[0]: "nope" is not a valid IP address"#,
        ),
        (
            "spec: {}\nstatus: {loadBalancer: {ingress: [{ip: x}]}}",
            r#"Service default/web: status.loadBalancer.ingress[0].ip: "x" is not a valid IP address"#,
        ),
        (
            "spec: {}\nstatus: {loadBalancer: {ingress: [{ip: 192.0.2.1, ipMode: Direct}]}}",
            r#"Service default/web: status.loadBalancer.ingress[0].ipMode: "Direct" is not one of VIP, Proxy"#,
        ),
        (
            "spec: {ports: [{port: 80, protocol: tcp}]}",
            r#"Service default/web: spec.ports[0].protocol: "tcp" is not one of TCP, UDP, SCTP"#,
        ),
        (
            "spec: {type: Magic}",
            r#"Service default/web: spec.type: "Magic" is not one of ClusterIP, NodePort, LoadBalancer, ExternalName"#,
        ),
        (
            "spec: {ipFamilies: [IPv4, IPv5]}",
            r#"Service default/web: spec.ipFamilies[1]: "IPv5" is not one of IPv4, IPv6"#,
        ),
        (
            "spec: {externalTrafficPolicy: Global}",
            r#"Service default/web: spec.externalTrafficPolicy: "Global" is not one of Cluster, Local"#,
        ),
        (
            "spec: {internalTrafficPolicy: Global}",
            r#"Service default/web: spec.internalTrafficPolicy: "Global" is not one of Cluster, Local"#,
        ),
        (
            "spec: {sessionAffinity: Cookie}",
            r#"Service default/web: spec.sessionAffinity: "Cookie" is not one of None, ClientIP"#,
        ),
        (
            "spec: {sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}}",
            r#"Service default/web: spec.sessionAffinityConfig.clientIP.timeoutSeconds: 86401 is not a number of seconds from 1 to 86400"#,
        ),
        (
            "spec: {sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}}",
            r#"Service default/web: spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is not a number of seconds from 1 to 86400"#,
        ),
        ("status: {}", "Service default/web: spec: required"),
    ];
    for (spec, expected) in cases {
        let err = service_err(&format!("metadata: {{name: web}}\n{spec}\n"));
        assert_eq!(err.to_string(), expected, "{spec}");
        assert_eq!(err.object, "Service default/web");
    }

    let err = service_err("spec: {ports: [{port: 80, nodePort: 99999}]}");
    assert_eq!(
        err,
        FieldProblem {
            object: "Service (unnamed)".into(),
            field: "metadata.name".into(),
            message: "required".into(),
        }
    );

    let err = service_err(
        "metadata: {name: web}\nspec: {ports: [{port: 80}, {port: 81, nodePort: 99999}]}",
    );
    assert_eq!(
        err,
        FieldProblem {
            object: "Service default/web".into(),
            field: "spec.ports[1].nodePort".into(),
            message: "99999 is outside 1-65535".into(),
        }
    );
}

#[test]
fn slice_condition_defaults() {
    let read = slice(
        "
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv6
ports: [{port: 8080}, {name: none}]
endpoints:
  - addresses: ['fd00::1']
  - addresses: ['fd00::2']
    conditions: {ready: false, terminating: true}
  - addresses: ['fd00::3']
    conditions: {ready: false, serving: true, terminating: true}
",
    )
    .expect("reads");
    assert!(read.problems.is_empty(), "{:?}", read.problems);
    let s = read.value;
    assert_eq!(s.key, ServiceKey::new("shop", "web-1"));
    assert_eq!(s.service, ServiceKey::new("shop", "web"));
    assert_eq!(s.address_type, AddressType::IPv6);
    assert_eq!(
        s.ports,
        [
            EndpointPort {
                name: String::new(),
                protocol: Protocol::Tcp,
                port: Some(8080)
            },
            EndpointPort {
                name: "none".into(),
                protocol: Protocol::Tcp,
                port: None
            },
        ]
    );
    let flags: Vec<(bool, bool, bool)> = s
        .endpoints
        .iter()
        .map(|e| (e.ready, e.serving, e.terminating))
        .collect();
    assert_eq!(
        flags,
        [
            (true, true, false),
            (false, false, true),
            (false, true, true)
        ]
    );
    assert_eq!(s.endpoints[0].addresses, [ip("fd00::1")]);
    assert_eq!(s.endpoints[0].node_name, None);
}

#[test]
fn slice_errors_and_fqdn() {
    let labels = "labels: {kubernetes.io/service-name: web}";

    // A bad address costs its endpoint, reported; the rest is read.
    let read = slice(&format!(
        "metadata: {{name: s, {labels}}}\naddressType: IPv4\nendpoints: [{{addresses: [10.0.0.1]}}, {{addresses: [10.0.0.2, 10.0.0.x]}}, {{addresses: [10.0.0.3]}}]"
    ))
    .expect("a bad address must not refuse the slice");
    let addresses: Vec<&[IpAddr]> = read
        .value
        .endpoints
        .iter()
        .map(|e| &e.addresses[..])
        .collect();
    assert_eq!(addresses, [[ip("10.0.0.1")], [ip("10.0.0.3")]]);
    let shown: Vec<String> = read.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            r#"EndpointSlice default/s: endpoints[1].addresses[1]: "10.0.0.x" is not a valid IP address; endpoint skipped"#
        ]
    );

    let err = slice(&format!(
        "metadata: {{name: s, {labels}}}\naddressType: IPv4\nports: [{{port: 65536}}]"
    ))
    .expect_err("bad port");
    assert_eq!(err.field, "ports[0].port");
    assert_eq!(err.message, "65536 is outside 1-65535");

    let err = slice(&format!(
        "metadata: {{name: s, {labels}}}\naddressType: IPv4\nports: [{{port: 80, protocol: ICMP}}]"
    ))
    .expect_err("bad protocol");
    assert_eq!(
        err.to_string(),
        r#"EndpointSlice default/s: ports[0].protocol: "ICMP" is not one of TCP, UDP, SCTP"#
    );

    let err = slice("metadata: {name: s}\naddressType: IPv4").expect_err("no label");
    assert_eq!(
        err.to_string(),
        r#"EndpointSlice default/s: metadata.labels[kubernetes.io/service-name]: required"#
    );

    let err = slice(&format!("metadata: {{name: s, {labels}}}")).expect_err("no type");
    assert_eq!(
        err.to_string(),
        "EndpointSlice default/s: addressType: required"
    );

    let err = slice(&format!(
        "metadata: {{name: s, {labels}}}\naddressType: IPv5"
    ))
    .expect_err("bad type");
    assert_eq!(
        err.to_string(),
        r#"EndpointSlice default/s: addressType: "IPv5" is not one of IPv4, IPv6, FQDN"#
    );

    let read = slice(&format!(
        "metadata: {{name: s, {labels}}}\naddressType: FQDN\nports: [{{port: 80}}]\nendpoints: [{{addresses: [db.example.com]}}]"
    ))
    .expect("FQDN reads");
    assert!(read.problems.is_empty(), "{:?}", read.problems);
    assert_eq!(read.value.address_type, AddressType::Fqdn);
    assert!(read.value.endpoints.is_empty());
    assert_eq!(read.value.ports.len(), 1);

    // The API sends `endpoints: null` for an empty slice.
    let read = slice(&format!(
        "metadata: {{name: s, {labels}}}\naddressType: IPv4\nendpoints: null"
    ))
    .expect("empty slice reads");
    assert!(read.value.endpoints.is_empty());
    assert!(read.problems.is_empty());
}

#[test]
fn node_addresses_and_deletion() {
    let read = node(
        "
metadata: {name: n1, deletionTimestamp: '2026-11-25T19:07:27Z'}
spec:
  taints:
    - {key: node.kubernetes.io/not-ready, effect: NoSchedule}
    - {key: ToBeDeletedByClusterAutoscaler, value: '1764097647', effect: NoSchedule}
status:
  addresses:
    - {type: Hostname, address: n1}
    - {type: ExternalIP, address: 198.51.100.1}
    - {type: InternalIP, address: 10.0.0.1}
    - {type: InternalIP, address: 'fd00::1'}
    - {type: InternalIP, address: 10.0.0.1}
",
    )
    .expect("reads");
    assert_eq!(
        read,
        Read {
            value: Node {
                name: "n1".into(),
                addresses: vec![ip("10.0.0.1"), ip("fd00::1"), ip("198.51.100.1")],
                excluded: vec![ExclusionReason::Deleting, ExclusionReason::ToBeDeletedTaint],
            },
            problems: vec![],
        }
    );
    assert!(read.value.leaving() && !read.value.eligible());

    // The exclusion label keeps load balancers away; the node is not leaving.
    let read = node(&format!(
        "metadata: {{name: n1, labels: {{{}: 'true'}}}}",
        names::EXCLUDE_FROM_LOAD_BALANCERS_LABEL
    ))
    .expect("reads");
    assert_eq!(read.value.excluded, [ExclusionReason::ExcludeLabel]);
    assert!(!read.value.leaving() && !read.value.eligible());

    // A bad address is skipped and reported, not a refusal.
    let read = node(
        "metadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: bad}, {type: InternalIP, address: 10.0.0.2}]}",
    )
    .expect("a bad address must not refuse the Node");
    assert_eq!(read.value.addresses, [ip("10.0.0.2")]);
    let shown: Vec<String> = read.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            r#"Node n1: status.addresses[0].address: "bad" is not a valid IP address; address not used"#
        ]
    );

    let err = node("metadata: {}").expect_err("unnamed");
    assert_eq!(err.to_string(), "Node (unnamed): metadata.name: required");
}

/// The shared reader's answer to a case, in the table's terms.
fn outcome(svc: &core::Service) -> Result<Outcome, String> {
    let s = read_service(svc).map_err(|p| p.to_string())?.value;
    Ok(Outcome {
        key: s.key,
        ports: s
            .ports
            .iter()
            .map(|p| (p.protocol, p.port, p.node_port))
            .collect(),
        external_traffic_policy: s.external_traffic_policy,
        health_check_node_port: s.health_check_node_port,
        session_affinity: s.session_affinity,
        source_ranges: s.source_ranges,
    })
}

#[test]
fn every_service_case_reads_as_the_table_says() {
    for case in cases::service_cases() {
        cases::check(&case, outcome(&case.service()));
    }
}

#[test]
fn refusals_name_object_field_and_value() {
    let case = cases::service_cases()
        .into_iter()
        .find(|c| c.name == "an unknown protocol refuses the Service")
        .unwrap();
    assert_eq!(
        read_service(&case.service()).unwrap_err().to_string(),
        r#"Service shop/web: spec.ports[1].protocol: "ICMP" is not one of TCP, UDP, SCTP"#
    );
}

#[test]
fn invalid_source_ranges_are_reported_with_their_field() {
    let case = cases::service_cases()
        .into_iter()
        .find(|c| c.name == "source ranges: an empty annotation entry is invalid")
        .unwrap();
    let read = read_service(&case.service()).unwrap();
    assert_eq!(read.problems.len(), 1);
    assert_eq!(
        read.problems[0].field,
        format!(
            "metadata.annotations[{}]",
            names::LEGACY_SOURCE_RANGES_ANNOTATION
        )
    );
    assert!(read.problems[0]
        .message
        .ends_with("the load-balancer addresses accept no client"));
}

#[test]
fn ingress_keeps_ip_entries_with_their_mode() {
    let svc: core::Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"type": "LoadBalancer"},
        "status": {"loadBalancer": {"ingress": [
            {"ip": "203.0.113.1", "ipMode": "Proxy"},
            {"hostname": "lb.example.com"},
            {"ip": "203.0.113.2"},
            {"ip": "203.0.113.1"},
        ]}},
    }))
    .unwrap();
    let s = read_service(&svc).unwrap().value;
    assert_eq!(
        s.ingress,
        [
            LoadBalancerIngress {
                ip: "203.0.113.1".parse().unwrap(),
                ip_mode: Some(IpMode::Proxy)
            },
            LoadBalancerIngress {
                ip: "203.0.113.2".parse().unwrap(),
                ip_mode: None
            },
        ]
    );
    let mut bad = svc.clone();
    bad.status
        .as_mut()
        .unwrap()
        .load_balancer
        .as_mut()
        .unwrap()
        .ingress
        .as_mut()
        .unwrap()[0]
        .ip_mode = Some("Direct".into());
    assert_eq!(
        read_service(&bad).unwrap_err().field,
        "status.loadBalancer.ingress[0].ipMode"
    );
}

#[test]
fn nodes_keep_addresses_in_preference_order_and_skip_bad_ones() {
    let node: core::Node = serde_json::from_value(json!({
        "metadata": {
            "name": "n1",
            "labels": {names::EXCLUDE_FROM_LOAD_BALANCERS_LABEL: ""},
            "deletionTimestamp": "2026-11-25T00:00:00Z",
        },
        "spec": {"taints": [{"key": names::TO_BE_DELETED_TAINT, "effect": "NoSchedule"}]},
        "status": {"addresses": [
            {"type": "Hostname", "address": "n1"},
            {"type": "ExternalIP", "address": "198.51.100.1"},
            {"type": "InternalIP", "address": "10.0.0.1"},
            {"type": "InternalIP", "address": "not-an-ip"},
            {"type": "InternalIP", "address": "fd00::1"},
            {"type": "ExternalIP", "address": "10.0.0.1"},
        ]},
    }))
    .unwrap();
    let read = read_node(&node).unwrap();
    let shown: Vec<String> = read.value.addresses.iter().map(|a| a.to_string()).collect();
    assert_eq!(shown, ["10.0.0.1", "fd00::1", "198.51.100.1"]);
    assert_eq!(
        read.value.excluded,
        [
            ExclusionReason::Deleting,
            ExclusionReason::ExcludeLabel,
            ExclusionReason::ToBeDeletedTaint
        ]
    );
    assert!(read.value.leaving());
    assert_eq!(
        read.problems[0].to_string(),
        r#"Node n1: status.addresses[3].address: "not-an-ip" is not a valid IP address; address not used"#
    );
    let unnamed: core::Node = serde_json::from_value(json!({"metadata": {}})).unwrap();
    assert_eq!(
        read_node(&unnamed).unwrap_err().to_string(),
        "Node (unnamed): metadata.name: required"
    );
}

#[test]
fn a_bad_endpoint_address_costs_that_endpoint_only() {
    let slice: discovery::EndpointSlice = serde_json::from_value(json!({
        "metadata": {"namespace": "shop", "name": "web-1", "labels": {names::SERVICE_NAME_LABEL: "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}, {"name": "none", "port": 0}],
        "endpoints": [
            {"addresses": ["10.0.0.1"], "conditions": {"ready": false}},
            {"addresses": ["10.0.0.300"]},
            {"addresses": ["10.0.0.3"], "nodeName": "n1"},
        ],
    }))
    .unwrap();
    let read = read_endpoint_slice(&slice).unwrap();
    let s = read.value;
    assert_eq!(s.service, ServiceKey::new("shop", "web"));
    assert_eq!(s.ports[0].port, Some(8080));
    assert_eq!(s.ports[1].port, None);
    assert_eq!(s.endpoints.len(), 2);
    assert!(!s.endpoints[0].ready && !s.endpoints[0].serving);
    assert_eq!(s.endpoints[1].node_name.as_deref(), Some("n1"));
    assert_eq!(read.problems.len(), 1);
    assert_eq!(read.problems[0].field, "endpoints[1].addresses[0]");
}

#[test]
fn addresses_are_read_as_the_api_server_accepts_them() {
    let svc: core::Service = serde_yaml_ng::from_str(
        "
metadata: {name: web}
spec:
  clusterIPs: []
  clusterIP: 010.096.000.010
  externalIPs: ['::ffff:203.0.113.9']
",
    )
    .expect("test Service");
    let s = read_service(&svc).expect("reads").value;
    assert_eq!(
        s.cluster_ips,
        ["10.96.0.10".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(
        s.external_ips,
        ["203.0.113.9".parse::<std::net::IpAddr>().unwrap()]
    );

    let mut bad = svc.clone();
    bad.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.300".into());
    assert_eq!(read_service(&bad).unwrap_err().field, "spec.clusterIP");
}

#[test]
fn no_problem_echoes_more_than_a_bounded_piece_of_a_value() {
    let huge = "A".repeat(1 << 20);
    let mut svc: core::Service = serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "shop", "name": huge},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
    }))
    .unwrap();
    let refused = read_service(&svc).unwrap_err().to_string();
    assert!(refused.len() < 400, "{} bytes", refused.len());
    assert!(refused.contains("(1048576 bytes)"), "{refused}");
    svc.metadata.name = Some("web".into());
    svc.spec.as_mut().unwrap().type_ = Some(format!("Load\u{1b}[31m{huge}"));
    let refused = read_service(&svc).unwrap_err().to_string();
    assert!(refused.len() < 400, "{} bytes", refused.len());
    assert!(
        refused.contains("\\u{1b}"),
        "control characters are escaped: {refused}"
    );
}

#[test]
fn a_node_name_the_api_server_would_refuse_refuses_the_node() {
    for name in ["Node-1", "node_1", "-node", &"n".repeat(254)] {
        let node: core::Node =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        let refused = read_node(&node).unwrap_err();
        assert_eq!(refused.field, "metadata.name", "{name}");
        assert!(refused.to_string().len() < 400);
    }
    let node: core::Node = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "ip-10-0-0-1.eu-west-1.compute.internal"}}),
    )
    .unwrap();
    assert!(read_node(&node).is_ok());
}
