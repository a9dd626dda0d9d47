//! The prober, from the client namespace: one request through a VIP:port
//! tells which node and nodePort answered (`probe`); every VIP:port until
//! each answered right, with bounded concurrency (`Scale::probe_all`); one
//! pass to count the right answers; one VIP:port until it follows a change
//! (`Scale::follow`).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::netns;
use crate::procs;
use crate::sync::lock;

use super::{vip, Scale, ScaleError, CHANGE_LIMIT, CHANGE_POLL, PORTS, PROBE_CONNECT_TIMEOUT};

/// A VIP:port and the nodePort that must answer it.
#[derive(Debug, Clone, Copy)]
struct Target {
    addr: SocketAddr,
    node_port: u16,
}

impl Scale {
    /// Every VIP:port and the nodePort it must be answered with now.
    fn targets(&self) -> Vec<Target> {
        let addrs = self.opts.addrs();
        self.ports
            .iter()
            .enumerate()
            .flat_map(|(i, ports)| {
                ports.iter().enumerate().map(move |(p, np)| Target {
                    addr: SocketAddr::new(vip(addrs, i), PORTS[p]),
                    node_port: *np,
                })
            })
            .collect()
    }

    /// Probes every target until each answered with its nodePort; the times
    /// of the first and of the last first answer. `between` runs after
    /// every pass.
    pub(super) fn probe_all(
        &self,
        since: Instant,
        what: &str,
        log: &Path,
        mut between: impl FnMut() + Send,
    ) -> Result<(Duration, Duration), ScaleError> {
        let targets = self.targets();
        let limit = self.opts.setup_limit;
        let concurrency = self.opts.concurrency.max(1);
        let outcome = netns::in_netns(&self.ns("client"), || {
            let answered: Vec<Mutex<Option<Instant>>> =
                targets.iter().map(|_| Mutex::new(None)).collect();
            let mut pending: Vec<usize> = (0..targets.len()).collect();
            let mut last_error = String::new();
            while !pending.is_empty() {
                if since.elapsed() > limit {
                    let t = targets[pending[0]];
                    return Err(format!(
                        "{} of {} VIP:ports never answered right (first: {} wanting {}; last error: {last_error})",
                        pending.len(),
                        targets.len(),
                        t.addr,
                        t.node_port
                    ));
                }
                let next = AtomicUsize::new(0);
                let error = Mutex::new(String::new());
                std::thread::scope(|s| {
                    for _ in 0..concurrency.min(pending.len()) {
                        s.spawn(|| loop {
                            let j = next.fetch_add(1, Ordering::Relaxed);
                            let Some(&i) = pending.get(j) else { break };
                            let t = targets[i];
                            match probe(t.addr) {
                                Ok((_, port)) if port == t.node_port => {
                                    *lock(&answered[i]) = Some(Instant::now());
                                }
                                Ok((node, port)) => {
                                    *lock(&error) =
                                        format!("{} answered by {node} port {port}", t.addr)
                                }
                                Err(e) => *lock(&error) = format!("{}: {e}", t.addr),
                            }
                        });
                    }
                });
                last_error = lock(&error).clone();
                pending.retain(|i| lock(&answered[*i]).is_none());
                between();
                if !pending.is_empty() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let times: Vec<Instant> = answered.iter().filter_map(|a| *lock(a)).collect();
            let at = |t: Option<&Instant>| {
                t.map_or(Duration::ZERO, |t| t.saturating_duration_since(since))
            };
            Ok((at(times.iter().min()), at(times.iter().max())))
        })?;
        outcome.map_err(|detail| ScaleError::Timeout {
            what: what.to_string(),
            limit,
            detail: format!("{detail}; log tail:\n{}", procs::log_tail(log, 30)),
        })
    }

    /// One pass over every target; how many answered right.
    pub(super) fn check_pass(&self) -> Result<usize, ScaleError> {
        let targets = self.targets();
        let concurrency = self.opts.concurrency.max(1);
        Ok(netns::in_netns(&self.ns("client"), || {
            let next = AtomicUsize::new(0);
            let ok = AtomicUsize::new(0);
            std::thread::scope(|s| {
                for _ in 0..concurrency {
                    s.spawn(|| loop {
                        let j = next.fetch_add(1, Ordering::Relaxed);
                        let Some(t) = targets.get(j) else { break };
                        if matches!(probe(t.addr), Ok((_, p)) if p == t.node_port) {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            });
            ok.load(Ordering::Relaxed)
        })?)
    }

    /// Polls `target` every [`CHANGE_POLL`] from `since` until it answers
    /// with `node_port`; the time taken and the failed connections.
    pub(super) fn follow(
        &self,
        target: SocketAddr,
        node_port: u16,
        since: Instant,
        log: &Path,
    ) -> Result<(Duration, usize), ScaleError> {
        let got = netns::in_netns(&self.ns("client"), || {
            let mut errors = 0;
            let mut last = String::new();
            while since.elapsed() < CHANGE_LIMIT {
                match probe(target) {
                    Ok((_, p)) if p == node_port => return Ok((since.elapsed(), errors)),
                    Ok((node, p)) => last = format!("{node} {p}"),
                    Err(e) => {
                        errors += 1;
                        last = e;
                    }
                }
                std::thread::sleep(CHANGE_POLL);
            }
            Err(last)
        })?;
        got.map_err(|last| ScaleError::Timeout {
            what: format!("{target} following nodePort {node_port}"),
            limit: CHANGE_LIMIT,
            detail: format!(
                "last answer: {last}; log tail:\n{}",
                procs::log_tail(log, 30)
            ),
        })
    }
}

/// A node server's answer body: `<node> <port>`.
pub fn parse_answer(body: &str) -> Option<(String, u16)> {
    let mut it = body.split_whitespace();
    let node = it.next()?.to_string();
    let port = it.next()?.parse().ok()?;
    Some((node, port))
}

/// One request through `target`: the node and nodePort that answered.
///
/// The connect gives up after [`PROBE_CONNECT_TIMEOUT`]: a VIP the edge has
/// not added yet drops the SYN (HAProxy's pre-added VIPs refuse it at once),
/// and waiting out a full second there would make that second the
/// resolution of every set-up time.
pub(super) fn probe(target: SocketAddr) -> Result<(String, u16), String> {
    let timeout = Duration::from_secs(1);
    let mut s =
        TcpStream::connect_timeout(&target, PROBE_CONNECT_TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: scale\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or_else(|| format!("no answer ({} bytes)", text.len()))?;
    parse_answer(body).ok_or_else(|| format!("answer {body:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scale::metric_value;

    #[test]
    fn answers_and_metrics_parse() {
        assert_eq!(
            parse_answer("node-2 20017\n"),
            Some(("node-2".to_string(), 20017))
        );
        assert_eq!(parse_answer("node-2"), None);
        assert_eq!(parse_answer("node-2 x"), None);
        let m = "# HELP portico_edge_listeners x\nportico_edge_listeners_total 9\nportico_edge_listeners 3000\n";
        assert_eq!(metric_value(m, "portico_edge_listeners"), Some(3000.0));
        assert_eq!(metric_value(m, "portico_edge_missing"), None);
    }
}
