//! What a module's supervisor learns from its crashes: when to try again
//! (a backoff that grows but never gives up, like a crash-looping pod), and
//! which requests and tenants cause them (poison requests, tenant charges),
//! so that a tenant who crashes a module is throttled rather than the node.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mecha_abi::Opcode;
use parking_lot::Mutex;

/// Delay before the second restart in a row; the first restart after a
/// healthy run is immediate, as in OTP. Doubled per crash.
const MIN_BACKOFF: Duration = Duration::from_millis(20);
/// The longest delay while the module stays within its restart intensity.
const CALM_BACKOFF: Duration = Duration::from_secs(5);
/// The longest delay of a crash-looping module (beyond its intensity): a
/// shared node is never left without a capability until a person acts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The shortest delay of a crash-looping module: past its intensity it
/// waits at least this long, doubling per crash up to [`MAX_BACKOFF`].
const LOOPING_BACKOFF: Duration = Duration::from_secs(1);
/// Crashes with the same request in flight that make it a poison request.
const POISON_AFTER: u32 = 2;
/// How long a poison request is refused to its tenant.
const QUARANTINE: Duration = Duration::from_secs(60);
/// Crashes charged to one tenant, within the restart window, after which
/// its requests to the module are refused for [`THROTTLE`].
const CHARGES_TO_THROTTLE: usize = 3;
/// How long a throttled tenant's requests are refused.
const THROTTLE: Duration = Duration::from_secs(30);
/// Suspects remembered at most: an attacker varying its payloads cannot grow
/// the daemon's memory through the ledger.
const MAX_SUSPECTS: usize = 4096;
/// Bytes of a payload that enter its fingerprint (its start and its end):
/// enough to tell requests apart, cheap enough for every request.
const FINGERPRINT_EDGE: usize = 256;

/// A request in flight when its module died: who sent it and what it was.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Suspect {
    /// The sending tenant.
    pub tenant: Bytes,
    /// The request's [`fingerprint`].
    pub fingerprint: u64,
}

/// A cheap identity of a request: its opcode, length, and the first and last
/// [`FINGERPRINT_EDGE`] bytes of its payload. Two requests that differ only in
/// their middle share it; that only matters for a request already known to
/// crash the module, whose tenant is then refused both.
pub fn fingerprint(opcode: Opcode, payload: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    opcode.0.hash(&mut h);
    payload.len().hash(&mut h);
    if payload.len() <= 2 * FINGERPRINT_EDGE {
        payload.hash(&mut h);
    } else {
        payload[..FINGERPRINT_EDGE].hash(&mut h);
        payload[payload.len() - FINGERPRINT_EDGE..].hash(&mut h);
    }
    h.finish()
}

/// Why a request is refused without being forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// This very request was in flight at two crashes of the module.
    Poison {
        /// Seconds until it is forwarded again.
        secs: u64,
    },
    /// The tenant's requests crashed the module too often.
    Throttled {
        /// Crashes charged to the tenant.
        crashes: usize,
        /// Seconds until its requests are forwarded again.
        secs: u64,
    },
}

impl Refusal {
    /// The message the tenant gets.
    pub fn message(&self, module: &str) -> String {
        match self {
            Refusal::Poison { secs } => format!(
                "this request was in flight when module {module} crashed {POISON_AFTER} times; \
                 it is refused for {secs} s (a poison request)"
            ),
            Refusal::Throttled { crashes, secs } => format!(
                "this tenant's requests were in flight at {crashes} crashes of module {module}; \
                 its requests to the module are refused for {secs} s"
            ),
        }
    }
}

/// When the supervisor tries again after a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// How long to wait.
    pub delay: Duration,
    /// More crashes than the restart intensity allows: the module is backing
    /// off and requests are answered UNAVAILABLE at once instead of waiting.
    pub looping: bool,
}

/// The crash history of one module slot.
#[derive(Default)]
pub struct Ledger {
    /// Set while anything is quarantined or throttled, so the hot path only
    /// takes the lock when there is something to check.
    refusing: AtomicBool,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Crashes charged to the node (not to a tenant), within the window.
    crashes: VecDeque<Instant>,
    backoff: Duration,
    /// Requests seen in flight at crashes: how often, and when last.
    suspects: HashMap<Suspect, (u32, Instant)>,
    poisoned: HashMap<Suspect, Instant>,
    /// Crashes charged to each tenant, within the window.
    charges: HashMap<Bytes, VecDeque<Instant>>,
    throttled: HashMap<Bytes, Instant>,
}

impl Ledger {
    /// Records a crash of an instance that ran for `ran_for` with `lost`
    /// requests in flight, and says when to restart.
    ///
    /// A request seen at [`POISON_AFTER`] crashes is quarantined; a crash is
    /// charged to the tenants of such requests, and then does not count
    /// against the module's restart intensity: the tenant is throttled, the
    /// node keeps its module. The supervisor passes no requests for a crash
    /// that someone else's SIGKILL caused.
    pub fn crash(
        &self,
        lost: Vec<Suspect>,
        ran_for: Duration,
        max_restarts: u32,
        window: Duration,
    ) -> Retry {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.forget_before(now, window);
        if ran_for > window {
            // A healthy run: restart at once, as OTP does.
            inner.backoff = Duration::ZERO;
        }
        let charged = inner.charge(&lost, now);
        if !charged.is_empty() {
            tracing::warn!(tenants = ?charged.iter().map(|t| String::from_utf8_lossy(t).into_owned()).collect::<Vec<_>>(), "a module crash is charged to the tenants whose requests caused it");
            self.refusing.store(true, Ordering::Relaxed);
        } else {
            inner.crashes.push_back(now);
        }
        let looping = inner.crashes.len() > max_restarts as usize;
        let cap = if looping { MAX_BACKOFF } else { CALM_BACKOFF };
        let delay = match looping {
            true => inner.backoff.max(LOOPING_BACKOFF),
            false => inner.backoff,
        }
        .min(cap);
        inner.backoff = (delay * 2).clamp(MIN_BACKOFF, cap);
        Retry { delay, looping }
    }

    /// Forgets every crash: an operator restarted the module by hand.
    pub fn reset(&self) {
        let mut inner = self.inner.lock();
        inner.crashes.clear();
        inner.backoff = Duration::ZERO;
    }

    /// Whether a request of `tenant` with `fingerprint` must be refused.
    pub fn refusal(&self, tenant: &[u8], fingerprint: u64) -> Option<Refusal> {
        if !self.refusing.load(Ordering::Relaxed) {
            return None;
        }
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.poisoned.retain(|_, until| *until > now);
        inner.throttled.retain(|_, until| *until > now);
        if inner.poisoned.is_empty() && inner.throttled.is_empty() {
            self.refusing.store(false, Ordering::Relaxed);
            return None;
        }
        let secs = |until: Instant| until.saturating_duration_since(now).as_secs().max(1);
        if let Some(until) = inner.throttled.get(tenant) {
            let crashes = inner.charges.get(tenant).map_or(0, VecDeque::len);
            return Some(Refusal::Throttled {
                crashes,
                secs: secs(*until),
            });
        }
        let suspect = Suspect {
            tenant: Bytes::copy_from_slice(tenant),
            fingerprint,
        };
        inner
            .poisoned
            .get(&suspect)
            .map(|until| Refusal::Poison { secs: secs(*until) })
    }
}

impl Inner {
    fn forget_before(&mut self, now: Instant, window: Duration) {
        let old = |t: &Instant| now.duration_since(*t) > window;
        while self.crashes.front().is_some_and(old) {
            self.crashes.pop_front();
        }
        self.suspects.retain(|_, (_, last)| !old(last));
        for charges in self.charges.values_mut() {
            while charges.front().is_some_and(old) {
                charges.pop_front();
            }
        }
        self.charges.retain(|_, c| !c.is_empty());
    }

    /// Counts the lost requests, quarantines poison ones, and returns the
    /// tenants this crash is charged to (throttling those over the limit).
    fn charge(&mut self, lost: &[Suspect], now: Instant) -> Vec<Bytes> {
        let mut charged: Vec<Bytes> = Vec::new();
        for suspect in lost {
            if self.suspects.len() >= MAX_SUSPECTS && !self.suspects.contains_key(suspect) {
                continue;
            }
            let entry = self.suspects.entry(suspect.clone()).or_insert((0, now));
            entry.0 += 1;
            entry.1 = now;
            if entry.0 >= POISON_AFTER {
                self.poisoned.insert(suspect.clone(), now + QUARANTINE);
                if !charged.contains(&suspect.tenant) {
                    charged.push(suspect.tenant.clone());
                }
            }
        }
        for tenant in &charged {
            let charges = self.charges.entry(tenant.clone()).or_default();
            charges.push_back(now);
            if charges.len() >= CHARGES_TO_THROTTLE {
                self.throttled.insert(tenant.clone(), now + THROTTLE);
            }
        }
        charged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(30);

    fn suspect(tenant: &str, payload: &[u8]) -> Suspect {
        Suspect {
            tenant: Bytes::copy_from_slice(tenant.as_bytes()),
            fingerprint: fingerprint(Opcode::STATE_GET, payload),
        }
    }

    #[test]
    fn backoff_grows_to_the_cap_and_never_gives_up() {
        let ledger = Ledger::default();
        let mut last = Retry {
            delay: Duration::ZERO,
            looping: false,
        };
        for _ in 0..40 {
            last = ledger.crash(vec![], Duration::ZERO, 5, WINDOW);
        }
        assert!(last.looping);
        assert_eq!(last.delay, MAX_BACKOFF);
        ledger.reset();
        let first = ledger.crash(vec![], Duration::ZERO, 5, WINDOW);
        assert_eq!(first.delay, Duration::ZERO);
        assert!(!first.looping);
    }

    #[test]
    fn a_request_at_two_crashes_is_poison_for_its_tenant_only() {
        let ledger = Ledger::default();
        let bad = suspect("evil", b"boom");
        let innocent = suspect("good", b"get k");
        ledger.crash(
            vec![bad.clone(), innocent.clone()],
            Duration::ZERO,
            5,
            WINDOW,
        );
        assert_eq!(ledger.refusal(b"evil", bad.fingerprint), None);
        let retry = ledger.crash(
            vec![bad.clone(), innocent.clone()],
            Duration::ZERO,
            5,
            WINDOW,
        );
        assert!(!retry.looping);
        assert!(matches!(
            ledger.refusal(b"evil", bad.fingerprint),
            Some(Refusal::Poison { .. })
        ));
        // Another tenant sending the same bytes is not refused, nor is the
        // innocent request that happened to share the crashes... once.
        assert_eq!(ledger.refusal(b"good", bad.fingerprint), None);
        assert_eq!(
            ledger.refusal(b"good", fingerprint(Opcode::STATE_GET, b"other")),
            None
        );
    }

    #[test]
    fn crashes_charged_to_a_tenant_throttle_it_and_spare_the_node() {
        let ledger = Ledger::default();
        let mut retry = None;
        // Each poison request crashes the module twice before it is known.
        for i in 0..CHARGES_TO_THROTTLE {
            let payload = format!("poison {i}");
            for _ in 0..POISON_AFTER {
                retry = Some(ledger.crash(
                    vec![suspect("evil", payload.as_bytes())],
                    Duration::ZERO,
                    1,
                    WINDOW,
                ));
            }
        }
        // One crash per poison request counted against the node (before its
        // request was known); the crashes charged to the tenant did not.
        assert!(retry.is_some_and(|r| r.looping));
        assert!(matches!(
            ledger.refusal(b"evil", 42),
            Some(Refusal::Throttled { crashes: 3, .. })
        ));
        assert_eq!(ledger.refusal(b"good", 42), None);
    }

    #[test]
    fn fingerprints_tell_payloads_and_opcodes_apart() {
        assert_ne!(
            fingerprint(Opcode::STATE_GET, b"a"),
            fingerprint(Opcode::STATE_GET, b"b")
        );
        assert_ne!(
            fingerprint(Opcode::STATE_GET, b"a"),
            fingerprint(Opcode::STATE_SET, b"a")
        );
    }
}
