//! Server-push streams on the client's connection: opening one, receiving its
//! pushes, cancelling it, and learning why it ended (SPEC.md §6).

use bytes::Bytes;
use mecha_abi::msg::{ErrorBody, StreamCancel};
use mecha_abi::{Header, Opcode, Status};
use tokio::sync::mpsc;

use crate::client::Shared;
use crate::{Client, Error};

/// Pushes buffered per stream in the client. When the application falls this
/// far behind, the next push is dropped rather than buffered without bound,
/// and since the stream has then lost data, it ends: `next` yields
/// RESOURCE_EXHAUSTED after the buffered pushes, and the caller subscribes
/// again (capabilities that must not lose data redeliver or resend).
pub const STREAM_BUFFER: usize = 256;

/// What the reader hands a stream.
#[derive(Debug)]
pub(crate) enum Item {
    Push(Bytes),
    End(Error),
    Finished,
    /// The application fell [`STREAM_BUFFER`] pushes behind and a push was
    /// dropped; the stream is over on the client's side.
    Overflow,
}

/// Routes a push (or the END frame) from the reader to its stream.
pub(crate) fn route_push(shared: &Shared, header: Header, payload: Bytes) {
    let mut pending = shared.pending.lock();
    if header.flags.is_end() {
        if let Some(tx) = pending.streams.remove(&header.request_id) {
            let status = Status::from_code(header.status);
            let item = if status == Status::Ok {
                Item::Finished
            } else {
                let message = mecha_abi::decode::<ErrorBody>(&payload)
                    .map(|b| b.message)
                    .unwrap_or_default();
                Item::End(Error::Status { status, message })
            };
            let _ = tx.try_send(item);
        }
    } else if let Some(tx) = pending.streams.get(&header.request_id) {
        // The channel holds one slot more than STREAM_BUFFER, kept for the
        // item that ends the stream: were it lost to a full buffer, a reset
        // (resubscribe!) would look like a normal end. This reader is the
        // only sender and holds the lock, so the capacity cannot change
        // between the check and the send.
        if tx.capacity() > 1 {
            let _ = tx.try_send(Item::Push(payload));
        } else if let Some(tx) = pending.streams.remove(&header.request_id) {
            let _ = tx.try_send(Item::Overflow);
        }
    }
}

/// An open stream: pushes arrive in order until it ends.
pub struct Subscription {
    id: u32,
    rx: mpsc::Receiver<Item>,
    client: Client,
    done: bool,
}

impl Subscription {
    /// The stream id (the id of the request that opened it).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The next push; `None` once the stream finished (cancelled or ended by
    /// the module with OK). An error ends the stream too: UNAVAILABLE means it
    /// was reset (a module restart), RESOURCE_EXHAUSTED that the application
    /// fell behind and pushes were dropped; either way the caller should
    /// subscribe again.
    pub async fn next(&mut self) -> Option<Result<Bytes, Error>> {
        if self.done {
            return None;
        }
        match self.rx.recv().await {
            Some(Item::Push(p)) => Some(Ok(p)),
            Some(Item::End(e)) => {
                self.done = true;
                Some(Err(e))
            }
            Some(Item::Overflow) => {
                self.done = true;
                // The daemon still routes the stream; nothing reads it now.
                self.cancel_in_background();
                Some(Err(Error::Status {
                    status: Status::ResourceExhausted,
                    message: format!(
                        "stream {} ended: the application fell {STREAM_BUFFER} pushes behind; subscribe again",
                        self.id
                    ),
                }))
            }
            Some(Item::Finished) | None => {
                self.done = true;
                None
            }
        }
    }

    /// Sends STREAM_CANCEL from a task, when a runtime is available, for a
    /// stream that is over locally but may still run in the module.
    fn cancel_in_background(&self) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let id = self.id;
            handle.spawn(async move {
                if let Ok(body) = mecha_abi::encode(&StreamCancel { stream_id: id }) {
                    let _ = client.call_raw(Opcode::STREAM_CANCEL, body).await;
                }
            });
        }
    }

    /// Asks the daemon to end the stream; `next` then returns `None`.
    pub async fn cancel(&self) -> Result<(), Error> {
        let body = mecha_abi::encode(&StreamCancel { stream_id: self.id })
            .map_err(|e| Error::Protocol(e.to_string()))?;
        let (status, _) = self.client.call_raw(Opcode::STREAM_CANCEL, body).await?;
        match status {
            // NOT_FOUND: the stream already ended on its own.
            Status::Ok | Status::NotFound => Ok(()),
            status => Err(Error::Status {
                status,
                message: "cancelling the stream failed".into(),
            }),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Forget the stream locally; a stream dropped without `cancel` keeps
        // running in the module until the connection closes, so cancel it
        // in the background when a runtime is available.
        self.client.shared.pending.lock().streams.remove(&self.id);
        if !self.done {
            self.cancel_in_background();
        }
    }
}

impl Client {
    /// Sends a request that opens a stream and returns the opening answer's
    /// payload with the subscription. Typed subscribe calls build on this.
    pub async fn open_stream(
        &self,
        opcode: Opcode,
        payload: Vec<u8>,
    ) -> Result<(Bytes, Subscription), Error> {
        let id = self.next_request_id();
        // One slot more than the buffer: see `route_push`.
        let (tx, rx) = mpsc::channel(STREAM_BUFFER + 1);
        let answer = self
            .attempt_id(id, opcode, Bytes::from(payload), self.timeout(), |p| {
                p.streams.insert(id, tx);
            })
            .await;
        let (status, body) = match answer {
            Ok(answer) => answer,
            Err(e) => {
                // No answer (a timeout, a closed connection): the stream is
                // unknown to the caller, so its registration must go too.
                self.shared.pending.lock().streams.remove(&id);
                return Err(e);
            }
        };
        if status != Status::Ok {
            self.shared.pending.lock().streams.remove(&id);
            let message = mecha_abi::decode::<ErrorBody>(&body)
                .map(|b| b.message)
                .unwrap_or_default();
            return Err(Error::Status { status, message });
        }
        let sub = Subscription {
            id,
            rx,
            client: self.clone(),
            done: false,
        };
        Ok((body, sub))
    }
}
