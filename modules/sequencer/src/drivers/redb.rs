//! The `sequencer.redb` driver: durable sequences in an embedded redb file,
//! handed out from segments reserved ahead so most ids cost no disk write.
//!
//! # Segments
//!
//! The file stores, per (tenant, key), a *reserved bound*: every id the key
//! has handed out, or may yet hand out from memory, is at most the bound.
//! Allocating from a key whose in-memory segment is used up persists a new
//! bound `segmentSize` (metadata, default 1000) higher in one durable write
//! transaction, and later allocations are served from memory until the
//! segment runs out. A process that starts — after a clean exit, a crash or a
//! `kill -9` alike — has no segment yet, so its first allocation of a key
//! starts at the persisted bound + 1, above everything handed out before.
//! The ids a dying process had reserved but not handed out are skipped: gaps
//! of up to `segmentSize - 1` ids per key and restart are expected, and the
//! price of writing to disk once per segment instead of once per id.
//! `segmentSize: 1` persists every allocation and leaves no gaps.

use std::collections::HashMap;
use std::fmt::Display;
use std::path::Path;
use std::sync::Arc;

use mecha_abi::msg::ComponentSpec;
use mecha_module::embedded::{add_count, count_once, redb_file, SharedDb};
use mecha_module::metadata::Metadata;
use mecha_module::DriverError;
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};

use super::{
    last_id, max_sequences, too_many_sequences, BoxFuture, SeqError, Sequencer, MAX_ID,
    MAX_SEQUENCES_FIELD,
};

/// The key of the `reserved` table: (tenant, key).
type SeqKey = (&'static str, &'static str);

/// The reserved bound of every sequence; see the module documentation. A
/// missing row means bound 0: nothing handed out yet.
const RESERVED: TableDefinition<SeqKey, u64> = TableDefinition::new("reserved");

/// How many sequences each tenant has in [`RESERVED`], for its quota
/// (`maxSequencesPerTenant`): a reservation that adds a key's row counts it
/// in the same transaction. Sequences are never deleted, so counts only grow.
const SEQUENCES: TableDefinition<&str, u64> = TableDefinition::new("sequences");

/// Markers of the file's layout; see [`COUNTED`].
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The `meta` row saying [`SEQUENCES`] counts every row of [`RESERVED`]. A
/// file written before quotas lacks it and is counted once when opened.
const COUNTED: &str = "sequences_counted";

/// The segment size without the `segmentSize` metadata field.
pub const DEFAULT_SEGMENT_SIZE: u64 = 1000;

/// The largest accepted `segmentSize`. A crash skips at most one segment per
/// key, so even this wastes a negligible part of the 2^64 id space; a larger
/// value is far more likely a typo than a need.
const MAX_SEGMENT_SIZE: u64 = 1_000_000_000;

/// The metadata fields this driver understands.
const KNOWN_FIELDS: [&str; 3] = ["path", "segmentSize", MAX_SEQUENCES_FIELD];

/// The ids of one key that this process reserved and has not handed out yet.
#[derive(Debug)]
struct Segment {
    /// The next id to hand out from memory.
    next: u64,
    /// The last id of the segment: the bound this process last persisted for
    /// the key, or 0 before its first reservation. The segment is empty when
    /// `next > end`.
    end: u64,
}

impl Segment {
    /// How many ids are left. `end` is at most `MAX_ID`, so `end + 1` fits.
    fn remaining(&self) -> u64 {
        (self.end + 1).saturating_sub(self.next)
    }
}

impl Default for Segment {
    /// An empty segment that, while the stored bound is still 0, continues
    /// seamlessly at id 1 (see [`reserve`]).
    fn default() -> Self {
        Self { next: 1, end: 0 }
    }
}

/// One key's segment behind an async mutex. The mutex is held across the
/// durable reservation (an `.await`), so concurrent allocations of a key wait
/// for it instead of racing to reserve twice; other keys are not held up.
type SegmentSlot = Arc<tokio::sync::Mutex<Segment>>;

/// A sequencer kept in one redb file.
pub struct RedbSequencer {
    /// How many ids one reservation covers at least.
    segment_size: u64,
    /// Who may keep how many sequences.
    quota: Arc<Quota>,
    /// The store file, opened at start or, during a hot restart, once the
    /// previous instance of this module released it (see `allocate` for why
    /// segments survive that handoff).
    db: SharedDb<SeqError>,
    /// The segments by tenant, then key. An entry is created on a key's first
    /// use and kept for the life of the process (a few dozen bytes per key),
    /// since dropping it would throw away the rest of the segment.
    segments: parking_lot::Mutex<HashMap<String, HashMap<String, SegmentSlot>>>,
}

impl std::fmt::Debug for RedbSequencer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbSequencer")
            .field("path", &self.db.path())
            .field("segment_size", &self.segment_size)
            .finish_non_exhaustive()
    }
}

impl RedbSequencer {
    /// Opens (creating if needed) the store file named by `spec`.
    ///
    /// The file is the metadata field `path` (absolute, or relative to
    /// `data_dir`), or `<data_dir>/<component name>.redb` without it. This
    /// blocks on file I/O; it runs once, when the module starts.
    pub fn open(spec: &ComponentSpec, data_dir: &Path) -> Result<Self, SeqError> {
        let metadata = Metadata::parse(spec, &KNOWN_FIELDS)?;
        let path = redb_file(&spec.name, metadata.str("path")?, data_dir)
            .map_err(|reason| metadata.error(reason))?;
        let segment_size = metadata
            .whole("segmentSize", 1..=MAX_SEGMENT_SIZE)?
            .unwrap_or(DEFAULT_SEGMENT_SIZE);
        Ok(Self {
            segment_size,
            quota: Arc::new(Quota {
                component: spec.name.clone(),
                max_sequences: max_sequences(&metadata)?,
            }),
            db: SharedDb::open(path, prepare)?,
            segments: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// Forgets the slot of `key` if its segment is still empty and nobody
    /// else holds it: after a refused first reservation, so that keys the
    /// quota refused take no memory.
    fn forget(&self, tenant: &str, key: &str, slot: SegmentSlot) {
        let mut segments = self.segments.lock();
        let Some(keys) = segments.get_mut(tenant) else {
            return;
        };
        // Two references: the map's and `slot`; a third is a concurrent
        // allocation of the same key, which keeps the slot.
        if Arc::strong_count(&slot) == 2 {
            keys.remove(key);
            if keys.is_empty() {
                segments.remove(tenant);
            }
        }
    }

    /// The segment slot of `key`, created empty on first use.
    fn slot(&self, tenant: &str, key: &str) -> SegmentSlot {
        let mut segments = self.segments.lock();
        if let Some(slot) = segments.get(tenant).and_then(|keys| keys.get(key)) {
            return Arc::clone(slot);
        }
        Arc::clone(
            segments
                .entry(tenant.to_owned())
                .or_default()
                .entry(key.to_owned())
                .or_default(),
        )
    }

    /// Allocates `count` ids of `key`: from the segment when it has enough
    /// left, otherwise after durably reserving a new bound.
    ///
    /// Why segments survive a hot restart, where the database is opened on
    /// first use once the previous instance released it: the daemon sends
    /// every new request to the new instance while the old one finishes the
    /// requests it already has, still handing out ids from its in-memory
    /// segments. The new instance cannot allocate anything before it opens
    /// the file, and it can open the file only once the old process has
    /// exited and released it; by then every bound the old instance reserved
    /// is on disk (reservations commit durably before their ids are handed
    /// out). The new instance starts with no segments, so its first
    /// allocation of each key starts above the old instance's persisted
    /// bound — above every id the old one handed out, whether from a fresh or
    /// a partly used segment.
    async fn allocate(&self, tenant: &str, key: &str, count: u32) -> Result<u64, SeqError> {
        let slot = self.slot(tenant, key);
        let mut segment = slot.lock().await;
        let wanted = u64::from(count);
        if segment.remaining() >= wanted {
            let first = segment.next;
            // `next + wanted <= end + 1 <= MAX_ID + 1`: no overflow.
            segment.next += wanted;
            return Ok(first);
        }
        let (owned_tenant, owned_key) = (tenant.to_owned(), key.to_owned());
        let (next, end, segment_size) = (segment.next, segment.end, self.segment_size);
        let quota = Arc::clone(&self.quota);
        // If this future is dropped while the reservation runs, the bound may
        // be persisted without the segment learning of it. That is safe: the
        // next reservation sees a stored bound other than `end` and starts
        // above it (see `reserve`), skipping the orphaned ids.
        // The writer answers once the new bound is durable; reservations of
        // other keys that arrive meanwhile share its disk sync.
        let bytes = owned_tenant.len() + owned_key.len();
        let reserved = self
            .db
            .write(bytes, move |txn| {
                let wanted = Wanted {
                    count,
                    segment_size,
                };
                reserve(
                    txn,
                    &quota,
                    (&owned_tenant, &owned_key),
                    (next, end),
                    wanted,
                )
            })
            .await;
        let reserved = match reserved {
            Err(e @ SeqError::Driver(DriverError::Quota { .. })) => {
                drop(segment);
                self.forget(tenant, key, slot);
                return Err(e);
            }
            other => other?,
        };
        segment.next = reserved.first + wanted;
        segment.end = reserved.bound;
        Ok(reserved.first)
    }
}

/// What one durable reservation decided.
#[derive(Debug, PartialEq, Eq)]
struct Reservation {
    /// The first id of the allocation that triggered it.
    first: u64,
    /// The new persisted bound; the segment now ends there.
    bound: u64,
}

/// Reserves ids for an allocation of `count` ids of `key` that the segment
/// `next ..= end` cannot serve, in one durable write transaction, and returns
/// where the allocation starts and the new bound.
///
/// The allocation continues the segment when the stored bound is still the
/// segment's end, so a request larger than what is left uses the rest of the
/// segment and reserves only what it lacks, and no ids are skipped. Any other
/// stored bound (a reservation whose caller gave up, or a freshly started
/// process whose segment is empty) means the segment is stale: the
/// allocation starts above the larger of the two bounds instead. The new
/// bound covers the allocation and, when the id space allows, reaches a full
/// `segment_size` beyond the old bound, leaving the rest for later requests.
/// The quota of one store: how many sequences a tenant may keep.
#[derive(Debug)]
struct Quota {
    /// The component's name, for the message.
    component: String,
    /// `maxSequencesPerTenant`.
    max_sequences: u64,
}

/// What a reservation is for: the allocation's size and the store's segment
/// size.
struct Wanted {
    /// Ids the allocation asks for.
    count: u32,
    /// Ids a reservation covers at least.
    segment_size: u64,
}

fn reserve(
    txn: &WriteTransaction,
    quota: &Quota,
    (tenant, key): (&str, &str),
    (next, end): (u64, u64),
    Wanted {
        count,
        segment_size,
    }: Wanted,
) -> Result<Reservation, SeqError> {
    // Any early return below leaves `txn` to be dropped uncommitted, which
    // makes redb abort it, so a failed or refused reservation changes nothing
    // on disk.
    let reservation = {
        let mut table = txn
            .open_table(RESERVED)
            .map_err(redb_error("open the reserved table"))?;
        let found = table
            .get((tenant, key))
            .map_err(redb_error("read a reserved bound"))?
            .map(|guard| guard.value());
        if found.is_none() {
            count_new_sequence(txn, quota, tenant, key)?;
        }
        let stored = found.unwrap_or(0);
        let first = if stored == end {
            next
        } else {
            // Both bounds are at most MAX_ID, so adding 1 cannot overflow.
            stored.max(end) + 1
        };
        let last = last_id(key, first, count)?;
        let bound = last.max(stored.saturating_add(segment_size).min(MAX_ID));
        table
            .insert((tenant, key), bound)
            .map_err(redb_error("write a reserved bound"))?;
        Reservation { first, bound }
    };
    // The writer answers only once a durable commit holds the bound, so no
    // id of the segment is handed out before a crash could no longer forget
    // the reservation.
    Ok(reservation)
}

/// Counts a sequence `tenant` is about to add in `txn`, unless it already
/// has its quota's worth.
fn count_new_sequence(
    txn: &redb::WriteTransaction,
    quota: &Quota,
    tenant: &str,
    key: &str,
) -> Result<(), SeqError> {
    let mut counts = txn
        .open_table(SEQUENCES)
        .map_err(redb_error("open the sequences table"))?;
    // A refusal returns an error, which aborts the count with the rest.
    let had = add_count(&mut counts, tenant, 1)?;
    if had >= quota.max_sequences {
        return Err(too_many_sequences(
            &quota.component,
            key,
            quota.max_sequences,
        ));
    }
    Ok(())
}

/// Creates the tables up front, so that the file's layout is complete from
/// the first open and a reservation never has to treat "no table yet"
/// specially, and counts each tenant's sequences in a file from before the
/// quota.
fn prepare(db: &Database) -> Result<(), SeqError> {
    let txn = db
        .begin_write()
        .map_err(redb_error("begin the table-creating transaction"))?;
    txn.open_table(RESERVED)
        .map_err(redb_error("create the reserved table"))?;
    count_once(&txn, RESERVED, SEQUENCES, (META, COUNTED))?;
    txn.commit()
        .map_err(redb_error("commit the table-creating transaction"))
}

/// Maps a redb error to `Internal`, saying which operation failed.
fn redb_error<E: Display>(operation: &'static str) -> impl FnOnce(E) -> SeqError {
    move |e| {
        SeqError::Driver(DriverError::Internal(format!(
            "redb: cannot {operation}: {e}"
        )))
    }
}

impl Sequencer for RedbSequencer {
    fn next_ids<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        count: u32,
    ) -> BoxFuture<'a, Result<u64, SeqError>> {
        Box::pin(self.allocate(tenant, key, count))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn spec(metadata: &[(&str, &str)]) -> ComponentSpec {
        ComponentSpec {
            name: "ids".to_owned(),
            kind: "sequencer.redb".to_owned(),
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    /// A file from before the quota gets each tenant's sequences counted
    /// when opened: a tenant that already has its quota's worth gets no new
    /// key, while its old keys go on.
    #[test]
    fn a_file_from_before_quotas_is_counted_when_opened() {
        let dir = tempfile::TempDir::new().expect("create a temporary directory");
        {
            let db = Database::create(dir.path().join("ids.redb")).expect("create the file");
            let txn = db.begin_write().expect("begin");
            {
                let mut table = txn.open_table(RESERVED).expect("reserved table");
                for key in ["a", "b"] {
                    table.insert(("t", key), 5).expect("insert");
                }
            }
            txn.commit().expect("commit");
        }
        let seq = RedbSequencer::open(&spec(&[("maxSequencesPerTenant", "2")]), dir.path())
            .expect("open the old file");
        let rt = runtime();
        assert!(matches!(
            rt.block_on(seq.next_ids("t", "c", 1)),
            Err(SeqError::Driver(DriverError::Quota { limit: 2, .. }))
        ));
        assert_eq!(rt.block_on(seq.next_ids("t", "a", 1)), Ok(6));
        assert!(
            seq.segments
                .lock()
                .get("t")
                .is_some_and(|keys| !keys.contains_key("c")),
            "a refused key keeps no segment"
        );
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Stores `bound` as the reserved bound of ("t", "k").
    /// `reserve` for key "k" of tenant "t" under the default quota.
    fn reserve_k(
        db: &Database,
        segment: (u64, u64),
        count: u32,
        segment_size: u64,
    ) -> Result<Reservation, SeqError> {
        let quota = Quota {
            component: "seq".to_owned(),
            max_sequences: crate::drivers::DEFAULT_MAX_SEQUENCES,
        };
        let wanted = Wanted {
            count,
            segment_size,
        };
        let txn = db.begin_write().expect("begin");
        let reserved = reserve(&txn, &quota, ("t", "k"), segment, wanted)?;
        txn.commit().expect("commit");
        Ok(reserved)
    }

    fn store_bound(db: &Database, bound: u64) {
        let txn = db.begin_write().expect("begin");
        txn.open_table(RESERVED)
            .expect("table")
            .insert(("t", "k"), bound)
            .expect("insert");
        txn.commit().expect("commit");
    }

    #[test]
    fn a_file_held_by_a_previous_instance_is_opened_once_released() {
        let dir = tempfile::TempDir::new().expect("create a temporary directory");
        let spec = spec(&[("segmentSize", "10")]);
        let rt = runtime();
        let old = RedbSequencer::open(&spec, dir.path()).expect("first open");
        let before = rt.block_on(old.next_ids("t", "k", 3)).expect("allocate");
        assert_eq!(before, 1);
        // As in a hot restart: the new instance starts while the old holds the
        // file, and the old still has ids 4..=10 of its segment in memory.
        let new = RedbSequencer::open(&spec, dir.path()).expect("deferred open");
        assert!(new.db.opened().is_none(), "the file is still held");
        let (from_old, from_new) = rt.block_on(async {
            let old_then_release = async {
                let id = old.next_ids("t", "k", 1).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(old);
                id
            };
            tokio::join!(old_then_release, new.next_ids("t", "k", 1))
        });
        assert_eq!(from_old, Ok(4), "the old instance served from its segment");
        assert_eq!(from_new, Ok(11), "the new instance starts above the bound");
    }

    /// A reservation whose caller gave up after the bound was persisted leaves
    /// the segment behind the stored bound; the next reservation notices and
    /// starts above the stored bound instead of reusing its ids.
    #[test]
    fn a_stored_bound_ahead_of_the_segment_is_respected() {
        let dir = tempfile::TempDir::new().expect("create a temporary directory");
        let seq = RedbSequencer::open(&spec(&[("segmentSize", "5")]), dir.path()).expect("open");
        let db = seq.db.opened().expect("opened eagerly");
        let rt = runtime();
        assert_eq!(rt.block_on(seq.next_ids("t", "k", 5)), Ok(1));
        // Another reservation landed on disk without reaching the segment.
        store_bound(db, 20);
        assert_eq!(rt.block_on(seq.next_ids("t", "k", 1)), Ok(21));
        assert_eq!(rt.block_on(seq.next_ids("t", "k", 1)), Ok(22));
    }

    /// Near the end of the id space the bound is clamped to MAX_ID, an
    /// allocation that would pass it is refused without writing anything, and
    /// what still fits is handed out.
    #[test]
    fn a_sequence_ends_at_max_id_without_wrapping() {
        let dir = tempfile::TempDir::new().expect("create a temporary directory");
        let seq = RedbSequencer::open(&spec(&[]), dir.path()).expect("open");
        let db = seq.db.opened().expect("opened eagerly");
        store_bound(db, MAX_ID - 3);
        let rt = runtime();
        assert_eq!(
            rt.block_on(seq.next_ids("t", "k", 4)),
            Err(SeqError::Exhausted {
                key: "k".to_owned(),
                count: 4
            })
        );
        assert_eq!(rt.block_on(seq.next_ids("t", "k", 2)), Ok(MAX_ID - 2));
        assert_eq!(rt.block_on(seq.next_ids("t", "k", 1)), Ok(MAX_ID));
        assert!(matches!(
            rt.block_on(seq.next_ids("t", "k", 1)),
            Err(SeqError::Exhausted { .. })
        ));
    }

    #[test]
    fn reserve_continues_the_segment_and_covers_large_requests() {
        let dir = tempfile::TempDir::new().expect("create a temporary directory");
        let seq = RedbSequencer::open(&spec(&[]), dir.path()).expect("open");
        let db = seq.db.opened().expect("opened eagerly");
        // A fresh key continues the empty default segment at 1.
        assert_eq!(
            reserve_k(db, (1, 0), 3, 10),
            Ok(Reservation {
                first: 1,
                bound: 10
            })
        );
        // Ids 9 and 10 are left; 5 more use them and reserve a new segment.
        assert_eq!(
            reserve_k(db, (9, 10), 5, 10),
            Ok(Reservation {
                first: 9,
                bound: 20
            })
        );
        // A request larger than a segment reserves exactly what it needs.
        assert_eq!(
            reserve_k(db, (21, 20), 100, 10),
            Ok(Reservation {
                first: 21,
                bound: 120
            })
        );
        // A new process (empty segment) starts above the stored bound.
        assert_eq!(
            reserve_k(db, (1, 0), 1, 10),
            Ok(Reservation {
                first: 121,
                bound: 130
            })
        );
    }
}
