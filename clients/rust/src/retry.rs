//! Retry policy and backoff schedule for typed calls.
//!
//! A call is retried only on a retryable answer (UNAVAILABLE, SPEC §5) and only
//! while its deadline lasts. The pause between attempts grows exponentially
//! with jitter, so that many clients waiting for the same restarting module do
//! not all come back in the same millisecond.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Error;

/// Pauses are never shorter than this, even when a policy asks for zero, so a
/// misconfigured policy cannot turn the retry loop into a busy spin.
const MIN_BACKOFF: Duration = Duration::from_millis(1);

/// How typed calls retry a retryable answer (UNAVAILABLE).
///
/// Safe (idempotent) requests are always retried: STATE_GET, STATE_BULK_GET,
/// PING, STATUS, and writes whose every item carries an ETag (a conditional
/// write applied once cannot apply again; a retry of one that did apply sees
/// ETAG_MISMATCH, SPEC §5). Unconditional writes are retried only when
/// [`retry_non_idempotent`](Self::retry_non_idempotent) is set, because an
/// UNAVAILABLE write may already have been applied.
///
/// Every attempt and pause fits inside the call's timeout
/// ([`Client::with_timeout`](crate::Client::with_timeout)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Also retry writes that are not idempotent (set/delete without an ETag,
    /// bulk sets and transactions with an unconditional item). Default: false.
    pub retry_non_idempotent: bool,
    /// The pause ceiling before the second attempt; it doubles after every
    /// attempt. Default: 10 ms.
    pub initial_backoff: Duration,
    /// The largest pause ceiling. Default: 500 ms.
    pub max_backoff: Duration,
    /// At most this many attempts per call (0 counts as 1); `None` means as
    /// many as the deadline allows. Default: `None`.
    pub max_attempts: Option<u32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retry_non_idempotent: false,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(500),
            max_attempts: None,
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries: every call makes exactly one attempt.
    pub fn disabled() -> Self {
        Self {
            max_attempts: Some(1),
            ..Self::default()
        }
    }

    /// Whether a call that has made `attempts` attempts may make another.
    pub(crate) fn allows_another(&self, attempts: u32) -> bool {
        // A match rather than `Option::is_none_or`, which is newer than the
        // workspace's rust-version (1.80).
        match self.max_attempts {
            None => true,
            Some(max) => attempts < max.max(1),
        }
    }
}

/// Whether `err` says that the same request, sent again unchanged, may succeed.
///
/// Only a retryable daemon status qualifies. `Closed` does not: the connection
/// is gone and a retry on it would fail the same way. `Timeout` does not: the
/// deadline it reports is already spent.
pub(crate) fn is_retryable(err: &Error) -> bool {
    matches!(err, Error::Status { status, .. } if status.is_retryable())
}

/// The pauses of one call: exponential, capped, with "equal jitter" — each
/// pause is uniform in `[ceiling / 2, ceiling]`. Half the ceiling is kept so
/// the schedule still backs off predictably; the random half spreads clients.
#[derive(Debug)]
pub(crate) struct Backoff {
    ceiling: Duration,
    max: Duration,
    rng: u64,
}

impl Backoff {
    /// A schedule following `policy`, with jitter drawn from `seed`.
    pub(crate) fn new(policy: &RetryPolicy, seed: u64) -> Self {
        let max = policy.max_backoff.max(MIN_BACKOFF);
        Self {
            ceiling: policy.initial_backoff.clamp(MIN_BACKOFF, max),
            max,
            rng: seed,
        }
    }

    /// The pause before the next attempt, never longer than `remaining` (the
    /// time left before the call's deadline).
    pub(crate) fn next_pause(&mut self, remaining: Duration) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = ceiling.saturating_mul(2).min(self.max);
        let half = ceiling / 2;
        // Ceilings are capped by max_backoff, so the nanosecond count fits u64
        // for any sane policy; saturating keeps an absurd one from panicking.
        let span = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        let jitter = splitmix64(&mut self.rng) % span.saturating_add(1);
        (half + Duration::from_nanos(jitter)).min(remaining)
    }
}

/// A per-client source of jitter seeds.
///
/// Jitter only has to decorrelate clients (and calls) that hit the same
/// UNAVAILABLE module at the same moment; it needs no unpredictability against
/// an adversary. SplitMix64 over a counter seeded from the wall clock's
/// nanoseconds and the process id gives distinct, well-mixed streams per
/// client and per call without a dependency on a `rand` crate.
#[derive(Debug)]
pub(crate) struct JitterSeed(AtomicU64);

impl JitterSeed {
    /// A seed source initialised from the clock and the process id.
    pub(crate) fn from_clock() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64) // truncation is fine: only low bits vary anyway
            .unwrap_or(0);
        let pid = u64::from(std::process::id());
        Self(AtomicU64::new(nanos ^ pid.rotate_left(32)))
    }

    /// A fresh seed for one call.
    pub(crate) fn next(&self) -> u64 {
        // SplitMix64's state is a Weyl sequence, so advancing it is a plain
        // atomic add: concurrent calls never share a seed, without a lock.
        let mut state = self.0.fetch_add(GOLDEN_GAMMA, Ordering::Relaxed);
        splitmix64(&mut state)
    }
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// One SplitMix64 step: advances `state` and returns a well-mixed output.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GOLDEN_GAMMA);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mecha_abi::Status;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn default_policy_matches_the_documented_schedule() {
        let p = RetryPolicy::default();
        assert!(!p.retry_non_idempotent);
        assert_eq!(p.initial_backoff, 10 * MS);
        assert_eq!(p.max_backoff, 500 * MS);
        assert!(p.allows_another(1_000_000));
        assert!(!RetryPolicy::disabled().allows_another(1));
    }

    #[test]
    fn max_attempts_counts_the_first_attempt() {
        let p = RetryPolicy {
            max_attempts: Some(3),
            ..RetryPolicy::default()
        };
        assert!(p.allows_another(1));
        assert!(p.allows_another(2));
        assert!(!p.allows_another(3));
        let zero = RetryPolicy {
            max_attempts: Some(0),
            ..RetryPolicy::default()
        };
        assert!(!zero.allows_another(1));
    }

    #[test]
    fn pauses_double_within_jitter_and_cap() {
        let policy = RetryPolicy::default();
        for seed in 0..200 {
            let mut b = Backoff::new(&policy, seed);
            let mut ceiling = 10 * MS;
            for _ in 0..20 {
                let pause = b.next_pause(Duration::from_secs(60));
                assert!(pause >= ceiling / 2, "{pause:?} below half of {ceiling:?}");
                assert!(pause <= ceiling, "{pause:?} above {ceiling:?}");
                assert!(pause <= 500 * MS);
                ceiling = (ceiling * 2).min(500 * MS);
            }
        }
    }

    #[test]
    fn pauses_never_pass_the_deadline() {
        let policy = RetryPolicy::default();
        let mut b = Backoff::new(&policy, 7);
        let mut remaining = 300 * MS;
        let mut total = Duration::ZERO;
        for _ in 0..50 {
            let pause = b.next_pause(remaining);
            assert!(pause <= remaining);
            total += pause;
            remaining -= pause;
        }
        assert!(total <= 300 * MS);
        assert_eq!(b.next_pause(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn jitter_varies_between_seeds() {
        let policy = RetryPolicy::default();
        let firsts: std::collections::HashSet<_> = (0..50)
            .map(|s| Backoff::new(&policy, s).next_pause(Duration::from_secs(1)))
            .collect();
        assert!(firsts.len() > 10, "jitter barely varies: {firsts:?}");
        let seeds = JitterSeed::from_clock();
        assert_ne!(seeds.next(), seeds.next());
    }

    #[test]
    fn degenerate_policies_neither_spin_nor_panic() {
        let zero = RetryPolicy {
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
            ..RetryPolicy::default()
        };
        let pause = Backoff::new(&zero, 1).next_pause(Duration::from_secs(1));
        assert!(pause >= MIN_BACKOFF / 2 && pause <= MIN_BACKOFF);
        let inverted = RetryPolicy {
            initial_backoff: Duration::from_secs(10),
            max_backoff: 20 * MS,
            ..RetryPolicy::default()
        };
        assert!(Backoff::new(&inverted, 1).next_pause(Duration::from_secs(1)) <= 20 * MS);
        let huge = RetryPolicy {
            initial_backoff: Duration::MAX,
            max_backoff: Duration::MAX,
            ..RetryPolicy::default()
        };
        assert_eq!(
            Backoff::new(&huge, 1).next_pause(Duration::from_secs(1)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn only_unavailable_is_retryable() {
        for status in Status::ALL {
            let err = Error::Status {
                status,
                message: String::new(),
            };
            assert_eq!(
                is_retryable(&err),
                status == Status::Unavailable,
                "{status}"
            );
        }
        assert!(!is_retryable(&Error::Closed("gone".into())));
        assert!(!is_retryable(&Error::Timeout(MS)));
        assert!(!is_retryable(&Error::Protocol("bad".into())));
    }
}
