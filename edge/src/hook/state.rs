//! The pure half of the hook API: the load balancers given through it, what
//! each call does to them, what they contribute to the edge, and the
//! persisted file's format.
//!
//! No IO. Every call takes the current [`HookState`] and returns a new one
//! (or an error, leaving the old one untouched), so the server can write the
//! new state to disk first and only then make it current: a failed write
//! changes nothing.
//!
//! What a `v1.Service` or `v1.Node` means is decided by
//! [`crate::cluster::translate`], the same code the Kubernetes watch source
//! uses, so the two sources can never read one object differently. The
//! objects are kept as given (minus what cannot change their meaning:
//! `managedFields`, `resourceVersion`, `status`, and everything of a Node
//! but its name, labels, deletion mark, taints and addresses), and are
//! translated again when the state is loaded: an edge upgrade re-reads old
//! objects with its own rules.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portico_config::kube::quoted;
use portico_config::names::DEFAULT_NAMESPACE;
use portico_config::{AddressPool, IpFamily, Node, Service, ServiceKey};
use serde::{Deserialize, Serialize};

use crate::cluster::translate::{
    translate_node, translate_service, FieldProblem, ADDRESS_POOL, LOAD_BALANCER_IPS,
};
use crate::ipam::{self, IpamError};

/// The version of the persisted file's format this edge writes and reads.
pub const STATE_VERSION: u32 = 1;

/// `ipMode` of every ingress the hook reports: the edge proxies, so
/// kube-proxy must not short-cut the address inside the cluster.
pub const IP_MODE: &str = "Proxy";

/// Why a call was refused. The state is unchanged whenever one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The edge already serves load balancers of another cluster.
    #[error(
        "this edge serves cluster {}; the call names cluster {} (one edge serves one cluster)",
        quoted(held),
        quoted(asked)
    )]
    ClusterMismatch {
        /// The cluster the edge holds load balancers for.
        held: String,
        /// The cluster the call named.
        asked: String,
    },
    /// The Service in the body is not the one the path names.
    #[error(
        "Service {key}: the body's {field} is {}, but the path names {}",
        quoted(found),
        quoted(expected)
    )]
    KeyMismatch {
        /// The Service the path names.
        key: ServiceKey,
        /// The body's field (`service.metadata.namespace` or `.name`).
        field: &'static str,
        /// What the body says.
        found: String,
        /// What the path says.
        expected: String,
    },
    /// The Service is not one the API server would accept; the shared
    /// reader says which field.
    #[error("{problem}")]
    Invalid {
        /// The refusal, naming the field.
        problem: FieldProblem,
    },
    /// No load balancer exists for the Service.
    #[error("there is no load balancer for Service {key}")]
    NotFound {
        /// The Service.
        key: ServiceKey,
    },
    /// The IPAM could not give the Service its addresses.
    #[error("Service {key}: {problem}; the load balancer is left as it was")]
    Address {
        /// The Service.
        key: ServiceKey,
        /// What the IPAM said.
        problem: Box<IpamError>,
        /// The field that asked for what could not be given, if one did.
        field: Option<String>,
    },
    /// The Service's own fields leave no address to assign (an unreadable
    /// wanted address, say).
    #[error("{problem}; the load balancer is left as it was")]
    NoAddress {
        /// The field at fault.
        problem: FieldProblem,
    },
}

impl RequestError {
    /// The request field the error is about, as a JSON path into the
    /// request (`cluster` is the path segment).
    pub fn field(&self) -> Option<String> {
        match self {
            RequestError::ClusterMismatch { .. } => Some("cluster".into()),
            RequestError::KeyMismatch { field, .. } => Some((*field).to_string()),
            RequestError::Invalid { problem } => Some(format!("service.{}", problem.field)),
            RequestError::NotFound { .. } => None,
            RequestError::Address { field, .. } => field.clone(),
            RequestError::NoAddress { problem } => Some(format!("service.{}", problem.field)),
        }
    }
}

/// One load balancer given through the hook.
#[derive(Debug, Clone, PartialEq)]
pub struct Balancer {
    /// The Service of the last EnsureLoadBalancer, trimmed.
    pub service: core::Service,
    /// The addresses assigned to it, in the Service's family order.
    pub addresses: Vec<IpAddr>,
}

impl Balancer {
    /// Its `GetLoadBalancerName`.
    pub fn name(&self) -> String {
        load_balancer_name(&self.service)
    }

    /// Its `v1.LoadBalancerStatus`.
    pub fn status(&self) -> core::LoadBalancerStatus {
        load_balancer_status(&self.addresses)
    }
}

/// What the hook contributes to the edge: its Services (with their
/// addresses) and the cluster's Nodes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HookModel {
    /// One per load balancer.
    pub services: Vec<Service>,
    /// The Nodes of the latest Ensure or Update that have an address.
    pub nodes: Vec<Node>,
}

/// Everything given through the hook: the cluster, its Nodes, and the load
/// balancers by Service.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HookState {
    /// The cluster the load balancers belong to; `None` while there are none.
    cluster: Option<String>,
    /// The latest node list (trimmed, sorted by name, one per name).
    nodes: Vec<core::Node>,
    /// The load balancers.
    balancers: BTreeMap<ServiceKey, Balancer>,
}

/// The outcome of an accepted call that may change the state.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The state after the call.
    pub state: HookState,
    /// Whether it differs from the state before (nothing to save if not).
    pub changed: bool,
    /// Problems in the objects given, each already acted on (a default
    /// used, a node left out).
    pub warnings: Vec<String>,
}

impl HookState {
    /// The cluster held, if any.
    pub fn cluster(&self) -> Option<&str> {
        self.cluster.as_deref()
    }

    /// The load balancers, by Service.
    pub fn balancers(&self) -> &BTreeMap<ServiceKey, Balancer> {
        &self.balancers
    }

    /// The nodes held (trimmed).
    pub fn nodes(&self) -> &[core::Node] {
        &self.nodes
    }

    /// Refuses a call naming another cluster than the one held.
    pub fn check_cluster(&self, asked: &str) -> Result<(), RequestError> {
        match &self.cluster {
            Some(held) if held != asked => Err(RequestError::ClusterMismatch {
                held: held.clone(),
                asked: asked.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// `GetLoadBalancer`: the load balancer of `key`, if it exists.
    pub fn get(&self, cluster: &str, key: &ServiceKey) -> Result<Option<&Balancer>, RequestError> {
        self.check_cluster(cluster)?;
        Ok(self.balancers.get(key))
    }

    /// `EnsureLoadBalancer`: creates or updates the load balancer of `key`
    /// from `service`, and makes `nodes` the cluster's node list.
    ///
    /// Addresses are assigned over every hook load balancer at once; each
    /// one's assigned addresses are its current ones (for a load balancer
    /// not held yet: the addresses its `status` shows, so one that was lost
    /// with a corrupt state file gets its address back), so an address
    /// never moves unless the Service asks for another one. When the
    /// Service's addresses cannot be given, nothing changes.
    pub fn ensure(
        &self,
        cluster: &str,
        key: &ServiceKey,
        service: core::Service,
        nodes: Vec<core::Node>,
        pools: &[AddressPool],
    ) -> Result<Outcome, RequestError> {
        self.check_cluster(cluster)?;
        check_key(key, &service)?;
        let translated =
            translate_service(&service).map_err(|problem| RequestError::Invalid { problem })?;
        let mut warnings: Vec<String> = translated.problems.iter().map(|p| p.to_string()).collect();
        let (nodes, node_warnings) = trim_nodes(nodes);
        warnings.extend(node_warnings);

        let mut request = translated.request.clone();
        if let Some(held) = self.balancers.get(key) {
            request.current = held.addresses.clone();
        }
        let mut requests = vec![request];
        for (other, b) in &self.balancers {
            if other == key {
                continue;
            }
            // The others only hold what they have: asking for exactly their
            // addresses means they never take a new one here.
            let Ok(t) = translate_service(&b.service) else {
                continue;
            };
            let mut r = t.request;
            r.owner = other.to_string();
            r.families = b.addresses.iter().map(|a| IpFamily::of(*a)).collect();
            r.wanted = b.addresses.clone();
            r.current = b.addresses.clone();
            r.pool = None;
            requests.push(r);
        }
        let assignment = ipam::assign(pools, &requests)
            .remove(&key.to_string())
            .unwrap_or_default();
        if let Some(problem) = assignment.problems.first() {
            return Err(RequestError::Address {
                key: key.clone(),
                field: ipam_field(&service, problem),
                problem: Box::new(problem.clone()),
            });
        }
        if assignment.addresses.is_empty() {
            let problem = translated
                .problems
                .iter()
                .find(|p| p.field.contains(LOAD_BALANCER_IPS) || p.field == "spec.loadBalancerIP")
                .cloned()
                .unwrap_or_else(|| FieldProblem {
                    object: format!("Service {key}"),
                    field: "spec.ipFamilies".into(),
                    message: "no address family to assign an address of".into(),
                });
            return Err(RequestError::NoAddress { problem });
        }

        let mut state = self.clone();
        state.cluster = Some(cluster.to_string());
        state.nodes = nodes;
        state.balancers.insert(
            key.clone(),
            Balancer {
                service: trim_service(service),
                addresses: assignment.addresses,
            },
        );
        Ok(self.outcome(state, warnings))
    }

    /// `UpdateLoadBalancer`: makes `nodes` the cluster's node list. The load
    /// balancer of `key` must exist; its Service is not changed (that is
    /// what EnsureLoadBalancer is for).
    pub fn update(
        &self,
        cluster: &str,
        key: &ServiceKey,
        service: &core::Service,
        nodes: Vec<core::Node>,
    ) -> Result<Outcome, RequestError> {
        self.check_cluster(cluster)?;
        check_key(key, service)?;
        if !self.balancers.contains_key(key) {
            return Err(RequestError::NotFound { key: key.clone() });
        }
        let (nodes, warnings) = trim_nodes(nodes);
        let mut state = self.clone();
        state.nodes = nodes;
        Ok(self.outcome(state, warnings))
    }

    /// `EnsureLoadBalancerDeleted`: removes the load balancer of `key`, if
    /// it exists. With the last one gone, the cluster and its nodes are
    /// forgotten too.
    pub fn delete(&self, cluster: &str, key: &ServiceKey) -> Result<Outcome, RequestError> {
        self.check_cluster(cluster)?;
        let mut state = self.clone();
        state.balancers.remove(key);
        if state.balancers.is_empty() {
            state = HookState::default();
        }
        Ok(self.outcome(state, Vec::new()))
    }

    /// The state without the load balancers of `keys` (those the edge
    /// would not serve); with none left, the empty state.
    pub fn without<'a>(&self, keys: impl IntoIterator<Item = &'a ServiceKey>) -> HookState {
        let mut state = self.clone();
        for key in keys {
            state.balancers.remove(key);
        }
        if state.balancers.is_empty() {
            state = HookState::default();
        }
        state
    }

    fn outcome(&self, state: HookState, warnings: Vec<String>) -> Outcome {
        Outcome {
            changed: state != *self,
            state,
            warnings,
        }
    }

    /// What the hook contributes to the edge.
    pub fn model(&self) -> HookModel {
        let services = self
            .balancers
            .values()
            .filter_map(|b| {
                let mut t = translate_service(&b.service).ok()?;
                t.service.vips = b.addresses.clone();
                Some(t.service)
            })
            .collect();
        let nodes = self
            .nodes
            .iter()
            .filter_map(|n| translate_node(n).ok().map(|read| read.value))
            .collect();
        HookModel { services, nodes }
    }

    /// The persisted file's content.
    pub fn to_json(&self) -> Vec<u8> {
        let file = StateFile {
            version: STATE_VERSION,
            cluster: self.cluster.clone(),
            nodes: self.nodes.clone(),
            load_balancers: self
                .balancers
                .values()
                .map(|b| StoredBalancer {
                    service: b.service.clone(),
                    addresses: b.addresses.clone(),
                })
                .collect(),
        };
        let mut out = serde_json::to_vec_pretty(&file).expect("the state serializes");
        out.push(b'\n');
        out
    }

    /// Reads a persisted file's content. Any problem (not JSON, another
    /// version, a load balancer without a name, two for one Service) makes
    /// the whole file unusable: half a state would serve some load
    /// balancers and silently drop others.
    pub fn from_json(bytes: &[u8]) -> Result<HookState, String> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let file: StateFile = serde_path_to_error::deserialize(de)
            .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
        if file.version != STATE_VERSION {
            return Err(format!(
                "version {} (this edge reads version {STATE_VERSION})",
                file.version
            ));
        }
        let mut balancers = BTreeMap::new();
        for (i, b) in file.load_balancers.into_iter().enumerate() {
            let key = match (&b.service.metadata.namespace, &b.service.metadata.name) {
                (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => {
                    ServiceKey::new(ns.clone(), name.clone())
                }
                _ => {
                    return Err(format!(
                        "loadBalancers[{i}].service has no namespace or name"
                    ))
                }
            };
            if balancers.contains_key(&key) {
                return Err(format!("loadBalancers[{i}]: Service {key} appears twice"));
            }
            balancers.insert(
                key,
                Balancer {
                    service: trim_service(b.service),
                    addresses: b.addresses,
                },
            );
        }
        if file.cluster.is_none() && !balancers.is_empty() {
            return Err("load balancers without a cluster".into());
        }
        let (nodes, _) = trim_nodes(file.nodes);
        Ok(HookState {
            cluster: file.cluster,
            nodes,
            balancers,
        })
    }
}

/// The persisted file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StateFile {
    version: u32,
    cluster: Option<String>,
    nodes: Vec<core::Node>,
    load_balancers: Vec<StoredBalancer>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredBalancer {
    service: core::Service,
    addresses: Vec<IpAddr>,
}

/// Refuses a Service whose namespace or name is not the path's.
fn check_key(key: &ServiceKey, service: &core::Service) -> Result<(), RequestError> {
    let fields = [
        (
            "service.metadata.namespace",
            &service.metadata.namespace,
            &key.namespace,
        ),
        ("service.metadata.name", &service.metadata.name, &key.name),
    ];
    for (field, found, expected) in fields {
        // No namespace is `default`, as the shared reader (and the API
        // server) read it.
        let found = match found.as_deref() {
            None | Some("") if field == "service.metadata.namespace" => DEFAULT_NAMESPACE,
            other => other.unwrap_or_default(),
        };
        if found != expected {
            return Err(RequestError::KeyMismatch {
                key: key.clone(),
                field,
                found: found.to_string(),
                expected: expected.clone(),
            });
        }
    }
    Ok(())
}

/// The field of `service` that asked for what the IPAM could not give.
fn ipam_field(service: &core::Service, problem: &IpamError) -> Option<String> {
    let annotated = |name: &str| {
        service
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(name))
            .is_some_and(|v| !v.trim().is_empty())
    };
    let wanted_field = || {
        if annotated(LOAD_BALANCER_IPS) {
            format!("service.metadata.annotations[{LOAD_BALANCER_IPS}]")
        } else {
            "service.spec.loadBalancerIP".to_string()
        }
    };
    match problem {
        IpamError::UnknownPool { .. } => {
            Some(format!("service.metadata.annotations[{ADDRESS_POOL}]"))
        }
        IpamError::NotInPool { .. } | IpamError::InUse { .. } => Some(wanted_field()),
        IpamError::Exhausted { pool, .. } => pool
            .as_ref()
            .map(|_| format!("service.metadata.annotations[{ADDRESS_POOL}]")),
    }
}

/// `GetLoadBalancerName`, as cloud-provider's `DefaultLoadBalancerName`:
/// `a` and the Service's UID without dashes, at most 32 characters.
pub fn load_balancer_name(service: &core::Service) -> String {
    let uid = service.metadata.uid.as_deref().unwrap_or_default();
    let mut name: String = std::iter::once('a')
        .chain(uid.chars().filter(|c| *c != '-'))
        .collect();
    if name.len() > 32 {
        // UIDs are ASCII; cut at a character boundary all the same.
        let cut = (0..=32)
            .rev()
            .find(|i| name.is_char_boundary(*i))
            .unwrap_or(0);
        name.truncate(cut);
    }
    name
}

/// A `v1.LoadBalancerStatus` listing `addresses` with `ipMode: Proxy`.
pub fn load_balancer_status(addresses: &[IpAddr]) -> core::LoadBalancerStatus {
    core::LoadBalancerStatus {
        ingress: Some(
            addresses
                .iter()
                .map(|a| core::LoadBalancerIngress {
                    ip: Some(a.to_string()),
                    ip_mode: Some(IP_MODE.to_string()),
                    ..Default::default()
                })
                .collect(),
        ),
    }
}

/// Drops what never changes what a Service means to the edge but changes
/// on every write to it, so an Ensure with the same Service changes
/// nothing.
fn trim_service(mut service: core::Service) -> core::Service {
    service.metadata.managed_fields = None;
    service.metadata.resource_version = None;
    service.status = None;
    service
}

/// Keeps of each Node what [`translate_node`] reads, one per name (the
/// first), sorted by name; returns the warnings about left-out Nodes.
fn trim_nodes(nodes: Vec<core::Node>) -> (Vec<core::Node>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, n) in nodes.into_iter().enumerate() {
        let name = n.metadata.name.clone().unwrap_or_default();
        if name.is_empty() {
            warnings.push(format!(
                "nodes[{i}]: metadata.name is missing; node not used"
            ));
            continue;
        }
        if !seen.insert(name.clone()) {
            warnings.push(format!(
                "nodes[{i}]: Node {name} appears more than once; the first one is used"
            ));
            continue;
        }
        let trimmed = core::Node {
            metadata: ObjectMeta {
                name: Some(name),
                labels: n.metadata.labels,
                deletion_timestamp: n.metadata.deletion_timestamp,
                ..Default::default()
            },
            spec: n.spec.map(|s| core::NodeSpec {
                taints: s.taints,
                ..Default::default()
            }),
            status: n.status.map(|s| core::NodeStatus {
                addresses: s.addresses,
                ..Default::default()
            }),
        };
        match translate_node(&trimmed) {
            Ok(read) => warnings.extend(read.problems.iter().map(ToString::to_string)),
            Err(p) => warnings.push(p.to_string()),
        }
        out.push(trimmed);
    }
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    (out, warnings)
}

#[cfg(test)]
mod tests {
    use portico_config::AddressRange;
    use serde_json::json;

    use super::*;

    fn pools() -> Vec<AddressPool> {
        vec![AddressPool {
            name: "lab".into(),
            ranges: vec![AddressRange {
                first: "192.0.2.10".parse().unwrap(),
                last: "192.0.2.11".parse().unwrap(),
            }],
        }]
    }

    fn service(name: &str, annotations: serde_json::Value) -> core::Service {
        serde_json::from_value(json!({
            "metadata": {
                "namespace": "shop", "name": name, "uid": "3f6e4b2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
                "resourceVersion": "17", "annotations": annotations,
                "managedFields": [{"manager": "kubectl", "operation": "Update"}],
            },
            "spec": {
                "type": "LoadBalancer", "ipFamilies": ["IPv4"],
                "ports": [{"name": "http", "protocol": "TCP", "port": 80, "nodePort": 30080}],
            },
        }))
        .unwrap()
    }

    fn node(name: &str, ip: &str) -> core::Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "resourceVersion": "9"},
            "status": {
                "addresses": [{"type": "InternalIP", "address": ip}],
                "images": [{"names": ["registry.example/big:1"], "sizeBytes": 1000}],
            },
        }))
        .unwrap()
    }

    fn key(name: &str) -> ServiceKey {
        ServiceKey::new("shop", name)
    }

    fn ensure(state: &HookState, name: &str) -> Outcome {
        state
            .ensure(
                "prod",
                &key(name),
                service(name, json!({})),
                vec![node("n1", "10.0.0.1"), node("n2", "10.0.0.2")],
                &pools(),
            )
            .unwrap()
    }

    fn addrs(state: &HookState, name: &str) -> Vec<String> {
        state.balancers()[&key(name)]
            .addresses
            .iter()
            .map(|a| a.to_string())
            .collect()
    }

    #[test]
    fn ensure_twice_with_the_same_input_changes_nothing() {
        let first = ensure(&HookState::default(), "web");
        assert!(first.changed);
        assert_eq!(addrs(&first.state, "web"), ["192.0.2.10"]);
        // The controller-manager's next call carries a new resourceVersion,
        // the status it wrote, nodes in another order: same meaning.
        let mut again = service("web", json!({}));
        again.metadata.resource_version = Some("18".into());
        again.status = Some(core::ServiceStatus {
            load_balancer: Some(load_balancer_status(&["192.0.2.10".parse().unwrap()])),
            ..Default::default()
        });
        let second = first
            .state
            .ensure(
                "prod",
                &key("web"),
                again,
                vec![node("n2", "10.0.0.2"), node("n1", "10.0.0.1")],
                &pools(),
            )
            .unwrap();
        assert!(!second.changed, "same input, same state");
        assert_eq!(second.state, first.state);
    }

    #[test]
    fn addresses_stay_put_across_ensures_of_other_services() {
        let a = ensure(&HookState::default(), "b-web");
        assert_eq!(addrs(&a.state, "b-web"), ["192.0.2.10"]);
        // "a-api" sorts first: a fresh assignment would hand it .10.
        let b = ensure(&a.state, "a-api");
        assert_eq!(addrs(&b.state, "a-api"), ["192.0.2.11"]);
        assert_eq!(addrs(&b.state, "b-web"), ["192.0.2.10"]);
        let c = ensure(&b.state, "b-web");
        assert!(!c.changed);
        // Deleting one frees its address for the next one.
        let d = c.state.delete("prod", &key("b-web")).unwrap();
        let e = ensure(&d.state, "c-db");
        assert_eq!(addrs(&e.state, "c-db"), ["192.0.2.10"]);
    }

    /// Several edges driven by one provider, each with its own state: on
    /// their own, the order the calls reach each edge decides the
    /// addresses; given the first edge's answers as the wanted addresses
    /// (`portico.io/load-balancer-ips`), every edge serves the same,
    /// whatever order its calls come in (see `docs/ha.md`).
    #[test]
    fn edges_given_the_first_edges_answers_serve_the_same_addresses() {
        let first = ensure(&ensure(&HookState::default(), "b-web").state, "a-api").state;
        let reordered = ensure(&ensure(&HookState::default(), "a-api").state, "b-web").state;
        assert_ne!(
            addrs(&first, "b-web"),
            addrs(&reordered, "b-web"),
            "on their own, the order decides"
        );
        let as_first = |name: &str| {
            service(
                name,
                json!({LOAD_BALANCER_IPS: addrs(&first, name).join(",")}),
            )
        };
        let mut other = HookState::default();
        for name in ["a-api", "b-web"] {
            other = other
                .ensure("prod", &key(name), as_first(name), vec![], &pools())
                .unwrap()
                .state;
        }
        for name in ["a-api", "b-web"] {
            assert_eq!(addrs(&other, name), addrs(&first, name), "{name}");
        }
    }

    #[test]
    fn a_service_new_to_the_edge_keeps_the_address_its_status_shows() {
        let mut svc = service("web", json!({}));
        svc.status = Some(core::ServiceStatus {
            load_balancer: Some(load_balancer_status(&["192.0.2.11".parse().unwrap()])),
            ..Default::default()
        });
        let out = HookState::default()
            .ensure("prod", &key("web"), svc, vec![], &pools())
            .unwrap();
        assert_eq!(addrs(&out.state, "web"), ["192.0.2.11"]);
    }

    #[test]
    fn exhaustion_and_taken_addresses_leave_the_state_alone() {
        let s = ensure(&ensure(&HookState::default(), "a").state, "b").state;
        let err = s
            .ensure("prod", &key("c"), service("c", json!({})), vec![], &pools())
            .unwrap_err();
        assert!(
            matches!(&err, RequestError::Address { problem, .. } if matches!(**problem, IpamError::Exhausted { .. })),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "Service shop/c: no free IPv4 address left in any address pool; the load balancer is left as it was"
        );
        // An existing one asking for a taken address keeps its own.
        let wants_b = service("a", json!({LOAD_BALANCER_IPS: "192.0.2.11"}));
        let err = s
            .ensure("prod", &key("a"), wants_b, vec![], &pools())
            .unwrap_err();
        assert_eq!(
            err.field().as_deref(),
            Some("service.metadata.annotations[portico.io/load-balancer-ips]")
        );
        assert!(
            matches!(&err, RequestError::Address { problem, .. } if matches!(**problem, IpamError::InUse { .. })),
            "{err}"
        );
        assert_eq!(addrs(&s, "a"), ["192.0.2.10"]);
    }

    #[test]
    fn an_unreadable_wanted_address_is_refused_naming_the_field() {
        let svc = service("web", json!({LOAD_BALANCER_IPS: "not-an-ip"}));
        let err = HookState::default()
            .ensure("prod", &key("web"), svc, vec![], &pools())
            .unwrap_err();
        assert_eq!(
            err.field().as_deref(),
            Some("service.metadata.annotations[portico.io/load-balancer-ips]")
        );
    }

    #[test]
    fn bad_annotations_and_nodes_are_warnings_and_defaults() {
        let svc = service("web", json!({"portico.io/algorithm": "fastest"}));
        let mut no_address = node("n3", "10.0.0.3");
        no_address.status = None;
        let out = HookState::default()
            .ensure(
                "prod",
                &key("web"),
                svc,
                vec![node("n1", "10.0.0.1"), no_address, node("n1", "10.0.0.9")],
                &pools(),
            )
            .unwrap();
        assert_eq!(out.warnings.len(), 3, "{:?}", out.warnings);
        assert!(out.warnings[0].contains("portico.io/algorithm"));
        assert!(out.warnings[1].contains("Node n3"));
        assert!(out.warnings[2].contains("appears more than once"));
        let model = out.state.model();
        assert_eq!(
            model.services[0].algorithm,
            portico_config::Algorithm::Maglev
        );
        let nodes: Vec<_> = model.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(nodes, ["n1"]);
        assert_eq!(
            model.nodes[0].addresses,
            ["10.0.0.1".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn another_cluster_is_refused_until_the_last_balancer_is_gone() {
        let s = ensure(&HookState::default(), "web").state;
        let err = s
            .ensure(
                "staging",
                &key("api"),
                service("api", json!({})),
                vec![],
                &pools(),
            )
            .unwrap_err();
        assert_eq!(
            err,
            RequestError::ClusterMismatch {
                held: "prod".into(),
                asked: "staging".into()
            }
        );
        assert!(s.get("staging", &key("web")).is_err());
        assert!(s.delete("staging", &key("web")).is_err());
        let empty = s.delete("prod", &key("web")).unwrap().state;
        assert_eq!(empty, HookState::default());
        assert!(empty
            .ensure(
                "staging",
                &key("api"),
                service("api", json!({})),
                vec![],
                &pools()
            )
            .is_ok());
    }

    #[test]
    fn update_replaces_the_nodes_of_an_existing_balancer_only() {
        let s = ensure(&HookState::default(), "web").state;
        let out = s
            .update(
                "prod",
                &key("web"),
                &service("web", json!({})),
                vec![node("n2", "10.0.0.2")],
            )
            .unwrap();
        assert!(out.changed);
        let names: Vec<_> = out
            .state
            .model()
            .nodes
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(names, ["n2"]);
        let err = s
            .update("prod", &key("api"), &service("api", json!({})), vec![])
            .unwrap_err();
        assert_eq!(err, RequestError::NotFound { key: key("api") });
    }

    #[test]
    fn a_body_for_another_service_than_the_path_is_refused() {
        let err = HookState::default()
            .ensure(
                "prod",
                &key("api"),
                service("web", json!({})),
                vec![],
                &pools(),
            )
            .unwrap_err();
        assert_eq!(err.field().as_deref(), Some("service.metadata.name"));
    }

    #[test]
    fn delete_of_an_unknown_balancer_changes_nothing() {
        let s = ensure(&HookState::default(), "web").state;
        let out = s.delete("prod", &key("nope")).unwrap();
        assert!(!out.changed);
    }

    #[test]
    fn the_state_file_round_trips_and_holds_only_what_matters() {
        let s = ensure(&ensure(&HookState::default(), "web").state, "api").state;
        let bytes = s.to_json();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(!text.contains("managedFields"), "{text}");
        assert!(
            !text.contains("registry.example/big"),
            "node images are not kept"
        );
        assert!(!text.contains("resourceVersion"), "{text}");
        let back = HookState::from_json(&bytes).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.model(), s.model());
    }

    #[test]
    fn a_corrupt_or_foreign_state_file_is_refused_whole() {
        assert!(HookState::from_json(b"{\"version\": 1, \"cluster\"").is_err());
        let err = HookState::from_json(
            br#"{"version": 2, "cluster": null, "nodes": [], "loadBalancers": []}"#,
        )
        .unwrap_err();
        assert!(err.contains("version 2"), "{err}");
        let err = HookState::from_json(
            br#"{"version": 1, "cluster": "c", "nodes": [], "loadBalancers": [{"service": {"metadata": {"name": "x"}}, "addresses": ["not-an-ip"]}]}"#,
        )
        .unwrap_err();
        assert!(err.starts_with("loadBalancers[0].addresses[0]"), "{err}");
    }

    #[test]
    fn the_name_is_cloud_providers_default_load_balancer_name() {
        let svc = service("web", json!({}));
        // "a" + 32 hex digits, cut to 32 characters.
        assert_eq!(load_balancer_name(&svc), "a3f6e4b2a1c2d4e5f8a9b0c1d2e3f4a5");
        let mut short = svc.clone();
        short.metadata.uid = Some("12-34".into());
        assert_eq!(load_balancer_name(&short), "a1234");
    }

    /// The hook API reads each Service variant of the shared table as the
    /// shared reader does: refused ones are refused naming the field.
    #[test]
    fn every_shared_case_is_read_as_the_shared_reader_reads_it() {
        use portico_config::kube::cases;

        for case in cases::service_cases() {
            let svc = case.service();
            let key = portico_config::kube::namespaced_key(&svc.metadata).expect("a key");
            let got = HookState::default()
                .ensure("prod", &key, svc, vec![node("n1", "10.0.0.1")], &pools())
                .map_err(|e| {
                    assert!(
                        matches!(e, RequestError::Invalid { .. }),
                        "case {:?}: {e:?}",
                        case.name
                    );
                    format!("{}: {e}", e.field().unwrap_or_default())
                })
                .map(|outcome| {
                    let model = outcome.state.model();
                    let [service] = &model.services[..] else {
                        panic!("case {:?}: {model:?}", case.name);
                    };
                    crate::cluster::translate::tests::outcome(service)
                });
            cases::check(&case, got);
        }
    }

    mod properties {
        //! EnsureLoadBalancer and UpdateLoadBalancer bodies with one odd
        //! value: refused naming a field in a bounded message, or taken,
        //! never a panic; a refused call changes nothing.
        use portico_config::hostile::{mutate, value};
        use proptest::prelude::*;
        use serde_json::json;

        use super::*;

        fn body() -> serde_json::Value {
            json!({
                "service": {
                    "metadata": {"namespace": "shop", "name": "web", "uid": "u-1",
                                 "annotations": {"portico.io/algorithm": "maglev"}},
                    "spec": {"type": "LoadBalancer", "ipFamilies": ["IPv4"],
                             "loadBalancerIP": "192.0.2.10",
                             "ports": [{"name": "http", "protocol": "TCP", "port": 80, "nodePort": 30080}]},
                    "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}},
                },
                "nodes": [{"metadata": {"name": "n1"},
                           "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}}],
            })
        }

        proptest! {
            #[test]
            fn a_body_with_one_odd_value_is_taken_or_refused_naming_a_field(
                pick in any::<prop::sample::Index>(),
                key in prop::option::of("[a-zA-Z]{1,12}"),
                with in value(),
            ) {
                let doc = mutate(&body(), pick, key, with);
                let Ok(service) = serde_json::from_value::<core::Service>(doc["service"].clone()) else {
                    return Ok(());
                };
                let Ok(nodes) = serde_json::from_value::<Vec<core::Node>>(doc["nodes"].clone()) else {
                    return Ok(());
                };
                let state = HookState::default();
                let started = std::time::Instant::now();
                match state.ensure("prod", &ServiceKey::new("shop", "web"), service.clone(), nodes.clone(), &pools()) {
                    Ok(out) => {
                        for w in &out.warnings {
                            prop_assert!(w.len() < 2048, "{} bytes", w.len());
                        }
                        // What was taken loads back from its own file.
                        let again = HookState::from_json(&out.state.to_json());
                        prop_assert!(again.is_ok(), "{:?}", again.err());
                    }
                    Err(e) => {
                        prop_assert!(e.field().is_some(), "{e}");
                        prop_assert!(e.to_string().len() < 2048, "{} bytes: {:.600}", e.to_string().len(), e.to_string());
                    }
                }
                let _ = state.update("prod", &ServiceKey::new("shop", "web"), &service, nodes);
                prop_assert!(started.elapsed() < std::time::Duration::from_secs(2));
            }
        }
    }
}
