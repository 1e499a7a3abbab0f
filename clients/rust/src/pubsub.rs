//! Pubsub calls of the Rust client (async and blocking): publishing
//! CloudEvents, subscribing as a member of a consumer group, and
//! acknowledging deliveries. Subscriptions survive module restarts: when the
//! daemon resets the stream, the subscription subscribes again by itself,
//! and the module delivers every unacknowledged message again.
//!
//! ```no_run
//! use mecha_client::blocking::Client;
//!
//! fn main() -> Result<(), mecha_client::Error> {
//!     let client = Client::connect("/tmp/mecha.sock")?;
//!     let options = mecha_client::Client::publish_options().content_type("application/json");
//!     let published = client.publish("", "orders", br#"{"id":7}"#.to_vec(), options)?;
//!     println!("published {} at offset {}", published.id, published.offset);
//!
//!     let mut orders = client.subscribe("", "orders", "billing", Default::default())?;
//!     while let Some(delivery) = orders.next() {
//!         let delivery = delivery?;
//!         // Process the message, then acknowledge it; an unacknowledged
//!         // delivery comes again after its ack deadline (at least once).
//!         orders.ack(&delivery)?;
//!     }
//!     Ok(())
//! }
//! ```

use std::time::Duration;

use mecha_abi::msg::{
    AckItem, AckReply, AckRequest, Delivery, PublishReply, PublishRequest, SubscribeReply,
    SubscribeRequest,
};
use mecha_abi::Opcode;

use crate::acked::{ack_deadline_ms, Blocking, Resubscribing, SubscribeCall};
use crate::request::Request;
use crate::{Client, Error};

// A publish is not idempotent: an attempt answered UNAVAILABLE (the module
// died with it in flight) may have been stored, and sending it again stores
// the message twice. It is therefore retried only when the caller opts in
// (`RetryPolicy::retry_non_idempotent`), accepting duplicates, which
// at-least-once subscribers must tolerate anyway.
impl Request for PublishRequest {
    const OPCODE: Opcode = Opcode::PUBSUB_PUBLISH;
    type Reply = PublishReply;
    fn is_idempotent(&self) -> bool {
        false
    }
}

// An ack is idempotent: acknowledging a message twice leaves it acknowledged.
// So is a nack: it names the delivery's attempt, and once it has taken
// effect the message's next delivery has another attempt number, so the
// same nack sent again changes nothing.
impl Request for AckRequest {
    const OPCODE: Opcode = Opcode::PUBSUB_ACK;
    type Reply = AckReply;
    fn is_idempotent(&self) -> bool {
        true
    }
}

impl SubscribeCall for SubscribeRequest {
    const OPCODE: Opcode = Opcode::PUBSUB_SUBSCRIBE;
    type Reply = SubscribeReply;
    type Push = Delivery;
}

/// Options of a publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// The media type of the data (CloudEvents `datacontenttype`); empty
    /// means `application/octet-stream`.
    pub content_type: String,
    /// Name/value pairs delivered with the message. `cloudevent.type` sets
    /// the event type, `traceparent` the trace context, and `partitionKey`
    /// orders delivery: messages with the same key reach a consumer group one
    /// at a time, in publish order.
    pub metadata: Vec<(String, String)>,
    /// Publish the data as is, without a CloudEvents envelope.
    pub raw: bool,
}

impl PublishOptions {
    /// Sets the content type.
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = content_type.into();
        self
    }

    /// Adds one metadata pair.
    pub fn metadata(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((name.into(), value.into()));
        self
    }

    /// Sets raw mode (no envelope).
    pub fn raw(mut self, raw: bool) -> Self {
        self.raw = raw;
        self
    }
}

/// Options of a subscription.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// The most deliveries the subscriber holds unacknowledged; the module
    /// sends no more until some are acknowledged. 0 means 64. Values above
    /// 256 can make the client drop pushes it has no room for (they are
    /// delivered again after the ack deadline).
    pub max_in_flight: u32,
    /// How long a delivery may stay unacknowledged before it is delivered
    /// again (to this or another member of the group); `None` means the
    /// store's default (30 s unless configured). Sent in whole milliseconds.
    pub ack_deadline: Option<Duration>,
}

impl SubscribeOptions {
    /// Sets the in-flight limit.
    pub fn max_in_flight(mut self, max_in_flight: u32) -> Self {
        self.max_in_flight = max_in_flight;
        self
    }

    /// Sets the ack deadline.
    pub fn ack_deadline(mut self, ack_deadline: Duration) -> Self {
        self.ack_deadline = Some(ack_deadline);
        self
    }
}

impl Client {
    /// Options for [`Client::publish`], to adjust with their builder methods.
    /// (The same as `PublishOptions::default()`; this also works where the
    /// type is not imported.)
    pub fn publish_options() -> PublishOptions {
        PublishOptions::default()
    }

    /// Options for [`Client::subscribe`], to adjust with their builder
    /// methods; the same as `SubscribeOptions::default()`.
    pub fn subscribe_options() -> SubscribeOptions {
        SubscribeOptions::default()
    }

    /// Publishes `data` to `topic` in `store` ("" = the default pubsub
    /// store). Returns the message's id and offset once it is stored
    /// (durably, for durable stores).
    ///
    /// Not retried by default: a publish answered UNAVAILABLE may have been
    /// stored (see [`RetryPolicy`](crate::RetryPolicy)); with
    /// `retry_non_idempotent` it is retried and may then be stored twice.
    pub async fn publish(
        &self,
        store: &str,
        topic: &str,
        data: impl Into<Vec<u8>>,
        options: PublishOptions,
    ) -> Result<PublishReply, Error> {
        let req = PublishRequest {
            store: store.into(),
            topic: topic.into(),
            data: data.into(),
            content_type: options.content_type,
            metadata: options.metadata,
            raw: options.raw,
        };
        self.call(&req).await
    }

    /// Joins consumer group `group` ("" = `default`) of `topic` in `store`
    /// and returns the subscription. Members of one group share the topic's
    /// messages (each goes to one of them); every group gets every message.
    /// A group that did not exist starts at the oldest message the topic
    /// retains.
    pub async fn subscribe(
        &self,
        store: &str,
        topic: &str,
        group: &str,
        options: SubscribeOptions,
    ) -> Result<PubsubSubscription, Error> {
        let request = SubscribeRequest {
            store: store.into(),
            topic: topic.into(),
            group: group.into(),
            max_in_flight: options.max_in_flight,
            ack_deadline_ms: ack_deadline_ms(options.ack_deadline),
        };
        Ok(PubsubSubscription {
            inner: Resubscribing::subscribe(self, request).await?,
        })
    }

    /// Acknowledges `delivery`: its message is never delivered to its group
    /// again. Works from any connection of the tenant. Returns false when
    /// the message was already acknowledged.
    pub async fn ack(&self, delivery: &Delivery) -> Result<bool, Error> {
        self.settle(delivery, false).await
    }

    /// Rejects `delivery`: its message is delivered again at once (to any
    /// member of the group), or moved to the dead-letter topic once it has
    /// been delivered the store's `maxDeliveries` times. Returns false when
    /// `delivery` is no longer the message's outstanding delivery (it was
    /// acknowledged, or already delivered again).
    pub async fn nack(&self, delivery: &Delivery) -> Result<bool, Error> {
        self.settle(delivery, true).await
    }

    async fn settle(&self, delivery: &Delivery, nack: bool) -> Result<bool, Error> {
        let req = AckRequest {
            store: delivery.store.clone(),
            topic: delivery.topic.clone(),
            group: delivery.group.clone(),
            items: vec![AckItem {
                offset: delivery.offset,
                attempt: delivery.attempt,
            }],
            nack,
        };
        Ok(self.call(&req).await?.applied > 0)
    }
}

/// A member of a consumer group: deliveries arrive in order through
/// [`next`](Self::next) until the subscription is cancelled.
///
/// **Resubscription.** When the daemon resets the stream (the pubsub module
/// crashed or was restarted: the stream ends with UNAVAILABLE; or the
/// connection left more pushes unread than the daemon queues: the stream
/// ends with RESOURCE_EXHAUSTED), the subscription subscribes again,
/// transparently, with the same options. The
/// module then delivers again every message this member had not
/// acknowledged, so nothing acknowledged is lost and nothing unacknowledged
/// is skipped — deliveries may repeat, as at-least-once allows. Only when
/// the connection itself closes (or resubscribing fails within the client's
/// timeout) does `next` return the error; the caller then connects and
/// subscribes again.
pub struct PubsubSubscription {
    inner: Resubscribing<SubscribeRequest>,
}

impl std::fmt::Debug for PubsubSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.debug("PubsubSubscription", f)
    }
}

impl PubsubSubscription {
    /// The next delivery; `None` once the subscription was cancelled. An
    /// error other than a stream reset ends the subscription: later calls
    /// return `None`. Cancel-safe: dropping the future loses no delivery
    /// and leaves no stream behind.
    pub async fn next(&mut self) -> Option<Result<Delivery, Error>> {
        self.inner.next().await
    }

    /// Acknowledges `delivery` (see [`Client::ack`]).
    pub async fn ack(&self, delivery: &Delivery) -> Result<bool, Error> {
        self.inner.client().ack(delivery).await
    }

    /// Rejects `delivery` (see [`Client::nack`]).
    pub async fn nack(&self, delivery: &Delivery) -> Result<bool, Error> {
        self.inner.client().nack(delivery).await
    }

    /// Ends the subscription: the module stops delivering, and the
    /// deliveries this member did not acknowledge go to the other members of
    /// its group. `next` then returns `None`.
    pub async fn cancel(&mut self) -> Result<(), Error> {
        self.inner.cancel().await
    }

    /// The consumer group this subscription is a member of.
    pub fn group(&self) -> &str {
        &self.inner.reply().group
    }

    /// The store serving the subscription.
    pub fn store(&self) -> &str {
        &self.inner.reply().store
    }

    /// How many times the subscription subscribed again after a reset.
    pub fn resubscribes(&self) -> u64 {
        self.inner.resubscribes()
    }
}

impl crate::blocking::Client {
    blocking_calls! {
        /// Publishes `data` to `topic`; see [`crate::Client::publish`].
        fn publish(store: &str, topic: &str, data: Vec<u8>, options: PublishOptions) -> PublishReply;
        /// Acknowledges a delivery; see [`crate::Client::ack`].
        fn ack(delivery: &Delivery) -> bool;
        /// Rejects a delivery; see [`crate::Client::nack`].
        fn nack(delivery: &Delivery) -> bool;
    }

    /// Joins a consumer group; see [`crate::Client::subscribe`].
    pub fn subscribe(
        &self,
        store: &str,
        topic: &str,
        group: &str,
        options: SubscribeOptions,
    ) -> Result<BlockingPubsubSubscription<'_>, Error> {
        let request = SubscribeRequest {
            store: store.into(),
            topic: topic.into(),
            group: group.into(),
            max_in_flight: options.max_in_flight,
            ack_deadline_ms: ack_deadline_ms(options.ack_deadline),
        };
        Ok(BlockingPubsubSubscription {
            inner: Blocking::subscribe(self, request)?,
        })
    }
}

/// A [`PubsubSubscription`] for code without a runtime, borrowed from the
/// blocking client whose runtime drives it. Dropping it cancels the stream
/// (waiting up to a second for the daemon), so its unacknowledged
/// deliveries go to the other members of the group at once.
pub struct BlockingPubsubSubscription<'a> {
    inner: Blocking<'a, SubscribeRequest>,
}

impl BlockingPubsubSubscription<'_> {
    /// The next delivery, waiting for it; see [`PubsubSubscription::next`].
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<Delivery, Error>> {
        self.inner.next()
    }

    /// The next delivery if one comes within `timeout`; `None` on timeout
    /// as well as when the subscription ended.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<Delivery, Error>> {
        self.inner.next_timeout(timeout)
    }

    /// Acknowledges a delivery; see [`crate::Client::ack`].
    pub fn ack(&self, delivery: &Delivery) -> Result<bool, Error> {
        let client = self.inner.inner()?.client();
        self.inner.rt.block_on(client.ack(delivery))
    }

    /// Rejects a delivery; see [`crate::Client::nack`].
    pub fn nack(&self, delivery: &Delivery) -> Result<bool, Error> {
        let client = self.inner.inner()?.client();
        self.inner.rt.block_on(client.nack(delivery))
    }

    /// Ends the subscription; see [`PubsubSubscription::cancel`].
    pub fn cancel(&mut self) -> Result<(), Error> {
        self.inner.cancel()
    }

    /// The consumer group this subscription is a member of.
    pub fn group(&self) -> &str {
        self.inner.inner().map_or("", |s| s.reply().group.as_str())
    }

    /// How many times the subscription subscribed again after a reset.
    pub fn resubscribes(&self) -> u64 {
        self.inner.resubscribes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_is_not_idempotent_and_acks_are() {
        let publish = PublishRequest {
            store: String::new(),
            topic: "t".into(),
            data: Vec::new(),
            content_type: String::new(),
            metadata: Vec::new(),
            raw: false,
        };
        assert!(!publish.is_idempotent());
        let mut ack = AckRequest {
            store: String::new(),
            topic: "t".into(),
            group: String::new(),
            items: vec![AckItem {
                offset: 1,
                attempt: 1,
            }],
            nack: false,
        };
        assert!(ack.is_idempotent());
        ack.nack = true;
        assert!(ack.is_idempotent());
    }

    #[test]
    fn opcodes_match_the_spec() {
        assert_eq!(PublishRequest::OPCODE, Opcode::PUBSUB_PUBLISH);
        assert_eq!(AckRequest::OPCODE, Opcode::PUBSUB_ACK);
    }

    #[test]
    fn options_build() {
        let options = Client::publish_options()
            .content_type("text/plain")
            .metadata("partitionKey", "k")
            .raw(true);
        assert_eq!(
            options,
            PublishOptions {
                content_type: "text/plain".into(),
                metadata: vec![("partitionKey".into(), "k".into())],
                raw: true,
            }
        );
        let options = Client::subscribe_options()
            .max_in_flight(8)
            .ack_deadline(Duration::from_millis(250));
        assert_eq!(options.max_in_flight, 8);
        assert_eq!(options.ack_deadline, Some(Duration::from_millis(250)));
    }

    #[test]
    fn ack_request_encodes_in_field_order() {
        let bytes = mecha_abi::encode(&AckRequest {
            store: String::new(),
            topic: "t".into(),
            group: "g".into(),
            items: vec![AckItem {
                offset: 7,
                attempt: 2,
            }],
            nack: true,
        })
        .expect("encodes");
        let mut expected = Vec::new();
        expected.extend_from_slice(&0u64.to_le_bytes()); // store ""
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(b"t");
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(b"g");
        expected.extend_from_slice(&1u64.to_le_bytes()); // one item
        expected.extend_from_slice(&7u64.to_le_bytes());
        expected.extend_from_slice(&2u32.to_le_bytes());
        expected.push(1); // nack
        assert_eq!(bytes, expected);
    }
}
