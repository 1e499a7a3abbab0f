//! `libmecha`: the C client library of mecha, a thin layer over the blocking
//! Rust client ([`mecha_client::blocking::Client`]).
//!
//! The C API is declared in `include/mecha.h`, which is written by hand and
//! is the documentation C users read; `tests/header.rs` checks that it and
//! the functions exported here never drift apart. Conventions of every entry
//! point (see the header for the user-facing rules):
//!
//! - the body runs in `ffi::entry`, so a panic never unwinds into C and
//!   every failure leaves its message for `mecha_last_error`;
//! - out parameters are wrapped in `ffi::Out` first, which resets them, so a
//!   failure always leaves NULL/0 and nothing to free;
//! - results are built completely (every buffer allocated) before the first
//!   out parameter is written, so no call hands out half a result.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod bindings;
mod config;
mod ffi;
mod invoke;
mod lock;
mod pubsub;
mod secrets;
mod sequencer;
mod state;
pub mod status;

use std::ffi::{c_char, c_int, c_void};
use std::time::Duration;

use ffi::{entry, quiet, CBuf, MechaClient, Out};
use status::{Code, Failure};

pub use bindings::{
    mecha_binding_event_ack, mecha_binding_event_attempt, mecha_binding_event_data,
    mecha_binding_event_free, mecha_binding_event_metadata, mecha_binding_event_metadata_at,
    mecha_binding_event_metadata_count, mecha_binding_event_nack, mecha_binding_event_name,
    mecha_binding_event_offset, mecha_binding_invoke, mecha_binding_subscribe,
    mecha_binding_subscription_close, mecha_binding_subscription_next,
};
pub use config::mecha_config_get;
pub use invoke::{
    mecha_call_caller_app_id, mecha_call_content_type, mecha_call_data, mecha_call_free,
    mecha_call_method, mecha_call_reply, mecha_invoke, mecha_register, mecha_registration_close,
    mecha_registration_next,
};
pub use lock::{mecha_lock_try, mecha_lock_unlock, unlock_code};
pub use pubsub::{
    mecha_message_ack, mecha_message_attempt, mecha_message_content_type, mecha_message_data,
    mecha_message_free, mecha_message_id, mecha_message_nack, mecha_message_topic, mecha_publish,
    mecha_subscribe, mecha_subscription_close, mecha_subscription_next,
};
pub use secrets::{mecha_secret_get, mecha_secret_get_all};
pub use sequencer::mecha_next_id;
pub use state::{mecha_state_delete, mecha_state_get, mecha_state_set};

/// Connects to mechad at `socket_path` (NULL: the default rule of
/// [`mecha_client::default_socket`]) and stores the new client in `*out`.
///
/// # Safety
/// `socket_path` is NULL or a NUL-terminated string; `out` is NULL or valid
/// for writing one pointer.
#[no_mangle]
pub unsafe extern "C" fn mecha_connect(
    socket_path: *const c_char,
    out: *mut *mut MechaClient,
) -> Code {
    entry(|| {
        // SAFETY: `out` is NULL or writable, per this function's contract.
        let out = unsafe { Out::new(out) }.required("out")?;
        // SAFETY: `socket_path` is NULL or a C string, per the contract.
        let path = match unsafe { ffi::optional_text(socket_path, "socket_path") }? {
            Some(p) => std::path::PathBuf::from(p),
            None => mecha_client::default_socket(),
        };
        let client = mecha_client::blocking::Client::connect(&path)?;
        out.put(Box::into_raw(Box::new(MechaClient::new(client))));
        Ok(())
    })
}

/// Closes the connection and frees the client.
///
/// # Safety
/// `client` is NULL or a pointer from `mecha_connect` not closed before, and
/// no other call on it is running or will follow.
#[no_mangle]
pub unsafe extern "C" fn mecha_close(client: *mut MechaClient) {
    quiet((), || {
        if !client.is_null() {
            // SAFETY: `client` came from `Box::into_raw` in `mecha_connect`
            // and, per the contract, is closed once, with no call running;
            // rebuilding the box and dropping it closes the connection and
            // stops the client's runtime.
            drop(unsafe { Box::from_raw(client) });
        }
    })
}

/// Sets the deadline of later calls on `client` (0: the default).
///
/// # Safety
/// `client` is NULL or a live client from `mecha_connect`.
#[no_mangle]
pub unsafe extern "C" fn mecha_set_timeout(client: *mut MechaClient, timeout_ms: u32) -> Code {
    entry(|| {
        // SAFETY: per the contract, `client` is NULL or live.
        let client = unsafe { ffi::client(client) }?;
        let timeout = match timeout_ms {
            0 => mecha_client::DEFAULT_TIMEOUT,
            ms => Duration::from_millis(u64::from(ms)),
        };
        client.write().set_timeout(timeout);
        Ok(())
    })
}

/// This thread's last error message ("" after a successful call).
#[no_mangle]
pub extern "C" fn mecha_last_error() -> *const c_char {
    quiet(c"".as_ptr(), ffi::last_error_ptr)
}

/// The name of a status code, or "UNKNOWN". The code arrives as an `int`:
/// C may pass any value, and only the known ones become a [`Code`].
#[no_mangle]
pub extern "C" fn mecha_status_name(status: c_int) -> *const c_char {
    quiet(c"UNKNOWN".as_ptr(), || {
        Code::from_value(status).map_or(c"UNKNOWN".as_ptr(), |c| c.c_name().as_ptr())
    })
}

/// Frees a buffer the library handed out.
///
/// # Safety
/// `ptr` is NULL or a buffer returned by this library and not freed before.
#[no_mangle]
pub unsafe extern "C" fn mecha_free(ptr: *mut c_void) {
    quiet((), || {
        // SAFETY: every buffer the library hands out comes from
        // `libc::malloc` (`CBuf`), and per the contract this one is freed
        // once; free(NULL) does nothing.
        unsafe { libc::free(ptr) }
    })
}

/// Copies `s` into a C string for an out parameter, only when the caller
/// asked for it (a NULL optional out parameter skips the copy).
fn text_for(out: &Out<*mut c_char>, s: &str, what: &str) -> Result<Option<CBuf>, Failure> {
    if out.wanted() {
        CBuf::text(s, what).map(Some)
    } else {
        Ok(None)
    }
}

/// Hands an optional buffer built by [`text_for`] to its out parameter.
fn put_text(out: &Out<*mut c_char>, buf: Option<CBuf>) {
    if let Some(buf) = buf {
        out.put(buf.into_raw());
    }
}
