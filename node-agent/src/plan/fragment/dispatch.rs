//! Where each key of a unit goes, as elements of the shared maps: its
//! ClusterIP key (by `internalTrafficPolicy`), its external keys (external
//! addresses and NodePort, by `externalTrafficPolicy`, with the `external-`
//! chain of a `Local` port and the masquerade marks of a `Cluster` one),
//! or the no-endpoint verdicts when no chain can take the traffic.

use super::{FragmentBuilder, PortPlan};

/// Where traffic for one key goes: a chain, or one of the no-endpoint verdicts.
#[derive(Clone)]
enum Target {
    Chain(String),
    /// No endpoint at all: reject.
    Reject,
    /// Endpoints exist but the traffic policy allows none from here: drop.
    Drop,
}

impl FragmentBuilder<'_> {
    /// The ClusterIP key.
    pub(super) fn cluster_ip_target(&mut self, p: &PortPlan) {
        let internal = if p.internal_local {
            if p.use_local_chain {
                Target::Chain(p.names.local.clone())
            } else {
                no_endpoints(p)
            }
        } else if p.use_cluster_chain {
            Target::Chain(p.names.service.clone())
        } else {
            Target::Reject
        };
        let sfx = p.sfx();
        if matches!(internal, Target::Chain(_)) && self.opts.masquerades_off_cluster(p.unit.family)
        {
            self.member(
                &format!("{}{sfx}", super::super::layout::CLUSTER_IP_MASQUERADE),
                p.ip_key(p.unit.cluster_ip),
            );
        }
        self.target(
            &format!("service-ips{sfx}"),
            &format!("no-endpoint-services{sfx}"),
            p.ip_key(p.unit.cluster_ip),
            internal,
        );
    }

    /// The external keys: each external address, then the NodePort.
    pub(super) fn external_targets(&mut self, p: &PortPlan) {
        let sfx = p.sfx();
        let (external, masquerade) = self.external_target(p);
        for ext in &p.unit.external_ips {
            if masquerade {
                self.member(&format!("external-masquerade{sfx}"), p.ip_key(*ext));
            }
            self.target(
                &format!("service-ips{sfx}"),
                &format!("no-endpoint-services{sfx}"),
                p.ip_key(*ext),
                external.clone(),
            );
        }
        if let Some(np) = p.unit.node_port {
            let key = format!("{} . {np}", p.proto);
            if masquerade {
                self.member(&format!("nodeport-masquerade{sfx}"), key.clone());
            }
            self.target(
                &format!("service-nodeports{sfx}"),
                &format!("no-endpoint-nodeports{sfx}"),
                key,
                external,
            );
        }
    }

    /// Where the external keys go, and whether they are marked for
    /// masquerade.
    ///
    /// Cluster policy: the `service-` chain itself, marked for masquerade
    /// by the `services` chain through the `*-masquerade` sets (see the
    /// `plan` module docs); no chain of its own. Local policy: an
    /// `external-` chain, as only it can tell traffic from this node (any
    /// endpoint, masqueraded) from traffic from outside (local endpoints,
    /// client address kept).
    fn external_target(&mut self, p: &PortPlan) -> (Target, bool) {
        let names = &p.names;
        if p.external_local {
            if p.use_local_chain {
                let mark = "jump mark-for-masquerade";
                self.chain(
                    &names.external,
                    vec![
                        // Traffic from this node itself may use any endpoint
                        // (masqueraded), as kube-proxy lets it.
                        format!("fib saddr type local {mark}"),
                        format!("fib saddr type local goto {}", names.service),
                        format!("goto {}", names.local),
                    ],
                );
                (Target::Chain(names.external.clone()), false)
            } else {
                (no_endpoints(p), false)
            }
        } else if p.use_cluster_chain {
            (Target::Chain(names.service.clone()), true)
        } else {
            (Target::Reject, false)
        }
    }

    fn target(&mut self, map: &str, no_endpoint_map: &str, key: String, target: Target) {
        match target {
            Target::Chain(chain) => self.element(map, key, format!("goto {chain}")),
            Target::Reject => self.element(no_endpoint_map, key, "goto reject-chain".to_string()),
            Target::Drop => self.element(no_endpoint_map, key, "drop".to_string()),
        }
    }
}

/// The verdict when the traffic policy leaves no chain: reject when the
/// Service has no endpoint at all, drop when only the policy leaves none.
fn no_endpoints(p: &PortPlan) -> Target {
    if p.cluster_eps.is_empty() {
        Target::Reject
    } else {
        Target::Drop
    }
}

#[cfg(test)]
mod tests {
    use portico_config::TrafficPolicy;

    use crate::plan::test_support::{node, service_chains, web, web_slice};
    use crate::plan::{plan, Plan, PlanOptions};

    #[test]
    fn only_external_keys_of_cluster_ports_with_endpoints_are_marked() {
        let mut svc = web(Some("portico"));
        svc.external_ips = vec!["203.0.113.10".parse().expect("ip")];
        let ext_key = "203.0.113.10 . tcp . 80";
        let np_key = "tcp . 30080";
        let members = |p: &Plan, set: &str| -> Vec<String> {
            p.ruleset.sets[set].elements.keys().cloned().collect()
        };
        let target = |p: &Plan, map: &str, key: &str| -> Option<String> {
            p.ruleset.sets[map].elements.get(key).cloned().flatten()
        };

        // Cluster: the external keys go to the service chain itself, and
        // are in the masquerade sets; the ClusterIP key is not.
        let p = plan(
            &[svc.clone()],
            &[web_slice()],
            &node(),
            &PlanOptions::default(),
        );
        let service = format!("goto {}", service_chains(&p)[0]);
        assert_eq!(target(&p, "service-ips", ext_key), Some(service.clone()));
        assert_eq!(target(&p, "service-nodeports", np_key), Some(service));
        assert_eq!(members(&p, "external-masquerade"), [ext_key]);
        assert_eq!(members(&p, "nodeport-masquerade"), [np_key]);
        assert!(
            p.ruleset.chains.keys().all(|c| !c.starts_with("external-")),
            "{:?}",
            p.ruleset.chains.keys()
        );

        // Local: an external- chain decides (from this node: masqueraded,
        // any endpoint; else local, client address kept); nothing is marked
        // by the sets.
        let mut local = svc.clone();
        local.external_traffic_policy = TrafficPolicy::Local;
        let p = plan(&[local], &[web_slice()], &node(), &PlanOptions::default());
        let external = target(&p, "service-nodeports", np_key).expect("a target");
        assert!(external.starts_with("goto external-"), "{external}");
        assert_eq!(target(&p, "service-ips", ext_key), Some(external));
        assert_eq!(members(&p, "external-masquerade"), Vec::<String>::new());
        assert_eq!(members(&p, "nodeport-masquerade"), Vec::<String>::new());

        // No endpoints: rejected in the filter hooks, never marked.
        let p = plan(&[svc], &[], &node(), &PlanOptions::default());
        assert_eq!(
            target(&p, "no-endpoint-services", ext_key).as_deref(),
            Some("goto reject-chain")
        );
        assert_eq!(members(&p, "external-masquerade"), Vec::<String>::new());
        assert_eq!(members(&p, "nodeport-masquerade"), Vec::<String>::new());
    }
}
