//! The `service-` and `local-` chains of a port WITH ClientIP affinity, in
//! kube-proxy's layout: an `endpoint-` chain per endpoint (hairpin mark,
//! `update @affinity-<chain>`, DNAT), then per policy chain the affinity
//! checks and `numgen random mod N vmap @endpoints-<chain>`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{FragmentBuilder, PortPlan};
use crate::plan::names::addr_port;
use crate::ruleset::{Family, Set};

impl FragmentBuilder<'_> {
    /// The unit's chains with affinity: its endpoint chains, each with its
    /// affinity set (entries live `timeout` seconds), and the policy chains
    /// dispatching to them.
    pub(super) fn affinity_chains(&mut self, p: &PortPlan, timeout: u64) {
        let family = p.unit.family;
        let ip = family.nft_keyword();
        let proto = p.proto;
        // kube-proxy's endpoint chains, each with its affinity set.
        let endpoint_names: BTreeMap<(IpAddr, u16), String> = p
            .used()
            .into_iter()
            .map(|(addr, target)| ((addr, target), p.names.endpoint(addr, target)))
            .collect();
        for (&(addr, target), chain) in &endpoint_names {
            let set = format!("affinity-{chain}");
            self.fragment.sets.insert(
                set.clone(),
                Set {
                    key: format!("type {}", family.nft_addr_type()),
                    value_type: None,
                    flags: vec!["dynamic".to_string(), "timeout".to_string()],
                    timeout_secs: Some(timeout),
                    elements: BTreeMap::new(),
                },
            );
            self.chain(
                chain,
                vec![
                    format!("{ip} saddr {addr} jump mark-for-masquerade"),
                    format!("update @{set} {{ {ip} saddr }}"),
                    format!(
                        "meta l4proto {proto} dnat {ip} to {}",
                        addr_port(addr, target)
                    ),
                ],
            );
        }
        if p.use_cluster_chain {
            self.dispatch(&endpoint_names, &p.names.service, &p.cluster_eps, family);
        }
        if p.use_local_chain {
            self.dispatch(&endpoint_names, &p.names.local, &p.local_eps, family);
        }
    }

    /// A chain with ClientIP affinity: back to the endpoint a client used
    /// before, else one of `eps` at random through the chain's own verdict
    /// map (`endpoints-<chain>`; few Services use affinity, so these named
    /// maps stay few).
    fn dispatch(
        &mut self,
        endpoint_names: &BTreeMap<(IpAddr, u16), String>,
        chain: &str,
        eps: &[(IpAddr, u16)],
        family: Family,
    ) {
        let ip = family.nft_keyword();
        let mut rules = Vec::new();
        for ep in eps {
            let endpoint = &endpoint_names[ep];
            rules.push(format!("{ip} saddr @affinity-{endpoint} goto {endpoint}"));
        }
        let map = format!("endpoints-{chain}");
        rules.push(format!("numgen random mod {} vmap @{map}", eps.len()));
        let elements = eps
            .iter()
            .enumerate()
            .map(|(n, ep)| (n.to_string(), Some(format!("goto {}", endpoint_names[ep]))))
            .collect();
        self.fragment.sets.insert(
            map,
            Set {
                // Only the type matters: numgen yields a 32-bit integer.
                key: "typeof numgen random mod 1".to_string(),
                value_type: Some("verdict".to_string()),
                elements,
                ..Set::default()
            },
        );
        self.chain(chain, rules);
    }
}
