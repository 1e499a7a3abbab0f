//! Server-push streams from a module: a request opens one, the module pushes
//! frames on it until it ends it or the daemon cancels it (SPEC.md §6, §8).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use mecha_abi::msg::ErrorBody;
use mecha_abi::{Header, Opcode, Status};
use mecha_wire::{OutFrame, Outbox};
use parking_lot::Mutex;
use tokio::sync::watch;

/// Why a push could not be sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StreamClosed {
    /// The application cancelled the stream or went away.
    #[error("the stream was cancelled")]
    Cancelled,
    /// The request that opened the stream was answered with an error, so the
    /// stream never opened.
    #[error("the stream was never opened")]
    NotOpened,
    /// The daemon is gone.
    #[error("the link to the daemon closed")]
    LinkClosed,
    /// The push was larger than the link's frame limit; the stream was
    /// ended with RESOURCE_EXHAUSTED instead of sending it.
    #[error("a push {0}; the stream was ended")]
    TooLarge(String),
}

struct Entry {
    /// Becomes `Some(true)` once the opening answer is queued, `Some(false)` if
    /// the request was answered with an error instead.
    opened: watch::Sender<Option<bool>>,
    cancelled: watch::Sender<bool>,
}

/// The streams a module has open, by link id.
#[derive(Default)]
pub(crate) struct Registry {
    streams: Mutex<HashMap<u32, Entry>>,
}

impl Registry {
    /// Called after the answer to request `link_id` was queued.
    pub(crate) fn answered(&self, link_id: u32, opened: bool) {
        let mut streams = self.streams.lock();
        if let Some(e) = streams.get(&link_id) {
            let _ = e.opened.send(Some(opened));
        }
        if !opened {
            streams.remove(&link_id);
        }
    }

    /// LINK_CANCEL from the daemon.
    pub(crate) fn cancel(&self, link_id: u32) {
        if let Some(e) = self.streams.lock().get(&link_id) {
            let _ = e.cancelled.send(true);
        }
    }

    /// The daemon is gone: every stream is over.
    pub(crate) fn cancel_all(&self) {
        for e in self.streams.lock().values() {
            let _ = e.cancelled.send(true);
        }
    }
}

/// What a request needs to open a stream; held in its `Ctx`.
#[derive(Clone)]
pub(crate) struct Opener {
    pub(crate) tx: Option<Outbox>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) link_id: u32,
    pub(crate) opcode: Opcode,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("link_id", &self.link_id)
            .finish_non_exhaustive()
    }
}

impl Opener {
    pub(crate) fn open(&self) -> Stream {
        let (opened_tx, opened) = watch::channel(None);
        let (cancelled_tx, cancelled) = watch::channel(self.tx.is_none());
        self.registry.streams.lock().insert(
            self.link_id,
            Entry {
                opened: opened_tx,
                cancelled: cancelled_tx,
            },
        );
        Stream {
            tx: self.tx.clone(),
            registry: Arc::clone(&self.registry),
            link_id: self.link_id,
            opcode: self.opcode,
            opened,
            cancelled,
            ended: false,
        }
    }
}

/// An open stream. Pushes wait until the answer that opened the stream has
/// been queued, so the application always sees the opening answer first.
/// Dropping a stream without [`Stream::end`] ends it with OK.
pub struct Stream {
    tx: Option<Outbox>,
    registry: Arc<Registry>,
    link_id: u32,
    opcode: Opcode,
    opened: watch::Receiver<Option<bool>>,
    cancelled: watch::Receiver<bool>,
    ended: bool,
}

impl Stream {
    async fn ready(&mut self) -> Result<&Outbox, StreamClosed> {
        if *self.cancelled.borrow() {
            return Err(StreamClosed::Cancelled);
        }
        self.opened().await
    }

    /// Waits until the opening answer is queued, whether or not the stream
    /// was cancelled since.
    async fn opened(&mut self) -> Result<&Outbox, StreamClosed> {
        // A stream without a link (a detached context) is never answered, so
        // waiting for its opening answer would never end.
        if self.tx.is_none() {
            return Err(StreamClosed::LinkClosed);
        }
        let opened = self
            .opened
            .wait_for(Option::is_some)
            .await
            .map(|v| *v == Some(true))
            .map_err(|_| StreamClosed::NotOpened)?;
        if !opened {
            return Err(StreamClosed::NotOpened);
        }
        self.tx.as_ref().ok_or(StreamClosed::LinkClosed)
    }

    /// Sends one push. Waits while the link's queue is full, which is how a
    /// slow link slows the module down instead of growing a buffer.
    ///
    /// A push larger than the link's frame limit is not sent: the stream is
    /// ended with RESOURCE_EXHAUSTED naming the size and the limit (the
    /// daemon would fail the whole link on such a frame), and this and every
    /// later push fail.
    pub async fn push(&mut self, payload: Vec<u8>) -> Result<(), StreamClosed> {
        if self.ended {
            return Err(StreamClosed::Cancelled);
        }
        let header = Header::push(self.opcode, self.link_id);
        if let Err(message) = crate::reply::check_frame_size(payload.len()) {
            self.ended = true;
            let frame = end_frame(
                self.opcode,
                self.link_id,
                Status::ResourceExhausted,
                &format!("a push of this stream {message}; the stream was ended"),
            );
            if let Ok(tx) = self.opened().await {
                let _ = tx.send_wait(frame).await;
            }
            return Err(StreamClosed::TooLarge(message));
        }
        let tx = self.ready().await?;
        tx.send_wait(OutFrame::new(header, Bytes::from(payload)))
            .await
            .map_err(|_| StreamClosed::LinkClosed)
    }

    /// The stream's link id: the id under which the daemon routes it, and the
    /// address of its connection for `DaemonLink::deliver`.
    pub fn id(&self) -> u32 {
        self.link_id
    }

    /// Resolves when the application cancelled the stream or went away.
    pub async fn cancelled(&mut self) {
        let _ = self.cancelled.wait_for(|c| *c).await;
    }

    /// True once the stream was cancelled.
    pub fn is_cancelled(&self) -> bool {
        *self.cancelled.borrow()
    }

    /// Ends the stream with `status` (OK: finished; UNAVAILABLE: reset, the
    /// client should resubscribe) and a message.
    pub async fn end(mut self, status: Status, message: &str) {
        // A stream ended already (by a push over the frame limit) has sent
        // its END; a second one would end a stream that no longer exists.
        if self.ended {
            return;
        }
        self.ended = true;
        let frame = end_frame(self.opcode, self.link_id, status, message);
        // Unlike a push, the END goes out after a cancellation too: the
        // daemon keeps routing a stream the application cancelled until its
        // END arrives, and that END is what finishes the application's
        // subscription. Skipping it would leave both waiting forever.
        if let Ok(tx) = self.opened().await {
            let _ = tx.send_wait(frame).await;
        }
    }
}

fn end_frame(opcode: Opcode, link_id: u32, status: Status, message: &str) -> OutFrame {
    let body = if status == Status::Ok {
        Vec::new()
    } else {
        mecha_abi::encode(&ErrorBody {
            message: message.to_string(),
        })
        .unwrap_or_default()
    };
    OutFrame::new(Header::end(opcode, link_id, status), body)
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.registry.streams.lock().remove(&self.link_id);
        if self.ended || *self.opened.borrow() != Some(true) {
            return;
        }
        // Drop cannot wait for room; one END more than the queue's bound is
        // harmless (one per stream), and it must not be lost.
        if let Some(tx) = &self.tx {
            let _ = tx.send(end_frame(self.opcode, self.link_id, Status::Ok, ""));
        }
    }
}
