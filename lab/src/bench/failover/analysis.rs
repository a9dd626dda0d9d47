//! What a failover run's record means, all pure: the per-second
//! [`timeline`], when the balancer stopped sending to the dead node
//! ([`detection`], [`last_syn`]), when node 2 answered again ([`recovery`]),
//! and the [`FailoverResult`] that sums a run up.

use std::time::Duration;

use crate::stats;

use super::{Attempt, Contender, FailoverRun, Outcome, SynSample, STILL_SENDING, VICTIM};

/// One second of a failover timeline (connections by the second they
/// started; SYNs by the poll that saw them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailoverSecond {
    /// Connections started.
    pub sent: usize,
    /// Of those, answered.
    pub ok: usize,
    /// Failed (refused, closed, timed out, other).
    pub failed: usize,
    /// Answered, but slower than the slow threshold.
    pub slow: usize,
    /// Answered by node 1.
    pub node1: usize,
    /// Answered by node 2.
    pub node2: usize,
    /// First SYNs the balancer sent to node 2.
    pub syn: u64,
    /// Retransmitted SYNs to node 2.
    pub resyn: u64,
}

/// The per-second table of `attempts` and `samples`.
pub fn timeline(
    attempts: &[Attempt],
    samples: &[SynSample],
    slow: Duration,
) -> Vec<FailoverSecond> {
    let mut rows: Vec<FailoverSecond> = Vec::new();
    fn row(rows: &mut Vec<FailoverSecond>, at: Duration) -> &mut FailoverSecond {
        let i = at.as_secs() as usize;
        if rows.len() <= i {
            rows.resize_with(i + 1, FailoverSecond::default);
        }
        &mut rows[i]
    }
    for a in attempts {
        let r = row(&mut rows, a.at);
        r.sent += 1;
        match &a.outcome {
            Outcome::Answered(node) => {
                r.ok += 1;
                if a.took > slow {
                    r.slow += 1;
                }
                if node == "node-1" {
                    r.node1 += 1;
                } else if node == "node-2" {
                    r.node2 += 1;
                }
            }
            _ => r.failed += 1,
        }
    }
    for w in samples.windows(2) {
        let r = row(&mut rows, w[1].at);
        r.syn += w[1].first.saturating_sub(w[0].first);
        r.resyn += w[1].retransmitted.saturating_sub(w[0].retransmitted);
    }
    rows
}

/// The last poll in `(killed, restored]` at which `count` had grown since
/// the previous poll (`None`: it never grew).
fn last_growth(
    samples: &[SynSample],
    killed: Duration,
    restored: Duration,
    count: impl Fn(&SynSample) -> u64,
) -> Option<Duration> {
    samples
        .windows(2)
        .filter(|w| w[1].at > killed && w[1].at <= restored && count(&w[1]) > count(&w[0]))
        .map(|w| w[1].at)
        .next_back()
}

/// Detection time: the last poll after the kill that saw a first SYN to
/// node 2, minus the kill time (`Some(0)`: none after the kill). `None`
/// when first SYNs still went out within [`STILL_SENDING`] of the link
/// coming back: the balancer never stopped sending to the dead node.
pub fn detection(samples: &[SynSample], killed: Duration, restored: Duration) -> Option<Duration> {
    match last_growth(samples, killed, restored, |s| s.first) {
        None => Some(Duration::ZERO),
        Some(at) if at + STILL_SENDING > restored => None,
        Some(at) => Some(at - killed),
    }
}

/// The last poll after the kill (and before the link came back) that saw
/// any SYN to node 2, retransmissions included, minus the kill time.
pub fn last_syn(samples: &[SynSample], killed: Duration, restored: Duration) -> Option<Duration> {
    last_growth(samples, killed, restored, |s| s.first + s.retransmitted)
        .map(|at| at.saturating_sub(killed))
}

/// Recovery time: from the link coming back to the first answer by
/// node 2 after that (`None`: none).
pub fn recovery(attempts: &[Attempt], restored: Duration) -> Option<Duration> {
    attempts
        .iter()
        .filter(|a| a.outcome.node() == Some(VICTIM))
        .map(|a| a.at + a.took)
        .filter(|done| *done >= restored)
        .min()
        .map(|done| done - restored)
}

/// The `q` quantile (nearest rank, 0 < q <= 1) of `values`.
pub fn quantile(values: &mut [Duration], q: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    values.sort();
    Some(values[stats::nearest_rank(values.len(), q)])
}

/// The result of one failover measurement.
#[derive(Debug, Clone)]
pub struct FailoverResult {
    /// Who.
    pub contender: Contender,
    /// Which run (from 1).
    pub run: usize,
    /// Connections started.
    pub sent: usize,
    /// Failed connections by kind: refused, closed, timed out, other.
    pub refused: usize,
    /// Reset or closed without an answer.
    pub closed: usize,
    /// Timed out.
    pub timed_out: usize,
    /// Anything else.
    pub other: usize,
    /// Of the failed connections, those started before the link was down
    /// (before the `ip link set down` returned): they may have been
    /// connected to node 2 already, which no connect retry can save.
    pub in_flight: usize,
    /// Answered slower than the slow threshold.
    pub slow: usize,
    /// See [`detection`].
    pub detection: Option<Duration>,
    /// See [`last_syn`].
    pub last_syn: Option<Duration>,
    /// See [`recovery`].
    pub recovery: Option<Duration>,
    /// p99 latency of the connections started between the kill and the
    /// link coming back (failed ones at the time they failed).
    pub p99_failover: Option<Duration>,
    /// When the link went down and came back.
    pub killed: Duration,
    /// When the link came back.
    pub restored: Duration,
    /// Per second.
    pub timeline: Vec<FailoverSecond>,
    /// A few failures, for the log: (started at, outcome).
    pub failures: Vec<(Duration, Outcome)>,
}

impl FailoverResult {
    /// Everything derived from `run`.
    pub fn new(run: &FailoverRun) -> FailoverResult {
        let count =
            |f: &dyn Fn(&Outcome) -> bool| run.attempts.iter().filter(|a| f(&a.outcome)).count();
        let mut during: Vec<Duration> = run
            .attempts
            .iter()
            .filter(|a| a.at >= run.killed && a.at < run.restored)
            .map(|a| a.took)
            .collect();
        let mut failures: Vec<(Duration, Outcome)> = run
            .attempts
            .iter()
            .filter(|a| a.outcome.node().is_none())
            .map(|a| (a.at, a.outcome.clone()))
            .collect();
        failures.sort_by_key(|f| f.0);
        failures.truncate(5);
        FailoverResult {
            contender: run.contender,
            run: run.run,
            sent: run.attempts.len(),
            refused: count(&|o| *o == Outcome::Refused),
            closed: count(&|o| *o == Outcome::Closed),
            timed_out: count(&|o| *o == Outcome::TimedOut),
            other: count(&|o| matches!(o, Outcome::Other(_))),
            in_flight: run
                .attempts
                .iter()
                .filter(|a| a.outcome.node().is_none() && a.at < run.killed)
                .count(),
            slow: run
                .attempts
                .iter()
                .filter(|a| a.outcome.node().is_some() && a.took > run.slow)
                .count(),
            detection: detection(&run.samples, run.killed, run.restored),
            last_syn: last_syn(&run.samples, run.killed, run.restored),
            recovery: recovery(&run.attempts, run.restored),
            p99_failover: quantile(&mut during, 0.99),
            killed: run.killed,
            restored: run.restored,
            timeline: timeline(&run.attempts, &run.samples, run.slow),
            failures,
        }
    }

    /// Failed connections, every kind.
    pub fn failed(&self) -> usize {
        self.refused + self.closed + self.timed_out + self.other
    }

    /// Failed connections started once node 2 was down: the ones a
    /// balancer's connect retry is there to save.
    pub fn failed_after_kill(&self) -> usize {
        self.failed() - self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::failover::failover_markdown;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn attempt(at: u64, took: u64, outcome: Outcome) -> Attempt {
        Attempt {
            at: ms(at),
            took: ms(took),
            outcome,
        }
    }

    fn node(n: &str) -> Outcome {
        Outcome::Answered(n.to_string())
    }

    fn sample(at: u64, first: u64, retransmitted: u64) -> SynSample {
        SynSample {
            at: ms(at),
            first,
            retransmitted,
        }
    }

    #[test]
    fn the_timeline_buckets_connections_and_syns_by_second() {
        let attempts = vec![
            attempt(100, 2, node("node-1")),
            attempt(500, 3, node("node-2")),
            attempt(1200, 2100, node("node-1")),
            attempt(1300, 3000, Outcome::TimedOut),
            attempt(1400, 1, Outcome::Refused),
            attempt(2600, 150, node("node-2")),
        ];
        let samples = vec![
            sample(0, 0, 0),
            sample(400, 2, 0),
            sample(950, 3, 0),
            sample(1050, 5, 1),
            sample(2500, 5, 4),
        ];
        let t = timeline(&attempts, &samples, ms(200));
        assert_eq!(t.len(), 3);
        assert_eq!(
            t[0],
            FailoverSecond {
                sent: 2,
                ok: 2,
                failed: 0,
                slow: 0,
                node1: 1,
                node2: 1,
                syn: 3,
                resyn: 0
            }
        );
        assert_eq!(
            t[1],
            FailoverSecond {
                sent: 3,
                ok: 1,
                failed: 2,
                slow: 1,
                node1: 1,
                node2: 0,
                syn: 2,
                resyn: 1
            }
        );
        assert_eq!((t[2].sent, t[2].ok, t[2].slow, t[2].node2), (1, 1, 0, 1));
        assert_eq!((t[2].syn, t[2].resyn), (0, 3));
    }

    #[test]
    fn detection_is_the_last_first_syn_after_the_kill() {
        // Killed at 3.00 s, back at 11.00 s; first SYNs grow until the poll
        // at 4.85 s, retransmissions until 5.90 s.
        let samples = vec![
            sample(2950, 100, 0),
            sample(3000, 102, 0),
            sample(4800, 180, 10),
            sample(4850, 181, 10),
            sample(4900, 181, 10),
            sample(5900, 181, 25),
            sample(10950, 181, 25),
            sample(11000, 181, 25),
            sample(11050, 190, 25),
        ];
        let (killed, restored) = (ms(3000), ms(11000));
        assert_eq!(detection(&samples, killed, restored), Some(ms(1850)));
        assert_eq!(last_syn(&samples, killed, restored), Some(ms(2900)));
        // No SYN at all after the kill: detected at once.
        let quiet = vec![
            sample(2950, 100, 0),
            sample(3050, 100, 0),
            sample(4000, 100, 0),
        ];
        assert_eq!(detection(&quiet, killed, restored), Some(Duration::ZERO));
        assert_eq!(last_syn(&quiet, killed, restored), None);
        // Still sending 50 ms before the link came back: never detected.
        let dnat = vec![
            sample(2950, 100, 0),
            sample(6000, 250, 30),
            sample(10950, 500, 90),
        ];
        assert_eq!(detection(&dnat, killed, restored), None);
        assert_eq!(last_syn(&dnat, killed, restored), Some(ms(7950)));
    }

    #[test]
    fn recovery_is_the_first_answer_by_node_2_after_link_up() {
        let restored = ms(11000);
        let attempts = vec![
            attempt(2000, 5, node("node-2")),
            attempt(10990, 30, node("node-1")),
            attempt(11500, 4, node("node-1")),
            attempt(12400, 6, node("node-2")),
            attempt(12300, 300, node("node-2")),
        ];
        assert_eq!(recovery(&attempts, restored), Some(ms(1406)));
        assert_eq!(recovery(&attempts[..3], restored), None);
        // A SYN dropped while down, retransmitted and answered after: counts
        // from its answer.
        let late = vec![attempt(10500, 1000, node("node-2"))];
        assert_eq!(recovery(&late, restored), Some(ms(500)));
    }

    #[test]
    fn quantile_takes_the_nearest_rank() {
        let mut v: Vec<Duration> = (1..=200).map(ms).collect();
        assert_eq!(quantile(&mut v, 0.99), Some(ms(198)));
        assert_eq!(quantile(&mut v, 0.5), Some(ms(100)));
        let mut one = vec![ms(7)];
        assert_eq!(quantile(&mut one, 0.99), Some(ms(7)));
        assert_eq!(quantile(&mut [], 0.99), None);
    }

    #[test]
    fn the_result_and_its_table() {
        let mut attempts = Vec::new();
        // 10 s at 10/s: node-1 and node-2 in turn; node 2 dies at 3 s,
        // back at 8 s; the balancer retries two connections slowly and one
        // times out.
        for i in 0..100u64 {
            let at = i * 100;
            let two = i % 2 == 1;
            let outcome = if (3000..8000).contains(&at) && two {
                match at {
                    3100 | 3300 => node("node-1"),
                    3500 => Outcome::TimedOut,
                    _ => node("node-1"),
                }
            } else {
                node(if two { "node-2" } else { "node-1" })
            };
            let took = if at == 3100 || at == 3300 {
                2000
            } else if at == 3500 {
                3000
            } else {
                2
            };
            attempts.push(attempt(at, took, outcome));
        }
        let samples = vec![
            sample(0, 0, 0),
            sample(3000, 15, 0),
            sample(3400, 17, 1),
            sample(3500, 17, 2),
            sample(7950, 17, 2),
            sample(8200, 18, 2),
        ];
        let run = FailoverRun {
            contender: Contender::Haproxy,
            run: 1,
            attempts,
            samples,
            killed: ms(3000),
            restored: ms(8000),
            slow: ms(200),
        };
        let r = FailoverResult::new(&run);
        assert_eq!((r.sent, r.failed(), r.timed_out, r.slow), (100, 1, 1, 2));
        assert_eq!((r.in_flight, r.failed_after_kill()), (0, 1));
        assert_eq!(r.detection, Some(ms(400)));
        assert_eq!(r.last_syn, Some(ms(500)));
        // First node-2 answer after 8 s: started at 8.1 s, took 2 ms.
        assert_eq!(r.recovery, Some(ms(102)));
        // 50 connections between 3 and 8 s: the 99th is the slowest.
        assert_eq!(r.p99_failover, Some(ms(3000)));
        assert_eq!(r.timeline.len(), 10);
        assert_eq!((r.timeline[3].failed, r.timeline[3].slow), (1, 2));
        let table = failover_markdown(std::slice::from_ref(&r));
        assert!(
            table.contains(
                "| haproxy | 1 of 100 (1 timed out) | 2 | 0.40 | 0.50 | 0.10 | 3000 ms |"
            ),
            "{table}"
        );
        let text = r.timeline_text();
        assert!(
            text.contains("<- link down") && text.contains("<- link up"),
            "{text}"
        );
        assert!(text.contains("failed: started 3.50 s: TimedOut"), "{text}");
        let never = FailoverResult {
            detection: None,
            recovery: None,
            ..r
        };
        assert!(failover_markdown(&[never]).contains("| never |"));
    }

    #[test]
    fn a_failure_started_before_the_kill_counts_as_in_flight() {
        let run = FailoverRun {
            contender: Contender::Portico,
            run: 1,
            attempts: vec![
                attempt(2990, 3000, Outcome::TimedOut),
                attempt(3010, 260, node("node-1")),
            ],
            samples: vec![sample(0, 0, 0), sample(3000, 1, 0)],
            killed: ms(3000),
            restored: ms(8000),
            slow: ms(200),
        };
        let r = FailoverResult::new(&run);
        assert_eq!((r.failed(), r.in_flight, r.failed_after_kill()), (1, 1, 0));
        assert!(
            failover_markdown(&[r]).contains("| 1 of 2 (1 timed out, 1 in flight at the kill) |"),
        );
    }
}
