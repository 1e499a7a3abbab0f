//! Resiliency of outgoing calls, from the `resiliency` metadata item: a
//! per-attempt timeout, retries (constant or exponential backoff, bounded by
//! `maxRetries` and the call's deadline) and a circuit breaker per callee app
//! id (open after N consecutive failures, one half-open probe after a
//! cool-down). Dapr's resiliency policies, reduced to what a call needs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mecha_abi::Status;
use parking_lot::Mutex;
use serde::Deserialize;

/// The `resiliency` metadata item.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resiliency {
    /// For callee app ids without their own entry.
    #[serde(default)]
    pub default: Policy,
    /// Per callee app id.
    #[serde(default)]
    pub apps: HashMap<String, Policy>,
}

/// What applies to calls of one app id.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Policy {
    /// Time one attempt may take; default: whatever is left of the deadline.
    pub timeout_ms: Option<u64>,
    /// Retries; default none.
    pub retry: Option<Retry>,
    /// Circuit breaker; default none.
    pub circuit_breaker: Option<Breaker>,
}

/// Backoff kinds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    /// The same pause every time.
    #[default]
    Constant,
    /// Doubling pauses up to `maxIntervalMs`.
    Exponential,
}

/// A retry policy.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retry {
    /// constant (default) or exponential.
    #[serde(default)]
    pub policy: Backoff,
    /// The (first) pause; default 100 ms.
    pub duration_ms: Option<u64>,
    /// Exponential: the largest pause; default 5000 ms.
    pub max_interval_ms: Option<u64>,
    /// Retries after the first attempt.
    pub max_retries: u32,
}

/// A circuit breaker policy.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Breaker {
    /// Consecutive failures that open the breaker.
    pub consecutive_failures: u32,
    /// How long it stays open before one probe may pass; default 5000 ms.
    pub timeout_ms: Option<u64>,
}

impl Resiliency {
    /// The policy for calls of `app_id`.
    pub fn policy(&self, app_id: &str) -> &Policy {
        self.apps.get(app_id).unwrap_or(&self.default)
    }
}

impl Retry {
    /// The pause before retry number `n` (1-based).
    pub fn pause(&self, n: u32) -> Duration {
        let base = Duration::from_millis(self.duration_ms.unwrap_or(100));
        match self.policy {
            Backoff::Constant => base,
            Backoff::Exponential => {
                let max = Duration::from_millis(self.max_interval_ms.unwrap_or(5000));
                base.saturating_mul(1u32 << n.saturating_sub(1).min(20))
                    .min(max)
            }
        }
    }
}

/// Statuses that count as a failure of the callee (retried, and counted by
/// the breaker). Other statuses are the callee's answer, passed on as is.
pub fn is_failure(status: Status) -> bool {
    matches!(
        status,
        Status::Unavailable | Status::Internal | Status::DeadlineExceeded
    )
}

/// Breaker state per callee app id.
#[derive(Default)]
pub struct Breakers {
    states: Mutex<HashMap<String, State>>,
}

#[derive(Clone, Copy, Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight; others are refused until it reports.
    HalfOpen,
}

impl Breakers {
    /// Whether a call of `app` may go out now. An open breaker whose
    /// cool-down has passed lets exactly one probe through.
    pub fn allow(&self, app: &str, _policy: &Breaker) -> bool {
        let mut states = self.states.lock();
        let state = states
            .entry(app.to_string())
            .or_insert(State::Closed { failures: 0 });
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => false,
        }
    }

    /// Records an attempt's outcome.
    pub fn record(&self, app: &str, policy: &Breaker, failed: bool) {
        let mut states = self.states.lock();
        let state = states
            .entry(app.to_string())
            .or_insert(State::Closed { failures: 0 });
        let open = State::Open {
            until: Instant::now() + Duration::from_millis(policy.timeout_ms.unwrap_or(5000)),
        };
        *state = match (*state, failed) {
            (_, false) => State::Closed { failures: 0 },
            (State::HalfOpen, true) => open,
            (State::Closed { failures }, true) if failures + 1 >= policy.consecutive_failures => {
                tracing::warn!(app, failures = failures + 1, "circuit breaker opened");
                open
            }
            (State::Closed { failures }, true) => State::Closed {
                failures: failures + 1,
            },
            (s @ State::Open { .. }, true) => s,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_consecutive_failures_and_probes_once() {
        let b = Breakers::default();
        let p = Breaker {
            consecutive_failures: 2,
            timeout_ms: Some(0),
        };
        assert!(b.allow("a", &p));
        b.record("a", &p, true);
        assert!(b.allow("a", &p));
        b.record("a", &p, true);
        // Cool-down 0: the next call is the single probe.
        assert!(b.allow("a", &p));
        assert!(!b.allow("a", &p), "only one probe at a time");
        b.record("a", &p, false);
        assert!(b.allow("a", &p) && b.allow("a", &p));
    }

    #[test]
    fn exponential_pauses_double_up_to_the_cap() {
        let r = Retry {
            policy: Backoff::Exponential,
            duration_ms: Some(10),
            max_interval_ms: Some(35),
            max_retries: 5,
        };
        let pauses: Vec<u128> = (1..=4).map(|n| r.pause(n).as_millis()).collect();
        assert_eq!(pauses, vec![10, 20, 35, 35]);
    }
}
