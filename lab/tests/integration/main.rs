//! The lab's integration tests, in one test binary (one link of the whole
//! dependency tree instead of one per file): a module per area, and
//! [`support`] shared by them.
//!
//! `e2e` checks what a user would check on a whole lab; `failures` runs the
//! failure scenarios under load; `bench` and `scale` are the benchmarks'
//! smoke tests; `bgp` runs BIRD on the shipped configs of several edges and
//! their router, `vrrp` keepalived on the shipped config of a pair; `ha`
//! and `leader` run real edges behind such a router under load (`leader`:
//! the edge that writes to the cluster killed). Each builds namespaces of its own; the ones that measure
//! time hold [`support::alone`], so no other lab runs beside them.

mod bench;
mod bgp;
mod e2e;
mod failures;
mod ha;
mod leader;
mod scale;
mod support;
mod vrrp;
