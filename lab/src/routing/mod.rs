//! Several edges serving the same VIPs, in network namespaces: the real
//! BIRD running the shipped `deploy/bird-edge.conf` on each edge and
//! `deploy/bird-router.conf` on an upstream router (or keepalived on
//! `deploy/keepalived.conf`, [`vrrp`]), for the tests of that contract (and
//! of the edge's side of it).
//!
//! [`Namespaces::up`] builds a `router` namespace holding a bridge, and 2 to
//! [`MAX_EDGES`] `edge<n>` namespaces each joined to it by a veth pair, with IPv4 and IPv6
//! addresses ([`ROUTER_V4`], [`edge_v4`], ...). [`Fabric::up`] builds them,
//! renders the shipped configs with those addresses ([`set_defines`]: only
//! the values of their marked `define` lines change, and the log goes to a
//! file; [`edge_config`], [`router_config`]), starts one [`Bird`] per
//! namespace and waits for every BGP and BFD session. Dropping the
//! [`Fabric`] kills the daemons and removes the namespaces, also after a
//! failure.
//!
//! [`vrrp`] is the other way of several edges: keepalived in two edge
//! [`Namespaces`], each beside a stand-in for the edge's `/readyz`.
//!
//! The edge's side of the contract is a host route per VIP in table
//! [`VIP_TABLE`] with protocol [`VIP_PROTO`]; a test stands in for the edge
//! with `ip route add 192.0.2.10/32 dev lo table 4242 proto 242` and reads
//! what the router made of it with [`nexthops`].

use std::collections::BTreeSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::command::CommandFailed;
use crate::netns::{self, NetnsError};
use crate::procs::ProcError;

mod bird;
mod fabric;
pub mod resilient;
pub mod vrrp;

pub use bird::{bird_parse, parse_protocols, Bird, Protocol};
pub use fabric::{edge_config, remove, router_config, Fabric, Namespaces, RouterFib};

/// The kernel routing table the edge puts its VIP routes in.
pub const VIP_TABLE: u32 = 4242;
/// The route protocol number of the edge's VIP routes.
pub const VIP_PROTO: u32 = 242;

/// The router's IPv4 address on the bridge the edges share.
pub const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 1);
/// The router's IPv6 address on that bridge.
pub const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0xfd42, 0, 0, 0, 0, 0, 0, 1);
/// The number of edges of a pair (VRRP's, and the sessions
/// `deploy/bird-router.conf` ships with).
pub const EDGES: usize = 2;
/// The most edges [`Namespaces`] builds (one address each on the bridge).
pub const MAX_EDGES: usize = 8;

/// How long one `birdc` or `ip` command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(10);
/// How often a condition is re-checked.
const RECHECK: Duration = Duration::from_millis(10);

/// Edge `n`'s (1-based) IPv4 address on the bridge.
pub fn edge_v4(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 42, 0, 10 + n as u8)
}

/// Edge `n`'s (1-based) IPv6 address on the bridge.
pub fn edge_v6(n: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd42, 0, 0, 0, 0, 0, 0, 0x10 + n as u16)
}

/// Edge `n`'s (1-based) address of `family` on the bridge: [`edge_v4`] or
/// [`edge_v6`].
pub fn edge_ip(n: usize, family: crate::topology::IpFamily) -> IpAddr {
    match family {
        crate::topology::IpFamily::V4 => IpAddr::V4(edge_v4(n)),
        crate::topology::IpFamily::V6 => IpAddr::V6(edge_v6(n)),
    }
}

/// A shipped deploy file (`deploy/<name>` of this repository).
pub fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

/// A failure to render a config, run BIRD or keepalived, or build the
/// namespaces.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// A config lacks a `define NAME = ...;` line the renderer sets, or has
    /// it more than once.
    #[error("{config}: expected one `define {name} = ...;` line, found {found}")]
    Define {
        /// Which config.
        config: String,
        /// The constant.
        name: String,
        /// How many lines define it.
        found: usize,
    },
    /// A fabric of an edge count it cannot build.
    #[error("{0} edges: a fabric has 2 to {MAX_EDGES}")]
    Edges(usize),
    /// A config lacks the line a renderer replaces.
    #[error("{config}: no line `{line}` to replace")]
    MissingLine {
        /// Which config.
        config: String,
        /// The line.
        line: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// BIRD could not be started.
    #[error("cannot start bird in {ns}: {source}")]
    Spawn {
        /// Its namespace.
        ns: String,
        /// Why.
        source: std::io::Error,
    },
    /// BIRD exited while it was waited on (a config it refused, say).
    #[error("bird in {ns} exited: {last}; log tail:\n{log}")]
    Exited {
        /// Its namespace.
        ns: String,
        /// The last `birdc` failure.
        last: String,
        /// The end of its log.
        log: String,
    },
    /// The readiness stand-in could not listen.
    #[error("cannot listen on {addr} in {ns}: {source}")]
    Bind {
        /// Its namespace.
        ns: String,
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A command (`birdc`, `ip`, `bird -p`) failed.
    #[error(transparent)]
    Command(#[from] CommandFailed),
    /// A namespace operation failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The processes of a namespace could not be stopped.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// A condition did not come true in time.
    #[error("{what}: not within {limit:?}; last seen: {last}")]
    Timeout {
        /// The condition.
        what: String,
        /// How long it was given.
        limit: Duration,
        /// What was seen last.
        last: String,
    },
    /// Output of `ip -j` that is not the JSON expected.
    #[error("cannot read `ip -j` output: {0}")]
    IpJson(String),
}

/// `text` (a BIRD config named `config` in errors) with the value of each
/// `define NAME = value;` line of `values` replaced: the shipped configs mark
/// their site settings this way, so a test runs everything else as shipped.
/// Each name must be defined exactly once, at the start of a line.
pub fn set_defines(
    config: &str,
    text: &str,
    values: &[(&str, String)],
) -> Result<String, RoutingError> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for (name, value) in values {
        let head = format!("define {name} =");
        let found: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.starts_with(&head))
            .map(|(i, _)| i)
            .collect();
        if found.len() != 1 {
            return Err(RoutingError::Define {
                config: config.to_string(),
                name: name.to_string(),
                found: found.len(),
            });
        }
        lines[found[0]] = format!("define {name} = {value};");
    }
    Ok(lines.join("\n") + "\n")
}

/// `text` with its one `log syslog all;` line sending the log to `file`
/// instead (a namespace has no syslog worth reading).
pub fn log_to_file(config: &str, text: &str, file: &Path) -> Result<String, RoutingError> {
    const SYSLOG: &str = "log syslog all;";
    if text.lines().filter(|l| l.trim() == SYSLOG).count() != 1 {
        return Err(RoutingError::MissingLine {
            config: config.to_string(),
            line: SYSLOG.to_string(),
        });
    }
    let to_file = format!("log \"{}\" all;", file.display());
    Ok(text
        .lines()
        .map(|l| {
            if l.trim() == SYSLOG {
                to_file.as_str()
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n")
}

/// The next hops of the route to `prefix` in the main table of namespace
/// `ns` (one for a plain route, several for a multipath one); empty when
/// there is no such route.
pub fn nexthops(ns: &str, prefix: &str) -> Result<BTreeSet<IpAddr>, RoutingError> {
    let family = if prefix.contains(':') { "-6" } else { "-4" };
    let text = netns::ip(&["-j", family, "-n", ns, "route", "show", prefix])?;
    parse_nexthops(&text)
}

/// Reads `ip -j route show PREFIX`: the gateways of its routes, of a plain
/// route (`gateway`) or a multipath one (`nexthops[].gateway`).
pub fn parse_nexthops(text: &str) -> Result<BTreeSet<IpAddr>, RoutingError> {
    let bad = |why: String| RoutingError::IpJson(format!("{why}: {text}"));
    if text.trim().is_empty() {
        return Ok(BTreeSet::new());
    }
    let routes: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let routes = routes.as_array().ok_or_else(|| bad("not a list".into()))?;
    let mut gateways = BTreeSet::new();
    let mut add = |value: &serde_json::Value| -> Result<(), RoutingError> {
        if let Some(gw) = value.get("gateway").and_then(|g| g.as_str()) {
            gateways.insert(gw.parse().map_err(|_| bad(format!("gateway {gw}")))?);
        }
        Ok(())
    };
    for route in routes {
        add(route)?;
        for hop in route
            .get("nexthops")
            .and_then(|h| h.as_array())
            .into_iter()
            .flatten()
        {
            add(hop)?;
        }
    }
    Ok(gateways)
}

/// Calls `check` every few milliseconds until it gives `Ok(Ok(value))`, at
/// most `limit`; `Ok(Err(seen))` means not yet (what was seen goes into the
/// timeout's message), `Err` ends the wait at once.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<Result<T, String>, RoutingError>,
) -> Result<T, RoutingError> {
    let deadline = Instant::now() + limit;
    loop {
        let last = match check()? {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            return Err(RoutingError::Timeout {
                what: what.to_string(),
                limit,
                last,
            });
        }
        std::thread::sleep(RECHECK);
    }
}

/// Waits until the route to `prefix` in namespace `ns` has exactly the next
/// hops `want`; how long that took.
pub fn wait_nexthops(
    ns: &str,
    prefix: &str,
    want: &BTreeSet<IpAddr>,
    limit: Duration,
) -> Result<Duration, RoutingError> {
    let started = Instant::now();
    wait_for(
        &format!("{ns}: route to {prefix} via {want:?}"),
        limit,
        || {
            let have = nexthops(ns, prefix)?;
            Ok(if &have == want {
                Ok(started.elapsed())
            } else {
                Err(format!("{have:?}"))
            })
        },
    )
}

fn read(path: &Path) -> Result<String, RoutingError> {
    fs::read_to_string(path).map_err(|source| RoutingError::File {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defines_are_set_by_name_and_must_exist_once() {
        let text = "define A = 1; # a\ndefine AB = 2;\nrouter id A;\n";
        let out = set_defines("t", text, &[("A", "7".into())]).unwrap();
        assert_eq!(out, "define A = 7;\ndefine AB = 2;\nrouter id A;\n");
        assert!(matches!(
            set_defines("t", text, &[("C", "1".into())]),
            Err(RoutingError::Define { found: 0, .. })
        ));
        assert!(matches!(
            set_defines("t", "define A = 1;\ndefine A = 2;\n", &[("A", "1".into())]),
            Err(RoutingError::Define { found: 2, .. })
        ));
    }

    #[test]
    fn log_goes_to_the_file() {
        let out = log_to_file("t", "a;\nlog syslog all;\n", Path::new("/x/b.log")).unwrap();
        assert_eq!(out, "a;\nlog \"/x/b.log\" all;\n");
        assert!(log_to_file("t", "a;\n", Path::new("/x")).is_err());
    }

    #[test]
    fn nexthops_of_plain_and_multipath_routes() {
        let plain = r#"[{"dst":"192.0.2.10","gateway":"10.42.0.11","dev":"br0","protocol":"bird","metric":32,"flags":[]}]"#;
        let multi = r#"[{"dst":"192.0.2.10","protocol":"bird","metric":32,"flags":[],"nexthops":[{"gateway":"10.42.0.11","dev":"br0","weight":1,"flags":[]},{"gateway":"10.42.0.12","dev":"br0","weight":1,"flags":[]}]}]"#;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            parse_nexthops(plain).unwrap(),
            BTreeSet::from([ip("10.42.0.11")])
        );
        assert_eq!(
            parse_nexthops(multi).unwrap(),
            BTreeSet::from([ip("10.42.0.11"), ip("10.42.0.12")])
        );
        assert!(parse_nexthops("").unwrap().is_empty());
        assert!(parse_nexthops("[]").unwrap().is_empty());
    }
}
