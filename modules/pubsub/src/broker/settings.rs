//! A pubsub component's delivery settings under the module's own broker,
//! read from its metadata: dead letters, retention and the default ack
//! deadline.

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
    /// The most topics one tenant may touch (`maxTopicsPerTenant`).
    pub max_topics: u64,
}

/// Topics one tenant may touch in one embedded store without
/// `maxTopicsPerTenant`. The broker keeps every topic it has touched in
/// memory for the life of the module, so this bounds its memory per tenant.
pub const DEFAULT_MAX_TOPICS: u64 = 10_000;

impl Settings {
    /// The metadata fields the broker understands, whatever the driver.
    pub const KNOWN_FIELDS: [&'static str; 5] = [
        "maxDeliveries",
        "deadLetterTopic",
        "maxMessages",
        "ackDeadlineMs",
        "maxTopicsPerTenant",
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
        })
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
