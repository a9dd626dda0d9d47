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
use super::{
    deploy_file, edge_v4, edge_v6, log_to_file, read, set_defines, RoutingError, EDGES, ROUTER_V4,
    ROUTER_V6,
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
}

impl Namespaces {
    /// Builds them (removing leftovers of the same prefix first) and creates
    /// `dir`; a failure halfway removes what was built.
    pub fn up(prefix: &str, dir: &Path) -> Result<Namespaces, RoutingError> {
        remove(prefix)?;
        // From here on an error drops `namespaces`, which removes them.
        let namespaces = Namespaces {
            prefix: prefix.to_string(),
            dir: dir.to_path_buf(),
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
        for n in 1..=EDGES {
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

/// An upstream router and [`EDGES`] edges in [`Namespaces`], each running
/// BIRD on the shipped configs; removed when dropped.
pub struct Fabric {
    /// The router's BIRD.
    pub router: Bird,
    /// The edges' BIRDs, edge 1 first.
    pub edges: Vec<Bird>,
    // Dropped after the daemons (fields drop in order).
    namespaces: Namespaces,
}

impl Fabric {
    /// Builds the [`Namespaces`] of `prefix`, starts BIRD in each with the
    /// shipped configs (rendered into `dir`), and waits up to `limit` for
    /// every BGP session and the router's BFD sessions.
    pub fn up(prefix: &str, dir: &Path, limit: Duration) -> Result<Fabric, RoutingError> {
        let namespaces = Namespaces::up(prefix, dir)?;
        // An error from here on drops the daemons started, then the
        // namespaces.
        let router = Bird::start(
            &namespaces.router(),
            dir,
            "router",
            &router_config(&Bird::log_path(dir, "router"))?,
        )?;
        let mut edges = Vec::new();
        for n in 1..=EDGES {
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
            namespaces,
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
        .chain((1..=EDGES).map(|n| format!("edge{n}")))
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
