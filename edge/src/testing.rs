//! Deterministic data for tests and benchmarks (shared so unit tests and the
//! benches in `benches/` generate the same inputs). Not part of the edge's
//! behaviour, and not in its build: only unit tests and the `testing`
//! feature (which the edge's own tests and benches turn on) compile it.

/// SplitMix64: a tiny, fast, deterministic PRNG, so tests and benchmarks need
/// no `rand` and measure the same data on every run.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (`n > 0`; slightly biased, fine for test data).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_deterministic_and_matches_the_reference_sequence() {
        // First outputs of SplitMix64 seeded with 0 (reference implementation).
        let mut r = SplitMix64(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        let mut a = SplitMix64(42);
        let mut b = SplitMix64(42);
        assert!((0..100).all(|_| a.below(10) == b.below(10)));
    }
}
