//! The `service-` and `local-` chains of a port WITHOUT ClientIP affinity:
//! each picks its endpoint itself with a cascade of DNAT rules (see the
//! [plan module docs](crate::plan) for why), and hairpin traffic is marked
//! through the shared `hairpin-endpoints` set.

use std::net::IpAddr;

use super::{FragmentBuilder, PortPlan};
use crate::plan::names::addr_port;
use crate::ruleset::Family;

impl FragmentBuilder<'_> {
    /// The unit's chains without affinity, and its hairpin elements.
    pub(super) fn cascade_chains(&mut self, p: &PortPlan) {
        let family = p.unit.family;
        // Hairpin: masqueraded by `masquerading` (see the `plan` module docs).
        for (addr, _) in p.used() {
            self.member(
                &format!("hairpin-endpoints{}", p.sfx()),
                format!("{addr} . {addr}"),
            );
        }
        if p.use_cluster_chain {
            self.cascade(&p.names.service, &p.cluster_eps, family, p.proto);
        }
        if p.use_local_chain {
            self.cascade(&p.names.local, &p.local_eps, family, p.proto);
        }
    }

    /// A chain that picks one of `eps` at random and DNATs to it by itself:
    /// rule `i` of `N` takes its endpoint with probability `1/(N-i)` of what
    /// reaches it (`numgen random mod (N-i) 0`), the last one always, so each
    /// endpoint gets `1/N` (kube-proxy's iptables cascade).
    fn cascade(&mut self, chain: &str, eps: &[(IpAddr, u16)], family: Family, proto: &str) {
        let ip = family.nft_keyword();
        let n = eps.len();
        let rules = eps
            .iter()
            .enumerate()
            .map(|(i, &(addr, target))| {
                let dnat = format!(
                    "meta l4proto {proto} dnat {ip} to {}",
                    addr_port(addr, target)
                );
                if i + 1 == n {
                    dnat
                } else {
                    format!("numgen random mod {} 0 {dnat}", n - i)
                }
            })
            .collect();
        self.chain(chain, rules);
    }
}
