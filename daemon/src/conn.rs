//! One application connection: HELLO negotiation, header validation, control
//! opcodes answered in place, everything else forwarded to its module.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use mecha_abi::msg::{
    ErrorBody, Hello, HelloReply, ModuleRestartReply, ModuleRestartRequest, StreamCancel,
};
use mecha_abi::{Family, Flags, Header, HeaderError, Opcode, Status, VERSION};
use mecha_wire::{FrameReader, OutFrame, Outbox, ReadError, Unflushed};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::{watch, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::daemon::{Daemon, ReloadError};
use crate::link::ConnRef;
use crate::peer::Peer;
use crate::supervisor::{ModuleSlot, Route};

/// Every frame queued for a connection carries one in-flight permit, released
/// when the frame has been written, so a connection's queue never holds more
/// than its permits: the router queues answers without waiting.
/// The guard of a request's answer also times it for the metrics.
pub type ConnOut = crate::metrics::Answer;
/// The sending side of a connection's write queue.
pub type ConnTx = Outbox<ConnOut>;

/// How long a closing connection waits for its in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Once the first byte of a frame has arrived, the rest must arrive within
/// this long or the connection is closed. Without it a client that sends half
/// a frame and goes silent would hold its connection (and its quota slot)
/// forever. Idle connections *between* frames are never timed out: long-lived
/// clients and stream subscribers legitimately stay quiet for hours.
pub const PARTIAL_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Test-only override of [`PARTIAL_FRAME_TIMEOUT`] in milliseconds, so the
/// integration tests need not wait 10 s. Not a supported setting.
const PARTIAL_FRAME_TIMEOUT_ENV: &str = "MECHA_PARTIAL_FRAME_TIMEOUT_MS";
/// Stream pushes one connection may have queued for writing. Beyond it pushes
/// are dropped (a client that does not read cannot grow the daemon's memory);
/// each capability's protocol covers the loss (pubsub redelivers).
pub const PUSH_BUDGET: usize = 1024;

/// [`mecha_abi::TRACE_LEN`] as a header length.
const TRACE_LEN_U32: u32 = mecha_abi::TRACE_LEN as u32;

/// Source of connection ids, used to find a connection's streams.
static NEXT_CONN_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Builds an error response to `request` carrying an `ErrorBody`.
pub fn error_frame(
    request: &Header,
    status: Status,
    message: &str,
    guard: ConnOut,
) -> OutFrame<ConnOut> {
    let body = mecha_abi::encode(&ErrorBody {
        message: message.to_string(),
    })
    .unwrap_or_default();
    let guard = guard.answered(status.code());
    OutFrame::guarded(request.response(status), Bytes::new(), body.into(), guard)
}

/// Answers a connection that is refused before HELLO with one error frame
/// (request id 0, like other connection-level errors) and closes it.
pub(crate) async fn refuse(mut stream: UnixStream, status: Status, message: &str) {
    use tokio::io::AsyncWriteExt;
    tracing::info!("refusing a connection: {message}");
    let body = mecha_abi::encode(&ErrorBody {
        message: message.to_string(),
    })
    .unwrap_or_default();
    if let Ok(frame) =
        mecha_abi::encode_frame(Header::request(Opcode(0), 0).response(status), &body)
    {
        let _ = stream.write_all(&frame).await;
    }
    let _ = stream.shutdown().await;
}

/// What the read loop does after a frame.
enum Flow {
    Continue,
    Close,
}

/// Per-connection state.
struct Conn {
    allow: Option<Arc<crate::peer::Allow>>,
    quota: Arc<crate::quota::TenantState>,
    daemon: Arc<Daemon>,
    peer: Peer,
    tenant: Bytes,
    tx: ConnTx,
    link_ref: ConnRef,
    permits: Arc<Semaphore>,
    version: Option<u8>,
    /// Module links this connection's requests were queued on since the last
    /// flush (see `Link::forward`).
    unflushed: Unflushed,
}

/// Serves one accepted connection until EOF, a fatal protocol error, or shutdown.
pub async fn serve(
    stream: UnixStream,
    peer: Peer,
    daemon: Arc<Daemon>,
    mut shutdown: watch::Receiver<bool>,
) {
    let resolved = daemon.tenants.read().resolve(&peer);
    let (tenant, allow) = match resolved {
        Ok(t) => (t.name, t.allow),
        Err(msg) => {
            refuse(stream, Status::PermissionDenied, &msg).await;
            return;
        }
    };
    tracing::debug!(pid = peer.pid, uid = peer.uid, %tenant, "connection accepted");
    let quota = daemon.quotas.read().tenant(&tenant);
    // Counted as open until this function returns; requests timed per tenant.
    let (_open, tenant_metrics) = (daemon.metrics.connection(), daemon.metrics.tenant(&tenant));
    let _slot = match quota.connect() {
        Ok(slot) => slot,
        Err(msg) => {
            refuse(stream, Status::ResourceExhausted, &msg).await;
            return;
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
    let link_ref = ConnRef {
        tx: tx.clone(),
        pushes: Arc::new(Semaphore::new(PUSH_BUDGET)),
        id: NEXT_CONN_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        calls: Arc::new(crate::calls::Calls::default()),
    };
    let mut conn = Conn {
        allow,
        quota,
        peer,
        tenant: Bytes::from(tenant),
        tx,
        link_ref,
        permits: Arc::new(Semaphore::new(max_in_flight)),
        version: None,
        unflushed: Unflushed::default(),
        daemon,
    };
    let rd = Clocked::new(rd, partial_frame_timeout());
    let mut reader = FrameReader::new(rd, conn.daemon.max_frame);
    loop {
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
            conn.flush();
        }
        let next = tokio::select! {
            next = reader.next() => next,
            _ = shutdown.changed() => break,
        };
        // A response frame answers a request the daemon delivered to this app
        // (INVOKE_CALL, SPEC §7.8). It takes no permit: an app whose own
        // requests fill its in-flight limit must still be able to answer the
        // calls those requests may be waiting on.
        if let Ok(Some((h, p))) = &next {
            if h.flags.0 == Flags::RESPONSE
                && h.opcode == Opcode::INVOKE_CALL
                && conn.version.is_some()
            {
                conn.link_ref.calls.answer(h, p.clone());
                continue;
            }
        }
        // Waiting for a permit before acting on a frame bounds the requests one
        // connection can have in flight; reading pauses while it is at the limit.
        // What is queued must be on its way first: it is what returns permits.
        let permit = match Arc::clone(&conn.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                conn.flush();
                let Ok(permit) = Arc::clone(&conn.permits).acquire_owned().await else {
                    break;
                };
                permit
            }
        };
        let permit = ConnOut::new(permit);
        let flow = match next {
            Ok(Some((header, payload))) => {
                let permit = permit.observed(&tenant_metrics, header.opcode);
                conn.on_frame(header, payload, permit).await
            }
            Ok(None) => break,
            Err(e) => {
                conn.on_read_error(e, permit).await;
                Flow::Close
            }
        };
        if let Flow::Close = flow {
            break;
        }
    }
    conn.flush();
    // Streams die with their connection; tell their modules to stop pushing.
    // Before failing its calls, so a module learns that a callee is gone
    // before any answer saying so (SPEC §8, LINK_DELIVER).
    let conn_id = conn.link_ref.id;
    cancel_streams(&conn.daemon, conn_id);
    // Calls delivered to this app can no longer be answered.
    conn.link_ref.calls.close();
    // Finish what is in flight: every permit comes back once its answer is written.
    let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, conn.permits.acquire_many(all))
        .await
        .is_ok();
    // A request still in flight above may have opened a stream since; its
    // route holds a sender of this connection's queue, which would keep the
    // writer (and the module's stream) alive for nothing. Cancel those too.
    cancel_streams(&conn.daemon, conn_id);
    if !drained {
        tracing::warn!(
            pid = conn.peer.pid,
            "closing a connection with requests still in flight"
        );
        writer.abort();
        return;
    }
    drop(conn);
    let _ = writer.await;
}

/// The partial-frame limit: [`PARTIAL_FRAME_TIMEOUT`], unless the test-only
/// environment variable overrides it.
fn partial_frame_timeout() -> Duration {
    static LIMIT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var(PARTIAL_FRAME_TIMEOUT_ENV)
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(PARTIAL_FRAME_TIMEOUT, Duration::from_millis)
    })
}

/// The read error of a connection whose partial frame timed out.
#[derive(Debug, thiserror::Error)]
#[error("a partial frame was not completed within {0:?} of its first byte")]
struct StalledFrame(Duration);

/// True when a read failed because [`Clocked`] timed a partial frame out.
fn is_stalled(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<StalledFrame>())
}

/// A connection's read half that times partial frames. The clock starts when
/// a read at a frame boundary returns bytes, and stops at the next boundary
/// ([`Clocked::frame_done`]); while it runs, a read that would wait past the
/// deadline fails with [`StalledFrame`] instead.
///
/// Timing the reads, rather than wrapping `FrameReader::next` in a timeout,
/// starts the clock at the frame's first byte exactly, and costs nothing (no
/// timer, no extra system call) for a frame that arrives in one read.
struct Clocked<R> {
    inner: R,
    limit: Duration,
    /// When the frame being received must be complete; `None` at a boundary.
    deadline: Option<Instant>,
    /// Created on the first read that has to wait with the clock running.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<R> Clocked<R> {
    fn new(inner: R, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            deadline: None,
            timer: None,
        }
    }

    /// Called at each frame boundary, before reading on, with the bytes still
    /// buffered: none stops the clock; some belong to the next frame, whose
    /// clock starts now.
    fn frame_done(&mut self, buffered: usize) {
        self.deadline = (buffered > 0).then(|| Instant::now() + self.limit);
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Clocked<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.deadline.is_none() && buf.filled().len() > before {
                    this.deadline = Some(Instant::now() + this.limit);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let Some(deadline) = this.deadline else {
                    // Idle between frames: wait as long as it takes.
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        StalledFrame(this.limit),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready_err => ready_err,
        }
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

impl Conn {
    /// Queues an answer; the read loop flushes.
    async fn reply(&self, frame: OutFrame<ConnOut>) {
        let _ = self.tx.push(frame);
    }

    /// Writes what this connection queued on its module links and on itself.
    fn flush(&mut self) {
        self.unflushed.flush();
        self.tx.flush();
    }

    async fn error(&self, request: &Header, status: Status, message: &str, permit: ConnOut) {
        self.reply(error_frame(request, status, message, permit))
            .await;
    }

    async fn on_read_error(&self, e: ReadError, permit: ConnOut) {
        match e {
            ReadError::Header(HeaderError::BadMagic { .. }) => {
                tracing::info!(pid = self.peer.pid, "closing connection: {e}");
                let header = Header::request(Opcode(0), 0);
                self.error(&header, Status::InvalidArgument, &e.to_string(), permit)
                    .await;
            }
            ReadError::Header(HeaderError::TooLarge { request_id, .. }) => {
                tracing::info!(pid = self.peer.pid, "closing connection: {e}");
                let header = Header::request(Opcode(0), request_id);
                self.error(&header, Status::ResourceExhausted, &e.to_string(), permit)
                    .await;
            }
            ReadError::Io(ref io) if is_stalled(io) => {
                tracing::info!(pid = self.peer.pid, "closing connection: {e}");
            }
            ReadError::Io(_) | ReadError::Truncated { .. } => {
                tracing::debug!(pid = self.peer.pid, "connection dropped: {e}");
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
            self.error(&header, Status::InvalidArgument, &problem, permit)
                .await;
            return Flow::Continue;
        }
        let Some(version) = self.version else {
            return self.hello(&header, &payload, permit).await;
        };
        if header.version != version {
            let msg = format!(
                "frame version {} differs from the negotiated version {version}",
                header.version
            );
            self.error(&header, Status::UnsupportedVersion, &msg, permit)
                .await;
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
                    self.error(&header, Status::InvalidArgument, &msg, permit)
                        .await;
                    return Flow::Continue;
                }
            }
        } else {
            None
        };
        if parent.is_some() || self.daemon.tracer.is_some() {
            permit.traced(crate::trace::Span::start(
                self.daemon.tracer.as_ref(),
                parent,
                header.opcode,
                &self.tenant,
            ));
        }
        if header.opcode.is_admin() && !self.daemon.is_admin(&self.peer) {
            let msg = format!(
                "{} is an admin operation; uid {} is not root, the daemon's uid, or in adminUids",
                header.opcode, self.peer.uid
            );
            self.error(&header, Status::PermissionDenied, &msg, permit)
                .await;
            return Flow::Continue;
        }
        match header.opcode.family() {
            Family::Control => self.control(&header, &payload, permit).await,
            family => self.route(family, header, payload, permit).await,
        }
        Flow::Continue
    }

    async fn hello(&mut self, header: &Header, payload: &[u8], permit: ConnOut) -> Flow {
        if header.opcode != Opcode::HELLO {
            let msg = format!("expected HELLO as the first frame, got {}", header.opcode);
            self.error(header, Status::InvalidArgument, &msg, permit)
                .await;
            return Flow::Close;
        }
        let hello: Hello = match mecha_abi::decode(payload) {
            Ok(h) => h,
            Err(e) => {
                self.error(header, Status::InvalidArgument, &e.to_string(), permit)
                    .await;
                return Flow::Close;
            }
        };
        if hello.min_version > VERSION || hello.max_version < VERSION {
            let msg = format!(
                "client speaks ABI versions {}..={}, this daemon speaks {VERSION}..={VERSION}",
                hello.min_version, hello.max_version
            );
            self.error(header, Status::UnsupportedVersion, &msg, permit)
                .await;
            return Flow::Close;
        }
        tracing::debug!(client = %hello.client, pid = self.peer.pid, "hello");
        self.version = Some(VERSION);
        let reply = HelloReply {
            version: VERSION,
            daemon_version: env!("CARGO_PKG_VERSION").to_string(),
            tenant: String::from_utf8_lossy(&self.tenant).into_owned(),
            max_frame: self.daemon.max_frame,
        };
        match mecha_abi::encode(&reply) {
            Ok(body) => {
                // SPEC §7.1.1: the answer's `ext` carries the feature bits.
                let mut out = header.response(Status::Ok);
                out.ext = mecha_abi::Features::TRACE;
                let frame = OutFrame::guarded(out, Bytes::new(), body.into(), permit);
                self.reply(frame).await;
            }
            Err(e) => {
                self.error(header, Status::Internal, &e.to_string(), permit)
                    .await
            }
        }
        Flow::Continue
    }

    async fn ok<T: serde::Serialize>(&self, header: &Header, value: &T, permit: ConnOut) {
        match mecha_abi::encode(value) {
            Ok(body) => {
                let frame = OutFrame::guarded(
                    header.response(Status::Ok),
                    Bytes::new(),
                    body.into(),
                    permit,
                );
                self.reply(frame).await;
            }
            Err(e) => {
                self.error(header, Status::Internal, &e.to_string(), permit)
                    .await
            }
        }
    }

    async fn control(&self, header: &Header, payload: &Bytes, permit: ConnOut) {
        match header.opcode {
            Opcode::HELLO => {
                let msg = "HELLO was already negotiated on this connection";
                self.error(header, Status::InvalidArgument, msg, permit)
                    .await;
            }
            Opcode::PING | Opcode::STATUS | Opcode::RELOAD if !payload.is_empty() => {
                let msg = format!("{} takes an empty payload", header.opcode);
                self.error(header, Status::InvalidArgument, &msg, permit)
                    .await;
            }
            Opcode::PING => {
                let frame = OutFrame::guarded(
                    header.response(Status::Ok),
                    Bytes::new(),
                    Bytes::new(),
                    permit,
                );
                self.reply(frame).await;
            }
            Opcode::STATUS => self.ok(header, &self.daemon.status(), permit).await,
            Opcode::STREAM_CANCEL => self.cancel_stream(header, payload, permit).await,
            Opcode::MODULE_RESTART | Opcode::RELOAD => {
                self.admin(*header, payload.clone(), permit);
            }
            other => {
                let msg = format!("unknown control opcode {other}");
                self.error(header, Status::UnknownOpcode, &msg, permit)
                    .await;
            }
        }
    }

    async fn cancel_stream(&self, header: &Header, payload: &[u8], permit: ConnOut) {
        let req: StreamCancel = match mecha_abi::decode(payload) {
            Ok(r) => r,
            Err(e) => {
                return self
                    .error(header, Status::InvalidArgument, &e.to_string(), permit)
                    .await
            }
        };
        let modules: Vec<Arc<ModuleSlot>> = self.daemon.modules.read().clone();
        let found = modules.iter().any(|m| match m.route() {
            Route::Up(link) => link.cancel_stream(self.link_ref.id, req.stream_id),
            _ => false,
        });
        if found {
            let frame = OutFrame::guarded(
                header.response(Status::Ok),
                Bytes::new(),
                Bytes::new(),
                permit,
            );
            self.reply(frame).await;
        } else {
            let msg = format!("no open stream {} on this connection", req.stream_id);
            self.error(header, Status::NotFound, &msg, permit).await;
        }
    }

    async fn route(&mut self, family: Family, header: Header, payload: Bytes, mut permit: ConnOut) {
        if let Err(msg) = self.quota.admit(header.payload_len, permit.quota_mut()) {
            return self
                .error(&header, Status::ResourceExhausted, &msg, permit)
                .await;
        }
        if let Some(allow) = &self.allow {
            if !allow.permits(header.opcode) {
                let msg = format!(
                    "tenant {} may not use {}: it is not in the tenant's allow list",
                    String::from_utf8_lossy(&self.tenant),
                    header.opcode
                );
                return self
                    .error(&header, Status::PermissionDenied, &msg, permit)
                    .await;
            }
        }

        let Some(module) = self.daemon.module_for(family) else {
            let msg = match family {
                Family::Link | Family::Peer | Family::Unknown(_) => {
                    format!("unknown opcode {}", header.opcode)
                }
                f => format!(
                    "opcode {} belongs to the {} family, which has no configured component",
                    header.opcode,
                    f.name()
                ),
            };
            self.error(&header, Status::UnknownOpcode, &msg, permit)
                .await;
            return;
        };
        let timeout = match header.deadline_ms {
            0 => self.daemon.default_timeout,
            ms => Duration::from_millis(u64::from(ms)),
        };
        let request = Routed {
            conn: self.link_ref.clone(),
            tenant: self.tenant.clone(),
            deadline: tokio::time::Instant::now() + timeout,
            permit,
            header,
            payload,
        };
        // The common case forwards inline. A module that is restarting makes the
        // request wait for the new instance in its own task, so one waiting
        // request does not stall the rest of this connection's pipeline.
        if let Route::Up(_) = module.route() {
            if let Some(link) = request.dispatch(&module).await {
                self.unflushed.add(&link);
            }
        } else {
            tokio::spawn(async move {
                if let Some(link) = request.dispatch(&module).await {
                    link.flush();
                }
            });
        }
    }

    /// Admin operations take seconds (a module start), so they run in their
    /// own task and answer when done.
    /// Runs an admin operation; the caller has checked the peer may.
    fn admin(&self, header: Header, payload: Bytes, permit: ConnOut) {
        let daemon = Arc::clone(&self.daemon);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let result = match header.opcode {
                Opcode::MODULE_RESTART => match mecha_abi::decode::<ModuleRestartRequest>(&payload)
                {
                    Ok(req) => daemon
                        .restart_module(&req.module, req.binary.map(Into::into))
                        .await
                        .map(|pid| mecha_abi::encode(&ModuleRestartReply { pid }))
                        .map_err(|e| {
                            let status = if daemon.module_named(&req.module).is_none() {
                                Status::NotFound
                            } else {
                                Status::Unavailable
                            };
                            (status, e)
                        }),
                    Err(e) => Err((Status::InvalidArgument, e.to_string())),
                },
                _ => daemon
                    .reload()
                    .await
                    .map(|r| mecha_abi::encode(&r))
                    .map_err(|e| match e {
                        ReloadError::Config(m) => (Status::InvalidArgument, m),
                        ReloadError::Apply(m) => (Status::Unavailable, m),
                    }),
            };
            let frame = match result {
                Ok(Ok(body)) => OutFrame::guarded(
                    header.response(Status::Ok),
                    Bytes::new(),
                    body.into(),
                    permit,
                ),
                Ok(Err(e)) => error_frame(&header, Status::Internal, &e.to_string(), permit),
                Err((status, msg)) => error_frame(&header, status, &msg, permit),
            };
            let _ = tx.send(frame);
        });
    }
}

/// A request on its way to a module, carrying everything needed to answer it.
struct Routed {
    conn: ConnRef,
    tenant: Bytes,
    deadline: tokio::time::Instant,
    permit: ConnOut,
    header: Header,
    payload: Bytes,
}

impl Routed {
    /// Forwards to the module's running instance. A request that finds the
    /// module restarting waits for the new instance until its deadline; one
    /// refused by a draining instance was never sent and is routed again.
    /// Returns the link's outbox when the request was queued on it, for the
    /// caller to flush; errors are answered and written here.
    async fn dispatch(self, module: &ModuleSlot) -> Option<Outbox> {
        let Routed {
            conn,
            tenant,
            deadline,
            mut permit,
            mut header,
            mut payload,
        } = self;
        permit.set_module(&module.name);
        let tx = &conn.tx;
        // Each pass either forwards, answers, or observes a route change, so a
        // few passes suffice; the bound only guards against a flapping module.
        for _ in 0..8 {
            match module.route() {
                Route::Up(link) => {
                    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match link
                        .forward(&conn, permit, header, &tenant, payload, remaining)
                        .await
                    {
                        Ok(link) => return Some(link),
                        Err(back) => {
                            // The instance is draining or dead; its successor
                            // (or a Starting/Down route) is about to replace it.
                            (permit, header, payload) = (back.guard, back.header, back.payload);
                            module.route_moved_from(&link, deadline).await;
                        }
                    }
                }
                Route::Starting => {
                    if let Route::Starting = module.settled_route(deadline).await {
                        let msg = format!(
                            "module {} did not come back before the deadline",
                            module.name
                        );
                        let _ =
                            tx.send(error_frame(&header, Status::DeadlineExceeded, &msg, permit));
                        return None;
                    }
                }
                Route::Down(why) => {
                    let _ = tx.send(error_frame(&header, Status::Unavailable, &why, permit));
                    return None;
                }
            }
        }
        let msg = format!("module {} is restarting repeatedly; retry", module.name);
        let _ = tx.send(error_frame(&header, Status::Unavailable, &msg, permit));
        None
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

/// The partial-frame clock over in-memory streams, with a short limit.
#[cfg(test)]
mod tests {
    use super::*;
    use mecha_abi::encode_frame;
    use tokio::io::AsyncWriteExt;

    const LIMIT: Duration = Duration::from_millis(200);

    fn reader(rx: tokio::io::DuplexStream) -> FrameReader<Clocked<tokio::io::DuplexStream>> {
        FrameReader::new(Clocked::new(rx, LIMIT), 1024)
    }

    fn ping(id: u32) -> Vec<u8> {
        encode_frame(Header::request(Opcode::PING, id), b"").unwrap()
    }

    #[tokio::test]
    async fn an_idle_connection_is_never_timed_out() {
        let (mut tx, rx) = tokio::io::duplex(256);
        let mut r = reader(rx);
        let idle = tokio::time::timeout(LIMIT * 3, r.next()).await;
        assert!(idle.is_err(), "still waiting, without an error");
        tx.write_all(&ping(1)).await.unwrap();
        let (h, _) = r.next().await.unwrap().unwrap();
        assert_eq!(h.request_id, 1);
    }

    #[tokio::test]
    async fn a_partial_frame_times_out_even_while_bytes_trickle_in() {
        let (mut tx, rx) = tokio::io::duplex(256);
        let mut r = reader(rx);
        let frame = ping(1);
        let trickle = tokio::spawn(async move {
            for byte in frame {
                if tx.write_all(&[byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(LIMIT / 4).await;
            }
            tx
        });
        let start = std::time::Instant::now();
        match r.next().await {
            Err(ReadError::Io(e)) if is_stalled(&e) => {}
            other => panic!("expected a stalled frame, got {other:?}"),
        }
        assert!(start.elapsed() >= LIMIT);
        drop(r);
        trickle.await.unwrap();
    }

    #[tokio::test]
    async fn the_clock_restarts_for_read_ahead_bytes_when_reading_resumes() {
        let (mut tx, rx) = tokio::io::duplex(256);
        let mut r = reader(rx);
        // A whole frame and the first bytes of the next arrive together.
        let mut bytes = ping(1);
        bytes.extend_from_slice(&ping(2)[..5]);
        tx.write_all(&bytes).await.unwrap();
        let buffered = r.buffered();
        r.get_mut().frame_done(buffered);
        assert_eq!(r.next().await.unwrap().unwrap().0.request_id, 1);
        // The daemon does not read for longer than the limit (backpressure),
        // then resumes; the rest arrives soon after that.
        tokio::time::sleep(LIMIT * 2).await;
        let buffered = r.buffered();
        r.get_mut().frame_done(buffered);
        let rest = ping(2)[5..].to_vec();
        let late = tokio::spawn(async move {
            tokio::time::sleep(LIMIT / 4).await;
            tx.write_all(&rest).await.unwrap();
            tx
        });
        assert_eq!(r.next().await.unwrap().unwrap().0.request_id, 2);
        late.await.unwrap();
    }
}
