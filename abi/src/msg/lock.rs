//! Payloads of the lock family (`0x03`).
//!
//! Locks are leases: a lock is granted to an owner for `ttl_ms` and is free
//! again once the lease has passed, so a crashed owner cannot block a
//! resource forever. Every grant carries a **fencing token** (Dapr's lock API
//! has none) that grows with every grant of the resource, so a storage system
//! protected by the lock can reject writes from an owner whose lease has
//! already passed.

use serde::{Deserialize, Serialize};

/// LOCK_TRY_LOCK request: acquire `resource` for `owner`, optionally waiting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TryLockRequest {
    /// Component name; empty for the default lock store.
    pub store: String,
    /// The name of the locked resource, non-empty. Scoped by tenant.
    pub resource: String,
    /// Who asks for the lock, non-empty; unlock and extend must name the
    /// same owner. Typically a random id per process or per task.
    pub owner: String,
    /// Length of the lease in milliseconds, greater than 0: the lock is free
    /// again this long after the grant unless extended.
    pub ttl_ms: u64,
    /// How long to wait for the lock if it is held, in milliseconds; 0 tries
    /// once and answers at once.
    pub wait_ms: u64,
}

/// LOCK_TRY_LOCK response. Not getting the lock is a normal answer, not an
/// error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TryLockReply {
    /// Whether the lock was granted to the owner.
    pub acquired: bool,
    /// The grant's fencing token when `acquired`, 0 otherwise. Tokens of one
    /// resource strictly increase from grant to grant and are never reused.
    pub fencing_token: u64,
}

/// LOCK_UNLOCK request: release `resource` if `owner` holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlockRequest {
    /// Component name; empty for the default lock store.
    pub store: String,
    /// The name of the locked resource, non-empty.
    pub resource: String,
    /// The owner that holds the lock, non-empty.
    pub owner: String,
}

/// What an unlock or extend found, with Dapr's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UnlockStatus {
    /// Variant 0: the owner held the lock, and the operation was applied.
    Success,
    /// Variant 1: nobody holds the lock (never granted, released, or its
    /// lease has passed); nothing changed.
    LockDoesNotExist,
    /// Variant 2: another owner holds the lock; nothing changed.
    LockBelongsToOthers,
}

/// LOCK_UNLOCK response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlockReply {
    /// Whether the lock was released, and if not, why.
    pub status: UnlockStatus,
}

/// LOCK_EXTEND request: renew the lease of a lock `owner` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtendLockRequest {
    /// Component name; empty for the default lock store.
    pub store: String,
    /// The name of the locked resource, non-empty.
    pub resource: String,
    /// The owner that holds the lock, non-empty.
    pub owner: String,
    /// The new lease in milliseconds, greater than 0, counted from now (not
    /// added to the old lease, which it may also shorten).
    pub ttl_ms: u64,
}

/// LOCK_EXTEND response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtendLockReply {
    /// Whether the lease was renewed, and if not, why.
    pub status: UnlockStatus,
    /// The lock's fencing token, unchanged by the extension, when `status`
    /// is `Success`; 0 otherwise.
    pub fencing_token: u64,
}
