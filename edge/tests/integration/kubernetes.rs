//! The real `portico-edge` binary watching a cluster: the test API server
//! (`portico-kube-fake`, the real HTTP list/watch protocol) holds the
//! Services and Nodes, stand-in nodes on loopback serve the NodePorts.
//! The edge must assign addresses, open listeners, write statuses and
//! Events, follow changes within a second, and keep serving while the API
//! server is away.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::events::v1 as events;
use portico_kube_fake::{FakeApiServer, Options};
use serde_json::json;

use crate::support::process::*;
use crate::support::*;

/// How quickly a change in the cluster must reach the data path.
const FOLLOW: Duration = Duration::from_secs(1);

fn node_object(name: &str, ip: IpAddr) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": [
            {"type": "Hostname", "address": name},
            {"type": "InternalIP", "address": ip.to_string()},
        ]},
    })
}

fn lb_service(name: &str, port: u16, annotations: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": "shop", "name": name, "annotations": annotations},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": "portico.io/edge",
            "ipFamilies": ["IPv4"],
            "ports": [{"name": "tcp", "protocol": "TCP", "port": port, "nodePort": NODE_PORT}],
        },
    })
}

fn config(net: Subnet, kubeconfig: &Path, pool: &str) -> String {
    format!(
        "settings:
  health:
    interval: 200ms
    timeout: 100ms
    rise: 1
    fall: 2
    kubeProxyPort: {KUBE_PROXY_PORT}
  proxy:
    connectTimeout: 500ms
    drainTimeout: 1s
  adminListen: {admin}
  metricsListen: {metrics}
  kubernetes:
    kubeconfig: {kubeconfig}
  addressPools:
    - name: lab
      addresses: [{pool}]
",
        admin = admin_addr(net),
        metrics = metrics_addr(net),
        kubeconfig = kubeconfig.display(),
    )
}

/// The ingress addresses (with their ipMode) the API server shows.
fn ingress(fake: &FakeApiServer, name: &str) -> Vec<(String, String)> {
    fake.get::<core::Service>(Some("shop"), name)
        .and_then(|s| s.status?.load_balancer?.ingress)
        .unwrap_or_default()
        .into_iter()
        .map(|i| (i.ip.unwrap_or_default(), i.ip_mode.unwrap_or_default()))
        .collect()
}

/// The reasons of the Events recorded on a Service.
fn event_reasons(fake: &FakeApiServer, name: &str) -> Vec<String> {
    fake.list::<events::Event>()
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.reason)
        .collect()
}

/// Waits (20 s at most) for a condition on the API server's objects.
async fn wait_api(what: &str, f: impl Fn() -> bool) {
    wait_until(what, Duration::from_secs(20), f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_serves_follows_and_survives_the_api_server() {
    let net = subnet();
    let nodes = start_nodes(net, 2, false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let fake = FakeApiServer::start().await;
    fake.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    for i in 0..2u8 {
        fake.create(node_object(&format!("node-{i}"), net.ip(i + 1)))
            .expect("node created");
    }
    fake.create(lb_service("web", 8080, json!({})))
        .expect("service created");
    // Someone else's LoadBalancer: never touched.
    let mut foreign = lb_service("foreign", 9090, json!({}));
    foreign["spec"]["loadBalancerClass"] = json!("example.com/other");
    fake.create(foreign).expect("service created");

    let cfg = dir.path().join("edge.yaml");
    let pool = format!("{}-{}", net.ip(100), net.ip(101));
    write_atomically(&cfg, &config(net, &kubeconfig, &pool));
    let edge = Proc::spawn(
        dir.path(),
        "edge",
        &[
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--upgrade-socket",
            dir.path().join("up.sock").to_str().unwrap(),
        ],
    );

    // Address assigned, written back with ipMode Proxy, served.
    let web = SocketAddr::new(net.ip(100), 8080);
    wait_api("web's status", || {
        ingress(&fake, "web") == [(net.ip(100).to_string(), "Proxy".to_string())]
    })
    .await;
    let greeting = wait_serving(web, Duration::from_secs(20)).await;
    assert!(node_of(&greeting).starts_with("node-"), "{greeting}");
    wait_api("the AddressAssigned event", || {
        event_reasons(&fake, "web").contains(&"AddressAssigned".to_string())
    })
    .await;
    assert!(
        ingress(&fake, "foreign").is_empty(),
        "not ours, not touched"
    );

    // A change of port is followed within a second.
    let started = Instant::now();
    let mut changed = lb_service("web", 8081, json!({}));
    changed["status"] =
        json!({"loadBalancer": {"ingress": [{"ip": net.ip(100).to_string(), "ipMode": "Proxy"}]}});
    fake.apply(changed).expect("service changed");
    let web2 = SocketAddr::new(net.ip(100), 8081);
    wait_serving(web2, Duration::from_secs(5)).await;
    let followed = started.elapsed();
    assert!(
        followed <= FOLLOW,
        "port change followed after {followed:?}"
    );
    wait_refused(web, Duration::from_secs(5)).await;

    // The pool has two addresses: a second Service gets the other, a third
    // is told the pool is exhausted.
    fake.create(lb_service("api", 7070, json!({})))
        .expect("service created");
    fake.create(lb_service("extra", 7071, json!({})))
        .expect("service created");
    wait_api("api's status", || {
        ingress(&fake, "api") == [(net.ip(101).to_string(), "Proxy".to_string())]
    })
    .await;
    wait_api("the exhaustion event", || {
        event_reasons(&fake, "extra").contains(&"AddressPoolExhausted".to_string())
    })
    .await;
    assert!(ingress(&fake, "extra").is_empty());

    // A node labelled out of load balancers stops receiving traffic.
    let mut excluded = node_object("node-1", net.ip(2));
    excluded["metadata"]["labels"] =
        json!({"node.kubernetes.io/exclude-from-external-load-balancers": ""});
    fake.apply(excluded).expect("node changed");
    wait_for("node-1 to be drained", Duration::from_secs(5), || async {
        let spread = spread(web2, 20).await;
        (spread.len() == 1 && spread.contains_key("node-0")).then_some(())
    })
    .await;

    // The API server stops answering and drops every connection: traffic
    // goes on, and the staleness shows in the metrics.
    fake.set_unresponsive(true);
    fake.cut_connections();
    let metrics = metrics_addr(net);
    wait_for(
        "the stale metric to rise",
        Duration::from_secs(20),
        || async {
            let text = try_http_get(metrics, "/metrics").await.ok()?.1;
            (metric_opt(&text, "portico_edge_kubernetes_stale_seconds", &[])? >= 1.0).then_some(())
        },
    )
    .await;
    for _ in 0..10 {
        let (line, _) = hello(web2, None)
            .await
            .expect("served while the API is away");
        assert_eq!(node_of(&line), "node-0");
    }

    // The API server comes back as a restarted one whose history begins
    // now: the edge's watches must relist, and follow changes again.
    let addr = fake.addr();
    fake.set_unresponsive(false);
    let store = fake.shutdown().await;
    let fake = FakeApiServer::start_with(Options {
        addr,
        store: Some(store),
        ..Options::default()
    })
    .await
    .expect("API server restarted on the same address");
    assert!(
        fake.wait_for_requests(
            |reqs| reqs
                .iter()
                .any(|r| r.path == "/api/v1/services" && r.param("watch").is_none()),
            Duration::from_secs(30),
        )
        .await,
        "the edge relisted Services: {:#?}",
        fake.requests()
    );
    wait_for(
        "the stale metric to clear",
        Duration::from_secs(20),
        || async {
            let text = try_http_get(metrics, "/metrics").await.ok()?.1;
            (metric_opt(&text, "portico_edge_kubernetes_stale_seconds", &[])? == 0.0).then_some(())
        },
    )
    .await;
    let started = Instant::now();
    fake.delete::<core::Service>(Some("shop"), "web")
        .expect("web existed");
    wait_refused(web2, Duration::from_secs(5)).await;
    let followed = started.elapsed();
    assert!(followed <= FOLLOW, "deletion followed after {followed:?}");
    // Its address is free again: the waiting Service gets it.
    wait_api("extra's status", || {
        ingress(&fake, "extra") == [(net.ip(100).to_string(), "Proxy".to_string())]
    })
    .await;
    wait_serving(SocketAddr::new(net.ip(100), 7071), Duration::from_secs(5)).await;

    // A Service that stops being a LoadBalancer loses its listener and the
    // address the edge wrote.
    let mut demoted = lb_service("api", 7070, json!({}));
    demoted["spec"]["type"] = json!("ClusterIP");
    demoted["status"] =
        json!({"loadBalancer": {"ingress": [{"ip": net.ip(101).to_string(), "ipMode": "Proxy"}]}});
    fake.apply(demoted).expect("service changed");
    wait_refused(SocketAddr::new(net.ip(101), 7070), Duration::from_secs(5)).await;
    wait_api("api's status to be cleared", || {
        ingress(&fake, "api").is_empty()
    })
    .await;

    // Every node stops answering its health check: the Service is told.
    drop(nodes);
    wait_api("the NoHealthyNodes event", || {
        event_reasons(&fake, "extra").contains(&"NoHealthyNodes".to_string())
    })
    .await;
    drop(edge);
}
