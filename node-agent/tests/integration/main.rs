//! The node agent's integration tests, in one test binary (one link of the
//! whole dependency tree instead of one per file): a module per area, and
//! [`support`] shared by them.
//!
//! `golden` and `deploy` need nothing; `datapath` loads rulesets into
//! network namespaces it creates, `agent` and `kube` run the real
//! `portico-node-agent` binary in them (as root with `nft` and `ip`; they
//! skip loudly otherwise and fail under `CI=true`). Each privileged test
//! builds namespaces of its own (named by a per-module tag, the process id
//! and the test), so they run side by side.

mod agent;
mod datapath;
mod deploy;
mod golden;
mod kube;
mod support;
