//! An active-standby pair of edges: keepalived on the shipped
//! `deploy/keepalived.conf` in two edge namespaces ([`super::Namespaces`]),
//! each beside a stand-in for the edge's admin server ([`Readyz`]: `GET
//! /readyz` answers 200 or 503 as the test says), so a test sees the VIPs
//! follow the edge's readiness.

use std::fs::{self, File};
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::command;
use crate::netns;
use crate::procs;

use super::{deploy_file, read, RoutingError};

/// Where the edge's admin server answers `/readyz` by default (and where
/// the shipped `keepalived.conf` asks).
pub const READYZ: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9721);

/// How long a connection to the stand-in may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the stand-in looks for a connection or its stop.
const POLL: Duration = Duration::from_millis(10);

/// `text` (a config named `config` in errors) with its one line reading
/// `from` (leading and trailing blanks aside) reading `to`, indented alike.
pub fn replace_line(
    config: &str,
    text: &str,
    from: &str,
    to: &str,
) -> Result<String, RoutingError> {
    if text.lines().filter(|l| l.trim() == from).count() != 1 {
        return Err(RoutingError::MissingLine {
            config: config.to_string(),
            line: from.to_string(),
        });
    }
    Ok(text
        .lines()
        .map(|l| {
            if l.trim() == from {
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}{to}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n")
}

/// `deploy/keepalived.conf` for edge `n` with VRRP priority `priority`: its
/// own `router_id`, everything else as shipped (the pair differs in
/// priority only, as the file says).
pub fn keepalived_config(n: usize, priority: u8) -> Result<String, RoutingError> {
    let name = "keepalived.conf";
    let text = read(&deploy_file(name))?;
    let text = replace_line(
        name,
        &text,
        "router_id portico-edge-a",
        &format!("router_id portico-edge-{n}"),
    )?;
    replace_line(name, &text, "priority 150", &format!("priority {priority}"))
}

/// keepalived (VRRP only) in a namespace, in the foreground as a child of
/// this process, logging to a file; killed on drop.
#[derive(Debug)]
pub struct Keepalived {
    /// Its namespace.
    pub ns: String,
    /// Its log file.
    pub log: PathBuf,
    child: Option<Child>,
}

impl Keepalived {
    /// Writes `config` to `<dir>/<name>.conf` and starts `keepalived
    /// --dont-fork --vrrp` on it in namespace `ns`, its pid files in `dir`.
    pub fn start(
        ns: &str,
        dir: &Path,
        name: &str,
        config: &str,
    ) -> Result<Keepalived, RoutingError> {
        let file = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RoutingError::File { path, source }
        };
        let conf = dir.join(format!("{name}.conf"));
        fs::write(&conf, config).map_err(file(&conf))?;
        let log = dir.join(format!("{name}.log"));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(file(&log))?;
        let err = out.try_clone().map_err(file(&log))?;
        let program = command::find_on_path("keepalived")
            .unwrap_or_else(|| PathBuf::from("/usr/sbin/keepalived"));
        let pid = |what: &str| dir.join(format!("{name}.{what}.pid"));
        // -n: no fork (the parent stays this child; it forks the VRRP
        // process); -l -D -G: detailed log on the console, none to syslog;
        // -P: VRRP only; own pid files, so two run side by side.
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(["-n", "-l", "-D", "-G", "-P", "-f"])
            .arg(&conf)
            .arg("-p")
            .arg(pid("main"))
            .arg("-r")
            .arg(pid("vrrp"))
            .arg("-c")
            .arg(pid("checkers"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| RoutingError::Spawn {
                ns: ns.to_string(),
                source,
            })?;
        Ok(Keepalived {
            ns: ns.to_string(),
            log,
            child: Some(child),
        })
    }

    /// Kills every keepalived process in its namespace at once (SIGKILL:
    /// no priority-0 advert, the VIPs stay where they are, as when its host
    /// dies) and reaps its own child.
    pub fn kill(&mut self) -> Result<(), RoutingError> {
        for pid in netns::pids(&self.ns)? {
            // ESRCH: it ended meanwhile.
            if let Err(e) = kill(Pid::from_raw(pid), Signal::SIGKILL) {
                if e != nix::errno::Errno::ESRCH {
                    tracing::warn!(ns = %self.ns, pid, error = %e, "cannot kill keepalived");
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            if let Err(e) = child.wait() {
                tracing::warn!(ns = %self.ns, error = %e, "cannot reap keepalived");
            }
        }
        Ok(())
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        procs::log_tail(&self.log, lines)
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = child.kill() {
                tracing::warn!(ns = %self.ns, error = %e, "cannot kill keepalived");
            }
            if let Err(e) = child.wait() {
                tracing::warn!(ns = %self.ns, error = %e, "cannot reap keepalived");
            }
        }
    }
}

/// Whether namespace `ns` holds `addr` on any interface.
pub fn holds(ns: &str, addr: IpAddr) -> Result<bool, RoutingError> {
    let family = if addr.is_ipv6() { "-6" } else { "-4" };
    let text = netns::ip(&["-o", family, "-n", ns, "addr", "show"])?;
    let prefix = format!("{addr}/");
    Ok(text
        .split_whitespace()
        .any(|word| word.starts_with(&prefix)))
}

/// A stand-in for the edge's admin server: `GET /readyz` on [`READYZ`]
/// inside a namespace answers 200 while [`Readyz::set_ready`] says so, 503
/// otherwise. Stops when dropped.
pub struct Readyz {
    ready: Arc<AtomicBool>,
    ok_answers: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Readyz {
    /// Listens on [`READYZ`] inside namespace `ns`, ready.
    pub fn start(ns: &str) -> Result<Readyz, RoutingError> {
        let listener = netns::in_netns(ns, || TcpListener::bind(READYZ))?.map_err(|source| {
            RoutingError::Bind {
                ns: ns.to_string(),
                addr: READYZ,
                source,
            }
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| RoutingError::Bind {
                ns: ns.to_string(),
                addr: READYZ,
                source,
            })?;
        let ready = Arc::new(AtomicBool::new(true));
        let ok_answers = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (ready, ok_answers, stop) = (ready.clone(), ok_answers.clone(), stop.clone());
            std::thread::spawn(move || serve(&listener, &ready, &ok_answers, &stop))
        };
        Ok(Readyz {
            ready,
            ok_answers,
            stop,
            thread: Some(thread),
        })
    }

    /// Answers 200 from now on (`true`) or 503 (`false`).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// How many 200s it has answered.
    pub fn ok_answers(&self) -> u64 {
        self.ok_answers.load(Ordering::SeqCst)
    }
}

impl Drop for Readyz {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                eprintln!("readyz stand-in: its thread panicked");
            }
        }
    }
}

/// The stand-in's accept loop, until `stop`.
fn serve(listener: &TcpListener, ready: &AtomicBool, ok_answers: &AtomicU64, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let ok = ready.load(Ordering::SeqCst);
                match answer(stream, ok) {
                    Ok(()) if ok => {
                        ok_answers.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(()) => {}
                    Err(e) => tracing::debug!(error = %e, "readyz stand-in: a client left early"),
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) => {
                tracing::warn!(error = %e, "readyz stand-in: accept failed");
                std::thread::sleep(POLL);
            }
        }
    }
}

/// Reads one request's head and answers 200 (`ok`) or 503, closing.
fn answer(mut stream: TcpStream, ok: bool) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let (status, body) = if ok {
        ("200 OK", "ready\n")
    } else {
        ("503 Service Unavailable", "not ready\n")
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_is_replaced_with_its_indent() {
        let text = "a {\n\tpriority 150\n}\n";
        assert_eq!(
            replace_line("t", text, "priority 150", "priority 100").unwrap(),
            "a {\n\tpriority 100\n}\n"
        );
        assert!(replace_line("t", text, "priority 99", "x").is_err());
        assert!(replace_line("t", "a\na\n", "a", "b").is_err());
    }
}
