//! One application connection's session: HELLO negotiation, header checks,
//! the read loop with its in-flight limit, and an orderly close. What a
//! request asks for is the router's business (`router`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mecha_abi::msg::{Hello, HelloReply};
use mecha_abi::{Flags, Header, HeaderError, Opcode, Status, VERSION};
use mecha_wire::{FrameReader, OutFrame, Outbox, ReadError, Unflushed};
use tokio::net::UnixStream;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::answer::{error_body, ConnOut, PUSH_BUDGET};
use crate::budget::{OutputBudget, CONNECTION_BYTES};
use crate::caller::Caller;
use crate::clocked::{is_stalled, partial_frame_timeout, Clocked};
use crate::daemon::Daemon;
use crate::handle::ConnHandle;
use crate::handover::freeze::{Exports, Frozen, Held, LiveGuard, Phase};
use crate::handover::wire::{ConnState, StreamState};
use crate::peer::Peer;
use crate::ratelog::RateLimited;
use crate::router;
use crate::supervisor::Route;

/// How long a closing connection waits for its in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// While a hand-over holds a connection, at most this many requests (and
/// bytes of them) are read ahead and kept; the rest wait in the socket,
/// which moves to the next daemon with them.
const HOLD_FRAMES: usize = 64;
const HOLD_BYTES: usize = 1024 * 1024;
/// The most unread bytes a connection hands over (held requests and a
/// partial frame), within the hand-over channel's message limit.
const MAX_UNREAD: usize = mecha_wire::fdstream::MAX_MESSAGE - 1024 * 1024;
/// How long a stopping connection may take to write what it has queued.
const STOP_FLUSH: Duration = Duration::from_secs(2);

/// [`mecha_abi::TRACE_LEN`] as a header length.
const TRACE_LEN_U32: u32 = mecha_abi::TRACE_LEN as u32;

/// The connection's frames, read with the partial-frame clock.
type Reader = FrameReader<Clocked<mecha_wire::sock::ReadHalf>>;

/// Answers a connection that is refused before HELLO with one error frame
/// (request id 0, like other connection-level errors) and closes it.
pub(crate) async fn refuse(mut stream: UnixStream, status: Status, message: &str) {
    use tokio::io::AsyncWriteExt;
    // At debug: a tenant that reconnects in a loop must not fill the node's log.
    tracing::debug!("refusing a connection: {message}");
    if let Ok(frame) = mecha_abi::encode_frame(
        Header::request(Opcode(0), 0).response(status),
        &error_body(message),
    ) {
        let _ = stream.write_all(&frame).await;
    }
    let _ = stream.shutdown().await;
}

/// What the read loop does after a frame.
enum Flow {
    Continue,
    Close,
}

/// Why the read loop ended.
enum Exit {
    /// The session ends: close it.
    Close,
    /// A hand-over takes the connection: these frames were read and held.
    Stop(Arc<Exports>, Vec<(Header, Bytes)>),
}

/// A connection coming from the daemon this one took over from: what its
/// session had reached there.
pub struct Resume {
    /// The negotiated ABI version, if HELLO was.
    pub version: Option<u8>,
    /// Streams to open again on this daemon's modules.
    pub streams: Vec<StreamState>,
    /// Bytes read there and not yet served.
    pub unread: Vec<u8>,
}

/// Per-connection state.
struct Conn {
    caller: Caller,
    permits: Arc<Semaphore>,
    version: Option<u8>,
}

/// Serves one accepted connection until EOF, a fatal protocol error, or shutdown.
/// `live` counts it for a hand-over from the moment it was accepted
/// (`Freeze::enter`, taken before the task starts so that none is missed).
pub async fn serve(
    stream: UnixStream,
    peer: Peer,
    daemon: Arc<Daemon>,
    shutdown: watch::Receiver<bool>,
    live: LiveGuard,
) {
    serve_as(stream, peer, None, daemon, shutdown, None, live).await;
}

/// [`serve`] with the tenant already decided, when `tenant` is given: a
/// personality's app session, whose tenant mechad's configuration names
/// (`personality::open`). Otherwise the tenant rules decide from `peer`.
///
/// With `resume`, the connection was taken over from another daemon: its
/// session goes on where it was there (no HELLO, its streams open again).
pub async fn serve_as(
    stream: UnixStream,
    peer: Peer,
    tenant: Option<crate::peer::Tenant>,
    daemon: Arc<Daemon>,
    shutdown: watch::Receiver<bool>,
    resume: Option<Resume>,
    _live: LiveGuard,
) {
    let resolved = match tenant {
        Some(t) => Ok(t),
        None => daemon.tenants.read().resolve(&peer),
    };
    let (tenant, allow) = match resolved {
        Ok(t) => (t.name, t.allow),
        Err(msg) => {
            let subject = format!("uid:{}", peer.uid);
            crate::events::record(crate::events::Kind::ConnectionRefused, &subject, &msg);
            return refuse(stream, Status::PermissionDenied, &msg).await;
        }
    };
    tracing::debug!(pid = peer.pid, uid = peer.uid, %tenant, "connection accepted");
    let quota = daemon.quotas.read().tenant(&tenant);
    // Counted as open until this function returns; requests timed per tenant.
    let (_open, tenant_metrics) = (daemon.metrics.connection(), daemon.metrics.tenant(&tenant));
    let _slot = match quota.connect() {
        Ok(slot) => slot,
        Err(msg) => {
            crate::events::record(crate::events::Kind::ConnectionRefused, &tenant, &msg);
            return refuse(stream, Status::ResourceExhausted, &msg).await;
        }
    };
    let max_in_flight = daemon.max_in_flight as usize;
    // Readable-only registration: see mecha_wire::sock.
    let (rd, wr) = match stream.into_std().and_then(mecha_wire::sock::split) {
        Ok(halves) => halves,
        Err(e) => {
            tracing::debug!(pid = peer.pid, "cannot set up the connection: {e}");
            return;
        }
    };
    // The bound is never reached: permits bound what is queued (see ConnOut).
    let (tx, writer) = Outbox::new(wr, max_in_flight + PUSH_BUDGET + 1);
    let writer = tokio::spawn(writer);
    let mut conn = Conn {
        caller: Caller {
            conn: ConnHandle::new(
                tx,
                OutputBudget::new(CONNECTION_BYTES, Arc::clone(&quota.output)),
            ),
            allow,
            quota,
            peer,
            tenant: Bytes::from(tenant),
            unflushed: Unflushed::default(),
            daemon,
        },
        permits: Arc::new(Semaphore::new(max_in_flight)),
        version: None,
    };
    let max_frame = conn.caller.daemon.max_frame;
    let mut reader = FrameReader::new(Clocked::new(rd, partial_frame_timeout()), max_frame);
    let freeze = Arc::clone(&conn.caller.daemon.freeze);
    if let Some(resume) = resume {
        conn.version = resume.version;
        reader.prime(&resume.unread);
        conn.reopen(resume.streams).await;
        // Nothing else is served until every connection taken over has its
        // streams open again: a call must find its callee registered.
        freeze.reopened();
        let _ = tokio::time::timeout(
            crate::handover::freeze::REOPEN_TIMEOUT,
            freeze.all_reopened(),
        )
        .await;
    }
    let mut quiet_in = None;
    let exit = conn
        .read_loop(&mut reader, &tenant_metrics, shutdown, &mut quiet_in)
        .await;
    if let Some(episode) = quiet_in {
        freeze.quiet_left(episode);
    }
    match exit {
        Exit::Close => conn.close(writer, max_in_flight).await,
        Exit::Stop(exports, held) => conn.stop(writer, &mut reader, &exports, held).await,
    }
}

impl Conn {
    /// Reads and serves frames until EOF, a fatal error or shutdown.
    ///
    /// While a hand-over holds the daemon's connections (`Phase::Holding`),
    /// requests read are kept in order instead of served, and the loop
    /// reports once this connection has nothing in flight (`quiet_in`, the
    /// episode it reported in). Answers to calls delivered to the app are
    /// still served: another connection's request may wait for one.
    async fn read_loop(
        &mut self,
        reader: &mut Reader,
        tenant_metrics: &Arc<crate::metrics::TenantMetrics>,
        mut shutdown: watch::Receiver<bool>,
        quiet_in: &mut Option<u64>,
    ) -> Exit {
        let freeze = Arc::clone(&self.caller.daemon.freeze);
        let mut phase = freeze.watch();
        let mut held: Vec<(Header, Bytes)> = Vec::new();
        let mut held_bytes = Held::new(&freeze);
        let all = self.caller.daemon.max_in_flight;
        loop {
            let holding = match &*phase.borrow_and_update() {
                Phase::Stopping(exports) => return Exit::Stop(Arc::clone(exports), held),
                Phase::Holding => true,
                Phase::Serving => false,
            };
            if !holding {
                *quiet_in = None;
            }
            if !holding && !held.is_empty() {
                // A hand-over that failed: serve what was held, in order.
                held_bytes.clear();
                for (header, payload) in std::mem::take(&mut held) {
                    let Some(permit) = self.permit().await else {
                        return Exit::Close;
                    };
                    let permit = permit.observed(tenant_metrics, header.opcode);
                    if let Flow::Close = self.on_frame(header, payload, permit).await {
                        return Exit::Close;
                    }
                }
            }
            // At a frame boundary the partial-frame clock stops, or restarts for
            // bytes of the next frame already read ahead. Restarting it here, when
            // reading resumes, rather than when the last frame was returned, keeps
            // time spent waiting for a permit (backpressure: the daemon was not
            // reading) from counting against the client.
            let buffered = reader.buffered();
            reader.get_mut().frame_done(buffered);
            // Requests and answers queued while working through what one read
            // brought are written together, before this task waits for more.
            if !reader.has_frame() {
                self.caller.flush();
            }
            let can_read = !holding
                || (held.len() < HOLD_FRAMES
                    && held_bytes.bytes() < HOLD_BYTES
                    && freeze.may_hold());
            let report = holding && quiet_in.is_none();
            let next = tokio::select! {
                next = reader.next(), if can_read => next,
                _ = shutdown.changed() => return Exit::Close,
                _ = phase.changed() => continue,
                // Every permit back: whatever this connection had in flight
                // has been answered and written.
                _ = self.permits.acquire_many(all), if report => {
                    *quiet_in = Some(freeze.report_quiet());
                    continue;
                }
            };
            // A response frame answers a request the daemon delivered to this app
            // (INVOKE_CALL, SPEC §7.8). It takes no permit: an app whose own
            // requests fill its in-flight limit must still be able to answer the
            // calls those requests may be waiting on.
            if let Ok(Some((h, p))) = &next {
                if h.flags.0 == Flags::RESPONSE
                    && h.opcode == Opcode::INVOKE_CALL
                    && self.version.is_some()
                {
                    self.caller.conn.calls.answer(h, p.clone());
                    continue;
                }
            }
            if holding {
                if let Ok(Some((header, payload))) = next {
                    held_bytes.add(payload.len());
                    held.push((header, payload));
                    continue;
                }
            }
            let Some(permit) = self.permit().await else {
                return Exit::Close;
            };
            let flow = match next {
                Ok(Some((header, payload))) => {
                    let permit = permit.observed(tenant_metrics, header.opcode);
                    self.on_frame(header, payload, permit).await
                }
                Ok(None) => Flow::Close,
                Err(e) => {
                    self.on_read_error(e, permit);
                    Flow::Close
                }
            };
            if let Flow::Close = flow {
                return Exit::Close;
            }
        }
    }

    /// Opens this connection's streams again on this daemon's modules,
    /// after a hand-over: each opening request is routed as the application
    /// once sent it, and its answer is kept from the application, which has
    /// had it (`Answer::silent`). A stream that cannot be opened again ends
    /// with UNAVAILABLE, and client libraries subscribe again.
    async fn reopen(&mut self, streams: Vec<StreamState>) {
        for s in streams {
            let Some(permit) = self.permit().await else {
                return;
            };
            let opcode = Opcode(s.opcode);
            match (s.opening, self.version) {
                (Some(payload), Some(version)) => {
                    let mut header = Header::request(opcode, s.stream_id);
                    header.version = version;
                    header.payload_len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
                    router::route(
                        &mut self.caller,
                        header,
                        Bytes::from(payload),
                        permit.silent(),
                    )
                    .await;
                }
                _ => {
                    let msg = "stream reset by the daemon's hand-over; resubscribe";
                    let end = Header::end(opcode, s.stream_id, Status::Unavailable);
                    self.caller.reply(OutFrame::guarded(
                        end,
                        Bytes::new(),
                        error_body(msg),
                        permit,
                    ));
                }
            }
        }
        self.caller.flush();
        // Open means answered: the silent answers bring the permits back.
        let all = self.caller.daemon.max_in_flight;
        let _ = tokio::time::timeout(
            crate::handover::freeze::REOPEN_TIMEOUT,
            self.permits.acquire_many(all),
        )
        .await;
    }

    /// Hands the connection to the daemon taking over: writes what is
    /// queued, then sends a duplicate of its socket with its state, and ends
    /// without closing the socket or cancelling its streams (they were
    /// taken off the module links and go with it).
    async fn stop(
        mut self,
        writer: JoinHandle<std::io::Result<()>>,
        reader: &mut Reader,
        exports: &Exports,
        held: Vec<(Header, Bytes)>,
    ) {
        use std::os::fd::AsFd;
        self.caller.flush();
        let flushed = tokio::time::timeout(STOP_FLUSH, self.caller.conn.tx.drained())
            .await
            .is_ok();
        let fd = reader.get_ref().get_ref().as_fd().try_clone_to_owned();
        let streams = exports.streams_of(self.caller.conn.id);
        // A personality's session ends with its module instance, which the
        // hand-over replaces; and a connection that cannot even take what
        // was queued for it, or whose socket cannot be duplicated, is closed.
        let fd = match fd {
            Ok(fd) if flushed && !self.caller.peer.personality => fd,
            _ => {
                writer.abort();
                return;
            }
        };
        let mut unread = Vec::new();
        for (header, payload) in &held {
            unread.extend_from_slice(&header.encode());
            unread.extend_from_slice(payload);
        }
        unread.extend_from_slice(&reader.take_buffered());
        // A partial frame near the largest frame there is, on top of what was
        // held, would not fit one hand-over message: that connection closes.
        if unread.len() > MAX_UNREAD {
            tracing::warn!(
                pid = self.caller.peer.pid,
                bytes = unread.len(),
                "closing a connection whose unread bytes are too many to hand over"
            );
            writer.abort();
            return;
        }
        let state = ConnState {
            socket: self.caller.peer.socket.to_path_buf(),
            version: self.version,
            streams: streams
                .into_iter()
                .map(|s| StreamState {
                    stream_id: s.stream_id,
                    opcode: s.opcode.0,
                    opening: s.opening.map(|b| b.to_vec()),
                })
                .collect(),
            unread,
        };
        self.caller.conn.tx.keep_socket_open();
        exports.hand_in(Frozen { fd, state });
        // Calls delivered to the app and still unanswered (none, once every
        // connection was quiet) can no longer be answered here.
        self.caller.conn.calls.close();
        writer.abort();
    }

    /// Waits for one of the connection's in-flight permits before a frame is
    /// acted on: that bounds the requests one connection can have in flight,
    /// and reading pauses while it is at the limit. What is queued must be on
    /// its way first, since it is what returns permits. `None` when the
    /// connection is closing.
    async fn permit(&mut self) -> Option<ConnOut> {
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.caller.flush();
                Arc::clone(&self.permits).acquire_owned().await.ok()?
            }
        };
        Some(ConnOut::new(permit))
    }

    /// Ends the session: calls delivered to the app fail, its streams are
    /// cancelled, and what is in flight is answered (within `DRAIN_TIMEOUT`)
    /// before the writer finishes.
    async fn close(mut self, writer: JoinHandle<std::io::Result<()>>, max_in_flight: usize) {
        self.caller.flush();
        // Streams die with their connection; tell their modules to stop
        // pushing. This comes before failing the calls delivered to this app,
        // so that a module learns a callee is gone (its registration stream
        // ended) before any of its calls there fails.
        let conn_id = self.caller.conn.id;
        cancel_streams(&self.caller.daemon, conn_id);
        // Calls delivered to this app can no longer be answered.
        self.caller.conn.calls.close();
        // Finish what is in flight: every permit comes back once its answer is written.
        let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, self.permits.acquire_many(all))
            .await
            .is_ok();
        // A request still in flight above may have opened a stream since; its
        // route holds a sender of this connection's queue, which would keep the
        // writer (and the module's stream) alive for nothing. Cancel those too.
        cancel_streams(&self.caller.daemon, conn_id);
        if !drained {
            static STUCK: RateLimited = RateLimited::new();
            if let Some(held) = STUCK.allow() {
                tracing::warn!(
                    pid = self.caller.peer.pid,
                    held_back = held,
                    "closing a connection with requests still in flight"
                );
            }
            writer.abort();
            return;
        }
        drop(self);
        let _ = writer.await;
    }

    fn on_read_error(&self, e: ReadError, permit: ConnOut) {
        match e {
            ReadError::Header(HeaderError::BadMagic { .. }) => {
                tracing::info!(pid = self.caller.peer.pid, "closing connection: {e}");
                let header = Header::request(Opcode(0), 0);
                self.caller
                    .error(&header, Status::InvalidArgument, &e.to_string(), permit);
            }
            ReadError::Header(HeaderError::TooLarge { request_id, .. }) => {
                tracing::info!(pid = self.caller.peer.pid, "closing connection: {e}");
                let header = Header::request(Opcode(0), request_id);
                self.caller
                    .error(&header, Status::ResourceExhausted, &e.to_string(), permit);
            }
            ReadError::Io(ref io) if is_stalled(io) => {
                tracing::info!(pid = self.caller.peer.pid, "closing connection: {e}");
            }
            ReadError::Io(_) | ReadError::Truncated { .. } => {
                tracing::debug!(pid = self.caller.peer.pid, "connection dropped: {e}");
            }
        }
    }

    async fn on_frame(
        &mut self,
        mut header: Header,
        mut payload: Bytes,
        mut permit: ConnOut,
    ) -> Flow {
        if let Some(problem) = request_problem(&header) {
            self.caller
                .error(&header, Status::InvalidArgument, &problem, permit);
            return Flow::Continue;
        }
        let Some(version) = self.version else {
            return self.hello(&header, &payload, permit);
        };
        if header.version != version {
            let msg = format!(
                "frame version {} differs from the negotiated version {version}",
                header.version
            );
            self.caller
                .error(&header, Status::UnsupportedVersion, &msg, permit);
            return Flow::Continue;
        }
        // SPEC §2.1: a trace context precedes the payload. It is taken off
        // here (a slice, no copy), so everything after sees the operation's
        // payload alone, and travels in the request's span instead.
        let parent = if header.flags.is_traced() {
            match mecha_abi::TraceContext::decode(&payload) {
                Ok(ctx) => {
                    payload = payload.slice(mecha_abi::TRACE_LEN..);
                    header.flags = Flags(header.flags.0 & !Flags::TRACE);
                    header.payload_len = header.payload_len.saturating_sub(TRACE_LEN_U32);
                    Some(ctx)
                }
                Err(e) => {
                    let msg = format!("bad trace context: {e}");
                    self.caller
                        .error(&header, Status::InvalidArgument, &msg, permit);
                    return Flow::Continue;
                }
            }
        } else {
            None
        };
        if parent.is_some() || self.caller.daemon.tracer.is_some() {
            permit.traced(crate::trace::Span::start(
                self.caller.daemon.tracer.as_ref(),
                parent,
                header.opcode,
                &self.caller.tenant,
            ));
        }
        router::route(&mut self.caller, header, payload, permit).await;
        Flow::Continue
    }

    fn hello(&mut self, header: &Header, payload: &[u8], permit: ConnOut) -> Flow {
        if header.opcode != Opcode::HELLO {
            let msg = format!("expected HELLO as the first frame, got {}", header.opcode);
            self.caller
                .error(header, Status::InvalidArgument, &msg, permit);
            return Flow::Close;
        }
        let hello: Hello = match mecha_abi::decode(payload) {
            Ok(h) => h,
            Err(e) => {
                self.caller
                    .error(header, Status::InvalidArgument, &e.to_string(), permit);
                return Flow::Close;
            }
        };
        if hello.min_version > VERSION || hello.max_version < VERSION {
            let msg = format!(
                "client speaks ABI versions {}..={}, this daemon speaks {VERSION}..={VERSION}",
                hello.min_version, hello.max_version
            );
            self.caller
                .error(header, Status::UnsupportedVersion, &msg, permit);
            return Flow::Close;
        }
        tracing::debug!(client = %hello.client, pid = self.caller.peer.pid, "hello");
        self.version = Some(VERSION);
        let reply = HelloReply {
            version: VERSION,
            daemon_version: env!("CARGO_PKG_VERSION").to_string(),
            tenant: self.caller.tenant_name().into_owned(),
            max_frame: self.caller.daemon.max_frame,
        };
        match mecha_abi::encode(&reply) {
            Ok(body) => {
                // SPEC §7.1.1: the answer's `ext` carries the feature bits.
                let mut out = header.response(Status::Ok);
                out.ext = mecha_abi::Features::TRACE;
                let frame = OutFrame::guarded(out, Bytes::new(), body.into(), permit);
                self.caller.reply(frame);
            }
            Err(e) => {
                self.caller
                    .error(header, Status::Internal, &e.to_string(), permit);
            }
        }
        Flow::Continue
    }
}

/// Cancels every stream connection `conn_id` has open in a running module.
fn cancel_streams(daemon: &Daemon, conn_id: u64) {
    for module in daemon.modules.read().iter() {
        if let Route::Up(link) = module.route() {
            link.cancel_conn_streams(conn_id);
        }
    }
}

/// Header bits a request must not carry, described for the error message.
fn request_problem(h: &Header) -> Option<String> {
    if h.flags.0 & !Flags::KNOWN != 0 {
        return Some(format!(
            "undefined flag bits 0x{:02x} set",
            h.flags.0 & !Flags::KNOWN
        ));
    }
    if h.flags.is_traced() && h.opcode == Opcode::HELLO {
        return Some("HELLO must not carry a trace context (the TRACE flag)".to_string());
    }
    if h.flags.0 & !Flags::TRACE != 0 {
        return Some(format!(
            "a request must not set the RESPONSE or STREAM flags (flags 0x{:02x})",
            h.flags.0
        ));
    }
    if h.ext != 0 {
        return Some(format!(
            "header field ext must be 0 on application connections, got {}",
            h.ext
        ));
    }
    if h.status != 0 {
        return Some(format!("a request must carry status 0, got {}", h.status));
    }
    None
}
