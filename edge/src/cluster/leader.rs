//! Which of several edges watching one cluster writes to it: leader
//! election on a `coordination.k8s.io/v1` Lease, through
//! `kube-lease-manager` (server-side apply conflicts decide between
//! candidates; the holder renews a few seconds before its lease runs out).
//!
//! Every edge watches and reconciles, so all of them serve the same
//! addresses (the assignment is deterministic); only the holder writes
//! statuses and posts Events. A holder that dies stops renewing, and
//! another edge takes the Lease once it has run out: writes pause for at
//! most the lease duration (and about a second of back-off). At a stop the
//! holder releases the Lease, so another takes over at once.
//!
//! While the API server is unreachable a holder cannot renew, and may
//! believe it still holds the Lease after it ran out; its writes fail as
//! long as the server is away, and the first renewal after it is back
//! tells it the truth. The addresses two edges would write are the same
//! anyway.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use portico_config::LeaderElection;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::watch::CONTROLLER;

/// How long a stop waits for the Lease to be released.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// This edge's part in the election.
pub struct Leadership {
    leader: watch::Receiver<bool>,
    elector: Option<JoinHandle<kube_lease_manager::Result<LeaseManager>>>,
    identity: String,
}

impl Leadership {
    /// Starts campaigning for the Lease of `settings` (`None`: this edge is
    /// the only writer, always).
    pub async fn start(client: Client, settings: Option<&LeaderElection>) -> Leadership {
        let identity = identity();
        let Some(settings) = settings else {
            let (_, leader) = watch::channel(true);
            return Leadership {
                leader,
                elector: None,
                identity,
            };
        };
        let seconds = settings.lease_duration.as_secs().max(1);
        // Renew with a third of the lease left, as client-go's defaults do
        // (15 s lease, renewed by 10 s).
        let grace = (seconds / 3).max(1);
        loop {
            let built = LeaseManagerBuilder::new(client.clone(), settings.lease_name.clone())
                .with_namespace(settings.namespace.clone())
                .with_identity(identity.clone())
                .with_field_manager(format!("{CONTROLLER}-{identity}"))
                .with_duration(seconds)
                .with_grace(grace)
                .build()
                .await;
            match built {
                Ok(manager) => {
                    tracing::info!(
                        lease = %format!("{}/{}", settings.namespace, settings.lease_name),
                        %identity,
                        duration_seconds = seconds,
                        "campaigning for the Lease: its holder writes statuses and Events"
                    );
                    let (leader, elector) = manager.watch().await;
                    return Leadership {
                        leader,
                        elector: Some(elector),
                        identity,
                    };
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot set up leader election; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }

    /// Whether this edge writes, as a channel.
    pub fn leader(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// This edge's identity in the election.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Releases the Lease (when held) and stops campaigning. Every clone of
    /// [`leader`](Self::leader) must be gone first: the elector releases
    /// when the last one is dropped.
    pub async fn stop(self) {
        let Leadership {
            leader, elector, ..
        } = self;
        drop(leader);
        let Some(elector) = elector else { return };
        match tokio::time::timeout(RELEASE_TIMEOUT, elector).await {
            Ok(Ok(Ok(_))) => tracing::info!("Lease released"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the Lease was not released"),
            Ok(Err(e)) => tracing::warn!(error = %e, "leader election task failed"),
            Err(_) => tracing::warn!("the Lease was not released in time; it runs out by itself"),
        }
    }
}

/// `<hostname>_<8 random hex>`, as client-go names candidates: stable
/// enough to read in the Lease, unique per process.
fn identity() -> String {
    let host = super::watch::hostname().unwrap_or_else(|| CONTROLLER.to_string());
    format!("{host}_{:08x}", random_suffix())
}

/// 32 random bits from the process's hasher seeds and the clock.
fn random_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    h.finish() as u32
}
