//! Failure scenarios under load, end to end: a node dies and comes back, a
//! node is excluded and drained, the edge is reloaded and upgraded, a node
//! agent restarts, the API server goes away. Each test builds a lab of its
//! own, runs a bounded load from the inside client (new connections at a
//! steady rate, each with a timeout, plus long-lived echo sessions), does
//! the harm, and prints the per-second timeline (connections ok / failed /
//! sessions lost, SYNs reaching each node, which pods answered) before
//! asserting on it.
//!
//! The lab is dual-stack: every load goes to the Service's IPv4 and IPv6
//! addresses in turn, so each scenario runs in both families at once, and
//! holds in each.
//!
//! These tests measure time, so each runs alone ([`alone`]): not beside
//! another scenario's lab, nor any other lab test's. Needs root (see
//! `e2e.rs`).

use std::net::SocketAddr;
use std::time::Duration;

use nix::sys::signal::Signal;
use portico_lab::lab::{NodeSample, NodeWatch};
use portico_lab::load::{Load, LoadSpec, Record, Timeline};
use portico_lab::topology::{self, Client, NodeSpec};
use portico_lab::Lab;

use crate::support::{alone, lab, lab_with, metric, privileged};

/// The edge's probe interval in the lab's config (`settings.health.interval`).
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// What "within 2 probe intervals" may take on top: the probe timeout
/// (500 ms, a probe to a dead node ends there) and the sampling period.
const DETECTION_MARGIN: Duration = Duration::from_millis(700);
/// New connections per second in every scenario.
const RATE: u32 = 30;
/// The label that takes a node out of external load balancers.
const EXCLUDE: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

fn node(name: &str) -> NodeSpec {
    topology::nodes()
        .into_iter()
        .find(|n| n.name == name)
        .unwrap_or_else(|| panic!("no {name}"))
}

fn service(name: &str) -> topology::ServiceSpec {
    topology::services()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no Service {name}"))
}

/// A Service's addresses (VIP:80) in both families, IPv4 first.
fn vips(lab: &Lab, name: &str) -> Vec<SocketAddr> {
    topology::FAMILIES
        .iter()
        .map(|f| {
            lab.vip_of(name, *f)
                .unwrap_or_else(|| panic!("{name} has no {f} VIP"))
        })
        .collect()
}

fn start_load(lab: &Lab, spec: LoadSpec) -> Load {
    Load::start(&lab.names().client(Client::Inside), spec)
}

/// Adds the SYNs each node saw per second (`syn node-N`) and the seconds
/// in which the edge held a node down (`down node-N`, 1 per sample) to the
/// timeline.
fn add_samples(t: &mut Timeline, samples: &[NodeSample]) {
    for node in topology::nodes() {
        let mut last: Option<u64> = None;
        for s in samples.iter().filter(|s| s.node == node.name) {
            if let Some(prev) = last {
                t.add(
                    s.at,
                    &format!("syn {}", node.name),
                    s.syns.saturating_sub(prev),
                );
            }
            last = Some(s.syns);
            if s.up == Some(false) {
                t.add(s.at, &format!("down {}", node.name), 1);
            }
        }
    }
}

/// The first sample at or after `from` where the edge holds `node` down.
fn first_down(samples: &[NodeSample], node: &str, from: Duration) -> Option<Duration> {
    samples
        .iter()
        .find(|s| s.node == node && s.at >= from && s.up == Some(false))
        .map(|s| s.at)
}

/// The first sample at or after `from` where the edge holds `node` up.
fn first_up(samples: &[NodeSample], node: &str, from: Duration) -> Option<Duration> {
    samples
        .iter()
        .find(|s| s.node == node && s.at >= from && s.up == Some(true))
        .map(|s| s.at)
}

/// The last sample time in `from..to` at which `node`'s SYN counter had
/// grown since the previous sample (`None`: it never grew).
fn last_syn(samples: &[NodeSample], node: &str, from: Duration, to: Duration) -> Option<Duration> {
    let mine: Vec<&NodeSample> = samples.iter().filter(|s| s.node == node).collect();
    mine.windows(2)
        .filter(|w| w[1].at >= from && w[1].at < to && w[1].syns > w[0].syns)
        .map(|w| w[1].at)
        .next_back()
}

/// SYNs `node` saw between `from` and `to`.
fn syns_between(samples: &[NodeSample], node: &str, from: Duration, to: Duration) -> u64 {
    let at = |t: Duration| {
        samples
            .iter()
            .rfind(|s| s.node == node && s.at <= t)
            .map(|s| s.syns)
    };
    match (at(from), at(to)) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => 0,
    }
}

/// Prints the timeline (straight to stderr: libtest hides a passing test's
/// output unless `--nocapture`, and these figures are the point).
fn show(title: &str, t: &Timeline, record: &Record) {
    eprintln!(
        "\n=== {title}: {} connections, {} failed; {} sessions, {} lost\n{}{t}",
        record.connections.len(),
        record.failed().len(),
        record.sessions.len(),
        record.lost_sessions().len(),
        record.by_family()
    );
    for s in record.lost_sessions() {
        eprintln!(
            "  lost session to {} opened {:.2?} ({:?}): {}",
            s.target,
            s.opened,
            s.answer.as_ref().map(|a| &a.pod),
            s.lost.as_deref().unwrap_or_default()
        );
    }
}

/// How a node dies.
#[derive(Debug, Clone, Copy)]
enum Death {
    /// Its agent and pods are killed (SIGKILL); its rules stay.
    Killed,
    /// Its cluster link goes down.
    LinkDown,
}

/// A node dies under a steady stream of new connections to the `local`
/// Service (`Local`: node-1 and node-2 each send to their own pod only, so
/// what keeps clients whole is the edge alone: connect retry, then the
/// health check), then comes back. Asserts 0 failed connections, the edge
/// holding the node down within 2 probe intervals (plus
/// [`DETECTION_MARGIN`]), no SYN reaching it after that, and traffic
/// reaching it again once it is back.
fn node_dies_and_comes_back(death: Death) {
    let mut lab = lab();
    let victim = node("node-2");
    let svc = service("local");
    let health_port = svc.health_check_node_port.expect("local has a health port");
    let duration = Duration::from_secs(16);
    let load = start_load(
        &lab,
        LoadSpec::connections(vips(&lab, "local"), RATE, duration),
    );
    let watch = lab.watch_nodes(
        svc.node_port,
        health_port,
        load.started(),
        duration + Duration::from_secs(5),
    );
    load.wait_ok(2 * RATE as usize, Duration::from_secs(10))
        .expect("steady load before the failure");

    let died = load.elapsed();
    match death {
        Death::Killed => lab.kill_node(&victim).expect("kill node-2"),
        Death::LinkDown => lab.set_node_link(&victim, false).expect("node-2 link down"),
    }
    // A connection started before the failure was complete may already be
    // on node-2 when it goes: no connect retry can save it.
    let dead = load.elapsed();
    // The edge's view, as a user would watch it on /metrics.
    let edge_ns = lab.names().edge();
    let detect_limit = 2 * PROBE_INTERVAL + DETECTION_MARGIN + Duration::from_secs(3);
    lab.wait_for("the edge to hold node-2 down", detect_limit, |lab: &Lab| {
        let m = lab.edge_metrics().map_err(|e| e.to_string())?;
        match portico_lab::lab::backend_up(&m, "node-2", health_port) {
            Some(false) => Ok(()),
            other => Err(format!("node-2 up = {other:?} in {edge_ns}")),
        }
    })
    .expect("detection");
    load.wait_ok(2 * RATE as usize, Duration::from_secs(10))
        .expect("traffic while node-2 is down");

    let back = load.elapsed();
    match death {
        Death::Killed => lab.revive_node(&victim).expect("restart node-2"),
        Death::LinkDown => lab.set_node_link(&victim, true).expect("node-2 link up"),
    }
    lab.wait_for(
        "the edge to hold node-2 up again",
        Duration::from_secs(10),
        |lab: &Lab| {
            let m = lab.edge_metrics().map_err(|e| e.to_string())?;
            match portico_lab::lab::backend_up(&m, "node-2", health_port) {
                Some(true) => Ok(()),
                other => Err(format!("node-2 up = {other:?}")),
            }
        },
    )
    .expect("node-2 back");
    let up_again = load.elapsed();
    load.wait_until(
        "local-2 on node-2 to answer again",
        duration.saturating_sub(load.elapsed()) + Duration::from_secs(2),
        |r| {
            r.connections
                .iter()
                .any(|c| c.at >= up_again && c.result.as_ref().is_ok_and(|a| a.node == "node-2"))
        },
    )
    .expect("node-2 receives traffic again");
    let record = load.finish().expect("load");
    let samples = watch.finish();

    let mut t = record.timeline();
    add_samples(&mut t, &samples);
    t.mark(died, format!("node-2 dies ({death:?})"));
    t.mark(back, "node-2 back");
    let detected = first_down(&samples, "node-2", died).expect("a down sample");
    t.mark(detected, "edge holds node-2 down");
    if let Some(u) = first_up(&samples, "node-2", back) {
        t.mark(u, "edge holds node-2 up");
    }
    let last = last_syn(&samples, "node-2", died, back);
    show(
        &format!("node-2 dies ({death:?}) and comes back"),
        &t,
        &record,
    );
    let detection = detected - died;
    let avoided = last.map_or(Duration::ZERO, |l| l.saturating_sub(died));
    eprintln!(
        "detection {detection:.2?} after the failure; last SYN to node-2 {avoided:.2?} after it; \
         node-2 up again {:.2?} after coming back",
        up_again - back
    );
    let metrics = lab.edge_metrics().expect("edge metrics");
    eprintln!(
        "edge: connect retries {:?}, failed {:?}",
        metric(
            &metrics,
            "portico_edge_connect_retries_total",
            &["service=\"default/local\""]
        ),
        metric(
            &metrics,
            "portico_edge_connections_failed_total",
            &["service=\"default/local\""]
        ),
    );

    let (in_flight, failed): (Vec<_>, Vec<_>) =
        record.failed().into_iter().partition(|c| c.at < dead);
    eprintln!(
        "{} connection(s) started while node-2 was going ({:.2?}) failed; they may have been on it",
        in_flight.len(),
        dead - died
    );
    assert!(
        failed.is_empty(),
        "connect retry should hide node-2's death from every connection started after it; failed: {failed:#?}"
    );
    assert!(
        detection <= 2 * PROBE_INTERVAL + DETECTION_MARGIN,
        "the edge took {detection:?} to hold node-2 down; the goal is 2 probe intervals \
         ({:?}) + {DETECTION_MARGIN:?}",
        2 * PROBE_INTERVAL
    );
    let after_detection = syns_between(&samples, "node-2", detected + NodeWatch::EVERY, back);
    assert_eq!(
        after_detection, 0,
        "no new connection may reach node-2 once the edge holds it down"
    );
    assert!(
        record
            .connections
            .iter()
            .any(|c| c.at >= up_again && c.result.as_ref().is_ok_and(|a| a.pod == "local-2")),
        "local-2 answers again once node-2 is back"
    );
}

/// A node's agent and pods are killed under load, then started again.
#[test]
fn a_killed_node_is_avoided_without_failures_and_used_again_when_back() {
    if !privileged("a_killed_node_is_avoided_without_failures_and_used_again_when_back") {
        return;
    }
    let _alone = alone();
    node_dies_and_comes_back(Death::Killed);
}

/// A node's cluster link goes down under load, then up again.
#[test]
fn a_node_cut_off_is_avoided_without_failures_and_used_again_when_back() {
    if !privileged("a_node_cut_off_is_avoided_without_failures_and_used_again_when_back") {
        return;
    }
    let _alone = alone();
    node_dies_and_comes_back(Death::LinkDown);
}

/// A node gets the exclusion label through the API server under load, then
/// loses it. While excluded, no new connection reaches it; the sessions it
/// carried keep exchanging data until the edge's drain timeout, then are
/// closed; the others are untouched; no new connection fails. Without the
/// label it receives traffic again.
#[test]
fn an_excluded_node_is_drained_and_used_again_when_the_label_goes() {
    if !privileged("an_excluded_node_is_drained_and_used_again_when_the_label_goes") {
        return;
    }
    let _alone = alone();
    let lab = lab();
    let drain = lab.drain_timeout();
    let victim = node("node-2");
    let svc = service("local");
    let health_port = svc.health_check_node_port.expect("local has a health port");
    let targets = vips(&lab, "local");
    let duration = Duration::from_secs(14);
    // 8 sessions per family.
    let spec = LoadSpec::connections(targets.clone(), RATE, duration).with_sessions(&targets, 8);
    let load = start_load(&lab, spec);
    let watch = lab.watch_nodes(
        svc.node_port,
        health_port,
        load.started(),
        duration + Duration::from_secs(5),
    );
    load.wait_ok(2 * RATE as usize, Duration::from_secs(10))
        .expect("steady load before the label");
    // Maglev places each session by its source port: among 16, some go
    // through node-2 (all 16 on node-1 is a (2/3)^16 chance at worst).
    load.wait_until("a session through node-2", Duration::from_secs(5), |r| {
        r.opened.iter().any(|(_, _, a)| a.node == "node-2")
    })
    .expect("sessions through both nodes");

    let labelled = load.elapsed();
    lab.label_node(&victim, EXCLUDE, Some(""))
        .expect("label node-2");
    // Run on past the drain timeout: the load paces this wait.
    let past_drain = (drain.as_secs() as usize + 3) * RATE as usize;
    load.wait_ok(past_drain, drain + Duration::from_secs(10))
        .expect("traffic while node-2 is excluded");
    let unlabelled = load.elapsed();
    lab.label_node(&victim, EXCLUDE, None)
        .expect("unlabel node-2");
    load.wait_until(
        "local-2 on node-2 to answer again",
        duration.saturating_sub(load.elapsed()) + Duration::from_secs(2),
        |r| {
            r.connections
                .iter()
                .any(|c| c.at >= unlabelled && c.result.as_ref().is_ok_and(|a| a.node == "node-2"))
        },
    )
    .expect("node-2 receives traffic again");
    let record = load.finish().expect("load");
    let samples = watch.finish();

    let mut t = record.timeline();
    add_samples(&mut t, &samples);
    t.mark(
        labelled,
        "node-2 labelled exclude-from-external-load-balancers",
    );
    t.mark(unlabelled, "label removed");
    let last = last_syn(&samples, "node-2", labelled, unlabelled);
    if let Some(l) = last {
        t.mark(l, "last SYN to node-2");
    }
    show("node-2 excluded, then included again", &t, &record);
    let on_node2: Vec<_> = record
        .sessions
        .iter()
        .filter(|s| s.opened < labelled && s.answer.as_ref().is_some_and(|a| a.node == "node-2"))
        .collect();
    for s in &on_node2 {
        eprintln!(
            "session via node-2 opened {:.2?}: {} exchanges, ended {:.2?} after the label ({})",
            s.opened,
            s.exchanges,
            s.ended.saturating_sub(labelled),
            s.lost.as_deref().unwrap_or("closed by the client")
        );
    }
    let stopped_after = last.map_or(Duration::ZERO, |l| l.saturating_sub(labelled));
    eprintln!("last new connection to node-2 {stopped_after:.2?} after the label");

    assert!(
        record.failed().is_empty(),
        "no new connection may fail: {:#?}",
        record.failed()
    );
    assert!(
        stopped_after <= Duration::from_secs(1),
        "new connections kept reaching node-2 {stopped_after:?} after the label"
    );
    assert!(
        !on_node2.is_empty(),
        "no session went through node-2 before the label: the test proves nothing"
    );
    for s in &on_node2 {
        let lived = s.ended.saturating_sub(labelled);
        assert!(
            s.lost.is_some() && lived >= drain && lived <= drain + Duration::from_secs(1),
            "a session through node-2 must run on until the drain timeout ({drain:?}) and \
             then be closed by the edge: it ended {lived:?} after the label ({:?})",
            s.lost
        );
    }
    let lost_elsewhere: Vec<_> = record
        .lost_sessions()
        .into_iter()
        .filter(|s| {
            !on_node2
                .iter()
                .any(|o| o.opened == s.opened && o.target == s.target)
        })
        .collect();
    assert!(
        lost_elsewhere.is_empty(),
        "only sessions through node-2 may end: {lost_elsewhere:#?}"
    );
}

/// A pod being deleted: its endpoint turns terminating (not ready, still
/// serving) in both EndpointSlices under load, as when its pod is deleted
/// with a grace period. From a second after that, no new connection reaches
/// it; the sessions it holds keep exchanging data to the end of the load
/// (conntrack keeps their NAT, as with kube-proxy); nothing fails. Listed
/// ready again, it gets new connections again.
#[test]
fn a_terminating_endpoint_keeps_its_connections_and_gets_no_new_ones() {
    if !privileged("a_terminating_endpoint_keeps_its_connections_and_gets_no_new_ones") {
        return;
    }
    let _alone = alone();
    let lab = lab();
    let targets = vips(&lab, "web");
    let all = ["web-1", "web-2", "web-3"];
    let duration = Duration::from_secs(12);
    // 8 sessions per family: some land on web-2 (none of 16 does with
    // probability (2/3)^16, under 0.2%).
    let spec = LoadSpec::connections(targets.clone(), RATE, duration).with_sessions(&targets, 8);
    let load = start_load(&lab, spec);
    load.wait_ok(2 * RATE as usize, Duration::from_secs(10))
        .expect("steady load first");
    load.wait_until("a session on web-2", Duration::from_secs(5), |r| {
        r.opened.iter().any(|(_, _, a)| a.pod == "web-2")
    })
    .expect("sessions on web-2");
    let marked = load.elapsed();
    lab.set_endpoints_terminating("web", &all, &["web-2"])
        .expect("web-2 terminating");
    load.wait_ok(4 * RATE as usize, Duration::from_secs(10))
        .expect("traffic while web-2 terminates");
    let ready_again = load.elapsed();
    lab.set_endpoints("web", &all).expect("web-2 ready again");
    load.wait_until(
        "web-2 to get new connections again",
        duration.saturating_sub(load.elapsed()) + Duration::from_secs(2),
        |r| {
            r.connections
                .iter()
                .any(|c| c.at >= ready_again && c.result.as_ref().is_ok_and(|a| a.pod == "web-2"))
        },
    )
    .expect("web-2 back");
    let record = load.finish().expect("load");

    let mut t = record.timeline();
    t.mark(marked, "web-2 terminating (ready false, serving true)");
    t.mark(ready_again, "web-2 ready again");
    show("web-2 terminating, then ready again", &t, &record);
    let settled = marked + Duration::from_secs(1);
    let new_on_web2: Vec<_> = record
        .connections
        .iter()
        .filter(|c| c.at >= settled && c.at < ready_again)
        .filter(|c| c.result.as_ref().is_ok_and(|a| a.pod == "web-2"))
        .collect();
    let held: Vec<_> = record
        .sessions
        .iter()
        .filter(|s| s.opened < marked && s.answer.as_ref().is_some_and(|a| a.pod == "web-2"))
        .collect();
    eprintln!(
        "{} session(s) on web-2 when it turned terminating; new connections to it from 1 s later: {}",
        held.len(),
        new_on_web2.len()
    );
    assert!(
        record.failed().is_empty(),
        "no new connection may fail: {:#?}",
        record.failed()
    );
    assert!(
        new_on_web2.is_empty(),
        "a terminating endpoint gets no new connection: {new_on_web2:#?}"
    );
    assert!(
        !held.is_empty(),
        "no session was on web-2: the test proves nothing"
    );
    for s in &held {
        assert!(
            s.lost.is_none() && s.ended >= ready_again,
            "a session on the terminating web-2 must go on: {s:#?}"
        );
    }
    assert!(
        record.lost_sessions().is_empty(),
        "no session may be lost: {:#?}",
        record.lost_sessions()
    );
}

/// The load of the "under load" scenarios: new connections to `web`
/// (`Cluster`) and `local` (`Local`) in both families, and 3 echo sessions
/// to each address.
fn mixed_load(lab: &Lab, duration: Duration, lifetime: Option<Duration>) -> Load {
    let mut targets = vips(lab, "web");
    targets.extend(vips(lab, "local"));
    let mut spec =
        LoadSpec::connections(targets.clone(), RATE, duration).with_sessions(&targets, 3);
    if let Some(l) = lifetime {
        spec = spec.session_lifetime(l);
    }
    start_load(lab, spec)
}

/// Runs `act` under [`mixed_load`] and asserts what every "under load"
/// scenario promises: 0 failed (refused or otherwise) new connections, 0
/// sessions lost, every planned connection made, and traffic before and
/// after. `act` returns marks for the timeline.
fn under_load(
    lab: &mut Lab,
    title: &str,
    duration: Duration,
    lifetime: Option<Duration>,
    act: impl FnOnce(&mut Lab, &Load) -> Vec<(Duration, String)>,
) {
    let svc = service("web");
    let load = mixed_load(lab, duration, lifetime);
    let watch = lab.watch_nodes(
        svc.node_port,
        topology::NODE_HEALTH_PORT,
        load.started(),
        duration + Duration::from_secs(5),
    );
    load.wait_ok(2 * RATE as usize, Duration::from_secs(10))
        .expect("steady load first");
    let marks = act(lab, &load);
    load.wait_ok(2 * RATE as usize, Duration::from_secs(10))
        .expect("traffic after the scenario");
    let record = load.finish().expect("load");
    let samples = watch.finish();
    let mut t = record.timeline();
    add_samples(&mut t, &samples);
    for (at, what) in marks {
        t.mark(at, what);
    }
    show(title, &t, &record);
    let planned = (u128::from(RATE) * duration.as_millis() / 1000) as usize;
    assert!(
        record.failed().is_empty(),
        "{title}: no new connection may fail or be refused: {:#?}",
        record.failed()
    );
    assert!(
        record.lost_sessions().is_empty(),
        "{title}: no established connection may be lost: {:#?}",
        record.lost_sessions()
    );
    assert_eq!(
        record.connections.len(),
        planned,
        "{title}: the load made every planned connection"
    );
    assert!(
        record.sessions.iter().all(|s| s.exchanges > 0),
        "{title}: every session exchanged data"
    );
}

/// The edge's configuration is reloaded twice under load (a changed file
/// and SIGHUP, then the original back).
#[test]
fn an_edge_reload_under_load_loses_nothing() {
    if !privileged("an_edge_reload_under_load_loses_nothing") {
        return;
    }
    let _alone = alone();
    let mut lab = lab();
    under_load(
        &mut lab,
        "edge reload",
        Duration::from_secs(8),
        None,
        |lab, load| {
            let original = lab.edge_config();
            let changed = original.replace("  proxy:\n", "  proxy:\n    idleTimeout: 30m\n");
            assert_ne!(changed, original, "the config has a proxy section");
            let first = load.elapsed();
            lab.reload_edge(&changed, Duration::from_secs(10))
                .expect("reload 1");
            load.wait_ok(RATE as usize, Duration::from_secs(10))
                .expect("traffic between the reloads");
            let second = load.elapsed();
            lab.reload_edge(&original, Duration::from_secs(10))
                .expect("reload 2");
            vec![
                (first, "reload (idleTimeout 30m)".to_string()),
                (second, "reload (original)".to_string()),
            ]
        },
    );
}

/// A node agent is stopped (SIGTERM) and started again under load.
#[test]
fn a_node_agent_restart_under_load_loses_nothing() {
    if !privileged("a_node_agent_restart_under_load_loses_nothing") {
        return;
    }
    let _alone = alone();
    let mut lab = lab();
    under_load(
        &mut lab,
        "node-1 agent restart",
        Duration::from_secs(10),
        None,
        |lab, load| {
            let stop = load.elapsed();
            let status = lab
                .stop_process("agent-node-1", Signal::SIGTERM, Duration::from_secs(10))
                .expect("stop the agent");
            let stopped = load.elapsed();
            // Stay away for 3 s of load: long enough for the edge to notice.
            load.wait_ok(3 * RATE as usize, Duration::from_secs(10))
                .expect("traffic while the agent is away");
            let away = lab.edge_metrics().ok().and_then(|m| {
                portico_lab::lab::backend_up(&m, "node-1", topology::NODE_HEALTH_PORT)
            });
            let restart = load.elapsed();
            lab.start_again("agent-node-1").expect("start the agent");
            let started = load.elapsed();
            lab.wait_for(
                "the edge to hold node-1 up",
                Duration::from_secs(10),
                |lab: &Lab| {
                    let m = lab.edge_metrics().map_err(|e| e.to_string())?;
                    match portico_lab::lab::backend_up(&m, "node-1", topology::NODE_HEALTH_PORT) {
                        Some(true) => Ok(()),
                        other => Err(format!("node-1 up = {other:?}")),
                    }
                },
            )
            .expect("node-1 healthy again");
            vec![
                (stop, "SIGTERM to agent-node-1".to_string()),
                (stopped, format!("agent exited ({status})")),
                (
                    restart,
                    format!("edge's node-1 up = {away:?}; agent started again"),
                ),
                (started, "agent running".to_string()),
                (load.elapsed(), "edge holds node-1 up".to_string()),
            ]
        },
    );
}

/// The API server is frozen (SIGSTOP: connections open, nothing answers)
/// for several seconds under load, then thawed. (Stopping and restarting
/// the process would lose its objects: `portico-kube-fake` keeps them in
/// memory, so a restart is a different cluster, not an outage.)
#[test]
fn an_api_server_outage_under_load_loses_nothing() {
    if !privileged("an_api_server_outage_under_load_loses_nothing") {
        return;
    }
    let _alone = alone();
    let mut lab = lab();
    under_load(
        &mut lab,
        "API server outage",
        Duration::from_secs(12),
        None,
        |lab, load| {
            let frozen = load.elapsed();
            lab.signal("api-server", Signal::SIGSTOP)
                .expect("freeze the API server");
            let outage = load.wait_ok(6 * RATE as usize, Duration::from_secs(12));
            let stale = lab
                .edge_metrics()
                .ok()
                .and_then(|m| metric(&m, "portico_edge_kubernetes_stale_seconds", &[]));
            let thawed = load.elapsed();
            lab.signal("api-server", Signal::SIGCONT)
                .expect("thaw the API server");
            outage.expect("traffic during the outage");
            assert!(
                stale.is_some_and(|s| s > 0.0),
                "the edge must show the outage in portico_edge_kubernetes_stale_seconds: {stale:?}"
            );
            eprintln!("portico_edge_kubernetes_stale_seconds at the end of the outage: {stale:?}");
            vec![
                (frozen, "API server frozen (SIGSTOP)".to_string()),
                (
                    thawed,
                    format!("thawed (SIGCONT); edge stale_seconds was {stale:?}"),
                ),
            ]
        },
    );
    // The watches recover: a change made after the outage reaches the edge.
    let victim = node("node-3");
    lab.label_node(&victim, EXCLUDE, Some(""))
        .expect("label node-3");
    lab.wait_for(
        "the edge to drop the excluded node-3 after the outage",
        Duration::from_secs(20),
        |lab: &Lab| {
            let m = lab.edge_metrics().map_err(|e| e.to_string())?;
            match portico_lab::lab::backend_states(&m, "node-3", topology::NODE_HEALTH_PORT)
                .as_slice()
            {
                [] => Ok(()),
                up => Err(format!("node-3 still checked (up = {up:?})")),
            }
        },
    )
    .expect("the edge follows the cluster again");
}

/// The edge binary is upgraded under load: a new `portico-edge run
/// --takeover`, SIGQUIT to the old one, which hands its listeners over and
/// drains. Sessions live 2.5 s, well inside the 6 s drain timeout, so every
/// one that began on the old edge can end on it.
#[test]
fn an_edge_upgrade_under_load_loses_nothing() {
    if !privileged("an_edge_upgrade_under_load_loses_nothing") {
        return;
    }
    let _alone = alone();
    let drain = Duration::from_secs(6);
    let mut lab = lab_with(drain);
    under_load(
        &mut lab,
        "edge binary upgrade",
        Duration::from_secs(16),
        Some(Duration::from_millis(2500)),
        |lab, load| {
            let begin = load.elapsed();
            let old = lab.upgrade_edge(Duration::from_secs(20)).expect("upgrade");
            let handed = load.elapsed();
            let status = lab
                .wait_exit(&old, drain + Duration::from_secs(5))
                .expect("the old edge exits after draining");
            let gone = load.elapsed();
            assert!(status.success(), "the old edge exits cleanly: {status}");
            vec![
                (begin, "new edge started with --takeover".to_string()),
                (
                    handed,
                    "SIGQUIT handover done; new edge running".to_string(),
                ),
                (gone, format!("old edge exited ({status})")),
            ]
        },
    );
    assert_eq!(lab.edge_process(), "edge-2");
}

/// A Service's pods scale down and up under load, through its
/// EndpointSlice, and a pod is killed while still listed:
/// - scale down (web-3 leaves the slice, then its server stops) and up
///   (its server starts, then it joins the slice): no connection fails;
/// - web-2's server is killed (SIGKILL) while listed, and leaves the slice
///   right after, as the EndpointSlice controller would make it. A new
///   connection the nodes send to the dead pod is refused (the nodes'
///   DNAT makes the refusal the edge's connect failure), so the edge's
///   connect retry hides it unless every try of that connection lands on
///   web-2. Failures are allowed only for connections *started* between the
///   kill and the moment every node has the new slice (the PATCH, plus the
///   1 s the agents are given to program it): "those sent to a pod as it
///   was killed". Everything before and after must succeed.
#[test]
fn scaling_pods_under_load_fails_only_connections_sent_to_a_killed_pod() {
    if !privileged("scaling_pods_under_load_fails_only_connections_sent_to_a_killed_pod") {
        return;
    }
    let _alone = alone();
    let mut lab = lab();
    let svc = service("web");
    let duration = Duration::from_secs(16);
    let load = start_load(
        &lab,
        LoadSpec::connections(vips(&lab, "web"), RATE, duration),
    );
    let watch = lab.watch_nodes(
        svc.node_port,
        topology::NODE_HEALTH_PORT,
        load.started(),
        duration + Duration::from_secs(5),
    );
    let answered_by = |pod: &'static str, since: Duration| {
        move |r: &Record| {
            r.connections
                .iter()
                .any(|c| c.at >= since && c.result.as_ref().is_ok_and(|a| a.pod == pod))
        }
    };
    let quiet = |pod: &'static str, since: Duration| {
        // `pod` answered nothing among a second's worth of connections
        // started after `since`.
        move |r: &Record| {
            let after: Vec<_> = r.connections.iter().filter(|c| c.at >= since).collect();
            after.len() >= RATE as usize
                && !after
                    .iter()
                    .any(|c| c.result.as_ref().is_ok_and(|a| a.pod == pod))
        }
    };
    let mut marks = Vec::new();
    load.wait_ok(2 * RATE as usize, Duration::from_secs(10))
        .expect("steady load first");

    // Scale down: out of the slice first, then the pod stops.
    let down = load.elapsed();
    lab.set_endpoints("web", &["web-1", "web-2"])
        .expect("slice without web-3");
    marks.push((down, "web-3 leaves the slice".to_string()));
    let settled = load.elapsed() + Duration::from_secs(1);
    load.wait_until(
        "web-3 to answer no more",
        Duration::from_secs(10),
        quiet("web-3", settled),
    )
    .expect("web-3 out");
    lab.stop_process("pod-web-3", Signal::SIGTERM, Duration::from_secs(10))
        .expect("stop web-3");
    marks.push((load.elapsed(), "web-3's server stopped".to_string()));
    load.wait_ok(RATE as usize, Duration::from_secs(10))
        .expect("traffic on two pods");

    // Scale up: the pod starts, then joins the slice.
    lab.start_again("pod-web-3").expect("start web-3");
    let up = load.elapsed();
    lab.set_endpoints("web", &["web-1", "web-2", "web-3"])
        .expect("slice with web-3");
    marks.push((up, "web-3 started and back in the slice".to_string()));
    load.wait_until(
        "web-3 to answer again",
        Duration::from_secs(10),
        answered_by("web-3", up),
    )
    .expect("web-3 back");
    load.wait_ok(RATE as usize, Duration::from_secs(10))
        .expect("traffic on three pods");

    // A pod killed while listed.
    let killed = load.elapsed();
    lab.stop_process("pod-web-2", Signal::SIGKILL, Duration::from_secs(10))
        .expect("kill web-2");
    lab.set_endpoints("web", &["web-1", "web-3"])
        .expect("slice without web-2");
    let patched = load.elapsed();
    let window_end = patched + Duration::from_secs(1);
    marks.push((killed, "web-2's server killed".to_string()));
    marks.push((patched, "web-2 leaves the slice".to_string()));
    load.wait_ok(2 * RATE as usize, Duration::from_secs(10))
        .expect("traffic after the kill");
    let record = load.finish().expect("load");
    let samples = watch.finish();

    let mut t = record.timeline();
    add_samples(&mut t, &samples);
    for (at, what) in marks {
        t.mark(at, what);
    }
    show("web scaled down, up, and a pod killed", &t, &record);
    let (excused, unexcused): (Vec<_>, Vec<_>) = record
        .failed()
        .into_iter()
        .partition(|c| c.at >= killed && c.at < window_end);
    let in_window = record
        .connections
        .iter()
        .filter(|c| c.at >= killed && c.at < window_end)
        .count();
    let metrics = lab.edge_metrics().expect("edge metrics");
    eprintln!(
        "connections started while web-2 was dead but listed ({:.2?}..{:.2?}): {in_window}, \
         failed: {}; edge connect retries {:?}, failed {:?}",
        killed,
        window_end,
        excused.len(),
        metric(
            &metrics,
            "portico_edge_connect_retries_total",
            &["service=\"default/web\""]
        ),
        metric(
            &metrics,
            "portico_edge_connections_failed_total",
            &["service=\"default/web\""]
        ),
    );
    assert!(
        unexcused.is_empty(),
        "only connections started while the killed pod was still listed may fail: {unexcused:#?}"
    );
    assert!(
        !t.seconds_answered_by("node-1").is_empty(),
        "the load ran: {t}"
    );
    assert!(
        record
            .connections
            .iter()
            .filter(|c| c.at >= window_end)
            .all(|c| c.result.as_ref().is_ok_and(|a| a.pod != "web-2")),
        "nothing reaches web-2 once it has left the slice"
    );
}
