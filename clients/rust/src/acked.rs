//! At-least-once subscriptions, shared by pub/sub consumer groups and input
//! bindings: a stream of pushes, each acknowledged by its offset and attempt,
//! that subscribes again by itself when the daemon resets it (async and
//! blocking).
//!
//! Both capabilities have the same shape on the wire (a subscribe request
//! that opens a stream, pushes identified by offset and attempt, an ack
//! request answered with `AckReply`) and the same promise (the module
//! delivers again whatever the subscriber had not acknowledged), so the
//! resubscription logic lives here once; `pubsub.rs` and `bindings.rs` wrap
//! it in their own public types.

use std::fmt;
use std::time::Duration;

use mecha_abi::{Opcode, Status};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::retry::{is_retryable, Backoff, JitterSeed};
use crate::stream::Subscription;
use crate::{Client, Error};

/// A request that opens a stream of at-least-once pushes.
pub(crate) trait SubscribeCall:
    Serialize + Clone + fmt::Debug + Send + Sync + 'static
{
    /// The opcode the request is sent with.
    const OPCODE: Opcode;
    /// The opening answer.
    type Reply: DeserializeOwned + fmt::Debug + Send + 'static;
    /// The payload of each push.
    type Push: DeserializeOwned;
}

/// How long a blocking subscription waits for its stream to be cancelled
/// when it is dropped. The cancel only speeds up redelivery of what it held,
/// so a slow daemon is not waited for long.
const DROP_CANCEL_WAIT: Duration = Duration::from_secs(1);

/// The longest pause between two resubscriptions whose streams ended
/// without delivering anything (see [`Resubscribing::next`]).
const MAX_RESUBSCRIBE_PAUSE: Duration = Duration::from_secs(1);

/// Opens one subscription stream, retrying UNAVAILABLE (a module that died
/// with the request in flight, or is marked failed) within the client's
/// timeout. Subscribing is idempotent: subscribing twice only adds a
/// subscriber, and a stream that was opened but whose answer was lost is
/// cancelled when the connection learns nothing of it.
async fn open<R: SubscribeCall>(
    client: &Client,
    request: &R,
) -> Result<(R::Reply, Subscription), Error> {
    let payload = mecha_abi::encode(request).map_err(|e| Error::Protocol(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + client.timeout();
    let policy = client.retry_policy();
    let mut backoff: Option<Backoff> = None;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let err = match client.open_stream(R::OPCODE, payload.clone()).await {
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

/// A subscription that survives stream resets: pushes arrive in order
/// through [`next`](Self::next) until it is cancelled.
///
/// When the daemon resets the stream (the module crashed or was restarted:
/// the stream ends with UNAVAILABLE; or the connection left more pushes
/// unread than the daemon queues: the stream ends with RESOURCE_EXHAUSTED),
/// the subscription subscribes again, transparently, with the same request.
/// The module then delivers again everything this subscriber had not
/// acknowledged, so nothing acknowledged is lost and nothing unacknowledged
/// is skipped; pushes may repeat, as at-least-once allows.
pub(crate) struct Resubscribing<R: SubscribeCall> {
    client: Client,
    request: R,
    reply: R::Reply,
    link: Link<R::Reply>,
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
enum Link<T> {
    /// The stream is open.
    Open(Subscription),
    /// A resubscription runs in a task of its own, so that a caller
    /// dropping `next` (a timeout) cannot abandon a stream the module has
    /// already opened: the next `next` picks the result up, and if nobody
    /// does, dropping the finished task's result cancels the stream.
    Opening(tokio::task::JoinHandle<Result<(T, Subscription), Error>>),
    /// Nothing is open; the next `next` subscribes again.
    Closed,
}

impl<R: SubscribeCall> Resubscribing<R> {
    /// Sends `request` and returns the subscription once its stream is open.
    pub(crate) async fn subscribe(client: &Client, request: R) -> Result<Self, Error> {
        let (reply, stream) = open(client, &request).await?;
        Ok(Self {
            client: client.clone(),
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

    /// The next push; `None` once the subscription was cancelled. An error
    /// other than a stream reset ends the subscription: later calls return
    /// `None`. Cancel-safe: dropping the future loses no push and leaves no
    /// stream behind.
    pub(crate) async fn next(&mut self) -> Option<Result<R::Push, Error>> {
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

    /// Ends the subscription: the module stops delivering, and what this
    /// subscriber did not acknowledge goes to the others at once. `next`
    /// then returns `None`.
    pub(crate) async fn cancel(&mut self) -> Result<(), Error> {
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

    /// The client the subscription (and its acks) use.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The opening answer of the latest (re)subscription.
    pub(crate) fn reply(&self) -> &R::Reply {
        &self.reply
    }

    /// How many times the subscription subscribed again after a reset.
    pub(crate) fn resubscribes(&self) -> u64 {
        self.resubscribes
    }

    /// Writes the subscription's request, reply and resubscription count
    /// under `name`, for the public types' `Debug`.
    pub(crate) fn debug(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(name)
            .field("request", &self.request)
            .field("reply", &self.reply)
            .field("resubscribes", &self.resubscribes)
            .finish_non_exhaustive()
    }
}

/// A [`Resubscribing`] for code without a runtime, driven by the blocking
/// client's runtime. Dropping it cancels the stream (waiting up to
/// [`DROP_CANCEL_WAIT`]), so its unacknowledged pushes go to the other
/// subscribers at once instead of at their ack deadline.
pub(crate) struct Blocking<'a, R: SubscribeCall> {
    pub(crate) rt: &'a tokio::runtime::Runtime,
    /// Always `Some` until dropped.
    inner: Option<Resubscribing<R>>,
}

impl<'a, R: SubscribeCall> Blocking<'a, R> {
    /// Subscribes with `request` on the blocking client `client`.
    pub(crate) fn subscribe(
        client: &'a crate::blocking::Client,
        request: R,
    ) -> Result<Self, Error> {
        let inner = client
            .rt
            .block_on(Resubscribing::subscribe(&client.inner, request))?;
        Ok(Self {
            rt: &client.rt,
            inner: Some(inner),
        })
    }

    /// The next push, waiting for it.
    pub(crate) fn next(&mut self) -> Option<Result<R::Push, Error>> {
        let inner = self.inner.as_mut()?;
        self.rt.block_on(inner.next())
    }

    /// The next push if one comes within `timeout`; `None` on timeout as
    /// well as when the subscription ended.
    pub(crate) fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R::Push, Error>> {
        let inner = self.inner.as_mut()?;
        self.rt
            .block_on(async { tokio::time::timeout(timeout, inner.next()).await })
            .ok()
            .flatten()
    }

    /// Ends the subscription; see [`Resubscribing::cancel`].
    pub(crate) fn cancel(&mut self) -> Result<(), Error> {
        match self.inner.as_mut() {
            Some(inner) => self.rt.block_on(inner.cancel()),
            None => Ok(()),
        }
    }

    /// The subscription, until it is dropped.
    pub(crate) fn inner(&self) -> Result<&Resubscribing<R>, Error> {
        self.inner
            .as_ref()
            .ok_or_else(|| Error::Closed("the subscription was dropped".into()))
    }

    /// How many times the subscription subscribed again after a reset.
    pub(crate) fn resubscribes(&self) -> u64 {
        self.inner.as_ref().map_or(0, Resubscribing::resubscribes)
    }
}

impl<R: SubscribeCall> Drop for Blocking<'_, R> {
    fn drop(&mut self) {
        if let Some(mut inner) = self.inner.take() {
            if inner.finished || inner.cancelled {
                return;
            }
            // Cancelling (rather than letting the stream run until the
            // connection closes) hands the unacknowledged pushes to the
            // other subscribers now instead of at their ack deadline.
            self.rt.block_on(async move {
                let _ = tokio::time::timeout(DROP_CANCEL_WAIT, inner.cancel()).await;
            });
        }
    }
}

/// Converts an optional ack deadline into the wire's milliseconds: 0 for
/// "the default", and at least 1 for any deadline given, so that a deadline
/// shorter than a millisecond is not mistaken for the default.
pub(crate) fn ack_deadline_ms(deadline: Option<Duration>) -> u32 {
    deadline.map_or(0, |d| {
        u32::try_from(d.as_millis().max(1)).unwrap_or(u32::MAX)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_deadlines_round_up_and_saturate() {
        assert_eq!(ack_deadline_ms(None), 0);
        assert_eq!(ack_deadline_ms(Some(Duration::from_micros(10))), 1);
        assert_eq!(ack_deadline_ms(Some(Duration::from_millis(250))), 250);
        assert_eq!(
            ack_deadline_ms(Some(Duration::from_secs(u64::MAX))),
            u32::MAX
        );
    }
}
