//! Health checking through real probes of stand-in nodes: a node whose
//! kube-proxy health server answers 503 (or that stops listening) is taken
//! out within rise/fall and gets no new connection, then comes back; `Local`
//! Services follow `healthCheckNodePort` (503 = no traffic) and its endpoint
//! weight header; when every node is down the edge fails open (still
//! proxies) or, if so configured, closed (rejects with `no_healthy_backend`);
//! the TCP fallback check judges a node by its NodePort; and the first probe
//! runs at once and decides alone.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use portico_config::{AllDownPolicy, ClusterHealthCheck, EdgeConfig, TrafficPolicy};
use portico_edge::edge::{Edge, EdgeOptions};
use portico_lab::standin::{StandInNode, StandInSpec};

use crate::support::*;

const UP: &str = "portico_edge_backend_up";
const TRANSITIONS: &str = "portico_edge_backend_transitions_total";
const DEADLINE: Duration = Duration::from_secs(5);

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|&(n, c)| (n.to_string(), c)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_node_is_taken_out_and_comes_back() {
    let net = subnet();
    let nodes = start_nodes(net, 3, false).await;
    let (cfg, vip) = rr_config(net, 3);
    let edge = Edge::start(cfg, EdgeOptions::default())
        .await
        .expect("edge starts");
    wait_until("first probes", DEADLINE, || all_probed(&edge)).await;

    nodes[1].state.healthy.store(false, Ordering::Relaxed);
    wait_until("node-1 marked down (fall 2)", DEADLINE, || {
        backend_health(&edge, vip, "node-1") == (true, false)
    })
    .await;
    let before = node_connections(&nodes);
    let seen = spread(vip, 30).await;
    assert_eq!(
        seen,
        counts(&[("node-0", 15), ("node-2", 15)]),
        "round-robin over the two healthy nodes"
    );
    assert_eq!(
        nodes[1].state.connections.load(Ordering::Relaxed),
        before[1],
        "node-1 saw no connection while down"
    );
    let text = scrape(edge.metrics_addr()).await;
    let node1 = r#"node="node-1""#;
    assert_eq!(metric(&text, UP, &[node1]), 0.0);
    assert_eq!(metric(&text, UP, &[r#"node="node-0""#]), 1.0);
    assert_eq!(metric(&text, TRANSITIONS, &[node1, r#"to="down""#]), 1.0);
    assert_eq!(metric(&text, TRANSITIONS, &[node1, r#"to="up""#]), 0.0);
    let status = admin_status(edge.admin_addr()).await;
    let row = &status.listeners[0].backends[1];
    assert_eq!((row.node.as_str(), row.healthy), ("node-1", false));
    assert_eq!(
        row.last_error.as_deref(),
        Some("GET /healthz answered 503"),
        "/status says why"
    );

    nodes[1].state.healthy.store(true, Ordering::Relaxed);
    wait_until("node-1 back up (rise 2)", DEADLINE, || {
        backend_health(&edge, vip, "node-1") == (true, true)
    })
    .await;
    // Three consecutive round-robin picks over three nodes: one each.
    let seen = spread(vip, 3).await;
    assert_eq!(seen, counts(&[("node-0", 1), ("node-1", 1), ("node-2", 1)]));
    let text = scrape(edge.metrics_addr()).await;
    assert_eq!(metric(&text, UP, &[node1]), 1.0);
    assert_eq!(metric(&text, TRANSITIONS, &[node1, r#"to="up""#]), 1.0);
    edge.shutdown().await;
}

/// A `Local` round-robin Service checked on HC_NODE_PORT.
fn local_config(net: Subnet) -> (EdgeConfig, SocketAddr) {
    let (mut cfg, vip) = rr_config(net, 3);
    cfg.services[0].external_traffic_policy = TrafficPolicy::Local;
    cfg.services[0].health_check_node_port = Some(HC_NODE_PORT);
    (cfg, vip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_service_skips_nodes_without_local_endpoints() {
    let net = subnet();
    let nodes = start_nodes(net, 3, false).await;
    nodes[2].state.local_endpoints.store(0, Ordering::Relaxed);
    let (cfg, vip) = local_config(net);
    let edge = Edge::start(cfg, EdgeOptions::default())
        .await
        .expect("edge starts");
    wait_until("first probes", DEADLINE, || all_probed(&edge)).await;
    assert_eq!(backend_health(&edge, vip, "node-2"), (true, false));

    let seen = spread(vip, 30).await;
    assert_eq!(seen, counts(&[("node-0", 15), ("node-1", 15)]));
    assert_eq!(nodes[2].state.connections.load(Ordering::Relaxed), 0);
    assert!(
        nodes[2].state.probes.load(Ordering::Relaxed) > 0,
        "node-2 was probed on its health check node port"
    );
    let status = admin_status(edge.admin_addr()).await;
    let row = &status.listeners[0].backends[2];
    assert_eq!(
        row.check,
        format!("service-local:{}:{HC_NODE_PORT}", net.ip(3)),
        "Local Services are judged by healthCheckNodePort"
    );
    assert_eq!(row.last_error.as_deref(), Some("GET / answered 503"));
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_endpoint_weights_shape_round_robin() {
    let net = subnet();
    let nodes = start_nodes(net, 3, false).await;
    nodes[0].state.local_endpoints.store(3, Ordering::Relaxed);
    let (cfg, vip) = local_config(net);
    let edge = Edge::start(cfg, EdgeOptions::default())
        .await
        .expect("edge starts");
    wait_until("weights 3/1/1 in the snapshot", DEADLINE, || {
        let r = route_of(&edge, vip);
        r.backends
            .iter()
            .map(|b| (b.status.probed, b.status.weight))
            .collect::<Vec<_>>()
            == [(true, 3), (true, 1), (true, 1)]
    })
    .await;

    // Smooth weighted round-robin over weights [3, 1, 1] is the sequence
    // node-0, node-1, node-0, node-2, node-0 (period 5). 50 consecutive
    // connections are 10 whole periods from wherever the cursor stands, so
    // the split is exact: 30/10/10.
    let seen = spread(vip, 50).await;
    assert_eq!(
        seen,
        counts(&[("node-0", 30), ("node-1", 10), ("node-2", 10)])
    );
    let text = scrape(edge.metrics_addr()).await;
    assert_eq!(
        metric(&text, "portico_edge_backend_weight", &[r#"node="node-0""#]),
        3.0
    );
    let status = admin_status(edge.admin_addr()).await;
    let weights: Vec<u32> = status.listeners[0]
        .backends
        .iter()
        .map(|b| b.weight)
        .collect();
    assert_eq!(weights, [3, 1, 1]);
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_node_goes_down_and_is_not_tried() {
    let net = subnet();
    let mut nodes = start_nodes(net, 3, false).await;
    let (cfg, vip) = rr_config(net, 3);
    let edge = Edge::start(cfg, EdgeOptions::default())
        .await
        .expect("edge starts");
    wait_until("first probes", DEADLINE, || all_probed(&edge)).await;

    nodes[2].stop();
    wait_until("stopped node-2 marked down", DEADLINE, || {
        backend_health(&edge, vip, "node-2") == (true, false)
    })
    .await;
    let seen = spread(vip, 30).await;
    assert_eq!(seen, counts(&[("node-0", 15), ("node-1", 15)]));
    let text = scrape(edge.metrics_addr()).await;
    assert_eq!(
        metric(
            &text,
            "portico_edge_connect_retries_total",
            &["default/web"]
        ),
        0.0,
        "a down node is out of the pool, not tried and skipped"
    );
    assert_eq!(metric(&text, UP, &[r#"node="node-2""#]), 0.0);
    let status = admin_status(edge.admin_addr()).await;
    let err = status.listeners[0].backends[2].last_error.clone();
    assert!(
        err.as_deref().is_some_and(|e| e.contains("refused")),
        "probe error names the refusal: {err:?}"
    );
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_down_fails_open_by_default() {
    let net = subnet();
    let nodes = start_nodes(net, 3, false).await;
    let (cfg, vip) = rr_config(net, 3);
    assert_eq!(cfg.settings.health.all_down, AllDownPolicy::FailOpen);
    let edge = Edge::start(cfg, EdgeOptions::default())
        .await
        .expect("edge starts");
    wait_until("first probes", DEADLINE, || all_probed(&edge)).await;

    for n in &nodes {
        n.state.healthy.store(false, Ordering::Relaxed);
    }
    wait_until("every node down", DEADLINE, || {
        route_of(&edge, vip).all_down
    })
    .await;
    // The health servers say no, but the NodePorts still answer: traffic
    // keeps flowing to every node.
    let seen = spread(vip, 30).await;
    assert_eq!(
        seen,
        counts(&[("node-0", 10), ("node-1", 10), ("node-2", 10)])
    );
    let status = admin_status(edge.admin_addr()).await;
    assert!(status.listeners[0].all_down);
    assert!(status.listeners[0].backends.iter().all(|b| !b.healthy));
    let text = scrape(edge.metrics_addr()).await;
    assert_eq!(metric(&text, UP, &[]), 0.0, "every backend_up gauge is 0");
    assert_eq!(
        metric(&text, REJECTED, &[]),
        0.0,
        "nothing rejected while failing open"
    );
    edge.shutdown().await;
}

const REJECTED: &str = "portico_edge_connections_rejected_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_down_fails_closed_when_configured_and_recovers() {
    let net = subnet();
    let nodes = start_nodes(net, 3, false).await;
    let (mut cfg, vip) = rr_config(net, 3);
    cfg.settings.health.all_down = AllDownPolicy::FailClosed;
    let edge = Edge::start(cfg, EdgeOptions::default())
        .await
        .expect("edge starts");
    wait_until("first probes", DEADLINE, || all_probed(&edge)).await;

    for n in &nodes {
        n.state.healthy.store(false, Ordering::Relaxed);
    }
    wait_until("every node down", DEADLINE, || {
        route_of(&edge, vip).all_down
    })
    .await;
    let before = node_connections(&nodes);
    for _ in 0..5 {
        expect_no_greeting(vip, None).await;
    }
    assert_eq!(node_connections(&nodes), before, "no node was contacted");
    let text = scrape(edge.metrics_addr()).await;
    assert_eq!(
        metric(
            &text,
            REJECTED,
            &["default/web", r#"reason="no_healthy_backend""#]
        ),
        5.0
    );

    nodes[0].state.healthy.store(true, Ordering::Relaxed);
    wait_until("node-0 back up", DEADLINE, || {
        backend_health(&edge, vip, "node-0") == (true, true)
    })
    .await;
    let seen = spread(vip, 6).await;
    assert_eq!(seen, counts(&[("node-0", 6)]), "only the healthy node");
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_fallback_marks_a_node_with_a_closed_node_port_down() {
    let net = subnet();
    let mut nodes = start_nodes(net, 3, false).await;
    let (mut cfg, vip) = rr_config(net, 3);
    cfg.settings.health.cluster_check = ClusterHealthCheck::TcpNodePort;
    let edge = Edge::start(cfg, EdgeOptions::default())
        .await
        .expect("edge starts");
    wait_until("first probes", DEADLINE, || all_probed(&edge)).await;
    let route = route_of(&edge, vip);
    assert_eq!(
        route.backends[1].health.to_string(),
        format!("tcp:{}:{NODE_PORT}", net.ip(2)),
        "the NodePort itself is probed"
    );
    assert!(route.backends.iter().all(|b| b.status.healthy));
    // The kube-proxy health port is not consulted in this mode.
    assert!(nodes
        .iter()
        .all(|n| n.state.probes.load(Ordering::Relaxed) == 0));

    nodes[1].stop();
    wait_until("node-1 marked down by TCP probes", DEADLINE, || {
        backend_health(&edge, vip, "node-1") == (true, false)
    })
    .await;
    let seen = spread(vip, 20).await;
    assert_eq!(seen, counts(&[("node-0", 10), ("node-2", 10)]));
    let text = scrape(edge.metrics_addr()).await;
    assert_eq!(
        metric(&text, UP, &[r#"node="node-1""#, r#"check="tcp""#]),
        0.0
    );
    assert_eq!(
        metric(&text, "portico_edge_connect_retries_total", &[]),
        0.0,
        "node-1 was out of the pool, never tried"
    );

    // The NodePort answers again (a fresh stand-in on the same addresses):
    // rise = 2 successful connects bring node-1 back.
    let ip = net.ip(2);
    nodes[1] = StandInNode::start(StandInSpec {
        name: "node-1".into(),
        node_ports: vec![SocketAddr::new(ip, NODE_PORT)],
        node_health: Some(SocketAddr::new(ip, KUBE_PROXY_PORT)),
        ..Default::default()
    })
    .await
    .expect("node-1 restarts");
    wait_until("node-1 back up by TCP probes", DEADLINE, || {
        backend_health(&edge, vip, "node-1") == (true, true)
    })
    .await;
    let seen = spread(vip, 3).await;
    assert_eq!(seen, counts(&[("node-0", 1), ("node-1", 1), ("node-2", 1)]));
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_probe_runs_at_once_and_decides() {
    let net = subnet();
    let nodes = start_nodes(net, 3, false).await;
    nodes[2].state.healthy.store(false, Ordering::Relaxed);
    let (mut cfg, vip) = rr_config(net, 3);
    // With a minute between probes, only the first one can act in time.
    cfg.settings.health.interval = Duration::from_secs(60);
    let edge = Edge::start(cfg, EdgeOptions::default())
        .await
        .expect("edge starts");
    wait_until(
        "node-2 marked down by its first probe",
        Duration::from_secs(2),
        || backend_health(&edge, vip, "node-2") == (true, false),
    )
    .await;
    wait_until("the healthy nodes probed", Duration::from_secs(2), || {
        all_probed(&edge)
    })
    .await;
    assert_eq!(backend_health(&edge, vip, "node-0"), (true, true));
    assert_eq!(backend_health(&edge, vip, "node-1"), (true, true));
    assert_eq!(
        nodes[2].state.probes.load(Ordering::Relaxed),
        1,
        "one probe, not `fall` of them"
    );
    let text = scrape(edge.metrics_addr()).await;
    assert_eq!(
        metric(&text, TRANSITIONS, &[r#"node="node-2""#, r#"to="down""#]),
        1.0
    );
    assert_eq!(metric(&text, UP, &[r#"node="node-2""#]), 0.0);
    let seen = spread(vip, 4).await;
    assert_eq!(seen, counts(&[("node-0", 2), ("node-1", 2)]));
    edge.shutdown().await;
}
