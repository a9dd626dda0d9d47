//! Connect retry and passive health: a node whose NodePort refuses
//! connections while its health server still says 200 costs clients nothing
//! (the edge retries the next node), is counted in
//! `portico_edge_connect_retries_total`, and is taken out by the passive
//! failures alone; active probes that keep succeeding bring it back (the
//! design: passive failures count toward `fall`, probes toward `rise`). When
//! no node can be reached the client is closed and
//! `portico_edge_connections_failed_total` counts it.

use std::net::SocketAddr;
use std::time::Duration;

use portico_edge::edge::{Edge, EdgeOptions};
use portico_lab::standin::{StandInNode, StandInSpec};

use crate::support::*;

const RETRIES: &str = "portico_edge_connect_retries_total";
const FAILED: &str = "portico_edge_connections_failed_total";
const TRANSITIONS: &str = "portico_edge_backend_transitions_total";
const DEADLINE: Duration = Duration::from_secs(5);

/// A stand-in node at subnet host `i + 1` whose health server answers 200
/// but which listens on no NodePort.
async fn node_without_node_port(net: Subnet, i: u8) -> StandInNode {
    StandInNode::start(StandInSpec {
        name: format!("node-{i}"),
        node_health: Some(SocketAddr::new(net.ip(i + 1), KUBE_PROXY_PORT)),
        ..Default::default()
    })
    .await
    .expect("stand-in binds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_node_port_is_retried_and_taken_out_by_passive_failures() {
    let net = subnet();
    let _good = start_nodes(net, 2, false).await;
    let _bad = node_without_node_port(net, 2).await;
    let (mut cfg, vip) = rr_config(net, 3);
    // After the first probe (200 for every node) no probe runs for a
    // minute: whatever happens to node-2 next is the passive failures' doing.
    cfg.settings.health.interval = Duration::from_secs(60);
    let edge = Edge::start(cfg, EdgeOptions::default())
        .await
        .expect("edge starts");
    wait_until("first probes", DEADLINE, || all_probed(&edge)).await;
    assert_eq!(backend_health(&edge, vip, "node-2"), (true, true));

    let seen = spread(vip, 50).await;
    assert!(!seen.contains_key("node-2"), "{seen:?}");
    assert_eq!(seen.values().sum::<usize>(), 50);
    let text = scrape(edge.metrics_addr()).await;
    let retries = metric(&text, RETRIES, &["default/web"]);
    assert!(
        retries >= 2.0,
        "at least fall = 2 connects to node-2 failed and were retried: {retries}"
    );
    assert_eq!(metric_opt(&text, FAILED, &["default/web"]), Some(0.0));

    wait_until("node-2 marked down by passive failures", DEADLINE, || {
        backend_health(&edge, vip, "node-2") == (true, false)
    })
    .await;
    let text = scrape(edge.metrics_addr()).await;
    assert_eq!(
        metric(&text, TRANSITIONS, &[r#"node="node-2""#, r#"to="down""#]),
        1.0
    );
    let status = admin_status(edge.admin_addr()).await;
    assert_eq!(
        status.listeners[0].backends[2].last_error.as_deref(),
        Some("connect failed (passive)")
    );

    // Out of the pool now: no further connect to it, no further retry.
    let seen = spread(vip, 20).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    let text = scrape(edge.metrics_addr()).await;
    assert_eq!(
        metric(&text, RETRIES, &["default/web"]),
        retries,
        "node-2 is no longer tried"
    );
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_probes_bring_a_passively_failed_node_back() {
    let net = subnet();
    let _good = start_nodes(net, 2, false).await;
    let _bad = node_without_node_port(net, 2).await;
    let (cfg, vip) = rr_config(net, 3);
    let edge = Edge::start(cfg, EdgeOptions::default())
        .await
        .expect("edge starts");
    wait_until("first probes", DEADLINE, || all_probed(&edge)).await;

    // Probes (every 100 ms) keep saying 200; a success between two passive
    // failures restarts the fall count, so send connections until two
    // failures in a row took node-2 down (bounded: 20 rounds of 15).
    let down = [r#"node="node-2""#, r#"to="down""#];
    let mut sent = 0;
    for _ in 0..20 {
        sent += spread(vip, 15).await.values().sum::<usize>();
        if metric(&scrape(edge.metrics_addr()).await, TRANSITIONS, &down) >= 1.0 {
            break;
        }
    }
    let text = scrape(edge.metrics_addr()).await;
    assert!(
        metric(&text, TRANSITIONS, &down) >= 1.0,
        "passive failures took node-2 down although its probes succeed"
    );
    assert_eq!(metric(&text, FAILED, &["default/web"]), 0.0);
    assert!(metric(&text, RETRIES, &["default/web"]) >= 2.0);
    assert_eq!(
        metric(&text, "portico_edge_connections_accepted_total", &[]),
        sent as f64,
        "every connection was proxied"
    );

    // Rise = 2 successful probes bring it back.
    wait_until("node-2 back up by active probes", DEADLINE, || {
        backend_health(&edge, vip, "node-2") == (true, true)
    })
    .await;
    let text = scrape(edge.metrics_addr()).await;
    assert!(metric(&text, TRANSITIONS, &[r#"node="node-2""#, r#"to="up""#]) >= 1.0);
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retries_a_dead_node_fails_the_client() {
    let net = subnet();
    let mut dead = Vec::new();
    for i in 0..3 {
        dead.push(node_without_node_port(net, i).await);
    }
    let (mut cfg, vip) = rr_config(net, 3);
    cfg.settings.proxy.connect_retries = 0;
    cfg.settings.health.fall = 100;
    let edge = Edge::start(cfg, EdgeOptions::default())
        .await
        .expect("edge starts");
    wait_until("first probes", DEADLINE, || all_probed(&edge)).await;

    for _ in 0..5 {
        expect_no_greeting(vip, None).await;
    }
    let text = scrape(edge.metrics_addr()).await;
    assert_eq!(metric(&text, FAILED, &["default/web"]), 5.0);
    assert_eq!(metric_opt(&text, RETRIES, &["default/web"]), Some(0.0));
    assert_eq!(
        metric(
            &text,
            "portico_edge_connect_duration_seconds_count",
            &[r#"result="error""#]
        ),
        5.0,
        "one connect attempt per client"
    );
    assert_eq!(
        metric(&text, "portico_edge_connections_rejected_total", &[]),
        0.0,
        "failed, not rejected: every node was tried (fail-open)"
    );
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_bounded_by_connect_retries() {
    let net = subnet();
    let mut dead = Vec::new();
    for i in 0..3 {
        dead.push(node_without_node_port(net, i).await);
    }
    let (mut cfg, vip) = rr_config(net, 3);
    cfg.settings.proxy.connect_retries = 1;
    // Nodes stay up whatever fails: a node taken down passively mid-test
    // would shorten some connection's candidate list.
    cfg.settings.health.fall = 100;
    let edge = Edge::start(cfg, EdgeOptions::default())
        .await
        .expect("edge starts");
    wait_until("first probes", DEADLINE, || all_probed(&edge)).await;

    for _ in 0..4 {
        expect_no_greeting(vip, None).await;
    }
    let text = scrape(edge.metrics_addr()).await;
    assert_eq!(metric(&text, FAILED, &["default/web"]), 4.0);
    assert_eq!(
        metric(&text, RETRIES, &["default/web"]),
        4.0,
        "one retry per connection, then give up"
    );
    assert_eq!(
        metric(
            &text,
            "portico_edge_connect_duration_seconds_count",
            &[r#"result="error""#]
        ),
        8.0
    );
    edge.shutdown().await;
}

/// A NodePort that never answers: a listener whose accept queue is full, so
/// the kernel drops every further SYN, as it would for a node that silently
/// dropped off the network (all on loopback).
struct SilentPort {
    _listener: socket2::Socket,
    _queued: Vec<std::net::TcpStream>,
}

impl SilentPort {
    fn bind(addr: SocketAddr) -> SilentPort {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        listener.set_reuse_address(true).expect("SO_REUSEADDR");
        listener.bind(&addr.into()).expect("bind the silent port");
        // A backlog of 0 holds one connection; nothing ever accepts it.
        listener.listen(0).expect("listen");
        let mut queued = Vec::new();
        for _ in 0..2 {
            if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                queued.push(s);
            }
        }
        assert!(!queued.is_empty(), "the accept queue took a connection");
        let probe = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300));
        assert!(probe.is_err(), "a further connect must go unanswered");
        SilentPort {
            _listener: listener,
            _queued: queued,
        }
    }
}

/// A node whose NodePort silently drops SYNs while its health server says
/// 200: with a connection attempt delay, a client sent to it waits that
/// delay (the next node is raced and wins), not the connect timeout; with
/// none, it waits the whole timeout. Either way no client fails, and the
/// timed-out attempts count as passive failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_costs_the_attempt_delay_not_the_connect_timeout() {
    for delay in [Duration::from_millis(100), Duration::ZERO] {
        let net = subnet();
        let _good = start_nodes(net, 2, false).await;
        let _silent_health = node_without_node_port(net, 2).await;
        let _silent = SilentPort::bind(SocketAddr::new(net.ip(3), NODE_PORT));
        let (mut cfg, vip) = rr_config(net, 3);
        // After the first probe, only passive failures can judge node-2.
        cfg.settings.health.interval = Duration::from_secs(60);
        cfg.settings.health.fall = 100;
        let timeout = Duration::from_millis(1500);
        cfg.settings.proxy.connect_timeout = timeout;
        cfg.settings.proxy.connect_attempt_delay = delay;
        let edge = Edge::start(cfg, EdgeOptions::default())
            .await
            .expect("edge starts");
        wait_until("first probes", DEADLINE, || all_probed(&edge)).await;

        // Round-robin over three nodes: 6 connections send 2 to node-2.
        let mut slow = Vec::new();
        for i in 0..6 {
            let started = std::time::Instant::now();
            let (line, _) = hello(vip, None)
                .await
                .unwrap_or_else(|e| panic!("connection {i} (delay {delay:?}): {e}"));
            assert_ne!(node_of(&line), "node-2");
            let took = started.elapsed();
            if took >= Duration::from_millis(100) {
                slow.push(took);
            }
        }
        assert_eq!(
            slow.len(),
            2,
            "delay {delay:?}: the two sent to node-2 waited: {slow:?}"
        );
        for took in &slow {
            if delay.is_zero() {
                assert!(
                    *took >= timeout,
                    "without a delay the timeout is waited out: {took:?}"
                );
            } else {
                assert!(
                    *took < timeout,
                    "raced after {delay:?}, not after the timeout: {took:?}"
                );
            }
        }
        let text = scrape(edge.metrics_addr()).await;
        assert_eq!(
            metric(&text, RETRIES, &["default/web"]),
            2.0,
            "delay {delay:?}"
        );
        assert_eq!(metric_opt(&text, FAILED, &["default/web"]), Some(0.0));
        // The raced attempts time out in the background and still count.
        let metrics = edge.metrics_addr();
        wait_until_async(
            "both attempts to node-2 reported",
            DEADLINE,
            || async move {
                let text = scrape(metrics).await;
                metric(
                    &text,
                    "portico_edge_connect_duration_seconds_count",
                    &[r#"result="error""#],
                ) == 2.0
            },
        )
        .await;
        edge.shutdown().await;
    }
}
