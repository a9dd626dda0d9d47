//! What `portico-lab bench` prints around the runs: the header (versions,
//! pinning, load, the plan), the tables of the [`Summary`] in Markdown, and
//! the failover section.

use std::fs;
use std::path::Path;

use crate::command;

use super::failover::{self, FailoverResult, FailoverSpec};
use super::{BenchArgs, BenchOptions, Contender, IpFamily, RunResult, Summary, Workload};

impl Summary {
    /// The report's tables, in Markdown.
    pub fn markdown(&self) -> String {
        let contenders: Vec<Contender> = Contender::ALL
            .into_iter()
            .filter(|c| Workload::ALL.iter().any(|w| self.cell(*c, *w).is_some()))
            .collect();
        let mut out = String::new();
        out.push_str(
            "| contender | keep-alive req/s | new conn per request, req/s | 1 stream Gbit/s | 8 streams Gbit/s |\n|---|---|---|---|---|\n",
        );
        for c in &contenders {
            out.push_str(&format!("| {c} |"));
            for w in Workload::ALL {
                let text = self.cell(*c, w).map_or("-".to_string(), |cell| {
                    let figure = cell.figure.map_or("-".to_string(), |f| {
                        if w.is_stream() {
                            format!("{f:.2}")
                        } else {
                            format!("{:.1}k", f / 1000.0)
                        }
                    });
                    let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
                    format!(
                        "{figure} ({} / {}) n={}",
                        ratio(cell.vs_direct),
                        ratio(cell.vs_haproxy),
                        cell.runs
                    )
                });
                out.push_str(&format!(" {text} |"));
            }
            out.push('\n');
        }
        out.push_str("\n(ratio to direct / ratio to HAProxy, each the median of per-round ratios; n = accepted runs)\n\n");
        out.push_str("| contender | keep-alive p50 / p99 | new conn p50 / p99 | CPU us per kept-alive request | CPU us per new connection | CPU s per GB (1 stream / 8 streams) | peak RSS |\n|---|---|---|---|---|---|---|\n");
        let ms = |us: Option<f64>| us.map_or("-".to_string(), |u| format!("{:.2} ms", u / 1000.0));
        for c in &contenders {
            let cell = |w| self.cell(*c, w).cloned().unwrap_or_default();
            let (ka, nc, s1, s8) = (
                cell(Workload::KeepAlive),
                cell(Workload::NewConn),
                cell(Workload::Stream1),
                cell(Workload::Stream8),
            );
            let num = |v: Option<f64>, digits: usize| {
                v.map_or("-".to_string(), |v| format!("{v:.digits$}"))
            };
            let rss = [&ka, &nc, &s1, &s8]
                .iter()
                .filter_map(|c| c.peak_rss_kib)
                .max()
                .map_or("-".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
            out.push_str(&format!(
                "| {c} | {} / {} | {} / {} | {} | {} | {} / {} | {rss} |\n",
                ms(ka.p50_us),
                ms(ka.p99_us),
                ms(nc.p50_us),
                ms(nc.p99_us),
                num(ka.cost, 1),
                num(nc.cost, 1),
                num(s1.cost, 2),
                num(s8.cost, 2),
            ));
        }
        out
    }
}

/// Versions of the programs involved, one per line.
pub fn versions(edge_bin: &Path) -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    [
        format!("kernel {}", kernel.trim()),
        command::first_line(&edge_bin.display().to_string(), &["--version"]),
        command::first_line("haproxy", &["-v"]),
        command::first_line("nginx", &["-v"]),
        command::first_line("wrk", &["-v"]),
        command::first_line("nft", &["-V"]),
    ]
    .join("\n")
}

/// What a heading adds for `family`: nothing for IPv4 (the published
/// figures' family), `" (IPv6)"` for IPv6.
pub fn family_tag(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "",
        IpFamily::V6 => " (IPv6)",
    }
}

/// The header: the binaries and their versions, the pinning, the load
/// average at the start and the plan; in IPv6, the addresses first.
pub fn header(opts: &BenchOptions, args: &BenchArgs) -> String {
    let b_version = opts
        .edge_bin_b
        .as_ref()
        .map_or(String::new(), |b| format!("portico-b: {}\n", b.display()));
    let addrs = opts.addrs();
    let family = match opts.family {
        IpFamily::V4 => String::new(),
        IpFamily::V6 => format!(
            "## Benchmark{}: VIP {}, nodes {}\n",
            family_tag(opts.family),
            addrs.vip(),
            addrs.nodes().map(|ip| ip.to_string()).join(", ")
        ),
    };
    format!(
        "{family}portico: {}\n{b_version}{}\npinning: wrk on CPU {}, balancer on CPU {}, backends on {}\nload average at start: {}\n{} accepted runs of {} s wanted per pair, at most {} rounds; {} connections for request workloads; {} MiB file\n",
        opts.edge_bin.display(),
        versions(&opts.edge_bin),
        args.client_cpu,
        args.balancer_cpu,
        args.backend_cpus.as_deref().unwrap_or("any CPU"),
        fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        opts.runs,
        opts.duration.as_secs(),
        opts.max_rounds,
        opts.connections,
        opts.big_file_mib,
    )
}

/// Everything after the runs: the load average at the end, the tables of
/// `results` (if any), and with `failover` its table and timelines; in
/// IPv6 (`family`), under headings that say so.
pub fn footer(
    results: &[RunResult],
    failover: Option<(&FailoverSpec, &[FailoverResult])>,
    family: IpFamily,
) -> String {
    let tag = family_tag(family);
    let mut out = format!(
        "\nload average at end: {}\n\n",
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    if !results.is_empty() {
        if family == IpFamily::V6 {
            out.push_str(&format!("### Workloads{tag}\n\n"));
        }
        out.push_str(&Summary::new(results).markdown());
    }
    if let Some((spec, failovers)) = failover {
        out.push_str(&format!(
            "\n### Failover{tag}: node 2's link down at {} s for {} s under {} new connections/s (GET /small, {} s timeout; slow = above {} ms); the counter read every {} ms\n\n",
            spec.kill_at.as_secs_f64(),
            spec.down_for.as_secs_f64(),
            spec.rate,
            spec.timeout.as_secs_f64(),
            spec.slow.as_millis(),
            spec.poll.as_millis(),
        ));
        out.push_str(&failover::failover_markdown(failovers));
        out.push_str("\nnftables DNAT has no health check: it sends to the dead node until the link is back.\n\n");
        for r in failovers {
            out.push_str(&r.timeline_text());
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_headings_say_so() {
        let spec = FailoverSpec::standard();
        let v4 = footer(&[], Some((&spec, &[])), IpFamily::V4);
        assert!(v4.contains("### Failover: node 2's link down"), "{v4}");
        let v6 = footer(&[], Some((&spec, &[])), IpFamily::V6);
        assert!(
            v6.contains("### Failover (IPv6): node 2's link down"),
            "{v6}"
        );
    }
}
