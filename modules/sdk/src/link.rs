//! The module side of the link: fd inheritance, handshake, request loop, drain.

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::Arc;

use mecha_abi::msg::{LinkHello, LinkReady};
use mecha_abi::{Flags, Header, Opcode, Status, MAX_FRAME_CAP};
use mecha_wire::{FrameReader, OutFrame, Outbox, ReadError};
use tokio::sync::Semaphore;

use crate::slots::TenantSlots;
use crate::stream::{Opener, Registry};
use crate::{Ctx, InitError, Module, Reply};

/// Requests a module serves at once, over all tenants. A request beyond it
/// is answered RESOURCE_EXHAUSTED at once rather than waited for: the link
/// loop never stops reading, so health pings and cancellations are always
/// read (SPEC §8, "Request slots").
pub const MAX_CONCURRENT: u32 = 4096;
/// Frames queued for the link beyond which stream pushes and spawned answers
/// wait for the writer.
const WRITE_QUEUE: usize = 1024;
/// How long a drained module waits for stream tasks to let go of the link.
const DRAIN_WRITER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// The environment variable naming the inherited link descriptor.
pub const LINK_FD_ENV: &str = "MECHA_LINK_FD";

/// Why a module's link loop stopped with an error.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("{LINK_FD_ENV} is not set or not a descriptor number; modules are started by mechad")]
    NoLinkFd,
    #[error("cannot use the link socket: {0}")]
    Socket(std::io::Error),
    #[error("link read failed: {0}")]
    Read(#[from] ReadError),
    #[error("unexpected message: expected {expected}, received {received}")]
    UnexpectedMessage { expected: Opcode, received: Opcode },
    #[error("initialisation failed: {0}")]
    Init(#[from] InitError),
}

/// Runs module `M` until the daemon drains it or goes away. Call from `main`.
pub fn run<M: Module>() -> ExitCode {
    crate::boot::init_logs();
    // Before the runtime starts its threads, so that they inherit the filter.
    if crate::sandbox::disabled() {
        tracing::warn!(
            module = M::NAME,
            "MECHA_SECCOMP=off: running without the seccomp filter"
        );
    } else if let Err(e) = crate::sandbox::install() {
        // A kernel without seccomp still runs the module, with the other
        // confinement (no_new_privs, rlimits, a dropped uid) in place.
        tracing::warn!(module = M::NAME, "{e}; running without the seccomp filter");
    }
    // A current-thread runtime keeps an idle module small; drivers that block
    // (embedded databases) move their work to the blocking pool themselves.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(module = M::NAME, "cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve::<M>()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(module = M::NAME, "{e}");
            ExitCode::FAILURE
        }
    }
}

/// The link's halves, registered for readability only (see `mecha_wire::sock`).
fn link_stream() -> Result<(mecha_wire::sock::ReadHalf, mecha_wire::sock::WriteHalf), LinkError> {
    let fd: i32 = std::env::var(LINK_FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or(LinkError::NoLinkFd)?;
    // SAFETY: mechad passes this descriptor to the module for the link and
    // nothing else in this process opens, uses or closes it, so taking sole
    // ownership of it here is sound. If it is not a socket, the calls below fail
    // with an error instead of misbehaving.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let std_stream = std::os::unix::net::UnixStream::from(owned);
    mecha_wire::sock::split(std_stream).map_err(LinkError::Socket)
}

/// Encodes and queues one response; a closed queue means the link is gone,
/// which the read loop notices on its own. With `flush` the response is
/// written now (an answer from a task of its own); without, the read loop
/// writes it with the rest of what one read brought.
async fn respond(tx: &Outbox, request: &Header, reply: Reply, flush: bool) {
    let reply = bounded(request.opcode, reply);
    let mut header = request.response(reply.status);
    if reply.opens_stream {
        header.flags.0 |= Flags::STREAM;
    }
    let frame = OutFrame::new(header, reply.payload);
    if flush {
        let _ = tx.send_wait(frame).await;
    } else {
        let _ = tx.push(frame);
    }
}

/// The reply itself if its payload fits the link's frame limit
/// ([`MAX_FRAME_CAP`]), else RESOURCE_EXHAUSTED naming both sizes.
///
/// The daemon treats a frame over the limit as a broken link and restarts
/// the module, so one request whose answer grew too large (a bulk read of
/// large values) would take the module away from every tenant. Refusing
/// that one request instead keeps the link and everyone else's requests.
pub(crate) fn bounded(opcode: Opcode, reply: Reply) -> Reply {
    match crate::reply::check_frame_size(reply.payload.len()) {
        Ok(()) => reply,
        Err(message) => {
            tracing::debug!(%opcode, size = reply.payload.len(), "answer over the link limit refused");
            Reply::error(
                Status::ResourceExhausted,
                format!("the answer to {opcode} {message}"),
            )
        }
    }
}

/// Polls `work` once with the caller's context: `Ready` for work that
/// completes without waiting (an in-memory store), `Pending` otherwise. A
/// pending future may have registered the caller's waker; moved into a task
/// and polled there, it registers the task's instead, and the caller sees at
/// most one spurious wake-up.
async fn poll_once<F: std::future::Future + Unpin>(work: &mut F) -> std::task::Poll<F::Output> {
    std::future::poll_fn(|cx| std::task::Poll::Ready(std::pin::Pin::new(&mut *work).poll(cx))).await
}

async fn serve<M: Module>() -> Result<(), LinkError> {
    let (rd, wr) = link_stream()?;
    let mut reader = FrameReader::new(rd, MAX_FRAME_CAP + u32::from(u16::MAX));
    let (tx, writer) = Outbox::new(wr, WRITE_QUEUE);
    let writer = tokio::spawn(writer);
    let module = match handshake::<M>(&mut reader, &tx).await {
        Ok(Some(module)) => module,
        // The daemon left, or the module refused its configuration: the
        // refusal is written before the process ends.
        other => {
            drop(tx);
            let _ = writer.await;
            return other.map(|_| ());
        }
    };
    start_ticks(&module);
    let mut session = Session::new(module, tx);
    loop {
        // Answers queued while serving what one read brought leave together,
        // before this task waits for more.
        if !reader.has_frame() {
            session.tx.flush();
        }
        // EOF means the daemon is gone: stop at once, as no one can read answers.
        let Some((header, payload)) = reader.next().await? else {
            session.registry.cancel_all();
            session.daemon_link.close();
            return Ok(());
        };
        if header.flags.is_response() {
            // The daemon's answer to a request of ours (LINK_DELIVER).
            session.daemon_link.answer(&header, payload);
            continue;
        }
        match header.opcode {
            Opcode::LINK_PING => respond(&session.tx, &header, Reply::empty(), false).await,
            Opcode::LINK_CANCEL => session.registry.cancel(header.request_id),
            Opcode::LINK_DRAIN => return session.drain(&header, writer).await,
            opcode => session.request(header, opcode, payload).await,
        }
    }
}

/// Answers LINK_HELLO: confines the module's writes, runs `Module::init` and
/// says which link features this SDK takes. `None` when the daemon left
/// before saying hello; an error (also answered on the link) when the hello
/// was not one or the module refused its configuration.
async fn handshake<M: Module>(
    reader: &mut FrameReader<mecha_wire::sock::ReadHalf>,
    tx: &Outbox,
) -> Result<Option<Arc<M>>, LinkError> {
    let Some((hello_header, hello_payload)) = reader.next().await? else {
        return Ok(None);
    };
    if hello_header.opcode != Opcode::LINK_HELLO {
        return Err(LinkError::UnexpectedMessage {
            expected: Opcode::LINK_HELLO,
            received: hello_header.opcode,
        });
    }
    let init = match Reply::decode::<LinkHello>(&hello_payload) {
        Ok(hello) => {
            confine_writes::<M>(&hello);
            M::init(hello).await
        }
        Err(_) => Err(InitError("LINK_HELLO payload is undecodable".into())),
    };
    let module = match init {
        Ok(m) => Arc::new(m),
        Err(e) => {
            respond(
                tx,
                &hello_header,
                Reply::error(Status::Internal, e.0.clone()),
                true,
            )
            .await;
            return Err(e.into());
        }
    };
    let ready = LinkReady {
        module: M::NAME.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    // SPEC §8: the answer's `ext` says which link features this SDK takes;
    // TRACE: forwarded requests may carry a trace context.
    let reply = Reply::ok(&ready);
    let mut header = hello_header.response(reply.status);
    if reply.status == Status::Ok {
        header.ext = mecha_abi::Features::TRACE;
    }
    let _ = tx.send(OutFrame::new(header, reply.payload));
    tracing::info!(module = M::NAME, pid = std::process::id(), "module ready");
    Ok(Some(module))
}

/// Calls `Module::tick` every `Module::TICK`, if the module has one.
fn start_ticks<M: Module>(module: &Arc<M>) {
    if let Some(period) = M::TICK {
        let m = Arc::clone(module);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            loop {
                interval.tick().await;
                m.tick().await;
            }
        });
    }
}

/// A handshaken link: the module and what its requests share.
struct Session<M> {
    module: Arc<M>,
    tx: Outbox,
    daemon_link: crate::DaemonLink,
    /// The module's request slots; draining takes them all.
    permits: Arc<Semaphore>,
    /// Each tenant's share of them.
    slots: TenantSlots,
    registry: Arc<Registry>,
    draining_tx: tokio::sync::watch::Sender<bool>,
    draining: tokio::sync::watch::Receiver<bool>,
}

impl<M: Module> Session<M> {
    fn new(module: Arc<M>, tx: Outbox) -> Self {
        let daemon_link = crate::DaemonLink::new(tx.clone());
        module.attach(daemon_link.clone());
        let (draining_tx, draining) = tokio::sync::watch::channel(false);
        Self {
            module,
            tx,
            daemon_link,
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT as usize)),
            slots: TenantSlots::new(M::NAME, M::TENANT_SLOTS),
            registry: Arc::new(Registry::default()),
            draining_tx,
            draining,
        }
    }

    /// LINK_DRAIN: lets every request in flight finish, ends the streams,
    /// answers, and gives the writer a moment to send what is queued.
    async fn drain(
        self,
        header: &Header,
        writer: tokio::task::JoinHandle<std::io::Result<()>>,
    ) -> Result<(), LinkError> {
        let _ = self.draining_tx.send(true);
        // Taking every permit waits until all in-flight requests answered.
        let _all = self.permits.acquire_many(MAX_CONCURRENT).await;
        self.registry.cancel_all();
        respond(&self.tx, header, Reply::empty(), true).await;
        self.daemon_link.close();
        drop(self.tx);
        // Stream tasks hold writer handles until they notice the
        // cancellation; do not let a slow one keep the process alive.
        let _ = tokio::time::timeout(DRAIN_WRITER_WAIT, writer).await;
        tracing::info!(module = M::NAME, "drained");
        Ok(())
    }

    /// Serves one application request: a slot of the tenant's share, then
    /// the handler, answered inline when it completes at once.
    async fn request(&mut self, header: Header, opcode: Opcode, payload: bytes::Bytes) {
        // The tenant is read first: the request slots are shared out by
        // tenant before any work starts, since work that started (a write
        // handed to a blocking thread) cannot be taken back.
        let (tenant, trace, body) = match split_tenant(&header, &payload) {
            Ok((tenant, trace, body)) => {
                let offset = payload.len() - body.len();
                (tenant.to_string(), trace, offset)
            }
            Err(reply) => return respond(&self.tx, &header, reply, false).await,
        };
        // Slots are taken without waiting. A module that waited for a slot
        // would stop reading its link, and then the health pings behind the
        // requests would go unanswered and the daemon would kill the module
        // for everyone (issue #16). A request over its tenant's share, or
        // over the module's total, is refused instead; see `TenantSlots` for
        // why refusing beats queueing here.
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            let reply = Reply::error(
                Status::ResourceExhausted,
                format!(
                    "the {} module is serving {MAX_CONCURRENT} requests already; try again later",
                    M::NAME
                ),
            );
            return respond(&self.tx, &header, reply, false).await;
        };
        let share = match self.slots.take(&tenant) {
            Ok(share) => share,
            Err(reply) => return respond(&self.tx, &header, reply, false).await,
        };
        let deadline = (header.deadline_ms > 0).then(|| {
            std::time::Instant::now()
                + std::time::Duration::from_millis(u64::from(header.deadline_ms))
        });
        let ctx = Ctx {
            tenant,
            trace,
            opcode,
            deadline,
            draining: self.draining.clone(),
            stream: Opener {
                tx: Some(self.tx.clone()),
                registry: Arc::clone(&self.registry),
                link_id: header.request_id,
                opcode,
            },
        };
        let m = Arc::clone(&self.module);
        let mut work =
            Box::pin(async move { m.handle(ctx, payload.get(body..).unwrap_or_default()).await });
        // The fast path: a handler that completes without waiting is
        // answered here, with no task, no hand-off and no wake-up. Only
        // handlers that wait get a task of their own.
        match poll_once(&mut work).await {
            std::task::Poll::Ready(reply) => {
                // Bounded before `opened` is read: an answer refused for its
                // size opens no stream.
                let reply = bounded(opcode, reply);
                let opened = reply.opens_stream;
                respond(&self.tx, &header, reply, false).await;
                self.registry.answered(header.request_id, opened);
                drop((permit, share));
            }
            std::task::Poll::Pending => {
                let tx = self.tx.clone();
                let registry = Arc::clone(&self.registry);
                tokio::spawn(async move {
                    let reply = bounded(opcode, work.await);
                    let opened = reply.opens_stream;
                    respond(&tx, &header, reply, true).await;
                    registry.answered(header.request_id, opened);
                    drop((permit, share));
                });
            }
        }
    }
}

/// Applies the Landlock write rules (`crate::landlock`) on this, the
/// module's main thread, before `init` lets any driver start a thread.
/// A kernel without Landlock, or rules that fail, leave the module running
/// with its other confinement, and the log says so.
fn confine_writes<M: Module>(hello: &LinkHello) {
    if crate::landlock::disabled() {
        tracing::warn!(
            module = M::NAME,
            "MECHA_LANDLOCK=off: running without the Landlock write rules"
        );
        return;
    }
    let writable = crate::landlock::writable_dirs(hello);
    crate::landlock::create_missing(&writable);
    match crate::landlock::restrict_writes(&writable) {
        Ok(crate::landlock::Confinement::Unsupported) => tracing::info!(
            module = M::NAME,
            "this kernel has no Landlock; writes are not confined to the data directory"
        ),
        Ok(how) => tracing::debug!(module = M::NAME, ?how, ?writable, "writes confined"),
        Err(e) => tracing::warn!(module = M::NAME, "{e}; writes are not confined"),
    }
}

/// A forwarded request's tenant, trace context and application payload.
type Split<'a> = (&'a str, Option<mecha_abi::TraceContext>, &'a [u8]);

/// Splits a forwarded request's payload into the tenant prefix (`ext` bytes of
/// UTF-8) and the application's payload.
///
/// With the TRACE flag, the 26-byte trace context follows the tenant (SPEC §8).
fn split_tenant<'a>(header: &Header, payload: &'a [u8]) -> Result<Split<'a>, Reply> {
    let n = usize::from(header.ext);
    let (tenant, body) = payload.split_at_checked(n).ok_or_else(|| {
        Reply::error(
            Status::Internal,
            "link frame shorter than its tenant prefix",
        )
    })?;
    let tenant = std::str::from_utf8(tenant)
        .map_err(|_| Reply::error(Status::Internal, "link tenant prefix is not UTF-8"))?;
    if tenant.is_empty() {
        return Err(Reply::error(
            Status::Internal,
            "link frame carries no tenant",
        ));
    }
    if !header.flags.is_traced() {
        return Ok((tenant, None, body));
    }
    let trace = mecha_abi::TraceContext::decode(body)
        .map_err(|e| Reply::error(Status::Internal, format!("link trace context: {e}")))?;
    let body = body.get(mecha_abi::TRACE_LEN..).unwrap_or_default();
    Ok((tenant, Some(trace), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_over_the_link_limit_becomes_resource_exhausted() {
        let fits = Reply {
            status: Status::Ok,
            payload: vec![0; 16],
            opens_stream: false,
        };
        assert_eq!(bounded(Opcode::STATE_BULK_GET, fits.clone()), fits);
        let too_large = Reply {
            status: Status::Ok,
            payload: vec![0; MAX_FRAME_CAP as usize + 1],
            opens_stream: true,
        };
        let refused = bounded(Opcode::STATE_BULK_GET, too_large);
        assert_eq!(refused.status, Status::ResourceExhausted);
        assert!(!refused.opens_stream, "a refused answer opens no stream");
        let message = mecha_abi::decode::<mecha_abi::msg::ErrorBody>(&refused.payload)
            .expect("an error body")
            .message;
        assert!(message.contains("STATE_BULK_GET"), "{message}");
        assert!(message.contains(&MAX_FRAME_CAP.to_string()), "{message}");
    }
}
