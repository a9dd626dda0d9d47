//! The cloud-provider hook API: an HTTP/JSON API that maps one to one onto
//! the Kubernetes cloud-provider `LoadBalancer` interface
//! (`k8s.io/cloud-provider`, `cloud.go`), so a cloud-controller-manager's
//! provider (or a script with curl) drives the edge without the edge
//! watching the cluster.
//!
//! | cloud-provider method | route | answer |
//! |---|---|---|
//! | `EnsureLoadBalancer(cluster, service, nodes)` | `PUT /v1/clusters/{cluster}/loadbalancers/{namespace}/{name}` body `{"service": v1.Service, "nodes": [v1.Node]}` | 200 `v1.LoadBalancerStatus` |
//! | `UpdateLoadBalancer(cluster, service, nodes)` | `PUT /v1/clusters/{cluster}/loadbalancers/{namespace}/{name}/nodes` same body | 204; 404 when the load balancer does not exist |
//! | `GetLoadBalancer(cluster, service)` + `GetLoadBalancerName` | `GET /v1/clusters/{cluster}/loadbalancers/{namespace}/{name}` | 200 `{"name", "status"}`; 404 = `exists: false` |
//! | `EnsureLoadBalancerDeleted(cluster, service)` | `DELETE /v1/clusters/{cluster}/loadbalancers/{namespace}/{name}` | 204, also when it did not exist |
//! | (for operators) | `GET /v1/clusters/{cluster}/loadbalancers` | 200 `{"cluster", "items": [{"namespace", "service", "name", "status"}]}` |
//!
//! Every route needs `Authorization: Bearer <token>` (the content of
//! `settings.hookApi.tokenFile`); without it, or with another token, the
//! answer is 401 with `WWW-Authenticate: Bearer`. Nothing else listens on
//! `settings.hookApi.listen`.
//!
//! - **Meaning**: the `v1.Service` and `v1.Node` objects are read by
//!   [`crate::cluster::translate`], exactly as the watch source reads them
//!   (the `portico.io/...` annotations included). The class check does not
//!   apply: the controller-manager has already decided the Service is its.
//! - **Idempotent**: the same Ensure again returns the same status and
//!   changes nothing. Addresses are assigned over every hook load balancer
//!   at once, each keeping what it holds, so an address only moves when its
//!   Service asks for another one.
//! - **Nodes**: the edge serves one cluster; the node list of the latest
//!   Ensure or Update is the cluster's (the service controller sends the
//!   same list to every load balancer). A call naming another cluster than
//!   the one held gets 409 until the last load balancer is deleted.
//! - **Errors** are `{"error": "...", "field": "..."}`, `field` a JSON path
//!   into the request (`cluster`, `namespace`, `name` for the path
//!   segments): 400 malformed body or a Service that is not the path's;
//!   404 no such load balancer; 409 another cluster, pool exhausted, wanted
//!   address taken, a name or listener the config file's Services hold, or
//!   more listeners and probes than the edge's descriptor budget has left
//!   ([`crate::budget`]); 422 a path segment or Service field the API
//!   server would refuse (namespace a DNS label, name a DNS-1035 label,
//!   annotations at most 256 KiB), unknown pool, wanted address in no pool,
//!   no readable wanted address; 500 the state could not be saved (nothing
//!   changed). On any error the load balancer is not created, nothing is
//!   persisted, and an existing one keeps its address. Answers and log
//!   lines never carry more than a bounded, escaped piece of what the
//!   caller sent.
//! - **Warnings** (a bad annotation: its default is used; a Node without an
//!   address: left out) do not fail the call: they come back as
//!   `Warning: 299 - "..."` headers, as from the Kubernetes API server, and
//!   are logged.
//! - **Persistence**: the state is written (atomically) to
//!   `settings.hookApi.stateFile` before a changing call is answered, and
//!   loaded at start, so the load balancers come back after a restart with
//!   no call; see [`store`] for a corrupt file.
//!
//! - **Limits**: a body over 128 MiB is refused with 413 (a list of 5,000
//!   full Nodes is about 58 MiB, 87 MiB indented), a call that takes over
//!   60 s with 408; a connection whose request header does not arrive
//!   within 10 s (or that sits idle that long) is closed; 64 connections
//!   and 4 calls at once, more wait; one client address holds at most 8
//!   connections, more are closed at once. Bodies are read only after the
//!   token is checked and only by the 4 calls in flight, so they hold at
//!   most 4 x 128 MiB. See [`Limits`].
//!
//! [`state`] is the pure part, [`store`] the file, `routes` the handlers,
//! `auth` the token check, and [`server`] the listener, the layers around
//! the routes and the [`HookSource`] the edge reads.

mod admission;
mod auth;
mod routes;
pub mod server;
pub mod state;
pub mod store;

pub use admission::{Admission, AdmitAll, NotAdmitted};
pub use auth::read_token;
pub use routes::{Operation, Route, ROUTES};
pub use server::{HookError, HookSource, Limits};
pub use state::{HookModel, HookState};
