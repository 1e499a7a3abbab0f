//! Bindings calls of the Rust client (async and blocking): running an
//! operation of an output binding, and subscribing to an input binding's
//! events, which are acknowledged like pub/sub deliveries. Subscriptions
//! survive module restarts: when the daemon resets the stream, the
//! subscription subscribes again by itself, and the module delivers every
//! unacknowledged event again.
//!
//! ```no_run
//! use mecha_client::blocking::Client;
//!
//! fn main() -> Result<(), mecha_client::Error> {
//!     let client = Client::connect("/tmp/mecha.sock")?;
//!     let metadata = vec![("fileName".to_string(), "report.txt".to_string())];
//!     client.invoke_binding("files", "create", b"hello".to_vec(), metadata)?;
//!
//!     let mut ticks = client.subscribe_binding("nightly", Default::default())?;
//!     while let Some(event) = ticks.next() {
//!         let event = event?;
//!         // Handle the event, then acknowledge it; an unacknowledged event
//!         // comes again after its ack deadline (at least once).
//!         ticks.ack(&event)?;
//!     }
//!     Ok(())
//! }
//! ```

use std::time::Duration;

use mecha_abi::msg::{
    AckItem, AckReply, BindingAckRequest, BindingEvent, BindingSubscribeReply,
    BindingSubscribeRequest, InvokeBindingReply, InvokeBindingRequest,
};
use mecha_abi::Opcode;

use crate::acked::{ack_deadline_ms, Blocking, Resubscribing, SubscribeCall};
use crate::request::Request;
use crate::{Client, Error};

// An operation answered UNAVAILABLE (the module died with it in flight) may
// have taken effect outside (a file written, an HTTP POST sent), and the
// daemon never resends it (SPEC §7.9.1); so it is retried only when the
// caller opts in (`RetryPolicy::retry_non_idempotent`), knowing that the
// operation may then run twice.
impl Request for InvokeBindingRequest {
    const OPCODE: Opcode = Opcode::BINDING_INVOKE;
    type Reply = InvokeBindingReply;
    fn is_idempotent(&self) -> bool {
        false
    }
}

// An ack is idempotent for the same reasons as a pub/sub ack: acknowledging
// an event twice leaves it acknowledged, and a nack names the delivery's
// attempt, which is no longer outstanding once the nack took effect.
impl Request for BindingAckRequest {
    const OPCODE: Opcode = Opcode::BINDING_ACK;
    type Reply = AckReply;
    fn is_idempotent(&self) -> bool {
        true
    }
}

impl SubscribeCall for BindingSubscribeRequest {
    const OPCODE: Opcode = Opcode::BINDING_SUBSCRIBE;
    type Reply = BindingSubscribeReply;
    type Push = BindingEvent;
}

/// Options of a binding subscription.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindingSubscribeOptions {
    /// The most events the subscriber holds unacknowledged; the module sends
    /// no more until some are acknowledged. 0 means 64, at most 1024
    /// ([`mecha_abi::msg::BINDING_MAX_IN_FLIGHT`]). Values above 256 can
    /// make the client drop pushes it has no room for (they are delivered
    /// again after the ack deadline).
    pub max_in_flight: u32,
    /// How long an event may stay unacknowledged before it is delivered
    /// again; `None` means the binding's default (30 s). Sent in whole
    /// milliseconds.
    pub ack_deadline: Option<Duration>,
}

impl BindingSubscribeOptions {
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

    fn request(self, name: &str) -> BindingSubscribeRequest {
        BindingSubscribeRequest {
            name: name.into(),
            max_in_flight: self.max_in_flight,
            ack_deadline_ms: ack_deadline_ms(self.ack_deadline),
        }
    }
}

impl Client {
    /// Options for [`Client::subscribe_binding`], to adjust with their
    /// builder methods; the same as `BindingSubscribeOptions::default()`.
    pub fn binding_subscribe_options() -> BindingSubscribeOptions {
        BindingSubscribeOptions::default()
    }

    /// Runs `operation` on the output binding `name` with `data` as its
    /// input and `metadata` as its parameters, by the names the binding's
    /// type defines (`deploy/COMPONENTS.md`), and returns the result.
    ///
    /// Not retried by default: an operation answered UNAVAILABLE may have
    /// taken effect outside (see [`RetryPolicy`](crate::RetryPolicy)).
    pub async fn invoke_binding(
        &self,
        name: &str,
        operation: &str,
        data: impl Into<Vec<u8>>,
        metadata: Vec<(String, String)>,
    ) -> Result<InvokeBindingReply, Error> {
        let req = InvokeBindingRequest {
            name: name.into(),
            operation: operation.into(),
            data: data.into(),
            metadata,
        };
        self.call(&req).await
    }

    /// Subscribes to the input binding `name` and returns the subscription.
    /// Every tenant allowed to use the binding receives each event once;
    /// the subscribers of one tenant share them (each goes to one of them).
    pub async fn subscribe_binding(
        &self,
        name: &str,
        options: BindingSubscribeOptions,
    ) -> Result<BindingSubscription, Error> {
        Ok(BindingSubscription {
            inner: Resubscribing::subscribe(self, options.request(name)).await?,
        })
    }

    /// Acknowledges `event`: it is never delivered to this tenant again.
    /// Works from any connection of the tenant. Returns false when the
    /// event was already acknowledged.
    pub async fn ack_binding(&self, event: &BindingEvent) -> Result<bool, Error> {
        self.settle_binding(event, false).await
    }

    /// Rejects `event`: it is delivered again at once (to any subscriber of
    /// the tenant). Returns false when `event` is no longer the event's
    /// outstanding delivery (it was acknowledged, or already delivered
    /// again).
    pub async fn nack_binding(&self, event: &BindingEvent) -> Result<bool, Error> {
        self.settle_binding(event, true).await
    }

    async fn settle_binding(&self, event: &BindingEvent, nack: bool) -> Result<bool, Error> {
        let req = ack_request(event, nack);
        Ok(self.call(&req).await?.applied > 0)
    }
}

/// The BINDING_ACK naming `event`'s delivery.
fn ack_request(event: &BindingEvent, nack: bool) -> BindingAckRequest {
    BindingAckRequest {
        name: event.name.clone(),
        items: vec![AckItem {
            offset: event.offset,
            attempt: event.attempt,
        }],
        nack,
    }
}

/// A subscriber of an input binding: events arrive through
/// [`next`](Self::next) until the subscription is cancelled.
///
/// **Resubscription.** When the daemon resets the stream (the bindings
/// module crashed or was restarted: the stream ends with UNAVAILABLE; or the
/// connection left more pushes unread than the daemon queues: the stream
/// ends with RESOURCE_EXHAUSTED), the subscription subscribes again,
/// transparently, with the same options; the module then delivers again
/// every event this subscriber had not acknowledged. Only when the
/// connection itself closes (or resubscribing fails within the client's
/// timeout) does `next` return the error.
pub struct BindingSubscription {
    inner: Resubscribing<BindingSubscribeRequest>,
}

impl std::fmt::Debug for BindingSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.debug("BindingSubscription", f)
    }
}

impl BindingSubscription {
    /// The next event; `None` once the subscription was cancelled. An error
    /// other than a stream reset ends the subscription: later calls return
    /// `None`. Cancel-safe: dropping the future loses no event and leaves no
    /// stream behind.
    pub async fn next(&mut self) -> Option<Result<BindingEvent, Error>> {
        self.inner.next().await
    }

    /// Acknowledges `event` (see [`Client::ack_binding`]).
    pub async fn ack(&self, event: &BindingEvent) -> Result<bool, Error> {
        self.inner.client().ack_binding(event).await
    }

    /// Rejects `event` (see [`Client::nack_binding`]).
    pub async fn nack(&self, event: &BindingEvent) -> Result<bool, Error> {
        self.inner.client().nack_binding(event).await
    }

    /// Ends the subscription: the module stops delivering, and the events
    /// this subscriber did not acknowledge go to the tenant's other
    /// subscribers. `next` then returns `None`.
    pub async fn cancel(&mut self) -> Result<(), Error> {
        self.inner.cancel().await
    }

    /// The binding subscribed to.
    pub fn name(&self) -> &str {
        &self.inner.reply().name
    }

    /// The subscription's id in the module's logs (it changes when the
    /// subscription subscribes again).
    pub fn subscription_id(&self) -> u64 {
        self.inner.reply().subscription_id
    }

    /// How many times the subscription subscribed again after a reset.
    pub fn resubscribes(&self) -> u64 {
        self.inner.resubscribes()
    }
}

impl crate::blocking::Client {
    blocking_calls! {
        /// Runs an operation of an output binding; see
        /// [`crate::Client::invoke_binding`].
        fn invoke_binding(name: &str, operation: &str, data: Vec<u8>, metadata: Vec<(String, String)>) -> InvokeBindingReply;
        /// Acknowledges an event; see [`crate::Client::ack_binding`].
        fn ack_binding(event: &BindingEvent) -> bool;
        /// Rejects an event; see [`crate::Client::nack_binding`].
        fn nack_binding(event: &BindingEvent) -> bool;
    }

    /// Subscribes to an input binding; see
    /// [`crate::Client::subscribe_binding`].
    pub fn subscribe_binding(
        &self,
        name: &str,
        options: BindingSubscribeOptions,
    ) -> Result<BlockingBindingSubscription<'_>, Error> {
        Ok(BlockingBindingSubscription {
            inner: Blocking::subscribe(self, options.request(name))?,
        })
    }
}

/// A [`BindingSubscription`] for code without a runtime, borrowed from the
/// blocking client whose runtime drives it. Dropping it cancels the stream
/// (waiting up to a second for the daemon), so its unacknowledged events go
/// to the tenant's other subscribers at once.
pub struct BlockingBindingSubscription<'a> {
    inner: Blocking<'a, BindingSubscribeRequest>,
}

impl BlockingBindingSubscription<'_> {
    /// The next event, waiting for it; see [`BindingSubscription::next`].
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<BindingEvent, Error>> {
        self.inner.next()
    }

    /// The next event if one comes within `timeout`; `None` on timeout as
    /// well as when the subscription ended.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<BindingEvent, Error>> {
        self.inner.next_timeout(timeout)
    }

    /// Acknowledges an event; see [`crate::Client::ack_binding`].
    pub fn ack(&self, event: &BindingEvent) -> Result<bool, Error> {
        let client = self.inner.inner()?.client();
        self.inner.rt.block_on(client.ack_binding(event))
    }

    /// Rejects an event; see [`crate::Client::nack_binding`].
    pub fn nack(&self, event: &BindingEvent) -> Result<bool, Error> {
        let client = self.inner.inner()?.client();
        self.inner.rt.block_on(client.nack_binding(event))
    }

    /// Ends the subscription; see [`BindingSubscription::cancel`].
    pub fn cancel(&mut self) -> Result<(), Error> {
        self.inner.cancel()
    }

    /// The binding subscribed to.
    pub fn name(&self) -> &str {
        self.inner.inner().map_or("", |s| s.reply().name.as_str())
    }

    /// How many times the subscription subscribed again after a reset.
    pub fn resubscribes(&self) -> u64 {
        self.inner.resubscribes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> BindingEvent {
        BindingEvent {
            name: "nightly".into(),
            offset: 4,
            attempt: 2,
            data: Vec::new(),
            metadata: vec![("time".into(), "2026-12-07T02:00:00Z".into())],
        }
    }

    #[test]
    fn invoke_is_not_idempotent_and_acks_are() {
        let invoke = InvokeBindingRequest {
            name: "files".into(),
            operation: "get".into(),
            data: Vec::new(),
            metadata: Vec::new(),
        };
        assert!(!invoke.is_idempotent());
        assert!(ack_request(&event(), false).is_idempotent());
        assert!(ack_request(&event(), true).is_idempotent());
    }

    #[test]
    fn opcodes_match_the_spec() {
        assert_eq!(InvokeBindingRequest::OPCODE, Opcode::BINDING_INVOKE);
        assert_eq!(BindingAckRequest::OPCODE, Opcode::BINDING_ACK);
        assert_eq!(
            <BindingSubscribeRequest as SubscribeCall>::OPCODE,
            Opcode::BINDING_SUBSCRIBE
        );
        assert_eq!(Opcode::BINDING_INVOKE.0, 0x0801);
        assert_eq!(Opcode::BINDING_SUBSCRIBE.0, 0x0802);
        assert_eq!(Opcode::BINDING_ACK.0, 0x0803);
    }

    #[test]
    fn options_build_the_request() {
        let request = Client::binding_subscribe_options()
            .max_in_flight(8)
            .ack_deadline(Duration::from_millis(250))
            .request("nightly");
        assert_eq!(
            request,
            BindingSubscribeRequest {
                name: "nightly".into(),
                max_in_flight: 8,
                ack_deadline_ms: 250,
            }
        );
        // No deadline is the binding's default, which the wire spells 0.
        assert_eq!(
            BindingSubscribeOptions::default()
                .request("nightly")
                .ack_deadline_ms,
            0
        );
    }

    #[test]
    fn an_ack_names_the_events_delivery() {
        let ack = ack_request(&event(), true);
        assert_eq!(
            ack,
            BindingAckRequest {
                name: "nightly".into(),
                items: vec![AckItem {
                    offset: 4,
                    attempt: 2
                }],
                nack: true,
            }
        );
        // The payload as SPEC §4.1 lays it out: name, items, nack.
        let mut expected = Vec::new();
        expected.extend_from_slice(&7u64.to_le_bytes());
        expected.extend_from_slice(b"nightly");
        expected.extend_from_slice(&1u64.to_le_bytes()); // one item
        expected.extend_from_slice(&4u64.to_le_bytes());
        expected.extend_from_slice(&2u32.to_le_bytes());
        expected.push(1); // nack
        assert_eq!(mecha_abi::encode(&ack).expect("encodes"), expected);
    }
}
