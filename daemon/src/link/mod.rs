//! The daemon's side of one running module instance: forwarding requests with
//! a link-unique id, routing answers back to their connection, deadlines, and
//! answering everything in flight when the module dies.

mod streams;

use streams::send_end;
pub use streams::ExportedStream;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mecha_abi::msg::{LinkDeliver, RouteGrant, RouteRevoke};
use mecha_abi::{Family, Flags, Header, HeaderError, Opcode, Status, MAX_FRAME_CAP};
use mecha_wire::{FrameReader, OutFrame, Outbox, ReadError, Unflushed};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::answer::{error_body, error_frame, ConnOut};
use crate::calls::CallAnswer;
use crate::crashes::Suspect;
use crate::handle::ConnHandle;
use crate::ratelog::RateLimited;
use crate::routes::{Key, Routes, Target};

/// Frames of one tenant that may wait to be written to one module. When a
/// tenant's lane is full, that tenant's connection readers wait:
/// backpressure reaches the applications instead of memory growing, and
/// other tenants' lanes are unaffected.
pub const LINK_QUEUE: usize = 4096;
/// The kernel's send buffer on the daemon's end of a module link. Whatever
/// sits there is ahead of every request queued after it, whichever tenant
/// sent it; the tenant lanes can only reorder what has not reached the
/// socket yet. So it is kept small: enough for a few batches of small frames
/// (the module reads in 8 KiB steps), while large payloads just take a few
/// more writes.
pub const LINK_SNDBUF: usize = 32 * 1024;
/// How often deadlines of in-flight requests are checked.
const DEADLINE_TICK: Duration = Duration::from_millis(50);
/// The largest payload kept for a replay (`Opcode::is_replayable`): reads
/// are small, and a kept payload is memory held until the answer.
pub const MAX_REPLAY_PAYLOAD: usize = 64 * 1024;

/// A request waiting for its module's answer.
struct Pending {
    conn: Arc<ConnHandle>,
    guard: ConnOut,
    request_id: u32,
    opcode: Opcode,
    deadline: Instant,
    /// Who sent it and what it was, should the module die with it in flight.
    suspect: Suspect,
    /// For a request that may be sent again to the module's next instance
    /// if this one dies with it in flight: its header and payload as the
    /// application sent them. Never kept for a request already replayed
    /// once, so a request that crashes the module crashes it at most twice
    /// (and is then refused as a poison request).
    replay: Option<(Header, Bytes)>,
    /// For a request that may open a stream: its payload, kept with the
    /// stream so that the daemon can open it again on another module
    /// instance (`handover`). A copy, so that it does not pin the buffer
    /// the request was read into.
    opening: Option<Bytes>,
}

/// A request that was in flight when its module instance died and may be
/// sent to the next instance (`Link::replay`); the supervisor holds it
/// meanwhile and must either replay it or answer it (`Replay::fail`).
pub struct Replay {
    pending: Pending,
    header: Header,
    payload: Bytes,
}

impl Replay {
    /// When the application stops waiting for it.
    pub fn deadline(&self) -> Instant {
        self.pending.deadline
    }

    /// Answers it with an error instead.
    pub fn fail(self, status: Status, message: &str) {
        self.pending.answer_error(status, message);
    }
}

/// An open stream: where its pushes go.
#[derive(Clone)]
struct StreamRoute {
    /// The connection that opened it.
    conn: Arc<ConnHandle>,
    /// The stream id the application knows: its request id.
    stream_id: u32,
    opcode: Opcode,
    /// The tenant that opened it, for the dashboard's count of streams.
    tenant: Bytes,
    /// The payload of the request that opened it, when small enough to keep.
    opening: Option<Bytes>,
    /// The application cancelled it (STREAM_CANCEL); it stays routed until
    /// the module's END, but nothing is delivered to it any more: a request
    /// the module would deliver on it (LINK_DELIVER) finds it gone.
    cancelled: bool,
}

struct Table {
    /// False once the link stops taking new requests: it is draining for a
    /// hot restart, or the module is gone.
    accepting: bool,
    /// False once the module is gone.
    open: bool,
    pending: HashMap<u32, Pending>,
    /// Requests in flight when the link closed with the instance dead, kept
    /// for a replay until the supervisor takes them (`take_replays`).
    replays: Vec<Replay>,
    /// Open streams by link id.
    streams: HashMap<u32, StreamRoute>,
    /// The requests in flight when the link closed, for the crash ledger.
    lost: Vec<Suspect>,
    /// Direct routes the module granted (LINK_ROUTE), to its open streams.
    routes: Routes,
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
    tx: Outbox,
    next_id: AtomicU32,
    table: Mutex<Table>,
    closed: Notify,
    idle: Notify,
    last_pong: Mutex<Instant>,
    /// The module takes trace context on forwarded requests: its LINK_HELLO
    /// answer had feature bit TRACE in `ext` (SPEC §8). Older modules get
    /// requests without it.
    trace: std::sync::atomic::AtomicBool,
}

impl Link {
    /// Wraps a handshaken link. `tx` feeds the module's writer task.
    pub fn new(module: String, pid: u32, tx: Outbox) -> Arc<Self> {
        Arc::new(Self {
            module,
            pid,
            tx,
            next_id: AtomicU32::new(1),
            trace: std::sync::atomic::AtomicBool::new(false),
            table: Mutex::new(Table {
                accepting: true,
                open: true,
                pending: HashMap::new(),
                streams: HashMap::new(),
                replays: Vec::new(),
                lost: Vec::new(),
                routes: Routes::default(),
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
        self.tx.send_wait(frame).await.is_ok()
    }

    /// Forwards an application request. The payload is passed on untouched,
    /// behind the tenant prefix; the answer (or an error) reaches `conn` later.
    /// A link that no longer accepts work hands the request back unsent.
    ///
    /// Each tenant has a lane of its own in the link's outbox: when the
    /// module falls behind, tenants' requests are written round-robin, so one
    /// flooding tenant does not queue the others behind its backlog.
    ///
    /// The frame is queued, not written: the caller flushes the returned
    /// outbox once it has forwarded every frame it has read (see
    /// [`mecha_wire::Unflushed`]), so pipelined requests share one write.
    pub async fn forward(
        &self,
        conn: &Arc<ConnHandle>,
        guard: ConnOut,
        header: Header,
        payload: Bytes,
        timeout: Duration,
        suspect: Suspect,
    ) -> Result<Outbox, Rejected> {
        let replay = (header.opcode.is_replayable() && payload.len() <= MAX_REPLAY_PAYLOAD)
            .then(|| (header, payload.clone()));
        self.send(conn, guard, header, payload, timeout, suspect, replay)
            .await
    }

    /// Sends a request that was in flight when the previous instance died
    /// to this one, within what is left of its deadline, and returns the
    /// outbox to flush. It is not kept for a further replay.
    pub async fn replay(&self, r: Replay) -> Option<Outbox> {
        let Replay {
            pending,
            header,
            payload,
        } = r;
        let now = Instant::now();
        if pending.deadline <= now {
            let msg = format!("module {} did not answer before the deadline", self.module);
            pending.answer_error(Status::DeadlineExceeded, &msg);
            return None;
        }
        let timeout = pending.deadline - now;
        let Pending {
            conn,
            guard,
            suspect,
            ..
        } = pending;
        match self
            .send(&conn, guard, header, payload, timeout, suspect, None)
            .await
        {
            Ok(outbox) => Some(outbox),
            Err(rejected) => {
                let msg = format!(
                    "module {} is unavailable: it is restarting; retry",
                    self.module
                );
                let _ = conn.tx.send(error_frame(
                    &rejected.header,
                    Status::Unavailable,
                    &msg,
                    rejected.guard,
                ));
                None
            }
        }
    }

    /// Queues one request for the module: see [`Self::forward`].
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        conn: &Arc<ConnHandle>,
        guard: ConnOut,
        header: Header,
        payload: Bytes,
        timeout: Duration,
        suspect: Suspect,
        replay: Option<(Header, Bytes)>,
    ) -> Result<Outbox, Rejected> {
        let tenant = &suspect.tenant;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // SPEC §8: the request's span becomes the module's parent.
        let trace = guard
            .trace_context()
            .filter(|_| self.trace.load(Ordering::Relaxed));
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
                    conn: Arc::clone(conn),
                    guard,
                    request_id: header.request_id,
                    opcode: header.opcode,
                    deadline: Instant::now() + timeout,
                    suspect: suspect.clone(),
                    replay,
                    opening: (header.opcode.opens_stream() && payload.len() <= MAX_REPLAY_PAYLOAD)
                        .then(|| Bytes::copy_from_slice(&payload)),
                },
            );
        }
        let mut out = header;
        out.request_id = id;
        // The tenant prefix length travels in `ext`; tenants are short names, and
        // the conversion cannot fail for names the daemon itself builds.
        out.ext = u16::try_from(tenant.len()).unwrap_or(u16::MAX);
        out.deadline_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let prefix = match trace {
            None => tenant.clone(),
            Some(ctx) => {
                out.flags = Flags(out.flags.0 | Flags::TRACE);
                let mut p = bytes::BytesMut::with_capacity(tenant.len() + mecha_abi::TRACE_LEN);
                p.extend_from_slice(tenant);
                p.extend_from_slice(&ctx.encode());
                p.freeze()
            }
        };
        let queued = self
            .tx
            .push_wait_lane(tenant, OutFrame::guarded(out, prefix, payload, ()))
            .await;
        if let Err(mecha_wire::Closed(frame)) = queued {
            // Never sent (the instance is gone): the caller routes it again,
            // to the next instance, whatever its opcode. Unless the link's
            // close took it first, and answers or replays it.
            if let Some(p) = self.take(id) {
                return Err(Rejected {
                    guard: p.guard,
                    header,
                    payload: frame.payload,
                });
            }
        }
        Ok(self.tx.clone())
    }

    /// Records the feature bits of the module's LINK_HELLO answer.
    pub fn set_features(&self, features: mecha_abi::Features) {
        self.trace.store(features.trace(), Ordering::Relaxed);
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

    /// Routes module answers back until the link reaches EOF, then answers
    /// every request still in flight with UNAVAILABLE.
    ///
    /// Answers are queued on their connections and written when no further
    /// answer is buffered: the answers of one read leave in one write per
    /// connection, from this task, without waking a writer task.
    pub async fn read_answers(
        self: Arc<Self>,
        mut reader: FrameReader<mecha_wire::sock::ReadHalf>,
    ) {
        let mut unflushed = Unflushed::default();
        let reason = loop {
            if !reader.has_frame() {
                unflushed.flush();
            }
            match reader.next().await {
                Ok(Some((header, payload))) => self.deliver(header, payload, &mut unflushed),
                Ok(None) => break "the module exited".to_string(),
                Err(ReadError::Header(HeaderError::TooLarge {
                    request_id, len, ..
                })) => {
                    // An answer too large for the link fails its request, not
                    // the link: the module (trusted to frame correctly) keeps
                    // serving everyone else.
                    self.refuse_oversized(request_id, len);
                    if let Err(e) = reader.skip_frame().await {
                        break format!("the link failed: {e}");
                    }
                }
                Err(e) => break format!("the link failed: {e}"),
            }
        };
        unflushed.flush();
        // The module is gone: what it had in flight and may be sent again
        // waits for the supervisor to replay it to the next instance.
        self.close(&reason, true);
    }

    /// Answers the request (or ends the stream) whose frame from the module
    /// was `len` bytes, over the link's limit.
    fn refuse_oversized(&self, id: u32, len: u64) {
        let why = format!(
            "module {}'s answer of {len} bytes exceeds the link's limit of {MAX_FRAME_CAP} bytes",
            self.module
        );
        static OVERSIZED: RateLimited = RateLimited::new();
        if let Some(held) = OVERSIZED.allow() {
            tracing::warn!(module = %self.module, id, len, held_back = held, "an oversized frame from the module was dropped");
        }
        if let Some(p) = self.take(id) {
            return p.answer_error(Status::ResourceExhausted, &why);
        }
        let route = self.remove_stream(id);
        if let Some(route) = route {
            self.cancel_link_stream(id);
            let header = Header::end(route.opcode, route.stream_id, Status::ResourceExhausted);
            send_end(route, header, error_body(&format!("{why}; resubscribe")));
        }
    }

    fn deliver(&self, header: Header, payload: Bytes, unflushed: &mut Unflushed<ConnOut>) {
        // Any frame is a sign of life: a module busy at its concurrency limit
        // may read pings late, but it is not hung while it answers.
        *self.last_pong.lock() = Instant::now();
        if header.flags.is_push() {
            self.push(header, payload, unflushed);
            return;
        }
        if !header.flags.is_response() {
            self.module_request(header, payload);
            return;
        }
        let opens_stream =
            header.flags.is_stream() && Status::from_code(header.status) == Status::Ok;
        let Some(p) = self.take(header.request_id) else {
            // Control answers (pings, drain) and answers that arrive after their
            // deadline expired have no waiting request.
            if opens_stream {
                // The request was already answered DEADLINE_EXCEEDED, so the
                // application knows nothing of this stream: stop it at its
                // source, or the module would push into the void for as long
                // as it lives.
                self.cancel_link_stream(header.request_id);
            }
            return;
        };
        if opens_stream {
            // The request opened a stream: its pushes follow under the same id.
            self.table.lock().streams.insert(
                header.request_id,
                StreamRoute {
                    conn: Arc::clone(&p.conn),
                    stream_id: p.request_id,
                    opcode: p.opcode,
                    tenant: p.suspect.tenant.clone(),
                    opening: p.opening.clone(),
                    cancelled: false,
                },
            );
        }
        if p.guard.is_silent() {
            // A stream the daemon opened again after a hand-over: the
            // application had its opening answer long ago. Only a failure to
            // open it again concerns it, and ends the stream it knows.
            if !opens_stream {
                let status = match Status::from_code(header.status) {
                    Status::Ok => Status::Unavailable,
                    other => other,
                };
                let route = StreamRoute {
                    conn: Arc::clone(&p.conn),
                    stream_id: p.request_id,
                    opcode: p.opcode,
                    tenant: p.suspect.tenant.clone(),
                    opening: None,
                    cancelled: false,
                };
                let end = Header::end(p.opcode, p.request_id, status);
                send_end(route, end, payload);
            }
            return;
        }
        let mut out = header;
        out.request_id = p.request_id;
        out.opcode = p.opcode;
        out.ext = 0;
        // An answer the connection's byte budget cannot hold means the
        // application lets its answers pile up unread: it is cut off, rather
        // than letting the daemon's memory grow for it.
        let bytes = match p.conn.budget.take(payload.len()) {
            Ok(bytes) => bytes,
            Err(spent) => {
                static CUT_OFF: RateLimited = RateLimited::new();
                if let Some(held) = CUT_OFF.allow() {
                    tracing::warn!(module = %self.module, conn = p.conn.id, held_back = held, "closing a connection that does not read its answers: {spent}");
                }
                p.conn.tx.shutdown();
                if opens_stream {
                    self.remove_stream(header.request_id);
                    self.cancel_link_stream(header.request_id);
                }
                return;
            }
        };
        let guard = p.guard.answered(out.status).holding(bytes);
        let frame = OutFrame::guarded(out, Bytes::new(), payload, guard);
        // The connection's queue has room for every request it may have in
        // flight, so this only fails when the connection is gone. A stream it
        // opened then has nobody to push to: stop it at its source.
        if p.conn.tx.push(frame).is_ok() {
            unflushed.add(&p.conn.tx);
        } else if opens_stream {
            self.remove_stream(header.request_id);
            self.cancel_link_stream(header.request_id);
        }
    }

    /// Serves a request the module sends the daemon. LINK_DELIVER is the only
    /// one: deliver a request to the connection owning one of the module's
    /// streams and answer with that connection's response (SPEC §8). The
    /// wait runs in its own task so the link keeps being read.
    fn module_request(&self, header: Header, payload: Bytes) {
        let reply = self.tx.clone();
        let answer = move |(status, body): CallAnswer| {
            let mut out = header.response(status);
            out.deadline_ms = 0;
            OutFrame::new(out, body)
        };
        let refuse = |status, msg: String| {
            let _ = self.tx.send(answer(crate::calls::error(status, &msg)));
        };
        // Route frames are never answered (SPEC §8); an unusable grant only
        // leaves calls on the module's path.
        if header.opcode == Opcode::LINK_ROUTE {
            if let Ok(grant) = mecha_abi::decode::<RouteGrant>(&payload) {
                self.grant_route(grant);
            }
            return;
        }
        if header.opcode == Opcode::LINK_UNROUTE {
            if let Ok(revoke) = mecha_abi::decode::<RouteRevoke>(&payload) {
                self.table.lock().routes.revoke(&revoke.app_id);
            }
            return;
        }
        if header.opcode != Opcode::LINK_DELIVER {
            return refuse(
                Status::UnknownOpcode,
                format!("the daemon serves no module request {}", header.opcode),
            );
        }
        let req: LinkDeliver = match mecha_abi::decode(&payload) {
            Ok(r) => r,
            Err(e) => return refuse(Status::InvalidArgument, e.to_string()),
        };
        let opcode = Opcode(req.opcode);
        if matches!(
            opcode.family(),
            Family::Control | Family::Link | Family::Peer | Family::Unknown(_)
        ) {
            return refuse(
                Status::InvalidArgument,
                format!("LINK_DELIVER may not deliver {opcode}"),
            );
        }
        let target = self
            .table
            .lock()
            .streams
            .get(&req.stream)
            .filter(|r| !r.cancelled)
            .map(|r| Arc::clone(&r.conn));
        let Some(conn) = target else {
            return refuse(
                Status::NotFound,
                format!(
                    "stream {} is not open: it was cancelled or its connection closed",
                    req.stream
                ),
            );
        };
        let timeout = match header.deadline_ms {
            0 => Duration::from_secs(5),
            ms => Duration::from_millis(u64::from(ms)),
        };
        tokio::spawn(async move {
            let result = conn
                .calls
                .call(
                    &conn.tx,
                    &conn.pushes,
                    &conn.budget,
                    opcode,
                    Bytes::from(req.payload),
                    timeout,
                )
                .await;
            let _ = reply.send_wait(answer(result)).await;
        });
    }

    /// Records a direct route (LINK_ROUTE) to one of the module's open,
    /// uncancelled streams; a grant for any other stream is ignored, so a
    /// route never outlives the registration it names.
    fn grant_route(&self, grant: RouteGrant) {
        let mut t = self.table.lock();
        if let Some(r) = t.streams.get(&grant.stream) {
            if !r.cancelled && !r.conn.tx.is_closed() {
                t.routes.grant(grant);
            }
        }
    }

    /// How many routes the module granted: INVOKE requests are decoded for
    /// a lookup only when there is one.
    pub fn route_count(&self) -> usize {
        self.table.lock().routes.len()
    }

    /// The connection and bounds of the route for `key`, if one is granted
    /// and its registration stream is still open and uncancelled. Checked
    /// under the same lock that stream ends take, so a call looked up after
    /// a callee's connection closed or it cancelled its registration never
    /// finds the route.
    pub fn route_for(&self, key: &Key) -> Option<(Arc<ConnHandle>, Target)> {
        let table = self.table.lock();
        // A draining instance's decisions may be stale (a RELOAD replaces it).
        let target = table.routes.get(key).filter(|_| table.accepting)?;
        let stream = table.streams.get(&target.stream)?;
        if stream.cancelled {
            return None;
        }
        Some((Arc::clone(&stream.conn), target.clone()))
    }

    /// Marks the link closed and answers every request in flight with
    /// UNAVAILABLE, except, with `keep_replays`, those that may be sent to
    /// the next instance: they wait for [`Self::take_replays`]. Without it,
    /// replays kept by an earlier close are answered too, so none is left
    /// waiting on a link nobody will take them from.
    pub fn close(&self, reason: &str, keep_replays: bool) {
        let drained: Vec<Pending> = {
            let mut table = self.table.lock();
            table.open = false;
            table.accepting = false;
            let mut drained: Vec<Pending> = table.pending.drain().map(|(_, p)| p).collect();
            if !drained.is_empty() {
                table.lost = drained.iter().map(|p| p.suspect.clone()).collect();
            }
            if keep_replays {
                let now = Instant::now();
                let (replays, rest): (Vec<Pending>, Vec<Pending>) = drained
                    .into_iter()
                    .partition(|p| p.replay.is_some() && p.deadline > now);
                table
                    .replays
                    .extend(replays.into_iter().filter_map(|mut p| {
                        let (header, payload) = p.replay.take()?;
                        Some(Replay {
                            pending: p,
                            header,
                            payload,
                        })
                    }));
                drained = rest;
            } else {
                drained.extend(table.replays.drain(..).map(|r| r.pending));
            }
            drained
        };
        self.reset_streams(reason);
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

    /// The requests kept for a replay when the link closed (once).
    pub fn take_replays(&self) -> Vec<Replay> {
        std::mem::take(&mut self.table.lock().replays)
    }

    /// The requests that were in flight when the link closed (once).
    pub fn take_lost(&self) -> Vec<Suspect> {
        std::mem::take(&mut self.table.lock().lost)
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
            .tx
            .send(error_frame(&header, status, message, self.guard));
    }
}
