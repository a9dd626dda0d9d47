//! [`AddressOps`] through iproute2's `ip`, one `ip -force -batch -` per
//! interface per change, its text output parsed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::announce::Announcer;
use super::{check_ifname, invalid_interface, AddressOps, VipError};

/// [`AddressOps`] on the real system: addresses through iproute2's `ip`,
/// announcements from raw sockets.
///
/// `ip` rather than rtnetlink: none of the allowed crates speaks netlink,
/// hand-written netlink is far more code than the two commands needed, and
/// `ip`'s error messages are what an operator would see doing it by hand.
/// A reconcile runs `ip` at most three times per interface however many
/// VIPs change ([`AddressOps::add_all`], [`AddressOps::remove_all`]): one
/// listing, one `ip -force -batch -` of every add or removal (`ip` names
/// the failing lines), and a second listing only if some line failed. One
/// process per VIP cost 4 ms each, 4 s of set-up for 1,000 Services.
#[derive(Debug)]
pub struct IpCommand {
    program: PathBuf,
    announcer: Announcer,
}

impl Default for IpCommand {
    fn default() -> Self {
        Self::new()
    }
}

impl IpCommand {
    /// Uses iproute2's `ip` from the usual places (not every PATH has the
    /// sbin directories), else whatever `ip` PATH finds.
    pub fn new() -> Self {
        let program = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .unwrap_or(Path::new("ip"));
        Self::with_program(program)
    }

    /// Uses `program` as `ip`.
    pub fn with_program(program: impl Into<PathBuf>) -> Self {
        IpCommand {
            program: program.into(),
            announcer: Announcer::default(),
        }
    }

    /// Sends `count` announcements per VIP, `interval` apart, instead of the
    /// defaults. A count of 0 sends none.
    pub fn with_announcements(mut self, count: u32, interval: Duration) -> Self {
        self.announcer = Announcer::new(count, interval);
        self
    }

    /// Runs `ip` with `args` (and `stdin`, if any), in English whatever the
    /// host's locale.
    fn exec(&self, args: &[&str], stdin: Option<&str>) -> io::Result<std::process::Output> {
        let mut command = Command::new(&self.program);
        command
            .args(args)
            .env("LC_ALL", "C")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let Some(input) = stdin else {
            return command.stdin(Stdio::null()).output();
        };
        let mut child = command.stdin(Stdio::piped()).spawn()?;
        let pipe = child.stdin.take();
        // Written from a thread of its own while the output is read, so a
        // large batch cannot fill stdin while `ip` waits on a full stderr.
        std::thread::scope(|scope| {
            if let Some(mut pipe) = pipe {
                scope.spawn(move || {
                    // A failed write (ip exited early) shows in its status
                    // and stderr.
                    let _ = pipe.write_all(input.as_bytes());
                });
            }
            child.wait_with_output()
        })
    }

    fn spawn_error(&self, ifname: &str, ip: IpAddr, source: &io::Error) -> VipError {
        VipError::Spawn {
            program: self.program.clone(),
            ifname: ifname.to_owned(),
            ip,
            source: io::Error::new(source.kind(), source.to_string()),
        }
    }

    /// Every address on `ifname`, both families; a failure is reported
    /// against each of `ips`.
    fn addresses(&self, ifname: &str, ips: &[IpAddr]) -> Result<BTreeSet<IpAddr>, Vec<VipError>> {
        let args = ["-o", "addr", "show", "dev", ifname];
        let output = self.exec(&args, None).map_err(|e| {
            ips.iter()
                .map(|ip| self.spawn_error(ifname, *ip, &e))
                .collect::<Vec<_>>()
        })?;
        if output.status.success() {
            return Ok(parse_addresses(&String::from_utf8_lossy(&output.stdout)));
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        Err(ips
            .iter()
            .map(|ip| VipError::Command {
                command: format!("{} {}", self.program.display(), args.join(" ")),
                ifname: ifname.to_owned(),
                ip: *ip,
                status: output.status.to_string(),
                stderr: stderr.clone(),
            })
            .collect())
    }

    /// Runs `lines` (one `ip` command each, without the program name)
    /// through one `ip -force -batch -`, which goes on past a failing line.
    /// Returns, per line, `None` or the error `ip` printed for it (as
    /// `VipError::Command` for `ips[i]`); or every line failed to run.
    fn batch(&self, ifname: &str, ips: &[IpAddr], lines: &[String]) -> Vec<Option<VipError>> {
        let mut input = lines.join("\n");
        input.push('\n');
        let output = match self.exec(&["-force", "-batch", "-"], Some(&input)) {
            Ok(output) => output,
            Err(e) => {
                return ips
                    .iter()
                    .map(|ip| Some(self.spawn_error(ifname, *ip, &e)))
                    .collect()
            }
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        let mut failures = batch_failures(&stderr, lines.len());
        if !output.status.success() && failures.iter().all(Option::is_none) {
            // It failed without naming a line: count every line as failed.
            failures = vec![Some(stderr.trim().to_owned()); lines.len()];
        }
        failures
            .into_iter()
            .zip(ips.iter().zip(lines))
            .map(|(failure, (ip, line))| {
                failure.map(|stderr| VipError::Command {
                    command: format!("{} -force -batch - (line: {line})", self.program.display()),
                    ifname: ifname.to_owned(),
                    ip: *ip,
                    status: output.status.to_string(),
                    stderr,
                })
            })
            .collect()
    }
}

impl AddressOps for IpCommand {
    fn add_all(&self, ifname: &str, ips: &[IpAddr]) -> Vec<Result<bool, VipError>> {
        if ips.is_empty() || check_ifname(ifname).is_err() {
            return ips.iter().map(|_| Err(invalid_interface(ifname))).collect();
        }
        let present = match self.addresses(ifname, ips) {
            Ok(present) => present,
            Err(errors) => return errors.into_iter().map(Err).collect(),
        };
        let missing: Vec<IpAddr> = ips
            .iter()
            .filter(|ip| !present.contains(ip))
            .copied()
            .collect();
        let lines: Vec<String> = missing
            .iter()
            .map(|ip| {
                let (prefixed, extra) = host_address(*ip);
                let extra = extra.map(|e| format!(" {e}")).unwrap_or_default();
                format!("addr add {prefixed} dev {ifname}{extra}")
            })
            .collect();
        let mut failed: BTreeMap<IpAddr, VipError> = BTreeMap::new();
        if !lines.is_empty() {
            for (ip, failure) in missing.iter().zip(self.batch(ifname, &missing, &lines)) {
                if let Some(e) = failure {
                    failed.insert(*ip, e);
                }
            }
        }
        // Someone else added one between our look and our add: theirs.
        let now = if failed.is_empty() {
            BTreeSet::new()
        } else {
            self.addresses(ifname, &[]).unwrap_or_default()
        };
        ips.iter()
            .map(|ip| match failed.remove(ip) {
                Some(_) if now.contains(ip) => Ok(false),
                Some(e) => Err(e),
                None => Ok(!present.contains(ip)),
            })
            .collect()
    }

    fn remove_all(&self, ifname: &str, ips: &[IpAddr]) -> Vec<Result<(), VipError>> {
        if ips.is_empty() || check_ifname(ifname).is_err() {
            return ips.iter().map(|_| Err(invalid_interface(ifname))).collect();
        }
        // The addresses went with their interface.
        if nix::net::if_::if_nametoindex(ifname) == Err(nix::errno::Errno::ENODEV) {
            return ips.iter().map(|_| Ok(())).collect();
        }
        let lines: Vec<String> = ips
            .iter()
            .map(|ip| format!("addr del {} dev {ifname}", host_address(*ip).0))
            .collect();
        let failures = self.batch(ifname, ips, &lines);
        // An address already gone is not an error.
        let now = if failures.iter().all(Option::is_none) {
            None
        } else {
            self.addresses(ifname, &[]).ok()
        };
        ips.iter()
            .zip(failures)
            .map(|(ip, failure)| match failure {
                None => Ok(()),
                Some(_) if now.as_ref().is_some_and(|now| !now.contains(ip)) => Ok(()),
                Some(e) => Err(e),
            })
            .collect()
    }

    fn announce(&self, ifname: &str, ip: IpAddr) -> Result<(), VipError> {
        self.announcer.announce(ifname, ip)
    }
}

/// The VIP as a host address; IPv6 skips duplicate address detection so the
/// address is usable at once instead of after a second or more.
fn host_address(ip: IpAddr) -> (String, Option<&'static str>) {
    match ip {
        IpAddr::V4(v4) => (format!("{v4}/32"), None),
        IpAddr::V6(v6) => (format!("{v6}/128"), Some("nodad")),
    }
}

/// Addresses in `ip -o addr show` output (`... inet 192.0.2.1/24 ...`,
/// `... inet 10.0.0.1 peer 10.0.0.2/32 ...`).
fn parse_addresses(output: &str) -> BTreeSet<IpAddr> {
    output
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet" || *w == "inet6")?;
            let addr = words.next()?;
            addr.split('/').next()?.parse().ok()
        })
        .collect()
}

/// The error `ip -force -batch` printed for each of `lines` lines: the
/// lines it prints before `Command failed -:N` belong to line N.
fn batch_failures(stderr: &str, lines: usize) -> Vec<Option<String>> {
    let mut failures = vec![None; lines];
    let mut message: Vec<&str> = Vec::new();
    for text in stderr.lines().map(str::trim).filter(|t| !t.is_empty()) {
        let failed_line = text
            .strip_prefix("Command failed -:")
            .and_then(|n| n.trim().parse::<usize>().ok());
        match failed_line {
            Some(n) => {
                if let Some(slot) = n.checked_sub(1).and_then(|i| failures.get_mut(i)) {
                    *slot = Some(if message.is_empty() {
                        "failed".to_owned()
                    } else {
                        message.join("; ")
                    });
                }
                message.clear();
            }
            None => message.push(text),
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(ips: &[&str]) -> BTreeSet<IpAddr> {
        ips.iter().map(|s| ip(s)).collect()
    }

    #[test]
    fn parses_ip_addr_show_output() {
        let out = "2: eth0    inet 192.0.2.1/24 brd 192.0.2.255 scope global eth0\\       valid_lft forever\n\
                   2: eth0    inet 10.0.0.1 peer 10.0.0.2/32 scope global eth0\n\
                   2: eth0    inet6 2001:db8::10/128 scope global nodad \\       valid_lft forever\n\
                   garbage line\n";
        assert_eq!(
            parse_addresses(out),
            set(&["192.0.2.1", "10.0.0.1", "2001:db8::10"])
        );
    }

    #[test]
    fn batch_errors_belong_to_the_line_ip_names() {
        let stderr = "Error: ipv4: Address already assigned.\nCommand failed -:3\n\
                      Cannot find device \"nosuch\"\nCommand failed -:5\n";
        assert_eq!(
            batch_failures(stderr, 5),
            [
                None,
                None,
                Some("Error: ipv4: Address already assigned.".to_owned()),
                None,
                Some("Cannot find device \"nosuch\"".to_owned()),
            ]
        );
        // A line number outside the batch names nothing; a message never
        // followed by a line number is not pinned on any line.
        assert_eq!(
            batch_failures("Command failed -:9\noops\n", 2),
            [None, None]
        );
        assert_eq!(
            batch_failures("Command failed -:1\n", 1),
            [Some("failed".to_owned())]
        );
    }

    #[test]
    fn ip_command_rejects_bad_names_before_running_anything() {
        let ops = IpCommand::with_program("/nonexistent/ip");
        assert!(matches!(
            ops.add_all("a b", &[ip("192.0.2.1")]).as_slice(),
            [Err(VipError::InvalidInterface { .. })]
        ));
        assert!(matches!(
            ops.add_all("eth0", &[ip("192.0.2.1")]).as_slice(),
            [Err(VipError::Spawn { .. })]
        ));
    }
}
