//! Warnings a tenant can cause, let through at most once a period per kind
//! with the number held back since, so that how much the node logs is the
//! operator's to bound, not a tenant's.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often one kind of warning may be logged.
const PERIOD: Duration = Duration::from_secs(10);

/// One kind of warning: when it was last let through, and how many were
/// held back since.
pub struct RateLimited {
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimited {
    /// A kind of warning never logged yet.
    pub const fn new() -> Self {
        Self {
            state: parking_lot::const_mutex((None, 0)),
        }
    }

    /// `Some(held back)` when this warning may be logged now, with how many
    /// of its kind were held back before it; `None` when it is held back.
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut state = self.state.lock();
        match state.0 {
            Some(last) if now.duration_since(last) < PERIOD => {
                state.1 += 1;
                None
            }
            _ => {
                let held = state.1;
                *state = (Some(now), 0);
                Some(held)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_a_period_then_the_count_of_the_rest() {
        let kind = RateLimited::new();
        assert_eq!(kind.allow(), Some(0));
        assert_eq!(kind.allow(), None);
        assert_eq!(kind.allow(), None);
        kind.state.lock().0 = Some(Instant::now() - PERIOD);
        assert_eq!(kind.allow(), Some(2));
    }
}
