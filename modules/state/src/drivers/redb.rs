//! The `state.redb` driver: an embedded, crash-safe key/value file, the durable
//! default that needs no external service.

use std::fmt::Display;
use std::path::Path;

use mecha_abi::msg::{ComponentSpec, StateEntry, TxOp};
use mecha_module::embedded::{blocking, redb_file, ExpiryIndex, ExpiryKey, SharedDb};
use mecha_module::metadata::Metadata;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition};

use super::{check_etag, expiry, is_live, next_revision, now_ms};
use super::{BoxFuture, OpOutcome, StateStore, StoreError};

/// The key of the `kv` table: (tenant, key).
type KvKey = (&'static str, &'static str);

/// The value of the `kv` table: (value, revision, expires_at_ms), where an
/// expiry of 0 means "never", because redb tuples cannot hold an `Option`.
type KvValue = (&'static [u8], u64, u64);

/// The entries.
const KV: TableDefinition<KvKey, KvValue> = TableDefinition::new("kv");

/// The expiry index: one row per `kv` entry that has an expiry, ordered by
/// expiry time, so a sweep reads only the rows that have expired. Every write
/// transaction that changes an entry's expiry updates its row too.
const EXPIRY: TableDefinition<ExpiryKey, ()> = TableDefinition::new("expiry");

/// The `kv` entries with an expiry, swept through [`EXPIRY`].
const EXPIRING: ExpiryIndex<KvValue> = ExpiryIndex {
    index: EXPIRY,
    table: KV,
    expiry: |(_, _, expires)| expires,
};

/// Store-wide counters and markers; see [`REVISION`] and [`EXPIRY_INDEXED`].
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The last revision handed out, per tenant (scope). A tenant's row is
/// persisted in the same transaction as the writes that used it, so its
/// ETags never repeat, even after a crash and restart. A counter per tenant
/// keeps an ETag from telling one tenant how many writes the others make
/// (issue #16).
const REVISIONS: TableDefinition<&str, u64> = TableDefinition::new("revisions");

/// The `meta` row of the store-wide revision counter that files written
/// before [`REVISIONS`] used. It is no longer advanced; a tenant's counter
/// starts from it, so that no tenant is handed an ETag that an entry of the
/// old file may still carry.
const REVISION: &str = "revision";

/// The `meta` row saying the `expiry` index covers every `kv` entry. A file
/// written before the index existed lacks it, and gets its index built once
/// when opened.
const EXPIRY_INDEXED: &str = "expiry_indexed";

/// The metadata fields this driver understands.
const KNOWN_FIELDS: [&str; 1] = ["path"];

/// A state store kept in one redb file.
#[derive(Debug)]
pub struct RedbStore {
    /// The store file, opened at start or, during a hot restart, once the
    /// previous instance of this module released it.
    db: SharedDb<StoreError>,
}

impl RedbStore {
    /// Opens (creating if needed) the store file named by `spec`.
    ///
    /// The file is the metadata field `path` (absolute, or relative to
    /// `data_dir`), or `<data_dir>/<component name>.redb` without it. This
    /// blocks on file I/O; it runs once, when the module starts.
    pub fn open(spec: &ComponentSpec, data_dir: &Path) -> Result<Self, StoreError> {
        let metadata = Metadata::parse(spec, &KNOWN_FIELDS)?;
        let path = redb_file(&spec.name, metadata.str("path")?, data_dir)
            .map_err(|reason| metadata.error(reason))?;
        Ok(Self {
            db: SharedDb::open(path, prepare)?,
        })
    }
}

/// Creates the tables and, for a file from before the expiry index, builds
/// the index.
///
/// The tables are created up front because a read transaction cannot create
/// a table, and `get` and `sweep` should not have to treat "no table yet" as
/// a special case.
fn prepare(db: &Database) -> Result<(), StoreError> {
    let txn = db
        .begin_write()
        .map_err(redb_error("begin the table-creating transaction"))?;
    {
        let kv = txn
            .open_table(KV)
            .map_err(redb_error("create the kv table"))?;
        let mut index = txn
            .open_table(EXPIRY)
            .map_err(redb_error("create the expiry table"))?;
        txn.open_table(REVISIONS)
            .map_err(redb_error("create the revisions table"))?;
        let mut meta = txn
            .open_table(META)
            .map_err(redb_error("create the meta table"))?;
        let indexed = meta
            .get(EXPIRY_INDEXED)
            .map_err(redb_error("read the expiry index marker"))?
            .is_some();
        if !indexed {
            for row in kv.iter().map_err(redb_error("scan the kv table"))? {
                let (key, value) = row.map_err(redb_error("read a key while indexing"))?;
                let (tenant, key) = key.value();
                let (_, _, expires) = value.value();
                if expires != 0 {
                    index
                        .insert((expires, tenant, key), ())
                        .map_err(redb_error("write an expiry index row"))?;
                }
            }
            meta.insert(EXPIRY_INDEXED, 1)
                .map_err(redb_error("write the expiry index marker"))?;
        }
    }
    txn.commit()
        .map_err(redb_error("commit the table-creating transaction"))
}

/// Maps a redb error to `Internal`, saying which operation failed.
fn redb_error<E: Display>(operation: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Internal(format!("redb: cannot {operation}: {e}"))
}

/// Encodes an optional expiry for the `kv` table.
fn encode_expiry(expires_at_ms: Option<u64>) -> u64 {
    // 0 is reserved for "never"; an expiry of 0 could only come from a clock
    // before the epoch plus a zero TTL, and 1 is just as much in the past.
    expires_at_ms.map_or(0, |at| at.max(1))
}

/// Decodes an expiry read from the `kv` table.
fn decode_expiry(stored: u64) -> Option<u64> {
    (stored != 0).then_some(stored)
}

/// Reads `keys` as of `now`.
fn read(
    db: &Database,
    tenant: &str,
    keys: &[String],
    now: u64,
) -> Result<Vec<Option<StateEntry>>, StoreError> {
    let txn = db
        .begin_read()
        .map_err(redb_error("begin a read transaction"))?;
    let kv = txn
        .open_table(KV)
        .map_err(redb_error("open the kv table for reading"))?;
    keys.iter()
        .map(|key| {
            let found = kv
                .get((tenant, key.as_str()))
                .map_err(redb_error("read a key"))?;
            Ok(found.and_then(|guard| {
                let (value, revision, expires) = guard.value();
                is_live(decode_expiry(expires), now).then(|| StateEntry {
                    value: value.to_vec(),
                    etag: revision.to_string(),
                })
            }))
        })
        .collect()
}

/// The stored revision and encoded expiry of `key`, live or not, as seen by
/// the write transaction `kv` belongs to (so including its earlier writes).
fn stored(
    kv: &Table<'_, KvKey, KvValue>,
    tenant: &str,
    key: &str,
) -> Result<Option<(u64, u64)>, StoreError> {
    let found = kv
        .get((tenant, key))
        .map_err(redb_error("read a key in a write transaction"))?;
    Ok(found.map(|guard| {
        let (_, revision, expires) = guard.value();
        (revision, expires)
    }))
}

/// The revision of a stored entry if it is live at `now`.
fn live_revision(stored: Option<(u64, u64)>, now: u64) -> Option<u64> {
    stored
        .filter(|&(_, expires)| is_live(decode_expiry(expires), now))
        .map(|(revision, _)| revision)
}

/// Removes the expiry index row of an entry whose stored expiry is `expires`.
fn unindex(
    index: &mut Table<'_, ExpiryKey, ()>,
    tenant: &str,
    key: &str,
    expires: u64,
) -> Result<(), StoreError> {
    if expires != 0 {
        index
            .remove((expires, tenant, key))
            .map_err(redb_error("remove an expiry index row"))?;
    }
    Ok(())
}

/// Applies `ops` as of `now` in one durable write transaction.
fn write(
    db: &Database,
    tenant: &str,
    ops: &[TxOp],
    now: u64,
) -> Result<Vec<OpOutcome>, StoreError> {
    let txn = db
        .begin_write()
        .map_err(redb_error("begin a write transaction"))?;
    // Any early return below drops `txn` uncommitted, which makes redb abort
    // it: that is what gives a failed transaction its all-or-nothing effect.
    let outcomes = {
        let mut kv = txn
            .open_table(KV)
            .map_err(redb_error("open the kv table for writing"))?;
        let mut index = txn
            .open_table(EXPIRY)
            .map_err(redb_error("open the expiry table for writing"))?;
        let meta = txn
            .open_table(META)
            .map_err(redb_error("open the meta table"))?;
        let mut revisions = txn
            .open_table(REVISIONS)
            .map_err(redb_error("open the revisions table"))?;
        let floor = meta
            .get(REVISION)
            .map_err(redb_error("read the old revision counter"))?
            .map_or(0, |guard| guard.value());
        let start = revisions
            .get(tenant)
            .map_err(redb_error("read the tenant's revision counter"))?
            .map_or(floor, |guard| guard.value().max(floor));
        let mut revision = start;
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                TxOp::Set(item) => {
                    let key = item.key.as_str();
                    let old = stored(&kv, tenant, key)?;
                    check_etag(key, item.etag.as_deref(), live_revision(old, now))?;
                    revision = next_revision(revision)?;
                    // The old row goes before the new one is added, so an
                    // unchanged expiry keeps its row.
                    if let Some((_, old_expires)) = old {
                        unindex(&mut index, tenant, key, old_expires)?;
                    }
                    let expires = encode_expiry(expiry(item.ttl_ms, now));
                    if expires != 0 {
                        index
                            .insert((expires, tenant, key), ())
                            .map_err(redb_error("write an expiry index row"))?;
                    }
                    kv.insert((tenant, key), (item.value.as_slice(), revision, expires))
                        .map_err(redb_error("write a key"))?;
                    outcomes.push(OpOutcome::Set {
                        etag: revision.to_string(),
                    });
                }
                TxOp::Delete(item) => {
                    let key = item.key.as_str();
                    let old = stored(&kv, tenant, key)?;
                    let live = live_revision(old, now);
                    check_etag(key, item.etag.as_deref(), live)?;
                    // An expired leftover is removed as well: it is invisible
                    // anyway and would otherwise wait for the next sweep.
                    if let Some((_, old_expires)) = old {
                        unindex(&mut index, tenant, key, old_expires)?;
                        kv.remove((tenant, key))
                            .map_err(redb_error("delete a key"))?;
                    }
                    outcomes.push(OpOutcome::Deleted {
                        existed: live.is_some(),
                    });
                }
            }
        }
        if revision != start {
            revisions
                .insert(tenant, revision)
                .map_err(redb_error("write the tenant's revision counter"))?;
        }
        outcomes
    };
    // The default durability is `Immediate`: once `commit` returns the data is
    // on disk, so an acknowledged write survives a crash.
    txn.commit()
        .map_err(redb_error("commit a write transaction"))?;
    Ok(outcomes)
}

// The blocking tasks must own what they use (`'static`): the keys and ops are
// moved in as they came, only the short tenant name is copied. The clock is
// read inside the task so that time spent waiting for the pool does not make
// a just-expired key look live.
impl StateStore for RedbStore {
    fn get<'a>(
        &'a self,
        tenant: &'a str,
        keys: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<Option<StateEntry>>, StoreError>> {
        let tenant = tenant.to_owned();
        Box::pin(async move {
            let db = self.db.db().await?;
            blocking(move || read(&db, &tenant, &keys, now_ms())).await
        })
    }

    fn transact<'a>(
        &'a self,
        tenant: &'a str,
        ops: Vec<TxOp>,
    ) -> BoxFuture<'a, Result<Vec<OpOutcome>, StoreError>> {
        let tenant = tenant.to_owned();
        Box::pin(async move {
            let db = self.db.db().await?;
            // An empty transaction changes nothing, so it need not pay for a
            // write transaction and a disk sync.
            if ops.is_empty() {
                return Ok(Vec::new());
            }
            blocking(move || write(&db, &tenant, &ops, now_ms())).await
        })
    }

    fn sweep(&self) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            // Until the file is ours there is nothing to sweep; do not wait.
            let Some(db) = self.db.opened().cloned() else {
                return Ok(0);
            };
            blocking(move || Ok(EXPIRING.sweep(&db, now_ms())?)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_held_by_a_previous_instance_is_opened_once_released() {
        let dir = tempfile::TempDir::new().expect("create a temporary directory");
        let spec = ComponentSpec {
            name: "handoff".to_owned(),
            kind: "state.redb".to_owned(),
            metadata: Vec::new(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let old = RedbStore::open(&spec, dir.path()).expect("first open");
        rt.block_on(old.transact(
            "t",
            vec![TxOp::Set(mecha_abi::msg::SetItem {
                key: "k".into(),
                value: b"v".to_vec(),
                etag: None,
                ttl_ms: None,
            })],
        ))
        .expect("write");
        // As in a hot restart: the new instance starts while the old holds the file.
        let new = RedbStore::open(&spec, dir.path()).expect("deferred open");
        assert!(new.db.opened().is_none(), "the file is still held");
        let got = rt.block_on(async {
            let release = async {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                drop(old);
            };
            let (_, got) = tokio::join!(release, new.get("t", vec!["k".into()]));
            got
        });
        assert_eq!(
            got.expect("read after release")[0]
                .as_ref()
                .map(|e| e.value.clone()),
            Some(b"v".to_vec())
        );
    }

    /// ETags count each tenant's own writes, survive a reopen, and in a file
    /// from before per-tenant counters start above every ETag it holds.
    #[test]
    fn etags_are_per_tenant_and_never_reuse_an_old_files_etags() {
        let dir = tempfile::TempDir::new().expect("create a temporary directory");
        let path = dir.path().join("old.redb");
        {
            let db = Database::create(&path).expect("create the file");
            let txn = db.begin_write().expect("begin");
            {
                let mut kv = txn.open_table(KV).expect("kv table");
                kv.insert(("a", "old"), (b"v".as_slice(), 7, 0))
                    .expect("insert");
                let mut meta = txn.open_table(META).expect("meta table");
                meta.insert(REVISION, 7).expect("insert");
            }
            txn.commit().expect("commit");
        }
        let spec = ComponentSpec {
            name: "old".to_owned(),
            kind: "state.redb".to_owned(),
            metadata: Vec::new(),
        };
        let etag_of = |store: &RedbStore, tenant: &str| {
            let db = store.db.opened().expect("opened eagerly");
            match write(db, tenant, &[set("k", None)], 0) {
                Ok(outcomes) => match outcomes.as_slice() {
                    [OpOutcome::Set { etag }] => etag.clone(),
                    other => panic!("unexpected outcomes {other:?}"),
                },
                Err(e) => panic!("write failed: {e}"),
            }
        };
        let store = RedbStore::open(&spec, dir.path()).expect("open the old file");
        assert_eq!(etag_of(&store, "a"), "8", "above the old file's counter");
        for _ in 0..100 {
            etag_of(&store, "b");
        }
        assert_eq!(etag_of(&store, "a"), "9", "b's writes do not show");
        drop(store);
        let store = RedbStore::open(&spec, dir.path()).expect("reopen");
        assert_eq!(etag_of(&store, "a"), "10", "the counter is durable");
        assert_eq!(etag_of(&store, "b"), "108");
    }

    /// A file written before the expiry index existed gets its index built
    /// when opened, so its TTL keys are still swept.
    #[test]
    fn opening_an_unindexed_file_builds_the_index() {
        let dir = tempfile::TempDir::new().expect("create a temporary directory");
        let path = dir.path().join("old.redb");
        {
            let db = Database::create(&path).expect("create the file");
            let txn = db.begin_write().expect("begin");
            {
                let mut kv = txn.open_table(KV).expect("kv table");
                kv.insert(("t", "expired"), (b"v".as_slice(), 1, 10))
                    .expect("insert");
                kv.insert(("t", "later"), (b"v".as_slice(), 2, 1_000))
                    .expect("insert");
                kv.insert(("t", "forever"), (b"v".as_slice(), 3, 0))
                    .expect("insert");
                let mut meta = txn.open_table(META).expect("meta table");
                meta.insert(REVISION, 3).expect("insert");
            }
            txn.commit().expect("commit");
        }
        let spec = ComponentSpec {
            name: "old".to_owned(),
            kind: "state.redb".to_owned(),
            metadata: Vec::new(),
        };
        let store = RedbStore::open(&spec, dir.path()).expect("open the old file");
        assert_eq!(
            EXPIRING.sweep(store.db.opened().expect("opened eagerly"), 100),
            Ok(1)
        );
        assert_eq!(
            EXPIRING.sweep(store.db.opened().expect("opened eagerly"), 100),
            Ok(0)
        );
        assert_eq!(
            EXPIRING.sweep(store.db.opened().expect("opened eagerly"), 1_000),
            Ok(1)
        );
        let keys = ["expired", "later", "forever"].map(str::to_owned);
        let found = read(
            store.db.opened().expect("opened eagerly"),
            "t",
            &keys,
            1_000,
        )
        .expect("read");
        assert!(found[0].is_none() && found[1].is_none() && found[2].is_some());

        // Reopening does not index twice (the marker is set).
        drop(store);
        let store = RedbStore::open(&spec, dir.path()).expect("reopen");
        assert_eq!(
            EXPIRING.sweep(store.db.opened().expect("opened eagerly"), u64::MAX),
            Ok(0)
        );
    }

    fn set(key: &str, ttl_ms: Option<u64>) -> TxOp {
        TxOp::Set(mecha_abi::msg::SetItem {
            key: key.to_owned(),
            value: b"v".to_vec(),
            etag: None,
            ttl_ms,
        })
    }

    fn delete(key: &str) -> TxOp {
        TxOp::Delete(mecha_abi::msg::DeleteItem {
            key: key.to_owned(),
            etag: None,
        })
    }

    /// The index holds exactly one row per `kv` entry that has an expiry.
    fn assert_index_consistent(db: &Database) {
        let txn = db.begin_read().expect("begin");
        let kv = txn.open_table(KV).expect("kv table");
        let index = txn.open_table(EXPIRY).expect("expiry table");
        let mut expected = Vec::new();
        for row in kv.iter().expect("iter") {
            let (key, value) = row.expect("row");
            let (tenant, key) = key.value();
            let (_, _, expires) = value.value();
            if expires != 0 {
                expected.push((expires, tenant.to_owned(), key.to_owned()));
            }
        }
        expected.sort();
        let mut actual = Vec::new();
        for row in index.iter().expect("iter") {
            let (key, _) = row.expect("row");
            let (expires, tenant, key) = key.value();
            actual.push((expires, tenant.to_owned(), key.to_owned()));
        }
        assert_eq!(actual, expected);
    }

    /// Overwrites (with the same, another or no expiry), deletes and sweeps
    /// keep the index in step with `kv`, with the clock held still so equal
    /// expiries really collide.
    #[test]
    fn writes_and_sweeps_keep_the_index_in_step() {
        let dir = tempfile::TempDir::new().expect("create a temporary directory");
        let spec = ComponentSpec {
            name: "s".to_owned(),
            kind: "state.redb".to_owned(),
            metadata: Vec::new(),
        };
        let store = RedbStore::open(&spec, dir.path()).expect("open");
        let db = store.db.opened().expect("opened eagerly");
        let ok = |ops: Vec<TxOp>, now: u64| {
            write(db, "t", &ops, now).expect("transaction");
            assert_index_consistent(db);
        };
        ok(vec![set("same", Some(10)), set("same", Some(10))], 100);
        ok(vec![set("other", Some(10)), set("other", Some(20))], 100);
        ok(vec![set("cleared", Some(10)), set("cleared", None)], 100);
        ok(vec![set("deleted", Some(10)), delete("deleted")], 100);
        ok(vec![set("later", Some(10))], 100);
        ok(vec![set("later", Some(10))], 105);
        ok(vec![set("forever", None)], 100);

        assert_eq!(EXPIRING.sweep(db, 109), Ok(0));
        assert_eq!(EXPIRING.sweep(db, 110), Ok(1));
        assert_index_consistent(db);
        assert_eq!(EXPIRING.sweep(db, 115), Ok(1));
        assert_eq!(EXPIRING.sweep(db, 120), Ok(1));
        assert_eq!(EXPIRING.sweep(db, u64::MAX), Ok(0));
        assert_index_consistent(db);
        let keys = ["cleared", "forever"].map(str::to_owned);
        let found = read(db, "t", &keys, u64::MAX).expect("read");
        assert!(found.iter().all(Option::is_some));
    }
}
