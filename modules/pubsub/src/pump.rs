//! The task behind one subscription stream: takes the member's next delivery
//! and pushes it, until the application cancels the stream or goes away (its
//! unacknowledged deliveries then go back to its group) or the module
//! instance is retired (the stream ends with UNAVAILABLE so the client
//! subscribes again). The pubsub module pushes deliveries as they are; the
//! bindings module, whose input events travel through a broker of its own,
//! pushes them as its own event type.

use mecha_abi::msg::Delivery;
use mecha_module::{Ctx, Status, Stream};
use serde::Serialize;

use crate::error::PubsubError;
use crate::store::Subscription;

/// Pushes `subscriber`'s deliveries on `stream`, each as `push` makes it,
/// until the stream ends. `module` names the module in the message a
/// retired instance ends its streams with; `fail` gives the status and
/// message a broker failure ends the stream with.
///
/// Backpressure: the member hands out nothing while it holds its
/// `max_in_flight` unacknowledged deliveries, and `Stream::push` waits
/// while the link to the daemon is full, so a slow consumer pauses this
/// task instead of growing a buffer. A push the daemon or the client drops
/// for lack of room is delivered again when its ack deadline passes.
pub async fn pump<T: Serialize>(
    ctx: Ctx,
    mut stream: Stream,
    subscriber: Subscription,
    module: &str,
    push: impl Fn(Delivery) -> T,
    fail: impl Fn(PubsubError) -> (Status, String),
) {
    loop {
        let next = tokio::select! {
            // Draining is checked first: a retired instance also cancels its
            // streams, and its members did nothing wrong, so their
            // deliveries must not count as failed.
            biased;
            () = ctx.draining() => {
                subscriber.retire();
                let message =
                    format!("the {module} module instance is being replaced; subscribe again");
                stream.end(Status::Unavailable, &message).await;
                return;
            }
            // Dropping the subscriber gives its deliveries back, counted as
            // failed.
            () = stream.cancelled() => return,
            next = subscriber.next() => next,
        };
        let delivery = match next {
            Ok(delivery) => delivery,
            Err(e) => {
                let (status, message) = fail(e);
                stream.end(status, &message).await;
                return;
            }
        };
        let bytes = match mecha_abi::encode(&push(delivery)) {
            Ok(bytes) => bytes,
            Err(e) => {
                // The delivery stays in flight and is delivered again at its
                // deadline; the stream ends so the failure is visible.
                let message = format!("encoding a delivery failed: {e}");
                stream.end(Status::Internal, &message).await;
                return;
            }
        };
        if stream.push(bytes).await.is_err() {
            return;
        }
    }
}
