//! The edge manages VIP addresses through its `AddressOps`: it adds and
//! announces each VIP in use, removes the ones it added when they are no
//! longer used or it stops, and never removes an address it did not add.
//! (The real `ip` + GARP/NA implementation is tested in network namespaces in
//! `vip.rs`; here the edge's use of it is checked with the recording fake.)

use std::net::SocketAddr;
use std::sync::Arc;

use portico_edge::edge::{Edge, EdgeOptions};
use portico_edge::vip::{FakeAddressOps, FakeCall};

use crate::support::*;

const IFACE: &str = "vip0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vips_are_added_announced_and_only_ours_removed() {
    let net = subnet();
    let _nodes = start_nodes(net, 1, false).await;
    let (a, b) = (
        SocketAddr::new(net.ip(100), 80),
        SocketAddr::new(net.ip(101), 80),
    );
    let fake = Arc::new(FakeAddressOps::new());
    // Someone else already put B's address on the interface.
    fake.set_present(IFACE, b.ip());
    let mut cfg = config(
        net,
        1,
        vec![
            service("a", a.ip(), a.port()),
            service("b", b.ip(), b.port()),
        ],
    );
    cfg.settings.vip.interface = Some(IFACE.into());
    let edge = Edge::start(
        cfg.clone(),
        EdgeOptions {
            address_ops: Some(fake.clone()),
            ..Default::default()
        },
    )
    .await
    .expect("edge starts");
    assert!(fake.is_present(IFACE, a.ip()) && fake.is_present(IFACE, b.ip()));
    let calls = fake.take_calls();
    assert!(
        calls.contains(&FakeCall::Add(IFACE.into(), a.ip())),
        "{calls:?}"
    );
    assert!(
        calls.contains(&FakeCall::Announce(IFACE.into(), a.ip())),
        "{calls:?}"
    );
    // Both VIPs answer.
    for vip in [a, b] {
        let (line, _) = hello(vip, None).await.expect("proxied");
        assert_eq!(node_of(&line), "node-0");
    }

    // A's Service goes away: its address goes with it.
    cfg.services.remove(0);
    edge.apply(cfg.clone()).await.expect("applied");
    assert!(!fake.is_present(IFACE, a.ip()), "our unused VIP is removed");
    assert!(fake
        .take_calls()
        .contains(&FakeCall::Remove(IFACE.into(), a.ip())));

    // B's Service goes too: the address was not ours, so it stays.
    cfg.services.clear();
    edge.apply(cfg.clone()).await.expect("applied");
    assert!(
        fake.is_present(IFACE, b.ip()),
        "a pre-existing address is never removed"
    );

    // A comes back, then the edge stops: it removes what it added.
    cfg.services.push(service("a", a.ip(), a.port()));
    edge.apply(cfg).await.expect("applied");
    assert!(fake.is_present(IFACE, a.ip()));
    edge.shutdown().await;
    assert!(
        !fake.is_present(IFACE, a.ip()),
        "stopping removes the VIPs the edge added"
    );
    assert!(fake.is_present(IFACE, b.ip()));
}
