//! Sequencer call of the C API: `mecha_next_id` (SPEC §7.5).

use std::ffi::c_char;

use crate::ffi::{self, entry, MechaClient, Out};
use crate::status::Code;

/// The next id of the sequence `key` into `*id`.
///
/// # Safety
/// `client` is NULL or live; `store`, `key` are NULL or C strings; `id` is
/// NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn mecha_next_id(
    client: *mut MechaClient,
    store: *const c_char,
    key: *const c_char,
    id: *mut u64,
) -> Code {
    entry(|| {
        // SAFETY: writable or NULL, per the contract.
        let id = unsafe { Out::new(id) }.required("id")?;
        // SAFETY: pointers NULL or valid as the contract says.
        let (client, store, key) = unsafe {
            (
                ffi::client(client)?,
                ffi::store(store)?,
                ffi::text(key, "key")?,
            )
        };
        id.put(client.read().next_id(store, key)?);
        Ok(())
    })
}
