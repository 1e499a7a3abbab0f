//! Lock calls of the C API: `mecha_lock_try` and `mecha_lock_unlock`
//! (SPEC §7.4).

use std::ffi::{c_char, c_int};
use std::time::Duration;

use mecha_client::UnlockStatus;

use crate::ffi::{self, entry, MechaClient, Out};
use crate::status::Code;

/// Tries to take the lock; the fencing token (0: not acquired) into `*token`.
///
/// # Safety
/// `client` is NULL or live; `store`, `resource`, `owner` are NULL or C
/// strings; `token` is NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn mecha_lock_try(
    client: *mut MechaClient,
    store: *const c_char,
    resource: *const c_char,
    owner: *const c_char,
    ttl_ms: u64,
    wait_ms: u64,
    token: *mut u64,
) -> Code {
    entry(|| {
        // SAFETY: writable or NULL, per the contract.
        let token = unsafe { Out::new(token) }.required("token")?;
        // SAFETY: pointers NULL or valid as the contract says.
        let (client, store, resource, owner) = unsafe {
            (
                ffi::client(client)?,
                ffi::store(store)?,
                ffi::text(resource, "resource")?,
                ffi::text(owner, "owner")?,
            )
        };
        // A ttl of 0 is sent as is: the daemon answers INVALID_ARGUMENT with
        // its own message, so C sees the same rule as every other client.
        let ttl = Duration::from_millis(ttl_ms);
        let wait = (wait_ms > 0).then(|| Duration::from_millis(wait_ms));
        let granted = client.read().try_lock(store, resource, owner, ttl, wait)?;
        // Grants start at 1 (SPEC §7.4), so 0 is free to mean "not acquired",
        // which is also what the wire carries in that case.
        token.put(granted.unwrap_or(0));
        Ok(())
    })
}

/// Releases the lock if `owner` holds it; the `mecha_unlock_status` into
/// `*result`.
///
/// # Safety
/// `client` is NULL or live; `store`, `resource`, `owner` are NULL or C
/// strings; `result` is NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn mecha_lock_unlock(
    client: *mut MechaClient,
    store: *const c_char,
    resource: *const c_char,
    owner: *const c_char,
    result: *mut c_int,
) -> Code {
    entry(|| {
        // SAFETY: writable or NULL, per the contract.
        let result = unsafe { Out::new(result) };
        // SAFETY: pointers NULL or valid as the contract says.
        let (client, store, resource, owner) = unsafe {
            (
                ffi::client(client)?,
                ffi::store(store)?,
                ffi::text(resource, "resource")?,
                ffi::text(owner, "owner")?,
            )
        };
        let status = client.read().unlock(store, resource, owner)?;
        result.put(unlock_code(status));
        Ok(())
    })
}

/// The `mecha_unlock_status` value of an unlock answer: the ABI's variant
/// index (the header drift test checks the header's enum against this).
pub fn unlock_code(status: UnlockStatus) -> c_int {
    match status {
        UnlockStatus::Success => 0,
        UnlockStatus::LockDoesNotExist => 1,
        UnlockStatus::LockBelongsToOthers => 2,
    }
}
