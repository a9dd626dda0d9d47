//! The scale run's namespaces: client, lb, the API server and two nodes
//! (each with its [`node_server`](super::node_server)), built by
//! [`Scale::up`] with the Nodes created in the API server;
//! [`Scale::teardown`], dropping the [`Scale`], or [`down`] removes them
//! again. Also the helpers the measurements share: bounded waits, commands
//! in a namespace, config files written whole.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::api::{self, ApiClient};
use crate::command::{self, raise_open_files};
use crate::netns::{self, ip_line};
use crate::procs::{self, Spawned};

use super::node_server::{node_ruleset, NodeServer};
use super::probe::probe;
use super::vip_prefix;
use super::{
    node_object, node_ports, ScaleError, ScaleOptions, API_IP, API_PORT, CLIENT_IP,
    COMMAND_TIMEOUT, LB_CLIENT_SIDE, LB_NODE_SIDE, MAX_SERVICES, NODES, NODE_PORT_BASE, ROLES,
    STOP_GRACE,
};

/// The namespaces, the API server and the node servers. Dropping it stops
/// everything and removes the namespaces.
pub struct Scale {
    pub(super) opts: ScaleOptions,
    api_server: Option<Spawned>,
    node_servers: Vec<NodeServer>,
    /// Each Service's current nodePorts.
    pub(super) ports: Vec<[u16; 3]>,
    removed: bool,
}

impl Scale {
    /// The namespace of `role` in this run.
    pub(super) fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.opts.prefix)
    }

    /// Builds the topology and starts the node servers and the API server.
    pub fn up(opts: ScaleOptions) -> Result<Scale, ScaleError> {
        down(&opts.prefix, &opts.state_dir)?;
        raise_open_files();
        let services = opts.services.clamp(1, MAX_SERVICES);
        let mut scale = Scale {
            ports: (0..services).map(node_ports).collect(),
            opts,
            api_server: None,
            node_servers: Vec::new(),
            removed: false,
        };
        scale.opts.services = services;
        scale.build()?;
        Ok(scale)
    }

    fn build(&mut self) -> Result<(), ScaleError> {
        for dir in ["logs", "run"] {
            create_dir(&self.opts.state_dir.join(dir))?;
        }
        self.build_links()?;
        self.start_nodes()?;
        self.start_api_server()
    }

    /// The namespaces, the client's link to the lb, and the lb's bridge to
    /// the API server and the nodes.
    fn build_links(&self) -> Result<(), ScaleError> {
        let (client, lb, api) = (self.ns("client"), self.ns("lb"), self.ns("api"));
        let a = self.opts.addrs();
        let (lb_client_side, lb_node_side) = (a.of(LB_CLIENT_SIDE), a.of(LB_NODE_SIDE));
        for ns in [&client, &lb] {
            netns::add(ns)?;
        }
        for cmd in [
            format!("-n {lb} link add eth0 type veth peer name eth0 netns {client}"),
            format!("-n {lb} addr add {} dev eth0", a.on_link(lb_client_side)),
            format!("-n {lb} link set eth0 up"),
            format!(
                "-n {client} addr add {} dev eth0",
                a.on_link(a.of(CLIENT_IP))
            ),
            format!("-n {client} link set eth0 up"),
            format!("-n {client} route add default via {lb_client_side}"),
            format!("-n {lb} link add br0 type bridge"),
            format!("-n {lb} addr add {} dev br0", a.on_link(lb_node_side)),
            format!("-n {lb} link set br0 up"),
        ] {
            ip_line(&cmd)?;
        }
        let mut leaves: Vec<(String, String, IpAddr)> =
            vec![(api.clone(), "api".into(), a.of(API_IP))];
        for (k, ip) in NODES.iter().enumerate() {
            leaves.push((
                self.ns(&format!("node-{}", k + 1)),
                format!("n{}", k + 1),
                a.of(*ip),
            ));
        }
        for (ns, link, ip) in &leaves {
            netns::add(ns)?;
            for cmd in [
                format!("-n {lb} link add {link} type veth peer name eth0 netns {ns}"),
                format!("-n {lb} link set {link} master br0 up"),
                format!("-n {ns} addr add {} dev eth0", a.on_link(*ip)),
                format!("-n {ns} link set eth0 up"),
                format!("-n {ns} route add default via {lb_node_side}"),
            ] {
                ip_line(&cmd)?;
            }
        }
        Ok(())
    }

    /// Each node's nodePort redirect and server; returns when every node
    /// answers on a nodePort.
    fn start_nodes(&mut self) -> Result<(), ScaleError> {
        let lb = self.ns("lb");
        let a = self.opts.addrs();
        for k in 0..NODES.len() {
            let ns = self.ns(&format!("node-{}", k + 1));
            run_in(&ns, "nft", &["-f", "-"], Some(&node_ruleset(a)))?;
            let name = format!("node-{}", k + 1);
            self.node_servers.push(NodeServer::start(&ns, &name, a)?);
        }
        // Every node answers on a nodePort before anything else starts.
        for (k, ip) in NODES.iter().enumerate() {
            let target = SocketAddr::new(a.of(*ip), NODE_PORT_BASE);
            let got = netns::in_netns(&lb, || probe(target))?;
            match got {
                Ok((node, port)) if node == format!("node-{}", k + 1) && port == NODE_PORT_BASE => {
                }
                other => {
                    return Err(ScaleError::Timeout {
                        what: format!("node-{} answering its nodePorts", k + 1),
                        limit: Duration::ZERO,
                        detail: format!("{other:?}"),
                    })
                }
            }
        }
        Ok(())
    }

    /// The API server in its namespace; returns when it answers, with the
    /// Nodes created.
    fn start_api_server(&mut self) -> Result<(), ScaleError> {
        let state = self.opts.state_dir.display().to_string();
        let api_addr = self.api_addr();
        self.api_server = Some(procs::spawn(
            &self.opts.state_dir,
            "api-server",
            &self.ns("api"),
            &self.opts.lab_bin,
            &[
                "api-server".into(),
                "--listen".into(),
                api_addr.to_string(),
                "--state-dir".into(),
                state,
            ],
        )?);
        let kubeconfig = self.opts.state_dir.join(api::KUBECONFIG);
        let client = self.api();
        let log = procs::log_path(&self.opts.state_dir, "api-server");
        wait_until("the API server", Duration::from_secs(20), || {
            if !kubeconfig.is_file() {
                return Err(format!(
                    "no kubeconfig yet; log: {}",
                    procs::log_tail(&log, 10)
                ));
            }
            client
                .get("/version")
                .map(|_| ())
                .map_err(|e| e.to_string())
        })?;
        for k in 0..NODES.len() {
            client.create("/api/v1/nodes", &node_object(self.opts.addrs(), k))?;
        }
        Ok(())
    }
    /// Where the API server listens.
    fn api_addr(&self) -> SocketAddr {
        SocketAddr::new(self.opts.addrs().of(API_IP), API_PORT)
    }

    /// A client of the API server (connecting from its namespace).
    pub(super) fn api(&self) -> ApiClient {
        ApiClient::new(&self.ns("api"), self.api_addr())
    }

    /// `program args`, pinned to the contender's CPU if there is one.
    pub(super) fn pinned(&self, program: &str, args: &[String]) -> (String, Vec<String>) {
        let cpu = self.opts.balancer_cpu.map(|c| c.to_string());
        command::pinned(cpu.as_deref(), program, args)
    }

    /// Stops whatever runs in the lb namespace and removes the VIPs from
    /// its `eth0`.
    pub(super) fn stop_contender(&self, process: Option<Spawned>) -> Result<(), ScaleError> {
        let lb = self.ns("lb");
        procs::stop_all(std::slice::from_ref(&lb), STOP_GRACE)?;
        if let Some(mut p) = process {
            if let Err(e) = p.child.wait() {
                tracing::warn!(process = %p.name, error = %e, "cannot reap a contender");
            }
        }
        let vips = vip_prefix(self.opts.addrs());
        ip_line(&format!("-n {lb} addr flush dev eth0 to {vips}"))?;
        Ok(())
    }

    /// Stops everything and removes the namespaces and the state directory.
    pub fn teardown(&mut self) -> Result<(), ScaleError> {
        self.removed = true;
        for s in &self.node_servers {
            s.stop();
        }
        if let Some(dir) = &self.opts.keep_logs {
            if let Err(e) = copy_logs(&self.opts.state_dir.join("logs"), dir) {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot keep the logs");
            }
        }
        let result = down(&self.opts.prefix, &self.opts.state_dir);
        if let Some(mut api) = self.api_server.take() {
            if let Err(e) = api.child.wait() {
                tracing::warn!(error = %e, "cannot reap the API server");
            }
        }
        for s in self.node_servers.drain(..) {
            s.join();
        }
        result
    }
}

impl Drop for Scale {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = self.teardown() {
                tracing::error!(error = %e, prefix = %self.opts.prefix, "scale teardown failed");
            }
        }
    }
}

/// Removes every namespace of the scale run `prefix` (stopping what runs
/// in them) and its state directory. Safe when nothing is there.
pub fn down(prefix: &str, state_dir: &Path) -> Result<(), ScaleError> {
    procs::remove_namespaces(prefix, &ROLES, STOP_GRACE)?;
    if state_dir.exists() {
        fs::remove_dir_all(state_dir).map_err(|source| ScaleError::File {
            path: state_dir.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// Calls `check` until it succeeds or `limit` passes.
pub(super) fn wait_until(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) -> Result<(), ScaleError> {
    let deadline = Instant::now() + limit;
    loop {
        let last = match check() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(ScaleError::Timeout {
                what: what.to_string(),
                limit,
                detail: last,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `program args` in namespace `ns` with `stdin`, bounded; its stdout.
pub(super) fn run_in(
    ns: &str,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, ScaleError> {
    Ok(command::run_in(ns, program, args, stdin, COMMAND_TIMEOUT)?)
}

/// Copies every file of `from` into `to` (created).
fn copy_logs(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

/// Creates directory `path` and its parents.
fn create_dir(path: &Path) -> Result<(), ScaleError> {
    fs::create_dir_all(path).map_err(|source| ScaleError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `text` to `path`.
pub(super) fn write(path: &Path, text: &str) -> Result<(), ScaleError> {
    // Written whole, then renamed: a reload never reads half a config.
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|source| ScaleError::File {
            path: path.to_path_buf(),
            source,
        })
}
