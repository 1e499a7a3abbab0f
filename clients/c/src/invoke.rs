//! Service invocation in the C API (SPEC §7.8): `mecha_invoke` calls an app
//! by its app id; `mecha_register` serves one on the client's connection.
//!
//! The callee side polls, like pub/sub subscriptions: the Rust client runs a
//! handler for every INVOKE_CALL the daemon delivers, and the handler this
//! file installs only forwards the call into a queue and waits for C's
//! answer. `mecha_registration_next` takes calls from the queue and
//! `mecha_call_reply` hands the answer back, so C code never runs inside the
//! runtime and may answer calls in any order, from the thread it likes.

use std::ffi::{c_char, c_int, CString};
use std::future::Future;
use std::pin::pin;
use std::ptr::NonNull;
use std::task::Poll;
use std::time::Duration;

use mecha_abi::msg::{InvokeCall, InvokeReply};
use mecha_client::{Error, HandlerResult, InvokeOptions, Registration, Status};
use tokio::sync::{mpsc, oneshot};

use crate::ffi::{self, entry, quiet, CBuf, MechaClient, Out};
use crate::status::{Code, Failure};

/// A delivered call waiting for C, with the channel its answer goes back on.
struct Pending {
    call: InvokeCall,
    answer: oneshot::Sender<HandlerResult>,
}

/// `mecha_registration`: an app id served on a client's connection. Like a
/// subscription, it keeps a pointer to its client, whose runtime drives it;
/// the header requires closing every registration before its client.
pub struct MechaRegistration {
    client: NonNull<MechaClient>,
    app_id: String,
    /// `None` only between an ended registration and its replacement.
    inner: Option<Registration>,
    calls: mpsc::UnboundedReceiver<Pending>,
    /// Kept to build the handler again when the registration is renewed.
    queue: mpsc::UnboundedSender<Pending>,
}

// SAFETY: the client pointer is only dereferenced for shared access to a
// `MechaClient`, which is `Send + Sync`, and the header makes the caller keep
// the client alive while the registration exists; the other fields are
// `Send`. Concurrent use of one registration is excluded by the header.
unsafe impl Send for MechaRegistration {}

/// `mecha_call`: one delivered call, its text fields kept as C strings so
/// the accessors can hand out pointers valid until `mecha_call_free`.
pub struct MechaCall {
    call: InvokeCall,
    method: CString,
    content_type: CString,
    caller_app_id: CString,
    /// Taken by the one reply; dropping it unanswered fails the call.
    answer: Option<oneshot::Sender<HandlerResult>>,
}

impl MechaCall {
    fn new(pending: Pending) -> Result<Self, Failure> {
        let c = |s: &str, what: &str| {
            CString::new(s).map_err(|_| {
                Failure::new(
                    Code::ErrInvalid,
                    format!("the call's {what} holds a NUL byte"),
                )
            })
        };
        let call = pending.call;
        Ok(Self {
            method: c(&call.method, "method")?,
            content_type: c(&call.content_type, "content type")?,
            caller_app_id: c(&call.caller_app_id, "caller app id")?,
            call,
            answer: Some(pending.answer),
        })
    }
}

/// The handler installed for a C registration: it queues each call for
/// `mecha_registration_next` and waits for `mecha_call_reply`.
fn forwarding_handler(queue: mpsc::UnboundedSender<Pending>) -> mecha_client::Handler {
    mecha_client::handler(move |call| {
        let queue = queue.clone();
        async move {
            let (answer, answered) = oneshot::channel();
            if queue.send(Pending { call, answer }).is_err() {
                return Err((
                    Status::Unavailable,
                    "the registration has been closed".to_owned(),
                ));
            }
            // The sender is dropped when C frees the call without replying
            // (or closes the registration): the caller learns at once
            // instead of waiting for its deadline.
            answered.await.unwrap_or_else(|_| {
                Err((
                    Status::Internal,
                    "the callee freed the call without answering it".to_owned(),
                ))
            })
        }
    })
}

/// Calls `method` of app `app_id` with `data`; the callee's answer into
/// `*response`/`*response_len`.
///
/// # Safety
/// `client` is NULL or live; `app_id`, `method`, `content_type` are NULL or
/// C strings; `data` is NULL or readable for `data_len` bytes; `response`
/// and `response_len` are NULL or valid for one write each.
#[no_mangle]
#[allow(clippy::too_many_arguments)] // the C signature: one flat call, no option struct to version
pub unsafe extern "C" fn mecha_invoke(
    client: *mut MechaClient,
    app_id: *const c_char,
    method: *const c_char,
    data: *const u8,
    data_len: usize,
    content_type: *const c_char,
    response: *mut *mut u8,
    response_len: *mut usize,
) -> Code {
    entry(|| {
        // SAFETY: writable or NULL, per the contract.
        let response = unsafe { Out::new(response) }.required("response")?;
        // SAFETY: as above.
        let response_len = unsafe { Out::new(response_len) }.required("response_len")?;
        // SAFETY: pointers NULL or valid as the contract says.
        let (client, app_id, method, data, content_type) = unsafe {
            (
                ffi::client(client)?,
                ffi::text(app_id, "app_id")?,
                ffi::text(method, "method")?,
                ffi::bytes(data, data_len, "data")?,
                ffi::optional_text(content_type, "content_type")?,
            )
        };
        let options = InvokeOptions {
            content_type: content_type.unwrap_or_default().to_owned(),
            ..InvokeOptions::default()
        };
        let reply = client
            .read()
            .invoke(app_id, method, data.to_vec(), options)?;
        let buf = CBuf::bytes(&reply.data)?;
        response.put(buf.into_raw());
        response_len.put(reply.data.len());
        Ok(())
    })
}

/// Serves `app_id` on the client's connection; the registration into
/// `*registration`.
///
/// # Safety
/// `client` is NULL or live and outlives the registration; `app_id` is NULL
/// or a C string; `registration` is NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn mecha_register(
    client: *mut MechaClient,
    app_id: *const c_char,
    registration: *mut *mut MechaRegistration,
) -> Code {
    entry(|| {
        // SAFETY: writable or NULL, per the contract.
        let out = unsafe { Out::new(registration) }.required("registration")?;
        // SAFETY: pointers NULL or valid as the contract says.
        let (handle, app_id) = unsafe { (ffi::client(client)?, ffi::text(app_id, "app_id")?) };
        let (queue, calls) = mpsc::unbounded_channel();
        let c = handle.read();
        let inner = c.block_on(c.as_async().register(
            app_id,
            Vec::new(),
            forwarding_handler(queue.clone()),
        ))?;
        let reg = MechaRegistration {
            client: NonNull::from(handle),
            app_id: app_id.to_owned(),
            inner: Some(inner),
            calls,
            queue,
        };
        out.put(Box::into_raw(Box::new(reg)));
        Ok(())
    })
}

/// What waiting on a registration produced.
enum Next {
    Call(Option<Pending>),
    Ended(Option<Error>),
    TimedOut,
}

/// Waits up to `timeout_ms` (0: do not wait) for the next call; NULL in
/// `*call` (with MECHA_OK) when none came in time. Registers again by itself
/// when the invoke module restarts.
///
/// # Safety
/// `registration` is NULL or live and not used by another thread during the
/// call; `call` is NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn mecha_registration_next(
    registration: *mut MechaRegistration,
    timeout_ms: u32,
    call: *mut *mut MechaCall,
) -> Code {
    entry(|| {
        // SAFETY: writable or NULL, per the contract.
        let out = unsafe { Out::new(call) }.required("call")?;
        // SAFETY: NULL or live and not shared during the call, per the contract.
        let reg = unsafe { registration.as_mut() }.ok_or_else(|| null("registration"))?;
        // SAFETY: the header requires the client to outlive its registrations.
        let client = unsafe { reg.client.as_ref() }.read();
        let wait = Duration::from_millis(u64::from(timeout_ms));
        let next = client.block_on(async {
            let mut recv = pin!(reg.calls.recv());
            let mut sleep = pin!(tokio::time::sleep(wait));
            let inner = reg.inner.as_mut();
            let mut ended = pin!(async move {
                match inner {
                    Some(inner) => inner.ended().await,
                    None => Some(Error::Closed("not registered".to_owned())),
                }
            });
            // Calls first, so that calls already queued are handed out even
            // with a zero timeout and even after the registration ended.
            std::future::poll_fn(|cx| {
                if let Poll::Ready(p) = recv.as_mut().poll(cx) {
                    return Poll::Ready(Next::Call(p));
                }
                if let Poll::Ready(e) = ended.as_mut().poll(cx) {
                    return Poll::Ready(Next::Ended(e));
                }
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Next::TimedOut);
                }
                Poll::Pending
            })
            .await
        });
        match next {
            Next::TimedOut => Ok(()),
            Next::Call(Some(pending)) => {
                let c = MechaCall::new(pending)?;
                out.put(Box::into_raw(Box::new(c)));
                Ok(())
            }
            // The registration keeps a sender, so the queue never closes.
            Next::Call(None) => Err(ended_for_good()),
            Next::Ended(Some(e)) if e.status() == Some(Status::Unavailable) => {
                // The invoke module restarted (SPEC §7.8.1): register again.
                // The old registration goes first, since dropping it removes
                // the app id's handler, which must then be the new one.
                reg.inner = None;
                let handler = forwarding_handler(reg.queue.clone());
                let renewed = client.block_on(async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    client
                        .as_async()
                        .register(&reg.app_id, Vec::new(), handler)
                        .await
                })?;
                reg.inner = Some(renewed);
                Ok(())
            }
            Next::Ended(Some(e)) => Err(e.into()),
            Next::Ended(None) => Err(ended_for_good()),
        }
    })
}

/// Answers `call`: `status` MECHA_OK with `data` as the reply body, or an
/// ABI status (1..11) with `data` as the error message.
///
/// # Safety
/// `registration` is NULL or live; `call` is NULL or a live call of it;
/// `data` is NULL or readable for `data_len` bytes; `content_type` is NULL
/// or a C string.
#[no_mangle]
pub unsafe extern "C" fn mecha_call_reply(
    registration: *mut MechaRegistration,
    call: *mut MechaCall,
    status: c_int,
    data: *const u8,
    data_len: usize,
    content_type: *const c_char,
) -> Code {
    entry(|| {
        // SAFETY: NULL or live, per the contract.
        let reg = unsafe { registration.as_ref() }.ok_or_else(|| null("registration"))?;
        // SAFETY: NULL or live and not shared during the call, per the contract.
        let call = unsafe { call.as_mut() }.ok_or_else(|| null("call"))?;
        // SAFETY: pointers NULL or valid as the contract says.
        let (data, content_type) = unsafe {
            (
                ffi::bytes(data, data_len, "data")?,
                ffi::optional_text(content_type, "content_type")?,
            )
        };
        // Only the ABI's own statuses travel on the wire; the library's
        // negative codes mean nothing to the caller.
        let status = u16::try_from(status)
            .ok()
            .map(Status::from_code)
            .filter(|s| i32::from(s.code()) == status)
            .ok_or_else(|| {
                Failure::invalid(format!("status {status} is not an ABI status (0..11)"))
            })?;
        let result = if status == Status::Ok {
            Ok(InvokeReply {
                data: data.to_vec(),
                content_type: content_type.unwrap_or_default().to_owned(),
                metadata: Vec::new(),
            })
        } else {
            Err((status, String::from_utf8_lossy(data).into_owned()))
        };
        let answer = call
            .answer
            .take()
            .ok_or_else(|| Failure::invalid("the call has been answered already"))?;
        // A closed channel means the call is over (its deadline passed):
        // the daemon would discard a late answer anyway.
        let _ = answer.send(result);
        // SAFETY: the header requires the client to outlive its registrations.
        let client = unsafe { reg.client.as_ref() }.read();
        // The answer is written by tasks of the client's runtime, which run
        // only while some thread drives it: give them a few turns now so
        // that the reply leaves before this returns, even if the program
        // makes no further call.
        client.block_on(async {
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
        });
        Ok(())
    })
}

/// The method called.
///
/// # Safety
/// `call` is NULL or a live call.
#[no_mangle]
pub unsafe extern "C" fn mecha_call_method(call: *const MechaCall) -> *const c_char {
    // SAFETY: NULL or live, per the contract.
    field(unsafe { call.as_ref() }, |c| &c.method)
}

/// The media type of the call's data ("" when the caller gave none).
///
/// # Safety
/// `call` is NULL or a live call.
#[no_mangle]
pub unsafe extern "C" fn mecha_call_content_type(call: *const MechaCall) -> *const c_char {
    // SAFETY: NULL or live, per the contract.
    field(unsafe { call.as_ref() }, |c| &c.content_type)
}

/// The app id the caller called as ("" for an anonymous caller).
///
/// # Safety
/// `call` is NULL or a live call.
#[no_mangle]
pub unsafe extern "C" fn mecha_call_caller_app_id(call: *const MechaCall) -> *const c_char {
    // SAFETY: NULL or live, per the contract.
    field(unsafe { call.as_ref() }, |c| &c.caller_app_id)
}

/// The call's data and its length.
///
/// # Safety
/// `call` is NULL or a live call; `data_len` is NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn mecha_call_data(
    call: *const MechaCall,
    data_len: *mut usize,
) -> *const u8 {
    quiet(std::ptr::null(), || {
        // SAFETY: writable or NULL, per the contract.
        let len = unsafe { Out::new(data_len) };
        // SAFETY: NULL or live, per the contract.
        match unsafe { call.as_ref() } {
            Some(c) => {
                len.put(c.call.data.len());
                c.call.data.as_ptr()
            }
            None => std::ptr::null(),
        }
    })
}

/// Frees a call; one not answered is failed with INTERNAL for its caller.
///
/// # Safety
/// `call` is NULL or a call not freed before.
#[no_mangle]
pub unsafe extern "C" fn mecha_call_free(call: *mut MechaCall) {
    quiet((), || {
        if !call.is_null() {
            // SAFETY: it came from `Box::into_raw` in
            // `mecha_registration_next` and is freed once, per the contract.
            drop(unsafe { Box::from_raw(call) });
        }
    })
}

/// Stops serving the app id and frees the registration.
///
/// # Safety
/// `registration` is NULL or live, not closed before, with no call running
/// on it, and its client still open.
#[no_mangle]
pub unsafe extern "C" fn mecha_registration_close(registration: *mut MechaRegistration) {
    quiet((), || {
        if registration.is_null() {
            return;
        }
        // SAFETY: it came from `Box::into_raw` in `mecha_register` and is
        // closed once, per the contract.
        let mut reg = unsafe { Box::from_raw(registration) };
        // SAFETY: the header requires the client to outlive its registrations.
        let client = unsafe { reg.client.as_ref() }.read();
        if let Some(inner) = reg.inner.take() {
            // Cancelling tells the daemon at once; a failure only means the
            // stream is already gone, and dropping releases it either way.
            let _ = client.block_on(inner.cancel());
        }
    })
}

fn field(call: Option<&MechaCall>, get: impl Fn(&MechaCall) -> &CString) -> *const c_char {
    quiet(c"".as_ptr(), || {
        call.map_or(c"".as_ptr(), |c| get(c).as_ptr())
    })
}

fn null(what: &str) -> Failure {
    Failure::new(Code::ErrInvalid, format!("{what} is NULL"))
}

fn ended_for_good() -> Failure {
    Failure::new(
        Code::Unavailable,
        "UNAVAILABLE: the registration has ended".to_owned(),
    )
}
