//! The planner: Services + EndpointSlices + this Node -> the desired
//! [`Ruleset`]. Pure: no IO, no clock, deterministic output for a given input.
//!
//! The layout follows kube-proxy's nftables mode (KEP-3866):
//! - verdict maps keyed `addr . l4proto . port` send ClusterIP and external
//!   (LB / external IP) traffic to a per-Service-port chain (`service-ips`);
//!   NodePorts are keyed `l4proto . port` and matched after
//!   `fib daddr type local` (`service-nodeports`);
//! - a `service-` chain picks any usable endpoint, a `local-` chain one of
//!   this node's; ClusterIP keys go to the one `internalTrafficPolicy` asks
//!   for;
//! - external keys (LB / external IPs, NodePorts) of an
//!   `externalTrafficPolicy: Cluster` port go straight to its `service-`
//!   chain, and the `services` chain marks them for masquerade first, by one
//!   rule per key kind and family on the sets `external-masquerade` (`addr .
//!   l4proto . port`) and `nodeport-masquerade` (`l4proto . port`), each
//!   right before the dispatch on the same key (so only traffic that is
//!   DNATed is marked; ports without endpoints are never in the sets);
//! - external keys of a `Local` port go to its `external-` chain, the only
//!   per-Service chain left between a map and the endpoints: traffic from
//!   this node itself (`fib saddr type local`) is marked and may use any
//!   endpoint (`service-`), as kube-proxy lets it; everything else goes to
//!   `local-` unmasqueraded, keeping the client address;
//! - ports without a usable endpoint go into `no-endpoint-services` /
//!   `no-endpoint-nodeports`, checked in the filter hooks (reject is not
//!   allowed in nat chains): reject when the Service has no endpoint at all,
//!   drop when only the traffic policy leaves none;
//! - `firewall-ips` sends new connections to an LB address through a
//!   `firewall-` chain that drops sources outside `loadBalancerSourceRanges`.
//!
//! Where it departs from kube-proxy, for speed at scale (10,000 Services x
//! 10 endpoints, measured on kernel 6.18 with nft 1.0.6; `benches/sync.rs`):
//! - A `service-` / `local-` chain WITHOUT ClientIP affinity picks its
//!   endpoint itself, with a cascade of DNAT rules, as kube-proxy's iptables
//!   mode does: rule `i` of `N` is `numgen random mod (N-i) 0 ... dnat to
//!   <endpoint i>` and the last one is unconditional, so every endpoint gets
//!   `1/N`. No `endpoint-` chains, no per-chain map. kube-proxy's layout
//!   (a named `endpoints-<chain>` verdict map per chain plus a chain per
//!   endpoint) took 13-16 s to load: the kernel finds a set by name in a
//!   linear list per table, so each of 10,000 named maps made every map
//!   operation of the batch O(sets); and with 110,000 chains, every later
//!   `nft` transaction spent ~0.6 s listing them. Alternatives measured and
//!   rejected: one shared data map (`numgen ... map @eps`) bound by 10,000
//!   rules, 51 s (binding walks every element); anonymous inline maps, 8.9 s
//!   (the kernel names each `__set%d` by walking all sets).
//! - Hairpin traffic (a pod reaching itself through its Service) is marked
//!   for masquerade in `masquerading` by `ct status dnat ip saddr . ip daddr
//!   @hairpin-endpoints` (one `addr . addr` element per endpoint, one set per
//!   family) instead of a rule in every endpoint chain.
//! - No `external-` chain for `Cluster` ports (kube-proxy has one per
//!   Service port, marking and going on to `service-`): the marks come from
//!   the two sets above. Any rule with a NAT expression, or any verdict map
//!   element, makes the kernel validate the whole table at commit: from
//!   each base chain it walks every rule of every chain it can reach,
//!   through every verdict map. Kernel 6.18 remembers a chain validated
//!   for a (chain type, hook) at a call depth and skips it when reached
//!   again at that depth or less, so the cost is the rules reachable per
//!   NAT hook (prerouting and output) and how many depths a chain is
//!   reached at, not how many paths lead to it. The `external-` chains
//!   added 10,000 chains and 20,000 rules and reached each `service-` chain
//!   a second time one level deeper, so it was validated twice per hook.
//!   Without them (10k x 10, the bench before and after back to back): a
//!   one-endpoint `nft` transaction 108 -> 86 ms (its commit `sendmsg`
//!   86 -> 60 ms, and `nft` lists 10,000 chains fewer before it), the full
//!   load 3.8 -> 3.3 s, kernel memory 65 -> 55 MiB. Measured and
//!   not taken: no NodePort dispatch at all (no gain: those paths were
//!   already memoised), the `services` rules copied into both NAT base
//!   chains instead of a jump (no gain), `jump` instead of `goto` in the
//!   maps (no gain: both are validated alike), no `services` dispatch from
//!   `nat-output` (halves the commit, but the node itself could no longer
//!   reach ClusterIPs, external IPs or its own NodePorts). A `Local`
//!   port's `service-` chain is still also reached one level deeper,
//!   through its `external-` chain (node-originated traffic), so it is
//!   validated twice per hook; few Services are `Local`.
//! - Ports WITH ClientIP affinity keep kube-proxy's layout: an `endpoint-`
//!   chain per endpoint (hairpin mark, `update @affinity-<chain>`, DNAT), the
//!   affinity checks, then `numgen random mod N vmap @endpoints-<chain>`.
//!
//! IPv4 and IPv6 each get their own maps (IPv6 names end in `6`) and chains.
//! Bad input is skipped at the smallest scope that keeps the rules correct
//! (one endpoint, one Service port, one Service) and reported as a
//! [`Skipped`]; every other Service keeps its rules.
//!
//! Planning is incremental ([`Planner`]): each Service is planned on its own
//! into a fragment (its chains, its own sets, its elements of the shared
//! maps), reused while the Service, its EndpointSlices and the claims it won
//! are unchanged. Only the claims (NodePorts and `addr . proto . port` keys,
//! which two Services cannot share) are checked across Services, in a cheap
//! pass over every Service at each update, so a Service that loses or wins a
//! key is re-planned. [`plan`] is the same planner run once from nothing.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use portico_config::cluster::{
    AddressType, ClusterService, ClusterServicePort, EndpointSlice, IpMode, ServiceType,
    TargetPort, DEFAULT_PROXY_NAME,
};
use portico_config::{Node, Protocol, ServiceKey, SessionAffinity, SourceRanges, TrafficPolicy};
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
/// Services claim the same NodePort, or the same address, protocol and port
/// (ClusterIP or external), the first by key keeps it and the other port is
/// reported.
pub fn plan(
    services: &[ClusterService],
    slices: &[EndpointSlice],
    node: &Node,
    opts: &PlanOptions,
) -> Plan {
    let mut planner = Planner::new(opts.clone());
    planner.update(services, slices, node);
    Plan {
        ruleset: planner.ruleset(),
        skipped: planner.skipped(),
    }
}

/// The incremental planner: remembers each Service's input and fragment,
/// and re-plans only the Services whose input (or won claims) changed.
///
/// Pure like [`plan`]: [`update`](Self::update) with the same input always
/// leads to the same [`ruleset`](Self::ruleset) as `plan` would give.
#[derive(Debug)]
pub struct Planner {
    opts: PlanOptions,
    /// The node name the cached fragments were planned for (`local` flags).
    node_name: Option<String>,
    /// The chains and shared sets/maps that exist whatever the Services are
    /// (shared sets without elements).
    layout: Ruleset,
    /// Every Service of ours, by key.
    services: BTreeMap<ServiceKey, Cached>,
    /// Elements of the shared sets (hairpin pairs, which several Services
    /// may add; masquerade keys, each claimed by one Service): how many
    /// fragments hold each.
    counts: HashMap<String, HashMap<String, u32>>,
}

/// One Service as last planned.
#[derive(Debug)]
struct Cached {
    service: ClusterService,
    /// Its EndpointSlices, in key order.
    slices: Vec<EndpointSlice>,
    units: Arc<Units>,
    /// For each unit, the claim it lost (the port is skipped), if any.
    lost: Vec<Option<Skipped>>,
    fragment: Arc<Fragment>,
}

/// What one Service contributes to the ruleset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Fragment {
    /// Its chains.
    chains: BTreeMap<String, Chain>,
    /// Its own sets and maps (affinity sets, `endpoints-` maps).
    sets: BTreeMap<String, Set>,
    /// Its elements of the shared verdict maps, by map. The claims make
    /// every key of these maps belong to one Service.
    elements: BTreeMap<String, BTreeMap<String, String>>,
    /// Its elements of the shared sets, by set; several Services may add
    /// the same one (counted in [`Planner::counts`]).
    members: BTreeMap<String, BTreeSet<String>>,
    /// Its input left out.
    skipped: Vec<Skipped>,
}

/// One Service's fragment before and after an update (`None`: absent).
type FragmentChange = (Option<Arc<Fragment>>, Option<Arc<Fragment>>);

/// What changed in the planned ruleset at one [`Planner::update`]: the
/// fragments of the Services that were re-planned (before and after) and
/// the shared-set elements that appeared or went.
#[derive(Debug, Default)]
pub struct PlanChange {
    fragments: Vec<FragmentChange>,
    /// Shared set, element, present before, present after.
    members: Vec<(String, String, bool, bool)>,
    /// Definitions (no elements) of the shared sets and maps.
    shared: Arc<BTreeMap<String, Set>>,
    replanned: usize,
}

impl PlanChange {
    /// Whether the planned ruleset is unchanged.
    pub fn is_empty(&self) -> bool {
        self.fragments.is_empty() && self.members.is_empty()
    }

    /// How many Services were re-planned (whether or not their rules
    /// changed).
    pub fn replanned(&self) -> usize {
        self.replanned
    }

    /// The change as two partial rulesets over the same names: `before`
    /// holds what the touched chains, sets and elements were, `after` what
    /// they are now (absent = absent). Shared sets and maps appear in both
    /// with only their touched elements, so [`crate::render::render_diff`]
    /// of the two is the script that turns the old ruleset into the new
    /// one, and [`Ruleset::apply_change`] the same on data.
    pub fn rulesets(&self) -> (Ruleset, Ruleset) {
        let mut before = Ruleset::default();
        let mut after = Ruleset::default();
        let mut touched: BTreeSet<&str> = BTreeSet::new();
        for (old, new) in &self.fragments {
            for (view, fragment) in [(&mut before, old), (&mut after, new)] {
                let Some(fragment) = fragment else { continue };
                for (name, chain) in &fragment.chains {
                    view.chains.insert(name.clone(), chain.clone());
                }
                for (name, set) in &fragment.sets {
                    view.sets.insert(name.clone(), set.clone());
                }
                for (map, elements) in &fragment.elements {
                    touched.insert(map);
                    let def = shared_view(view, &self.shared, map);
                    for (key, value) in elements {
                        def.elements.insert(key.clone(), Some(value.clone()));
                    }
                }
            }
        }
        for (set, key, was, is) in &self.members {
            touched.insert(set);
            for (view, present) in [(&mut before, was), (&mut after, is)] {
                let def = shared_view(view, &self.shared, set);
                if *present {
                    def.elements.insert(key.clone(), None);
                }
            }
        }
        // A shared set touched on one side only must still be in both, or
        // the diff would delete it.
        for name in touched {
            shared_view(&mut before, &self.shared, name);
            shared_view(&mut after, &self.shared, name);
        }
        (before, after)
    }
}

/// The shared set `name` in a partial view, added (without elements) when
/// missing.
fn shared_view<'a>(
    view: &'a mut Ruleset,
    shared: &BTreeMap<String, Set>,
    name: &str,
) -> &'a mut Set {
    view.sets
        .entry(name.to_string())
        .or_insert_with(|| shared.get(name).cloned().unwrap_or_default())
}

/// A hash map with a fast hasher: the planner's keys come from the
/// cluster's own objects, and every update hashes tens of thousands.
type FastMap<K, V> = HashMap<K, V, xxhash_rust::xxh3::Xxh3DefaultBuilder>;

/// A key two Services cannot share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Claim {
    /// A NodePort of one family.
    NodePort(Family, Protocol, u16),
    /// An `addr . proto . port` key of `service-ips` (ClusterIP or external
    /// address).
    Address(IpAddr, Protocol, u16),
}

/// One Service port in one family: the unit that claims keys and is planned
/// or skipped as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unit {
    /// Its index in `spec.ports`.
    index: usize,
    family: Family,
    cluster_ip: IpAddr,
    external_ips: Vec<IpAddr>,
    /// Its NodePort (NodePort and LoadBalancer Services only).
    node_port: Option<u16>,
}

/// The units of a Service, and what its own spec made the planner skip.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Units {
    units: Vec<Unit>,
    skipped: Vec<Skipped>,
}

impl Planner {
    /// A planner that has planned nothing yet.
    pub fn new(opts: PlanOptions) -> Planner {
        let layout = static_layout(&opts);
        Planner {
            opts,
            node_name: None,
            layout,
            services: BTreeMap::new(),
            counts: HashMap::new(),
        }
    }

    /// The planner's options.
    pub fn options(&self) -> &PlanOptions {
        &self.opts
    }

    /// Plans the new input, re-planning only the Services whose Service
    /// object, EndpointSlices or won claims changed (all of them when the
    /// node's name changed), and returns what changed.
    pub fn update(
        &mut self,
        services: &[ClusterService],
        slices: &[EndpointSlice],
        node: &Node,
    ) -> PlanChange {
        let force = self.node_name.as_deref() != Some(node.name.as_str());
        self.node_name = Some(node.name.clone());

        let mut slices_by_service: FastMap<&ServiceKey, Vec<&EndpointSlice>> = FastMap::default();
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
            .filter(|s| s.proxy_name.as_deref() == Some(self.opts.proxy_name.as_str()))
            .collect();
        ours.sort_by(|a, b| a.key.cmp(&b.key));
        // Two objects with one key cannot come from one source; keep the
        // first, as a map of the input would.
        ours.dedup_by(|b, a| a.key == b.key);

        let mut change = PlanChange {
            shared: Arc::new(
                self.layout
                    .sets
                    .iter()
                    .map(|(name, set)| (name.clone(), set.clone()))
                    .collect(),
            ),
            ..PlanChange::default()
        };
        let mut claims: FastMap<Claim, &ServiceKey> = FastMap::default();
        claims.reserve(ours.len() * 3);
        let mut replaced: Vec<(ServiceKey, Cached)> = Vec::new();
        let mut removed: Vec<ServiceKey> = Vec::new();
        // Both are sorted by key: walk them side by side.
        let mut cache = self.services.iter().peekable();
        for svc in &ours {
            let mut cached = None;
            while let Some((key, entry)) = cache.peek() {
                match (*key).cmp(&svc.key) {
                    std::cmp::Ordering::Less => removed.push((*key).clone()),
                    std::cmp::Ordering::Equal => cached = Some(*entry),
                    std::cmp::Ordering::Greater => break,
                }
                cache.next();
                if cached.is_some() {
                    break;
                }
            }
            let svc_slices = slices_by_service
                .get(&svc.key)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let same_service = cached.is_some_and(|c| c.service == **svc);
            let same_slices = cached.is_some_and(|c| {
                c.slices.len() == svc_slices.len()
                    && c.slices.iter().zip(svc_slices).all(|(a, b)| a == *b)
            });
            let units = match cached {
                Some(c) if same_service => c.units.clone(),
                _ => Arc::new(units(svc)),
            };
            let lost = resolve_claims(svc, &units, &mut claims);
            if !force && same_service && same_slices && cached.is_some_and(|c| c.lost == lost) {
                continue;
            }
            let fragment = Arc::new(plan_fragment(svc, svc_slices, &node.name, &units, &lost));
            replaced.push((
                svc.key.clone(),
                Cached {
                    service: (*svc).clone(),
                    slices: svc_slices.iter().map(|s| (*s).clone()).collect(),
                    units,
                    lost,
                    fragment,
                },
            ));
        }
        removed.extend(cache.map(|(key, _)| key.clone()));
        change.replanned = replaced.len();

        let mut member_changes: BTreeMap<(String, String), (bool, bool)> = BTreeMap::new();
        for key in removed {
            if let Some(old) = self.services.remove(&key) {
                self.count_members(&old.fragment, false, &mut member_changes);
                change.fragments.push((Some(old.fragment), None));
            }
        }
        for (key, cached) in replaced {
            let new = cached.fragment.clone();
            let old = self.services.insert(key, cached).map(|c| c.fragment);
            if old.as_deref() == Some(&*new) {
                continue;
            }
            if let Some(old) = &old {
                self.count_members(old, false, &mut member_changes);
            }
            self.count_members(&new, true, &mut member_changes);
            change.fragments.push((old, Some(new)));
        }
        change.members = member_changes
            .into_iter()
            .filter(|(_, (was, is))| was != is)
            .map(|((set, key), (was, is))| (set, key, was, is))
            .collect();
        change
    }

    /// Adds (`add`) or removes one fragment's shared-set elements from the
    /// counts, noting for each element whether it was present before this
    /// update began and whether it is now.
    fn count_members(
        &mut self,
        fragment: &Fragment,
        add: bool,
        changes: &mut BTreeMap<(String, String), (bool, bool)>,
    ) {
        for (set, keys) in &fragment.members {
            let counts = self.counts.entry(set.clone()).or_default();
            for key in keys {
                let count = counts.entry(key.clone()).or_insert(0);
                let change = changes
                    .entry((set.clone(), key.clone()))
                    .or_insert((*count > 0, false));
                if add {
                    *count += 1;
                } else {
                    *count = count.saturating_sub(1);
                }
                change.1 = *count > 0;
                if *count == 0 {
                    counts.remove(key);
                }
            }
        }
    }

    /// The whole planned ruleset.
    pub fn ruleset(&self) -> Ruleset {
        let mut ruleset = self.layout.clone();
        for cached in self.services.values() {
            let fragment = &cached.fragment;
            for (name, chain) in &fragment.chains {
                ruleset.chains.insert(name.clone(), chain.clone());
            }
            for (name, set) in &fragment.sets {
                ruleset.sets.insert(name.clone(), set.clone());
            }
            for (map, elements) in &fragment.elements {
                if let Some(set) = ruleset.sets.get_mut(map) {
                    for (key, value) in elements {
                        set.elements.insert(key.clone(), Some(value.clone()));
                    }
                }
            }
        }
        for (name, counts) in &self.counts {
            if let Some(set) = ruleset.sets.get_mut(name) {
                set.elements
                    .extend(counts.keys().map(|key| (key.clone(), None)));
            }
        }
        ruleset
    }

    /// Everything left out of the current plan, sorted and without
    /// duplicates.
    pub fn skipped(&self) -> Vec<Skipped> {
        let mut skipped: Vec<Skipped> = self
            .services
            .values()
            .flat_map(|c| c.fragment.skipped.iter().cloned())
            .collect();
        skipped.sort();
        skipped.dedup();
        skipped
    }

    /// How many Services are planned.
    pub fn services(&self) -> usize {
        self.services.len()
    }
}

/// Checks each unit's keys against those claimed by earlier units (of this
/// and earlier Services) and claims them when none is taken; returns, per
/// unit, why it lost.
fn resolve_claims<'a>(
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

/// Where traffic for one key goes: a chain, or one of the no-endpoint verdicts.
#[derive(Clone)]
enum Target {
    Chain(String),
    /// No endpoint at all: reject.
    Reject,
    /// Endpoints exist but the traffic policy allows none from here: drop.
    Drop,
}

/// The chains and shared sets and maps that exist whatever the Services are.
fn static_layout(opts: &PlanOptions) -> Ruleset {
    let mut r = Ruleset::default();
    let mark = format!("{:#x}", opts.masquerade_mark);
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
    let mut chain = |name: &str, rules: Vec<String>| {
        r.chains
            .insert(name.to_string(), Chain { base: None, rules });
    };
    let set_mark = format!("meta mark set meta mark | {mark}");
    chain("mark-for-masquerade", vec![set_mark.clone()]);
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

    let mut services = Vec::new();
    let mut firewall = Vec::new();
    let mut endpoints_check = Vec::new();
    let mut nodeports_check = Vec::new();
    for family in Family::ALL {
        let ip = family.nft_keyword();
        let sfx = family.map_suffix();
        let lo = family.loopback();
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
        // Each mark comes right before the dispatch that goes on with the
        // same key, so only traffic sent to a `service-` chain is marked.
        let nodeport = format!("fib daddr type local {ip} daddr != {lo} meta l4proto . th dport");
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
    r
}

/// Splits a Service into its units (port x family), reporting what its own
/// spec makes unusable. Needs nothing but the Service.
fn units(svc: &ClusterService) -> Units {
    let mut out = Units::default();
    let object = service_object(&svc.key);
    let mut skip = |field: String, reason: String| {
        out.skipped.push(Skipped {
            object: object.clone(),
            field,
            reason,
        });
    };
    if svc.service_type == ServiceType::ExternalName {
        return out;
    }
    if svc.cluster_ips.is_empty() {
        // A headless ClusterIP Service has nothing to program; a
        // NodePort or LoadBalancer one without a ClusterIP is broken.
        if svc.service_type != ServiceType::ClusterIp {
            skip(
                "spec.clusterIPs".to_string(),
                format!(
                    "missing ClusterIP on a {:?} Service; all its ports skipped",
                    svc.service_type
                ),
            );
        }
        return out;
    }

    // One address per family: the first, as Kubernetes orders them.
    let mut cluster_ip: BTreeMap<Family, IpAddr> = BTreeMap::new();
    for (i, ip) in svc.cluster_ips.iter().enumerate() {
        let family = Family::of(ip);
        match cluster_ip.entry(family) {
            Entry::Vacant(slot) => {
                slot.insert(*ip);
            }
            Entry::Occupied(_) => skip(
                format!("spec.clusterIPs[{i}]"),
                format!("{ip}: a second {family} ClusterIP; ignored"),
            ),
        }
    }
    // The addresses captured on the node, as kube-proxy captures them: the
    // load-balancer ingress addresses (except those of a proxying load
    // balancer, `ipMode: Proxy`, whose traffic arrives on NodePorts) and
    // `spec.externalIPs`.
    let captured = svc
        .ingress
        .iter()
        .enumerate()
        .filter(|(_, ingress)| ingress.ip_mode != Some(IpMode::Proxy))
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
            skip(
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
    if let SourceRanges::Invalid { errors } = &svc.source_ranges {
        if !external_ips.is_empty() {
            skip(
                "spec.loadBalancerSourceRanges".to_string(),
                format!(
                    "{}; the Service's external addresses accept no client",
                    errors.join("; ")
                ),
            );
        }
    }

    let mut seen_ports: BTreeMap<(Protocol, u16), usize> = BTreeMap::new();
    let mut seen_names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, port) in svc.ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        if port.port == 0 {
            skip(
                format!("{field}.port"),
                "0 is outside 1-65535; port skipped".to_string(),
            );
            continue;
        }
        if port.node_port == Some(0) {
            skip(
                format!("{field}.nodePort"),
                "0 is outside 1-65535; port skipped".to_string(),
            );
            continue;
        }
        if port.target_port == TargetPort::Number(0) {
            skip(
                format!("{field}.targetPort"),
                "0 is outside 1-65535; port skipped".to_string(),
            );
            continue;
        }
        if let Some(first) = first_claim(&mut seen_ports, (port.protocol, port.port), i) {
            skip(
                format!("{field}.port"),
                format!(
                    "{}/{} duplicates spec.ports[{first}]; port skipped",
                    port.port, port.protocol
                ),
            );
            continue;
        }
        if let Some(first) = first_claim(&mut seen_names, port.name.as_str(), i) {
            skip(
                format!("{field}.name"),
                format!(
                    "{:?} duplicates spec.ports[{first}]; port skipped",
                    port.name
                ),
            );
            continue;
        }
        let node_port = if matches!(
            svc.service_type,
            ServiceType::NodePort | ServiceType::LoadBalancer
        ) {
            port.node_port
        } else {
            None
        };
        for (&family, &cluster_ip) in &cluster_ip {
            out.units.push(Unit {
                index: i,
                family,
                cluster_ip,
                external_ips: external_ips.get(&family).cloned().unwrap_or_default(),
                node_port,
            });
        }
    }
    out
}

/// Plans one Service: every unit that won its claims (a lost one is only
/// reported).
fn plan_fragment(
    svc: &ClusterService,
    slices: &[&EndpointSlice],
    node_name: &str,
    units: &Units,
    lost: &[Option<Skipped>],
) -> Fragment {
    let mut builder = FragmentBuilder {
        node_name,
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
    fragment: Fragment,
}

impl FragmentBuilder<'_> {
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

    /// Plans one unit (a Service port in one family) whose claims were won:
    /// its chains and map elements.
    fn service_port(&mut self, svc: &ClusterService, unit: &Unit, slices: &[&EndpointSlice]) {
        let Unit {
            index,
            family,
            cluster_ip,
            ref external_ips,
            node_port,
        } = *unit;
        let port = &svc.ports[index];
        let proto = proto_name(port.protocol);
        let sfx = family.map_suffix();
        let ip = family.nft_keyword();
        let names = PortNames::new(&svc.key, port, family);

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

        // Every endpoint a policy chain can pick.
        let mut used: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
        if use_cluster_chain {
            used.extend(cluster_eps.iter().copied());
        }
        if use_local_chain {
            used.extend(local_eps.iter().copied());
        }
        match affinity {
            None => {
                // Hairpin: masqueraded by `masquerading` (see the module docs).
                for &(addr, _) in &used {
                    self.member(
                        &format!("hairpin-endpoints{sfx}"),
                        format!("{addr} . {addr}"),
                    );
                }
                if use_cluster_chain {
                    self.cascade(&names.service, &cluster_eps, family, proto);
                }
                if use_local_chain {
                    self.cascade(&names.local, &local_eps, family, proto);
                }
            }
            Some(timeout) => {
                // kube-proxy's endpoint chains, each with its affinity set.
                let endpoint_names: BTreeMap<(IpAddr, u16), String> = used
                    .iter()
                    .map(|&(addr, target)| ((addr, target), names.endpoint(addr, target)))
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
                if use_cluster_chain {
                    self.dispatch(&endpoint_names, &names.service, &cluster_eps, family);
                }
                if use_local_chain {
                    self.dispatch(&endpoint_names, &names.local, &local_eps, family);
                }
            }
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
        // Cluster policy: the `service-` chain itself, marked for masquerade
        // by the `services` chain through the `*-masquerade` sets (see the
        // module docs); no chain of its own. Local policy: an `external-`
        // chain, as only it can tell traffic from this node (any endpoint,
        // masqueraded) from traffic from outside (local endpoints, client
        // address kept).
        let (external, masquerade) = if external_local {
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
                (Target::Chain(names.external.clone()), false)
            } else {
                (no_endpoints.clone(), false)
            }
        } else if use_cluster_chain {
            (Target::Chain(names.service.clone()), true)
        } else {
            (Target::Reject, false)
        };
        for ext in external_ips {
            if masquerade {
                self.member(&format!("external-masquerade{sfx}"), ip_key(*ext));
            }
            self.target(
                &format!("service-ips{sfx}"),
                &format!("no-endpoint-services{sfx}"),
                ip_key(*ext),
                external.clone(),
            );
        }
        if let Some(np) = node_port {
            let key = format!("{proto} . {np}");
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

        // Source ranges guard the external addresses only (kube-proxy never
        // applies them to NodePorts).
        let (restricted, ranges): (bool, Vec<IpNetwork>) = match &svc.source_ranges {
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
        if restricted && !external_ips.is_empty() {
            let rule = if ranges.is_empty() {
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

    fn target(&mut self, map: &str, no_endpoint_map: &str, key: String, target: Target) {
        match target {
            Target::Chain(chain) => self.element(map, key, format!("goto {chain}")),
            Target::Reject => self.element(no_endpoint_map, key, "goto reject-chain".to_string()),
            Target::Drop => self.element(no_endpoint_map, key, "drop".to_string()),
        }
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
            load_balancer_class: None,
            ip_families: Vec::new(),
            external_ips: Vec::new(),
            load_balancer_ip: None,
            ingress: Vec::new(),
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
            source_ranges: portico_config::SourceRanges::Any,
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

    fn node() -> Node {
        Node {
            name: "node-a".to_string(),
            ..Node::default()
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
    fn incremental_updates_match_planning_from_nothing() {
        let web = web(Some("portico"));
        let mut api = web.clone();
        api.key = ServiceKey::new("default", "api");
        api.cluster_ips = vec!["10.96.0.11".parse().expect("ip")];
        let mut api_slice = web_slice();
        api_slice.key = ServiceKey::new("default", "api-1");
        api_slice.service = api.key.clone();
        let mut two = web_slice();
        two.endpoints.push(Endpoint {
            addresses: vec!["10.244.1.10".parse().expect("ip")],
            node_name: Some("node-b".to_string()),
            ..two.endpoints[0].clone()
        });
        let mut sticky = web.clone();
        sticky.session_affinity = SessionAffinity::ClientIp {
            timeout: std::time::Duration::from_secs(60),
        };
        let other_node = Node {
            name: "node-b".to_string(),
            ..Node::default()
        };
        // Each step: Services, slices, node. `api` first takes web's
        // NodePort (it sorts first) and shares web's endpoint (one hairpin
        // element for both), then goes and gives the NodePort back.
        let steps: Vec<(Vec<ClusterService>, Vec<EndpointSlice>, Node)> = vec![
            (vec![web.clone()], vec![web_slice()], node()),
            (vec![web.clone()], vec![two.clone()], node()),
            (
                vec![web.clone(), api.clone()],
                vec![two.clone(), api_slice.clone()],
                node(),
            ),
            (vec![web.clone()], vec![web_slice()], node()),
            (vec![sticky.clone()], vec![two.clone()], node()),
            (vec![sticky], vec![], node()),
            (vec![web, api], vec![two, api_slice], other_node),
            (vec![], vec![], node()),
        ];
        let opts = PlanOptions::default();
        let mut planner = Planner::new(opts.clone());
        let mut applied = plan(&[], &[], &node(), &opts).ruleset;
        for (i, (services, slices, node)) in steps.iter().enumerate() {
            let expected = plan(services, slices, node, &opts);
            let change = planner.update(services, slices, node);
            let (before, after) = change.rulesets();
            // The change's script is the diff of the whole rulesets.
            assert_eq!(
                crate::render::render_diff(&before, &after),
                crate::render::render_diff(&applied, &expected.ruleset),
                "step {i}"
            );
            applied.apply_change(&before, &after);
            assert_eq!(applied, expected.ruleset, "step {i}");
            assert_eq!(planner.ruleset(), expected.ruleset, "step {i}");
            assert_eq!(planner.skipped(), expected.skipped, "step {i}");
            if i == 2 {
                assert_eq!(
                    expected.skipped.len(),
                    1,
                    "web loses its NodePort: {:?}",
                    expected.skipped
                );
                let hairpin = &expected.ruleset.sets["hairpin-endpoints"].elements;
                assert!(hairpin.contains_key("10.244.0.10 . 10.244.0.10"));
            }
            // The same input again re-plans nothing.
            let again = planner.update(services, slices, node);
            assert!(again.is_empty(), "step {i}");
            assert_eq!(again.replanned(), 0, "step {i}");
        }
    }

    #[test]
    fn a_changed_service_is_replanned_alone() {
        let mut services = vec![web(Some("portico"))];
        let mut api = web(Some("portico"));
        api.key = ServiceKey::new("default", "api");
        api.cluster_ips = vec!["10.96.0.11".parse().expect("ip")];
        api.ports[0].node_port = Some(30081);
        services.push(api);
        let mut slices = vec![web_slice()];
        let mut planner = Planner::new(PlanOptions::default());
        assert_eq!(planner.update(&services, &slices, &node()).replanned(), 2);
        slices[0].endpoints[0].ready = false;
        let change = planner.update(&services, &slices, &node());
        assert_eq!(change.replanned(), 1);
        let (before, after) = change.rulesets();
        // Only web's rules and map elements move: it now rejects.
        assert!(
            after.chains.keys().all(|c| c.contains("/web/")),
            "{after:?}"
        );
        assert_eq!(
            after.sets["no-endpoint-nodeports"]
                .elements
                .keys()
                .collect::<Vec<_>>(),
            ["tcp . 30080"]
        );
        assert!(before.sets["service-nodeports"]
            .elements
            .contains_key("tcp . 30080"));
    }

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
}
