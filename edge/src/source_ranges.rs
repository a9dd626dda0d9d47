//! Source-range matching: is a client address inside any of a service's
//! allowed CIDR ranges (Kubernetes `loadBalancerSourceRanges`)?
//!
//! This runs on every accepted connection, and a service may list thousands
//! of ranges, so a linear scan over the networks is not acceptable. The
//! ranges are turned once into sorted, disjoint address intervals per
//! family, and a lookup is a binary search: `O(log n)`, no allocation.
//!
//! IPv4 clients that a dual-stack socket reports as IPv4-mapped IPv6
//! addresses (`::ffff:a.b.c.d`) are matched against the IPv4 ranges, because
//! they are IPv4 clients. For the same reason a range written in mapped form
//! (`::ffff:10.0.0.0/104`) is treated as the IPv4 range it denotes, while an
//! IPv6 range that merely includes the mapped block (`::/0`) stays an IPv6
//! range and matches no IPv4 client, as the ranges of each family are kept
//! apart in Kubernetes.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// First 96 bits of an IPv4-mapped IPv6 address, `::ffff:0:0/96`.
const MAPPED_PREFIX: u128 = 0xffff << 32;

/// A set of IPv4 and IPv6 ranges answering "does it contain this address?"
/// in logarithmic time.
///
/// An empty set contains nothing; whether "no ranges configured" means
/// "allow everyone" is for the caller to decide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceRangeSet {
    /// Inclusive `(first, last)` intervals, sorted, disjoint and
    /// non-adjacent, so that at most one can hold a given address.
    v4: Vec<(u32, u32)>,
    /// Same as `v4`, for IPv6 addresses outside `::ffff:0:0/96`.
    v6: Vec<(u128, u128)>,
}

impl SourceRangeSet {
    /// Builds the set from `networks`, in any order, overlapping or not.
    ///
    /// Host bits are ignored (`10.1.2.3/8` means `10.0.0.0/8`), as they are
    /// by `IpNetwork::contains`. Costs `O(n log n)` once.
    pub fn new(networks: &[IpNetwork]) -> Self {
        networks.iter().copied().collect()
    }

    /// True if `ip` lies in one of the ranges. IPv4-mapped IPv6 addresses
    /// are looked up as IPv4.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => interval_contains(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => interval_contains(&self.v4, u32::from(v4)),
                None => interval_contains(&self.v6, u128::from(v6)),
            },
        }
    }

    /// Number of intervals left after merging overlapping and adjacent
    /// ranges, over both families. `10.0.0.0/25` and `10.0.0.128/25` count
    /// once.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// True if the set contains no address at all.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

impl FromIterator<IpNetwork> for SourceRangeSet {
    fn from_iter<I: IntoIterator<Item = IpNetwork>>(networks: I) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for network in networks {
            match network {
                IpNetwork::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNetwork::V6(n) => {
                    let (first, last) = (u128::from(n.network()), u128::from(n.broadcast()));
                    // Mapped clients are looked up as IPv4, so a range that
                    // lies wholly inside the mapped block must be stored as
                    // IPv4 or it could never match.
                    if n.prefix() >= 96 && first >> 32 == MAPPED_PREFIX >> 32 {
                        // Truncation keeps exactly the embedded IPv4 address.
                        v4.push((first as u32, last as u32));
                    } else {
                        v6.push((first, last));
                    }
                }
            }
        }
        Self {
            v4: merge(v4, |a| a.saturating_add(1)),
            v6: merge(v6, |a| a.saturating_add(1)),
        }
    }
}

/// Sorts intervals and joins those that overlap or touch, so a lookup needs
/// to inspect only one interval. `successor` saturates at the top of the
/// address space, where "touching" cannot go further anyway.
fn merge<T: Ord + Copy>(mut intervals: Vec<(T, T)>, successor: impl Fn(T) -> T) -> Vec<(T, T)> {
    intervals.sort_unstable();
    let mut merged: Vec<(T, T)> = Vec::with_capacity(intervals.len());
    for (first, last) in intervals {
        match merged.last_mut() {
            Some(prev) if first <= successor(prev.1) => prev.1 = prev.1.max(last),
            _ => merged.push((first, last)),
        }
    }
    merged.shrink_to_fit();
    merged
}

/// Binary search over sorted disjoint intervals: the only candidate is the
/// last interval starting at or below `ip`.
#[inline]
fn interval_contains<T: Ord + Copy>(intervals: &[(T, T)], ip: T) -> bool {
    let after = intervals.partition_point(|&(first, _)| first <= ip);
    after.checked_sub(1).is_some_and(|i| intervals[i].1 >= ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SplitMix64;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn set(ranges: &[&str]) -> SourceRangeSet {
        let nets: Vec<IpNetwork> = ranges.iter().map(|r| r.parse().unwrap()).collect();
        SourceRangeSet::new(&nets)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_edges() {
        let s = set(&["10.1.0.0/16", "192.168.1.128/25"]);
        assert!(s.contains(ip("10.1.0.0")));
        assert!(s.contains(ip("10.1.255.255")));
        assert!(!s.contains(ip("10.0.255.255")));
        assert!(!s.contains(ip("10.2.0.0")));
        assert!(s.contains(ip("192.168.1.128")));
        assert!(s.contains(ip("192.168.1.255")));
        assert!(!s.contains(ip("192.168.1.127")));
        assert!(!s.contains(ip("192.168.2.0")));
        assert!(!s.contains(ip("0.0.0.0")));
        assert!(!s.contains(ip("255.255.255.255")));
        assert!(!s.contains(ip("::a01:0")), "v6 address with the same bits");
    }

    #[test]
    fn v6_edges() {
        let s = set(&["2001:db8:1::/48"]);
        assert!(s.contains(ip("2001:db8:1::")));
        assert!(s.contains(ip("2001:db8:1:ffff:ffff:ffff:ffff:ffff")));
        assert!(!s.contains(ip("2001:db8:0:ffff:ffff:ffff:ffff:ffff")));
        assert!(!s.contains(ip("2001:db8:2::")));
        assert!(
            !s.contains(ip("32.1.13.184")),
            "v4 address with the same bits"
        );
    }

    #[test]
    fn host_routes_and_everything() {
        let s = set(&["198.51.100.7/32", "2001:db8::7/128"]);
        assert!(s.contains(ip("198.51.100.7")));
        assert!(!s.contains(ip("198.51.100.6")));
        assert!(!s.contains(ip("198.51.100.8")));
        assert!(s.contains(ip("2001:db8::7")));
        assert!(!s.contains(ip("2001:db8::6")));
        assert!(!s.contains(ip("2001:db8::8")));
        assert_eq!(s.len(), 2);

        let s = set(&["0.0.0.0/0"]);
        for a in ["0.0.0.0", "255.255.255.255", "8.8.8.8", "::ffff:8.8.8.8"] {
            assert!(s.contains(ip(a)), "{a}");
        }
        assert!(!s.contains(ip("2001:db8::1")));

        let s = set(&["::/0"]);
        for a in [
            "::",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "2001:db8::1",
        ] {
            assert!(s.contains(ip(a)), "{a}");
        }
        assert!(!s.contains(ip("8.8.8.8")));
        assert!(
            !s.contains(ip("::ffff:8.8.8.8")),
            "a mapped client is an IPv4 client"
        );
    }

    #[test]
    fn top_and_bottom_of_the_address_space() {
        let s = set(&["255.255.255.254/31", "0.0.0.0/31", "ffff::/16", "::/16"]);
        assert!(s.contains(ip("255.255.255.255")));
        assert!(s.contains(ip("0.0.0.0")));
        assert!(!s.contains(ip("0.0.0.2")));
        assert!(!s.contains(ip("255.255.255.253")));
        assert!(s.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(s.contains(ip("::")));
        assert!(!s.contains(ip("fffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge() {
        let s = set(&[
            "10.0.0.0/25",
            "10.0.0.128/25", // adjacent to the first
            "10.0.0.64/26",  // inside
            "10.0.1.0/24",   // adjacent again
            "10.0.3.0/24",   // gap at 10.0.2.0/24
            "10.0.0.0/8",    // swallows all of the above
            "11.0.0.1/32",   // 11.0.0.0 is a gap
        ]);
        assert_eq!(s.len(), 2);
        assert!(s.contains(ip("10.0.2.9")));
        assert!(!s.contains(ip("11.0.0.0")));
        assert!(s.contains(ip("11.0.0.1")));

        let s = set(&["10.0.0.0/25", "10.0.0.128/25", "10.0.3.0/24"]);
        assert_eq!(s.len(), 2);
        assert!(s.contains(ip("10.0.0.127")) && s.contains(ip("10.0.0.128")));
        assert!(!s.contains(ip("10.0.1.0")));

        let s = set(&["2001:db8::/33", "2001:db8:8000::/33", "2001:db8::/32"]);
        assert_eq!(s.len(), 1);

        let s = set(&["10.0.0.0/24", "10.0.0.0/24"]);
        assert_eq!(s, set(&["10.0.0.0/24"]), "duplicates collapse");
    }

    #[test]
    fn host_bits_are_ignored() {
        let s = set(&["10.1.2.3/8", "2001:db8::1/32"]);
        assert!(s.contains(ip("10.0.0.0")));
        assert!(s.contains(ip("10.255.255.255")));
        assert!(s.contains(ip("2001:db8::")));
        assert_eq!(s, set(&["10.0.0.0/8", "2001:db8::/32"]));
    }

    #[test]
    fn mapped_v6_clients_match_v4_ranges() {
        let s = set(&["192.0.2.0/24"]);
        assert!(s.contains(ip("::ffff:192.0.2.1")));
        assert!(s.contains(IpAddr::V6(Ipv4Addr::new(192, 0, 2, 255).to_ipv6_mapped())));
        assert!(!s.contains(ip("::ffff:192.0.3.0")));
        // The deprecated IPv4-compatible form is a plain IPv6 address.
        assert!(!s.contains(ip("::192.0.2.1")));
    }

    #[test]
    fn ranges_written_as_mapped_v6_are_v4_ranges() {
        let s = set(&["::ffff:192.0.2.0/120"]);
        assert!(s.contains(ip("192.0.2.9")));
        assert!(s.contains(ip("::ffff:192.0.2.9")));
        assert!(!s.contains(ip("192.0.3.0")));
        assert_eq!(s, set(&["192.0.2.0/24"]));
        assert_eq!(set(&["::ffff:0:0/96"]), set(&["0.0.0.0/0"]));
    }

    #[test]
    fn empty_set() {
        let s = SourceRangeSet::new(&[]);
        assert!(s.is_empty());
        assert_eq!(s.len(), 0);
        assert!(!s.contains(ip("0.0.0.0")));
        assert!(!s.contains(ip("::")));
        assert!(!set(&["::/128"]).is_empty());
    }

    /// An address among the `2^bits` starting at 10.0.0.0: a small window
    /// makes ranges overlap and touch often and clients land on range edges.
    fn random_v4(rng: &mut SplitMix64, bits: u32) -> Ipv4Addr {
        Ipv4Addr::from(0x0a00_0000 | (rng.next_u64() as u32 & ((1 << bits) - 1)))
    }

    /// Same as [`random_v4`], in a window starting at 2001:db8::.
    fn random_v6(rng: &mut SplitMix64, bits: u32) -> Ipv6Addr {
        Ipv6Addr::from((0x2001_0db8u128 << 96) | u128::from(rng.next_u64() & ((1 << bits) - 1)))
    }

    fn naive(networks: &[IpNetwork], ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        networks.iter().any(|n| n.contains(ip))
    }

    #[test]
    fn matches_a_linear_scan() {
        let mut rng = SplitMix64(0x5eed);
        let (mut hits, mut checks) = (0usize, 0usize);
        for round in 0..200 {
            // Vary density: few or many ranges, narrow or wide windows.
            let count = 1 + rng.below(if round % 2 == 0 { 8 } else { 300 }) as usize;
            let bits = [8u32, 16, 24][round % 3];
            let networks: Vec<IpNetwork> = (0..count)
                .map(|_| {
                    if rng.below(4) == 0 {
                        let prefix = 128 - rng.below(u64::from(bits) + 1) as u8;
                        IpNetwork::new(random_v6(&mut rng, bits).into(), prefix).unwrap()
                    } else {
                        let prefix = 32 - rng.below(u64::from(bits) + 1) as u8;
                        IpNetwork::new(random_v4(&mut rng, bits).into(), prefix).unwrap()
                    }
                })
                .collect();
            let s = SourceRangeSet::new(&networks);
            assert!(s.len() <= networks.len());
            for _ in 0..500 {
                let client: IpAddr = match rng.below(8) {
                    0 | 1 => random_v6(&mut rng, bits).into(),
                    2 => random_v4(&mut rng, bits).to_ipv6_mapped().into(),
                    _ => random_v4(&mut rng, bits).into(),
                };
                let expected = naive(&networks, client);
                assert_eq!(s.contains(client), expected, "{client} in {networks:?}");
                hits += usize::from(expected);
                checks += 1;
            }
        }
        // Guards the generator: a cross-check that only sees misses (or
        // only hits) proves little.
        assert!(
            hits > checks / 10 && hits < checks * 9 / 10,
            "{hits}/{checks}"
        );
    }
}
