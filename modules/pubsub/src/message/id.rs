//! Message ids: unique within a tenant across restarts of the module, and
//! revealing nothing of how many messages anyone else published.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Rounds of the Feistel network that scrambles the counter. Four rounds of
/// a pseudo-random function make a pseudo-random permutation (Luby and
/// Rackoff); more would only cost time.
const ROUNDS: u32 = 4;

/// Hands out message ids that are unique within a tenant across restarts:
/// a random 64-bit prefix per module instance, then a counter scrambled by
/// a secret permutation.
///
/// CloudEvents requires `source` + `id` to be unique; the source is the
/// tenant, and two instances picking the same random prefix is as likely as
/// two random UUIDs colliding in their low half. Within an instance the
/// counter never repeats and the permutation is a bijection, so ids never
/// repeat either.
///
/// The counter is shared by every tenant of the instance, so it is not
/// shown as it is: a tenant comparing the ids of two of its own publishes
/// would otherwise learn how many messages other tenants published in
/// between. Through a keyed permutation the ids look random, and nothing
/// about the counter can be read from them without the key, which never
/// leaves the process.
#[derive(Debug)]
pub struct IdSource {
    prefix: u64,
    /// The secret key of the permutation's round function.
    key: RandomState,
    counter: AtomicU64,
}

impl Default for IdSource {
    fn default() -> Self {
        Self::new()
    }
}

impl IdSource {
    /// A source with a fresh random prefix and permutation key.
    pub fn new() -> Self {
        // `RandomState` is seeded from the operating system's randomness,
        // which spares a dependency for 64 random bits; the clock and pid
        // are mixed in so that even a degenerate seed differs per instance.
        let mut hasher = RandomState::new().build_hasher();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        hasher.write_u128(nanos);
        hasher.write_u32(std::process::id());
        Self {
            prefix: hasher.finish(),
            key: RandomState::new(),
            counter: AtomicU64::new(1),
        }
    }

    /// The next id, e.g. `3f2a9c4b1d0e8f71-8c1d07a2e95b3f04`.
    pub fn next_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{:016x}", self.prefix, self.scramble(n))
    }

    /// `n` through a balanced Feistel network over its two 32-bit halves,
    /// whose round function is SipHash (std's `RandomState`) under this
    /// source's secret key. A Feistel network is a permutation whatever its
    /// round function, so distinct counters give distinct results.
    fn scramble(&self, n: u64) -> u64 {
        let (mut left, mut right) = ((n >> 32) as u32, n as u32);
        for round in 0..ROUNDS {
            let mixed = self.key.hash_one((round, right)) as u32;
            (left, right) = (right, left ^ mixed);
        }
        (u64::from(left) << 32) | u64::from(right)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_are_distinct() {
        let a = IdSource::new();
        let b = IdSource::new();
        let ids: HashSet<String> = (0..100).flat_map(|_| [a.next_id(), b.next_id()]).collect();
        assert_eq!(ids.len(), 200);
    }

    #[test]
    fn the_scrambled_counter_is_a_permutation_that_hides_the_count() {
        let source = IdSource::new();
        let scrambled: Vec<u64> = (1..=100_000).map(|n| source.scramble(n)).collect();
        let distinct: HashSet<u64> = scrambled.iter().copied().collect();
        assert_eq!(distinct.len(), scrambled.len());
        // Consecutive counters land far apart, in no particular order, so
        // the gap between two ids says nothing about how many came between.
        let close = scrambled
            .windows(2)
            .filter(|w| w[0].abs_diff(w[1]) < 1 << 40)
            .count();
        assert!(close < 100, "{close} of 100000 neighbours are close");
        let rising = scrambled.windows(2).filter(|w| w[0] < w[1]).count();
        assert!((45_000..55_000).contains(&rising), "{rising} rise");
    }
}
