//! Portico's node agent: programs the Services labelled for this proxy into
//! the node's nftables, in kube-proxy's nftables layout (with the
//! departures for scale described in [`plan`](mod@plan)), inside one table
//! (`table inet portico`) that the agent owns entirely.
//!
//! The flow is pure until the last step:
//! - [`plan`](mod@plan): Services + EndpointSlices + this Node -> a [`ruleset::Ruleset`]
//!   (maps, sets, chains) plus warnings for the input it had to skip;
//!   [`Planner`] does it incrementally (only changed Services are
//!   re-planned, and the change comes out as two small partial rulesets);
//! - [`render`]: a `Ruleset` -> one `nft -f` script, either a full resync
//!   (recreate the table in one transaction) or the changes between two rulesets;
//! - [`nft`]: the thin IO edge that loads a script (`nft -f -`) or an in-memory
//!   fake for tests;
//! - [`sync`]: remembers the last applied ruleset and sends only changes
//!   (a diff of two rulesets, or of a planner's change; full resync on
//!   demand or after a failure);
//! - [`health`]: kube-proxy's health servers (`:10256/healthz`, `/livez`, and
//!   one per `healthCheckNodePort` of a `Local` Service), which the edge checks;
//! - [`manifests`]: the directory source (Kubernetes YAML/JSON Services,
//!   EndpointSlices, Nodes -> the model), and the converters both sources use;
//! - [`kube_source`]: the Kubernetes API source (watches and their caches ->
//!   the same snapshot) on `portico-kube-watch`, with debouncing;
//! - [`agent`]: the loop tying them together, and [`metrics`].
//!
//! Tests: unit tests inline; the integration tests are one binary
//! (`tests/integration/`): `golden` compares each fixture's full script
//! with `tests/golden/*.nft` (`UPDATE_GOLDEN=1` rewrites them) and has
//! `nft -c` check them; `datapath` loads rulesets into network namespaces
//! it creates and sends real TCP/UDP traffic through them. The privileged
//! tests need root, `nft` and `ip`; `agent` runs the binary on manifests
//! and `kube` on a fake API server (`portico-kube-fake`), both in
//! namespaces; they skip loudly without them and fail instead when
//! `CI=true`.

/// The agent's name towards the API server: its User-Agent.
pub const COMPONENT: &str = "portico-node-agent";

pub mod agent;
pub mod health;
pub mod kube_source;
pub mod manifests;
pub mod metrics;
pub mod nft;
pub mod plan;
pub mod render;
pub mod ruleset;
pub mod sync;

pub use nft::{NftBackend, NftCommand, NftError};
pub use plan::{plan, Plan, PlanChange, PlanOptions, Planner, Skipped};
pub use render::{render_diff, render_full};
pub use ruleset::{BaseChain, Chain, Family, Ruleset, Set, TABLE_NAME};
pub use sync::{SyncError, SyncOutcome, Syncer};
