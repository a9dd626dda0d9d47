//! The edge's status, typed end to end: what the control task reports,
//! what `/status` serves as JSON, what `portico-edge status` fetches
//! ([`fetch`]) and prints as a table ([`render`]).

mod fetch;
mod render;

pub use fetch::{fetch, set_drained, StatusError};
pub use render::render;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// Where the admin server gets the status from (the control task).
pub trait StatusSource: Send + Sync + 'static {
    /// The current status; `None` when the edge is shutting down.
    fn status(&self) -> BoxFuture<'static, Option<Status>>;
}

/// Who may connect through a listener (its Service's source ranges).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "policy", rename_all = "camelCase")]
pub enum AccessStatus {
    /// Every client.
    Any,
    /// Clients inside one of `count` ranges.
    Ranges {
        /// How many ranges.
        count: usize,
    },
    /// No client: the ranges could not be read (fail closed).
    Closed {
        /// Why, naming the offending entries.
        reason: String,
    },
}

/// The status of one listener, for `/status` and `portico-edge status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListenerStatus {
    /// `tcp/VIP:port`.
    pub listener: String,
    /// `namespace/name`.
    pub service: String,
    /// Port name or number.
    pub port: String,
    /// Whether the socket is open (and the error if not).
    pub open: bool,
    /// Why it is not open, if it is not.
    pub error: Option<String>,
    /// Who may connect.
    pub access: AccessStatus,
    /// Why the route cannot carry traffic, if it cannot.
    pub problem: Option<String>,
    /// True when no backend is healthy.
    pub all_down: bool,
    /// One row per node.
    pub backends: Vec<BackendStatus>,
}

/// The status of one backend of a listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendStatus {
    /// Node name.
    pub node: String,
    /// `address:nodePort`.
    pub addr: String,
    /// Health check, e.g. `node-proxy:10.0.0.1:10256`.
    pub check: String,
    /// Healthy?
    pub healthy: bool,
    /// Whether a probe has completed yet.
    pub probed: bool,
    /// Weight.
    pub weight: u32,
    /// Connections this edge has open to it.
    pub active: u64,
    /// The last probe error, if failing.
    pub last_error: Option<String>,
}

/// The whole status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Status {
    /// Snapshot generation.
    pub generation: u64,
    /// One entry per listener, sorted.
    pub listeners: Vec<ListenerStatus>,
}
