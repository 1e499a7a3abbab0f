//! Lock calls of the Rust client (async and blocking): lease-based locks
//! with fencing tokens.
//!
//! ```no_run
//! use std::time::Duration;
//! use mecha_client::blocking::Client;
//!
//! fn main() -> Result<(), mecha_client::Error> {
//!     let client = Client::connect("/tmp/mecha.sock")?;
//!     let ttl = Duration::from_secs(10);
//!     // Wait up to 2 s for the lock; `None` means somebody else kept it.
//!     if let Some(token) = client.try_lock("", "invoice:7", "worker-1", ttl, Some(Duration::from_secs(2)))? {
//!         // Pass `token` to the storage the lock protects, which rejects
//!         // writes carrying a token lower than one it has already seen.
//!         let _ = token;
//!         client.unlock("", "invoice:7", "worker-1")?;
//!     }
//!     Ok(())
//! }
//! ```

use std::time::Duration;

use mecha_abi::msg::{
    ExtendLockReply, ExtendLockRequest, TryLockReply, TryLockRequest, UnlockReply, UnlockRequest,
    UnlockStatus,
};
use mecha_abi::Opcode;

use crate::request::Request;
use crate::Error;

// None of the lock operations may be resent blindly. A try_lock whose answer
// was lost may have granted the lock, and a second attempt would then be
// refused (the holder is not granted twice), reporting "not acquired" for a
// lock the caller holds. A lost unlock or extend that took effect would be
// reported as LOCK_DOES_NOT_EXIST, or could act on a later grant to the same
// owner. A caller unsure whether a try_lock went through can call
// `extend_lock`: success returns the token of the lock it holds.
impl Request for TryLockRequest {
    const OPCODE: Opcode = Opcode::LOCK_TRY_LOCK;
    type Reply = TryLockReply;
    fn is_idempotent(&self) -> bool {
        false
    }
}

impl Request for UnlockRequest {
    const OPCODE: Opcode = Opcode::LOCK_UNLOCK;
    type Reply = UnlockReply;
    fn is_idempotent(&self) -> bool {
        false
    }
}

impl Request for ExtendLockRequest {
    const OPCODE: Opcode = Opcode::LOCK_EXTEND;
    type Reply = ExtendLockReply;
    fn is_idempotent(&self) -> bool {
        false
    }
}

impl crate::Client {
    /// Tries to take the lock `resource` in `store` ("" = the default lock
    /// store) for `owner`, with a lease of `ttl`. Returns the grant's fencing
    /// token, or `None` if somebody (the same owner included) holds the lock.
    ///
    /// With `wait`, a held lock is waited for, up to that long: the call
    /// returns as soon as the lock is released or its lease passes and this
    /// caller gets it. The call's deadline is extended by the wait, so the
    /// handle's timeout bounds only the time beyond it.
    ///
    /// Fencing tokens of a resource strictly increase from grant to grant,
    /// also across daemon restarts on durable stores. `ttl` and `wait` are
    /// sent in whole milliseconds, rounded up; `ttl` must not be zero.
    pub async fn try_lock(
        &self,
        store: &str,
        resource: &str,
        owner: &str,
        ttl: Duration,
        wait: Option<Duration>,
    ) -> Result<Option<u64>, Error> {
        let wait = wait.unwrap_or(Duration::ZERO);
        let req = TryLockRequest {
            store: store.into(),
            resource: resource.into(),
            owner: owner.into(),
            ttl_ms: millis(ttl),
            wait_ms: millis(wait),
        };
        // The module may wait the whole `wait` before answering; a deadline
        // shorter than that would give up while the module still waits and
        // may then grant the lock to nobody (until the lease passes).
        let reply = if wait.is_zero() {
            self.call(&req).await?
        } else {
            self.with_timeout(wait.saturating_add(self.timeout()))
                .call(&req)
                .await?
        };
        Ok(reply.acquired.then_some(reply.fencing_token))
    }

    /// Releases the lock `resource` in `store` if `owner` holds it. The
    /// answer says whether it did: `Success`, `LockDoesNotExist` (nobody
    /// holds it, or its lease has passed) or `LockBelongsToOthers`.
    pub async fn unlock(
        &self,
        store: &str,
        resource: &str,
        owner: &str,
    ) -> Result<UnlockStatus, Error> {
        let req = UnlockRequest {
            store: store.into(),
            resource: resource.into(),
            owner: owner.into(),
        };
        Ok(self.call(&req).await?.status)
    }

    /// Renews the lease of the lock `resource` in `store` that `owner`
    /// holds, to end `ttl` from now. On `Success` the reply carries the
    /// lock's fencing token, unchanged; otherwise the status says why
    /// (`LockDoesNotExist` also when the lease has already passed).
    pub async fn extend_lock(
        &self,
        store: &str,
        resource: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<ExtendLockReply, Error> {
        let req = ExtendLockRequest {
            store: store.into(),
            resource: resource.into(),
            owner: owner.into(),
            ttl_ms: millis(ttl),
        };
        self.call(&req).await
    }
}

impl crate::blocking::Client {
    blocking_calls! {
        /// Tries to take the lock `resource` for `owner` with a lease of
        /// `ttl`, waiting up to `wait` if it is held; the fencing token, or
        /// `None` when not acquired. See [`crate::Client::try_lock`].
        fn try_lock(
            store: &str,
            resource: &str,
            owner: &str,
            ttl: Duration,
            wait: Option<Duration>
        ) -> Option<u64>;
        /// Releases the lock `resource` if `owner` holds it. See
        /// [`crate::Client::unlock`].
        fn unlock(store: &str, resource: &str, owner: &str) -> UnlockStatus;
        /// Renews the lease of the lock `resource` that `owner` holds. See
        /// [`crate::Client::extend_lock`].
        fn extend_lock(store: &str, resource: &str, owner: &str, ttl: Duration) -> ExtendLockReply;
    }
}

/// Whole milliseconds of `d`, rounded up, so that a positive duration never
/// becomes a zero TTL (which the daemon rejects) or a zero wait.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn try_lock_request() -> TryLockRequest {
        TryLockRequest {
            store: String::new(),
            resource: "r".into(),
            owner: "o".into(),
            ttl_ms: 1000,
            wait_ms: 0,
        }
    }

    #[test]
    fn lock_requests_are_not_idempotent() {
        assert!(!try_lock_request().is_idempotent());
        let unlock = UnlockRequest {
            store: String::new(),
            resource: "r".into(),
            owner: "o".into(),
        };
        assert!(!unlock.is_idempotent());
        let extend = ExtendLockRequest {
            store: String::new(),
            resource: "r".into(),
            owner: "o".into(),
            ttl_ms: 1000,
        };
        assert!(!extend.is_idempotent());
    }

    #[test]
    fn opcodes_match_the_spec() {
        assert_eq!(TryLockRequest::OPCODE, Opcode::LOCK_TRY_LOCK);
        assert_eq!(UnlockRequest::OPCODE, Opcode::LOCK_UNLOCK);
        assert_eq!(ExtendLockRequest::OPCODE, Opcode::LOCK_EXTEND);
    }

    #[test]
    fn durations_round_up_to_whole_milliseconds() {
        assert_eq!(millis(Duration::ZERO), 0);
        assert_eq!(millis(Duration::from_nanos(1)), 1);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::from_micros(1500)), 2);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }

    #[test]
    fn try_lock_request_encodes_in_field_order() {
        let bytes = mecha_abi::encode(&try_lock_request()).expect("encodes");
        let mut expected = Vec::new();
        expected.extend_from_slice(&0u64.to_le_bytes()); // store ""
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(b"r");
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(b"o");
        expected.extend_from_slice(&1000u64.to_le_bytes());
        expected.extend_from_slice(&0u64.to_le_bytes());
        assert_eq!(bytes, expected);
        // UnlockStatus is an enum: a u32 variant index.
        let reply = mecha_abi::encode(&UnlockReply {
            status: UnlockStatus::LockBelongsToOthers,
        })
        .expect("encodes");
        assert_eq!(reply, 2u32.to_le_bytes());
    }
}
