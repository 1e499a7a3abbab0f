//! The state driver trait, its error type, and the factory that opens a driver
//! from a component spec (`spec.type` → implementation).

use std::path::Path;

use mecha_abi::msg::{ComponentSpec, StateEntry, TxOp};
use mecha_module::DriverError;

pub mod memory;
pub mod postgresql;
pub mod quota;
pub mod redb;
pub mod redis;

/// The SDK's boxed future, under which the driver trait's methods return.
pub use mecha_module::BoxFuture;

/// What one operation of a transaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpOutcome {
    /// A set succeeded; this is the key's new ETag.
    Set {
        /// The new ETag.
        etag: String,
    },
    /// A delete succeeded; `existed` says whether a live key was removed.
    Deleted {
        /// True when a live (unexpired) key was removed.
        existed: bool,
    },
}

/// Why a driver operation failed: the state store's own outcomes (an ETag
/// mismatch, a quota exceeded), or a failure every capability shares.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// An ETag was given and the key is missing, expired or has another ETag.
    #[error("etag mismatch on key {key:?}")]
    EtagMismatch {
        /// The key whose ETag did not match.
        key: String,
    },
    /// The metadata is unusable, the store cannot be reached, it lacks a
    /// feature the request needs, or it failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
}

mecha_module::wraps_driver_error!(StoreError);

/// A state store. Keys are always scoped by tenant: the same key under two
/// tenants names two unrelated entries.
///
/// Semantics every driver must honour (the conformance tests check them):
/// - ETags are decimal strings of a revision counter per tenant (per scope:
///   the tenant, or a shared component's namespace) that only grows, also
///   across restarts of durable stores, so an ETag is never reused. A counter
///   per tenant keeps ETags from telling one tenant how many writes the
///   others make (issue #16).
/// - A set or delete carrying an ETag succeeds only if the key is live and its
///   ETag equals the given one; otherwise `EtagMismatch`, and nothing changes.
/// - A key whose TTL has passed behaves exactly like a missing key.
/// - `transact` applies its operations in order, atomically: all or none.
///
/// # TTLs
///
/// TTLs are wall-clock based. A set with `ttl_ms: Some(ttl)` stores the
/// absolute expiry time `now + ttl` with the entry (saturating, `now` being
/// [`now_ms`] at the write), and a durable driver persists it: a key expires at the same wall-clock moment
/// however often the store is reopened, time the store spent closed counts,
/// and moving the system clock moves every expiry with it. An entry is gone
/// from its expiry millisecond on (see `is_live`). A set with `ttl_ms: None`
/// never expires and clears any TTL the key had. `ttl_ms: Some(0)` never
/// reaches a driver: the module rejects it as an invalid argument first, so
/// drivers need not give it a meaning of its own.
///
/// # Revisions of the embedded drivers
///
/// The embedded drivers (`state.memory`, `state.redb`) go further than the
/// contract above: every set, including each set of a transaction, takes the
/// tenant's counter's next value, revision + 1, and nothing else consumes
/// revisions (deletes and failed transactions do not). While nothing else
/// of the same tenant writes to the store, the ETags a transaction's sets will get can thus be
/// predicted, and a later op of the same transaction may name them. This is
/// a property of these drivers, not a promise of the trait: a networked
/// driver may skip revisions or use the backend's own versions, and the
/// conformance tests that depend on the rule say so.
pub trait StateStore: Send + Sync + 'static {
    /// Reads keys; one answer per key, in request order, `None` for missing
    /// or expired keys. The keys are taken by value so a driver that must
    /// move them to another thread or task need not copy them.
    fn get<'a>(
        &'a self,
        tenant: &'a str,
        keys: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<Option<StateEntry>>, StoreError>>;

    /// Applies `ops` atomically and reports one outcome per op, in op order.
    /// The ops are taken by value so a driver can move their values into the
    /// store (or to another thread) without copying them.
    fn transact<'a>(
        &'a self,
        tenant: &'a str,
        ops: Vec<TxOp>,
    ) -> BoxFuture<'a, Result<Vec<OpOutcome>, StoreError>>;

    /// Removes expired keys; returns how many were removed. Called periodically,
    /// so its cost should follow the number of expired keys, not the store's
    /// size, and a sweep that finds nothing should not write anything.
    fn sweep(&self) -> BoxFuture<'_, Result<usize, StoreError>>;
}

/// Opens the driver named by `spec.kind`. The networked drivers connect
/// lazily, so this needs a Tokio runtime but no reachable server.
pub fn open(spec: &ComponentSpec, data_dir: &Path) -> Result<Box<dyn StateStore>, StoreError> {
    match spec.kind.as_str() {
        "state.memory" => Ok(Box::new(memory::MemoryStore::open(spec)?)),
        "state.redb" => Ok(Box::new(redb::RedbStore::open(spec, data_dir)?)),
        "state.redis" => Ok(Box::new(redis::RedisStore::open(spec)?)),
        "state.postgresql" => Ok(Box::new(postgresql::PostgresStore::open(spec)?)),
        other => Err(StoreError::Driver(DriverError::Config {
            component: spec.name.clone(),
            reason: format!(
                "unknown state store type {other:?} (known: state.memory, state.redb, \
                 state.redis, state.postgresql)"
            ),
        })),
    }
}

/// Milliseconds since the Unix epoch, the clock TTLs are measured against.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Whether an entry with this expiry time is still live at `now`.
///
/// An entry expires at the start of its expiry millisecond, so a TTL of zero
/// makes the key unreadable at once; both drivers use this one definition so
/// they agree on the boundary.
pub(crate) fn is_live(expires_at_ms: Option<u64>, now: u64) -> bool {
    match expires_at_ms {
        None => true,
        Some(at) => at > now,
    }
}

/// The expiry time a set with `ttl_ms` gets when written at `now`.
///
/// The sum saturates because a caller-chosen TTL near `u64::MAX` must mean
/// "practically never", not wrap around into the past.
pub(crate) fn expiry(ttl_ms: Option<u64>, now: u64) -> Option<u64> {
    ttl_ms.map(|ttl| now.saturating_add(ttl))
}

/// Checks an operation's ETag against the key's current state.
///
/// `live_revision` is the key's revision if it is live, `None` if it is missing
/// or expired. Without an expected ETag every state passes (last-write-wins).
pub(crate) fn check_etag(
    key: &str,
    expected: Option<&str>,
    live_revision: Option<u64>,
) -> Result<(), StoreError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    // Comparing strings rather than parsed numbers keeps ETags opaque: "007"
    // or "+7" were never handed out, so they must not match revision 7.
    match live_revision {
        Some(revision) if revision.to_string() == expected => Ok(()),
        _ => Err(StoreError::EtagMismatch {
            key: key.to_owned(),
        }),
    }
}

/// The revision after `revision`.
///
/// Overflow is reported rather than wrapped, since wrapping would reuse ETags
/// and silently break first-write-wins.
pub(crate) fn next_revision(revision: u64) -> Result<u64, StoreError> {
    revision.checked_add(1).ok_or_else(|| {
        StoreError::Driver(DriverError::Internal(
            "the revision counter is exhausted".to_owned(),
        ))
    })
}
