//! End-to-end scenarios: each test builds a lab of its own (its own prefix,
//! so several run at once, and beside a developer's `portico-lab up`), with
//! the real `portico-edge`, three real `portico-node-agent`s and the pods'
//! servers, then checks what a user would check from the client hosts and
//! the API server. The lab is torn down when the test ends, also on panic
//! (the processes' logs are printed then).
//!
//! Needs root, `ip`, `nft` and `setsid`: skips loudly without them, fails
//! under `CI=true`. How the binaries under test are found: `support/mod.rs`.
//! They run beside each other ([`shared`]), never beside a failure scenario
//! or a benchmark. The lab is dual-stack: each scenario runs in IPv4 and in
//! IPv6, on the same Services.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use portico_lab::pod::{Answer, ClientError};
use portico_lab::topology::{self, Client, IpFamily, FAMILIES};
use portico_lab::Lab;

use crate::support::{lab, metric, privileged, shared};

/// The addresses of `family` a node may masquerade to: its cluster
/// address and its pods' gateway address.
fn node_addresses(family: IpFamily) -> BTreeSet<IpAddr> {
    topology::nodes()
        .iter()
        .flat_map(|n| [n.ip_of(family), n.gateway_ip_of(family)])
        .collect()
}

/// The Service's address (VIP:80) of `family`.
fn vip(lab: &Lab, name: &str, family: IpFamily) -> SocketAddr {
    lab.vip_of(name, family)
        .unwrap_or_else(|| panic!("{name} has no {family} VIP"))
}

/// `count` connections from `client`, every one answered.
fn answers(lab: &Lab, client: Client, addr: SocketAddr, count: usize) -> Vec<Answer> {
    lab.get_many(client, addr, count)
        .into_iter()
        .enumerate()
        .map(|(i, a)| a.unwrap_or_else(|e| panic!("connection {i} of {count} to {addr}: {e}")))
        .collect()
}

/// New connections seen per node on `node_port`, in node order.
fn syns(lab: &Lab, node_port: u16) -> Vec<u64> {
    topology::nodes()
        .iter()
        .map(|n| {
            lab.syns_seen(&n.name, node_port)
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect()
}

fn service(name: &str) -> topology::ServiceSpec {
    topology::services()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no Service {name} in the topology"))
}

/// New connections from the inside client to a `Cluster` Service reach pods
/// on all three nodes, through all three nodes, and the pods see a node's
/// address (masquerade), never the client's or the edge's.
#[test]
fn cluster_service_balances_over_every_node_and_masquerades() {
    if !privileged("cluster_service_balances_over_every_node_and_masquerades") {
        return;
    }
    let _shared = shared();
    let lab = lab();
    // web in both families, and web6 (IPv6 only) on the same pods.
    for (name, family) in [
        ("web", IpFamily::V4),
        ("web", IpFamily::V6),
        ("web6", IpFamily::V6),
    ] {
        let web = vip(&lab, name, family);
        let port = service(name).node_port;
        let before = syns(&lab, port);
        let got = answers(&lab, Client::Inside, web, 60);

        let pods: BTreeSet<&str> = got.iter().map(|a| a.pod.as_str()).collect();
        assert_eq!(
            pods,
            BTreeSet::from(["web-1", "web-2", "web-3"]),
            "60 connections to {web} should reach every web pod: {got:#?}"
        );
        let nodes: BTreeSet<&str> = got.iter().map(|a| a.node.as_str()).collect();
        assert_eq!(nodes, BTreeSet::from(["node-1", "node-2", "node-3"]));
        let after = syns(&lab, port);
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            assert!(
                a > b,
                "the edge sent no connection for {web} to node-{} ({before:?} -> {after:?})",
                i + 1
            );
        }
        let masquerade = node_addresses(family);
        for a in &got {
            assert!(
                masquerade.contains(&a.peer),
                "{} saw {} for {web}, not a node address of its family: Cluster must masquerade",
                a.pod,
                a.peer
            );
            assert_ne!(a.peer, Client::Inside.ip_of(family));
            assert_eq!(a.proxied_client, None, "{name} has no PROXY header");
        }
    }
}

/// Pods reaching Services from inside the cluster, in both families, as
/// kube-proxy serves them:
/// - hairpin: `web-1` reaches its own Service through the ClusterIP and
///   through the NodePort of its own node and of another node; every
///   connection is answered, some by `web-1` itself, and those come from
///   the node's gateway address (masqueraded), never from `web-1`'s own;
/// - `local-1` reaches `web` through the ClusterIP; a connection answered
///   by `web-1`, on the same node, still keeps `local-1`'s address (pod to
///   ClusterIP is not masqueraded).
#[test]
fn pods_reach_services_and_themselves_through_clusterip_and_nodeport() {
    if !privileged("pods_reach_services_and_themselves_through_clusterip_and_nodeport") {
        return;
    }
    let _shared = shared();
    let lab = lab();
    let pods = topology::pods();
    let pod = |name: &str| pods.iter().find(|p| p.name == name).expect("a pod").clone();
    let (web1, local1) = (pod("web-1"), pod("local-1"));
    let web = service("web");
    let nodes = topology::nodes();
    for family in FAMILIES {
        let cluster_ip = topology::in_family(web.cluster_ip, family);
        let gateway = nodes[0].gateway_ip_of(family);
        let targets = [
            (
                "ClusterIP",
                SocketAddr::new(cluster_ip, topology::SERVICE_PORT),
            ),
            (
                "own NodePort",
                SocketAddr::new(nodes[0].ip_of(family), web.node_port),
            ),
            (
                "node-2's NodePort",
                SocketAddr::new(nodes[1].ip_of(family), web.node_port),
            ),
        ];
        for (what, addr) in targets {
            let got: Vec<Answer> = lab
                .get_many_in(&lab.names().pod(&web1), addr, 30)
                .into_iter()
                .enumerate()
                .map(|(i, a)| {
                    a.unwrap_or_else(|e| panic!("web-1 -> {what} {addr}, connection {i}: {e}"))
                })
                .collect();
            let own: Vec<&Answer> = got.iter().filter(|a| a.pod == "web-1").collect();
            assert!(
                !own.is_empty(),
                "30 connections from web-1 to its {what} {addr} never came back to it: {got:#?}"
            );
            if what != "node-2's NodePort" {
                for a in &own {
                    assert_eq!(
                        a.peer, gateway,
                        "web-1 reaching itself through {what} {addr} must be masqueraded to node-1's gateway"
                    );
                }
            }
        }
        let got: Vec<Answer> = lab
            .get_many_in(
                &lab.names().pod(&local1),
                SocketAddr::new(cluster_ip, topology::SERVICE_PORT),
                30,
            )
            .into_iter()
            .map(|a| a.unwrap_or_else(|e| panic!("local-1 -> web's ClusterIP: {e}")))
            .collect();
        let beside: Vec<&Answer> = got.iter().filter(|a| a.pod == "web-1").collect();
        assert!(!beside.is_empty(), "web-1 never answered local-1: {got:#?}");
        for a in beside {
            assert_eq!(
                a.peer,
                local1.ip_of(family),
                "a pod's connection to a ClusterIP keeps its address, also to a pod of its own node"
            );
        }
    }
}

/// `--cluster-cidr`: a host outside the cluster that routes the service
/// range to node-1 (the edge's namespace, here) reaches `web`'s ClusterIP
/// in both families; node-1 masquerades it, so the pods on other nodes
/// answer node-1, which hands the answer back. Without the mark the answer
/// would go straight to the host from the pod's address and be lost.
#[test]
fn a_clusterip_reached_from_outside_the_cluster_is_masqueraded() {
    if !privileged("a_clusterip_reached_from_outside_the_cluster_is_masqueraded") {
        return;
    }
    let _shared = shared();
    let lab = lab();
    let outside = lab.names().edge();
    let node1 = &topology::nodes()[0];
    let web = service("web");
    for family in FAMILIES {
        let cluster_ip = topology::in_family(web.cluster_ip, family);
        let range = match family {
            IpFamily::V4 => format!("{cluster_ip}/32"),
            IpFamily::V6 => format!("{cluster_ip}/128"),
        };
        portico_lab::netns::ip_line(&format!(
            "-n {outside} route add {range} via {}",
            node1.ip_of(family)
        ))
        .expect("route to the ClusterIP");
        let got: Vec<Answer> = lab
            .get_many_in(
                &outside,
                SocketAddr::new(cluster_ip, topology::SERVICE_PORT),
                30,
            )
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                a.unwrap_or_else(|e| panic!("{cluster_ip} from outside, connection {i}: {e}"))
            })
            .collect();
        let pods: BTreeSet<&str> = got.iter().map(|a| a.pod.as_str()).collect();
        assert_eq!(
            pods,
            BTreeSet::from(["web-1", "web-2", "web-3"]),
            "{got:#?}"
        );
        let node1_addrs = [node1.ip_of(family), node1.gateway_ip_of(family)];
        for a in &got {
            assert!(
                node1_addrs.contains(&a.peer),
                "{} saw {} for {cluster_ip}: node-1 must masquerade traffic from outside the cluster CIDRs",
                a.pod,
                a.peer
            );
        }
    }
}

/// `Local`, in both families: connections land only on nodes with a pod of
/// the Service (the edge's health check takes node-3 out), the node does
/// not masquerade (the pod sees the edge's own address of the family as the
/// TCP peer), and the client's address reaches the pod in the PROXY v2
/// header the edge sends.
#[test]
fn local_service_keeps_the_client_address_and_skips_nodes_without_pods() {
    if !privileged("local_service_keeps_the_client_address_and_skips_nodes_without_pods") {
        return;
    }
    let _shared = shared();
    let lab = lab();
    let retries = |lab: &Lab| {
        let metrics = lab.edge_metrics().expect("edge metrics");
        metric(
            &metrics,
            "portico_edge_connect_retries_total",
            &["service=\"default/local\""],
        )
        .unwrap_or(0.0)
    };
    let before = retries(&lab);
    for family in FAMILIES {
        local_in(&lab, family);
    }
    assert_eq!(
        retries(&lab),
        before,
        "no connect of these connections had to be retried"
    );
}

fn local_in(lab: &Lab, family: IpFamily) {
    let local = vip(lab, "local", family);
    let port = service("local").node_port;
    let before = syns(lab, port);
    let count = 40;
    let got = answers(lab, Client::Inside, local, count);
    let after = syns(lab, port);

    let pods: BTreeSet<&str> = got.iter().map(|a| a.pod.as_str()).collect();
    assert_eq!(
        pods,
        BTreeSet::from(["local-1", "local-2"]),
        "both local pods answer, nothing else: {got:#?}"
    );
    assert_eq!(
        after[2], before[2],
        "no connection may land on node-3, which has no local pod"
    );
    let landed: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    assert!(
        landed >= count as u64,
        "{count} connections to {local}, {landed} seen by the nodes"
    );
    for a in &got {
        assert_eq!(
            a.peer,
            topology::in_family(topology::EDGE_CLUSTER_IP, family),
            "{} ({local}): Local must not masquerade; the pod sees the edge's connection as it left the edge",
            a.pod
        );
        assert_eq!(
            a.proxied_client,
            Some(Client::Inside.ip_of(family)),
            "{} ({local}): the client's address, through the PROXY header",
            a.pod
        );
    }
}

/// `loadBalancerSourceRanges`, one range per family: in each family the
/// outside client's connections are closed by the edge before any node is
/// contacted; the inside client gets through; the outside client does
/// reach a Service without ranges.
#[test]
fn source_ranges_admit_the_inside_client_only() {
    if !privileged("source_ranges_admit_the_inside_client_only") {
        return;
    }
    let _shared = shared();
    let lab = lab();
    for (i, family) in FAMILIES.into_iter().enumerate() {
        source_ranges_in(&lab, family, 5 * (i + 1));
    }
}

/// The source-range scenario in `family`; `rejected` rejections counted
/// since the lab came up, with this one's.
fn source_ranges_in(lab: &Lab, family: IpFamily, rejected: usize) {
    let restricted = vip(lab, "restricted", family);
    let port = service("restricted").node_port;

    let inside = answers(lab, Client::Inside, restricted, 5);
    assert!(
        inside.iter().all(|a| a.pod.starts_with("web-")),
        "{inside:#?}"
    );

    let before = syns(lab, port);
    let outside = lab.get_many(Client::Outside, restricted, 5);
    for result in &outside {
        assert!(
            matches!(
                result,
                Err(ClientError::Closed { .. } | ClientError::Refused { .. })
            ),
            "the outside client must get nothing from {restricted}: {result:?}"
        );
    }
    assert_eq!(
        syns(lab, port),
        before,
        "no node may be contacted for a client outside the range ({restricted})"
    );
    let metrics = lab.edge_metrics().expect("edge metrics");
    let counted = metric(
        &metrics,
        "portico_edge_connections_rejected_total",
        &["service=\"default/restricted\"", "reason=\"source_range\""],
    );
    assert!(
        counted.is_some_and(|n| n >= rejected as f64),
        "rejections counted after {restricted}: {counted:?}, want {rejected}"
    );

    let web = vip(lab, "web", family);
    let open = answers(lab, Client::Outside, web, 3);
    assert!(open.iter().all(|a| a.pod.starts_with("web-")), "{open:#?}");
}

/// The edge wrote `status.loadBalancer.ingress` with `ipMode: Proxy` for
/// every Service (read back through the API server): one distinct address
/// per family the Service asks for, in its `ipFamilies` order, from the
/// pool of that family, on the edge's public interface.
#[test]
fn the_edge_writes_every_services_address_with_ip_mode_proxy() {
    if !privileged("the_edge_writes_every_services_address_with_ip_mode_proxy") {
        return;
    }
    let _shared = shared();
    let lab = lab();
    let listed = lab.api().services().expect("list Services");
    let services: Vec<Service> = listed
        .into_iter()
        .map(|s| serde_json::from_value(s).expect("a Service"))
        .collect();
    let names: BTreeSet<String> = services
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    let wanted: BTreeSet<String> = topology::services()
        .iter()
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(names, wanted);

    let pool: Vec<IpAddr> = topology::pool_addresses()
        .into_iter()
        .map(IpAddr::V4)
        .chain(topology::pool_addresses6().into_iter().map(IpAddr::V6))
        .collect();
    let edge_addrs = portico_lab::netns::ip(&[
        "-n",
        &lab.names().edge(),
        "-o",
        "addr",
        "show",
        "dev",
        "eth0",
    ])
    .expect("the edge's addresses");
    let mut seen = BTreeSet::new();
    for svc in &services {
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.clone())
            .unwrap_or_default();
        let families = service(name).families;
        assert_eq!(ingress.len(), families.len(), "{name}: {ingress:?}");
        for (entry, family) in ingress.iter().zip(families) {
            let ip: IpAddr = entry
                .ip
                .as_deref()
                .and_then(|ip| ip.parse().ok())
                .unwrap_or_else(|| panic!("{name}: no IP in {ingress:?}"));
            assert_eq!(
                entry.ip_mode.as_deref(),
                Some("Proxy"),
                "{name}: ipMode Proxy keeps kube-proxy from short-cutting the address"
            );
            assert_eq!(
                IpFamily::of(ip),
                family,
                "{name}: {ingress:?} in ipFamilies order"
            );
            assert!(pool.contains(&ip), "{name}: {ip} outside the pools");
            assert!(seen.insert(ip), "{name}: {ip} given twice");
            assert_eq!(lab.vip_of(name, family).map(|a| a.ip()), Some(ip));
            let len = if ip.is_ipv4() { 32 } else { 128 };
            assert!(
                edge_addrs.contains(&format!(" {ip}/{len} ")),
                "{name}: {ip} is not on the edge's eth0:\n{edge_addrs}"
            );
        }
    }
}

/// `down` removes every namespace, process and state file of the lab, and
/// running it again (or with nothing up) is harmless.
#[test]
fn down_removes_every_trace_and_is_idempotent() {
    if !privileged("down_removes_every_trace_and_is_idempotent") {
        return;
    }
    let _shared = shared();
    let mut lab = lab();
    let prefix = lab.names().prefix().to_string();
    let state = lab.state_dir().to_path_buf();
    let namespaces: Vec<String> = portico_lab::netns::list()
        .expect("ip netns list")
        .into_iter()
        .filter(|ns| lab.names().owns(ns))
        .collect();
    assert_eq!(namespaces.len(), 12, "{namespaces:?}");
    let mut pids = Vec::new();
    for ns in &namespaces {
        pids.extend(portico_lab::netns::pids(ns).expect("ip netns pids"));
    }
    assert_eq!(
        pids.len(),
        10,
        "API server, edge, 3 agents, 5 pods: {pids:?}"
    );

    let report = lab.teardown().expect("down");
    assert_eq!(report.namespaces, 12);
    assert_eq!(report.processes, 10);
    assert!(report.state_removed);
    let left: Vec<String> = portico_lab::netns::list()
        .expect("ip netns list")
        .into_iter()
        .filter(|ns| lab.names().owns(ns))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!state.exists(), "{} still there", state.display());
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map(|(_, s)| &s[..1]);
        assert!(
            matches!(state, None | Some("Z")),
            "process {pid} still running: {stat}"
        );
    }
    let again = portico_lab::down(&prefix, &state).expect("down again");
    assert_eq!(again, portico_lab::DownReport::default());
}

/// `portico-lab up --edges 3`: three edges behind a router, each with its
/// BIRD. The router routes every VIP through all three; the inside
/// client's connections spread over them and every one is answered; the
/// outside client is still refused by `restricted`'s source range on
/// whichever edge it reaches; one edge holds the Lease (the others follow);
/// an edge drained leaves the router's routes and comes back at undrain.
#[test]
fn three_edges_behind_a_router_share_every_vip() {
    if !privileged("three_edges_behind_a_router_share_every_vip")
        || !portico_lab::command::installed_or_skip(
            "three_edges_behind_a_router_share_every_vip",
            &[("bird", "bird2")],
        )
    {
        return;
    }
    let _shared = shared();
    let lab = crate::support::lab_of(3, portico_lab::lab::DEFAULT_DRAIN_TIMEOUT);
    let router = lab.names().router();
    let edges_of = |family: IpFamily| -> BTreeSet<IpAddr> {
        (1..=3)
            .map(|n| portico_lab::routing::edge_ip(n, family))
            .collect()
    };
    let edges = edges_of(IpFamily::V4);
    for svc in topology::services() {
        for family in &svc.families {
            let vip = vip(&lab, svc.name, *family).ip().to_string();
            let hops = portico_lab::routing::nexthops(&router, &vip).expect("the router's route");
            assert_eq!(hops, edges_of(*family), "{} ({vip})", svc.name);
        }
    }

    let accepted = |n: usize| {
        let text = lab.edge_metrics_of(n).unwrap_or_else(|e| panic!("{e}"));
        metric(
            &text,
            "portico_edge_connections_accepted_total",
            &["service=\"default/web\""],
        )
        .unwrap_or(0.0)
    };
    for family in FAMILIES {
        let before: Vec<f64> = (1..=3).map(accepted).collect();
        let web = vip(&lab, "web", family);
        let got = answers(&lab, Client::Inside, web, 60);
        assert!(got.iter().all(|a| a.pod.starts_with("web-")), "{got:#?}");
        let carried: Vec<f64> = (1..=3).map(|n| accepted(n) - before[n - 1]).collect();
        assert_eq!(carried.iter().sum::<f64>(), 60.0, "{web}: {carried:?}");
        assert!(
            carried.iter().all(|c| *c > 0.0),
            "every edge carries a share of one client's connections to {web}: {carried:?}"
        );

        let restricted = vip(&lab, "restricted", family);
        for result in lab.get_many(Client::Outside, restricted, 6) {
            assert!(result.is_err(), "the outside client got in: {result:?}");
        }
        answers(&lab, Client::Inside, restricted, 3);
    }
    let web = lab.vip("web").expect("web has a VIP");

    let leaders: f64 = (1..=3)
        .map(|n| {
            let text = lab.edge_metrics_of(n).unwrap_or_else(|e| panic!("{e}"));
            metric(&text, "portico_edge_kubernetes_leader", &[]).expect("the leader gauge")
        })
        .sum();
    assert_eq!(leaders, 1.0, "exactly one edge writes to the cluster");

    // Edge 2 drained: withdrawn at the router, the others serve; undrained:
    // back.
    let edge = crate::support::binaries().edge;
    let admin = |command: &str| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.names().edge_n(2)])
            .arg(&edge)
            .arg(command)
            .output()
            .expect("portico-edge");
        assert!(out.status.success(), "{command}: {out:?}");
    };
    let web6 = vip(&lab, "web", IpFamily::V6);
    let wait = |vip: SocketAddr, want: &BTreeSet<IpAddr>| {
        let vip = vip.ip().to_string();
        portico_lab::routing::wait_nexthops(&router, &vip, want, std::time::Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    admin("drain");
    for (addr, family) in [(web, IpFamily::V4), (web6, IpFamily::V6)] {
        let mut without = edges_of(family);
        without.remove(&portico_lab::routing::edge_ip(2, family));
        wait(addr, &without);
        let got = answers(&lab, Client::Inside, addr, 20);
        assert_eq!(got.len(), 20);
    }
    admin("undrain");
    wait(web, &edges);
    wait(web6, &edges_of(IpFamily::V6));
}

/// `portico-lab up --edges 2 --vrrp`: keepalived puts the whole pool on
/// one edge (the first whose `/readyz` passes twice: `nopreempt` keeps it
/// there); every Service answers the inside client there, the outside
/// client is refused by `restricted`; that edge drained, the pool moves to
/// the other (the drained edge's check fails) and every Service answers
/// from there.
#[test]
fn a_vrrp_pair_holds_every_vip_on_one_edge_and_moves_them_at_a_drain() {
    if !privileged("a_vrrp_pair_holds_every_vip_on_one_edge_and_moves_them_at_a_drain")
        || !portico_lab::command::installed_or_skip(
            "a_vrrp_pair_holds_every_vip_on_one_edge_and_moves_them_at_a_drain",
            &[("keepalived", "keepalived"), ("curl", "curl")],
        )
    {
        return;
    }
    let _shared = shared();
    let lab = crate::support::vrrp_lab();
    let pools: Vec<IpAddr> = topology::pool_addresses()
        .into_iter()
        .map(IpAddr::V4)
        .chain(topology::pool_addresses6().into_iter().map(IpAddr::V6))
        .collect();
    let held = |n: usize| {
        let ns = lab.names().edge_n(n);
        pools
            .iter()
            .filter(|a| portico_lab::routing::vrrp::holds(&ns, **a).expect("ip addr"))
            .count()
    };
    let pool = pools.len();
    let (active, standby) = match (held(1), held(2)) {
        (n, 0) if n == pool => (1, 2),
        (0, n) if n == pool => (2, 1),
        split => panic!("the pool is not on one edge: {split:?}"),
    };
    let each = |lab: &Lab| {
        for svc in topology::services() {
            for family in &svc.families {
                answers(lab, Client::Inside, vip(lab, svc.name, *family), 3);
            }
        }
    };
    each(&lab);
    for family in FAMILIES {
        let restricted = vip(&lab, "restricted", family);
        assert!(lab
            .get_many(Client::Outside, restricted, 2)
            .iter()
            .all(Result::is_err));
    }

    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.names().edge_n(active)])
        .arg(crate::support::binaries().edge)
        .arg("drain")
        .output()
        .expect("portico-edge drain");
    assert!(out.status.success(), "{out:?}");
    let started = std::time::Instant::now();
    while (held(active), held(standby)) != (0, pool) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "the pool did not move to edge {standby}: {} on edge {active}, {} on edge {standby}",
            held(active),
            held(standby)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    eprintln!(
        "edge {active} drained: the pool on edge {standby} after {:?}",
        started.elapsed()
    );
    each(&lab);
}
