//! Bindings calls of the C API (SPEC §7.9): `mecha_binding_invoke` runs an
//! operation of an output binding; input bindings are polled like pub/sub
//! subscriptions (`mecha_binding_subscribe`, `mecha_binding_subscription_next`,
//! ack/nack), their events opaque `mecha_binding_event` objects read through
//! accessors, so fields can be added later without breaking the C ABI.

use std::ffi::{c_char, CString};
use std::ptr::NonNull;

use mecha_abi::msg::BindingEvent;
use mecha_client::BindingSubscription;

use crate::ffi::{self, entry, quiet, CBuf, MechaClient, Out};
use crate::pubsub::{next_push, null};
use crate::status::{Code, Failure};

/// `mecha_binding_subscription`: a subscriber of an input binding on a
/// client's connection. It keeps a pointer to its client, whose runtime
/// drives it; the header requires closing every subscription before its
/// client.
pub struct MechaBindingSubscription {
    client: NonNull<MechaClient>,
    inner: BindingSubscription,
}

// SAFETY: the client pointer is only dereferenced for shared access to a
// `MechaClient`, which is `Send + Sync`, and the header makes the caller keep
// the client alive while the subscription exists; `BindingSubscription` is
// `Send`. Concurrent use of one subscription is excluded by the header.
unsafe impl Send for MechaBindingSubscription {}

/// `mecha_binding_event`: one event, with its text fields kept as C strings
/// so the accessors can hand out pointers valid until
/// `mecha_binding_event_free`.
pub struct MechaBindingEvent {
    event: BindingEvent,
    name: CString,
    metadata: Vec<(CString, CString)>,
}

impl MechaBindingEvent {
    fn new(event: BindingEvent) -> Result<Self, Failure> {
        let c = |s: &str, what: &str| {
            CString::new(s).map_err(|_| {
                Failure::new(
                    Code::ErrInvalid,
                    format!("the event's {what} holds a NUL byte"),
                )
            })
        };
        let metadata = event
            .metadata
            .iter()
            .map(|(name, value)| Ok((c(name, "metadata name")?, c(value, "metadata value")?)))
            .collect::<Result<_, Failure>>()?;
        Ok(Self {
            name: c(&event.name, "binding name")?,
            metadata,
            event,
        })
    }
}

/// Runs `operation` on the output binding `name`; the result's data into
/// `*response` (with a NUL after it) and, when asked for, its metadata as a
/// NULL-terminated array `name0, value0, ...` into `*response_metadata`.
///
/// # Safety
/// `client` is NULL or live; `name`, `operation` are NULL or C strings;
/// `data` is NULL or readable for `data_len` bytes; `metadata` is NULL or
/// readable for `2 * metadata_count` C string pointers; every out parameter
/// is NULL or valid for one write.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn mecha_binding_invoke(
    client: *mut MechaClient,
    name: *const c_char,
    operation: *const c_char,
    data: *const u8,
    data_len: usize,
    metadata: *const *const c_char,
    metadata_count: usize,
    response: *mut *mut u8,
    response_len: *mut usize,
    response_metadata: *mut *mut *mut c_char,
    response_metadata_count: *mut usize,
) -> Code {
    entry(|| {
        // SAFETY: each is writable or NULL, per the contract.
        let (response, response_len, response_metadata, response_metadata_count) = unsafe {
            (
                Out::new(response),
                Out::new(response_len),
                Out::new(response_metadata),
                Out::new(response_metadata_count),
            )
        };
        let response = response.required("response")?;
        let response_len = response_len.required("response_len")?;
        // SAFETY: pointers NULL or valid as the contract says.
        let (client, name, operation, data, metadata) = unsafe {
            (
                ffi::client(client)?,
                ffi::text(name, "name")?,
                ffi::text(operation, "operation")?,
                ffi::bytes(data, data_len, "data")?,
                ffi::pairs(metadata, metadata_count, "metadata")?,
            )
        };
        let reply = client
            .read()
            .invoke_binding(name, operation, data.to_vec(), metadata)?;
        // Every buffer is built before the first out parameter is written,
        // so a failure (a NUL in a metadata value) hands out nothing.
        let body = CBuf::bytes(&reply.data)?;
        let table = if response_metadata.wanted() {
            let flat: Vec<&str> = reply
                .metadata
                .iter()
                .flat_map(|(k, v)| [k.as_str(), v.as_str()])
                .collect();
            Some(CBuf::text_array(&flat, "result metadata")?)
        } else {
            None
        };
        response.put(body.into_raw());
        response_len.put(reply.data.len());
        if let Some(table) = table {
            response_metadata.put(table.into_raw());
        }
        response_metadata_count.put(reply.metadata.len());
        Ok(())
    })
}

/// Subscribes to the input binding `name`; the subscription into
/// `*subscription`.
///
/// # Safety
/// `client` is NULL or live and outlives the subscription; `name` is NULL or
/// a C string; `subscription` is NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn mecha_binding_subscribe(
    client: *mut MechaClient,
    name: *const c_char,
    subscription: *mut *mut MechaBindingSubscription,
) -> Code {
    entry(|| {
        // SAFETY: writable or NULL, per the contract.
        let out = unsafe { Out::new(subscription) }.required("subscription")?;
        // SAFETY: pointers NULL or valid as the contract says.
        let (handle, name) = unsafe { (ffi::client(client)?, ffi::text(name, "name")?) };
        let c = handle.read();
        let inner = c.block_on(c.as_async().subscribe_binding(name, Default::default()))?;
        let sub = MechaBindingSubscription {
            client: NonNull::from(handle),
            inner,
        };
        out.put(Box::into_raw(Box::new(sub)));
        Ok(())
    })
}

/// Waits up to `timeout_ms` (0: do not wait) for the next event; NULL in
/// `*event` (with MECHA_OK) when none came in time.
///
/// # Safety
/// `subscription` is NULL or live and not used by another thread during the
/// call; `event` is NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn mecha_binding_subscription_next(
    subscription: *mut MechaBindingSubscription,
    timeout_ms: u32,
    event: *mut *mut MechaBindingEvent,
) -> Code {
    entry(|| {
        // SAFETY: writable or NULL, per the contract.
        let event = unsafe { Out::new(event) }.required("event")?;
        // SAFETY: NULL or live and not shared during the call, per the contract.
        let sub = unsafe { subscription.as_mut() }.ok_or_else(|| null("subscription"))?;
        // SAFETY: the header requires the client to outlive its subscriptions.
        let client = unsafe { sub.client.as_ref() }.read();
        if let Some(next) = next_push(&client, timeout_ms, sub.inner.next())? {
            let e = MechaBindingEvent::new(next)?;
            event.put(Box::into_raw(Box::new(e)));
        }
        Ok(())
    })
}

/// Acknowledges `event`: it is not delivered to this tenant again.
///
/// # Safety
/// `subscription` is NULL or live; `event` is NULL or a live event of it.
#[no_mangle]
pub unsafe extern "C" fn mecha_binding_event_ack(
    subscription: *mut MechaBindingSubscription,
    event: *const MechaBindingEvent,
) -> Code {
    // SAFETY: forwarded contract.
    unsafe { settle(subscription, event, false) }
}

/// Rejects `event`: it is delivered again (to this or another subscriber).
///
/// # Safety
/// As for `mecha_binding_event_ack`.
#[no_mangle]
pub unsafe extern "C" fn mecha_binding_event_nack(
    subscription: *mut MechaBindingSubscription,
    event: *const MechaBindingEvent,
) -> Code {
    // SAFETY: forwarded contract.
    unsafe { settle(subscription, event, true) }
}

/// Acks or nacks: the one body of both entry points.
///
/// # Safety
/// As for `mecha_binding_event_ack`.
unsafe fn settle(
    subscription: *mut MechaBindingSubscription,
    event: *const MechaBindingEvent,
    nack: bool,
) -> Code {
    entry(|| {
        // SAFETY: NULL or live, per the contract.
        let sub = unsafe { subscription.as_ref() }.ok_or_else(|| null("subscription"))?;
        // SAFETY: NULL or live, per the contract.
        let e = unsafe { event.as_ref() }.ok_or_else(|| null("event"))?;
        // SAFETY: the header requires the client to outlive its subscriptions.
        let client = unsafe { sub.client.as_ref() }.read();
        if nack {
            client.block_on(sub.inner.nack(&e.event))?;
        } else {
            client.block_on(sub.inner.ack(&e.event))?;
        }
        Ok(())
    })
}

/// The event's data and its length; never NULL for a live event (an empty
/// event gives a pointer to no bytes).
///
/// # Safety
/// `event` is NULL or a live event; `data_len` is NULL or valid for one
/// write.
#[no_mangle]
pub unsafe extern "C" fn mecha_binding_event_data(
    event: *const MechaBindingEvent,
    data_len: *mut usize,
) -> *const u8 {
    quiet(std::ptr::null(), || {
        // SAFETY: writable or NULL, per the contract.
        let len = unsafe { Out::new(data_len) };
        // SAFETY: NULL or live, per the contract.
        match unsafe { event.as_ref() } {
            Some(e) => {
                len.put(e.event.data.len());
                e.event.data.as_ptr()
            }
            None => std::ptr::null(),
        }
    })
}

/// The binding the event came from.
///
/// # Safety
/// `event` is NULL or a live event.
#[no_mangle]
pub unsafe extern "C" fn mecha_binding_event_name(
    event: *const MechaBindingEvent,
) -> *const c_char {
    quiet(c"".as_ptr(), || {
        // SAFETY: NULL or live, per the contract.
        unsafe { event.as_ref() }.map_or(c"".as_ptr(), |e| e.name.as_ptr())
    })
}

/// The event's position in the tenant's sequence of the binding's events.
///
/// # Safety
/// `event` is NULL or a live event.
#[no_mangle]
pub unsafe extern "C" fn mecha_binding_event_offset(event: *const MechaBindingEvent) -> u64 {
    quiet(0, || {
        // SAFETY: NULL or live, per the contract.
        unsafe { event.as_ref() }.map_or(0, |e| e.event.offset)
    })
}

/// How many times the event has been delivered to this tenant (1 first).
///
/// # Safety
/// `event` is NULL or a live event.
#[no_mangle]
pub unsafe extern "C" fn mecha_binding_event_attempt(event: *const MechaBindingEvent) -> u32 {
    quiet(0, || {
        // SAFETY: NULL or live, per the contract.
        unsafe { event.as_ref() }.map_or(0, |e| e.event.attempt)
    })
}

/// The value of the event's metadata entry `name` (the first, if it occurs
/// twice); NULL when the event has none of that name.
///
/// # Safety
/// `event` is NULL or a live event; `name` is NULL or a C string.
#[no_mangle]
pub unsafe extern "C" fn mecha_binding_event_metadata(
    event: *const MechaBindingEvent,
    name: *const c_char,
) -> *const c_char {
    quiet(std::ptr::null(), || {
        // SAFETY: NULL or live, per the contract.
        let Some(e) = (unsafe { event.as_ref() }) else {
            return std::ptr::null();
        };
        // SAFETY: NULL or a C string, per the contract.
        let Ok(Some(name)) = (unsafe { ffi::optional_text(name, "name") }) else {
            return std::ptr::null();
        };
        e.metadata
            .iter()
            .find(|(n, _)| n.as_bytes() == name.as_bytes())
            .map_or(std::ptr::null(), |(_, v)| v.as_ptr())
    })
}

/// How many metadata entries the event has.
///
/// # Safety
/// `event` is NULL or a live event.
#[no_mangle]
pub unsafe extern "C" fn mecha_binding_event_metadata_count(
    event: *const MechaBindingEvent,
) -> usize {
    quiet(0, || {
        // SAFETY: NULL or live, per the contract.
        unsafe { event.as_ref() }.map_or(0, |e| e.metadata.len())
    })
}

/// The name and value of metadata entry `index` (0-based) into `*name` and
/// `*value`; both NULL when `index` is out of range. The strings belong to
/// the event.
///
/// # Safety
/// `event` is NULL or a live event; `name` and `value` are NULL or valid for
/// one write each.
#[no_mangle]
pub unsafe extern "C" fn mecha_binding_event_metadata_at(
    event: *const MechaBindingEvent,
    index: usize,
    name: *mut *const c_char,
    value: *mut *const c_char,
) {
    quiet((), || {
        // SAFETY: each NULL or valid for one write, per the contract. The
        // out type is `*const`, so it is reset by hand rather than by `Out`.
        unsafe {
            if !name.is_null() {
                name.write(std::ptr::null());
            }
            if !value.is_null() {
                value.write(std::ptr::null());
            }
        }
        // SAFETY: NULL or live, per the contract.
        let Some((n, v)) = (unsafe { event.as_ref() }).and_then(|e| e.metadata.get(index)) else {
            return;
        };
        // SAFETY: as above; the pointers stay valid as long as the event.
        unsafe {
            if !name.is_null() {
                name.write(n.as_ptr());
            }
            if !value.is_null() {
                value.write(v.as_ptr());
            }
        }
    })
}

/// Frees an event (after acking or nacking it, or to let it be delivered
/// again after its ack deadline).
///
/// # Safety
/// `event` is NULL or an event not freed before.
#[no_mangle]
pub unsafe extern "C" fn mecha_binding_event_free(event: *mut MechaBindingEvent) {
    quiet((), || {
        if !event.is_null() {
            // SAFETY: it came from `Box::into_raw` in
            // `mecha_binding_subscription_next` and is freed once, per the
            // contract.
            drop(unsafe { Box::from_raw(event) });
        }
    })
}

/// Ends the subscription and frees it; its unacknowledged events go to the
/// tenant's other subscribers.
///
/// # Safety
/// `subscription` is NULL or live, not closed before, with no call running
/// on it, and its client still open.
#[no_mangle]
pub unsafe extern "C" fn mecha_binding_subscription_close(
    subscription: *mut MechaBindingSubscription,
) {
    quiet((), || {
        if subscription.is_null() {
            return;
        }
        // SAFETY: it came from `Box::into_raw` in `mecha_binding_subscribe`
        // and is closed once, per the contract.
        let mut sub = unsafe { Box::from_raw(subscription) };
        // SAFETY: the header requires the client to outlive its subscriptions.
        let client = unsafe { sub.client.as_ref() }.read();
        // Cancelling tells the daemon at once; a failure only means the
        // stream is already gone, and dropping releases it either way.
        let _ = client.block_on(sub.inner.cancel());
    })
}
