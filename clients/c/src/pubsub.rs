//! Pub/sub calls of the C API (SPEC §7.3): `mecha_publish`, and polling
//! subscriptions (`mecha_subscribe`, `mecha_subscription_next`, ack/nack)
//! whose messages are opaque `mecha_message` objects read through accessors,
//! so fields can be added later without breaking the C ABI.

use std::ffi::{c_char, CString};
use std::ptr::NonNull;
use std::time::Duration;

use mecha_abi::msg::Delivery;
use mecha_client::PubsubSubscription;

use crate::ffi::{self, entry, quiet, MechaClient, Out};
use crate::status::{Code, Failure};

/// `mecha_subscription`: a consumer-group membership on a client's
/// connection. It keeps a pointer to its client, whose runtime drives it;
/// the header requires closing every subscription before its client.
pub struct MechaSubscription {
    client: NonNull<MechaClient>,
    inner: PubsubSubscription,
}

// SAFETY: the client pointer is only dereferenced for shared access to a
// `MechaClient`, which is `Send + Sync`, and the header makes the caller keep
// the client alive while the subscription exists; `PubsubSubscription` is
// `Send`. Concurrent use of one subscription is excluded by the header.
unsafe impl Send for MechaSubscription {}

/// `mecha_message`: one delivery, with its text fields kept as C strings so
/// the accessors can hand out pointers valid until `mecha_message_free`.
pub struct MechaMessage {
    delivery: Delivery,
    topic: CString,
    id: CString,
    content_type: CString,
}

impl MechaMessage {
    fn new(delivery: Delivery) -> Result<Self, Failure> {
        let c = |s: &str, what: &str| {
            CString::new(s).map_err(|_| {
                Failure::new(
                    Code::ErrInvalid,
                    format!("the message's {what} holds a NUL byte"),
                )
            })
        };
        Ok(Self {
            topic: c(&delivery.topic, "topic")?,
            id: c(&delivery.id, "id")?,
            content_type: c(&delivery.data_content_type, "content type")?,
            delivery,
        })
    }
}

/// Publishes `data` to `topic`; `content_type` NULL means the daemon's
/// default.
///
/// # Safety
/// `client` is NULL or live; `store`, `topic`, `content_type` are NULL or C
/// strings; `data` is NULL or readable for `data_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn mecha_publish(
    client: *mut MechaClient,
    store: *const c_char,
    topic: *const c_char,
    data: *const u8,
    data_len: usize,
    content_type: *const c_char,
) -> Code {
    entry(|| {
        // SAFETY: pointers NULL or valid as the contract says.
        let (client, store, topic, data, content_type) = unsafe {
            (
                ffi::client(client)?,
                ffi::store(store)?,
                ffi::text(topic, "topic")?,
                ffi::bytes(data, data_len, "data")?,
                ffi::optional_text(content_type, "content_type")?,
            )
        };
        let mut options = mecha_client::Client::publish_options();
        if let Some(ct) = content_type {
            options = options.content_type(ct);
        }
        client
            .read()
            .publish(store, topic, data.to_vec(), options)?;
        Ok(())
    })
}

/// Joins consumer group `group` of `topic`; the subscription into
/// `*subscription`.
///
/// # Safety
/// `client` is NULL or live and outlives the subscription; `store`, `topic`,
/// `group` are NULL or C strings; `subscription` is NULL or valid for one
/// write.
#[no_mangle]
pub unsafe extern "C" fn mecha_subscribe(
    client: *mut MechaClient,
    store: *const c_char,
    topic: *const c_char,
    group: *const c_char,
    subscription: *mut *mut MechaSubscription,
) -> Code {
    entry(|| {
        // SAFETY: writable or NULL, per the contract.
        let out = unsafe { Out::new(subscription) }.required("subscription")?;
        // SAFETY: pointers NULL or valid as the contract says.
        let (handle, store, topic, group) = unsafe {
            (
                ffi::client(client)?,
                ffi::store(store)?,
                ffi::text(topic, "topic")?,
                ffi::text(group, "group")?,
            )
        };
        let c = handle.read();
        let inner = c.block_on(
            c.as_async()
                .subscribe(store, topic, group, Default::default()),
        )?;
        let sub = MechaSubscription {
            client: NonNull::from(handle),
            inner,
        };
        out.put(Box::into_raw(Box::new(sub)));
        Ok(())
    })
}

/// Waits up to `timeout_ms` (0: do not wait) for the next message; NULL in
/// `*message` (with MECHA_OK) when none came in time.
///
/// # Safety
/// `subscription` is NULL or live and not used by another thread during the
/// call; `message` is NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn mecha_subscription_next(
    subscription: *mut MechaSubscription,
    timeout_ms: u32,
    message: *mut *mut MechaMessage,
) -> Code {
    entry(|| {
        // SAFETY: writable or NULL, per the contract.
        let message = unsafe { Out::new(message) }.required("message")?;
        // SAFETY: NULL or live and not shared during the call, per the contract.
        let sub = unsafe { subscription.as_mut() }.ok_or_else(|| null("subscription"))?;
        // SAFETY: the header requires the client to outlive its subscriptions.
        let client = unsafe { sub.client.as_ref() }.read();
        if let Some(delivery) = next_push(&client, timeout_ms, sub.inner.next())? {
            let m = MechaMessage::new(delivery)?;
            message.put(Box::into_raw(Box::new(m)));
        }
        Ok(())
    })
}

/// Waits up to `timeout_ms` for a subscription's next push, which `next`
/// (the subscription's own `next`) yields: `None` when none came in time,
/// UNAVAILABLE once the subscription has ended for good. Shared by pub/sub
/// and binding subscriptions, which poll the same way.
pub(crate) fn next_push<T>(
    client: &mecha_client::blocking::Client,
    timeout_ms: u32,
    next: impl std::future::Future<Output = Option<Result<T, mecha_client::Error>>>,
) -> Result<Option<T>, Failure> {
    let wait = Duration::from_millis(u64::from(timeout_ms));
    match client.block_on(async { tokio::time::timeout(wait, next).await }) {
        Err(_elapsed) => Ok(None),
        Ok(None) => Err(Failure::new(
            Code::Unavailable,
            "UNAVAILABLE: the subscription has ended".to_owned(),
        )),
        Ok(Some(push)) => Ok(Some(push?)),
    }
}

/// Acknowledges `message`: it is not delivered to the group again.
///
/// # Safety
/// `subscription` is NULL or live; `message` is NULL or a live message of it.
#[no_mangle]
pub unsafe extern "C" fn mecha_message_ack(
    subscription: *mut MechaSubscription,
    message: *const MechaMessage,
) -> Code {
    // SAFETY: forwarded contract.
    unsafe { settle(subscription, message, true) }
}

/// Rejects `message`: it is delivered again (to this or another member).
///
/// # Safety
/// As for `mecha_message_ack`.
#[no_mangle]
pub unsafe extern "C" fn mecha_message_nack(
    subscription: *mut MechaSubscription,
    message: *const MechaMessage,
) -> Code {
    // SAFETY: forwarded contract.
    unsafe { settle(subscription, message, false) }
}

/// Acks or nacks: the one body of both entry points.
///
/// # Safety
/// As for `mecha_message_ack`.
unsafe fn settle(
    subscription: *mut MechaSubscription,
    message: *const MechaMessage,
    ack: bool,
) -> Code {
    entry(|| {
        // SAFETY: NULL or live, per the contract.
        let sub = unsafe { subscription.as_ref() }.ok_or_else(|| null("subscription"))?;
        // SAFETY: NULL or live, per the contract.
        let m = unsafe { message.as_ref() }.ok_or_else(|| null("message"))?;
        // SAFETY: the header requires the client to outlive its subscriptions.
        let client = unsafe { sub.client.as_ref() }.read();
        if ack {
            client.block_on(sub.inner.ack(&m.delivery))?;
        } else {
            client.block_on(sub.inner.nack(&m.delivery))?;
        }
        Ok(())
    })
}

/// The message's data and its length; never NULL (an empty message gives a
/// pointer to no bytes).
///
/// # Safety
/// `message` is a live message; `data_len` is NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn mecha_message_data(
    message: *const MechaMessage,
    data_len: *mut usize,
) -> *const u8 {
    quiet(std::ptr::null(), || {
        // SAFETY: writable or NULL, per the contract.
        let len = unsafe { Out::new(data_len) };
        // SAFETY: NULL or live, per the contract.
        match unsafe { message.as_ref() } {
            Some(m) => {
                len.put(m.delivery.data.len());
                m.delivery.data.as_ptr()
            }
            None => std::ptr::null(),
        }
    })
}

/// The topic the message was published to.
///
/// # Safety
/// `message` is NULL or a live message.
#[no_mangle]
pub unsafe extern "C" fn mecha_message_topic(message: *const MechaMessage) -> *const c_char {
    // SAFETY: NULL or live, per the contract.
    field(unsafe { message.as_ref() }, |m| &m.topic)
}

/// The message's CloudEvents id.
///
/// # Safety
/// `message` is NULL or a live message.
#[no_mangle]
pub unsafe extern "C" fn mecha_message_id(message: *const MechaMessage) -> *const c_char {
    // SAFETY: NULL or live, per the contract.
    field(unsafe { message.as_ref() }, |m| &m.id)
}

/// The media type of the message's data.
///
/// # Safety
/// `message` is NULL or a live message.
#[no_mangle]
pub unsafe extern "C" fn mecha_message_content_type(message: *const MechaMessage) -> *const c_char {
    // SAFETY: NULL or live, per the contract.
    field(unsafe { message.as_ref() }, |m| &m.content_type)
}

/// How many times the message has been delivered to this group (1 first).
///
/// # Safety
/// `message` is NULL or a live message.
#[no_mangle]
pub unsafe extern "C" fn mecha_message_attempt(message: *const MechaMessage) -> u32 {
    quiet(0, || {
        // SAFETY: NULL or live, per the contract.
        unsafe { message.as_ref() }.map_or(0, |m| m.delivery.attempt)
    })
}

/// Frees a message (after acking or nacking it, or to let it be redelivered
/// after its ack deadline).
///
/// # Safety
/// `message` is NULL or a message not freed before.
#[no_mangle]
pub unsafe extern "C" fn mecha_message_free(message: *mut MechaMessage) {
    quiet((), || {
        if !message.is_null() {
            // SAFETY: it came from `Box::into_raw` in
            // `mecha_subscription_next` and is freed once, per the contract.
            drop(unsafe { Box::from_raw(message) });
        }
    })
}

/// Leaves the group and frees the subscription; its unacknowledged messages
/// go to the group's other members.
///
/// # Safety
/// `subscription` is NULL or live, not closed before, with no call running
/// on it, and its client still open.
#[no_mangle]
pub unsafe extern "C" fn mecha_subscription_close(subscription: *mut MechaSubscription) {
    quiet((), || {
        if subscription.is_null() {
            return;
        }
        // SAFETY: it came from `Box::into_raw` in `mecha_subscribe` and is
        // closed once, per the contract.
        let mut sub = unsafe { Box::from_raw(subscription) };
        // SAFETY: the header requires the client to outlive its subscriptions.
        let client = unsafe { sub.client.as_ref() }.read();
        // Cancelling tells the daemon at once; a failure only means the
        // stream is already gone, and dropping releases it either way.
        let _ = client.block_on(sub.inner.cancel());
    })
}

fn field(message: Option<&MechaMessage>, get: impl Fn(&MechaMessage) -> &CString) -> *const c_char {
    quiet(c"".as_ptr(), || {
        message.map_or(c"".as_ptr(), |m| get(m).as_ptr())
    })
}

pub(crate) fn null(what: &str) -> Failure {
    Failure::new(Code::ErrInvalid, format!("{what} is NULL"))
}
