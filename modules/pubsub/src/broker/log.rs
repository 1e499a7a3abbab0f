//! What the broker needs of an embedded driver: a per-(tenant, topic) log
//! of messages by offset, and per-(tenant, topic, group) progress. The
//! drivers `pubsub.memory` and `pubsub.redb` implement [`PubsubLog`];
//! everything about delivery lives in the broker, once, for every driver.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::error::PubsubError;
use crate::message::Message;

/// Told the outcome of a queued append (see [`PubsubLog::queue_append`]):
/// on success, the bytes its trim deleted.
pub type Landed = Box<dyn FnOnce(Result<u64, PubsubError>) + Send>;

/// What one tenant keeps in a store, for its quotas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantUsage {
    /// The stored size ([`Message::stored_len`]) of every message the
    /// tenant's topics retain (`maxBytesPerTenant`).
    pub bytes: u64,
    /// How many of the tenant's topics the store holds anything of: a
    /// message, a next offset or a consumer group (`maxTopicsPerTenant`).
    pub topics: u64,
}

/// What a driver knows of a topic when the broker first touches it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicRecord {
    /// The lowest offset still stored; equals `next` when none is.
    pub first: u64,
    /// The offset the next published message takes (offsets start at 1).
    pub next: u64,
    /// Every consumer group of the topic, by name.
    pub groups: Vec<GroupRecord>,
    /// Whether the store holds anything of the topic, and so counts it in
    /// [`TenantUsage::topics`] already.
    pub exists: bool,
}

/// The stored progress of one consumer group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupRecord {
    /// The group's name.
    pub name: String,
    /// Every offset below this one is acknowledged.
    pub committed: u64,
    /// Acknowledged offsets at or above `committed`, ascending.
    pub acked: Vec<u64>,
    /// Failed deliveries so far of unacknowledged offsets, ascending.
    pub failures: Vec<(u64, u32)>,
}

/// A change to a group's stored progress, and to the topic's retention.
///
/// Drivers apply it as a **monotonic merge**, so that changes computed in
/// one order and written in another leave the same result: `committed`
/// only grows (the stored value becomes the larger of the two), acked rows
/// and failure rows below the resulting `committed` are deleted, acked rows
/// at or above it are added, a failure count only grows, and messages below
/// `trim_below` are deleted. Writing a change for a group that has none yet
/// creates the group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupChange {
    /// The group's committed position after the change.
    pub committed: u64,
    /// Newly acknowledged offsets at or above `committed`.
    pub acked: Vec<u64>,
    /// New failure counts of unacknowledged offsets.
    pub failures: Vec<(u64, u32)>,
    /// Messages below this offset are acknowledged by every group and may
    /// be deleted; 0 deletes nothing.
    pub trim_below: u64,
}

/// A topic log store. Everything is scoped by tenant: the same topic name
/// under two tenants names two unrelated logs.
///
/// Semantics every driver must honour (the conformance tests check them
/// through the broker):
/// - The broker is the only writer and assigns offsets: `append` stores the
///   message at the offset given, which is the topic's `next`; a later
///   `load_topic` reports `next` as one past the highest offset ever
///   appended, even once every message has been deleted.
/// - A durable driver has written an `append` or `save_group` to stable
///   storage when the future resolves, and `load_topic` after a restart
///   sees exactly what was written.
/// - `save_group` is the monotonic merge described on [`GroupChange`].
/// - [`PubsubLog::tenant_usage`] counts what the log holds, and every
///   operation that deletes messages answers the bytes it deleted, so the
///   broker's per-tenant ledger stays exact. A durable driver keeps the
///   counts in the same atomic step as the writes that change them.
pub trait PubsubLog: Send + Sync + 'static {
    /// What is stored of a topic: its offsets and every group's progress.
    /// A topic never written is `first = next = 1` without groups, and does
    /// not exist.
    fn load_topic<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<TopicRecord, PubsubError>>;

    /// What `tenant` keeps in the store: the bytes its messages take and
    /// how many of its topics exist.
    fn tenant_usage<'a>(
        &'a self,
        tenant: &'a str,
    ) -> BoxFuture<'a, Result<TenantUsage, PubsubError>>;

    /// Stores `message` at `offset` and deletes the topic's messages below
    /// `trim_below` (0: none), in one atomic step; answers the stored bytes
    /// the trim deleted.
    fn append<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        offset: u64,
        message: Arc<Message>,
        trim_below: u64,
    ) -> BoxFuture<'a, Result<u64, PubsubError>>;

    /// Queues `append` and returns once it is queued; `landed` is then
    /// called exactly once with its outcome, when the message is durable (or
    /// the append failed). While one message of a topic waits for its disk
    /// sync, the broker can queue the next, so concurrent publishes to one
    /// topic share a sync. If this returns an error, `landed` is dropped
    /// uncalled. The default appends at once and reports before returning.
    fn queue_append<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        offset: u64,
        message: Arc<Message>,
        trim_below: u64,
        landed: Landed,
    ) -> BoxFuture<'a, Result<(), PubsubError>> {
        Box::pin(async move {
            landed(
                self.append(tenant, topic, offset, message, trim_below)
                    .await,
            );
            Ok(())
        })
    }

    /// The message at `offset`, if it is stored.
    fn read<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        offset: u64,
    ) -> BoxFuture<'a, Result<Option<Arc<Message>>, PubsubError>>;

    /// Merges `change` into the stored progress of `group` (see
    /// [`GroupChange`]), creating the group if needed, atomically; answers
    /// the stored bytes its trim deleted.
    fn save_group<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        group: &'a str,
        change: &'a GroupChange,
    ) -> BoxFuture<'a, Result<u64, PubsubError>>;
}
