//! The `state.postgresql` driver: state in one PostgreSQL table, with ETags
//! from a per-tenant counter, expiry times checked on every read and swept
//! periodically, single writes as one statement each, and transactions as
//! native SQL transactions.
//!
//! The table (`tableName`, default `state`) and its sequence and index are
//! created on first use if missing, so the module starts while the server is
//! down and a fresh database needs no migration step:
//!
//! ```sql
//! CREATE TABLE state (tenant TEXT, key TEXT, value BYTEA NOT NULL,
//!   version BIGINT NOT NULL, expires_at TIMESTAMPTZ, PRIMARY KEY (tenant, key));
//! CREATE SEQUENCE state_revision;
//! CREATE TABLE state_revisions (tenant TEXT PRIMARY KEY, revision BIGINT NOT NULL);
//! ```
//!
//! Every set takes the next value of its tenant's counter (a row of
//! `state_revisions`, updated in the same transaction) as the key's
//! `version` (its ETag), so ETags only grow and are never reused, and they
//! tell a tenant nothing about how many writes the others make (issue #16).
//! The sequence is what stores used before per-tenant counters; it is no
//! longer advanced, and a tenant's counter starts at its last value, so no
//! ETag of those days is handed out again. A transaction with a set locks
//! its tenant's counter row first, before any key row, so two transactions
//! of one tenant queue on it instead of deadlocking on each other's keys.
//! Expiry times use the database's clock, which every node shares, rather
//! than each node's own.
//!
//! A get of one key, a set and a delete (the requests applications make
//! most) are one statement, so one round trip: a set takes its revision in
//! a data-modifying CTE that locks the counter row before the upsert or the
//! ETag-checked update locks the key's row, the same order as transactions,
//! and a single statement is atomic without BEGIN and COMMIT. Bulk writes
//! and transactions run as one SQL transaction of prepared statements.

use std::time::{Duration, Instant};

use mecha_abi::msg::{ComponentSpec, StateEntry, TxOp};
use mecha_module::metadata::Metadata;
use mecha_module::remote::postgres::{self, table_name, Client, Postgres};
use mecha_module::remote::{duration, RemoteError};
use mecha_module::DriverError;
use tokio::sync::OnceCell;

use super::{check_etag, BoxFuture, OpOutcome, StateStore, StoreError};

/// The fields this driver understands besides the connection's
/// (`cleanupInterval` and `cleanupIntervalInSeconds` are Dapr's newer and
/// older spelling of one setting).
const OWN_FIELDS: [&str; 3] = ["tableName", "cleanupInterval", "cleanupIntervalInSeconds"];

/// Dapr's default: expired rows are deleted hourly (reads skip them anyway).
const DEFAULT_CLEANUP: Duration = Duration::from_secs(3600);

/// The longest TTL stored, about 100 years; see `state.redis` for why.
const MAX_TTL_MS: i64 = 100 * 365 * 24 * 3600 * 1000;

/// The advisory lock taken while creating tables, so that modules on several
/// nodes starting at once do not race on `CREATE ... IF NOT EXISTS` (which
/// is not safe against concurrent creation of the same name).
const SCHEMA_LOCK: i64 = 0x6d65_6368_615f_7374;

/// A state store in a PostgreSQL table.
#[derive(Debug)]
pub struct PostgresStore {
    pg: Postgres,
    /// The statements, with the table name spliced in once.
    sql: Statements,
    /// Set once the table exists; until then every request tries to create
    /// it, so a server that was down at start is set up when it returns.
    ready: OnceCell<()>,
    /// How often expired rows are deleted; `None` = never.
    cleanup: Option<Duration>,
    /// When the last sweep ran (or the store opened).
    last_sweep: parking_lot::Mutex<Instant>,
}

/// The SQL this driver runs, built once from the table name.
#[derive(Debug)]
struct Statements {
    create: String,
    get: String,
    get_one: String,
    live_version: String,
    lock_revision: String,
    save_revision: String,
    set: String,
    delete: String,
    set_one: String,
    set_if: String,
    delete_one: String,
    delete_if: String,
    sweep: String,
}

impl Statements {
    fn new(table: &str) -> Self {
        // An index name cannot be schema-qualified; it lives in the table's schema.
        let bare = table.rsplit('.').next().unwrap_or(table);
        let live = "(expires_at IS NULL OR expires_at > now())";
        // Where a tenant's counter starts: the old store-wide sequence.
        let floor = format!(
            "(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {table}_revision)"
        );
        let ttl = "now() + $4::bigint * interval '1 millisecond'";
        Self {
            create: format!(
                "SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); \
                 CREATE TABLE IF NOT EXISTS {table} (tenant TEXT NOT NULL, key TEXT NOT NULL, \
                 value BYTEA NOT NULL, version BIGINT NOT NULL, expires_at TIMESTAMPTZ, \
                 PRIMARY KEY (tenant, key)); \
                 CREATE SEQUENCE IF NOT EXISTS {table}_revision; \
                 CREATE TABLE IF NOT EXISTS {table}_revisions (tenant TEXT PRIMARY KEY, \
                 revision BIGINT NOT NULL); \
                 CREATE INDEX IF NOT EXISTS {bare}_expires ON {table} (expires_at) \
                 WHERE expires_at IS NOT NULL;"
            ),
            get: format!(
                "SELECT key, value, version FROM {table} \
                 WHERE tenant = $1 AND key = ANY($2) AND {live}"
            ),
            // A single key gets a statement of its own. PostgreSQL keeps
            // planning `key = ANY($2)` anew on every execution (its generic
            // plan assumes ten keys, so it never looks cheaper than a custom
            // one), which made a one-key read cost several times the read.
            get_one: format!(
                "SELECT value, version FROM {table} WHERE tenant = $1 AND key = $2 AND {live}"
            ),
            live_version: format!(
                "SELECT version FROM {table} WHERE tenant = $1 AND key = $2 AND {live} FOR UPDATE"
            ),
            // The no-op update locks the tenant's row until commit and
            // returns its value; a new tenant starts at the old sequence.
            lock_revision: format!(
                "INSERT INTO {table}_revisions AS r (tenant, revision) \
                 VALUES ($1, {floor}) \
                 ON CONFLICT (tenant) DO UPDATE SET revision = r.revision RETURNING revision"
            ),
            save_revision: format!("UPDATE {table}_revisions SET revision = $2 WHERE tenant = $1"),
            set: format!(
                "INSERT INTO {table} (tenant, key, value, version, expires_at) \
                 VALUES ($1, $2, $3, $5, \
                 now() + $4::bigint * interval '1 millisecond') \
                 ON CONFLICT (tenant, key) DO UPDATE SET value = EXCLUDED.value, \
                 version = EXCLUDED.version, expires_at = EXCLUDED.expires_at RETURNING version"
            ),
            delete: format!("DELETE FROM {table} WHERE tenant = $1 AND key = $2"),
            // One statement for a set without ETag: the CTE takes the
            // tenant's next revision (locking its counter row first, as the
            // transactions do), the upsert writes the key with it.
            set_one: format!(
                "WITH rev AS (INSERT INTO {table}_revisions AS r (tenant, revision) \
                 VALUES ($1, {floor} + 1) \
                 ON CONFLICT (tenant) DO UPDATE SET revision = r.revision + 1 \
                 RETURNING revision) \
                 INSERT INTO {table} (tenant, key, value, version, expires_at) \
                 SELECT $1, $2, $3, revision, {ttl} FROM rev \
                 ON CONFLICT (tenant, key) DO UPDATE SET value = EXCLUDED.value, \
                 version = EXCLUDED.version, expires_at = EXCLUDED.expires_at RETURNING version"
            ),
            // One statement for a set with an ETag: a revision is taken only
            // if the key is live with that version, and the update checks it
            // again under the row's lock (a concurrent writer that got there
            // first makes it match nothing: a mismatch, and at most a
            // skipped revision).
            set_if: format!(
                "WITH rev AS (INSERT INTO {table}_revisions AS r (tenant, revision) \
                 SELECT $1, {floor} + 1 WHERE EXISTS (SELECT 1 FROM {table} \
                 WHERE tenant = $1 AND key = $2 AND version = $5 AND {live}) \
                 ON CONFLICT (tenant) DO UPDATE SET revision = r.revision + 1 \
                 RETURNING revision) \
                 UPDATE {table} SET value = $3, version = rev.revision, expires_at = {ttl} \
                 FROM rev WHERE tenant = $1 AND key = $2 AND version = $5 AND {live} \
                 RETURNING version"
            ),
            // Expired leftovers go too (they are invisible anyway); the
            // answer says whether the row was live.
            delete_one: format!(
                "DELETE FROM {table} WHERE tenant = $1 AND key = $2 RETURNING {live}"
            ),
            delete_if: format!(
                "DELETE FROM {table} WHERE tenant = $1 AND key = $2 AND version = $3 \
                 AND {live} RETURNING true"
            ),
            sweep: format!("DELETE FROM {table} WHERE expires_at <= now()"),
        }
    }
}

impl PostgresStore {
    /// Validates `spec` and prepares the pool; nothing is sent to the server
    /// until the first request, so the module starts while it is down.
    pub fn open(spec: &ComponentSpec) -> Result<Self, StoreError> {
        let metadata = Metadata::parse(spec, &[&postgres::FIELDS[..], &OWN_FIELDS].concat())?;
        let table = table_name(&metadata, "tableName", "state")?;
        let cleanup = match (
            duration(&metadata, "cleanupInterval")?,
            duration(&metadata, "cleanupIntervalInSeconds")?,
        ) {
            (Some(_), Some(_)) => {
                return Err(metadata
                    .error(
                        "metadata fields \"cleanupInterval\" and \"cleanupIntervalInSeconds\" \
                         are one setting; give only one",
                    )
                    .into())
            }
            (a, b) => a.or(b).unwrap_or(DEFAULT_CLEANUP),
        };
        Ok(Self {
            pg: Postgres::from_metadata(&spec.kind, &metadata)?,
            sql: Statements::new(&table),
            ready: OnceCell::new(),
            // Dapr's convention: an interval of 0 turns the sweeper off.
            cleanup: (!cleanup.is_zero()).then_some(cleanup),
            last_sweep: parking_lot::Mutex::new(Instant::now()),
        })
    }

    /// A pooled connection, with the table created if this is the first use.
    async fn client(&self) -> Result<Client, RemoteError> {
        let mut client = self.pg.client().await?;
        self.ready
            .get_or_try_init(|| async {
                let error = |e: tokio_postgres::Error| self.pg.error("create the state table", &e);
                // A transaction, not BEGIN/COMMIT in the batch: dropping it on
                // failure rolls back, so the connection returns to the pool
                // clean instead of stuck in an aborted transaction.
                let tx = client.transaction().await.map_err(error)?;
                tx.batch_execute(&self.sql.create).await.map_err(error)?;
                tx.commit().await.map_err(error)
            })
            .await?;
        Ok(client)
    }

    async fn get_keys(
        &self,
        tenant: &str,
        keys: Vec<String>,
    ) -> Result<Vec<Option<StateEntry>>, RemoteError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        if let [key] = keys.as_slice() {
            let get = client
                .prepare_cached(&self.sql.get_one)
                .await
                .map_err(|e| self.pg.error("prepare a read", &e))?;
            let row = client
                .query_opt(&get, &[&tenant, key])
                .await
                .map_err(|e| self.pg.error("read a key", &e))?;
            return match row {
                Some(row) => {
                    let value: Vec<u8> = self.pg.column(&row, 0)?;
                    let version: i64 = self.pg.column(&row, 1)?;
                    Ok(vec![Some(StateEntry {
                        value,
                        etag: version.to_string(),
                    })])
                }
                None => Ok(vec![None]),
            };
        }
        // Cached per connection, so a statement is parsed once per
        // connection rather than once per request.
        let get = client
            .prepare_cached(&self.sql.get)
            .await
            .map_err(|e| self.pg.error("prepare a read", &e))?;
        let rows = client
            .query(&get, &[&tenant, &keys])
            .await
            .map_err(|e| self.pg.error("read keys", &e))?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let key: String = self.pg.column(row, 0)?;
            let value: Vec<u8> = self.pg.column(row, 1)?;
            let version: i64 = self.pg.column(row, 2)?;
            found.insert(key, (value, version));
        }
        // Answers follow the request, so a key asked twice is answered twice
        // (the module asks each key once; the trait allows repeats).
        Ok(keys
            .iter()
            .map(|key| {
                found.get(key).map(|(value, version)| StateEntry {
                    value: value.clone(),
                    etag: version.to_string(),
                })
            })
            .collect())
    }

    async fn apply(&self, tenant: &str, mut ops: Vec<TxOp>) -> Result<Vec<OpOutcome>, StoreError> {
        if ops.len() == 1 {
            if let Some(op) = ops.pop() {
                return Ok(vec![self.apply_one(tenant, op).await?]);
            }
        }
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let mut client = self.client().await.map_err(StoreError::from)?;
        let error =
            |doing: &str, e: tokio_postgres::Error| StoreError::from(self.pg.error(doing, &e));
        let tx = client
            .transaction()
            .await
            .map_err(|e| error("begin a transaction", e))?;
        let (live_version, set, delete, lock_revision, save_revision) = (
            tx.prepare_cached(&self.sql.live_version).await,
            tx.prepare_cached(&self.sql.set).await,
            tx.prepare_cached(&self.sql.delete).await,
            tx.prepare_cached(&self.sql.lock_revision).await,
            tx.prepare_cached(&self.sql.save_revision).await,
        );
        let prepare = |r: Result<_, _>| r.map_err(|e| error("prepare a write", e));
        let (live_version, set, delete) = (prepare(live_version)?, prepare(set)?, prepare(delete)?);
        let (lock_revision, save_revision) = (prepare(lock_revision)?, prepare(save_revision)?);
        // The tenant's counter is locked before any key row (see the module
        // documentation), and only by transactions that need it.
        let start = if ops.iter().any(|op| matches!(op, TxOp::Set(_))) {
            let row = tx
                .query_one(&lock_revision, &[&tenant])
                .await
                .map_err(|e| error("lock the tenant's revision counter", e))?;
            let revision: i64 = self.pg.column(&row, 0).map_err(StoreError::from)?;
            Some(revision)
        } else {
            None
        };
        let mut revision = start.unwrap_or(0);
        let mut outcomes = Vec::with_capacity(ops.len());
        // Every early return drops `tx` uncommitted, which rolls it back: a
        // failed check undoes the earlier ops of the transaction.
        for op in ops {
            let (key, etag) = match &op {
                TxOp::Set(item) => (item.key.as_str(), item.etag.as_deref()),
                TxOp::Delete(item) => (item.key.as_str(), item.etag.as_deref()),
            };
            // FOR UPDATE locks a live row until commit, so the check below
            // still holds when this transaction writes.
            let live: Option<i64> = match tx
                .query_opt(&live_version, &[&tenant, &key])
                .await
                .map_err(|e| error("read a key's version", e))?
            {
                Some(row) => Some(self.pg.column(&row, 0).map_err(StoreError::from)?),
                None => None,
            };
            let live = live.and_then(|v| u64::try_from(v).ok());
            check_etag(key, etag, live)?;
            match op {
                TxOp::Set(item) => {
                    let ttl = item
                        .ttl_ms
                        .map(|t| i64::try_from(t).unwrap_or(i64::MAX).min(MAX_TTL_MS));
                    revision = revision.checked_add(1).ok_or_else(|| {
                        StoreError::Driver(DriverError::Internal(
                            "the revision counter is exhausted".to_owned(),
                        ))
                    })?;
                    let row = tx
                        .query_one(&set, &[&tenant, &item.key, &item.value, &ttl, &revision])
                        .await
                        .map_err(|e| error("write a key", e))?;
                    let version: i64 = self.pg.column(&row, 0).map_err(StoreError::from)?;
                    outcomes.push(OpOutcome::Set {
                        etag: version.to_string(),
                    });
                }
                TxOp::Delete(item) => {
                    // Expired leftovers go too: invisible anyway, and this
                    // saves the sweeper the work.
                    tx.execute(&delete, &[&tenant, &item.key])
                        .await
                        .map_err(|e| error("delete a key", e))?;
                    outcomes.push(OpOutcome::Deleted {
                        existed: live.is_some(),
                    });
                }
            }
        }
        if start.is_some_and(|start| start != revision) {
            tx.execute(&save_revision, &[&tenant, &revision])
                .await
                .map_err(|e| error("write the tenant's revision counter", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| error("commit a transaction", e))?;
        Ok(outcomes)
    }

    /// Applies one set or delete as one statement, with no explicit
    /// transaction around it: a single statement is atomic by itself, so
    /// the ETag check, the revision and the write cost one round trip
    /// instead of the five of BEGIN, lock, check, write and COMMIT.
    async fn apply_one(&self, tenant: &str, op: TxOp) -> Result<OpOutcome, StoreError> {
        let (key, etag) = match &op {
            TxOp::Set(item) => (item.key.as_str(), item.etag.as_deref()),
            TxOp::Delete(item) => (item.key.as_str(), item.etag.as_deref()),
        };
        let mismatch = || StoreError::EtagMismatch {
            key: key.to_owned(),
        };
        // An ETag that is not a version as this driver writes them matches
        // no row, so it needs no round trip; see `version_of`.
        let expected = match etag {
            Some(etag) => Some(version_of(etag).ok_or_else(mismatch)?),
            None => None,
        };
        let client = self.client().await.map_err(StoreError::from)?;
        let error =
            |doing: &str, e: tokio_postgres::Error| StoreError::from(self.pg.error(doing, &e));
        let text = match (&op, expected) {
            (TxOp::Set(_), None) => &self.sql.set_one,
            (TxOp::Set(_), Some(_)) => &self.sql.set_if,
            (TxOp::Delete(_), None) => &self.sql.delete_one,
            (TxOp::Delete(_), Some(_)) => &self.sql.delete_if,
        };
        let statement = client
            .prepare_cached(text)
            .await
            .map_err(|e| error("prepare a write", e))?;
        match (&op, expected) {
            (TxOp::Set(item), expected) => {
                let ttl = item
                    .ttl_ms
                    .map(|t| i64::try_from(t).unwrap_or(i64::MAX).min(MAX_TTL_MS));
                let row = match expected {
                    None => {
                        client
                            .query_opt(&statement, &[&tenant, &item.key, &item.value, &ttl])
                            .await
                    }
                    Some(v) => {
                        client
                            .query_opt(&statement, &[&tenant, &item.key, &item.value, &ttl, &v])
                            .await
                    }
                }
                .map_err(|e| error("write a key", e))?;
                // Without an ETag the upsert always writes a row; with one,
                // no row means the key was not live with that version.
                let row = row.ok_or_else(mismatch)?;
                let version: i64 = self.pg.column(&row, 0).map_err(StoreError::from)?;
                Ok(OpOutcome::Set {
                    etag: version.to_string(),
                })
            }
            (TxOp::Delete(item), None) => {
                let row = client
                    .query_opt(&statement, &[&tenant, &item.key])
                    .await
                    .map_err(|e| error("delete a key", e))?;
                let existed = match row {
                    Some(row) => self.pg.column(&row, 0).map_err(StoreError::from)?,
                    None => false,
                };
                Ok(OpOutcome::Deleted { existed })
            }
            (TxOp::Delete(item), Some(v)) => {
                let row = client
                    .query_opt(&statement, &[&tenant, &item.key, &v])
                    .await
                    .map_err(|e| error("delete a key", e))?;
                row.ok_or_else(mismatch)?;
                Ok(OpOutcome::Deleted { existed: true })
            }
        }
    }

    async fn sweep_due(&self) -> Result<usize, RemoteError> {
        let Some(every) = self.cleanup else {
            return Ok(0);
        };
        {
            let mut last = self.last_sweep.lock();
            if last.elapsed() < every {
                return Ok(0);
            }
            // Counted from the attempt, so an unreachable server is retried
            // at the same pace rather than on every tick.
            *last = Instant::now();
        }
        let client = self.client().await?;
        let removed = client
            .execute(&self.sql.sweep, &[])
            .await
            .map_err(|e| self.pg.error("delete expired keys", &e))?;
        Ok(usize::try_from(removed).unwrap_or(usize::MAX))
    }
}

/// The version an ETag names, if it is one this driver could have handed
/// out: the decimal text of a `BIGINT`, written as Rust writes it. ETags are
/// compared as text (see `check_etag`), so "007" or "+7" match nothing,
/// not version 7.
fn version_of(etag: &str) -> Option<i64> {
    etag.parse::<i64>().ok().filter(|v| v.to_string() == etag)
}

impl StateStore for PostgresStore {
    fn get<'a>(
        &'a self,
        tenant: &'a str,
        keys: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<Option<StateEntry>>, StoreError>> {
        Box::pin(async move {
            self.pg
                .deadline("read keys", self.get_keys(tenant, keys))
                .await
                .map_err(StoreError::from)
        })
    }

    fn transact<'a>(
        &'a self,
        tenant: &'a str,
        ops: Vec<TxOp>,
    ) -> BoxFuture<'a, Result<Vec<OpOutcome>, StoreError>> {
        Box::pin(async move {
            // The deadline's error is an unavailable server; the work's own
            // errors (an ETag mismatch) pass through unchanged.
            match tokio::time::timeout(self.pg.timeout(), self.apply(tenant, ops)).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::from(self.pg.origin().unavailable(format!(
                    "cannot apply a transaction: no answer within {:?}",
                    self.pg.timeout()
                )))),
            }
        })
    }

    fn sweep(&self) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            self.pg
                .deadline("delete expired keys", self.sweep_due())
                .await
                .map_err(StoreError::from)
        })
    }
}
