//! The pods' server and the lab's client.
//!
//! The server (`portico-lab pod-server`, one process per pod namespace)
//! answers every TCP connection with one HTTP/1.1 response whose body is one
//! line, `pod=<name> node=<node> peer=<address it saw>`, plus
//! ` proxied-client=<address>` when the connection began with a PROXY
//! protocol header (v1 or v2), then closes. `curl` can read it, and so can
//! [`get`], the client the lab and its tests use ([`get_async`] is the same
//! for the load generator of [`crate::load`]).
//!
//! A request whose first line is `ECHO` (see [`ECHO_REQUEST`]) opens a
//! long-lived session instead: the server sends the same line (ending in
//! `\n`, no HTTP head), then echoes every byte back until the client closes.
//! The load generator keeps such sessions open to check that established
//! connections survive what a scenario does.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// How long the server waits for a request, and the client for anything.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// The most the server reads before answering.
const MAX_REQUEST: usize = 8192;
/// What a client sends to open an echo session.
pub const ECHO_REQUEST: &[u8] = b"ECHO\r\n\r\n";
/// The PROXY protocol v2 signature.
const PROXY_V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A pod server failure.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The listening address could not be bound.
    #[error("pod {pod}: cannot listen on {addr}: {source}")]
    Bind {
        /// The pod.
        pod: String,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The signal handlers could not be installed.
    #[error("pod {pod}: cannot install signal handlers: {source}")]
    Signals {
        /// The pod.
        pod: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What a pod answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The pod's name.
    pub pod: String,
    /// Its node's name.
    pub node: String,
    /// The source address of the connection as the pod saw it.
    pub peer: IpAddr,
    /// The client address from a PROXY protocol header, if one came.
    pub proxied_client: Option<IpAddr>,
}

impl Answer {
    /// The body line the server sends.
    pub fn to_line(&self) -> String {
        let mut line = format!("pod={} node={} peer={}", self.pod, self.node, self.peer);
        if let Some(client) = self.proxied_client {
            line.push_str(&format!(" proxied-client={client}"));
        }
        line
    }

    /// Parses [`Answer::to_line`]'s output.
    pub fn parse(line: &str) -> Option<Answer> {
        let mut pod = None;
        let mut node = None;
        let mut peer = None;
        let mut proxied_client = None;
        for field in line.split_whitespace() {
            match field.split_once('=')? {
                ("pod", v) => pod = Some(v.to_string()),
                ("node", v) => node = Some(v.to_string()),
                ("peer", v) => peer = Some(v.parse().ok()?),
                ("proxied-client", v) => proxied_client = Some(v.parse().ok()?),
                _ => return None,
            }
        }
        Some(Answer {
            pod: pod?,
            node: node?,
            peer: peer?,
            proxied_client,
        })
    }
}

/// Serves on `listen` until SIGTERM or SIGINT.
pub async fn serve(pod: &str, node: &str, listen: SocketAddr) -> Result<(), PodError> {
    use tokio::signal::unix::{signal, SignalKind};
    let signals_err = |source| PodError::Signals {
        pod: pod.to_string(),
        source,
    };
    let mut term = signal(SignalKind::terminate()).map_err(signals_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(signals_err)?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| PodError::Bind {
            pod: pod.to_string(),
            addr: listen,
            source,
        })?;
    tracing::info!(pod, node, %listen, "serving");
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let (pod, node) = (pod.to_string(), node.to_string());
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, peer, &pod, &node).await {
                            tracing::debug!(%peer, error = %e, "connection failed");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!(pod, "stopped");
    Ok(())
}

async fn answer(
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    pod: &str,
    node: &str,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let read = tokio::time::timeout(TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        while buf.len() < MAX_REQUEST {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let (_, Some(rest)) = split_proxy_header(&buf) {
                if request_complete(rest) {
                    break;
                }
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    // A client that sends nothing within the timeout still gets its answer.
    if let Ok(Err(e)) = read {
        return Err(e);
    }
    let (proxied_client, rest) = split_proxy_header(&buf);
    let proxied_client = proxied_client.map(|c| c.ip());
    let echo = rest.is_some_and(|r| r.starts_with(b"ECHO\r\n"));
    let body = Answer {
        pod: pod.to_string(),
        node: node.to_string(),
        peer: peer.ip().to_canonical(),
        proxied_client,
    }
    .to_line()
        + "\n";
    if echo {
        stream.write_all(body.as_bytes()).await?;
        let (mut rd, mut wr) = stream.split();
        tokio::io::copy(&mut rd, &mut wr).await?;
        return wr.shutdown().await;
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Whether an HTTP request head has ended (or the bytes are not HTTP).
fn request_complete(bytes: &[u8]) -> bool {
    bytes.windows(4).any(|w| w == b"\r\n\r\n") || bytes.windows(2).any(|w| w == b"\n\n")
}

/// Splits a leading PROXY header (v1 or v2) off: the client address and
/// port it names, and the bytes after it (`None` while the header is
/// incomplete; all of `bytes` when they do not start with one). Also the
/// stand-in node's reader ([`crate::standin`]).
pub(crate) fn split_proxy_header(bytes: &[u8]) -> (Option<SocketAddr>, Option<&[u8]>) {
    const V1: &[u8] = b"PROXY ";
    if bytes.is_empty() || (bytes.len() < V1.len() && V1.starts_with(bytes)) {
        return (None, None);
    }
    if bytes.starts_with(V1) {
        let Some(end) = bytes.windows(2).position(|w| w == b"\r\n") else {
            return (None, None);
        };
        let line = String::from_utf8_lossy(&bytes[..end]);
        // PROXY TCP4 <src> <dst> <sport> <dport>
        let fields: Vec<&str> = line.split(' ').collect();
        let client = fields
            .get(2)
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .zip(fields.get(4).and_then(|port| port.parse::<u16>().ok()))
            .map(|(ip, port)| SocketAddr::new(ip, port));
        return (client, Some(&bytes[end + 2..]));
    }
    if bytes.len() < PROXY_V2_SIG.len() || !bytes.starts_with(PROXY_V2_SIG) {
        // Too short to tell, or not a v2 header.
        return if PROXY_V2_SIG.starts_with(bytes) && !bytes.is_empty() {
            (None, None)
        } else {
            (None, Some(bytes))
        };
    }
    if bytes.len() < 16 {
        return (None, None);
    }
    let len = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    let Some(addresses) = bytes.get(16..16 + len) else {
        return (None, None);
    };
    // Source address, destination address, source port, destination port.
    let port = |at: usize| u16::from_be_bytes([addresses[at], addresses[at + 1]]);
    let client = match bytes[13] >> 4 {
        1 if len >= 12 => Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(
                addresses[0],
                addresses[1],
                addresses[2],
                addresses[3],
            )),
            port(8),
        )),
        2 if len >= 36 => <[u8; 16]>::try_from(&addresses[..16])
            .ok()
            .map(|a| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port(32))),
        _ => None,
    };
    (client, Some(&bytes[16 + len..]))
}

/// A client failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection was refused.
    #[error("{addr}: connection refused")]
    Refused {
        /// The address.
        addr: SocketAddr,
    },
    /// The connection was accepted, then closed (or reset) without an answer.
    #[error("{addr}: closed without an answer")]
    Closed {
        /// The address.
        addr: SocketAddr,
    },
    /// Nothing within the timeout.
    #[error("{addr}: timed out")]
    TimedOut {
        /// The address.
        addr: SocketAddr,
    },
    /// Another IO error.
    #[error("{addr}: {source}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Something that is not a pod's answer.
    #[error("{addr}: not a pod's answer: {text:?}")]
    BadAnswer {
        /// The address.
        addr: SocketAddr,
        /// What came.
        text: String,
    },
}

impl ClientError {
    /// Sorts an IO error of a connection to `addr`.
    pub fn from_io(addr: SocketAddr, e: std::io::Error) -> ClientError {
        match e.kind() {
            ErrorKind::ConnectionRefused => ClientError::Refused { addr },
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
                ClientError::Closed { addr }
            }
            ErrorKind::TimedOut | ErrorKind::WouldBlock => ClientError::TimedOut { addr },
            _ => ClientError::Io { addr, source: e },
        }
    }
}

/// One new connection to `addr` from the current namespace: sends a GET,
/// returns the pod's answer. Each step is bounded by [`TIMEOUT`].
pub fn get(addr: SocketAddr) -> Result<Answer, ClientError> {
    let io = |e| ClientError::from_io(addr, e);
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(io)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.write_all(request(addr).as_bytes()).map_err(io)?;
    let mut text = Vec::new();
    stream.read_to_end(&mut text).map_err(io)?;
    parse_response(addr, &text)
}

/// The request [`get`] and [`get_async`] send.
fn request(addr: SocketAddr) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: portico-lab\r\nConnection: close\r\n\r\n"
    )
}

/// The pod's answer in a whole HTTP response read from `addr`.
fn parse_response(addr: SocketAddr, response: &[u8]) -> Result<Answer, ClientError> {
    if response.is_empty() {
        return Err(ClientError::Closed { addr });
    }
    let text = String::from_utf8_lossy(response).into_owned();
    text.split_once("\r\n\r\n")
        .filter(|(head, _)| head.starts_with("HTTP/1.1 200 "))
        .and_then(|(_, body)| Answer::parse(body.trim()))
        .ok_or(ClientError::BadAnswer { addr, text })
}

/// [`get`] for async code: one new connection to `addr` from the current
/// namespace (the calling thread's: use a current-thread runtime on a
/// thread that entered it), bounded by `timeout` as a whole.
pub async fn get_async(addr: SocketAddr, timeout: Duration) -> Result<Answer, ClientError> {
    let io = |e| ClientError::from_io(addr, e);
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
        stream
            .write_all(request(addr).as_bytes())
            .await
            .map_err(io)?;
        let mut text = Vec::new();
        stream.read_to_end(&mut text).await.map_err(io)?;
        Ok(text)
    };
    let text = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ClientError::TimedOut { addr })??;
    parse_response(addr, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip() {
        let a = Answer {
            pod: "web-1".into(),
            node: "node-1".into(),
            peer: "10.88.0.11".parse().unwrap(),
            proxied_client: Some("198.51.100.10".parse().unwrap()),
        };
        assert_eq!(Answer::parse(&a.to_line()), Some(a.clone()));
        let plain = Answer {
            proxied_client: None,
            ..a
        };
        assert_eq!(plain.to_line(), "pod=web-1 node=node-1 peer=10.88.0.11");
        assert_eq!(Answer::parse(&plain.to_line()), Some(plain));
        assert_eq!(Answer::parse("hello"), None);
    }

    #[test]
    fn proxy_headers_are_read() {
        let v1 = b"PROXY TCP4 198.51.100.10 10.88.0.11 40000 30081\r\nGET / HTTP/1.1\r\n\r\n";
        let (client, rest) = split_proxy_header(v1);
        assert_eq!(client, Some("198.51.100.10:40000".parse().unwrap()));
        assert!(request_complete(rest.unwrap()));
        assert_eq!(split_proxy_header(b"PROXY TCP4 1.2").1, None);

        let mut v2 = PROXY_V2_SIG.to_vec();
        v2.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 10, 10, 88, 0, 11, 0x9c, 0x40, 0x75, 0x81,
        ]);
        v2.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let (client, rest) = split_proxy_header(&v2);
        assert_eq!(client, Some("198.51.100.10:40000".parse().unwrap()));
        assert_eq!(rest.unwrap(), b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(split_proxy_header(&v2[..14]).1, None);

        let plain = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(split_proxy_header(plain), (None, Some(&plain[..])));
        // Too short to tell.
        assert_eq!(split_proxy_header(b""), (None, None));
        assert_eq!(split_proxy_header(b"PROX"), (None, None));
        let v6 = b"PROXY TCP6 2001:db8::1 ::1 40000 80\r\nhi";
        assert_eq!(
            split_proxy_header(v6),
            (
                Some("[2001:db8::1]:40000".parse().unwrap()),
                Some(&b"hi"[..])
            )
        );
        assert!(!request_complete(b"GET / HTTP/1.1\r\n"));
    }
}
