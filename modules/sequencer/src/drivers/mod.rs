//! The sequencer driver trait, its error type, and the factory that opens a
//! driver from a component spec (`spec.type` → implementation).

use std::path::Path;

use mecha_abi::msg::ComponentSpec;
use mecha_module::DriverError;

pub mod memory;
pub mod postgresql;
pub mod redb;
pub mod redis;

/// The metadata field bounding how many sequences one tenant keeps in an
/// embedded store. Every sequence takes its key (up to 1 KiB) on disk and in
/// the module's memory for good, since a sequence is never deleted.
pub const MAX_SEQUENCES_FIELD: &str = "maxSequencesPerTenant";

/// Sequences one tenant may keep in one embedded store without
/// `maxSequencesPerTenant`.
pub const DEFAULT_MAX_SEQUENCES: u64 = 100_000;

/// The refusal of a new sequence `key` to a tenant that has `limit` of them
/// in component `component`.
pub(crate) fn too_many_sequences(component: &str, key: &str, limit: u64) -> SeqError {
    SeqError::Driver(DriverError::Quota {
        component: component.to_owned(),
        field: MAX_SEQUENCES_FIELD,
        limit,
        what: format!("a new sequence {key:?}"),
    })
}

/// The `maxSequencesPerTenant` of `metadata`, or the default.
pub(crate) fn max_sequences(
    metadata: &mecha_module::metadata::Metadata,
) -> Result<u64, mecha_module::metadata::MetadataError> {
    Ok(metadata
        .whole(MAX_SEQUENCES_FIELD, 1..=u64::MAX)?
        .unwrap_or(DEFAULT_MAX_SEQUENCES))
}

/// The SDK's boxed future, under which the driver trait's methods return.
pub use mecha_module::BoxFuture;

/// The largest id a sequence ever hands out.
///
/// It is one below `u64::MAX` so that the exclusive end of every allocation,
/// `first + count`, still fits in a `u64`; clients can then represent any
/// answer as a `Range<u64>` without overflow checks of their own.
pub const MAX_ID: u64 = u64::MAX - 1;

/// Why a driver operation failed: the sequencer's own outcome, an exhausted
/// sequence, or a failure every capability shares.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeqError {
    /// The sequence cannot hand out `count` more ids without passing
    /// [`MAX_ID`]. Nothing was allocated.
    #[error("sequence {key:?} is exhausted: {count} more ids would pass the largest id {MAX_ID}")]
    Exhausted {
        /// The sequence's key.
        key: String,
        /// How many ids were asked for.
        count: u32,
    },
    /// The metadata is unusable, the store cannot be reached, or it failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
}

mecha_module::wraps_driver_error!(SeqError);

/// A source of per-key sequences. Keys are always scoped by tenant: the same
/// key under two tenants names two unrelated sequences.
///
/// Semantics every driver must honour (the conformance tests check them):
/// - The first id of a new sequence is 1.
/// - An allocation of `count` ids returns `first` and owns exactly
///   `first .. first + count`: the ids of one allocation are consecutive.
/// - Every allocation of a key starts above every id the key handed out
///   before, also across restarts of durable drivers, so ids never repeat and
///   never go backwards. Ids may be skipped (gaps), for example after a
///   restart of a driver that reserves ids ahead.
/// - Concurrent allocations never share an id.
pub trait Sequencer: Send + Sync + 'static {
    /// Allocates `count` consecutive ids of `key` and returns the first.
    ///
    /// The module guarantees `key` is non-empty and `1 <= count <=
    /// SEQ_MAX_COUNT` before calling, so drivers need not check either.
    fn next_ids<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        count: u32,
    ) -> BoxFuture<'a, Result<u64, SeqError>>;
}

/// Opens the driver named by `spec.kind`. The networked drivers connect
/// lazily, so this needs a Tokio runtime but no reachable server.
pub fn open(spec: &ComponentSpec, data_dir: &Path) -> Result<Box<dyn Sequencer>, SeqError> {
    match spec.kind.as_str() {
        "sequencer.memory" => Ok(Box::new(memory::MemorySequencer::open(spec)?)),
        "sequencer.redb" => Ok(Box::new(redb::RedbSequencer::open(spec, data_dir)?)),
        "sequencer.redis" => Ok(Box::new(redis::RedisSequencer::open(spec)?)),
        "sequencer.postgresql" => Ok(Box::new(postgresql::PostgresSequencer::open(spec)?)),
        other => Err(SeqError::Driver(DriverError::Config {
            component: spec.name.clone(),
            reason: format!(
                "unknown sequencer type {other:?} (known: sequencer.memory, sequencer.redb, \
                 sequencer.redis, sequencer.postgresql)"
            ),
        })),
    }
}

/// The last id of an allocation of `count` ids starting at `first`, or
/// `Exhausted` when it would pass [`MAX_ID`].
///
/// Every driver computes its allocations through this one function, so they
/// agree on where a sequence ends. `count` is at least 1 (the module checks).
pub(crate) fn last_id(key: &str, first: u64, count: u32) -> Result<u64, SeqError> {
    first
        .checked_add(u64::from(count.saturating_sub(1)))
        .filter(|&last| last <= MAX_ID)
        .ok_or_else(|| SeqError::Exhausted {
            key: key.to_owned(),
            count,
        })
}
