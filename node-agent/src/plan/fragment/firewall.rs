//! `loadBalancerSourceRanges`: a `firewall-` chain that drops sources
//! outside the ranges, reached from `firewall-ips` for each external
//! address. Source ranges guard the external addresses only (kube-proxy
//! never applies them to NodePorts).

use ipnetwork::IpNetwork;
use portico_config::SourceRanges;

use super::{FragmentBuilder, PortPlan};
use crate::ruleset::Family;

impl FragmentBuilder<'_> {
    /// The unit's firewall chain and `firewall-ips` elements, when its
    /// Service restricts sources and the unit has external addresses.
    pub(super) fn firewall(&mut self, p: &PortPlan, source_ranges: &SourceRanges) {
        let family = p.unit.family;
        let external_ips = &p.unit.external_ips;
        let (restricted, ranges): (bool, Vec<IpNetwork>) = match source_ranges {
            SourceRanges::Any => (false, Vec::new()),
            SourceRanges::Invalid { .. } => (true, Vec::new()),
            SourceRanges::Only(nets) => (
                true,
                nets.iter()
                    .filter(|r| Family::of(&r.network()) == family)
                    .copied()
                    .collect(),
            ),
        };
        if !restricted || external_ips.is_empty() {
            return;
        }
        let rule = if ranges.is_empty() {
            // Fail closed: an unparsable range, or ranges of the other
            // family only, must never widen access.
            "drop".to_string()
        } else {
            let list: Vec<String> = ranges.iter().map(canonical).collect();
            format!(
                "{} saddr != {{ {} }} drop",
                family.nft_keyword(),
                list.join(", ")
            )
        };
        self.chain(&p.names.firewall, vec![rule]);
        for ext in external_ips {
            self.element(
                &format!("firewall-ips{}", p.sfx()),
                p.ip_key(*ext),
                format!("goto {}", p.names.firewall),
            );
        }
    }
}

/// A network in canonical form (host bits cleared), as nft demands.
fn canonical(net: &IpNetwork) -> String {
    format!("{}/{}", net.network(), net.prefix())
}
