//! Node selection through real sockets: Maglev places each connection where
//! the published snapshot says it goes (by client address and port, or by
//! client address alone under ClientIP affinity) and spreads flows over every
//! node; round-robin splits connections exactly evenly; least-connections
//! sends new connections to the least-loaded nodes; ClientIP affinity keeps a
//! client on one node under round-robin; and two independent edges with the
//! same view pick the same node for the same client address and port.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use portico_config::{Algorithm, SessionAffinity};
use portico_edge::edge::{Edge, EdgeOptions};
use portico_edge::snapshot::Route;
use tokio::io::BufReader;
use tokio::net::TcpStream;

use crate::support::*;

const AFFINITY: SessionAffinity = SessionAffinity::ClientIp {
    timeout: Duration::from_secs(600),
};

/// The node the route sends a new connection from `client` to.
fn predicted(route: &Route, client: SocketAddr) -> String {
    let picks = route.candidates(client, 1);
    assert_eq!(picks.len(), 1, "a healthy route always has a candidate");
    route.backends[picks[0]].node.to_string()
}

async fn start(net: Subnet, services: Vec<portico_config::Service>) -> Edge {
    let mut cfg = config(net, 3, services);
    // Generous probe timeout: a slow probe on a loaded machine must not take
    // a node out and change the picks these tests predict.
    cfg.settings.health.timeout = Duration::from_secs(1);
    let edge = Edge::start(cfg, EdgeOptions::default())
        .await
        .expect("edge starts");
    wait_until("first probes of every node", Duration::from_secs(5), || {
        all_probed(&edge)
    })
    .await;
    edge
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglev_places_each_connection_by_client_address_and_port() {
    let net = subnet();
    let _nodes = start_nodes(net, 3, false).await;
    let vip = SocketAddr::new(net.ip(100), 8080);
    let edge = start(net, vec![service("web", vip.ip(), vip.port())]).await;
    let route = route_of(&edge, vip);

    let client_ip = net.ip(50);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..90 {
        let (line, reader) = hello(vip, Some(client_ip)).await.expect("proxied");
        let local = reader.get_ref().local_addr().expect("client address");
        assert_eq!(
            node_of(&line),
            predicted(&route, local),
            "connection from {local} went where the snapshot's Maglev table says"
        );
        *seen.entry(node_of(&line).to_string()).or_default() += 1;
    }
    // One client address, many ports: the flows spread over every node.
    // (Expected 30 each; fewer than 10 would be a 4.5-sigma event.)
    assert_eq!(seen.len(), 3, "every node got flows: {seen:?}");
    assert!(seen.values().all(|&n| n >= 10), "flows spread: {seen:?}");
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglev_with_client_ip_affinity_pins_an_address_and_spreads_addresses() {
    let net = subnet();
    let _nodes = start_nodes(net, 3, false).await;
    let vip = SocketAddr::new(net.ip(100), 8080);
    let mut svc = service("web", vip.ip(), vip.port());
    svc.session_affinity = AFFINITY;
    let edge = start(net, vec![svc]).await;
    let route = route_of(&edge, vip);

    // One client address, 20 connections (20 different source ports): one node.
    let pinned = net.ip(50);
    let expected = predicted(&route, SocketAddr::new(pinned, 1));
    for _ in 0..20 {
        let (line, _) = hello(vip, Some(pinned)).await.expect("proxied");
        assert_eq!(node_of(&line), expected, "{pinned} stays on its node");
    }

    // Many client addresses: each lands where the address alone hashes to,
    // and together they cover every node.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for host in 150..195u8 {
        let ip = net.ip(host);
        let want = predicted(&route, SocketAddr::new(ip, 40_000));
        let (line, _) = hello(vip, Some(ip)).await.expect("proxied");
        assert_eq!(node_of(&line), want, "{ip} hashed by address only");
        *seen.entry(want).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "45 client addresses spread: {seen:?}");
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_splits_30_connections_exactly_evenly() {
    let net = subnet();
    let nodes = start_nodes(net, 3, false).await;
    let vip = SocketAddr::new(net.ip(100), 8080);
    let mut svc = service("web", vip.ip(), vip.port());
    svc.algorithm = Algorithm::RoundRobin;
    let edge = start(net, vec![svc]).await;

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut order = Vec::new();
    for _ in 0..30 {
        let (line, _) = hello(vip, None).await.expect("proxied");
        order.push(node_of(&line).to_string());
        *seen.entry(node_of(&line).to_string()).or_default() += 1;
    }
    let want: BTreeMap<String, usize> = (0..3).map(|i| (format!("node-{i}"), 10)).collect();
    assert_eq!(seen, want, "10/10/10");
    // Strict rotation: no node twice in a row.
    assert!(
        order.windows(2).all(|w| w[0] != w[1]),
        "round-robin rotates: {order:?}"
    );
    assert_eq!(
        node_connections(&nodes),
        vec![10, 10, 10],
        "the nodes saw the same split"
    );
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_sends_new_connections_to_the_least_loaded_nodes() {
    let net = subnet();
    let _nodes = start_nodes(net, 3, false).await;
    let vip = SocketAddr::new(net.ip(100), 8080);
    let mut svc = service("web", vip.ip(), vip.port());
    svc.algorithm = Algorithm::LeastConnections;
    let edge = start(net, vec![svc]).await;

    let names: Vec<String> = (0..3).map(|i| format!("node-{i}")).collect();
    let mut held: Vec<(String, BufReader<TcpStream>)> = Vec::new();
    let load = |held: &Vec<(String, BufReader<TcpStream>)>| -> BTreeMap<String, usize> {
        let mut m: BTreeMap<String, usize> = names.iter().map(|n| (n.clone(), 0)).collect();
        for (n, _) in held {
            *m.get_mut(n).expect("known node") += 1;
        }
        m
    };
    // Hold 4 connections open, then 8 more: each new one must go to a node
    // that had the fewest open connections at that moment.
    for i in 0..12 {
        let before = load(&held);
        let min = *before.values().min().expect("three nodes");
        let (line, reader) = hello(vip, None).await.expect("proxied");
        let node = node_of(&line).to_string();
        if i >= 4 {
            assert_eq!(
                before[&node], min,
                "connection {i} went to {node}, load was {before:?}"
            );
        }
        held.push((node, reader));
        // The edge counts the connection before the greeting can arrive.
        let route = route_of(&edge, vip);
        let now = load(&held);
        for b in &route.backends {
            assert_eq!(
                b.active.load(std::sync::atomic::Ordering::Relaxed) as usize,
                now[&*b.node],
                "the edge's active count of {} matches the open connections",
                b.node
            );
        }
    }
    // 12 connections over 3 nodes, always to the least loaded: 4 each.
    assert!(load(&held).values().all(|&n| n == 4), "{:?}", load(&held));

    // Close every connection to node-1: the next one goes there.
    held.retain(|(n, _)| n != "node-1");
    wait_until(
        "the edge to see node-1's connections closed",
        Duration::from_secs(5),
        || {
            route_of(&edge, vip)
                .backends
                .iter()
                .find(|b| &*b.node == "node-1")
                .is_some_and(|b| b.active.load(std::sync::atomic::Ordering::Relaxed) == 0)
        },
    )
    .await;
    let (line, reader) = hello(vip, None).await.expect("proxied");
    assert_eq!(node_of(&line), "node-1", "the idle node is preferred");
    // Close everything so shutdown need not wait for the drain timeout.
    drop(held);
    drop(reader);
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_affinity_with_round_robin_keeps_each_client_on_one_node() {
    let net = subnet();
    let _nodes = start_nodes(net, 3, false).await;
    let vip = SocketAddr::new(net.ip(100), 8080);
    let mut svc = service("web", vip.ip(), vip.port());
    svc.algorithm = Algorithm::RoundRobin;
    svc.session_affinity = AFFINITY;
    let edge = start(net, vec![svc]).await;

    let clients: Vec<IpAddr> = [50, 51, 52].iter().map(|&h| net.ip(h)).collect();
    let mut placed: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
    // Interleaved: without affinity, round-robin would move every client on
    // each connection.
    for _ in 0..20 {
        for &ip in &clients {
            let (line, _) = hello(vip, Some(ip)).await.expect("proxied");
            placed
                .entry(ip)
                .or_default()
                .insert(node_of(&line).to_string());
        }
    }
    for (ip, nodes) in &placed {
        assert_eq!(nodes.len(), 1, "{ip} stayed on one node for 20 connections");
    }
    // The three first connections were consecutive round-robin picks.
    let distinct: BTreeSet<&String> = placed.values().flatten().collect();
    assert_eq!(
        distinct.len(),
        3,
        "three clients on three nodes: {placed:?}"
    );
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_with_the_same_view_pick_the_same_node() {
    let net = subnet();
    let _nodes = start_nodes(net, 3, false).await;
    // Same Service and nodes; each edge needs its own VIP to listen on.
    let vip_a = SocketAddr::new(net.ip(100), 8080);
    let vip_b = SocketAddr::new(net.ip(101), 8080);
    let a = start(net, vec![service("web", vip_a.ip(), vip_a.port())]).await;
    let b = start(net, vec![service("web", vip_b.ip(), vip_b.port())]).await;
    let (ra, rb) = (route_of(&a, vip_a), route_of(&b, vip_b));

    let names = |r: &Route, client: SocketAddr| -> Vec<String> {
        r.candidates(client, 3)
            .into_iter()
            .map(|i| r.backends[i].node.to_string())
            .collect()
    };
    let mut first: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..1000u32 {
        let client: SocketAddr = if i % 2 == 0 {
            SocketAddr::new(
                IpAddr::from([198, 51, (i / 250) as u8, (i % 250) as u8]),
                1024 + (i * 61) as u16,
            )
        } else {
            SocketAddr::new(
                IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, (i >> 8) as u16, i as u16]),
                40_000 + i as u16,
            )
        };
        let (pa, pb) = (names(&ra, client), names(&rb, client));
        assert_eq!(pa.len(), 3, "every node is a candidate once");
        assert_eq!(pa, pb, "both edges order the nodes alike for {client}");
        *first.entry(pa[0].clone()).or_default() += 1;
    }
    assert!(
        first.len() == 3 && first.values().all(|&n| (250..=420).contains(&n)),
        "first choices spread over the nodes: {first:?}"
    );

    // Real connections from the same client address and port through each
    // edge reach the same node.
    let client_ip = net.ip(77);
    for _ in 0..6 {
        let (line_a, reader_a) = hello_from_exact(vip_a, SocketAddr::new(client_ip, 0))
            .await
            .expect("proxied by edge A");
        let local = reader_a.get_ref().local_addr().expect("client address");
        let (line_b, reader_b) = hello_from_exact(vip_b, local)
            .await
            .expect("proxied by edge B");
        assert_eq!(
            reader_b.get_ref().local_addr().expect("client address"),
            local,
            "both connections come from the same address and port"
        );
        assert_eq!(node_of(&line_a), node_of(&line_b), "same node for {local}");
        assert_eq!(node_of(&line_a), predicted(&ra, local));
        drop((reader_a, reader_b));
    }
    a.shutdown().await;
    b.shutdown().await;
}
