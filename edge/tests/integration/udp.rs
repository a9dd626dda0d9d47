//! UDP Service ports: flows are balanced per client address, replies come
//! back from the VIP, source ranges drop datagrams, idle flows end, and a node
//! that stops answering (ICMP port unreachable) loses its flows.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use portico_config::{Protocol, SourceRanges};
use portico_edge::edge::{Edge, EdgeOptions};
use portico_lab::standin::UdpStandIn;
use tokio::net::UdpSocket;

use crate::support::*;

async fn udp_nodes(net: Subnet, n: u8) -> Vec<UdpStandIn> {
    let mut out = Vec::new();
    for i in 0..n {
        let addr = SocketAddr::new(net.ip(i + 1), NODE_PORT);
        out.push(
            UdpStandIn::start(&format!("node-{i}"), addr)
                .await
                .expect("UDP stand-in binds"),
        );
    }
    out
}

fn udp_service(name: &str, vip: SocketAddr) -> portico_config::Service {
    let mut svc = service(name, vip.ip(), vip.port());
    svc.ports[0].protocol = Protocol::Udp;
    svc
}

/// Sends `payload` from `from` to `vip` and returns the answer and its sender.
async fn ask(socket: &UdpSocket, vip: SocketAddr, payload: &[u8]) -> Option<(String, SocketAddr)> {
    socket.send_to(payload, vip).await.expect("datagram sent");
    let mut buf = [0u8; 2048];
    match tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from)),
        _ => None,
    }
}

async fn client(ip: IpAddr) -> UdpSocket {
    UdpSocket::bind(SocketAddr::new(ip, 0))
        .await
        .expect("client binds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flows_are_balanced_and_answered_from_the_vip() {
    let net = subnet();
    let _health = start_nodes(net, 3, false).await; // kube-proxy health for the nodes
    let _udp = udp_nodes(net, 3).await;
    let vip = SocketAddr::new(net.ip(100), 5353);
    let edge = Edge::start(
        config(net, 3, vec![udp_service("dns", vip)]),
        EdgeOptions::default(),
    )
    .await
    .expect("edge starts");
    let mut nodes_seen = BTreeSet::new();
    for host in 10..40 {
        let c = client(net.ip(host)).await;
        let (first, from) = ask(&c, vip, b"q1").await.expect("answer");
        assert_eq!(from, vip, "the answer comes from the VIP");
        assert!(first.ends_with(" q1"), "{first}");
        let node = node_of(&first).to_string();
        // The flow sticks: the next datagram of the same client reaches the same node.
        let (second, _) = ask(&c, vip, b"q2").await.expect("answer");
        assert_eq!(node_of(&second), node);
        nodes_seen.insert(node);
    }
    assert_eq!(
        nodes_seen.len(),
        3,
        "flows spread over every node: {nodes_seen:?}"
    );
    let text = scrape(edge.metrics_addr()).await;
    assert_eq!(
        metric(
            &text,
            "portico_edge_connections_accepted_total",
            &["default/dns"]
        ),
        30.0
    );
    assert_eq!(
        metric(
            &text,
            "portico_edge_bytes_total",
            &["default/dns", "client_to_node"]
        ),
        30.0 * 4.0
    );
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_source_ranges_drop_datagrams_before_any_node_sees_them() {
    let net = subnet();
    let _health = start_nodes(net, 1, false).await;
    let udp = udp_nodes(net, 1).await;
    let vip = SocketAddr::new(net.ip(100), 5353);
    let mut svc = udp_service("dns", vip);
    svc.source_ranges = SourceRanges::Only(vec![net.cidr(25).parse().unwrap()]);
    let edge = Edge::start(config(net, 1, vec![svc]), EdgeOptions::default())
        .await
        .expect("edge starts");
    let inside = client(net.ip(50)).await;
    assert!(ask(&inside, vip, b"in").await.is_some());
    let before = udp[0].datagrams.load(std::sync::atomic::Ordering::Relaxed);
    let outside = client(net.ip(200)).await;
    assert!(
        ask(&outside, vip, b"out").await.is_none(),
        "no answer outside the range"
    );
    assert_eq!(
        udp[0].datagrams.load(std::sync::atomic::Ordering::Relaxed),
        before
    );
    let text = scrape(edge.metrics_addr()).await;
    assert_eq!(
        metric(
            &text,
            "portico_edge_connections_rejected_total",
            &["default/dns", "source_range"]
        ),
        1.0
    );
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_udp_flows_end_and_unreachable_nodes_lose_their_flows() {
    let net = subnet();
    let _health = start_nodes(net, 2, false).await;
    let udp = udp_nodes(net, 2).await;
    let vip = SocketAddr::new(net.ip(100), 5353);
    let mut cfg = config(net, 2, vec![udp_service("dns", vip)]);
    cfg.settings.proxy.udp_idle_timeout = Duration::from_millis(200);
    let edge = Edge::start(cfg, EdgeOptions::default())
        .await
        .expect("edge starts");
    let c = client(net.ip(10)).await;
    let (line, _) = ask(&c, vip, b"x").await.expect("answer");
    let active = || {
        edge.snapshot()
            .routes
            .values()
            .map(|r| {
                r.backends
                    .iter()
                    .map(|b| b.active.load(std::sync::atomic::Ordering::Relaxed))
                    .sum::<u64>()
            })
            .sum::<u64>()
    };
    assert_eq!(active(), 1, "one flow open");
    wait_until("the idle flow to end", Duration::from_secs(5), || {
        active() == 0
    })
    .await;

    // The node this client's flow lands on stops answering: its ICMP port
    // unreachable ends the flow and counts as a passive failure.
    let node = node_of(&line).to_string();
    let idx: usize = node.trim_start_matches("node-").parse().unwrap();
    assert!(ask(&c, vip, b"y").await.is_some());
    udp[idx].stop();
    assert!(ask(&c, vip, b"z").await.is_none());
    wait_until("the refused flow to end", Duration::from_secs(5), || {
        active() == 0
    })
    .await;
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_udp_port_ends_its_flows_and_can_come_back() {
    let net = subnet();
    let _health = start_nodes(net, 1, false).await;
    let _udp = udp_nodes(net, 1).await;
    let vip = SocketAddr::new(net.ip(100), 5353);
    let cfg = config(net, 1, vec![udp_service("dns", vip)]);
    let edge = Edge::start(cfg.clone(), EdgeOptions::default())
        .await
        .expect("edge starts");
    let c = client(net.ip(10)).await;
    assert!(ask(&c, vip, b"1").await.is_some());
    let active = |edge: &Edge| {
        let text = edge.metrics().render();
        metric(&text, "portico_edge_connections_active", &["default/dns"])
    };
    assert_eq!(active(&edge), 1.0);

    let mut empty = cfg.clone();
    empty.services.clear();
    edge.apply(empty).await.expect("applied");
    wait_until(
        "the flow to end with its listener",
        Duration::from_secs(5),
        || active(&edge) == 0.0,
    )
    .await;
    assert!(
        ask(&c, vip, b"2").await.is_none(),
        "nothing listens on the VIP any more"
    );

    // The VIP socket was really released: the port opens again.
    let errors = edge.apply(cfg).await.expect("applied");
    assert!(errors.is_empty(), "{errors:?}");
    assert!(ask(&c, vip, b"3").await.is_some());
    edge.shutdown().await;
}
