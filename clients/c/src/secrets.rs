//! Secrets calls of the C API: `mecha_secret_get` (one value) and
//! `mecha_secret_get_all` (every pair) (SPEC §7.7).

use std::ffi::c_char;

use crate::ffi::{self, entry, CBuf, MechaClient, Out};
use crate::status::{Code, Failure};

/// The value of the single-value secret `name` into `*value`.
///
/// # Safety
/// `client` is NULL or live; `store`, `name` are NULL or C strings; `value`
/// is NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn mecha_secret_get(
    client: *mut MechaClient,
    store: *const c_char,
    name: *const c_char,
    value: *mut *mut c_char,
) -> Code {
    entry(|| {
        // SAFETY: writable or NULL, per the contract.
        let value = unsafe { Out::new(value) }.required("value")?;
        // SAFETY: pointers NULL or valid as the contract says.
        let (client, store, name) = unsafe {
            (
                ffi::client(client)?,
                ffi::store(store)?,
                ffi::text(name, "name")?,
            )
        };
        let pairs = client.read().get_secret(store, name)?;
        // SPEC represents a single-value secret as the one pair (name,
        // value); picking the pair by key (rather than "the only pair")
        // keeps the answer unambiguous for multi-valued secrets too.
        let Some((_, found)) = pairs.iter().find(|(k, _)| k == name) else {
            return Err(Failure::invalid(format!(
                "secret {name:?} holds {} value(s) but none named {name:?}; \
                 read it with mecha_secret_get_all",
                pairs.len()
            )));
        };
        value.put(CBuf::text(found, "secret value")?.into_raw());
        Ok(())
    })
}

/// Every (key, value) pair of secret `name`: a NULL-terminated array
/// `key0, value0, key1, value1, ..., NULL` into `*pairs`, in one allocation,
/// and the number of pairs into `*count`.
///
/// # Safety
/// `client` is NULL or live; `store`, `name` are NULL or C strings; `pairs`
/// and `count` are NULL or valid for one write each.
#[no_mangle]
pub unsafe extern "C" fn mecha_secret_get_all(
    client: *mut MechaClient,
    store: *const c_char,
    name: *const c_char,
    pairs: *mut *mut *mut c_char,
    count: *mut usize,
) -> Code {
    entry(|| {
        // SAFETY: writable or NULL, per the contract.
        let pairs_out = unsafe { Out::new(pairs) };
        // SAFETY: as above.
        let count = unsafe { Out::new(count) };
        let pairs_out = pairs_out.required("pairs")?;
        let count = count.required("count")?;
        // SAFETY: pointers NULL or valid as the contract says.
        let (client, store, name) = unsafe {
            (
                ffi::client(client)?,
                ffi::store(store)?,
                ffi::text(name, "name")?,
            )
        };
        let pairs = client.read().get_secret(store, name)?;
        let flat: Vec<&str> = pairs
            .iter()
            .flat_map(|(k, v)| [k.as_str(), v.as_str()])
            .collect();
        let table = CBuf::text_array(&flat, "secret")?;
        pairs_out.put(table.into_raw());
        count.put(pairs.len());
        Ok(())
    })
}
