//! `portico-node-agent`: parse the command line, run the agent (or clean up).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};
use portico_kube_watch::{KubeOptions, DEFAULT_WATCH_TIMEOUT};
use portico_node_agent::agent::{self, AgentError, AgentOptions, Source};
use portico_node_agent::kube_source::KubeError;
use portico_node_agent::nft::{NftBackend, NftCommand};
use portico_node_agent::plan::PlanOptions;
use portico_node_agent::ruleset::TABLE_NAME;

#[derive(Parser)]
#[command(
    name = "portico-node-agent",
    version,
    about = "Portico's node agent: NodePort/LB IP -> ClusterIP -> endpoint in nftables"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Program this node from the Kubernetes API (`--kubernetes`) or from a
    /// directory of Kubernetes manifests (`--manifests`): Services,
    /// EndpointSlices and this node's Node.
    Run(Box<RunArgs>),
    /// Remove everything the agent installed (its nftables table).
    Cleanup,
}

/// `run`'s arguments.
#[derive(Args)]
#[command(group(ArgGroup::new("source").required(true).args(["manifests", "kubernetes"])))]
struct RunArgs {
    /// Read a directory of manifests, re-read on change (debugging, labs).
    #[arg(long, value_name = "DIR")]
    manifests: Option<PathBuf>,
    /// Watch the Kubernetes API (in-cluster, `KUBECONFIG` or
    /// `~/.kube/config`, or `--kubeconfig`).
    #[arg(long)]
    kubernetes: bool,
    /// The kubeconfig file to use with `--kubernetes`.
    #[arg(long, value_name = "FILE", requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// Server-side timeout of each watch request, in seconds; the client's
    /// read timeout is 10 s longer. (A silent API server shows in the stale
    /// gauge within seconds whatever this is: a probe asks every 2 s.)
    #[arg(long, default_value_t = DEFAULT_WATCH_TIMEOUT.as_secs(), requires = "kubernetes")]
    watch_timeout_secs: u64,
    /// This node's name.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Handle Services labelled `service.kubernetes.io/service-proxy-name=<this>`.
    #[arg(long, default_value = portico_config::cluster::DEFAULT_PROXY_NAME)]
    proxy_name: String,
    /// The `spec.loadBalancerClass` the Portico edge serves (its
    /// `kubernetes.loadBalancerClass`): such Services' load-balancer
    /// addresses are never captured on the node, as with `ipMode: Proxy`,
    /// even where the API server is too old to keep that field.
    #[arg(long, default_value = portico_config::DEFAULT_LOAD_BALANCER_CLASS)]
    load_balancer_class: String,
    /// The cluster's pod ranges, comma-separated, one or both families
    /// (kube-proxy's `--cluster-cidr`): a ClusterIP reached from outside
    /// them (a host routing the service range to this node, the node
    /// itself) is masqueraded, so the answer of a pod on another node comes
    /// back the way it went. A family without a range is not masqueraded.
    #[arg(long, value_delimiter = ',', value_parser = parse_cluster_cidr)]
    cluster_cidr: Vec<ipnetwork::IpNetwork>,
    /// kube-proxy-compatible node health server (`/healthz`, `/livez`).
    /// Where kube-proxy still runs for other Services it owns 10256:
    /// pick another port and point the edge's `kubeProxyPort` at it.
    #[arg(long, default_value = "[::]:10256")]
    health_addr: SocketAddr,
    /// The address `healthCheckNodePort` servers bind to.
    #[arg(long, default_value = "::")]
    health_bind_ip: IpAddr,
    /// Where `/metrics` is served.
    #[arg(long, default_value = "0.0.0.0:9731")]
    metrics_addr: SocketAddr,
    /// Seconds between full resyncs (which repair drift); `/healthz`
    /// turns 503 after two periods without a successful sync.
    #[arg(long, default_value_t = 30)]
    sync_period_secs: u64,
    /// Milliseconds between checks of the manifest directory.
    /// (`--kubernetes` is driven by the watches instead.)
    #[arg(long, default_value_t = 1000)]
    poll_interval_ms: u64,
}

/// A `--cluster-cidr` entry, read as Kubernetes reads CIDRs (its network:
/// host bits are dropped).
fn parse_cluster_cidr(text: &str) -> Result<ipnetwork::IpNetwork, String> {
    portico_config::kube::parse_cidr(text)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            // kube's HTTP layer logs every failed request at ERROR; the
            // agent logs each failing watch itself, once per outage.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_client::client::builder=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run(args) => {
            let RunArgs {
                manifests,
                kubernetes,
                kubeconfig,
                watch_timeout_secs,
                node_name,
                proxy_name,
                load_balancer_class,
                cluster_cidr,
                health_addr,
                health_bind_ip,
                metrics_addr,
                sync_period_secs,
                poll_interval_ms,
            } = *args;
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("portico-node-agent: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let source = match manifests {
                Some(dir) if !kubernetes => Source::Manifests(dir),
                // The argument group allows exactly one of the two.
                _ => Source::Kubernetes(KubeOptions {
                    kubeconfig,
                    watch_timeout: Duration::from_secs(watch_timeout_secs.max(1)),
                    ..KubeOptions::new(portico_node_agent::COMPONENT)
                }),
            };
            let opts = AgentOptions {
                source,
                node_name,
                plan: PlanOptions {
                    proxy_name,
                    load_balancer_class,
                    cluster_cidrs: cluster_cidr,
                    ..PlanOptions::default()
                },
                health_addr,
                health_bind_ip,
                metrics_addr,
                sync_period: Duration::from_secs(sync_period_secs.max(1)),
                poll_interval: Duration::from_millis(poll_interval_ms.max(10)),
            };
            // Install the signal handlers before the first sync, so a SIGTERM
            // that arrives during it still ends the agent cleanly.
            let signals = runtime.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                Ok::<_, std::io::Error>((
                    signal(SignalKind::terminate())?,
                    signal(SignalKind::interrupt())?,
                ))
            });
            let (mut term, mut int) = match signals {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("portico-node-agent: cannot install signal handlers: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let shutdown = async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            };
            match runtime.block_on(agent::run(
                opts,
                NftCommand::new(),
                portico_conntrack::Netlink::new(),
                shutdown,
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(AgentError::Kube(KubeError::Client(e))) if e.is_configuration() => {
                    // EX_USAGE: the configuration is wrong, a restart will not help.
                    eprintln!("portico-node-agent: {e}");
                    ExitCode::from(64)
                }
                Err(e) => {
                    eprintln!("portico-node-agent: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Cleanup => {
            // Adding the table first makes the delete succeed whether or not
            // it exists, in one transaction; nothing else is touched.
            let script = format!("add table inet {TABLE_NAME}\ndelete table inet {TABLE_NAME}\n");
            match NftCommand::new().apply(&script) {
                Ok(()) => {
                    println!("table inet {TABLE_NAME} removed");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("portico-node-agent: cleanup failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
