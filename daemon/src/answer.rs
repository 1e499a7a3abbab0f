//! What every frame queued for an application connection is made of: its
//! guard (`ConnOut`), the connection's outbox (`ConnTx`), and the one way the
//! daemon encodes an error answer.

use bytes::Bytes;
use mecha_abi::msg::ErrorBody;
use mecha_abi::{Header, Status};
use mecha_wire::{OutFrame, Outbox};

/// Every frame queued for a connection carries one in-flight permit, released
/// when the frame has been written, so a connection's queue never holds more
/// than its permits: the router queues answers without waiting.
/// The guard of a request's answer also times it for the metrics.
pub type ConnOut = crate::metrics::Answer;
/// The sending side of a connection's write queue.
pub type ConnTx = Outbox<ConnOut>;

/// Stream pushes (and calls delivered to the application) one connection may
/// have queued for writing. Beyond it pushes are dropped (a client that does
/// not read cannot grow the daemon's memory); each capability's protocol
/// covers the loss (pubsub redelivers).
pub const PUSH_BUDGET: usize = 1024;

/// An encoded `ErrorBody` carrying `message`: the payload of every error
/// answer the daemon writes itself (SPEC §6).
pub fn error_body(message: &str) -> Bytes {
    mecha_abi::encode(&ErrorBody {
        message: message.to_string(),
    })
    .map(Bytes::from)
    .unwrap_or_default()
}

/// Builds an error response to `request` carrying an `ErrorBody`.
pub fn error_frame(
    request: &Header,
    status: Status,
    message: &str,
    guard: ConnOut,
) -> OutFrame<ConnOut> {
    let guard = guard.answered(status.code());
    OutFrame::guarded(
        request.response(status),
        Bytes::new(),
        error_body(message),
        guard,
    )
}
