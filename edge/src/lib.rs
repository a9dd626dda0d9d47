//! Portico's edge: an L4 load balancer in front of Kubernetes nodes.
//!
//! Data flow: a source hands an [`portico_config::EdgeConfig`] to the
//! [`edge::Edge`]; the pure [`plan`] turns it into listeners and routes; the
//! [`snapshot`] builder adds health and selection state and publishes an
//! immutable snapshot; each accepted connection ([`proxy`]) reads that
//! snapshot once, checks the source range, picks nodes, connects with retry
//! and [`copy`]s both ways.

pub mod admin;
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
pub mod run;
pub mod snapshot;
pub mod source_ranges;
pub mod sources;
pub mod status_view;
pub mod sys;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod udp;
pub mod upgrade;
pub mod vip;
