//! `portico-edge`: parse the command line, load the config, run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use portico_edge::run::{self, ConfigSource, RunOptions};
use portico_edge::status;

#[derive(Parser)]
#[command(
    name = "portico-edge",
    version,
    about = "Portico's edge L4 load balancer for Kubernetes Services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the edge.
    Run {
        /// The config file (watched; SIGHUP re-reads it). Without it, the
        /// embedded example configuration is used.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The unix socket listeners are handed over through on upgrade.
        #[arg(long, default_value = "/run/portico-edge/upgrade.sock")]
        upgrade_socket: PathBuf,
        /// Take the listening sockets over from the running edge (then send it SIGQUIT).
        #[arg(long)]
        takeover: bool,
        /// Seconds to wait for the running edge to hand over.
        #[arg(long, default_value_t = 60)]
        takeover_timeout: u64,
        /// Milliseconds between checks of the config file for changes; a
        /// change is read once it has stayed the same this long.
        #[arg(long, default_value_t = 1000)]
        watch_interval_ms: u64,
        /// Worker threads (default: the CPUs this process may run on).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Validate a config file: exit 0, or 64 with every error.
    CheckConfig {
        /// The file.
        file: PathBuf,
    },
    /// Print Services x nodes x health of a running edge.
    Status {
        /// The edge's admin address.
        #[arg(long, default_value = "127.0.0.1:9721")]
        admin: SocketAddr,
    },
    /// Drain a running edge: withdraw its announced VIPs and answer 503 on
    /// /readyz (so routers and a VRRP peer send new clients elsewhere),
    /// while it keeps serving whatever still comes. Lasts until `undrain`
    /// or the edge's next start.
    Drain {
        /// The edge's admin address.
        #[arg(long, default_value = "127.0.0.1:9721")]
        admin: SocketAddr,
    },
    /// End a drain.
    Undrain {
        /// The edge's admin address.
        #[arg(long, default_value = "127.0.0.1:9721")]
        admin: SocketAddr,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            upgrade_socket,
            takeover,
            takeover_timeout,
            watch_interval_ms,
            threads,
        } => {
            // tokio would start one worker per online CPU even when pinned to
            // fewer; available_parallelism honours the affinity mask.
            let threads = threads
                .unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1)
                })
                .max(1);
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            let Some(runtime) = runtime(builder) else {
                return ExitCode::FAILURE;
            };
            let opts = RunOptions {
                source: config.map_or(ConfigSource::Embedded, ConfigSource::File),
                upgrade_socket,
                takeover,
                takeover_timeout: Duration::from_secs(takeover_timeout),
                watch_interval: Duration::from_millis(watch_interval_ms.max(10)),
            };
            match runtime.block_on(run::run(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portico-edge: {e}");
                    ExitCode::from(e.exit_code() as u8)
                }
            }
        }
        Command::CheckConfig { file } => match run::check_config(&file) {
            Ok(c) => {
                println!(
                    "{}: ok ({} services, {} nodes)",
                    file.display(),
                    c.services.len(),
                    c.nodes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(e.exit_code() as u8)
            }
        },
        Command::Drain { admin } => set_drained(admin, true),
        Command::Undrain { admin } => set_drained(admin, false),
        Command::Status { admin } => {
            let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
                return ExitCode::FAILURE;
            };
            match runtime.block_on(status::fetch(admin)) {
                Ok(s) => {
                    print!("{}", status::render(&s));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("portico-edge: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `drain` / `undrain`: prints the edge's state after it.
fn set_drained(admin: SocketAddr, drained: bool) -> ExitCode {
    let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(status::set_drained(admin, drained)) {
        Ok(r) => {
            let state = if r.drained { "drained" } else { "not drained" };
            let ready = if r.ready { "ready" } else { "not ready" };
            println!("{state}, {ready}; VIPs announced: {}", r.announced.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portico-edge: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Builds a runtime with IO and timers, or says why not.
fn runtime(mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    match builder.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("portico-edge: cannot start the runtime: {e}");
            None
        }
    }
}
