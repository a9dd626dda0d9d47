//! Several sources, one configuration: the config file ([`file`]), the
//! Kubernetes watch ([`crate::cluster`], with `settings.kubernetes`) and the
//! cloud-provider hook API ([`crate::hook`], with `settings.hookApi`), merged
//! in that order ([`merge`]) and applied to the [`Edge`].
//!
//! [`Sources`] starts and holds the running sources and their latest
//! models; the process loop ([`crate::run`]) only tells it when to reload,
//! waits for a change, and applies.
//!
//! The descriptor budget ([`crate::budget`]) is applied at each source:
//! a config file that does not fit is refused (at start, reload and
//! `check-config`), the hook API refuses a load balancer that would not fit
//! or would clash ([`FileGate`]), and the merge leaves out, after every
//! earlier Service, a cluster Service that does not fit (it gets an Event).

pub mod file;
pub mod gate;
pub mod merge;

pub use file::{ConfigFile, ConfigSource, LoadError, Reloaded, EMBEDDED_CONFIG};
pub use gate::FileGate;
pub use merge::{merge, Contribution, LeftOut, Merged};

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use portico_config::{EdgeConfig, ServiceKey};
use tokio::sync::watch;

use crate::budget::{Budget, BudgetError};
use crate::cluster::{ClusterModel, ClusterSource};
use crate::edge::Edge;
use crate::hook::{HookError, HookModel, HookSource};
use crate::metrics::EdgeMetrics;

/// The cluster source's name in the merge.
const KUBERNETES: &str = "kubernetes";

/// How long the edge waits for the cluster's first lists before it starts
/// without them.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(10);

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The Kubernetes client could not be set up.
    #[error(transparent)]
    Kubernetes(#[from] portico_kube_watch::ClientError),
    /// The hook API could not start.
    #[error(transparent)]
    Hook(#[from] HookError),
    /// The config file asks for more than the descriptor limit allows.
    #[error("{0}")]
    Budget(#[from] BudgetError),
}

impl SourceError {
    /// The process exit code: 64 (`EX_USAGE`) for what a configuration
    /// fixes, else what the source says.
    pub fn exit_code(&self) -> i32 {
        match self {
            // A kubeconfig that is wrong or missing: fix the configuration.
            SourceError::Kubernetes(e) if e.is_configuration() => 64,
            SourceError::Kubernetes(_) => 1,
            SourceError::Hook(e) => e.exit_code(),
            SourceError::Budget(_) => 64,
        }
    }
}

/// The running sources and their latest models.
pub struct Sources {
    file: EdgeConfig,
    /// The process's descriptor limit.
    descriptors: u64,
    /// How it is shared out, for the current file's settings.
    budget: Budget,
    /// What the hook API asks before it admits a load balancer.
    gate: Arc<FileGate>,
    /// The Services of the last configuration applied: the budget weighs
    /// them before newer ones.
    served: std::sync::Mutex<BTreeSet<ServiceKey>>,
    cluster: Option<(ClusterSource, watch::Receiver<Option<Arc<ClusterModel>>>)>,
    hook: Option<(HookSource, watch::Receiver<Arc<HookModel>>)>,
}

impl Sources {
    /// Starts the sources the file's settings ask for. `hook_bind_wait`: how
    /// long the hook API may wait for its address (during an upgrade the
    /// old process holds it until it has handed over). Waits up to
    /// [`FIRST_LIST_WAIT`] for the cluster's first lists, so the first
    /// configuration has its Services (after an upgrade, handed-over
    /// listeners are kept only if the first configuration has them).
    /// `descriptors` is the process's descriptor limit; a file that does
    /// not fit in it is refused.
    pub async fn start(
        file: EdgeConfig,
        descriptors: u64,
        metrics: &EdgeMetrics,
        hook_bind_wait: Duration,
    ) -> Result<Sources, SourceError> {
        let budget = crate::budget::check_file(&file, descriptors)?;
        tracing::info!(%budget, "descriptor budget");
        let gate = Arc::new(FileGate::new(&file, budget.config));
        let pools = file.settings.address_pools.clone();
        let hook = match &file.settings.hook_api {
            None => None,
            Some(h) => {
                let source = HookSource::start(
                    h,
                    pools.clone(),
                    gate.clone(),
                    metrics.clone(),
                    hook_bind_wait,
                )
                .await?;
                let model = source.model();
                Some((source, model))
            }
        };
        let cluster = match &file.settings.kubernetes {
            None => None,
            Some(k) => {
                let client = crate::cluster::watch::client(k.kubeconfig.as_deref()).await?;
                tracing::info!(class = %k.load_balancer_class, default_class = k.default_class, "watching the cluster for LoadBalancer Services");
                let source = ClusterSource::start(client, k.clone(), pools, metrics.clone());
                let mut model = source.model();
                let listed = tokio::time::timeout(FIRST_LIST_WAIT, model.wait_for(|m| m.is_some()))
                    .await
                    .is_ok();
                if !listed {
                    tracing::warn!(waited = ?FIRST_LIST_WAIT, "the API server has not answered; starting with the config file's Services only");
                }
                Some((source, model))
            }
        };
        Ok(Sources {
            file,
            descriptors,
            budget,
            gate,
            served: Default::default(),
            cluster,
            hook,
        })
    }

    /// How the descriptor limit is shared out.
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// The file's configuration merged with the cluster's model and then the
    /// hook API's, inside the descriptor budget, with what was left out.
    pub fn merged(&self) -> Merged {
        let cluster = self
            .cluster
            .as_ref()
            .and_then(|(_, rx)| rx.borrow().clone());
        let hook = self.hook.as_ref().map(|(_, rx)| rx.borrow().clone());
        let contributions: Vec<Contribution<'_>> = cluster
            .iter()
            .map(|m| Contribution {
                source: KUBERNETES,
                services: &m.services,
                nodes: &m.nodes,
            })
            .chain(hook.iter().map(|m| Contribution {
                source: gate::HOOK,
                services: &m.services,
                nodes: &m.nodes,
            }))
            .collect();
        let served = self
            .served
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        merge(&self.file, &contributions).fit(self.budget.config, &served)
    }

    /// Resolves when the cluster's or the hook API's model changed; never
    /// without them.
    pub async fn changed(&mut self) {
        let Sources { cluster, hook, .. } = self;
        let cluster = async {
            match cluster.as_mut() {
                Some((_, rx)) => {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        let hook = async {
            match hook.as_mut() {
                Some((_, rx)) => {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cluster => {}
            () = hook => {}
        }
    }

    /// Takes a reloaded file's configuration: new address pools go to the
    /// cluster source and the hook API; a changed `kubernetes` or `hookApi`
    /// section needs a restart. A file that does not fit in the descriptor
    /// limit is refused, and the current one stays.
    pub fn set_file(&mut self, new: EdgeConfig) -> Result<(), BudgetError> {
        let budget = crate::budget::check_file(&new, self.descriptors)?;
        if budget != self.budget {
            tracing::info!(%budget, "descriptor budget");
        }
        self.budget = budget;
        self.gate.set(&new, budget.config);
        if new.settings.kubernetes != self.file.settings.kubernetes {
            tracing::warn!("settings.kubernetes changed: it takes effect at the next restart");
        }
        if new.settings.hook_api != self.file.settings.hook_api {
            tracing::warn!("settings.hookApi changed: it takes effect at the next restart");
        }
        if let Some((c, _)) = &self.cluster {
            c.set_pools(new.settings.address_pools.clone());
        }
        if let Some((h, _)) = &self.hook {
            h.set_pools(new.settings.address_pools.clone());
        }
        self.file = new;
        Ok(())
    }

    /// How many Services the running configuration has from the config file.
    pub fn file_services(&self) -> usize {
        self.file.services.len()
    }

    /// Tells the cluster source which Services have no healthy node (they
    /// get an Event).
    pub fn set_unhealthy(&self, services: BTreeSet<ServiceKey>) {
        if let Some((c, _)) = &self.cluster {
            c.set_unhealthy(services);
        }
    }

    /// Applies the merged configuration to the edge; `reload` counts it in
    /// `portico_edge_reloads_total`.
    pub async fn apply(&self, edge: &Edge, reload: bool) {
        let merged = self.merged();
        self.report(&merged);
        match edge.apply(merged.config).await {
            Ok(errors) => {
                if reload {
                    record_reload(edge.metrics(), true);
                    tracing::info!("configuration reloaded");
                }
                for (listener, error) in &errors {
                    tracing::error!(%listener, %error, "listener could not be opened");
                }
            }
            Err(e) => tracing::error!(error = %e, "configuration not applied"),
        }
    }

    /// Logs what the merge left out, and tells the cluster source which of
    /// its Services the budget left out (they get an Event).
    /// Also remembers what is served, for the next merge.
    pub fn report(&self, merged: &Merged) {
        *self
            .served
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = merged
            .config
            .services
            .iter()
            .map(|s| s.key.clone())
            .collect();
        for w in merged.warnings() {
            tracing::warn!("{w}");
        }
        if let Some((c, _)) = &self.cluster {
            c.set_not_served(
                merged
                    .left_out
                    .iter()
                    .filter(|l| l.source == KUBERNETES)
                    .filter(|l| matches!(l.reason, merge::Reason::OverBudget(_)))
                    .map(|l| (l.service.clone(), l.to_string()))
                    .collect(),
            );
        }
    }

    /// Stops every source.
    pub async fn stop(self) {
        if let Some((h, _)) = self.hook {
            h.stop().await;
        }
        if let Some((c, _)) = self.cluster {
            c.stop().await;
        }
    }
}

/// Counts a reload in `portico_edge_reloads_total{result}`.
pub fn record_reload(metrics: &EdgeMetrics, ok: bool) {
    metrics
        .reloads
        .with_label_values(&[if ok { "ok" } else { "failed" }])
        .inc();
}
