//! The namespaces of several edges and their router: `<prefix>-router`
//! holding a bridge, `<prefix>-edge<n>` each joined to it by a veth pair
//! (`eth0` in the edge), addresses of both families ([`Namespaces`]); and
//! the [`Fabric`] that runs BIRD in each on the shipped configs.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::netns::{self, ip_line};
use crate::procs;

use super::bird::Bird;
use super::resilient::{learned_table, ResilientFib};
use super::{
    deploy_file, edge_v4, edge_v6, log_to_file, read, set_defines, RoutingError, EDGES, MAX_EDGES,
    ROUTER_V4, ROUTER_V6,
};

/// How long the processes in a namespace get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The namespaces `<prefix>-router` (a bridge `br0` holding [`ROUTER_V4`]
/// and [`ROUTER_V6`]) and `<prefix>-edge<n>` (`eth0`, a veth pair to the
/// bridge, holding [`edge_v4`] and [`edge_v6`]), and a directory for the
/// daemons' files; dropping it stops every process in the namespaces and
/// removes them and the directory.
pub struct Namespaces {
    prefix: String,
    dir: PathBuf,
    edges: usize,
}

impl Namespaces {
    /// Builds them with `edges` edges (2 to [`MAX_EDGES`]), removing
    /// leftovers of the same prefix first, and creates `dir`; a failure
    /// halfway removes what was built.
    pub fn up(prefix: &str, dir: &Path, edges: usize) -> Result<Namespaces, RoutingError> {
        if !(EDGES..=MAX_EDGES).contains(&edges) {
            return Err(RoutingError::Edges(edges));
        }
        remove(prefix)?;
        // From here on an error drops `namespaces`, which removes them.
        let namespaces = Namespaces {
            prefix: prefix.to_string(),
            dir: dir.to_path_buf(),
            edges,
        };
        fs::create_dir_all(dir).map_err(|source| RoutingError::File {
            path: dir.to_path_buf(),
            source,
        })?;
        namespaces.build()?;
        Ok(namespaces)
    }

    /// The router's namespace.
    pub fn router(&self) -> String {
        namespace(&self.prefix, "router")
    }

    /// Edge `n`'s (1-based) namespace.
    pub fn edge(&self, n: usize) -> String {
        namespace(&self.prefix, &format!("edge{n}"))
    }

    /// How many edges there are (numbered from 1).
    pub fn edges(&self) -> usize {
        self.edges
    }

    /// The directory for the daemons' files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The router with a bridge, the edges on veth pairs to it, addresses of
    /// both families (no duplicate address detection, so they work at once).
    fn build(&self) -> Result<(), RoutingError> {
        let router = self.router();
        netns::add(&router)?;
        for line in [
            format!("-n {router} link add br0 type bridge"),
            format!("-n {router} link set br0 up"),
            format!("-n {router} addr add {ROUTER_V4}/24 dev br0"),
            format!("-n {router} addr add {ROUTER_V6}/64 dev br0 nodad"),
        ] {
            ip_line(&line)?;
        }
        for n in 1..=self.edges {
            let edge = self.edge(n);
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
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        if let Err(e) = remove(&self.prefix) {
            eprintln!("namespaces {}: teardown failed: {e}", self.prefix);
        }
        if self.dir.exists() {
            if let Err(e) = fs::remove_dir_all(&self.dir) {
                eprintln!("namespaces {}: {}: {e}", self.prefix, self.dir.display());
            }
        }
    }
}

/// How the router installs its routes to the VIPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterFib {
    /// As the shipped config does: BIRD's multipath routes in the main
    /// table (the kernel hashes a flow over the next hops present, so a
    /// change of next hops may move any flow).
    Multipath,
    /// Through resilient nexthop groups ([`ResilientFib`]): a next hop
    /// leaving moves only its own flows.
    Resilient,
}

/// An upstream router and its edges in [`Namespaces`], each running BIRD
/// on the shipped configs; removed when dropped.
pub struct Fabric {
    /// The router's BIRD.
    pub router: Bird,
    /// The edges' BIRDs, edge 1 first.
    pub edges: Vec<Bird>,
    /// The router's resilient FIB, with [`RouterFib::Resilient`].
    pub resilient: Option<ResilientFib>,
    // Dropped after the daemons (fields drop in order).
    namespaces: Namespaces,
}

impl Fabric {
    /// Builds the [`Namespaces`] of `prefix` with `edges` edges, starts BIRD
    /// in each with the shipped configs (rendered into `dir`), and waits up
    /// to `limit` for every BGP session and the router's BFD sessions.
    pub fn up(
        prefix: &str,
        dir: &Path,
        edges: usize,
        limit: Duration,
    ) -> Result<Fabric, RoutingError> {
        Fabric::up_with(prefix, dir, edges, RouterFib::Multipath, limit)
    }

    /// [`Fabric::up`] with the router installing its routes as `fib` says.
    pub fn up_with(
        prefix: &str,
        dir: &Path,
        edges: usize,
        fib: RouterFib,
        limit: Duration,
    ) -> Result<Fabric, RoutingError> {
        let namespaces = Namespaces::up(prefix, dir, edges)?;
        // An error from here on drops the daemons started, then the
        // namespaces.
        let mut config = router_config(edges, &Bird::log_path(dir, "router"))?;
        let resilient = (fib == RouterFib::Resilient).then(|| {
            config = learned_table(&config);
            ResilientFib::start(&namespaces.router())
        });
        let router = Bird::start(&namespaces.router(), dir, "router", &config)?;
        let count = edges;
        let mut edges = Vec::new();
        for n in 1..=count {
            let name = format!("edge{n}");
            edges.push(Bird::start(
                &namespaces.edge(n),
                dir,
                &name,
                &edge_config(n, &Bird::log_path(dir, &name))?,
            )?);
        }
        let fabric = Fabric {
            router,
            edges,
            resilient,
            namespaces,
        };
        let sessions: Vec<String> = (1..=count)
            .flat_map(|n| [format!("edge{n}_v4"), format!("edge{n}_v6")])
            .collect();
        let names: Vec<&str> = sessions.iter().map(String::as_str).collect();
        fabric.router.wait_established(&names, limit)?;
        for edge in &fabric.edges {
            edge.wait_established(&["upstream4", "upstream6"], limit)?;
        }
        let peers: Vec<IpAddr> = (1..=count)
            .flat_map(|n| [IpAddr::V4(edge_v4(n)), IpAddr::V6(edge_v6(n))])
            .collect();
        fabric.router.wait_bfd_up(&peers, limit)?;
        Ok(fabric)
    }

    /// Its namespaces.
    pub fn namespaces(&self) -> &Namespaces {
        &self.namespaces
    }

    /// The router's namespace.
    pub fn router_ns(&self) -> String {
        self.namespaces.router()
    }

    /// Edge `n`'s (1-based) namespace.
    pub fn edge_ns(&self, n: usize) -> String {
        self.namespaces.edge(n)
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
            eprintln!(
                "fabric {}: logs{}",
                self.namespaces.prefix,
                self.log_tails(30)
            );
        }
        // The daemons, then (as the fields drop) the namespaces.
        self.router.kill();
        for edge in &mut self.edges {
            edge.kill();
        }
    }
}

/// The namespace of `role` under `prefix`.
fn namespace(prefix: &str, role: &str) -> String {
    format!("{prefix}-{role}")
}

/// Stops what runs in the namespaces of `prefix` and deletes them; safe
/// when none is there.
pub fn remove(prefix: &str) -> Result<(), RoutingError> {
    let roles: Vec<String> = std::iter::once("router".to_string())
        .chain((1..=MAX_EDGES).map(|n| format!("edge{n}")))
        .collect();
    let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
    procs::remove_namespaces(prefix, &roles, STOP_GRACE)?;
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

/// `deploy/bird-router.conf` for `edges` edges, logging to `log`: the
/// shipped file's sessions for edges 1 and 2, and for each further edge
/// what its comments ask of an operator, a `define` pair and a copy of
/// edge 2's protocol pair.
pub fn router_config(edges: usize, log: &Path) -> Result<String, RoutingError> {
    let name = "bird-router.conf";
    let mut text = read(&deploy_file(name))?;
    let mut values = vec![
        ("ROUTER_V4".to_string(), ROUTER_V4.to_string()),
        ("ROUTER_V6".to_string(), ROUTER_V6.to_string()),
    ];
    for n in 1..=edges {
        values.push((format!("EDGE{n}_V4"), edge_v4(n).to_string()));
        values.push((format!("EDGE{n}_V6"), edge_v6(n).to_string()));
    }
    if edges > EDGES {
        let pair = edge_sessions(name, &text, EDGES)?;
        for n in EDGES + 1..=edges {
            text.push_str(&format!(
                "\ndefine EDGE{n}_V4 = 0.0.0.0;\ndefine EDGE{n}_V6 = ::;\n"
            ));
            text.push_str(
                &pair
                    .replace(&format!("EDGE{EDGES}_"), &format!("EDGE{n}_"))
                    .replace(&format!("edge{EDGES}_"), &format!("edge{n}_")),
            );
        }
    }
    let values: Vec<(&str, String)> = values
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let text = set_defines(name, &text, &values)?;
    log_to_file(name, &text, log)
}

/// The `protocol bgp edge<n>_v4` and `_v6` blocks of `text`, each up to
/// its closing line `}`.
fn edge_sessions(config: &str, text: &str, n: usize) -> Result<String, RoutingError> {
    let mut pair = String::new();
    for family in ["v4", "v6"] {
        let head = format!("protocol bgp edge{n}_{family} ");
        let start = text
            .lines()
            .position(|l| l.starts_with(&head))
            .ok_or_else(|| RoutingError::MissingLine {
                config: config.to_string(),
                line: head.clone(),
            })?;
        for line in text.lines().skip(start) {
            pair.push_str(line);
            pair.push('\n');
            if line == "}" {
                break;
            }
        }
    }
    Ok(pair)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_third_edge_gets_its_defines_and_sessions_and_bird_accepts_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = router_config(3, &dir.path().join("router.log")).expect("rendered");
        for line in [
            format!("define EDGE3_V4 = {};", edge_v4(3)),
            format!("define EDGE3_V6 = {};", edge_v6(3)),
            "protocol bgp edge3_v4 from edge {".to_string(),
            "protocol bgp edge3_v6 from edge {".to_string(),
            "\tneighbor EDGE3_V4 as EDGE_ASN;".to_string(),
            "\tneighbor EDGE3_V6 as EDGE_ASN;".to_string(),
        ] {
            assert_eq!(
                text.lines().filter(|l| *l == line).count(),
                1,
                "{line:?} once in:\n{text}"
            );
        }
        // Edge 2's pair is still there, once.
        assert_eq!(text.matches("protocol bgp edge2_v4 ").count(), 1);
        assert!(router_config(MAX_EDGES, &dir.path().join("router.log")).is_ok());
        if crate::command::installed_or_skip("bird -p of a three-edge router", &[("bird", "bird2")])
        {
            let file = dir.path().join("router.conf");
            fs::write(&file, &text).expect("write");
            super::super::bird_parse(&file).unwrap_or_else(|e| panic!("{e}\n{text}"));
        }
    }

    #[test]
    fn edge_counts_outside_the_bridge_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        for edges in [0, 1, MAX_EDGES + 1] {
            let refused = Namespaces::up("pedgecount", dir.path(), edges);
            assert!(
                matches!(refused, Err(RoutingError::Edges(n)) if n == edges),
                "{edges}"
            );
        }
    }
}
