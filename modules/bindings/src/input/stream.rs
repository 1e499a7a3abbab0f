//! One BINDING_SUBSCRIBE stream: a task that takes the subscriber's next
//! delivery from the broker and pushes it as a `BindingEvent`, until the
//! application cancels the stream or goes away (its unacknowledged events
//! then go back to its tenant's group) or this instance is retired (the
//! stream ends with UNAVAILABLE so the client subscribes again).

use mecha_abi::msg::BindingEvent;
use mecha_mod_pubsub::broker::Subscriber;
use mecha_module::{Ctx, Status, Stream};

use crate::error::BindingError;

/// Pushes events to one subscriber's stream until it ends.
///
/// Backpressure: `Subscriber::next` hands out nothing while the subscriber
/// holds `max_in_flight` unacknowledged events, and `Stream::push` waits
/// while the link to the daemon is full, so a slow consumer pauses this
/// task rather than growing a buffer.
pub async fn serve(ctx: Ctx, mut stream: Stream, name: String, subscriber: Subscriber) {
    loop {
        let next = tokio::select! {
            // Draining first: a retired instance also cancels its streams,
            // and their events must not count as failed deliveries.
            biased;
            () = ctx.draining() => {
                subscriber.retire();
                stream
                    .end(
                        Status::Unavailable,
                        "the bindings module instance is being replaced; subscribe again",
                    )
                    .await;
                return;
            }
            () = stream.cancelled() => return,
            next = subscriber.next() => next,
        };
        let delivery = match next {
            Ok(delivery) => delivery,
            Err(e) => {
                let e = BindingError::from(e);
                stream.end(e.status(), &e.to_string()).await;
                return;
            }
        };
        let event = BindingEvent {
            name: name.clone(),
            offset: delivery.offset,
            attempt: delivery.attempt,
            data: delivery.data,
            metadata: delivery.metadata,
        };
        let bytes = match mecha_abi::encode(&event) {
            Ok(bytes) => bytes,
            Err(e) => {
                // The event stays in flight and is delivered again at its
                // deadline; the stream ends so the failure is visible.
                let message = format!("encoding an event failed: {e}");
                stream.end(Status::Internal, &message).await;
                return;
            }
        };
        if stream.push(bytes).await.is_err() {
            return;
        }
    }
}
