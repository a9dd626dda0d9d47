//! A Service -> its units: one per usable port and family (the ClusterIP
//! of that family, the external addresses captured on the node, the
//! NodePort). What the Service's own spec makes unusable is reported here,
//! from the Service alone; the claims across Services come later.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::net::IpAddr;

use portico_config::cluster::{ClusterService, IpMode, ServiceType, TargetPort};
use portico_config::{Protocol, SourceRanges};

use super::names::service_object;
use super::Skipped;
use crate::ruleset::Family;

/// One Service port in one family: the unit that claims keys and is planned
/// or skipped as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Unit {
    /// Its index in `spec.ports`.
    pub(super) index: usize,
    pub(super) family: Family,
    pub(super) cluster_ip: IpAddr,
    pub(super) external_ips: Vec<IpAddr>,
    /// Its NodePort (NodePort and LoadBalancer Services only).
    pub(super) node_port: Option<u16>,
}

/// The units of a Service, and what its own spec made the planner skip.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Units {
    pub(super) units: Vec<Unit>,
    pub(super) skipped: Vec<Skipped>,
}

/// Splits a Service into its units (port x family), reporting what its own
/// spec makes unusable. Needs nothing but the Service and the class of the
/// Services the edge serves (see [`captured_addresses`]).
pub(super) fn units(svc: &ClusterService, edge_class: &str) -> Units {
    let mut report = Report {
        object: service_object(&svc.key),
        skipped: Vec::new(),
    };
    let units = if svc.service_type == ServiceType::ExternalName {
        Vec::new()
    } else if svc.cluster_ips.is_empty() {
        // A headless ClusterIP Service has nothing to program; a
        // NodePort or LoadBalancer one without a ClusterIP is broken.
        if svc.service_type != ServiceType::ClusterIp {
            report.skip(
                "spec.clusterIPs".to_string(),
                format!(
                    "missing ClusterIP on a {:?} Service; all its ports skipped",
                    svc.service_type
                ),
            );
        }
        Vec::new()
    } else {
        port_units(svc, edge_class, &mut report)
    };
    Units {
        units,
        skipped: report.skipped,
    }
}

/// What one Service's spec made the planner skip, in the order found.
struct Report {
    object: String,
    skipped: Vec<Skipped>,
}

impl Report {
    fn skip(&mut self, field: String, reason: String) {
        self.skipped.push(Skipped {
            object: self.object.clone(),
            field,
            reason,
        });
    }
}

/// The units of a Service that has a ClusterIP: each usable port in each
/// family it has a ClusterIP of.
fn port_units(svc: &ClusterService, edge_class: &str, report: &mut Report) -> Vec<Unit> {
    let cluster_ip = cluster_ip_per_family(svc, report);
    let external_ips = captured_addresses(svc, edge_class, &cluster_ip, report);
    if let SourceRanges::Invalid { errors } = &svc.source_ranges {
        if !external_ips.is_empty() {
            report.skip(
                "spec.loadBalancerSourceRanges".to_string(),
                format!(
                    "{}; the Service's external addresses accept no client",
                    errors.join("; ")
                ),
            );
        }
    }
    let has_node_ports = matches!(
        svc.service_type,
        ServiceType::NodePort | ServiceType::LoadBalancer
    );
    let mut units = Vec::new();
    for i in usable_ports(svc, report) {
        let node_port = if has_node_ports {
            svc.ports[i].node_port
        } else {
            None
        };
        for (&family, &cluster_ip) in &cluster_ip {
            units.push(Unit {
                index: i,
                family,
                cluster_ip,
                external_ips: external_ips.get(&family).cloned().unwrap_or_default(),
                node_port,
            });
        }
    }
    units
}

/// One ClusterIP per family: the first, as Kubernetes orders them.
fn cluster_ip_per_family(svc: &ClusterService, report: &mut Report) -> BTreeMap<Family, IpAddr> {
    let mut cluster_ip: BTreeMap<Family, IpAddr> = BTreeMap::new();
    for (i, ip) in svc.cluster_ips.iter().enumerate() {
        let family = Family::of(ip);
        match cluster_ip.entry(family) {
            Entry::Vacant(slot) => {
                slot.insert(*ip);
            }
            Entry::Occupied(_) => report.skip(
                format!("spec.clusterIPs[{i}]"),
                format!("{ip}: a second {family} ClusterIP; ignored"),
            ),
        }
    }
    cluster_ip
}

/// The addresses captured on the node, per family, as kube-proxy captures
/// them: the load-balancer ingress addresses (except those of a proxying
/// load balancer, whose traffic arrives on NodePorts) and
/// `spec.externalIPs`; only in families the Service has a ClusterIP of.
///
/// A proxying load balancer says so with `ipMode: Proxy`; the Services of
/// `edge_class` (the Portico edge's LoadBalancers) are treated as such
/// whatever their `ipMode`, since an API server older than 1.29 drops the
/// field the edge writes, and capturing the edge's address on the node
/// would keep the node's own clients from reaching the edge.
fn captured_addresses(
    svc: &ClusterService,
    edge_class: &str,
    cluster_ip: &BTreeMap<Family, IpAddr>,
    report: &mut Report,
) -> BTreeMap<Family, Vec<IpAddr>> {
    let proxied_by_the_edge = svc.service_type == ServiceType::LoadBalancer
        && svc.load_balancer_class.as_deref() == Some(edge_class);
    let captured = svc
        .ingress
        .iter()
        .enumerate()
        .filter(|(_, ingress)| ingress.ip_mode != Some(IpMode::Proxy) && !proxied_by_the_edge)
        .map(|(i, ingress)| (format!("status.loadBalancer.ingress[{i}].ip"), ingress.ip))
        .chain(
            svc.external_ips
                .iter()
                .enumerate()
                .map(|(i, ip)| (format!("spec.externalIPs[{i}]"), *ip)),
        );
    let mut external_ips: BTreeMap<Family, Vec<IpAddr>> = BTreeMap::new();
    for (field, ip) in captured {
        let family = Family::of(&ip);
        if !cluster_ip.contains_key(&family) {
            report.skip(
                field,
                format!("{ip}: the Service has no {family} ClusterIP; address ignored"),
            );
            continue;
        }
        let list = external_ips.entry(family).or_default();
        if !list.contains(&ip) {
            list.push(ip);
        }
    }
    external_ips
}

/// The indices of the ports that can be programmed: no zero port, NodePort
/// or target port, and no port number or name an earlier port has.
fn usable_ports(svc: &ClusterService, report: &mut Report) -> Vec<usize> {
    let mut usable = Vec::new();
    let mut seen_ports: BTreeMap<(Protocol, u16), usize> = BTreeMap::new();
    let mut seen_names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, port) in svc.ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        if port.port == 0 {
            report.skip(
                format!("{field}.port"),
                "0 is outside 1-65535; port skipped".to_string(),
            );
            continue;
        }
        if port.node_port == Some(0) {
            report.skip(
                format!("{field}.nodePort"),
                "0 is outside 1-65535; port skipped".to_string(),
            );
            continue;
        }
        if port.target_port == TargetPort::Number(0) {
            report.skip(
                format!("{field}.targetPort"),
                "0 is outside 1-65535; port skipped".to_string(),
            );
            continue;
        }
        if let Some(first) = first_claim(&mut seen_ports, (port.protocol, port.port), i) {
            report.skip(
                format!("{field}.port"),
                format!(
                    "{}/{} duplicates spec.ports[{first}]; port skipped",
                    port.port, port.protocol
                ),
            );
            continue;
        }
        if let Some(first) = first_claim(&mut seen_names, port.name.as_str(), i) {
            report.skip(
                format!("{field}.name"),
                format!(
                    "{:?} duplicates spec.ports[{first}]; port skipped",
                    port.name
                ),
            );
            continue;
        }
        usable.push(i);
    }
    usable
}

/// Records `index` as the owner of `key` unless an earlier index owns it;
/// returns that earlier index.
fn first_claim<K: Ord>(seen: &mut BTreeMap<K, usize>, key: K, index: usize) -> Option<usize> {
    match seen.entry(key) {
        Entry::Vacant(slot) => {
            slot.insert(index);
            None
        }
        Entry::Occupied(owner) => Some(*owner.get()),
    }
}

#[cfg(test)]
mod tests {
    use portico_config::cluster::LoadBalancerIngress;
    use portico_config::DEFAULT_LOAD_BALANCER_CLASS;

    use super::super::test_support::web;
    use super::*;

    /// A LoadBalancer `web` of `class` showing 203.0.113.7 with `ip_mode`.
    fn lb(class: Option<&str>, ip_mode: Option<IpMode>) -> ClusterService {
        let mut svc = web(Some("portico"));
        svc.service_type = ServiceType::LoadBalancer;
        svc.load_balancer_class = class.map(str::to_string);
        svc.ingress = vec![LoadBalancerIngress {
            ip: "203.0.113.7".parse().unwrap(),
            ip_mode,
        }];
        svc
    }

    fn captured(svc: &ClusterService, edge_class: &str) -> Vec<IpAddr> {
        units(svc, edge_class)
            .units
            .iter()
            .flat_map(|u| u.external_ips.clone())
            .collect()
    }

    #[test]
    fn the_edges_addresses_are_never_captured_whatever_the_ip_mode() {
        let edge = DEFAULT_LOAD_BALANCER_CLASS;
        let address: IpAddr = "203.0.113.7".parse().unwrap();
        // The edge's Service on a server that dropped ipMode, or kept it.
        for mode in [None, Some(IpMode::Proxy), Some(IpMode::Vip)] {
            assert!(captured(&lb(Some(edge), mode), edge).is_empty(), "{mode:?}");
        }
        // Another load balancer's: as kube-proxy, by ipMode alone.
        let other = Some("example.com/other-lb");
        assert_eq!(captured(&lb(other, None), edge), [address]);
        assert_eq!(captured(&lb(other, Some(IpMode::Vip)), edge), [address]);
        assert!(captured(&lb(other, Some(IpMode::Proxy)), edge).is_empty());
        assert_eq!(captured(&lb(None, None), edge), [address]);
        // The class is a setting: an edge run under another class.
        assert_eq!(
            captured(&lb(Some(edge), None), "example.com/edge-b"),
            [address]
        );
        assert!(captured(&lb(other, None), "example.com/other-lb").is_empty());
    }
}
