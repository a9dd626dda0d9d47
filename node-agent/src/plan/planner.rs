//! The incremental [`Planner`]: each Service's input and fragment are kept
//! and reused while the Service, its EndpointSlices and the claims it won
//! are unchanged; what an update changed comes out as a [`PlanChange`]
//! (two partial rulesets), and the whole ruleset is the static layout plus
//! every fragment.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use portico_config::cluster::{ClusterService, EndpointSlice};
use portico_config::{Node, ServiceKey};

use super::claims::{resolve_claims, Claim};
use super::flows::UdpTargets;
use super::fragment::{plan_fragment, Fragment};
use super::layout::static_layout;
use super::units::{units, Units};
use super::{FastMap, PlanOptions, Skipped};
use crate::ruleset::{Ruleset, Set};

/// The incremental planner: remembers each Service's input and fragment,
/// and re-plans only the Services whose input (or won claims) changed.
///
/// Pure like [`plan`](super::plan): [`update`](Self::update) with the
/// same input always leads to the same [`ruleset`](Self::ruleset) as `plan`
/// would give.
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

        let slices_by_service = group_slices(slices);
        let ours = our_services(services, &self.opts.proxy_name);

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
                _ => Arc::new(units(svc, &self.opts.load_balancer_class)),
            };
            let lost = resolve_claims(svc, &units, &mut claims);
            if !force && same_service && same_slices && cached.is_some_and(|c| c.lost == lost) {
                continue;
            }
            let fragment = Arc::new(plan_fragment(
                svc, svc_slices, &node.name, &self.opts, &units, &lost,
            ));
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

    /// Every planned UDP Service port's destinations and serving
    /// endpoints: what its conntrack entries may point at.
    pub fn udp_targets(&self) -> UdpTargets {
        let mut targets = UdpTargets::default();
        for cached in self.services.values() {
            for port in &cached.fragment.udp {
                targets.add(port);
            }
        }
        targets
    }

    /// How many Services are planned.
    pub fn services(&self) -> usize {
        self.services.len()
    }
}

/// Each Service's EndpointSlices, in key order.
fn group_slices(slices: &[EndpointSlice]) -> FastMap<&ServiceKey, Vec<&EndpointSlice>> {
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
    slices_by_service
}

/// The Services labelled for this proxy, in key order, one per key.
fn our_services<'a>(services: &'a [ClusterService], proxy_name: &str) -> Vec<&'a ClusterService> {
    let mut ours: Vec<&ClusterService> = services
        .iter()
        .filter(|s| s.proxy_name.as_deref() == Some(proxy_name))
        .collect();
    ours.sort_by(|a, b| a.key.cmp(&b.key));
    // Two objects with one key cannot come from one source; keep the
    // first, as a map of the input would.
    ours.dedup_by(|b, a| a.key == b.key);
    ours
}

#[cfg(test)]
mod tests {
    use portico_config::cluster::Endpoint;
    use portico_config::SessionAffinity;

    use super::super::test_support::{node, web, web_slice};
    use super::*;
    use crate::plan::plan;

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
}
