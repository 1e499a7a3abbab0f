//! Daemon → application requests: a module asks (LINK_DELIVER) that a request
//! be delivered on the connection owning one of its streams, and the
//! application's response frame is handed back. Used by the invoke family,
//! whose callees are served on their own connections (SPEC §7.8, §8).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mecha_abi::{Header, Opcode, Status};
use mecha_wire::OutFrame;
use parking_lot::Mutex;
use tokio::sync::{oneshot, Semaphore};

use crate::answer::{error_body, ConnOut, ConnTx};
use crate::budget::OutputBudget;

/// The answer to a delivered request: status and payload, passed on untouched.
pub type CallAnswer = (Status, Bytes);

/// What a call started with [`Calls::start`] hands its answer to, on the
/// task that reads it (the callee's session, its deadline timer, or the
/// session closing).
pub type OnAnswer = Box<dyn FnOnce(CallAnswer) + Send>;

/// Who waits for a call's answer.
enum Waiter {
    /// A task, in [`Calls::call`].
    Task(oneshot::Sender<CallAnswer>),
    /// A callback, for [`Calls::start`]; its deadline is kept by whoever
    /// started it, who calls [`Calls::expire`].
    Direct(OnAnswer),
}

impl Waiter {
    fn finish(self, answer: CallAnswer) {
        match self {
            Waiter::Task(tx) => {
                let _ = tx.send(answer);
            }
            Waiter::Direct(on_answer) => on_answer(answer),
        }
    }
}

/// One connection's daemon-originated requests awaiting the app's response.
/// Ids are the daemon's own, a separate id space from the app's requests:
/// the RESPONSE flag tells which side asked.
#[derive(Default)]
pub struct Calls {
    table: Mutex<CallTable>,
}

#[derive(Default)]
struct CallTable {
    next: u32,
    /// True once the connection closed: new calls fail at once.
    closed: bool,
    waiting: HashMap<u32, Waiter>,
}

impl Calls {
    /// Delivers request `opcode`/`payload` through the connection's queue
    /// (`conn`), taking one unit of its push budget so a callee that does not
    /// read cannot grow the daemon's memory, and waits up to `timeout`.
    pub async fn call(
        &self,
        conn: &ConnTx,
        budget: &Arc<Semaphore>,
        bytes: &OutputBudget,
        opcode: Opcode,
        payload: Bytes,
        timeout: Duration,
    ) -> CallAnswer {
        let deadline = tokio::time::Instant::now() + timeout;
        // A callee whose connection holds its byte budget unread gets no more
        // calls: they fail now instead of holding their payloads in the
        // daemon until their deadlines.
        // A callee that has shut its connection down (its end may be queued,
        // not yet read by its session) can be written nothing more: a call
        // now would never be delivered, so it is NOT_FOUND — the callee is
        // gone — rather than a call in flight that fails UNAVAILABLE.
        if conn.peer_closed() {
            return error(Status::NotFound, "the callee's connection is closing");
        }
        let held = match bytes.take(payload.len()) {
            Ok(held) => held,
            Err(spent) => {
                return error(
                    Status::ResourceExhausted,
                    &format!("the callee does not read its connection: {spent}"),
                )
            }
        };
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut t = self.table.lock();
            if t.closed {
                return error(Status::NotFound, "the callee's connection closed");
            }
            t.next = t.next.wrapping_add(1).max(1);
            let id = t.next;
            t.waiting.insert(id, Waiter::Task(tx));
            id
        };
        let Ok(Ok(permit)) =
            tokio::time::timeout_at(deadline, Arc::clone(budget).acquire_owned()).await
        else {
            self.table.lock().waiting.remove(&id);
            return error(
                Status::DeadlineExceeded,
                "the callee did not read its connection before the deadline",
            );
        };
        let mut header = Header::request(opcode, id);
        header.deadline_ms = u32::try_from(timeout.as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        let frame = OutFrame::guarded(
            header,
            Bytes::new(),
            payload,
            ConnOut::new(permit).holding(held),
        );
        if conn.send(frame).is_err() {
            self.table.lock().waiting.remove(&id);
            return error(Status::NotFound, "the callee's connection closed");
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => unavailable("the callee's connection closed during the call"),
            Err(_) => {
                self.table.lock().waiting.remove(&id);
                error(
                    Status::DeadlineExceeded,
                    "the callee did not answer before the deadline",
                )
            }
        }
    }

    /// Delivers like [`Self::call`] without waiting: the answer goes to
    /// `on_answer` from whichever task reads it, so a direct route's answer
    /// is written to its caller by the callee's session, with no task in
    /// between. The caller has checked that the callee's peer is not
    /// closing. `armed` gets the call's id before the call is sent, so its
    /// deadline is kept (for [`Self::expire`]) before it can be answered.
    /// Hands
    /// everything back when the push budget is spent (the call would have to
    /// wait for room: [`Self::call`] does).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &self,
        conn: &ConnTx,
        budget: &Arc<Semaphore>,
        bytes: &OutputBudget,
        opcode: Opcode,
        payload: Bytes,
        timeout: Duration,
        on_answer: OnAnswer,
        armed: impl FnOnce(u32),
    ) -> Result<(), (Bytes, OnAnswer)> {
        let Ok(permit) = Arc::clone(budget).try_acquire_owned() else {
            return Err((payload, on_answer));
        };
        let held = match bytes.take(payload.len()) {
            Ok(held) => held,
            Err(spent) => {
                let why = format!("the callee does not read its connection: {spent}");
                on_answer(error(Status::ResourceExhausted, &why));
                return Ok(());
            }
        };
        let id = {
            let mut t = self.table.lock();
            if t.closed {
                drop(t);
                on_answer(error(Status::NotFound, "the callee's connection closed"));
                return Ok(());
            }
            t.next = t.next.wrapping_add(1).max(1);
            let id = t.next;
            t.waiting.insert(id, Waiter::Direct(on_answer));
            id
        };
        armed(id);
        let mut header = Header::request(opcode, id);
        header.deadline_ms = u32::try_from(timeout.as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        let guard = ConnOut::new(permit).holding(held);
        if conn
            .send(OutFrame::guarded(header, Bytes::new(), payload, guard))
            .is_err()
        {
            let waiter = self.table.lock().waiting.remove(&id);
            if let Some(w) = waiter {
                w.finish(error(Status::NotFound, "the callee's connection closed"));
            }
        }
        Ok(())
    }

    /// Ends call `id` with DEADLINE_EXCEEDED if it is still unanswered.
    pub fn expire(&self, id: u32) {
        let waiter = self.table.lock().waiting.remove(&id);
        if let Some(w) = waiter {
            w.finish(error(
                Status::DeadlineExceeded,
                "the callee did not answer before the deadline",
            ));
        }
    }

    /// Hands an application's response frame to the call waiting for it. A
    /// response nobody waits for (late, after the deadline) is dropped.
    pub fn answer(&self, header: &Header, payload: Bytes) {
        let waiter = self.table.lock().waiting.remove(&header.request_id);
        match waiter {
            Some(w) => w.finish((Status::from_code(header.status), payload)),
            None => tracing::debug!(id = header.request_id, "unexpected response frame dropped"),
        }
    }

    /// The connection closed: every waiting call ends with UNAVAILABLE.
    pub fn close(&self) {
        let waiting: Vec<Waiter> = {
            let mut t = self.table.lock();
            t.closed = true;
            t.waiting.drain().map(|(_, w)| w).collect()
        };
        // Tasks see their channel close; callbacks are told here, outside
        // the lock, since they write to their callers.
        for w in waiting {
            if let Waiter::Direct(_) = w {
                w.finish(unavailable(
                    "the callee's connection closed during the call",
                ));
            }
        }
    }
}

/// An `ErrorBody` answer.
pub fn error(status: Status, message: &str) -> CallAnswer {
    (status, error_body(message))
}

fn unavailable(message: &str) -> CallAnswer {
    error(Status::Unavailable, message)
}
