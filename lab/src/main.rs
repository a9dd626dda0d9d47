//! `portico-lab`: parse the command line, then build, inspect or remove the
//! lab, or run one of its parts (the API server, a pod's server), or a
//! stand-in node for the quick-start demo.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use portico_lab::lab::{DEFAULT_PREFIX, DEFAULT_STATE_DIR};
use portico_lab::standin::{StandInNode, StandInSpec};
use portico_lab::topology::Names;
use portico_lab::{netns, pod, Binaries, Client, Lab, LabOptions};

#[derive(Parser)]
#[command(
    name = "portico-lab",
    version,
    about = "The Portico lab: edge, node agents, API server and pods in network namespaces (as root)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the lab, start everything in the background, wait until traffic
    /// flows, and print what to try.
    Up {
        /// The `portico-edge` binary (default: next to this one, else PATH).
        #[arg(long)]
        edge_bin: Option<PathBuf>,
        /// The `portico-node-agent` binary (default: next to this one, else PATH).
        #[arg(long)]
        agent_bin: Option<PathBuf>,
        /// Seconds to wait for traffic to flow.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
        /// How many edges: 1 holds the VIPs on the public network itself;
        /// 2 to 8 sit behind a router, each with BIRD announcing its VIPs
        /// (needs Debian's bird2), the router spreading flows over them.
        #[arg(long, default_value_t = 1)]
        edges: usize,
        /// With `--edges 2`: the two edges share the VIPs by VRRP
        /// (keepalived, Debian's keepalived) on the public network instead.
        #[arg(long)]
        vrrp: bool,
    },
    /// Remove every trace of the lab (processes, namespaces, links, state).
    /// Safe to run when nothing is up.
    Down,
    /// Print what is running.
    Status,
    /// Open new connections from one of the lab's clients and print who answered.
    Client {
        /// Which client connects.
        #[arg(long, value_enum, default_value_t = From::Inside)]
        from: From,
        /// How many connections, one after the other.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Where to, e.g. a VIP and port: 198.51.100.100:80.
        addr: SocketAddr,
    },
    /// Benchmark the edge against direct, HAProxy, nginx stream and nftables
    /// DNAT in namespaces of its own (see docs/benchmarks.md).
    Bench(portico_lab::bench::BenchArgs),
    /// The scale benchmark: N LoadBalancer Services x 3 ports against the
    /// edge and against HAProxy (set-up time, memory per Service, change ->
    /// traffic), in namespaces of its own.
    Scale(portico_lab::scale::ScaleArgs),
    /// A stand-in Kubernetes node on this host, no namespaces needed (the
    /// quick-start demo runs three): answers on its NodePorts with its name
    /// and the client's address, and serves kube-proxy's health endpoints,
    /// until SIGTERM or SIGINT.
    StandInNode {
        /// Node name, sent in every answer.
        #[arg(long)]
        name: String,
        /// A NodePort address to serve, e.g. 127.0.0.11:30080 (repeatable).
        #[arg(long = "node-port")]
        node_ports: Vec<SocketAddr>,
        /// kube-proxy's node health server address, e.g. 127.0.0.11:10256.
        #[arg(long)]
        node_health: Option<SocketAddr>,
        /// A Local Service's health check node port address (repeatable).
        #[arg(long = "service-health")]
        service_health: Vec<SocketAddr>,
    },
    /// The lab's Kubernetes API server (portico-kube-fake).
    #[command(hide = true)]
    ApiServer {
        /// Where to listen.
        #[arg(long)]
        listen: SocketAddr,
        /// Where to write the kubeconfig.
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// A pod's server.
    #[command(hide = true)]
    PodServer {
        /// The pod's name.
        #[arg(long)]
        name: String,
        /// Its node's name.
        #[arg(long)]
        node: String,
        /// Where to listen.
        #[arg(long)]
        listen: SocketAddr,
    },
}

/// A client of the lab.
#[derive(Clone, Copy, ValueEnum)]
enum From {
    /// Inside the `restricted` Service's source range.
    Inside,
    /// Outside it.
    Outside,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let state = Path::new(DEFAULT_STATE_DIR);
    match Cli::parse().command {
        Command::Up {
            edge_bin,
            agent_bin,
            timeout_secs,
            edges,
            vrrp,
        } => up(
            edge_bin,
            agent_bin,
            Duration::from_secs(timeout_secs),
            (edges, vrrp),
        ),
        Command::Down => match portico_lab::down(DEFAULT_PREFIX, state) {
            Ok(r) => {
                println!(
                    "lab {DEFAULT_PREFIX:?} down: {} processes stopped, {} namespaces removed{}",
                    r.processes,
                    r.namespaces,
                    if r.state_removed {
                        format!(", {} removed", state.display())
                    } else {
                        String::new()
                    }
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Status => match portico_lab::status(DEFAULT_PREFIX, state) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Client { from, count, addr } => client(from, count, addr),
        Command::Bench(args) => portico_lab::bench::main(args),
        Command::Scale(args) => portico_lab::scale::main(args),
        Command::ApiServer { listen, state_dir } => {
            runtime(|| async move { portico_lab::api::run_server(listen, &state_dir).await })
        }
        Command::PodServer { name, node, listen } => {
            runtime(|| async move { pod::serve(&name, &node, listen).await })
        }
        Command::StandInNode {
            name,
            node_ports,
            node_health,
            service_health,
        } => {
            let spec = StandInSpec {
                name,
                node_ports,
                node_health,
                service_health,
                expect_proxy: false,
            };
            runtime(|| StandInNode::serve(spec))
        }
    }
}

fn up(
    edge: Option<PathBuf>,
    agent: Option<PathBuf>,
    timeout: Duration,
    (edges, vrrp): (usize, bool),
) -> ExitCode {
    let me = match std::env::current_exe() {
        Ok(me) => me,
        Err(e) => return fail(&e),
    };
    let mut binaries = match Binaries::beside(me.clone()) {
        Ok(b) => b,
        Err(e) if edge.is_some() && agent.is_some() => {
            tracing::debug!(error = %e, "using the given binaries");
            Binaries {
                lab: me,
                edge: PathBuf::new(),
                agent: PathBuf::new(),
            }
        }
        Err(e) => return fail(&e),
    };
    if let Some(edge) = edge {
        binaries.edge = edge;
    }
    if let Some(agent) = agent {
        binaries.agent = agent;
    }
    let mut opts = LabOptions::standard(binaries);
    opts.ready_timeout = timeout;
    opts.edges = edges;
    opts.vrrp = vrrp;
    println!(
        "building lab {DEFAULT_PREFIX:?} ({edges} x edge {}, node agent {}) ...",
        opts.binaries.edge.display(),
        opts.binaries.agent.display()
    );
    match Lab::up(&opts) {
        Ok(lab) => {
            print!("{}", lab.summary());
            println!("\nTimings:");
            for (what, took) in lab.timings() {
                println!("  {what:<30} {:>6.2} s", took.as_secs_f64());
            }
            lab.detach();
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn client(from: From, count: usize, addr: SocketAddr) -> ExitCode {
    let client = match from {
        From::Inside => Client::Inside,
        From::Outside => Client::Outside,
    };
    let ns = Names::new(DEFAULT_PREFIX).client(client);
    let answers = match netns::in_netns(&ns, || {
        (0..count.max(1))
            .map(|_| pod::get(addr))
            .collect::<Vec<_>>()
    }) {
        Ok(a) => a,
        Err(e) => return fail(&e),
    };
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = 0;
    for answer in answers {
        match answer {
            Ok(a) => {
                println!("{}", a.to_line());
                *tally.entry(format!("{} on {}", a.pod, a.node)).or_default() += 1;
            }
            Err(e) => {
                println!("failed: {e}");
                failed += 1;
            }
        }
    }
    if count > 1 {
        println!("--");
        for (who, n) in &tally {
            println!("{n:>4}  {who}");
        }
        if failed > 0 {
            println!("{failed:>4}  failed");
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn runtime<F, Fut, E>(f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    match rt.block_on(f()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("portico-lab: {e}");
    ExitCode::FAILURE
}
