//! Building, running and removing one lab: [`Lab::up`] creates the
//! namespaces and links of [`crate::topology`], starts the API server, the
//! edge, the node agents and the pod servers in the background, creates the
//! Kubernetes objects through the API server, and waits until traffic flows
//! from the inside client through the edge to the pods. [`down`] removes
//! every trace of a lab by its prefix; a [`Lab`] does so when dropped (also
//! when a test panics) unless [`Lab::detach`]ed, as `portico-lab up` does.
//!
//! - [`up`]: building the lab ([`Lab::up`]) and the edge's configuration;
//! - [`processes`]: the running processes: waiting on them, signalling,
//!   stopping and starting them again, killing and reviving a node;
//! - [`scenarios`]: what failure scenarios change (a node's link, labels,
//!   EndpointSlices, an edge reload or binary upgrade);
//! - [`observe`]: what the lab reads without changing anything (SYNs per
//!   node, the edge's metrics and health view, [`NodeWatch`]);
//! - [`report`]: what `portico-lab up` and `status` print;
//! - [`routed`]: several edges behind a router (`up --edges N`);
//! - [`pair`]: two edges sharing the VIPs by VRRP (`up --edges 2 --vrrp`);
//! - [`teardown`]: removing a lab ([`down`], [`Lab::teardown`]).

pub mod observe;
pub mod pair;
pub mod processes;
pub mod report;
pub mod routed;
pub mod scenarios;
pub mod teardown;
pub mod up;

pub use observe::{backend_states, backend_up, health_settled, NodeSample, NodeWatch};
pub use report::status;
pub use teardown::{down, DownReport};
pub use up::{edge_config, VipHolding};

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::api::{self, ApiClient, ApiClientError};
use crate::command;
use crate::netns::{in_netns, NetnsError};
use crate::pod::{self, Answer, ClientError};
use crate::procs::{ProcError, Spawned};
use crate::topology::{self, Client, Names};

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
    /// A routing daemon's config could not be rendered.
    #[error("routing: {0}")]
    Routing(String),
    /// An edge count the lab cannot build.
    #[error("{edges} edges{}: a lab has 1 to {max} edges, a VRRP pair 2", if *vrrp { " by VRRP" } else { "" }, max = crate::routing::MAX_EDGES)]
    Edges {
        /// How many were asked for.
        edges: usize,
        /// Whether as a VRRP pair.
        vrrp: bool,
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

    /// The three binaries of one cargo target directory and profile
    /// (`target/<profile>/`), where a workspace `cargo test` puts them. The
    /// missing ones are built once with `cargo build -p <package> --bins`
    /// into that directory; an existing one is used as it is (after
    /// changing a program, build it or run the workspace's tests first).
    /// Tests find their binaries this way, so a workspace test run builds
    /// each program once, with the features that run unifies.
    pub fn in_target(profile_dir: &Path) -> Result<Binaries, command::CommandFailed> {
        let binaries = Binaries {
            lab: profile_dir.join("portico-lab"),
            edge: profile_dir.join("portico-edge"),
            agent: profile_dir.join("portico-node-agent"),
        };
        let missing: Vec<&str> = [
            (&binaries.lab, "portico-lab"),
            (&binaries.edge, "portico-edge"),
            (&binaries.agent, "portico-node-agent"),
        ]
        .into_iter()
        .filter(|(path, _)| !path.is_file())
        .map(|(_, package)| package)
        .collect();
        if !missing.is_empty() {
            command::cargo_build(profile_dir, &missing)?;
        }
        Ok(binaries)
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
    /// How many edges: 1 serves the VIPs on the public network itself;
    /// more sit behind a router that spreads flows over them ([`routed`]).
    pub edges: usize,
    /// With 2 edges: a VRRP pair on the public network instead ([`pair`]).
    pub vrrp: bool,
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
            edges: 1,
            vrrp: false,
        }
    }
}

/// The edge's drain timeout unless [`LabOptions::drain_timeout`] says otherwise.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// How many edges ([`LabOptions::edges`]).
    edges: usize,
    /// Whether they are a VRRP pair ([`LabOptions::vrrp`]).
    vrrp: bool,
    /// Every Service's addresses, in the order of its status.
    vips: BTreeMap<String, Vec<IpAddr>>,
    timings: Vec<(&'static str, Duration)>,
    binaries: Binaries,
    detached: bool,
}

impl Lab {
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

    /// The IPv4 address (VIP:80) the edge assigned to a Service.
    pub fn vip(&self, service: &str) -> Option<SocketAddr> {
        self.vip_of(service, topology::IpFamily::V4)
    }

    /// The address (VIP:80) of `family` the edge assigned to a Service.
    pub fn vip_of(&self, service: &str, family: topology::IpFamily) -> Option<SocketAddr> {
        self.vips
            .get(service)?
            .iter()
            .find(|ip| topology::IpFamily::of(**ip) == family)
            .map(|ip| SocketAddr::new(*ip, topology::SERVICE_PORT))
    }

    /// Every address of every Service, in the order of each one's status.
    pub fn vips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.vips.values().flatten().copied()
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
        self.get_many_in(&self.names.client(client), addr, count)
    }

    /// `count` new connections, one after the other, from namespace `ns`
    /// (a client's, a pod's, a node's) to `addr`.
    ///
    /// # Panics
    /// If the namespace cannot be entered (the lab is broken).
    pub fn get_many_in(
        &self,
        ns: &str,
        addr: SocketAddr,
        count: usize,
    ) -> Vec<Result<Answer, ClientError>> {
        match in_netns(ns, || (0..count).map(|_| pod::get(addr)).collect()) {
            Ok(answers) => answers,
            Err(e) => panic!("{e}"),
        }
    }

    /// The edge's configuration file.
    pub fn edge_config_path(&self) -> PathBuf {
        self.state.join("edge.yaml")
    }

    /// The configuration the lab gave the edge (edge 1).
    pub fn edge_config(&self) -> String {
        let socket = self.bird_socket("bird-edge1");
        let holding = match (self.vrrp, self.edges) {
            (true, _) => VipHolding::Vrrp,
            (false, 1) => VipHolding::Alone,
            (false, _) => VipHolding::Bgp(&socket),
        };
        edge_config(
            &self.state.join(api::KUBECONFIG),
            self.drain_timeout,
            holding,
        )
    }

    /// The edge's drain timeout.
    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }
}

/// A client of the lab `names`' API server, from the edge namespace.
fn api_client(names: &Names) -> ApiClient {
    ApiClient::new(
        &names.edge(),
        SocketAddr::new(topology::EDGE_CLUSTER_IP.into(), topology::API_PORT),
    )
}
