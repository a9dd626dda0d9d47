//! What the lab tells a person: what to try once `portico-lab up` has
//! built it ([`Lab::summary`]), and what runs ([`status`]).

use std::fs;
use std::path::{Path, PathBuf};

use crate::api::{self, ApiClient};
use crate::command;
use crate::procs;
use crate::topology::{self, Client, Names, Policy};

use super::teardown::owned_namespaces;
use super::{api_client, Lab, LabError};

impl Lab {
    /// What to try, for `portico-lab up`.
    pub fn summary(&self) -> String {
        let n = &self.names;
        let total = self
            .timings
            .iter()
            .find(|(what, _)| *what == "total")
            .map(|(_, d)| *d)
            .unwrap_or_default();
        let held = if self.vrrp {
            format!(
                "VIPs on the eth0 of whichever of {} and {} keepalived makes active, port {}",
                n.edge_n(1),
                n.edge_n(2),
                topology::SERVICE_PORT
            )
        } else if self.edges > 1 {
            format!(
                "VIPs announced by {} edges ({} ... {}) through {}, port {}",
                self.edges,
                n.edge_n(1),
                n.edge_n(self.edges),
                n.router(),
                topology::SERVICE_PORT
            )
        } else {
            format!(
                "VIPs on {}'s eth0, port {}",
                n.edge(),
                topology::SERVICE_PORT
            )
        };
        let mut out = format!(
            "Portico lab {:?} is up ({:.1} s).\n\nServices ({held}):\n",
            n.prefix(),
            total.as_secs_f64(),
        );
        for svc in topology::services() {
            let vip = addresses(self.vips.get(svc.name).map_or(&[][..], Vec::as_slice));
            let what = match (svc.policy, svc.name) {
                (Policy::Local, _) => {
                    "Local: pods on node-1 and node-2 only; PROXY v2 tells them the client"
                        .to_string()
                }
                (_, "restricted") => format!(
                    "source ranges {} {}: {} gets in, {} does not",
                    topology::SOURCE_RANGE,
                    topology::SOURCE_RANGE6,
                    n.client(Client::Inside),
                    n.client(Client::Outside)
                ),
                (_, "sticky") => {
                    "sessionAffinity ClientIP: one client, one node and pod".to_string()
                }
                (_, "web6") => "like web, IPv6 only".to_string(),
                _ => "Cluster: pods on every node, masqueraded by the nodes".to_string(),
            };
            line(&mut out, format!("  {:<11} {vip:<38} {what}", svc.name));
        }
        self.what_to_try(&mut out);
        out
    }

    /// The commands to try, the logs, and how to stop it.
    fn what_to_try(&self, out: &mut String) {
        let n = &self.names;
        let web = self
            .vip("web")
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let restricted = self
            .vip("restricted")
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let web6 = self
            .vip_of("web", topology::IpFamily::V6)
            .map(|a| a.to_string())
            .unwrap_or_default();
        let lab_bin = self.binaries.lab.display();
        let edge_bin = self.binaries.edge.display();
        let cin = n.client(Client::Inside);
        let cout = n.client(Client::Outside);
        out.push_str("\nTry:\n");
        if command::find_on_path("curl").is_some() {
            line(out, format!("  ip netns exec {cin} curl -s http://{web}/"));
            line(
                out,
                format!(
                    "  ip netns exec {cin} curl -gs 'http://{web6}/'   # the same Service in IPv6"
                ),
            );
            line(
                out,
                format!("  ip netns exec {cout} curl -sv http://{restricted}/   # closed: outside the source range"),
            );
        }
        line(
            out,
            format!("  {lab_bin} client --from inside --count 20 {web}:80"),
        );
        line(
            out,
            format!("  {lab_bin} client --from outside {restricted}:80"),
        );
        line(
            out,
            format!("  ip netns exec {} {edge_bin} status", n.edge()),
        );
        line(
            out,
            format!(
                "  ip netns exec {} curl -s http://127.0.0.1:{}/metrics",
                n.edge(),
                topology::EDGE_METRICS_PORT
            ),
        );
        if self.vrrp {
            line(
                out,
                format!(
                    "  ip -n {} -br addr show eth0   # the VIPs, on the active edge",
                    n.edge_n(1)
                ),
            );
            line(
                out,
                format!(
                    "  ip netns exec {} {edge_bin} drain   # keepalived moves the VIPs to {}",
                    n.edge_n(1),
                    n.edge_n(2)
                ),
            );
        } else if self.edges > 1 {
            line(
                out,
                format!(
                    "  ip -n {} route show {web}   # one next hop per edge",
                    n.router()
                ),
            );
            line(
                out,
                format!(
                    "  ip netns exec {} {edge_bin} drain   # then undrain",
                    n.edge_n(2)
                ),
            );
        }
        line(
            out,
            format!(
                "  ip netns exec {}-node-1 nft list table inet portico",
                n.prefix()
            ),
        );
        line(
            out,
            format!(
                "  ip netns exec {} kubectl --kubeconfig {}/{} get svc -o wide   # if kubectl is installed",
                n.edge(),
                self.state.display(),
                api::KUBECONFIG
            ),
        );
        line(
            out,
            format!(
                "\nLogs: {}/logs/ ({})",
                self.state.display(),
                self.processes
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        line(out, format!("Status: {lab_bin} status"));
        line(out, format!("Stop: {lab_bin} down"));
    }
}

/// What runs in the lab `prefix`, for `portico-lab status`.
pub fn status(prefix: &str, state_dir: &Path) -> Result<String, LabError> {
    let names = Names::new(prefix);
    let namespaces = owned_namespaces(&names)?;
    if namespaces.is_empty() {
        return Ok(format!("lab {prefix:?}: not up\n"));
    }
    let mut out = format!("lab {prefix:?}: {} namespaces\n", namespaces.len());
    let run = state_dir.join("run");
    let mut pidfiles: Vec<PathBuf> = fs::read_dir(&run)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    pidfiles.retain(|p| p.extension().is_some_and(|e| e == "pid"));
    pidfiles.sort();
    out.push_str("processes:\n");
    for path in pidfiles {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let state = match procs::pid_alive(&path) {
            Some(pid) => format!("running (pid {pid})"),
            None => "NOT RUNNING".to_string(),
        };
        line(
            &mut out,
            format!(
                "  {name:<16} {state:<22} {}",
                procs::log_path(state_dir, &name).display()
            ),
        );
    }
    out.push_str("services:\n");
    match api_client(&names).services() {
        Ok(services) => {
            for s in services {
                let name = s["metadata"]["name"].as_str().unwrap_or("?");
                let vips = addresses(&ApiClient::ingress_ips(&s));
                let policy = s["spec"]["externalTrafficPolicy"].as_str().unwrap_or("?");
                line(&mut out, format!("  {name:<11} {policy:<8} {vips}"));
            }
        }
        Err(e) => {
            line(&mut out, format!("  API server not answering: {e}"));
        }
    }
    Ok(out)
}

/// A Service's addresses, space-separated; `(no address)` without any.
fn addresses(ips: &[std::net::IpAddr]) -> String {
    if ips.is_empty() {
        return "(no address)".to_string();
    }
    let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
    ips.join(" ")
}

/// Appends `text` and a newline.
fn line(out: &mut String, text: String) {
    out.push_str(&text);
    out.push('\n');
}
