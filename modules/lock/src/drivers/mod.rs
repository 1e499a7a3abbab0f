//! The lock driver trait, its error type, the waiting loop every driver shares
//! for blocking acquires, and the factory that opens a driver from a
//! component spec (`spec.type` → implementation).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mecha_abi::msg::{ComponentSpec, ExtendLockReply, UnlockStatus};
use mecha_module::{DriverError, Wording};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

pub mod etcd;
pub mod memory;
pub mod redb;
pub mod redis;

/// The SDK's boxed future, under which the driver trait's methods return.
pub use mecha_module::BoxFuture;

/// The outcome of one attempt to take a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The lock was granted with this fencing token.
    Acquired {
        /// The grant's fencing token.
        fencing_token: u64,
    },
    /// Somebody (possibly the same owner) holds the lock.
    Held {
        /// When the holder's lease passes, in milliseconds since the epoch,
        /// unless it is extended; a waiter tries again then.
        expires_at_ms: u64,
    },
}

/// Why a driver operation failed. A lock has no failure of its own: a held
/// lock, or one that belongs to another owner, is an outcome ([`Attempt`],
/// [`UnlockStatus`]), not an error; so this is the shared failure, worded as
/// the lock store's ("lock store unavailable: …").
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LockError {
    /// The metadata is unusable, the store cannot be reached, or it failed.
    /// Clients have always seen the lock store named so.
    #[error("{}", .0.worded(Wording::store("lock store")))]
    Driver(#[from] DriverError),
}

mecha_module::wraps_driver_error!(LockError);

/// A lock store. Locks are always scoped by tenant: the same resource name
/// under two tenants names two unrelated locks.
///
/// Semantics every driver must honour (the conformance tests check them):
/// - A lock is a lease: it is held by one owner from its grant until
///   `expires_at_ms = now + ttl_ms` (wall clock, saturating; see [`now_ms`]),
///   and is free from that millisecond on (see `is_live`). Unlocking or
///   extending a lock whose lease has passed finds no lock.
/// - `try_lock` of a held lock is not a grant, also when the caller is the
///   holder (as in Dapr and Redis `SET NX`); the holder renews with `extend`.
/// - Every grant takes a fencing token greater than every token granted
///   before for that tenant and resource, and a token is never granted
///   twice. A durable driver persists what it needs for that in the same
///   transaction as the grant, so it also holds across restarts.
/// - `extend` keeps the fencing token and sets the lease to end `ttl_ms` from
///   now.
/// - A successful `unlock` calls [`Releases::released`] on the driver's
///   [`LockStore::releases`], so that acquirers waiting in this process try
///   again at once instead of at their next timer.
/// - `ttl_ms == 0` and empty resources or owners never reach a driver: the
///   module rejects them as invalid arguments first.
pub trait LockStore: Send + Sync + 'static {
    /// Tries once to grant `resource` to `owner` for `ttl_ms`; never waits.
    fn try_lock<'a>(
        &'a self,
        tenant: &'a str,
        resource: &'a str,
        owner: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Attempt, LockError>>;

    /// Releases `resource` if `owner` holds it.
    fn unlock<'a>(
        &'a self,
        tenant: &'a str,
        resource: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<UnlockStatus, LockError>>;

    /// Sets the lease of a lock `owner` holds to end `ttl_ms` from now,
    /// keeping its fencing token (which the reply carries on success).
    fn extend<'a>(
        &'a self,
        tenant: &'a str,
        resource: &'a str,
        owner: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<ExtendLockReply, LockError>>;

    /// Removes locks whose lease has passed; returns how many. Called
    /// periodically, so its cost should follow the number of expired locks,
    /// and a sweep that finds nothing should not write anything. Expired
    /// locks behave as free whether or not they have been swept; sweeping
    /// only reclaims their space.
    fn sweep(&self) -> BoxFuture<'_, Result<usize, LockError>>;

    /// The waiters of this store, woken by successful unlocks.
    fn releases(&self) -> &Releases;
}

/// The metadata field bounding how many leases one tenant keeps in an
/// embedded store at once (expired ones count until swept). A lease's TTL
/// has no upper bound, so without it one tenant could fill the store's
/// memory or file with locks it never releases.
pub const MAX_LOCKS_FIELD: &str = "maxLocksPerTenant";

/// Leases one tenant may keep in one embedded store without
/// `maxLocksPerTenant`.
pub const DEFAULT_MAX_LOCKS: usize = 100_000;

/// The limit of an embedded store: its component's name and
/// `maxLocksPerTenant`.
#[derive(Clone, Debug)]
pub struct Quota {
    /// The component's name, for the message.
    pub component: String,
    /// The most leases per tenant.
    pub max_locks: usize,
}

impl Quota {
    /// The default quota of component `component`.
    pub fn defaults(component: &str) -> Self {
        Self {
            component: component.to_owned(),
            max_locks: DEFAULT_MAX_LOCKS,
        }
    }

    /// Refuses a new lease of `resource` to a tenant that keeps `held`.
    pub fn check(&self, held: usize, resource: &str) -> Result<(), LockError> {
        if held >= self.max_locks {
            return Err(LockError::Driver(DriverError::Quota {
                component: self.component.clone(),
                field: MAX_LOCKS_FIELD,
                limit: u64::try_from(self.max_locks).unwrap_or(u64::MAX),
                what: format!("a new lock {resource:?}"),
            }));
        }
        Ok(())
    }
}

/// Takes `maxLocksPerTenant` out of `spec` for an embedded driver.
fn quota(spec: &ComponentSpec) -> Result<(ComponentSpec, Quota), LockError> {
    let (rest, max_locks) =
        mecha_module::metadata::take_limit(spec, MAX_LOCKS_FIELD, DEFAULT_MAX_LOCKS)?;
    let quota = Quota {
        component: spec.name.clone(),
        max_locks,
    };
    Ok((rest, quota))
}

/// Opens the driver named by `spec.kind`.
pub fn open(spec: &ComponentSpec, data_dir: &Path) -> Result<Box<dyn LockStore>, LockError> {
    match spec.kind.as_str() {
        "lock.memory" => Ok(Box::new(memory::MemoryLocks::new(quota(spec)?.1))),
        "lock.redb" => {
            let (rest, quota) = quota(spec)?;
            Ok(Box::new(redb::RedbLocks::open(&rest, data_dir, quota)?))
        }
        "lock.redis" => Ok(Box::new(redis::RedisLocks::open(spec)?)),
        "lock.etcd" => Ok(Box::new(etcd::EtcdLocks::open(spec)?)),
        other => Err(LockError::Driver(DriverError::Config {
            component: spec.name.clone(),
            reason: format!(
                "unknown lock store type {other:?} (known: lock.memory, lock.redb, lock.redis, \
                 lock.etcd)"
            ),
        })),
    }
}

/// The longest a blocking acquire waits: the longest deadline a request can
/// carry (`deadline_ms` is a u32), since waiting past it helps nobody.
pub const MAX_WAIT: Duration = Duration::from_millis(u32::MAX as u64);

/// The shortest pause between two attempts that a timer (rather than a
/// release) triggers, so that clock edges cannot turn waiting into spinning.
const MIN_PAUSE: Duration = Duration::from_millis(5);

/// The longest pause between two attempts. Releases in this process wake
/// waiters at once and expiries are timed exactly, so this is only a safety
/// net for changes nobody announced (a wall-clock step, another process).
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Tries to take `resource` for `owner`, waiting up to `wait` while it is
/// held; returns the fencing token, or `None` if the lock stayed held. This
/// is [`acquire_or_stop`] with nothing to stop it early.
pub async fn acquire(
    store: &dyn LockStore,
    tenant: &str,
    resource: &str,
    owner: &str,
    ttl_ms: u64,
    wait: Duration,
) -> Result<Option<u64>, LockError> {
    let never = std::future::pending();
    match acquire_or_stop(store, tenant, resource, owner, ttl_ms, wait, never).await? {
        Acquired::Granted(fencing_token) => Ok(Some(fencing_token)),
        Acquired::Held | Acquired::Stopped(_) => Ok(None),
    }
}

/// How a blocking acquire ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// The lock was granted with this fencing token.
    Granted(u64),
    /// The lock stayed held for the whole wait.
    Held,
    /// The wait was given up early, for this reason; nothing was granted.
    Stopped(Stop),
}

/// Why a blocking acquire gave up before its wait was over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The request's deadline passed: the daemon has answered the caller
    /// already, so a grant now would go to nobody.
    Deadline,
    /// The module instance is draining (a hot restart or shutdown).
    Draining,
}

/// Tries to take `resource` for `owner`, waiting up to `wait` while it is
/// held, unless `stop` resolves first.
///
/// A waiter tries again at once when an unlock in this process releases the
/// lock (see [`Releases`]), and otherwise when the holder's lease passes; it
/// never polls on a timer shorter than 5 ms. It makes one last attempt at
/// the end of `wait`, so a lease that passes exactly then is still granted.
/// Waiters are not queued: after a release, whichever waiter's attempt comes
/// first wins.
///
/// `stop` is watched only between attempts, and when it resolves no further
/// attempt is made: an attempt already running may still grant the lock,
/// and then the grant is answered.
pub async fn acquire_or_stop(
    store: &dyn LockStore,
    tenant: &str,
    resource: &str,
    owner: &str,
    ttl_ms: u64,
    wait: Duration,
    stop: impl std::future::Future<Output = Stop>,
) -> Result<Acquired, LockError> {
    let granted = |attempt| match attempt {
        Attempt::Acquired { fencing_token } => Acquired::Granted(fencing_token),
        Attempt::Held { .. } => Acquired::Held,
    };
    if wait.is_zero() {
        return Ok(granted(
            store.try_lock(tenant, resource, owner, ttl_ms).await?,
        ));
    }
    let deadline = Instant::now() + wait.min(MAX_WAIT);
    let subscription = store.releases().subscribe(tenant, resource);
    let mut stop = std::pin::pin!(stop);
    loop {
        // The waiter registers before it looks, so a release that happens
        // between a failed attempt and the wait below still wakes it.
        let released = subscription.notify.notified();
        let mut released = std::pin::pin!(released);
        released.as_mut().enable();
        let expires_at_ms = match store.try_lock(tenant, resource, owner, ttl_ms).await? {
            Attempt::Acquired { fencing_token } => return Ok(Acquired::Granted(fencing_token)),
            Attempt::Held { expires_at_ms } => expires_at_ms,
        };
        let now = Instant::now();
        if now >= deadline {
            return Ok(Acquired::Held);
        }
        let until_expiry = Duration::from_millis(expires_at_ms.saturating_sub(now_ms()));
        let wake = (now + until_expiry.clamp(MIN_PAUSE, MAX_PAUSE)).min(deadline);
        // Either way the next attempt decides; a timeout is not an error here.
        tokio::select! {
            biased;
            why = stop.as_mut() => return Ok(Acquired::Stopped(why)),
            _ = tokio::time::timeout_at(wake, released) => {}
        }
    }
}

/// The acquirers waiting in this process, by (tenant, resource), so that an
/// unlock wakes exactly the waiters of the lock it released.
#[derive(Debug, Default)]
pub struct Releases {
    /// One notifier per lock somebody waits for; an entry lives as long as
    /// a [`Subscription`] holds it.
    waiting: Mutex<HashMap<(String, String), Arc<Notify>>>,
}

impl Releases {
    /// Wakes every waiter of `resource`. Drivers call this after a
    /// successful unlock.
    pub fn released(&self, tenant: &str, resource: &str) {
        let waiting = self.waiting.lock();
        // Most unlocks have no waiters; the emptiness check spares them
        // building an owned key for the lookup.
        if waiting.is_empty() {
            return;
        }
        if let Some(notify) = waiting.get(&(tenant.to_owned(), resource.to_owned())) {
            notify.notify_waiters();
        }
    }

    /// How many locks acquirers of this process are waiting for, for
    /// diagnostics and tests.
    pub fn waited_for(&self) -> usize {
        self.waiting.lock().len()
    }

    /// Registers interest in releases of `resource` until the subscription
    /// is dropped.
    fn subscribe(&self, tenant: &str, resource: &str) -> Subscription<'_> {
        let key = (tenant.to_owned(), resource.to_owned());
        let notify = Arc::clone(self.waiting.lock().entry(key.clone()).or_default());
        Subscription {
            releases: self,
            key,
            notify,
        }
    }
}

/// One waiter's registration with [`Releases`].
struct Subscription<'a> {
    releases: &'a Releases,
    key: (String, String),
    notify: Arc<Notify>,
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        let mut waiting = self.releases.waiting.lock();
        // Clones are made and dropped only under this lock, so the count is
        // exact: two means the map's and this one, the last waiter leaving.
        if Arc::strong_count(&self.notify) == 2 {
            waiting.remove(&self.key);
        }
    }
}

/// Milliseconds since the Unix epoch, the clock leases are measured against.
///
/// Leases are wall-clock based so that a durable store's leases mean the same
/// after a restart; a clock that jumps forward ends leases early, which is
/// what fencing tokens protect against.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Whether a lease ending at `expires_at_ms` is still held at `now`.
///
/// A lease ends at the start of its expiry millisecond; every driver uses this
/// one definition so they agree on the boundary.
pub(crate) fn is_live(expires_at_ms: u64, now: u64) -> bool {
    expires_at_ms > now
}

/// When a lease of `ttl_ms` granted or extended at `now` ends.
///
/// The sum saturates because a caller-chosen TTL near `u64::MAX` must mean
/// "practically never", not wrap around into the past.
pub(crate) fn lease_end(ttl_ms: u64, now: u64) -> u64 {
    now.saturating_add(ttl_ms)
}

/// The reply of an extend that did not apply.
pub(crate) fn not_extended(status: UnlockStatus) -> ExtendLockReply {
    ExtendLockReply {
        status,
        fencing_token: 0,
    }
}

/// The fencing token after `token`.
///
/// Overflow is reported rather than wrapped, since wrapping would reuse
/// tokens and let a stale holder's writes through.
pub(crate) fn next_token(token: u64) -> Result<u64, LockError> {
    token.checked_add(1).ok_or_else(|| {
        LockError::Driver(DriverError::Internal(
            "the fencing token counter is exhausted".to_owned(),
        ))
    })
}

/// A lease as a driver reads it back, for [`held_by`].
pub(crate) trait FoundLease {
    /// Who holds it.
    fn owner(&self) -> &str;
    /// When it passes, in milliseconds since the epoch.
    fn expires_at_ms(&self) -> u64;
}

impl<T: FoundLease> FoundLease for &T {
    fn owner(&self) -> &str {
        (**self).owner()
    }
    fn expires_at_ms(&self) -> u64 {
        (**self).expires_at_ms()
    }
}

/// The lease `found` at `now` if it is live and `owner` holds it; otherwise
/// the status that says why `owner` may not release or extend it. One rule,
/// so that every driver answers an unlock or extend alike.
pub(crate) fn held_by<L: FoundLease>(
    found: Option<L>,
    owner: &str,
    now: u64,
) -> Result<L, UnlockStatus> {
    match found {
        Some(lease) if !is_live(lease.expires_at_ms(), now) => Err(UnlockStatus::LockDoesNotExist),
        None => Err(UnlockStatus::LockDoesNotExist),
        Some(lease) if lease.owner() != owner => Err(UnlockStatus::LockBelongsToOthers),
        Some(lease) => Ok(lease),
    }
}

/// The part of a remote store's key that names one lock: the tenant's length
/// first, so that no tenant and resource pair can spell another's key
/// whatever characters either contains.
pub(crate) fn tenant_key(tenant: &str, resource: &str) -> String {
    format!("{}:{tenant}:{resource}", tenant.len())
}
