//! `portico-edge status`'s client: `GET /status` from a running edge's
//! admin API, over hyper.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::Status;

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
    let unreachable = |detail: String| StatusError::Unreachable { addr, detail };
    let bad = |detail: String| StatusError::BadAnswer { addr, detail };
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: hyper::Uri = format!("http://{addr}/status")
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| bad(e.to_string()))?;
    let exchange = async {
        let response = client
            .get(uri)
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
        serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {TIMEOUT:?}")))?
}
