//! Conformance tests: one set of behaviour tests, run against every lock
//! driver, in the manner of Dapr's components-contrib conformance suite.

use std::path::Path;
use std::time::{Duration, Instant};

use mecha_abi::msg::{ComponentSpec, ExtendLockReply, UnlockStatus};
use mecha_mod_lock::drivers::{self, Acquired, Attempt, LockError, LockStore, Stop};
use mecha_module::testing::{self, temp_dir, DEADLINE};
use mecha_module::DriverError;

/// A lease long enough to stay held for the whole test.
const LONG_TTL_MS: u64 = 3_600_000;

/// A lease short enough for a test to wait out.
const SHORT_TTL_MS: u64 = 100;

mecha_module::suite_harness! {
    /// One driver under test (the SDK's harness), with the lock operations the
    /// suite uses.
    struct Harness(dyn LockStore);
}

impl Harness {
    /// Opens a store of `kind` through the factory, so the factory is tested too.
    fn new(kind: &str, metadata: &[(&str, &str)]) -> Self {
        Self(testing::Harness::open(
            testing::spec("lockstore", kind, metadata),
            drivers::open,
        ))
    }

    fn redb() -> Self {
        Self::new("lock.redb", &[])
    }

    /// One attempt, which must not fail.
    fn attempt(&self, tenant: &str, resource: &str, owner: &str, ttl_ms: u64) -> Attempt {
        self.block(self.store().try_lock(tenant, resource, owner, ttl_ms))
            .expect("try_lock succeeds")
    }

    /// One attempt that must be granted; returns the fencing token.
    fn grant(&self, tenant: &str, resource: &str, owner: &str, ttl_ms: u64) -> u64 {
        match self.attempt(tenant, resource, owner, ttl_ms) {
            Attempt::Acquired { fencing_token } => fencing_token,
            held => panic!("{resource:?} was not granted to {owner:?}: {held:?}"),
        }
    }

    /// One attempt that must find the lock held; returns the holder's expiry.
    fn deny(&self, tenant: &str, resource: &str, owner: &str) -> u64 {
        match self.attempt(tenant, resource, owner, LONG_TTL_MS) {
            Attempt::Held { expires_at_ms } => expires_at_ms,
            granted => panic!("{resource:?} was granted to {owner:?} while held: {granted:?}"),
        }
    }

    fn unlock(&self, tenant: &str, resource: &str, owner: &str) -> UnlockStatus {
        self.block(self.store().unlock(tenant, resource, owner))
            .expect("unlock succeeds")
    }

    fn extend(&self, tenant: &str, resource: &str, owner: &str, ttl_ms: u64) -> ExtendLockReply {
        self.block(self.store().extend(tenant, resource, owner, ttl_ms))
            .expect("extend succeeds")
    }

    /// A blocking acquire of up to `wait`.
    fn acquire(&self, tenant: &str, resource: &str, owner: &str, wait: Duration) -> Option<u64> {
        self.block(drivers::acquire(
            self.store(),
            tenant,
            resource,
            owner,
            LONG_TTL_MS,
            wait,
        ))
        .expect("acquire succeeds")
    }

    fn sweep(&self) -> usize {
        self.block(self.store().sweep()).expect("sweep succeeds")
    }

    /// Tries to take `resource` for `owner` until its current lease passes,
    /// failing the test after `DEADLINE`; returns the new token.
    fn grant_once_expired(&self, tenant: &str, resource: &str, owner: &str) -> u64 {
        let what = format!("{resource:?}, granted with a short lease, to be free again");
        testing::poll_until(&what, || {
            match self.attempt(tenant, resource, owner, LONG_TTL_MS) {
                Attempt::Acquired { fencing_token } => Some(fencing_token),
                _ => None,
            }
        })
    }
}

fn not_extended(status: UnlockStatus) -> ExtendLockReply {
    ExtendLockReply {
        status,
        fencing_token: 0,
    }
}

// ---- The behaviours every driver must show. ----

fn grant_then_deny(h: Harness) {
    let token = h.grant("t", "r", "alice", LONG_TTL_MS);
    assert!(token > 0, "fencing tokens start above 0");
    let expires = h.deny("t", "r", "bob");
    assert!(
        expires > drivers::now_ms(),
        "the holder's lease is reported"
    );
    // Like Dapr and Redis `SET NX`, the holder itself is not granted again.
    h.deny("t", "r", "alice");
    // Other resources are independent.
    h.grant("t", "other", "bob", LONG_TTL_MS);
}

fn tokens_strictly_increase_across_grants(h: Harness) {
    let mut last = 0;
    for i in 0..20 {
        let owner = format!("owner-{i}");
        let token = h.grant("t", "r", &owner, LONG_TTL_MS);
        assert!(token > last, "grant {i}: token {token} <= previous {last}");
        last = token;
        // Grants of other resources and other tenants in between must not
        // disturb the order.
        h.grant("t", &format!("side-{i}"), "x", LONG_TTL_MS);
        h.grant("u", "r", &owner, LONG_TTL_MS);
        assert_eq!(h.unlock("u", "r", &owner), UnlockStatus::Success);
        assert_eq!(h.unlock("t", "r", &owner), UnlockStatus::Success);
    }
}

fn wrong_owner_cannot_unlock_or_extend(h: Harness) {
    let token = h.grant("t", "r", "alice", LONG_TTL_MS);
    assert_eq!(h.unlock("t", "r", "bob"), UnlockStatus::LockBelongsToOthers);
    assert_eq!(
        h.extend("t", "r", "bob", LONG_TTL_MS),
        not_extended(UnlockStatus::LockBelongsToOthers)
    );
    // Nothing changed: the lock is still alice's.
    h.deny("t", "r", "bob");
    assert_eq!(
        h.extend("t", "r", "alice", LONG_TTL_MS),
        ExtendLockReply {
            status: UnlockStatus::Success,
            fencing_token: token
        }
    );
    assert_eq!(h.unlock("t", "r", "alice"), UnlockStatus::Success);
}

fn unlock_of_missing_lock_does_not_exist(h: Harness) {
    assert_eq!(
        h.unlock("t", "never", "alice"),
        UnlockStatus::LockDoesNotExist
    );
    assert_eq!(
        h.extend("t", "never", "alice", LONG_TTL_MS),
        not_extended(UnlockStatus::LockDoesNotExist)
    );
    h.grant("t", "r", "alice", LONG_TTL_MS);
    assert_eq!(h.unlock("t", "r", "alice"), UnlockStatus::Success);
    // A released lock is gone, for its former owner too.
    assert_eq!(h.unlock("t", "r", "alice"), UnlockStatus::LockDoesNotExist);
    assert_eq!(
        h.extend("t", "r", "alice", LONG_TTL_MS),
        not_extended(UnlockStatus::LockDoesNotExist)
    );
}

fn released_lock_is_granted_again_with_a_higher_token(h: Harness) {
    let first = h.grant("t", "r", "alice", LONG_TTL_MS);
    assert_eq!(h.unlock("t", "r", "alice"), UnlockStatus::Success);
    let second = h.grant("t", "r", "bob", LONG_TTL_MS);
    assert!(second > first);
}

fn expired_lock_is_free_and_granted_with_a_higher_token(h: Harness) {
    let first = h.grant("t", "r", "alice", SHORT_TTL_MS);
    let second = h.grant_once_expired("t", "r", "bob");
    assert!(second > first, "token {second} after expiry <= {first}");
    // The former holder's lease is over: it can neither unlock nor extend.
    assert_eq!(
        h.unlock("t", "r", "alice"),
        UnlockStatus::LockBelongsToOthers
    );
    assert_eq!(
        h.extend("t", "r", "alice", LONG_TTL_MS),
        not_extended(UnlockStatus::LockBelongsToOthers)
    );
    assert_eq!(h.unlock("t", "r", "bob"), UnlockStatus::Success);
}

fn expired_lock_cannot_be_unlocked_or_extended(h: Harness) {
    h.grant("t", "r", "alice", SHORT_TTL_MS);
    // A witness granted afterwards with the same lease passes no earlier.
    h.grant("t", "witness", "w", SHORT_TTL_MS);
    h.grant_once_expired("t", "witness", "w2");
    assert_eq!(
        h.extend("t", "r", "alice", LONG_TTL_MS),
        not_extended(UnlockStatus::LockDoesNotExist)
    );
    assert_eq!(h.unlock("t", "r", "alice"), UnlockStatus::LockDoesNotExist);
}

fn extend_keeps_the_token_and_pushes_the_expiry(h: Harness) {
    let token = h.grant("t", "r", "alice", SHORT_TTL_MS);
    let before = h.deny("t", "r", "bob");
    let reply = h.extend("t", "r", "alice", LONG_TTL_MS);
    assert_eq!(
        reply,
        ExtendLockReply {
            status: UnlockStatus::Success,
            fencing_token: token
        }
    );
    let after = h.deny("t", "r", "bob");
    assert!(after > before, "the lease moved from {before} to {after}");
    // A witness with the original short lease, granted after it, has passed:
    // so has the original lease, and the lock is still alice's.
    h.grant("t", "witness", "w", SHORT_TTL_MS);
    h.grant_once_expired("t", "witness", "w2");
    h.deny("t", "r", "bob");
    assert_eq!(h.unlock("t", "r", "alice"), UnlockStatus::Success);
    assert!(h.grant("t", "r", "bob", LONG_TTL_MS) > token);
}

fn tenants_are_isolated(h: Harness) {
    let a = h.grant("tenant-a", "r", "alice", LONG_TTL_MS);
    // The same resource name under another tenant is another lock.
    let b = h.grant("tenant-b", "r", "bob", LONG_TTL_MS);
    assert!(a > 0 && b > 0);
    assert_eq!(
        h.unlock("tenant-b", "r", "alice"),
        UnlockStatus::LockBelongsToOthers
    );
    assert_eq!(
        h.unlock("tenant-c", "r", "alice"),
        UnlockStatus::LockDoesNotExist
    );
    assert_eq!(h.unlock("tenant-a", "r", "alice"), UnlockStatus::Success);
    h.deny("tenant-b", "r", "carol");
    assert_eq!(h.unlock("tenant-b", "r", "bob"), UnlockStatus::Success);
}

fn blocking_acquire_gets_the_lock_when_released(h: Harness) {
    let first = h.grant("t", "r", "alice", LONG_TTL_MS);
    let store = h.store();
    let (acquired, released) = h.block(async {
        tokio::join!(
            drivers::acquire(store, "t", "r", "bob", LONG_TTL_MS, DEADLINE),
            async {
                // Release only once bob waits, so the wake-up path is what
                // gets tested, not a lucky first attempt.
                testing::wait_until_async("bob to wait", || store.releases().waited_for() > 0)
                    .await;
                store.unlock("t", "r", "alice").await
            }
        )
    });
    assert_eq!(released, Ok(UnlockStatus::Success));
    let second = acquired
        .expect("acquire succeeds")
        .expect("bob got the lock once alice released it");
    assert!(second > first);
    assert_eq!(store.releases().waited_for(), 0, "the waiter unsubscribed");
    assert_eq!(h.unlock("t", "r", "bob"), UnlockStatus::Success);
}

fn blocking_acquire_gets_the_lock_when_it_expires(h: Harness) {
    let first = h.grant("t", "r", "alice", SHORT_TTL_MS);
    let second = h
        .acquire("t", "r", "bob", DEADLINE)
        .expect("bob got the lock once alice's lease passed");
    assert!(second > first);
}

fn blocking_acquire_times_out_when_not_released(h: Harness) {
    let token = h.grant("t", "r", "alice", LONG_TTL_MS);
    assert_eq!(h.acquire("t", "r", "bob", Duration::from_millis(50)), None);
    assert_eq!(
        h.store().releases().waited_for(),
        0,
        "the waiter unsubscribed"
    );
    // The lock is untouched.
    assert_eq!(
        h.extend("t", "r", "alice", LONG_TTL_MS).fencing_token,
        token
    );
    // A zero wait is a single attempt.
    assert_eq!(h.acquire("t", "r", "bob", Duration::ZERO), None);
    assert!(h.acquire("t", "free", "bob", Duration::ZERO).is_some());
}

fn blocking_acquire_stops_when_told_and_grants_nothing(h: Harness) {
    let token = h.grant("t", "r", "alice", LONG_TTL_MS);
    let started = Instant::now();
    let stopped = h.block(async {
        let stop = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Stop::Draining
        };
        drivers::acquire_or_stop(h.store(), "t", "r", "bob", LONG_TTL_MS, DEADLINE, stop).await
    });
    assert_eq!(stopped, Ok(Acquired::Stopped(Stop::Draining)));
    assert!(started.elapsed() < DEADLINE, "the wait was cut short");
    assert_eq!(
        h.store().releases().waited_for(),
        0,
        "the waiter unsubscribed"
    );
    assert_eq!(
        h.extend("t", "r", "alice", LONG_TTL_MS).fencing_token,
        token,
        "the lock is untouched"
    );
    // A stop that is due at once still lets the first attempt take a free lock.
    let free = h.block(drivers::acquire_or_stop(
        h.store(),
        "t",
        "free",
        "bob",
        LONG_TTL_MS,
        DEADLINE,
        std::future::ready(Stop::Deadline),
    ));
    assert!(matches!(free, Ok(Acquired::Granted(_))), "{free:?}");
}

fn sweep_removes_exactly_the_expired_locks(h: Harness) {
    for i in 0..50 {
        h.grant("t", &format!("live-{i}"), "o", LONG_TTL_MS);
    }
    h.grant("u", "short", "o", SHORT_TTL_MS);
    // Extended and released short leases must not be counted.
    h.grant("t", "extended", "o", SHORT_TTL_MS);
    h.extend("t", "extended", "o", LONG_TTL_MS);
    h.grant("t", "released", "o", SHORT_TTL_MS);
    assert_eq!(h.unlock("t", "released", "o"), UnlockStatus::Success);
    h.grant("t", "witness", "w", SHORT_TTL_MS);
    h.grant_once_expired("t", "witness", "w2");

    assert_eq!(h.sweep(), 1, "exactly the one expired lock is swept");
    assert_eq!(h.sweep(), 0, "nothing is left to sweep");
    for i in 0..50 {
        h.deny("t", &format!("live-{i}"), "x");
    }
    h.deny("t", "extended", "x");
    // The swept lock is free, and its token sequence goes on upwards.
    h.grant("u", "short", "x", LONG_TTL_MS);
}

// ---- Per-tenant quotas; the suite runs these cases with `QUOTA`. ----

/// A quota of two leases per tenant.
const QUOTA: &[(&str, &str)] = &[("maxLocksPerTenant", "2")];

/// Asserts that `resource` is refused to tenant "t" for its quota.
fn refused_for_quota(h: &Harness, resource: &str) {
    match h.block(h.store().try_lock("t", resource, "o", LONG_TTL_MS)) {
        Err(LockError::Driver(DriverError::Quota { what, limit, .. })) => {
            assert_eq!(limit, 2);
            assert!(what.contains(&format!("{resource:?}")), "{what}");
        }
        other => panic!("expected a quota refusal of {resource:?}, got {other:?}"),
    }
}

/// A tenant at its quota is refused a new lock but not an attempt on a lock
/// it has; another tenant is unaffected; a release makes room.
fn a_tenant_at_its_lock_quota_gets_no_new_lock(h: Harness) {
    h.grant("t", "a", "o", LONG_TTL_MS);
    h.grant("t", "b", "o", LONG_TTL_MS);
    refused_for_quota(&h, "c");
    assert!(matches!(
        h.attempt("t", "a", "o", LONG_TTL_MS),
        Attempt::Held { .. }
    ));
    h.grant("other", "c", "o", LONG_TTL_MS);
    assert_eq!(h.unlock("t", "a", "o"), UnlockStatus::Success);
    h.grant("t", "c", "o", LONG_TTL_MS);
}

/// An expired lease counts until it is swept (or granted again), and then
/// gives its room back.
fn expired_leases_count_until_swept(h: Harness) {
    h.grant("t", "a", "o", SHORT_TTL_MS);
    h.grant("t", "b", "o", LONG_TTL_MS);
    std::thread::sleep(Duration::from_millis(SHORT_TTL_MS + 20));
    refused_for_quota(&h, "c");
    assert_eq!(h.sweep(), 1);
    h.grant("t", "c", "o", LONG_TTL_MS);
}

mecha_module::conformance! {
    drivers(metadata): {
        memory => Harness::new("lock.memory", metadata),
        redb => Harness::new("lock.redb", metadata),
    }
    cases: [
    grant_then_deny,
    tokens_strictly_increase_across_grants,
    wrong_owner_cannot_unlock_or_extend,
    unlock_of_missing_lock_does_not_exist,
    released_lock_is_granted_again_with_a_higher_token,
    expired_lock_is_free_and_granted_with_a_higher_token,
    expired_lock_cannot_be_unlocked_or_extended,
    extend_keeps_the_token_and_pushes_the_expiry,
    tenants_are_isolated,
    blocking_acquire_gets_the_lock_when_released,
    blocking_acquire_gets_the_lock_when_it_expires,
    blocking_acquire_times_out_when_not_released,
    blocking_acquire_stops_when_told_and_grants_nothing,
    sweep_removes_exactly_the_expired_locks,
    a_tenant_at_its_lock_quota_gets_no_new_lock with QUOTA,
    expired_leases_count_until_swept with QUOTA,
    ]
}

// ---- Driver-specific behaviour. ----

/// The lease counts are durable: after a reopen a tenant at its quota is
/// still refused a new lock, and a release before the reopen made room.
#[test]
fn redb_lease_counts_survive_a_reopen() {
    let mut h = Harness::new("lock.redb", QUOTA);
    h.grant("t", "a", "o", LONG_TTL_MS);
    h.grant("t", "b", "o", LONG_TTL_MS);
    h.reopen();
    refused_for_quota(&h, "c");
    assert_eq!(h.unlock("t", "b", "o"), UnlockStatus::Success);
    h.reopen();
    h.grant("t", "c", "o", LONG_TTL_MS);
    refused_for_quota(&h, "d");
}

#[test]
fn redb_tokens_and_leases_survive_reopen() {
    let mut h = Harness::redb();
    let held = h.grant("t", "held", "alice", LONG_TTL_MS);
    // The lock holding the highest token is released before the restart, so
    // only the persisted counter, not a surviving lease, can prevent reuse.
    let highest = h.grant("t", "r", "alice", LONG_TTL_MS);
    assert_eq!(h.unlock("t", "r", "alice"), UnlockStatus::Success);

    h.reopen();
    let after = h.grant("t", "r", "bob", LONG_TTL_MS);
    assert!(
        after > highest,
        "token {after} after reopening does not exceed {highest} from before"
    );
    // A lease granted before the restart is still held, with its token.
    h.deny("t", "held", "bob");
    assert_eq!(
        h.extend("t", "held", "alice", LONG_TTL_MS),
        ExtendLockReply {
            status: UnlockStatus::Success,
            fencing_token: held
        }
    );
}

#[test]
fn redb_expiry_index_survives_reopen() {
    let mut h = Harness::redb();
    h.grant("t", "short", "o", SHORT_TTL_MS);
    h.grant("t", "long", "o", LONG_TTL_MS);
    h.reopen();
    h.grant("t", "witness", "w", SHORT_TTL_MS);
    h.grant_once_expired("t", "witness", "w2");
    assert_eq!(h.sweep(), 1, "the persisted index still names the lock");
    h.reopen();
    assert_eq!(h.sweep(), 0, "the sweep was committed");
    h.deny("t", "long", "x");
}

fn redb_spec(metadata: &[(&str, &str)]) -> ComponentSpec {
    testing::spec("locks", "lock.redb", metadata)
}

fn open_error(spec: &ComponentSpec, dir: &Path) -> LockError {
    testing::refused(spec, drivers::open(spec, dir))
}

#[test]
fn redb_file_location_follows_the_spec() {
    let dir = temp_dir();
    drop(drivers::open(&redb_spec(&[]), dir.path()).expect("open the store"));
    assert!(dir.path().join("locks.redb").is_file());
    drop(
        drivers::open(&redb_spec(&[("Path", "nested/l.redb")]), dir.path())
            .expect("open the store"),
    );
    assert!(dir.path().join("nested/l.redb").is_file());
}

#[test]
fn redb_rejects_bad_metadata_and_names() {
    let dir = temp_dir();
    for spec in [
        redb_spec(&[("path", "a.redb"), ("cacheSize", "10")]),
        redb_spec(&[("path", "a.redb"), ("PATH", "b.redb")]),
        redb_spec(&[("path", "")]),
        ComponentSpec {
            name: "../escape".to_owned(),
            ..redb_spec(&[])
        },
    ] {
        match open_error(&spec, dir.path()) {
            LockError::Driver(DriverError::Config { .. }) => {}
            other => panic!("{spec:?}: expected a config error, got {other:?}"),
        }
    }
}

#[test]
fn factory_rejects_unknown_type() {
    let dir = temp_dir();
    let spec = testing::spec("locks", "lock.nope", &[]);
    match open_error(&spec, dir.path()) {
        LockError::Driver(DriverError::Config { component, reason }) => {
            assert_eq!(component, "locks");
            assert!(
                reason.contains("lock.nope"),
                "reason {reason:?} names the type"
            );
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}
