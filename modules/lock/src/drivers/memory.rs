//! The `lock.memory` driver: leases in hash maps behind a mutex, fast and
//! gone when the module exits.

use std::collections::{BTreeSet, HashMap};

use mecha_abi::msg::{ExtendLockReply, UnlockStatus};
use parking_lot::Mutex;

use super::{held_by, is_live, lease_end, next_token, not_extended, now_ms};
use super::{Attempt, BoxFuture, LockError, LockStore, Quota, Releases};

/// One granted lock.
#[derive(Clone, Debug)]
struct Lease {
    /// Who holds it.
    owner: String,
    /// The token of the grant.
    fencing_token: u64,
    /// When the lease passes, in milliseconds since the epoch.
    expires_at_ms: u64,
}

impl super::FoundLease for Lease {
    fn owner(&self) -> &str {
        &self.owner
    }
    fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }
}

/// Everything the mutex protects, under one lock so that a grant's check and
/// its write see one consistent state.
#[derive(Debug, Default)]
struct Inner {
    /// Leases by tenant, then resource. Nesting the maps lets a lookup borrow
    /// the caller's strings instead of building an owned pair.
    leases: HashMap<String, HashMap<String, Lease>>,
    /// Every lease as (expires_at_ms, tenant, resource), so a sweep visits
    /// only what has expired, in expiry order.
    expiries: BTreeSet<(u64, String, String)>,
    /// The last fencing token granted, per tenant. One counter per tenant
    /// (rather than per resource) keeps tokens of every resource increasing
    /// while letting a released lock be forgotten entirely, and keeps one
    /// tenant's activity invisible in another tenant's tokens.
    tokens: HashMap<String, u64>,
}

impl Inner {
    /// The lease of `resource`, live or not.
    fn lease(&self, tenant: &str, resource: &str) -> Option<&Lease> {
        self.leases.get(tenant)?.get(resource)
    }

    /// The lease of `resource` if it is live at `now`.
    fn live(&self, tenant: &str, resource: &str, now: u64) -> Option<&Lease> {
        self.lease(tenant, resource)
            .filter(|lease| is_live(lease.expires_at_ms, now))
    }

    /// Stores `lease` for `resource`, replacing any old one and keeping the
    /// expiry index in step.
    fn put(&mut self, tenant: &str, resource: &str, lease: Lease) {
        self.unindex(tenant, resource);
        self.expiries
            .insert((lease.expires_at_ms, tenant.to_owned(), resource.to_owned()));
        self.leases
            .entry(tenant.to_owned())
            .or_default()
            .insert(resource.to_owned(), lease);
    }

    /// Forgets the lease of `resource` and its index row, dropping the
    /// tenant's map once it is empty so tenants that come and go leave
    /// nothing behind but their token counter.
    fn remove(&mut self, tenant: &str, resource: &str) {
        self.unindex(tenant, resource);
        if let Some(leases) = self.leases.get_mut(tenant) {
            leases.remove(resource);
            if leases.is_empty() {
                self.leases.remove(tenant);
            }
        }
    }

    /// Removes the index row of the stored lease of `resource`, if any.
    fn unindex(&mut self, tenant: &str, resource: &str) {
        if let Some(at) = self.lease(tenant, resource).map(|l| l.expires_at_ms) {
            self.expiries
                .remove(&(at, tenant.to_owned(), resource.to_owned()));
        }
    }

    /// Takes the tenant's next fencing token.
    ///
    /// The token is also at least `now` in microseconds: the counter does not
    /// survive the process, and seeding it from the clock keeps the tokens of
    /// a restarted module above those of the previous instance (as long as
    /// the clock does not step back and grants stay below a thousand per
    /// millisecond), so a storage system that saw an old token does not
    /// reject every new holder after a restart.
    fn next_token(&mut self, tenant: &str, now: u64) -> Result<u64, LockError> {
        let last = self.tokens.get(tenant).copied().unwrap_or(0);
        let token = next_token(last)?.max(now.saturating_mul(1000));
        self.tokens.insert(tenant.to_owned(), token);
        Ok(token)
    }
}

/// An in-memory lock store. Locks do not survive the process.
#[derive(Debug)]
pub struct MemoryLocks {
    /// The leases, their expiry index and the token counters.
    inner: Mutex<Inner>,
    /// Acquirers waiting for a release.
    releases: Releases,
    /// How many leases a tenant may keep.
    quota: Quota,
}

impl MemoryLocks {
    /// Creates an empty store with `quota`.
    pub fn new(quota: Quota) -> Self {
        Self {
            inner: Mutex::default(),
            releases: Releases::default(),
            quota,
        }
    }

    /// One attempt to grant `resource` to `owner` as of `now`.
    fn try_lock_now(
        &self,
        tenant: &str,
        resource: &str,
        owner: &str,
        ttl_ms: u64,
        now: u64,
    ) -> Result<Attempt, LockError> {
        let mut inner = self.inner.lock();
        if let Some(held) = inner.live(tenant, resource, now) {
            return Ok(Attempt::Held {
                expires_at_ms: held.expires_at_ms,
            });
        }
        if inner.lease(tenant, resource).is_none() {
            let held = inner.leases.get(tenant).map_or(0, HashMap::len);
            self.quota.check(held, resource)?;
        }
        let fencing_token = inner.next_token(tenant, now)?;
        let lease = Lease {
            owner: owner.to_owned(),
            fencing_token,
            expires_at_ms: lease_end(ttl_ms, now),
        };
        inner.put(tenant, resource, lease);
        Ok(Attempt::Acquired { fencing_token })
    }

    /// Releases `resource` as of `now` if `owner` holds it.
    fn unlock_now(&self, tenant: &str, resource: &str, owner: &str, now: u64) -> UnlockStatus {
        let status = {
            let mut inner = self.inner.lock();
            let found = inner.lease(tenant, resource);
            let expired = found.is_some_and(|lease| !is_live(lease.expires_at_ms, now));
            match held_by(found, owner, now) {
                // An expired leftover is free anyway; removing it now
                // spares the sweep the work.
                Err(status) if expired => {
                    inner.remove(tenant, resource);
                    status
                }
                Err(status) => status,
                Ok(_) => {
                    inner.remove(tenant, resource);
                    UnlockStatus::Success
                }
            }
        };
        // Waiters are woken after the mutex is released, so that their
        // attempts do not queue up behind it.
        if status == UnlockStatus::Success {
            self.releases.released(tenant, resource);
        }
        status
    }

    /// Renews the lease of `resource` as of `now` if `owner` holds it.
    fn extend_now(
        &self,
        tenant: &str,
        resource: &str,
        owner: &str,
        ttl_ms: u64,
        now: u64,
    ) -> ExtendLockReply {
        let mut inner = self.inner.lock();
        let fencing_token = match held_by(inner.live(tenant, resource, now), owner, now) {
            Err(status) => return not_extended(status),
            Ok(lease) => lease.fencing_token,
        };
        let lease = Lease {
            owner: owner.to_owned(),
            fencing_token,
            expires_at_ms: lease_end(ttl_ms, now),
        };
        inner.put(tenant, resource, lease);
        ExtendLockReply {
            status: UnlockStatus::Success,
            fencing_token,
        }
    }

    /// Removes the leases expired at `now` and counts them.
    ///
    /// Only the expired front of the index is visited, so a sweep costs
    /// O(expired · log n), nothing when nothing has expired.
    fn sweep_now(&self, now: u64) -> usize {
        let mut inner = self.inner.lock();
        let mut removed = 0;
        while inner
            .expiries
            .first()
            .is_some_and(|(at, _, _)| !is_live(*at, now))
        {
            let Some((_, tenant, resource)) = inner.expiries.pop_first() else {
                break;
            };
            // Every write keeps the index in step with the leases, so the row
            // names a lease with exactly this expiry, now unindexed.
            inner.remove(&tenant, &resource);
            removed += 1;
        }
        removed
    }
}

// The futures do their work when first polled, not when created, so a caller
// that builds a future and drops it unpolled has changed nothing, as with any
// other driver.
impl LockStore for MemoryLocks {
    fn try_lock<'a>(
        &'a self,
        tenant: &'a str,
        resource: &'a str,
        owner: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Attempt, LockError>> {
        Box::pin(async move { self.try_lock_now(tenant, resource, owner, ttl_ms, now_ms()) })
    }

    fn unlock<'a>(
        &'a self,
        tenant: &'a str,
        resource: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<UnlockStatus, LockError>> {
        Box::pin(async move { Ok(self.unlock_now(tenant, resource, owner, now_ms())) })
    }

    fn extend<'a>(
        &'a self,
        tenant: &'a str,
        resource: &'a str,
        owner: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<ExtendLockReply, LockError>> {
        Box::pin(async move { Ok(self.extend_now(tenant, resource, owner, ttl_ms, now_ms())) })
    }

    fn sweep(&self) -> BoxFuture<'_, Result<usize, LockError>> {
        Box::pin(async move { Ok(self.sweep_now(now_ms())) })
    }

    fn releases(&self) -> &Releases {
        &self.releases
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index holds exactly one row per lease.
    fn assert_index_consistent(locks: &MemoryLocks) {
        let inner = locks.inner.lock();
        let expected: BTreeSet<(u64, String, String)> = inner
            .leases
            .iter()
            .flat_map(|(tenant, leases)| {
                leases
                    .iter()
                    .map(move |(resource, l)| (l.expires_at_ms, tenant.clone(), resource.clone()))
            })
            .collect();
        assert_eq!(inner.expiries, expected);
        assert!(inner.leases.values().all(|leases| !leases.is_empty()));
    }

    /// Grants over expired leases, extensions, unlocks and sweeps keep the
    /// index in step with the leases, with the clock held still.
    #[test]
    fn writes_and_sweeps_keep_the_index_in_step() {
        let locks = MemoryLocks::new(Quota::defaults("locks"));
        let granted = |r: &str, ttl: u64, now: u64| {
            let attempt = locks.try_lock_now("t", r, "o", ttl, now).expect("attempt");
            assert!(
                matches!(attempt, Attempt::Acquired { .. }),
                "{r}: {attempt:?}"
            );
            assert_index_consistent(&locks);
        };
        granted("a", 10, 100);
        granted("b", 10, 100);
        granted("c", 10, 100);
        // "a" expired at 110 and is granted again over its leftover.
        granted("a", 10, 110);
        assert_eq!(
            locks.extend_now("t", "b", "o", 50, 105).status,
            UnlockStatus::Success
        );
        assert_index_consistent(&locks);
        assert_eq!(locks.unlock_now("t", "c", "o", 105), UnlockStatus::Success);
        assert_index_consistent(&locks);

        // At 120 "a" (re-granted until 120) has expired, "b" (until 155) not.
        assert_eq!(locks.sweep_now(119), 0);
        assert_eq!(locks.sweep_now(120), 1);
        assert_index_consistent(&locks);
        assert_eq!(locks.sweep_now(155), 1);
        assert_eq!(locks.sweep_now(u64::MAX), 0);
        assert_index_consistent(&locks);
        assert!(locks.inner.lock().leases.is_empty());
    }

    /// Tokens follow the clock, so a fresh store (a restarted module) hands
    /// out tokens above those an earlier store handed out before.
    #[test]
    fn tokens_of_a_fresh_store_exceed_those_of_an_earlier_one() {
        let token = |locks: &MemoryLocks, r: &str, now: u64| match locks
            .try_lock_now("t", r, "o", 10, now)
            .expect("attempt")
        {
            Attempt::Acquired { fencing_token } => fencing_token,
            held => panic!("{r} was not granted: {held:?}"),
        };
        let before = MemoryLocks::new(Quota::defaults("locks"));
        let mut last = 0;
        for i in 0..100 {
            let t = token(&before, &format!("r{i}"), 1_000);
            assert!(t > last);
            last = t;
        }
        let after = MemoryLocks::new(Quota::defaults("locks"));
        assert!(token(&after, "r0", 1_001) > last);
    }
}
