//! The real crate (client from a kubeconfig, watched stores, the probe)
//! against the test API server (`portico-kube-fake`): stores fill and follow
//! changes; a server that accepts connections but never answers shows as
//! stale within a few seconds, and the view is kept meanwhile; when it
//! answers again, or comes back as a restarted server whose history begins
//! anew, the staleness clears and the stores converge.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt as _;
use portico_kube_fake::{FakeApiServer, Options};
use portico_kube_watch::{client, KubeOptions, WatchMetrics, Watches, PROBE_EVERY, PROBE_TIMEOUT};
use prometheus::{Gauge, IntCounterVec, Opts};
use serde_json::json;
use tokio::sync::Notify;

/// How long any condition below may take to come true.
const DEADLINE: Duration = Duration::from_secs(15);
/// Between two checks of a condition nothing signals (the staleness).
const POLL: Duration = Duration::from_millis(20);

fn node(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.10"}]},
    })
}

/// The program name the watches run under.
const COMPONENT: &str = "portico-test";

fn service(name: &str, port: u16) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": "default",
            // A client's field ownership, as a real server records it,
            // and the watching program's own.
            "managedFields": [{
                "manager": "kubectl",
                "operation": "Apply",
                "apiVersion": "v1",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:ports": {}}},
            }, {
                "manager": COMPONENT,
                "operation": "Update",
                "apiVersion": "v1",
                "subresource": "status",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:status": {"f:loadBalancer": {"f:ingress": {}}}},
            }],
        },
        "spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": port}]},
    })
}

/// Waits until `cond` holds, re-checking whenever a store changed.
async fn wait_change(changes: &Notify, what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        if tokio::time::timeout_at(deadline, changes.notified())
            .await
            .is_err()
        {
            assert!(cond(), "timed out after {DEADLINE:?} waiting for {what}");
            return;
        }
    }
}

/// Waits until `cond` holds, checking every [`POLL`]; returns how long it took.
async fn wait_poll(what: &str, cond: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
    started.elapsed()
}

fn port_of(store: &Store<Service>, name: &str) -> Option<i32> {
    let svc = store.get(&ObjectRef::new(name).within("default"))?;
    Some(svc.spec.as_ref()?.ports.as_ref()?.first()?.port)
}

struct Source {
    watches: Watches,
    changes: Arc<Notify>,
    services: Store<Service>,
    nodes: Store<Node>,
    stale_gauge: Gauge,
    errors: IntCounterVec,
}

/// The crate as a program uses it: a client from the kubeconfig the fake
/// wrote, a probe of Nodes, all Services and all Nodes watched.
async fn start(fake: &FakeApiServer, dir: &tempfile::TempDir, watch_timeout: Duration) -> Source {
    let path = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&path).expect("kubeconfig written");
    let opts = KubeOptions {
        kubeconfig: Some(path),
        watch_timeout,
        ..KubeOptions::new(COMPONENT)
    };
    let client = client(&opts).await.expect("client");
    let stale_gauge = Gauge::new("stale_seconds", "test").expect("gauge");
    let errors = IntCounterVec::new(Opts::new("watch_errors_total", "test"), &["resource"])
        .expect("counter");
    let mut watches = Watches::start(
        &opts,
        Api::<Node>::all(client.clone()),
        ListParams::default(),
        WatchMetrics {
            errors: Some(errors.clone()),
            stale_seconds: Some(stale_gauge.clone()),
        },
    );
    let services = watches.watch_into_store(
        "services",
        Api::all(client.clone()),
        watcher::Config::default(),
    );
    let nodes = watches.watch_into_store("nodes", Api::all(client), watcher::Config::default());
    let changes = watches.changes();
    tokio::time::timeout(DEADLINE, async {
        services.wait_until_ready().await.expect("services listed");
        nodes.wait_until_ready().await.expect("nodes listed");
    })
    .await
    .expect("first lists within the deadline");
    Source {
        watches,
        changes,
        services,
        nodes,
        stale_gauge,
        errors,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_api_server_shows_as_stale_within_seconds_and_recovery_clears_it() {
    let fake = FakeApiServer::start().await;
    fake.apply(node("n1")).expect("node");
    fake.create(service("web", 80)).expect("service");
    let dir = tempfile::tempdir().expect("temp dir");
    // The default watch timeout: the watches alone would notice the
    // silence only after it plus the read timeout (over two minutes).
    let s = start(&fake, &dir, portico_kube_watch::DEFAULT_WATCH_TIMEOUT).await;
    assert_eq!(port_of(&s.services, "web"), Some(80));
    assert_eq!(s.nodes.state().len(), 1);
    let web = s
        .services
        .get(&ObjectRef::new("web").within("default"))
        .expect("web");
    let managers: Vec<_> = web
        .managed_fields()
        .iter()
        .filter_map(|e| e.manager.as_deref())
        .collect();
    assert_eq!(managers, [COMPONENT], "managedFields stripped but our own");
    // Every request names the program.
    let agent = format!("{COMPONENT}/{}", env!("CARGO_PKG_VERSION"));
    let requests = fake.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert_eq!(r.user_agent.as_deref(), Some(agent.as_str()), "{r:?}");
    }

    // A change reaches the store and notifies.
    fake.apply(service("web", 81)).expect("service changed");
    wait_change(&s.changes, "web on port 81", || {
        port_of(&s.services, "web") == Some(81)
    })
    .await;

    // Answering: not stale. Wait for an answered probe after the start
    // (the first one may still be on its way).
    wait_poll("the probe to answer", || {
        fake.requests()
            .iter()
            .filter(|r| r.path == "/api/v1/nodes" && r.param("limit").as_deref() == Some("1"))
            .count()
            >= 2
    })
    .await;
    assert_eq!(s.watches.stale(Instant::now()), Duration::ZERO);

    // The server accepts connections and reads requests but answers none.
    fake.set_unresponsive(true);
    let took = wait_poll("stale() to rise", || {
        s.watches.stale(Instant::now()) > Duration::ZERO
    })
    .await;
    eprintln!("a silent API server showed as stale after {took:?}");
    // One probe period to send the probe that hangs, its timeout, and some
    // slack for a loaded machine.
    let limit = PROBE_EVERY + PROBE_TIMEOUT + Duration::from_secs(2);
    assert!(took <= limit, "stale after {took:?}, limit {limit:?}");
    wait_poll("the stale gauge to rise", || s.stale_gauge.get() > 0.0).await;
    // The view is kept meanwhile.
    assert_eq!(port_of(&s.services, "web"), Some(81));
    assert_eq!(s.nodes.state().len(), 1);

    // It answers again: the staleness clears, changes flow again.
    fake.set_unresponsive(false);
    let took = wait_poll("stale() to clear", || {
        s.watches.stale(Instant::now()).is_zero()
    })
    .await;
    eprintln!("staleness cleared {took:?} after the server answered again");
    wait_poll("the stale gauge to clear", || s.stale_gauge.get() == 0.0).await;
    fake.apply(service("web", 82)).expect("service changed");
    wait_change(&s.changes, "web on port 82", || {
        port_of(&s.services, "web") == Some(82)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_api_server_is_relisted_and_the_view_kept_meanwhile() {
    let fake = FakeApiServer::start().await;
    fake.apply(node("n1")).expect("node");
    fake.create(service("web", 80)).expect("service");
    fake.create(service("api", 90)).expect("service");
    let dir = tempfile::tempdir().expect("temp dir");
    // A short watch timeout: the watches come back quickly after the restart.
    let s = start(&fake, &dir, Duration::from_secs(2)).await;
    assert_eq!(s.services.state().len(), 2);

    // Connections dropped, then a server that does not answer.
    fake.set_unresponsive(true);
    fake.cut_connections();
    wait_poll("stale() to rise", || {
        s.watches.stale(Instant::now()) > Duration::ZERO
    })
    .await;

    // Stopped; changes happen while it is away; it comes back on the same
    // address with a history that begins now, so the watches cannot resume
    // and must relist.
    let addr = fake.addr();
    let store = fake.shutdown().await;
    assert_eq!(port_of(&s.services, "web"), Some(80), "kept while away");
    let fake = FakeApiServer::start_with(Options {
        addr,
        store: Some(store),
        ..Options::default()
    })
    .await
    .expect("restarted on the same address");
    fake.apply(service("web", 81)).expect("service changed");
    fake.delete::<Service>(Some("default"), "api")
        .expect("api existed");

    wait_change(&s.changes, "the relisted view", || {
        port_of(&s.services, "web") == Some(81) && port_of(&s.services, "api").is_none()
    })
    .await;
    wait_poll("stale() to clear", || {
        s.watches.stale(Instant::now()).is_zero()
    })
    .await;
    assert!(
        s.errors.with_label_values(&["services"]).get() >= 1,
        "the outage counted as watch errors"
    );
    assert_eq!(s.nodes.state().len(), 1);
}
