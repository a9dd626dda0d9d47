//! PROXY protocol towards nodes: with v1 or v2 enabled, a node that expects
//! the header learns the original client address (not the edge's); the exact
//! bytes on the wire are the spec's (`PROXY TCP4 <client> <vip> <cport>
//! <vport>\r\n` for v1, the 28-byte binary form for v2), followed by the
//! client's own bytes untouched; an IPv6 client is announced as `TCP6` even
//! when the node is reached over IPv4.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use portico_config::ProxyProtocol;
use portico_edge::edge::{Edge, EdgeOptions};
use portico_lab::standin::{StandInNode, StandInSpec};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

const DEADLINE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_see_the_original_client_with_v1_and_v2() {
    let net = subnet();
    let nodes = start_nodes(net, 3, true).await;
    let v1 = SocketAddr::new(net.ip(100), 8080);
    let v2 = SocketAddr::new(net.ip(101), 8080);
    let mut s1 = service("pp1", v1.ip(), v1.port());
    s1.proxy_protocol = ProxyProtocol::V1;
    let mut s2 = service("pp2", v2.ip(), v2.port());
    s2.proxy_protocol = ProxyProtocol::V2;
    let edge = Edge::start(config(net, 3, vec![s1, s2]), EdgeOptions::default())
        .await
        .expect("edge starts");

    let client_ip = net.ip(77);
    let mut sent = Vec::new();
    for vip in [v1, v2] {
        for _ in 0..6 {
            let (line, mut reader) = hello(vip, Some(client_ip)).await.expect("proxied");
            let local = reader.get_ref().local_addr().expect("client address");
            assert_eq!(
                client_of(&line),
                local.to_string(),
                "the node reports the client's own address and port ({vip})"
            );
            // The header was consumed by the node; the client's bytes follow intact.
            consume_hi(&mut reader).await;
            assert_eq!(
                echo(&mut reader, "after the header").await.expect("echo"),
                "after the header"
            );
            sent.push(local);
        }
    }
    let mut received: Vec<SocketAddr> = nodes
        .iter()
        .flat_map(|n| n.proxy_sources.lock().expect("lock").clone())
        .collect();
    received.sort();
    sent.sort();
    assert_eq!(
        received, sent,
        "one decoded header per connection, with the client address"
    );
    edge.shutdown().await;
}

/// A node whose NodePort is a raw listener of the test's own, so the exact
/// bytes the edge sends can be read; a stand-in serves only its health.
struct RawNode {
    listener: TcpListener,
    _health: StandInNode,
}

async fn raw_node(net: Subnet) -> RawNode {
    let ip = net.ip(9);
    let listener = TcpListener::bind(SocketAddr::new(ip, NODE_PORT))
        .await
        .expect("raw NodePort binds");
    let health = StandInNode::start(StandInSpec {
        name: "raw".into(),
        node_health: Some(SocketAddr::new(ip, KUBE_PROXY_PORT)),
        ..Default::default()
    })
    .await
    .expect("health server binds");
    RawNode {
        listener,
        _health: health,
    }
}

fn raw_config(net: Subnet, services: Vec<portico_config::Service>) -> portico_config::EdgeConfig {
    let mut cfg = config(net, 0, services);
    cfg.nodes = vec![portico_config::Node {
        name: "raw".into(),
        addresses: vec![net.ip(9)],
        excluded: vec![],
    }];
    cfg
}

/// Connects from `127.a.b.77` to `vip`, sends `payload`, and returns the
/// client stream, its address and the node's side of the connection.
async fn connect_through(
    node: &RawNode,
    vip: SocketAddr,
    from: IpAddr,
    payload: &[u8],
) -> (TcpStream, SocketAddr, TcpStream) {
    let socket = if vip.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind client");
    let mut client = tokio::time::timeout(DEADLINE, socket.connect(vip))
        .await
        .expect("connect in time")
        .expect("connect");
    let local = client.local_addr().expect("client address");
    client.write_all(payload).await.expect("send");
    let (upstream, _) = tokio::time::timeout(DEADLINE, node.listener.accept())
        .await
        .expect("the edge connects to the node in time")
        .expect("accept");
    (client, local, upstream)
}

/// Answers on the node side and checks it reaches the client.
async fn reply_reaches_client(client: &mut TcpStream, upstream: &mut TcpStream) {
    upstream.write_all(b"pong\n").await.expect("node writes");
    let mut buf = [0u8; 5];
    tokio::time::timeout(DEADLINE, client.read_exact(&mut buf))
        .await
        .expect("reply in time")
        .expect("reply");
    assert_eq!(&buf, b"pong\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_header_bytes_are_exact() {
    let net = subnet();
    let node = raw_node(net).await;
    let vip = SocketAddr::new(net.ip(100), 8080);
    let mut svc = service("pp1", vip.ip(), vip.port());
    svc.proxy_protocol = ProxyProtocol::V1;
    let edge = Edge::start(raw_config(net, vec![svc]), EdgeOptions::default())
        .await
        .expect("edge starts");

    let (mut client, local, upstream) = connect_through(&node, vip, net.ip(77), b"hello\n").await;
    let mut upstream = BufReader::new(upstream);
    let mut header = Vec::new();
    tokio::time::timeout(DEADLINE, upstream.read_until(b'\n', &mut header))
        .await
        .expect("header in time")
        .expect("header");
    let want = format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        net.ip(77),
        vip.ip(),
        local.port(),
        vip.port()
    );
    assert_eq!(String::from_utf8_lossy(&header), want);
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, upstream.read_until(b'\n', &mut rest))
        .await
        .expect("payload in time")
        .expect("payload");
    assert_eq!(
        rest, b"hello\n",
        "the client's bytes follow the header unchanged"
    );
    reply_reaches_client(&mut client, upstream.get_mut()).await;
    drop((client, upstream));
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_header_bytes_are_exact() {
    let net = subnet();
    let node = raw_node(net).await;
    let vip = SocketAddr::new(net.ip(101), 8443);
    let mut svc = service("pp2", vip.ip(), vip.port());
    svc.proxy_protocol = ProxyProtocol::V2;
    let edge = Edge::start(raw_config(net, vec![svc]), EdgeOptions::default())
        .await
        .expect("edge starts");

    let (mut client, local, mut upstream) =
        connect_through(&node, vip, net.ip(77), b"hello\n").await;
    let mut got = [0u8; 28 + 6];
    tokio::time::timeout(DEADLINE, upstream.read_exact(&mut got))
        .await
        .expect("header in time")
        .expect("header");
    let mut want = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    want.push(0x21); // version 2, PROXY command
    want.push(0x11); // TCP over IPv4
    want.extend_from_slice(&12u16.to_be_bytes());
    let octets = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => unreachable!("IPv4 test"),
    };
    want.extend_from_slice(&octets(net.ip(77)));
    want.extend_from_slice(&octets(vip.ip()));
    want.extend_from_slice(&local.port().to_be_bytes());
    want.extend_from_slice(&vip.port().to_be_bytes());
    want.extend_from_slice(b"hello\n");
    assert_eq!(
        got.as_slice(),
        want.as_slice(),
        "v2 header, then the payload"
    );
    reply_reaches_client(&mut client, &mut upstream).await;
    drop((client, upstream));
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v6_client_is_announced_as_tcp6_to_a_v4_node() {
    let net = subnet();
    let node = raw_node(net).await;
    let loopback6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let vip = SocketAddr::new(loopback6, free_port(loopback6));
    let mut svc = service("pp6", vip.ip(), vip.port());
    svc.proxy_protocol = ProxyProtocol::V1;
    let edge = Edge::start(raw_config(net, vec![svc]), EdgeOptions::default())
        .await
        .expect("edge starts");

    let (mut client, local, upstream) = connect_through(&node, vip, loopback6, b"hi6\n").await;
    assert!(
        upstream.peer_addr().expect("edge address").is_ipv4(),
        "the node is reached over IPv4"
    );
    let mut upstream = BufReader::new(upstream);
    let mut header = Vec::new();
    tokio::time::timeout(DEADLINE, upstream.read_until(b'\n', &mut header))
        .await
        .expect("header in time")
        .expect("header");
    assert_eq!(
        String::from_utf8_lossy(&header),
        format!("PROXY TCP6 ::1 ::1 {} {}\r\n", local.port(), vip.port())
    );
    reply_reaches_client(&mut client, upstream.get_mut()).await;
    drop((client, upstream));
    edge.shutdown().await;
}
