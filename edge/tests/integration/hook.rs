//! The real `portico-edge` binary driven through the cloud-provider hook
//! API, as a cloud-controller-manager's provider would: Ensure, Update, Get,
//! Delete with real-looking `v1.Service` and `v1.Node` objects, the token,
//! the state surviving a restart, pool exhaustion; and the OpenAPI file
//! held to the routes the server serves.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use portico_edge::hook::ROUTES;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::process::*;
use crate::support::*;

const TOKEN: &str = "7c1f0e9a-hook-token";

/// The hook API's address on a subnet: `127.a.b.250:9722`.
fn hook_addr(net: Subnet) -> SocketAddr {
    SocketAddr::new(net.ip(250), 9722)
}

fn config(net: Subnet, dir: &Path) -> String {
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
  addressPools:
    - name: lab
      addresses: [{first}-{last}]
  hookApi:
    listen: {hook}
    tokenFile: {dir}/token
    stateFile: {dir}/state/hook.json
",
        admin = admin_addr(net),
        metrics = metrics_addr(net),
        first = net.ip(100),
        last = net.ip(101),
        hook = hook_addr(net),
        dir = dir.display(),
    )
}

/// A Service as the service controller hands it to a provider.
fn service(name: &str, uid: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "namespace": "shop",
            "name": name,
            "uid": uid,
            "resourceVersion": "4711",
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "labels": {"app": name},
            "finalizers": ["service.kubernetes.io/load-balancer-cleanup"],
        },
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": "10.96.12.34",
            "clusterIPs": ["10.96.12.34"],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "externalTrafficPolicy": "Cluster",
            "internalTrafficPolicy": "Cluster",
            "allocateLoadBalancerNodePorts": true,
            "sessionAffinity": "None",
            "selector": {"app": name},
            "ports": [{"name": "tcp", "protocol": "TCP", "port": port, "targetPort": 8080, "nodePort": NODE_PORT}],
        },
        "status": {"loadBalancer": {}},
    })
}

/// A Node as the service controller hands it to a provider.
fn node(i: u8, ip: IpAddr) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": format!("node-{i}"),
            "uid": format!("00000000-0000-0000-0000-00000000000{i}"),
            "labels": {"kubernetes.io/hostname": format!("node-{i}"), "kubernetes.io/os": "linux"},
        },
        "spec": {"podCIDR": format!("10.244.{i}.0/24")},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip.to_string()},
                {"type": "Hostname", "address": format!("node-{i}")},
            ],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            "nodeInfo": {
                "kubeletVersion": "v1.33.0", "kubeProxyVersion": "", "osImage": "Debian", "kernelVersion": "6.1",
                "containerRuntimeVersion": "containerd://1.7", "architecture": "amd64", "operatingSystem": "linux",
                "machineID": "m", "systemUUID": "s", "bootID": "b",
            },
        },
    })
}

struct Reply {
    code: u16,
    head: String,
    body: Value,
}

/// One HTTP/1.1 call, bounded in time.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: hook\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).await?;
        Ok::<String, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within 10s"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    Reply {
        code: head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status code"),
        head: head.to_string(),
        body: serde_json::from_str(body).unwrap_or(Value::Null),
    }
}

fn lb_path(name: &str) -> String {
    format!("/v1/clusters/kubernetes/loadbalancers/shop/{name}")
}

fn start_edge(dir: &Path, name: &str) -> Proc {
    Proc::run_edge(dir, name, &dir.join("edge.yaml"), &[], None)
}

/// The nodes `count` connections through `vip` reached; `None` if one
/// failed (the listener may not be open yet).
async fn reached(vip: SocketAddr, count: usize) -> Option<BTreeSet<String>> {
    let mut seen = BTreeSet::new();
    for _ in 0..count {
        let (line, _) = hello(vip, None).await.ok()?;
        seen.insert(node_of(&line).to_string());
    }
    Some(seen)
}

/// Waits until connections through `vip` reach exactly the nodes `want`.
async fn wait_nodes(vip: SocketAddr, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    wait_for(
        &format!("{vip} to reach exactly {want:?}"),
        Duration::from_secs(15),
        || async { (reached(vip, 24).await? == want).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_drives_the_edge_through_the_hook_api() {
    let net = subnet();
    let _nodes = start_nodes(net, 2, false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).expect("token file");
    write_atomically(&dir.path().join("edge.yaml"), &config(net, dir.path()));
    let mut edge = start_edge(dir.path(), "edge");
    let hook = hook_addr(net);
    wait_listening(hook, Duration::from_secs(20)).await;

    let web = service("web", "5d1c7a3e-2b4f-4c6d-9e8f-0a1b2c3d4e5f", 8080);
    let both = json!([node(0, net.ip(1)), node(1, net.ip(2))]);
    let ensure_web = json!({"service": web, "nodes": both});

    // No token, a wrong token, another scheme: 401, nothing done.
    let r = call(hook, "PUT", &lb_path("web"), None, Some(&ensure_web)).await;
    assert_eq!(r.code, 401);
    assert!(
        r.head.to_lowercase().contains("www-authenticate: bearer"),
        "{}",
        r.head
    );
    let r = call(
        hook,
        "PUT",
        &lb_path("web"),
        Some("guess"),
        Some(&ensure_web),
    )
    .await;
    assert_eq!(r.code, 401);
    let r = call(hook, "GET", &lb_path("web"), Some(TOKEN), None).await;
    assert_eq!(r.code, 404, "the refused calls created nothing");

    // Ensure: the pool's first address, served through both nodes.
    let expected = json!({"ingress": [{"ip": net.ip(100).to_string(), "ipMode": "Proxy"}]});
    let r = call(hook, "PUT", &lb_path("web"), Some(TOKEN), Some(&ensure_web)).await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(r.body, expected);
    let vip = SocketAddr::new(net.ip(100), 8080);
    wait_nodes(vip, &["node-0", "node-1"]).await;

    // Ensure again (as the controller does after writing the status): the
    // same answer.
    let mut again = ensure_web.clone();
    again["service"]["status"] = json!({"loadBalancer": expected});
    again["service"]["metadata"]["resourceVersion"] = json!("4712");
    let r = call(hook, "PUT", &lb_path("web"), Some(TOKEN), Some(&again)).await;
    assert_eq!(r.code, 200);
    assert_eq!(r.body, expected);

    // Update with one node fewer: only node-0 gets traffic.
    let update = json!({"service": web, "nodes": [node(0, net.ip(1))]});
    let r = call(
        hook,
        "PUT",
        &format!("{}/nodes", lb_path("web")),
        Some(TOKEN),
        Some(&update),
    )
    .await;
    assert_eq!(r.code, 204, "{}", r.body);
    wait_nodes(vip, &["node-0"]).await;
    // Update of a load balancer that does not exist: 404.
    let r = call(
        hook,
        "PUT",
        &format!("{}/nodes", lb_path("nope")),
        Some(TOKEN),
        Some(&json!({"service": service("nope", "u", 1), "nodes": []})),
    )
    .await;
    assert_eq!(r.code, 404, "{}", r.body);

    // Get: the name (cloud-provider's default) and the status.
    let r = call(hook, "GET", &lb_path("web"), Some(TOKEN), None).await;
    assert_eq!(r.code, 200);
    assert_eq!(
        r.body,
        json!({"name": "a5d1c7a3e2b4f4c6d9e8f0a1b2c3d4e5", "status": expected})
    );

    // The pool has two addresses: the second Service gets the other one,
    // the third is refused with 409 and not created.
    let api = json!({"service": service("api", "api-uid", 7070), "nodes": [node(0, net.ip(1))]});
    let r = call(hook, "PUT", &lb_path("api"), Some(TOKEN), Some(&api)).await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(r.body["ingress"][0]["ip"], net.ip(101).to_string());
    let extra =
        json!({"service": service("extra", "extra-uid", 7071), "nodes": [node(0, net.ip(1))]});
    let r = call(hook, "PUT", &lb_path("extra"), Some(TOKEN), Some(&extra)).await;
    assert_eq!(r.code, 409, "{}", r.body);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("no free IPv4 address left"),
        "{}",
        r.body
    );
    let r = call(hook, "GET", &lb_path("extra"), Some(TOKEN), None).await;
    assert_eq!(r.code, 404);
    let r = call(
        hook,
        "GET",
        "/v1/clusters/kubernetes/loadbalancers",
        Some(TOKEN),
        None,
    )
    .await;
    let listed: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["service"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["api", "web"]);

    let metrics = scrape(metrics_addr(net)).await;
    assert_eq!(
        metric(
            &metrics,
            "portico_edge_hook_requests_total",
            &["route=\"ensure\"", "code=\"200\""]
        ),
        3.0
    );
    assert_eq!(
        metric(
            &metrics,
            "portico_edge_hook_requests_total",
            &["code=\"401\""]
        ),
        2.0
    );

    // The state is on disk, private.
    let state_file = dir.path().join("state/hook.json");
    let mode = std::fs::metadata(&state_file)
        .expect("state file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Restart: the listener comes back on the same address, with the same
    // node list, without any call.
    edge.signal(Signal::SIGTERM);
    assert!(edge.wait_exit(Duration::from_secs(20)).await.success());
    wait_refused(vip, Duration::from_secs(5)).await;
    let mut edge = start_edge(dir.path(), "edge-restarted");
    edge.wait_log("hook API listening", Duration::from_secs(20))
        .await;
    wait_nodes(vip, &["node-0"]).await;
    let r = call(hook, "GET", &lb_path("web"), Some(TOKEN), None).await;
    assert_eq!(r.code, 200);
    assert_eq!(r.body["status"], expected);

    // Delete: the listener closes, Get says 404, Delete again is fine.
    let r = call(hook, "DELETE", &lb_path("web"), Some(TOKEN), None).await;
    assert_eq!(r.code, 204);
    wait_refused(vip, Duration::from_secs(5)).await;
    let r = call(hook, "GET", &lb_path("web"), Some(TOKEN), None).await;
    assert_eq!(r.code, 404);
    let r = call(hook, "DELETE", &lb_path("web"), Some(TOKEN), None).await;
    assert_eq!(r.code, 204);
    // The freed address goes to the Service that was refused.
    let r = call(hook, "PUT", &lb_path("extra"), Some(TOKEN), Some(&extra)).await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(r.body["ingress"][0]["ip"], net.ip(100).to_string());
    wait_serving(SocketAddr::new(net.ip(100), 7071), Duration::from_secs(10)).await;
    assert!(edge.running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_is_moved_aside_and_a_bad_token_file_stops_the_start() {
    let net = subnet();
    let dir = tempfile::tempdir().expect("tempdir");
    write_atomically(&dir.path().join("edge.yaml"), &config(net, dir.path()));

    // An empty token file: exit 64, naming the file.
    std::fs::write(dir.path().join("token"), "\n").expect("token file");
    let mut edge = start_edge(dir.path(), "edge-empty-token");
    let status = edge.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(64));
    let token_path = dir.path().join("token").display().to_string();
    assert!(edge.stderr().contains(&token_path), "{}", edge.stderr());

    // A corrupt state file: moved aside, the edge starts with nothing.
    std::fs::write(dir.path().join("token"), TOKEN).expect("token file");
    std::fs::create_dir_all(dir.path().join("state")).expect("state dir");
    std::fs::write(dir.path().join("state/hook.json"), "{\"version\": 1, \"clu").expect("state");
    let mut edge = start_edge(dir.path(), "edge-corrupt-state");
    edge.wait_log("the hook state file is corrupt", Duration::from_secs(20))
        .await;
    wait_listening(hook_addr(net), Duration::from_secs(20)).await;
    let r = call(
        hook_addr(net),
        "GET",
        "/v1/clusters/kubernetes/loadbalancers",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(r.code, 200);
    assert_eq!(r.body, json!({"cluster": null, "items": []}));
    let aside: Vec<String> = std::fs::read_dir(dir.path().join("state"))
        .expect("state dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        aside.iter().any(|n| n.starts_with("hook.json.corrupt-")),
        "{aside:?}"
    );
    assert!(edge.running());
}

#[test]
fn the_openapi_file_lists_exactly_the_served_routes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/hook-api.openapi.yaml");
    let text = std::fs::read_to_string(&path).expect("docs/hook-api.openapi.yaml");
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).expect("the OpenAPI file parses");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "an OpenAPI 3 document"
    );
    let mut documented = BTreeSet::new();
    for (p, item) in doc["paths"].as_mapping().expect("paths") {
        let p = p.as_str().expect("a path");
        for (method, op) in item.as_mapping().expect("a path item") {
            let method = method.as_str().expect("a key");
            if ![
                "get", "put", "post", "delete", "patch", "head", "options", "trace",
            ]
            .contains(&method)
            {
                continue;
            }
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {p} has an operationId"));
            documented.insert((method.to_uppercase(), p.to_string(), id.to_string()));
        }
    }
    let served: BTreeSet<(String, String, String)> = ROUTES
        .iter()
        .map(|r| {
            (
                r.method.to_string(),
                r.path.to_string(),
                r.operation.operation_id().to_string(),
            )
        })
        .collect();
    assert_eq!(documented, served);
}

/// The resident memory of `pid`, in KiB.
fn rss_kib(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Connects through `vip` again and again until `stop`, each connection
/// bounded in time; returns (served, failed).
fn client_loop(
    vip: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0, 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !stop.load(std::sync::atomic::Ordering::Relaxed)
            && std::time::Instant::now() < deadline
        {
            match hello(vip, None).await {
                Ok(_) => ok += 1,
                Err(_) => failed += 1,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (ok, failed)
    })
}

/// A Service with `ports` ports (1000.., NodePorts 30100..).
fn service_with_ports(name: &str, ports: u16) -> Value {
    let mut s = service(name, &format!("{name}-uid"), 1000);
    s["spec"]["ports"] = (0..ports)
        .map(|i| {
            json!({"name": format!("p{i}"), "protocol": "TCP", "port": 1000 + i,
                   "targetPort": 8080, "nodePort": 30100 + i})
        })
        .collect();
    s
}

/// Under a descriptor limit of 1,024 (322 descriptors left for listeners
/// and probes), a load balancer of 400 ports is refused with 409 naming the
/// field and the budget, nothing of it is persisted or opened, and the
/// Services admitted before (the config file's, an earlier hook load
/// balancer) serve a client loop running throughout without one failure;
/// descriptors and memory come back to their baseline, and a restart
/// brings back exactly what was admitted. A load balancer clashing with
/// the config file's Service is refused with 409 too, not answered 200 and
/// left unserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_budget_cannot_afford_is_refused_and_the_admitted_keep_serving() {
    let net = subnet();
    let _nodes = start_nodes(net, 2, false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).expect("token file");
    let kept = SocketAddr::new(net.ip(50), 8080);
    let mut yaml = config(net, dir.path());
    yaml.push_str(&format!(
        "nodes:
  - {{name: node-0, addresses: [{n0}]}}
  - {{name: node-1, addresses: [{n1}]}}
services:
  - namespace: shop
    name: kept
    vips: [{vip}]
    ports: [{{name: tcp, protocol: TCP, port: {port}, nodePort: {NODE_PORT}}}]
",
        n0 = net.ip(1),
        n1 = net.ip(2),
        vip = kept.ip(),
        port = kept.port(),
    ));
    write_atomically(&dir.path().join("edge.yaml"), &yaml);
    let cfg = dir.path().join("edge.yaml");
    let mut edge = Proc::run_edge(dir.path(), "edge", &cfg, &[], Some(1024));
    let hook = hook_addr(net);
    wait_listening(hook, Duration::from_secs(20)).await;
    wait_serving(kept, Duration::from_secs(20)).await;
    let budget = scrape(metrics_addr(net)).await;
    assert_eq!(
        metric(&budget, "portico_edge_descriptor_budget", &["descriptors"]),
        1024.0
    );

    let nodes = json!([node(0, net.ip(1)), node(1, net.ip(2))]);
    let small = json!({"service": service("small", "small-uid", 7070), "nodes": nodes});
    let r = call(hook, "PUT", &lb_path("small"), Some(TOKEN), Some(&small)).await;
    assert_eq!(r.code, 200, "{}", r.body);
    let small_vip = SocketAddr::new(net.ip(100), 7070);
    wait_serving(small_vip, Duration::from_secs(10)).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loops = [
        client_loop(kept, stop.clone()),
        client_loop(small_vip, stop.clone()),
    ];
    // Let the loops and the edge settle before the baseline.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fds_before, rss_before) = (edge.descriptors(), rss_kib(edge.pid()));

    let big = json!({"service": service_with_ports("big", 400), "nodes": nodes});
    for _ in 0..3 {
        let r = call(hook, "PUT", &lb_path("big"), Some(TOKEN), Some(&big)).await;
        assert_eq!(r.code, 409, "{}", r.body);
        assert_eq!(r.body["field"], "service.spec.ports");
        let error = r.body["error"].as_str().unwrap();
        assert!(error.contains("Service shop/big"), "{error}");
        assert!(error.contains("400 listeners"), "{error}");
        assert!(error.contains("descriptor budget"), "{error}");
    }
    let r = call(hook, "GET", &lb_path("big"), Some(TOKEN), None).await;
    assert_eq!(r.code, 404, "a refused load balancer does not exist");
    let state = std::fs::read_to_string(dir.path().join("state/hook.json")).unwrap();
    assert!(
        state.contains("small") && !state.contains("\"big\""),
        "{state}"
    );

    // The config file's Service by name: 409, not a 200 never served.
    let clash = json!({"service": service("kept", "kept-uid", 7071), "nodes": nodes});
    let r = call(hook, "PUT", &lb_path("kept"), Some(TOKEN), Some(&clash)).await;
    assert_eq!(r.code, 409, "{}", r.body);
    assert_eq!(r.body["field"], "service.metadata.name");
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("the config file defines it too"),
        "{}",
        r.body
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in loops {
        let (ok, failed) = l.await.unwrap();
        assert!(ok > 10, "the client loop ran ({ok} served)");
        assert_eq!(failed, 0, "{failed} of {} connections failed", ok + failed);
    }
    let (fds_after, rss_after) = (edge.descriptors(), rss_kib(edge.pid()));
    assert!(
        fds_after <= fds_before + 2,
        "descriptors {fds_before} -> {fds_after}"
    );
    assert!(
        rss_after <= rss_before + 16 * 1024,
        "RSS {rss_before} KiB -> {rss_after} KiB"
    );
    let text = scrape(metrics_addr(net)).await;
    assert_eq!(metric(&text, "portico_edge_listeners", &[]), 2.0);

    // A restart brings back what was admitted, and only that.
    edge.signal(Signal::SIGTERM);
    edge.wait_exit(Duration::from_secs(10)).await;
    let _edge = Proc::run_edge(dir.path(), "edge-2", &cfg, &[], Some(1024));
    wait_listening(hook, Duration::from_secs(20)).await;
    wait_serving(kept, Duration::from_secs(20)).await;
    wait_serving(small_vip, Duration::from_secs(20)).await;
    let r = call(hook, "GET", &lb_path("big"), Some(TOKEN), None).await;
    assert_eq!(r.code, 404);
}
