//! Several edges announcing their VIPs over BGP, in network namespaces: the
//! real BIRD running the shipped `deploy/bird-edge.conf` on each edge and
//! `deploy/bird-router.conf` on an upstream router, for the tests of that
//! contract (and of the edge's side of it).
//!
//! [`Fabric::up`] builds a `router` namespace holding a bridge, and two
//! `edge<n>` namespaces each joined to it by a veth pair, with IPv4 and IPv6
//! addresses ([`ROUTER_V4`], [`edge_v4`], ...); renders the shipped configs
//! with those addresses ([`set_defines`]: only the values of their marked
//! `define` lines change, and the log goes to a file); starts one [`Bird`]
//! per namespace and waits for every BGP session. Dropping the [`Fabric`]
//! kills the daemons and removes the namespaces, also after a failure.
//!
//! The edge's side of the contract is a host route per VIP in table
//! [`VIP_TABLE`] with protocol [`VIP_PROTO`]; a test stands in for the edge
//! with `ip route add 192.0.2.10/32 dev lo table 4242 proto 242` and reads
//! what the router made of it with [`nexthops`].

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::command::{self, CommandFailed};
use crate::netns::{self, ip_line, NetnsError};
use crate::procs::{self, ProcError};

/// The kernel routing table the edge puts its VIP routes in.
pub const VIP_TABLE: u32 = 4242;
/// The route protocol number of the edge's VIP routes.
pub const VIP_PROTO: u32 = 242;

/// The router's IPv4 address on the bridge the edges share.
pub const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 1);
/// The router's IPv6 address on that bridge.
pub const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0xfd42, 0, 0, 0, 0, 0, 0, 1);
/// The number of edges: `deploy/bird-router.conf` has a BGP session pair
/// for each of two edges.
pub const EDGES: usize = 2;

/// How long one `birdc` or `ip` command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(10);
/// How often a condition is re-checked.
const RECHECK: Duration = Duration::from_millis(10);
/// How long the processes in a namespace get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Edge `n`'s (1-based) IPv4 address on the bridge.
pub fn edge_v4(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 42, 0, 10 + n as u8)
}

/// Edge `n`'s (1-based) IPv6 address on the bridge.
pub fn edge_v6(n: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd42, 0, 0, 0, 0, 0, 0, 0x10 + n as u16)
}

/// A shipped deploy file (`deploy/<name>` of this repository).
pub fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

/// A failure to render a config, run BIRD or build the namespaces.
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

/// `bird -p -c config`: parses the config (and checks its filters and
/// symbols) without starting anything.
pub fn bird_parse(config: &Path) -> Result<(), CommandFailed> {
    let bird = bird_program("bird");
    command::run(
        &bird,
        &[
            "-p".to_string(),
            "-c".to_string(),
            config.display().to_string(),
        ],
        None,
        COMMAND_LIMIT,
    )
    .map(|_| ())
}

/// Where `program` (`bird`, `birdc`) is: on PATH, else Debian's /usr/sbin.
fn bird_program(program: &str) -> String {
    match command::find_on_path(program) {
        Some(p) => p.display().to_string(),
        None => format!("/usr/sbin/{program}"),
    }
}

/// A BIRD daemon in a namespace, in the foreground as a child of this
/// process, with its own control socket, pid file and log; killed on drop.
#[derive(Debug)]
pub struct Bird {
    /// Its namespace.
    pub ns: String,
    /// Its control socket (`birdc -s`).
    pub socket: PathBuf,
    /// Its log file (the config's `log`, and what it prints).
    pub log: PathBuf,
    child: Option<Child>,
}

impl Bird {
    /// Writes `config` to `<dir>/<name>.conf` and starts `bird -f -c CONF -s
    /// SOCK -P PIDFILE` in namespace `ns`. `config` should log to
    /// [`Bird::log_path`] ([`log_to_file`]).
    pub fn start(ns: &str, dir: &Path, name: &str, config: &str) -> Result<Bird, RoutingError> {
        let file = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RoutingError::File { path, source }
        };
        let conf = dir.join(format!("{name}.conf"));
        fs::write(&conf, config).map_err(file(&conf))?;
        let socket = dir.join(format!("{name}.ctl"));
        let log = Bird::log_path(dir, name);
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(file(&log))?;
        let err = out.try_clone().map_err(file(&log))?;
        // `ip netns exec` execs bird: the child's pid is BIRD's.
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bird_program("bird"))
            .arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(dir.join(format!("{name}.pid")))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| RoutingError::Spawn {
                ns: ns.to_string(),
                source,
            })?;
        Ok(Bird {
            ns: ns.to_string(),
            socket,
            log,
            child: Some(child),
        })
    }

    /// The log file of the BIRD named `name` in `dir`.
    pub fn log_path(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("{name}.log"))
    }

    /// `birdc -s SOCK <command>`: what BIRD answered.
    pub fn birdc(&self, command: &str) -> Result<String, RoutingError> {
        let mut args = vec!["-s".to_string(), self.socket.display().to_string()];
        args.extend(command.split_whitespace().map(str::to_string));
        Ok(command::run(
            &bird_program("birdc"),
            &args,
            None,
            COMMAND_LIMIT,
        )?)
    }

    /// `show protocols`: each protocol's name, state and info column (`up`
    /// and `Established` for a BGP session that is up).
    pub fn protocols(&self) -> Result<Vec<Protocol>, RoutingError> {
        let text = self.birdc("show protocols")?;
        Ok(parse_protocols(&text))
    }

    /// Whether BIRD still runs (an exited, unreaped one does not).
    pub fn running(&self) -> bool {
        let Some(child) = &self.child else {
            return false;
        };
        fs::read_to_string(format!("/proc/{}/stat", child.id()))
            .ok()
            .and_then(|stat| Some(stat.rsplit_once(") ")?.1.chars().next()? != 'Z'))
            .unwrap_or(false)
    }

    /// `birdc` while waiting on BIRD: a failure is "not yet" (`Ok(Err)`)
    /// while BIRD runs (it makes its control socket a moment after it
    /// starts), and ends the wait once it has exited.
    fn birdc_waiting(&self, command: &str) -> Result<Result<String, String>, RoutingError> {
        match self.birdc(command) {
            Ok(text) => Ok(Ok(text)),
            Err(e) if self.running() => Ok(Err(e.to_string())),
            Err(e) => Err(RoutingError::Exited {
                ns: self.ns.clone(),
                last: e.to_string(),
                log: self.log_tail(20),
            }),
        }
    }

    /// Waits until every protocol in `names` is an Established BGP session.
    pub fn wait_established(&self, names: &[&str], limit: Duration) -> Result<(), RoutingError> {
        let what = format!("{}: BGP {names:?} established", self.ns);
        wait_for(&what, limit, || {
            let protocols = match self.birdc_waiting("show protocols")? {
                Ok(text) => parse_protocols(&text),
                Err(not_yet) => return Ok(Err(not_yet)),
            };
            let up = names.iter().all(|n| {
                protocols
                    .iter()
                    .any(|p| p.name == *n && p.state == "up" && p.info.starts_with("Established"))
            });
            Ok(if up {
                Ok(())
            } else {
                Err(format!("{protocols:?}"))
            })
        })
    }

    /// Waits until BIRD's BFD sessions to each of `peers` are Up.
    pub fn wait_bfd_up(&self, peers: &[IpAddr], limit: Duration) -> Result<(), RoutingError> {
        wait_for(&format!("{}: BFD up to {peers:?}", self.ns), limit, || {
            let text = match self.birdc_waiting("show bfd sessions")? {
                Ok(text) => text,
                Err(not_yet) => return Ok(Err(not_yet)),
            };
            let up = peers.iter().all(|peer| {
                text.lines().any(|l| {
                    let words: Vec<&str> = l.split_whitespace().collect();
                    words.first() == Some(&peer.to_string().as_str()) && words.contains(&"Up")
                })
            });
            Ok(if up { Ok(()) } else { Err(text) })
        })
    }

    /// Ends BIRD at once (SIGKILL: no BGP notification, no BFD farewell,
    /// as when its host dies) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = child.kill() {
                tracing::warn!(ns = %self.ns, error = %e, "cannot kill bird");
            }
            if let Err(e) = child.wait() {
                tracing::warn!(ns = %self.ns, error = %e, "cannot reap bird");
            }
        }
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        procs::log_tail(&self.log, lines)
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A line of `birdc show protocols`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protocol {
    /// Its name.
    pub name: String,
    /// Its protocol (`BGP`, `Kernel`, ...).
    pub proto: String,
    /// `up`, `start`, `down`, ...
    pub state: String,
    /// The info column (`Established`, `Active`, an error).
    pub info: String,
}

/// Reads `birdc show protocols`: `Name Proto Table State Since Info`, the
/// since column being a time of day (one word).
pub fn parse_protocols(text: &str) -> Vec<Protocol> {
    text.lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            if words.len() < 5 || words[0] == "Name" {
                return None;
            }
            Some(Protocol {
                name: words[0].to_string(),
                proto: words[1].to_string(),
                state: words[3].to_string(),
                info: words[5..].join(" "),
            })
        })
        .collect()
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

/// An upstream router and [`EDGES`] edges in namespaces, each running BIRD
/// on the shipped configs; removed when dropped.
pub struct Fabric {
    prefix: String,
    dir: PathBuf,
    /// The router's BIRD.
    pub router: Bird,
    /// The edges' BIRDs, edge 1 first.
    pub edges: Vec<Bird>,
}

impl Fabric {
    /// Builds the namespaces `<prefix>-router` and `<prefix>-edge<n>`,
    /// starts BIRD in each with the shipped configs (rendered into
    /// `dir`, which is created), and waits up to `limit` for every BGP
    /// session and every BFD session. Leftovers of an earlier fabric with
    /// the same prefix are removed first.
    pub fn up(prefix: &str, dir: &Path, limit: Duration) -> Result<Fabric, RoutingError> {
        remove(prefix)?;
        fs::create_dir_all(dir).map_err(|source| RoutingError::File {
            path: dir.to_path_buf(),
            source,
        })?;
        build_namespaces(prefix).inspect_err(|_| {
            if let Err(e) = remove(prefix) {
                tracing::error!(prefix, error = %e, "cannot remove a half-built fabric");
            }
        })?;
        // Until the `Fabric` exists, an error drops what was started and
        // this guard removes the namespaces; then the `Fabric` does.
        let mut guard = Cleanup {
            prefix: prefix.to_string(),
            armed: true,
        };
        let router = Bird::start(
            &namespace(prefix, "router"),
            dir,
            "router",
            &router_config(&Bird::log_path(dir, "router"))?,
        )?;
        let mut edges = Vec::new();
        for n in 1..=EDGES {
            let name = format!("edge{n}");
            edges.push(Bird::start(
                &namespace(prefix, &name),
                dir,
                &name,
                &edge_config(n, &Bird::log_path(dir, &name))?,
            )?);
        }
        guard.armed = false;
        let fabric = Fabric {
            prefix: prefix.to_string(),
            dir: dir.to_path_buf(),
            router,
            edges,
        };
        let sessions: Vec<String> = (1..=EDGES)
            .flat_map(|n| [format!("edge{n}_v4"), format!("edge{n}_v6")])
            .collect();
        let names: Vec<&str> = sessions.iter().map(String::as_str).collect();
        fabric.router.wait_established(&names, limit)?;
        for edge in &fabric.edges {
            edge.wait_established(&["upstream4", "upstream6"], limit)?;
        }
        let peers: Vec<IpAddr> = (1..=EDGES)
            .flat_map(|n| [IpAddr::V4(edge_v4(n)), IpAddr::V6(edge_v6(n))])
            .collect();
        fabric.router.wait_bfd_up(&peers, limit)?;
        Ok(fabric)
    }

    /// The router's namespace.
    pub fn router_ns(&self) -> String {
        namespace(&self.prefix, "router")
    }

    /// Edge `n`'s (1-based) namespace.
    pub fn edge_ns(&self, n: usize) -> String {
        namespace(&self.prefix, &format!("edge{n}"))
    }

    /// The ends of every BIRD's log, for a failure's message.
    pub fn log_tails(&self, lines: usize) -> String {
        std::iter::once(&self.router)
            .chain(&self.edges)
            .map(|b| format!("\n--- {} ---\n{}", b.ns, b.log_tail(lines)))
            .collect()
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("fabric {}: logs{}", self.prefix, self.log_tails(30));
        }
        self.router.kill();
        for edge in &mut self.edges {
            edge.kill();
        }
        if let Err(e) = remove(&self.prefix) {
            eprintln!("fabric {}: teardown failed: {e}", self.prefix);
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("fabric {}: {}: {e}", self.prefix, self.dir.display());
        }
    }
}

/// Removes the namespaces of a fabric being built when it fails halfway.
struct Cleanup {
    prefix: String,
    armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = remove(&self.prefix) {
                eprintln!("fabric {}: teardown failed: {e}", self.prefix);
            }
        }
    }
}

/// The namespace of `role` under `prefix`.
fn namespace(prefix: &str, role: &str) -> String {
    format!("{prefix}-{role}")
}

/// Every role's namespace name.
fn roles() -> Vec<String> {
    std::iter::once("router".to_string())
        .chain((1..=EDGES).map(|n| format!("edge{n}")))
        .collect()
}

/// Stops what runs in the fabric `prefix`'s namespaces and deletes them;
/// safe when none is there.
pub fn remove(prefix: &str) -> Result<(), RoutingError> {
    let roles = roles();
    let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
    procs::remove_namespaces(prefix, &roles, STOP_GRACE)?;
    Ok(())
}

/// The router with a bridge, the edges on veth pairs to it, addresses of
/// both families (no duplicate address detection, so they work at once).
fn build_namespaces(prefix: &str) -> Result<(), RoutingError> {
    let router = namespace(prefix, "router");
    netns::add(&router)?;
    ip_line(&format!("-n {router} link add br0 type bridge"))?;
    ip_line(&format!("-n {router} link set br0 up"))?;
    ip_line(&format!("-n {router} addr add {ROUTER_V4}/24 dev br0"))?;
    ip_line(&format!(
        "-n {router} addr add {ROUTER_V6}/64 dev br0 nodad"
    ))?;
    for n in 1..=EDGES {
        let edge = namespace(prefix, &format!("edge{n}"));
        netns::add(&edge)?;
        for line in [
            format!("link add eth0 netns {edge} type veth peer name edge{n} netns {router}"),
            format!("-n {router} link set edge{n} master br0 up"),
            format!("-n {edge} link set eth0 up"),
            format!("-n {edge} addr add {}/24 dev eth0", edge_v4(n)),
            format!("-n {edge} addr add {}/64 dev eth0 nodad", edge_v6(n)),
        ] {
            ip_line(&line)?;
        }
    }
    Ok(())
}

/// `deploy/bird-edge.conf` for edge `n`, logging to `log`.
pub fn edge_config(n: usize, log: &Path) -> Result<String, RoutingError> {
    let name = "bird-edge.conf";
    let text = read(&deploy_file(name))?;
    let text = set_defines(
        name,
        &text,
        &[
            ("EDGE_V4", edge_v4(n).to_string()),
            ("ROUTER_V4", ROUTER_V4.to_string()),
            ("EDGE_V6", edge_v6(n).to_string()),
            ("ROUTER_V6", ROUTER_V6.to_string()),
        ],
    )?;
    log_to_file(name, &text, log)
}

/// `deploy/bird-router.conf` for this fabric's edges, logging to `log`.
pub fn router_config(log: &Path) -> Result<String, RoutingError> {
    let name = "bird-router.conf";
    let text = read(&deploy_file(name))?;
    let mut values = vec![
        ("ROUTER_V4", ROUTER_V4.to_string()),
        ("ROUTER_V6", ROUTER_V6.to_string()),
    ];
    let edges: Vec<(String, String, String, String)> = (1..=EDGES)
        .map(|n| {
            (
                format!("EDGE{n}_V4"),
                edge_v4(n).to_string(),
                format!("EDGE{n}_V6"),
                edge_v6(n).to_string(),
            )
        })
        .collect();
    for (k4, v4, k6, v6) in &edges {
        values.push((k4, v4.clone()));
        values.push((k6, v6.clone()));
    }
    let text = set_defines(name, &text, &values)?;
    log_to_file(name, &text, log)
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
    fn protocols_are_read() {
        let text = "BIRD 2.0.12 ready.\n\
            Name       Proto      Table      State  Since         Info\n\
            device1    Device     ---        up     21:12:47.314  \n\
            edge1_v4   BGP        ---        up     21:12:51.575  Established   \n\
            edge2_v4   BGP        ---        start  21:13:05.034  Active        Error: BFD session down\n";
        let p = parse_protocols(text);
        assert_eq!(p.len(), 3);
        assert_eq!(p[1].name, "edge1_v4");
        assert_eq!(p[1].state, "up");
        assert_eq!(p[1].info, "Established");
        assert_eq!(p[2].info, "Active Error: BFD session down");
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
