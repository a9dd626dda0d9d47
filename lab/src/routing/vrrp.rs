//! An active-standby pair of edges: keepalived on the shipped
//! `deploy/keepalived.conf` in two edge namespaces ([`super::Namespaces`]),
//! each beside a stand-in for the edge's admin server ([`Readyz`]: `GET
//! /readyz` answers 200 or 503 as the test says), so a test sees the VIPs
//! follow the edge's readiness. With real edges instead of the stand-in,
//! the router finds the VIPs' holder on the segment by ARP
//! ([`join_vips_subnet`]), and a test reads where it sends them
//! ([`neighbour_mac`], [`link_mac`]). IPv6 VIPs ride along with the
//! advertised IPv4 ones as excluded addresses ([`with_excluded`],
//! [`dual_stack_config`]), as the shipped file's comment offers.

use std::fs::{self, File};
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::command;
use crate::netns;
use crate::procs;

use super::{deploy_file, read, Namespaces, RoutingError};

/// Where the edge's admin server answers `/readyz` by default (and where
/// the shipped `keepalived.conf` asks).
pub const READYZ: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9721);

/// The router's address in the VIPs' subnet (`192.0.2.0/24`, that of the
/// shipped config's VIPs), on the bridge the edges share: see
/// [`join_vips_subnet`].
pub const ROUTER_ON_VIPS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The prefix length of the VIPs' subnet.
pub const VIPS_PREFIX: u8 = 24;
/// The IPv6 VIPs that ride along with the shipped ones
/// ([`dual_stack_config`]): the shipped comment's example, and the next.
pub const VIPS6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 0x10),
    Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 0x11),
];
/// The router's address in the IPv6 VIPs' subnet (`2001:db8:10::/64`):
/// see [`join_vips_subnet`].
pub const ROUTER_ON_VIPS6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 1);
/// The prefix length of the IPv6 VIPs' subnet.
pub const VIPS6_PREFIX: u8 = 64;

/// How long a connection to the stand-in may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the stand-in looks for a connection or its stop.
const POLL: Duration = Duration::from_millis(10);

/// `text` (a config named `config` in errors) with its one line reading
/// `from` (leading and trailing blanks aside) reading `to`, indented alike.
pub fn replace_line(
    config: &str,
    text: &str,
    from: &str,
    to: &str,
) -> Result<String, RoutingError> {
    if text.lines().filter(|l| l.trim() == from).count() != 1 {
        return Err(RoutingError::MissingLine {
            config: config.to_string(),
            line: from.to_string(),
        });
    }
    Ok(text
        .lines()
        .map(|l| {
            if l.trim() == from {
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}{to}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n")
}

/// `deploy/keepalived.conf` for edge `n` with VRRP priority `priority`: its
/// own `router_id`, everything else as shipped (the pair differs in
/// priority only, as the file says).
pub fn keepalived_config(n: usize, priority: u8) -> Result<String, RoutingError> {
    let name = "keepalived.conf";
    let text = read(&deploy_file(name))?;
    let text = replace_line(
        name,
        &text,
        "router_id portico-edge-a",
        &format!("router_id portico-edge-{n}"),
    )?;
    replace_line(name, &text, "priority 150", &format!("priority {priority}"))
}

/// `text` (a keepalived config named `config` in errors) with a
/// `virtual_ipaddress_excluded` block of `addrs` (host addresses on `eth0`)
/// right after its one `virtual_ipaddress` block: keepalived moves them
/// with the advertised ones without putting them in its adverts, which is
/// how addresses of the other family ride along (the shipped file's
/// comment).
pub fn with_excluded(config: &str, text: &str, addrs: &[IpAddr]) -> Result<String, RoutingError> {
    const BLOCK: &str = "virtual_ipaddress {";
    let lines: Vec<&str> = text.lines().collect();
    let missing = |line: &str| RoutingError::MissingLine {
        config: config.to_string(),
        line: line.to_string(),
    };
    if lines.iter().filter(|l| l.trim() == BLOCK).count() != 1 {
        return Err(missing(BLOCK));
    }
    let start = lines
        .iter()
        .position(|l| l.trim() == BLOCK)
        .ok_or_else(|| missing(BLOCK))?;
    let end = start
        + lines[start..]
            .iter()
            .position(|l| l.trim() == "}")
            .ok_or_else(|| missing("the `}` closing virtual_ipaddress"))?;
    let indent = &lines[start][..lines[start].len() - lines[start].trim_start().len()];
    let mut out: Vec<String> = lines[..=end].iter().map(|l| l.to_string()).collect();
    out.push(format!("{indent}virtual_ipaddress_excluded {{"));
    for addr in addrs {
        let length = if addr.is_ipv4() { 32 } else { 128 };
        out.push(format!("{indent}\t{addr}/{length} dev eth0"));
    }
    out.push(format!("{indent}}}"));
    out.extend(lines[end + 1..].iter().map(|l| l.to_string()));
    Ok(out.join("\n") + "\n")
}

/// [`keepalived_config`] with [`VIPS6`] riding along ([`with_excluded`]):
/// the pair moves a VIP of each family.
pub fn dual_stack_config(n: usize, priority: u8) -> Result<String, RoutingError> {
    let v6: Vec<IpAddr> = VIPS6.iter().map(|v| IpAddr::V6(*v)).collect();
    with_excluded("keepalived.conf", &keepalived_config(n, priority)?, &v6)
}

/// The VIPs the shipped `deploy/keepalived.conf` moves (its
/// `virtual_ipaddress` block), in its order.
pub fn shipped_vips() -> Result<Vec<IpAddr>, RoutingError> {
    let name = "keepalived.conf";
    parse_vips(name, &read(&deploy_file(name))?)
}

/// The addresses of the one `virtual_ipaddress { ... }` block of `text`
/// (a keepalived config named `config` in errors): each line's first word,
/// `ADDRESS/PREFIX`; comments (`#`, `!`) and blank lines aside.
pub fn parse_vips(config: &str, text: &str) -> Result<Vec<IpAddr>, RoutingError> {
    let missing = |line: String| RoutingError::MissingLine {
        config: config.to_string(),
        line,
    };
    const BLOCK: &str = "virtual_ipaddress {";
    let mut lines = text.lines().map(str::trim);
    if text.lines().filter(|l| l.trim() == BLOCK).count() != 1 {
        return Err(missing(BLOCK.to_string()));
    }
    lines.find(|l| *l == BLOCK);
    let mut vips = Vec::new();
    for line in lines {
        if line == "}" {
            return if vips.is_empty() {
                Err(missing(format!("{BLOCK} ADDRESS/PREFIX ... }}")))
            } else {
                Ok(vips)
            };
        }
        if line.is_empty() || line.starts_with(['#', '!']) {
            continue;
        }
        let word = line.split_whitespace().next().unwrap_or_default();
        let addr = word.split_once('/').map_or(word, |(a, _)| a);
        vips.push(
            addr.parse()
                .map_err(|_| missing(format!("an address in {BLOCK} (found `{line}`)")))?,
        );
    }
    Err(missing(format!("the `}}` closing {BLOCK}")))
}

/// Gives the router an address in the VIPs' subnet of each family the
/// VIPs have ([`ROUTER_ON_VIPS`], [`ROUTER_ON_VIPS6`]) on the bridge the
/// edges share. keepalived puts the VIPs on the edge's segment interface as
/// host addresses and announces them by gratuitous ARP (unsolicited
/// neighbour advertisements for IPv6): that only reaches a router that
/// takes the VIPs for neighbours on that segment (as a site's router on the
/// public subnet does). Without it the lab's router, whose only addresses
/// there are in `10.42.0.0/24` and `fd42::/64`, would have no route to the
/// VIPs. Fails for a VIP outside the subnets.
pub fn join_vips_subnet(namespaces: &Namespaces, vips: &[IpAddr]) -> Result<(), RoutingError> {
    let mask = u32::MAX << (32 - VIPS_PREFIX);
    let mask6 = u128::MAX << (128 - VIPS6_PREFIX);
    for vip in vips {
        let inside = match vip {
            IpAddr::V4(v4) => u32::from(*v4) & mask == u32::from(ROUTER_ON_VIPS) & mask,
            IpAddr::V6(v6) => u128::from(*v6) & mask6 == u128::from(ROUTER_ON_VIPS6) & mask6,
        };
        if !inside {
            return Err(RoutingError::MissingLine {
                config: "keepalived.conf".to_string(),
                line: format!(
                    "{vip} is outside {ROUTER_ON_VIPS}/{VIPS_PREFIX} and {ROUTER_ON_VIPS6}/{VIPS6_PREFIX}, the lab's VIP subnets"
                ),
            });
        }
    }
    let router = namespaces.router();
    if vips.iter().any(IpAddr::is_ipv4) {
        netns::ip_line(&format!(
            "-n {router} addr add {ROUTER_ON_VIPS}/{VIPS_PREFIX} dev br0"
        ))?;
    }
    // No duplicate address detection: the address works at once.
    if vips.iter().any(IpAddr::is_ipv6) {
        netns::ip_line(&format!(
            "-n {router} addr add {ROUTER_ON_VIPS6}/{VIPS6_PREFIX} dev br0 nodad"
        ))?;
    }
    Ok(())
}

/// The link-layer address of device `dev` in namespace `ns`.
pub fn link_mac(ns: &str, dev: &str) -> Result<String, RoutingError> {
    let text = netns::ip(&["-j", "-n", ns, "link", "show", "dev", dev])?;
    parse_link_mac(&text)
}

/// Reads `ip -j link show dev DEV`: its `address`.
pub fn parse_link_mac(text: &str) -> Result<String, RoutingError> {
    let bad = |why: &str| RoutingError::IpJson(format!("{why}: {text}"));
    let links: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
    links
        .get(0)
        .and_then(|l| l.get("address"))
        .and_then(|a| a.as_str())
        .map(str::to_string)
        .ok_or_else(|| bad("no address"))
}

/// Where namespace `ns` sends `addr` on the segment: the link-layer address
/// of its neighbour entry, if it has a usable one (not `FAILED` or
/// `INCOMPLETE`).
pub fn neighbour_mac(ns: &str, addr: IpAddr) -> Result<Option<String>, RoutingError> {
    let addr = addr.to_string();
    let text = netns::ip(&["-j", "-n", ns, "neigh", "show", &addr])?;
    parse_neighbour_mac(&text)
}

/// Reads `ip -j neigh show ADDR`: the `lladdr` of its first entry that has
/// one and is neither `FAILED` nor `INCOMPLETE`.
pub fn parse_neighbour_mac(text: &str) -> Result<Option<String>, RoutingError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let entries: serde_json::Value =
        serde_json::from_str(text).map_err(|e| RoutingError::IpJson(format!("{e}: {text}")))?;
    let usable = |e: &&serde_json::Value| {
        !e.get("state")
            .and_then(|s| s.as_array())
            .into_iter()
            .flatten()
            .any(|s| matches!(s.as_str(), Some("FAILED" | "INCOMPLETE")))
    };
    Ok(entries
        .as_array()
        .into_iter()
        .flatten()
        .filter(usable)
        .find_map(|e| e.get("lladdr").and_then(|m| m.as_str()).map(str::to_string)))
}

/// keepalived (VRRP only) in a namespace, in the foreground as a child of
/// this process, logging to a file; killed on drop.
#[derive(Debug)]
pub struct Keepalived {
    /// Its namespace.
    pub ns: String,
    /// Its log file.
    pub log: PathBuf,
    child: Option<Child>,
}

impl Keepalived {
    /// Writes `config` to `<dir>/<name>.conf` and starts `keepalived
    /// --dont-fork --vrrp` on it in namespace `ns`, its pid files in `dir`.
    pub fn start(
        ns: &str,
        dir: &Path,
        name: &str,
        config: &str,
    ) -> Result<Keepalived, RoutingError> {
        let file = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RoutingError::File { path, source }
        };
        let conf = dir.join(format!("{name}.conf"));
        fs::write(&conf, config).map_err(file(&conf))?;
        let log = dir.join(format!("{name}.log"));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(file(&log))?;
        let err = out.try_clone().map_err(file(&log))?;
        let program = command::daemon_program("keepalived");
        let pid = |what: &str| dir.join(format!("{name}.{what}.pid"));
        // -n: no fork (the parent stays this child; it forks the VRRP
        // process); -l -D -G: detailed log on the console, none to syslog;
        // -P: VRRP only; own pid files, so two run side by side.
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(["-n", "-l", "-D", "-G", "-P", "-f"])
            .arg(&conf)
            .arg("-p")
            .arg(pid("main"))
            .arg("-r")
            .arg(pid("vrrp"))
            .arg("-c")
            .arg(pid("checkers"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| RoutingError::Spawn {
                ns: ns.to_string(),
                source,
            })?;
        Ok(Keepalived {
            ns: ns.to_string(),
            log,
            child: Some(child),
        })
    }

    /// Kills every keepalived process in its namespace at once (SIGKILL:
    /// no priority-0 advert, the VIPs stay where they are, as when its host
    /// dies) and reaps its own child.
    pub fn kill(&mut self) -> Result<(), RoutingError> {
        for pid in netns::pids(&self.ns)? {
            // ESRCH: it ended meanwhile.
            if let Err(e) = kill(Pid::from_raw(pid), Signal::SIGKILL) {
                if e != nix::errno::Errno::ESRCH {
                    tracing::warn!(ns = %self.ns, pid, error = %e, "cannot kill keepalived");
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            if let Err(e) = child.wait() {
                tracing::warn!(ns = %self.ns, error = %e, "cannot reap keepalived");
            }
        }
        Ok(())
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        procs::log_tail(&self.log, lines)
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = child.kill() {
                tracing::warn!(ns = %self.ns, error = %e, "cannot kill keepalived");
            }
            if let Err(e) = child.wait() {
                tracing::warn!(ns = %self.ns, error = %e, "cannot reap keepalived");
            }
        }
    }
}

/// Whether namespace `ns` holds `addr` on any interface.
pub fn holds(ns: &str, addr: IpAddr) -> Result<bool, RoutingError> {
    let family = if addr.is_ipv6() { "-6" } else { "-4" };
    let text = netns::ip(&["-o", family, "-n", ns, "addr", "show"])?;
    let prefix = format!("{addr}/");
    Ok(text
        .split_whitespace()
        .any(|word| word.starts_with(&prefix)))
}

/// A stand-in for the edge's admin server: `GET /readyz` on [`READYZ`]
/// inside a namespace answers 200 while [`Readyz::set_ready`] says so, 503
/// otherwise. Stops when dropped.
pub struct Readyz {
    ready: Arc<AtomicBool>,
    ok_answers: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Readyz {
    /// Listens on [`READYZ`] inside namespace `ns`, ready.
    pub fn start(ns: &str) -> Result<Readyz, RoutingError> {
        let listener = netns::in_netns(ns, || TcpListener::bind(READYZ))?.map_err(|source| {
            RoutingError::Bind {
                ns: ns.to_string(),
                addr: READYZ,
                source,
            }
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| RoutingError::Bind {
                ns: ns.to_string(),
                addr: READYZ,
                source,
            })?;
        let ready = Arc::new(AtomicBool::new(true));
        let ok_answers = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (ready, ok_answers, stop) = (ready.clone(), ok_answers.clone(), stop.clone());
            std::thread::spawn(move || serve(&listener, &ready, &ok_answers, &stop))
        };
        Ok(Readyz {
            ready,
            ok_answers,
            stop,
            thread: Some(thread),
        })
    }

    /// Answers 200 from now on (`true`) or 503 (`false`).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// How many 200s it has answered.
    pub fn ok_answers(&self) -> u64 {
        self.ok_answers.load(Ordering::SeqCst)
    }
}

impl Drop for Readyz {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                eprintln!("readyz stand-in: its thread panicked");
            }
        }
    }
}

/// The stand-in's accept loop, until `stop`.
fn serve(listener: &TcpListener, ready: &AtomicBool, ok_answers: &AtomicU64, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let ok = ready.load(Ordering::SeqCst);
                match answer(stream, ok) {
                    Ok(()) if ok => {
                        ok_answers.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(()) => {}
                    Err(e) => tracing::debug!(error = %e, "readyz stand-in: a client left early"),
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) => {
                tracing::warn!(error = %e, "readyz stand-in: accept failed");
                std::thread::sleep(POLL);
            }
        }
    }
}

/// Reads one request's head and answers 200 (`ok`) or 503, closing.
fn answer(mut stream: TcpStream, ok: bool) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let (status, body) = if ok {
        ("200 OK", "ready\n")
    } else {
        ("503 Service Unavailable", "not ready\n")
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_is_replaced_with_its_indent() {
        let text = "a {\n\tpriority 150\n}\n";
        assert_eq!(
            replace_line("t", text, "priority 150", "priority 100").unwrap(),
            "a {\n\tpriority 100\n}\n"
        );
        assert!(replace_line("t", text, "priority 99", "x").is_err());
        assert!(replace_line("t", "a\na\n", "a", "b").is_err());
    }

    #[test]
    fn the_shipped_vips_are_read_from_their_block() {
        let text = "vrrp_instance x {\n  virtual_ipaddress {\n    # a comment\n    192.0.2.10/32 dev eth0\n\n    2001:db8::10/128 dev eth0\n  }\n}\n";
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            parse_vips("t", text).unwrap(),
            [ip("192.0.2.10"), ip("2001:db8::10")]
        );
        assert!(parse_vips("t", "virtual_ipaddress {\n}\n").is_err());
        assert!(parse_vips("t", "virtual_ipaddress {\n  nope/32\n}\n").is_err());
        assert!(parse_vips("t", "virtual_ipaddress {\n  192.0.2.10/32\n").is_err());
        assert!(parse_vips("t", "a\n").is_err());
        assert_eq!(
            shipped_vips().unwrap(),
            [ip("192.0.2.10"), ip("192.0.2.11")]
        );
    }

    #[test]
    fn excluded_addresses_follow_the_advertised_block() {
        let text = "vrrp_instance x {\n\tvirtual_ipaddress {\n\t\t192.0.2.10/32 dev eth0\n\t}\n\ttrack_script {\n\t}\n}\n";
        let v6 = [IpAddr::V6(VIPS6[0])];
        assert_eq!(
            with_excluded("t", text, &v6).unwrap(),
            "vrrp_instance x {\n\tvirtual_ipaddress {\n\t\t192.0.2.10/32 dev eth0\n\t}\n\tvirtual_ipaddress_excluded {\n\t\t2001:db8:10::10/128 dev eth0\n\t}\n\ttrack_script {\n\t}\n}\n"
        );
        assert!(with_excluded("t", "a\n", &v6).is_err());
        let dual = dual_stack_config(2, 100).unwrap();
        assert_eq!(parse_vips("t", &dual).unwrap(), shipped_vips().unwrap());
        for vip in VIPS6 {
            assert_eq!(dual.matches(&format!("\t{vip}/128 dev eth0")).count(), 1);
        }
        assert!(dual.contains("\tpriority 100\n"));
    }

    #[test]
    fn link_and_neighbour_addresses() {
        let link = r#"[{"ifindex":2,"ifname":"eth0","link_type":"ether","address":"aa:bb:cc:00:00:01","broadcast":"ff:ff:ff:ff:ff:ff"}]"#;
        assert_eq!(parse_link_mac(link).unwrap(), "aa:bb:cc:00:00:01");
        assert!(parse_link_mac("[]").is_err());
        let reachable = r#"[{"dst":"192.0.2.10","dev":"br0","lladdr":"aa:bb:cc:00:00:02","state":["REACHABLE"]}]"#;
        assert_eq!(
            parse_neighbour_mac(reachable).unwrap().as_deref(),
            Some("aa:bb:cc:00:00:02")
        );
        let failed = r#"[{"dst":"192.0.2.10","dev":"br0","state":["FAILED"]}]"#;
        assert_eq!(parse_neighbour_mac(failed).unwrap(), None);
        let stale_incomplete = r#"[{"dst":"192.0.2.10","dev":"br0","lladdr":"aa:bb:cc:00:00:02","state":["INCOMPLETE"]}]"#;
        assert_eq!(parse_neighbour_mac(stale_incomplete).unwrap(), None);
        assert_eq!(parse_neighbour_mac("").unwrap(), None);
    }
}
