//! What the hook API asks before it admits a load balancer: would the edge
//! serve it next to the config file's Services, inside the descriptor
//! budget? The same merge and fit the edge applies ([`super::merge`]), so
//! the hook never answers 200 for a Service the edge then leaves out.

use std::sync::{Arc, PoisonError, RwLock};

use portico_config::{EdgeConfig, Node, Service};

use super::merge::{merge, Contribution, Reason};
use crate::hook::{Admission, NotAdmitted};

/// The hook API's source name in the merge.
pub const HOOK: &str = "the hook API";

/// The config file and the budget the hook API's Services are merged with.
pub struct FileGate {
    current: RwLock<(Arc<EdgeConfig>, u64)>,
}

impl FileGate {
    /// A gate for `file`, with `budget` descriptors for listeners and probes.
    pub fn new(file: &EdgeConfig, budget: u64) -> FileGate {
        FileGate {
            current: RwLock::new((Arc::new(file.clone()), budget)),
        }
    }

    /// After a reload.
    pub fn set(&self, file: &EdgeConfig, budget: u64) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) =
            (Arc::new(file.clone()), budget);
    }
}

impl Admission for FileGate {
    fn left_out(&self, services: &[Service], nodes: &[Node]) -> Vec<NotAdmitted> {
        let (file, budget) = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let merged = merge(
            &file,
            &[Contribution {
                source: HOOK,
                services,
                nodes,
            }],
        )
        // The hook's own order: earlier load balancers first.
        .fit(budget, &Default::default());
        merged
            .left_out
            .into_iter()
            .filter(|l| l.source == HOOK)
            .map(|l| NotAdmitted {
                field: match l.reason {
                    Reason::SameName { .. } => "service.metadata.name",
                    Reason::ListenerTaken { .. } | Reason::OverBudget(_) => "service.spec.ports",
                },
                reason: l.to_string(),
                service: l.service,
            })
            .collect()
    }
}
