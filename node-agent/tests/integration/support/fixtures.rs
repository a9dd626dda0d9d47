//! The planner fixtures: rendered as golden files and loaded into a real
//! kernel by the datapath tests. Planned for node `node-a`.

use portico_config::cluster::{AddressType, ServiceType, TargetPort};
use portico_config::{Protocol, TrafficPolicy};

use super::*;

/// Services and EndpointSlices planned together.
pub type Fixture = (
    Vec<portico_config::cluster::ClusterService>,
    Vec<portico_config::cluster::EndpointSlice>,
);

/// LoadBalancer, `externalTrafficPolicy: Cluster`, a named target port, one
/// endpoint not ready.
pub fn cluster_policy() -> Fixture {
    let mut web = service("web", ServiceType::LoadBalancer, &["10.96.0.10"]);
    web.external_ips = vec![ip("203.0.113.10")];
    web.ports = vec![port(
        "http",
        Protocol::Tcp,
        80,
        Some(30080),
        TargetPort::Name("http".into()),
    )];
    let slices = vec![slice(
        "web",
        "abc",
        AddressType::IPv4,
        &[("http", Protocol::Tcp, 8080)],
        vec![
            ready("10.244.0.10", "node-a"),
            ready("10.244.1.10", "node-b"),
            not_ready("10.244.1.11", "node-b"),
        ],
    )];
    (vec![web], slices)
}

/// `Local` policies: one Service with a local endpoint, one whose endpoints
/// are all on other nodes (external traffic dropped), one ClusterIP with
/// `internalTrafficPolicy: Local`.
pub fn local_policy() -> Fixture {
    let mut local = service("local", ServiceType::NodePort, &["10.96.0.20"]);
    local.external_traffic_policy = TrafficPolicy::Local;
    local.ports = vec![port(
        "http",
        Protocol::Tcp,
        80,
        Some(30081),
        TargetPort::Number(8080),
    )];
    let mut remote = service("remote", ServiceType::NodePort, &["10.96.0.21"]);
    remote.external_traffic_policy = TrafficPolicy::Local;
    remote.ports = vec![port(
        "http",
        Protocol::Tcp,
        80,
        Some(30082),
        TargetPort::Number(8080),
    )];
    let mut internal = service("internal", ServiceType::ClusterIp, &["10.96.0.22"]);
    internal.internal_traffic_policy = TrafficPolicy::Local;
    internal.ports = vec![port("", Protocol::Tcp, 53, None, TargetPort::Number(5353))];
    let slices = vec![
        slice(
            "local",
            "a",
            AddressType::IPv4,
            &[("http", Protocol::Tcp, 8080)],
            vec![
                ready("10.244.0.10", "node-a"),
                ready("10.244.1.10", "node-b"),
            ],
        ),
        slice(
            "remote",
            "a",
            AddressType::IPv4,
            &[("http", Protocol::Tcp, 8080)],
            vec![ready("10.244.1.20", "node-b")],
        ),
        slice(
            "internal",
            "a",
            AddressType::IPv4,
            &[("", Protocol::Tcp, 5353)],
            vec![
                ready("10.244.0.30", "node-a"),
                ready("10.244.1.30", "node-b"),
            ],
        ),
    ];
    (vec![local, remote, internal], slices)
}

/// No endpoints at all (reject), and only terminating endpoints (used).
pub fn endpoint_conditions() -> Fixture {
    let mut empty = service("empty", ServiceType::NodePort, &["10.96.0.30"]);
    empty.ports = vec![port(
        "http",
        Protocol::Tcp,
        80,
        Some(30090),
        TargetPort::Number(8080),
    )];
    let mut draining = service("draining", ServiceType::ClusterIp, &["10.96.0.31"]);
    draining.ports = vec![port(
        "http",
        Protocol::Tcp,
        80,
        None,
        TargetPort::Number(8080),
    )];
    let slices = vec![slice(
        "draining",
        "a",
        AddressType::IPv4,
        &[("http", Protocol::Tcp, 8080)],
        vec![
            terminating("10.244.0.40", "node-a"),
            not_ready("10.244.0.41", "node-a"),
        ],
    )];
    (vec![empty, draining], slices)
}

/// Dual-stack LoadBalancer with TCP and UDP on one port number, ClientIP
/// affinity and source ranges in both families.
pub fn affinity_dual_stack() -> Fixture {
    let mut dns = service(
        "dns",
        ServiceType::LoadBalancer,
        &["10.96.0.53", "fd00:96::53"],
    );
    dns.external_ips = vec![ip("203.0.113.53"), ip("2001:db8:ff::53")];
    dns.session_affinity = affinity(600);
    dns.source_ranges = portico_config::SourceRanges::Only(vec![
        "192.0.2.0/24".parse().expect("cidr"),
        "198.51.100.0/24".parse().expect("cidr"),
        "2001:db8:1::/48".parse().expect("cidr"),
    ]);
    dns.ports = vec![
        port(
            "dns-udp",
            Protocol::Udp,
            53,
            Some(30053),
            TargetPort::Number(5353),
        ),
        port(
            "dns-tcp",
            Protocol::Tcp,
            53,
            Some(30053),
            TargetPort::Number(5353),
        ),
    ];
    let ports = [
        ("dns-udp", Protocol::Udp, 5353),
        ("dns-tcp", Protocol::Tcp, 5353),
    ];
    let slices = vec![
        slice(
            "dns",
            "v4",
            AddressType::IPv4,
            &ports,
            vec![
                ready("10.244.0.53", "node-a"),
                ready("10.244.1.53", "node-b"),
            ],
        ),
        slice(
            "dns",
            "v6",
            AddressType::IPv6,
            &ports,
            vec![ready("fd00:244::53", "node-a")],
        ),
    ];
    (vec![dns], slices)
}

/// Bad input of every kind next to a good Service that must keep its rules.
pub fn bad_input() -> Fixture {
    let mut api = service("api", ServiceType::NodePort, &["10.96.0.40"]);
    api.ports = vec![port(
        "http",
        Protocol::Tcp,
        80,
        Some(30100),
        TargetPort::Number(8080),
    )];
    let mut broken = service("broken", ServiceType::NodePort, &["10.96.0.41"]);
    broken.ports = vec![
        port("zero", Protocol::Tcp, 0, None, TargetPort::Number(8080)),
        port(
            "a",
            Protocol::Tcp,
            81,
            Some(30101),
            TargetPort::Number(8080),
        ),
        port(
            "dup",
            Protocol::Tcp,
            81,
            Some(30102),
            TargetPort::Number(8080),
        ),
        port(
            "clash",
            Protocol::Tcp,
            82,
            Some(30100),
            TargetPort::Number(8080),
        ),
        port(
            "named",
            Protocol::Tcp,
            83,
            None,
            TargetPort::Name("missing".into()),
        ),
    ];
    let no_ip = ServiceType::LoadBalancer;
    let mut headless_lb = service("no-cluster-ip", no_ip, &[]);
    headless_lb.ports = vec![port(
        "http",
        Protocol::Tcp,
        80,
        Some(30103),
        TargetPort::Number(80),
    )];
    let mut other_proxy = service("kube-proxy-owned", ServiceType::NodePort, &["10.96.0.42"]);
    other_proxy.proxy_name = None;
    other_proxy.ports = vec![port(
        "http",
        Protocol::Tcp,
        80,
        Some(30104),
        TargetPort::Number(80),
    )];
    let mut closed = service("closed", ServiceType::LoadBalancer, &["10.96.0.43"]);
    closed.external_ips = vec![ip("203.0.113.43"), ip("2001:db8:ff::43")];
    closed.source_ranges = portico_config::SourceRanges::Invalid {
        errors: vec!["10.0.0.0/33".into()],
    };
    closed.ports = vec![port(
        "http",
        Protocol::Tcp,
        80,
        Some(30105),
        TargetPort::Number(8080),
    )];

    let mut named = slice(
        "broken",
        "a",
        AddressType::IPv4,
        &[("a", Protocol::Tcp, 8080), ("named", Protocol::Tcp, 9090)],
        vec![ready("10.244.0.50", "node-a"), ready("fd00::50", "node-a")],
    );
    named.ports[1].port = None;
    let slices = vec![
        slice(
            "api",
            "a",
            AddressType::IPv4,
            &[("http", Protocol::Tcp, 8080)],
            vec![ready("10.244.0.51", "node-a")],
        ),
        named,
        slice(
            "closed",
            "a",
            AddressType::IPv4,
            &[("http", Protocol::Tcp, 8080)],
            vec![ready("10.244.0.52", "node-a")],
        ),
    ];
    (vec![api, broken, headless_lb, other_proxy, closed], slices)
}

/// Every fixture, by golden file name.
pub fn all() -> Vec<(&'static str, Fixture)> {
    vec![
        ("cluster_policy", cluster_policy()),
        ("local_policy", local_policy()),
        ("endpoint_conditions", endpoint_conditions()),
        ("affinity_dual_stack", affinity_dual_stack()),
        ("bad_input", bad_input()),
    ]
}
