//! Payloads of the state family (`0x01`).

use serde::{Deserialize, Serialize};

/// A stored value and its ETag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateEntry {
    /// The value bytes, opaque to mecha.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The value's current ETag.
    pub etag: String,
}

/// One write: the value, an optional ETag to compare, an optional TTL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetItem {
    /// The key to write.
    pub key: String,
    /// The new value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// When present, the write succeeds only if the stored ETag equals it
    /// (first-write-wins); when absent, the write always succeeds (last-write-wins).
    pub etag: Option<String>,
    /// When present, the key expires this many milliseconds after the write.
    pub ttl_ms: Option<u64>,
}

/// One delete, with an optional ETag to compare.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteItem {
    /// The key to delete.
    pub key: String,
    /// When present, the delete succeeds only if the stored ETag equals it.
    pub etag: Option<String>,
}

/// STATE_GET request. An empty `store` names the default state store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetRequest {
    /// Component name; empty for the default.
    pub store: String,
    /// The key to read.
    pub key: String,
}

/// STATE_SET request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRequest {
    /// Component name; empty for the default.
    pub store: String,
    /// The write.
    pub item: SetItem,
}

/// STATE_SET response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetReply {
    /// The new ETag of the key.
    pub etag: String,
}

/// STATE_DELETE request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRequest {
    /// Component name; empty for the default.
    pub store: String,
    /// The delete.
    pub item: DeleteItem,
}

/// STATE_DELETE response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteReply {
    /// Whether a live key was removed (deleting a missing key is not an error).
    pub existed: bool,
}

/// STATE_BULK_GET request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkGetRequest {
    /// Component name; empty for the default.
    pub store: String,
    /// Keys to read, in the order the answers should come back.
    pub keys: Vec<String>,
}

/// One key of a STATE_BULK_GET response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkGetItem {
    /// The key, echoed.
    pub key: String,
    /// The entry, or none when the key does not exist.
    pub entry: Option<StateEntry>,
}

/// STATE_BULK_GET response: one item per requested key, in request order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkGetReply {
    /// The answers.
    pub items: Vec<BulkGetItem>,
}

/// STATE_BULK_SET request: every item is written, or none is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkSetRequest {
    /// Component name; empty for the default.
    pub store: String,
    /// The writes.
    pub items: Vec<SetItem>,
}

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxOp {
    /// Variant 0: write a key.
    Set(SetItem),
    /// Variant 1: delete a key.
    Delete(DeleteItem),
}

/// STATE_TRANSACT request: all operations apply atomically, or none does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactRequest {
    /// Component name; empty for the default.
    pub store: String,
    /// The operations, applied in order.
    pub ops: Vec<TxOp>,
}

/// STATE_BULK_SET and STATE_TRANSACT response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactReply {
    /// Per operation, in order: the new ETag of a set, none for a delete.
    pub etags: Vec<Option<String>>,
}
