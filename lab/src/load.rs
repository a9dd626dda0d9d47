//! Load for the failure scenarios, from one client namespace: a steady
//! stream of new connections (one request each, like [`crate::pod::get`])
//! and long-lived echo sessions that exchange a line every so often, every
//! outcome recorded with the time it happened. [`Record::timeline`] turns
//! the record into a per-second table (connections ok / failed, and which
//! nodes and pods answered) that a test prints and asserts on.
//!
//! Everything is bounded: at most `rate x duration` new connections, each
//! within `timeout`; sessions end with the load. The load paces itself with
//! a timer (that is its job); it never waits for the scenario.
//!
//! The load runs on a thread of its own that entered the client's namespace,
//! with a current-thread tokio runtime, so every socket it opens lives there.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

use crate::netns::{in_netns, NetnsError};
use crate::pod::{self, Answer, ECHO_REQUEST};
use crate::sync::lock;

/// How often [`Load::wait_until`] re-checks its condition.
const RECHECK: Duration = Duration::from_millis(20);

/// A load failure (not a failed connection: those are recorded).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The client namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The runtime could not be built.
    #[error("cannot build the load's runtime: {0}")]
    Runtime(std::io::Error),
    /// The load thread panicked.
    #[error("the load thread panicked")]
    Panicked,
    /// The load did not end in time (it is bounded, so this is a bug).
    #[error("the load did not end within {0:?}")]
    Overran(Duration),
    /// A condition on the load was not met in time.
    #[error("timed out after {limit:?} waiting for {what}; load so far:\n{timeline}")]
    NotMet {
        /// The condition.
        what: String,
        /// The limit.
        limit: Duration,
        /// The record so far.
        timeline: String,
    },
}

/// What load to run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// New connections go to these in turn (empty: none).
    pub targets: Vec<SocketAddr>,
    /// New connections per second (over all targets).
    pub rate: u32,
    /// How long new connections are opened, and sessions kept.
    pub duration: Duration,
    /// The limit for one new connection, connect to answer.
    pub timeout: Duration,
    /// One long-lived echo session per entry, reopened after each end
    /// until the load ends.
    pub sessions: Vec<SocketAddr>,
    /// How long one session lives before it closes cleanly and the next
    /// opens (`None`: the whole load).
    pub session_lifetime: Option<Duration>,
    /// How often a session sends a line and waits for its echo.
    pub exchange_every: Duration,
}

impl LoadSpec {
    /// `rate` new connections a second to `targets` for `duration`, each
    /// within [`pod::TIMEOUT`]; no sessions.
    pub fn connections(targets: Vec<SocketAddr>, rate: u32, duration: Duration) -> LoadSpec {
        LoadSpec {
            targets,
            rate,
            duration,
            timeout: pod::TIMEOUT,
            sessions: Vec::new(),
            session_lifetime: None,
            exchange_every: Duration::from_millis(100),
        }
    }

    /// Adds `count` echo sessions to each of `targets`.
    pub fn with_sessions(mut self, targets: &[SocketAddr], count: usize) -> LoadSpec {
        for t in targets {
            self.sessions.extend(std::iter::repeat_n(*t, count));
        }
        self
    }

    /// Makes each session live `lifetime`, then reopen.
    pub fn session_lifetime(mut self, lifetime: Duration) -> LoadSpec {
        self.session_lifetime = Some(lifetime);
        self
    }
}

/// One new connection.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Where to.
    pub target: SocketAddr,
    /// When it started, from the start of the load.
    pub at: Duration,
    /// How long it took, to its answer or failure.
    pub took: Duration,
    /// The pod's answer, or why there was none (a [`crate::pod::ClientError`], as text).
    pub result: Result<Answer, String>,
}

/// One long-lived echo session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Where to.
    pub target: SocketAddr,
    /// When it was opened, from the start of the load.
    pub opened: Duration,
    /// When it ended (cleanly or not).
    pub ended: Duration,
    /// Who answered when it opened.
    pub answer: Option<Answer>,
    /// Lines sent and echoed back intact.
    pub exchanges: u64,
    /// Why it ended before the client closed it (`None`: it ran its course
    /// and closed cleanly).
    pub lost: Option<String>,
}

/// Everything the load saw so far.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// New connections, in the order they ended.
    pub connections: Vec<Connection>,
    /// Sessions, in the order they ended.
    pub sessions: Vec<Session>,
    /// Sessions as they opened: target, when, and who answered (to see
    /// where the ones still open go).
    pub opened: Vec<(SocketAddr, Duration, Answer)>,
}

impl Record {
    /// New connections, failed ones, sessions and lost ones to targets of
    /// each address family, as `IPv4: 240 connections, 0 failed; 6
    /// sessions, 0 lost` lines (a family without traffic is left out).
    pub fn by_family(&self) -> String {
        let mut out = String::new();
        for family in crate::topology::FAMILIES {
            let of = |t: &SocketAddr| crate::topology::IpFamily::of(t.ip()) == family;
            let conns: Vec<&Connection> =
                self.connections.iter().filter(|c| of(&c.target)).collect();
            let sessions: Vec<&Session> = self.sessions.iter().filter(|s| of(&s.target)).collect();
            if conns.is_empty() && sessions.is_empty() {
                continue;
            }
            out.push_str(&format!(
                "{family}: {} connections, {} failed; {} sessions, {} lost\n",
                conns.len(),
                conns.iter().filter(|c| c.result.is_err()).count(),
                sessions.len(),
                sessions.iter().filter(|s| s.lost.is_some()).count(),
            ));
        }
        out
    }

    /// The connections that failed.
    pub fn failed(&self) -> Vec<&Connection> {
        self.connections
            .iter()
            .filter(|c| c.result.is_err())
            .collect()
    }

    /// How many connections succeeded at or after `since`.
    pub fn ok_since(&self, since: Duration) -> usize {
        self.connections
            .iter()
            .filter(|c| c.at >= since && c.result.is_ok())
            .count()
    }

    /// The sessions that ended before the client closed them.
    pub fn lost_sessions(&self) -> Vec<&Session> {
        self.sessions.iter().filter(|s| s.lost.is_some()).collect()
    }

    /// The per-second table of the connections.
    pub fn timeline(&self) -> Timeline {
        let mut t = Timeline::default();
        for c in &self.connections {
            let row = t.row(c.at);
            match &c.result {
                Ok(a) => {
                    row.ok += 1;
                    *row.nodes.entry(a.node.clone()).or_default() += 1;
                    *row.pods.entry(a.pod.clone()).or_default() += 1;
                }
                Err(e) => {
                    row.failed += 1;
                    row.errors.push(e.clone());
                }
            }
        }
        for s in &self.sessions {
            if s.lost.is_some() {
                t.row(s.ended).sessions_lost += 1;
            }
        }
        t
    }
}

/// One second of a [`Timeline`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Second {
    /// New connections started in this second and answered.
    pub ok: usize,
    /// New connections started in this second that failed.
    pub failed: usize,
    /// Answers by the answering pod's node.
    pub nodes: BTreeMap<String, usize>,
    /// Answers by pod.
    pub pods: BTreeMap<String, usize>,
    /// Sessions lost in this second.
    pub sessions_lost: usize,
    /// Other per-second figures a scenario adds (say SYNs seen per node).
    pub extra: BTreeMap<String, u64>,
    /// Why the failed connections failed.
    pub errors: Vec<String>,
}

/// Per-second outcomes of a load, with marks for what the scenario did.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// Second `i` of the load is `seconds[i]`.
    pub seconds: Vec<Second>,
    /// What happened when (`(at, what)`), shown in the table.
    pub marks: Vec<(Duration, String)>,
}

impl Timeline {
    fn row(&mut self, at: Duration) -> &mut Second {
        let i = at.as_secs() as usize;
        if self.seconds.len() <= i {
            self.seconds.resize_with(i + 1, Second::default);
        }
        &mut self.seconds[i]
    }

    /// Adds `amount` to column `column` in the second of `at`.
    pub fn add(&mut self, at: Duration, column: &str, amount: u64) {
        *self.row(at).extra.entry(column.to_string()).or_default() += amount;
    }

    /// Marks what the scenario did at `at`.
    pub fn mark(&mut self, at: Duration, what: impl Into<String>) {
        self.marks.push((at, what.into()));
    }

    /// The seconds (indices) in which `node` answered at least one connection.
    pub fn seconds_answered_by(&self, node: &str) -> Vec<usize> {
        self.seconds
            .iter()
            .enumerate()
            .filter(|(_, s)| s.nodes.get(node).is_some_and(|n| *n > 0))
            .map(|(i, _)| i)
            .collect()
    }

    /// The sum of column `column` over seconds `from..to`.
    pub fn extra_sum(&self, column: &str, from: usize, to: usize) -> u64 {
        self.seconds
            .iter()
            .take(to)
            .skip(from)
            .filter_map(|s| s.extra.get(column))
            .sum()
    }
}

impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut columns: Vec<String> = Vec::new();
        for s in &self.seconds {
            for k in s.extra.keys() {
                if !columns.contains(k) {
                    columns.push(k.clone());
                }
            }
        }
        write!(f, "   s    ok  fail  lost |")?;
        for c in &columns {
            write!(f, " {c:>12}")?;
        }
        writeln!(f, " | answered by")?;
        for (i, s) in self.seconds.iter().enumerate() {
            write!(
                f,
                "{i:>4} {:>5} {:>5} {:>5} |",
                s.ok, s.failed, s.sessions_lost
            )?;
            for c in &columns {
                write!(f, " {:>12}", s.extra.get(c).copied().unwrap_or_default())?;
            }
            let pods: Vec<String> = s.pods.iter().map(|(p, n)| format!("{p}:{n}")).collect();
            write!(f, " | {}", pods.join(" "))?;
            for (at, what) in &self.marks {
                if at.as_secs() as usize == i {
                    write!(f, "   <- {:.2}s {what}", at.as_secs_f64())?;
                }
            }
            writeln!(f)?;
            let mut errors = s.errors.clone();
            errors.dedup();
            for e in errors.iter().take(3) {
                writeln!(f, "{:>28}failed: {e}", "")?;
            }
        }
        Ok(())
    }
}

/// A running load.
#[derive(Debug)]
pub struct Load {
    started: Instant,
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), LoadError>>>,
    limit: Duration,
}

impl Load {
    /// Starts `spec` from namespace `ns`.
    pub fn start(ns: &str, spec: LoadSpec) -> Load {
        let record = Arc::new(Mutex::new(Record::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let limit = spec.duration + spec.timeout * 2 + Duration::from_secs(10);
        let thread = {
            let (ns, record, stop) = (ns.to_string(), record.clone(), stop.clone());
            std::thread::spawn(move || {
                in_netns(&ns, || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(LoadError::Runtime)?;
                    rt.block_on(run(spec, started, record, stop));
                    Ok(())
                })?
            })
        };
        Load {
            started,
            record,
            stop,
            thread: Some(thread),
            limit,
        }
    }

    /// When the load started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Time since the load started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// A copy of the record so far.
    pub fn record(&self) -> Record {
        lock(&self.record).clone()
    }

    /// Waits until `check` holds for the record, at most `limit`.
    pub fn wait_until(
        &self,
        what: &str,
        limit: Duration,
        check: impl Fn(&Record) -> bool,
    ) -> Result<(), LoadError> {
        let deadline = Instant::now() + limit;
        loop {
            if check(&lock(&self.record)) {
                return Ok(());
            }
            if Instant::now() >= deadline || self.thread.as_ref().is_none_or(|t| t.is_finished()) {
                return Err(LoadError::NotMet {
                    what: what.to_string(),
                    limit,
                    timeline: self.record().timeline().to_string(),
                });
            }
            std::thread::sleep(RECHECK);
        }
    }

    /// Waits until `count` more connections succeeded after now.
    pub fn wait_ok(&self, count: usize, limit: Duration) -> Result<(), LoadError> {
        let since = self.elapsed();
        self.wait_until(
            &format!("{count} connections to succeed after {since:.2?}"),
            limit,
            |r| r.ok_since(since) >= count,
        )
    }

    /// Whether the load has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Ends the load early: no new connections; sessions close cleanly.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Waits for the load to end (it is bounded); the whole record.
    pub fn finish(mut self) -> Result<Record, LoadError> {
        let deadline = self.started + self.limit;
        let Some(thread) = self.thread.take() else {
            return Ok(self.record());
        };
        while !thread.is_finished() {
            if Instant::now() >= deadline {
                self.stop();
                return Err(LoadError::Overran(self.limit));
            }
            std::thread::sleep(RECHECK);
        }
        thread.join().map_err(|_| LoadError::Panicked)??;
        Ok(self.record())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // A test that failed early: let the thread wind down on its own.
        self.stop();
    }
}

async fn run(spec: LoadSpec, started: Instant, record: Arc<Mutex<Record>>, stop: Arc<AtomicBool>) {
    let end = started + spec.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for target in spec.sessions.clone() {
        let (record, stop, spec) = (record.clone(), stop.clone(), spec.clone());
        tasks.spawn(async move {
            while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                let s = session(target, &spec, started, end, &stop, &record).await;
                let failed_to_open = s.answer.is_none();
                lock(&record).sessions.push(s);
                if failed_to_open {
                    // Do not spin on a target that refuses: next try at the
                    // next exchange tick.
                    tokio::time::sleep(spec.exchange_every).await;
                }
            }
        });
    }
    let total = if spec.targets.is_empty() {
        0
    } else {
        (u128::from(spec.rate) * spec.duration.as_millis() / 1000) as usize
    };
    let period = Duration::from_secs(1) / spec.rate.max(1);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0..total {
        tick.tick().await;
        // The count bounds the stream; the time check only stops a pace
        // that fell far behind (a starved machine), a second past the end.
        if stop.load(Ordering::Relaxed) || Instant::now() >= end + Duration::from_secs(1) {
            break;
        }
        let target = spec.targets[i % spec.targets.len()];
        let (record, timeout) = (record.clone(), spec.timeout);
        tasks.spawn(async move {
            let t = Instant::now();
            let result = pod::get_async(target, timeout).await;
            lock(&record).connections.push(Connection {
                target,
                at: t - started,
                took: t.elapsed(),
                result: result.map_err(|e| e.to_string()),
            });
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// One echo session: open, then a line every `exchange_every` until the
/// load ends or the lifetime is over, then close cleanly.
async fn session(
    target: SocketAddr,
    spec: &LoadSpec,
    started: Instant,
    end: Instant,
    stop: &AtomicBool,
    record: &Mutex<Record>,
) -> Session {
    let opened = Instant::now();
    let mut s = Session {
        target,
        opened: opened - started,
        ended: Duration::ZERO,
        answer: None,
        exchanges: 0,
        lost: None,
    };
    let until = spec.session_lifetime.map_or(end, |l| (opened + l).min(end));
    let result = async {
        let stream = tokio::time::timeout(spec.timeout, TcpStream::connect(target))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
        let mut stream = BufReader::new(stream);
        let mut line = String::new();
        tokio::time::timeout(spec.timeout, async {
            stream.get_mut().write_all(ECHO_REQUEST).await?;
            stream.read_line(&mut line).await
        })
        .await
        .map_err(|_| "no answer to ECHO".to_string())?
        .map_err(|e| format!("opening: {e}"))?;
        let answer =
            Answer::parse(line.trim()).ok_or_else(|| format!("not an answer: {line:?}"))?;
        lock(record).opened.push((target, s.opened, answer.clone()));
        s.answer = Some(answer);
        let mut tick = tokio::time::interval(spec.exchange_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if Instant::now() >= until || stop.load(Ordering::Relaxed) {
                break;
            }
            let sent = format!("ping {} from {target}\n", s.exchanges);
            let mut back = vec![0u8; sent.len()];
            tokio::time::timeout(spec.timeout, async {
                stream.get_mut().write_all(sent.as_bytes()).await?;
                stream.read_exact(&mut back).await
            })
            .await
            .map_err(|_| format!("no echo within {:?}", spec.timeout))?
            .map_err(|e| format!("exchange {}: {e}", s.exchanges))?;
            if back != sent.as_bytes() {
                return Err(format!(
                    "echo {} garbled: {:?}",
                    s.exchanges,
                    String::from_utf8_lossy(&back)
                ));
            }
            s.exchanges += 1;
        }
        // Clean close: our half first, then the pod's end of file.
        let mut rest = Vec::new();
        tokio::time::timeout(spec.timeout, async {
            stream.get_mut().shutdown().await?;
            stream.read_to_end(&mut rest).await
        })
        .await
        .map_err(|_| "no end of file after closing".to_string())?
        .map_err(|e| format!("closing: {e}"))?;
        Ok::<(), String>(())
    }
    .await;
    s.ended = started.elapsed();
    if let Err(e) = result {
        s.lost = Some(format!("at {:.2?}: {e}", s.ended));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::ClientError;

    fn conn(at_ms: u64, result: Result<Answer, ClientError>) -> Connection {
        let result = result.map_err(|e| e.to_string());
        Connection {
            target: "198.51.100.100:80".parse().unwrap(),
            at: Duration::from_millis(at_ms),
            took: Duration::from_millis(1),
            result,
        }
    }

    fn answer(pod: &str, node: &str) -> Answer {
        Answer {
            pod: pod.into(),
            node: node.into(),
            peer: "10.88.0.11".parse().unwrap(),
            proxied_client: None,
        }
    }

    #[test]
    fn the_timeline_buckets_by_second() {
        let addr = "198.51.100.100:80".parse().unwrap();
        let record = Record {
            connections: vec![
                conn(100, Ok(answer("web-1", "node-1"))),
                conn(900, Ok(answer("web-2", "node-2"))),
                conn(1500, Err(ClientError::TimedOut { addr })),
                conn(2100, Ok(answer("web-1", "node-1"))),
            ],
            sessions: Vec::new(),
            opened: Vec::new(),
        };
        let mut t = record.timeline();
        t.add(Duration::from_millis(1200), "syn node-2", 7);
        t.mark(Duration::from_millis(1100), "node-2 killed");
        assert_eq!(t.seconds.len(), 3);
        assert_eq!((t.seconds[0].ok, t.seconds[0].failed), (2, 0));
        assert_eq!((t.seconds[1].ok, t.seconds[1].failed), (0, 1));
        assert_eq!(t.seconds_answered_by("node-1"), [0, 2]);
        assert_eq!(t.extra_sum("syn node-2", 0, 3), 7);
        let text = t.to_string();
        assert!(text.contains("node-2 killed"), "{text}");
        assert!(text.contains("timed out"), "{text}");
        assert_eq!(record.failed().len(), 1);
        assert_eq!(record.ok_since(Duration::from_secs(1)), 1);
    }
}
