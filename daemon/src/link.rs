//! The daemon's side of one running module instance: forwarding requests with
//! a link-unique id, routing answers back to their connection, deadlines, and
//! answering everything in flight when the module dies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mecha_abi::{Header, Opcode, Status};
use mecha_wire::{FrameReader, OutFrame};
use parking_lot::Mutex;
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::{mpsc, Notify};

use crate::conn::{error_frame, ConnOut, ConnTx};

/// Capacity of the queue of frames waiting to be written to one module. When
/// it is full, connection readers wait: backpressure reaches applications
/// instead of memory growing.
pub const LINK_QUEUE: usize = 4096;
/// How often deadlines of in-flight requests are checked.
const DEADLINE_TICK: Duration = Duration::from_millis(50);

/// A request waiting for its module's answer.
struct Pending {
    conn: ConnTx,
    guard: ConnOut,
    request_id: u32,
    opcode: Opcode,
    deadline: Instant,
}

struct Table {
    /// False once the link stops taking new requests: it is draining for a
    /// hot restart, or the module is gone.
    accepting: bool,
    /// False once the module is gone.
    open: bool,
    pending: HashMap<u32, Pending>,
}

/// A request the link refused because it no longer accepts work. Nothing was
/// sent, so the caller may route it to the module's next instance.
pub struct Rejected {
    /// The connection's permit, handed back.
    pub guard: ConnOut,
    /// The request header, unchanged.
    pub header: Header,
    /// The payload, unchanged.
    pub payload: Bytes,
}

/// One running module instance as seen by the router.
pub struct Link {
    /// The module's name, for messages.
    pub module: String,
    /// The module's process id.
    pub pid: u32,
    tx: mpsc::Sender<OutFrame>,
    next_id: AtomicU32,
    table: Mutex<Table>,
    closed: Notify,
    idle: Notify,
    last_pong: Mutex<Instant>,
}

impl Link {
    /// Wraps a handshaken link. `tx` feeds the module's writer task.
    pub fn new(module: String, pid: u32, tx: mpsc::Sender<OutFrame>) -> Arc<Self> {
        Arc::new(Self {
            module,
            pid,
            tx,
            next_id: AtomicU32::new(1),
            table: Mutex::new(Table {
                accepting: true,
                open: true,
                pending: HashMap::new(),
            }),
            closed: Notify::new(),
            idle: Notify::new(),
            last_pong: Mutex::new(Instant::now()),
        })
    }

    /// Sends a frame the daemon itself originates (ping, drain) with a fresh id.
    pub async fn send_control(&self, opcode: Opcode) -> bool {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = OutFrame::new(Header::request(opcode, id), Bytes::new());
        self.tx.send(frame).await.is_ok()
    }

    /// Forwards an application request. The payload is passed on untouched,
    /// behind the tenant prefix; the answer (or an error) reaches `conn` later.
    /// A link that no longer accepts work hands the request back unsent.
    pub async fn forward(
        &self,
        conn: &ConnTx,
        guard: ConnOut,
        header: Header,
        tenant: &Bytes,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<(), Rejected> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut table = self.table.lock();
            if !table.accepting {
                return Err(Rejected {
                    guard,
                    header,
                    payload,
                });
            }
            table.pending.insert(
                id,
                Pending {
                    conn: conn.clone(),
                    guard,
                    request_id: header.request_id,
                    opcode: header.opcode,
                    deadline: Instant::now() + timeout,
                },
            );
        }
        let mut out = header;
        out.request_id = id;
        // The tenant prefix length travels in `ext`; tenants are short names, and
        // the conversion cannot fail for names the daemon itself builds.
        out.ext = u16::try_from(tenant.len()).unwrap_or(u16::MAX);
        out.deadline_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        if self
            .tx
            .send(OutFrame::guarded(out, tenant.clone(), payload, ()))
            .await
            .is_err()
        {
            self.fail_one(id, "its link closed before the request was sent");
        }
        Ok(())
    }

    /// Stops taking new requests; those already forwarded still get answers.
    pub fn stop_accepting(&self) {
        self.table.lock().accepting = false;
    }

    /// Resolves once no forwarded request awaits an answer.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.table.lock().pending.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// When the module last answered a health ping (or the link's creation).
    pub fn last_pong(&self) -> Instant {
        *self.last_pong.lock()
    }

    /// Removes a pending entry, waking `idle` waiters when it was the last.
    fn take(&self, id: u32) -> Option<Pending> {
        let mut table = self.table.lock();
        let entry = table.pending.remove(&id);
        if entry.is_some() && table.pending.is_empty() {
            self.idle.notify_waiters();
        }
        entry
    }

    fn fail_one(&self, id: u32, why: &str) {
        let entry = self.take(id);
        if let Some(p) = entry {
            let msg = format!("module {} is unavailable: {why}", self.module);
            p.answer_error(Status::Unavailable, &msg);
        }
    }

    /// Routes module answers back until the link reaches EOF, then answers
    /// every request still in flight with UNAVAILABLE.
    pub async fn read_answers(self: Arc<Self>, mut reader: FrameReader<OwnedReadHalf>) {
        let reason = loop {
            match reader.next().await {
                Ok(Some((header, payload))) => self.deliver(header, payload),
                Ok(None) => break "the module exited".to_string(),
                Err(e) => break format!("the link failed: {e}"),
            }
        };
        self.close(&reason);
    }

    fn deliver(&self, header: Header, payload: Bytes) {
        if !header.flags.is_response() {
            tracing::warn!(module = %self.module, opcode = %header.opcode, "module sent a non-response frame; ignored");
            return;
        }
        let Some(p) = self.take(header.request_id) else {
            // Control answers (pings, drain) and answers that arrive after their
            // deadline expired have no waiting request.
            if header.opcode == Opcode::LINK_PING {
                *self.last_pong.lock() = Instant::now();
            }
            return;
        };
        let mut out = header;
        out.request_id = p.request_id;
        out.opcode = p.opcode;
        out.ext = 0;
        let frame = OutFrame::guarded(out, Bytes::new(), payload, p.guard);
        // The connection's queue has room for every request it may have in
        // flight, so this only fails when the connection is gone.
        let _ = p.conn.try_send(frame);
    }

    /// Marks the link closed and answers every request in flight.
    pub fn close(&self, reason: &str) {
        let drained: Vec<Pending> = {
            let mut table = self.table.lock();
            table.open = false;
            table.accepting = false;
            table.pending.drain().map(|(_, p)| p).collect()
        };
        self.idle.notify_waiters();
        if !drained.is_empty() {
            tracing::warn!(module = %self.module, pid = self.pid, in_flight = drained.len(), "{reason}; answering in-flight requests with UNAVAILABLE");
        }
        let msg = format!("module {} is unavailable: {reason}; retry", self.module);
        for p in drained {
            p.answer_error(Status::Unavailable, &msg);
        }
        self.closed.notify_waiters();
    }

    /// Resolves once the link has closed.
    pub async fn closed(&self) {
        loop {
            // A `Notified` registers for `notify_waiters` when created, so
            // creating it before checking cannot miss a close in between.
            let notified = self.closed.notified();
            if !self.table.lock().open {
                return;
            }
            notified.await;
        }
    }

    /// Answers requests whose deadline has passed with DEADLINE_EXCEEDED, until
    /// the link closes.
    pub async fn expire_deadlines(self: Arc<Self>) {
        let mut tick = tokio::time::interval(DEADLINE_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let expired: Vec<Pending> = {
                let mut table = self.table.lock();
                if !table.open {
                    return;
                }
                let ids: Vec<u32> = table
                    .pending
                    .iter()
                    .filter(|(_, p)| p.deadline <= now)
                    .map(|(id, _)| *id)
                    .collect();
                ids.iter()
                    .filter_map(|id| table.pending.remove(id))
                    .collect()
            };
            for p in expired {
                let msg = format!("module {} did not answer before the deadline", self.module);
                p.answer_error(Status::DeadlineExceeded, &msg);
            }
        }
    }
}

impl Pending {
    fn answer_error(self, status: Status, message: &str) {
        let mut header = Header::request(self.opcode, self.request_id);
        header.request_id = self.request_id;
        let _ = self
            .conn
            .try_send(error_frame(&header, status, message, self.guard));
    }
}
