//! Payloads of the configuration family (`0x05`).
//!
//! Configuration items are read with CONFIG_GET, watched with CONFIG_SUBSCRIBE
//! (a server-push stream: the current items first, then one [`ConfigUpdate`]
//! per change) and written by admins with CONFIG_SET on writable stores.

use serde::{Deserialize, Serialize};

/// One configuration item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigItem {
    /// The item's key, non-empty.
    pub key: String,
    /// The item's value.
    pub value: String,
    /// The item's version: a decimal revision of its store that changes with
    /// every change of the item and is never reused by the store. Clients
    /// compare versions for equality only.
    pub version: String,
    /// Name/value pairs describing the item, sorted by name.
    pub metadata: Vec<(String, String)>,
}

/// CONFIG_GET request: read items of one store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigGetRequest {
    /// Component name of a configuration store; empty for the default (the
    /// first one).
    pub store: String,
    /// The keys to read, each non-empty; an empty list reads every item.
    pub keys: Vec<String>,
}

/// CONFIG_GET response, and the opening answer of CONFIG_SUBSCRIBE.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigGetReply {
    /// The items found: in request order for a list of keys (a key listed
    /// twice appears once), sorted by key for "every item". Missing keys are
    /// simply absent.
    pub items: Vec<ConfigItem>,
}

/// CONFIG_SUBSCRIBE request: open a stream of changes to some keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigSubscribeRequest {
    /// Component name; empty for the default store.
    pub store: String,
    /// The keys to watch, each non-empty; an empty list watches every key,
    /// including keys created later.
    pub keys: Vec<String>,
}

/// A push on a CONFIG_SUBSCRIBE stream: what changed since the previous push
/// (or since the opening answer, for the first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigUpdate {
    /// Position of this push on its stream: 1 for the first push, then one
    /// more per push. A gap means pushes were lost, and the client should
    /// subscribe again to resynchronise.
    pub seq: u64,
    /// Items created or changed, with their new values and versions, sorted
    /// by key.
    pub items: Vec<ConfigItem>,
    /// Keys deleted, sorted.
    pub deleted: Vec<String>,
}

/// One write of CONFIG_SET.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigSetItem {
    /// The key to write, non-empty.
    pub key: String,
    /// The new value.
    pub value: String,
    /// The item's metadata, replacing any it had.
    pub metadata: Vec<(String, String)>,
}

/// CONFIG_SET request (admin): write and delete items of a writable store,
/// atomically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigSetRequest {
    /// Component name; empty for the default store.
    pub store: String,
    /// The items to write.
    pub items: Vec<ConfigSetItem>,
    /// The keys to delete; deleting a missing key is not an error.
    pub delete: Vec<String>,
}

/// CONFIG_SET response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigSetReply {
    /// The new version of each written item, in request order.
    pub versions: Vec<String>,
}
