//! The Kubernetes watch plumbing the edge and the node agent share: both
//! keep a cache of some API objects, must never act on a half-listed
//! cluster, and must keep serving their last view, and say how old it is,
//! while the API server is away.
//!
//! - [`client`]: the API client from a kubeconfig file or as `kubectl`
//!   finds one, with a read timeout a little longer than a watch lasts,
//!   naming the program ([`KubeOptions::component`]) in its User-Agent.
//! - [`Watches`]: one program's watches of one cluster. Each
//!   [`Watches::watch_into_store`] runs `watcher` (kube's default backoff)
//!   -> `managedFields` stripped (but the program's own) -> reflector
//!   store, and notifies one shared `Notify` when a store changed; one
//!   continuous probe (a one-object metadata list every [`PROBE_EVERY`])
//!   tells whether the API server answers, and its last answer defines [`Watches::stale`]: a silent
//!   server shows within a few seconds, not after the read timeout.
//! - [`Health`] (pure): per-watch outages and the probe's, what to log about
//!   them (once, then a reminder every [`REMIND_EVERY`], then the recovery),
//!   and the staleness.
//!
//! What to watch (selectors), which resource to probe and what to do with
//! the stores stay with each program.

pub mod client;
pub mod health;
pub mod watch;

pub use client::{client, ClientError, KubeOptions, DEFAULT_WATCH_TIMEOUT};
pub use health::{ErrorKind, ErrorReport, Health, ProbeAnswered, Recovered, REMIND_EVERY};
pub use watch::{WatchMetrics, Watches, PROBE_EVERY, PROBE_TIMEOUT};
