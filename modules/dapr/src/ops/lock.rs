//! Dapr's distributed lock API (alpha1) in protocol-neutral terms: TryLock
//! and Unlock on the caller's native session. Dapr's lock has no fencing
//! token and no waiting, so a try-lock is mecha's try-lock without a wait,
//! and the token mecha grants stays unseen by a Dapr caller.

use std::time::Duration;

use mecha_client::{Client, UnlockStatus};

use super::dapr_error::{native, require_store, Api, DaprError};

/// Longest lease a Dapr caller may ask for: a day. Dapr's field is an i32
/// of seconds; a lease far longer than any job that holds it is a lock
/// leaked on a crash, so it is refused rather than granted.
pub const MAX_EXPIRY_SECONDS: i32 = 24 * 60 * 60;

const fn api(failed: &'static str) -> Api {
    Api {
        store_not_found: "ERR_LOCK_STORE_NOT_FOUND",
        store_not_found_http: 400,
        failed,
    }
}

/// Dapr's codes for a try-lock.
pub const TRY_LOCK: Api = api("ERR_TRY_LOCK");
/// Dapr's codes for an unlock.
pub const UNLOCK: Api = api("ERR_UNLOCK");

/// Dapr's `UnlockResponse.Status` values.
pub mod status {
    /// The lock was released.
    pub const SUCCESS: i32 = 0;
    /// Nobody holds the lock (or its lease passed).
    pub const LOCK_DOES_NOT_EXIST: i32 = 1;
    /// Another owner holds the lock.
    pub const LOCK_BELONGS_TO_OTHERS: i32 = 2;
    /// The store failed.
    pub const INTERNAL_ERROR: i32 = 3;
}

fn require(store: &str, resource: &str, owner: &str) -> Result<(), DaprError> {
    require_store(TRY_LOCK, store)?;
    if resource.is_empty() {
        return Err(DaprError::malformed(format!(
            "ResourceId is empty in lock store {store}"
        )));
    }
    if owner.is_empty() {
        return Err(DaprError::malformed(format!(
            "LockOwner is empty in lock store {store}"
        )));
    }
    Ok(())
}

/// Tries to take `resource` for `owner` for `expiry_seconds`; whether it
/// was granted.
pub async fn try_lock(
    client: &Client,
    store: &str,
    resource: &str,
    owner: &str,
    expiry_seconds: i32,
) -> Result<bool, DaprError> {
    require(store, resource, owner)?;
    if expiry_seconds <= 0 {
        return Err(DaprError::malformed(format!(
            "ExpiryInSeconds is not positive in lock store {store}"
        )));
    }
    if expiry_seconds > MAX_EXPIRY_SECONDS {
        return Err(DaprError::malformed(format!(
            "ExpiryInSeconds {expiry_seconds} is longer than mecha's longest lease, \
             {MAX_EXPIRY_SECONDS} s, in lock store {store}"
        )));
    }
    let ttl = Duration::from_secs(expiry_seconds.unsigned_abs().into());
    client
        .try_lock(store, resource, owner, ttl, None)
        .await
        .map(|token| token.is_some())
        .map_err(|e| native(TRY_LOCK, "failed to try acquiring lock", e))
}

/// Releases `resource` if `owner` holds it; Dapr's unlock status.
pub async fn unlock(
    client: &Client,
    store: &str,
    resource: &str,
    owner: &str,
) -> Result<i32, DaprError> {
    require(store, resource, owner)?;
    let answer = client.unlock(store, resource, owner).await;
    match answer {
        Ok(s) => Ok(status_of(s)),
        Err(e) => Err(native(UNLOCK, "failed to release lock", e)),
    }
}

/// Dapr's number for mecha's unlock status.
pub fn status_of(s: UnlockStatus) -> i32 {
    match s {
        UnlockStatus::Success => status::SUCCESS,
        UnlockStatus::LockDoesNotExist => status::LOCK_DOES_NOT_EXIST,
        UnlockStatus::LockBelongsToOthers => status::LOCK_BELONGS_TO_OTHERS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dapr::dapr::proto::runtime::v1::unlock_response::Status;

    #[test]
    fn unlock_statuses_are_daprs_numbers() {
        assert_eq!(status_of(UnlockStatus::Success), Status::Success as i32);
        assert_eq!(
            status_of(UnlockStatus::LockDoesNotExist),
            Status::LockDoesNotExist as i32
        );
        assert_eq!(
            status_of(UnlockStatus::LockBelongsToOthers),
            Status::LockBelongsToOthers as i32
        );
        assert_eq!(status::INTERNAL_ERROR, Status::InternalError as i32);
    }
}
