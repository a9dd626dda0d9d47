//! `portico-edge status`: fetches `/status` from a running edge and prints
//! Services x nodes x health as a table.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::edge::Status;

/// Why the status could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The admin API could not be reached or read.
    #[error("cannot reach the edge's admin API at {addr}: {source}")]
    Io {
        /// The admin address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The answer was not a status document.
    #[error("unexpected answer from {addr}: {detail}")]
    BadAnswer {
        /// The admin address.
        addr: SocketAddr,
        /// What was wrong.
        detail: String,
    },
}

/// GETs `/status` from the admin API at `addr`.
pub fn fetch(addr: SocketAddr) -> Result<Status, StatusError> {
    let io = |source| StatusError::Io { addr, source };
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    write!(
        s,
        "GET /status HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| StatusError::BadAnswer {
            addr,
            detail: "no HTTP header".into(),
        })?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(StatusError::BadAnswer {
            addr,
            detail: head.lines().next().unwrap_or_default().to_string(),
        });
    }
    serde_json::from_str(body).map_err(|e| StatusError::BadAnswer {
        addr,
        detail: e.to_string(),
    })
}

/// Renders the status as an aligned text table, one row per listener x node.
pub fn render(status: &Status) -> String {
    let mut rows: Vec<[String; 8]> = vec![[
        "SERVICE".into(),
        "PORT".into(),
        "LISTENER".into(),
        "NODE".into(),
        "BACKEND".into(),
        "HEALTH".into(),
        "WEIGHT".into(),
        "ACTIVE".into(),
    ]];
    for l in &status.listeners {
        let mut notes = Vec::new();
        if !l.open {
            notes.push(format!("NOT OPEN: {}", l.error.as_deref().unwrap_or("?")));
        }
        if let Some(p) = &l.problem {
            notes.push(p.clone());
        }
        if l.access.starts_with("closed") {
            notes.push(l.access.clone());
        }
        if l.all_down && !l.backends.is_empty() {
            notes.push("all nodes down".into());
        }
        if l.backends.is_empty() || !notes.is_empty() {
            rows.push([
                l.service.clone(),
                l.port.clone(),
                l.listener.clone(),
                "-".into(),
                "-".into(),
                notes.join("; "),
                "-".into(),
                "-".into(),
            ]);
        }
        for b in &l.backends {
            let health = match (b.probed, b.healthy) {
                (false, _) => "pending".to_string(),
                (true, true) => "up".to_string(),
                (true, false) => format!("DOWN ({})", b.last_error.as_deref().unwrap_or("failing")),
            };
            rows.push([
                l.service.clone(),
                l.port.clone(),
                l.listener.clone(),
                b.node.clone(),
                b.addr.clone(),
                health,
                b.weight.to_string(),
                b.active.to_string(),
            ]);
        }
    }
    let mut widths = [0usize; 8];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = format!("generation {}\n", status.generation);
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::{BackendStatus, ListenerStatus};

    #[test]
    fn renders_one_row_per_listener_and_node_with_problems_visible() {
        let backend = |node: &str, healthy: bool| BackendStatus {
            node: node.into(),
            addr: "10.0.0.1:30080".into(),
            check: "node-proxy:10.0.0.1:10256".into(),
            healthy,
            probed: true,
            weight: 1,
            active: 3,
            last_error: (!healthy).then(|| "connection refused".into()),
        };
        let status = Status {
            generation: 7,
            listeners: vec![
                ListenerStatus {
                    listener: "tcp/192.0.2.1:80".into(),
                    service: "default/web".into(),
                    port: "http".into(),
                    open: true,
                    error: None,
                    access: "any".into(),
                    problem: None,
                    all_down: false,
                    backends: vec![backend("a", true), backend("b", false)],
                },
                ListenerStatus {
                    listener: "tcp/192.0.2.2:80".into(),
                    service: "default/closed".into(),
                    port: "80".into(),
                    open: true,
                    error: None,
                    access: "closed: invalid loadBalancerSourceRanges: x".into(),
                    problem: None,
                    all_down: false,
                    backends: vec![],
                },
            ],
        };
        let text = render(&status);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "generation 7");
        assert!(lines[1].starts_with("SERVICE"));
        assert_eq!(lines.len(), 5, "{text}");
        assert!(
            lines[2].contains("default/web") && lines[2].contains(" a ") && lines[2].contains("up")
        );
        assert!(lines[3].contains("DOWN (connection refused)"), "{text}");
        assert!(lines[4].contains("closed: invalid"), "{text}");
    }
}
