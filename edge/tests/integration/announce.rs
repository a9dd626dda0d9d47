//! Announced VIPs (`settings.announce`): which VIPs the edge puts in its
//! route table and when, drain and undrain, and the withdraw at a stop
//! while the listeners still accept. In-process against stand-in nodes,
//! with the in-memory route table; `announce/netns_tests.rs` holds the
//! real table's own tests, and `upgrade` the binary's (a handover keeps
//! the routes, a killed edge loses them).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use portico_config::{AnnounceSettings, EdgeConfig};
use portico_edge::announce::{AnnounceError, FakeRoutes, RouteTable, RouteTables};
use portico_edge::edge::{Edge, EdgeOptions};

use crate::support::*;

const DEADLINE: Duration = Duration::from_secs(10);

/// Opens the one shared fake table.
struct FakeTables(FakeRoutes);

impl RouteTables for FakeTables {
    fn open(
        &self,
        _: &AnnounceSettings,
        _: Option<OwnedFd>,
    ) -> Result<Box<dyn RouteTable>, AnnounceError> {
        Ok(Box::new(self.0.clone()))
    }
}

async fn start(cfg: EdgeConfig) -> (Edge, FakeRoutes) {
    let table = FakeRoutes::new();
    let edge = Edge::start(
        cfg,
        EdgeOptions {
            route_tables: Some(Arc::new(FakeTables(table.clone()))),
            ..Default::default()
        },
    )
    .await
    .expect("edge starts");
    (edge, table)
}

fn announcing(mut cfg: EdgeConfig, settings: AnnounceSettings) -> EdgeConfig {
    cfg.settings.announce = Some(settings);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vips_are_announced_once_probed_and_withdrawn_by_drain() {
    let net = subnet();
    let _nodes = start_nodes(net, 2, false).await;
    let (a, b) = (
        SocketAddr::new(net.ip(100), 80),
        SocketAddr::new(net.ip(101), 80),
    );
    let cfg = announcing(
        config(
            net,
            2,
            vec![
                service("a", a.ip(), a.port()),
                service("b", b.ip(), b.port()),
            ],
        ),
        AnnounceSettings::default(),
    );
    let (edge, table) = start(cfg.clone()).await;
    let both: BTreeSet<IpAddr> = [a.ip(), b.ip()].into();
    wait_until("both VIPs announced", DEADLINE, || table.routes() == both).await;
    // Never before the first health results are in.
    assert!(all_probed(&edge), "announced before every node was probed");
    let admin = edge.admin_addr();
    let (code, body) = http_get(admin, "/readyz").await;
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    let metrics = scrape(edge.metrics_addr()).await;
    for vip in [a.ip(), b.ip()] {
        assert_eq!(
            metric(
                &metrics,
                "portico_edge_vip_announced",
                &[&format!("vip=\"{vip}\"")]
            ),
            1.0
        );
    }
    assert_eq!(metric(&metrics, "portico_edge_ready", &[]), 1.0);

    // Drained: withdrawn, not ready, still serving.
    let (code, body) = http_request(admin, "POST", "/drain").await;
    assert_eq!(code, 200, "{body}");
    let after: serde_json::Value = serde_json::from_str(&body).expect("readiness JSON");
    assert_eq!(after["drained"], true, "{body}");
    assert_eq!(after["announced"], serde_json::json!([]), "{body}");
    assert!(table.routes().is_empty(), "{:?}", table.routes());
    let (code, body) = http_get(admin, "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("drained"), "{body}");
    hello(a, None).await.expect("a drained edge still serves");
    let metrics = scrape(edge.metrics_addr()).await;
    assert_eq!(metric(&metrics, "portico_edge_drained", &[]), 1.0);
    assert_eq!(
        metric(
            &metrics,
            "portico_edge_vip_announced",
            &[&format!("vip=\"{}\"", a.ip())]
        ),
        0.0
    );
    // A reload does not undo a drain.
    edge.apply(cfg.clone()).await.expect("applied");
    assert!(table.routes().is_empty());

    let (code, _) = http_request(admin, "POST", "/undrain").await;
    assert_eq!(code, 200);
    assert_eq!(table.routes(), both);
    assert_eq!(http_get(admin, "/readyz").await.0, 200);

    // A Service removed: its VIP goes; announcing turned off: all go.
    let mut one = cfg.clone();
    one.services.remove(1);
    edge.apply(one.clone()).await.expect("applied");
    assert_eq!(table.routes(), [a.ip()].into());
    one.settings.announce = None;
    edge.apply(one).await.expect("applied");
    assert!(table.routes().is_empty());
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vip_without_a_healthy_node_is_withdrawn_only_when_asked() {
    let net = subnet();
    // No stand-in node runs: every probe fails.
    let vip = SocketAddr::new(net.ip(100), 80);
    for withdraw in [false, true] {
        let cfg = announcing(
            config(net, 1, vec![service("web", vip.ip(), vip.port())]),
            AnnounceSettings {
                withdraw_when_no_healthy_node: withdraw,
                ..AnnounceSettings::default()
            },
        );
        let (edge, table) = start(cfg).await;
        wait_until("the node probed", DEADLINE, || all_probed(&edge)).await;
        // The decision follows the probe at once; give a refresh tick.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let announced = table.routes().contains(&vip.ip());
        assert_eq!(
            announced, !withdraw,
            "withdrawWhenNoHealthyNode: {withdraw}"
        );
        // Readiness is the edge's own: nodes being down does not enter it.
        assert_eq!(http_get(edge.admin_addr(), "/readyz").await.0, 200);
        edge.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_withdraws_first_and_accepts_during_the_grace() {
    let net = subnet();
    let _nodes = start_nodes(net, 1, false).await;
    let vip = SocketAddr::new(net.ip(100), 80);
    let cfg = announcing(
        config(net, 1, vec![service("web", vip.ip(), vip.port())]),
        AnnounceSettings {
            withdraw_grace: Duration::from_millis(800),
            ..AnnounceSettings::default()
        },
    );
    let (edge, table) = start(cfg).await;
    wait_until("the VIP announced", DEADLINE, || !table.routes().is_empty()).await;
    let stopping = tokio::spawn(edge.shutdown());
    wait_until("the VIP withdrawn", DEADLINE, || table.routes().is_empty()).await;
    // Withdrawn, and still accepting while the routers catch up.
    let (line, _) = hello(vip, None).await.expect("accepted during the grace");
    assert_eq!(node_of(&line), "node-0");
    tokio::time::timeout(DEADLINE, stopping)
        .await
        .expect("stops after the grace")
        .expect("shutdown task");
    assert!(hello(vip, None).await.is_err(), "no longer accepting");
}
