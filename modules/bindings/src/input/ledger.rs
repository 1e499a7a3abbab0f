//! The input bindings' durable ledger (`ledger.redb` in the module's data
//! directory): which tenants are enrolled in each input binding, the event
//! being fanned out (`pending`), and the last event whose fan-out finished
//! (`cursor`, a cron binding's last fired tick).
//!
//! Fanning an event out is three steps, each durable before the next:
//! write `pending` with every enrolled tenant's next topic offset, append
//! the event to each tenant's topic, then replace `pending` with the new
//! `cursor`. A module killed in between finds `pending` on restart and
//! appends the event only to the tenants whose topic's next offset is still
//! the recorded one: only this module appends to those topics, so a moved
//! offset means the append was stored. No tenant gets the event twice or
//! never.

use std::path::PathBuf;

use mecha_module::embedded::{blocking, SharedDb};
use mecha_module::DriverError;
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::BindingError;

/// (binding, tenant) for every enrolled tenant.
const ENROLLED: TableDefinition<(&str, &str), ()> = TableDefinition::new("enrolled");

/// binding → the encoded [`Pending`] event of an unfinished fan-out.
const PENDING: TableDefinition<&str, &[u8]> = TableDefinition::new("pending");

/// binding → the cursor of the last event whose fan-out finished.
const CURSOR: TableDefinition<&str, u64> = TableDefinition::new("cursor");

/// An event whose fan-out began: what to append, and where each enrolled
/// tenant's topic stood before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The event's cursor (a cron tick's time in seconds since the epoch).
    pub cursor: u64,
    /// The event's body.
    pub data: Vec<u8>,
    /// The event's metadata.
    pub metadata: Vec<(String, String)>,
    /// Each enrolled tenant, with its topic's next offset before the event.
    pub tenants: Vec<(String, u64)>,
}

/// What the ledger holds for one input binding.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The enrolled tenants.
    pub tenants: Vec<String>,
    /// An unfinished fan-out.
    pub pending: Option<Pending>,
    /// The cursor of the last finished fan-out.
    pub cursor: Option<u64>,
}

/// The ledger file, shared by the module's input bindings.
#[derive(Debug)]
pub struct Ledger {
    db: SharedDb<BindingError>,
}

fn failed<E: std::fmt::Display>(doing: &'static str) -> impl FnOnce(E) -> BindingError {
    move |e| {
        BindingError::Driver(DriverError::Internal(format!(
            "ledger: cannot {doing}: {e}"
        )))
    }
}

fn prepare(db: &Database) -> Result<(), BindingError> {
    let txn = db.begin_write().map_err(failed("begin a transaction"))?;
    txn.open_table(ENROLLED)
        .map_err(failed("create the enrolled table"))?;
    txn.open_table(PENDING)
        .map_err(failed("create the pending table"))?;
    txn.open_table(CURSOR)
        .map_err(failed("create the cursor table"))?;
    txn.commit().map_err(failed("commit"))
}

impl Ledger {
    /// Opens (creating) the ledger at `path`; during a hot restart, on
    /// first use instead (see `SharedDb`).
    pub fn open(path: PathBuf) -> Result<Self, BindingError> {
        Ok(Self {
            db: SharedDb::open(path, prepare)?,
        })
    }

    /// Everything the ledger holds for `binding`.
    pub async fn load(&self, binding: &str) -> Result<Loaded, BindingError> {
        let db = self.db.db().await?;
        let binding = binding.to_owned();
        blocking(move || {
            let txn = db.begin_read().map_err(failed("begin a read"))?;
            let enrolled = txn.open_table(ENROLLED).map_err(failed("open enrolled"))?;
            let mut tenants = Vec::new();
            let range = enrolled
                .range((binding.as_str(), "")..)
                .map_err(failed("read enrolled"))?;
            for row in range {
                let (key, _) = row.map_err(failed("read enrolled"))?;
                let (b, tenant) = key.value();
                if b != binding {
                    break;
                }
                tenants.push(tenant.to_owned());
            }
            let pending = txn.open_table(PENDING).map_err(failed("open pending"))?;
            let pending = match pending
                .get(binding.as_str())
                .map_err(failed("read pending"))?
            {
                Some(bytes) => Some(
                    mecha_abi::decode::<Pending>(bytes.value())
                        .map_err(failed("decode a pending event"))?,
                ),
                None => None,
            };
            let cursor = txn.open_table(CURSOR).map_err(failed("open cursor"))?;
            let cursor = cursor
                .get(binding.as_str())
                .map_err(failed("read cursor"))?
                .map(|v| v.value());
            Ok(Loaded {
                tenants,
                pending,
                cursor,
            })
        })
        .await
    }

    /// Enrolls `tenant` in `binding`, durably.
    pub async fn enroll(&self, binding: &str, tenant: &str) -> Result<(), BindingError> {
        let (binding, tenant) = (binding.to_owned(), tenant.to_owned());
        let bytes = binding.len() + tenant.len();
        self.db
            .write(bytes, move |txn| {
                let mut table = txn.open_table(ENROLLED).map_err(failed("open enrolled"))?;
                table
                    .insert((binding.as_str(), tenant.as_str()), ())
                    .map_err(failed("enroll a tenant"))?;
                Ok(())
            })
            .await
    }

    /// Records that the fan-out of `pending` begins.
    pub async fn begin(&self, binding: &str, pending: &Pending) -> Result<(), BindingError> {
        let bytes = mecha_abi::encode(pending).map_err(failed("encode a pending event"))?;
        let binding = binding.to_owned();
        self.db
            .write(bytes.len(), move |txn| {
                let mut table = txn.open_table(PENDING).map_err(failed("open pending"))?;
                table
                    .insert(binding.as_str(), bytes.as_slice())
                    .map_err(failed("record a pending event"))?;
                Ok(())
            })
            .await
    }

    /// Records that the fan-out of the event with `cursor` finished.
    pub async fn finish(&self, binding: &str, cursor: u64) -> Result<(), BindingError> {
        let binding = binding.to_owned();
        self.db
            .write(binding.len() + 8, move |txn| {
                let mut pending = txn.open_table(PENDING).map_err(failed("open pending"))?;
                pending
                    .remove(binding.as_str())
                    .map_err(failed("clear a pending event"))?;
                let mut table = txn.open_table(CURSOR).map_err(failed("open cursor"))?;
                table
                    .insert(binding.as_str(), cursor)
                    .map_err(failed("record the cursor"))?;
                Ok(())
            })
            .await
    }
}
