//! Message ids: unique within a tenant across restarts of the module.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Hands out message ids that are unique within a tenant across restarts:
/// a random 64-bit prefix per module instance, then a counter.
///
/// CloudEvents requires `source` + `id` to be unique; the source is the
/// tenant, and two instances picking the same random prefix is as likely as
/// two random UUIDs colliding in their low half.
#[derive(Debug)]
pub struct IdSource {
    prefix: u64,
    counter: AtomicU64,
}

impl Default for IdSource {
    fn default() -> Self {
        Self::new()
    }
}

impl IdSource {
    /// A source with a fresh random prefix.
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
            counter: AtomicU64::new(1),
        }
    }

    /// The next id, e.g. `3f2a9c4b1d0e8f71-1a`.
    pub fn next_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{n:x}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct() {
        let a = IdSource::new();
        let b = IdSource::new();
        let ids: std::collections::HashSet<String> =
            (0..100).flat_map(|_| [a.next_id(), b.next_id()]).collect();
        assert_eq!(ids.len(), 200);
    }
}
