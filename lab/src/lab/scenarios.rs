//! What the failure scenarios change, each as a cluster or an operator
//! would: a node's link, a Node's labels, a Service's EndpointSlice, the
//! edge's configuration (reload) and binary (upgrade).

use std::fs;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::netns::{in_netns, ip_line};
use crate::objects;
use crate::procs;
use crate::topology::{self, NodeSpec};

use super::up::write_file;
use super::{Lab, LabError};

impl Lab {
    /// Cuts a node's cluster link or mends it, at the switch: its port on
    /// the cluster bridge goes down or up, so the node's `eth0` loses its
    /// carrier, as when a cable is pulled. To the edge and the other nodes
    /// it is gone; the node keeps its addresses and routes. (Taking the
    /// node's own `eth0` down instead would be an operator's act: the
    /// kernel then drops its IPv6 addresses and its routes through it.)
    pub fn set_node_link(&self, node: &NodeSpec, up: bool) -> Result<(), LabError> {
        let net = self.names.net();
        let state = if up { "up" } else { "down" };
        ip_line(&format!("-n {net} link set clu-{} {state}", node.name))?;
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`) a label of a Node through the API
    /// server, as `kubectl label` does.
    pub fn label_node(
        &self,
        node: &NodeSpec,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), LabError> {
        let patch = serde_json::json!({"metadata": {"labels": {key: value}}});
        self.api()
            .merge_patch(&format!("{}/{}", objects::NODES_PATH, node.name), &patch)?;
        Ok(())
    }

    /// Makes a Service's EndpointSlices (one per family) list exactly
    /// `pods` (ready), as the EndpointSlice controller does when pods come
    /// and go.
    pub fn set_endpoints(&self, service: &str, pods: &[&'static str]) -> Result<(), LabError> {
        self.set_endpoints_terminating(service, pods, &[])
    }

    /// [`Lab::set_endpoints`], with the pods in `terminating` listed as the
    /// EndpointSlice controller lists a pod being deleted: not ready,
    /// serving, terminating.
    pub fn set_endpoints_terminating(
        &self,
        service: &str,
        pods: &[&'static str],
        terminating: &[&str],
    ) -> Result<(), LabError> {
        let mut svc = topology::services()
            .into_iter()
            .find(|s| s.name == service)
            .ok_or_else(|| LabError::NoSuchProcess(format!("Service {service}")))?;
        svc.pods = pods.to_vec();
        for slice in objects::slices_terminating(&svc, &topology::pods(), terminating) {
            let patch = serde_json::json!({"endpoints": slice["endpoints"]});
            self.api().merge_patch(
                &format!(
                    "{}/{}",
                    objects::slices_path(),
                    slice["metadata"]["name"].as_str().unwrap_or_default()
                ),
                &patch,
            )?;
        }
        Ok(())
    }

    /// Reloads the edge: writes `config` to its file (atomically), then
    /// sends it SIGHUP, and waits (at most `limit`) until its
    /// `portico_edge_reloads_total{result="ok"}` has grown.
    pub fn reload_edge(&mut self, config: &str, limit: Duration) -> Result<(), LabError> {
        let before = self.reloads_ok()?;
        let path = self.edge_config_path();
        let tmp = self.state.join("edge.yaml.tmp");
        write_file(&tmp, config)?;
        fs::rename(&tmp, &path).map_err(|source| LabError::File { path, source })?;
        let edge = self.edge.clone();
        self.signal(&edge, Signal::SIGHUP)?;
        self.wait(
            "the edge to apply the reloaded configuration",
            limit,
            |lab: &Lab| {
                let now = lab.reloads_ok().map_err(|e| e.to_string())?;
                if now > before {
                    Ok(())
                } else {
                    Err(format!("reloads_total{{result=\"ok\"}} still {now}"))
                }
            },
        )
    }

    /// The edge's `portico_edge_reloads_total{result="ok"}`.
    fn reloads_ok(&self) -> Result<f64, LabError> {
        let text = self.edge_metrics()?;
        Ok(text
            .lines()
            .find(|l| l.starts_with("portico_edge_reloads_total{") && l.contains("result=\"ok\""))
            .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
            .unwrap_or(0.0))
    }

    /// Upgrades the edge binary in place, as the README says: starts a new
    /// `portico-edge run --takeover` with the same arguments, waits until
    /// its upgrade socket listens, sends the old one SIGQUIT, and waits
    /// (each step at most `limit`) until the new one runs. The old one
    /// drains in the background; [`Lab::wait_exit`] with its name waits for
    /// it. Returns the old process's name.
    pub fn upgrade_edge(&mut self, limit: Duration) -> Result<String, LabError> {
        let old = self.edge.clone();
        let (ns, program, mut args) = {
            let p = self.running(&old)?;
            (p.ns.clone(), p.program.clone(), p.args.clone())
        };
        args.push("--takeover".into());
        let socket = self.state.join("run").join("edge-upgrade.sock");
        self.edge_generation += 1;
        let new = format!("edge-{}", self.edge_generation);
        let spawned = procs::spawn(&self.state, &new, &ns, &program, &args)?;
        self.processes.push(spawned);
        let edge_ns = self.names.edge();
        self.wait(
            "the new edge's upgrade socket to listen",
            limit,
            |_: &Lab| unix_socket_listening(&edge_ns, &socket),
        )?;
        self.signal(&old, Signal::SIGQUIT)?;
        // From here the old edge exits when it has drained: not a failure.
        let i = self
            .processes
            .iter()
            .position(|p| p.name == old)
            .ok_or_else(|| LabError::NoSuchProcess(old.clone()))?;
        let draining = self.processes.remove(i);
        let old_log = draining.log.clone();
        self.stopped.push(draining);
        let new_log = procs::log_path(&self.state, &new);
        self.wait(
            "the old edge to hand its listeners over",
            limit,
            |_: &Lab| log_has(&old_log, "handover done"),
        )?;
        self.wait("the new edge to run", limit, |_: &Lab| {
            log_has(&new_log, "edge running")
        })?;
        self.edge = new;
        Ok(old)
    }
}

/// Whether a log file holds `text`.
fn log_has(log: &Path, text: &str) -> Result<(), String> {
    if fs::read_to_string(log).is_ok_and(|t| t.contains(text)) {
        Ok(())
    } else {
        Err(format!("{} has no {text:?} yet", log.display()))
    }
}

/// Whether a unix socket at `path` is listening in namespace `ns`, as the
/// kernel reports it (connecting to find out would use up the edge's one
/// upgrade accept).
fn unix_socket_listening(ns: &str, path: &Path) -> Result<(), String> {
    let table = in_netns(ns, || fs::read_to_string("/proc/thread-self/net/unix"))
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let wanted = path.display().to_string();
    // Num RefCount Protocol Flags Type St Inode Path; Flags 00010000 = listening.
    let listening = table.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 8 && f[3] == "00010000" && f[7] == wanted
    });
    if listening {
        Ok(())
    } else {
        Err(format!("{wanted} is not listening yet"))
    }
}
