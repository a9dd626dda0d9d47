//! Reloads in-process (`Edge::apply`): adding a Service opens its listener
//! without disturbing established connections; removing one closes its
//! listener while its established connections keep flowing (until the drain
//! timeout when their node:NodePort is gone from every route); removing a node
//! drains its connections after `drainTimeout` and leaves the others alone;
//! a node re-added before its drain ends keeps its connections; a listener
//! that cannot be opened is reported (apply result, `/status`, metrics) and
//! retried, the others working meanwhile; and a drain timeout changed by a
//! reload is the one shutdown honours.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use portico_config::{Algorithm, EdgeConfig};
use portico_edge::edge::{Edge, EdgeOptions};
use portico_lab::standin::{StandInNode, StandInSpec};
use tokio::io::BufReader;
use tokio::net::TcpStream;

use crate::support::*;

const DEADLINE: Duration = Duration::from_secs(5);

/// Waits until a new connection to `addr` is refused (its listener closed).
async fn wait_refused(addr: SocketAddr) {
    wait_until_async(
        &format!("{addr} to refuse connections"),
        DEADLINE,
        || async {
            matches!(
                TcpStream::connect(addr).await,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
            )
        },
    )
    .await;
}

/// Opens a connection through `vip` and checks it carries data both ways.
async fn open(vip: SocketAddr) -> (String, BufReader<TcpStream>) {
    let (line, mut reader) = hello(vip, None).await.expect("proxied");
    consume_hi(&mut reader).await;
    assert_eq!(echo(&mut reader, "first").await.expect("echo"), "first");
    (node_of(&line).to_string(), reader)
}

async fn still_echoes(reader: &mut BufReader<TcpStream>, what: &str) {
    match echo(reader, what).await {
        Ok(back) => assert_eq!(back, what, "the connection still echoes"),
        Err(e) => panic!("the established connection broke ({what}): {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_service_opens_its_listener_and_disturbs_nothing() {
    let net = subnet();
    let _nodes = start_nodes(net, 3, false).await;
    let first = SocketAddr::new(net.ip(100), 8080);
    let second = SocketAddr::new(net.ip(101), 9090);
    let cfg = config(net, 3, vec![service("first", first.ip(), first.port())]);
    let edge = Edge::start(cfg.clone(), EdgeOptions::default())
        .await
        .expect("edge starts");
    let (_, mut established) = open(first).await;
    assert!(
        TcpStream::connect(second).await.is_err(),
        "nothing listens on the second VIP yet"
    );

    let mut cfg2 = cfg.clone();
    cfg2.services
        .push(service("second", second.ip(), second.port()));
    let errors = edge.apply(cfg2).await.expect("applied");
    assert!(errors.is_empty(), "{errors:?}");
    // apply() returns once the listener is bound: no waiting needed.
    let (line, _) = hello(second, None).await.expect("the new Service proxies");
    assert!(node_of(&line).starts_with("node-"));
    still_echoes(&mut established, "after the reload").await;

    let status = admin_status(edge.admin_addr()).await;
    let open: Vec<(&str, bool)> = status
        .listeners
        .iter()
        .map(|l| (l.service.as_str(), l.open))
        .collect();
    assert_eq!(open, [("default/first", true), ("default/second", true)]);
    drop(established);
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_service_closes_its_listener_not_its_connections() {
    let net = subnet();
    let _nodes = start_nodes(net, 3, false).await;
    let gone = SocketAddr::new(net.ip(100), 8080);
    let kept = SocketAddr::new(net.ip(101), 8080);
    // Both Services reach the nodes on NODE_PORT, so every backend
    // (node:NodePort) stays in use after the removal and nothing is drained.
    let both = config(
        net,
        3,
        vec![
            service("gone", gone.ip(), gone.port()),
            service("kept", kept.ip(), kept.port()),
        ],
    );
    let edge = Edge::start(both.clone(), EdgeOptions::default())
        .await
        .expect("edge starts");
    let (_, mut established) = open(gone).await;

    let mut only_kept = both.clone();
    only_kept.services.retain(|s| s.key.name == "kept");
    let errors = edge.apply(only_kept).await.expect("applied");
    assert!(errors.is_empty(), "{errors:?}");
    wait_refused(gone).await;
    still_echoes(&mut established, "listener gone, connection alive").await;
    let (line, _) = hello(kept, None).await.expect("the kept Service proxies");
    assert!(node_of(&line).starts_with("node-"));

    let text = scrape(edge.metrics_addr()).await;
    assert_eq!(metric(&text, "portico_edge_listeners", &[]), 1.0);
    assert_eq!(
        metric(&text, "portico_edge_connections_active", &["default/gone"]),
        1.0,
        "the removed Service's connection is still proxied"
    );
    let status = admin_status(edge.admin_addr()).await;
    assert_eq!(status.listeners.len(), 1);
    assert_eq!(status.listeners[0].service, "default/kept");
    still_echoes(&mut established, "still alive").await;
    drop(established);
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_service_with_its_own_node_port_drains_its_connections() {
    let net = subnet();
    // Kubernetes gives every Service port its own NodePort: serve two.
    let own_port = NODE_PORT + 1;
    let mut nodes = Vec::new();
    for i in 0..2u8 {
        nodes.push(
            StandInNode::start(StandInSpec {
                name: format!("node-{i}"),
                node_ports: vec![
                    SocketAddr::new(net.ip(i + 1), NODE_PORT),
                    SocketAddr::new(net.ip(i + 1), own_port),
                ],
                node_health: Some(SocketAddr::new(net.ip(i + 1), KUBE_PROXY_PORT)),
                ..Default::default()
            })
            .await
            .expect("stand-in binds"),
        );
    }
    let gone = SocketAddr::new(net.ip(100), 8080);
    let kept = SocketAddr::new(net.ip(101), 8080);
    let mut gone_svc = service("gone", gone.ip(), gone.port());
    gone_svc.ports[0].node_port = Some(own_port);
    let mut both = config(
        net,
        2,
        vec![gone_svc, service("kept", kept.ip(), kept.port())],
    );
    both.settings.proxy.drain_timeout = Duration::from_millis(300);
    let edge = Edge::start(both.clone(), EdgeOptions::default())
        .await
        .expect("edge starts");
    let (_, mut established) = open(gone).await;
    let (_, mut other) = open(kept).await;

    let mut only_kept = both.clone();
    only_kept.services.retain(|s| s.key.name == "kept");
    let applied = Instant::now();
    edge.apply(only_kept).await.expect("applied");
    still_echoes(&mut established, "within the drain time").await;
    wait_refused(gone).await;
    // Its backends (node:own_port) left every route: drained after 300 ms.
    assert!(
        closed_within(&mut established, DEADLINE).await,
        "the removed Service's connection is closed once the drain time is over"
    );
    assert!(
        applied.elapsed() >= Duration::from_millis(300),
        "not before the drain timeout ({:?})",
        applied.elapsed()
    );
    still_echoes(&mut other, "the other Service is untouched").await;
    drop(other);
    edge.shutdown().await;
}

fn rr(cfg: &mut EdgeConfig) {
    for s in &mut cfg.services {
        s.algorithm = Algorithm::RoundRobin;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_node_drains_its_connections_after_the_drain_timeout() {
    let net = subnet();
    let nodes = start_nodes(net, 3, false).await;
    let vip = SocketAddr::new(net.ip(100), 8080);
    let mut cfg = config(net, 3, vec![service("web", vip.ip(), vip.port())]);
    rr(&mut cfg);
    cfg.settings.proxy.drain_timeout = Duration::from_millis(300);
    let edge = Edge::start(cfg.clone(), EdgeOptions::default())
        .await
        .expect("edge starts");
    // Round-robin: three connections, one per node.
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(open(vip).await);
    }
    let mut names: Vec<&str> = conns.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["node-0", "node-1", "node-2"]);
    let idx = |name: &str| conns.iter().position(|(n, _)| n == name).expect("node");
    let (i0, i2) = (idx("node-0"), idx("node-2"));

    let mut without_2 = cfg.clone();
    without_2.nodes.truncate(2);
    let applied = Instant::now();
    edge.apply(without_2).await.expect("applied");
    still_echoes(&mut conns[i2].1, "node-2 within the drain time").await;
    assert!(
        closed_within(&mut conns[i2].1, DEADLINE).await,
        "the edge closes the removed node's connection after the drain time"
    );
    assert!(
        applied.elapsed() >= Duration::from_millis(300),
        "not before the drain timeout ({:?})",
        applied.elapsed()
    );
    still_echoes(&mut conns[i0].1, "a kept node's connection").await;

    // New connections never go to the removed node.
    let before = nodes[2]
        .state
        .connections
        .load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..6 {
        let (line, _) = hello(vip, None).await.expect("proxied");
        assert_ne!(node_of(&line), "node-2");
    }
    assert_eq!(
        nodes[2]
            .state
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        before
    );
    drop(conns);
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_before_its_drain_ends_keeps_its_connections() {
    let net = subnet();
    let _nodes = start_nodes(net, 3, false).await;
    let vip = SocketAddr::new(net.ip(100), 8080);
    let mut cfg = config(net, 3, vec![service("web", vip.ip(), vip.port())]);
    rr(&mut cfg);
    cfg.settings.proxy.drain_timeout = Duration::from_millis(300);
    let edge = Edge::start(cfg.clone(), EdgeOptions::default())
        .await
        .expect("edge starts");
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(open(vip).await);
    }
    let idx = |name: &str| conns.iter().position(|(n, _)| n == name).expect("node");
    let (i1, i2) = (idx("node-1"), idx("node-2"));

    // node-2 leaves and comes straight back; node-1 leaves for good, in the
    // same reload, so both drain timers start together.
    let mut only_0 = cfg.clone();
    only_0.nodes.truncate(1);
    edge.apply(only_0).await.expect("applied");
    let mut back = cfg.clone();
    back.nodes.remove(1);
    edge.apply(back).await.expect("applied");

    assert!(
        closed_within(&mut conns[i1].1, DEADLINE).await,
        "node-1's drain ran out"
    );
    // node-2's timer started with node-1's and has run out too by now; its
    // connection lives on because node-2 came back.
    still_echoes(&mut conns[i2].1, "node-2 came back in time").await;
    let route = route_of(&edge, vip);
    let names: Vec<&str> = route.backends.iter().map(|b| &*b.node).collect();
    assert_eq!(names, ["node-0", "node-2"]);
    drop(conns);
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_cannot_be_opened_is_reported_and_retried() {
    let net = subnet();
    let _nodes = start_nodes(net, 3, false).await;
    let free = SocketAddr::new(net.ip(100), 8080);
    let taken = SocketAddr::new(net.ip(101), 8080);
    // Someone else holds the second VIP:port (a listening socket: SO_REUSEADDR
    // on the edge's side does not get past that).
    let squatter = std::net::TcpListener::bind(taken).expect("squatter binds");
    let cfg = config(net, 3, vec![service("free", free.ip(), free.port())]);
    let edge = Edge::start(cfg.clone(), EdgeOptions::default())
        .await
        .expect("edge starts");

    let mut cfg2 = cfg.clone();
    cfg2.services
        .push(service("taken", taken.ip(), taken.port()));
    let errors = edge.apply(cfg2).await.expect("applied");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, format!("tcp/{taken}"));
    assert!(
        errors[0].1.contains("in use"),
        "the error says why: {}",
        errors[0].1
    );

    let status = admin_status(edge.admin_addr()).await;
    let row = |s: &portico_edge::status::Status, name: &str| {
        s.listeners
            .iter()
            .find(|l| l.service == name)
            .unwrap_or_else(|| panic!("{name} in /status"))
            .clone()
    };
    let taken_row = row(&status, "default/taken");
    assert!(!taken_row.open);
    assert_eq!(taken_row.error.as_deref(), Some(errors[0].1.as_str()));
    assert!(row(&status, "default/free").open);
    let text = scrape(edge.metrics_addr()).await;
    assert!(
        metric(
            &text,
            "portico_edge_listener_errors_total",
            &[r#"kind="bind""#]
        ) >= 1.0
    );
    assert_eq!(metric(&text, "portico_edge_listeners", &[]), 1.0);

    // The other listener works meanwhile.
    let (line, _) = hello(free, None).await.expect("the free Service proxies");
    assert!(node_of(&line).starts_with("node-"));

    // Once the address is released the edge opens it on its own (it retries
    // failed listeners every second).
    drop(squatter);
    let admin = edge.admin_addr();
    wait_until_async(
        "the edge to open the freed listener",
        Duration::from_secs(12),
        || async move {
            let s = admin_status(admin).await;
            s.listeners
                .iter()
                .any(|l| l.service == "default/taken" && l.open)
        },
    )
    .await;
    let (line, _) = hello(taken, None).await.expect("the freed Service proxies");
    assert!(node_of(&line).starts_with("node-"));
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_honours_a_drain_timeout_changed_by_reload() {
    let net = subnet();
    let _nodes = start_nodes(net, 1, false).await;
    let vip = SocketAddr::new(net.ip(100), 8080);
    let mut cfg = config(net, 1, vec![service("web", vip.ip(), vip.port())]);
    cfg.settings.proxy.drain_timeout = Duration::from_secs(60);
    let edge = Edge::start(cfg.clone(), EdgeOptions::default())
        .await
        .expect("edge starts");
    cfg.settings.proxy.drain_timeout = Duration::from_millis(200);
    edge.apply(cfg).await.expect("applied");
    assert_eq!(
        edge.snapshot().proxy.drain_timeout,
        Duration::from_millis(200),
        "the new drain timeout is in force"
    );
    let (_, mut held) = open(vip).await;

    let started = Instant::now();
    let done = tokio::time::timeout(Duration::from_secs(10), edge.shutdown()).await;
    assert!(
        done.is_ok(),
        "shutdown with an open connection must end after the 200 ms drain timeout in force, \
         not the 60 s one the edge started with"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(
        closed_within(&mut held, DEADLINE).await,
        "the held connection was closed"
    );
}
