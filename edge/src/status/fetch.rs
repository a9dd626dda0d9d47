//! `portico-edge status`, `drain` and `undrain`'s client: `GET /status`,
//! `POST /drain`, `POST /undrain` on a running edge's admin API, over hyper.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::Status;
use crate::announce::Readiness;

/// How long the whole exchange may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why the status could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The admin API could not be reached or read.
    #[error("cannot reach the edge's admin API at {addr}: {detail}")]
    Unreachable {
        /// The admin address.
        addr: SocketAddr,
        /// Why.
        detail: String,
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
pub async fn fetch(addr: SocketAddr) -> Result<Status, StatusError> {
    let body = exchange(addr, hyper::Method::GET, "/status").await?;
    serde_json::from_slice(&body).map_err(|e| StatusError::BadAnswer {
        addr,
        detail: e.to_string(),
    })
}

/// POSTs `/drain` (or `/undrain`) to the admin API at `addr`: the edge's
/// readiness after it.
pub async fn set_drained(addr: SocketAddr, drained: bool) -> Result<Readiness, StatusError> {
    let path = if drained { "/drain" } else { "/undrain" };
    let body = exchange(addr, hyper::Method::POST, path).await?;
    serde_json::from_slice(&body).map_err(|e| StatusError::BadAnswer {
        addr,
        detail: e.to_string(),
    })
}

/// One request to the admin API: the body of a successful answer.
async fn exchange(
    addr: SocketAddr,
    method: hyper::Method,
    path: &str,
) -> Result<Bytes, StatusError> {
    let unreachable = |detail: String| StatusError::Unreachable { addr, detail };
    let bad = |detail: String| StatusError::BadAnswer { addr, detail };
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Empty::new())
        .map_err(|e| bad(e.to_string()))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            return Err(bad(format!("{status}: {}", text.trim())));
        }
        Ok(body)
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {TIMEOUT:?}")))?
}
