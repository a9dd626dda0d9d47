//! The one admission path of the data path, for TCP connections and UDP
//! flows alike: what the accept tasks share, the caps on what clients may
//! hold ([`ClientLimits`]), the source-range check, the choice of nodes,
//! and the reason and metric of every refusal.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
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
    /// The caps on connections and UDP flows.
    pub limits: Arc<ClientLimits>,
}

/// What clients may hold at once, over every listener: TCP connections
/// (`maxConnections`, HAProxy's `maxconn`) and UDP flows (`maxUdpFlows`).
/// Both are shares of the descriptor budget ([`crate::budget`]), so the
/// descriptors the listeners, probes and control plane need are never
/// taken by clients.
///
/// A TCP listener that accepts a connection while every slot is taken
/// waits with it until one frees (counted in
/// `portico_edge_limit_reached_total{limit="connections"}`); further
/// clients wait in its backlog, as with HAProxy. A datagram that would
/// start a UDP flow beyond the cap is dropped and counted.
pub struct ClientLimits {
    connections: Arc<Semaphore>,
    max_connections: AtomicUsize,
    /// Slots to retire as they come back, after the cap was lowered while
    /// they were in use.
    retire: AtomicUsize,
    flows: AtomicUsize,
    max_flows: AtomicUsize,
}

/// A TCP connection's slot, given back when dropped.
pub struct ConnectionSlot {
    permit: Option<OwnedSemaphorePermit>,
    limits: Arc<ClientLimits>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let retire = self
            .limits
            .retire
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if let Some(permit) = self.permit.take() {
            if retire {
                permit.forget();
            }
        }
    }
}

/// A UDP flow's slot, given back when dropped.
pub struct FlowSlot {
    limits: Arc<ClientLimits>,
}

impl Drop for FlowSlot {
    fn drop(&mut self) {
        self.limits.flows.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ClientLimits {
    /// Caps of `max_connections` and `max_flows`.
    pub fn new(max_connections: usize, max_flows: usize) -> Arc<ClientLimits> {
        Arc::new(ClientLimits {
            connections: Arc::new(Semaphore::new(max_connections)),
            max_connections: AtomicUsize::new(max_connections),
            retire: AtomicUsize::new(0),
            flows: AtomicUsize::new(0),
            max_flows: AtomicUsize::new(max_flows),
        })
    }

    /// New caps (a reload). A lower connection cap takes slots out of use
    /// as they come back; connections already served are not touched.
    pub fn resize(&self, max_connections: usize, max_flows: usize) {
        self.max_flows.store(max_flows, Ordering::Release);
        let old = self.max_connections.swap(max_connections, Ordering::AcqRel);
        if max_connections > old {
            let mut more = max_connections - old;
            // Slots still to retire are simply kept instead.
            let kept = self
                .retire
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    Some(n.saturating_sub(more))
                })
                .unwrap_or(0)
                .min(more);
            more -= kept;
            self.connections.add_permits(more);
        } else if max_connections < old {
            let fewer = old - max_connections;
            let forgotten = self.connections.forget_permits(fewer);
            self.retire.fetch_add(fewer - forgotten, Ordering::AcqRel);
        }
    }

    /// The connection cap.
    pub fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::Acquire)
    }

    /// A slot for a TCP connection: at once if one is free (`Ok`), else
    /// `Err` with a future that waits for one.
    pub fn connection(
        self: &Arc<Self>,
    ) -> Result<ConnectionSlot, impl std::future::Future<Output = ConnectionSlot>> {
        match Arc::clone(&self.connections).try_acquire_owned() {
            Ok(permit) => Ok(self.slot(permit)),
            Err(_) => {
                let limits = Arc::clone(self);
                Err(async move {
                    let permit = Arc::clone(&limits.connections)
                        .acquire_owned()
                        .await
                        .expect("the connection semaphore is never closed");
                    limits.slot(permit)
                })
            }
        }
    }

    fn slot(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> ConnectionSlot {
        ConnectionSlot {
            permit: Some(permit),
            limits: Arc::clone(self),
        }
    }

    /// A slot for a new UDP flow, if the cap allows one more.
    pub fn flow(self: &Arc<Self>) -> Option<FlowSlot> {
        let max = self.max_flows.load(Ordering::Acquire);
        self.flows
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| FlowSlot {
                limits: Arc::clone(self),
            })
    }

    /// UDP flows held now.
    pub fn flows(&self) -> usize {
        self.flows.load(Ordering::Acquire)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn held(limits: &Arc<ClientLimits>, n: usize) -> Vec<ConnectionSlot> {
        (0..n)
            .map(|_| match limits.connection() {
                Ok(slot) => slot,
                Err(_) => panic!("a free slot was expected"),
            })
            .collect()
    }

    #[tokio::test]
    async fn connections_wait_for_a_slot_when_every_one_is_taken() {
        let limits = ClientLimits::new(2, 0);
        let mut slots = held(&limits, 2);
        let Err(wait) = limits.connection() else {
            panic!("no slot should be free")
        };
        let waiting = tokio::spawn(wait);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        slots.pop();
        let slot = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the freed slot goes to the waiter")
            .unwrap();
        drop(slot);
        assert!(limits.connection().is_ok());
    }

    #[test]
    fn a_lower_cap_retires_slots_as_they_come_back_and_a_higher_one_restores_them() {
        let limits = ClientLimits::new(4, 0);
        let mut slots = held(&limits, 3);
        limits.resize(2, 0);
        assert_eq!(limits.max_connections(), 2);
        // The free slot was forgotten at once; one more retires on return.
        assert!(limits.connection().is_err());
        slots.pop();
        assert!(limits.connection().is_err(), "two held, the new cap");
        slots.pop();
        slots.pop();
        let again = held(&limits, 2);
        assert!(limits.connection().is_err());
        drop(again);
        limits.resize(5, 0);
        let all = held(&limits, 5);
        assert!(limits.connection().is_err());
        drop(all);
    }

    #[test]
    fn raising_the_cap_while_slots_are_due_to_retire_keeps_them_instead() {
        let limits = ClientLimits::new(3, 0);
        let slots = held(&limits, 3);
        limits.resize(1, 0);
        limits.resize(3, 0);
        drop(slots);
        let all = held(&limits, 3);
        assert!(limits.connection().is_err());
        drop(all);
    }

    #[test]
    fn flows_are_capped_and_given_back() {
        let limits = ClientLimits::new(0, 2);
        let a = limits.flow().unwrap();
        let _b = limits.flow().unwrap();
        assert!(limits.flow().is_none());
        drop(a);
        assert_eq!(limits.flows(), 1);
        assert!(limits.flow().is_some());
        limits.resize(0, 1);
        assert!(limits.flow().is_none());
    }
}
