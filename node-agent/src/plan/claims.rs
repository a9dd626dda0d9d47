//! The keys two Services cannot share (a NodePort, an `addr . proto .
//! port` key): checked across every Service at each update, in key order,
//! so the first Service by key keeps a key and a later one loses the port.

use std::net::IpAddr;

use portico_config::cluster::ClusterService;
use portico_config::{Protocol, ServiceKey};

use super::names::service_object;
use super::units::Units;
use super::{FastMap, Skipped};
use crate::ruleset::Family;

/// A key two Services cannot share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Claim {
    /// A NodePort of one family.
    NodePort(Family, Protocol, u16),
    /// An `addr . proto . port` key of `service-ips` (ClusterIP or external
    /// address).
    Address(IpAddr, Protocol, u16),
}

/// Checks each unit's keys against those claimed by earlier units (of this
/// and earlier Services) and claims them when none is taken; returns, per
/// unit, why it lost.
pub(super) fn resolve_claims<'a>(
    svc: &'a ClusterService,
    units: &Units,
    claims: &mut FastMap<Claim, &'a ServiceKey>,
) -> Vec<Option<Skipped>> {
    let mut lost = Vec::with_capacity(units.units.len());
    for unit in &units.units {
        let port = &svc.ports[unit.index];
        let addresses = std::iter::once(unit.cluster_ip).chain(unit.external_ips.iter().copied());
        let mut clash = None;
        if let Some(np) = unit.node_port {
            if let Some(owner) = claims.get(&Claim::NodePort(unit.family, port.protocol, np)) {
                clash = Some(Skipped {
                    object: service_object(&svc.key),
                    field: format!("spec.ports[{}].nodePort", unit.index),
                    reason: format!(
                        "{np}/{} already used by Service {owner}; port skipped",
                        port.protocol
                    ),
                });
            }
        }
        if clash.is_none() {
            for addr in addresses.clone() {
                if let Some(owner) = claims.get(&Claim::Address(addr, port.protocol, port.port)) {
                    clash = Some(Skipped {
                        object: service_object(&svc.key),
                        field: format!("spec.ports[{}].port", unit.index),
                        reason: format!(
                            "{} on {addr} already used by Service {owner}; port skipped",
                            port.port
                        ),
                    });
                    break;
                }
            }
        }
        if clash.is_none() {
            if let Some(np) = unit.node_port {
                claims.insert(Claim::NodePort(unit.family, port.protocol, np), &svc.key);
            }
            for addr in addresses {
                claims.insert(Claim::Address(addr, port.protocol, port.port), &svc.key);
            }
        }
        lost.push(clash);
    }
    lost
}
