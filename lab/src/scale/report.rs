//! The scale report: the header (commit, versions, pinning, load) and the
//! table of both contenders' figures with their ratio ([`markdown`]).

use std::fs;
use std::process::Command;
use std::time::Duration;

use crate::command;

use super::figures::{per_service_kib, quantiles, Figures, Mem};
use super::{pool, IpFamily, ScaleOptions, PORTS};

/// The report: versions and setup, then one table.
pub fn markdown(header: &str, services: usize, portico: &Figures, haproxy: &Figures) -> String {
    let mut out = String::new();
    out.push_str(header);
    out.push('\n');
    out.push_str(&format!(
        "{services} Services x {} TCP ports = {} VIP:ports\n\n",
        PORTS.len(),
        services * PORTS.len()
    ));
    out.push_str("| figure | Portico | HAProxy | Portico / HAProxy |\n|---|---|---|---|\n");
    let mut t = Table(out);
    setup_rows(&mut t, portico, haproxy);
    memory_rows(&mut t, services, portico, haproxy);
    change_rows(&mut t, portico, haproxy);
    t.0
}

/// The table as it is written: a row per figure, Portico's, HAProxy's and
/// their ratio.
struct Table(String);

impl Table {
    fn row(&mut self, name: &str, a: Option<f64>, b: Option<f64>, digits: usize, unit: &str) {
        let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.digits$}{unit}"));
        let ratio = match (a, b) {
            (Some(a), Some(b)) if b.abs() > 1e-12 => format!("{:.2}", a / b),
            _ => "-".to_string(),
        };
        self.0.push_str(&format!(
            "| {name} | {} | {} | {ratio} |\n",
            cell(a),
            cell(b)
        ));
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Set-up times, warm and cold, and their CPU seconds.
fn setup_rows(t: &mut Table, portico: &Figures, haproxy: &Figures) {
    t.row(
        "API writes of all Services",
        portico.api_writes.map(secs),
        None,
        2,
        " s",
    );
    t.row(
        "warm set-up: all answer (HAProxy: reload from empty)",
        Some(secs(portico.warm)),
        Some(secs(haproxy.warm)),
        2,
        " s",
    );
    t.row(
        "warm set-up: first answers",
        Some(secs(portico.warm_first)),
        Some(secs(haproxy.warm_first)),
        2,
        " s",
    );
    t.row(
        "warm set-up: metrics count all listeners",
        portico.warm_listeners.map(secs),
        None,
        2,
        " s",
    );
    t.row(
        "cold start: all answer",
        Some(secs(portico.cold)),
        Some(secs(haproxy.cold)),
        2,
        " s",
    );
    t.row(
        "cold start: first answers",
        Some(secs(portico.cold_first)),
        Some(secs(haproxy.cold_first)),
        2,
        " s",
    );
    t.row(
        "CPU during warm set-up (with reaped children: `ip`, old workers)",
        Some(portico.warm_cpu_s),
        Some(haproxy.warm_cpu_s),
        2,
        " s",
    );
    t.row(
        "CPU from start to all answering (cold)",
        Some(portico.cold_cpu_s),
        Some(haproxy.cold_cpu_s),
        2,
        " s",
    );
}

/// Memory, empty and loaded, and per Service.
fn memory_rows(t: &mut Table, services: usize, portico: &Figures, haproxy: &Figures) {
    let mib = |k: u64| Some(k as f64 / 1024.0);
    t.row(
        "VmRSS, no Service",
        mib(portico.mem_empty.rss_kib),
        mib(haproxy.mem_empty.rss_kib),
        1,
        " MiB",
    );
    t.row(
        "VmRSS, all Services (warm, after a probe pass)",
        mib(portico.mem_warm.rss_kib),
        mib(haproxy.mem_warm.rss_kib),
        1,
        " MiB",
    );
    t.row(
        "VmRSS, all Services (cold, after a probe pass)",
        mib(portico.mem_cold.rss_kib),
        mib(haproxy.mem_cold.rss_kib),
        1,
        " MiB",
    );
    t.row(
        "VmHWM, all Services (cold)",
        mib(portico.mem_cold.hwm_kib),
        mib(haproxy.mem_cold.hwm_kib),
        1,
        " MiB",
    );
    let per = |f: &Figures, m: Mem, hwm: bool| {
        let (e, l) = if hwm {
            (f.mem_empty.hwm_kib, m.hwm_kib)
        } else {
            (f.mem_empty.rss_kib, m.rss_kib)
        };
        Some(per_service_kib(e, l, services))
    };
    t.row(
        "RSS per Service (warm - empty) / N",
        per(portico, portico.mem_warm, false),
        per(haproxy, haproxy.mem_warm, false),
        1,
        " KiB",
    );
    t.row(
        "RSS per Service (cold - empty) / N",
        per(portico, portico.mem_cold, false),
        per(haproxy, haproxy.mem_cold, false),
        1,
        " KiB",
    );
    t.row(
        "HWM per Service (cold - empty) / N",
        per(portico, portico.mem_cold, true),
        per(haproxy, haproxy.mem_cold, true),
        1,
        " KiB",
    );
}

/// Change -> traffic times, and the connections that failed or answered.
fn change_rows(t: &mut Table, portico: &Figures, haproxy: &Figures) {
    let q = |f: &Figures| {
        quantiles(
            &f.changes
                .iter()
                .map(|d| d.as_secs_f64() * 1000.0)
                .collect::<Vec<_>>(),
        )
    };
    let (qa, qb) = (q(portico), q(haproxy));
    t.row(
        &format!(
            "change -> traffic, median (n = {} / {})",
            portico.changes.len(),
            haproxy.changes.len()
        ),
        qa.map(|q| q.median),
        qb.map(|q| q.median),
        1,
        " ms",
    );
    t.row(
        "change -> traffic, p90",
        qa.map(|q| q.p90),
        qb.map(|q| q.p90),
        1,
        " ms",
    );
    t.row(
        "change -> traffic, max",
        qa.map(|q| q.max),
        qb.map(|q| q.max),
        1,
        " ms",
    );
    t.row(
        "failed connections while polling changes",
        Some(portico.change_errors as f64),
        Some(haproxy.change_errors as f64),
        0,
        "",
    );
    t.row(
        "VIP:ports answering right in the last pass",
        Some(portico.answered as f64),
        Some(haproxy.answered as f64),
        0,
        "",
    );
}

/// Versions, commit, pinning and load: the report's header; in IPv6, a
/// heading that says so first.
pub fn header(opts: &ScaleOptions) -> String {
    let family = match opts.family {
        IpFamily::V4 => String::new(),
        IpFamily::V6 => format!("## Scale (IPv6): VIPs from {}\n", pool(opts.addrs())),
    };
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let commit = command::first_line("git", &["rev-parse", "HEAD"]);
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    format!(
        "{family}commit {commit}{}\nkernel {}\n{}\n{}\ncontender pinned to CPU {}; {} changes per contender; {} probes in flight; load average {}\n",
        if dirty { " (dirty)" } else { "" },
        kernel.trim(),
        command::first_line(&opts.edge_bin.display().to_string(), &["--version"]),
        command::first_line("haproxy", &["-v"]),
        opts.balancer_cpu
            .map_or("none".to_string(), |c| c.to_string()),
        opts.changes,
        opts.concurrency,
        fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_gives_both_figures_and_their_ratio() {
        let portico = Figures {
            api_writes: Some(Duration::from_millis(1500)),
            warm: Duration::from_secs(4),
            warm_first: Duration::from_millis(500),
            cold_first: Duration::from_millis(400),
            warm_listeners: Some(Duration::from_secs(3)),
            cold: Duration::from_secs(2),
            warm_cpu_s: 1.0,
            cold_cpu_s: 0.5,
            mem_empty: Mem {
                rss_kib: 10_240,
                hwm_kib: 10_240,
            },
            mem_warm: Mem {
                rss_kib: 30_720,
                hwm_kib: 40_960,
            },
            mem_cold: Mem {
                rss_kib: 20_480,
                hwm_kib: 20_480,
            },
            changes: vec![Duration::from_millis(10), Duration::from_millis(30)],
            change_errors: 0,
            answered: 3000,
        };
        let haproxy = Figures {
            warm: Duration::from_secs(1),
            warm_first: Duration::from_millis(250),
            cold: Duration::from_secs(1),
            warm_cpu_s: 2.0,
            cold_cpu_s: 1.0,
            mem_empty: Mem {
                rss_kib: 5_120,
                hwm_kib: 5_120,
            },
            mem_warm: Mem {
                rss_kib: 10_240,
                hwm_kib: 10_240,
            },
            mem_cold: Mem {
                rss_kib: 10_240,
                hwm_kib: 10_240,
            },
            changes: vec![Duration::from_millis(100), Duration::from_millis(300)],
            answered: 3000,
            ..Figures::default()
        };
        let t = markdown("head\n", 1000, &portico, &haproxy);
        assert!(t.starts_with("head\n"));
        assert!(t.contains("1000 Services x 3 TCP ports = 3000 VIP:ports"));
        assert!(t.contains("| API writes of all Services | 1.50 s | - | - |"));
        assert!(t.contains(
            "| warm set-up: all answer (HAProxy: reload from empty) | 4.00 s | 1.00 s | 4.00 |"
        ));
        assert!(t.contains("| warm set-up: first answers | 0.50 s | 0.25 s | 2.00 |"));
        assert!(t.contains(
            "| CPU during warm set-up (with reaped children: `ip`, old workers) | 1.00 s | 2.00 s | 0.50 |"
        ));
        // (30720 - 10240) / 1000 = 20.48 KiB vs (10240 - 5120) / 1000 = 5.12.
        assert!(t.contains("| RSS per Service (warm - empty) / N | 20.5 KiB | 5.1 KiB | 4.00 |"));
        assert!(t.contains("| change -> traffic, median (n = 2 / 2) | 20.0 ms | 200.0 ms | 0.10 |"));
        assert!(t.contains("| change -> traffic, max | 30.0 ms | 300.0 ms | 0.10 |"));
        assert!(t.contains("| VIP:ports answering right in the last pass | 3000 | 3000 | 1.00 |"));
    }
}
