//! A blocking facade over the async client, for programs without a runtime.

use std::path::Path;
use std::time::Duration;

use mecha_abi::msg::{
    AppEntry, DaemonUpgradeReply, InvokeCall, InvokeReply, ReloadReply, StatusReply,
};

use crate::{Error, Handler, HandlerResult, InvokeOptions, RetryPolicy};

/// A blocking connection to mechad. Each call runs the async client on a
/// private single-threaded runtime until its answer arrives.
pub struct Client {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) inner: crate::Client,
}

impl Client {
    /// Connects to the daemon at `path` and negotiates the ABI version.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Closed(format!("cannot start a runtime: {e}")))?;
        let inner = rt.block_on(crate::Client::connect(path))?;
        Ok(Self { rt, inner })
    }

    /// Negotiates over an already connected socket (see
    /// [`crate::Client::from_stream`]).
    pub fn from_stream(stream: std::os::unix::net::UnixStream, path: &Path) -> Result<Self, Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Closed(format!("cannot start a runtime: {e}")))?;
        let inner = rt.block_on(crate::Client::from_stream(stream, path))?;
        Ok(Self { rt, inner })
    }

    /// Uses `timeout` as the deadline of every later call.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.inner = self.inner.with_timeout(timeout);
    }

    /// Retries later typed calls according to `policy` (see [`RetryPolicy`]).
    pub fn set_retries(&mut self, policy: RetryPolicy) {
        self.inner = self.inner.with_retries(policy);
    }

    /// Sends `traceparent` (W3C text form) with every later request, when
    /// the daemon supports trace context; see
    /// [`crate::Client::with_trace_parent`].
    pub fn set_trace_parent(&mut self, traceparent: &str) -> Result<(), Error> {
        self.inner = self.inner.with_trace_parent(traceparent)?;
        Ok(())
    }

    /// The retry policy of later typed calls.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.inner.retry_policy()
    }

    /// The tenant the daemon assigned to this connection.
    pub fn tenant(&self) -> &str {
        self.inner.tenant()
    }

    /// The async client underneath, sharing this connection. Its futures
    /// make progress only while driven by [`Client::block_on`], since the
    /// connection's I/O runs on this client's runtime.
    pub fn as_async(&self) -> &crate::Client {
        &self.inner
    }

    /// Runs `future` to completion on this client's runtime, for wrappers
    /// (the C library) that keep async objects, such as an owned
    /// subscription, beyond one call. Several threads may do so at once.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.rt.block_on(future)
    }

    blocking_calls! {
        /// Checks that the daemon answers.
        fn ping() -> ();
        /// Daemon version, uptime and module states.
        fn status() -> StatusReply;
        /// Admin: hot-restarts a module, from `binary` when given; the new pid.
        fn module_restart(module: &str, binary: Option<String>) -> u32;
        /// Admin: replaces the daemon by a new one that takes over every
        /// connection; the two pids.
        fn daemon_upgrade(binary: Option<String>) -> DaemonUpgradeReply;
        /// Admin: re-reads the configuration and applies the differences.
        fn reload() -> ReloadReply;
        /// Calls `method` of app `app_id`; the callee's reply.
        fn invoke(app_id: &str, method: &str, data: Vec<u8>, options: InvokeOptions) -> InvokeReply;
        /// Every app id reachable from the daemon, local and remote.
        fn apps() -> Vec<AppEntry>;
        /// Serves `app_id` with an async handler until cancelled, registering
        /// again after a reset; calls are served while this blocks.
        fn serve(app_id: &str, methods: Vec<String>, handler: Handler) -> ();
    }

    /// Serves `app_id` with a plain function, blocking until the registration
    /// is cancelled or fails.
    pub fn serve_fn<F>(&self, app_id: &str, methods: Vec<String>, f: F) -> Result<(), Error>
    where
        F: Fn(InvokeCall) -> HandlerResult + Send + Sync + 'static,
    {
        let f = std::sync::Arc::new(f);
        let handler = crate::handler(move |call| {
            let f = std::sync::Arc::clone(&f);
            async move { f(call) }
        });
        self.serve(app_id, methods, handler)
    }
}
