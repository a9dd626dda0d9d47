//! The simplest end-to-end path: one Service, three stand-in nodes, traffic
//! reaches every node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use portico_edge::edge::{Edge, EdgeOptions};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_through_the_vip_reaches_every_node() {
    let net = subnet();
    let _nodes = start_nodes(net, 3, false).await;
    let vip = SocketAddr::new(net.ip(100), 8080);
    let edge = Edge::start(
        config(net, 3, vec![service("web", vip.ip(), vip.port())]),
        EdgeOptions::default(),
    )
    .await
    .expect("edge starts");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..60 {
        let (line, _) = hello(vip, None).await.expect("proxied");
        *seen.entry(node_of(&line).to_string()).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "all three nodes got traffic: {seen:?}");
    let text = scrape(edge.metrics_addr()).await;
    assert_eq!(
        metric(
            &text,
            "portico_edge_connections_accepted_total",
            &["default/web"]
        ),
        60.0
    );
    wait_until("probes of all three nodes", Duration::from_secs(5), || {
        edge.snapshot()
            .routes
            .values()
            .all(|r| r.backends.iter().all(|b| b.status.probed))
    })
    .await;
    edge.shutdown().await;
}
