//! Each node's one server: the whole nodePort range is redirected to it
//! ([`node_ruleset`]), and it answers every connection with `<node> <port>`,
//! the nodePort read back with `SO_ORIGINAL_DST`, so a changed nodePort is
//! observable from the client. Threads of this process, inside the node's
//! namespace.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::netns;

use super::{Addrs, ScaleError, HEALTH_PORT, NODE_PORT_RANGE, NODE_SERVER_PORT};

/// Each node's redirect of the whole nodePort range to its one server, in
/// the family of `addrs`.
pub fn node_ruleset(addrs: Addrs) -> String {
    let (lo, hi) = NODE_PORT_RANGE;
    let family = addrs.nft();
    format!(
        "table {family} pscale {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    tcp dport {lo}-{hi} redirect to :{NODE_SERVER_PORT}
  }}
}}
"
    )
}

/// A node's server: threads of this process inside the node's namespace,
/// answering every connection (nodePorts redirected, and :10256) with
/// `HTTP/1.1 200` and `<node> <port>`.
pub(super) struct NodeServer {
    stop: Arc<AtomicBool>,
    listeners: Vec<TcpListener>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl NodeServer {
    /// Binds the node server and the health port in namespace `ns`, on
    /// every address of the family of `addrs`, and starts answering as
    /// `node`.
    pub(super) fn start(ns: &str, node: &str, addrs: Addrs) -> Result<NodeServer, ScaleError> {
        let err = |source| ScaleError::NodeServer {
            node: node.to_string(),
            source,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let bound = netns::in_netns(ns, || -> std::io::Result<Vec<TcpListener>> {
            Ok(vec![
                TcpListener::bind((addrs.any(), NODE_SERVER_PORT))?,
                TcpListener::bind((addrs.any(), HEALTH_PORT))?,
            ])
        })?
        .map_err(err)?;
        let mut listeners = Vec::new();
        let mut threads = Vec::new();
        for l in bound {
            listeners.push(l.try_clone().map_err(err)?);
            let (stop, node) = (stop.clone(), node.to_string());
            threads.push(std::thread::spawn(move || {
                for conn in l.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let node = node.clone();
                    std::thread::spawn(move || answer(conn, &node));
                }
            }));
        }
        Ok(NodeServer {
            stop,
            listeners,
            threads,
        })
    }

    /// Makes the accept loops end (shutdown wakes a blocked `accept`).
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for l in &self.listeners {
            let how = nix::sys::socket::Shutdown::Both;
            if let Err(e) = nix::sys::socket::shutdown(l.as_raw_fd(), how) {
                tracing::debug!(error = %e, "shutting a node listener down");
            }
        }
    }

    /// Waits for the accept loops to end (after [`NodeServer::stop`]).
    pub(super) fn join(self) {
        for t in self.threads {
            if t.join().is_err() {
                tracing::warn!("a node server thread panicked");
            }
        }
    }
}

/// The port `conn` was sent to before the redirect (`SO_ORIGINAL_DST`, or
/// its IPv6 twin); its own port if it was not redirected.
fn original_port(conn: &TcpStream) -> u16 {
    use nix::sys::socket::{getsockopt, sockopt};
    let local = conn.local_addr().map_or(0, |a| a.port());
    let original = match conn.local_addr() {
        Ok(std::net::SocketAddr::V6(_)) => {
            getsockopt(conn, sockopt::Ip6tOriginalDst).map(|a| u16::from_be(a.sin6_port))
        }
        _ => getsockopt(conn, sockopt::OriginalDst).map(|a| u16::from_be(a.sin_port)),
    };
    original.unwrap_or(local)
}

/// Reads the request head (bounded), answers `200` with `<node> <port>`.
fn answer(mut conn: TcpStream, node: &str) {
    let port = original_port(&conn);
    if conn.set_read_timeout(Some(Duration::from_secs(2))).is_err() {
        return;
    }
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => head.extend_from_slice(&buf[..k]),
        }
    }
    let body = format!("{node} {port}\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = conn.write_all(response.as_bytes()) {
        tracing::debug!(error = %e, "answering a probe");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_ruleset_redirects_the_node_port_range() {
        use super::super::IpFamily;
        for family in [IpFamily::V4, IpFamily::V6] {
            let rules = node_ruleset(Addrs(family));
            assert!(rules.contains("tcp dport 20000-29999 redirect to :9000"));
        }
        assert!(node_ruleset(Addrs(IpFamily::V6)).starts_with("table ip6 pscale"));
    }
}
