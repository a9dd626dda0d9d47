//! The static layout: the base chains on the hooks, the masquerade and
//! reject chains, and per family the shared sets and maps every Service
//! adds its elements to, with the chains that dispatch on them. It exists
//! whatever the Services are (the shared sets without elements).

use super::PlanOptions;
use crate::ruleset::{BaseChain, Chain, Family, Ruleset, Set};

/// The chains and shared sets and maps that exist whatever the Services are.
pub(super) fn static_layout(opts: &PlanOptions) -> Ruleset {
    let mut r = Ruleset::default();
    let mark = format!("{:#x}", opts.masquerade_mark);
    let set_mark = format!("meta mark set meta mark | {mark}");
    base_chains(&mut r);
    masquerade_and_reject_chains(&mut r, &mark, &set_mark);
    for family in Family::ALL {
        shared_sets(&mut r, family, opts);
    }
    dispatch_chains(&mut r, &set_mark, opts);
    r
}

/// The base chains, each jumping to the regular chain that does the work.
fn base_chains(r: &mut Ruleset) {
    let mut base = |name: &str, kind: &str, hook: &str, priority: &str, rules: &[&str]| {
        r.chains.insert(
            name.to_string(),
            Chain {
                base: Some(BaseChain {
                    kind: kind.to_string(),
                    hook: hook.to_string(),
                    priority: priority.to_string(),
                }),
                rules: rules.iter().map(ToString::to_string).collect(),
            },
        );
    };
    // Filter hooks run before (prerouting, dstnat - 10) or after DNAT
    // (input/forward/output at -110 see packets that found no DNAT).
    base(
        "filter-prerouting",
        "filter",
        "prerouting",
        "dstnat - 10",
        &["ct state new jump firewall-check"],
    );
    base(
        "filter-input",
        "filter",
        "input",
        "-110",
        &[
            "ct state new jump nodeport-endpoints-check",
            "ct state new jump service-endpoints-check",
        ],
    );
    base(
        "filter-forward",
        "filter",
        "forward",
        "-110",
        &["ct state new jump service-endpoints-check"],
    );
    base(
        "filter-output",
        "filter",
        "output",
        "-110",
        &[
            "ct state new jump service-endpoints-check",
            "ct state new jump firewall-check",
        ],
    );
    base(
        "nat-prerouting",
        "nat",
        "prerouting",
        "dstnat",
        &["jump services"],
    );
    base("nat-output", "nat", "output", "-100", &["jump services"]);
    base(
        "nat-postrouting",
        "nat",
        "postrouting",
        "srcnat",
        &["jump masquerading"],
    );
}

/// `mark-for-masquerade`, `masquerading` (hairpin marks, then masquerade
/// what is marked) and `reject-chain`.
fn masquerade_and_reject_chains(r: &mut Ruleset, mark: &str, set_mark: &str) {
    let mut chain = |name: &str, rules: Vec<String>| {
        r.chains
            .insert(name.to_string(), Chain { base: None, rules });
    };
    chain("mark-for-masquerade", vec![set_mark.to_string()]);
    let mut masquerading = Vec::new();
    for family in Family::ALL {
        let ip = family.nft_keyword();
        // A pod that reached itself through a Service (DNATed back to its
        // own address) must see another source, or it answers itself.
        masquerading.push(format!(
            "ct status dnat {ip} saddr . {ip} daddr @hairpin-endpoints{} jump mark-for-masquerade",
            family.map_suffix()
        ));
    }
    masquerading.extend([
        format!("meta mark & {mark} == 0 return"),
        // Clear the bit so a re-routed packet is not masqueraded twice.
        format!("meta mark set meta mark ^ {mark}"),
        "masquerade fully-random".to_string(),
    ]);
    chain("masquerading", masquerading);
    chain(
        "reject-chain",
        vec![
            // A TCP client sees "connection refused" at once.
            "meta l4proto tcp reject with tcp reset".to_string(),
            "reject with icmpx port-unreachable".to_string(),
        ],
    );
}

/// One family's shared sets and maps, without elements (the ClusterIP
/// masquerade set only with cluster CIDRs of the family).
fn shared_sets(r: &mut Ruleset, family: Family, opts: &PlanOptions) {
    let sfx = family.map_suffix();
    let addr = family.nft_addr_type();
    let addr_key = format!("type {addr} . inet_proto . inet_service");
    let verdict_map = |key: String| Set {
        key,
        value_type: Some("verdict".to_string()),
        ..Set::default()
    };
    for map in ["service-ips", "no-endpoint-services", "firewall-ips"] {
        r.sets
            .insert(format!("{map}{sfx}"), verdict_map(addr_key.clone()));
    }
    for map in ["service-nodeports", "no-endpoint-nodeports"] {
        r.sets.insert(
            format!("{map}{sfx}"),
            verdict_map("type inet_proto . inet_service".to_string()),
        );
    }
    r.sets.insert(
        format!("hairpin-endpoints{sfx}"),
        Set {
            key: format!("type {addr} . {addr}"),
            ..Set::default()
        },
    );
    r.sets.insert(
        format!("external-masquerade{sfx}"),
        Set {
            key: addr_key.clone(),
            ..Set::default()
        },
    );
    r.sets.insert(
        format!("nodeport-masquerade{sfx}"),
        Set {
            key: "type inet_proto . inet_service".to_string(),
            ..Set::default()
        },
    );
    if opts.cluster_cidrs_of(family).is_some() {
        r.sets.insert(
            format!("{CLUSTER_IP_MASQUERADE}{sfx}"),
            Set {
                key: addr_key,
                ..Set::default()
            },
        );
    }
}

/// The set of ClusterIP keys (`addr . l4proto . port`, with `6` for IPv6)
/// marked for masquerade when the source is outside the cluster CIDRs.
pub(super) const CLUSTER_IP_MASQUERADE: &str = "cluster-ip-masquerade";

/// The chains that look the shared maps up, both families in order:
/// `services` (masquerade marks and the dispatch to Service chains),
/// `firewall-check` and the two no-endpoint checks.
fn dispatch_chains(r: &mut Ruleset, set_mark: &str, opts: &PlanOptions) {
    let mut services = Vec::new();
    let mut firewall = Vec::new();
    let mut endpoints_check = Vec::new();
    let mut nodeports_check = Vec::new();
    for family in Family::ALL {
        let ip = family.nft_keyword();
        let sfx = family.map_suffix();
        let lo = family.loopback();
        // Each mark comes right before the dispatch that goes on with the
        // same key, so only traffic sent to a `service-` chain is marked.
        let nodeport = format!("fib daddr type local {ip} daddr != {lo} meta l4proto . th dport");
        if let Some(cidrs) = opts.cluster_cidrs_of(family) {
            // kube-proxy's `--cluster-cidr`: a ClusterIP reached from
            // outside the pod ranges is masqueraded.
            services.push(format!(
                "{ip} saddr != {cidrs} {ip} daddr . meta l4proto . th dport @{CLUSTER_IP_MASQUERADE}{sfx} {set_mark}"
            ));
        }
        services.extend([
            format!("{ip} daddr . meta l4proto . th dport @external-masquerade{sfx} {set_mark}"),
            format!("{ip} daddr . meta l4proto . th dport vmap @service-ips{sfx}"),
            format!("{nodeport} @nodeport-masquerade{sfx} {set_mark}"),
            format!("{nodeport} vmap @service-nodeports{sfx}"),
        ]);
        firewall.push(format!(
            "{ip} daddr . meta l4proto . th dport vmap @firewall-ips{sfx}"
        ));
        endpoints_check.push(format!(
            "{ip} daddr . meta l4proto . th dport vmap @no-endpoint-services{sfx}"
        ));
        nodeports_check.push(format!(
            "fib daddr type local {ip} daddr != {lo} meta l4proto . th dport vmap @no-endpoint-nodeports{sfx}"
        ));
    }
    let mut chain = |name: &str, rules: Vec<String>| {
        r.chains
            .insert(name.to_string(), Chain { base: None, rules });
    };
    chain("services", services);
    chain("firewall-check", firewall);
    chain("service-endpoints-check", endpoints_check);
    chain("nodeport-endpoints-check", nodeports_check);
}

#[cfg(test)]
mod tests {
    use super::super::test_support::node;
    use crate::plan::{plan, PlanOptions};

    #[test]
    fn masquerade_mark_is_configurable() {
        let opts = PlanOptions {
            masquerade_mark: 0x8000,
            ..PlanOptions::default()
        };
        let p = plan(&[], &[], &node(), &opts);
        assert_eq!(
            p.ruleset.chains["mark-for-masquerade"].rules,
            ["meta mark set meta mark | 0x8000"]
        );
        let services = &p.ruleset.chains["services"].rules;
        let marks: Vec<_> = services
            .iter()
            .filter(|r| r.contains("meta mark set"))
            .collect();
        assert_eq!(marks.len(), 4, "{services:?}");
        assert!(
            marks
                .iter()
                .all(|r| r.ends_with("meta mark set meta mark | 0x8000")),
            "{marks:?}"
        );
        assert_eq!(p.skipped, []);
    }

    #[test]
    fn cluster_cidrs_mark_clusterip_traffic_from_outside_them_per_family() {
        use crate::plan::test_support::{web, web_slice};
        let opts = PlanOptions {
            cluster_cidrs: vec![
                "10.244.0.0/16".parse().unwrap(),
                "10.245.0.0/16".parse().unwrap(),
            ],
            ..PlanOptions::default()
        };
        let p = plan(&[web(Some("portico"))], &[web_slice()], &node(), &opts);
        let services = &p.ruleset.chains["services"].rules;
        assert_eq!(
            services[0],
            format!(
                "ip saddr != {{ 10.244.0.0/16, 10.245.0.0/16 }} ip daddr . meta l4proto . th dport @cluster-ip-masquerade meta mark set meta mark | {:#x}",
                opts.masquerade_mark
            )
        );
        assert!(
            !services.iter().any(|r| r.contains("ip6 saddr !=")),
            "no IPv6 range, no IPv6 mark: {services:?}"
        );
        assert!(!p.ruleset.sets.contains_key("cluster-ip-masquerade6"));
        let keys: Vec<&String> = p.ruleset.sets["cluster-ip-masquerade"]
            .elements
            .keys()
            .collect();
        assert_eq!(keys.len(), 1, "web's ClusterIP key: {keys:?}");
        assert!(p.ruleset.sets["service-ips"].elements.contains_key(keys[0]));
        // Without the option, nothing of it.
        let plain = plan(
            &[web(Some("portico"))],
            &[web_slice()],
            &node(),
            &PlanOptions::default(),
        );
        assert!(!plain.ruleset.sets.contains_key("cluster-ip-masquerade"));
        assert!(!plain.ruleset.chains["services"].rules[0].contains("saddr"));
    }
}
