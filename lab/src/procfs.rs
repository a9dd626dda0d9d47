//! What the benchmarks read from `/proc`: a process's CPU time and memory,
//! each CPU's busy and stolen shares ([`ProcStat`]), and the kernel's TCP
//! counters ([`netstat_counter`]). The parsing is pure and unit-tested; a
//! process that has ended reads as nothing, not as an error.

use std::fs;

/// The clock ticks per second `/proc` counts CPU time in.
pub fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// `ticks` clock ticks of CPU time, in seconds.
pub fn ticks_to_seconds(ticks: u64) -> f64 {
    ticks as f64 / clock_ticks()
}

/// utime + stime of `pids` (the processes alone), in clock ticks.
pub fn cpu_ticks(pids: &[i32]) -> u64 {
    pids.iter()
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            stat_fields_sum(&stat, 11..=12)
        })
        .sum()
}

/// utime + stime of one process and of its reaped children (say, the edge's
/// `ip` commands, HAProxy's former workers), in clock ticks.
pub fn ticks_with_children(pid: i32) -> Option<u64> {
    stat_ticks(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime + stime + cutime + cstime of a `/proc/<pid>/stat` line.
pub fn stat_ticks(stat: &str) -> Option<u64> {
    stat_fields_sum(stat, 11..=14)
}

/// The sum of fields `fields` of a `/proc/<pid>/stat` line, counted after
/// the command's closing parenthesis (state is the 3rd field overall, so
/// index 11 is utime, the 14th, ... 14 is cstime, the 17th).
fn stat_fields_sum(stat: &str, fields: std::ops::RangeInclusive<usize>) -> Option<u64> {
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    fields.map(|i| f.get(i)?.parse::<u64>().ok()).sum()
}

/// A field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), in KiB; none when
/// the process or the field is gone.
pub fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A counter of `/proc/net/netstat` (a names line, then a values line).
pub fn netstat_counter(text: &str, group: &str, name: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let names = lines.next()?;
    let values = lines.next()?;
    let i = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// `/proc/stat`'s CPU lines: the total, then each CPU.
#[derive(Debug, Clone)]
pub struct ProcStat {
    total: Vec<u64>,
    cpus: Vec<Vec<u64>>,
}

impl ProcStat {
    /// Where it is read from.
    pub const PATH: &'static str = "/proc/stat";

    /// Reads [`ProcStat::PATH`].
    pub fn read() -> std::io::Result<ProcStat> {
        fs::read_to_string(ProcStat::PATH).map(|text| ProcStat::parse(&text))
    }

    /// Parses `/proc/stat`.
    pub fn parse(text: &str) -> ProcStat {
        let nums = |l: &str| -> Vec<u64> {
            l.split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect()
        };
        let mut stat = ProcStat {
            total: Vec::new(),
            cpus: Vec::new(),
        };
        for line in text.lines() {
            if line.starts_with("cpu ") {
                stat.total = nums(line);
            } else if line.starts_with("cpu") {
                stat.cpus.push(nums(line));
            }
        }
        stat
    }

    /// Steal share of all CPU time since `before`, and each CPU's busy share.
    pub fn since(&self, before: &ProcStat) -> (f64, Vec<f64>) {
        // user nice system idle iowait irq softirq steal (guest is in user).
        let delta = |a: &[u64], b: &[u64]| -> Vec<u64> {
            a.iter()
                .zip(b)
                .take(8)
                .map(|(x, y)| x.saturating_sub(*y))
                .collect()
        };
        let share = |d: &[u64], idx: &[usize]| {
            let total: u64 = d.iter().sum();
            let part: u64 = idx.iter().filter_map(|i| d.get(*i)).sum();
            if total == 0 {
                0.0
            } else {
                part as f64 / total as f64
            }
        };
        let total = delta(&self.total, &before.total);
        let busy = self
            .cpus
            .iter()
            .zip(&before.cpus)
            .map(|(a, b)| share(&delta(a, b), &[0, 1, 2, 5, 6]))
            .collect();
        (share(&total, &[7]), busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netstat_counter_is_found_by_name() {
        let text =
            "TcpExt: SyncookiesSent TCPSynRetrans Other\nTcpExt: 1 7 9\nIpExt: A\nIpExt: 2\n";
        assert_eq!(netstat_counter(text, "TcpExt", "TCPSynRetrans"), Some(7));
        assert_eq!(netstat_counter(text, "TcpExt", "Missing"), None);
    }

    #[test]
    fn steal_and_busy_come_from_deltas() {
        let before = ProcStat::parse("cpu  0 0 0 0 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0\n");
        let after = ProcStat::parse("cpu  50 0 30 10 0 0 0 10 0 0\ncpu0 60 0 20 20 0 0 0 0\n");
        let (steal, busy) = after.since(&before);
        assert!((steal - 0.1).abs() < 1e-9);
        assert!((busy[0] - 0.8).abs() < 1e-9);
    }

    #[test]
    fn cpu_counts_the_process_and_its_reaped_children() {
        let stat = "42 (portico edge) S 1 42 42 0 -1 4194560 100 0 0 0 150 30 7 3 20 0 2";
        assert_eq!(stat_ticks(stat), Some(190));
        assert_eq!(stat_ticks("42 (x) S 1"), None);
    }
}
