//! Building, running and removing one lab: [`Lab::up`] creates the
//! namespaces and links of [`crate::topology`], starts the API server, the
//! edge, the node agents and the pod servers in the background, creates the
//! Kubernetes objects through the API server, and waits until traffic flows
//! from the inside client through the edge to the pods. [`down`] removes
//! every trace of a lab by its prefix; a [`Lab`] does so when dropped (also
//! when a test panics) unless [`Lab::detach`]ed, as `portico-lab up` does.

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::api::{self, ApiClient, ApiClientError};
use crate::command;
use crate::netns::{self, in_netns, ip_line, NetnsError};
use crate::objects;
use crate::pod::{self, Answer, ClientError};
use crate::procs::{self, ProcError, Spawned};
use crate::topology::{self, Client, Names, NodeSpec, Policy};

/// The prefix of the lab `portico-lab` manages.
pub const DEFAULT_PREFIX: &str = "plab";
/// Its state directory.
pub const DEFAULT_STATE_DIR: &str = "/run/portico-lab";
/// The file that marks a state directory as the lab's (so `down` removes
/// only directories the lab made).
const MARKER: &str = "portico-lab.state";
/// How long processes get to exit on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often readiness is re-checked.
const RECHECK: Duration = Duration::from_millis(50);

/// A lab failure.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The prefix cannot name namespaces.
    #[error("invalid lab prefix {0:?}: 1-24 of a-z, 0-9 and '-', starting with a letter")]
    BadPrefix(String),
    /// A lab with this prefix exists already.
    #[error(
        "a lab with prefix {prefix:?} is up already ({namespaces:?}); run `portico-lab down` first"
    )]
    AlreadyUp {
        /// The prefix.
        prefix: String,
        /// Its namespaces.
        namespaces: Vec<String>,
    },
    /// The state directory holds something that is not the lab's.
    #[error("{0} exists and is not a lab state directory; not touching it")]
    ForeignStateDir(PathBuf),
    /// A binary was not found.
    #[error("cannot find {name}: looked next to {beside} and on PATH")]
    BinaryNotFound {
        /// The program.
        name: String,
        /// The directory looked in first.
        beside: PathBuf,
    },
    /// A state file could not be written or removed.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No lab process (or Service) of that name.
    #[error("no such lab process: {0}")]
    NoSuchProcess(String),
    /// A process could not be signalled.
    #[error("cannot send {signal} to {name}: {errno}")]
    Signal {
        /// The process.
        name: String,
        /// The signal.
        signal: Signal,
        /// Why.
        errno: nix::errno::Errno,
    },
    /// Network namespace setup failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A process could not be started or stopped.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// A request to the API server failed.
    #[error(transparent)]
    Api(#[from] ApiClientError),
    /// The lab's own nftables counters could not be set up or read.
    #[error("nftables in {ns}: {what}")]
    Observe {
        /// The namespace.
        ns: String,
        /// What went wrong.
        what: String,
    },
    /// Something did not become ready in time.
    #[error("timed out after {limit:?} waiting for {what}{diagnostics}")]
    NotReady {
        /// What.
        what: String,
        /// The limit.
        limit: Duration,
        /// The last problem seen, processes that exited, and their logs.
        diagnostics: String,
    },
}

/// The programs the lab runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `portico-lab` itself (its hidden `api-server` and `pod-server`).
    pub lab: PathBuf,
    /// `portico-edge`.
    pub edge: PathBuf,
    /// `portico-node-agent`.
    pub agent: PathBuf,
}

impl Binaries {
    /// `lab`, and the edge and agent binaries next to it, else on PATH.
    pub fn beside(lab: PathBuf) -> Result<Binaries, LabError> {
        let dir = lab.parent().map(Path::to_path_buf).unwrap_or_default();
        let find = |name: &str| -> Result<PathBuf, LabError> {
            let here = dir.join(name);
            if here.is_file() {
                return Ok(here);
            }
            command::find_on_path(name).ok_or_else(|| LabError::BinaryNotFound {
                name: name.to_string(),
                beside: dir.clone(),
            })
        };
        Ok(Binaries {
            edge: find("portico-edge")?,
            agent: find("portico-node-agent")?,
            lab,
        })
    }
}

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Every namespace is `<prefix>-<role>`; two labs with different
    /// prefixes live side by side.
    pub prefix: String,
    /// Pid files, logs, the kubeconfig and the edge's config. Removed by `down`.
    pub state_dir: PathBuf,
    /// The programs.
    pub binaries: Binaries,
    /// How long `up` waits for traffic to flow.
    pub ready_timeout: Duration,
    /// The edge's `settings.proxy.drainTimeout`: how long connections to a
    /// removed node (and, at an upgrade or stop, all) may run on.
    pub drain_timeout: Duration,
}

impl LabOptions {
    /// The options of `portico-lab up`.
    pub fn standard(binaries: Binaries) -> LabOptions {
        LabOptions {
            prefix: DEFAULT_PREFIX.to_string(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            binaries,
            ready_timeout: Duration::from_secs(60),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// The edge's drain timeout unless [`LabOptions::drain_timeout`] says otherwise.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// What [`down`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DownReport {
    /// Namespaces deleted.
    pub namespaces: usize,
    /// Processes stopped.
    pub processes: usize,
    /// Whether the state directory was removed.
    pub state_removed: bool,
}

/// A running lab. Dropping it tears it down (printing the processes' logs
/// first when the thread is panicking), unless it was detached.
#[derive(Debug)]
pub struct Lab {
    names: Names,
    state: PathBuf,
    processes: Vec<Spawned>,
    /// Processes stopped on purpose (by a scenario), kept to start again.
    stopped: Vec<Spawned>,
    /// The name of the running edge process (`edge`, then `edge-2`... after
    /// upgrades).
    edge: String,
    /// How many edge processes were started.
    edge_generation: u32,
    drain_timeout: Duration,
    vips: BTreeMap<String, IpAddr>,
    timings: Vec<(&'static str, Duration)>,
    binaries: Binaries,
    detached: bool,
}

impl Lab {
    /// Builds the lab and waits until every Service answers the inside
    /// client through the edge. On failure everything made so far is removed.
    pub fn up(opts: &LabOptions) -> Result<Lab, LabError> {
        if !topology::valid_prefix(&opts.prefix) {
            return Err(LabError::BadPrefix(opts.prefix.clone()));
        }
        let names = Names::new(&opts.prefix);
        let existing = owned_namespaces(&names)?;
        if !existing.is_empty() {
            return Err(LabError::AlreadyUp {
                prefix: opts.prefix.clone(),
                namespaces: existing,
            });
        }
        // A state directory left by a lab whose namespaces are gone is stale.
        remove_state_dir(&opts.state_dir)?;
        if opts.state_dir.exists() {
            return Err(LabError::ForeignStateDir(opts.state_dir.clone()));
        }
        for dir in ["logs", "run"] {
            let path = opts.state_dir.join(dir);
            fs::create_dir_all(&path).map_err(|source| LabError::File { path, source })?;
        }
        let marker = opts.state_dir.join(MARKER);
        fs::write(&marker, format!("prefix={}\n", opts.prefix)).map_err(|source| {
            LabError::File {
                path: marker,
                source,
            }
        })?;
        let mut lab = Lab {
            names,
            state: opts.state_dir.clone(),
            processes: Vec::new(),
            stopped: Vec::new(),
            edge: "edge".to_string(),
            edge_generation: 1,
            drain_timeout: opts.drain_timeout,
            vips: BTreeMap::new(),
            timings: Vec::new(),
            binaries: opts.binaries.clone(),
            detached: false,
        };
        // From here on an error drops `lab`, which removes everything.
        lab.build(opts)?;
        Ok(lab)
    }

    fn build(&mut self, opts: &LabOptions) -> Result<(), LabError> {
        let started = Instant::now();
        let mut phase = Instant::now();
        let mut mark = |lab: &mut Lab, what: &'static str| {
            lab.timings.push((what, phase.elapsed()));
            phase = Instant::now();
        };
        self.build_network()?;
        mark(self, "network namespaces and links");

        let bins = &opts.binaries;
        let edge_ns = self.names.edge();
        let api_addr = SocketAddr::new(topology::EDGE_CLUSTER_IP.into(), topology::API_PORT);
        let state = self.state.display().to_string();
        self.start(
            "api-server",
            &edge_ns,
            &bins.lab,
            &[
                "api-server",
                "--listen",
                &api_addr.to_string(),
                "--state-dir",
                &state,
            ],
        )?;
        let kubeconfig = self.state.join(api::KUBECONFIG);
        let api = self.api();
        self.wait("the API server", Duration::from_secs(15), |_: &Lab| {
            if !kubeconfig.is_file() {
                return Err("no kubeconfig yet".to_string());
            }
            api.get("/version").map(|_| ()).map_err(|e| e.to_string())
        })?;
        mark(self, "API server");

        let config = self.state.join("edge.yaml");
        write_file(&config, &edge_config(&kubeconfig, opts.drain_timeout))?;
        let upgrade = self.state.join("run").join("edge-upgrade.sock");
        self.start(
            "edge",
            &edge_ns,
            &bins.edge,
            &[
                "run",
                "--config",
                &config.display().to_string(),
                "--upgrade-socket",
                &upgrade.display().to_string(),
            ],
        )?;
        for node in topology::nodes() {
            let ns = self.names.node(&node);
            self.start(
                &format!("agent-{}", node.name),
                &ns,
                &bins.agent,
                &[
                    "run",
                    "--kubernetes",
                    "--kubeconfig",
                    &kubeconfig.display().to_string(),
                    "--node-name",
                    &node.name,
                    "--health-addr",
                    &format!("0.0.0.0:{}", topology::NODE_HEALTH_PORT),
                    "--health-bind-ip",
                    &node.ip().to_string(),
                    "--metrics-addr",
                    &format!("127.0.0.1:{}", topology::AGENT_METRICS_PORT),
                ],
            )?;
        }
        for p in topology::pods() {
            let ns = self.names.pod(&p);
            self.start(
                &format!("pod-{}", p.name),
                &ns,
                &bins.lab,
                &[
                    "pod-server",
                    "--name",
                    &p.name,
                    "--node",
                    &format!("node-{}", p.node),
                    "--listen",
                    &format!("0.0.0.0:{}", topology::POD_PORT),
                ],
            )?;
        }
        mark(self, "processes started");

        let pods = topology::pods();
        for node in topology::nodes() {
            api.create(objects::NODES_PATH, &objects::node(&node))?;
        }
        for svc in topology::services() {
            api.create(&objects::services_path(), &objects::service(&svc))?;
            api.create(&objects::slices_path(), &objects::slice(&svc, &pods))?;
        }
        mark(self, "Kubernetes objects created");

        let wanted: Vec<&str> = topology::services().iter().map(|s| s.name).collect();
        let vips = self.wait(
            "the edge to write every Service's address",
            opts.ready_timeout,
            |_: &Lab| {
                let services = api.services().map_err(|e| e.to_string())?;
                let vips: BTreeMap<String, IpAddr> = services
                    .iter()
                    .filter_map(|s| {
                        let name = s["metadata"]["name"].as_str()?.to_string();
                        Some((name, ApiClient::ingress_ip(s)?))
                    })
                    .collect();
                match wanted.iter().find(|w| !vips.contains_key(**w)) {
                    Some(missing) => Err(format!("{missing} has no address yet")),
                    None => Ok(vips),
                }
            },
        )?;
        self.vips = vips;
        mark(self, "addresses assigned");

        let edge_ns = self.names.edge();
        self.wait(
            "the edge's health checks to settle (every node up; Local Services only where they have pods)",
            opts.ready_timeout,
            |_: &Lab| health_settled(&edge_metrics(&edge_ns).map_err(|e| e.to_string())?),
        )?;
        mark(self, "health checks settled");

        for name in wanted {
            let Some(addr) = self.vip(name) else {
                continue;
            };
            let client = self.names.client(Client::Inside);
            self.wait(
                &format!("{name} ({addr}) to answer the inside client"),
                opts.ready_timeout,
                |_: &Lab| {
                    in_netns(&client, || pod::get(addr))
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())
                },
            )?;
        }
        mark(self, "traffic flowing");
        self.timings.push(("total", started.elapsed()));
        Ok(())
    }

    /// The namespaces, bridges, veths, addresses, routes and forwarding.
    fn build_network(&mut self) -> Result<(), LabError> {
        let n = &self.names;
        let net = n.net();
        netns::add(&net)?;
        for br in ["br-pub", "br-clu"] {
            ip_line(&format!("-n {net} link add {br} type bridge"))?;
            ip_line(&format!("-n {net} link set {br} up"))?;
        }
        let attach = |bridge: &str, port: &str, ns: &str, iface: &str, cidr: &str| {
            for cmd in [
                format!("-n {net} link add {port} type veth peer name {iface} netns {ns}"),
                format!("-n {net} link set {port} master {bridge} up"),
                format!("-n {ns} addr add {cidr} dev {iface}"),
                format!("-n {ns} link set {iface} up"),
            ] {
                ip_line(&cmd)?;
            }
            Ok::<_, NetnsError>(())
        };
        let edge = n.edge();
        netns::add(&edge)?;
        let public = |ip: std::net::Ipv4Addr| format!("{ip}/{}", topology::PUBLIC_PREFIX);
        let cluster = |ip: std::net::Ipv4Addr| format!("{ip}/{}", topology::CLUSTER_PREFIX);
        attach(
            "br-pub",
            "pub-edge",
            &edge,
            "eth0",
            &public(topology::EDGE_PUBLIC_IP),
        )?;
        attach(
            "br-clu",
            "clu-edge",
            &edge,
            "eth1",
            &cluster(topology::EDGE_CLUSTER_IP),
        )?;
        for (client, port) in [(Client::Inside, "pub-cin"), (Client::Outside, "pub-cout")] {
            let ns = n.client(client);
            netns::add(&ns)?;
            let IpAddr::V4(ip) = client.ip() else {
                continue;
            };
            attach("br-pub", port, &ns, "eth0", &public(ip))?;
        }
        let nodes = topology::nodes();
        for node in &nodes {
            let ns = n.node(node);
            netns::add(&ns)?;
            forwarding_on(&ns)?;
            nft(&ns, &["-f", "-"], Some(&observe_table()))?;
            attach(
                "br-clu",
                &format!("clu-{}", node.name),
                &ns,
                "eth0",
                &cluster(node.ip()),
            )?;
            ip_line(&format!("-n {ns} link add br0 type bridge"))?;
            ip_line(&format!("-n {ns} addr add {}/24 dev br0", node.bridge_ip()))?;
            ip_line(&format!("-n {ns} link set br0 up"))?;
            for other in nodes.iter().filter(|o| o.index != node.index) {
                ip_line(&format!(
                    "-n {ns} route add {} via {}",
                    other.pod_cidr(),
                    other.ip()
                ))?;
            }
        }
        for p in topology::pods() {
            let ns = n.pod(&p);
            netns::add(&ns)?;
            let node_ns = n.ns(&format!("node-{}", p.node));
            let gateway = NodeSpec {
                index: p.node,
                name: String::new(),
            }
            .bridge_ip();
            let port = format!("vp-{}", p.name);
            for cmd in [
                format!("-n {node_ns} link add {port} type veth peer name eth0 netns {ns}"),
                format!("-n {node_ns} link set {port} master br0 up"),
                format!("-n {ns} addr add {}/24 dev eth0", p.ip),
                format!("-n {ns} link set eth0 up"),
                format!("-n {ns} route add default via {gateway}"),
            ] {
                ip_line(&cmd)?;
            }
        }
        Ok(())
    }

    fn start(
        &mut self,
        name: &str,
        ns: &str,
        program: &Path,
        args: &[&str],
    ) -> Result<(), LabError> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let spawned = procs::spawn(&self.state, name, ns, program, &args)?;
        self.processes.push(spawned);
        Ok(())
    }

    /// Calls `check` until it succeeds or `limit` passes; fails early when a
    /// lab process has exited.
    fn wait<T>(
        &mut self,
        what: &str,
        limit: Duration,
        mut check: impl FnMut(&Lab) -> Result<T, String>,
    ) -> Result<T, LabError> {
        let deadline = Instant::now() + limit;
        loop {
            let last = match check(self) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let exited = self.exited();
            if !exited.is_empty() || Instant::now() >= deadline {
                let mut diagnostics = format!("\nlast problem: {last}");
                for (name, status) in &exited {
                    diagnostics.push_str(&format!("\n{name} exited: {status}"));
                }
                diagnostics.push_str(&self.log_tails(15));
                return Err(LabError::NotReady {
                    what: what.to_string(),
                    limit,
                    diagnostics,
                });
            }
            std::thread::sleep(RECHECK);
        }
    }

    /// Processes that have exited, with their status.
    fn exited(&mut self) -> Vec<(String, String)> {
        self.processes
            .iter_mut()
            .filter_map(|p| match p.child.try_wait() {
                Ok(Some(status)) => Some((p.name.clone(), status.to_string())),
                Ok(None) => None,
                Err(e) => Some((p.name.clone(), format!("unknown ({e})"))),
            })
            .collect()
    }

    /// The last lines of every process's log, labelled.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for p in self.processes.iter().chain(&self.stopped) {
            out.push_str(&format!(
                "\n----- {} ({}) -----\n{}",
                p.name,
                p.log.display(),
                procs::log_tail(&p.log, lines)
            ));
        }
        out
    }

    /// Leaves the lab running when this value is dropped (`portico-lab up`).
    pub fn detach(mut self) {
        self.detached = true;
    }

    /// Removes the lab now (what dropping it does).
    pub fn teardown(&mut self) -> Result<DownReport, LabError> {
        let report = down(self.names.prefix(), &self.state);
        // Reap the processes this value started (all ended by now).
        for p in self.processes.iter_mut().chain(&mut self.stopped) {
            if let Err(e) = p.child.try_wait() {
                tracing::warn!(process = %p.name, error = %e, "cannot reap");
            }
        }
        self.processes.clear();
        self.stopped.clear();
        report
    }

    /// The namespace names.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// How long each phase of `up` took.
    pub fn timings(&self) -> &[(&'static str, Duration)] {
        &self.timings
    }

    /// The address (VIP:80) the edge assigned to a Service.
    pub fn vip(&self, service: &str) -> Option<SocketAddr> {
        self.vips
            .get(service)
            .map(|ip| SocketAddr::new(*ip, topology::SERVICE_PORT))
    }

    /// A client of the lab's API server (connecting from the edge namespace).
    pub fn api(&self) -> ApiClient {
        api_client(&self.names)
    }

    /// One new connection from `client` to `addr`.
    pub fn get(&self, client: Client, addr: SocketAddr) -> Result<Answer, ClientError> {
        self.get_many(client, addr, 1)
            .into_iter()
            .next()
            .unwrap_or(Err(ClientError::Closed { addr }))
    }

    /// `count` new connections, one after the other, from `client` to `addr`.
    ///
    /// # Panics
    /// If the client's namespace cannot be entered (the lab is broken).
    pub fn get_many(
        &self,
        client: Client,
        addr: SocketAddr,
        count: usize,
    ) -> Vec<Result<Answer, ClientError>> {
        let ns = self.names.client(client);
        match in_netns(&ns, || (0..count).map(|_| pod::get(addr)).collect()) {
            Ok(answers) => answers,
            Err(e) => panic!("{e}"),
        }
    }

    /// The edge's `/metrics` text.
    pub fn edge_metrics(&self) -> Result<String, LabError> {
        edge_metrics(&self.names.edge())
    }

    /// How many new TCP connections (SYNs) to `node_port` have arrived at
    /// node `node` (`node-1`...), counted by the lab's own nftables table
    /// `inet portico-lab` in the node's namespace, ahead of the agent's.
    pub fn syns_seen(&self, node: &str, node_port: u16) -> Result<u64, LabError> {
        syn_counter(&self.names.ns(node), node_port)
    }

    /// The names of the running lab processes (`api-server`, `edge`,
    /// `agent-node-1`, `pod-web-1`, ...).
    pub fn process_names(&self) -> Vec<String> {
        self.processes.iter().map(|p| p.name.clone()).collect()
    }

    /// The name of the running edge process (`edge`; `edge-2`, ... after
    /// [`Lab::upgrade_edge`]).
    pub fn edge_process(&self) -> &str {
        &self.edge
    }

    /// The edge's configuration file.
    pub fn edge_config_path(&self) -> PathBuf {
        self.state.join("edge.yaml")
    }

    /// The configuration the lab gave the edge.
    pub fn edge_config(&self) -> String {
        edge_config(&self.state.join(api::KUBECONFIG), self.drain_timeout)
    }

    /// The edge's drain timeout.
    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    fn running(&self, name: &str) -> Result<&Spawned, LabError> {
        self.processes
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| LabError::NoSuchProcess(name.to_string()))
    }

    /// Sends `signal` to lab process `name` (SIGHUP to reload the edge,
    /// SIGSTOP / SIGCONT to freeze the API server, ...). Does not wait.
    pub fn signal(&self, name: &str, signal: Signal) -> Result<(), LabError> {
        let p = self.running(name)?;
        let pid = Pid::from_raw(p.child.id() as i32);
        kill(pid, signal).map_err(|e| LabError::Signal {
            name: name.to_string(),
            signal,
            errno: e,
        })
    }

    /// Stops lab process `name` with `signal` and waits (at most `limit`)
    /// until it has exited; its exit status. It is kept to be started again
    /// by [`Lab::start_again`].
    pub fn stop_process(
        &mut self,
        name: &str,
        signal: Signal,
        limit: Duration,
    ) -> Result<ExitStatus, LabError> {
        self.signal(name, signal)?;
        self.wait_exit(name, limit)
    }

    /// Waits (at most `limit`) until lab process `name` (running, or
    /// draining after [`Lab::upgrade_edge`]) has exited on its own or after
    /// a signal; moves it to the stopped ones.
    pub fn wait_exit(&mut self, name: &str, limit: Duration) -> Result<ExitStatus, LabError> {
        if let Some(i) = self.processes.iter().position(|p| p.name == name) {
            let p = self.processes.remove(i);
            self.stopped.retain(|s| s.name != name);
            self.stopped.push(p);
        }
        let i = self
            .stopped
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| LabError::NoSuchProcess(name.to_string()))?;
        let deadline = Instant::now() + limit;
        loop {
            match self.stopped[i].child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(RECHECK),
                Ok(None) => {
                    return Err(LabError::NotReady {
                        what: format!("{name} to exit"),
                        limit,
                        diagnostics: self.log_tails(15),
                    })
                }
                Err(source) => {
                    return Err(LabError::Proc(ProcError::File {
                        name: name.to_string(),
                        path: self.stopped[i].log.clone(),
                        source,
                    }))
                }
            }
        }
    }

    /// Starts a process stopped by [`Lab::stop_process`] again, the same
    /// way (its log goes on in the same file). Does not wait for it to be
    /// ready: wait for what it provides.
    pub fn start_again(&mut self, name: &str) -> Result<(), LabError> {
        let i = self
            .stopped
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| LabError::NoSuchProcess(name.to_string()))?;
        let old = self.stopped.remove(i);
        let spawned = procs::spawn(&self.state, &old.name, &old.ns, &old.program, &old.args)?;
        self.processes.push(spawned);
        Ok(())
    }

    /// The processes of a node: its agent and its pods' servers.
    pub fn node_processes(node: &NodeSpec) -> Vec<String> {
        let mut names = vec![format!("agent-{}", node.name)];
        names.extend(
            topology::pods()
                .iter()
                .filter(|p| p.node == node.index)
                .map(|p| format!("pod-{}", p.name)),
        );
        names
    }

    /// Kills a node's agent and its pods' servers (SIGKILL: nothing is
    /// cleaned up, the agent's rules stay as a crashed node leaves them);
    /// returns when they are gone.
    pub fn kill_node(&mut self, node: &NodeSpec) -> Result<(), LabError> {
        for name in Lab::node_processes(node) {
            self.signal(&name, Signal::SIGKILL)?;
        }
        for name in Lab::node_processes(node) {
            self.wait_exit(&name, STOP_GRACE)?;
        }
        Ok(())
    }

    /// Starts a node's agent and pods again after [`Lab::kill_node`].
    pub fn revive_node(&mut self, node: &NodeSpec) -> Result<(), LabError> {
        for name in Lab::node_processes(node) {
            self.start_again(&name)?;
        }
        Ok(())
    }

    /// Takes a node's cluster link (`eth0`) down or up: to the edge and the
    /// other nodes it is gone, as a node that lost power or network.
    pub fn set_node_link(&self, node: &NodeSpec, up: bool) -> Result<(), LabError> {
        let ns = self.names.node(node);
        let state = if up { "up" } else { "down" };
        ip_line(&format!("-n {ns} link set eth0 {state}"))?;
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

    /// Makes a Service's EndpointSlice list exactly `pods` (ready), as the
    /// EndpointSlice controller does when pods come and go.
    pub fn set_endpoints(&self, service: &str, pods: &[&'static str]) -> Result<(), LabError> {
        let mut svc = topology::services()
            .into_iter()
            .find(|s| s.name == service)
            .ok_or_else(|| LabError::NoSuchProcess(format!("Service {service}")))?;
        svc.pods = pods.to_vec();
        let slice = objects::slice(&svc, &topology::pods());
        let patch = serde_json::json!({"endpoints": slice["endpoints"]});
        self.api().merge_patch(
            &format!(
                "{}/{}",
                objects::slices_path(),
                slice["metadata"]["name"].as_str().unwrap_or_default()
            ),
            &patch,
        )?;
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

    /// Whether a stopped (or draining) process has exited; its status.
    pub fn stopped_status(&mut self, name: &str) -> Option<ExitStatus> {
        self.stopped
            .iter_mut()
            .find(|p| p.name == name)
            .and_then(|p| p.child.try_wait().ok().flatten())
    }

    /// Calls `check` until it succeeds or `limit` passes, failing early
    /// (with every process's log) when a lab process exits.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        limit: Duration,
        check: impl FnMut(&Lab) -> Result<T, String>,
    ) -> Result<T, LabError> {
        self.wait(what, limit, check)
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

    /// What to try, for `portico-lab up`.
    pub fn summary(&self) -> String {
        let n = &self.names;
        let total = self
            .timings
            .iter()
            .find(|(what, _)| *what == "total")
            .map(|(_, d)| *d)
            .unwrap_or_default();
        let mut out = format!(
            "Portico lab {:?} is up ({:.1} s).\n\nServices (VIPs on {}'s eth0, port {}):\n",
            n.prefix(),
            total.as_secs_f64(),
            n.edge(),
            topology::SERVICE_PORT
        );
        for svc in topology::services() {
            let vip = self
                .vips
                .get(svc.name)
                .map(ToString::to_string)
                .unwrap_or_else(|| "-".into());
            let what = match (svc.policy, svc.name) {
                (Policy::Local, _) => {
                    "Local: pods on node-1 and node-2 only; PROXY v1 tells them the client"
                        .to_string()
                }
                (_, "restricted") => format!(
                    "source range {}: {} gets in, {} does not",
                    topology::SOURCE_RANGE,
                    n.client(Client::Inside),
                    n.client(Client::Outside)
                ),
                (_, "sticky") => {
                    "sessionAffinity ClientIP: one client, one node and pod".to_string()
                }
                _ => "Cluster: pods on every node, masqueraded by the nodes".to_string(),
            };
            line(&mut out, format!("  {:<11} {vip:<16} {what}", svc.name));
        }
        let web = self
            .vip("web")
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let restricted = self
            .vip("restricted")
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let lab_bin = self.binaries.lab.display();
        let edge_bin = self.binaries.edge.display();
        let cin = n.client(Client::Inside);
        let cout = n.client(Client::Outside);
        out.push_str("\nTry:\n");
        if command::find_on_path("curl").is_some() {
            line(
                &mut out,
                format!("  ip netns exec {cin} curl -s http://{web}/"),
            );
            line(
                &mut out,
                format!("  ip netns exec {cout} curl -sv http://{restricted}/   # closed: outside the source range"),
            );
        }
        line(
            &mut out,
            format!("  {lab_bin} client --from inside --count 20 {web}:80"),
        );
        line(
            &mut out,
            format!("  {lab_bin} client --from outside {restricted}:80"),
        );
        line(
            &mut out,
            format!("  ip netns exec {} {edge_bin} status", n.edge()),
        );
        line(
            &mut out,
            format!(
                "  ip netns exec {} curl -s http://127.0.0.1:{}/metrics",
                n.edge(),
                topology::EDGE_METRICS_PORT
            ),
        );
        line(
            &mut out,
            format!(
                "  ip netns exec {}-node-1 nft list table inet portico",
                n.prefix()
            ),
        );
        line(
            &mut out,
            format!(
                "  ip netns exec {} kubectl --kubeconfig {}/{} get svc -o wide   # if kubectl is installed",
                n.edge(),
                self.state.display(),
                api::KUBECONFIG
            ),
        );
        line(
            &mut out,
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
        line(&mut out, format!("Status: {lab_bin} status"));
        line(&mut out, format!("Stop: {lab_bin} down"));
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if std::thread::panicking() {
            eprintln!("lab {}: logs{}", self.names.prefix(), self.log_tails(40));
        }
        if let Err(e) = self.teardown() {
            eprintln!("lab {}: teardown failed: {e}", self.names.prefix());
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
/// target's port), if reported.
pub fn backend_up(metrics: &str, node: &str, port: u16) -> Option<bool> {
    let node = format!("node=\"{node}\"");
    let tail = format!(":{port}\"}}");
    metrics
        .lines()
        .filter(|l| l.starts_with("portico_edge_backend_up{") && l.contains(&node))
        .find_map(|l| l.split_once(&tail)?.1.trim().parse::<f64>().ok())
        .map(|v| v == 1.0)
}

/// Removes every trace of the lab `prefix`: its processes, namespaces (and
/// with them every link and address), and its state directory. Safe to run
/// when nothing is up.
pub fn down(prefix: &str, state_dir: &Path) -> Result<DownReport, LabError> {
    if !topology::valid_prefix(prefix) {
        return Err(LabError::BadPrefix(prefix.to_string()));
    }
    let names = Names::new(prefix);
    let namespaces = owned_namespaces(&names)?;
    let processes = procs::stop_all(&namespaces, STOP_GRACE)?;
    let mut failed = None;
    for ns in &namespaces {
        if let Err(e) = netns::del(ns) {
            // Go on with the others; report the first failure.
            failed.get_or_insert(e);
        }
    }
    if let Some(e) = failed {
        return Err(e.into());
    }
    let state_removed = remove_state_dir(state_dir)?;
    Ok(DownReport {
        namespaces: namespaces.len(),
        processes,
        state_removed,
    })
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
                let vip = ApiClient::ingress_ip(&s)
                    .map(|ip| ip.to_string())
                    .unwrap_or_else(|| "(no address)".into());
                let policy = s["spec"]["externalTrafficPolicy"].as_str().unwrap_or("?");
                line(&mut out, format!("  {name:<11} {vip:<16} {policy}"));
            }
        }
        Err(e) => {
            line(&mut out, format!("  API server not answering: {e}"));
        }
    }
    Ok(out)
}

fn api_client(names: &Names) -> ApiClient {
    ApiClient::new(
        &names.edge(),
        SocketAddr::new(topology::EDGE_CLUSTER_IP.into(), topology::API_PORT),
    )
}

fn owned_namespaces(names: &Names) -> Result<Vec<String>, NetnsError> {
    Ok(netns::list()?
        .into_iter()
        .filter(|ns| names.owns(ns))
        .collect())
}

/// Removes the state directory if it is the lab's (holds the marker);
/// whether it did.
fn remove_state_dir(dir: &Path) -> Result<bool, LabError> {
    if !dir.join(MARKER).is_file() {
        // Absent, or not ours: an empty directory (a failed first step) may go.
        if fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none()) {
            fs::remove_dir(dir).map_err(|source| LabError::File {
                path: dir.to_path_buf(),
                source,
            })?;
            return Ok(true);
        }
        return Ok(false);
    }
    fs::remove_dir_all(dir).map_err(|source| LabError::File {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(true)
}

fn write_file(path: &Path, text: &str) -> Result<(), LabError> {
    fs::write(path, text).map_err(|source| LabError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// IPv4 forwarding in one namespace (the sysctl is per namespace: the
/// host's is not touched).
fn forwarding_on(ns: &str) -> Result<(), LabError> {
    let path = Path::new("/proc/sys/net/ipv4/ip_forward");
    in_netns(ns, || fs::write(path, "1"))?.map_err(|source| LabError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// The lab's own table in each node namespace: counts new connections per
/// NodePort before anything else sees them (priority -400, ahead of
/// conntrack and the agent's chains).
const OBSERVE_TABLE: &str = "portico-lab";

fn observe_table() -> String {
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
fn nft(ns: &str, args: &[&str], stdin: Option<&str>) -> Result<String, LabError> {
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
fn edge_metrics(edge_ns: &str) -> Result<String, LabError> {
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
    let up = |check: &str, node: &str, port: u16| -> Option<f64> {
        let head = format!("portico_edge_backend_up{{check=\"{check}\",node=\"{node}\",");
        let tail = format!(":{port}\"}}");
        metrics
            .lines()
            .filter(|l| l.starts_with(&head))
            .find_map(|l| l.split_once(&tail)?.1.trim().parse().ok())
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

/// Appends `text` and a newline.
fn line(out: &mut String, text: String) {
    out.push_str(&text);
    out.push('\n');
}

/// The edge's configuration: the Kubernetes watch, VIPs on the public
/// interface, the address pool, and health checks quick enough for a lab.
pub fn edge_config(kubeconfig: &Path, drain_timeout: Duration) -> String {
    format!(
        "# Written by portico-lab.
settings:
  health:
    interval: 1s
    timeout: 500ms
    rise: 2
    fall: 2
    kubeProxyPort: {health}
  proxy:
    connectTimeout: 1s
    connectRetries: 2
    drainTimeout: {drain}ms
  vip:
    interface: eth0
  metricsListen: 127.0.0.1:{metrics}
  adminListen: 127.0.0.1:{admin}
  kubernetes:
    kubeconfig: {kubeconfig}
  addressPools:
    - name: public
      addresses: [{pool}]
",
        health = topology::NODE_HEALTH_PORT,
        metrics = topology::EDGE_METRICS_PORT,
        admin = topology::EDGE_ADMIN_PORT,
        kubeconfig = kubeconfig.display(),
        pool = topology::ADDRESS_POOL,
        drain = drain_timeout.as_millis(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edge_config_passes_the_real_validator() {
        let yaml = edge_config(
            Path::new("/run/portico-lab/kubeconfig"),
            DEFAULT_DRAIN_TIMEOUT,
        );
        let config =
            portico_config::parse_edge_config(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let s = &config.settings;
        assert_eq!(s.vip.interface.as_deref(), Some("eth0"));
        assert!(s.kubernetes.is_some());
        assert_eq!(s.address_pools.len(), 1);
        assert_eq!(s.proxy.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
    }

    #[test]
    fn health_is_settled_only_with_the_expected_view() {
        let mut text = String::new();
        for n in 1..=3 {
            text.push_str(&format!(
                "portico_edge_backend_up{{check=\"node-proxy\",node=\"node-{n}\",target=\"10.88.0.1{n}:10256\"}} 1\n"
            ));
        }
        assert!(health_settled(&text).is_err(), "no Local checks yet");
        for (n, up) in [(1, 1), (2, 1), (3, 0)] {
            text.push_str(&format!(
                "portico_edge_backend_up{{check=\"service-local\",node=\"node-{n}\",target=\"10.88.0.1{n}:32081\"}} {up}\n"
            ));
        }
        assert_eq!(health_settled(&text), Ok(()));
        let wrong = text.replace("10.88.0.13:32081\"} 0", "10.88.0.13:32081\"} 1");
        assert!(health_settled(&wrong).is_err(), "node-3 has no local pod");
    }
}
