//! `portico-lab scale`: its arguments ([`ScaleArgs`]) and the run from the
//! options to the printed table ([`main`]).

use std::path::PathBuf;
use std::time::Duration;

use crate::command;

use super::{down, header, markdown, run, Addrs, ScaleOptions, MAX_SERVICES};

/// `portico-lab scale`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// The `portico-edge` binary (default: next to this one).
    #[arg(long)]
    pub edge_bin: Option<PathBuf>,
    /// LoadBalancer Services, each with 3 TCP ports (at most 1022).
    #[arg(long, default_value_t = 1000)]
    pub services: usize,
    /// nodePort changes measured per contender.
    #[arg(long, default_value_t = 20)]
    pub changes: usize,
    /// CPU for the contender; "none" leaves it unpinned.
    #[arg(long, default_value = "1")]
    pub balancer_cpu: String,
    /// Probes in flight at most.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Longest one set-up may take, seconds.
    #[arg(long, default_value_t = 300)]
    pub setup_timeout_secs: u64,
    /// The family of every address of the topology: ipv4, or ipv6 (the
    /// VIPs, the nodes, the API server and both contenders in IPv6).
    #[arg(long, default_value = "ipv4", value_parser = ["ipv4", "ipv6"])]
    pub family: String,
    /// Copy the edge's, HAProxy's and the API server's logs here.
    #[arg(long)]
    pub keep_logs: Option<PathBuf>,
    /// Namespace prefix.
    #[arg(long, default_value = "pscale")]
    pub prefix: String,
    /// Only remove what a run with this prefix left behind.
    #[arg(long)]
    pub down: bool,
}

/// Runs `portico-lab scale`: prints the header, then the table.
pub fn main(args: ScaleArgs) -> std::process::ExitCode {
    use std::process::ExitCode;
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("portico-lab scale: {e}");
        ExitCode::FAILURE
    };
    let state_dir = std::env::temp_dir().join(format!("{}-state", args.prefix));
    if args.down {
        return match down(&args.prefix, &state_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    let me = match std::env::current_exe() {
        Ok(me) => me,
        Err(e) => return fail(&e),
    };
    let edge_bin = args
        .edge_bin
        .clone()
        .unwrap_or_else(|| me.with_file_name("portico-edge"));
    if !command::installed("haproxy") {
        return fail(&"haproxy is not installed");
    }
    let mut opts = ScaleOptions::standard(&args.prefix, edge_bin, me);
    opts.state_dir = state_dir;
    opts.services = args.services.clamp(1, MAX_SERVICES);
    opts.changes = args.changes.max(1);
    opts.concurrency = args.concurrency.max(1);
    opts.setup_limit = Duration::from_secs(args.setup_timeout_secs.max(10));
    opts.keep_logs = args.keep_logs.clone();
    opts.family = match Addrs::parse(&args.family) {
        Some(a) => a.family(),
        None => return fail(&format!("unknown family {:?}", args.family)),
    };
    opts.balancer_cpu = if args.balancer_cpu == "none" {
        None
    } else {
        match args.balancer_cpu.parse() {
            Ok(c) => Some(c),
            Err(e) => return fail(&format!("CPU {:?}: {e}", args.balancer_cpu)),
        }
    };
    let header = header(&opts);
    print!("{header}");
    let services = opts.services;
    match run(opts) {
        Ok((portico, haproxy)) => {
            println!();
            print!("{}", markdown("", services, &portico, &haproxy));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}
