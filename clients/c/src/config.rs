//! Configuration call of the C API: `mecha_config_get` (SPEC §7.6).

use std::ffi::c_char;

use crate::ffi::{self, entry, CBuf, MechaClient, Out};
use crate::status::{Code, Failure};
use crate::{put_text, text_for};

/// The value of configuration item `key` into `*value`, its version into
/// `*version`.
///
/// # Safety
/// `client` is NULL or live; `store`, `key` are NULL or C strings; `value`
/// and `version` are NULL or valid for one write each.
#[no_mangle]
pub unsafe extern "C" fn mecha_config_get(
    client: *mut MechaClient,
    store: *const c_char,
    key: *const c_char,
    value: *mut *mut c_char,
    version: *mut *mut c_char,
) -> Code {
    entry(|| {
        // SAFETY: writable or NULL, per the contract.
        let value = unsafe { Out::new(value) };
        // SAFETY: as above.
        let version_out = unsafe { Out::new(version) };
        let value = value.required("value")?;
        // SAFETY: pointers NULL or valid as the contract says.
        let (client, store, key) = unsafe {
            (
                ffi::client(client)?,
                ffi::store(store)?,
                ffi::text(key, "key")?,
            )
        };
        // Exactly one key is asked for: an empty list would mean "every
        // item" to the daemon.
        let items = client.read().get_config(store, vec![key.to_owned()])?;
        // CONFIG_GET leaves missing keys out of its answer rather than
        // failing; for one key, C gets the usual NOT_FOUND status.
        let Some(item) = items.into_iter().find(|i| i.key == key) else {
            return Err(Failure::new(
                Code::NotFound,
                format!("NOT_FOUND: configuration item {key:?} does not exist"),
            ));
        };
        let text = CBuf::text(&item.value, "configuration value")?;
        let ver = text_for(&version_out, &item.version, "configuration version")?;
        value.put(text.into_raw());
        put_text(&version_out, ver);
        Ok(())
    })
}
