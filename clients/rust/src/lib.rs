//! `mecha-client`: a tiny Rust client for the mecha daemon.
//!
//! [`Client`] is async (tokio) and pipelines: any number of calls may be in
//! flight on its one connection, each matched to its answer by request id.
//! [`blocking::Client`] offers the same calls for code without a runtime.
//! Typed calls retry an UNAVAILABLE answer within their deadline when that is
//! safe (reads, and writes carrying ETags); see [`RetryPolicy`].
//!
//! ```no_run
//! use mecha_client::{blocking::Client, SetOptions};
//!
//! fn main() -> Result<(), mecha_client::Error> {
//!     let client = Client::connect("/tmp/mecha.sock")?;
//!     let etag = client.set("", "cart:42", b"3 apples".to_vec(), SetOptions::default())?;
//!     let entry = client.get("", "cart:42")?.expect("just written");
//!     assert_eq!(entry.etag, etag);
//!     // Conditional write: succeeds only if nobody changed the key since we read it.
//!     let only_if_unchanged = SetOptions { etag: Some(etag), ttl: None };
//!     client.set("", "cart:42", b"4 apples".to_vec(), only_if_unchanged)?;
//!     Ok(())
//! }
//! ```
#![forbid(unsafe_code)]

/// Generates blocking wrappers that run the async method of the same name on
/// the blocking client's private runtime. Used by every capability file so
/// that each call is written once, in async form.
macro_rules! blocking_calls {
    ($( $(#[$doc:meta])* fn $name:ident($($arg:ident : $ty:ty),*) -> $ret:ty; )*) => {
        $(
            $(#[$doc])*
            pub fn $name(&self, $($arg: $ty),*) -> Result<$ret, $crate::Error> {
                self.rt.block_on(self.inner.$name($($arg),*))
            }
        )*
    };
}

mod acked;
mod bindings;
pub mod blocking;
mod client;
mod config;
mod error;
mod invoke;
mod lock;
mod pubsub;
mod request;
mod retry;
#[cfg(test)]
mod retry_loop_tests;
mod secrets;
mod sequencer;
mod state;
mod stream;

pub use bindings::{BindingSubscribeOptions, BindingSubscription, BlockingBindingSubscription};
pub use client::{Client, DEFAULT_TIMEOUT};
pub use config::{BlockingConfigWatch, ConfigWatch, RESUBSCRIBE_WINDOW};
pub use error::Error;
pub use invoke::{
    echo_handler, handler, Handler, HandlerFuture, HandlerResult, InvokeOptions, Registration,
};
pub use mecha_abi::msg::{
    AppEntry, BindingEvent, BulkGetItem, DeleteItem, ExtendLockReply, HelloReply,
    InvokeBindingReply, InvokeCall, InvokeReply, ModuleStatus, ReloadReply, SetItem, StateEntry,
    StatusReply, TryLockReply, TxOp, UnlockStatus,
};
pub use mecha_abi::{Status, TraceContext};
pub use pubsub::{
    BlockingPubsubSubscription, PublishOptions, PubsubSubscription, SubscribeOptions,
};
pub use retry::RetryPolicy;
pub use state::SetOptions;
pub use stream::{Subscription, STREAM_BUFFER};

/// The socket path clients use when none is given: `$MECHA_SOCKET`, else
/// `/run/mecha/mecha.sock` for root, else `$XDG_RUNTIME_DIR/mecha/mecha.sock`
/// — the same rule `mechad` follows.
pub fn default_socket() -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Some(p) = std::env::var_os("MECHA_SOCKET") {
        return PathBuf::from(p);
    }
    // /proc/self belongs to the effective uid of this process, which tells
    // whether we are root without any unsafe libc call.
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(u32::MAX);
    if uid == 0 {
        return PathBuf::from("/run/mecha/mecha.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("mecha/mecha.sock"),
        None => std::env::temp_dir().join(format!("mecha-{uid}/mecha.sock")),
    }
}
