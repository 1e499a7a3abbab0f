//! Rate-limited warnings: a tenant that keeps hitting a limit must not be able
//! to fill the node's log, so each kind of warning is written at most once per
//! interval, carrying the number of occurrences that were not written.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often one kind of warning may be written.
const INTERVAL: Duration = Duration::from_secs(10);

/// Warnings by kind, each with when it was last written and how many were
/// suppressed since. Kinds are static strings, so the table is bounded by the
/// number of call sites.
#[derive(Default)]
pub struct Warnings {
    kinds: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl Warnings {
    /// Writes `message` as a warning of `kind`, unless one of that kind was
    /// written less than an interval ago; then it is only counted, and the
    /// next warning written says how many were suppressed.
    pub fn warn(&self, kind: &'static str, message: &str) {
        let now = Instant::now();
        let suppressed = {
            let mut kinds = self.kinds.lock();
            match kinds.get_mut(kind) {
                Some((last, count)) if now.duration_since(*last) < INTERVAL => {
                    *count += 1;
                    return;
                }
                Some((last, count)) => {
                    *last = now;
                    std::mem::take(count)
                }
                None => {
                    kinds.insert(kind, (now, 0));
                    0
                }
            }
        };
        tracing::warn!(kind, suppressed, "{message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_the_interval_are_counted_not_written() {
        let w = Warnings::default();
        w.warn("k", "first");
        w.warn("k", "second");
        w.warn("k", "third");
        assert_eq!(w.kinds.lock().get("k").map(|(_, n)| *n), Some(2));
    }
}
