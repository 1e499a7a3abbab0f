//! What a server that delivers messages itself must provide
//! ([`Backend`], [`Fetcher`]), and the settings every such store reads the
//! same way. The drivers `pubsub.redis` and `pubsub.jetstream` implement it.

use std::time::Duration;

use futures_util::future::BoxFuture;
use mecha_abi::msg::ComponentSpec;
use mecha_module::metadata::{Metadata, MetadataError};

use crate::error::PubsubError;
use crate::message::Message;

/// A message the server handed to one member, with what acknowledges it.
pub struct Fetched<H> {
    /// The message's offset in its topic (increasing, not consecutive).
    pub offset: u64,
    /// How many times the server has delivered it to the group, this one
    /// included.
    pub attempt: u32,
    /// The stored message.
    pub message: Message,
    /// The driver's handle for acking or nacking this delivery.
    pub handle: H,
}

/// One member's reader: hands out up to `max` messages for the group, new
/// ones or ones the server makes available again. It waits a short while
/// (about a second) when there are none, then answers an empty batch, so
/// that its caller can look at deadlines and cancellation in between.
pub trait Fetcher<H>: Send {
    /// The next batch of at most `max` messages.
    fn fetch(&mut self, max: usize) -> BoxFuture<'_, Result<Vec<Fetched<H>>, PubsubError>>;
}

/// A member's reader, boxed so drivers choose their own type.
pub type BoxFetcher<H> = Box<dyn Fetcher<H>>;

/// What a server-delivered driver provides.
pub trait Backend: Send + Sync + 'static {
    /// What acks or nacks one delivery.
    type Handle: Send + Sync + 'static;

    /// Stores `message` in `topic` of `tenant`; answers its offset.
    fn publish<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        message: &'a Message,
    ) -> BoxFuture<'a, Result<u64, PubsubError>>;

    /// Makes sure `group` exists for `topic` (starting at the oldest
    /// retained message) and opens a reader for one new member of it.
    fn join<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<BoxFetcher<Self::Handle>, PubsubError>>;

    /// Acknowledges a delivery; `handle` is `None` when this module instance
    /// did not hand it out (another instance did, or this one restarted).
    /// Answers whether the ack took effect.
    fn ack<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        group: &'a str,
        offset: u64,
        handle: Option<&'a Self::Handle>,
    ) -> BoxFuture<'a, Result<bool, PubsubError>>;

    /// Ends a delivery as failed, so the server delivers it again promptly.
    fn nack<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        group: &'a str,
        offset: u64,
        handle: &'a Self::Handle,
    ) -> BoxFuture<'a, Result<(), PubsubError>>;
}

/// What a server-delivered store is configured with, beyond its backend.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// The component name.
    pub store: String,
    /// The component type, for error messages (`pubsub.redis`).
    pub kind: String,
    /// The ack deadline of members that name none.
    pub ack_deadline: Duration,
    /// The longest ack deadline a member may ask for: beyond it the server
    /// redelivers on its own (Redis `processingTimeout`, JetStream
    /// `ackWait`), so a longer one cannot be honoured.
    pub max_ack_deadline: Option<Duration>,
    /// The group of members that name none.
    pub default_group: String,
}

impl ServerSettings {
    /// The settings every server-delivered store reads the same way: the
    /// component's name and type, and mecha's `ackDeadlineMs` (30 s by
    /// default), cut to `max_ack_deadline` where the server has one.
    pub fn from_metadata(
        spec: &ComponentSpec,
        md: &Metadata<'_>,
        max_ack_deadline: Option<Duration>,
        default_group: String,
    ) -> Result<Self, MetadataError> {
        let asked = Duration::from_millis(
            md.whole("ackDeadlineMs", 1..=u64::from(u32::MAX))?
                .unwrap_or(30_000),
        );
        Ok(Self {
            store: spec.name.clone(),
            kind: spec.kind.clone(),
            ack_deadline: max_ack_deadline.map_or(asked, |max| asked.min(max)),
            max_ack_deadline,
            default_group,
        })
    }
}
