//! The failover measurement of `portico-lab bench --workloads failover`:
//! what clients see when a node dies under a steady stream of new
//! connections, per contender.
//!
//! The client opens [`FailoverSpec::rate`] new connections a second to the
//! VIP (one `GET /small` each, which the node answers with its name, each
//! bounded by [`FailoverSpec::timeout`]). At [`FailoverSpec::kill_at`]
//! node 2's link goes down (`ip link set eth0 down` in its namespace, as the
//! lab's "link down" failure); [`FailoverSpec::down_for`] later it comes back,
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
//! [`HEALTH_PORT`], not to the NodePort, so only client traffic is counted.
//! Detection = the last poll after the kill at which a first SYN to node 2
//! had been sent, minus the kill time ([`detection`]); a balancer still
//! sending in the last second before the link comes back never detected it.
//!
//! Everything here below [`Bench::failover`] is pure (bucketing, detection,
//! recovery, percentiles, rendering) and unit-tested.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::stats;
use crate::sync::lock;

use super::{
    ip_line, netns, nft, procs, Bench, BenchError, Contender, LB_NODE_SIDE, NODES, NODE_PORT,
    READY_TIMEOUT, STOP_GRACE,
};

/// The backends' health server (kube-proxy's `healthz` port): `/healthz`
/// answers 200. Portico and HAProxy check it; it is never the NodePort, so
/// probes do not show in the SYN counter.
pub const HEALTH_PORT: u16 = 10256;
/// The bench's own nftables table in the lb namespace (SYNs to node 2).
pub const COUNTER_TABLE: &str = "pbench-failover";
/// The node that dies.
pub const VICTIM: &str = "node-2";
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

    /// One line for the run log.
    pub fn line(&self) -> String {
        format!(
            "failover {} run {}: {} connections, {} failed, {} slow; detection {}, last SYN {}, recovery {}, p99 during failover {}",
            self.contender,
            self.run,
            self.sent,
            self.failed(),
            self.slow,
            with_unit(self.detection, "never"),
            with_unit(self.last_syn, "-"),
            with_unit(self.recovery, "none"),
            self.p99_failover
                .map_or("-".to_string(), |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0)),
        )
    }

    /// The compact per-second table, with the kill and the link coming
    /// back marked.
    pub fn timeline_text(&self) -> String {
        let mut out = format!(
            "{} (run {}): node-2 link down at {:.2} s, up at {:.2} s\n   s  sent    ok  fail  slow  node-1 node-2 | syn>n2 resyn>n2\n",
            self.contender,
            self.run,
            self.killed.as_secs_f64(),
            self.restored.as_secs_f64()
        );
        for (i, r) in self.timeline.iter().enumerate() {
            let mut marks = String::new();
            for (at, what) in [(self.killed, "link down"), (self.restored, "link up")] {
                if at.as_secs() as usize == i {
                    marks.push_str(&format!("  <- {what}"));
                }
            }
            let _ = writeln!(
                out,
                "{i:>4} {:>5} {:>5} {:>5} {:>5} {:>7} {:>6} | {:>6} {:>8}{marks}",
                r.sent, r.ok, r.failed, r.slow, r.node1, r.node2, r.syn, r.resyn
            );
        }
        for (at, outcome) in &self.failures {
            let _ = writeln!(
                out,
                "  failed: started {:.2} s: {outcome:?}",
                at.as_secs_f64()
            );
        }
        out
    }
}

fn with_unit(d: Option<Duration>, none: &str) -> String {
    d.map_or(none.to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
}

fn secs(d: Option<Duration>, none: &str) -> String {
    d.map_or(none.to_string(), |d| format!("{:.2}", d.as_secs_f64()))
}

/// The failover table, in Markdown.
pub fn failover_markdown(results: &[FailoverResult]) -> String {
    let mut out = String::from(
        "| contender | failed connections | slow connections | detection (s) | last SYN to node 2 incl. retransmits (s) | recovery (s) | p99 latency during failover |\n|---|---|---|---|---|---|---|\n",
    );
    let several = results.iter().any(|r| r.run > 1);
    for r in results {
        let name = if several {
            format!("{} #{}", r.contender, r.run)
        } else {
            r.contender.to_string()
        };
        let mut kinds = Vec::new();
        for (n, kind) in [
            (r.refused, "refused"),
            (r.closed, "closed"),
            (r.timed_out, "timed out"),
            (r.other, "other"),
        ] {
            if n > 0 {
                kinds.push(format!("{n} {kind}"));
            }
        }
        if r.in_flight > 0 {
            kinds.push(format!("{} in flight at the kill", r.in_flight));
        }
        let failed = if kinds.is_empty() {
            format!("0 of {}", r.sent)
        } else {
            format!("{} of {} ({})", r.failed(), r.sent, kinds.join(", "))
        };
        let _ = writeln!(
            out,
            "| {name} | {failed} | {} | {} | {} | {} | {} |",
            r.slow,
            secs(r.detection, "never"),
            secs(r.last_syn, "-"),
            secs(r.recovery, "none"),
            r.p99_failover.map_or("-".to_string(), |d| format!(
                "{:.0} ms",
                d.as_secs_f64() * 1000.0
            )),
        );
    }
    out.push_str(
        "\n(failed: refused, reset/closed or no answer within the timeout; slow: answered above the slow threshold; detection: last first SYN the balancer sent to node 2 after the kill, \"never\" if it still sent one in the last second before the link came back; recovery: link up -> first answer by node 2; p99 over connections started between the kill and link up, failures at the time they failed)\n",
    );
    out
}

/// The counter table (priority 200: after source NAT, so nftables DNAT's
/// packets show with their node address too).
fn counter_table() -> String {
    let node2 = NODES[1];
    let syn = format!("ip daddr {node2} tcp dport {NODE_PORT} tcp flags & (syn | ack) == syn");
    format!(
        "table ip {COUNTER_TABLE} {{
  set seen {{
    type ipv4_addr . inet_service
    flags dynamic, timeout
    timeout 10s
  }}
  chain count {{
    type filter hook postrouting priority 200; policy accept;
    {syn} ip saddr . tcp sport @seen counter accept comment \"retransmitted\"
    {syn} add @seen {{ ip saddr . tcp sport }} counter comment \"first\"
  }}
}}
"
    )
}

/// The `packets` of the rule with comment `comment` in `nft list` output.
pub fn counter_packets(listing: &str, comment: &str) -> Option<u64> {
    let tag = format!("comment \"{comment}\"");
    listing
        .lines()
        .find(|l| l.contains(&tag))?
        .split("packets ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Brings node 2's link back (and its default route, which went with it)
/// when dropped: a failed measurement leaves the topology whole.
struct LinkGuard {
    ns: String,
    down: bool,
}

impl LinkGuard {
    fn set(&mut self, up: bool) -> Result<(), BenchError> {
        let state = if up { "up" } else { "down" };
        ip_line(&format!("-n {} link set eth0 {state}", self.ns))?;
        self.down = !up;
        if up {
            ip_line(&format!(
                "-n {} route replace default via {LB_NODE_SIDE}",
                self.ns
            ))?;
        }
        Ok(())
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        if self.down {
            if let Err(e) = self.set(true) {
                tracing::error!(ns = %self.ns, error = %e, "cannot bring node-2's link back");
            }
        }
    }
}

/// GETs `/small` once through `target`; how it ended.
async fn get_small(target: SocketAddr, timeout: Duration) -> Outcome {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(target).await?;
        s.write_all(b"GET /small HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .await?;
        let mut text = Vec::new();
        s.read_to_end(&mut text).await?;
        Ok::<Vec<u8>, std::io::Error>(text)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Outcome::TimedOut,
        Ok(Err(e)) => match e.kind() {
            std::io::ErrorKind::ConnectionRefused => Outcome::Refused,
            std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::UnexpectedEof => Outcome::Closed,
            _ => Outcome::Other(e.to_string()),
        },
        Ok(Ok(text)) if text.is_empty() => Outcome::Closed,
        Ok(Ok(text)) => {
            let text = String::from_utf8_lossy(&text);
            match text.split_once("\r\n\r\n") {
                Some((head, body)) if head.starts_with("HTTP/1.1 200") => {
                    Outcome::Answered(body.trim().to_string())
                }
                _ => Outcome::Other(format!("answer {:?}", text.lines().next())),
            }
        }
    }
}

/// The client stream: `rate` connections a second until `stop` or
/// `max` (count and time bounded), each recorded in `attempts`.
async fn stream(
    target: SocketAddr,
    spec: FailoverSpec,
    started: Instant,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    stop: Arc<AtomicBool>,
) {
    let max = spec.max_duration();
    let total = (u128::from(spec.rate) * max.as_millis() / 1000) as usize;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / spec.rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..total {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) || started.elapsed() >= max {
            break;
        }
        let (attempts, timeout) = (attempts.clone(), spec.timeout);
        tasks.spawn(async move {
            let t = Instant::now();
            let outcome = get_small(target, timeout).await;
            lock(&attempts).push(Attempt {
                at: t - started,
                took: t.elapsed(),
                outcome,
            });
        });
        // Reap finished ones as we go.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// Reads the SYN counter (with `nft` started from this thread, which is in
/// the lb namespace).
fn read_counter(started: Instant) -> Result<SynSample, String> {
    let out = Command::new("nft")
        .args(["list", "chain", "ip", COUNTER_TABLE, "count"])
        .output()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    let at = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    match (
        counter_packets(&text, "first"),
        counter_packets(&text, "retransmitted"),
    ) {
        (Some(first), Some(retransmitted)) => Ok(SynSample {
            at,
            first,
            retransmitted,
        }),
        _ => Err(format!(
            "no counters in `nft list chain`: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

impl Bench {
    /// Measures the failover of `contender` once (see the module docs).
    pub fn failover(
        &mut self,
        contender: Contender,
        run: usize,
        spec: &FailoverSpec,
    ) -> Result<FailoverRun, BenchError> {
        let lb_src = self.fresh_sources()?;
        let lb = self.ns("lb");
        let name = format!("{}-failover-{}", contender.name(), self.sequence);
        let mut process = self.start_contender(contender, lb_src, &name)?;
        let result = self.failover_measure(contender, run, spec, process.as_ref());
        let mut cleanup = Vec::new();
        if contender == Contender::Nftables {
            cleanup.push(nft(&lb, &["delete", "table", "ip", "pbench"], None).map(|_| ()));
        }
        cleanup.push(nft(&lb, &["delete", "table", "ip", COUNTER_TABLE], None).map(|_| ()));
        if let Some(p) = process.as_mut() {
            cleanup.push(
                procs::stop_all(std::slice::from_ref(&lb), STOP_GRACE)
                    .map(|_| ())
                    .map_err(BenchError::from),
            );
            if let Err(e) = p.child.wait() {
                tracing::warn!(process = %p.name, error = %e, "cannot reap a contender");
            }
        }
        let run = result?;
        for c in cleanup {
            c?;
        }
        Ok(run)
    }

    fn failover_measure(
        &self,
        contender: Contender,
        run: usize,
        spec: &FailoverSpec,
        process: Option<&procs::Spawned>,
    ) -> Result<FailoverRun, BenchError> {
        let (client, lb) = (self.ns("client"), self.ns("lb"));
        let log = process.map(|p| p.log.clone());
        self.wait_answers(&client, contender.target(), NODES.len(), || {
            log.as_deref()
                .map_or(String::new(), |l| procs::log_tail(l, 20))
        })
        .map_err(|(last, log)| BenchError::NotReady {
            contender,
            limit: READY_TIMEOUT,
            last,
            log,
        })?;
        nft(&lb, &["-f", "-"], Some(&counter_table()))?;
        let mut link = LinkGuard {
            ns: self.ns(VICTIM),
            down: false,
        };
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop_load = Arc::new(AtomicBool::new(false));
        let stop_poll = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let hard_end = started + spec.max_duration() + spec.timeout + Duration::from_secs(5);
        let poller = {
            let (lb, samples, stop, every) =
                (lb.clone(), samples.clone(), stop_poll.clone(), spec.poll);
            std::thread::spawn(move || {
                netns::in_netns(&lb, || -> Result<(), String> {
                    loop {
                        let last = stop.load(Ordering::Relaxed) || Instant::now() >= hard_end;
                        let sample = read_counter(started)?;
                        lock(&samples).push(sample);
                        if last {
                            return Ok(());
                        }
                        std::thread::sleep(every);
                    }
                })
                .map_err(|e| e.to_string())?
            })
        };
        let load = {
            let (target, spec) = (contender.target(), spec.clone());
            let (attempts, stop) = (attempts.clone(), stop_load.clone());
            std::thread::spawn(move || {
                netns::in_netns(&client, || -> Result<(), String> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| format!("runtime: {e}"))?;
                    rt.block_on(stream(target, spec, started, attempts, stop));
                    Ok(())
                })
                .map_err(|e| e.to_string())?
            })
        };
        let sleep_until = |t: Instant| {
            if let Some(d) = t.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        };
        let mut orchestrate = || -> Result<(Duration, Duration), BenchError> {
            sleep_until(started + spec.kill_at);
            link.set(false)?;
            let killed = started.elapsed();
            sleep_until(started + killed + spec.down_for);
            link.set(true)?;
            let restored = started.elapsed();
            let deadline = started + restored + spec.recover_limit;
            while Instant::now() < deadline
                && recovery(&lock(&attempts), restored).is_none()
                && !load.is_finished()
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(spec.after_recovery);
            Ok((killed, restored))
        };
        let times = orchestrate();
        drop(link);
        stop_load.store(true, Ordering::Relaxed);
        let join_limit = |h: &std::thread::JoinHandle<Result<(), String>>, what: &str| {
            let deadline = hard_end + Duration::from_secs(5);
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if h.is_finished() {
                Ok(())
            } else {
                Err(BenchError::Command {
                    command: what.to_string(),
                    reason: "did not end in time".into(),
                })
            }
        };
        let load_ended = join_limit(&load, "failover client stream");
        stop_poll.store(true, Ordering::Relaxed);
        let poll_ended = join_limit(&poller, "failover counter poll");
        let (killed, restored) = times?;
        load_ended?;
        poll_ended?;
        for (h, what) in [
            (load, "failover client stream"),
            (poller, "failover counter poll"),
        ] {
            h.join()
                .map_err(|_| BenchError::Command {
                    command: what.to_string(),
                    reason: "panicked".into(),
                })?
                .map_err(|reason| BenchError::Command {
                    command: what.to_string(),
                    reason,
                })?;
        }
        let mut attempts = std::mem::take(&mut *lock(&attempts));
        attempts.sort_by_key(|a| a.at);
        let samples = std::mem::take(&mut *lock(&samples));
        Ok(FailoverRun {
            contender,
            run,
            attempts,
            samples,
            killed,
            restored,
            slow: spec.slow,
        })
    }
}

/// Runs the failover measurement for every contender of `bench` but
/// `direct` (which has no balancer), `runs` times, interleaved.
pub fn run_failovers(
    bench: &mut Bench,
    spec: &FailoverSpec,
    mut progress: impl FnMut(&FailoverResult),
) -> Result<Vec<FailoverResult>, BenchError> {
    let contenders: Vec<Contender> = bench
        .opts
        .contenders
        .iter()
        .copied()
        .filter(|c| *c != Contender::Direct)
        .collect();
    let mut results = Vec::new();
    for run in 1..=spec.runs.max(1) {
        for c in &contenders {
            let r = FailoverResult::new(&bench.failover(*c, run, spec)?);
            progress(&r);
            results.push(r);
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn counters_are_read_by_comment() {
        let listing = "table ip pbench-failover {\n\tchain count {\n\t\ttype filter hook postrouting priority 200; policy accept;\n\t\tip daddr 10.92.0.12 tcp dport 30080 tcp flags & (syn | ack) == syn ip saddr . tcp sport @seen counter packets 7 bytes 420 accept comment \"retransmitted\"\n\t\tip daddr 10.92.0.12 tcp dport 30080 tcp flags & (syn | ack) == syn add @seen { ip saddr . tcp sport } counter packets 1234 bytes 74040 comment \"first\"\n\t}\n}\n";
        assert_eq!(counter_packets(listing, "first"), Some(1234));
        assert_eq!(counter_packets(listing, "retransmitted"), Some(7));
        assert_eq!(counter_packets(listing, "missing"), None);
        assert!(counter_table().contains("ip daddr 10.92.0.12 tcp dport 30080"));
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
