//! Module → daemon requests (SPEC §8): LINK_DELIVER, which asks the daemon
//! to deliver a request to the connection owning one of this module's
//! streams and to answer with that connection's response, and the one-way
//! route frames (LINK_ROUTE, LINK_UNROUTE) of the invoke module.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mecha_abi::msg::LinkDeliver;
use mecha_abi::{Header, Opcode, Status};
use mecha_wire::{OutFrame, Outbox};
use parking_lot::Mutex;
use tokio::sync::{oneshot, Semaphore};

/// Module-originated requests in flight at once; more wait for a slot, so a
/// burst cannot grow the pending table without bound.
const MAX_OUTBOUND: usize = 1024;

/// A status and payload answered by the daemon (or the application behind it).
pub type Answer = (Status, Vec<u8>);

/// A handle for sending requests to the daemon over the link. Cloning shares
/// the link. Ids are the module's own: the daemon tells them from its own
/// requests by the RESPONSE flag of the answers.
#[derive(Clone)]
pub struct DaemonLink {
    inner: Arc<Inner>,
}

struct Inner {
    /// Taken on close, so a drained module's writer is not kept alive by
    /// this handle (which modules hold for their whole life).
    tx: Mutex<Option<Outbox>>,
    slots: Semaphore,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next: u32,
    closed: bool,
    waiting: HashMap<u32, oneshot::Sender<Answer>>,
}

impl DaemonLink {
    pub(crate) fn new(tx: Outbox) -> Self {
        Self {
            inner: Arc::new(Inner {
                tx: Mutex::new(Some(tx)),
                slots: Semaphore::new(MAX_OUTBOUND),
                table: Mutex::default(),
            }),
        }
    }

    /// Delivers request `opcode` with `payload` to the application connection
    /// that owns this module's stream `stream` (its link id, see
    /// `Stream::id`), and returns the application's answer. UNAVAILABLE when
    /// the connection or the link is gone, DEADLINE_EXCEEDED after `timeout`.
    pub async fn deliver(
        &self,
        stream: u32,
        opcode: Opcode,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Answer {
        let body = match mecha_abi::encode(&LinkDeliver {
            stream,
            opcode: opcode.0,
            payload,
        }) {
            Ok(b) => b,
            Err(e) => return error(Status::Internal, &e.to_string()),
        };
        // A frame over the link's limit would make the daemon drop the link
        // (and with it every request of every tenant); refuse this one.
        if let Err(message) = crate::reply::check_frame_size(body.len()) {
            return error(
                Status::ResourceExhausted,
                &format!("the delivered request {message}"),
            );
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let Ok(Ok(_slot)) = tokio::time::timeout_at(deadline, self.inner.slots.acquire()).await
        else {
            return error(
                Status::DeadlineExceeded,
                "no delivery slot before the deadline",
            );
        };
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut t = self.inner.table.lock();
            if t.closed {
                return error(Status::Unavailable, "the daemon link closed");
            }
            t.next = t.next.wrapping_add(1).max(1);
            let id = t.next;
            t.waiting.insert(id, tx);
            id
        };
        let mut header = Header::request(Opcode::LINK_DELIVER, id);
        header.deadline_ms = u32::try_from(timeout.as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        let tx = self.inner.tx.lock().clone();
        let sent = match tx {
            Some(tx) => tx
                .send_wait(OutFrame::new(header, Bytes::from(body)))
                .await
                .is_ok(),
            None => false,
        };
        if !sent {
            self.inner.table.lock().waiting.remove(&id);
            return error(Status::Unavailable, "the daemon link closed");
        }
        // The daemon answers by the deadline itself; the margin only covers a
        // daemon that went away without closing the link.
        match tokio::time::timeout_at(deadline + Duration::from_millis(500), rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => error(Status::Unavailable, "the daemon link closed"),
            Err(_) => {
                self.inner.table.lock().waiting.remove(&id);
                error(
                    Status::DeadlineExceeded,
                    "the daemon did not answer in time",
                )
            }
        }
    }

    /// Sends a one-way request the daemon never answers (LINK_ROUTE,
    /// LINK_UNROUTE, SPEC §8), queued at once without waiting, so that two
    /// of them sent one after the other reach the daemon in that order and
    /// before anything sent later. False when the link is closed or the
    /// payload cannot be encoded.
    pub fn notify<T: serde::Serialize>(&self, opcode: Opcode, value: &T) -> bool {
        let Ok(body) = mecha_abi::encode(value) else {
            return false;
        };
        let tx = self.inner.tx.lock().clone();
        match tx {
            Some(tx) => tx
                .send(OutFrame::new(Header::request(opcode, 0), Bytes::from(body)))
                .is_ok(),
            None => false,
        }
    }

    /// An `ErrorBody` answer carrying `message`, for callers building answers.
    pub fn error_answer(status: Status, message: &str) -> Answer {
        error(status, message)
    }

    /// Routes the daemon's answer to a request of ours.
    pub(crate) fn answer(&self, header: &Header, payload: Bytes) {
        let waiter = self.inner.table.lock().waiting.remove(&header.request_id);
        if let Some(w) = waiter {
            let _ = w.send((Status::from_code(header.status), payload.to_vec()));
        }
    }

    /// The link ended or is draining: every waiting request ends with
    /// UNAVAILABLE, and no new one is sent.
    pub(crate) fn close(&self) {
        self.inner.tx.lock().take();
        let mut t = self.inner.table.lock();
        t.closed = true;
        t.waiting.clear();
    }
}

/// An `ErrorBody` answer.
pub fn error(status: Status, message: &str) -> Answer {
    let body = mecha_abi::encode(&mecha_abi::msg::ErrorBody {
        message: message.to_string(),
    })
    .unwrap_or_default();
    (status, body)
}
