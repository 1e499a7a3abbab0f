//! `mecha-module`: everything a mecha module process needs.
//!
//! A module is an OS process spawned by `mechad` with one end of a socketpair on
//! fd 3 (the *link*). The SDK performs the LINK_HELLO handshake, runs the request
//! loop (many requests concurrently, bounded), hands each request to the
//! [`Module`] with its tenant, answers health pings, drains on LINK_DRAIN, and
//! exits when the daemon goes away. Writing a module means implementing
//! [`Module`] and calling [`run`] from `main`.
//!
//! What every module's drivers share lives here too: [`Components`] (the
//! configured stores by name), [`metadata`] (component metadata read the way
//! Dapr does) and, with the `redb` feature, `embedded` (an embedded
//! database that survives a hot restart). With the `redis`, `postgres` and
//! `etcd` features, `remote` connects every networked driver (connections to
//! backing servers that start lazily, reconnect by themselves and report
//! outages as UNAVAILABLE). With the `testing` feature, which module crates
//! turn on for their tests only, `testing` holds the harness their
//! conformance suites share.

mod boot;
mod components;
mod driver_error;
#[cfg(feature = "redb")]
pub mod embedded;
mod landlock;
mod link;
mod outbound;
#[cfg(any(feature = "redis", feature = "postgres", feature = "etcd"))]
pub mod remote;
mod reply;
mod sandbox;
mod slots;
mod stream;
#[cfg(feature = "testing")]
pub mod testing;

use std::future::Future;
use std::time::Duration;

/// A boxed future, so that drivers can be chosen at run time behind a
/// `dyn` trait: the one alias every module's driver traits use.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub use components::Components;
pub use link::{run, MAX_CONCURRENT};
pub use mecha_abi::msg::{ComponentSpec, LinkHello};
pub use mecha_abi::{Opcode, Status};
/// Component metadata, read the way Dapr does (its own crate, shared with
/// mechad's secret-store drivers).
pub use mecha_metadata as metadata;
/// The failure every capability's drivers share, with its one status
/// mapping (in `mecha-metadata`, so that the secret stores mechad links use it
/// too).
pub use mecha_metadata::{DriverError, Worded, Wording};
pub use outbound::DaemonLink;
pub use reply::{Reply, MAX_NAME_BYTES};
pub use slots::{TenantLimit, TenantPermit, DEFAULT_TENANT_SLOTS};
pub use stream::{Stream, StreamClosed};

/// The environment variable mechad sets on an instance started to replace a
/// running one (a hot restart or upgrade).
pub const HANDOFF_ENV: &str = "MECHA_HANDOFF";

/// True when this instance replaces one that may still be running. Such an
/// instance must not take exclusive resources (an embedded database's file
/// lock) during `init`: the daemon drains the old instance only after the new
/// one has handshaken, and sends it requests only after the old one exited.
/// Open such resources on first use instead.
pub fn is_handoff() -> bool {
    std::env::var_os(HANDOFF_ENV).is_some()
}

/// Who is asking: the tenant stamped on the request by the daemon.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// The tenant the daemon derived from the caller's kernel credentials. Every
    /// key, topic or lock a module touches must be scoped by it.
    pub tenant: String,
    /// The request's W3C trace context as the daemon forwarded it: the
    /// caller's trace id with the daemon's span as parent (SPEC §8). `None`
    /// when the request carried none and the daemon traces nothing.
    pub trace: Option<mecha_abi::TraceContext>,
    /// The opcode being served.
    pub opcode: Opcode,
    /// When the daemon stops waiting for the answer (from the request's
    /// deadline). Work past it is wasted: the application already got
    /// DEADLINE_EXCEEDED.
    pub deadline: Option<std::time::Instant>,
    pub(crate) stream: stream::Opener,
    pub(crate) draining: tokio::sync::watch::Receiver<bool>,
}

impl Ctx {
    /// The request's `traceparent` in W3C text form
    /// (`00-<trace id>-<parent id>-<flags>`), the daemon's span being the
    /// parent; `None` when the request is not traced.
    pub fn trace_parent(&self) -> Option<String> {
        self.trace.map(|t| t.to_string())
    }

    /// A context that belongs to no link, for calling a module's `handle` in
    /// unit tests. Streams opened from it are cancelled from the start; it
    /// has no deadline and never drains.
    pub fn detached(tenant: impl Into<String>, opcode: Opcode) -> Self {
        // One sender for every detached context, never dropped: a closed
        // channel would make `draining` resolve at once.
        static NEVER_DRAINS: std::sync::OnceLock<tokio::sync::watch::Sender<bool>> =
            std::sync::OnceLock::new();
        let draining = NEVER_DRAINS
            .get_or_init(|| tokio::sync::watch::channel(false).0)
            .subscribe();
        Self {
            tenant: tenant.into(),
            trace: None,
            opcode,
            deadline: None,
            draining,
            stream: stream::Opener {
                tx: None,
                registry: Default::default(),
                link_id: 0,
                opcode,
            },
        }
    }

    /// Like [`Ctx::detached`], but the instance is draining already (as
    /// after LINK_DRAIN), for testing handlers that must give up then.
    pub fn detached_draining(tenant: impl Into<String>, opcode: Opcode) -> Self {
        Self {
            draining: tokio::sync::watch::channel(true).1,
            ..Self::detached(tenant, opcode)
        }
    }

    /// Like [`Ctx::detached`], with the request's deadline `after` from now,
    /// for testing handlers that must give up at the deadline.
    pub fn detached_with_deadline(
        tenant: impl Into<String>,
        opcode: Opcode,
        after: Duration,
    ) -> Self {
        Self {
            deadline: Some(std::time::Instant::now() + after),
            ..Self::detached(tenant, opcode)
        }
    }

    /// Resolves when the daemon starts draining this instance (a hot restart
    /// or shutdown). Long waits (a blocking lock acquire) should give up then,
    /// so the new instance can take over promptly.
    pub async fn draining(&self) {
        let mut rx = self.draining.clone();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Opens a server-push stream for this request. The handler must then
    /// answer with [`Reply::stream_ok`]; pushes made meanwhile (typically from
    /// a task the handler spawns) wait until that answer is queued. If the
    /// handler answers with an error instead, the stream never opens.
    pub fn open_stream(&self) -> Stream {
        self.stream.open()
    }
}

/// Why a module could not initialise from its handshake.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InitError(pub String);

/// A capability served by a module process.
pub trait Module: Send + Sync + Sized + 'static {
    /// The module's name, e.g. `state`.
    const NAME: &'static str;

    /// How many requests one tenant may have in progress in this module at
    /// once (its share of the module's [`MAX_CONCURRENT`] request slots);
    /// more are answered RESOURCE_EXHAUSTED (SPEC §8, "Request slots").
    const TENANT_SLOTS: usize = DEFAULT_TENANT_SLOTS;

    /// How often [`Module::tick`] runs, if at all.
    const TICK: Option<Duration> = None;

    /// Builds the module from the daemon's handshake (components, data dir).
    fn init(hello: LinkHello) -> impl Future<Output = Result<Self, InitError>> + Send;

    /// Serves one request. `payload` is the application's payload, untouched.
    fn handle(&self, ctx: Ctx, payload: &[u8]) -> impl Future<Output = Reply> + Send;

    /// Called once after the handshake, before any request, with a handle
    /// for requests to the daemon (LINK_DELIVER). The default ignores it.
    fn attach(&self, _daemon: DaemonLink) {}

    /// Periodic maintenance (for example expiring keys). Errors are the
    /// module's to log; the default does nothing.
    fn tick(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detached_contexts_drain_and_expire_only_when_asked_to() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let plain = Ctx::detached("t", Opcode::PING);
        assert!(plain.deadline.is_none());
        let waited = rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(20), plain.draining()).await
        });
        assert!(waited.is_err(), "a detached context never drains");
        let draining = Ctx::detached_draining("t", Opcode::PING);
        rt.block_on(draining.draining());
        let timed = Ctx::detached_with_deadline("t", Opcode::PING, Duration::from_secs(5));
        let left = timed
            .deadline
            .expect("a deadline")
            .saturating_duration_since(std::time::Instant::now());
        assert!(left > Duration::from_secs(4) && left <= Duration::from_secs(5));
    }
}
