//! Dapr's state API in protocol-neutral terms: Dapr's ETag, concurrency,
//! consistency and TTL options turned into mecha's state requests, and the
//! calls on the caller's native session, shared by the gRPC and HTTP
//! servers.
//!
//! Values are bytes end to end: gRPC's `bytes` are stored as they are, and
//! HTTP's JSON values are stored as the bytes of their JSON text (so the
//! string `"a"` saved over HTTP is the three bytes `"a"`, quotes included,
//! as Dapr's own stores keep it). A read returns the stored bytes
//! unchanged on both protocols and to native mecha clients, so a value
//! written through one is read back identically through the others.
//!
//! Dapr's rules, and how they map:
//! - An ETag makes a write conditional (first-write-wins) unless the
//!   request asks for last-write concurrency, which ignores the ETag, as
//!   Dapr's stores do. First-write concurrency without an ETag means "only
//!   if the key does not exist" in Dapr; mecha has no such write, so it is
//!   refused with INVALID_ARGUMENT rather than served as a blind write.
//! - Consistency (`eventual`, `strong`) is accepted: every mecha store
//!   answers reads and writes of one key in order, which satisfies both.
//! - Metadata `ttlInSeconds`: a positive number of seconds becomes mecha's
//!   TTL; `-1` means no expiry (and clears one). `contentType` and
//!   `partitionKey` are accepted hints ([`super::hints::STATE_HINTS`]); any
//!   other key is refused.

use std::collections::{HashMap, HashSet};

use mecha_client::{Client, DeleteItem, SetItem, StateEntry, TxOp};

use super::dapr_error::{native, require_store, Api, DaprError};
use super::hints;

/// The metadata key of a write's time to live, in seconds.
pub const TTL_KEY: &str = "ttlInSeconds";

/// Most keys one bulk read, save or delete may carry: mecha's own bound on
/// its bulk and transaction requests (SPEC §7.2), checked here so that the
/// answer names the Dapr request.
pub const MAX_ITEMS: usize = 1024;

const fn api(failed: &'static str) -> Api {
    Api {
        store_not_found: "ERR_STATE_STORE_NOT_FOUND",
        store_not_found_http: 400,
        failed,
    }
}

/// Dapr's codes for a read.
pub const GET: Api = api("ERR_STATE_GET");
/// Dapr's codes for a bulk read.
pub const BULK_GET: Api = api("ERR_STATE_BULK_GET");
/// Dapr's codes for a save.
pub const SAVE: Api = api("ERR_STATE_SAVE");
/// Dapr's codes for a delete.
pub const DELETE: Api = api("ERR_STATE_DELETE");
/// Dapr's codes for a bulk delete.
pub const BULK_DELETE: Api = api("ERR_STATE_BULK_DELETE");
/// Dapr's codes for a transaction.
pub const TRANSACTION: Api = api("ERR_STATE_TRANSACTION");

/// Dapr's concurrency option of a write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Concurrency {
    /// Not given: an ETag, if any, is checked.
    #[default]
    Unspecified,
    /// `first-write`: the ETag is checked.
    FirstWrite,
    /// `last-write`: the ETag is ignored.
    LastWrite,
}

impl Concurrency {
    /// From gRPC's `StateOptions.concurrency`.
    pub fn from_grpc(value: i32) -> Result<Self, DaprError> {
        match value {
            0 => Ok(Self::Unspecified),
            1 => Ok(Self::FirstWrite),
            2 => Ok(Self::LastWrite),
            other => Err(DaprError::malformed(format!(
                "unknown state concurrency {other}"
            ))),
        }
    }

    /// From HTTP's `options.concurrency` (or the `concurrency` query
    /// parameter).
    pub fn from_http(value: &str) -> Result<Self, DaprError> {
        match value {
            "" => Ok(Self::Unspecified),
            "first-write" => Ok(Self::FirstWrite),
            "last-write" => Ok(Self::LastWrite),
            other => Err(DaprError::malformed(format!(
                "unknown state concurrency {other:?} (first-write or last-write)"
            ))),
        }
    }
}

/// Checks Dapr's consistency option as HTTP spells it; both values are
/// satisfied by every mecha store (see the file's notes).
pub fn check_http_consistency(value: &str) -> Result<(), DaprError> {
    match value {
        "" | "eventual" | "strong" => Ok(()),
        other => Err(DaprError::malformed(format!(
            "unknown state consistency {other:?} (eventual or strong)"
        ))),
    }
}

/// Checks Dapr's consistency option as gRPC spells it.
pub fn check_grpc_consistency(value: i32) -> Result<(), DaprError> {
    match value {
        0..=2 => Ok(()),
        other => Err(DaprError::malformed(format!(
            "unknown state consistency {other}"
        ))),
    }
}

/// One write of a save or an upsert.
#[derive(Clone, Debug, Default)]
pub struct Write {
    /// The key.
    pub key: String,
    /// The value bytes.
    pub value: Vec<u8>,
    /// The ETag the request carried, if any.
    pub etag: Option<String>,
    /// The concurrency option.
    pub concurrency: Concurrency,
    /// The item's metadata.
    pub metadata: HashMap<String, String>,
}

/// One delete.
#[derive(Clone, Debug, Default)]
pub struct Delete {
    /// The key.
    pub key: String,
    /// The ETag the request carried, if any.
    pub etag: Option<String>,
    /// The concurrency option.
    pub concurrency: Concurrency,
    /// The item's metadata.
    pub metadata: HashMap<String, String>,
}

/// One operation of a transaction.
#[derive(Clone, Debug)]
pub enum Operation {
    /// `upsert`.
    Upsert(Write),
    /// `delete`.
    Delete(Delete),
}

impl Operation {
    /// From Dapr's operation type (`upsert` or `delete`) and its item.
    pub fn new(kind: &str, write: Write) -> Result<Self, DaprError> {
        match kind {
            "upsert" => Ok(Self::Upsert(write)),
            "delete" => Ok(Self::Delete(Delete {
                key: write.key,
                etag: write.etag,
                concurrency: write.concurrency,
                metadata: write.metadata,
            })),
            other => Err(DaprError::new(
                tonic::Code::InvalidArgument,
                400,
                "ERR_NOT_SUPPORTED_STATE_OPERATION",
                format!("operation type {other:?} is not supported (upsert or delete)"),
            )),
        }
    }
}

/// The ETag mecha must check, from the request's ETag and concurrency.
fn condition(
    key: &str,
    etag: Option<String>,
    concurrency: Concurrency,
    write: bool,
) -> Result<Option<String>, DaprError> {
    let etag = etag.filter(|e| !e.is_empty());
    match (etag, concurrency) {
        (_, Concurrency::LastWrite) => Ok(None),
        (None, Concurrency::FirstWrite) if write => Err(DaprError::malformed(format!(
            "key {key:?}: first-write concurrency without an ETag (write only if the key does \
             not exist) is not supported by mecha; read the key and pass its ETag"
        ))),
        (etag, _) => Ok(etag),
    }
}

/// The TTL in milliseconds that `metadata` asks for: `None` for no expiry.
fn ttl_ms(key: &str, metadata: &HashMap<String, String>) -> Result<Option<u64>, DaprError> {
    let Some(raw) = metadata.get(TTL_KEY) else {
        return Ok(None);
    };
    let bad = || {
        DaprError::malformed(format!(
            "key {key:?}: metadata {TTL_KEY} must be a positive whole number of seconds, or -1 \
             for no expiry; got {raw:?}"
        ))
    };
    match raw.trim().parse::<i64>().map_err(|_| bad())? {
        -1 => Ok(None),
        n if n > 0 => Ok(Some((n as u64).saturating_mul(1000))),
        _ => Err(bad()),
    }
}

/// Mecha's set item for a Dapr write.
pub fn set_item(w: Write) -> Result<SetItem, DaprError> {
    require_key(&w.key)?;
    hints::check(&w.metadata, &[TTL_KEY], hints::STATE_HINTS, "state")?;
    let ttl_ms = ttl_ms(&w.key, &w.metadata)?;
    let etag = condition(&w.key, w.etag, w.concurrency, true)?;
    Ok(SetItem {
        key: w.key,
        value: w.value,
        etag,
        ttl_ms,
    })
}

/// Mecha's delete item for a Dapr delete.
pub fn delete_item(d: Delete) -> Result<DeleteItem, DaprError> {
    require_key(&d.key)?;
    hints::check(&d.metadata, &[TTL_KEY], hints::STATE_HINTS, "state")?;
    let etag = condition(&d.key, d.etag, d.concurrency, false)?;
    Ok(DeleteItem { key: d.key, etag })
}

fn require_key(key: &str) -> Result<(), DaprError> {
    if key.is_empty() {
        return Err(DaprError::malformed("\"key\" is a required field"));
    }
    Ok(())
}

fn bounded(count: usize, what: &str) -> Result<(), DaprError> {
    if count > MAX_ITEMS {
        return Err(DaprError::new(
            tonic::Code::InvalidArgument,
            400,
            "ERR_STATE_STORE_TOO_MANY_TRANSACTIONS",
            format!("{count} {what} in one request; mecha serves at most {MAX_ITEMS}"),
        ));
    }
    Ok(())
}

/// Adds the request-wide metadata to an item's, where the item does not
/// set the key itself (Dapr merges them the same way).
pub fn merge(item: &mut HashMap<String, String>, request: &HashMap<String, String>) {
    for (k, v) in request {
        item.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

/// Reads `key`; `None` when it is missing (Dapr's empty answer).
pub async fn get(
    client: &Client,
    store: &str,
    key: &str,
    metadata: &HashMap<String, String>,
) -> Result<Option<StateEntry>, DaprError> {
    require_store(GET, store)?;
    require_key(key)?;
    hints::check(metadata, &[], hints::STATE_HINTS, "state get")?;
    client.get(store, key).await.map_err(|e| {
        native(
            GET,
            &format!("fail to get {key} from state store {store}"),
            e,
        )
    })
}

/// Reads `keys`: one answer per distinct key, in request order (a key
/// named twice is answered once, so a repeated large value cannot multiply
/// the answer).
pub async fn bulk_get(
    client: &Client,
    store: &str,
    keys: Vec<String>,
    metadata: &HashMap<String, String>,
) -> Result<Vec<(String, Option<StateEntry>)>, DaprError> {
    require_store(BULK_GET, store)?;
    hints::check(metadata, &[], hints::STATE_HINTS, "state bulk get")?;
    let mut seen = HashSet::new();
    let keys: Vec<String> = keys
        .into_iter()
        .filter(|k| seen.insert(k.clone()))
        .collect();
    bounded(keys.len(), "keys")?;
    for key in &keys {
        require_key(key)?;
    }
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let items = client
        .bulk_get(store, keys)
        .await
        .map_err(|e| native(BULK_GET, &format!("bulk get from state store {store}"), e))?;
    Ok(items.into_iter().map(|i| (i.key, i.entry)).collect())
}

/// Saves `writes`, all or none (mecha's bulk write is atomic, which is
/// stronger than Dapr's bulk save promises).
pub async fn save(client: &Client, store: &str, writes: Vec<Write>) -> Result<(), DaprError> {
    require_store(SAVE, store)?;
    bounded(writes.len(), "items")?;
    let mut items = writes
        .into_iter()
        .map(set_item)
        .collect::<Result<Vec<_>, _>>()?;
    let failed = |e| {
        native(
            SAVE,
            &format!("failed saving state in state store {store}"),
            e,
        )
    };
    match items.len() {
        0 => Ok(()),
        1 => {
            let Some(item) = items.pop() else {
                return Ok(());
            };
            let options = mecha_client::SetOptions {
                etag: item.etag,
                ttl: item.ttl_ms.map(std::time::Duration::from_millis),
            };
            client
                .set(store, &item.key, item.value, options)
                .await
                .map(|_| ())
                .map_err(failed)
        }
        _ => client
            .bulk_set(store, items)
            .await
            .map(|_| ())
            .map_err(failed),
    }
}

/// Deletes one key; a missing key is not an error (Dapr's answer is the
/// same either way).
pub async fn delete(client: &Client, store: &str, d: Delete) -> Result<(), DaprError> {
    require_store(DELETE, store)?;
    let item = delete_item(d)?;
    let key = item.key.clone();
    client
        .delete(store, &item.key, item.etag)
        .await
        .map(|_| ())
        .map_err(|e| native(DELETE, &format!("failed deleting state with key {key}"), e))
}

/// Deletes many keys, all or none.
pub async fn delete_bulk(
    client: &Client,
    store: &str,
    deletes: Vec<Delete>,
) -> Result<(), DaprError> {
    require_store(BULK_DELETE, store)?;
    bounded(deletes.len(), "items")?;
    let ops = deletes
        .into_iter()
        .map(|d| delete_item(d).map(TxOp::Delete))
        .collect::<Result<Vec<_>, _>>()?;
    if ops.is_empty() {
        return Ok(());
    }
    client.transact(store, ops).await.map(|_| ()).map_err(|e| {
        native(
            BULK_DELETE,
            &format!("failed deleting state in state store {store}"),
            e,
        )
    })
}

/// Runs a transaction of upserts and deletes, all or none; the
/// request-wide `metadata` applies to every operation.
pub async fn transact(
    client: &Client,
    store: &str,
    operations: Vec<Operation>,
    metadata: &HashMap<String, String>,
) -> Result<(), DaprError> {
    require_store(TRANSACTION, store)?;
    hints::check(
        metadata,
        &[TTL_KEY],
        hints::STATE_HINTS,
        "state transaction",
    )?;
    bounded(operations.len(), "operations")?;
    let ops = operations
        .into_iter()
        .map(|op| match op {
            Operation::Upsert(mut w) => {
                merge(&mut w.metadata, metadata);
                set_item(w).map(TxOp::Set)
            }
            Operation::Delete(mut d) => {
                merge(&mut d.metadata, metadata);
                delete_item(d).map(TxOp::Delete)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ops.is_empty() {
        return Ok(());
    }
    client
        .transact(store, ops)
        .await
        .map(|_| ())
        .map_err(|e| native(TRANSACTION, "error while executing state transaction", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(etag: Option<&str>, concurrency: Concurrency, meta: &[(&str, &str)]) -> Write {
        Write {
            key: "k".into(),
            value: b"v".to_vec(),
            etag: etag.map(Into::into),
            concurrency,
            metadata: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn an_etag_makes_a_write_conditional_unless_last_write() {
        let item = set_item(write(Some("3"), Concurrency::Unspecified, &[])).unwrap();
        assert_eq!(item.etag.as_deref(), Some("3"));
        let item = set_item(write(Some("3"), Concurrency::FirstWrite, &[])).unwrap();
        assert_eq!(item.etag.as_deref(), Some("3"));
        let item = set_item(write(Some("3"), Concurrency::LastWrite, &[])).unwrap();
        assert_eq!(item.etag, None);
        let item = set_item(write(Some(""), Concurrency::Unspecified, &[])).unwrap();
        assert_eq!(item.etag, None);
    }

    #[test]
    fn first_write_without_an_etag_is_refused_not_served_blindly() {
        let e = set_item(write(None, Concurrency::FirstWrite, &[])).unwrap_err();
        assert_eq!(e.grpc, tonic::Code::InvalidArgument);
        assert!(e.message.contains("first-write"), "{}", e.message);
    }

    #[test]
    fn ttl_in_seconds_becomes_milliseconds() {
        let item = set_item(write(None, Concurrency::Unspecified, &[(TTL_KEY, "5")])).unwrap();
        assert_eq!(item.ttl_ms, Some(5000));
        let item = set_item(write(None, Concurrency::Unspecified, &[(TTL_KEY, "-1")])).unwrap();
        assert_eq!(item.ttl_ms, None);
        for bad in ["0", "-2", "soon", "1.5"] {
            let e = set_item(write(None, Concurrency::Unspecified, &[(TTL_KEY, bad)])).unwrap_err();
            assert_eq!(e.http, 400, "{bad}");
        }
    }

    #[test]
    fn unknown_metadata_is_refused_and_hints_are_not() {
        assert!(set_item(write(
            None,
            Concurrency::Unspecified,
            &[("contentType", "a/b")]
        ))
        .is_ok());
        let e = set_item(write(
            None,
            Concurrency::Unspecified,
            &[("queryIndexName", "x")],
        ))
        .unwrap_err();
        assert!(e.message.contains("queryIndexName"), "{}", e.message);
    }

    #[test]
    fn operations_are_upsert_or_delete() {
        assert!(matches!(
            Operation::new("upsert", Write::default()),
            Ok(Operation::Upsert(_))
        ));
        assert!(matches!(
            Operation::new("delete", Write::default()),
            Ok(Operation::Delete(_))
        ));
        let e = Operation::new("merge", Write::default()).unwrap_err();
        assert_eq!(e.code, "ERR_NOT_SUPPORTED_STATE_OPERATION");
    }

    #[test]
    fn request_metadata_fills_in_but_does_not_override() {
        let mut item: HashMap<String, String> = [(TTL_KEY.to_string(), "5".to_string())].into();
        let request: HashMap<String, String> = [
            (TTL_KEY.to_string(), "9".to_string()),
            ("contentType".to_string(), "x".to_string()),
        ]
        .into();
        merge(&mut item, &request);
        assert_eq!(item[TTL_KEY], "5");
        assert_eq!(item["contentType"], "x");
    }

    #[test]
    fn concurrency_names_parse() {
        assert_eq!(
            Concurrency::from_http("first-write").unwrap(),
            Concurrency::FirstWrite
        );
        assert_eq!(Concurrency::from_grpc(2).unwrap(), Concurrency::LastWrite);
        assert!(Concurrency::from_http("fast").is_err());
        assert!(check_http_consistency("strong").is_ok());
        assert!(check_http_consistency("maybe").is_err());
    }
}
