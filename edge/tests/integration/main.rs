//! The edge's integration tests, in one test binary (one link of the whole
//! dependency tree instead of one per file): a module per area, and
//! [`support`] shared by them.
//!
//! In-process tests run the edge against stand-in nodes, each test on a
//! loopback /24 of its own; the others drive the real `portico-edge` binary
//! (`cli`, `reload`, `upgrade`, `hook`, `kubernetes`) or check the files in
//! `deploy/` (`deploy`). Every test stands alone: nothing is shared between
//! them but the subnet claims and the binary's path.

mod announce;
mod balancing;
mod cli;
mod deploy;
mod dynamic;
mod health;
mod hook;
mod kubernetes;
mod limits;
mod package;
mod proxy_protocol;
mod reload;
mod retry;
mod smoke;
mod source_ranges;
mod support;
mod udp;
mod upgrade;
mod vips;
