//! The Kubernetes source: LoadBalancer Services and Nodes from the API
//! server in, Services (with assigned addresses) and Nodes out to the edge,
//! statuses and Events back to the API server.
//!
//! - [`translate`]: one object -> the shared model (pure), and the
//!   `portico.io/...` annotations;
//! - [`reconcile`]: the whole cluster -> what to serve, what to write back
//!   (pure; addresses come from [`crate::ipam`]);
//! - [`watch`]: the watches, the reconcile loop and the writes (IO).

pub mod reconcile;
pub mod translate;
pub mod watch;

pub use watch::{ClusterModel, ClusterSource};
