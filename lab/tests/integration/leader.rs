//! The leader edge killed, with real edges under traffic (to each
//! Service's VIP of each family: the Services are dual-stack): two
//! `portico-edge` processes watch one cluster (the lab's API server), each
//! with its BIRD on the shipped configs behind a router ([`Fabric`]), and
//! elect the one that writes on a Lease with a short lease. Under 100 new
//! connections a second from behind the router, the leader is killed
//! (SIGKILL) and a Service is created at once: only the survivor can write
//! its status and post its Event, once the Lease has run out, within the
//! lease duration and 2 s. Over the whole run no Event is posted twice and
//! no Service's status ever shows two different address lists (an address
//! of each family); the killed
//! edge, started again, follows and serves the same addresses. The figures
//! and the timeline are printed (`--nocapture`) for `docs/ha.md`.
//!
//! Every path goes client -> router (ECMP) -> an edge -> the node, which is
//! the router's address of the VIP's family (a pod server per NodePort). The API server runs
//! in the router's namespace, where both edges reach it on the router's
//! address. Needs root and BIRD.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::jiff::Timestamp;
use nix::sys::signal::Signal;
use portico_lab::api::{ApiClient, KUBECONFIG};
use portico_lab::load::{Load, LoadSpec};
use portico_lab::objects;
use portico_lab::routing::{self, Fabric, RouterFib, ROUTER_V4, ROUTER_V6};
use portico_lab::topology::{PodSpec, Policy, ServiceSpec, FAMILIES, LB_CLASS};
use serde_json::{json, Value};

use crate::support;
use crate::support::edges::{
    assert_recovered, by_family, carried_by, hops, http_get, node_server, per_family, poll,
    timeline_by_edge, wait_routes, ByFamily, Running, Sampler, Site,
};

/// The lease the edges elect on: short, so the scenario is quick.
const LEASE: Duration = Duration::from_secs(3);
/// The Lease (the edge's default name and namespace).
const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/portico-edge";
/// The edges' address pool, a range of each family; the first Service
/// gets the first address of each.
const POOL: [&str; 2] = ["192.0.2.10-192.0.2.19", "2001:db8:10::10-2001:db8:10::19"];
/// The Service there from the start, and its addresses (IPv4 first, as
/// its `ipFamilies`).
const WEB: &str = "web";
const WEB_VIPS: [&str; 2] = ["192.0.2.10", "2001:db8:10::10"];
/// The Service created once the leader is dead, and its addresses.
const LATER: &str = "later";
const LATER_VIPS: [&str; 2] = ["192.0.2.11", "2001:db8:10::11"];
/// The API server, on the router's address.
const API: SocketAddr = SocketAddr::V4(SocketAddrV4::new(ROUTER_V4, 6443));
/// Each edge's metrics, in its namespace.
const METRICS: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9720));
/// Each edge's admin API (`/status`), in its namespace.
const ADMIN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9721));

/// A router and two edge namespaces, each with BIRD on the shipped
/// configs; the clients behind the router; on the router's address the
/// API server and a node serving both Services' NodePorts; the edges.
/// Held alone (it measures). Torn down in field order: the edges first.
struct Scene {
    edges: Vec<Option<Running>>,
    _nodes: Vec<Running>,
    _api_server: Running,
    api: ApiClient,
    /// The logs of the processes started, printed after a failure.
    logs: Vec<PathBuf>,
    site: Site,
}

impl Scene {
    /// Builds it under a prefix made of `tag` and the process id, with the
    /// API server answering and the Node created; or says (loudly) why
    /// `what` cannot run here.
    fn up(what: &str, tag: &str) -> Option<Scene> {
        let site = Site::up(what, tag, routing::EDGES, RouterFib::Multipath)?;
        let (dir, binaries) = (&site.dir, &site.binaries);
        let router = site.fabric.router_ns();
        let mut logs = Vec::new();
        let nodes = [(WEB, 30080), (LATER, 30081)]
            .iter()
            .map(|(service, port)| {
                let log = dir.join(format!("node-{service}.log"));
                logs.push(log.clone());
                node_server(
                    &router,
                    &binaries.lab,
                    &format!("{service}-pod"),
                    *port,
                    &log,
                )
            })
            .collect();
        let log = dir.join("api-server.log");
        logs.push(log.clone());
        let api_server = Running::start(
            &router,
            &binaries.lab,
            &[
                "api-server",
                "--listen",
                &API.to_string(),
                "--state-dir",
                dir.to_str().expect("path"),
            ],
            &log,
        );
        let api = ApiClient::new(&router, API);
        let kubeconfig = dir.join(KUBECONFIG);
        poll("the API server", Duration::from_secs(15), || {
            if !kubeconfig.is_file() {
                return Err("no kubeconfig yet".to_string());
            }
            api.get("/version").map_err(|e| e.to_string())
        });
        api.create(objects::NODES_PATH, &node())
            .expect("Node created");
        Some(Scene {
            edges: Vec::new(),
            _nodes: nodes,
            _api_server: api_server,
            api,
            logs,
            site,
        })
    }

    /// Starts edge `n` (1-based) in its namespace, its log named `label`.
    fn start_edge(&mut self, n: usize, label: &str) {
        let config = self.site.dir.join(format!("edge{n}.yaml"));
        let yaml = edge_config(&self.site.fabric, &self.site.dir, n);
        portico_config::parse_edge_config(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        std::fs::write(&config, yaml).expect("edge config");
        let log = self.site.dir.join(format!("{label}.log"));
        self.logs.push(log.clone());
        let running = Running::start(
            &self.site.fabric.edge_ns(n),
            &self.site.binaries.edge,
            &["run", "--config", config.to_str().expect("path")],
            &log,
        );
        if self.edges.len() < n {
            self.edges.resize_with(n, || None);
        }
        self.edges[n - 1] = Some(running);
    }

    /// Edge `n`'s `/metrics`.
    fn metrics(&self, n: usize) -> Result<String, String> {
        http_get(&self.site.fabric.edge_ns(n), METRICS, "/metrics")
    }

    /// A metric of edge `n`, read now.
    fn metric(&self, n: usize, name: &str, labels: &[&str]) -> Result<f64, String> {
        let text = self.metrics(n)?;
        support::metric(&text, name, labels).ok_or_else(|| format!("edge {n}: no {name}"))
    }

    /// The addresses edge `n` serves, by Service name (from its `/status`,
    /// as `portico-edge status` shows them).
    fn served(&self, n: usize) -> Result<BTreeMap<String, Vec<String>>, String> {
        let text = http_get(&self.site.fabric.edge_ns(n), ADMIN, "/status")?;
        let status: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        let mut served: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for l in status["listeners"].as_array().into_iter().flatten() {
            let name = l["service"].as_str().and_then(|s| s.rsplit_once('/'));
            // `tcp/VIP:port`
            let addr = l["listener"].as_str().and_then(|s| s.split_once('/'));
            let (Some((_, name)), Some((_, addr))) = (name, addr) else {
                return Err(format!("unreadable listener {l}"));
            };
            let vip = addr
                .parse::<SocketAddr>()
                .map_err(|e| format!("{addr}: {e}"))?
                .ip()
                .to_string();
            let vips = served.entry(name.to_string()).or_default();
            if !vips.contains(&vip) {
                vips.push(vip);
            }
        }
        Ok(served)
    }

    /// Edge `n`'s status writes that succeeded (none counted yet: 0).
    fn writes(&self, n: usize) -> f64 {
        self.metric(
            n,
            "portico_edge_kubernetes_status_writes_total",
            &["result=\"ok\""],
        )
        .unwrap_or(0.0)
    }

    /// Edge `n`'s Events posted, of both types (none counted yet: 0).
    fn told(&self, n: usize) -> f64 {
        ["type=\"Normal\"", "type=\"Warning\""]
            .iter()
            .map(|t| {
                self.metric(n, "portico_edge_kubernetes_events_total", &[t])
                    .unwrap_or(0.0)
            })
            .sum()
    }

    /// Creates Service `name` (NodePort `node_port`), dual-stack (IPv4
    /// first), and its EndpointSlice of each family.
    fn create_service(&self, name: &'static str, node_port: u16, cluster_ip: Ipv4Addr) {
        let spec = ServiceSpec {
            name,
            families: FAMILIES.to_vec(),
            cluster_ip,
            node_port,
            policy: Policy::Cluster,
            health_check_node_port: None,
            source_ranges: Vec::new(),
            client_ip_affinity: None,
            proxy_protocol: None,
            pods: vec![name],
        };
        let pod = PodSpec {
            name: name.to_string(),
            node: 0,
            ip: Ipv4Addr::new(10, 244, 0, 10 + (node_port % 10) as u8),
        };
        let service = objects::service(&spec);
        assert_eq!(service["spec"]["loadBalancerClass"], LB_CLASS);
        self.api
            .create(&objects::services_path(), &service)
            .expect("Service created");
        for slice in objects::slices(&spec, &[pod]) {
            self.api
                .create(&objects::slices_path(), &slice)
                .expect("EndpointSlice created");
        }
    }

    /// Waits until the router's routes to `vips` go through exactly the
    /// edges `want`; how long each family took.
    fn wait_hops(&self, vips: [&str; 2], want: &[usize]) -> ByFamily<Duration> {
        let vips: Vec<IpAddr> = vips.iter().map(|v| v.parse().expect("a VIP")).collect();
        wait_routes(
            &self.site.fabric.router_ns(),
            &vips,
            want,
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.site.fabric.log_tails(20)))
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in &self.logs {
                eprintln!(
                    "--- {} ---\n{}",
                    log.display(),
                    portico_lab::procs::log_tail(log, 40)
                );
            }
        }
    }
}

/// The node: the router's addresses, one of each family, where the
/// NodePorts are served; a pod CIDR of each family.
fn node() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "node-0", "labels": {"kubernetes.io/hostname": "node-0"}},
        "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24", "fd00:244::/64"]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ROUTER_V4.to_string()},
                {"type": "InternalIP", "address": ROUTER_V6.to_string()},
                {"type": "Hostname", "address": "node-0"},
            ],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

/// Edge `n`'s config: the cluster through the lab's kubeconfig, its VIPs
/// on `lo` announced through its BIRD, leader election on a short lease,
/// nodes probed by a connect to the NodePort.
fn edge_config(fabric: &Fabric, dir: &std::path::Path, n: usize) -> String {
    format!(
        "settings:
  health: {{interval: 200ms, timeout: 200ms, rise: 1, fall: 2, clusterCheck: tcp-node-port}}
  proxy: {{connectTimeout: 500ms, drainTimeout: 2s}}
  vip: {{interface: lo}}
  announce: {{birdSocket: {socket}, withdrawGrace: 1s}}
  adminListen: {ADMIN}
  metricsListen: {METRICS}
  kubernetes:
    kubeconfig: {kubeconfig}
    loadBalancerClass: {LB_CLASS}
    leaderElection: {{leaseDuration: {lease}s}}
  addressPools:
    - name: lab
      addresses: [{pool4}, {pool6}]
",
        socket = fabric.edges[n - 1].socket.display(),
        kubeconfig = dir.join(KUBECONFIG).display(),
        lease = LEASE.as_secs(),
        pool4 = POOL[0],
        pool6 = POOL[1],
    )
}

/// A Service's status addresses (empty when it has none, or is not there).
fn ingress(service: &Value) -> Vec<String> {
    service["status"]["loadBalancer"]["ingress"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|i| i["ip"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Every Service's status addresses, by name.
fn statuses(api: &ApiClient) -> Result<BTreeMap<String, Vec<String>>, String> {
    let services = api.services().map_err(|e| e.to_string())?;
    Ok(services
        .iter()
        .filter_map(|s| Some((s["metadata"]["name"].as_str()?.to_string(), ingress(s))))
        .collect())
}

/// The Events recorded (`events.k8s.io/v1`).
fn events(api: &ApiClient) -> Result<Vec<Value>, String> {
    let list = api
        .get("/apis/events.k8s.io/v1/events")
        .map_err(|e| e.to_string())?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// What makes two Events the same telling: the reason, the object (by
/// namespace, name and UID) and the note.
fn event_key(e: &Value) -> String {
    format!(
        "{} {}/{} ({}): {}",
        e["reason"].as_str().unwrap_or_default(),
        e["regarding"]["namespace"].as_str().unwrap_or_default(),
        e["regarding"]["name"].as_str().unwrap_or_default(),
        e["regarding"]["uid"].as_str().unwrap_or_default(),
        e["note"].as_str().unwrap_or_default(),
    )
}

/// The Events on Service `name` with `reason`.
fn events_on<'a>(all: &'a [Value], name: &str, reason: &str) -> Vec<&'a Value> {
    all.iter()
        .filter(|e| e["regarding"]["name"] == name && e["reason"] == reason)
        .collect()
}

/// `at` (an RFC 3339 time the API server holds) less `since`: negative
/// when earlier.
fn seconds_after(at: &Value, since: SystemTime) -> Option<f64> {
    let at: Timestamp = at.as_str()?.parse().ok()?;
    let since = Timestamp::try_from(since).ok()?;
    Some(at.duration_since(since).as_secs_f64())
}

/// Each Service's distinct status address lists, with when each was first
/// seen.
type Seen = BTreeMap<String, Vec<(Duration, Vec<String>)>>;

/// Samples every Service's status addresses every 50 ms until finished:
/// each Service's distinct address lists, in the order first seen.
fn watch_statuses(api: ApiClient) -> Sampler<Seen> {
    Sampler::start(
        Duration::from_millis(50),
        (5_000, Duration::from_secs(120)),
        Seen::new(),
        move |seen, at| {
            if let Ok(now) = statuses(&api) {
                for (name, list) in now {
                    let lists = seen.entry(name).or_default();
                    if !lists.iter().any(|(_, l)| *l == list) {
                        lists.push((at, list));
                    }
                }
            }
        },
    )
}

#[test]
fn the_leader_killed_under_traffic_writes_resume_within_the_lease_and_nothing_is_told_twice() {
    let Some(mut scene) = Scene::up("the leader edge killed", "pld") else {
        return;
    };
    let api = scene.api.clone();
    scene.create_service(WEB, 30080, Ipv4Addr::new(10, 96, 0, 10));
    let statuses_watch = watch_statuses(api.clone());
    scene.start_edge(1, "edge1");
    scene.start_edge(2, "edge2");

    // One edge leads and writes web's status and its Event; both serve it.
    let (_, took) = poll(
        "web's status",
        Duration::from_secs(30),
        || match statuses(&api)?.get(WEB) {
            Some(list) if list == &WEB_VIPS => Ok(()),
            other => Err(format!("web's status: {other:?}")),
        },
    );
    eprintln!("web's status {WEB_VIPS:?} written {took:?} after the edges started");
    scene.wait_hops(WEB_VIPS, &[1, 2]);
    let (leader, _) = poll("exactly one leader", Duration::from_secs(10), || {
        let gauge = |n| scene.metric(n, "portico_edge_kubernetes_leader", &[]);
        match (gauge(1)?, gauge(2)?) {
            (l1, l2) if l1 == 1.0 && l2 == 0.0 => Ok(1),
            (l1, l2) if l1 == 0.0 && l2 == 1.0 => Ok(2),
            both => Err(format!("leader gauges {both:?}")),
        }
    });
    let survivor = 3 - leader;
    poll("web's Event", Duration::from_secs(10), || {
        let all = events(&api)?;
        match events_on(&all, WEB, "AddressAssigned").len() {
            0 => Err("not yet".to_string()),
            _ => Ok(()),
        }
    });
    // Both edges computed the addresses the statuses show.
    let written = statuses(&api).expect("statuses");
    for n in [1, 2] {
        assert_eq!(scene.served(n), Ok(written.clone()), "edge {n} serves");
    }
    let lease_before = api.get(LEASE_PATH).expect("the Lease");
    let holder_before = lease_before["spec"]["holderIdentity"].clone();
    // The killed edge's counters, as they stand at its death.
    let (leader_writes, leader_told) = (scene.writes(leader), scene.told(leader));
    eprintln!(
        "edge {leader} leads (Lease holder {holder_before}): {leader_writes} status writes, {leader_told} Events; edge {survivor} follows"
    );

    // The leader killed under load; a Service created at once, which only
    // the survivor can write about, once the Lease has run out.
    let clients = scene.site.clients.0.clone();
    let targets: Vec<SocketAddr> = WEB_VIPS
        .iter()
        .map(|v| SocketAddr::new(v.parse().expect("a VIP"), 80))
        .collect();
    let load = Load::start(
        &clients,
        LoadSpec::connections(targets, 100, Duration::from_secs(8)),
    );
    load.wait_ok(100, Duration::from_secs(10))
        .expect("the load runs");
    // Killed just after it renewed the Lease: the worst case, a whole
    // lease to run out before the survivor may take it.
    let renewed = |lease: &Value| lease["spec"]["renewTime"].as_str().map(str::to_string);
    let last = renewed(&api.get(LEASE_PATH).expect("the Lease"));
    let (lease_renewed, _) = poll(
        "the leader to renew",
        LEASE + Duration::from_secs(2),
        || {
            let lease = api.get(LEASE_PATH).map_err(|e| e.to_string())?;
            if lease["spec"]["holderIdentity"] != holder_before {
                return Err(format!("the Lease moved: {lease}"));
            }
            match renewed(&lease) {
                now if now != last => Ok(lease),
                _ => Err("not renewed yet".to_string()),
            }
        },
    );
    let kill_at = load.elapsed();
    let killed_wall = SystemTime::now();
    let killed = Instant::now();
    let mut dead = scene.edges[leader - 1].take().expect("the leader runs");
    dead.signal(Signal::SIGKILL);
    scene.create_service(LATER, 30081, Ipv4Addr::new(10, 96, 0, 11));
    let created = killed.elapsed();
    let routed = scene.wait_hops(WEB_VIPS, &[survivor]);
    // When each family's route lost the dead edge, from the kill.
    let gone_by: ByFamily<Duration> = routed
        .iter()
        .map(|(family, took)| (*family, created + *took))
        .collect();
    dead.wait(Duration::from_secs(10));
    drop(dead);
    let limit = LEASE + Duration::from_secs(10);
    poll("later's status", limit, || {
        match statuses(&api)?.get(LATER) {
            Some(list) if !list.is_empty() => Ok(()),
            other => Err(format!("later's status: {other:?}")),
        }
    });
    let status_after = killed.elapsed();
    let (later_event, _) = poll("later's Event", limit, || {
        let all = events(&api)?;
        events_on(&all, LATER, "AddressAssigned")
            .first()
            .map(|e| (*e).clone())
            .ok_or_else(|| "not yet".to_string())
    });
    let event_after = killed.elapsed();
    scene.wait_hops(LATER_VIPS, &[survivor]);
    let later_served = killed.elapsed();
    let record = load.finish().expect("the load ends");

    let lease_after = api.get(LEASE_PATH).expect("the Lease");
    let taken = seconds_after(&lease_after["spec"]["acquireTime"], killed_wall);
    let since_renewal = seconds_after(&lease_renewed["spec"]["renewTime"], killed_wall).map(|s| -s);
    let event_time = seconds_after(&later_event["eventTime"], killed_wall);
    let mut timeline = timeline_by_edge(&record);
    timeline.mark(
        kill_at,
        format!("edge {leader} (the leader) killed (SIGKILL)"),
    );
    timeline.mark(
        kill_at + status_after,
        "later's status written by the survivor",
    );
    timeline.mark(
        kill_at + event_after,
        "later's Event posted by the survivor",
    );
    let families = by_family(&record);
    let failures: Vec<String> = families
        .iter()
        .map(|(family, record)| {
            let failed = record.failed();
            let last = failed.iter().map(|c| c.at).max();
            format!(
                "{family} {} of {} failed, the last {:?} after the kill",
                failed.len(),
                record.connections.len(),
                last.map(|at| at.saturating_sub(kill_at))
            )
        })
        .collect();
    eprintln!(
        "leader killed (lease {LEASE:?}) {since_renewal:?} s after its last renewal: later created {created:?} after the kill; edge {leader} gone at the router {} after it; \
         the Lease taken {taken:?} s after it (holder {} -> {}, transitions {}); later's status seen {status_after:?} after it, its Event seen {event_after:?} (eventTime {event_time:?} s); \
         later's VIPs at the router via edge {survivor} {later_served:?} after it; new connections: {}:\n{timeline}",
        per_family(&gone_by),
        holder_before,
        lease_after["spec"]["holderIdentity"],
        lease_after["spec"]["leaseTransitions"],
        failures.join("; "),
    );

    // Writes resumed within the lease duration and 2 s.
    let bound = LEASE + Duration::from_secs(2);
    assert!(
        status_after <= bound,
        "later's status came {status_after:?} after the kill"
    );
    assert!(
        event_after <= bound,
        "later's Event came {event_after:?} after the kill"
    );
    assert_ne!(
        lease_after["spec"]["holderIdentity"], holder_before,
        "the survivor holds the Lease"
    );
    assert_eq!(
        scene.metric(survivor, "portico_edge_kubernetes_leader", &[]),
        Ok(1.0)
    );
    assert_eq!(
        statuses(&api).expect("statuses").get(LATER),
        Some(&LATER_VIPS.map(str::to_string).to_vec())
    );
    // Traffic: both edges carried it before the kill, the survivor after
    // the router dropped the dead one; only what was in flight to the dead
    // edge could fail, within 1 s of the kill.
    for (family, record) in &families {
        assert_eq!(
            carried_by(record, Duration::ZERO, kill_at),
            hops(*family, &[1, 2]),
            "{family}"
        );
        let after = kill_at + gone_by[family] + Duration::from_millis(100);
        assert_eq!(
            carried_by(record, after, Duration::MAX),
            hops(*family, &[survivor]),
            "{family}"
        );
        assert_recovered(record, kill_at, Duration::from_secs(1));
    }

    // The killed edge started again: it follows, and serves the addresses
    // the statuses show (both edges compute the same).
    scene.start_edge(leader, &format!("edge{leader}-again"));
    scene.wait_hops(WEB_VIPS, &[1, 2]);
    scene.wait_hops(LATER_VIPS, &[1, 2]);
    for vip in LATER_VIPS {
        let later_target = SocketAddr::new(vip.parse().expect("a VIP"), 80);
        let answer = portico_lab::netns::in_netns(&clients, || portico_lab::pod::get(later_target))
            .expect("the clients' namespace")
            .unwrap_or_else(|e| panic!("later answers on {vip} through the edges: {e}"));
        eprintln!("later answers on {vip}: {answer:?}");
    }
    // Long enough for a follower that wrongly wrote to have done so.
    std::thread::sleep(Duration::from_secs(2));
    let written = statuses(&api).expect("statuses");
    for n in [1, 2] {
        assert_eq!(scene.served(n), Ok(written.clone()), "edge {n} serves");
    }
    assert_eq!(
        scene.metric(leader, "portico_edge_kubernetes_leader", &[]),
        Ok(0.0),
        "the restarted edge follows"
    );
    let (looks, seen) = statuses_watch.finish();
    let all = events(&api).expect("Events");
    let (survivor_writes, survivor_told) = (scene.writes(survivor), scene.told(survivor));
    let (again_writes, again_told) = (scene.writes(leader), scene.told(leader));
    eprintln!(
        "status writes: edge {leader} {leader_writes} before its death, {again_writes} after its restart; edge {survivor} {survivor_writes}. \
         Events posted: {leader_told}, {again_told}; {survivor_told}. Statuses looked at {looks} times: {seen:?}"
    );
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for e in &all {
        *counts.entry(event_key(e)).or_default() += 1;
    }
    for (key, count) in &counts {
        eprintln!("event x{count}: {key}");
    }
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "Events posted twice: {doubled:?}");
    assert_eq!(events_on(&all, WEB, "AddressAssigned").len(), 1);
    assert_eq!(events_on(&all, LATER, "AddressAssigned").len(), 1);
    // Each Service's status only ever went from nothing to its one address
    // of each family.
    assert!(looks > 50, "{looks} looks at the statuses");
    for (name, vips) in [(WEB, WEB_VIPS), (LATER, LATER_VIPS)] {
        let lists: Vec<&Vec<String>> = seen
            .get(name)
            .map(|l| l.iter().map(|(_, l)| l).filter(|l| !l.is_empty()).collect())
            .unwrap_or_default();
        assert_eq!(
            lists,
            [&vips.map(str::to_string).to_vec()],
            "{name}'s statuses"
        );
    }
    // One status write per Service, all told: no edge wrote twice.
    assert_eq!(
        (leader_writes, survivor_writes, again_writes),
        (1.0, 1.0, 0.0),
        "status writes (killed leader, survivor, restarted)"
    );
    assert_eq!(
        (leader_told, survivor_told, again_told),
        (1.0, 1.0, 0.0),
        "Events posted (killed leader, survivor, restarted)"
    );
}
