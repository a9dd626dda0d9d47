//! The descriptor budget and the connection cap, held by the real binary:
//! a config file that asks for more listeners than its descriptor limit
//! allows is refused by `check-config`, at start and at reload (the running
//! configuration keeps serving); a cluster Service the budget cannot afford
//! is left out with an Event while the others serve; and `maxConnections`
//! makes the connection past the cap wait, counted, until a slot frees.
//! (The hook API's refusal is in `hook`.)

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::events::v1 as events;
use nix::sys::signal::Signal;
use portico_kube_fake::FakeApiServer;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::process::*;
use crate::support::*;

/// `ports` more ports for the last Service of a [`yaml_config`] text.
fn with_ports(mut yaml: String, ports: u16) -> String {
    for i in 1..=ports {
        yaml.push_str(&format!(
            "      - name: p{i}\n        protocol: TCP\n        port: {}\n        nodePort: {NODE_PORT}\n",
            9000 + i
        ));
    }
    yaml
}

fn reloads(text: &str, result: &str) -> f64 {
    metric_opt(
        text,
        "portico_edge_reloads_total",
        &[&format!("result=\"{result}\"")],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_over_the_descriptor_budget_is_refused_and_the_running_one_stays() {
    let net = subnet();
    let _nodes = start_nodes(net, 2, false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("edge.yaml");
    let a = SocketAddr::new(net.ip(100), 8080);
    let b = SocketAddr::new(net.ip(101), 8080);
    let good = yaml_config(net, 2, "1s", &[YamlService::new("a", a)]);
    // 400 more ports on b: more than the 322 descriptors a limit of 1,024
    // leaves for listeners and probes.
    let too_big = with_ports(
        yaml_config(
            net,
            2,
            "1s",
            &[YamlService::new("a", a), YamlService::new("b", b)],
        ),
        400,
    );

    let big_file = dir.path().join("big.yaml");
    std::fs::write(&big_file, &too_big).unwrap();
    let mut check = Proc::spawn_limited(
        dir.path(),
        "check",
        &["check-config", path_str(&big_file)],
        Some(1024),
    );
    let status = check.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(64), "{}", check.stderr());
    let err = check.stderr();
    assert!(err.contains("services[1]"), "{err}");
    assert!(err.contains("Service default/b"), "{err}");
    assert!(err.contains("RLIMIT_NOFILE) of 1024"), "{err}");
    // Under a larger limit the same file is fine.
    let mut check = Proc::spawn_limited(
        dir.path(),
        "check-large",
        &["check-config", path_str(&big_file)],
        Some(4096),
    );
    let status = check.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{}", check.stderr());

    write_atomically(&cfg, &good);
    let mut edge = Proc::run_edge(
        dir.path(),
        "edge",
        &cfg,
        &["--watch-interval-ms", "100"],
        Some(1024),
    );
    wait_serving(a, Duration::from_secs(20)).await;
    let mut held = Held::open(a).await;
    write_atomically(&cfg, &too_big);
    edge.signal(Signal::SIGHUP);
    wait_for(
        "the refused reload to be counted",
        Duration::from_secs(10),
        || async { (reloads(&scrape(metrics_addr(net)).await, "failed") >= 1.0).then_some(()) },
    )
    .await;
    edge.wait_log("descriptor budget", Duration::from_secs(5))
        .await;
    held.echoes("still here")
        .await
        .expect("the held connection");
    wait_serving(a, Duration::from_secs(5)).await;
    assert!(
        try_connect(b).await.is_err(),
        "nothing of the refused file is opened"
    );
    let text = scrape(metrics_addr(net)).await;
    assert_eq!(metric(&text, "portico_edge_listeners", &[]), 1.0);
    assert_eq!(reloads(&text, "ok"), 0.0);
    held.close().await;

    // A start with it is refused too, with exit 64.
    edge.signal(Signal::SIGTERM);
    edge.wait_exit(Duration::from_secs(10)).await;
    let mut refused = Proc::run_edge(dir.path(), "edge-2", &cfg, &[], Some(1024));
    let status = refused.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(64), "{}", refused.stderr());
    assert!(
        refused.stderr().contains("services[1]"),
        "{}",
        refused.stderr()
    );
}

/// Opens a connection through `addr` and says `hi`; the stand-in node
/// greets at once when the edge serves the connection.
async fn open(addr: SocketAddr) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"hi\n").await.expect("write");
    BufReader::new(s)
}

async fn greeted(reader: &mut BufReader<TcpStream>, within: Duration) -> bool {
    let mut line = String::new();
    matches!(
        tokio::time::timeout(within, reader.read_line(&mut line)).await,
        Ok(Ok(n)) if n > 0
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_max_connections_waits_for_a_slot() {
    let net = subnet();
    let _nodes = start_nodes(net, 2, false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("edge.yaml");
    let a = SocketAddr::new(net.ip(100), 8080);
    let yaml = yaml_config(net, 2, "1s", &[YamlService::new("a", a)]).replace(
        "    connectRetries: 2\n",
        "    connectRetries: 2\n    maxConnections: 3\n",
    );
    write_atomically(&cfg, &yaml);
    let _edge = Proc::run_edge(dir.path(), "edge", &cfg, &[], None);
    wait_serving(a, Duration::from_secs(20)).await;
    let text = scrape(metrics_addr(net)).await;
    assert_eq!(
        metric(&text, "portico_edge_descriptor_budget", &["connections"]),
        3.0
    );

    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = open(a).await;
        assert!(greeted(&mut c, Duration::from_secs(5)).await);
        held.push(c);
    }
    // The fourth is accepted by the kernel but not served while three are
    // in flight.
    let mut fourth = open(a).await;
    assert!(!greeted(&mut fourth, Duration::from_millis(500)).await);
    let text = scrape(metrics_addr(net)).await;
    assert_eq!(
        metric(&text, "portico_edge_limit_reached_total", &["connections"]),
        1.0
    );
    // One closes: the fourth is served.
    drop(held.pop());
    assert!(greeted(&mut fourth, Duration::from_secs(5)).await);
}

/// A cluster Service the budget cannot afford after the ones already
/// served is left out with a `NotServed` Event; the served one keeps
/// serving, also when the newcomer's name sorts first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_service_over_the_budget_is_left_out_with_an_event() {
    let net = subnet();
    let _nodes = start_nodes(net, 2, false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let fake = FakeApiServer::start().await;
    fake.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    for i in 0..2u8 {
        fake.create(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": format!("node-{i}")},
            "status": {"addresses": [{"type": "InternalIP", "address": net.ip(i + 1).to_string()}]},
        }))
        .expect("node created");
    }
    let service = |name: &str, ports: Vec<serde_json::Value>| {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "shop", "name": name},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "portico.io/edge",
                     "ipFamilies": ["IPv4"], "ports": ports},
        })
    };
    fake.create(service(
        "web",
        vec![json!({"name": "tcp", "protocol": "TCP", "port": 8080, "nodePort": NODE_PORT})],
    ))
    .expect("service created");
    let cfg = dir.path().join("edge.yaml");
    write_atomically(
        &cfg,
        &format!(
            "settings:
  health: {{interval: 200ms, timeout: 100ms, rise: 1, fall: 2, kubeProxyPort: {KUBE_PROXY_PORT}}}
  adminListen: {admin}
  metricsListen: {metrics}
  kubernetes: {{kubeconfig: {kubeconfig}}}
  addressPools:
    - {{name: lab, addresses: ['{first}-{last}']}}
",
            admin = admin_addr(net),
            metrics = metrics_addr(net),
            kubeconfig = kubeconfig.display(),
            first = net.ip(100),
            last = net.ip(110),
        ),
    );
    let _edge = Proc::run_edge(dir.path(), "edge", &cfg, &[], Some(1024));
    let web = SocketAddr::new(net.ip(100), 8080);
    wait_serving(web, Duration::from_secs(20)).await;
    // Assigned for good once the status shows it (an address the edge
    // serves before it holds the Lease and writes may still move).
    let written = fake
        .wait_for(
            |s| {
                s.get_as::<k8s_openapi::api::core::v1::Service>(Some("shop"), "web")
                    .and_then(|s| s.status?.load_balancer?.ingress)
                    .is_some_and(|i| {
                        i.iter()
                            .any(|i| i.ip.as_deref() == Some(&web.ip().to_string()))
                    })
            },
            Duration::from_secs(20),
        )
        .await;
    assert!(written, "web's status shows {web}");
    let mut held = Held::open(web).await;

    // 160 listeners (2 descriptors each) and the 2 probes fit the 322
    // descriptors alone, but not after web's listener and probes. "big"
    // sorts before "web": the Service already served must win anyway.
    let ports = (0..160u16)
        .map(|i| json!({"name": format!("p{i}"), "protocol": "TCP", "port": 1000 + i, "nodePort": 30100 + i}))
        .collect();
    fake.create(service("big", ports)).expect("service created");
    wait_until("a NotServed Event on the big Service", Duration::from_secs(20), || {
        fake.list::<events::Event>().into_iter().any(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("big")
                && e.reason.as_deref() == Some("NotServed")
                && e.note.as_deref().is_some_and(|n| {
                    n.contains("its 160 listeners and 0 health probes would pass this edge's descriptor budget (318 of 322 left")
                })
        })
    })
    .await;
    held.echoes("still served")
        .await
        .expect("the held connection");
    wait_serving(web, Duration::from_secs(5)).await;
    let text = scrape(metrics_addr(net)).await;
    assert_eq!(metric(&text, "portico_edge_listeners", &[]), 1.0);
    held.close().await;
}

/// `GET path` at `addr` from the source address `from`; the status code.
async fn get_from(addr: SocketAddr, from: std::net::IpAddr, path: &str) -> std::io::Result<u16> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let mut s = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: t\r\n\r\n").as_bytes())
        .await?;
    let mut head = String::new();
    let mut reader = BufReader::new(s);
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut head))
        .await
        .map_err(|_| std::io::Error::other("no answer"))??;
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))
}

/// Hundreds of half-open connections (a request header that never ends)
/// to `/metrics` and `/status` hold at most their servers' few slots: the
/// edge's descriptors stay bounded, another client still scrapes and asks
/// for the status, and the Service serves a client loop without a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_cannot_take_the_admin_servers_or_the_services() {
    let net = subnet();
    let _nodes = start_nodes(net, 2, false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("edge.yaml");
    let a = SocketAddr::new(net.ip(100), 8080);
    write_atomically(
        &cfg,
        &yaml_config(net, 2, "1s", &[YamlService::new("a", a)]),
    );
    let edge = Proc::run_edge(dir.path(), "edge", &cfg, &[], None);
    wait_serving(a, Duration::from_secs(20)).await;
    let before = edge.descriptors();
    let crowd = net.ip(60);
    let mut stalled = Vec::new();
    for addr in [metrics_addr(net), admin_addr(net)] {
        for _ in 0..200 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(crowd, 0)).unwrap();
            if let Ok(Ok(mut s)) =
                tokio::time::timeout(Duration::from_secs(2), socket.connect(addr)).await
            {
                let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHo").await;
                stalled.push(s);
            }
        }
    }
    // Served connections of one client: 8 per server.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = edge.descriptors();
    assert!(
        during <= before + 2 * 8 + 4,
        "descriptors {before} -> {during} under 400 half-open connections"
    );
    let other = net.ip(61);
    assert_eq!(
        get_from(metrics_addr(net), other, "/metrics")
            .await
            .unwrap(),
        200
    );
    assert_eq!(
        get_from(admin_addr(net), other, "/status").await.unwrap(),
        200
    );
    for _ in 0..50 {
        hello(a, None).await.expect("the Service serves throughout");
    }
    drop(stalled);
}
