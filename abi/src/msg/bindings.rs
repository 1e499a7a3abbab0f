//! Payloads of the bindings family (`0x08`).
//!
//! A binding connects applications to a system outside mecha, configured as
//! a component of type `bindings.*`. An **output** binding runs an operation
//! (BINDING_INVOKE: an HTTP request, a SQL statement, a file write, …) and
//! answers its result. An **input** binding turns outside events (cron ticks,
//! stream entries) into a server-push stream opened with BINDING_SUBSCRIBE.
//! Every tenant allowed to use an input binding receives every event once per
//! tenant: the subscribers of one tenant compete for its events, as the
//! members of one pub/sub consumer group do. Delivery is at least once: an
//! event stays outstanding until BINDING_ACK acknowledges it, and is
//! delivered again after a negative acknowledgement, when its ack deadline
//! passes or when its subscriber goes away.

use serde::{Deserialize, Serialize};

use super::AckItem;

/// The most events one subscriber may have unacknowledged at once. Larger
/// values are INVALID_ARGUMENT: the limit bounds the memory a subscriber can
/// make the module and the daemon hold for it.
pub const BINDING_MAX_IN_FLIGHT: u32 = 1024;

/// BINDING_INVOKE request: run `operation` on the output binding `name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvokeBindingRequest {
    /// The binding's component name, non-empty.
    pub name: String,
    /// The operation, as the binding's type defines them (`get`, `post`,
    /// `create`, `exec`, `query`, …).
    pub operation: String,
    /// The operation's input, opaque to the daemon; each binding type says
    /// how it reads it (a request body, a file's contents, a SQL statement's
    /// parameters are in `metadata`).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Per-operation parameters, by the names the binding's type defines
    /// (`path`, `fileName`, `sql`, `key`, …).
    pub metadata: Vec<(String, String)>,
}

/// BINDING_INVOKE response: the operation's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvokeBindingReply {
    /// The result body (a response body, a file's contents, rows as JSON);
    /// empty for operations without one.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Facts about the result, by the names the binding's type defines (an
    /// HTTP `statusCode` and response headers, `rowsAffected`, …).
    pub metadata: Vec<(String, String)>,
}

/// BINDING_SUBSCRIBE request: open a stream of the input binding's events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingSubscribeRequest {
    /// The binding's component name, non-empty.
    pub name: String,
    /// The most events this subscriber may hold unacknowledged; 0 means 64,
    /// at most [`BINDING_MAX_IN_FLIGHT`].
    pub max_in_flight: u32,
    /// How long an event may stay unacknowledged before it is delivered
    /// again, in milliseconds; 0 means the binding's default (30000).
    pub ack_deadline_ms: u32,
}

/// The opening answer of BINDING_SUBSCRIBE; [`BindingEvent`] pushes follow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingSubscribeReply {
    /// Identifies this subscriber in the module's logs; unique per module
    /// instance.
    pub subscription_id: u64,
    /// The binding subscribed to.
    pub name: String,
}

/// One push of a BINDING_SUBSCRIBE stream: an event handed to this
/// subscriber, to be acknowledged with BINDING_ACK.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingEvent {
    /// The binding the event came from.
    pub name: String,
    /// The event's position in the tenant's sequence of the binding's
    /// events; with `attempt`, it identifies the delivery in BINDING_ACK.
    pub offset: u64,
    /// 1 for the first delivery of the event to this tenant, then one more
    /// each time it is delivered again.
    pub attempt: u32,
    /// The event's body (empty for a cron tick).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Facts about the event, by the names the binding's type defines (a
    /// cron tick's `time`, a stream entry's `id` and fields, …).
    pub metadata: Vec<(String, String)>,
}

/// BINDING_ACK request: acknowledge (or, with `nack`, reject) events of one
/// input binding. Answered with an [`AckReply`](super::AckReply).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingAckRequest {
    /// The binding's component name, non-empty.
    pub name: String,
    /// The deliveries, as their pushes identified them (`offset`, `attempt`).
    pub items: Vec<AckItem>,
    /// False: the events were processed, never deliver them to this tenant
    /// again. True: they were not, deliver them again now.
    pub nack: bool,
}
