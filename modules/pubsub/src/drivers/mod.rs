//! The pubsub log driver trait, its error type, the stored message and group
//! records, and the factory that opens a store from a component spec
//! (`spec.type` → driver, wrapped in a [`Broker`]).
//!
//! A driver only *stores*: a per-(tenant, topic) log of messages by offset,
//! and per-(tenant, topic, group) progress. Everything about delivery —
//! consumer groups, acks, redelivery, dead letters, ordering — lives in the
//! [`Broker`], once, for every driver.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use mecha_abi::msg::ComponentSpec;
use mecha_module::embedded;
use mecha_module::metadata::{Metadata, MetadataError};
use mecha_module::remote::RemoteError;
use serde::{Deserialize, Serialize};

use crate::broker::{Broker, Settings};
use crate::store::Store;

pub mod jetstream;
pub mod memory;
pub mod redb;
pub mod redis;
pub mod remote;

/// A boxed future, so drivers can be chosen at run time behind `dyn PubsubLog`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a pubsub operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PubsubError {
    /// The component's metadata is unusable.
    #[error("component {component:?}: {reason}")]
    Config {
        /// The component name.
        component: String,
        /// What is wrong.
        reason: String,
    },
    /// The request names something invalid (an empty topic, a limit out of
    /// range).
    #[error("{0}")]
    Invalid(String),
    /// The topic holds `maxMessages` messages that some consumer group still
    /// needs, so a publish is refused rather than a message dropped.
    #[error(
        "topic {topic:?} is full: it retains {retained} messages (maxMessages) and consumer \
         group {group:?} has not acknowledged the oldest; publish again once it catches up"
    )]
    Full {
        /// The topic.
        topic: String,
        /// How many messages it retains.
        retained: u64,
        /// The group furthest behind.
        group: String,
    },
    /// The component's driver cannot honour an option of the request; the
    /// message names the component, its type and the feature.
    #[error("{0}")]
    Unsupported(String),
    /// The backing store cannot be reached right now.
    #[error("pubsub store unavailable: {0}")]
    Unavailable(String),
    /// The backing store failed in a way that is not the caller's fault.
    #[error("pubsub store failure: {0}")]
    Internal(String),
}

impl From<MetadataError> for PubsubError {
    fn from(e: MetadataError) -> Self {
        Self::Config {
            component: e.component,
            reason: e.reason,
        }
    }
}

impl From<RemoteError> for PubsubError {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::Unavailable(message) => Self::Unavailable(message),
            RemoteError::Failed(message) => Self::Internal(message),
        }
    }
}

impl From<embedded::Error> for PubsubError {
    fn from(e: embedded::Error) -> Self {
        match e {
            embedded::Error::Held(message) => Self::Unavailable(message),
            embedded::Error::Failed(message) => Self::Internal(message),
        }
    }
}

/// A message as stored in a topic's log: the CloudEvents envelope the module
/// built at publish time, or a raw message's id and content type alone.
/// Field order is its storage order (the durable driver stores it encoded
/// with the ABI's pinned encoding, behind a format byte).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// CloudEvents `id`.
    pub id: String,
    /// CloudEvents `source`; empty when raw.
    pub source: String,
    /// CloudEvents `type`; empty when raw.
    pub event_type: String,
    /// CloudEvents `specversion`; empty when raw.
    pub spec_version: String,
    /// CloudEvents `datacontenttype`.
    pub data_content_type: String,
    /// CloudEvents `time` (RFC 3339, UTC); empty when raw.
    pub time: String,
    /// W3C `traceparent`, empty if none.
    pub trace_parent: String,
    /// The body.
    pub data: Vec<u8>,
    /// Metadata as published.
    pub metadata: Vec<(String, String)>,
    /// Published without an envelope.
    pub raw: bool,
}

/// The metadata name whose value orders deliveries: messages of one topic
/// with the same key are handed to a consumer group one at a time, in
/// offset order (Dapr's name for it).
pub const PARTITION_KEY: &str = "partitionKey";

impl Message {
    /// The message's partition key, if it has a non-empty one.
    pub fn partition_key(&self) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(name, value)| name == PARTITION_KEY && !value.is_empty())
            .map(|(_, value)| value.as_str())
    }
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
pub trait PubsubLog: Send + Sync + 'static {
    /// What is stored of a topic: its offsets and every group's progress.
    /// A topic never written is `first = next = 1` without groups.
    fn load_topic<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<TopicRecord, PubsubError>>;

    /// Stores `message` at `offset` and deletes the topic's messages below
    /// `trim_below` (0: none), in one atomic step.
    fn append<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        offset: u64,
        message: Arc<Message>,
        trim_below: u64,
    ) -> BoxFuture<'a, Result<(), PubsubError>>;

    /// The message at `offset`, if it is stored.
    fn read<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        offset: u64,
    ) -> BoxFuture<'a, Result<Option<Arc<Message>>, PubsubError>>;

    /// Merges `change` into the stored progress of `group` (see
    /// [`GroupChange`]), creating the group if needed, atomically.
    fn save_group<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        group: &'a str,
        change: &'a GroupChange,
    ) -> BoxFuture<'a, Result<(), PubsubError>>;
}

/// The default `maxMessages` of `pubsub.memory`: its log lives in the
/// module's memory, so the bound is modest.
pub const MEMORY_MAX_MESSAGES: u64 = 10_000;

/// The default `maxMessages` of `pubsub.redb`, whose log lives on disk.
pub const REDB_MAX_MESSAGES: u64 = 1_000_000;

/// Opens the store named by `spec.kind`: an embedded driver with a
/// [`Broker`] on top, or a server that delivers messages itself.
pub fn open(spec: &ComponentSpec, data_dir: &Path) -> Result<Store, PubsubError> {
    match spec.kind.as_str() {
        "pubsub.redis" => Ok(Store::Redis(redis::open(spec)?)),
        // Dapr's type is `pubsub.jetstream`; `pubsub.nats` names the same.
        "pubsub.jetstream" | "pubsub.nats" => Ok(Store::Jetstream(jetstream::open(spec)?)),
        _ => open_embedded(spec, data_dir).map(Store::Embedded),
    }
}

/// Opens an embedded store: its log driver with a [`Broker`] on top
/// configured from the metadata both share.
pub fn open_embedded(spec: &ComponentSpec, data_dir: &Path) -> Result<Broker, PubsubError> {
    match spec.kind.as_str() {
        "pubsub.memory" => {
            let metadata = Metadata::parse(spec, &Settings::KNOWN_FIELDS)?;
            let settings = Settings::parse(&metadata, MEMORY_MAX_MESSAGES)?;
            Ok(Broker::new(settings, Box::new(memory::MemoryLog::new())))
        }
        "pubsub.redb" => {
            let known = [&Settings::KNOWN_FIELDS[..], &redb::KNOWN_FIELDS].concat();
            let metadata = Metadata::parse(spec, &known)?;
            let settings = Settings::parse(&metadata, REDB_MAX_MESSAGES)?;
            let path =
                mecha_module::embedded::redb_file(&spec.name, metadata.str("path")?, data_dir)
                    .map_err(|reason| metadata.error(reason))?;
            Ok(Broker::new(settings, Box::new(redb::RedbLog::open(path)?)))
        }
        other => Err(PubsubError::Config {
            component: spec.name.clone(),
            reason: format!(
                "unknown pubsub store type {other:?} (known: pubsub.memory, pubsub.redb, \
                 pubsub.redis, pubsub.jetstream, pubsub.nats)"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str, metadata: &[(&str, &str)]) -> ComponentSpec {
        ComponentSpec {
            name: "bus".into(),
            kind: kind.into(),
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn error(kind: &str, metadata: &[(&str, &str)]) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let _guard = rt.enter();
        match open(&spec(kind, metadata), Path::new("/nonexistent")) {
            Ok(_) => panic!("{kind} {metadata:?} opens"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn server_stores_check_their_metadata_at_start() {
        for (kind, metadata, field) in [
            ("pubsub.redis", &[][..], "redisHost"),
            ("pubsub.redis", &[("redisHost", "h:x")][..], "redisHost"),
            (
                "pubsub.redis",
                &[("redisHost", "h:1"), ("processingTimeout", "soon")][..],
                "processingTimeout",
            ),
            (
                "pubsub.redis",
                &[("redisHost", "h:1"), ("queueDepth", "0")][..],
                "queueDepth",
            ),
            (
                "pubsub.redis",
                &[("redisHost", "h:1"), ("enableTLS", "true")][..],
                "enableTLS",
            ),
            (
                "pubsub.redis",
                &[("redisHost", "h:1"), ("maxDeliveries", "3")][..],
                "maxDeliveries",
            ),
            ("pubsub.jetstream", &[][..], "natsURL"),
            (
                "pubsub.nats",
                &[("natsURL", "nats://h:1"), ("ackWait", "0")][..],
                "ackWait",
            ),
            (
                "pubsub.jetstream",
                &[("natsURL", "nats://h:1"), ("deliverPolicy", "sometimes")][..],
                "deliverPolicy",
            ),
            (
                "pubsub.jetstream",
                &[("natsURL", "nats://h:1"), ("streamName", "a.b")][..],
                "streamName",
            ),
        ] {
            let message = error(kind, metadata);
            assert!(
                message.contains("\"bus\"") && message.contains(field),
                "{kind} {metadata:?}: {message}"
            );
        }
    }

    #[test]
    fn server_stores_start_while_their_server_is_down() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let _guard = rt.enter();
        // Port 1 on loopback has no server; opening must not try to connect.
        for (kind, field, value) in [
            ("pubsub.redis", "redisHost", "127.0.0.1:1"),
            ("pubsub.jetstream", "natsURL", "nats://127.0.0.1:1"),
        ] {
            assert!(open(&spec(kind, &[(field, value)]), Path::new("/nonexistent")).is_ok());
        }
    }
}
