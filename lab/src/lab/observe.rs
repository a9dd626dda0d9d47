//! What the lab reads without changing anything: new connections per
//! NodePort on each node (its own nftables table, ahead of the agent's),
//! the edge's `/metrics` and its health view, and a [`NodeWatch`] sampling
//! both over time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::api::{self, ApiClientError};
use crate::netns::in_netns;
use crate::topology;

use super::{Lab, LabError};

impl Lab {
    /// The edge's `/metrics` text.
    pub fn edge_metrics(&self) -> Result<String, LabError> {
        edge_metrics(&self.names.edge())
    }

    /// Edge `n`'s (1-based) `/metrics`, with several edges.
    pub fn edge_metrics_of(&self, n: usize) -> Result<String, LabError> {
        edge_metrics(&self.names.edge_n(n))
    }

    /// How many new TCP connections (SYNs) to `node_port` have arrived at
    /// node `node` (`node-1`...), counted by the lab's own nftables table
    /// `inet portico-lab` in the node's namespace, ahead of the agent's.
    pub fn syns_seen(&self, node: &str, node_port: u16) -> Result<u64, LabError> {
        syn_counter(&self.names.ns(node), node_port)
    }

    /// Starts a [`NodeWatch`]: SYNs to `node_port` on every node and the
    /// edge's health view on `health_port`, times from `since`, for at most
    /// `limit`.
    pub fn watch_nodes(
        &self,
        node_port: u16,
        health_port: u16,
        since: Instant,
        limit: Duration,
    ) -> NodeWatch {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let names = self.names.clone();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            let mut samples = Vec::new();
            let mut tick = Instant::now();
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let metrics = edge_metrics(&names.edge()).unwrap_or_default();
                let at = since.elapsed();
                for node in topology::nodes() {
                    let Ok(syns) = syn_counter(&names.node(&node), node_port) else {
                        continue;
                    };
                    samples.push(NodeSample {
                        at,
                        up: backend_up(&metrics, &node.name, health_port),
                        node: node.name,
                        syns,
                    });
                }
                tick += NodeWatch::EVERY;
                if let Some(wait) = tick.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            samples
        });
        NodeWatch {
            stop,
            thread: Some(thread),
        }
    }
}

/// One look at a node from outside, taken by a [`NodeWatch`].
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSample {
    /// When, from the watch's start instant.
    pub at: Duration,
    /// The node (`node-1`...).
    pub node: String,
    /// New connections (SYNs) to the watched NodePort that reached the node
    /// so far (the lab's counter, see [`Lab::syns_seen`]).
    pub syns: u64,
    /// The edge's health view of the node on the watched health port
    /// (`portico_edge_backend_up`), if it reports one.
    pub up: Option<bool>,
}

/// Samples every node's SYN counter for one NodePort and the edge's health
/// view of each node, about every [`NodeWatch::EVERY`], on a thread of its
/// own, until stopped or its limit passes. It reads, never changes anything.
#[derive(Debug)]
pub struct NodeWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<NodeSample>>>,
}

impl NodeWatch {
    /// How often it samples.
    pub const EVERY: Duration = Duration::from_millis(100);

    /// Ends the watch; every sample, in time order.
    pub fn finish(mut self) -> Vec<NodeSample> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for NodeWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The edge's `portico_edge_backend_up` for `node` on `port` (the health
/// target's port): one value per target the edge checks there, one per
/// family of the node's addresses it forwards to. Empty: not checked.
pub fn backend_states(metrics: &str, node: &str, port: u16) -> Vec<bool> {
    let node = format!("node=\"{node}\"");
    let tail = format!(":{port}\"}}");
    metrics
        .lines()
        .filter(|l| l.starts_with("portico_edge_backend_up{") && l.contains(&node))
        .filter_map(|l| l.split_once(&tail)?.1.trim().parse::<f64>().ok())
        .map(|v| v == 1.0)
        .collect()
}

/// Whether the edge holds `node` up on `port` in every family (`true`) or
/// down in every family (`false`); `None` when it does not check it, or
/// while its families disagree (each family's target is probed on its
/// own, so one may turn a probe before the other).
pub fn backend_up(metrics: &str, node: &str, port: u16) -> Option<bool> {
    let states = backend_states(metrics, node, port);
    let first = *states.first()?;
    states.iter().all(|s| *s == first).then_some(first)
}

/// The lab's own table in each node namespace: counts new connections per
/// NodePort before anything else sees them (priority -400, ahead of
/// conntrack and the agent's chains).
const OBSERVE_TABLE: &str = "portico-lab";

/// The lab's table: a SYN counter per Service's NodePort.
pub(super) fn observe_table() -> String {
    let mut rules = String::new();
    for svc in topology::services() {
        rules.push_str(&format!(
            "\t\ttcp dport {} tcp flags & (syn | ack) == syn counter\n",
            svc.node_port
        ));
    }
    format!(
        "table inet {OBSERVE_TABLE} {{\n\tchain observe {{\n\t\ttype filter hook prerouting priority -400; policy accept;\n{rules}\t}}\n}}\n"
    )
}

/// The lab's SYN counter for `node_port` in node namespace `ns`.
fn syn_counter(ns: &str, node_port: u16) -> Result<u64, LabError> {
    let ns = ns.to_string();
    let out = nft(
        &ns,
        &["list", "chain", "inet", OBSERVE_TABLE, "observe"],
        None,
    )?;
    let wanted = format!("dport {node_port} ");
    out.lines()
        .find(|l| l.contains(&wanted))
        .and_then(|l| l.split("packets ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| LabError::Observe {
            ns,
            what: format!("no counter for port {node_port} in:\n{out}"),
        })
}

/// Runs `nft` in namespace `ns` (with `stdin`, if given); its stdout.
pub(super) fn nft(ns: &str, args: &[&str], stdin: Option<&str>) -> Result<String, LabError> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let observe_err = |what: String| LabError::Observe {
        ns: ns.to_string(),
        what,
    };
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| observe_err(format!("cannot run nft: {e}")))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.unwrap_or_default().as_bytes())
            .map_err(|e| observe_err(format!("writing to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| observe_err(format!("nft: {e}")))?;
    if !out.status.success() {
        return Err(observe_err(format!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The edge's `/metrics`, fetched inside its namespace.
pub(super) fn edge_metrics(edge_ns: &str) -> Result<String, LabError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], topology::EDGE_METRICS_PORT));
    let (code, body) = in_netns(edge_ns, || {
        api::http_exchange(addr, "GET", "/metrics", None)
    })?
    .map_err(|source| ApiClientError::Io {
        method: "GET".into(),
        path: "/metrics".into(),
        source,
    })?;
    if code != 200 {
        return Err(LabError::Api(ApiClientError::Status {
            method: "GET".into(),
            path: "/metrics".into(),
            code,
            body: Value::String(body),
        }));
    }
    Ok(body)
}

/// Whether the edge's health view is what the topology implies: every
/// node's `/healthz` up, and each `Local` Service's health check up exactly
/// on the nodes with one of its pods.
pub fn health_settled(metrics: &str) -> Result<(), String> {
    // The value of every family's target, when each family has one and
    // they agree.
    let up = |check: &str, node: &str, port: u16| -> Option<f64> {
        let head = format!("portico_edge_backend_up{{check=\"{check}\",node=\"{node}\",");
        let tail = format!(":{port}\"}}");
        let values: Vec<f64> = metrics
            .lines()
            .filter(|l| l.starts_with(&head))
            .filter_map(|l| l.split_once(&tail)?.1.trim().parse().ok())
            .collect();
        let first = *values.first()?;
        (values.len() == topology::FAMILIES.len() && values.iter().all(|v| *v == first))
            .then_some(first)
    };
    let pods = topology::pods();
    for node in topology::nodes() {
        if up("node-proxy", &node.name, topology::NODE_HEALTH_PORT) != Some(1.0) {
            return Err(format!("{} not up yet", node.name));
        }
        for svc in topology::services() {
            let Some(port) = svc.health_check_node_port else {
                continue;
            };
            let local = pods
                .iter()
                .any(|p| p.node == node.index && svc.pods.contains(&p.name.as_str()));
            let want = if local { 1.0 } else { 0.0 };
            if up("service-local", &node.name, port) != Some(want) {
                return Err(format!(
                    "{}'s health check on {} is not {want} yet",
                    svc.name, node.name
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The edge's metric lines for node `n`'s targets of `check` on
    /// `port`, in both families.
    fn lines(check: &str, n: u8, port: u16, up: [u8; 2]) -> String {
        format!(
            "portico_edge_backend_up{{check=\"{check}\",node=\"node-{n}\",target=\"10.88.0.1{n}:{port}\"}} {}\n\
             portico_edge_backend_up{{check=\"{check}\",node=\"node-{n}\",target=\"[fd00:88::1{n}]:{port}\"}} {}\n",
            up[0], up[1]
        )
    }

    #[test]
    fn health_is_settled_only_with_the_expected_view_in_both_families() {
        let mut text = String::new();
        for n in 1..=3 {
            text.push_str(&lines("node-proxy", n, 10256, [1, 1]));
        }
        assert!(health_settled(&text).is_err(), "no Local checks yet");
        for (n, up) in [(1, 1), (2, 1), (3, 0)] {
            text.push_str(&lines("service-local", n, 32081, [up, up]));
        }
        assert_eq!(health_settled(&text), Ok(()));
        let wrong = text.replace("10.88.0.13:32081\"} 0", "10.88.0.13:32081\"} 1");
        assert!(health_settled(&wrong).is_err(), "node-3 has no local pod");
        let one_family: String = text
            .lines()
            .filter(|l| !l.contains("[fd00:88::12]:10256"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(
            health_settled(&one_family).is_err(),
            "node-2 is not checked in IPv6"
        );
    }

    #[test]
    fn a_backend_is_up_or_down_when_its_families_agree() {
        let text = lines("service-local", 2, 32081, [1, 1]);
        assert_eq!(backend_up(&text, "node-2", 32081), Some(true));
        assert_eq!(backend_states(&text, "node-2", 32081), [true, true]);
        let turning = lines("service-local", 2, 32081, [0, 1]);
        assert_eq!(backend_up(&turning, "node-2", 32081), None);
        let down = lines("service-local", 2, 32081, [0, 0]);
        assert_eq!(backend_up(&down, "node-2", 32081), Some(false));
        assert_eq!(backend_up(&down, "node-1", 32081), None, "not checked");
        assert!(backend_states(&down, "node-2", 10256).is_empty());
    }
}
