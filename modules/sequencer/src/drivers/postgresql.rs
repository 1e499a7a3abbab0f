//! The `sequencer.postgresql` driver: one row per sequence holding the
//! highest id ever reserved, advanced by an upsert with RETURNING one
//! segment at a time. The table (`tableName`, default `mecha_sequences`) is
//! created on first use if missing:
//!
//! ```sql
//! CREATE TABLE mecha_sequences (tenant TEXT, key TEXT, bound BIGINT NOT NULL,
//!   PRIMARY KEY (tenant, key));
//! ```
//!
//! The upsert is one atomic statement, so concurrent reservations (from this
//! module or other daemons) never overlap, and a committed bound is durable,
//! so a restarted module reserves above everything handed out before.

use mecha_abi::msg::ComponentSpec;
use mecha_module::metadata::Metadata;
use mecha_module::remote::postgres::{self, table_name, Postgres};
use mecha_module::remote::RemoteError;
use tokio::sync::OnceCell;
use tokio_postgres::error::SqlState;

use super::{BoxFuture, SeqError, Sequencer};
use crate::segments::Segments;

/// The fields this driver understands besides the connection's.
const OWN_FIELDS: [&str; 2] = ["tableName", "segmentSize"];

/// The advisory lock taken while creating the table (see `state.postgresql`).
const SCHEMA_LOCK: i64 = 0x6d65_6368_615f_7371;

/// A sequencer in a PostgreSQL table.
#[derive(Debug)]
pub struct PostgresSequencer {
    pg: Postgres,
    create: String,
    reserve: String,
    /// Set once the table exists.
    ready: OnceCell<()>,
    segments: Segments,
}

impl PostgresSequencer {
    /// Validates `spec` and prepares the pool; nothing is sent to the server
    /// until the first request, so the module starts while it is down.
    /// `segmentSize`: see [`Segments::from_metadata`].
    pub fn open(spec: &ComponentSpec) -> Result<Self, SeqError> {
        let metadata = Metadata::parse(spec, &[&postgres::FIELDS[..], &OWN_FIELDS].concat())?;
        let table = table_name(&metadata, "tableName", "mecha_sequences")?;
        Ok(Self {
            pg: Postgres::from_metadata(&spec.kind, &metadata)?,
            create: format!(
                "SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); \
                 CREATE TABLE IF NOT EXISTS {table} (tenant TEXT NOT NULL, key TEXT NOT NULL, \
                 bound BIGINT NOT NULL, PRIMARY KEY (tenant, key));"
            ),
            reserve: format!(
                "INSERT INTO {table} AS s (tenant, key, bound) VALUES ($1, $2, $3) \
                 ON CONFLICT (tenant, key) DO UPDATE SET bound = s.bound + EXCLUDED.bound \
                 RETURNING bound"
            ),
            ready: OnceCell::new(),
            segments: Segments::from_metadata(&metadata)?,
        })
    }

    /// Reserves `n` ids of `key` and returns the new bound.
    async fn reserve(&self, tenant: &str, key: &str, n: u64) -> Result<u64, RemoteError> {
        let mut client = self.pg.client().await?;
        self.ready
            .get_or_try_init(|| async {
                let error = |e: tokio_postgres::Error| self.pg.error("create the table", &e);
                let tx = client.transaction().await.map_err(error)?;
                tx.batch_execute(&self.create).await.map_err(error)?;
                tx.commit().await.map_err(error)
            })
            .await?;
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        // Cached per connection: parsed once, not once per reservation.
        let reserve = client
            .prepare_cached(&self.reserve)
            .await
            .map_err(|e| self.pg.error("prepare a reservation", &e))?;
        let row = client
            .query_one(&reserve, &[&tenant, &key, &n])
            .await
            .map_err(|e| {
                if e.code() == Some(&SqlState::NUMERIC_VALUE_OUT_OF_RANGE) {
                    RemoteError::Failed(EXHAUSTED.to_owned())
                } else {
                    self.pg.error("reserve ids", &e)
                }
            })?;
        let bound: i64 = self.pg.column(&row, 0)?;
        u64::try_from(bound).map_err(|_| self.pg.origin().failed("a negative bound"))
    }
}

/// The marker of a bound that would pass PostgreSQL's largest BIGINT.
const EXHAUSTED: &str = "exhausted";

impl Sequencer for PostgresSequencer {
    fn next_ids<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        count: u32,
    ) -> BoxFuture<'a, Result<u64, SeqError>> {
        Box::pin(async move {
            self.segments
                .allocate(tenant, key, count, |n| async move {
                    let reserved = self
                        .pg
                        .deadline("reserve ids", self.reserve(tenant, key, n))
                        .await;
                    match reserved {
                        Ok(bound) => Ok(bound),
                        Err(RemoteError::Failed(m)) if m == EXHAUSTED => Err(SeqError::Exhausted {
                            key: key.to_owned(),
                            count,
                        }),
                        Err(other) => Err(other.into()),
                    }
                })
                .await
        })
    }
}
