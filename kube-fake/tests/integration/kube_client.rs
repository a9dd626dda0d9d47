//! The fake API server driven by the real `kube` client and runtime: paging,
//! watchers and reflectors (including relists after compaction, dropped
//! connections and a restart), selectors, status patches, conflicts, events,
//! authentication and hanging requests.

use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, ObjectReference, Service};
use k8s_openapi::api::events::v1::Event as EventV1;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, WatchStreamExt};
use portico_kube_fake::{FakeApiServer, Options, RequestRecord};
use serde_json::json;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(10);

fn service(name: &str, app: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
        "spec": {"type": "LoadBalancer", "selector": {"app": app}, "ports": [{"name": "http", "port": 80}]}
    })
}

/// Polls `stream` (so a watcher keeps working) until `fut` completes.
async fn drive_during<S, T, F>(stream: &mut S, fut: F) -> F::Output
where
    S: Stream<Item = T> + Unpin,
    F: std::future::Future,
{
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return out,
            item = stream.next() => {
                if item.is_none() {
                    return fut.await;
                }
            }
        }
    }
}

/// Polls `stream` until `cond` holds (checked after every item) or the deadline passes.
async fn drive_until<S, T>(stream: &mut S, mut cond: impl FnMut() -> bool) -> bool
where
    S: Stream<Item = T> + Unpin,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if cond() {
            return true;
        }
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(_)) => {}
            _ => return cond(),
        }
    }
}

fn svc_ref(name: &str) -> ObjectRef<Service> {
    ObjectRef::new(name).within("default")
}

fn list_requests(reqs: &[RequestRecord], path: &str) -> usize {
    reqs.iter().filter(|r| r.is_list_of(path)).count()
}

#[tokio::test]
async fn list_pages_with_limit_and_continue() {
    let server = FakeApiServer::start().await;
    for name in ["e", "b", "d", "a", "c"] {
        server.create(service(name, name)).unwrap();
    }
    let api: Api<Service> = Api::all(server.client());
    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    let names = |l: &kube::core::ObjectList<Service>| {
        l.items
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&first), ["a", "b"]);
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let token = first.metadata.continue_.clone().unwrap();
    let pinned = first.metadata.resource_version.clone().unwrap();

    // A write between pages does not show up: the token pins the revision.
    server.create(service("aa", "x")).unwrap();
    let second = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(&second), ["c", "d"]);
    assert_eq!(
        second.metadata.resource_version.as_deref(),
        Some(pinned.as_str())
    );
    let third = api
        .list(
            &ListParams::default()
                .limit(2)
                .continue_token(second.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(names(&third), ["e"]);
    assert!(third.metadata.continue_.is_none());

    // A fresh list sees the new object and the current revision.
    let all = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 6);
    let rev = server.read(|s| s.revision()).to_string();
    assert_eq!(all.metadata.resource_version, Some(rev));
}

#[tokio::test]
async fn reflector_follows_add_modify_delete() {
    let server = FakeApiServer::start().await;
    server.create(service("pre", "pre")).unwrap();
    let api: Api<Service> = Api::all(server.client());
    let (reader, writer) = reflector::store();
    let mut stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .boxed();
    assert!(drive_until(&mut stream, || reader.get(&svc_ref("pre")).is_some()).await);

    server.create(service("web", "web")).unwrap();
    assert!(drive_until(&mut stream, || reader.get(&svc_ref("web")).is_some()).await);

    let mut changed = service("web", "web");
    changed["spec"]["ports"] = json!([{"name": "https", "port": 443}]);
    server.apply(changed).unwrap();
    assert!(
        drive_until(&mut stream, || {
            reader
                .get(&svc_ref("web"))
                .is_some_and(|s| s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port == 443)
        })
        .await
    );

    assert!(server.delete::<Service>(Some("default"), "web").is_some());
    assert!(drive_until(&mut stream, || reader.get(&svc_ref("web")).is_none()).await);
    assert_eq!(reader.state().len(), 1);
}

#[tokio::test]
async fn watcher_relists_after_compaction_and_cut() {
    let server = FakeApiServer::start().await;
    server.create(service("a", "a")).unwrap();
    let api: Api<Service> = Api::all(server.client());
    let (reader, writer) = reflector::store();
    let mut stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .boxed();
    assert!(drive_until(&mut stream, || reader.get(&svc_ref("a")).is_some()).await);
    let lists_before = list_requests(&server.requests(), "/api/v1/services");
    assert_eq!(lists_before, 1);

    // Hold the re-watch, change and compact meanwhile, then let it through:
    // its resourceVersion is now too old, so the watcher must relist.
    server.set_unresponsive(true);
    let seen = server.requests().len();
    server.cut_connections();
    let rewatch =
        server.wait_for_requests(|r| r[seen..].iter().any(RequestRecord::is_watch), DEADLINE);
    assert!(drive_during(&mut stream, rewatch).await);
    server.delete::<Service>(Some("default"), "a").unwrap();
    server.create(service("b", "b")).unwrap();
    server.compact();
    server.set_unresponsive(false);

    assert!(
        drive_until(&mut stream, || {
            reader.get(&svc_ref("b")).is_some() && reader.get(&svc_ref("a")).is_none()
        })
        .await
    );
    assert_eq!(list_requests(&server.requests(), "/api/v1/services"), 2);
}

#[tokio::test]
async fn label_selector_watch_sees_objects_leave_and_enter() {
    let server = FakeApiServer::start().await;
    server.create(service("web", "web")).unwrap();
    server.create(service("db", "db")).unwrap();
    let api: Api<Service> = Api::all(server.client());
    let mut events = watcher(api, watcher::Config::default().labels("app in (web)")).boxed();
    let deadline = Instant::now() + DEADLINE;
    let mut initial = Vec::new();
    let deleted = loop {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("watch events before the deadline")
            .unwrap()
            .unwrap();
        match ev {
            watcher::Event::InitApply(s) => initial.push(s.metadata.name.unwrap()),
            watcher::Event::InitDone => {
                server.apply(service("web", "other")).unwrap();
            }
            watcher::Event::Delete(s) => break s,
            watcher::Event::Init => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(initial, ["web"]);
    assert_eq!(deleted.metadata.name.as_deref(), Some("web"));
    // The DELETED object is the last matching state, at the new revision.
    assert_eq!(deleted.metadata.labels.unwrap()["app"], "web");
    let current: Service = server.get(Some("default"), "web").unwrap();
    assert_eq!(
        deleted.metadata.resource_version,
        current.metadata.resource_version
    );

    // An object that starts matching arrives as an addition.
    server.apply(service("db", "web")).unwrap();
    match tokio::time::timeout_at(deadline, events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        watcher::Event::Apply(s) => assert_eq!(s.metadata.name.as_deref(), Some("db")),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn status_patches_merge_and_apply_emit_modified() {
    let server = FakeApiServer::start().await;
    let created = server.create(service("web", "web")).unwrap();
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let api: Api<Service> = Api::namespaced(server.client(), "default");
    let mut watch = api
        .watch(&WatchParams::default().timeout(10), &rv)
        .await
        .unwrap()
        .boxed();

    let merged = api
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}},
                "spec": {"type": "ClusterIP"}}),
            ),
        )
        .await
        .unwrap();
    let ingress = |s: &Service| {
        s.status
            .as_ref()
            .unwrap()
            .load_balancer
            .as_ref()
            .unwrap()
            .ingress
            .as_ref()
            .unwrap()[0]
            .ip
            .clone()
            .unwrap()
    };
    assert_eq!(ingress(&merged), "203.0.113.10");
    // /status ignores spec changes.
    assert_eq!(
        merged.spec.as_ref().unwrap().type_.as_deref(),
        Some("LoadBalancer")
    );

    let applied = api
        .patch_status(
            "web",
            &PatchParams::apply("portico-edge").force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "default"},
                "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.11"}]}}})),
        )
        .await
        .unwrap();
    assert_eq!(ingress(&applied), "203.0.113.11");
    let managers = applied.metadata.managed_fields.unwrap();
    assert_eq!(managers[0].manager.as_deref(), Some("portico-edge"));
    assert_eq!(managers[0].operation.as_deref(), Some("Apply"));
    assert_eq!(managers[0].subresource.as_deref(), Some("status"));

    // The same apply again is a no-op: no new revision, no event.
    let again = api
        .patch_status(
            "web",
            &PatchParams::apply("portico-edge").force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Service",
                "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.11"}]}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version,
        applied.metadata.resource_version
    );

    let mut ips = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while ips.len() < 2 {
        match tokio::time::timeout_at(deadline, watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Modified(s) => ips.push(ingress(&s)),
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(ips, ["203.0.113.10", "203.0.113.11"]);
    // No third event arrives for the no-op: the next thing is the server revision staying put.
    assert_eq!(
        server.read(|s| s.revision()).to_string(),
        applied.metadata.resource_version.unwrap()
    );
}

#[tokio::test]
async fn stale_writes_get_409() {
    let server = FakeApiServer::start().await;
    server.create(service("web", "web")).unwrap();
    let api: Api<Service> = Api::namespaced(server.client(), "default");
    let mut svc = api.get("web").await.unwrap();
    svc.metadata.resource_version = Some("1".into());
    let err = api
        .replace("web", &PostParams::default(), &svc)
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 409);
            assert_eq!(status.reason, "Conflict");
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    let err = api
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": "1"}, "status": {}})),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 409));
    // Apply without force over someone else's field conflicts too.
    api.patch_status(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}})),
    )
    .await
    .unwrap();
    let err = api
        .patch_status(
            "web",
            &PatchParams::apply("portico-edge"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Service",
                "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.2"}]}}})),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 409));
}

/// The fake is a dual-stack cluster: a Service that prefers dual-stack
/// gets both families and a ClusterIP of each, one that names a family
/// gets that one, and inconsistent family fields are refused with the
/// real server's 422 and cause.
#[tokio::test]
async fn dual_stack_services_get_their_families_as_on_a_dual_stack_cluster() {
    let server = FakeApiServer::start().await;
    let api: Api<Service> = Api::namespaced(server.client(), "default");
    let mut both = service("both", "both");
    both["spec"]["ipFamilyPolicy"] = json!("PreferDualStack");
    let created = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(both).unwrap(),
        )
        .await
        .unwrap();
    let spec = created.spec.unwrap();
    assert_eq!(
        spec.ip_families.unwrap(),
        ["IPv4".to_string(), "IPv6".to_string()]
    );
    let ips = spec.cluster_ips.unwrap();
    assert_eq!(ips.len(), 2);
    assert!(ips[0].parse::<std::net::Ipv4Addr>().is_ok(), "{ips:?}");
    assert!(ips[1].parse::<std::net::Ipv6Addr>().is_ok(), "{ips:?}");
    assert_eq!(spec.cluster_ip.as_deref(), Some(ips[0].as_str()));

    let mut v6 = service("v6", "v6");
    v6["spec"]["ipFamilies"] = json!(["IPv6"]);
    let created = api
        .create(&PostParams::default(), &serde_json::from_value(v6).unwrap())
        .await
        .unwrap();
    let spec = created.spec.unwrap();
    assert_eq!(spec.ip_family_policy.as_deref(), Some("SingleStack"));
    assert!(spec.cluster_ip.unwrap().contains(':'));

    let mut bad = service("bad", "bad");
    bad["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
    bad["spec"]["ipFamilyPolicy"] = json!("SingleStack");
    let err = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(bad).unwrap(),
        )
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422);
            assert!(
                status.message.contains("spec.ipFamilyPolicy: Invalid value: \"SingleStack\": must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified"),
                "{}",
                status.message
            );
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn recorder_events_land_in_the_store() {
    let server = FakeApiServer::start().await;
    let created = server.create(service("web", "web")).unwrap();
    let recorder = Recorder::new(server.client(), Reporter::from("portico-edge".to_string()));
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: Some("web".into()),
        namespace: Some("default".into()),
        uid: created["metadata"]["uid"].as_str().map(str::to_string),
        ..ObjectReference::default()
    };
    let event = Event {
        type_: EventType::Normal,
        reason: "IPAllocated".into(),
        note: Some("Assigned IP 203.0.113.10".into()),
        action: "Allocate".into(),
        secondary: None,
    };
    recorder.publish(&event, &reference).await.unwrap();
    recorder.publish(&event, &reference).await.unwrap();
    let events: Vec<EventV1> = server.list();
    assert_eq!(events.len(), 1, "a repeat is a patch of the same event");
    let ev = &events[0];
    assert_eq!(ev.reason.as_deref(), Some("IPAllocated"));
    assert_eq!(ev.reporting_controller.as_deref(), Some("portico-edge"));
    assert_eq!(ev.regarding.as_ref().unwrap().name.as_deref(), Some("web"));
    assert!(ev.series.is_some(), "the repeat recorded a series");
}

#[tokio::test]
async fn bearer_token_is_required_when_configured() {
    let server = FakeApiServer::start_with(Options {
        token: Some("s3cret".into()),
        ..Options::default()
    })
    .await
    .unwrap();
    server
        .create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}))
        .unwrap();
    let nodes: Api<Node> = Api::all(server.client());
    assert_eq!(
        nodes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    let mut anonymous = server.config();
    anonymous.auth_info = Default::default();
    let nodes: Api<Node> = Api::all(kube::Client::try_from(anonymous).unwrap());
    match nodes.list(&ListParams::default()).await.unwrap_err() {
        kube::Error::Api(s) => {
            assert_eq!(
                (s.code, s.reason.as_str(), s.message.as_str()),
                (401, "Unauthorized", "Unauthorized")
            );
        }
        other => panic!("expected 401, got {other:?}"),
    }

    // The kubeconfig carries the token too.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    server.write_kubeconfig(&path).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    assert_eq!(
        config.cluster_url.to_string().trim_end_matches('/'),
        server.url()
    );
    let nodes: Api<Node> = Api::all(kube::Client::try_from(config).unwrap());
    assert_eq!(
        nodes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

#[tokio::test]
async fn unresponsive_server_times_requests_out_then_recovers() {
    let server = FakeApiServer::start().await;
    let mut config = server.config();
    config.read_timeout = Some(Duration::from_millis(300));
    let api: Api<Service> = Api::all(kube::Client::try_from(config).unwrap());
    server.set_unresponsive(true);
    let started = Instant::now();
    let err = api.list(&ListParams::default()).await.unwrap_err();
    assert!(!matches!(err, kube::Error::Api(_)), "{err:?}");
    assert!(started.elapsed() < DEADLINE);
    server.set_unresponsive(false);
    assert!(api.list(&ListParams::default()).await.is_ok());
}

#[tokio::test]
async fn restart_from_store_makes_old_watchers_relist() {
    let first = FakeApiServer::start().await;
    first.create(service("a", "a")).unwrap();
    let addr = first.addr();
    let api: Api<Service> = Api::all(first.client());
    let (reader, writer) = reflector::store();
    let mut stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .boxed();
    assert!(drive_until(&mut stream, || reader.get(&svc_ref("a")).is_some()).await);

    let mut store = first.shutdown().await;
    let b: serde_json::Value = service("b", "b");
    store
        .create(
            portico_kube_fake::resource::of::<Service>().unwrap(),
            b,
            None,
        )
        .unwrap();
    let second = FakeApiServer::start_with(Options {
        addr,
        store: Some(store),
        ..Options::default()
    })
    .await
    .unwrap();
    assert!(drive_until(&mut stream, || reader.get(&svc_ref("b")).is_some()).await);
    assert!(reader.get(&svc_ref("a")).is_some());
    let reqs = second.requests();
    let first_list = reqs.iter().position(|r| r.is_list_of("/api/v1/services"));
    let first_watch = reqs.iter().position(RequestRecord::is_watch);
    let (Some(first_list), Some(first_watch)) = (first_list, first_watch) else {
        panic!("the watcher re-watched and relisted: {reqs:?}");
    };
    assert!(
        first_watch < first_list,
        "relisted after its old watch failed: {reqs:?}"
    );
}

#[tokio::test]
async fn streaming_list_watcher_gets_initial_events_and_end_bookmark() {
    let server = FakeApiServer::start().await;
    server.create(service("a", "a")).unwrap();
    server.create(service("b", "b")).unwrap();
    let api: Api<Service> = Api::all(server.client());
    let mut events = watcher(api, watcher::Config::default().streaming_lists()).boxed();
    let mut initial = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::InitApply(s) => initial.push(s.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(initial, ["a", "b"]);
    let watch = server
        .requests()
        .into_iter()
        .find(RequestRecord::is_watch)
        .unwrap();
    assert_eq!(watch.param("sendInitialEvents").as_deref(), Some("true"));
    assert!(!server
        .requests()
        .iter()
        .any(|r| r.is_list_of("/api/v1/services")));
    server.create(service("c", "c")).unwrap();
    match tokio::time::timeout_at(deadline, events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        watcher::Event::Apply(s) => assert_eq!(s.metadata.name.as_deref(), Some("c")),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn bookmarks_arrive_at_the_configured_interval() {
    let server = FakeApiServer::start_with(Options {
        bookmark_interval: Duration::from_millis(100),
        ..Options::default()
    })
    .await
    .unwrap();
    server.create(service("a", "a")).unwrap();
    let api: Api<Service> = Api::all(server.client());
    let rev = server.read(|s| s.revision()).to_string();
    let mut watch = api
        .watch(&WatchParams::default().timeout(30), &rev)
        .await
        .unwrap()
        .boxed();
    server.create(service("b", "b")).unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut saw_added = false;
    loop {
        match tokio::time::timeout_at(deadline, watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(s) => {
                assert_eq!(s.metadata.name.as_deref(), Some("b"));
                saw_added = true;
            }
            WatchEvent::Bookmark(bm) => {
                assert!(saw_added, "events before the bookmark that covers them");
                assert_eq!(
                    bm.metadata.resource_version,
                    server.read(|s| s.revision()).to_string()
                );
                assert!(bm.metadata.annotations.is_empty());
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A Service that stops being a LoadBalancer loses what only a
/// LoadBalancer has, its status included, as the real server's
/// `dropTypeDependentFields` does; a status write alone changes nothing of
/// the kind, and an older server drops `ipMode`.
#[tokio::test]
async fn leaving_load_balancer_clears_its_fields_and_status() {
    let server = FakeApiServer::start_with(Options {
        drop_ip_mode: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let api: Api<Service> = Api::namespaced(server.client(), "default");
    let lb: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"type": "LoadBalancer", "loadBalancerClass": "portico.io/edge",
            "externalTrafficPolicy": "Local", "ports": [{"port": 80}]},
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &lb).await.unwrap();
    let spec = created.spec.unwrap();
    assert!(spec.health_check_node_port.is_some());
    assert!(spec.ports.unwrap()[0].node_port.is_some());
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.1", "ipMode": "Proxy"}]}}});
    let written = api
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let ingress = written
        .status
        .unwrap()
        .load_balancer
        .unwrap()
        .ingress
        .unwrap();
    assert_eq!(ingress[0].ip.as_deref(), Some("203.0.113.1"));
    assert_eq!(ingress[0].ip_mode, None, "an older server drops ipMode");

    let demote = json!({"spec": {"type": "ClusterIP"}});
    let demoted = api
        .patch("web", &PatchParams::default(), &Patch::Merge(&demote))
        .await
        .unwrap();
    let spec = demoted.spec.unwrap();
    assert_eq!(spec.load_balancer_class, None);
    assert_eq!(spec.health_check_node_port, None);
    assert_eq!(spec.allocate_load_balancer_node_ports, None);
    assert_eq!(spec.ports.unwrap()[0].node_port, None);
    assert_eq!(demoted.status.unwrap().load_balancer.unwrap().ingress, None);
}
