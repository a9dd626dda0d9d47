//! The one admission path of the data path, for TCP connections and UDP
//! flows alike: what the accept tasks share, the source-range check, the
//! choice of nodes, and the reason and metric of every refusal.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::metrics::{reject, EdgeMetrics};
use crate::plan::Access;
use crate::snapshot::{Route, Snapshot};

/// What accept tasks share.
#[derive(Clone)]
pub struct AcceptContext {
    /// The current snapshot.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Becomes true when established connections must end (drain over).
    pub shutdown: watch::Receiver<bool>,
    /// Every connection task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Metrics.
    pub metrics: EdgeMetrics,
}

/// Why a client was refused before any node was contacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The client is outside the Service's source ranges.
    SourceRange,
    /// The Service's source ranges could not be read; it accepts no client.
    InvalidSourceRange,
    /// The route has no backend at all (no NodePort, no eligible node).
    NoBackend,
    /// Every backend is down and the Service fails closed.
    NoHealthyBackend,
}

impl Refusal {
    /// The `reason` label of `portico_edge_connections_rejected_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::SourceRange => reject::SOURCE_RANGE,
            Refusal::InvalidSourceRange => reject::INVALID_SOURCE_RANGE,
            Refusal::NoBackend => reject::NO_BACKEND,
            Refusal::NoHealthyBackend => reject::NO_HEALTHY_BACKEND,
        }
    }

    /// Counts the refusal on the route.
    fn count(self, route: &Route) {
        let m = &route.metrics;
        match self {
            Refusal::SourceRange => m.rejected_source_range.inc(),
            Refusal::InvalidSourceRange => m.rejected_invalid_range.inc(),
            Refusal::NoBackend => m.rejected_no_backend.inc(),
            Refusal::NoHealthyBackend => m.rejected_no_healthy.inc(),
        }
    }
}

/// The first step for a new client (a TCP connection, a UDP flow's first
/// datagram): counts it as accepted and checks its address against the
/// Service's source ranges. A refusal is counted.
pub fn check_source(route: &Route, client: SocketAddr) -> Result<(), Refusal> {
    route.metrics.accepted.inc();
    if route.planned.access.allows(client.ip()) {
        return Ok(());
    }
    let refusal = match route.planned.access {
        Access::Closed { .. } => Refusal::InvalidSourceRange,
        _ => Refusal::SourceRange,
    };
    refusal.count(route);
    Err(refusal)
}

/// The second step: the backends to try for `client`, best first, at most
/// `tries` of them (indices into the route's backends). A refusal is
/// counted.
pub fn pick(route: &Route, client: SocketAddr, tries: usize) -> Result<Vec<usize>, Refusal> {
    let candidates = route.candidates(client, tries);
    if !candidates.is_empty() {
        return Ok(candidates);
    }
    let refusal = if route.backends.is_empty() {
        Refusal::NoBackend
    } else {
        Refusal::NoHealthyBackend
    };
    refusal.count(route);
    Err(refusal)
}
