//! The lab's API server and the lab's way of talking to it.
//!
//! [`run_server`] is `portico-lab api-server`: `portico-kube-fake` (the real
//! list/watch/patch protocol over HTTP) on a given address, with a
//! kubeconfig for it written to the state directory, until SIGTERM. The lab
//! starts it in the edge namespace on the cluster-side address, where the
//! edge and the node agents reach it like a real API server.
//!
//! [`ApiClient`] is a small blocking JSON-over-HTTP client that connects from
//! inside a namespace: the lab creates the Nodes, Services and
//! EndpointSlices through it (POST, as `kubectl` would) and reads them back.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use portico_kube_fake::{FakeApiServer, Options};
use serde_json::Value;

use crate::netns::{in_netns, NetnsError};

/// The kubeconfig's file name in the state directory.
pub const KUBECONFIG: &str = "kubeconfig";
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A failure of the API server process.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The kubeconfig could not be written.
    #[error("cannot write the kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs the API server on `listen` until SIGTERM or SIGINT; writes
/// `<state_dir>/kubeconfig` (atomically) once it listens.
pub async fn run_server(listen: SocketAddr, state_dir: &Path) -> Result<(), ApiServerError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(ApiServerError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ApiServerError::Signals)?;
    let server = FakeApiServer::start_with(Options {
        addr: listen,
        // A bookmark every few seconds, as a busy real server would send.
        bookmark_interval: Duration::from_secs(5),
        ..Options::default()
    })
    .await
    .map_err(|source| ApiServerError::Bind {
        addr: listen,
        source,
    })?;
    let path = state_dir.join(KUBECONFIG);
    let tmp = state_dir.join(format!("{KUBECONFIG}.tmp"));
    server
        .write_kubeconfig(&tmp)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| ApiServerError::Kubeconfig {
            path: path.clone(),
            source,
        })?;
    tracing::info!(url = %server.url(), kubeconfig = %path.display(), "API server listening");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let store = server.shutdown().await;
    tracing::info!(revision = store.revision(), "API server stopped");
    Ok(())
}

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    /// The namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The connection or the exchange failed.
    #[error("{method} {path}: {source}")]
    Io {
        /// The method.
        method: String,
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The answer was not an HTTP response with a JSON body.
    #[error("{method} {path}: unreadable answer: {text:?}")]
    BadResponse {
        /// The method.
        method: String,
        /// The path.
        path: String,
        /// What came.
        text: String,
    },
    /// The server answered with an error status.
    #[error("{method} {path}: {code}: {body}")]
    Status {
        /// The method.
        method: String,
        /// The path.
        path: String,
        /// The HTTP status.
        code: u16,
        /// The `Status` object it sent.
        body: Value,
    },
}

/// Talks to the API server at `addr` from inside network namespace `ns`.
#[derive(Debug, Clone)]
pub struct ApiClient {
    ns: String,
    addr: SocketAddr,
}

impl ApiClient {
    /// A client for the server at `addr`, connecting from namespace `ns`.
    pub fn new(ns: &str, addr: SocketAddr) -> ApiClient {
        ApiClient {
            ns: ns.to_string(),
            addr,
        }
    }

    /// One request; the JSON body of a 2xx answer.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiClientError> {
        self.request_as(method, path, JSON, body)
    }

    /// One request with a body of type `content_type`; the JSON body of a
    /// 2xx answer.
    pub fn request_as(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiClientError> {
        let addr = self.addr;
        let (code, text) = in_netns(&self.ns, || {
            http_request(addr, method, path, content_type, body)
        })?
        .map_err(|source| ApiClientError::Io {
            method: method.to_string(),
            path: path.to_string(),
            source,
        })?;
        let value: Value =
            serde_json::from_str(&text).map_err(|_| ApiClientError::BadResponse {
                method: method.to_string(),
                path: path.to_string(),
                text: text.clone(),
            })?;
        if !(200..300).contains(&code) {
            return Err(ApiClientError::Status {
                method: method.to_string(),
                path: path.to_string(),
                code,
                body: value,
            });
        }
        Ok(value)
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Value, ApiClientError> {
        self.request("GET", path, None)
    }

    /// `POST path` with `object`: creates it.
    pub fn create(&self, path: &str, object: &Value) -> Result<Value, ApiClientError> {
        self.request("POST", path, Some(object))
    }

    /// `PATCH path` with a JSON merge patch (RFC 7386), as `kubectl patch
    /// --type merge` sends it.
    pub fn merge_patch(&self, path: &str, patch: &Value) -> Result<Value, ApiClientError> {
        self.request_as("PATCH", path, MERGE_PATCH, Some(patch))
    }

    /// Every Service, as the API server has them.
    pub fn services(&self) -> Result<Vec<Value>, ApiClientError> {
        let list = self.get("/api/v1/services")?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// The first ingress IP in a Service's status, if it has one.
    pub fn ingress_ip(service: &Value) -> Option<std::net::IpAddr> {
        Self::ingress_ips(service).into_iter().next()
    }

    /// Every ingress IP in a Service's status, in order.
    pub fn ingress_ips(service: &Value) -> Vec<std::net::IpAddr> {
        service["status"]["loadBalancer"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["ip"].as_str()?.parse().ok())
            .collect()
    }
}

/// The content type of plain JSON bodies.
const JSON: &str = "application/json";
/// The content type of a JSON merge patch.
const MERGE_PATCH: &str = "application/merge-patch+json";

/// One HTTP/1.1 exchange from the current namespace (`Connection: close`),
/// with a JSON body: status code and body.
pub fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, String)> {
    http_request(addr, method, path, JSON, body)
}

/// [`http_exchange`] with a body of type `content_type`.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    Ok((code, body.to_string()))
}
