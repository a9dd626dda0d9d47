//! An in-process Kubernetes API server for tests.
//!
//! [`FakeApiServer`] listens on an ephemeral loopback port and speaks the
//! Kubernetes REST API over plain HTTP/1.1, so the real `kube` client (and
//! real binaries, through [`FakeApiServer::write_kubeconfig`]) talk to it
//! unchanged. It serves Services and Nodes (with `/status`), EndpointSlices,
//! both kinds of Events and Leases (see [`resource::RESOURCES`]), and is faithful
//! where client code depends on it: one global resourceVersion, list paging
//! and selectors, watch framing, bookmarks, `410 Expired` after compaction,
//! the four PATCH flavours, conflicts, validation of Service source ranges
//! and of `events.k8s.io/v1` Events, a Service's NodePorts unique and its
//! `loadBalancerClass` fixed while it stays a LoadBalancer, a field removed
//! by one manager owned by nobody (so a leader election's apply on a
//! released Lease does not conflict), Lease validation, the fields (and
//! the `status.loadBalancer`) of a type a Service leaves cleared, creates
//! refused in a namespace that does not exist (404) or is being deleted
//! (403), and the real `Status` error bodies (checked against exchanges in
//! `tests/fixtures/`). [`Options::drop_ip_mode`] makes it an API server
//! older than 1.29, which drops `status.loadBalancer.ingress[].ipMode`.
//!
//! Namespaces: `default`, `kube-system`, `kube-public` and
//! `kube-node-lease` always exist, and so does any namespace that holds an
//! object or has a Namespace object; a Namespace whose `status.phase` is
//! `Terminating` (set through the control API: a DELETE removes it at
//! once) refuses new objects.
//!
//! Tests also get control knobs a real cluster lacks: seeding and reading
//! objects directly, [`FakeApiServer::compact`], dropping every connection
//! ([`FakeApiServer::cut_connections`]), hanging requests
//! ([`FakeApiServer::set_unresponsive`]), the request log, condition waits
//! with deadlines, and a restart on the same address from the previous
//! server's [`Store`].
//!
//! Known differences from a real API server: a strategic merge patch is a
//! plain merge patch (lists are replaced, not merged by key); server-side
//! apply merges the applied fields and does not remove fields a manager
//! stopped applying; `managedFields` are approximate (lists are atomic);
//! DELETE ignores preconditions, grace periods and finalizers (a deleted
//! Namespace goes at once, its objects stay); the NodePort and class rules
//! and the namespace checks apply to client writes only (the control API
//! seeds whatever a test needs); only JSON
//! bodies are accepted (no protobuf, no YAML except for apply); no
//! discovery endpoints beyond `/version`.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub mod families;
mod http;
mod managed;
pub mod patch;
pub mod resource;
pub mod selector;
pub mod service;
pub mod status;
pub mod store;
pub mod validate;

pub use crate::http::RequestRecord;
pub use crate::resource::ResourceDef;
pub use crate::status::ApiError;
pub use crate::store::Store;

use crate::http::Shared;

/// How to start a [`FakeApiServer`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Bearer token every request must carry (`None`: no authentication).
    pub token: Option<String>,
    /// Interval between BOOKMARK events on watches that allow them (the real
    /// server sends one about every minute, and one when the watch times out).
    pub bookmark_interval: Duration,
    /// Address to bind; `127.0.0.1:0` by default. Give a previous server's
    /// [`FakeApiServer::addr`] to restart "the same" API server.
    pub addr: SocketAddr,
    /// Objects to start with. Like a restarted kube-apiserver, whose watch
    /// cache begins at the current revision, the store is compacted first.
    pub store: Option<Store>,
    /// How many changes the watch history keeps (default [`store::DEFAULT_HISTORY`]).
    pub history_limit: usize,
    /// Behave like an API server older than 1.29, which does not know
    /// `status.loadBalancer.ingress[].ipMode` and drops it from every
    /// Service written, without an error.
    pub drop_ip_mode: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            token: None,
            bookmark_interval: Duration::from_secs(60),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            store: None,
            history_limit: store::DEFAULT_HISTORY,
            drop_ip_mode: false,
        }
    }
}

/// A running fake API server. Dropping it stops it and closes every connection.
#[derive(Debug)]
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    accept: Option<JoinHandle<()>>,
}

impl FakeApiServer {
    /// Starts a server on `127.0.0.1:0` without authentication.
    ///
    /// # Panics
    /// If no loopback port can be bound.
    pub async fn start() -> FakeApiServer {
        match FakeApiServer::start_with(Options::default()).await {
            Ok(server) => server,
            Err(e) => panic!("binding a loopback port for the fake API server: {e}"),
        }
    }

    /// Starts a server with `opts`.
    pub async fn start_with(opts: Options) -> io::Result<FakeApiServer> {
        let listener = TcpListener::bind(opts.addr).await?;
        let addr = listener.local_addr()?;
        let mut store = opts.store.unwrap_or_default();
        store.compact();
        store.set_history_limit(opts.history_limit);
        store.set_drop_ip_mode(opts.drop_ip_mode);
        let revision = store.revision();
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            revision: watch::Sender::new(revision),
            token: opts.token,
            bookmark_interval: opts.bookmark_interval,
            requests: Mutex::new(Vec::new()),
            request_count: watch::Sender::new(0),
            unresponsive: watch::Sender::new(false),
            cut: watch::Sender::new(0),
        });
        let (stop, stop_rx) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(listener, shared.clone(), stop_rx));
        tracing::debug!(%addr, "fake API server listening");
        Ok(FakeApiServer {
            shared,
            addr,
            stop,
            accept: Some(accept),
        })
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A `kube::Config` for this server (namespace `default`, the token if any),
    /// for tests that want to adjust timeouts before building a client.
    pub fn config(&self) -> kube::Config {
        let uri = self
            .url()
            .parse()
            .unwrap_or_else(|e| panic!("server URL {} is not a URI: {e}", self.url()));
        let mut config = kube::Config::new(uri);
        config.default_namespace = "default".into();
        if let Some(token) = &self.shared.token {
            // `AuthInfo` keeps the token as a secret type; going through serde
            // avoids depending on that crate directly.
            match serde_json::from_value(json!({ "token": token })) {
                Ok(auth) => config.auth_info = auth,
                Err(e) => panic!("building kube AuthInfo: {e}"),
            }
        }
        config
    }

    /// A `kube::Client` for this server. Must be called inside a Tokio runtime.
    pub fn client(&self) -> kube::Client {
        match kube::Client::try_from(self.config()) {
            Ok(client) => client,
            Err(e) => panic!("building a kube client for {}: {e}", self.url()),
        }
    }

    /// Writes a kubeconfig pointing at this server (with the token, if any),
    /// for real binaries run with `KUBECONFIG`.
    pub fn write_kubeconfig(&self, path: &Path) -> io::Result<()> {
        let user = match &self.shared.token {
            Some(token) => json!({ "token": token }),
            None => json!({}),
        };
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kube-fake", "cluster": {"server": self.url()}}],
            "users": [{"name": "kube-fake", "user": user}],
            "contexts": [{"name": "kube-fake",
                "context": {"cluster": "kube-fake", "user": "kube-fake", "namespace": "default"}}],
            "current-context": "kube-fake",
        });
        let yaml = serde_yaml_ng::to_string(&config).map_err(io::Error::other)?;
        std::fs::write(path, yaml)
    }

    /// Creates an object (POST semantics, emits ADDED). `apiVersion` and `kind`
    /// pick the resource; a namespaced object without a namespace goes to
    /// `default`. Unlike POST, the given status and `managedFields` are kept.
    pub fn create(&self, obj: impl Serialize) -> Result<Value, ApiError> {
        let (res, obj) = typed(obj)?;
        self.shared.write(|s| s.create(res, obj, None))
    }

    /// Creates or replaces an object whole, status included, with no
    /// resourceVersion check (emits ADDED or MODIFIED; nothing if unchanged).
    pub fn apply(&self, obj: impl Serialize) -> Result<Value, ApiError> {
        let (res, obj) = typed(obj)?;
        self.shared.write(|s| s.upsert(res, obj))
    }

    /// Deletes an object of type `K` (emits DELETED); `None` if it did not exist.
    pub fn delete<K: k8s_openapi::Resource>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let res = resource::of::<K>()?;
        self.shared.write(|s| s.delete(res, namespace, name)).ok()
    }

    /// One object of type `K`.
    pub fn get<K: k8s_openapi::Resource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<K> {
        self.shared.lock().get_as(namespace, name)
    }

    /// Every object of type `K`, in key order.
    pub fn list<K: k8s_openapi::Resource + DeserializeOwned>(&self) -> Vec<K> {
        self.shared.lock().list_as()
    }

    /// Reads the store (for untyped access or several reads at one revision).
    pub fn read<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&self.shared.lock())
    }

    /// Changes the store directly; watches see the changes like any others.
    pub fn write<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        self.shared.write(f)
    }

    /// Forgets the watch history: a watch from any older resourceVersion now
    /// gets the `410 Expired` ERROR event (open watches continue).
    pub fn compact(&self) {
        self.shared.write(Store::compact);
    }

    /// Drops every open connection, watches included, without a response end.
    pub fn cut_connections(&self) {
        self.shared.cut.send_modify(|n| *n += 1);
    }

    /// While `true`, requests are accepted and read but not answered (they
    /// are answered once it is set back to `false`).
    pub fn set_unresponsive(&self, hang: bool) {
        self.shared.unresponsive.send_replace(hang);
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `what` holds for the store, re-checking after every write;
    /// `false` if it still does not hold at the deadline.
    pub async fn wait_for(&self, what: impl Fn(&Store) -> bool, timeout: Duration) -> bool {
        let mut changes = self.shared.revision.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            if what(&self.shared.lock()) {
                return true;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return what(&self.shared.lock()),
            }
        }
    }

    /// Waits until `what` holds for the request log; `false` at the deadline.
    pub async fn wait_for_requests(
        &self,
        what: impl Fn(&[RequestRecord]) -> bool,
        timeout: Duration,
    ) -> bool {
        let mut count = self.shared.request_count.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            if what(&self.requests()) {
                return true;
            }
            match tokio::time::timeout_at(deadline, count.changed()).await {
                Ok(Ok(())) => {}
                _ => return what(&self.requests()),
            }
        }
    }

    /// Stops the server, closes every connection and frees the port; returns
    /// the store, to restart a server from it (see [`Options::store`]).
    pub async fn shutdown(mut self) -> Store {
        self.stop.send_replace(true);
        self.cut_connections();
        if let Some(accept) = self.accept.take() {
            if let Err(e) = accept.await {
                tracing::warn!(error = %e, "fake API server accept loop failed");
            }
        }
        self.shared.lock().clone()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        self.shared.cut.send_modify(|n| *n += 1);
    }
}

/// Finds the resource of an object by its `apiVersion` and `kind`.
fn typed(obj: impl Serialize) -> Result<(&'static ResourceDef, Value), ApiError> {
    let obj = serde_json::to_value(obj).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let res = resource::by_kind(api_version, kind).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "no resource for apiVersion {api_version:?}, kind {kind:?}"
        ))
    })?;
    Ok((res, obj))
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "set_nodelay");
                    }
                    tokio::spawn(serve_connection(stream, shared.clone()));
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            },
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let mut cut = shared.cut.subscribe();
    let service = hyper::service::service_fn(move |req| http::handle(shared.clone(), req));
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        served = conn => {
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        // Dropping the connection closes the socket mid-whatever.
        _ = cut.changed() => {}
    }
}
