//! Privileged datapath tests: the planned ruleset loaded by [`NftCommand`]
//! into a real "node" network namespace, with real pods and a real client,
//! dual-stack (the topology is in `support/netns.rs`).
//!
//! Every namespace is created by the test under a name unique to the process
//! and test, and removed by a drop guard (also on panic). The pods run TCP
//! and UDP servers (threads whose sockets were created inside the pod's
//! namespace) that answer `<pod name> <client address>`. Skips loudly when
//! not root; fails under `CI=true`.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::time::{Duration, Instant};

use portico_config::cluster::{
    AddressType, ClusterService, Endpoint, EndpointSlice, ServiceType, TargetPort,
};
use portico_config::{Protocol, SourceRanges, TrafficPolicy};
use portico_node_agent::{
    plan, render_diff, render_full, NftCommand, Plan, PlanOptions, Ruleset, SyncOutcome, Syncer,
};

use crate::support::netns::*;
use crate::support::*;

/// The lab of every test here: dual-stack, names tagged `pt`.
fn dual_stack_lab(test: &str, pods: &[&str]) -> (Lab, Vec<Pod>) {
    Lab::with_ipv6("pt", test, pods)
}

/// A pod's IPv4 address, as text.
fn v4(pod: &Pod) -> String {
    pod.addr.to_string()
}

/// A pod's IPv6 address, as text.
fn v6(pod: &Pod) -> String {
    pod.addr6.expect("dual-stack lab").to_string()
}

/// Both pods ready, at their address `addr` (`v4`, `v6`): the first on this
/// node (`node-a`), the second on `node-b`.
fn both_pods(pods: &[Pod], addr: fn(&Pod) -> String) -> Vec<Endpoint> {
    vec![
        ready(&addr(&pods[0]), "node-a"),
        ready(&addr(&pods[1]), "node-b"),
    ]
}

fn nodeport_service(name: &str, cluster_ip: &str, node_port: u16) -> ClusterService {
    let mut svc = service(name, ServiceType::LoadBalancer, &[cluster_ip]);
    svc.ports = vec![port(
        "http",
        Protocol::Tcp,
        80,
        Some(node_port),
        TargetPort::Name("http".into()),
    )];
    svc
}

fn pod_slice(service: &str, endpoints: Vec<portico_config::cluster::Endpoint>) -> EndpointSlice {
    slice(
        service,
        "a",
        AddressType::IPv4,
        &[
            ("http", Protocol::Tcp, POD_PORT),
            ("dns", Protocol::Udp, POD_PORT),
        ],
        endpoints,
    )
}

/// The plan of this node (`node-a`), with the default options.
fn plan_here(services: &[ClusterService], slices: &[EndpointSlice]) -> Plan {
    plan(
        services,
        slices,
        &node("node-a", NODE_IP),
        &PlanOptions::default(),
    )
}

fn planned(services: &[ClusterService], slices: &[EndpointSlice]) -> Ruleset {
    let p = plan_here(services, slices);
    assert_eq!(p.skipped, [], "fixtures are valid");
    p.ruleset
}

/// Connects until every pod in `want` answered (bounded): random choice
/// misses a pod in 64 tries with probability 2^-63. Returns the client
/// addresses the pods saw.
fn reach_all(lab: &Lab, to: &str, port: u16, want: &[&str]) -> Vec<String> {
    let mut seen_pods = std::collections::BTreeSet::new();
    let mut peers = Vec::new();
    for _ in 0..64 {
        let answer = lab
            .tcp(to, port, QUICK)
            .unwrap_or_else(|e| panic!("{to}:{port}: {e}"));
        let (pod, peer) = answer.split_once(' ').expect("answer is `<pod> <peer>`");
        assert!(
            want.contains(&pod),
            "{to}:{port} answered by {pod}, expected one of {want:?}"
        );
        seen_pods.insert(pod.to_string());
        peers.push(peer.to_string());
        if seen_pods.len() == want.len() {
            return peers;
        }
    }
    panic!("{to}:{port}: only {seen_pods:?} answered in 64 connections, expected {want:?}");
}

/// Both pods answer `to:port`, and each saw the connection come from `peer`.
fn assert_both_pods_see(lab: &Lab, to: &str, port: u16, peer: &str, why: &str) {
    for seen in reach_all(lab, to, port, &["pod-a", "pod-b"]) {
        assert_eq!(seen, peer, "{to}:{port}: {why}");
    }
}

/// Only the local pod (pod-a) answers `to:port`, every time (of 8), and it
/// sees the connection come from `client`.
fn assert_only_local_pod(lab: &Lab, to: &str, port: u16, client: &str) {
    for _ in 0..8 {
        let answer = lab
            .tcp(to, port, QUICK)
            .unwrap_or_else(|e| panic!("{to}:{port}: the local endpoint answers: {e}"));
        assert_eq!(answer, format!("pod-a {client}"));
    }
}

/// A connection to `to:port` is dropped: a timeout, neither refused nor
/// answered.
fn assert_dropped(lab: &Lab, to: &str, port: u16, why: &str) {
    let started = Instant::now();
    match lab.tcp(to, port, Duration::from_millis(700)) {
        Ok(answer) => panic!("{to}:{port}: {why}, but {answer:?} answered"),
        Err(err) => assert_eq!(
            err.kind(),
            ErrorKind::TimedOut,
            "{to}:{port}: {why}: {err} after {:?}",
            started.elapsed()
        ),
    }
}

/// A connection to `to:port` is refused; returns how long that took.
fn assert_refused(lab: &Lab, to: &str, port: u16, why: &str) -> Duration {
    let started = Instant::now();
    match lab.tcp(to, port, QUICK) {
        Ok(answer) => panic!("{to}:{port}: {why}, but {answer:?} answered"),
        Err(err) => {
            let took = started.elapsed();
            assert_eq!(
                err.kind(),
                ErrorKind::ConnectionRefused,
                "{to}:{port}: {why}: {err}"
            );
            took
        }
    }
}

#[test]
fn cluster_policy_nodeport_and_lb_ip_reach_every_pod_masqueraded() {
    if !privileged("cluster_policy_nodeport_and_lb_ip_reach_every_pod_masqueraded") {
        return;
    }
    let (lab, pods) = dual_stack_lab("cluster", &["pod-a", "pod-b"]);
    let _servers = lab.serve_who(&pods);
    let mut web = nodeport_service("web", "10.96.0.10", 30080);
    web.external_ips = vec![ip("203.0.113.10")];
    let slices = [pod_slice("web", both_pods(&pods, v4))];
    lab.apply(&render_full(&planned(&[web], &slices)));

    for (to, port) in [(NODE_IP, 30080), ("203.0.113.10", 80)] {
        assert_both_pods_see(
            &lab,
            to,
            port,
            NODE_BRIDGE_IP,
            "Cluster policy masquerades to the node",
        );
    }
}

#[test]
fn local_policy_keeps_the_client_address_and_drops_without_local_endpoint() {
    if !privileged("local_policy_keeps_the_client_address_and_drops_without_local_endpoint") {
        return;
    }
    let (lab, pods) = dual_stack_lab("local", &["pod-a", "pod-b"]);
    let _servers = lab.serve_who(&pods);
    let mut local = nodeport_service("local", "10.96.0.20", 30081);
    local.external_traffic_policy = TrafficPolicy::Local;
    let mut remote = nodeport_service("remote", "10.96.0.21", 30082);
    remote.external_traffic_policy = TrafficPolicy::Local;
    let slices = [
        pod_slice("local", both_pods(&pods, v4)),
        pod_slice("remote", vec![ready(&v4(&pods[1]), "node-b")]),
    ];
    lab.apply(&render_full(&planned(&[local, remote], &slices)));

    // Only the local pod, every time; it sees the real client.
    assert_only_local_pod(&lab, NODE_IP, 30081, CLIENT_IP);
    // No local endpoint: dropped (a timeout), not refused, not forwarded.
    assert_dropped(&lab, NODE_IP, 30082, "no local endpoint must not answer");
}

#[test]
fn no_endpoints_is_refused_at_once() {
    if !privileged("no_endpoints_is_refused_at_once") {
        return;
    }
    let (lab, _pods) = dual_stack_lab("noep", &[]);
    let mut empty = nodeport_service("empty", "10.96.0.30", 30090);
    empty.external_ips = vec![ip("203.0.113.30")];
    lab.apply(&render_full(&planned(&[empty], &[])));
    for (addr, port) in [(NODE_IP, 30090), ("203.0.113.30", 80)] {
        let took = assert_refused(&lab, addr, port, "no endpoints");
        assert!(took < Duration::from_secs(1), "{addr}:{port}: {took:?}");
    }
}

#[test]
fn full_resync_restores_a_deleted_table_and_diffs_apply() {
    if !privileged("full_resync_restores_a_deleted_table_and_diffs_apply") {
        return;
    }
    let (lab, pods) = dual_stack_lab("resync", &["pod-a", "pod-b"]);
    let _servers = lab.serve_who(&pods);
    let web = nodeport_service("web", "10.96.0.10", 30080);
    let only = |pod: &Pod| [pod_slice("web", vec![ready(&v4(pod), "node-a")])];
    let on_a = planned(std::slice::from_ref(&web), &only(&pods[0]));
    let on_b = planned(std::slice::from_ref(&web), &only(&pods[1]));
    let none = planned(&[], &[]);
    let mut syncer = Syncer::new(NftCommand::new());
    let node_ns = lab.ns("node");
    let mut sync = |desired: &Ruleset, full: bool| {
        in_netns(&node_ns, || {
            if full {
                syncer.resync(desired)
            } else {
                syncer.sync(desired)
            }
        })
        .unwrap_or_else(|e| panic!("sync in the node namespace: {e}"))
    };
    let delete_table = || lab.nft_ok(&["delete", "table", "inet", "portico"]);
    let answered_by = |pod: &str| {
        let answer = lab
            .tcp(NODE_IP, 30080, QUICK)
            .unwrap_or_else(|e| panic!("{pod}: {e}"));
        assert_eq!(answer, format!("{pod} {NODE_BRIDGE_IP}"));
    };

    assert_eq!(sync(&on_a, false), SyncOutcome::Full);
    answered_by("pod-a");

    // Someone deletes the table: the syncer cannot know, the periodic full
    // resync repairs it. Without rules nothing on the node listens there.
    delete_table();
    assert_eq!(sync(&on_a, false), SyncOutcome::Unchanged);
    assert_refused(&lab, NODE_IP, 30080, "no rules");
    assert_eq!(sync(&on_a, true), SyncOutcome::Full);
    answered_by("pod-a");
    // A resync over a loaded table is the same single transaction.
    assert_eq!(sync(&on_a, true), SyncOutcome::Full);

    // Incremental: move the endpoint to pod-b.
    assert_eq!(sync(&on_b, false), SyncOutcome::Incremental);
    answered_by("pod-b");
    // A diff against a table that is gone is refused; the syncer recreates it.
    delete_table();
    assert_eq!(sync(&on_a, false), SyncOutcome::FullAfterFailedDiff);
    answered_by("pod-a");
    // The Service goes away.
    assert_eq!(sync(&none, false), SyncOutcome::Incremental);
    assert_refused(&lab, NODE_IP, 30080, "service gone");
    // What is left in the kernel is exactly a fresh load of the empty plan.
    let after_diffs = normalized_table(&lab);
    assert_eq!(sync(&none, true), SyncOutcome::Full);
    assert_eq!(after_diffs, normalized_table(&lab));
}

#[test]
fn udp_reaches_a_pod() {
    if !privileged("udp_reaches_a_pod") {
        return;
    }
    let (lab, pods) = dual_stack_lab("udp", &["pod-a"]);
    let _servers = lab.serve_who(&pods);
    let mut dns = service("dns", ServiceType::NodePort, &["10.96.0.53"]);
    dns.ports = vec![port(
        "dns",
        Protocol::Udp,
        53,
        Some(30053),
        TargetPort::Number(POD_PORT),
    )];
    let slices = [pod_slice("dns", vec![ready(&v4(&pods[0]), "node-a")])];
    lab.apply(&render_full(&planned(&[dns], &slices)));
    let answer = lab.udp(NODE_IP, 30053).expect("udp answer");
    assert_eq!(answer, format!("pod-a {NODE_BRIDGE_IP}"));
}

#[test]
fn client_ip_affinity_sticks_to_one_pod() {
    if !privileged("client_ip_affinity_sticks_to_one_pod") {
        return;
    }
    let (lab, pods) = dual_stack_lab("affinity", &["pod-a", "pod-b"]);
    let _servers = lab.serve_who(&pods);
    let mut web = nodeport_service("web", "10.96.0.10", 30080);
    web.session_affinity = affinity(600);
    let slices = [pod_slice("web", both_pods(&pods, v4))];
    lab.apply(&render_full(&planned(&[web], &slices)));

    let first = lab.tcp(NODE_IP, 30080, QUICK).expect("first connection");
    // Without affinity, 16 more on the same pod happen with probability 2^-16.
    for _ in 0..16 {
        assert_eq!(lab.tcp(NODE_IP, 30080, QUICK).expect("connection"), first);
    }
    // The client's address is remembered, with a timeout, in the chosen
    // endpoint's set.
    let table = lab.nft_ok(&["list", "table", "inet", "portico"]);
    assert!(
        table.contains(&format!("elements = {{ {CLIENT_IP} expires ")),
        "no affinity entry for the client:\n{table}"
    );
}

#[test]
fn source_ranges_guard_lb_addresses_but_not_nodeports() {
    if !privileged("source_ranges_guard_lb_addresses_but_not_nodeports") {
        return;
    }
    let (lab, pods) = dual_stack_lab("ranges", &["pod-a"]);
    let _servers = lab.serve_who(&pods);
    let endpoints = || vec![ready(&v4(&pods[0]), "node-a")];
    let mut allowed = nodeport_service("allowed", "10.96.0.10", 30080);
    allowed.external_ips = vec![ip("203.0.113.10")];
    allowed.source_ranges = SourceRanges::Only(vec!["192.168.77.0/24".parse().expect("cidr")]);
    let mut denied = nodeport_service("denied", "10.96.0.11", 30081);
    denied.external_ips = vec![ip("203.0.113.11")];
    denied.source_ranges = SourceRanges::Only(vec!["198.51.100.0/24".parse().expect("cidr")]);
    let mut broken = nodeport_service("broken", "10.96.0.12", 30082);
    broken.external_ips = vec![ip("203.0.113.12")];
    broken.source_ranges = SourceRanges::Invalid {
        errors: vec!["10.0.0.0/33".to_string()],
    };
    let services = [allowed, denied, broken];
    let slices = [
        pod_slice("allowed", endpoints()),
        pod_slice("denied", endpoints()),
        pod_slice("broken", endpoints()),
    ];
    let p = plan_here(&services, &slices);
    assert_eq!(p.skipped.len(), 1, "{:?}", p.skipped);
    lab.apply(&render_full(&p.ruleset));

    let answer = lab
        .tcp("203.0.113.10", 80, QUICK)
        .expect("client inside range");
    assert_eq!(answer, format!("pod-a {NODE_BRIDGE_IP}"));
    for lb in ["203.0.113.11", "203.0.113.12"] {
        assert_dropped(
            &lab,
            lb,
            80,
            "client outside range (or unparsable range) is dropped",
        );
    }
    // kube-proxy never applies source ranges to NodePorts.
    for node_port in [30081, 30082] {
        let answer = lab
            .tcp(NODE_IP, node_port, QUICK)
            .expect("NodePort is open");
        assert_eq!(answer, format!("pod-a {NODE_BRIDGE_IP}"));
    }
}

/// The kernel's view of the table, independent of creation order and
/// handles: objects sorted, set elements sorted, rules in order per chain.
fn normalized_table(lab: &Lab) -> (Vec<String>, BTreeMap<String, Vec<String>>) {
    let text = lab.nft_ok(&["-j", "list", "table", "inet", "portico"]);
    let doc: serde_json::Value = serde_json::from_str(&text).expect("nft -j output is JSON");
    let mut objects = Vec::new();
    let mut rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for item in doc["nftables"].as_array().expect("nftables array") {
        let Some((kind, body)) = item.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let mut body = body.clone();
        if let Some(fields) = body.as_object_mut() {
            fields.remove("handle");
            if let Some(serde_json::Value::Array(elems)) = fields.get_mut("elem") {
                elems.sort_by_key(|e| e.to_string());
            }
        }
        match kind.as_str() {
            "metainfo" => {}
            "rule" => {
                let chain = body["chain"].as_str().expect("rule chain").to_string();
                rules.entry(chain).or_default().push(body.to_string());
            }
            _ => objects.push(format!("{kind} {body}")),
        }
    }
    objects.sort();
    (objects, rules)
}

/// A fixture after typical churn: the first endpoint of every slice gone,
/// the last Service removed, affinity timeouts changed.
fn churned((services, slices): &fixtures::Fixture) -> fixtures::Fixture {
    let mut services = services.clone();
    services.pop();
    for svc in &mut services {
        if let portico_config::SessionAffinity::ClientIp { timeout } = &mut svc.session_affinity {
            *timeout += Duration::from_secs(60);
        }
    }
    let mut slices = slices.clone();
    for slice in &mut slices {
        if !slice.endpoints.is_empty() {
            slice.endpoints.remove(0);
        }
    }
    (services, slices)
}

#[test]
fn every_diff_leaves_the_kernel_as_a_full_load_would() {
    if !privileged("every_diff_leaves_the_kernel_as_a_full_load_would") {
        return;
    }
    let (lab, _pods) = dual_stack_lab("diff", &[]);
    let plan_of = |(services, slices): &fixtures::Fixture| plan_here(services, slices).ruleset;
    let mut states: Vec<(String, Ruleset)> =
        vec![("empty".to_string(), plan_here(&[], &[]).ruleset)];
    for (name, fixture) in fixtures::all() {
        states.push((name.to_string(), plan_of(&fixture)));
        states.push((format!("{name}+churn"), plan_of(&churned(&fixture))));
    }
    let mut expected = BTreeMap::new();
    for (name, ruleset) in &states {
        lab.apply(&render_full(ruleset));
        expected.insert(name.clone(), normalized_table(&lab));
    }
    let mut checked = 0;
    for (from_name, from) in &states {
        for (to_name, to) in &states {
            lab.apply(&render_full(from));
            match render_diff(from, to) {
                None => assert_eq!(from, to, "{from_name} -> {to_name}: no diff for a change"),
                Some(script) => {
                    if let Err(e) = lab.try_apply(&script) {
                        panic!("{from_name} -> {to_name}: the diff is rejected: {e}\n{script}");
                    }
                }
            }
            assert!(
                normalized_table(&lab) == expected[to_name],
                "{from_name} -> {to_name}: the kernel differs from a full load of {to_name}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, states.len() * states.len());
}

#[test]
fn ipv6_nodeports_follow_the_traffic_policies() {
    if !privileged("ipv6_nodeports_follow_the_traffic_policies") {
        return;
    }
    let (lab, pods) = dual_stack_lab("v6", &["pod-a", "pod-b"]);
    let _servers = lab.serve_who(&pods);
    let mut cluster = nodeport_service("web", "10.96.0.10", 30080);
    cluster.cluster_ips.push(ip("fd00:96::10"));
    let mut local = nodeport_service("local", "10.96.0.20", 30081);
    local.cluster_ips.push(ip("fd00:96::20"));
    local.external_traffic_policy = TrafficPolicy::Local;
    let v6_slice = |service: &str| {
        let mut s = pod_slice(service, both_pods(&pods, v6));
        s.key.name.push_str("-v6");
        s.address_type = AddressType::IPv6;
        s
    };
    let slices = [v6_slice("web"), v6_slice("local")];
    lab.apply(&render_full(&planned(&[cluster, local], &slices)));

    assert_both_pods_see(
        &lab,
        NODE_IP6,
        30080,
        NODE_BRIDGE_IP6,
        "Cluster policy masquerades to the node",
    );
    assert_only_local_pod(&lab, NODE_IP6, 30081, CLIENT_IP6);
    // The IPv6 part has no IPv4 endpoints: IPv4 NodePorts reject.
    assert_refused(&lab, NODE_IP, 30080, "no IPv4 endpoints");
    let answer = lab.udp(NODE_IP6, 30080);
    assert!(
        answer.is_err(),
        "the UDP port of a TCP Service is not forwarded: {answer:?}"
    );
}

#[test]
fn cluster_ips_follow_the_internal_policy_from_outside_and_from_the_node() {
    if !privileged("cluster_ips_follow_the_internal_policy_from_outside_and_from_the_node") {
        return;
    }
    let (lab, pods) = dual_stack_lab("clusterip", &["pod-a", "pod-b"]);
    let _servers = lab.serve_who(&pods);
    let any = nodeport_service("any", "10.96.0.10", 30080);
    let mut local = nodeport_service("local", "10.96.0.11", 30081);
    local.internal_traffic_policy = TrafficPolicy::Local;
    let mut remote = nodeport_service("remote", "10.96.0.12", 30082);
    remote.internal_traffic_policy = TrafficPolicy::Local;
    let slices = [
        pod_slice("any", both_pods(&pods, v4)),
        pod_slice("local", both_pods(&pods, v4)),
        pod_slice("remote", vec![ready(&v4(&pods[1]), "node-b")]),
    ];
    lab.apply(&render_full(&planned(&[any, local, remote], &slices)));

    // ClusterIP traffic is not masqueraded (the client routes the service
    // range through the node, as a pod would).
    assert_both_pods_see(
        &lab,
        "10.96.0.10",
        80,
        CLIENT_IP,
        "ClusterIP traffic keeps the client address",
    );
    assert_only_local_pod(&lab, "10.96.0.11", 80, CLIENT_IP);
    assert_dropped(
        &lab,
        "10.96.0.12",
        80,
        "internal Local without a local endpoint drops",
    );
    // `internalTrafficPolicy` does not touch the NodePort of the same Service.
    reach_all(&lab, NODE_IP, 30082, &["pod-b"]);

    // From the node itself (nat output hook): ClusterIP and own NodePort.
    let answer = lab
        .tcp_from("node", "10.96.0.11", 80, QUICK)
        .expect("node to ClusterIP");
    assert_eq!(answer, format!("pod-a {NODE_BRIDGE_IP}"));
    let answer = lab
        .tcp_from("node", NODE_IP, 30081, QUICK)
        .expect("node to its own NodePort");
    assert!(
        answer == format!("pod-a {NODE_BRIDGE_IP}") || answer == format!("pod-b {NODE_BRIDGE_IP}"),
        "{answer}"
    );
}

/// The chain a verdict map element of `ruleset` jumps to (`goto <chain>`).
fn planned_target(ruleset: &Ruleset, map: &str, key: &str) -> String {
    let verdict = ruleset
        .sets
        .get(map)
        .and_then(|set| set.elements.get(key))
        .cloned()
        .flatten()
        .unwrap_or_else(|| panic!("no element {key:?} in the planned map {map}"));
    verdict
        .strip_prefix("goto ")
        .unwrap_or_else(|| panic!("{map} {key:?}: {verdict:?} is not a goto"))
        .to_string()
}

#[test]
fn sctp_ports_load_into_the_kernel_beside_a_working_tcp_port() {
    if !privileged("sctp_ports_load_into_the_kernel_beside_a_working_tcp_port") {
        return;
    }
    // This kernel tracks SCTP (conntrack) but has no SCTP sockets, so no
    // SCTP association can be made: the SCTP half is checked in the loaded
    // table, the TCP half with traffic.
    let (lab, pods) = dual_stack_lab("sctp", &["pod-a", "pod-b"]);
    let _servers = lab.serve_who(&pods);
    let mut mixed = service("mixed", ServiceType::NodePort, &["10.96.0.60"]);
    mixed.ports = vec![
        port(
            "assoc",
            Protocol::Sctp,
            9999,
            Some(30300),
            TargetPort::Number(9999),
        ),
        port(
            "http",
            Protocol::Tcp,
            80,
            Some(30080),
            TargetPort::Name("http".into()),
        ),
    ];
    let slices = [slice(
        "mixed",
        "a",
        AddressType::IPv4,
        &[
            ("assoc", Protocol::Sctp, 9999),
            ("http", Protocol::Tcp, POD_PORT),
        ],
        both_pods(&pods, v4),
    )];
    let ruleset = planned(&[mixed], &slices);
    let sctp_ip_key = "10.96.0.60 . sctp . 9999";
    let sctp_np_key = "sctp . 30300";
    let service_chain = planned_target(&ruleset, "service-ips", sctp_ip_key);
    let nodeport_chain = planned_target(&ruleset, "service-nodeports", sctp_np_key);
    let tcp_chain = planned_target(&ruleset, "service-ips", "10.96.0.60 . tcp . 80");
    assert!(
        service_chain.starts_with("service-") && service_chain.ends_with("/sctp/assoc"),
        "{service_chain}"
    );
    // Cluster policy: the NodePort goes straight to the same chain, marked
    // for masquerade by its key in `nodeport-masquerade`.
    assert_eq!(nodeport_chain, service_chain);
    assert_ne!(service_chain, tcp_chain, "SCTP and TCP ports share a chain");

    if let Err(e) = lab.try_apply(&render_full(&ruleset)) {
        panic!("the kernel refused the ruleset with SCTP ports: {e}");
    }

    // nft prints the inet_proto part of a key by name (`sctp`, not `132`).
    let table = lab.nft_ok(&["list", "table", "inet", "portico"]);
    let elements = [
        format!("{sctp_ip_key} : goto {service_chain}"),
        format!("{sctp_np_key} : goto {service_chain}"),
        format!("10.96.0.60 . tcp . 80 : goto {tcp_chain}"),
        format!("tcp . 30080 : goto {tcp_chain}"),
    ];
    for element in &elements {
        assert!(
            table.contains(element.as_str()),
            "no `{element}` in the kernel's table:\n{table}"
        );
    }
    assert!(
        table.contains(&format!("chain {service_chain} {{")),
        "no chain {service_chain} in the kernel's table:\n{table}"
    );
    let masquerade = lab.nft_ok(&["list", "set", "inet", "portico", "nodeport-masquerade"]);
    for key in [sctp_np_key, "tcp . 30080"] {
        assert!(
            masquerade.contains(key),
            "NodePort {key} is not marked for masquerade:\n{masquerade}"
        );
    }
    // The Service port's chain picks one of both endpoints and DNATs SCTP
    // to it itself: the first with probability 1/2, else the second.
    let cascade = format!(
        "chain {service_chain} {{\n\t\tnumgen random mod 2 0 meta l4proto sctp dnat ip to {}:9999\n\t\tmeta l4proto sctp dnat ip to {}:9999\n",
        pods[0].addr, pods[1].addr
    );
    assert!(
        table.contains(&cascade),
        "{service_chain} does not pick among 2 endpoints:\n{table}"
    );

    // The TCP port of the same Service carries traffic: NodePort
    // (masqueraded) and ClusterIP (client address kept).
    assert_both_pods_see(
        &lab,
        NODE_IP,
        30080,
        NODE_BRIDGE_IP,
        "Cluster policy masquerades to the node",
    );
    assert_both_pods_see(
        &lab,
        "10.96.0.60",
        80,
        CLIENT_IP,
        "ClusterIP traffic keeps the client address",
    );
}

#[test]
fn only_external_traffic_of_cluster_policy_services_is_masqueraded() {
    if !privileged("only_external_traffic_of_cluster_policy_services_is_masqueraded") {
        return;
    }
    // A Cluster and a Local Service side by side: the Cluster one's
    // external address and NodePort reach the same chain as its ClusterIP
    // and only the `*-masquerade` sets tell them apart.
    let (lab, pods) = dual_stack_lab("masq", &["pod-a", "pod-b"]);
    let _servers = lab.serve_who(&pods);
    let mut web = nodeport_service("web", "10.96.0.10", 30080);
    web.external_ips = vec![ip("203.0.113.10")];
    let mut local = nodeport_service("local", "10.96.0.20", 30081);
    local.external_ips = vec![ip("203.0.113.20")];
    local.external_traffic_policy = TrafficPolicy::Local;
    let slices = [
        pod_slice("web", both_pods(&pods, v4)),
        pod_slice("local", both_pods(&pods, v4)),
    ];
    let before = planned(&[web.clone(), local.clone()], &slices);
    lab.apply(&render_full(&before));

    for (to, port) in [(NODE_IP, 30080), ("203.0.113.10", 80)] {
        assert_both_pods_see(&lab, to, port, NODE_BRIDGE_IP, "Cluster external");
    }
    assert_both_pods_see(
        &lab,
        "10.96.0.10",
        80,
        CLIENT_IP,
        "the ClusterIP of a Cluster-policy Service keeps the client address",
    );
    for (to, port) in [(NODE_IP, 30081), ("203.0.113.20", 80)] {
        assert_only_local_pod(&lab, to, port, CLIENT_IP);
    }
    // From the node itself, a Local Service's external address may use any
    // endpoint (kube-proxy's rule for node-local clients).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..64 {
        let answer = lab
            .tcp_from("node", "203.0.113.20", 80, QUICK)
            .expect("node to a Local Service's external address");
        let (pod, _peer) = answer.split_once(' ').expect("answer is `<pod> <peer>`");
        seen.insert(pod.to_string());
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen.len(),
        2,
        "from the node both endpoints answer: {seen:?}"
    );

    // Switching web to Local by a diff takes its keys out of the
    // masquerade sets: the client address is kept from then on.
    web.external_traffic_policy = TrafficPolicy::Local;
    let after = planned(&[web, local], &slices);
    let script = render_diff(&before, &after).expect("the policy changed");
    if let Err(e) = lab.try_apply(&script) {
        panic!("the diff is rejected: {e}\n{script}");
    }
    for (to, port) in [(NODE_IP, 30080), ("203.0.113.10", 80)] {
        assert_only_local_pod(&lab, to, port, CLIENT_IP);
    }
    for set in ["external-masquerade", "nodeport-masquerade"] {
        let listed = lab.nft_ok(&["list", "set", "inet", "portico", set]);
        assert!(
            !listed.contains("elements"),
            "{set} is not empty:\n{listed}"
        );
    }
}
