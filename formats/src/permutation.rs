//! A keyed permutation of `0..n` computed one element at a time, in O(1) memory.
//!
//! A balanced Feistel network over the smallest even number of bits covering `n`, with cycle walking:
//! values that land outside `0..n` are permuted again until they land inside. Because a Feistel network
//! is a bijection on its domain, cycle walking makes a bijection on `0..n`. The domain is below `4n`,
//! so the expected number of walks is below 4. Used by `flame-prep --shuffle` and by the stream
//! server's per-epoch document order; nothing is materialised, so 10^9 documents cost nothing at start-up.

/// A seeded bijection on `0..len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permutation {
    len: u64,
    half_bits: u32,
    keys: [u64; ROUNDS],
}

const ROUNDS: usize = 6;

impl Permutation {
    /// The permutation of `0..len` for `seed`.
    pub fn new(len: u64, seed: u64) -> Self {
        let bits = 64 - len.saturating_sub(1).leading_zeros();
        let half_bits = bits.div_ceil(2).max(1);
        let mut state = seed;
        let keys = std::array::from_fn(|_| splitmix64(&mut state));
        Self {
            len,
            half_bits,
            keys,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the permutation is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The image of `index`.
    ///
    /// # Panics
    /// If `index >= len`.
    pub fn apply(&self, index: u64) -> u64 {
        assert!(index < self.len, "index {index} out of 0..{}", self.len);
        let mut value = index;
        loop {
            value = self.feistel(value);
            if value < self.len {
                return value;
            }
        }
    }

    fn feistel(&self, value: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut left, mut right) = (value >> self.half_bits, value & mask);
        for key in self.keys {
            let mut state = key ^ right;
            (left, right) = (right, (left ^ splitmix64(&mut state)) & mask);
        }
        (left << self.half_bits) | right
    }
}

/// splitmix64: a fast, well-mixed 64-bit step (Steele, Lea, Flood 2014).
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A key derived from `seed` and `parts` (each folded in by one splitmix64 step): the keys of the
/// permutations a seeded order is made of, one per (purpose, epoch, block, ...) tuple.
pub fn derive_key(seed: u64, parts: &[u64]) -> u64 {
    let mut state = seed;
    for &p in parts {
        state ^= p;
        state = splitmix64(&mut state);
    }
    state
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn is_a_bijection(len in 0u64..3000, seed in any::<u64>()) {
            let permutation = Permutation::new(len, seed);
            let mut seen = vec![false; usize::try_from(len).unwrap()];
            for i in 0..len {
                let j = permutation.apply(i);
                prop_assert!(j < len);
                let slot = &mut seen[usize::try_from(j).unwrap()];
                prop_assert!(!*slot, "{} hit twice", j);
                *slot = true;
            }
        }
    }

    #[test]
    fn depends_on_the_seed_and_nothing_else() {
        let a: Vec<u64> = (0..1000)
            .map(|i| Permutation::new(1000, 1).apply(i))
            .collect();
        let b: Vec<u64> = (0..1000)
            .map(|i| Permutation::new(1000, 1).apply(i))
            .collect();
        let c: Vec<u64> = (0..1000)
            .map(|i| Permutation::new(1000, 2).apply(i))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(
            a.iter()
                .enumerate()
                .filter(|&(i, &v)| i as u64 == v)
                .count()
                < 20,
            "close to a random permutation"
        );
    }

    #[test]
    fn large_domains_need_no_memory() {
        let permutation = Permutation::new(1 << 40, 7);
        let image = permutation.apply((1 << 40) - 1);
        assert!(image < 1 << 40);
    }
}
