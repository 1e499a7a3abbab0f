//! State calls of the C API: `mecha_state_get`, `mecha_state_set`,
//! `mecha_state_delete` (SPEC §7.2).

use std::ffi::{c_char, c_int};
use std::time::Duration;

use mecha_client::SetOptions;

use crate::ffi::{self, entry, CBuf, MechaClient, Out};
use crate::status::{Code, Failure};
use crate::{put_text, text_for};

/// Reads `key`: its value into `*value`/`*value_len`, its ETag into `*etag`.
///
/// # Safety
/// `client` is NULL or live; `store`, `key` are NULL or C strings; `value`,
/// `value_len` and `etag` are NULL or valid for one write each.
#[no_mangle]
pub unsafe extern "C" fn mecha_state_get(
    client: *mut MechaClient,
    store: *const c_char,
    key: *const c_char,
    value: *mut *mut u8,
    value_len: *mut usize,
    etag: *mut *mut c_char,
) -> Code {
    entry(|| {
        // SAFETY: writable or NULL, per the contract.
        let value = unsafe { Out::new(value) };
        // SAFETY: as above.
        let value_len = unsafe { Out::new(value_len) };
        // SAFETY: as above.
        let etag_out = unsafe { Out::new(etag) };
        let value = value.required("value")?;
        let value_len = value_len.required("value_len")?;
        // SAFETY: `client` NULL or live; strings NULL or C strings (contract).
        let (client, store, key) = unsafe {
            (
                ffi::client(client)?,
                ffi::store(store)?,
                ffi::text(key, "key")?,
            )
        };
        let Some(entry) = client.read().get(store, key)? else {
            // The Rust client turns NOT_FOUND into `None` (a missing key is
            // an expected answer there); in C it is the status, as in SPEC.
            return Err(Failure::new(
                Code::NotFound,
                format!("NOT_FOUND: key {key:?} does not exist (or has expired)"),
            ));
        };
        let data = CBuf::bytes(&entry.value)?;
        let tag = text_for(&etag_out, &entry.etag, "ETag")?;
        value.put(data.into_raw());
        value_len.put(entry.value.len());
        put_text(&etag_out, tag);
        Ok(())
    })
}

/// Writes `key`, conditionally on `etag` when not NULL, with a TTL when
/// `ttl_ms` > 0; the new ETag into `*new_etag`.
///
/// # Safety
/// `client` is NULL or live; `store`, `key`, `etag` are NULL or C strings;
/// `value` is NULL or readable for `value_len` bytes; `new_etag` is NULL or
/// valid for one write.
#[no_mangle]
#[allow(clippy::too_many_arguments)] // the C signature: one flat call, no option struct to version
pub unsafe extern "C" fn mecha_state_set(
    client: *mut MechaClient,
    store: *const c_char,
    key: *const c_char,
    value: *const u8,
    value_len: usize,
    etag: *const c_char,
    ttl_ms: u64,
    new_etag: *mut *mut c_char,
) -> Code {
    entry(|| {
        // SAFETY: writable or NULL, per the contract.
        let new_etag = unsafe { Out::new(new_etag) };
        // SAFETY: pointers NULL or valid as the contract says.
        let (client, store, key, value, etag) = unsafe {
            (
                ffi::client(client)?,
                ffi::store(store)?,
                ffi::text(key, "key")?,
                ffi::bytes(value, value_len, "value")?,
                ffi::optional_text(etag, "etag")?,
            )
        };
        let options = SetOptions {
            etag: etag.map(str::to_owned),
            // 0 means "no TTL": SPEC refuses a TTL of 0 anyway, so the value
            // is free to mean "none" in a C signature without an Option.
            ttl: (ttl_ms > 0).then(|| Duration::from_millis(ttl_ms)),
        };
        let tag = client.read().set(store, key, value.to_vec(), options)?;
        let tag = text_for(&new_etag, &tag, "ETag")?;
        put_text(&new_etag, tag);
        Ok(())
    })
}

/// Deletes `key`, conditionally on `etag` when not NULL; whether a live key
/// was removed into `*existed`.
///
/// # Safety
/// `client` is NULL or live; `store`, `key`, `etag` are NULL or C strings;
/// `existed` is NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn mecha_state_delete(
    client: *mut MechaClient,
    store: *const c_char,
    key: *const c_char,
    etag: *const c_char,
    existed: *mut c_int,
) -> Code {
    entry(|| {
        // SAFETY: writable or NULL, per the contract.
        let existed = unsafe { Out::new(existed) };
        // SAFETY: pointers NULL or valid as the contract says.
        let (client, store, key, etag) = unsafe {
            (
                ffi::client(client)?,
                ffi::store(store)?,
                ffi::text(key, "key")?,
                ffi::optional_text(etag, "etag")?,
            )
        };
        let was = client.read().delete(store, key, etag.map(str::to_owned))?;
        existed.put(c_int::from(was));
        Ok(())
    })
}
