//! What the hook API asks the edge before it accepts a load balancer.

use portico_config::{Node, Service, ServiceKey};

/// What decides whether the edge would serve the hook's load balancers
/// next to its other sources (the config file's Services, the descriptor
/// budget). The hook asks before it accepts a call, so it never answers 200
/// for a load balancer the edge would leave out, and never persists one.
pub trait Admission: Send + Sync {
    /// Which of `services` (the hook's, earliest first) the edge would
    /// leave out, with why.
    fn left_out(&self, services: &[Service], nodes: &[Node]) -> Vec<NotAdmitted>;
}

/// A load balancer the edge would not serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAdmitted {
    /// Its Service.
    pub service: ServiceKey,
    /// The request field at fault (`service.spec.ports`,
    /// `service.metadata.name`).
    pub field: &'static str,
    /// Why, naming the Service.
    pub reason: String,
}

/// Admits everything (tests of the hook API alone).
pub struct AdmitAll;

impl Admission for AdmitAll {
    fn left_out(&self, _: &[Service], _: &[Node]) -> Vec<NotAdmitted> {
        Vec::new()
    }
}
