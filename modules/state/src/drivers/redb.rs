//! The `state.redb` driver: an embedded, crash-safe key/value file, the durable
//! default that needs no external service.

use std::collections::HashMap;
use std::fmt::Display;
use std::path::Path;
use std::sync::Arc;

use mecha_abi::msg::{ComponentSpec, StateEntry, TxOp};
use mecha_module::embedded::{
    self, blocking, redb_file, ExpiryIndex, ExpiryKey, SharedDb, SweepObserver,
};
use mecha_module::metadata::Metadata;
use mecha_module::DriverError;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};

use super::quota::{self, Quota, Usage};
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

/// What each tenant keeps, (keys, bytes), for its quota (see
/// [`super::quota`]). Every write transaction that adds, replaces or removes
/// an entry updates its tenant's row, and so does a sweep, so the totals are
/// exact across crashes; a tenant with nothing stored has no row.
const USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("usage");

/// The `meta` row saying [`USAGE`] covers every `kv` entry. A file written
/// before the quota existed lacks it, and gets its totals counted once when
/// opened.
const USAGE_COUNTED: &str = "usage_counted";

/// The `meta` row of the store-wide revision counter that files written
/// before [`REVISIONS`] used. It is no longer advanced; a tenant's counter
/// starts from it, so that no tenant is handed an ETag that an entry of the
/// old file may still carry.
const REVISION: &str = "revision";

/// The `meta` row saying the `expiry` index covers every `kv` entry. A file
/// written before the index existed lacks it, and gets its index built once
/// when opened.
const EXPIRY_INDEXED: &str = "expiry_indexed";

/// The metadata fields this driver understands besides the quota's.
const OWN_FIELDS: [&str; 1] = ["path"];

/// A state store kept in one redb file.
#[derive(Debug)]
pub struct RedbStore {
    /// The store file, opened at start or, during a hot restart, once the
    /// previous instance of this module released it.
    db: SharedDb<StoreError>,
    /// What each tenant may keep; shared with the blocking write tasks.
    quota: Arc<Quota>,
}

impl RedbStore {
    /// Opens (creating if needed) the store file named by `spec`.
    ///
    /// The file is the metadata field `path` (absolute, or relative to
    /// `data_dir`), or `<data_dir>/<component name>.redb` without it. This
    /// blocks on file I/O; it runs once, when the module starts.
    pub fn open(spec: &ComponentSpec, data_dir: &Path) -> Result<Self, StoreError> {
        let metadata = Metadata::parse(spec, &[&OWN_FIELDS[..], &quota::FIELDS].concat())?;
        let path = redb_file(&spec.name, metadata.str("path")?, data_dir)
            .map_err(|reason| metadata.error(reason))?;
        Ok(Self {
            db: SharedDb::open(path, prepare)?,
            quota: Arc::new(Quota::from_metadata(&metadata)?),
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
        let mut usage = txn
            .open_table(USAGE)
            .map_err(redb_error("create the usage table"))?;
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
        let counted = meta
            .get(USAGE_COUNTED)
            .map_err(redb_error("read the usage marker"))?
            .is_some();
        if !counted {
            count_usage(&kv, &mut usage)?;
            meta.insert(USAGE_COUNTED, 1)
                .map_err(redb_error("write the usage marker"))?;
        }
    }
    txn.commit()
        .map_err(redb_error("commit the table-creating transaction"))
}

/// Counts what each tenant keeps in `kv` into `usage`: once, for a file
/// from before quotas, which costs one scan of the table.
fn count_usage(
    kv: &Table<'_, KvKey, KvValue>,
    usage: &mut Table<'_, &str, (u64, u64)>,
) -> Result<(), StoreError> {
    let mut totals: HashMap<String, Usage> = HashMap::new();
    for row in kv.iter().map_err(redb_error("scan the kv table"))? {
        let (key, value) = row.map_err(redb_error("read a key while counting usage"))?;
        let (tenant, key) = key.value();
        let (value, _, _) = value.value();
        totals
            .entry(tenant.to_owned())
            .or_default()
            .add(key, value.len());
    }
    for (tenant, total) in totals {
        save_usage(usage, &tenant, total)?;
    }
    Ok(())
}

/// What `tenant` keeps, as `usage` says.
fn load_usage(usage: &Table<'_, &str, (u64, u64)>, tenant: &str) -> Result<Usage, StoreError> {
    let row = usage
        .get(tenant)
        .map_err(redb_error("read the tenant's usage"))?;
    Ok(row.map_or_else(Usage::default, |guard| {
        let (keys, bytes) = guard.value();
        Usage { keys, bytes }
    }))
}

/// Records what `tenant` keeps, removing its row when that is nothing.
fn save_usage(
    usage: &mut Table<'_, &str, (u64, u64)>,
    tenant: &str,
    total: Usage,
) -> Result<(), StoreError> {
    if total.is_empty() {
        usage
            .remove(tenant)
            .map_err(redb_error("remove the tenant's usage"))?;
    } else {
        usage
            .insert(tenant, (total.keys, total.bytes))
            .map_err(redb_error("write the tenant's usage"))?;
    }
    Ok(())
}

/// Maps a redb error to `Internal`, saying which operation failed.
fn redb_error<E: Display>(operation: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| {
        StoreError::Driver(DriverError::Internal(format!(
            "redb: cannot {operation}: {e}"
        )))
    }
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

/// What a write transaction needs to know of a stored entry.
#[derive(Clone, Copy)]
struct Stored {
    /// The revision of its last set.
    revision: u64,
    /// Its encoded expiry.
    expires: u64,
    /// The length of its value, for the tenant's usage.
    value_len: usize,
}

/// The stored entry of `key`, live or not, as seen by the write transaction
/// `kv` belongs to (so including its earlier writes).
fn stored(
    kv: &Table<'_, KvKey, KvValue>,
    tenant: &str,
    key: &str,
) -> Result<Option<Stored>, StoreError> {
    let found = kv
        .get((tenant, key))
        .map_err(redb_error("read a key in a write transaction"))?;
    Ok(found.map(|guard| {
        let (value, revision, expires) = guard.value();
        Stored {
            revision,
            expires,
            value_len: value.len(),
        }
    }))
}

/// The revision of a stored entry if it is live at `now`.
fn live_revision(stored: Option<Stored>, now: u64) -> Option<u64> {
    stored
        .filter(|old| is_live(decode_expiry(old.expires), now))
        .map(|old| old.revision)
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

/// Applies `ops` as of `now` in `txn`, unless they would take the tenant
/// past its `quota`. An error leaves `txn` to be dropped uncommitted, which
/// makes redb abort it: that is what gives a failed transaction its
/// all-or-nothing effect, also inside a batch of the group commit.
fn apply(
    txn: &WriteTransaction,
    quota: &Quota,
    tenant: &str,
    ops: &[TxOp],
    now: u64,
) -> Result<Vec<OpOutcome>, StoreError> {
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
        let mut usage = txn
            .open_table(USAGE)
            .map_err(redb_error("open the usage table"))?;
        let before = load_usage(&usage, tenant)?;
        let mut after = before;
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
                    if let Some(old) = old {
                        unindex(&mut index, tenant, key, old.expires)?;
                        after.remove(key, old.value_len);
                    }
                    after.add(key, item.value.len());
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
                    if let Some(old) = old {
                        unindex(&mut index, tenant, key, old.expires)?;
                        kv.remove((tenant, key))
                            .map_err(redb_error("delete a key"))?;
                        after.remove(key, old.value_len);
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
        // Checked once every op has been applied inside the transaction, so
        // a transaction that deletes as much as it adds passes; a refusal
        // drops the transaction uncommitted, as any other failure does.
        quota.check(before, after)?;
        if after != before {
            save_usage(&mut usage, tenant, after)?;
        }
        outcomes
    };
    Ok(outcomes)
}

/// What a transaction writes, roughly, for the bound on one batch of the
/// group commit.
fn written_bytes(ops: &[TxOp]) -> usize {
    ops.iter()
        .map(|op| match op {
            TxOp::Set(item) => item.key.len() + item.value.len(),
            TxOp::Delete(item) => item.key.len(),
        })
        .fold(0, usize::saturating_add)
}

/// What a sweep removed, per tenant, to be taken off the tenants' usage in
/// the sweep's own transaction.
#[derive(Default)]
struct Swept {
    /// Per tenant, the keys and bytes removed.
    removed: HashMap<String, Usage>,
}

impl SweepObserver<KvValue> for Swept {
    fn removed(&mut self, tenant: &str, key: &str, (value, _, _): (&[u8], u64, u64)) {
        self.removed
            .entry(tenant.to_owned())
            .or_default()
            .add(key, value.len());
    }

    fn commit(&mut self, txn: &WriteTransaction) -> Result<(), embedded::Error> {
        let failed = |e: StoreError| embedded::Error::Failed(e.to_string());
        let mut usage = txn
            .open_table(USAGE)
            .map_err(redb_error("open the usage table for a sweep"))
            .map_err(failed)?;
        for (tenant, removed) in self.removed.drain() {
            let mut total = load_usage(&usage, &tenant).map_err(failed)?;
            total.keys = total.keys.saturating_sub(removed.keys);
            total.bytes = total.bytes.saturating_sub(removed.bytes);
            save_usage(&mut usage, &tenant, total).map_err(failed)?;
        }
        Ok(())
    }
}

// The blocking tasks and the writer's jobs must own what they use
// (`'static`): the keys and ops are moved in as they came, only the short
// tenant name is copied. The clock is read inside the task or job so that
// time spent waiting for the pool or the writer does not make a just-expired
// key look live.
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
            // An empty transaction changes nothing, so it need not pay for a
            // write transaction and a disk sync. It still waits for the file,
            // as any other request does during a hot restart.
            if ops.is_empty() {
                self.db.db().await?;
                return Ok(Vec::new());
            }
            let quota = Arc::clone(&self.quota);
            // The writer answers once a durable commit holds these ops;
            // writes of other connections that arrive meanwhile share it.
            self.db
                .write(written_bytes(&ops), move |txn| {
                    apply(txn, &quota, &tenant, &ops, now_ms())
                })
                .await
        })
    }

    fn sweep(&self) -> BoxFuture<'_, Result<usize, StoreError>> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies `ops` as of `now` in a durable transaction of its own,
    /// outside the writer, as the tests of the transaction logic want.
    fn write(
        db: &Database,
        quota: &Quota,
        tenant: &str,
        ops: &[TxOp],
        now: u64,
    ) -> Result<Vec<OpOutcome>, StoreError> {
        let txn = db
            .begin_write()
            .map_err(redb_error("begin a write transaction"))?;
        let outcomes = apply(&txn, quota, tenant, ops, now)?;
        txn.commit()
            .map_err(redb_error("commit a write transaction"))?;
        Ok(outcomes)
    }

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

    /// A row of the `kv` table as a file from an older release holds it:
    /// (tenant, key, value, revision, encoded expiry).
    type OldRow = (&'static str, &'static str, &'static [u8], u64, u64);

    /// Writes a file named `old` the way an older release left it (only
    /// `rows` and, if given, the store-wide revision counter), then opens it
    /// as the driver does, which migrates it.
    fn open_old_file(
        rows: &[OldRow],
        revision: Option<u64>,
    ) -> (tempfile::TempDir, ComponentSpec, RedbStore) {
        let dir = tempfile::TempDir::new().expect("create a temporary directory");
        {
            let db = Database::create(dir.path().join("old.redb")).expect("create the file");
            let txn = db.begin_write().expect("begin");
            {
                let mut kv = txn.open_table(KV).expect("kv table");
                for &(tenant, key, value, rev, expires) in rows {
                    kv.insert((tenant, key), (value, rev, expires))
                        .expect("insert");
                }
                if let Some(revision) = revision {
                    let mut meta = txn.open_table(META).expect("meta table");
                    meta.insert(REVISION, revision).expect("insert");
                }
            }
            txn.commit().expect("commit");
        }
        let spec = ComponentSpec {
            name: "old".to_owned(),
            kind: "state.redb".to_owned(),
            metadata: Vec::new(),
        };
        let store = RedbStore::open(&spec, dir.path()).expect("open the old file");
        (dir, spec, store)
    }

    /// ETags count each tenant's own writes, survive a reopen, and in a file
    /// from before per-tenant counters start above every ETag it holds.
    #[test]
    fn etags_are_per_tenant_and_never_reuse_an_old_files_etags() {
        let (dir, spec, store) = open_old_file(&[("a", "old", b"v", 7, 0)], Some(7));
        let etag_of = |store: &RedbStore, tenant: &str| {
            let db = store.db.opened().expect("opened eagerly");
            match write(db, &Quota::defaults("t"), tenant, &[set("k", None)], 0) {
                Ok(outcomes) => match outcomes.as_slice() {
                    [OpOutcome::Set { etag }] => etag.clone(),
                    other => panic!("unexpected outcomes {other:?}"),
                },
                Err(e) => panic!("write failed: {e}"),
            }
        };
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

    /// A file written before quotas gets each tenant's totals counted when
    /// opened, so what it already holds counts against the quota.
    #[test]
    fn opening_a_file_from_before_quotas_counts_what_it_holds() {
        let (_dir, _spec, store) = open_old_file(
            &[
                ("a", "k1", b"12345", 1, 0),
                ("a", "k2", b"", 2, 0),
                ("b", "k", b"v", 3, 0),
            ],
            None,
        );
        let db = store.db.opened().expect("opened eagerly");
        let txn = db.begin_read().expect("begin a read");
        let usage = txn.open_table(USAGE).expect("usage table");
        let row = |tenant: &str| usage.get(tenant).expect("read").map(|g| g.value());
        assert_eq!(row("a"), Some((2, 2 + 5 + 2)));
        assert_eq!(row("b"), Some((1, 2)));
        assert_eq!(row("c"), None);
    }

    /// A file written before the expiry index existed gets its index built
    /// when opened, so its TTL keys are still swept.
    #[test]
    fn opening_an_unindexed_file_builds_the_index() {
        let (dir, spec, store) = open_old_file(
            &[
                ("t", "expired", b"v", 1, 10),
                ("t", "later", b"v", 2, 1_000),
                ("t", "forever", b"v", 3, 0),
            ],
            Some(3),
        );
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
            write(db, &Quota::defaults("t"), "t", &ops, now).expect("transaction");
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
