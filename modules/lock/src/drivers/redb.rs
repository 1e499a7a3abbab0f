//! The `lock.redb` driver: leases and fencing-token counters in an embedded,
//! crash-safe file, so tokens keep increasing across restarts.

use std::fmt::Display;
use std::path::Path;

use mecha_abi::msg::{ComponentSpec, ExtendLockReply, UnlockStatus};
use std::collections::HashMap;
use std::sync::Arc;

use mecha_module::embedded::{
    self, blocking, redb_file, ExpiryIndex, ExpiryKey, Finish, SharedDb, SweepObserver,
};
use mecha_module::metadata::Metadata;
use mecha_module::DriverError;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};

use super::{held_by, is_live, lease_end, next_token, not_extended, now_ms};
use super::{Attempt, BoxFuture, LockError, LockStore, Quota, Releases};

/// The key of the `leases` table: (tenant, resource).
type LeaseKey = (&'static str, &'static str);

/// The value of the `leases` table: (owner, fencing token, expires_at_ms).
type LeaseValue = (&'static str, u64, u64);

/// The granted locks. A released lock's row is deleted; an expired one stays
/// until it is granted again or swept.
const LEASES: TableDefinition<LeaseKey, LeaseValue> = TableDefinition::new("leases");

/// The expiry index: one row per `leases` row, ordered by expiry time, so a
/// sweep reads only the rows that have expired. Every write transaction that
/// changes a lease's expiry updates its row too.
const EXPIRY: TableDefinition<ExpiryKey, ()> = TableDefinition::new("expiry");

/// The leases, swept through [`EXPIRY`].
const EXPIRING: ExpiryIndex<LeaseValue> = ExpiryIndex {
    index: EXPIRY,
    table: LEASES,
    expiry: |(_, _, expires_at_ms)| expires_at_ms,
};

/// The last fencing token granted, per tenant. It is written in the same
/// transaction as the grant that took it, so a token is never granted twice,
/// even after a crash. One counter per tenant (rather than per resource)
/// keeps every resource's tokens increasing while a released lock's row can
/// be deleted, and keeps one tenant's activity invisible in another's tokens.
const TOKENS: TableDefinition<&str, u64> = TableDefinition::new("tokens");

/// How many rows each tenant has in [`LEASES`], for its quota
/// (`maxLocksPerTenant`): every transaction that adds or deletes a row, a
/// sweep included, updates its tenant's count. A tenant with none has no row.
const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("counts");

/// Markers of the file's layout; see [`COUNTED`].
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The `meta` row saying [`COUNTS`] covers every lease. A file written
/// before the quota lacks it and is counted once when opened.
const COUNTED: &str = "counted";

/// The metadata fields this driver understands.
const KNOWN_FIELDS: [&str; 1] = ["path"];

/// A lock store kept in one redb file.
#[derive(Debug)]
pub struct RedbLocks {
    /// The store file, opened at start or, during a hot restart, once the
    /// previous instance of this module released it.
    db: SharedDb<LockError>,
    /// Acquirers waiting for a release.
    releases: Releases,
    /// How many leases a tenant may keep; shared with the blocking tasks.
    quota: Arc<Quota>,
}

impl RedbLocks {
    /// Opens (creating if needed) the store file named by `spec`.
    ///
    /// The file is the metadata field `path` (absolute, or relative to
    /// `data_dir`), or `<data_dir>/<component name>.redb` without it. This
    /// blocks on file I/O; it runs once, when the module starts.
    pub fn open(spec: &ComponentSpec, data_dir: &Path, quota: Quota) -> Result<Self, LockError> {
        let metadata = Metadata::parse(spec, &KNOWN_FIELDS)?;
        let path = redb_file(&spec.name, metadata.str("path")?, data_dir)
            .map_err(|reason| metadata.error(reason))?;
        Ok(Self {
            db: SharedDb::open(path, prepare)?,
            releases: Releases::default(),
            quota: Arc::new(quota),
        })
    }
}

/// Creates the tables up front, because a read transaction cannot create a
/// table and reads should not have to treat "no table yet" as a special case.
fn prepare(db: &Database) -> Result<(), LockError> {
    let txn = db
        .begin_write()
        .map_err(redb_error("begin the table-creating transaction"))?;
    txn.open_table(LEASES)
        .map_err(redb_error("create the leases table"))?;
    txn.open_table(EXPIRY)
        .map_err(redb_error("create the expiry table"))?;
    txn.open_table(TOKENS)
        .map_err(redb_error("create the tokens table"))?;
    embedded::count_once(&txn, LEASES, COUNTS, (META, COUNTED))?;
    txn.commit()
        .map_err(redb_error("commit the table-creating transaction"))
}

/// Maps a redb error to `Internal`, saying which operation failed.
fn redb_error<E: Display>(operation: &'static str) -> impl FnOnce(E) -> LockError {
    move |e| {
        LockError::Driver(DriverError::Internal(format!(
            "redb: cannot {operation}: {e}"
        )))
    }
}

/// A lease as stored: owner, fencing token, expiry.
#[derive(Debug)]
struct Stored {
    owner: String,
    fencing_token: u64,
    expires_at_ms: u64,
}

impl super::FoundLease for Stored {
    fn owner(&self) -> &str {
        &self.owner
    }
    fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }
}

/// The stored lease of `resource`, live or not, as seen by the transaction
/// `leases` belongs to.
fn stored(
    leases: &impl ReadableTable<LeaseKey, LeaseValue>,
    tenant: &str,
    resource: &str,
) -> Result<Option<Stored>, LockError> {
    let found = leases
        .get((tenant, resource))
        .map_err(redb_error("read a lease"))?;
    Ok(found.map(|guard| {
        let (owner, fencing_token, expires_at_ms) = guard.value();
        Stored {
            owner: owner.to_owned(),
            fencing_token,
            expires_at_ms,
        }
    }))
}

/// Writes a lease and its index row, replacing the `old` lease's row.
fn put(
    leases: &mut Table<'_, LeaseKey, LeaseValue>,
    index: &mut Table<'_, ExpiryKey, ()>,
    tenant: &str,
    resource: &str,
    old: Option<&Stored>,
    new: (&str, u64, u64),
) -> Result<(), LockError> {
    // The old row goes before the new one is added, so an unchanged expiry
    // keeps its row.
    if let Some(old) = old {
        index
            .remove((old.expires_at_ms, tenant, resource))
            .map_err(redb_error("remove an expiry index row"))?;
    }
    index
        .insert((new.2, tenant, resource), ())
        .map_err(redb_error("write an expiry index row"))?;
    leases
        .insert((tenant, resource), new)
        .map_err(redb_error("write a lease"))?;
    Ok(())
}

/// Deletes the lease `old` of `resource` and its index row.
fn remove(
    leases: &mut Table<'_, LeaseKey, LeaseValue>,
    index: &mut Table<'_, ExpiryKey, ()>,
    tenant: &str,
    resource: &str,
    old: &Stored,
) -> Result<(), LockError> {
    index
        .remove((old.expires_at_ms, tenant, resource))
        .map_err(redb_error("remove an expiry index row"))?;
    leases
        .remove((tenant, resource))
        .map_err(redb_error("delete a lease"))?;
    Ok(())
}

/// The live lease of `resource` at `now`, read without a write transaction.
fn read_live(
    db: &Database,
    tenant: &str,
    resource: &str,
    now: u64,
) -> Result<Option<Stored>, LockError> {
    let txn = db
        .begin_read()
        .map_err(redb_error("begin a read transaction"))?;
    let leases = txn
        .open_table(LEASES)
        .map_err(redb_error("open the leases table for reading"))?;
    Ok(stored(&leases, tenant, resource)?.filter(|l| is_live(l.expires_at_ms, now)))
}

/// A held lock, answered from a read transaction, which neither waits for
/// nor blocks writers: waiters retrying a busy lock cost no disk sync and do
/// not queue behind each other for the single writer. `None` when the lock
/// looks free and a write transaction must decide.
fn held_now(
    db: &Database,
    tenant: &str,
    resource: &str,
    now: u64,
) -> Result<Option<Attempt>, LockError> {
    Ok(
        read_live(db, tenant, resource, now)?.map(|held| Attempt::Held {
            expires_at_ms: held.expires_at_ms,
        }),
    )
}

/// One attempt to grant `resource` to `owner` as of `now`, within `quota`, in
/// `txn`: committed if granted, aborted if the lock turned out to be held.
/// An error leaves `txn` to be dropped uncommitted, which makes redb abort
/// it, so a failed or lost grant leaves no trace, not even a used token.
fn try_lock(
    txn: &WriteTransaction,
    quota: &Quota,
    (tenant, resource, owner): (&str, &str, &str),
    ttl_ms: u64,
    now: u64,
) -> Result<Finish<Attempt>, LockError> {
    let fencing_token = {
        let mut leases = txn
            .open_table(LEASES)
            .map_err(redb_error("open the leases table for writing"))?;
        let mut index = txn
            .open_table(EXPIRY)
            .map_err(redb_error("open the expiry table for writing"))?;
        let mut tokens = txn
            .open_table(TOKENS)
            .map_err(redb_error("open the tokens table for writing"))?;
        // Another attempt may have taken the lock since the read above.
        let old = stored(&leases, tenant, resource)?;
        if let Some(held) = old.as_ref().filter(|l| is_live(l.expires_at_ms, now)) {
            return Ok(Finish::Abort(Attempt::Held {
                expires_at_ms: held.expires_at_ms,
            }));
        }
        if old.is_none() {
            // A refusal returns early, which aborts the count with the rest.
            let mut counts = txn
                .open_table(COUNTS)
                .map_err(redb_error("open the counts table"))?;
            let held = embedded::add_count(&mut counts, tenant, 1)?;
            quota.check(usize::try_from(held).unwrap_or(usize::MAX), resource)?;
        }
        let last = tokens
            .get(tenant)
            .map_err(redb_error("read the fencing token counter"))?
            .map_or(0, |guard| guard.value());
        let fencing_token = next_token(last)?;
        tokens
            .insert(tenant, fencing_token)
            .map_err(redb_error("write the fencing token counter"))?;
        let expires_at_ms = lease_end(ttl_ms, now);
        put(
            &mut leases,
            &mut index,
            tenant,
            resource,
            old.as_ref(),
            (owner, fencing_token, expires_at_ms),
        )?;
        fencing_token
    };
    // The writer answers once the grant and its token are durable, so the
    // token is never granted again.
    Ok(Finish::Commit(Attempt::Acquired { fencing_token }))
}

/// The tables a change to a lease writes.
type LeaseTables<'t> = (
    Table<'t, LeaseKey, LeaseValue>,
    Table<'t, ExpiryKey, ()>,
    Table<'t, &'static str, u64>,
);

/// Applies `change` to the lease of `resource` as of `now` if `owner` holds
/// it, in `txn`, which commits only when the lease was held; otherwise the
/// transaction aborts, which spares it a disk sync when it is alone in its
/// batch, and `refused` makes the answer from the status. An expired
/// leftover is left to the sweep.
fn change_held<T>(
    txn: &WriteTransaction,
    (tenant, resource, owner): (&str, &str, &str),
    now: u64,
    refused: impl FnOnce(UnlockStatus) -> T,
    change: impl FnOnce(&mut LeaseTables<'_>, Stored) -> Result<T, LockError>,
) -> Result<Finish<T>, LockError> {
    let outcome = {
        let mut tables = (
            txn.open_table(LEASES)
                .map_err(redb_error("open the leases table for writing"))?,
            txn.open_table(EXPIRY)
                .map_err(redb_error("open the expiry table for writing"))?,
            txn.open_table(COUNTS)
                .map_err(redb_error("open the counts table"))?,
        );
        match held_by(stored(&tables.0, tenant, resource)?, owner, now) {
            Err(status) => Err(status),
            Ok(lease) => Ok(change(&mut tables, lease)?),
        }
    };
    Ok(match outcome {
        Ok(answer) => Finish::Commit(answer),
        Err(status) => Finish::Abort(refused(status)),
    })
}

/// Releases `resource` as of `now` if `owner` holds it.
fn unlock(
    txn: &WriteTransaction,
    (tenant, resource, owner): (&str, &str, &str),
    now: u64,
) -> Result<Finish<UnlockStatus>, LockError> {
    let held = (tenant, resource, owner);
    change_held(
        txn,
        held,
        now,
        |status| status,
        |(leases, index, counts), lease| {
            remove(leases, index, tenant, resource, &lease)?;
            embedded::add_count(counts, tenant, -1)?;
            Ok(UnlockStatus::Success)
        },
    )
}

/// Renews the lease of `resource` as of `now` if `owner` holds it.
fn extend(
    txn: &WriteTransaction,
    (tenant, resource, owner): (&str, &str, &str),
    ttl_ms: u64,
    now: u64,
) -> Result<Finish<ExtendLockReply>, LockError> {
    let held = (tenant, resource, owner);
    change_held(txn, held, now, not_extended, |(leases, index, _), lease| {
        let renewed = (owner, lease.fencing_token, lease_end(ttl_ms, now));
        put(leases, index, tenant, resource, Some(&lease), renewed)?;
        Ok(ExtendLockReply {
            status: UnlockStatus::Success,
            fencing_token: lease.fencing_token,
        })
    })
}

/// The leases a sweep removed, per tenant, taken off the tenants' counts in
/// the sweep's own transaction.
#[derive(Default)]
struct Swept {
    /// Per tenant, how many leases were removed.
    removed: HashMap<String, u64>,
}

impl SweepObserver<LeaseValue> for Swept {
    fn removed(&mut self, tenant: &str, _resource: &str, _lease: (&str, u64, u64)) {
        *self.removed.entry(tenant.to_owned()).or_default() += 1;
    }

    fn commit(&mut self, txn: &WriteTransaction) -> Result<(), embedded::Error> {
        let failed = |e: LockError| embedded::Error::Failed(e.to_string());
        let mut counts = txn
            .open_table(COUNTS)
            .map_err(redb_error("open the counts table for a sweep"))
            .map_err(failed)?;
        for (tenant, removed) in self.removed.drain() {
            let delta = -i64::try_from(removed).unwrap_or(i64::MAX);
            embedded::add_count(&mut counts, &tenant, delta)?;
        }
        Ok(())
    }
}

// The blocking tasks and the writer's jobs must own what they use
// (`'static`), so the short names are copied. The clock is read inside the
// task or job so that time spent waiting for the pool or the writer does not
// make a just-expired lease look live. Grants, releases and extensions go
// through the database's writer, which answers each once a durable commit
// holds it; changes that arrive while it commits share the next one.
impl LockStore for RedbLocks {
    fn try_lock<'a>(
        &'a self,
        tenant: &'a str,
        resource: &'a str,
        owner: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Attempt, LockError>> {
        let (tenant, resource, owner) = (tenant.to_owned(), resource.to_owned(), owner.to_owned());
        Box::pin(async move {
            let db = self.db.db().await?;
            let (t, r) = (tenant.clone(), resource.clone());
            if let Some(held) = blocking(move || held_now(&db, &t, &r, now_ms())).await? {
                return Ok(held);
            }
            let quota = Arc::clone(&self.quota);
            let bytes = tenant.len() + resource.len() + owner.len();
            self.db
                .write_or_abort(bytes, move |txn| {
                    let names = (tenant.as_str(), resource.as_str(), owner.as_str());
                    try_lock(txn, &quota, names, ttl_ms, now_ms())
                })
                .await
        })
    }

    fn unlock<'a>(
        &'a self,
        tenant: &'a str,
        resource: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<UnlockStatus, LockError>> {
        Box::pin(async move {
            let (t, r, o) = (tenant.to_owned(), resource.to_owned(), owner.to_owned());
            let bytes = t.len() + r.len() + o.len();
            let status = self
                .db
                .write_or_abort(bytes, move |txn| {
                    unlock(txn, (t.as_str(), r.as_str(), o.as_str()), now_ms())
                })
                .await?;
            if status == UnlockStatus::Success {
                self.releases.released(tenant, resource);
            }
            Ok(status)
        })
    }

    fn extend<'a>(
        &'a self,
        tenant: &'a str,
        resource: &'a str,
        owner: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<ExtendLockReply, LockError>> {
        let (tenant, resource, owner) = (tenant.to_owned(), resource.to_owned(), owner.to_owned());
        Box::pin(async move {
            let bytes = tenant.len() + resource.len() + owner.len();
            self.db
                .write_or_abort(bytes, move |txn| {
                    let names = (tenant.as_str(), resource.as_str(), owner.as_str());
                    extend(txn, names, ttl_ms, now_ms())
                })
                .await
        })
    }

    fn sweep(&self) -> BoxFuture<'_, Result<usize, LockError>> {
        Box::pin(async move {
            // Until the file is ours there is nothing to sweep; do not wait.
            let Some(db) = self.db.opened().cloned() else {
                return Ok(0);
            };
            blocking(move || {
                let mut swept = Swept::default();
                Ok(EXPIRING.sweep_observed(&db, now_ms(), &mut swept)?)
            })
            .await
        })
    }

    fn releases(&self) -> &Releases {
        &self.releases
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn spec(name: &str) -> ComponentSpec {
        ComponentSpec {
            name: name.to_owned(),
            kind: "lock.redb".to_owned(),
            metadata: Vec::new(),
        }
    }

    #[test]
    fn a_file_held_by_a_previous_instance_is_opened_once_released() {
        let dir = tempfile::TempDir::new().expect("create a temporary directory");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let old = RedbLocks::open(&spec("handoff"), dir.path(), Quota::defaults("locks"))
            .expect("first open");
        let first = rt
            .block_on(old.try_lock("t", "r", "o", 3_600_000))
            .expect("grant");
        // As in a hot restart: the new instance starts while the old holds the file.
        let new = RedbLocks::open(&spec("handoff"), dir.path(), Quota::defaults("locks"))
            .expect("deferred open");
        assert!(new.db.opened().is_none(), "the file is still held");
        let second = rt.block_on(async {
            let release = async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(old);
            };
            let (_, second) = tokio::join!(release, new.try_lock("t", "r", "other", 1_000));
            second
        });
        assert!(matches!(first, Attempt::Acquired { .. }), "{first:?}");
        // The lease granted by the old instance is still held, by its owner.
        assert!(matches!(second, Ok(Attempt::Held { .. })), "{second:?}");
        let released = rt.block_on(new.unlock("t", "r", "o"));
        assert_eq!(released, Ok(UnlockStatus::Success));
    }

    /// Runs `work` in a durable transaction of its own, outside the writer,
    /// committing or aborting it as the work decides.
    fn in_txn<T>(
        db: &Database,
        work: impl FnOnce(&WriteTransaction) -> Result<Finish<T>, LockError>,
    ) -> T {
        let txn = db.begin_write().expect("begin");
        match work(&txn).expect("work") {
            Finish::Commit(answer) => {
                txn.commit().expect("commit");
                answer
            }
            Finish::Abort(answer) => answer,
        }
    }

    /// The index holds exactly one row per lease.
    fn assert_index_consistent(db: &Database) {
        let txn = db.begin_read().expect("begin");
        let leases = txn.open_table(LEASES).expect("leases table");
        let index = txn.open_table(EXPIRY).expect("expiry table");
        let mut expected = Vec::new();
        for row in leases.iter().expect("iter") {
            let (key, value) = row.expect("row");
            let (tenant, resource) = key.value();
            expected.push((value.value().2, tenant.to_owned(), resource.to_owned()));
        }
        expected.sort();
        let mut actual = Vec::new();
        for row in index.iter().expect("iter") {
            let (key, _) = row.expect("row");
            let (at, tenant, resource) = key.value();
            actual.push((at, tenant.to_owned(), resource.to_owned()));
        }
        assert_eq!(actual, expected);
    }

    /// Grants over expired leases, extensions, unlocks and sweeps keep the
    /// index in step with the leases, with the clock held still.
    #[test]
    fn writes_and_sweeps_keep_the_index_in_step() {
        let dir = tempfile::TempDir::new().expect("create a temporary directory");
        let store =
            RedbLocks::open(&spec("s"), dir.path(), Quota::defaults("locks")).expect("open");
        let db = store.db.opened().expect("opened eagerly");
        let granted = |r: &str, ttl: u64, now: u64| {
            let attempt = in_txn(db, |txn| {
                try_lock(txn, &Quota::defaults("locks"), ("t", r, "o"), ttl, now)
            });
            assert!(
                matches!(attempt, Attempt::Acquired { .. }),
                "{r}: {attempt:?}"
            );
            assert_index_consistent(db);
        };
        granted("a", 10, 100);
        granted("b", 10, 100);
        granted("c", 10, 100);
        granted("a", 10, 110);
        let extended = in_txn(db, |txn| extend(txn, ("t", "b", "o"), 50, 105));
        assert_eq!(extended.status, UnlockStatus::Success);
        assert_index_consistent(db);
        assert_eq!(
            in_txn(db, |txn| unlock(txn, ("t", "c", "o"), 105)),
            UnlockStatus::Success
        );
        assert_index_consistent(db);

        assert_eq!(EXPIRING.sweep(db, 119), Ok(0));
        assert_eq!(EXPIRING.sweep(db, 120), Ok(1));
        assert_index_consistent(db);
        assert_eq!(EXPIRING.sweep(db, 155), Ok(1));
        assert_eq!(EXPIRING.sweep(db, u64::MAX), Ok(0));
        assert_index_consistent(db);
    }
}
