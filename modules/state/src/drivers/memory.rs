//! The `state.memory` driver: hash maps behind a mutex, fast and gone when
//! the module exits.

use std::collections::{BTreeSet, HashMap};

use mecha_abi::msg::{ComponentSpec, StateEntry, TxOp};
use mecha_module::metadata::Metadata;
use parking_lot::Mutex;

use super::quota::{self, Quota, Usage};
use super::{check_etag, expiry, is_live, next_revision, now_ms};
use super::{BoxFuture, OpOutcome, StateStore, StoreError};

/// One stored value.
#[derive(Clone, Debug)]
struct Entry {
    /// The value bytes.
    value: Vec<u8>,
    /// The revision the last set gave this key; its ETag is this in decimal.
    revision: u64,
    /// When the key stops being readable, in milliseconds since the epoch.
    expires_at_ms: Option<u64>,
}

/// Everything the mutex protects. The maps, the index and the counter live
/// under one lock so a transaction's checks and its writes see one consistent
/// state.
#[derive(Debug, Default)]
struct Inner {
    /// Entries by tenant, then key. Nesting the maps lets a lookup borrow the
    /// caller's strings instead of building an owned (tenant, key) pair.
    entries: HashMap<String, HashMap<String, Entry>>,
    /// Every entry that has an expiry, as (expires_at_ms, tenant, key), so a
    /// sweep visits only what has expired, in expiry order.
    expiries: BTreeSet<(u64, String, String)>,
    /// The last revision handed out, per tenant (scope). A counter per
    /// tenant keeps an ETag from telling one tenant how many writes the
    /// others make (issue #16); a counter is kept after its tenant's last
    /// key is deleted, so that a key written again never gets an old ETag.
    revisions: HashMap<String, u64>,
    /// What each tenant keeps, for its quota; kept in step by [`Inner::put`]
    /// and [`Inner::remove`], the only two places that change `entries`. A
    /// tenant with nothing stored has no row.
    usage: HashMap<String, Usage>,
}

impl Inner {
    /// The entry of `key`, live or not.
    fn entry(&self, tenant: &str, key: &str) -> Option<&Entry> {
        self.entries.get(tenant)?.get(key)
    }

    /// The revision of `key` if it is stored and live at `now`.
    fn live_revision(&self, tenant: &str, key: &str, now: u64) -> Option<u64> {
        self.entry(tenant, key)
            .filter(|entry| is_live(entry.expires_at_ms, now))
            .map(|entry| entry.revision)
    }

    /// What `tenant` keeps now.
    fn usage(&self, tenant: &str) -> Usage {
        self.usage.get(tenant).copied().unwrap_or_default()
    }

    /// Stores `entry` under `key`, or removes the key for `None`, keeping the
    /// expiry index and the tenant's usage in step.
    fn put(&mut self, tenant: &str, key: String, entry: Option<Entry>) {
        // The old index row goes first, so that a new expiry equal to the old
        // one is not removed again right after being added.
        if let Some(at) = self.entry(tenant, &key).and_then(|old| old.expires_at_ms) {
            self.expiries.remove(&(at, tenant.to_owned(), key.clone()));
        }
        match entry {
            Some(entry) => {
                if let Some(at) = entry.expires_at_ms {
                    self.expiries.insert((at, tenant.to_owned(), key.clone()));
                }
                let mut usage = self.usage(tenant);
                if let Some(old) = self.entry(tenant, &key) {
                    usage.remove(&key, old.value.len());
                }
                usage.add(&key, entry.value.len());
                self.set_usage(tenant, usage);
                self.entries
                    .entry(tenant.to_owned())
                    .or_default()
                    .insert(key, entry);
            }
            None => self.remove(tenant, &key),
        }
    }

    /// Removes `key` from the entries (not from the index), dropping the
    /// tenant's map once it is empty so tenants that come and go leave
    /// nothing behind.
    fn remove(&mut self, tenant: &str, key: &str) {
        if let Some(keys) = self.entries.get_mut(tenant) {
            let old = keys.remove(key);
            if keys.is_empty() {
                self.entries.remove(tenant);
            }
            if let Some(old) = old {
                let mut usage = self.usage(tenant);
                usage.remove(key, old.value.len());
                self.set_usage(tenant, usage);
            }
        }
    }

    /// Records what `tenant` keeps, dropping its row when that is nothing.
    fn set_usage(&mut self, tenant: &str, usage: Usage) {
        if usage.is_empty() {
            self.usage.remove(tenant);
        } else if let Some(row) = self.usage.get_mut(tenant) {
            *row = usage;
        } else {
            self.usage.insert(tenant.to_owned(), usage);
        }
    }
}

/// An in-memory state store. Nothing survives the process, which is what the
/// zero-setup default and tests want.
#[derive(Debug)]
pub struct MemoryStore {
    /// The entries, their expiry index, the revision counters and usage.
    inner: Mutex<Inner>,
    /// What each tenant may keep.
    quota: Quota,
}

impl MemoryStore {
    /// Creates an empty store with the default quota.
    pub fn new() -> Self {
        Self::with_quota(Quota::defaults("memory"))
    }

    /// Creates an empty store with the quota `spec`'s metadata sets; the
    /// quota's fields are the only metadata this driver has.
    pub fn open(spec: &ComponentSpec) -> Result<Self, StoreError> {
        let metadata = Metadata::parse(spec, &quota::FIELDS)?;
        Ok(Self::with_quota(Quota::from_metadata(&metadata)?))
    }

    /// Creates an empty store with `quota`.
    fn with_quota(quota: Quota) -> Self {
        Self {
            inner: Mutex::default(),
            quota,
        }
    }

    /// Reads `keys` as of `now`.
    fn get_now(&self, tenant: &str, keys: &[String], now: u64) -> Vec<Option<StateEntry>> {
        let inner = self.inner.lock();
        keys.iter()
            .map(|key| {
                inner
                    .entry(tenant, key)
                    .filter(|entry| is_live(entry.expires_at_ms, now))
                    .map(|entry| StateEntry {
                        value: entry.value.clone(),
                        etag: entry.revision.to_string(),
                    })
            })
            .collect()
    }

    /// Applies `ops` as of `now`, all or nothing.
    fn transact_now(
        &self,
        tenant: &str,
        ops: Vec<TxOp>,
        now: u64,
    ) -> Result<Vec<OpOutcome>, StoreError> {
        let mut inner = self.inner.lock();
        // Every op is first applied to a staging overlay and a local copy of
        // the counter; the shared state is touched only once all ops passed
        // their checks, so a failing op leaves no trace, not even a consumed
        // revision. `None` in the overlay records a delete. The overlay owns
        // the ops' keys and values, moved out of `ops`, so nothing is copied.
        let mut staged: HashMap<String, Option<Entry>> = HashMap::new();
        let old_revision = inner.revisions.get(tenant).copied().unwrap_or(0);
        let mut revision = old_revision;
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            let (key, etag) = match &op {
                TxOp::Set(item) => (item.key.as_str(), item.etag.as_deref()),
                TxOp::Delete(item) => (item.key.as_str(), item.etag.as_deref()),
            };
            // Later ops must see what earlier ops of this transaction did, so
            // the overlay wins over the shared state.
            let live = match staged.get(key) {
                Some(entry) => entry
                    .as_ref()
                    .filter(|entry| is_live(entry.expires_at_ms, now))
                    .map(|entry| entry.revision),
                None => inner.live_revision(tenant, key, now),
            };
            check_etag(key, etag, live)?;
            match op {
                TxOp::Set(item) => {
                    revision = next_revision(revision)?;
                    staged.insert(
                        item.key,
                        Some(Entry {
                            value: item.value,
                            revision,
                            expires_at_ms: expiry(item.ttl_ms, now),
                        }),
                    );
                    outcomes.push(OpOutcome::Set {
                        etag: revision.to_string(),
                    });
                }
                TxOp::Delete(item) => {
                    // An expired leftover is removed as well: it is invisible
                    // anyway and would otherwise wait for the next sweep.
                    staged.insert(item.key, None);
                    outcomes.push(OpOutcome::Deleted {
                        existed: live.is_some(),
                    });
                }
            }
        }
        let before = inner.usage(tenant);
        let mut after = before;
        for (key, entry) in &staged {
            if let Some(old) = inner.entry(tenant, key) {
                after.remove(key, old.value.len());
            }
            if let Some(new) = entry {
                after.add(key, new.value.len());
            }
        }
        self.quota.check(before, after)?;
        for (key, entry) in staged {
            inner.put(tenant, key, entry);
        }
        debug_assert_eq!(inner.usage(tenant), after);
        if revision != old_revision {
            match inner.revisions.get_mut(tenant) {
                Some(counter) => *counter = revision,
                None => {
                    inner.revisions.insert(tenant.to_owned(), revision);
                }
            }
        }
        Ok(outcomes)
    }

    /// Removes the entries expired at `now` and counts them.
    ///
    /// Only the expired front of the index is visited, so a sweep costs
    /// O(expired · log n), nothing when nothing has expired.
    fn sweep_now(&self, now: u64) -> usize {
        let mut inner = self.inner.lock();
        let mut removed = 0;
        while inner
            .expiries
            .first()
            .is_some_and(|(at, _, _)| !is_live(Some(*at), now))
        {
            let Some((at, tenant, key)) = inner.expiries.pop_first() else {
                break;
            };
            // Every write keeps the index in step with the entries, so the
            // row names an entry with exactly this expiry; checking costs one
            // lookup and keeps a stale row from removing a live entry.
            let indexed = inner
                .entry(&tenant, &key)
                .is_some_and(|entry| entry.expires_at_ms == Some(at));
            if indexed {
                inner.remove(&tenant, &key);
                removed += 1;
            }
        }
        removed
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

// The futures do their work when first polled, not when created, so a caller
// that builds a future and drops it unpolled has changed nothing, as with any
// other driver.
impl StateStore for MemoryStore {
    fn get<'a>(
        &'a self,
        tenant: &'a str,
        keys: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<Option<StateEntry>>, StoreError>> {
        Box::pin(async move { Ok(self.get_now(tenant, &keys, now_ms())) })
    }

    fn transact<'a>(
        &'a self,
        tenant: &'a str,
        ops: Vec<TxOp>,
    ) -> BoxFuture<'a, Result<Vec<OpOutcome>, StoreError>> {
        Box::pin(async move { self.transact_now(tenant, ops, now_ms()) })
    }

    fn sweep(&self) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move { Ok(self.sweep_now(now_ms())) })
    }
}

#[cfg(test)]
mod tests {
    use mecha_abi::msg::{DeleteItem, SetItem};

    use super::*;

    fn set(key: &str, etag: Option<&str>) -> TxOp {
        TxOp::Set(SetItem {
            key: key.to_owned(),
            value: b"v".to_vec(),
            etag: etag.map(str::to_owned),
            ttl_ms: None,
        })
    }

    /// A failed transaction must not consume revisions: the next successful
    /// set gets the ETag right after the last one handed out.
    #[test]
    fn failed_transaction_consumes_no_revision() {
        let store = MemoryStore::new();
        let first = store.transact_now("t", vec![set("a", None)], 0);
        assert_eq!(
            first,
            Ok(vec![OpOutcome::Set {
                etag: "1".to_owned()
            }])
        );
        let failed = store.transact_now(
            "t",
            vec![
                set("a", None),
                set("b", None),
                TxOp::Delete(DeleteItem {
                    key: "a".to_owned(),
                    etag: Some("1".to_owned()),
                }),
            ],
            0,
        );
        assert_eq!(
            failed,
            Err(StoreError::EtagMismatch {
                key: "a".to_owned()
            })
        );
        let next = store.transact_now("t", vec![set("c", None)], 0);
        assert_eq!(
            next,
            Ok(vec![OpOutcome::Set {
                etag: "2".to_owned()
            }])
        );
        assert_eq!(store.get_now("t", &["b".to_owned()], 0), vec![None]);
    }

    /// ETags count one tenant's writes only, and a key deleted and written
    /// again never gets an ETag it had before.
    #[test]
    fn etags_count_each_tenants_own_writes() {
        let store = MemoryStore::new();
        let etag =
            |tenant: &str, key: &str| match store.transact_now(tenant, vec![set(key, None)], 0) {
                Ok(outcomes) => outcomes,
                Err(e) => panic!("set failed: {e}"),
            };
        assert_eq!(etag("a", "k"), vec![OpOutcome::Set { etag: "1".into() }]);
        for _ in 0..100 {
            etag("b", "k");
        }
        assert_eq!(etag("a", "k"), vec![OpOutcome::Set { etag: "2".into() }]);
        let deleted = store.transact_now(
            "a",
            vec![TxOp::Delete(DeleteItem {
                key: "k".to_owned(),
                etag: None,
            })],
            0,
        );
        assert!(deleted.is_ok());
        assert_eq!(etag("a", "k"), vec![OpOutcome::Set { etag: "3".into() }]);
    }

    fn set_ttl(key: &str, ttl_ms: Option<u64>) -> TxOp {
        TxOp::Set(SetItem {
            key: key.to_owned(),
            value: b"v".to_vec(),
            etag: None,
            ttl_ms,
        })
    }

    fn delete(key: &str) -> TxOp {
        TxOp::Delete(DeleteItem {
            key: key.to_owned(),
            etag: None,
        })
    }

    /// The index holds exactly one row per entry that has an expiry.
    fn assert_index_consistent(store: &MemoryStore) {
        let inner = store.inner.lock();
        let expected: BTreeSet<(u64, String, String)> = inner
            .entries
            .iter()
            .flat_map(|(tenant, keys)| {
                keys.iter().filter_map(move |(key, entry)| {
                    entry
                        .expires_at_ms
                        .map(|at| (at, tenant.clone(), key.clone()))
                })
            })
            .collect();
        assert_eq!(inner.expiries, expected);
        assert!(inner.entries.values().all(|keys| !keys.is_empty()));
    }

    /// Overwrites (with the same, another or no expiry), deletes and sweeps
    /// keep the index in step with the entries, with the clock held still so
    /// equal expiries really collide.
    #[test]
    fn writes_and_sweeps_keep_the_index_in_step() {
        let store = MemoryStore::new();
        let ok = |ops: Vec<TxOp>, now: u64| {
            store.transact_now("t", ops, now).expect("transaction");
            assert_index_consistent(&store);
        };
        ok(
            vec![set_ttl("same", Some(10)), set_ttl("same", Some(10))],
            100,
        );
        ok(
            vec![set_ttl("other", Some(10)), set_ttl("other", Some(20))],
            100,
        );
        ok(
            vec![set_ttl("cleared", Some(10)), set_ttl("cleared", None)],
            100,
        );
        ok(vec![set_ttl("deleted", Some(10)), delete("deleted")], 100);
        ok(vec![set_ttl("later", Some(10))], 100);
        ok(vec![set_ttl("later", Some(10))], 105);
        ok(vec![set_ttl("forever", None)], 100);

        // At 110 "same" expires (110 <= 110); "later" was moved to 115.
        assert_eq!(store.sweep_now(109), 0);
        assert_eq!(store.sweep_now(110), 1);
        assert_index_consistent(&store);
        assert_eq!(store.sweep_now(115), 1);
        assert_eq!(store.sweep_now(120), 1);
        assert_eq!(store.sweep_now(u64::MAX), 0);
        assert_index_consistent(&store);
        let keys = ["cleared", "forever"].map(str::to_owned);
        assert!(store
            .get_now("t", &keys, u64::MAX)
            .iter()
            .all(Option::is_some));

        // Tenants whose last key is swept leave no empty map behind.
        store
            .transact_now("gone", vec![set_ttl("k", Some(1))], 0)
            .expect("transaction");
        assert_eq!(store.sweep_now(1), 1);
        assert!(!store.inner.lock().entries.contains_key("gone"));
    }
}
