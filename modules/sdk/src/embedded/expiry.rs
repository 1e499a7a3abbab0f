//! An expiry index: rows of a tenant-scoped table that stop existing at a
//! wall-clock time, swept in expiry order.

use std::ops::Bound;

use redb::{
    Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle, Value,
    WriteTransaction,
};

use super::{failed, Error};

/// The key of an expiry index table: (expires_at_ms, tenant, key).
pub type ExpiryKey = (u64, &'static str, &'static str);

/// The key of a tenant-scoped table: (tenant, key).
pub type ScopedKey = (&'static str, &'static str);

/// An expiry index over `table`: one `index` row `(expires_at_ms, tenant,
/// key)` per `table` row that expires, ordered by expiry time, so that a
/// sweep reads only the rows that have expired, never the whole table.
///
/// The driver's write transactions keep the index in step with the table
/// (a changed expiry replaces its index row; a removed row takes its index
/// row along); this type reads and sweeps it. A row is gone from its expiry
/// millisecond on: it has expired at `now` when `expires_at_ms <= now`.
pub struct ExpiryIndex<V: Value + 'static> {
    /// The index table.
    pub index: TableDefinition<'static, ExpiryKey, ()>,
    /// The table the index covers.
    pub table: TableDefinition<'static, ScopedKey, V>,
    /// The expiry a `table` row stores, as its index row names it.
    pub expiry: for<'a> fn(V::SelfType<'a>) -> u64,
}

impl<V: Value + 'static> std::fmt::Debug for ExpiryIndex<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpiryIndex")
            .field("index", &self.index.name())
            .field("table", &self.table.name())
            .finish_non_exhaustive()
    }
}

impl<V: Value + 'static> ExpiryIndex<V> {
    /// Whether anything has expired at `now`, judged from the index alone.
    ///
    /// This runs in a read transaction, which neither waits for nor blocks
    /// writers, so the periodic sweep of a table with nothing to do costs
    /// one index lookup and takes no write lock.
    pub fn anything_expired(&self, db: &Database, now: u64) -> Result<bool, Error> {
        let txn = db
            .begin_read()
            .map_err(failed("begin a sweep-probing read transaction"))?;
        let index = txn
            .open_table(self.index)
            .map_err(failed("open the expiry table for reading"))?;
        let first = index.first().map_err(failed("read the earliest expiry"))?;
        Ok(first.is_some_and(|(key, _)| key.value().0 <= now))
    }

    /// Removes the rows expired at `now` and counts them.
    ///
    /// Only the expired front of the index is read, so a sweep costs about
    /// the number of expired rows, not the size of the table.
    pub fn sweep(&self, db: &Database, now: u64) -> Result<usize, Error> {
        self.sweep_observed(db, now, &mut ())
    }

    /// Removes the rows expired at `now` and counts them, telling `observer`
    /// about each removed row and letting it write in the sweep's own
    /// transaction before the commit, so totals it keeps over the table
    /// stay exact even if the process dies right after.
    pub fn sweep_observed(
        &self,
        db: &Database,
        now: u64,
        observer: &mut impl SweepObserver<V>,
    ) -> Result<usize, Error> {
        if !self.anything_expired(db, now)? {
            return Ok(0);
        }
        let txn = db
            .begin_write()
            .map_err(failed("begin a sweep transaction"))?;
        let removed = {
            let mut table = txn
                .open_table(self.table)
                .map_err(failed("open the swept table"))?;
            let mut index = txn
                .open_table(self.index)
                .map_err(failed("open the expiry table for sweeping"))?;
            let mut removed = 0;
            let expired = index
                .extract_from_if(expired_range(now), |_, ()| true)
                .map_err(failed("scan the expiry index"))?;
            for row in expired {
                let (row, _) = row.map_err(failed("remove an expiry index row"))?;
                let (expires_at_ms, tenant, key) = row.value();
                // Every write keeps the index in step with the table, so the
                // row names an entry with exactly this expiry; checking keeps
                // a stale row from removing a live entry all the same.
                let current = table
                    .get((tenant, key))
                    .map_err(failed("read a swept row"))?
                    .map(|guard| (self.expiry)(guard.value()));
                if current == Some(expires_at_ms) {
                    let gone = table
                        .remove((tenant, key))
                        .map_err(failed("remove an expired row"))?;
                    if let Some(gone) = gone {
                        observer.removed(tenant, key, gone.value());
                    }
                    removed += 1;
                }
            }
            removed
        };
        // A sweep that removed nothing (a write got there first) is aborted
        // rather than committed, which spares it a disk sync.
        if removed == 0 {
            txn.abort()
                .map_err(failed("abort an empty sweep transaction"))?;
        } else {
            observer.commit(&txn)?;
            txn.commit().map_err(failed("commit a sweep transaction"))?;
        }
        Ok(removed)
    }
}

/// What a driver that keeps totals over a swept table (a tenant's stored
/// keys and bytes, say) learns from a sweep.
pub trait SweepObserver<V: Value + 'static> {
    /// A row of `tenant` with `key` and `value` was removed.
    fn removed(&mut self, tenant: &str, key: &str, value: V::SelfType<'_>);

    /// The sweep removed at least one row and is about to commit `txn`; the
    /// observer writes its totals there, so they commit (or not) with the
    /// removals.
    fn commit(&mut self, txn: &WriteTransaction) -> Result<(), Error>;
}

/// The observer of a plain sweep: nothing to keep.
impl<V: Value + 'static> SweepObserver<V> for () {
    fn removed(&mut self, _tenant: &str, _key: &str, _value: V::SelfType<'_>) {}

    fn commit(&mut self, _txn: &WriteTransaction) -> Result<(), Error> {
        Ok(())
    }
}

/// The index keys expired at `now`: those before `(now + 1, "", "")`.
fn expired_range(now: u64) -> (Bound<ExpiryKey>, Bound<ExpiryKey>) {
    let end = match now.checked_add(1) {
        Some(end) => Bound::Excluded((end, "", "")),
        None => Bound::Unbounded,
    };
    (Bound::Unbounded, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROWS: TableDefinition<ScopedKey, u64> = TableDefinition::new("rows");
    const INDEX: TableDefinition<ExpiryKey, ()> = TableDefinition::new("expiry");
    const EXPIRING: ExpiryIndex<u64> = ExpiryIndex {
        index: INDEX,
        table: ROWS,
        expiry: |at| at,
    };

    /// Writes rows (tenant, key, expiry) and their index rows, plus one
    /// stale index row naming an expiry its row no longer has.
    fn fill(db: &Database, rows: &[(&str, &str, u64)]) {
        let txn = db.begin_write().expect("begin");
        {
            let mut table = txn.open_table(ROWS).expect("rows");
            let mut index = txn.open_table(INDEX).expect("index");
            for &(tenant, key, at) in rows {
                table.insert((tenant, key), at).expect("insert");
                index.insert((at, tenant, key), ()).expect("insert");
            }
            index.insert((5, "t", "moved"), ()).expect("insert");
            table.insert(("t", "moved"), 500).expect("insert");
            index.insert((500, "t", "moved"), ()).expect("insert");
        }
        txn.commit().expect("commit");
    }

    fn keys(db: &Database) -> Vec<(String, String)> {
        let txn = db.begin_read().expect("begin");
        let table = txn.open_table(ROWS).expect("rows");
        table
            .iter()
            .expect("iter")
            .map(|row| {
                let (key, _) = row.expect("row");
                let (tenant, key) = key.value();
                (tenant.to_owned(), key.to_owned())
            })
            .collect()
    }

    #[test]
    fn a_sweep_removes_what_expired_and_nothing_else() {
        let dir = tempfile::TempDir::new().expect("create a temporary directory");
        let db = Database::create(dir.path().join("x.redb")).expect("create");
        fill(&db, &[("t", "a", 10), ("u", "a", 10), ("t", "b", 20)]);
        assert_eq!(EXPIRING.anything_expired(&db, 4), Ok(false));
        assert_eq!(EXPIRING.anything_expired(&db, 5), Ok(true));
        // The stale row at 5 removes nothing: "moved" now expires at 500.
        assert_eq!(EXPIRING.sweep(&db, 9), Ok(0));
        assert_eq!(EXPIRING.sweep(&db, 10), Ok(2), "both tenants' rows");
        assert_eq!(
            keys(&db),
            [("t".into(), "b".into()), ("t".into(), "moved".into())]
        );
        assert_eq!(EXPIRING.sweep(&db, u64::MAX), Ok(2));
        assert!(keys(&db).is_empty());
        assert_eq!(EXPIRING.anything_expired(&db, u64::MAX), Ok(false));
    }
}
