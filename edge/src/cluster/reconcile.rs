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
    /// The `resourceVersion` of the object this was decided from: the
    /// write is made on that version only, so a status another controller
    /// wrote meanwhile is never overwritten (the write conflicts, and the
    /// next pass decides again on the newer object).
    pub resource_version: Option<String>,
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
    /// The edge's field manager: a Service that is not ours has its
    /// `status.loadBalancer.ingress` cleared only when this manager owns
    /// it (see [`wrote_ingress`]).
    pub field_manager: String,
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
            let mut t = translate::translate(read, svc.metadata.annotations.as_ref());
            t.request.created = svc
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second());
            ours.push((t, current, svc.metadata.resource_version.clone()));
        } else if !current.is_empty() && wrote_ingress(svc, &ctx.field_manager) {
            out.statuses.push(StatusUpdate {
                key: read.value.key,
                ingress: Vec::new(),
                resource_version: svc.metadata.resource_version.clone(),
            });
        }
    }

    let requests: Vec<_> = ours.iter().map(|(t, _, _)| t.request.clone()).collect();
    let mut assignments = ipam::assign(&ctx.pools, &requests);

    for (t, current, resource_version) in ours {
        let key = t.service.key.clone();
        let assignment = assignments.remove(&key.to_string()).unwrap_or_default();
        let mut conditions = problem_conditions(&t.problems, &assignment.problems);
        conditions.extend(no_node_ports(&t.service));
        // Announced once the API server shows the addresses: a status
        // write that fails (or is still to come) announces nothing.
        if !assignment.addresses.is_empty() && current == assignment.addresses {
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
                resource_version,
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

/// The warning for ports without a NodePort, if any.
fn no_node_ports(service: &Service) -> Option<Condition> {
    let ports: Vec<String> = service
        .ports
        .iter()
        .filter(|p| p.node_port.is_none())
        .map(|p| format!("{}/{}", p.protocol.to_string().to_lowercase(), p.port))
        .collect();
    (!ports.is_empty()).then(|| Condition {
        warning: true,
        reason: reason::NO_NODE_PORTS,
        message: format!(
            "{} has no NodePort (allocateLoadBalancerNodePorts: false); the edge reaches Services through NodePorts only",
            ports.join(", ")
        ),
    })
}

/// The warnings about what could not be read or assigned as asked.
fn problem_conditions(read: &[FieldProblem], assigned: &[IpamError]) -> BTreeSet<Condition> {
    let mut conditions = BTreeSet::new();
    for p in read {
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
    for e in assigned {
        conditions.insert(Condition {
            warning: true,
            reason: match e {
                IpamError::Exhausted { .. } => reason::POOL_EXHAUSTED,
                _ => reason::ADDRESS_NOT_ASSIGNED,
            },
            message: e.to_string(),
        });
    }
    conditions
}

/// Whether `manager` wrote the `status.loadBalancer.ingress` a Service
/// shows now: its `managedFields` entry on the status subresource owns
/// the field.
///
/// This is how a Service that is no longer ours (another class, not a
/// LoadBalancer any more, deleted and re-created under another class) is
/// told apart from one whose status another controller wrote: only the
/// first has its status cleared. Like kube's service controller, which
/// cleans up only the Services carrying its finalizer, the edge takes
/// back only what it marked as its own; the API server keeps the mark
/// (across edge restarts too), moves it to whichever manager changes the
/// field next, and a re-created Service starts without it.
pub fn wrote_ingress(svc: &core::Service, manager: &str) -> bool {
    svc.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|e| e.manager.as_deref() == Some(manager))
        .filter(|e| e.subresource.as_deref() == Some("status"))
        .filter_map(|e| e.fields_v1.as_ref())
        .any(|f| f.0["f:status"]["f:loadBalancer"].get("f:ingress").is_some())
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
            field_manager: "portico-edge".into(),
            unhealthy: BTreeSet::new(),
            not_served: BTreeMap::new(),
        }
    }

    /// `svc` with its ingress written by `manager` (a status write's
    /// `managedFields` entry, as the API server records it).
    fn written_by(svc: Arc<core::Service>, manager: &str) -> Arc<core::Service> {
        let mut svc = (*svc).clone();
        svc.metadata.managed_fields = Some(vec![serde_json::from_value(serde_json::json!({
            "manager": manager,
            "operation": "Update",
            "apiVersion": "v1",
            "subresource": "status",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:status": {"f:loadBalancer": {"f:ingress": {}}}},
        }))
        .unwrap()]);
        Arc::new(svc)
    }

    fn reasons(d: &Desired, name: &str) -> Vec<&'static str> {
        d.conditions[&ServiceKey::new("ns", name)]
            .iter()
            .map(|c| c.reason)
            .collect()
    }

    #[test]
    fn ours_get_addresses_and_statuses_then_an_assigned_condition() {
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
                ingress: vec!["203.0.113.2".parse().unwrap()],
                resource_version: None,
            }]
        );
        // Announced once the status shows it: b's is, a's is still to be
        // written.
        assert_eq!(reasons(&d, "b"), [reason::ADDRESS_ASSIGNED]);
        assert!(reasons(&d, "a").is_empty());
        assert!(!d.conditions.contains_key(&ServiceKey::new("ns", "other")));
        let names: Vec<&str> = d.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2"]);
    }

    #[test]
    fn the_pool_goes_to_the_oldest_service_first() {
        let created = |name: &str, at: &str| {
            let mut svc = (*service(name, serde_json::json!({}), &[])).clone();
            svc.metadata.creation_timestamp =
                Some(serde_json::from_value(serde_json::json!(at)).unwrap());
            Arc::new(svc)
        };
        let d = reconcile(
            &[
                created("a-new", "2026-12-01T10:00:01Z"),
                created("z-old", "2026-12-01T10:00:00Z"),
            ],
            &[],
            &ctx("203.0.113.1"),
        );
        let served: Vec<String> = d.services.iter().map(|s| s.key.to_string()).collect();
        assert_eq!(served, ["ns/z-old"]);
        assert_eq!(reasons(&d, "a-new"), [reason::POOL_EXHAUSTED]);
    }

    #[test]
    fn a_service_without_healthy_nodes_is_told_so() {
        let mut c = ctx("203.0.113.9");
        c.unhealthy.insert(ServiceKey::new("ns", "a"));
        let d = reconcile(&[service("a", serde_json::json!({}), &[])], &[], &c);
        assert_eq!(reasons(&d, "a"), [reason::NO_HEALTHY_NODES]);
    }

    #[test]
    fn a_service_the_budget_leaves_out_is_told_why() {
        let mut c = ctx("203.0.113.9");
        let why = "Service ns/a from kubernetes is left out: its 300 listeners and 0 health probes would pass this edge's descriptor budget (10 of 10 left for listeners and probes)";
        c.not_served
            .insert(ServiceKey::new("ns", "a"), why.to_string());
        let d = reconcile(
            &[service("a", serde_json::json!({}), &["203.0.113.1"])],
            &[],
            &c,
        );
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
            [reason::INVALID_SOURCE_RANGE, reason::NO_NODE_PORTS]
        );
    }

    #[test]
    fn only_a_status_this_edge_wrote_is_cleared() {
        let c = ctx("203.0.113.9");
        let other = serde_json::json!({"loadBalancerClass": "x.io/y"});
        let d = reconcile(
            &[
                // Class changed away after we wrote its status.
                written_by(
                    service("moved", other.clone(), &["203.0.113.1"]),
                    "portico-edge",
                ),
                // Type changed to ClusterIP on a server that kept the
                // status: still the address we wrote.
                written_by(
                    service(
                        "demoted",
                        serde_json::json!({"type": "ClusterIP"}),
                        &["203.0.113.2"],
                    ),
                    "portico-edge",
                ),
                // Deleted and re-created under another class whose
                // controller wrote an address from our very pool: its
                // status, not ours.
                written_by(
                    service("recreated", other.clone(), &["203.0.113.3"]),
                    "metallb-controller",
                ),
                // Someone else's LoadBalancer nobody marked: never touched.
                service("foreign", other.clone(), &["203.0.113.4"]),
                // A ClusterIP Service showing a pool address we did not
                // write: not ours to clear either.
                service(
                    "unmarked",
                    serde_json::json!({"type": "ClusterIP"}),
                    &["203.0.113.5"],
                ),
            ],
            &[],
            &c,
        );
        let cleared: Vec<String> = d.statuses.iter().map(|s| s.key.to_string()).collect();
        assert_eq!(cleared, ["ns/moved", "ns/demoted"]);
        assert!(d.statuses.iter().all(|s| s.ingress.is_empty()));
    }

    #[test]
    fn ownership_is_the_field_managers_entry_on_the_status() {
        let svc = service("a", serde_json::json!({}), &["203.0.113.1"]);
        assert!(!wrote_ingress(&svc, "portico-edge"), "no managedFields");
        assert!(wrote_ingress(
            &written_by(svc.clone(), "portico-edge"),
            "portico-edge"
        ));
        assert!(!wrote_ingress(
            &written_by(svc.clone(), "other"),
            "portico-edge"
        ));
        // Our entry on the main resource (a spec write) is no claim on the
        // status.
        let mut spec_write = (*written_by(svc, "portico-edge")).clone();
        spec_write.metadata.managed_fields.as_mut().unwrap()[0].subresource = None;
        assert!(!wrote_ingress(&spec_write, "portico-edge"));
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
