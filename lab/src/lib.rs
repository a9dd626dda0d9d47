//! The Portico lab: the whole system end to end on one Linux machine, in
//! network namespaces it creates and always removes again.
//!
//! An outside client network with two clients (one inside a Service's
//! source range, one outside), the edge appliance (the real `portico-edge`,
//! holding the VIPs on its public interface and watching the cluster), three
//! Kubernetes "nodes" (each running the real `portico-node-agent run
//! --kubernetes`), and "pods" behind a bridge on each node running a small
//! server that answers with its name and the client address it saw. The
//! Kubernetes objects live in `portico-kube-fake`, run as a background API
//! server, and are created through it, so both binaries run exactly as they
//! would in a cluster. The topology, with names and addresses, is drawn in
//! [`topology`].
//!
//! Nothing outside the lab's namespaces is changed: no host routes, links,
//! sysctls or modules; traffic only goes to addresses inside them. Every
//! namespace is `<prefix>-<role>`: the `portico-lab` binary uses
//! [`lab::DEFAULT_PREFIX`], tests their own, so both can run at once.
//!
//! [`Lab::up`] builds and starts it, [`down`] removes it by prefix.
//!
//! [`routing`] is the contract between several edges and their upstream
//! router: the real BIRD on the shipped `deploy/bird-*.conf`, in namespaces
//! of its own (a router and two edges, [`routing::Fabric`]).
//!
//! Without namespaces, [`standin`] is a stand-in Kubernetes node on the host
//! itself (NodePorts and kube-proxy's health endpoints): the quick-start
//! demo runs three (`portico-lab stand-in-node`), the edge's tests start
//! them in-process.

pub mod api;
pub mod bench;
pub mod command;
pub mod lab;
pub mod load;
pub mod netns;
pub mod objects;
pub mod pod;
pub mod procfs;
pub mod procs;
pub mod routing;
pub mod scale;
pub mod standin;
pub mod stats;
mod sync;
pub mod topology;

pub use lab::{down, status, Binaries, DownReport, Lab, LabError, LabOptions};
pub use topology::Client;
