//! One Service -> its [`Fragment`]: for each unit (port x family) that won
//! its claims, the chains, the Service's own sets, and its elements of the
//! shared maps and sets. Per unit, in order:
//! - `endpoints`: the usable endpoints from the EndpointSlices, and which
//!   of them the `service-` and `local-` chains pick from;
//! - `cascade` (no affinity) or `affinity` (ClientIP): those chains;
//! - `dispatch`: where each key goes (ClusterIP, external addresses,
//!   NodePort), the `external-` chain of a `Local` port, the masquerade
//!   marks;
//! - `firewall`: the source-range chain guarding the external addresses.

mod affinity;
mod cascade;
mod dispatch;
mod endpoints;
mod firewall;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use portico_config::cluster::{ClusterService, EndpointSlice};
use portico_config::{Protocol, SessionAffinity, TrafficPolicy};

use self::endpoints::{pick, serving, EndpointMap};
use super::flows::UdpPort;
use super::names::{proto_name, PortNames};
use super::units::{Unit, Units};
use super::{PlanOptions, Skipped};
use crate::ruleset::{Chain, Set};

/// What one Service contributes to the ruleset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Fragment {
    /// Its chains.
    pub(super) chains: BTreeMap<String, Chain>,
    /// Its own sets and maps (affinity sets, `endpoints-` maps).
    pub(super) sets: BTreeMap<String, Set>,
    /// Its elements of the shared verdict maps, by map. The claims make
    /// every key of these maps belong to one Service.
    pub(super) elements: BTreeMap<String, BTreeMap<String, String>>,
    /// Its elements of the shared sets, by set; several Services may add
    /// the same one (counted by the [`Planner`](super::Planner)).
    pub(super) members: BTreeMap<String, BTreeSet<String>>,
    /// Its UDP ports, for the clean-up of their stale flows.
    pub(super) udp: Vec<UdpPort>,
    /// Its input left out.
    pub(super) skipped: Vec<Skipped>,
}

/// Plans one Service: every unit that won its claims (a lost one is only
/// reported).
pub(super) fn plan_fragment(
    svc: &ClusterService,
    slices: &[&EndpointSlice],
    node_name: &str,
    opts: &PlanOptions,
    units: &Units,
    lost: &[Option<Skipped>],
) -> Fragment {
    let mut builder = FragmentBuilder {
        node_name,
        opts,
        fragment: Fragment {
            skipped: units.skipped.clone(),
            ..Fragment::default()
        },
    };
    for (unit, lost) in units.units.iter().zip(lost) {
        match lost {
            Some(skipped) => builder.fragment.skipped.push(skipped.clone()),
            None => builder.service_port(svc, unit, slices),
        }
    }
    let mut fragment = builder.fragment;
    fragment.skipped.sort();
    fragment.skipped.dedup();
    fragment
}

/// Builds one Service's fragment.
struct FragmentBuilder<'a> {
    node_name: &'a str,
    opts: &'a PlanOptions,
    fragment: Fragment,
}

impl FragmentBuilder<'_> {
    /// Plans one unit (a Service port in one family) whose claims were won:
    /// its chains and map elements.
    fn service_port(&mut self, svc: &ClusterService, unit: &Unit, slices: &[&EndpointSlice]) {
        let port = &svc.ports[unit.index];
        let endpoints = self.endpoints(port, unit.family, slices);
        if port.protocol == Protocol::Udp {
            self.fragment.udp.push(UdpPort {
                addrs: std::iter::once(unit.cluster_ip)
                    .chain(unit.external_ips.iter().copied())
                    .map(|ip| SocketAddr::new(ip, port.port))
                    .collect(),
                node_port: unit.node_port,
                endpoints: serving(&endpoints),
            });
        }
        let p = PortPlan::new(svc, unit, &endpoints);
        match svc.session_affinity {
            SessionAffinity::None => self.cascade_chains(&p),
            SessionAffinity::ClientIp { timeout } => {
                self.affinity_chains(&p, timeout.as_secs().max(1));
            }
        }
        self.cluster_ip_target(&p);
        if !p.has_external {
            return;
        }
        self.external_targets(&p);
        self.firewall(&p, &svc.source_ranges);
    }

    // No logging here: the planner stays pure; the caller logs the skipped.
    fn skip(&mut self, object: String, field: String, reason: String) {
        self.fragment.skipped.push(Skipped {
            object,
            field,
            reason,
        });
    }

    fn chain(&mut self, name: &str, rules: Vec<String>) {
        self.fragment
            .chains
            .insert(name.to_string(), Chain { base: None, rules });
    }

    fn element(&mut self, map: &str, key: String, value: String) {
        self.fragment
            .elements
            .entry(map.to_string())
            .or_default()
            .insert(key, value);
    }

    fn member(&mut self, set: &str, key: String) {
        self.fragment
            .members
            .entry(set.to_string())
            .or_default()
            .insert(key);
    }
}

/// What is decided about one unit before its rules are written: its
/// names, the endpoints each of its chains picks from, and which of those
/// chains exist.
struct PortPlan<'a> {
    unit: &'a Unit,
    names: PortNames,
    /// Its protocol as nft writes it.
    proto: &'static str,
    /// The Service port, the port of its `addr . proto . port` keys.
    port: u16,
    /// The endpoints any traffic may use.
    cluster_eps: Vec<(IpAddr, u16)>,
    /// The endpoints on this node.
    local_eps: Vec<(IpAddr, u16)>,
    /// Whether it has external keys (external addresses or a NodePort).
    has_external: bool,
    /// `internalTrafficPolicy: Local`.
    internal_local: bool,
    /// `externalTrafficPolicy: Local`.
    external_local: bool,
    /// Whether the `service-` chain (any endpoint) exists.
    use_cluster_chain: bool,
    /// Whether the `local-` chain (this node's endpoints) exists.
    use_local_chain: bool,
}

impl<'a> PortPlan<'a> {
    fn new(svc: &ClusterService, unit: &'a Unit, endpoints: &EndpointMap) -> PortPlan<'a> {
        let port = &svc.ports[unit.index];
        // Terminating (but still serving) endpoints only when no ready one
        // exists, separately for the cluster-wide and the local choice.
        let cluster_eps = pick(endpoints, false);
        let local_eps = pick(endpoints, true);

        let has_external = unit.node_port.is_some() || !unit.external_ips.is_empty();
        let internal_local = svc.internal_traffic_policy == TrafficPolicy::Local;
        let external_local = svc.external_traffic_policy == TrafficPolicy::Local;
        let use_cluster_chain = !cluster_eps.is_empty() && (!internal_local || has_external);
        let use_local_chain =
            !local_eps.is_empty() && (internal_local || (has_external && external_local));
        PortPlan {
            unit,
            names: PortNames::new(&svc.key, port, unit.family),
            proto: proto_name(port.protocol),
            port: port.port,
            cluster_eps,
            local_eps,
            has_external,
            internal_local,
            external_local,
            use_cluster_chain,
            use_local_chain,
        }
    }

    /// Every endpoint a policy chain can pick.
    fn used(&self) -> BTreeSet<(IpAddr, u16)> {
        let mut used: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
        if self.use_cluster_chain {
            used.extend(self.cluster_eps.iter().copied());
        }
        if self.use_local_chain {
            used.extend(self.local_eps.iter().copied());
        }
        used
    }

    /// The `addr . proto . port` key of `addr`.
    fn ip_key(&self, addr: IpAddr) -> String {
        format!("{addr} . {} . {}", self.proto, self.port)
    }

    /// The suffix of its family's shared maps and sets.
    fn sfx(&self) -> &'static str {
        self.unit.family.map_suffix()
    }
}
