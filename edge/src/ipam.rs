//! Address assignment (IPAM): which address of which pool each LoadBalancer
//! Service gets.
//!
//! Pure and deterministic. The whole assignment is recomputed from every
//! request at once, so it depends only on the requests and the pools, never
//! on the order events arrived in, and two edges with the same view agree.
//! Stability comes from the requests themselves: each carries the addresses
//! the Service already has (`status.loadBalancer.ingress`), and those are
//! kept first, before anyone else is served. Then wanted addresses
//! (`spec.loadBalancerIP`, the `portico.io/load-balancer-ips` annotation) are
//! honoured when they lie in a pool and are free; then the rest get the next
//! free address of their family.
//!
//! First come, first served: requests are served oldest first (the
//! Service's `metadata.creationTimestamp`, then its name), so when a pool
//! runs out the newest Services go without, and an older Service never
//! loses an address (nor two that claim one after a restart) to a newer
//! one.
//!
//! Two Services may hold one address only when both carry the same sharing
//! key (annotation `portico.io/allow-shared-ip`) and no port (protocol and
//! number) is used by both.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portico_config::{AddressPool, AddressRange, IpFamily, Protocol};

/// What one Service asks of the IPAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRequest {
    /// Who asks (`namespace/name`); also the tie-breaker between requests
    /// created in the same second.
    pub owner: String,
    /// When the Service was created (seconds since the epoch): older
    /// requests are served first. `None` (unknown) counts as oldest.
    pub created: Option<i64>,
    /// One address per family, in this order (`spec.ipFamilies`).
    pub families: Vec<IpFamily>,
    /// Addresses the Service must get, or none at all (when not empty).
    pub wanted: Vec<IpAddr>,
    /// Addresses the Service holds now; kept while they stay valid.
    pub current: Vec<IpAddr>,
    /// Only this pool may be used.
    pub pool: Option<String>,
    /// Sharing key: Services with the same key may share an address.
    pub sharing_key: Option<String>,
    /// The Service's ports, for the sharing clash check.
    pub ports: Vec<(Protocol, u16)>,
}

/// Why a request was not (fully) served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The annotation names a pool that is not configured.
    #[error("address pool {} does not exist", portico_config::kube::quoted(pool))]
    UnknownPool {
        /// The pool asked for.
        pool: String,
    },
    /// A wanted address lies in no (allowed) pool.
    #[error("{addr} is not in {}", pool_phrase(.pool))]
    NotInPool {
        /// The address.
        addr: IpAddr,
        /// The pool it had to be in, if one was named.
        pool: Option<String>,
    },
    /// A wanted address is held by a Service it may not be shared with.
    #[error("{addr} is already used by {holder}{why}")]
    InUse {
        /// The address.
        addr: IpAddr,
        /// The Service holding it.
        holder: String,
        /// Why it cannot be shared (empty when no sharing key matches).
        why: String,
    },
    /// No free address of a family is left.
    #[error("no free {family} address left in {}", pool_phrase(.pool))]
    Exhausted {
        /// The family.
        family: IpFamily,
        /// The pool, if one was named.
        pool: Option<String>,
    },
}

fn pool_phrase(pool: &Option<String>) -> String {
    match pool {
        Some(p) => format!("address pool {}", portico_config::kube::quoted(p)),
        None => "any address pool".to_string(),
    }
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Assignment {
    /// The addresses the Service gets (in family order). May be non-empty
    /// even with a problem: addresses it already held are not taken away
    /// because a new wish cannot be met.
    pub addresses: Vec<IpAddr>,
    /// Every problem met, in family order.
    pub problems: Vec<IpamError>,
}

/// Assigns addresses to every request. Returns one [`Assignment`] per
/// owner.
pub fn assign(pools: &[AddressPool], requests: &[AddressRequest]) -> BTreeMap<String, Assignment> {
    let mut order: Vec<&AddressRequest> = requests.iter().collect();
    order.sort_by(|a, b| (a.created, &a.owner).cmp(&(b.created, &b.owner)));
    let mut book = Book::default();
    let mut chosen: BTreeMap<&str, BTreeMap<IpFamily, IpAddr>> = BTreeMap::new();
    let mut out: BTreeMap<String, Assignment> = BTreeMap::new();

    let allowed = |req: &AddressRequest| -> Result<Vec<&AddressPool>, IpamError> {
        match &req.pool {
            None => Ok(pools.iter().collect()),
            Some(name) => pools
                .iter()
                .find(|p| &p.name == name)
                .map(|p| vec![p])
                .ok_or_else(|| IpamError::UnknownPool { pool: name.clone() }),
        }
    };

    // Pass 1: incumbents keep what they hold, as long as it is still in an
    // allowed pool, of a family they ask for, what they want (if they want
    // something), and not held by someone they may not share with.
    for req in &order {
        let Ok(allowed_pools) = allowed(req) else {
            continue;
        };
        for &addr in &req.current {
            let family = IpFamily::of(addr);
            let slot = chosen.entry(&req.owner).or_default();
            if slot.contains_key(&family)
                || !req.families.contains(&family)
                || !allowed_pools.iter().any(|p| p.contains(addr))
                || (!req.wanted.is_empty() && !req.wanted.contains(&addr))
                || book.refusal(addr, req).is_some()
            {
                continue;
            }
            slot.insert(family, addr);
            book.take(addr, req);
        }
    }

    // Pass 2: wanted addresses, then the next free address per family.
    for req in &order {
        let entry = out.entry(req.owner.clone()).or_default();
        let allowed_pools = match allowed(req) {
            Ok(p) => p,
            Err(e) => {
                entry.problems.push(e);
                continue;
            }
        };
        let slot = chosen.entry(&req.owner).or_default();
        for &family in &req.families {
            if slot.contains_key(&family) {
                continue;
            }
            let wanted: Vec<IpAddr> = req
                .wanted
                .iter()
                .copied()
                .filter(|a| IpFamily::of(*a) == family)
                .collect();
            let pick = if let Some(&addr) = wanted.first() {
                if !allowed_pools.iter().any(|p| p.contains(addr)) {
                    Err(IpamError::NotInPool {
                        addr,
                        pool: req.pool.clone(),
                    })
                } else if let Some((holder, why)) = book.refusal(addr, req) {
                    Err(IpamError::InUse { addr, holder, why })
                } else {
                    Ok(addr)
                }
            } else if !req.wanted.is_empty() {
                // Wanted addresses are exact: a family they leave out is
                // not filled from the pool behind the user's back.
                continue;
            } else {
                book.next_free(&allowed_pools, family, req)
                    .ok_or(IpamError::Exhausted {
                        family,
                        pool: req.pool.clone(),
                    })
            };
            match pick {
                Ok(addr) => {
                    slot.insert(family, addr);
                    book.take(addr, req);
                }
                Err(e) => entry.problems.push(e),
            }
        }
    }

    for req in &order {
        let slot = chosen.remove(req.owner.as_str()).unwrap_or_default();
        let entry = out.entry(req.owner.clone()).or_default();
        entry.addresses = req
            .families
            .iter()
            .filter_map(|f| slot.get(f).copied())
            .collect();
    }
    out
}

/// Who holds which address.
#[derive(Default)]
struct Book<'a> {
    holders: BTreeMap<IpAddr, Vec<&'a AddressRequest>>,
}

impl<'a> Book<'a> {
    fn take(&mut self, addr: IpAddr, req: &'a AddressRequest) {
        self.holders.entry(addr).or_default().push(req);
    }

    /// Why `req` may not use `addr`: `(holder, reason)`; `None` when it may.
    fn refusal(&self, addr: IpAddr, req: &AddressRequest) -> Option<(String, String)> {
        let holders = self.holders.get(&addr)?;
        for h in holders {
            if h.owner == req.owner {
                continue;
            }
            match (&h.sharing_key, &req.sharing_key) {
                (Some(a), Some(b)) if a == b => {
                    let mine: BTreeSet<_> = req.ports.iter().collect();
                    if let Some((proto, port)) = h.ports.iter().find(|p| mine.contains(p)) {
                        return Some((
                            h.owner.clone(),
                            format!(" and both use {}/{port}", proto.to_string().to_lowercase()),
                        ));
                    }
                }
                (Some(_), Some(_)) => {
                    return Some((h.owner.clone(), " under another sharing key".into()))
                }
                _ => return Some((h.owner.clone(), String::new())),
            }
        }
        None
    }

    /// The first address of `family` in `pools` that `req` may use:
    /// one it can share with Services of its sharing key first, else a
    /// free one.
    fn next_free(
        &self,
        pools: &[&AddressPool],
        family: IpFamily,
        req: &AddressRequest,
    ) -> Option<IpAddr> {
        if req.sharing_key.is_some() {
            let shared = self.holders.keys().copied().find(|&addr| {
                IpFamily::of(addr) == family
                    && pools.iter().any(|p| p.contains(addr))
                    && self.refusal(addr, req).is_none()
            });
            if shared.is_some() {
                return shared;
            }
        }
        for pool in pools {
            for range in pool
                .ranges
                .iter()
                .filter(|r| IpFamily::of(r.first) == family)
            {
                if let Some(addr) = self.first_unheld(range) {
                    return Some(addr);
                }
            }
        }
        None
    }

    /// The first address of `range` nobody holds. Walks the held addresses
    /// inside the range in order, so it costs O(held), not O(range size).
    fn first_unheld(&self, range: &AddressRange) -> Option<IpAddr> {
        let (first, last) = (to_u128(range.first), to_u128(range.last));
        let mut candidate = first;
        for held in self
            .holders
            .range(range.first..=range.last)
            .map(|(a, _)| *a)
        {
            let held = to_u128(held);
            if held > candidate {
                break;
            }
            if held == candidate {
                if candidate == last {
                    return None;
                }
                candidate += 1;
            }
        }
        Some(from_u128(candidate, IpFamily::of(range.first)))
    }
}

fn to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(n: u128, family: IpFamily) -> IpAddr {
    match family {
        // Only ever called with values inside an IPv4 range.
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::from(n as u32)),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn range(first: &str, last: &str) -> AddressRange {
        AddressRange {
            first: ip(first),
            last: ip(last),
        }
    }

    fn pools() -> Vec<AddressPool> {
        vec![
            AddressPool {
                name: "public".into(),
                ranges: vec![
                    range("203.0.113.1", "203.0.113.3"),
                    range("2001:db8::1", "2001:db8::2"),
                ],
            },
            AddressPool {
                name: "internal".into(),
                ranges: vec![range("10.9.0.1", "10.9.0.2")],
            },
        ]
    }

    fn req(owner: &str) -> AddressRequest {
        AddressRequest {
            owner: owner.into(),
            created: None,
            families: vec![IpFamily::V4],
            wanted: vec![],
            current: vec![],
            pool: None,
            sharing_key: None,
            ports: vec![(Protocol::Tcp, 80)],
        }
    }

    fn addrs(out: &BTreeMap<String, Assignment>, owner: &str) -> Vec<String> {
        out[owner].addresses.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn fresh_requests_get_the_next_free_address_in_owner_order() {
        let out = assign(&pools(), &[req("ns/b"), req("ns/a"), req("ns/c")]);
        assert_eq!(addrs(&out, "ns/a"), ["203.0.113.1"]);
        assert_eq!(addrs(&out, "ns/b"), ["203.0.113.2"]);
        assert_eq!(addrs(&out, "ns/c"), ["203.0.113.3"]);
        assert!(out.values().all(|a| a.problems.is_empty()));
    }

    #[test]
    fn the_oldest_service_is_served_first_whatever_its_name() {
        // A pool of one: the older Service gets it though its name sorts
        // last; the newer is told the pool is exhausted.
        let one = vec![AddressPool {
            name: "one".into(),
            ranges: vec![AddressRange {
                first: ip("203.0.113.1"),
                last: ip("203.0.113.1"),
            }],
        }];
        let mut old = req("ns/z-old");
        old.created = Some(1_000);
        let mut new = req("ns/a-new");
        new.created = Some(2_000);
        let out = assign(&one, &[new.clone(), old.clone()]);
        assert_eq!(addrs(&out, "ns/z-old"), ["203.0.113.1"]);
        assert!(matches!(
            out["ns/a-new"].problems[..],
            [IpamError::Exhausted { .. }]
        ));
        // Created in the same second: the name decides.
        new.created = old.created;
        let out = assign(&one, &[old.clone(), new.clone()]);
        assert_eq!(addrs(&out, "ns/a-new"), ["203.0.113.1"]);
        // Both claiming the address (two edges, a restart): the older keeps it.
        new.created = Some(2_000);
        old.current = vec![ip("203.0.113.1")];
        new.current = vec![ip("203.0.113.1")];
        let out = assign(&one, &[new, old]);
        assert_eq!(addrs(&out, "ns/z-old"), ["203.0.113.1"]);
        assert!(out["ns/a-new"].addresses.is_empty());
    }

    #[test]
    fn current_addresses_are_kept_before_anyone_else_is_served() {
        // ns/z already holds .1; ns/a is new and must not take it.
        let mut z = req("ns/z");
        z.current = vec![ip("203.0.113.1")];
        let out = assign(&pools(), &[req("ns/a"), z]);
        assert_eq!(addrs(&out, "ns/z"), ["203.0.113.1"]);
        assert_eq!(addrs(&out, "ns/a"), ["203.0.113.2"]);
    }

    #[test]
    fn a_current_address_outside_every_pool_is_replaced() {
        let mut a = req("ns/a");
        a.current = vec![ip("192.0.2.9")];
        let out = assign(&pools(), &[a]);
        assert_eq!(addrs(&out, "ns/a"), ["203.0.113.1"]);
    }

    #[test]
    fn wanted_addresses_are_honoured_when_in_a_pool_and_free() {
        let mut a = req("ns/a");
        a.wanted = vec![ip("203.0.113.3")];
        let mut b = req("ns/b");
        b.wanted = vec![ip("192.0.2.1")];
        let mut c = req("ns/c");
        c.wanted = vec![ip("203.0.113.3")];
        let out = assign(&pools(), &[a, b, c]);
        assert_eq!(addrs(&out, "ns/a"), ["203.0.113.3"]);
        assert!(out["ns/b"].addresses.is_empty());
        assert_eq!(
            out["ns/b"].problems[0].to_string(),
            "192.0.2.1 is not in any address pool"
        );
        assert_eq!(
            out["ns/c"].problems[0].to_string(),
            "203.0.113.3 is already used by ns/a"
        );
    }

    #[test]
    fn an_incumbent_keeps_its_address_against_a_new_wish() {
        let mut old = req("ns/z");
        old.current = vec![ip("203.0.113.1")];
        let mut new = req("ns/a");
        new.wanted = vec![ip("203.0.113.1")];
        let out = assign(&pools(), &[old, new]);
        assert_eq!(addrs(&out, "ns/z"), ["203.0.113.1"]);
        assert!(matches!(out["ns/a"].problems[0], IpamError::InUse { .. }));
    }

    #[test]
    fn a_changed_wish_moves_the_service_and_frees_the_old_address() {
        let mut a = req("ns/a");
        a.current = vec![ip("203.0.113.1")];
        a.wanted = vec![ip("203.0.113.2")];
        let out = assign(&pools(), &[a, req("ns/b")]);
        assert_eq!(addrs(&out, "ns/a"), ["203.0.113.2"]);
        assert_eq!(addrs(&out, "ns/b"), ["203.0.113.1"]);
    }

    #[test]
    fn exhaustion_is_reported_per_family_and_pool() {
        let mut reqs: Vec<AddressRequest> = (0..4).map(|i| req(&format!("ns/s{i}"))).collect();
        reqs[0].pool = Some("internal".into());
        reqs[1].pool = Some("internal".into());
        reqs[2].pool = Some("internal".into());
        reqs[3].pool = Some("nope".into());
        let out = assign(&pools(), &reqs);
        assert_eq!(addrs(&out, "ns/s0"), ["10.9.0.1"]);
        assert_eq!(addrs(&out, "ns/s1"), ["10.9.0.2"]);
        assert_eq!(
            out["ns/s2"].problems[0].to_string(),
            "no free IPv4 address left in address pool \"internal\""
        );
        assert_eq!(
            out["ns/s3"].problems[0].to_string(),
            "address pool \"nope\" does not exist"
        );
    }

    #[test]
    fn dual_stack_gets_one_address_per_family_in_order() {
        let mut a = req("ns/a");
        a.families = vec![IpFamily::V6, IpFamily::V4];
        let mut b = req("ns/b");
        b.families = vec![IpFamily::V6];
        let mut c = req("ns/c");
        c.families = vec![IpFamily::V6];
        let out = assign(&pools(), &[a, b, c]);
        assert_eq!(addrs(&out, "ns/a"), ["2001:db8::1", "203.0.113.1"]);
        assert_eq!(addrs(&out, "ns/b"), ["2001:db8::2"]);
        assert!(matches!(
            out["ns/c"].problems[0],
            IpamError::Exhausted {
                family: IpFamily::V6,
                ..
            }
        ));
    }

    #[test]
    fn sharing_needs_the_same_key_and_distinct_ports() {
        let shared = |owner: &str, key: &str, port: u16| {
            let mut r = req(owner);
            r.sharing_key = Some(key.into());
            r.ports = vec![(Protocol::Tcp, port)];
            r.wanted = vec![ip("203.0.113.1")];
            r
        };
        let out = assign(
            &pools(),
            &[
                shared("ns/a", "k", 80),
                shared("ns/b", "k", 443),
                shared("ns/c", "k", 80),
                shared("ns/d", "other", 8080),
            ],
        );
        assert_eq!(addrs(&out, "ns/a"), ["203.0.113.1"]);
        assert_eq!(addrs(&out, "ns/b"), ["203.0.113.1"]);
        assert_eq!(
            out["ns/c"].problems[0].to_string(),
            "203.0.113.1 is already used by ns/a and both use tcp/80"
        );
        assert_eq!(
            out["ns/d"].problems[0].to_string(),
            "203.0.113.1 is already used by ns/a under another sharing key"
        );
    }

    #[test]
    fn fresh_requests_with_a_sharing_key_join_a_compatible_address() {
        let mut a = req("ns/a");
        a.sharing_key = Some("k".into());
        let mut b = req("ns/b");
        b.sharing_key = Some("k".into());
        b.ports = vec![(Protocol::Udp, 80)];
        let out = assign(&pools(), &[a, b, req("ns/c")]);
        assert_eq!(addrs(&out, "ns/a"), ["203.0.113.1"]);
        assert_eq!(addrs(&out, "ns/b"), ["203.0.113.1"]);
        assert_eq!(addrs(&out, "ns/c"), ["203.0.113.2"]);
    }

    #[test]
    fn the_result_does_not_depend_on_request_order() {
        let mut reqs: Vec<AddressRequest> = (0..6).map(|i| req(&format!("ns/s{i}"))).collect();
        reqs[4].current = vec![ip("203.0.113.2")];
        reqs[5].wanted = vec![ip("10.9.0.2")];
        let forward = assign(&pools(), &reqs);
        reqs.reverse();
        assert_eq!(assign(&pools(), &reqs), forward);
    }

    #[test]
    fn a_large_range_is_searched_by_held_addresses_not_by_size() {
        let big = vec![AddressPool {
            name: "v6".into(),
            ranges: vec![range("2001:db8::", "2001:db8::ffff:ffff:ffff:ffff")],
        }];
        let reqs: Vec<AddressRequest> = (0..500)
            .map(|i| {
                let mut r = req(&format!("ns/s{i:03}"));
                r.families = vec![IpFamily::V6];
                r
            })
            .collect();
        let out = assign(&big, &reqs);
        assert_eq!(addrs(&out, "ns/s000"), ["2001:db8::"]);
        assert_eq!(addrs(&out, "ns/s499"), ["2001:db8::1f3"]);
    }
}
