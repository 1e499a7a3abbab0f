//! Payloads of the pubsub family (`0x02`).
//!
//! PUBSUB_PUBLISH appends a message to a topic's log, wrapped in a
//! CloudEvents 1.0 envelope unless it is published raw. PUBSUB_SUBSCRIBE opens
//! a server-push stream of [`Delivery`] frames for one consumer group:
//! subscribers of the same group compete for the topic's messages, and every
//! group gets every message. Delivery is at least once: a delivery stays
//! outstanding until PUBSUB_ACK acknowledges it, and is delivered again after
//! a negative acknowledgement, when its ack deadline passes or when its
//! subscriber goes away.

use serde::{Deserialize, Serialize};

/// The most deliveries one subscriber may have unacknowledged at once.
/// Larger values are INVALID_ARGUMENT: the limit is what bounds the memory a
/// subscriber can make the module and the daemon hold for it.
pub const PUBSUB_MAX_IN_FLIGHT: u32 = 1024;

/// PUBSUB_PUBLISH request: append one message to `topic`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRequest {
    /// Component name of a pubsub store; empty for the default (the first).
    pub store: String,
    /// The topic, non-empty; topics are scoped by tenant.
    pub topic: String,
    /// The message body, opaque to mecha.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// The media type of `data` (CloudEvents `datacontenttype`); empty means
    /// `application/octet-stream`.
    pub content_type: String,
    /// Name/value pairs delivered with the message. Some names also steer
    /// the envelope or delivery (`cloudevent.type`, `traceparent`,
    /// `partitionKey`); the rest pass through untouched.
    pub metadata: Vec<(String, String)>,
    /// True to publish without a CloudEvents envelope: subscribers receive
    /// `data` with the message id and content type only.
    pub raw: bool,
}

/// PUBSUB_PUBLISH response: where the message was stored. Sent only once the
/// message is durable in stores that are durable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishReply {
    /// The message id (CloudEvents `id`), unique within the tenant.
    pub id: String,
    /// The message's position in the topic's log: offsets of a topic start
    /// at 1 and grow by one per message.
    pub offset: u64,
}

/// PUBSUB_SUBSCRIBE request: open a stream of deliveries for a consumer group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeRequest {
    /// Component name; empty for the default store.
    pub store: String,
    /// The topic, non-empty.
    pub topic: String,
    /// The consumer group; empty means the group named `default`.
    pub group: String,
    /// The most deliveries this subscriber may hold unacknowledged; 0 means
    /// 64, at most [`PUBSUB_MAX_IN_FLIGHT`].
    pub max_in_flight: u32,
    /// How long a delivery may stay unacknowledged before it is delivered
    /// again, in milliseconds; 0 means the store's default (30000).
    pub ack_deadline_ms: u32,
}

/// The opening answer of PUBSUB_SUBSCRIBE; [`Delivery`] pushes follow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeReply {
    /// Identifies this subscriber in the module's logs; unique per module
    /// instance.
    pub subscription_id: u64,
    /// The store serving the subscription (the default store's name when the
    /// request named none).
    pub store: String,
    /// The consumer group joined (`default` when the request named none).
    pub group: String,
}

/// One push of a PUBSUB_SUBSCRIBE stream: a message handed to this
/// subscriber, to be acknowledged with PUBSUB_ACK.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The store the message is in.
    pub store: String,
    /// The topic the message was published to.
    pub topic: String,
    /// The consumer group it is delivered to.
    pub group: String,
    /// The message's offset in the topic; with `attempt`, it identifies the
    /// delivery in PUBSUB_ACK.
    pub offset: u64,
    /// 1 for the first delivery of the message to this group, then one more
    /// each time it is delivered again.
    pub attempt: u32,
    /// CloudEvents `id`: unique within the tenant.
    pub id: String,
    /// CloudEvents `source`: `mecha://<tenant>`; empty for raw messages.
    pub source: String,
    /// CloudEvents `type`; empty for raw messages.
    pub event_type: String,
    /// CloudEvents `specversion`: `1.0`; empty for raw messages.
    pub spec_version: String,
    /// CloudEvents `datacontenttype`: the media type of `data`.
    pub data_content_type: String,
    /// CloudEvents `time`: when the message was published, RFC 3339 in UTC;
    /// empty for raw messages.
    pub time: String,
    /// W3C trace context of the publisher (`traceparent`), empty if none.
    pub trace_parent: String,
    /// The message body as published.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// The metadata as published (plus `deadletter.*` entries on messages
    /// moved to a dead-letter topic).
    pub metadata: Vec<(String, String)>,
    /// True when the message was published raw (no envelope).
    pub raw: bool,
}

/// Identifies one delivery to acknowledge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AckItem {
    /// The delivered message's offset.
    pub offset: u64,
    /// The delivery's attempt number, as delivered.
    pub attempt: u32,
}

/// PUBSUB_ACK request: acknowledge (or, with `nack`, reject) deliveries of
/// one topic to one consumer group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckRequest {
    /// Component name; empty for the default store.
    pub store: String,
    /// The topic, non-empty.
    pub topic: String,
    /// The consumer group; empty means `default`.
    pub group: String,
    /// The deliveries, as their pushes identified them.
    pub items: Vec<AckItem>,
    /// False: the messages were processed, never deliver them to this group
    /// again. True: they were not, deliver them again now.
    pub nack: bool,
}

/// PUBSUB_ACK response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckReply {
    /// How many items took effect. The others had been acknowledged already,
    /// name no message of the topic, or (for a nack) are no longer the
    /// outstanding delivery of their message.
    pub applied: u32,
}
