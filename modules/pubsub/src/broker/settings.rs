//! A pubsub component's delivery settings under the module's own broker,
//! read from its metadata: dead letters, retention, the default ack
//! deadline, and the per-tenant quotas (topics, stored bytes, groups per
//! topic).

use std::time::Duration;

use mecha_module::metadata::Metadata;

use crate::error::PubsubError;
use crate::request::check_name;

/// A component's delivery settings, from its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The component name.
    pub store: String,
    /// After this many deliveries of a message to a group have failed, it
    /// moves to the dead-letter topic; 0 never dead-letters.
    pub max_deliveries: u32,
    /// The dead-letter topic of every topic; `None` means `<topic>.dlq`.
    pub dead_letter_topic: Option<String>,
    /// The most messages a topic retains.
    pub max_messages: u64,
    /// The ack deadline of subscribers that name none.
    pub ack_deadline: Duration,
    /// The most topics one tenant may have (`maxTopicsPerTenant`).
    pub max_topics: u64,
    /// The most bytes the messages of one tenant's topics may take
    /// (`maxBytesPerTenant`), each counted as
    /// [`Message::stored_len`](crate::message::Message::stored_len).
    pub max_bytes: u64,
    /// The most consumer groups one topic may have (`maxGroupsPerTopic`).
    pub max_groups: u64,
}

/// Topics one tenant may have in one embedded store without
/// `maxTopicsPerTenant`: those the store holds anything of, and those the
/// broker has touched since it started. The broker keeps every topic it has
/// touched in memory for the life of the module, and a durable store keeps
/// each topic's row for good, so this bounds both per tenant.
pub const DEFAULT_MAX_TOPICS: u64 = 10_000;

/// Bytes the messages of one tenant's topics may take in one embedded store
/// without `maxBytesPerTenant`: 256 MiB, the state stores' default. Retention
/// (`maxMessages`) bounds each topic, but not a tenant with many topics of
/// large messages; this bounds the disk (`pubsub.redb`) or the module memory
/// (`pubsub.memory`) one tenant can take, while leaving a Dapr application
/// far more backlog than it needs (a million 256-byte events).
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;

/// Consumer groups one topic may have without `maxGroupsPerTopic`. A Dapr
/// application subscribes as one group (its app id), so a topic rarely has
/// more than a few; each group keeps durable progress and up to
/// [`WINDOW`](super::WINDOW) entries of delivery state in memory, so this
/// bounds what a tenant's subscribes can create.
pub const DEFAULT_MAX_GROUPS: u64 = 100;

impl Settings {
    /// The metadata fields the broker understands, whatever the driver.
    pub const KNOWN_FIELDS: [&'static str; 7] = [
        "maxDeliveries",
        "deadLetterTopic",
        "maxMessages",
        "ackDeadlineMs",
        "maxTopicsPerTenant",
        "maxBytesPerTenant",
        "maxGroupsPerTopic",
    ];

    /// Reads the broker's fields from a component's metadata (which the
    /// driver has checked for unknown fields). `max_messages` is the
    /// driver's default retention.
    pub fn parse(metadata: &Metadata<'_>, max_messages: u64) -> Result<Settings, PubsubError> {
        let dead_letter_topic = match metadata.get("deadLetterTopic") {
            Some(topic) => {
                check_name("deadLetterTopic", topic).map_err(|e| metadata.error(e.to_string()))?;
                Some(topic.to_owned())
            }
            None => None,
        };
        let max_ack_deadline = u64::from(u32::MAX);
        Ok(Settings {
            store: metadata.component().to_owned(),
            max_deliveries: metadata
                .parsed(
                    "maxDeliveries",
                    &format!("a whole number from 0 to {}", u32::MAX),
                )?
                .unwrap_or(5),
            dead_letter_topic,
            max_messages: metadata
                .whole("maxMessages", 1..=u64::MAX)?
                .unwrap_or(max_messages),
            ack_deadline: metadata
                .whole("ackDeadlineMs", 1..=max_ack_deadline)?
                .map_or(Duration::from_secs(30), Duration::from_millis),
            max_topics: metadata
                .whole("maxTopicsPerTenant", 1..=u64::MAX)?
                .unwrap_or(DEFAULT_MAX_TOPICS),
            max_bytes: metadata
                .whole("maxBytesPerTenant", 1..=u64::MAX)?
                .unwrap_or(DEFAULT_MAX_BYTES),
            max_groups: metadata
                .whole("maxGroupsPerTopic", 1..=u64::MAX)?
                .unwrap_or(DEFAULT_MAX_GROUPS),
        })
    }

    /// The defaults of component `store`, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests(store: &str) -> Settings {
        Settings {
            store: store.to_owned(),
            max_deliveries: 5,
            dead_letter_topic: None,
            max_messages: 1_000,
            ack_deadline: Duration::from_secs(30),
            max_topics: DEFAULT_MAX_TOPICS,
            max_bytes: DEFAULT_MAX_BYTES,
            max_groups: DEFAULT_MAX_GROUPS,
        }
    }

    /// Where failed messages of `topic` go, or `None` for the dead-letter
    /// topic itself: dead-lettering it into itself would only loop.
    pub(super) fn dead_letter_topic_of(&self, topic: &str) -> Option<String> {
        let target = match &self.dead_letter_topic {
            Some(fixed) => fixed.clone(),
            None => format!("{topic}.dlq"),
        };
        (target != topic).then_some(target)
    }
}
