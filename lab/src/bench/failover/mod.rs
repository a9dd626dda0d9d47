//! The failover measurement of `portico-lab bench --workloads failover`:
//! what clients see when a node dies under a steady stream of new
//! connections, per contender.
//!
//! The client opens [`FailoverSpec::rate`] new connections a second to the
//! VIP (one `GET /small` each, which the node answers with its name, each
//! bounded by [`FailoverSpec::timeout`]). At [`FailoverSpec::kill_at`]
//! node 2's link goes down, cut at the switch as the lab's "link down"
//! failure (its port on the lb's bridge taken down: the node keeps its
//! addresses, IPv6 ones too); [`FailoverSpec::down_for`] later it comes back,
//! and the stream goes on until node 2 answers a client again (at most
//! [`FailoverSpec::recover_limit`]), then [`FailoverSpec::after_recovery`]
//! more.
//!
//! Detection is measured where the balancer's decision shows: a table of the
//! bench's own in the lb namespace ([`COUNTER_TABLE`], postrouting, after
//! NAT) counts the SYNs that leave for node 2's NodePort, split into a
//! connection's first SYN and its retransmissions (a dynamic set of source
//! address and port seen in the last seconds). It is polled every
//! [`FailoverSpec::poll`]. Health checks go to the nodes' health server on
//! [`HEALTH_PORT`](super::HEALTH_PORT), not to the NodePort, so only
//! client traffic is counted.
//! Detection = the last poll after the kill at which a first SYN to node 2
//! had been sent, minus the kill time ([`detection`]); a balancer still
//! sending in the last second before the link comes back never detected it.
//!
//! - [`measure`]: the measurement itself
//!   ([`Bench::failover`](crate::bench::Bench::failover),
//!   [`run_failovers`]): the counter table, node 2's link, the client
//!   stream and the counter's poller;
//! - [`analysis`]: what a run's record means ([`FailoverResult`]): the
//!   per-second timeline, detection, recovery, percentiles;
//! - [`report`]: the log line, the timeline text and the Markdown table.
//!
//! [`analysis`] and [`report`] are pure and unit-tested.

pub mod analysis;
pub mod measure;
pub mod report;

pub use analysis::{
    detection, last_syn, quantile, recovery, timeline, FailoverResult, FailoverSecond,
};
pub use measure::{counter_packets, run_failovers};
pub use report::failover_markdown;

use std::time::Duration;

use super::Contender;

/// The bench's own nftables table in the lb namespace (SYNs to node 2).
pub const COUNTER_TABLE: &str = "pbench-failover";
/// The node that dies.
pub const VICTIM: &str = "node-2";
/// Its number (from 1), which names its port on the lb's bridge.
pub const VICTIM_INDEX: usize = 2;
/// A balancer that still sent a first SYN to the dead node this close to
/// the link coming back never stopped: no detection.
pub const STILL_SENDING: Duration = Duration::from_secs(1);

/// How the failover is measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverSpec {
    /// New connections a second.
    pub rate: u32,
    /// When node 2's link goes down, from the start of the stream.
    pub kill_at: Duration,
    /// How long it stays down.
    pub down_for: Duration,
    /// Longest wait, after the link is back, for node 2 to answer a client.
    pub recover_limit: Duration,
    /// How long the stream goes on once node 2 answered again.
    pub after_recovery: Duration,
    /// The limit for one connection, connect to answer.
    pub timeout: Duration,
    /// An answered connection slower than this counts as slow (a connect
    /// retry happened).
    pub slow: Duration,
    /// How often the SYN counter is read.
    pub poll: Duration,
    /// Measurements per contender.
    pub runs: usize,
}

impl FailoverSpec {
    /// The documented set-up: 100 connections/s, node 2 down at 3 s for 8 s,
    /// up to 15 s to come back, 3 s per connection, slow above 200 ms, the
    /// counter read every 50 ms, one run.
    pub fn standard() -> FailoverSpec {
        FailoverSpec {
            rate: 100,
            kill_at: Duration::from_secs(3),
            down_for: Duration::from_secs(8),
            recover_limit: Duration::from_secs(15),
            after_recovery: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
            slow: Duration::from_millis(200),
            poll: Duration::from_millis(50),
            runs: 1,
        }
    }

    /// The longest the stream can last.
    pub fn max_duration(&self) -> Duration {
        self.kill_at + self.down_for + self.recover_limit + self.after_recovery
    }
}

/// How one client connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answered by this node.
    Answered(String),
    /// Connection refused.
    Refused,
    /// Reset, or closed without an answer.
    Closed,
    /// No answer within [`FailoverSpec::timeout`].
    TimedOut,
    /// Anything else (say, host unreachable).
    Other(String),
}

impl Outcome {
    /// The answering node, if answered.
    pub fn node(&self) -> Option<&str> {
        match self {
            Outcome::Answered(n) => Some(n),
            _ => None,
        }
    }
}

/// One client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// When it started, from the start of the stream.
    pub at: Duration,
    /// How long it took, to its answer or failure.
    pub took: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

/// One reading of the SYN counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynSample {
    /// When, from the start of the stream.
    pub at: Duration,
    /// First SYNs of connections to node 2's NodePort so far.
    pub first: u64,
    /// Retransmitted SYNs of those so far.
    pub retransmitted: u64,
}

/// What one failover measurement recorded.
#[derive(Debug, Clone)]
pub struct FailoverRun {
    /// Who.
    pub contender: Contender,
    /// Which run of this contender (from 1).
    pub run: usize,
    /// Every client connection.
    pub attempts: Vec<Attempt>,
    /// The SYN counter, in time order.
    pub samples: Vec<SynSample>,
    /// When node 2's link went down.
    pub killed: Duration,
    /// When it came back up.
    pub restored: Duration,
    /// The slow threshold used.
    pub slow: Duration,
}
