//! The Kubernetes source: LoadBalancer Services and Nodes from the API
//! server in, Services (with assigned addresses) and Nodes out to the edge,
//! statuses and Events back to the API server.
//!
//! - [`translate`]: one object -> the shared model (pure), and the
//!   `portico.io/...` annotations;
//! - [`reconcile`]: the whole cluster -> what to serve, what to write back
//!   (pure; addresses come from [`crate::ipam`]);
//! - [`events`]: the Events told to the Services' owners (pure: their
//!   shape, their length, which refusals are final, which are already
//!   there);
//! - [`leader`]: which of several edges writes (a Lease);
//! - [`watch`]: the watches, the reconcile loop and the writes (IO).

pub mod events;
pub mod leader;
pub mod reconcile;
pub mod translate;
pub mod watch;

pub use watch::{ClusterModel, ClusterSource};
