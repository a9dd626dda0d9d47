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

/// One node and the Service `web` on `vip`, announced with `settings`.
fn web_announcing(net: Subnet, vip: SocketAddr, settings: AnnounceSettings) -> EdgeConfig {
    announcing(
        config(net, 1, vec![service("web", vip.ip(), vip.port())]),
        settings,
    )
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
        let cfg = web_announcing(
            net,
            vip,
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
    let cfg = web_announcing(
        net,
        vip,
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

// ---------------------------------------------------------------------------
// The real binary, its TUN device and its routes, in a network namespace of
// the test thread's own.
// ---------------------------------------------------------------------------

/// Runs `f` on a thread in a new network namespace (`unshare`; gone with
/// the thread) with `lo` up, inside a current-thread runtime of that
/// thread: stand-in nodes, the edge processes and `ip` all run in it.
/// `None` (said loudly) where it cannot; a failure under `CI=true`.
fn in_own_netns<T: Send>(
    test: &str,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send,
) -> Option<T> {
    if !nix::unistd::geteuid().is_root() {
        portico_lab::command::skip(test, "needs root for a network namespace and a TUN device");
        return None;
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
                ip(&["link", "set", "lo", "up"]);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                Some(runtime.block_on(f()))
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `ip args` in the calling thread's namespace; its stdout.
fn ip(args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether table 4242 holds `vip`'s route through the announce device
/// (`ip` fails while the table has never had a route: none then).
fn routed(vip: IpAddr, device: &str) -> bool {
    let out = std::process::Command::new("ip")
        .args(["route", "show", "table", "4242"])
        .output()
        .expect("ip runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with(&format!("{vip} dev {device} proto 242")))
}

/// Runs `portico-edge drain` or `undrain` against `admin`.
fn cli(what: &str, admin: SocketAddr) -> String {
    let out = std::process::Command::new(crate::support::process::EDGE_BIN)
        .args([what, "--admin", &admin.to_string()])
        .output()
        .expect("portico-edge runs");
    assert!(out.status.success(), "portico-edge {what}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_binary_announces_keeps_routes_through_an_upgrade_and_loses_them_when_killed() {
    use crate::support::process::*;
    use nix::sys::signal::Signal;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    in_own_netns(
        "the_binary_announces_keeps_routes_through_an_upgrade_and_loses_them_when_killed",
        || {
            Box::pin(async {
                let net = subnet();
                let _nodes = start_nodes(net, 2, false).await;
                let dir = tempfile::tempdir().expect("tempdir");
                let cfg = dir.path().join("edge.yaml");
                let vip = SocketAddr::new(net.ip(100), 8080);
                let admin = admin_addr(net);
                let device = "pt-vips";
                let text = yaml_config(net, 2, "2s", &[YamlService::new("web", vip)]).replace(
                "  adminListen:",
                &format!("  announce:\n    device: {device}\n    withdrawGrace: 300ms\n  adminListen:"),
            );
                write_atomically(&cfg, &text);

                // Announced once ready.
                let mut edge1 = Proc::run_edge(dir.path(), "edge1", &cfg, &[], None);
                wait_until("edge 1 announces the VIP", DEADLINE, || {
                    routed(vip.ip(), device)
                })
                .await;
                hello(vip, None).await.expect("edge 1 serves");

                // Drain and undrain by the command line.
                let drained = cli("drain", admin);
                assert!(drained.starts_with("drained, not ready"), "{drained}");
                assert!(!routed(vip.ip(), device), "drained: withdrawn");
                let (code, body) = http_get(admin, "/readyz").await;
                assert_eq!(code, 503, "{body}");
                hello(vip, None).await.expect("a drained edge still serves");
                let undrained = cli("undrain", admin);
                assert!(undrained.starts_with("not drained, ready"), "{undrained}");
                assert!(routed(vip.ip(), device), "undrained: announced again");

                // A binary upgrade: the route is there at every look, and the
                // kernel reports no removal of it.
                let mut monitor = std::process::Command::new("ip")
                    .args(["-o", "monitor", "route"])
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .expect("ip monitor");
                let watching = Arc::new(AtomicBool::new(true));
                let (vip_ip, watched) = (vip.ip(), watching.clone());
                let watcher = std::thread::spawn(move || {
                    let (mut looks, mut missing) = (0, 0);
                    while watched.load(Ordering::Relaxed) {
                        looks += 1;
                        if !routed(vip_ip, device) {
                            missing += 1;
                        }
                    }
                    (looks, missing)
                });
                let mut edge2 = Proc::run_edge(dir.path(), "edge2", &cfg, &["--takeover"], None);
                let up = dir.path().join("up.sock");
                wait_until("edge 2's upgrade socket to listen", DEADLINE, || {
                    up.exists() && unix_socket_listening(&up)
                })
                .await;
                edge1.signal(Signal::SIGQUIT);
                edge2.wait_log("edge running", DEADLINE).await;
                let status1 = edge1.wait_exit(DEADLINE).await;
                assert_eq!(status1.code(), Some(0), "edge 1 exits cleanly");
                // Edge 2's own first health results end the hold.
                tokio::time::sleep(Duration::from_millis(1500)).await;
                watching.store(false, Ordering::Relaxed);
                let (looks, missing) = watcher.join().expect("watcher");
                monitor.kill().expect("stop ip monitor");
                let seen = monitor.wait_with_output().expect("ip monitor output");
                let seen = String::from_utf8_lossy(&seen.stdout);
                eprintln!("upgrade: the route was looked at {looks} times, missing {missing}");
                assert!(looks > 10, "the watcher looked {looks} times");
                assert_eq!(missing, 0, "the route went during the upgrade");
                assert!(
                    !seen
                        .lines()
                        .any(|l| l.starts_with("Deleted") && l.contains(&vip.ip().to_string())),
                    "the kernel saw the route removed:\n{seen}"
                );
                assert!(
                    edge2.stderr().contains("adopted=true"),
                    "{}",
                    edge2.stderr()
                );
                hello(vip, None).await.expect("edge 2 serves");

                // Killed: the device goes with the process, and the route too.
                edge2.signal(Signal::SIGKILL);
                let killed = Instant::now();
                wait_until("the route to go with the killed edge", DEADLINE, || {
                    !routed(vip.ip(), device)
                })
                .await;
                eprintln!("killed: route gone after {:?}", killed.elapsed());
                assert!(
                    !ip(&["link", "show"]).contains(device),
                    "the device is gone"
                );
                // Its other descriptors (the admin listener) close as it ends.
                edge2.wait_exit(DEADLINE).await;

                // A stop: withdrawn first, still accepting for the grace.
                let mut edge3 = Proc::run_edge(dir.path(), "edge3", &cfg, &[], None);
                wait_until("edge 3 announces the VIP", DEADLINE, || {
                    routed(vip.ip(), device)
                })
                .await;
                edge3.signal(Signal::SIGTERM);
                wait_until("edge 3 withdraws", DEADLINE, || !routed(vip.ip(), device)).await;
                hello(vip, None)
                    .await
                    .expect("accepting during the withdraw grace");
                let status3 = edge3.wait_exit(DEADLINE).await;
                assert_eq!(status3.code(), Some(0), "edge 3 exits cleanly");
            })
        },
    );
}

/// The BIRD beside the edge, as the edge reads it: a router and two edges
/// running BIRD on the shipped configs ([`portico_lab::routing::Fabric`]);
/// an edge pointed at edge 1's control socket exports its BGP and BFD
/// sessions, and sees them go down with the router.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_exports_the_sessions_of_its_bird() {
    use portico_edge::announce::bird;
    use portico_lab::routing::{Fabric, EDGES};

    let test = "the_edge_exports_the_sessions_of_its_bird";
    if !nix::unistd::geteuid().is_root() {
        portico_lab::command::skip(test, "needs root for network namespaces");
        return;
    }
    if !portico_lab::command::installed_or_skip(test, &[("bird", "bird2"), ("birdc", "bird2")]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = format!("pebird{}", std::process::id());
    let mut fabric = tokio::task::block_in_place(|| {
        Fabric::up(&prefix, dir.path(), EDGES, Duration::from_secs(30))
    })
    .unwrap_or_else(|e| panic!("the fabric comes up: {e}"));
    let socket = fabric.edges[0].socket.clone();

    // Read from the control socket as BIRD writes it.
    let sessions = tokio::task::block_in_place(|| bird::sessions(&socket, Duration::from_secs(2)))
        .expect("BIRD answers");
    let up: BTreeSet<(String, bool)> = sessions
        .bgp
        .iter()
        .map(|s| (s.name.clone(), s.up))
        .collect();
    assert_eq!(
        up,
        [
            ("upstream4".to_string(), true),
            ("upstream6".to_string(), true)
        ]
        .into(),
        "{sessions:?}"
    );
    assert_eq!(sessions.bfd.len(), 2, "{sessions:?}");
    assert!(sessions.bfd.iter().all(|s| s.up), "{sessions:?}");

    // An edge exports them.
    let net = subnet();
    let _nodes = start_nodes(net, 1, false).await;
    let vip = SocketAddr::new(net.ip(100), 80);
    let cfg = web_announcing(
        net,
        vip,
        AnnounceSettings {
            bird_socket: socket.clone(),
            ..AnnounceSettings::default()
        },
    );
    let (edge, _table) = start(cfg).await;
    let metrics = edge.metrics_addr();
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(metrics).await;
        if metric_opt(
            &text,
            "portico_edge_bgp_session_up",
            &["protocol=\"upstream6\""],
        )
        .is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&text, "portico_edge_bird_up", &[]), 1.0, "{text}");
    assert_eq!(
        metric(
            &text,
            "portico_edge_bgp_session_up",
            &["protocol=\"upstream4\""]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "portico_edge_bfd_session_up",
            &["peer=\"10.42.0.1\""]
        ),
        1.0
    );

    // The router goes: BFD takes the sessions down, and the edge says so.
    fabric.router.kill();
    crate::support::process::wait_for(
        "the edge to see its BGP session down",
        Duration::from_secs(20),
        || async {
            let text = scrape(metrics).await;
            (metric(
                &text,
                "portico_edge_bgp_session_up",
                &["protocol=\"upstream4\""],
            ) == 0.0
                && metric(
                    &text,
                    "portico_edge_bfd_session_up",
                    &["peer=\"10.42.0.1\""],
                ) == 0.0)
                .then_some(())
        },
    )
    .await;

    // Its BIRD goes too: the edge says BIRD does not answer.
    fabric.edges[0].kill();
    crate::support::process::wait_for(
        "the edge to see its BIRD gone",
        Duration::from_secs(20),
        || async {
            (metric(&scrape(metrics).await, "portico_edge_bird_up", &[]) == 0.0).then_some(())
        },
    )
    .await;
    edge.shutdown().await;
    drop(fabric);
}
