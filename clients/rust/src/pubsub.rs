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
use mecha_abi::{Opcode, Status};

use crate::request::Request;
use crate::retry::{is_retryable, Backoff, JitterSeed};
use crate::stream::Subscription;
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

/// How long the blocking subscription waits for its stream to be cancelled
/// when it is dropped. The cancel only speeds up redelivery of what it held,
/// so a slow daemon is not waited for long.
const DROP_CANCEL_WAIT: Duration = Duration::from_secs(1);

/// The longest pause between two resubscriptions whose streams ended
/// without delivering anything (see [`PubsubSubscription::next`]).
const MAX_RESUBSCRIBE_PAUSE: Duration = Duration::from_secs(1);

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
            ack_deadline_ms: options.ack_deadline.map_or(0, |d| {
                u32::try_from(d.as_millis().max(1)).unwrap_or(u32::MAX)
            }),
        };
        let (reply, stream) = open(self, &request).await?;
        Ok(PubsubSubscription {
            client: self.clone(),
            request,
            reply,
            link: Link::Open(stream),
            resubscribes: 0,
            pause: Duration::ZERO,
            delivered: false,
            cancelled: false,
            finished: false,
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

/// Opens one subscription stream, retrying UNAVAILABLE (a module that died
/// with the request in flight, or is marked failed) within the client's
/// timeout. Subscribing is idempotent: joining a group twice only adds a
/// member, and a stream that was opened but whose answer was lost is
/// cancelled when the connection learns nothing of it.
async fn open(
    client: &Client,
    request: &SubscribeRequest,
) -> Result<(SubscribeReply, Subscription), Error> {
    let payload = mecha_abi::encode(request).map_err(|e| Error::Protocol(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + client.timeout();
    let policy = client.retry_policy();
    let mut backoff: Option<Backoff> = None;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let err = match client
            .open_stream(Opcode::PUBSUB_SUBSCRIBE, payload.clone())
            .await
        {
            Ok((body, stream)) => {
                let reply = mecha_abi::decode(&body).map_err(|e| Error::Protocol(e.to_string()))?;
                return Ok((reply, stream));
            }
            Err(e) => e,
        };
        if !is_retryable(&err) || !policy.allows_another(attempts) {
            return Err(err);
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let pause = backoff
            .get_or_insert_with(|| Backoff::new(&policy, JitterSeed::from_clock().next()))
            .next_pause(remaining);
        if remaining <= pause {
            return Err(err);
        }
        tokio::time::sleep(pause).await;
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
    client: Client,
    request: SubscribeRequest,
    reply: SubscribeReply,
    link: Link,
    resubscribes: u64,
    /// The pause before the next resubscription; it grows while streams end
    /// without delivering anything, so a stream that keeps ending at once
    /// cannot turn into a busy loop.
    pause: Duration,
    /// Whether the current stream delivered anything.
    delivered: bool,
    cancelled: bool,
    finished: bool,
}

/// Where a subscription's stream stands.
enum Link {
    /// The stream is open.
    Open(Subscription),
    /// A resubscription runs in a task of its own, so that a caller
    /// dropping `next` (a timeout) cannot abandon a stream the module has
    /// already opened: the next `next` picks the result up, and if nobody
    /// does, dropping the finished task's result cancels the stream.
    Opening(tokio::task::JoinHandle<Result<(SubscribeReply, Subscription), Error>>),
    /// Nothing is open; the next `next` subscribes again.
    Closed,
}

impl std::fmt::Debug for PubsubSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubsubSubscription")
            .field("request", &self.request)
            .field("reply", &self.reply)
            .field("resubscribes", &self.resubscribes)
            .finish_non_exhaustive()
    }
}

impl PubsubSubscription {
    /// The next delivery; `None` once the subscription was cancelled. An
    /// error other than a stream reset ends the subscription: later calls
    /// return `None`. Cancel-safe: dropping the future loses no delivery
    /// and leaves no stream behind.
    pub async fn next(&mut self) -> Option<Result<Delivery, Error>> {
        loop {
            if self.finished {
                return None;
            }
            let stream = match &mut self.link {
                Link::Open(stream) => stream,
                Link::Closed => {
                    let (client, request) = (self.client.clone(), self.request.clone());
                    let pause = self.pause;
                    self.link = Link::Opening(tokio::spawn(async move {
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                        open(&client, &request).await
                    }));
                    continue;
                }
                Link::Opening(task) => {
                    let opened = match task.await {
                        Ok(opened) => opened,
                        Err(e) => Err(Error::Closed(format!("resubscribing failed: {e}"))),
                    };
                    match opened {
                        Ok((reply, stream)) => {
                            self.reply = reply;
                            self.link = Link::Open(stream);
                            self.resubscribes += 1;
                        }
                        Err(e) => {
                            self.link = Link::Closed;
                            self.finished = true;
                            return Some(Err(e));
                        }
                    }
                    continue;
                }
            };
            match stream.next().await {
                Some(Ok(push)) => {
                    self.delivered = true;
                    return Some(
                        mecha_abi::decode(&push).map_err(|e| Error::Protocol(e.to_string())),
                    );
                }
                // UNAVAILABLE: the module instance went away (crash, hot
                // restart). RESOURCE_EXHAUSTED: the daemon ended the stream
                // because this connection left too many pushes unread. Both
                // say "subscribe again"; the module redelivers what was not
                // acknowledged.
                Some(Err(e))
                    if matches!(
                        e.status(),
                        Some(Status::Unavailable | Status::ResourceExhausted)
                    ) =>
                {
                    self.reset()
                }
                Some(Err(e)) => {
                    self.finished = true;
                    return Some(Err(e));
                }
                // An END with OK is only sent for a stream this side
                // cancelled; without a cancel, the end was a reset whose END
                // frame the client had no room for.
                None if self.cancelled => {
                    self.finished = true;
                    return None;
                }
                None => self.reset(),
            }
        }
    }

    /// Forgets the stream that ended, to subscribe again on the next `next`.
    fn reset(&mut self) {
        self.link = Link::Closed;
        self.pause = if self.delivered {
            Duration::ZERO
        } else {
            (self.pause * 2)
                .max(Duration::from_millis(10))
                .min(MAX_RESUBSCRIBE_PAUSE)
        };
        self.delivered = false;
    }

    /// Acknowledges `delivery` (see [`Client::ack`]).
    pub async fn ack(&self, delivery: &Delivery) -> Result<bool, Error> {
        self.client.ack(delivery).await
    }

    /// Rejects `delivery` (see [`Client::nack`]).
    pub async fn nack(&self, delivery: &Delivery) -> Result<bool, Error> {
        self.client.nack(delivery).await
    }

    /// Ends the subscription: the module stops delivering, and the
    /// deliveries this member did not acknowledge go to the other members of
    /// its group. `next` then returns `None`.
    pub async fn cancel(&mut self) -> Result<(), Error> {
        self.cancelled = true;
        match &self.link {
            Link::Open(stream) => stream.cancel().await,
            // A resubscription in flight is left to finish on its own: its
            // stream is cancelled when its result is dropped with the task.
            Link::Opening(_) | Link::Closed => {
                self.link = Link::Closed;
                self.finished = true;
                Ok(())
            }
        }
    }

    /// The consumer group this subscription is a member of.
    pub fn group(&self) -> &str {
        &self.reply.group
    }

    /// The store serving the subscription.
    pub fn store(&self) -> &str {
        &self.reply.store
    }

    /// How many times the subscription subscribed again after a reset.
    pub fn resubscribes(&self) -> u64 {
        self.resubscribes
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
        let inner = self
            .rt
            .block_on(self.inner.subscribe(store, topic, group, options))?;
        Ok(BlockingPubsubSubscription {
            rt: &self.rt,
            inner: Some(inner),
        })
    }
}

/// A [`PubsubSubscription`] for code without a runtime, borrowed from the
/// blocking client whose runtime drives it. Dropping it cancels the stream
/// (waiting up to a second for the daemon), so its unacknowledged
/// deliveries go to the other members of the group at once.
pub struct BlockingPubsubSubscription<'a> {
    rt: &'a tokio::runtime::Runtime,
    /// Always `Some` until dropped.
    inner: Option<PubsubSubscription>,
}

impl BlockingPubsubSubscription<'_> {
    /// The next delivery, waiting for it; see [`PubsubSubscription::next`].
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<Delivery, Error>> {
        let inner = self.inner.as_mut()?;
        self.rt.block_on(inner.next())
    }

    /// The next delivery if one comes within `timeout`; `None` on timeout
    /// as well as when the subscription ended.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<Delivery, Error>> {
        let inner = self.inner.as_mut()?;
        self.rt
            .block_on(async { tokio::time::timeout(timeout, inner.next()).await })
            .ok()
            .flatten()
    }

    /// Acknowledges a delivery; see [`crate::Client::ack`].
    pub fn ack(&self, delivery: &Delivery) -> Result<bool, Error> {
        let inner = self.inner()?;
        self.rt.block_on(inner.ack(delivery))
    }

    /// Rejects a delivery; see [`crate::Client::nack`].
    pub fn nack(&self, delivery: &Delivery) -> Result<bool, Error> {
        let inner = self.inner()?;
        self.rt.block_on(inner.nack(delivery))
    }

    /// Ends the subscription; see [`PubsubSubscription::cancel`].
    pub fn cancel(&mut self) -> Result<(), Error> {
        match self.inner.as_mut() {
            Some(inner) => self.rt.block_on(inner.cancel()),
            None => Ok(()),
        }
    }

    /// The consumer group this subscription is a member of.
    pub fn group(&self) -> &str {
        self.inner.as_ref().map_or("", PubsubSubscription::group)
    }

    /// How many times the subscription subscribed again after a reset.
    pub fn resubscribes(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, PubsubSubscription::resubscribes)
    }

    fn inner(&self) -> Result<&PubsubSubscription, Error> {
        self.inner
            .as_ref()
            .ok_or_else(|| Error::Closed("the subscription was dropped".into()))
    }
}

impl Drop for BlockingPubsubSubscription<'_> {
    fn drop(&mut self) {
        if let Some(mut inner) = self.inner.take() {
            if inner.finished || inner.cancelled {
                return;
            }
            // Cancelling (rather than letting the stream run until the
            // connection closes) hands the unacknowledged deliveries to the
            // rest of the group now instead of at their ack deadline.
            self.rt.block_on(async move {
                let _ = tokio::time::timeout(DROP_CANCEL_WAIT, inner.cancel()).await;
            });
        }
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
