//! The `pubsub.redb` driver: topic logs and consumer-group progress in an
//! embedded, crash-safe file, so acknowledged publishes and acknowledged
//! deliveries survive module and daemon restarts. Each tenant's stored
//! bytes and topics are counted in the file, in the same transaction as the
//! writes that change them, so its quotas hold across restarts.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Display;
use std::path::PathBuf;
use std::sync::Arc;

use mecha_module::embedded::{add_count, blocking, count_once, Counts, Finish, SharedDb};
use mecha_module::DriverError;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use futures_util::future::BoxFuture;

use crate::broker::log::{GroupChange, GroupRecord, Landed, PubsubLog, TenantUsage, TopicRecord};
use crate::error::PubsubError;
use crate::message::Message;

/// The key of the `messages` table: (tenant, topic, offset).
type MessageKey = (&'static str, &'static str, u64);

/// The messages of every topic, by offset. The value is the message's
/// stored form ([`Message::encode`]).
const MESSAGES: TableDefinition<MessageKey, &[u8]> = TableDefinition::new("messages");

/// Per (tenant, topic): the offset the next message takes. It is written in
/// the same transaction as every append and never decreases, so offsets are
/// never reused, even once every message of a topic has been deleted (a
/// reused offset could be mistaken for one a group already acknowledged).
/// Creating a group writes the row too (at 1, if the topic has none), so a
/// topic the file holds anything of has a row here: the rows are the
/// tenant's topics, which [`TOPIC_COUNTS`] counts.
const TOPICS: TableDefinition<(&str, &str), u64> = TableDefinition::new("topics");

/// Per tenant: the stored bytes of its messages, the sum of the lengths of
/// their values in [`MESSAGES`] (`maxBytesPerTenant`). Every transaction
/// that adds or deletes messages updates it.
const USAGE: Counts = TableDefinition::new("usage");

/// Per tenant: its rows in [`TOPICS`] (`maxTopicsPerTenant`). Rows there
/// are never deleted, so it only grows.
const TOPIC_COUNTS: Counts = TableDefinition::new("topic_counts");

/// One-time work done on the file, by marker.
const META: Counts = TableDefinition::new("meta");

/// The [`META`] row saying [`USAGE`] covers every message and every topic
/// with groups has its [`TOPICS`] row. A file written before the quotas
/// lacks it, and gets both once, when first opened.
const BYTES_COUNTED: &str = "bytes_counted";

/// The [`META`] row saying [`TOPIC_COUNTS`] covers every row of [`TOPICS`].
const TOPICS_COUNTED: &str = "topics_counted";

/// The key of the `groups` table: (tenant, topic, group).
type GroupKey = (&'static str, &'static str, &'static str);

/// Per consumer group: its committed position (every offset below it is
/// acknowledged by the group).
const GROUPS: TableDefinition<GroupKey, u64> = TableDefinition::new("groups");

/// The key of the `acks` and `failures` tables: (tenant, topic, group, offset).
type OffsetKey = (&'static str, &'static str, &'static str, u64);

/// Offsets a group acknowledged out of order, at or above its committed
/// position. Rows below it are deleted whenever the position moves.
const ACKS: TableDefinition<OffsetKey, ()> = TableDefinition::new("acks");

/// Failed deliveries so far of a group's unacknowledged offsets, so that
/// dead-lettering counts them across restarts.
const FAILURES: TableDefinition<OffsetKey, u32> = TableDefinition::new("failures");

/// The metadata fields this driver understands beyond the broker's.
pub const KNOWN_FIELDS: [&str; 1] = ["path"];

/// The page cache redb may use. Its default (1 GiB) would let a busy log
/// grow the module far beyond what a node daemon's module should take; the
/// log is read mostly at its recent end, which a small cache holds.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// A pubsub log kept in one redb file.
#[derive(Debug)]
pub struct RedbLog {
    /// The store file, opened at start or, during a hot restart, once the
    /// previous instance of this module released it.
    db: SharedDb<PubsubError>,
}

impl RedbLog {
    /// Opens (creating if needed) the store file at `path` (see
    /// `mecha_module::embedded::redb_file`). This blocks on file I/O; it
    /// runs once, when the module starts.
    pub fn open(path: PathBuf) -> Result<Self, PubsubError> {
        let db = SharedDb::open_with(
            path,
            |builder| {
                builder.set_cache_size(CACHE_BYTES);
            },
            prepare,
        )?;
        Ok(Self { db })
    }
}

/// Creates the tables up front, because a read transaction cannot create a
/// table and reads should not have to treat "no table yet" as a special
/// case; and counts what each tenant keeps in a file from before the quotas.
fn prepare(db: &Database) -> Result<(), PubsubError> {
    let txn = db
        .begin_write()
        .map_err(redb_error("begin the table-creating transaction"))?;
    txn.open_table(MESSAGES)
        .map_err(redb_error("create the messages table"))?;
    txn.open_table(TOPICS)
        .map_err(redb_error("create the topics table"))?;
    txn.open_table(GROUPS)
        .map_err(redb_error("create the groups table"))?;
    txn.open_table(ACKS)
        .map_err(redb_error("create the acks table"))?;
    txn.open_table(FAILURES)
        .map_err(redb_error("create the failures table"))?;
    txn.open_table(USAGE)
        .map_err(redb_error("create the usage table"))?;
    txn.open_table(TOPIC_COUNTS)
        .map_err(redb_error("create the topic counts table"))?;
    count_bytes_once(&txn)?;
    // After `count_bytes_once`, which gives topics that have only groups
    // their row, so they are counted too.
    count_once(&txn, TOPICS, TOPIC_COUNTS, (META, TOPICS_COUNTED))?;
    txn.commit()
        .map_err(redb_error("commit the table-creating transaction"))
}

/// For a file from before the quotas (no [`BYTES_COUNTED`] marker): sums
/// each tenant's message bytes into [`USAGE`], and writes the [`TOPICS`] row
/// of every topic that has groups but none (it was subscribed to and never
/// published to). One scan of each table, once.
fn count_bytes_once(txn: &WriteTransaction) -> Result<(), PubsubError> {
    let mut meta = txn
        .open_table(META)
        .map_err(redb_error("create the meta table"))?;
    let counted = meta
        .get(BYTES_COUNTED)
        .map_err(redb_error("read the byte count marker"))?
        .is_some();
    if counted {
        return Ok(());
    }
    let mut totals: HashMap<String, u64> = HashMap::new();
    let messages = txn
        .open_table(MESSAGES)
        .map_err(redb_error("open the messages table"))?;
    for row in messages
        .iter()
        .map_err(redb_error("scan the messages table"))?
    {
        let (key, value) = row.map_err(redb_error("read a message while counting"))?;
        let bytes = totals.entry(key.value().0.to_owned()).or_default();
        *bytes = bytes.saturating_add(value.value().len() as u64);
    }
    let mut usage = txn
        .open_table(USAGE)
        .map_err(redb_error("open the usage table"))?;
    for (tenant, bytes) in totals {
        usage
            .insert(tenant.as_str(), bytes)
            .map_err(redb_error("write a tenant's usage"))?;
    }
    let mut missing: BTreeSet<(String, String)> = BTreeSet::new();
    let groups = txn
        .open_table(GROUPS)
        .map_err(redb_error("open the groups table"))?;
    let mut topics = txn
        .open_table(TOPICS)
        .map_err(redb_error("open the topics table"))?;
    for row in groups.iter().map_err(redb_error("scan the groups table"))? {
        let (key, _) = row.map_err(redb_error("read a group while counting"))?;
        let (tenant, topic, _) = key.value();
        let listed = topics
            .get((tenant, topic))
            .map_err(redb_error("read a topic's next offset"))?
            .is_some();
        if !listed {
            missing.insert((tenant.to_owned(), topic.to_owned()));
        }
    }
    for (tenant, topic) in &missing {
        topics
            .insert((tenant.as_str(), topic.as_str()), 1)
            .map_err(redb_error("write a topic's next offset"))?;
    }
    meta.insert(BYTES_COUNTED, 1)
        .map_err(redb_error("write the byte count marker"))?;
    Ok(())
}

/// What `tenant` keeps, as the count tables say.
fn tenant_usage(db: &Database, tenant: &str) -> Result<TenantUsage, PubsubError> {
    let txn = db
        .begin_read()
        .map_err(redb_error("begin a read transaction"))?;
    let read = |table: Counts, what: &'static str| -> Result<u64, PubsubError> {
        let table = txn.open_table(table).map_err(redb_error(what))?;
        let count = table
            .get(tenant)
            .map_err(redb_error("read a tenant's count"))?
            .map_or(0, |guard| guard.value());
        Ok(count)
    };
    Ok(TenantUsage {
        bytes: read(USAGE, "open the usage table")?,
        topics: read(TOPIC_COUNTS, "open the topic counts table")?,
    })
}

/// Writes `tenant`'s `topic` row at `next` (never lowering it), counting the
/// topic for its tenant if the row is new.
fn write_topic(
    txn: &WriteTransaction,
    topics: &mut redb::Table<'_, (&'static str, &'static str), u64>,
    tenant: &str,
    topic: &str,
    next: u64,
) -> Result<(), PubsubError> {
    let stored = topics
        .get((tenant, topic))
        .map_err(redb_error("read a topic's next offset"))?
        .map(|guard| guard.value());
    if stored.is_some_and(|stored| stored >= next) {
        return Ok(());
    }
    topics
        .insert((tenant, topic), next.max(stored.unwrap_or(1)))
        .map_err(redb_error("write a topic's next offset"))?;
    if stored.is_none() {
        let mut counts = txn
            .open_table(TOPIC_COUNTS)
            .map_err(redb_error("open the topic counts table"))?;
        add_count(&mut counts, tenant, 1)?;
    }
    Ok(())
}

/// Adds `added` and takes `deleted` bytes off `tenant`'s usage.
fn count_bytes(
    txn: &WriteTransaction,
    tenant: &str,
    added: u64,
    deleted: u64,
) -> Result<(), PubsubError> {
    if added == deleted {
        return Ok(());
    }
    // One message or trim is far below i64::MAX bytes; clamping only
    // guards the conversion.
    let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let mut usage = txn
        .open_table(USAGE)
        .map_err(redb_error("open the usage table for writing"))?;
    add_count(
        &mut usage,
        tenant,
        signed(added).saturating_sub(signed(deleted)),
    )?;
    Ok(())
}

/// Maps a redb error to `Internal`, saying which operation failed.
fn redb_error<E: Display>(operation: &'static str) -> impl FnOnce(E) -> PubsubError {
    move |e| {
        PubsubError::Driver(DriverError::Internal(format!(
            "redb: cannot {operation}: {e}"
        )))
    }
}

/// Reads what is stored of a topic.
fn load_topic(db: &Database, tenant: &str, topic: &str) -> Result<TopicRecord, PubsubError> {
    let txn = db
        .begin_read()
        .map_err(redb_error("begin a read transaction"))?;
    let topics = txn
        .open_table(TOPICS)
        .map_err(redb_error("open the topics table"))?;
    let row = topics
        .get((tenant, topic))
        .map_err(redb_error("read a topic's next offset"))?
        .map(|guard| guard.value());
    let next = row.unwrap_or(1);
    let messages = txn
        .open_table(MESSAGES)
        .map_err(redb_error("open the messages table"))?;
    let first = messages
        .range((tenant, topic, 0)..=(tenant, topic, u64::MAX))
        .map_err(redb_error("scan a topic's messages"))?
        .next()
        .transpose()
        .map_err(redb_error("read a topic's first message"))?
        .map_or(next, |(key, _)| key.value().2);
    let groups_table = txn
        .open_table(GROUPS)
        .map_err(redb_error("open the groups table"))?;
    let acks = txn
        .open_table(ACKS)
        .map_err(redb_error("open the acks table"))?;
    let failures = txn
        .open_table(FAILURES)
        .map_err(redb_error("open the failures table"))?;
    let mut groups = Vec::new();
    // Group names sort after "" in the key order, so this range starts at
    // the topic's first group; it ends where another topic's keys begin.
    for row in groups_table
        .range((tenant, topic, "")..)
        .map_err(redb_error("scan a topic's groups"))?
    {
        let (key, value) = row.map_err(redb_error("read a group"))?;
        let (row_tenant, row_topic, name) = key.value();
        if row_tenant != tenant || row_topic != topic {
            break;
        }
        let mut record = GroupRecord {
            name: name.to_owned(),
            committed: value.value(),
            acked: Vec::new(),
            failures: Vec::new(),
        };
        for row in acks
            .range((tenant, topic, name, 0)..=(tenant, topic, name, u64::MAX))
            .map_err(redb_error("scan a group's acks"))?
        {
            let (key, _) = row.map_err(redb_error("read an ack"))?;
            record.acked.push(key.value().3);
        }
        for row in failures
            .range((tenant, topic, name, 0)..=(tenant, topic, name, u64::MAX))
            .map_err(redb_error("scan a group's failures"))?
        {
            let (key, value) = row.map_err(redb_error("read a failure count"))?;
            record.failures.push((key.value().3, value.value()));
        }
        groups.push(record);
    }
    Ok(TopicRecord {
        first,
        next,
        groups,
        exists: row.is_some(),
    })
}

/// Deletes a topic's messages below `below`; answers the bytes they took.
fn trim(
    messages: &mut redb::Table<'_, MessageKey, &[u8]>,
    tenant: &str,
    topic: &str,
    below: u64,
) -> Result<u64, PubsubError> {
    let mut deleted = 0_u64;
    if below > 0 {
        messages
            .retain_in((tenant, topic, 0)..(tenant, topic, below), |_, value| {
                deleted = deleted.saturating_add(value.len() as u64);
                false
            })
            .map_err(redb_error("delete acknowledged messages"))?;
    }
    Ok(deleted)
}

/// Appends one message (and trims) in `txn`, counting its bytes for its
/// tenant; answers the bytes the trim deleted.
fn append(
    txn: &WriteTransaction,
    tenant: &str,
    topic: &str,
    offset: u64,
    stored: &[u8],
    trim_below: u64,
) -> Result<u64, PubsubError> {
    let (replaced, deleted) = {
        let mut messages = txn
            .open_table(MESSAGES)
            .map_err(redb_error("open the messages table for writing"))?;
        let mut topics = txn
            .open_table(TOPICS)
            .map_err(redb_error("open the topics table for writing"))?;
        // The broker never appends at a stored offset; should it, the old
        // message's bytes leave with it.
        let replaced = messages
            .insert((tenant, topic, offset), stored)
            .map_err(redb_error("write a message"))?
            .map_or(0, |old| old.value().len() as u64);
        write_topic(txn, &mut topics, tenant, topic, offset.saturating_add(1))?;
        (replaced, trim(&mut messages, tenant, topic, trim_below)?)
    };
    count_bytes(
        txn,
        tenant,
        stored.len() as u64,
        replaced.saturating_add(deleted),
    )?;
    Ok(deleted)
}

/// Reads one message.
fn read(
    db: &Database,
    tenant: &str,
    topic: &str,
    offset: u64,
) -> Result<Option<Message>, PubsubError> {
    let txn = db
        .begin_read()
        .map_err(redb_error("begin a read transaction"))?;
    let messages = txn
        .open_table(MESSAGES)
        .map_err(redb_error("open the messages table"))?;
    let found = messages
        .get((tenant, topic, offset))
        .map_err(redb_error("read a message"))?;
    found
        .map(|guard| Message::decode(guard.value()))
        .transpose()
}

/// Merges a group change (see [`GroupChange`]) in `txn`, giving the topic
/// its row if it has none; answers the bytes the trim deleted.
fn save_group(
    txn: &WriteTransaction,
    tenant: &str,
    topic: &str,
    group: &str,
    change: &GroupChange,
) -> Result<u64, PubsubError> {
    let deleted = {
        let mut groups = txn
            .open_table(GROUPS)
            .map_err(redb_error("open the groups table for writing"))?;
        let mut acks = txn
            .open_table(ACKS)
            .map_err(redb_error("open the acks table for writing"))?;
        let mut failures = txn
            .open_table(FAILURES)
            .map_err(redb_error("open the failures table for writing"))?;
        let mut messages = txn
            .open_table(MESSAGES)
            .map_err(redb_error("open the messages table for writing"))?;
        let stored = groups
            .get((tenant, topic, group))
            .map_err(redb_error("read a group's position"))?
            .map_or(0, |guard| guard.value());
        let committed = stored.max(change.committed);
        groups
            .insert((tenant, topic, group), committed)
            .map_err(redb_error("write a group's position"))?;
        let below = (tenant, topic, group, 0)..(tenant, topic, group, committed);
        acks.retain_in(below.clone(), |_, ()| false)
            .map_err(redb_error("delete acks below the position"))?;
        failures
            .retain_in(below, |_, _| false)
            .map_err(redb_error("delete failure counts below the position"))?;
        for &offset in change.acked.iter().filter(|&&o| o >= committed) {
            acks.insert((tenant, topic, group, offset), ())
                .map_err(redb_error("write an ack"))?;
            failures
                .remove((tenant, topic, group, offset))
                .map_err(redb_error("delete an acknowledged offset's failure count"))?;
        }
        for &(offset, count) in change.failures.iter().filter(|(o, _)| *o >= committed) {
            let key = (tenant, topic, group, offset);
            let old = failures
                .get(key)
                .map_err(redb_error("read a failure count"))?
                .map_or(0, |guard| guard.value());
            failures
                .insert(key, old.max(count))
                .map_err(redb_error("write a failure count"))?;
        }
        let mut topics = txn
            .open_table(TOPICS)
            .map_err(redb_error("open the topics table for writing"))?;
        write_topic(txn, &mut topics, tenant, topic, 1)?;
        trim(&mut messages, tenant, topic, change.trim_below)?
    };
    count_bytes(txn, tenant, 0, deleted)?;
    Ok(deleted)
}

// The blocking tasks and the writer's jobs must own what they use
// (`'static`), so the names are copied. Appends and group changes go through
// the database's writer, which answers each once a durable commit holds it;
// writes that arrive while it commits share the next one.
impl PubsubLog for RedbLog {
    fn load_topic<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<TopicRecord, PubsubError>> {
        let (tenant, topic) = (tenant.to_owned(), topic.to_owned());
        Box::pin(async move {
            let db = self.db.db().await?;
            blocking(move || load_topic(&db, &tenant, &topic)).await
        })
    }

    fn tenant_usage<'a>(
        &'a self,
        tenant: &'a str,
    ) -> BoxFuture<'a, Result<TenantUsage, PubsubError>> {
        let tenant = tenant.to_owned();
        Box::pin(async move {
            let db = self.db.db().await?;
            blocking(move || tenant_usage(&db, &tenant)).await
        })
    }

    fn append<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        offset: u64,
        message: Arc<Message>,
        trim_below: u64,
    ) -> BoxFuture<'a, Result<u64, PubsubError>> {
        let (tenant, topic) = (tenant.to_owned(), topic.to_owned());
        Box::pin(async move {
            // Encoded here, so the writer thread spends its time on writes.
            let stored = message.encode()?;
            let bytes = stored.len().saturating_add(tenant.len() + topic.len());
            self.db
                .write(bytes, move |txn| {
                    append(txn, &tenant, &topic, offset, &stored, trim_below)
                })
                .await
        })
    }

    fn queue_append<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        offset: u64,
        message: Arc<Message>,
        trim_below: u64,
        landed: Landed,
    ) -> BoxFuture<'a, Result<(), PubsubError>> {
        let (tenant, topic) = (tenant.to_owned(), topic.to_owned());
        Box::pin(async move {
            let stored = message.encode()?;
            let bytes = stored.len().saturating_add(tenant.len() + topic.len());
            self.db
                .queue(
                    bytes,
                    move |txn| {
                        append(txn, &tenant, &topic, offset, &stored, trim_below)
                            .map(Finish::Commit)
                    },
                    landed,
                )
                .await
        })
    }

    fn read<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        offset: u64,
    ) -> BoxFuture<'a, Result<Option<Arc<Message>>, PubsubError>> {
        let (tenant, topic) = (tenant.to_owned(), topic.to_owned());
        Box::pin(async move {
            let db = self.db.db().await?;
            let found = blocking(move || read(&db, &tenant, &topic, offset)).await?;
            Ok(found.map(Arc::new))
        })
    }

    fn save_group<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        group: &'a str,
        change: &'a GroupChange,
    ) -> BoxFuture<'a, Result<u64, PubsubError>> {
        let (tenant, topic, group) = (tenant.to_owned(), topic.to_owned(), group.to_owned());
        let change = change.clone();
        Box::pin(async move {
            // A change is a few rows per offset it names.
            let offsets = change.acked.len().saturating_add(change.failures.len());
            let bytes = offsets.saturating_mul(64).saturating_add(64);
            self.db
                .write(bytes, move |txn| {
                    save_group(txn, &tenant, &topic, &group, &change)
                })
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn message(data: &[u8]) -> Arc<Message> {
        Arc::new(Message {
            id: "id".into(),
            source: String::new(),
            event_type: String::new(),
            spec_version: String::new(),
            data_content_type: "text/plain".into(),
            time: String::new(),
            trace_parent: String::new(),
            data: data.to_vec(),
            metadata: Vec::new(),
            raw: true,
        })
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_file_held_by_a_previous_instance_is_opened_once_released() {
        let dir = tempfile::TempDir::new().expect("create a temporary directory");
        let rt = runtime();
        let old = RedbLog::open(dir.path().join("handoff.redb")).expect("first open");
        rt.block_on(old.append("t", "orders", 1, message(b"one"), 0))
            .expect("append");
        // As in a hot restart: the new instance starts while the old holds the file.
        let new = RedbLog::open(dir.path().join("handoff.redb")).expect("deferred open");
        assert!(new.db.opened().is_none(), "the file is still held");
        let record = rt.block_on(async {
            let release = async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(old);
            };
            let (_, record) = tokio::join!(release, new.load_topic("t", "orders"));
            record
        });
        let record = record.expect("load after the handoff");
        assert_eq!((record.first, record.next), (1, 2));
    }

    fn usage(rt: &tokio::runtime::Runtime, log: &RedbLog, tenant: &str) -> TenantUsage {
        rt.block_on(log.tenant_usage(tenant)).expect("usage")
    }

    fn stored(data: &[u8]) -> u64 {
        message(data).stored_len()
    }

    /// Each tenant's bytes and topics are counted with the writes that
    /// change them: appends add, trims (by an append or a group change)
    /// give back exactly what they deleted, a group alone makes a topic,
    /// and the counts survive a reopen.
    #[test]
    fn usage_follows_appends_and_trims_and_survives_reopen() {
        let dir = tempfile::TempDir::new().expect("create a temporary directory");
        let path = dir.path().join("usage.redb");
        let rt = runtime();
        let log = RedbLog::open(path.clone()).expect("open");
        for (offset, data) in [(1, &b"one"[..]), (2, b"two!"), (3, b"three")] {
            let freed = rt.block_on(log.append("t", "x", offset, message(data), 0));
            assert_eq!(freed, Ok(0));
        }
        rt.block_on(log.append("t", "y", 1, message(b"y"), 0))
            .expect("append");
        rt.block_on(log.append("u", "x", 1, message(b"other tenant"), 0))
            .expect("append");
        let all = stored(b"one") + stored(b"two!") + stored(b"three") + stored(b"y");
        assert_eq!(
            usage(&rt, &log, "t"),
            TenantUsage {
                bytes: all,
                topics: 2
            }
        );
        // Retention in an append deletes offset 1; a group change offset 2.
        let freed = rt.block_on(log.append("t", "x", 4, message(b"4"), 2));
        assert_eq!(freed, Ok(stored(b"one")));
        let change = GroupChange {
            committed: 3,
            trim_below: 3,
            ..GroupChange::default()
        };
        let freed = rt.block_on(log.save_group("t", "x", "g", &change));
        assert_eq!(freed, Ok(stored(b"two!")));
        // A group on a topic never published to makes the topic exist.
        rt.block_on(log.save_group("t", "z", "g", &GroupChange::default()))
            .expect("save");
        assert!(rt.block_on(log.load_topic("t", "z")).expect("load").exists);
        assert!(!rt.block_on(log.load_topic("t", "w")).expect("load").exists);
        let left = TenantUsage {
            bytes: stored(b"three") + stored(b"4") + stored(b"y"),
            topics: 3,
        };
        assert_eq!(usage(&rt, &log, "t"), left);
        drop(log);
        let log = RedbLog::open(path).expect("reopen");
        assert_eq!(usage(&rt, &log, "t"), left);
        let other = TenantUsage {
            bytes: stored(b"other tenant"),
            topics: 1,
        };
        assert_eq!(usage(&rt, &log, "u"), other);
    }

    /// A file written before the quotas (no counts, no marker, a topic with
    /// only a group and no row) gets its counts once, when opened.
    #[test]
    fn a_file_from_before_the_quotas_is_counted_once_on_open() {
        let dir = tempfile::TempDir::new().expect("create a temporary directory");
        let path = dir.path().join("old.redb");
        let rt = runtime();
        let log = RedbLog::open(path.clone()).expect("open");
        rt.block_on(log.append("t", "x", 1, message(b"kept"), 0))
            .expect("append");
        rt.block_on(log.save_group("t", "z", "g", &GroupChange::default()))
            .expect("save");
        let before = usage(&rt, &log, "t");
        drop(log);
        {
            let db = Database::create(&path).expect("open the file directly");
            let txn = db.begin_write().expect("begin");
            for table in [USAGE, TOPIC_COUNTS, META] {
                txn.delete_table(table)
                    .expect("drop a table the old layout lacks");
            }
            txn.open_table(TOPICS)
                .expect("topics")
                .remove(("t", "z"))
                .expect("remove the group-only topic's row");
            txn.commit().expect("commit");
        }
        let log = RedbLog::open(path.clone()).expect("reopen");
        assert_eq!(usage(&rt, &log, "t"), before);
        assert_eq!(before.topics, 2);
        // Counted once: a later write moves the counts from there.
        rt.block_on(log.append("t", "x", 2, message(b"more"), 0))
            .expect("append");
        drop(log);
        let log = RedbLog::open(path).expect("reopen again");
        assert_eq!(usage(&rt, &log, "t").bytes, before.bytes + stored(b"more"));
    }

    #[test]
    fn group_changes_merge_monotonically() {
        let dir = tempfile::TempDir::new().expect("create a temporary directory");
        let rt = runtime();
        let log = RedbLog::open(dir.path().join("merge.redb")).expect("open");
        for offset in 1..=6 {
            rt.block_on(log.append("t", "x", offset, message(b"m"), 0))
                .expect("append");
        }
        let later = GroupChange {
            committed: 4,
            acked: vec![5],
            failures: vec![(6, 2)],
            trim_below: 4,
        };
        // Computed earlier, written later: it must not move anything back.
        let earlier = GroupChange {
            committed: 2,
            acked: vec![3],
            failures: vec![(3, 1), (6, 1)],
            trim_below: 2,
        };
        rt.block_on(log.save_group("t", "x", "g", &later))
            .expect("save");
        rt.block_on(log.save_group("t", "x", "g", &earlier))
            .expect("save");
        let record = rt.block_on(log.load_topic("t", "x")).expect("load");
        assert_eq!((record.first, record.next), (4, 7));
        assert_eq!(
            record.groups,
            vec![GroupRecord {
                name: "g".into(),
                committed: 4,
                acked: vec![5],
                failures: vec![(6, 2)],
            }]
        );
    }

    #[test]
    fn offsets_are_not_reused_once_every_message_is_trimmed() {
        let dir = tempfile::TempDir::new().expect("create a temporary directory");
        let rt = runtime();
        let log = RedbLog::open(dir.path().join("next.redb")).expect("open");
        rt.block_on(log.append("t", "x", 1, message(b"a"), 0))
            .expect("append");
        rt.block_on(log.append("t", "x", 2, message(b"b"), 0))
            .expect("append");
        let change = GroupChange {
            committed: 3,
            trim_below: 3,
            ..GroupChange::default()
        };
        rt.block_on(log.save_group("t", "x", "g", &change))
            .expect("save");
        drop(log);
        let log = RedbLog::open(dir.path().join("next.redb")).expect("reopen");
        let record = rt.block_on(log.load_topic("t", "x")).expect("load");
        assert_eq!((record.first, record.next), (3, 3));
        // Other topics and tenants sharing a prefix are unaffected.
        let other = rt.block_on(log.load_topic("t", "x2")).expect("load");
        assert_eq!((other.first, other.next, other.groups.len()), (1, 1, 0));
    }

    #[test]
    fn a_stored_message_in_an_unknown_format_is_refused() {
        assert!(matches!(
            Message::decode(&[9, 1, 2]),
            Err(PubsubError::Driver(DriverError::Internal(_)))
        ));
        assert!(matches!(
            Message::decode(&[]),
            Err(PubsubError::Driver(DriverError::Internal(_)))
        ));
        let stored = message(b"x").encode().expect("encode");
        assert_eq!(Message::decode(&stored).expect("decode"), *message(b"x"));
    }
}
