//! A unit's endpoints: read from the Service's EndpointSlices (the slices
//! of its family, the port matching its name and protocol), merged over
//! slices, unusable ones reported; then the ones its chains pick from.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use portico_config::cluster::{AddressType, ClusterServicePort, EndpointSlice};

use super::FragmentBuilder;
use crate::plan::names::slice_object;
use crate::ruleset::Family;

/// An endpoint usable for one Service port, merged over slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct EndpointState {
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

/// A unit's endpoints by address and target port.
pub(super) type EndpointMap = BTreeMap<(IpAddr, u16), EndpointState>;

impl FragmentBuilder<'_> {
    /// Collects the endpoints of one Service port in one family, skipping
    /// (and reporting) unusable ones.
    pub(super) fn endpoints(
        &mut self,
        port: &ClusterServicePort,
        family: Family,
        slices: &[&EndpointSlice],
    ) -> EndpointMap {
        let mut out = EndpointMap::new();
        for slice in slices {
            let slice_family = match slice.address_type {
                AddressType::IPv4 => Family::V4,
                AddressType::IPv6 => Family::V6,
                AddressType::Fqdn => continue,
            };
            if slice_family != family {
                continue;
            }
            let Some((pi, sp)) = slice
                .ports
                .iter()
                .enumerate()
                .find(|(_, p)| p.name == port.name && p.protocol == port.protocol)
            else {
                continue;
            };
            // As kube-proxy: a slice port without a number, or with 0, is
            // ignored (the Service's targetPort is not a stand-in: the
            // slice's controller left it out for a reason).
            let target = match sp.port {
                Some(p) if p != 0 => p,
                Some(_) => {
                    self.skip(
                        slice_object(&slice.key),
                        format!("ports[{pi}].port"),
                        "0 is outside 1-65535; slice skipped for this port".to_string(),
                    );
                    continue;
                }
                None => {
                    self.skip(
                        slice_object(&slice.key),
                        format!("ports[{pi}].port"),
                        "missing; slice skipped for this port".to_string(),
                    );
                    continue;
                }
            };
            for (ei, ep) in slice.endpoints.iter().enumerate() {
                let Some(addr) = ep.addresses.first() else {
                    self.skip(
                        slice_object(&slice.key),
                        format!("endpoints[{ei}].addresses"),
                        "empty; endpoint skipped".to_string(),
                    );
                    continue;
                };
                if Family::of(addr) != family {
                    self.skip(
                        slice_object(&slice.key),
                        format!("endpoints[{ei}].addresses[0]"),
                        format!(
                            "{addr} is not {family} (the slice's addressType); endpoint skipped"
                        ),
                    );
                    continue;
                }
                let local = ep.node_name.as_deref() == Some(self.node_name);
                let state = out.entry((*addr, target)).or_default();
                // The same endpoint in two slices (mid-update): usable if
                // either says so.
                state.ready |= ep.ready;
                state.serving |= ep.serving;
                state.terminating |= ep.terminating;
                state.local |= local;
            }
        }
        out
    }
}

/// The endpoints to pick from (all, or this node's only): the ready ones,
/// else the serving and terminating ones.
pub(super) fn pick(endpoints: &EndpointMap, only_local: bool) -> Vec<(IpAddr, u16)> {
    let candidates = || {
        endpoints
            .iter()
            .filter(move |(_, s)| !only_local || s.local)
    };
    let ready: Vec<_> = candidates()
        .filter(|(_, s)| s.ready)
        .map(|(k, _)| *k)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    candidates()
        .filter(|(_, s)| s.serving && s.terminating)
        .map(|(k, _)| *k)
        .collect()
}

/// The serving endpoints, terminating ones included: those a flow may stay
/// on (see [`crate::plan::flows`]).
pub(super) fn serving(endpoints: &EndpointMap) -> BTreeSet<SocketAddr> {
    endpoints
        .iter()
        .filter(|(_, s)| s.serving)
        .map(|(&(addr, port), _)| SocketAddr::new(addr, port))
        .collect()
}
