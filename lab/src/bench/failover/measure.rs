//! The failover measurement itself: the counter table in the lb namespace,
//! node 2's link (brought back up whatever happens), the client
//! stream and the counter's poller on threads of their own, and the
//! contender started and stopped around them ([`Bench::failover`]);
//! [`run_failovers`] runs it for every contender.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::netns::{self, ip_line};
use crate::procs;
use crate::sync::lock;

use crate::bench::contenders::NFT_TABLE;
use crate::bench::topology::{nft, switch_port};
use crate::bench::{Addrs, Bench, BenchError, Contender, NODES, NODE_PORT, STOP_GRACE};

use super::{
    recovery, Attempt, FailoverResult, FailoverRun, FailoverSpec, Outcome, SynSample,
    COUNTER_TABLE, VICTIM_INDEX,
};

/// The counter table (priority 200: after source NAT, so nftables DNAT's
/// packets show with their node address too), in the family of `addrs`.
pub(super) fn counter_table(addrs: Addrs) -> String {
    let (f, node2) = (addrs.nft(), addrs.nodes()[1]);
    let syn = format!("{f} daddr {node2} tcp dport {NODE_PORT} tcp flags & (syn | ack) == syn");
    let addr_type = addrs.nft_addr_type();
    format!(
        "table {f} {COUNTER_TABLE} {{
  set seen {{
    type {addr_type} . inet_service
    flags dynamic, timeout
    timeout 10s
  }}
  chain count {{
    type filter hook postrouting priority 200; policy accept;
    {syn} {f} saddr . tcp sport @seen counter accept comment \"retransmitted\"
    {syn} add @seen {{ {f} saddr . tcp sport }} counter comment \"first\"
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

/// Node 2's link, cut and mended at the switch: its port on the lb's
/// bridge ([`switch_port`]) goes down or up, so the node's `eth0` loses its
/// carrier as when a cable is pulled, and keeps its addresses (IPv6 ones
/// too) and routes. Brings the link back when dropped: a failed
/// measurement leaves the topology whole.
struct LinkGuard {
    /// The lb namespace, where the bridge is.
    lb: String,
    down: bool,
}

impl LinkGuard {
    fn set(&mut self, up: bool) -> Result<(), BenchError> {
        let state = if up { "up" } else { "down" };
        let port = switch_port(VICTIM_INDEX);
        ip_line(&format!("-n {} link set {port} {state}", self.lb))?;
        self.down = !up;
        Ok(())
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        if self.down {
            if let Err(e) = self.set(true) {
                tracing::error!(ns = %self.lb, error = %e, "cannot bring node-2's link back");
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

/// Reads the SYN counter of the table in nftables family `family` (with
/// `nft` started from this thread, which is in the lb namespace).
fn read_counter(family: &str, started: Instant) -> Result<SynSample, String> {
    let out = Command::new("nft")
        .args(["list", "chain", family, COUNTER_TABLE, "count"])
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
        let family = self.opts.addrs().nft();
        if contender == Contender::Nftables {
            cleanup.push(nft(&lb, &["delete", "table", family, NFT_TABLE], None).map(|_| ()));
        }
        cleanup.push(nft(&lb, &["delete", "table", family, COUNTER_TABLE], None).map(|_| ()));
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
        let addrs = self.opts.addrs();
        self.wait_contender(contender, NODES.len(), process)?;
        nft(&lb, &["-f", "-"], Some(&counter_table(addrs)))?;
        let mut link = LinkGuard {
            lb: lb.clone(),
            down: false,
        };
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop_load = Arc::new(AtomicBool::new(false));
        let stop_poll = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let hard_end = started + spec.max_duration() + spec.timeout + Duration::from_secs(5);
        let poller = poll_counter(
            lb,
            addrs.nft(),
            samples.clone(),
            stop_poll.clone(),
            spec.poll,
            started,
            hard_end,
        );
        let load = client_stream(
            client,
            contender.target(addrs),
            spec.clone(),
            started,
            attempts.clone(),
            stop_load.clone(),
        );
        let times = kill_and_restore(&mut link, spec, started, &attempts, &load);
        drop(link);
        stop_load.store(true, Ordering::Relaxed);
        let load_ended = join_limit(&load, "failover client stream", hard_end);
        stop_poll.store(true, Ordering::Relaxed);
        let poll_ended = join_limit(&poller, "failover counter poll", hard_end);
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

/// A thread of the measurement; its error, if it failed.
type Worker = std::thread::JoinHandle<Result<(), String>>;

/// Reads the SYN counter (of nftables family `family`) every `every` into
/// `samples`, on a thread in the lb namespace `lb`, until `stop` (then once
/// more) or `hard_end`.
fn poll_counter(
    lb: String,
    family: &'static str,
    samples: Arc<Mutex<Vec<SynSample>>>,
    stop: Arc<AtomicBool>,
    every: Duration,
    started: Instant,
    hard_end: Instant,
) -> Worker {
    std::thread::spawn(move || {
        netns::in_netns(&lb, || -> Result<(), String> {
            loop {
                let last = stop.load(Ordering::Relaxed) || Instant::now() >= hard_end;
                let sample = read_counter(family, started)?;
                lock(&samples).push(sample);
                if last {
                    return Ok(());
                }
                std::thread::sleep(every);
            }
        })
        .map_err(|e| e.to_string())?
    })
}

/// Runs the client [`stream`] to `target` on a thread in the client
/// namespace `client`.
fn client_stream(
    client: String,
    target: SocketAddr,
    spec: FailoverSpec,
    started: Instant,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    stop: Arc<AtomicBool>,
) -> Worker {
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
}

/// Takes node 2's link down at [`FailoverSpec::kill_at`] and back up
/// [`FailoverSpec::down_for`] later, then waits until node 2 answered a
/// client again (at most [`FailoverSpec::recover_limit`], or until the
/// `load` ended) and [`FailoverSpec::after_recovery`] more; when the link
/// went down and when it came back, from `started`.
fn kill_and_restore(
    link: &mut LinkGuard,
    spec: &FailoverSpec,
    started: Instant,
    attempts: &Mutex<Vec<Attempt>>,
    load: &Worker,
) -> Result<(Duration, Duration), BenchError> {
    let sleep_until = |t: Instant| {
        if let Some(d) = t.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    };
    sleep_until(started + spec.kill_at);
    link.set(false)?;
    let killed = started.elapsed();
    sleep_until(started + killed + spec.down_for);
    link.set(true)?;
    let restored = started.elapsed();
    let deadline = started + restored + spec.recover_limit;
    while Instant::now() < deadline
        && recovery(&lock(attempts), restored).is_none()
        && !load.is_finished()
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(spec.after_recovery);
    Ok((killed, restored))
}

/// Waits until thread `h` ended, at most 5 s past `hard_end`.
fn join_limit(h: &Worker, what: &str, hard_end: Instant) -> Result<(), BenchError> {
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
    use crate::bench::IpFamily;

    #[test]
    fn counters_are_read_by_comment() {
        let listing = "table ip pbench-failover {\n\tchain count {\n\t\ttype filter hook postrouting priority 200; policy accept;\n\t\tip daddr 10.92.0.12 tcp dport 30080 tcp flags & (syn | ack) == syn ip saddr . tcp sport @seen counter packets 7 bytes 420 accept comment \"retransmitted\"\n\t\tip daddr 10.92.0.12 tcp dport 30080 tcp flags & (syn | ack) == syn add @seen { ip saddr . tcp sport } counter packets 1234 bytes 74040 comment \"first\"\n\t}\n}\n";
        assert_eq!(counter_packets(listing, "first"), Some(1234));
        assert_eq!(counter_packets(listing, "retransmitted"), Some(7));
        assert_eq!(counter_packets(listing, "missing"), None);
        let v4 = counter_table(Addrs(IpFamily::V4));
        assert!(v4.contains("ip daddr 10.92.0.12 tcp dport 30080"), "{v4}");
        let v6 = counter_table(Addrs(IpFamily::V6));
        assert!(v6.starts_with("table ip6 pbench-failover"), "{v6}");
        assert!(v6.contains("type ipv6_addr . inet_service"), "{v6}");
        assert!(v6.contains("ip6 daddr fd00:92::12 tcp dport 30080"), "{v6}");
        assert!(v6.contains("add @seen { ip6 saddr . tcp sport }"), "{v6}");
    }
}
