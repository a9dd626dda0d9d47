//! The planner: Services + EndpointSlices + this Node -> the desired
//! [`Ruleset`]. Pure: no IO, no clock, deterministic output for a given input.
//!
//! The layout follows kube-proxy's nftables mode (KEP-3866):
//! - verdict maps keyed `addr . l4proto . port` send ClusterIP and external
//!   (LB / external IP) traffic to a per-Service-port chain (`service-ips`);
//!   NodePorts are keyed `l4proto . port` and matched after
//!   `fib daddr type local` (`service-nodeports`);
//! - `service-` chains pick any usable endpoint, `local-` chains one on this
//!   node, by `numgen random mod N vmap @endpoints-<chain>` (a named map per
//!   chain: the kernel walks the whole transaction each time a rule binds
//!   an anonymous set, which made full resyncs quadratic);
//!   `external-` chains mark for
//!   masquerade (`externalTrafficPolicy: Cluster`) or not (`Local`);
//! - `endpoint-` chains DNAT (and mark hairpin traffic);
//! - ports without a usable endpoint go into `no-endpoint-services` /
//!   `no-endpoint-nodeports`, checked in the filter hooks (reject is not
//!   allowed in nat chains): reject when the Service has no endpoint at all,
//!   drop when only the traffic policy leaves none;
//! - `firewall-ips` sends new connections to an LB address through a
//!   `firewall-` chain that drops sources outside `loadBalancerSourceRanges`.
//!
//! IPv4 and IPv6 each get their own maps (IPv6 names end in `6`) and chains.
//! Bad input is skipped at the smallest scope that keeps the rules correct
//! (one endpoint, one Service port, one Service) and reported as a
//! [`Skipped`]; every other Service keeps its rules.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use portico_config::cluster::{
    AddressType, ClusterService, ClusterServicePort, EndpointSlice, NodeInfo, ServiceType,
    TargetPort, DEFAULT_PROXY_NAME,
};
use portico_config::{Protocol, ServiceKey, SessionAffinity, TrafficPolicy};
use xxhash_rust::xxh3::xxh3_64;

use crate::ruleset::{BaseChain, Chain, Family, Ruleset, Set};

/// The packet mark bit kube-proxy uses for "masquerade this connection".
pub const DEFAULT_MASQUERADE_MARK: u32 = 0x4000;

/// Longest chain name we generate. nft allows 256 bytes (with the NUL);
/// set names add `affinity-` or `endpoints-` to a chain's name and must fit
/// too.
pub const MAX_CHAIN_NAME: usize = 200;

/// Settings of the planner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOptions {
    /// Only Services whose `service.kubernetes.io/service-proxy-name` label
    /// equals this are handled.
    pub proxy_name: String,
    /// The mark bit that asks `nat-postrouting` to masquerade a connection.
    pub masquerade_mark: u32,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            proxy_name: DEFAULT_PROXY_NAME.to_string(),
            masquerade_mark: DEFAULT_MASQUERADE_MARK,
        }
    }
}

/// A piece of input the planner could not program, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Skipped {
    /// The object (`Service default/web`, `EndpointSlice default/web-abc`).
    pub object: String,
    /// The offending field (`spec.ports[1].nodePort`).
    pub field: String,
    /// What is wrong and what was left out.
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.object, self.field, self.reason)
    }
}

/// What the planner decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// The desired content of the agent's table.
    pub ruleset: Ruleset,
    /// Input left out, sorted and without duplicates.
    pub skipped: Vec<Skipped>,
}

/// Plans the ruleset for `node` from every Service and EndpointSlice.
///
/// Services are handled in key order and ports in spec order, so when two
/// Services claim the same NodePort or external address and port, the first
/// by key keeps it and the other port is reported.
pub fn plan(
    services: &[ClusterService],
    slices: &[EndpointSlice],
    node: &NodeInfo,
    opts: &PlanOptions,
) -> Plan {
    let mut planner = Planner::new(node, opts);

    let mut slices_by_service: BTreeMap<&ServiceKey, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        slices_by_service
            .entry(&slice.service)
            .or_default()
            .push(slice);
    }
    for list in slices_by_service.values_mut() {
        list.sort_by(|a, b| a.key.cmp(&b.key));
    }

    let mut ours: Vec<&ClusterService> = services
        .iter()
        .filter(|s| s.proxy_name.as_deref() == Some(opts.proxy_name.as_str()))
        .collect();
    ours.sort_by(|a, b| a.key.cmp(&b.key));

    for svc in ours {
        let svc_slices = slices_by_service
            .get(&svc.key)
            .map(Vec::as_slice)
            .unwrap_or_default();
        planner.service(svc, svc_slices);
    }

    let mut skipped = std::mem::take(&mut planner.skipped);
    skipped.sort();
    skipped.dedup();
    Plan {
        ruleset: planner.finish(),
        skipped,
    }
}

/// An endpoint usable for one Service port, merged over slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct EndpointState {
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

type EndpointMap = BTreeMap<(IpAddr, u16), EndpointState>;

/// The NodePort and external `addr . proto . port` keys already taken, with
/// the Service that took them.
#[derive(Default)]
struct Claims {
    node_ports: BTreeMap<(Family, Protocol, u16), ServiceKey>,
    external: BTreeMap<(IpAddr, Protocol, u16), ServiceKey>,
}

/// The planner's working state for one `plan` call.
struct Planner<'a> {
    node: &'a NodeInfo,
    opts: &'a PlanOptions,
    ruleset: Ruleset,
    /// Chains in creation order, sorted into `ruleset.chains` at the end:
    /// one bulk build instead of a tree search (a cache miss per level) for
    /// each of hundreds of thousands of chains.
    chains: Vec<(String, Chain)>,
    skipped: Vec<Skipped>,
    claims: Claims,
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

fn service_object(key: &ServiceKey) -> String {
    format!("Service {key}")
}

fn slice_object(key: &ServiceKey) -> String {
    format!("EndpointSlice {key}")
}

/// Formats an address for a DNAT target (`[v6]:port`).
fn addr_port(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// A short, stable hash of a chain's identity (8 characters of base32,
/// as kube-proxy does), so names are unique even after truncation and
/// sanitising.
fn short_hash(identity: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let h = xxh3_64(identity.as_bytes());
    (0..8)
        .map(|i| ALPHABET[((h >> (59 - 5 * i)) & 31) as usize] as char)
        .collect()
}

/// `prefix-HASH-readable`, with characters nft does not accept in an
/// unquoted name replaced and the whole cut to [`MAX_CHAIN_NAME`].
fn object_name(prefix: &str, identity: &str, readable: &str) -> String {
    let clean: String = readable
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '/' | '.' | '_' | '-' => c,
            // IPv6 endpoint addresses; the hash keeps names unique.
            ':' => '.',
            _ => '_',
        })
        .collect();
    let mut name = format!("{prefix}-{}-{clean}", short_hash(identity));
    // Only ASCII is left, so any byte index is a char boundary.
    name.truncate(MAX_CHAIN_NAME);
    name
}

/// The names of one Service port's chains in one family.
struct PortNames {
    id: String,
    hash_base: String,
    service: String,
    local: String,
    external: String,
    firewall: String,
}

impl PortNames {
    fn new(key: &ServiceKey, port: &ClusterServicePort, family: Family) -> PortNames {
        let port_id = if port.name.is_empty() {
            port.port.to_string()
        } else {
            port.name.clone()
        };
        let id = format!(
            "{}/{}/{}/{}",
            key.namespace,
            key.name,
            proto_name(port.protocol),
            port_id
        );
        let hash_base = format!("{}/{id}", family.nft_keyword());
        let name = |prefix: &str| object_name(prefix, &format!("{prefix}/{hash_base}"), &id);
        PortNames {
            service: name("service"),
            local: name("local"),
            external: name("external"),
            firewall: name("firewall"),
            id,
            hash_base,
        }
    }

    fn endpoint(&self, addr: IpAddr, port: u16) -> String {
        let readable = format!("{}__{addr}/{port}", self.id);
        object_name(
            "endpoint",
            &format!("endpoint/{}/{addr}/{port}", self.hash_base),
            &readable,
        )
    }
}

/// A Service's addresses in one family.
struct FamilyAddrs {
    family: Family,
    cluster_ip: IpAddr,
    external_ips: Vec<IpAddr>,
}

/// Where traffic for one key goes: a chain, or one of the no-endpoint verdicts.
#[derive(Clone)]
enum Target {
    Chain(String),
    /// No endpoint at all: reject.
    Reject,
    /// Endpoints exist but the traffic policy allows none from here: drop.
    Drop,
}

impl<'a> Planner<'a> {
    fn new(node: &'a NodeInfo, opts: &'a PlanOptions) -> Planner<'a> {
        let mut planner = Planner {
            node,
            opts,
            ruleset: Ruleset::default(),
            chains: Vec::new(),
            skipped: Vec::new(),
            claims: Claims::default(),
        };
        planner.static_layout();
        planner
    }

    // No logging here: the planner stays pure; the caller logs `Plan::skipped`.
    fn skip(&mut self, object: String, field: String, reason: String) {
        self.skipped.push(Skipped {
            object,
            field,
            reason,
        });
    }

    /// The ruleset, with every chain in it (a later chain of the same name
    /// replaces an earlier one).
    fn finish(mut self) -> Ruleset {
        let mut chains = std::mem::take(&mut self.chains);
        // Stable: chains of one name stay in creation order, the last kept.
        chains.sort_by(|a, b| a.0.cmp(&b.0));
        let mut unique: Vec<(String, Chain)> = Vec::with_capacity(chains.len());
        for (name, chain) in chains {
            match unique.last_mut() {
                Some(last) if last.0 == name => last.1 = chain,
                _ => unique.push((name, chain)),
            }
        }
        self.ruleset.chains = unique.into_iter().collect();
        self.ruleset
    }

    fn chain(&mut self, name: &str, rules: Vec<String>) {
        self.chains
            .push((name.to_string(), Chain { base: None, rules }));
    }

    fn base_chain(&mut self, name: &str, kind: &str, hook: &str, priority: &str, rules: &[&str]) {
        self.chains.push((
            name.to_string(),
            Chain {
                base: Some(BaseChain {
                    kind: kind.to_string(),
                    hook: hook.to_string(),
                    priority: priority.to_string(),
                }),
                rules: rules.iter().map(ToString::to_string).collect(),
            },
        ));
    }

    fn verdict_map(&mut self, name: String, key: String) {
        self.ruleset.sets.insert(
            name,
            Set {
                key,
                value_type: Some("verdict".to_string()),
                ..Set::default()
            },
        );
    }

    fn element(&mut self, map: &str, key: String, value: String) {
        if let Some(set) = self.ruleset.sets.get_mut(map) {
            set.elements.insert(key, Some(value));
        }
    }

    /// The chains and maps that exist whatever the Services are.
    fn static_layout(&mut self) {
        let mark = format!("{:#x}", self.opts.masquerade_mark);
        // Filter hooks run before (prerouting, dstnat - 10) or after DNAT
        // (input/forward/output at -110 see packets that found no DNAT).
        self.base_chain(
            "filter-prerouting",
            "filter",
            "prerouting",
            "dstnat - 10",
            &["ct state new jump firewall-check"],
        );
        self.base_chain(
            "filter-input",
            "filter",
            "input",
            "-110",
            &[
                "ct state new jump nodeport-endpoints-check",
                "ct state new jump service-endpoints-check",
            ],
        );
        self.base_chain(
            "filter-forward",
            "filter",
            "forward",
            "-110",
            &["ct state new jump service-endpoints-check"],
        );
        self.base_chain(
            "filter-output",
            "filter",
            "output",
            "-110",
            &[
                "ct state new jump service-endpoints-check",
                "ct state new jump firewall-check",
            ],
        );
        self.base_chain(
            "nat-prerouting",
            "nat",
            "prerouting",
            "dstnat",
            &["jump services"],
        );
        self.base_chain("nat-output", "nat", "output", "-100", &["jump services"]);
        self.base_chain(
            "nat-postrouting",
            "nat",
            "postrouting",
            "srcnat",
            &["jump masquerading"],
        );
        self.chain(
            "mark-for-masquerade",
            vec![format!("meta mark set meta mark | {mark}")],
        );
        self.chain(
            "masquerading",
            vec![
                format!("meta mark & {mark} == 0 return"),
                // Clear the bit so a re-routed packet is not masqueraded twice.
                format!("meta mark set meta mark ^ {mark}"),
                "masquerade fully-random".to_string(),
            ],
        );
        self.chain(
            "reject-chain",
            vec![
                // A TCP client sees "connection refused" at once.
                "meta l4proto tcp reject with tcp reset".to_string(),
                "reject with icmpx port-unreachable".to_string(),
            ],
        );

        let mut services = Vec::new();
        let mut firewall = Vec::new();
        let mut endpoints_check = Vec::new();
        let mut nodeports_check = Vec::new();
        for family in Family::ALL {
            let ip = family.nft_keyword();
            let sfx = family.map_suffix();
            let lo = family.loopback();
            let addr_key = format!(
                "type {} . inet_proto . inet_service",
                family.nft_addr_type()
            );
            for map in ["service-ips", "no-endpoint-services", "firewall-ips"] {
                self.verdict_map(format!("{map}{sfx}"), addr_key.clone());
            }
            for map in ["service-nodeports", "no-endpoint-nodeports"] {
                self.verdict_map(
                    format!("{map}{sfx}"),
                    "type inet_proto . inet_service".to_string(),
                );
            }
            services.push(format!(
                "{ip} daddr . meta l4proto . th dport vmap @service-ips{sfx}"
            ));
            services.push(format!(
                "fib daddr type local {ip} daddr != {lo} meta l4proto . th dport vmap @service-nodeports{sfx}"
            ));
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
        self.chain("services", services);
        self.chain("firewall-check", firewall);
        self.chain("service-endpoints-check", endpoints_check);
        self.chain("nodeport-endpoints-check", nodeports_check);
    }

    fn service(&mut self, svc: &ClusterService, slices: &[&EndpointSlice]) {
        let object = service_object(&svc.key);
        if svc.service_type == ServiceType::ExternalName {
            return;
        }
        if svc.cluster_ips.is_empty() {
            // A headless ClusterIP Service has nothing to program; a
            // NodePort or LoadBalancer one without a ClusterIP is broken.
            if svc.service_type != ServiceType::ClusterIp {
                self.skip(
                    object,
                    "spec.clusterIPs".to_string(),
                    format!(
                        "missing ClusterIP on a {:?} Service; all its ports skipped",
                        svc.service_type
                    ),
                );
            }
            return;
        }

        // One address per family: the first, as Kubernetes orders them.
        let mut cluster_ip: BTreeMap<Family, IpAddr> = BTreeMap::new();
        for (i, ip) in svc.cluster_ips.iter().enumerate() {
            let family = Family::of(ip);
            match cluster_ip.entry(family) {
                Entry::Vacant(slot) => {
                    slot.insert(*ip);
                }
                Entry::Occupied(_) => self.skip(
                    object.clone(),
                    format!("spec.clusterIPs[{i}]"),
                    format!("{ip}: a second {family} ClusterIP; ignored"),
                ),
            }
        }
        let mut external_ips: BTreeMap<Family, Vec<IpAddr>> = BTreeMap::new();
        for (i, ip) in svc.external_ips.iter().enumerate() {
            let family = Family::of(ip);
            if !cluster_ip.contains_key(&family) {
                self.skip(
                    object.clone(),
                    format!("externalIPs[{i}]"),
                    format!("{ip}: the Service has no {family} ClusterIP; address ignored"),
                );
                continue;
            }
            let list = external_ips.entry(family).or_default();
            if !list.contains(ip) {
                list.push(*ip);
            }
        }
        if !svc.invalid_source_ranges.is_empty() && !svc.external_ips.is_empty() {
            self.skip(
                object.clone(),
                "spec.loadBalancerSourceRanges".to_string(),
                format!(
                    "unparsable range(s) {:?}; the Service's external addresses accept no client",
                    svc.invalid_source_ranges
                ),
            );
        }

        let mut seen_ports: BTreeMap<(Protocol, u16), usize> = BTreeMap::new();
        let mut seen_names: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, port) in svc.ports.iter().enumerate() {
            let field = format!("spec.ports[{i}]");
            if port.port == 0 {
                self.skip(
                    object.clone(),
                    format!("{field}.port"),
                    "0 is outside 1-65535; port skipped".to_string(),
                );
                continue;
            }
            if port.node_port == Some(0) {
                self.skip(
                    object.clone(),
                    format!("{field}.nodePort"),
                    "0 is outside 1-65535; port skipped".to_string(),
                );
                continue;
            }
            if port.target_port == TargetPort::Number(0) {
                self.skip(
                    object.clone(),
                    format!("{field}.targetPort"),
                    "0 is outside 1-65535; port skipped".to_string(),
                );
                continue;
            }
            if let Some(first) = first_claim(&mut seen_ports, (port.protocol, port.port), i) {
                self.skip(
                    object.clone(),
                    format!("{field}.port"),
                    format!(
                        "{}/{} duplicates spec.ports[{first}]; port skipped",
                        port.port, port.protocol
                    ),
                );
                continue;
            }
            if let Some(first) = first_claim(&mut seen_names, port.name.as_str(), i) {
                self.skip(
                    object.clone(),
                    format!("{field}.name"),
                    format!(
                        "{:?} duplicates spec.ports[{first}]; port skipped",
                        port.name
                    ),
                );
                continue;
            }
            for (&family, &cluster_ip) in &cluster_ip {
                let addrs = FamilyAddrs {
                    family,
                    cluster_ip,
                    external_ips: external_ips.get(&family).cloned().unwrap_or_default(),
                };
                self.service_port(svc, i, port, &addrs, slices);
            }
        }
    }

    /// Collects the endpoints of one Service port in one family, skipping
    /// (and reporting) unusable ones.
    fn endpoints(
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
            let target = match (sp.port, &port.target_port) {
                (Some(p), _) => p,
                (None, TargetPort::Number(n)) => *n,
                (None, TargetPort::Name(name)) => {
                    self.skip(
                        slice_object(&slice.key),
                        format!("ports[{pi}].port"),
                        format!(
                            "missing; named targetPort {name:?} cannot be resolved; slice skipped for this port"
                        ),
                    );
                    continue;
                }
            };
            if target == 0 {
                self.skip(
                    slice_object(&slice.key),
                    format!("ports[{pi}].port"),
                    "0 is outside 1-65535; slice skipped for this port".to_string(),
                );
                continue;
            }
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
                let local = ep.node_name.as_deref() == Some(self.node.name.as_str());
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

    /// Plans one Service port in one family: its chains and map elements.
    fn service_port(
        &mut self,
        svc: &ClusterService,
        index: usize,
        port: &ClusterServicePort,
        addrs: &FamilyAddrs,
        slices: &[&EndpointSlice],
    ) {
        let FamilyAddrs {
            family,
            cluster_ip,
            ref external_ips,
        } = *addrs;
        let object = service_object(&svc.key);
        let proto = proto_name(port.protocol);
        let sfx = family.map_suffix();
        let ip = family.nft_keyword();
        let names = PortNames::new(&svc.key, port, family);

        // Claim the external keys first: a port that collides is skipped as
        // a whole, so the rules never half-apply.
        let node_port = if matches!(
            svc.service_type,
            ServiceType::NodePort | ServiceType::LoadBalancer
        ) {
            port.node_port
        } else {
            None
        };
        if let Some(np) = node_port {
            if let Some(owner) = self.claims.node_ports.get(&(family, port.protocol, np)) {
                let owner = owner.clone();
                self.skip(
                    object,
                    format!("spec.ports[{index}].nodePort"),
                    format!(
                        "{np}/{} already used by Service {owner}; port skipped",
                        port.protocol
                    ),
                );
                return;
            }
        }
        for ext in external_ips {
            if let Some(owner) = self.claims.external.get(&(*ext, port.protocol, port.port)) {
                let owner = owner.clone();
                self.skip(
                    object,
                    format!("spec.ports[{index}].port"),
                    format!(
                        "{} on {ext} already used by Service {owner}; port skipped",
                        port.port
                    ),
                );
                return;
            }
        }
        if let Some(np) = node_port {
            self.claims
                .node_ports
                .insert((family, port.protocol, np), svc.key.clone());
        }
        for ext in external_ips {
            self.claims
                .external
                .insert((*ext, port.protocol, port.port), svc.key.clone());
        }

        let endpoints = self.endpoints(port, family, slices);
        // Terminating (but still serving) endpoints only when no ready one
        // exists, separately for the cluster-wide and the local choice.
        let pick = |only_local: bool| -> Vec<(IpAddr, u16)> {
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
        };
        let cluster_eps = pick(false);
        let local_eps = pick(true);

        let has_external = node_port.is_some() || !external_ips.is_empty();
        let internal_local = svc.internal_traffic_policy == TrafficPolicy::Local;
        let external_local = svc.external_traffic_policy == TrafficPolicy::Local;
        let use_cluster_chain = !cluster_eps.is_empty() && (!internal_local || has_external);
        let use_local_chain =
            !local_eps.is_empty() && (internal_local || (has_external && external_local));

        let affinity = match svc.session_affinity {
            SessionAffinity::None => None,
            SessionAffinity::ClientIp { timeout } => Some(timeout.as_secs().max(1)),
        };

        // Endpoint chains (and their affinity sets) for every endpoint a
        // policy chain can pick.
        let mut used: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
        if use_cluster_chain {
            used.extend(cluster_eps.iter().copied());
        }
        if use_local_chain {
            used.extend(local_eps.iter().copied());
        }
        // Each endpoint's chain name, computed once (the policy chains name
        // them again).
        let endpoint_names: BTreeMap<(IpAddr, u16), String> = used
            .iter()
            .map(|&(addr, target)| ((addr, target), names.endpoint(addr, target)))
            .collect();
        for (&(addr, target), chain) in &endpoint_names {
            let mut rules = vec![format!("{ip} saddr {addr} jump mark-for-masquerade")];
            if let Some(timeout) = affinity {
                let set = format!("affinity-{chain}");
                self.ruleset.sets.insert(
                    set.clone(),
                    Set {
                        key: format!("type {}", family.nft_addr_type()),
                        value_type: None,
                        flags: vec!["dynamic".to_string(), "timeout".to_string()],
                        timeout_secs: Some(timeout),
                        elements: BTreeMap::new(),
                    },
                );
                rules.push(format!("update @{set} {{ {ip} saddr }}"));
            }
            rules.push(format!(
                "meta l4proto {proto} dnat {ip} to {}",
                addr_port(addr, target)
            ));
            self.chain(chain, rules);
        }

        if use_cluster_chain {
            self.dispatch(
                &endpoint_names,
                &names.service,
                &cluster_eps,
                family,
                affinity,
            );
        }
        if use_local_chain {
            self.dispatch(&endpoint_names, &names.local, &local_eps, family, affinity);
        }

        let no_endpoints = if cluster_eps.is_empty() {
            Target::Reject
        } else {
            Target::Drop
        };

        // ClusterIP traffic.
        let internal = if internal_local {
            if use_local_chain {
                Target::Chain(names.local.clone())
            } else {
                no_endpoints.clone()
            }
        } else if use_cluster_chain {
            Target::Chain(names.service.clone())
        } else {
            Target::Reject
        };
        let ip_key = |addr: IpAddr| format!("{addr} . {proto} . {}", port.port);
        self.target(
            &format!("service-ips{sfx}"),
            &format!("no-endpoint-services{sfx}"),
            ip_key(cluster_ip),
            internal,
        );

        if !has_external {
            return;
        }
        let external = if external_local {
            if use_local_chain {
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
                Target::Chain(names.external.clone())
            } else {
                no_endpoints.clone()
            }
        } else if use_cluster_chain {
            self.chain(
                &names.external,
                vec![
                    "jump mark-for-masquerade".to_string(),
                    format!("goto {}", names.service),
                ],
            );
            Target::Chain(names.external.clone())
        } else {
            Target::Reject
        };
        for ext in external_ips {
            let target = external.clone();
            self.target(
                &format!("service-ips{sfx}"),
                &format!("no-endpoint-services{sfx}"),
                ip_key(*ext),
                target,
            );
        }
        if let Some(np) = node_port {
            self.target(
                &format!("service-nodeports{sfx}"),
                &format!("no-endpoint-nodeports{sfx}"),
                format!("{proto} . {np}"),
                external,
            );
        }

        // Source ranges guard the external addresses only (kube-proxy never
        // applies them to NodePorts).
        let ranges: Vec<IpNetwork> = svc
            .source_ranges
            .iter()
            .filter(|r| Family::of(&r.network()) == family)
            .copied()
            .collect();
        let restricted = !svc.source_ranges.is_empty() || !svc.invalid_source_ranges.is_empty();
        if restricted && !external_ips.is_empty() {
            let rule = if !svc.invalid_source_ranges.is_empty() || ranges.is_empty() {
                // Fail closed: an unparsable range, or ranges of the other
                // family only, must never widen access.
                "drop".to_string()
            } else {
                let list: Vec<String> = ranges.iter().map(canonical).collect();
                format!("{ip} saddr != {{ {} }} drop", list.join(", "))
            };
            self.chain(&names.firewall, vec![rule]);
            for ext in external_ips {
                self.element(
                    &format!("firewall-ips{sfx}"),
                    ip_key(*ext),
                    format!("goto {}", names.firewall),
                );
            }
        }
    }

    /// A chain that picks one of `eps` at random through its own verdict
    /// map (`endpoints-<chain>`), after the affinity checks.
    ///
    /// A named map rather than an anonymous `vmap { ... }`: the kernel walks
    /// the whole transaction each time a rule binds an anonymous set, which
    /// made a full resync of a few thousand Services take minutes.
    fn dispatch(
        &mut self,
        endpoint_names: &BTreeMap<(IpAddr, u16), String>,
        chain: &str,
        eps: &[(IpAddr, u16)],
        family: Family,
        affinity: Option<u64>,
    ) {
        let ip = family.nft_keyword();
        let mut rules = Vec::new();
        if affinity.is_some() {
            for ep in eps {
                let endpoint = &endpoint_names[ep];
                rules.push(format!("{ip} saddr @affinity-{endpoint} goto {endpoint}"));
            }
        }
        let map = format!("endpoints-{chain}");
        rules.push(format!("numgen random mod {} vmap @{map}", eps.len()));
        let elements = eps
            .iter()
            .enumerate()
            .map(|(n, ep)| (n.to_string(), Some(format!("goto {}", endpoint_names[ep]))))
            .collect();
        self.ruleset.sets.insert(
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

    fn target(&mut self, map: &str, no_endpoint_map: &str, key: String, target: Target) {
        match target {
            Target::Chain(chain) => self.element(map, key, format!("goto {chain}")),
            Target::Reject => self.element(no_endpoint_map, key, "goto reject-chain".to_string()),
            Target::Drop => self.element(no_endpoint_map, key, "drop".to_string()),
        }
    }
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

/// A network in canonical form (host bits cleared), as nft demands.
fn canonical(net: &IpNetwork) -> String {
    format!("{}/{}", net.network(), net.prefix())
}

#[cfg(test)]
mod tests {
    use portico_config::cluster::{Endpoint, EndpointPort};

    use super::*;

    fn web(proxy_name: Option<&str>) -> ClusterService {
        ClusterService {
            key: ServiceKey::new("default", "web"),
            service_type: ServiceType::NodePort,
            cluster_ips: vec!["10.96.0.10".parse().expect("ip")],
            external_ips: Vec::new(),
            ports: vec![ClusterServicePort {
                name: "http".to_string(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: Some(30080),
                target_port: TargetPort::Number(8080),
            }],
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            session_affinity: SessionAffinity::None,
            source_ranges: Vec::new(),
            invalid_source_ranges: Vec::new(),
            proxy_name: proxy_name.map(str::to_string),
        }
    }

    fn web_slice() -> EndpointSlice {
        EndpointSlice {
            key: ServiceKey::new("default", "web-1"),
            service: ServiceKey::new("default", "web"),
            address_type: AddressType::IPv4,
            ports: vec![EndpointPort {
                name: "http".to_string(),
                protocol: Protocol::Tcp,
                port: Some(8080),
            }],
            endpoints: vec![Endpoint {
                addresses: vec!["10.244.0.10".parse().expect("ip")],
                ready: true,
                serving: true,
                terminating: false,
                node_name: Some("node-a".to_string()),
            }],
        }
    }

    fn node() -> NodeInfo {
        NodeInfo {
            name: "node-a".to_string(),
            ..NodeInfo::default()
        }
    }

    fn service_chains(p: &Plan) -> Vec<&str> {
        p.ruleset
            .chains
            .keys()
            .filter(|n| n.starts_with("service-") && n.contains("/web/"))
            .map(String::as_str)
            .collect()
    }

    #[test]
    fn only_services_labelled_for_our_proxy_are_planned() {
        let slices = [web_slice()];
        let ours = plan(
            &[web(Some("portico"))],
            &slices,
            &node(),
            &PlanOptions::default(),
        );
        assert_eq!(service_chains(&ours).len(), 1);

        for other in [None, Some("kube-proxy")] {
            let p = plan(&[web(other)], &slices, &node(), &PlanOptions::default());
            assert!(service_chains(&p).is_empty(), "{other:?}");
            assert!(
                p.ruleset.sets.values().all(|s| s.elements.is_empty()),
                "{other:?}"
            );
        }

        let custom = PlanOptions {
            proxy_name: "edge-a".to_string(),
            ..PlanOptions::default()
        };
        let p = plan(&[web(Some("edge-a"))], &slices, &node(), &custom);
        assert_eq!(service_chains(&p).len(), 1);
    }

    #[test]
    fn planning_does_not_depend_on_input_order() {
        let mut other = web(Some("portico"));
        other.key = ServiceKey::new("default", "api");
        other.cluster_ips = vec!["10.96.0.11".parse().expect("ip")];
        other.ports[0].node_port = Some(30081);
        let a = plan(
            &[web(Some("portico")), other.clone()],
            &[web_slice()],
            &node(),
            &PlanOptions::default(),
        );
        let b = plan(
            &[other, web(Some("portico"))],
            &[web_slice()],
            &node(),
            &PlanOptions::default(),
        );
        assert_eq!(a, b);
    }

    #[test]
    fn chain_names_are_stable_short_and_family_specific() {
        let port = &web(None).ports[0];
        let key = ServiceKey::new("default", "web");
        let v4 = PortNames::new(&key, port, Family::V4);
        let v6 = PortNames::new(&key, port, Family::V6);
        // Pinned: a changed hash renames every chain on upgrade.
        assert_eq!(v4.service, "service-E3KJOWRQ-default/web/tcp/http");
        assert_ne!(v4.service, v6.service);
        assert!(v6.service.ends_with("-default/web/tcp/http"));

        let long = ServiceKey::new("n".repeat(63), "s".repeat(63));
        let mut long_port = port.clone();
        long_port.name = "p".repeat(15);
        let names = PortNames::new(&long, &long_port, Family::V6);
        let ep = names.endpoint(
            "fd00:1234:5678:9abc:def0:1234:5678:9abc"
                .parse()
                .expect("ip"),
            65535,
        );
        assert_eq!(ep.len(), MAX_CHAIN_NAME);
        assert!(ep.starts_with("endpoint-"));
        assert!(
            ep.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c)),
            "{ep}"
        );
        // Truncated names still differ by their hash.
        let other = names.endpoint(
            "fd00:1234:5678:9abc:def0:1234:5678:9abd"
                .parse()
                .expect("ip"),
            65535,
        );
        assert_ne!(ep, other);
    }

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
        assert_eq!(p.skipped, []);
    }
}
