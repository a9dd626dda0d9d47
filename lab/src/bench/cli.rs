//! `portico-lab bench`: its arguments ([`BenchArgs`]), the options they
//! make, and the run from the topology up to the printed report ([`main`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::failover::{self, FailoverResult, FailoverSpec};
use super::{
    report, run_all, Addrs, Bench, BenchError, BenchOptions, Contender, RunResult, Workload,
};

/// `portico-lab bench`'s arguments.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The `portico-edge` binary (default: next to this one).
    #[arg(long)]
    pub edge_bin: Option<PathBuf>,
    /// A second edge binary, run as contender `portico-b` right after `portico`.
    #[arg(long)]
    pub edge_bin_b: Option<PathBuf>,
    /// Contenders, in run order within a round (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,portico,haproxy,nginx,nftables"
    )]
    pub contenders: Vec<String>,
    /// Workloads (comma-separated): keepalive, newconn, stream1, stream8;
    /// `failover` adds the failover measurement (node 2's link down under a
    /// stream of new connections, per contender but direct).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "keepalive,newconn,stream1,stream8"
    )]
    pub workloads: Vec<String>,
    /// Seconds per run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Accepted runs wanted per contender and workload.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Rounds at most.
    #[arg(long, default_value_t = 5)]
    pub max_rounds: usize,
    /// wrk connections for the request workloads.
    #[arg(long, default_value_t = 50)]
    pub connections: u32,
    /// CPU for wrk; "none" leaves it unpinned.
    #[arg(long, default_value = "0")]
    pub client_cpu: String,
    /// CPU for the balancer; "none" leaves it unpinned.
    #[arg(long, default_value = "1")]
    pub balancer_cpu: String,
    /// CPUs for the backend nginx servers (taskset list); unpinned if absent.
    #[arg(long)]
    pub backend_cpus: Option<String>,
    /// Size of the large file, MiB.
    #[arg(long, default_value_t = 100)]
    pub big_file_mib: u64,
    /// Reject runs with more CPU steal than this share.
    #[arg(long, default_value_t = 0.05)]
    pub max_steal: f64,
    /// Record a perf profile of each Portico run into this directory.
    #[arg(long)]
    pub perf_dir: Option<PathBuf>,
    /// The family of every address of the topology: ipv4, or ipv6 (the VIP,
    /// the nodes, the client and every contender's config in IPv6).
    #[arg(long, default_value = "ipv4", value_parser = ["ipv4", "ipv6"])]
    pub family: String,
    /// Failover measurements per contender (with `--workloads failover`).
    #[arg(long, default_value_t = 1)]
    pub failover_runs: usize,
    /// Namespace prefix.
    #[arg(long, default_value = "pbench")]
    pub prefix: String,
    /// Only remove what a bench with this prefix left behind.
    #[arg(long)]
    pub down: bool,
}

/// Runs `portico-lab bench`: prints each run as it ends, then the versions,
/// the pinning and the tables.
pub fn main(args: BenchArgs) -> ExitCode {
    let state_dir = std::env::temp_dir().join(format!("{}-state", args.prefix));
    if args.down {
        return match super::down(&args.prefix, &state_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    let opts = match options(&args, state_dir) {
        Ok(opts) => opts,
        Err(e) => return fail(&e),
    };
    print!("{}", report::header(&opts, &args));
    let mut bench = match Bench::up(opts) {
        Ok(b) => b,
        Err(e) => return fail(&e),
    };
    let failover_spec = bench.opts.failover.clone();
    let opts_family = bench.opts.family;
    let results = run_everything(&mut bench, failover_spec.as_ref());
    let teardown = bench.teardown();
    let (results, failovers) = match results {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if let Err(e) = teardown {
        return fail(&e);
    }
    let failover = failover_spec.as_ref().map(|spec| (spec, &failovers[..]));
    print!("{}", report::footer(&results, failover, opts_family));
    ExitCode::SUCCESS
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("portico-lab bench: {e}");
    ExitCode::FAILURE
}

/// The workloads' rounds, then the failover measurement if asked for, each
/// run printed as it ends.
fn run_everything(
    bench: &mut Bench,
    failover: Option<&FailoverSpec>,
) -> Result<(Vec<RunResult>, Vec<FailoverResult>), BenchError> {
    let results = run_all(bench, |r| println!("{}", r.line()))?;
    let failovers = match failover {
        Some(spec) => failover::run_failovers(bench, spec, |r| println!("{}", r.line()))?,
        None => Vec::new(),
    };
    Ok((results, failovers))
}

/// The options `args` ask for, on the standard set-up; a contender whose
/// program is missing is skipped, and says so.
fn options(args: &BenchArgs, state_dir: PathBuf) -> Result<BenchOptions, String> {
    let edge_bin = match args.edge_bin.clone() {
        Some(bin) => bin,
        None => std::env::current_exe()
            .map(|me| me.with_file_name("portico-edge"))
            .map_err(|e| e.to_string())?,
    };
    let mut opts = BenchOptions::standard(&args.prefix, edge_bin);
    opts.state_dir = state_dir;
    let mut contenders = installed_contenders(&args.contenders)?;
    let mut workloads = Vec::new();
    for name in &args.workloads {
        if name == "failover" {
            opts.failover = Some(FailoverSpec {
                runs: args.failover_runs.max(1),
                ..FailoverSpec::standard()
            });
            continue;
        }
        match Workload::parse(name) {
            Some(w) => workloads.push(w),
            None => return Err(format!("unknown workload {name:?}")),
        }
    }
    let client_cpu = cpu(&args.client_cpu)?;
    let balancer_cpu = cpu(&args.balancer_cpu)?;
    if let Some(b) = &args.edge_bin_b {
        if !contenders.contains(&Contender::PorticoB) {
            let at = contenders
                .iter()
                .position(|c| *c == Contender::Portico)
                .map_or(contenders.len(), |i| i + 1);
            contenders.insert(at, Contender::PorticoB);
        }
        opts.edge_bin_b = Some(b.clone());
    } else if contenders.contains(&Contender::PorticoB) {
        return Err("contender portico-b needs --edge-bin-b".to_string());
    }
    opts.contenders = contenders;
    opts.workloads = workloads;
    opts.duration = Duration::from_secs(args.seconds.max(1));
    opts.runs = args.runs.max(1);
    opts.max_rounds = args.max_rounds.max(opts.runs);
    opts.connections = args.connections.max(1);
    opts.client_cpu = client_cpu;
    opts.balancer_cpu = balancer_cpu;
    opts.backend_cpus = args.backend_cpus.clone();
    opts.big_file_mib = args.big_file_mib;
    opts.max_steal = args.max_steal;
    opts.perf_dir = args.perf_dir.clone();
    opts.family = Addrs::parse(&args.family)
        .ok_or_else(|| format!("unknown family {:?}", args.family))?
        .family();
    Ok(opts)
}

/// The contenders called `names`, but those whose program is not installed
/// (each skipped loudly).
fn installed_contenders(names: &[String]) -> Result<Vec<Contender>, String> {
    let mut contenders = Vec::new();
    for name in names {
        let Some(c) = Contender::parse(name) else {
            return Err(format!("unknown contender {name:?}"));
        };
        if let Some(program) = c.missing_program() {
            eprintln!("SKIPPING {c}: {program} is not installed");
            continue;
        }
        contenders.push(c);
    }
    Ok(contenders)
}

/// A CPU flag: a number, or "none" for unpinned.
fn cpu(s: &str) -> Result<Option<usize>, String> {
    if s == "none" {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|e| format!("CPU {s:?}: {e}"))
}
