//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016) for choosing the node that a
//! client flow is forwarded to.
//!
//! Several edge instances sit behind ECMP and must send a given flow to the
//! same node without talking to each other, so that a flow whose packets
//! ECMP re-routes to another edge keeps its node. Maglev gives that with an
//! O(1) lookup, an almost perfectly even spread, and little disruption when
//! the node set changes.
//!
//! # Determinism contract
//!
//! Everything that decides a pick is part of the contract between edges,
//! including edges running different Portico versions during a rollout:
//! the table for a given set of `(id, weight)` pairs and size `M`, and
//! [`flow_hash`]. Backends are ordered by id (byte-wise) internally, so the
//! order in which the caller lists them never matters. Changing a seed, the
//! hash function, the ordering or the population scheme is a breaking change
//! that makes two edges disagree; `tests::golden_*` pins all of it.
//!
//! # Index spaces
//!
//! Indices returned by [`MaglevTable::lookup`], [`MaglevTable::candidates`]
//! and accepted by [`MaglevTable::backend_id`] are always positions in the
//! slice that was passed to [`MaglevTable::build`]. The id-sorted order is
//! private to this module, so the two cannot be confused.

use std::fmt;
use std::iter::FusedIterator;
use std::net::{IpAddr, SocketAddr};

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Largest number of backends (of any weight) a table accepts.
///
/// Entries are stored as `u16`, and `u16::MAX` is reserved to mark empty
/// slots while the table is populated, which leaves 65,535 usable indices.
pub const MAX_BACKENDS: usize = u16::MAX as usize;

/// Seed of the hash giving each backend's `offset` ("mgoffset" in ASCII).
const OFFSET_SEED: u64 = 0x6d67_6f66_6673_6574;
/// Seed of the hash giving each backend's `skip` ("mglvskip" in ASCII).
/// It must differ from [`OFFSET_SEED`] so that offset and skip are
/// independent, as the paper requires of `h1` and `h2`.
const SKIP_SEED: u64 = 0x6d67_6c76_736b_6970;
/// Seed of [`flow_hash`] ("portico1" in ASCII).
const FLOW_HASH_SEED: u64 = 0x706f_7274_6963_6f31;

/// Marks a slot that no backend has claimed yet during population.
const EMPTY: u16 = u16::MAX;

/// One backend as the caller describes it to [`MaglevTable::build`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaglevBackend<'a> {
    /// Stable identity of the backend: the node name. Only the id (never the
    /// address or the position in the input) decides where a backend lands
    /// in the table, so it must be the same string on every edge.
    pub id: &'a str,
    /// Relative share of the table; a backend receives about
    /// `weight / sum(weights)` of the entries. Weight 0 means no entries,
    /// exactly as if the backend were absent.
    pub weight: u32,
}

/// Why [`MaglevTable::build`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// More backends than [`MAX_BACKENDS`] were given.
    #[error("{count} backends exceed the Maglev limit of {MAX_BACKENDS}")]
    TooManyBackends {
        /// Number of backends that were given.
        count: usize,
    },
    /// The table size is not a prime. Maglev needs a prime `M` so that every
    /// `skip` in `1..M` is coprime with `M` and each backend's preference
    /// list is a full permutation of the slots.
    #[error("Maglev table size {size} is not a prime")]
    SizeNotPrime {
        /// The rejected size.
        size: u32,
    },
    /// Two backends share an id, which would make the table depend on input
    /// order and make two edges disagree.
    #[error("backend id {id:?} is listed more than once")]
    DuplicateId {
        /// The repeated id.
        id: String,
    },
}

/// A Maglev lookup table mapping a 64-bit flow hash to a backend.
///
/// Build it once per change of the backend set and share it read-only;
/// lookups take `&self` and neither lock nor allocate.
#[derive(Clone)]
pub struct MaglevTable {
    /// The `M` slots, holding indices in id-sorted ("canonical") order so
    /// that the slots are byte-identical on every edge. Empty when no backend
    /// has a positive weight.
    entries: Vec<u16>,
    /// For each canonical index, the caller's index.
    canonical_to_input: Vec<u16>,
    /// Backend ids in the caller's order, for [`MaglevTable::backend_id`].
    ids: Vec<Box<str>>,
    /// Number of distinct backends that own at least one slot; bounds
    /// [`Candidates`].
    populated: usize,
    /// The requested `M`, kept even when `entries` is empty.
    size: u32,
}

impl fmt::Debug for MaglevTable {
    // The slots are tens of thousands of numbers; printing them helps nobody.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaglevTable")
            .field("size", &self.size)
            .field("backends", &self.ids.len())
            .field("populated", &self.populated)
            .finish_non_exhaustive()
    }
}

/// Per-backend state while the table is populated: where the backend is in
/// its preference list, `permutation[j] = (offset + j * skip) mod M`.
struct Filler {
    canonical: u16,
    weight: u64,
    credit: u64,
    skip: u64,
    /// `permutation[next]` in the paper, kept as a slot number so no
    /// multiplication is needed (and none can overflow).
    next_slot: u64,
}

impl MaglevTable {
    /// Builds the table for `backends` with `size` (`M`) slots.
    ///
    /// `size` must be a prime. The Maglev paper recommends `M >= 100 * N`,
    /// so 65,537 suits up to ~650 nodes. A larger `M` also lowers the extra
    /// disruption Maglev causes beyond the leaving node's own flows: when one
    /// of 1,000 nodes leaves, about 0.7% of all flows move at `M = 65,537`
    /// and 0.4% at `M = 655,373`, against an ideal 0.1% (see
    /// `benches/maglev.rs`). Memory is 2 bytes per slot. Building costs
    /// `O(M log M)` slot probes for equal weights (about 2 ms at 65,537,
    /// 30 ms at 655,373), and at most `O(M * N)` steps for very skewed ones.
    ///
    /// The result depends only on the set of `(id, weight)` pairs and on
    /// `size`, never on the order of `backends`.
    ///
    /// # Population
    ///
    /// This is Pseudocode 1 of the paper with weighted turns: backend `i`
    /// has `offset = h1(id) mod M` and `skip = h2(id) mod (M - 1) + 1`
    /// (`h1`, `h2` are xxh3 with two fixed seeds). Backends take turns in id
    /// order; on each turn a backend claims the next free slot of its
    /// permutation. To weight them, every round each backend adds its weight
    /// to a credit and takes a turn only when the credit reaches the largest
    /// weight (which then is subtracted). The heaviest backend thus takes a
    /// turn every round and backend `i` in a fraction `w_i / w_max` of them,
    /// and since each turn claims exactly one slot, backend `i` ends up with
    /// `w_i / sum(w)` of the slots, to within one slot. With equal weights
    /// this is the paper's scheme unchanged. Weight-0 backends never take a
    /// turn.
    ///
    /// # Errors
    ///
    /// [`MaglevError::TooManyBackends`] above [`MAX_BACKENDS`],
    /// [`MaglevError::SizeNotPrime`] when `size` is not prime, and
    /// [`MaglevError::DuplicateId`] when two backends share an id.
    pub fn build(backends: &[MaglevBackend<'_>], size: u32) -> Result<Self, MaglevError> {
        if backends.len() > MAX_BACKENDS {
            return Err(MaglevError::TooManyBackends {
                count: backends.len(),
            });
        }
        if !is_prime(size) {
            return Err(MaglevError::SizeNotPrime { size });
        }

        // `backends.len() <= MAX_BACKENDS` was checked above, so every input
        // index fits in a u16 below the EMPTY marker.
        let mut canonical_to_input: Vec<u16> = (0..=u16::MAX).take(backends.len()).collect();
        canonical_to_input.sort_unstable_by_key(|&i| backends[usize::from(i)].id);
        if let Some(pair) = canonical_to_input
            .windows(2)
            .find(|pair| backends[usize::from(pair[0])].id == backends[usize::from(pair[1])].id)
        {
            return Err(MaglevError::DuplicateId {
                id: backends[usize::from(pair[0])].id.to_owned(),
            });
        }

        let entries = populate(backends, &canonical_to_input, size);
        let mut owns_a_slot = vec![false; backends.len()];
        for &e in &entries {
            owns_a_slot[usize::from(e)] = true;
        }
        Ok(Self {
            populated: owns_a_slot.iter().filter(|&&owns| owns).count(),
            entries,
            canonical_to_input,
            ids: backends.iter().map(|b| Box::from(b.id)).collect(),
            size,
        })
    }

    /// The backend for a flow: an index into the slice given to
    /// [`MaglevTable::build`], or `None` when no backend has a positive
    /// weight.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        let canonical = *self.entries.get(self.slot_of(hash)?)?;
        Some(self.input_index(canonical))
    }

    /// Backends to try for a flow, best first: the first item equals
    /// [`MaglevTable::lookup`], and each following one is the next backend
    /// not yet yielded when walking the table forward (wrapping) from the
    /// flow's slot. Every backend that owns at least one slot is yielded
    /// exactly once; weight-0 backends never are.
    ///
    /// The order is deterministic, so every edge retries the same way, and a
    /// backend is reached as a fallback about as often as its share of the
    /// table. Taking only the first item does not allocate; asking for a
    /// second allocates one bitset of `N` bits.
    pub fn candidates(&self, hash: u64) -> Candidates<'_> {
        let start = self.slot_of(hash).unwrap_or(0);
        Candidates {
            table: self,
            slot: start,
            steps_left: self.entries.len(),
            remaining: self.populated,
            first: None,
            seen: Vec::new(),
        }
    }

    /// The id of the backend at `index` in the slice given to
    /// [`MaglevTable::build`], or `None` if out of range.
    pub fn backend_id(&self, index: usize) -> Option<&str> {
        self.ids.get(index).map(|id| &**id)
    }

    /// Number of backends given to [`MaglevTable::build`], including those
    /// with weight 0.
    pub fn backend_count(&self) -> usize {
        self.ids.len()
    }

    /// The number of slots `M` the table was built with.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// True when no backend has a positive weight, so every lookup is `None`.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many slots each backend owns, indexed like the slice given to
    /// [`MaglevTable::build`]. Meant for metrics and diagnostics: a backend's
    /// expected share of flows is its count divided by [`MaglevTable::size`].
    pub fn entry_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.ids.len()];
        for &e in &self.entries {
            counts[self.input_index(e)] += 1;
        }
        counts
    }

    #[inline]
    fn slot_of(&self, hash: u64) -> Option<usize> {
        // `len` fits in u32 (it is `size` or 0) and the remainder is below
        // it, so both conversions are lossless.
        let len = self.entries.len() as u64;
        (len != 0).then(|| (hash % len) as usize)
    }

    #[inline]
    fn input_index(&self, canonical: u16) -> usize {
        usize::from(self.canonical_to_input[usize::from(canonical)])
    }
}

/// Fills the `M` slots with canonical indices (see [`MaglevTable::build`]).
fn populate(backends: &[MaglevBackend<'_>], canonical_to_input: &[u16], size: u32) -> Vec<u16> {
    let m = u64::from(size);
    let mut fillers: Vec<Filler> = canonical_to_input
        .iter()
        .zip(0u16..)
        .filter_map(|(&input, canonical)| {
            let b = backends[usize::from(input)];
            (b.weight > 0).then(|| {
                let offset = xxh3_64_with_seed(b.id.as_bytes(), OFFSET_SEED) % m;
                let skip = xxh3_64_with_seed(b.id.as_bytes(), SKIP_SEED) % (m - 1) + 1;
                Filler {
                    canonical,
                    weight: u64::from(b.weight),
                    credit: 0,
                    skip,
                    next_slot: offset,
                }
            })
        })
        .collect();
    let Some(max_weight) = fillers.iter().map(|f| f.weight).max() else {
        return Vec::new();
    };

    let mut entries = vec![EMPTY; size as usize];
    let mut filled = 0u64;
    // Terminates: the heaviest backend takes a turn every round, and each
    // turn claims a slot because `skip` is coprime with the prime `m`, so a
    // permutation reaches every slot, free ones included.
    loop {
        for f in &mut fillers {
            f.credit += f.weight;
            if f.credit < max_weight {
                continue;
            }
            f.credit -= max_weight;
            let mut slot = f.next_slot;
            while entries[slot as usize] != EMPTY {
                slot = (slot + f.skip) % m;
            }
            entries[slot as usize] = f.canonical;
            f.next_slot = (slot + f.skip) % m;
            filled += 1;
            if filled == m {
                return entries;
            }
        }
    }
}

/// Trial division is plenty: the largest divisor to try for a u32 is 65,535,
/// and this runs once per table build.
fn is_prime(n: u32) -> bool {
    let n = u64::from(n);
    if n < 4 {
        return n >= 2;
    }
    if n % 2 == 0 || n % 3 == 0 {
        return false;
    }
    let mut d = 5u64;
    while d * d <= n {
        if n % d == 0 || n % (d + 2) == 0 {
            return false;
        }
        d += 6;
    }
    true
}

/// Iterator returned by [`MaglevTable::candidates`]: distinct backend
/// indices (into the slice given to [`MaglevTable::build`]), best first.
#[derive(Debug, Clone)]
pub struct Candidates<'a> {
    table: &'a MaglevTable,
    slot: usize,
    /// Slots not yet visited; caps the walk at one lap of the table.
    steps_left: usize,
    /// Backends owning slots that were not yielded yet.
    remaining: usize,
    /// The first pick, remembered so that the bitset can be allocated lazily.
    first: Option<u16>,
    /// Canonical indices already yielded, one bit each; empty until the
    /// second call to `next`.
    seen: Vec<u64>,
}

impl Candidates<'_> {
    /// Returns the entry at the current slot and moves one slot forward.
    fn step(&mut self) -> u16 {
        let entry = self.table.entries[self.slot];
        self.slot += 1;
        if self.slot == self.table.entries.len() {
            self.slot = 0;
        }
        self.steps_left -= 1;
        entry
    }

    /// Marks `canonical` as yielded; false if it already was.
    fn mark(&mut self, canonical: u16) -> bool {
        let (word, bit) = (usize::from(canonical) / 64, canonical % 64);
        let mask = 1u64 << bit;
        let fresh = self.seen[word] & mask == 0;
        self.seen[word] |= mask;
        fresh
    }
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.remaining == 0 || self.steps_left == 0 {
            return None;
        }
        match self.first {
            None => {
                let canonical = self.step();
                self.first = Some(canonical);
                self.remaining -= 1;
                return Some(self.table.input_index(canonical));
            }
            Some(first) if self.seen.is_empty() => {
                self.seen = vec![0; self.table.canonical_to_input.len().div_ceil(64)];
                self.mark(first);
            }
            Some(_) => {}
        }
        while self.steps_left > 0 {
            let canonical = self.step();
            if self.mark(canonical) {
                self.remaining -= 1;
                return Some(self.table.input_index(canonical));
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        // One lap visits every slot and so every populated backend, hence
        // the count is exact.
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for Candidates<'_> {}
impl FusedIterator for Candidates<'_> {}

/// Hash of a client address for [`MaglevTable::lookup`].
///
/// The input is the client IP's bytes in network order (4 for IPv4, 16 for
/// IPv6), followed by the port as 2 big-endian bytes unless
/// `client_ip_only`, hashed with XXH3-64 (`XXH3_64bits_withSeed`, whose
/// output the xxHash 0.8 specification fixes) and the seed
/// `0x706f_7274_6963_6f31`. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`,
/// as a dual-stack socket reports IPv4 clients) is hashed as the IPv4
/// address, so a client maps to the same node whichever socket family an
/// edge uses.
///
/// This is part of the contract between edges: every edge, whatever its
/// version or process, must compute the same value for the same client, or
/// a flow that moves between edges would change nodes. Any change to it is
/// a breaking change.
pub fn flow_hash(client: SocketAddr, client_ip_only: bool) -> u64 {
    let mut buf = [0u8; 18];
    let ip_len = match client.ip() {
        IpAddr::V4(v4) => {
            buf[..4].copy_from_slice(&v4.octets());
            4
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => {
                buf[..4].copy_from_slice(&v4.octets());
                4
            }
            None => {
                buf[..16].copy_from_slice(&v6.octets());
                16
            }
        },
    };
    let len = if client_ip_only {
        ip_len
    } else {
        buf[ip_len..ip_len + 2].copy_from_slice(&client.port().to_be_bytes());
        ip_len + 2
    };
    xxh3_64_with_seed(&buf[..len], FLOW_HASH_SEED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SplitMix64;
    use std::collections::HashSet;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

    const M: u32 = 65_537;

    fn node_names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i:04}")).collect()
    }

    fn equal(names: &[String]) -> Vec<MaglevBackend<'_>> {
        names
            .iter()
            .map(|id| MaglevBackend { id, weight: 1 })
            .collect()
    }

    /// Realistic flow hashes: random IPv4 clients with random ports.
    fn flow_hashes(n: usize, seed: u64) -> Vec<u64> {
        let mut rng = SplitMix64(seed);
        (0..n)
            .map(|_| {
                let r = rng.next_u64();
                let addr = SocketAddrV4::new(Ipv4Addr::from(r as u32), (r >> 32) as u16);
                flow_hash(addr.into(), false)
            })
            .collect()
    }

    fn pick(table: &MaglevTable, hash: u64) -> Option<&str> {
        table.lookup(hash).and_then(|i| table.backend_id(i))
    }

    #[test]
    fn input_order_does_not_matter() {
        let names = node_names(50);
        let backends: Vec<MaglevBackend<'_>> = names
            .iter()
            .enumerate()
            .map(|(i, id)| MaglevBackend {
                id,
                weight: 1 + (i % 3) as u32,
            })
            .collect();
        let mut shuffled = backends.clone();
        let mut rng = SplitMix64(7);
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        assert_ne!(backends, shuffled, "the shuffle must change the order");

        let a = MaglevTable::build(&backends, M).unwrap();
        let b = MaglevTable::build(&shuffled, M).unwrap();
        assert_eq!(a.entries, b.entries, "slots must be byte-identical");
        for h in flow_hashes(10_000, 1) {
            assert_eq!(pick(&a, h), pick(&b, h));
            let ids_a: Vec<_> = a.candidates(h).map(|i| a.backend_id(i)).collect();
            let ids_b: Vec<_> = b.candidates(h).map(|i| b.backend_id(i)).collect();
            assert_eq!(ids_a, ids_b);
        }
    }

    #[test]
    fn lookup_indexes_the_callers_slice() {
        let backends = [
            MaglevBackend {
                id: "zulu",
                weight: 1,
            },
            MaglevBackend {
                id: "alpha",
                weight: 0,
            },
            MaglevBackend {
                id: "mike",
                weight: 1,
            },
        ];
        let table = MaglevTable::build(&backends, 251).unwrap();
        let mut hit = HashSet::new();
        for h in 0..251 {
            let i = table.lookup(h).unwrap();
            assert_eq!(table.backend_id(i), Some(backends[i].id));
            hit.insert(i);
        }
        assert_eq!(hit, HashSet::from([0, 2]));
        assert_eq!(table.backend_id(3), None);
        assert_eq!(table.backend_count(), 3);
    }

    #[test]
    fn equal_weights_spread_within_one_slot() {
        let names = node_names(10);
        let table = MaglevTable::build(&equal(&names), M).unwrap();
        let counts = table.entry_counts();
        let ideal = f64::from(M) / 10.0;
        for &c in &counts {
            assert!(
                (f64::from(c) - ideal).abs() <= ideal * 0.02,
                "{c} vs {ideal}"
            );
        }
        // The paper's round-robin gives every backend the same number of
        // slots give or take one, far inside the ±2% above.
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= 1, "{counts:?}");
        assert_eq!(counts.iter().sum::<u32>(), M);
    }

    #[test]
    fn weights_give_proportional_shares() {
        let backends = [
            MaglevBackend {
                id: "light",
                weight: 1,
            },
            MaglevBackend {
                id: "heavy",
                weight: 3,
            },
        ];
        let table = MaglevTable::build(&backends, M).unwrap();
        let counts = table.entry_counts();
        let share = f64::from(counts[0]) / f64::from(M);
        assert!((share - 0.25).abs() < 0.001, "light share {share}");

        // Flows follow the slots.
        let flows = flow_hashes(100_000, 2);
        let light = flows
            .iter()
            .filter(|&&h| table.lookup(h) == Some(0))
            .count();
        let flow_share = light as f64 / flows.len() as f64;
        assert!((flow_share - 0.25).abs() < 0.01, "light flows {flow_share}");

        let names = node_names(4);
        let mixed: Vec<MaglevBackend<'_>> = names
            .iter()
            .zip([1u32, 2, 3, 4])
            .map(|(id, weight)| MaglevBackend { id, weight })
            .collect();
        let table = MaglevTable::build(&mixed, M).unwrap();
        for (c, w) in table.entry_counts().into_iter().zip([1.0, 2.0, 3.0, 4.0]) {
            let share = f64::from(c) / f64::from(M);
            assert!((share - w / 10.0).abs() < 0.001, "weight {w}: {share}");
        }
    }

    #[test]
    fn weight_zero_is_the_same_as_absent() {
        let names = node_names(20);
        let mut with_drained = equal(&names);
        with_drained[7].weight = 0;
        let mut without: Vec<MaglevBackend<'_>> = equal(&names);
        without.remove(7);

        let a = MaglevTable::build(&with_drained, M).unwrap();
        let b = MaglevTable::build(&without, M).unwrap();
        assert_eq!(a.entry_counts()[7], 0);
        for h in flow_hashes(20_000, 3) {
            assert_eq!(pick(&a, h), pick(&b, h));
            assert!(a.candidates(h).all(|i| i != 7));
        }
    }

    #[test]
    fn empty_tables_pick_nothing() {
        let names = node_names(3);
        let mut zero = equal(&names);
        for b in &mut zero {
            b.weight = 0;
        }
        for backends in [&[][..], &zero[..]] {
            let table = MaglevTable::build(backends, 13).unwrap();
            assert!(table.is_empty());
            assert_eq!(table.size(), 13);
            for h in [0, 1, u64::MAX] {
                assert_eq!(table.lookup(h), None);
                assert_eq!(table.candidates(h).next(), None);
            }
        }
    }

    #[test]
    fn removing_one_of_100_moves_little_more_than_its_flows() {
        let names = node_names(100);
        let before = MaglevTable::build(&equal(&names), M).unwrap();
        let leaving = "node-0042";
        let survivors: Vec<MaglevBackend<'_>> = equal(&names)
            .into_iter()
            .filter(|b| b.id != leaving)
            .collect();
        let after = MaglevTable::build(&survivors, M).unwrap();

        let flows = flow_hashes(100_000, 4);
        let (mut moved, mut moved_from_survivors, mut on_leaving) = (0usize, 0usize, 0usize);
        for &h in &flows {
            let (old, new) = (pick(&before, h).unwrap(), pick(&after, h).unwrap());
            assert_ne!(new, leaving);
            if old == leaving {
                on_leaving += 1;
            }
            if old != new {
                moved += 1;
                if old != leaving {
                    moved_from_survivors += 1;
                }
            }
        }
        let total = flows.len() as f64;
        eprintln!(
            "N=100, one leaves: moved {moved} of {} flows ({:.3}%), {on_leaving} were on the \
             leaving node, {moved_from_survivors} ({:.3}%) were on surviving nodes",
            flows.len(),
            100.0 * moved as f64 / total,
            100.0 * moved_from_survivors as f64 / total,
        );
        assert!(moved as f64 / total <= 0.01 + 0.01, "moved {moved}");
        assert!(moved_from_survivors as f64 / total <= 0.01);
        assert!(on_leaving > 0, "the leaving node must have had flows");
    }

    #[test]
    fn candidates_are_distinct_start_with_lookup_and_cover_all() {
        let names = node_names(30);
        let mut backends = equal(&names);
        backends[4].weight = 0;
        backends[9].weight = 5;
        let table = MaglevTable::build(&backends, 4_099).unwrap();
        let expected: HashSet<usize> = (0..30).filter(|&i| i != 4).collect();
        for h in flow_hashes(2_000, 5) {
            let all: Vec<usize> = table.candidates(h).collect();
            assert_eq!(all.first().copied(), table.lookup(h));
            assert_eq!(all.len(), expected.len());
            assert_eq!(all.iter().copied().collect::<HashSet<_>>(), expected);
            assert_eq!(table.candidates(h).len(), expected.len());
        }
    }

    #[test]
    fn candidates_skip_backends_without_slots() {
        // With fewer slots than backends some cannot own a slot; candidates
        // must still end instead of searching for them.
        let names = node_names(20);
        let table = MaglevTable::build(&equal(&names), 7).unwrap();
        let owners: HashSet<usize> = (0..7).filter_map(|h| table.lookup(h)).collect();
        assert_eq!(owners.len(), 7);
        let all: Vec<usize> = table.candidates(3).collect();
        assert_eq!(all.iter().copied().collect::<HashSet<_>>(), owners);
        assert_eq!(all.len(), owners.len());
    }

    #[test]
    fn rejects_bad_input() {
        let dup = [
            MaglevBackend { id: "a", weight: 1 },
            MaglevBackend { id: "b", weight: 1 },
            MaglevBackend { id: "a", weight: 2 },
        ];
        assert_eq!(
            MaglevTable::build(&dup, 13).unwrap_err(),
            MaglevError::DuplicateId { id: "a".into() }
        );
        for size in [0, 1, 4, 65_535, 65_541, u32::MAX] {
            assert_eq!(
                MaglevTable::build(&dup[..2], size).unwrap_err(),
                MaglevError::SizeNotPrime { size }
            );
        }
        for size in [2, 3, 13, 65_537, 4_294_967_291] {
            assert!(is_prime(size), "{size}");
        }

        let names = node_names(MAX_BACKENDS + 1);
        let too_many = equal(&names);
        assert_eq!(
            MaglevTable::build(&too_many, M).unwrap_err(),
            MaglevError::TooManyBackends {
                count: MAX_BACKENDS + 1
            }
        );
        let table = MaglevTable::build(&too_many[..MAX_BACKENDS], M).unwrap();
        assert_eq!(table.backend_count(), MAX_BACKENDS);
        assert!(table.entry_counts().iter().all(|&c| (1..=2).contains(&c)));
    }

    #[test]
    fn flow_hash_treats_mapped_v6_as_v4() {
        let v4 = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 10), 40_000));
        let mapped = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 10).to_ipv6_mapped(), 40_000));
        for ip_only in [false, true] {
            assert_eq!(flow_hash(v4, ip_only), flow_hash(mapped, ip_only));
        }
        let other_port = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 10), 40_001));
        assert_ne!(flow_hash(v4, false), flow_hash(other_port, false));
        assert_eq!(flow_hash(v4, true), flow_hash(other_port, true));

        let v6 = SocketAddrV6::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 443, 0, 0);
        let v6_scoped = SocketAddrV6::new(*v6.ip(), 443, 7, 3);
        assert_eq!(
            flow_hash(v6.into(), false),
            flow_hash(v6_scoped.into(), false),
            "flow info and scope id are not part of the flow"
        );
    }

    /// Pins the hash values every edge must agree on. If this fails, edges
    /// of different versions would send the same client to different nodes.
    #[test]
    fn golden_flow_hash() {
        let v4 = SocketAddr::from((Ipv4Addr::new(203, 0, 113, 7), 51_000));
        let v6 = SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x42), 51_000));
        assert_eq!(flow_hash(v4, false), GOLDEN_V4_PORT);
        assert_eq!(flow_hash(v4, true), GOLDEN_V4_IP);
        assert_eq!(flow_hash(v6, false), GOLDEN_V6_PORT);
        assert_eq!(flow_hash(v6, true), GOLDEN_V6_IP);
        // The byte layout documented on `flow_hash`: address, then port.
        let documented = xxh3_64_with_seed(&[203, 0, 113, 7, 0xc7, 0x38], 0x706f_7274_6963_6f31);
        assert_eq!(documented, GOLDEN_V4_PORT);
    }

    const GOLDEN_V4_PORT: u64 = 0xc6bb_29f2_a321_00b6;
    const GOLDEN_V4_IP: u64 = 0x770a_a8cc_6d7b_2870;
    const GOLDEN_V6_PORT: u64 = 0x9fd0_0e6b_e8c1_ac09;
    const GOLDEN_V6_IP: u64 = 0x794d_f4a7_905c_db1d;

    /// Pins a whole small table, i.e. the seeds, the id ordering and the
    /// weighted population scheme.
    #[test]
    fn golden_table() {
        let backends = [
            MaglevBackend {
                id: "node-c",
                weight: 2,
            },
            MaglevBackend {
                id: "node-a",
                weight: 1,
            },
            MaglevBackend {
                id: "node-b",
                weight: 1,
            },
        ];
        let table = MaglevTable::build(&backends, 17).unwrap();
        let ids: String = (0..17)
            .map(|h| &table.backend_id(table.lookup(h).unwrap()).unwrap()[5..])
            .collect();
        assert_eq!(ids, GOLDEN_TABLE);
        assert_eq!(table.entry_counts(), [9, 4, 4]);
    }

    const GOLDEN_TABLE: &str = "baccccccbbaacbacc";
}
