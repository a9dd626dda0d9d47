//! The cluster as a whole in, what the edge should do out: the Services and
//! Nodes to serve, the statuses to write back, and the conditions worth an
//! Event.
//!
//! Pure: the watch loop ([`super::watch`]) feeds it the reflector stores'
//! contents and carries its answer out (to the edge, to the API server).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use portico_config::cluster::{ClusterService, ServiceType};
use portico_config::kube::read_service;
use portico_config::{AddressPool, KubernetesSettings, Node, Service, ServiceKey};

use super::translate::{self, FieldProblem};
use crate::ipam::{self, IpamError};

/// A fact about one Service worth telling its owner (as an Event).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Condition {
    /// `Warning` rather than `Normal`.
    pub warning: bool,
    /// The Event reason (`AddressAssigned`, `AddressPoolExhausted`, ...).
    pub reason: &'static str,
    /// A sentence for `kubectl describe`.
    pub message: String,
}

/// Event reasons.
pub mod reason {
    /// Addresses were assigned (or changed).
    pub const ADDRESS_ASSIGNED: &str = "AddressAssigned";
    /// The pool has no free address of a family the Service needs.
    pub const POOL_EXHAUSTED: &str = "AddressPoolExhausted";
    /// A wanted address could not be given (not in a pool, in use, ...).
    pub const ADDRESS_NOT_ASSIGNED: &str = "AddressNotAssigned";
    /// `loadBalancerSourceRanges` could not be parsed; the Service is closed.
    pub const INVALID_SOURCE_RANGE: &str = "InvalidSourceRange";
    /// A port has no NodePort (`allocateLoadBalancerNodePorts: false`).
    pub const NO_NODE_PORTS: &str = "NoNodePorts";
    /// An annotation or a field could not be used; a default was.
    pub const INVALID_SETTING: &str = "InvalidSetting";
    /// No node is healthy for the Service.
    pub const NO_HEALTHY_NODES: &str = "NoHealthyNodes";
    /// The edge leaves the Service out: its descriptor budget cannot
    /// afford its listeners.
    pub const NOT_SERVED: &str = "NotServed";
}

/// A status write: the ingress addresses a Service should show (empty: clear).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    /// The Service.
    pub key: ServiceKey,
    /// Its `status.loadBalancer.ingress[].ip`, each with `ipMode: Proxy`.
    pub ingress: Vec<IpAddr>,
}

/// What the edge should do about the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Desired {
    /// Our Services with their addresses (those without one are left out:
    /// there is nothing to listen on).
    pub services: Vec<Service>,
    /// Every Node with a usable address.
    pub nodes: Vec<Node>,
    /// Statuses that differ from what the API server shows.
    pub statuses: Vec<StatusUpdate>,
    /// The current conditions of each of our Services.
    pub conditions: BTreeMap<ServiceKey, BTreeSet<Condition>>,
    /// Problems with objects that have no Service of ours to tell (for the
    /// log): Nodes left out or read around, Services the reader refused
    /// (whose class cannot be trusted to say whose they are).
    pub problems: Vec<FieldProblem>,
}

/// Everything the reconciler needs besides the objects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Context {
    /// Which Services are ours.
    pub kubernetes: KubernetesSettings,
    /// Where addresses come from.
    pub pools: Vec<AddressPool>,
    /// Services whose status this edge wrote since it started: cleared when
    /// they stop being ours.
    pub written: BTreeSet<ServiceKey>,
    /// Services whose every node fails its health check (from the edge's
    /// snapshot).
    pub unhealthy: BTreeSet<ServiceKey>,
    /// Services the edge leaves out although they are ours, with why (the
    /// descriptor budget, from the merge).
    pub not_served: BTreeMap<ServiceKey, String>,
}

/// Computes the desired state from the whole cluster view.
pub fn reconcile(
    services: &[Arc<core::Service>],
    nodes: &[Arc<core::Node>],
    ctx: &Context,
) -> Desired {
    let mut out = Desired::default();
    for node in nodes {
        match translate::translate_node(node) {
            Ok(read) => {
                out.problems.extend(read.problems);
                out.nodes.push(read.value);
            }
            Err(p) => out.problems.push(p),
        }
    }
    out.nodes.sort_by(|a, b| a.name.cmp(&b.name));

    let mut ours = Vec::new();
    for svc in services {
        let read = match read_service(svc) {
            Ok(read) => read,
            Err(refused) => {
                out.problems.push(refused);
                continue;
            }
        };
        let current: Vec<IpAddr> = read.value.ingress.iter().map(|i| i.ip).collect();
        if translate::is_ours(&read.value, &ctx.kubernetes) {
            ours.push((
                translate::translate(read, svc.metadata.annotations.as_ref()),
                current,
            ));
        } else if !current.is_empty() && releases(&read.value, &current, ctx) {
            out.statuses.push(StatusUpdate {
                key: read.value.key,
                ingress: Vec::new(),
            });
        }
    }

    let requests: Vec<_> = ours.iter().map(|(t, _)| t.request.clone()).collect();
    let mut assignments = ipam::assign(&ctx.pools, &requests);

    for (t, current) in ours {
        let key = t.service.key.clone();
        let assignment = assignments.remove(&key.to_string()).unwrap_or_default();
        let mut conditions = BTreeSet::new();
        for p in &t.problems {
            let reason = if p.field.contains("SourceRanges") || p.field.contains("source-ranges") {
                reason::INVALID_SOURCE_RANGE
            } else {
                reason::INVALID_SETTING
            };
            conditions.insert(Condition {
                warning: true,
                reason,
                message: format!("{}: {}", p.field, p.message),
            });
        }
        for e in &assignment.problems {
            conditions.insert(Condition {
                warning: true,
                reason: match e {
                    IpamError::Exhausted { .. } => reason::POOL_EXHAUSTED,
                    _ => reason::ADDRESS_NOT_ASSIGNED,
                },
                message: e.to_string(),
            });
        }
        let no_node_port: Vec<String> = t
            .service
            .ports
            .iter()
            .filter(|p| p.node_port.is_none())
            .map(|p| format!("{}/{}", p.protocol.to_string().to_lowercase(), p.port))
            .collect();
        if !no_node_port.is_empty() {
            conditions.insert(Condition {
                warning: true,
                reason: reason::NO_NODE_PORTS,
                message: format!(
                    "{} has no NodePort (allocateLoadBalancerNodePorts: false); the edge reaches Services through NodePorts only",
                    no_node_port.join(", ")
                ),
            });
        }
        if !assignment.addresses.is_empty() {
            let shown: Vec<String> = assignment.addresses.iter().map(|a| a.to_string()).collect();
            conditions.insert(Condition {
                warning: false,
                reason: reason::ADDRESS_ASSIGNED,
                message: format!("Assigned {}", shown.join(", ")),
            });
        }
        if let Some(why) = ctx.not_served.get(&key) {
            conditions.insert(Condition {
                warning: true,
                reason: reason::NOT_SERVED,
                message: why.clone(),
            });
        }
        if !assignment.addresses.is_empty() && ctx.unhealthy.contains(&key) {
            conditions.insert(Condition {
                warning: true,
                reason: reason::NO_HEALTHY_NODES,
                message: "no node passes its health check for this Service".to_string(),
            });
        }
        if current != assignment.addresses {
            out.statuses.push(StatusUpdate {
                key: key.clone(),
                ingress: assignment.addresses.clone(),
            });
        }
        if !assignment.addresses.is_empty() {
            let mut service = t.service;
            service.vips = assignment.addresses;
            out.services.push(service);
        }
        out.conditions.insert(key, conditions);
    }
    out.services.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// Whether the addresses a Service that is no longer ours shows are ours
/// to take back: we wrote them since we started, or the Service is not a
/// LoadBalancer any more and every address is from our pools.
fn releases(svc: &ClusterService, current: &[IpAddr], ctx: &Context) -> bool {
    if ctx.written.contains(&svc.key) {
        return true;
    }
    svc.service_type != ServiceType::LoadBalancer
        && current
            .iter()
            .all(|a| ctx.pools.iter().any(|p| p.contains(*a)))
}

#[cfg(test)]
mod tests {
    use portico_config::{AddressRange, SourceRanges};

    use super::*;

    fn service(name: &str, spec: serde_json::Value, status_ips: &[&str]) -> Arc<core::Service> {
        let ingress: Vec<serde_json::Value> = status_ips
            .iter()
            .map(|ip| serde_json::json!({"ip": ip, "ipMode": "Proxy"}))
            .collect();
        let mut full_spec = serde_json::json!({
            "type": "LoadBalancer",
            "loadBalancerClass": "portico.io/edge",
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "nodePort": 30080}],
        });
        full_spec
            .as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "ns", "name": name},
                "spec": full_spec,
                "status": {"loadBalancer": {"ingress": ingress}},
            }))
            .unwrap(),
        )
    }

    fn node(name: &str, ip: &str) -> Arc<core::Node> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
            }))
            .unwrap(),
        )
    }

    fn ctx(last: &str) -> Context {
        Context {
            kubernetes: KubernetesSettings::default(),
            pools: vec![AddressPool {
                name: "public".into(),
                ranges: vec![AddressRange {
                    first: "203.0.113.1".parse().unwrap(),
                    last: last.parse().unwrap(),
                }],
            }],
            written: BTreeSet::new(),
            unhealthy: BTreeSet::new(),
            not_served: BTreeMap::new(),
        }
    }

    fn reasons(d: &Desired, name: &str) -> Vec<&'static str> {
        d.conditions[&ServiceKey::new("ns", name)]
            .iter()
            .map(|c| c.reason)
            .collect()
    }

    #[test]
    fn ours_get_addresses_statuses_and_an_assigned_condition() {
        let d = reconcile(
            &[
                service("a", serde_json::json!({}), &[]),
                service("b", serde_json::json!({}), &["203.0.113.1"]),
                service(
                    "other",
                    serde_json::json!({"loadBalancerClass": "x.io/y"}),
                    &[],
                ),
            ],
            &[node("n2", "10.0.0.2"), node("n1", "10.0.0.1")],
            &ctx("203.0.113.9"),
        );
        let vips: Vec<(String, Vec<IpAddr>)> = d
            .services
            .iter()
            .map(|s| (s.key.to_string(), s.vips.clone()))
            .collect();
        assert_eq!(
            vips,
            [
                ("ns/a".to_string(), vec!["203.0.113.2".parse().unwrap()]),
                ("ns/b".to_string(), vec!["203.0.113.1".parse().unwrap()]),
            ]
        );
        // b already shows its address: only a needs a write.
        assert_eq!(
            d.statuses,
            [StatusUpdate {
                key: ServiceKey::new("ns", "a"),
                ingress: vec!["203.0.113.2".parse().unwrap()]
            }]
        );
        assert_eq!(reasons(&d, "a"), [reason::ADDRESS_ASSIGNED]);
        assert!(!d.conditions.contains_key(&ServiceKey::new("ns", "other")));
        let names: Vec<&str> = d.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2"]);
    }

    #[test]
    fn a_service_without_healthy_nodes_is_told_so() {
        let mut c = ctx("203.0.113.9");
        c.unhealthy.insert(ServiceKey::new("ns", "a"));
        let d = reconcile(&[service("a", serde_json::json!({}), &[])], &[], &c);
        assert_eq!(
            reasons(&d, "a"),
            [reason::ADDRESS_ASSIGNED, reason::NO_HEALTHY_NODES]
        );
    }

    #[test]
    fn a_service_the_budget_leaves_out_is_told_why() {
        let mut c = ctx("203.0.113.9");
        let why = "Service ns/a from kubernetes is left out: its 300 listeners and 0 health probes would pass this edge's descriptor budget (10 of 10 left for listeners and probes)";
        c.not_served
            .insert(ServiceKey::new("ns", "a"), why.to_string());
        let d = reconcile(&[service("a", serde_json::json!({}), &[])], &[], &c);
        assert_eq!(
            reasons(&d, "a"),
            [reason::ADDRESS_ASSIGNED, reason::NOT_SERVED]
        );
        let told = d.conditions[&ServiceKey::new("ns", "a")]
            .iter()
            .find(|c| c.reason == reason::NOT_SERVED)
            .unwrap();
        assert!(told.warning);
        assert_eq!(told.message, why);
    }

    #[test]
    fn exhaustion_leaves_the_service_out_and_says_why() {
        let d = reconcile(
            &[
                service("a", serde_json::json!({}), &[]),
                service("b", serde_json::json!({}), &[]),
            ],
            &[],
            &ctx("203.0.113.1"),
        );
        assert_eq!(d.services.len(), 1);
        assert_eq!(reasons(&d, "b"), [reason::POOL_EXHAUSTED]);
        let msg = &d.conditions[&ServiceKey::new("ns", "b")]
            .first()
            .unwrap()
            .message;
        assert_eq!(msg, "no free IPv4 address left in any address pool");
    }

    #[test]
    fn bad_ranges_and_missing_node_ports_are_conditions_not_failures() {
        let d = reconcile(
            &[service(
                "a",
                serde_json::json!({
                    "loadBalancerSourceRanges": ["10.0.0.0/33"],
                    "allocateLoadBalancerNodePorts": false,
                    "ports": [{"name": "http", "protocol": "TCP", "port": 80}],
                }),
                &[],
            )],
            &[],
            &ctx("203.0.113.9"),
        );
        assert_eq!(
            d.services.len(),
            1,
            "still served (closed), still addressed"
        );
        assert!(matches!(
            d.services[0].source_ranges,
            SourceRanges::Invalid { .. }
        ));
        assert_eq!(
            reasons(&d, "a"),
            [
                reason::ADDRESS_ASSIGNED,
                reason::INVALID_SOURCE_RANGE,
                reason::NO_NODE_PORTS
            ]
        );
    }

    #[test]
    fn a_service_that_stops_being_ours_has_its_status_cleared() {
        let mut c = ctx("203.0.113.9");
        c.written.insert(ServiceKey::new("ns", "moved"));
        let d = reconcile(
            &[
                // Class changed away after we wrote its status.
                service(
                    "moved",
                    serde_json::json!({"loadBalancerClass": "x.io/y"}),
                    &["203.0.113.1"],
                ),
                // Type changed to ClusterIP, still showing a pool address.
                service(
                    "demoted",
                    serde_json::json!({"type": "ClusterIP"}),
                    &["203.0.113.2"],
                ),
                // Someone else's LoadBalancer: never touched.
                service(
                    "foreign",
                    serde_json::json!({"loadBalancerClass": "x.io/y"}),
                    &["203.0.113.3"],
                ),
            ],
            &[],
            &c,
        );
        let cleared: Vec<String> = d.statuses.iter().map(|s| s.key.to_string()).collect();
        assert_eq!(cleared, ["ns/moved", "ns/demoted"]);
        assert!(d.statuses.iter().all(|s| s.ingress.is_empty()));
    }

    /// The cluster source reads each Service variant of the shared table as
    /// the shared reader does: a refused one is left out and reported, the
    /// others are served as read.
    #[test]
    fn every_shared_case_is_served_as_the_shared_reader_reads_it() {
        use portico_config::kube::cases;

        for case in cases::service_cases() {
            let d = reconcile(
                &[Arc::new(case.service())],
                &[node("n1", "10.0.0.1")],
                &ctx("203.0.113.9"),
            );
            let got = match (&d.services[..], &d.problems[..]) {
                ([service], []) => Ok(super::translate::tests::outcome(service)),
                ([], [refused]) => Err(refused.to_string()),
                other => panic!("case {:?}: {other:?}", case.name),
            };
            cases::check(&case, got);
        }
    }
}
