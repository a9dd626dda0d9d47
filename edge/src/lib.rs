//! Portico's edge: an L4 load balancer in front of Kubernetes nodes.
//!
//! Data flow: the [`sources`] (config file, Kubernetes, hook API) merge into
//! one [`portico_config::EdgeConfig`] for the [`edge::Edge`]; the pure
//! [`plan`] turns it into listeners and routes; the [`snapshot`] builder
//! adds health and selection state and publishes an immutable snapshot;
//! each accepted connection ([`proxy`]) or UDP flow ([`udp`]) reads that
//! snapshot once, goes through [`admission`] (source range, node choice),
//! and is forwarded (with connect retry and [`copy`] for TCP).

pub mod admin;
pub mod admission;
pub mod announce;
pub mod budget;
pub mod cluster;
pub mod copy;
pub mod edge;
pub mod health;
pub mod hook;
pub mod ipam;
pub mod listeners;
pub mod maglev;
pub mod metrics;
pub mod plan;
pub mod proxy;
pub mod proxy_protocol;
mod rtnl;
pub mod run;
pub mod snapshot;
pub mod sockets;
pub mod source_ranges;
pub mod sources;
pub mod status;
pub mod sys;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod udp;
pub mod upgrade;
pub mod vip;
