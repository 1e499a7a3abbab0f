//! The async, pipelining client: one connection, a reader task that matches
//! answers to callers by request id, and typed calls for every opcode. Typed
//! calls retry retryable answers within their deadline ([`RetryPolicy`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mecha_abi::msg::{
    DaemonUpgradeReply, DaemonUpgradeRequest, ErrorBody, Hello, HelloReply, ModuleRestartRequest,
    ReloadReply, StatusReply,
};
use mecha_abi::{
    Features, Flags, Header, Opcode, Status, TraceContext, MAX_FRAME_CAP, TRACE_LEN, VERSION,
};
use mecha_wire::{FrameReader, OutFrame, Outbox, WeakOutbox};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::request::{PingRequest, ReloadRequest, Request, StatusRequest};
use crate::retry::{is_retryable, Backoff, JitterSeed, RetryPolicy};
use crate::Error;

/// Deadline of a call that sets none, matching the daemon's default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Extra time the client waits beyond a deadline for the daemon's own
/// DEADLINE_EXCEEDED answer before giving up locally.
const GRACE: Duration = Duration::from_secs(1);
/// Frames queued for the writer before callers wait.
const WRITE_QUEUE: usize = 1024;
/// A retry is not sent when less than this is left of the deadline: the
/// header carries whole milliseconds, and 0 would mean the daemon's default.
const MIN_ATTEMPT_BUDGET: Duration = Duration::from_millis(1);

type Answer = Result<(Status, Bytes), Error>;

pub(crate) struct Shared {
    pub(crate) pending: Mutex<Pending>,
    /// The feature bits of the daemon's HELLO answer (its header's `ext`).
    features: AtomicU16,
}

pub(crate) struct Pending {
    open: Option<String>,
    waiting: HashMap<u32, oneshot::Sender<Answer>>,
    /// Open streams by stream id (the id of the request that opened them).
    pub(crate) streams: HashMap<u32, mpsc::Sender<crate::stream::Item>>,
    /// Handlers of the app ids this connection serves (INVOKE_CALL).
    pub(crate) handlers: HashMap<String, crate::invoke::Handler>,
}

/// An async connection to mechad. Cloning shares the connection.
#[derive(Clone)]
pub struct Client {
    tx: Outbox,
    pub(crate) shared: Arc<Shared>,
    next_id: Arc<AtomicU32>,
    hello: Arc<HelloReply>,
    timeout: Duration,
    retry: RetryPolicy,
    jitter: Arc<JitterSeed>,
    /// Trace context sent with every request of this handle (SPEC §2.1),
    /// when the daemon supports it.
    trace: Option<TraceContext>,
}

impl Client {
    /// Connects to the daemon at `path` and negotiates the ABI version.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path)
            .await
            .map_err(|error| Error::Connect {
                path: path.to_path_buf(),
                error,
            })?;
        let stream = stream.into_std().map_err(|error| Error::Connect {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_stream(stream, path).await
    }

    /// Negotiates the ABI version over a socket that is already connected to
    /// the daemon: one passed by a supervisor, or connected under other
    /// credentials (the daemon identifies the peer by the credentials of
    /// whoever called `connect`). `path` only names the socket in errors.
    pub async fn from_stream(
        stream: std::os::unix::net::UnixStream,
        path: &Path,
    ) -> Result<Self, Error> {
        // Registered for readability only (see mecha_wire::sock). The calling task writes its request itself when the socket takes
        // it at once, rather than handing it to a writer task (one wake-up
        // less per call); see mecha_wire::Outbox.
        let (rd, wr) = mecha_wire::sock::split(stream).map_err(|error| Error::Connect {
            path: path.to_path_buf(),
            error,
        })?;
        let (tx, writer) = Outbox::new(wr, WRITE_QUEUE);
        tokio::spawn(writer);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                open: None,
                waiting: HashMap::new(),
                streams: HashMap::new(),
                handlers: HashMap::new(),
            }),
            features: AtomicU16::new(0),
        });
        tokio::spawn(read_answers(
            FrameReader::new(rd, MAX_FRAME_CAP),
            Arc::clone(&shared),
            tx.downgrade(),
        ));
        let mut client = Self {
            tx,
            shared,
            next_id: Arc::new(AtomicU32::new(1)),
            hello: Arc::new(HelloReply {
                version: VERSION,
                daemon_version: String::new(),
                tenant: String::new(),
                max_frame: 0,
            }),
            timeout: DEFAULT_TIMEOUT,
            retry: RetryPolicy::default(),
            jitter: Arc::new(JitterSeed::from_clock()),
            trace: None,
        };
        let hello = Hello {
            min_version: VERSION,
            max_version: VERSION,
            client: concat!("mecha-client-rust/", env!("CARGO_PKG_VERSION")).to_string(),
        };
        // HELLO is never retried: the daemon answers it itself (never
        // UNAVAILABLE), and a second HELLO after a lost success is an error.
        let payload = mecha_abi::encode(&hello).map_err(|e| Error::Protocol(e.to_string()))?;
        let (status, body) = client.call_raw(Opcode::HELLO, payload).await?;
        client.hello = Arc::new(decode_answer(status, &body)?);
        Ok(client)
    }

    /// A handle whose calls use `timeout` as their deadline: the whole call,
    /// retries and pauses included, fits in it.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            timeout,
            ..self.clone()
        }
    }

    /// A handle whose typed calls retry according to `policy`; see
    /// [`RetryPolicy`] for what is retried by default.
    pub fn with_retries(&self, policy: RetryPolicy) -> Self {
        Self {
            retry: policy,
            ..self.clone()
        }
    }

    /// A handle whose requests carry the W3C `traceparent` `traceparent`
    /// (`00-<32 hex>-<16 hex>-<2 hex>`), so the daemon's span and the
    /// module's work join the caller's trace. It is sent only when the
    /// daemon's HELLO answer says it supports trace context
    /// ([`Client::supports_trace`]); against an older daemon calls go out
    /// without it.
    pub fn with_trace_parent(&self, traceparent: &str) -> Result<Self, Error> {
        let ctx = TraceContext::parse(traceparent).map_err(|e| Error::Status {
            status: Status::InvalidArgument,
            message: e.to_string(),
        })?;
        Ok(self.with_trace_context(Some(ctx)))
    }

    /// Like [`Client::with_trace_parent`] with a parsed context; `None`
    /// sends no trace context.
    pub fn with_trace_context(&self, ctx: Option<TraceContext>) -> Self {
        Self {
            trace: ctx,
            ..self.clone()
        }
    }

    /// The trace context this handle's requests carry.
    pub fn trace_context(&self) -> Option<TraceContext> {
        self.trace
    }

    /// True when the daemon accepts trace context on requests.
    pub fn supports_trace(&self) -> bool {
        Features(self.shared.features.load(Ordering::Relaxed)).trace()
    }

    /// The retry policy of this handle's typed calls.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// The deadline of each call made through this handle.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The tenant the daemon assigned to this connection.
    pub fn tenant(&self) -> &str {
        &self.hello.tenant
    }

    /// The daemon's HELLO answer.
    pub fn hello(&self) -> &HelloReply {
        &self.hello
    }

    /// Sends one request with raw payload bytes and returns the raw answer.
    /// It makes exactly one attempt, never retries, and does not interpret
    /// the status; it is public for tools and tests. Typed calls retry.
    pub async fn call_raw(
        &self,
        opcode: Opcode,
        payload: Vec<u8>,
    ) -> Result<(Status, Bytes), Error> {
        self.attempt(opcode, Bytes::from(payload), self.timeout)
            .await
    }

    /// Sends one request whose deadline is `budget` from now and waits for
    /// its answer.
    async fn attempt(
        &self,
        opcode: Opcode,
        payload: Bytes,
        budget: Duration,
    ) -> Result<(Status, Bytes), Error> {
        self.attempt_with(opcode, payload, budget, |_| {}).await
    }

    /// A fresh request id; 0 is skipped because the daemon uses it for
    /// connection-level errors.
    pub(crate) fn next_request_id(&self) -> u32 {
        let mut id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if id == 0 {
            id = self.next_id.fetch_add(1, Ordering::Relaxed);
        }
        id
    }

    /// One attempt; `register` runs under the pending lock with the request
    /// id before the request is sent (streams register their channel there, so
    /// no push can arrive before its stream is known).
    pub(crate) async fn attempt_with(
        &self,
        opcode: Opcode,
        payload: Bytes,
        budget: Duration,
        register: impl FnOnce(&mut Pending),
    ) -> Result<(Status, Bytes), Error> {
        self.attempt_id(self.next_request_id(), opcode, payload, budget, register)
            .await
    }

    /// One attempt with a chosen request id.
    pub(crate) async fn attempt_id(
        &self,
        id: u32,
        opcode: Opcode,
        payload: Bytes,
        budget: Duration,
        register: impl FnOnce(&mut Pending),
    ) -> Result<(Status, Bytes), Error> {
        // A frame over the daemon's limit would make it close the whole
        // connection (SPEC §6.4), failing every other call in flight; refuse it
        // here instead. `max_frame` is 0 only during HELLO itself.
        let trace = self
            .trace
            .filter(|_| opcode != Opcode::HELLO && self.supports_trace());
        let extra = if trace.is_some() { TRACE_LEN } else { 0 };
        let max = self.hello.max_frame as usize;
        if max > 0 && payload.len() + extra > max {
            return Err(Error::Status {
                status: Status::ResourceExhausted,
                message: format!(
                    "payload of {} bytes exceeds the daemon's max_frame of {max} bytes; not sent",
                    payload.len()
                ),
            });
        }
        let (answer_tx, answer_rx) = oneshot::channel();
        {
            let mut pending = self.shared.pending.lock();
            if let Some(why) = &pending.open {
                return Err(Error::Closed(why.clone()));
            }
            pending.waiting.insert(id, answer_tx);
            register(&mut pending);
        }
        let mut header = Header::request(opcode, id);
        header.deadline_ms = deadline_ms(budget);
        let frame = match trace {
            Some(ctx) => {
                header.flags = Flags(Flags::TRACE);
                let prefix = Bytes::copy_from_slice(&ctx.encode());
                OutFrame::guarded(header, prefix, payload, ())
            }
            None => OutFrame::new(header, payload),
        };
        if self.tx.send_wait(frame).await.is_err() {
            self.shared.pending.lock().waiting.remove(&id);
            return Err(Error::Closed("the writer stopped".into()));
        }
        // The daemon enforces the deadline itself and answers
        // DEADLINE_EXCEEDED; waiting GRACE longer prefers its answer and only
        // gives up locally when the daemon is stuck.
        match tokio::time::timeout(budget + GRACE, answer_rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Error::Closed("the reader stopped".into())),
            Err(_) => {
                self.shared.pending.lock().waiting.remove(&id);
                Err(Error::Timeout(self.timeout))
            }
        }
    }

    /// The one retry loop behind every typed call.
    ///
    /// The request is encoded once and resent unchanged. A retryable answer
    /// (see [`RetryPolicy`]) to a request that may be retried leads to a
    /// jittered pause and another attempt, each attempt's header carrying the
    /// time left. Nothing is sent or slept past the deadline; when it runs
    /// out, the last retryable error is returned, so the caller learns why
    /// (e.g. which module is down) rather than a bare timeout.
    pub(crate) async fn call<R: Request>(&self, request: &R) -> Result<R::Reply, Error> {
        let payload =
            Bytes::from(mecha_abi::encode(request).map_err(|e| Error::Protocol(e.to_string()))?);
        let may_retry = request.is_idempotent() || self.retry.retry_non_idempotent;
        let deadline = Instant::now() + self.timeout;
        // The schedule (and its seed) is only needed once a retry happens.
        let mut backoff: Option<Backoff> = None;
        let mut attempts = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            attempts += 1;
            let err = match self.attempt(R::OPCODE, payload.clone(), remaining).await {
                Ok((status, body)) => match decode_answer(status, &body) {
                    Ok(reply) => return Ok(reply),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            if !may_retry || !is_retryable(&err) || !self.retry.allows_another(attempts) {
                return Err(err);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let pause = backoff
                .get_or_insert_with(|| Backoff::new(&self.retry, self.jitter.next()))
                .next_pause(remaining);
            if remaining.saturating_sub(pause) < MIN_ATTEMPT_BUDGET {
                return Err(err);
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Checks that the daemon answers.
    pub async fn ping(&self) -> Result<(), Error> {
        self.call(&PingRequest).await.map(|_| ())
    }

    /// Daemon version, uptime and module states.
    pub async fn status(&self) -> Result<StatusReply, Error> {
        self.call(&StatusRequest).await
    }

    /// Admin: hot-restarts module `module` (start new, switch, drain old),
    /// from `binary` when given (an upgrade). Returns the new instance's pid.
    pub async fn module_restart(&self, module: &str, binary: Option<String>) -> Result<u32, Error> {
        let req = ModuleRestartRequest {
            module: module.into(),
            binary,
        };
        Ok(self.call(&req).await?.pid)
    }

    /// Admin: replaces the daemon by a new one, started from `binary` (by
    /// default the one the daemon was started from), which takes over every
    /// connection, this one included. Answers once the new daemon is ready
    /// and the hand-over begins: its pid, then, is `new_pid` of the reply,
    /// and STATUS on this same connection says when it serves.
    pub async fn daemon_upgrade(
        &self,
        binary: Option<String>,
    ) -> Result<DaemonUpgradeReply, Error> {
        self.call(&DaemonUpgradeRequest { binary }).await
    }

    /// Admin: re-reads the daemon's configuration and applies the differences.
    pub async fn reload(&self) -> Result<ReloadReply, Error> {
        self.call(&ReloadRequest).await
    }
}

/// Turns a raw answer into the typed reply, or into the daemon's error. Every
/// non-OK answer carries an `ErrorBody` (SPEC §5).
fn decode_answer<T: DeserializeOwned>(status: Status, body: &[u8]) -> Result<T, Error> {
    if status != Status::Ok {
        let message = mecha_abi::decode::<ErrorBody>(body)
            .map(|b| b.message)
            .unwrap_or_else(|e| format!("(undecodable error body: {e})"));
        return Err(Error::Status { status, message });
    }
    mecha_abi::decode(body).map_err(|e| Error::Protocol(e.to_string()))
}

/// The header's relative deadline for `budget`: whole milliseconds rounded
/// up, and at least 1, because 0 would mean "the daemon's default" (5 s).
fn deadline_ms(budget: Duration) -> u32 {
    let ms = budget.as_nanos().div_ceil(1_000_000).max(1);
    u32::try_from(ms).unwrap_or(u32::MAX)
}

/// Matches answers to waiting callers until the connection ends, then fails
/// every call still waiting so none hangs.
async fn read_answers(
    mut reader: FrameReader<mecha_wire::sock::ReadHalf>,
    shared: Arc<Shared>,
    // Weak, so the reader does not keep the connection's writer alive after
    // every handle of the client is gone.
    tx: WeakOutbox,
) {
    let mut refusal: Option<(Status, String)> = None;
    let why = loop {
        match reader.next().await {
            // A request from the daemon: a call for an app id served here.
            Ok(Some((header, payload)))
                if header.flags.0 == 0 && header.opcode == Opcode::INVOKE_CALL =>
            {
                crate::invoke::serve_call(&shared, &tx, header, payload);
            }
            Ok(Some((header, payload))) if header.flags.is_push() => {
                crate::stream::route_push(&shared, header, payload);
            }
            Ok(Some((header, payload))) => {
                if header.opcode == Opcode::HELLO && header.status == 0 {
                    // SPEC §7.1.1: the daemon's feature bits.
                    shared.features.store(header.ext, Ordering::Relaxed);
                }
                let waiter = shared.pending.lock().waiting.remove(&header.request_id);
                match waiter {
                    Some(w) => {
                        let _ = w.send(Ok((Status::from_code(header.status), payload)));
                    }
                    None if header.request_id == 0 => {
                        let message = mecha_abi::decode::<ErrorBody>(&payload)
                            .map(|b| b.message)
                            .unwrap_or_default();
                        refusal = Some((Status::from_code(header.status), message.clone()));
                        break format!("the daemon reported a connection error: {message}");
                    }
                    None => {}
                }
            }
            Ok(None) => break "the daemon closed the connection".to_string(),
            Err(e) => break e.to_string(),
        }
    };
    let waiting: Vec<_> = {
        let mut pending = shared.pending.lock();
        pending.open = Some(why.clone());
        for (_, s) in pending.streams.drain() {
            let _ = s.try_send(crate::stream::Item::End(Error::Closed(why.clone())));
        }
        pending.waiting.drain().map(|(_, w)| w).collect()
    };
    // A connection the daemon refused (its tenant is denied, or at its
    // connection quota) tells the calls waiting on it why, with the status.
    for w in waiting {
        let _ = w.send(Err(match &refusal {
            Some((status, message)) => Error::Status {
                status: *status,
                message: message.clone(),
            },
            None => Error::Closed(why.clone()),
        }));
    }
}
