//! `loadBalancerSourceRanges` through real sockets: a client inside the
//! ranges is proxied; a client outside is closed before any node is
//! contacted (no node sees a connection) and counted by reason; IPv6 VIPs
//! and clients are matched against IPv6 ranges; and a Service whose ranges
//! could not be parsed fails closed for every client, visibly in `/status`
//! and the metrics, without affecting other Services; and a reload that
//! changes the ranges applies to the next connection.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use portico_config::SourceRanges;
use portico_edge::edge::{Edge, EdgeOptions};
use portico_edge::status::AccessStatus;

use crate::support::*;

const REJECTED: &str = "portico_edge_connections_rejected_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_client_inside_the_ranges_is_proxied_outside_is_closed_unseen() {
    let net = subnet();
    let nodes = start_nodes(net, 3, false).await;
    let vip = SocketAddr::new(net.ip(100), 8080);
    let mut svc = service("web", vip.ip(), vip.port());
    svc.source_ranges = SourceRanges::Only(vec![net.cidr(25).parse().expect("CIDR")]);
    let edge = Edge::start(config(net, 3, vec![svc]), EdgeOptions::default())
        .await
        .expect("edge starts");

    // Inside 127.a.b.0/25, including its last address.
    for host in [50, 127] {
        let (line, _) = hello(vip, Some(net.ip(host)))
            .await
            .unwrap_or_else(|e| panic!("{} is inside the range: {e}", net.ip(host)));
        assert!(
            node_of(&line).starts_with("node-"),
            "a node answered {host}: {line}"
        );
    }
    let seen_before = node_connections(&nodes);
    assert_eq!(seen_before.iter().sum::<u64>(), 2);

    // Outside: the first address past the range, and one far from it.
    for host in [128, 200] {
        expect_no_greeting(vip, Some(net.ip(host))).await;
    }
    assert_eq!(
        node_connections(&nodes),
        seen_before,
        "no node saw a connection from a rejected client"
    );
    let text = scrape(edge.metrics_addr()).await;
    assert_eq!(
        metric(
            &text,
            REJECTED,
            &["default/web", r#"reason="source_range""#]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "portico_edge_connections_accepted_total",
            &["default/web"]
        ),
        4.0,
        "accepted counts every connection the listener took, rejected or not"
    );
    assert_eq!(
        metric(&text, "portico_edge_connect_duration_seconds_count", &[]),
        2.0,
        "the edge connected to a node only for the two admitted clients"
    );
    let status = admin_status(edge.admin_addr()).await;
    assert_eq!(status.listeners.len(), 1);
    assert_eq!(
        status.listeners[0].access,
        AccessStatus::Ranges { count: 1 }
    );
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v6_vip_matches_v6_client_against_v6_ranges() {
    let net = subnet();
    let nodes = start_nodes(net, 2, false).await;
    let loopback6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    // [::1] is shared by every test process: take ports that are free now.
    let admit = SocketAddr::new(loopback6, free_port(loopback6));
    let deny = SocketAddr::new(loopback6, free_port(loopback6));
    let mut open = service("open6", admit.ip(), admit.port());
    open.source_ranges = SourceRanges::Only(vec!["::1/128".parse().expect("CIDR")]);
    let mut closed = service("closed6", deny.ip(), deny.port());
    closed.source_ranges = SourceRanges::Only(vec![
        "2001:db8::/32".parse().expect("CIDR"),
        // An IPv4 range, even one holding every loopback address, says
        // nothing about an IPv6 client.
        "127.0.0.0/8".parse().expect("CIDR"),
    ]);
    let edge = Edge::start(config(net, 2, vec![open, closed]), EdgeOptions::default())
        .await
        .expect("edge starts");

    // The nodes only have IPv4 addresses: the plan falls back to them.
    let route = route_of(&edge, admit);
    assert!(route.backends.iter().all(|b| b.addr.is_ipv4()));

    let (line, reader) = hello(admit, None).await.expect("::1 is inside ::1/128");
    assert_eq!(
        reader.get_ref().local_addr().expect("client address").ip(),
        loopback6,
        "the client really came over IPv6"
    );
    assert!(node_of(&line).starts_with("node-"), "{line}");
    let seen = node_connections(&nodes);

    expect_no_greeting(deny, None).await;
    assert_eq!(
        node_connections(&nodes),
        seen,
        "no node saw the rejected client"
    );
    let text = scrape(edge.metrics_addr()).await;
    assert_eq!(
        metric(
            &text,
            REJECTED,
            &["default/closed6", r#"reason="source_range""#]
        ),
        1.0
    );
    assert_eq!(
        metric(&text, REJECTED, &["default/open6"]),
        0.0,
        "the admitted client was not counted as rejected"
    );
    drop(reader);
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_ranges_fail_closed_for_that_service_only() {
    let net = subnet();
    let nodes = start_nodes(net, 3, false).await;
    let bad_vip = SocketAddr::new(net.ip(100), 8080);
    let good_vip = SocketAddr::new(net.ip(101), 8080);
    let mut bad = service("bad", bad_vip.ip(), bad_vip.port());
    // The file parser refuses this; other sources hand it over as Invalid.
    bad.source_ranges = SourceRanges::Invalid {
        errors: vec![r#""10.0.0.0/33" is not a valid CIDR"#.into()],
    };
    let good = service("good", good_vip.ip(), good_vip.port());
    let edge = Edge::start(config(net, 3, vec![bad, good]), EdgeOptions::default())
        .await
        .expect("edge starts");

    // Every client is refused: default source, inside and outside the subnet.
    let clients = [None, Some(net.ip(50)), Some(net.ip(200))];
    for from in clients {
        expect_no_greeting(bad_vip, from).await;
    }
    assert_eq!(
        node_connections(&nodes).iter().sum::<u64>(),
        0,
        "no node saw any client of the closed Service"
    );
    // The other Service works.
    for from in clients {
        let (line, _) = hello(good_vip, from)
            .await
            .expect("the good Service proxies");
        assert!(node_of(&line).starts_with("node-"), "{line}");
    }
    assert_eq!(node_connections(&nodes).iter().sum::<u64>(), 3);

    let text = scrape(edge.metrics_addr()).await;
    assert_eq!(
        metric(
            &text,
            REJECTED,
            &["default/bad", r#"reason="invalid_source_range""#]
        ),
        3.0
    );
    assert_eq!(
        metric(
            &text,
            REJECTED,
            &["default/bad", r#"reason="source_range""#]
        ),
        0.0
    );
    assert_eq!(metric(&text, REJECTED, &["default/good"]), 0.0);
    assert_eq!(
        metric(
            &text,
            "portico_edge_route_problems",
            &["default/bad", r#"problem="invalid_source_range""#]
        ),
        1.0
    );

    let status = admin_status(edge.admin_addr()).await;
    let row = |svc: &str| {
        status
            .listeners
            .iter()
            .find(|l| l.service == svc)
            .unwrap_or_else(|| panic!("{svc} in /status: {status:?}"))
            .clone()
    };
    let bad_row = row("default/bad");
    assert!(
        matches!(&bad_row.access, AccessStatus::Closed { reason } if reason.contains("10.0.0.0/33")),
        "closed access shown with the offending entry: {:?}",
        bad_row.access
    );
    assert!(
        bad_row.open,
        "the listener itself is open (it closes clients)"
    );
    assert_eq!(row("default/good").access, AccessStatus::Any);
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_ranges_apply_to_the_next_connection() {
    let net = subnet();
    let nodes = start_nodes(net, 2, false).await;
    let vip = SocketAddr::new(net.ip(100), 8080);
    let client = Some(net.ip(200));
    let mut cfg = config(net, 2, vec![service("web", vip.ip(), vip.port())]);
    let edge = Edge::start(cfg.clone(), EdgeOptions::default())
        .await
        .expect("edge starts");
    hello(vip, client)
        .await
        .expect("no ranges: everyone may connect");

    // Narrow to 127.a.b.0/25: .200 is out from the next connection on.
    cfg.services[0].source_ranges = SourceRanges::Only(vec![net.cidr(25).parse().expect("CIDR")]);
    assert!(edge.apply(cfg.clone()).await.expect("applied").is_empty());
    let seen = node_connections(&nodes);
    expect_no_greeting(vip, client).await;
    assert_eq!(node_connections(&nodes), seen);
    hello(vip, Some(net.ip(61)))
        .await
        .expect("a client inside the new range");

    // Widen again.
    cfg.services[0].source_ranges = SourceRanges::Any;
    assert!(edge.apply(cfg).await.expect("applied").is_empty());
    hello(vip, client).await.expect("open to everyone again");
    let text = scrape(edge.metrics_addr()).await;
    assert_eq!(
        metric(
            &text,
            REJECTED,
            &["default/web", r#"reason="source_range""#]
        ),
        1.0
    );
    edge.shutdown().await;
}
