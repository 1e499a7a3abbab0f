//! State calls of the Rust client (async and blocking): keys with ETags,
//! bulk reads and writes, and transactions.

use std::time::Duration;

use mecha_abi::msg::{
    BulkGetItem, BulkGetReply, BulkGetRequest, BulkSetRequest, DeleteItem, DeleteReply,
    DeleteRequest, GetRequest, SetItem, SetReply, SetRequest, StateEntry, TransactReply,
    TransactRequest, TxOp,
};
use mecha_abi::Opcode;

use crate::request::Request;
use crate::Error;

/// Options of a state write.
#[derive(Clone, Debug, Default)]
pub struct SetOptions {
    /// Write only if the stored ETag equals this one (first-write-wins).
    pub etag: Option<String>,
    /// Expire the key this long after the write.
    pub ttl: Option<Duration>,
}

impl Request for GetRequest {
    const OPCODE: Opcode = Opcode::STATE_GET;
    type Reply = StateEntry;
    fn is_idempotent(&self) -> bool {
        true
    }
}

impl Request for BulkGetRequest {
    const OPCODE: Opcode = Opcode::STATE_BULK_GET;
    type Reply = BulkGetReply;
    fn is_idempotent(&self) -> bool {
        true
    }
}

impl Request for SetRequest {
    const OPCODE: Opcode = Opcode::STATE_SET;
    type Reply = SetReply;
    fn is_idempotent(&self) -> bool {
        self.item.etag.is_some()
    }
}

impl Request for DeleteRequest {
    const OPCODE: Opcode = Opcode::STATE_DELETE;
    type Reply = DeleteReply;
    fn is_idempotent(&self) -> bool {
        self.item.etag.is_some()
    }
}

impl Request for BulkSetRequest {
    const OPCODE: Opcode = Opcode::STATE_BULK_SET;
    type Reply = TransactReply;
    fn is_idempotent(&self) -> bool {
        // An empty batch changes nothing, so `all` being true for it is right.
        self.items.iter().all(|item| item.etag.is_some())
    }
}

impl Request for TransactRequest {
    const OPCODE: Opcode = Opcode::STATE_TRANSACT;
    type Reply = TransactReply;
    fn is_idempotent(&self) -> bool {
        self.ops.iter().all(|op| match op {
            TxOp::Set(item) => item.etag.is_some(),
            TxOp::Delete(item) => item.etag.is_some(),
        })
    }
}

impl crate::Client {
    /// Reads `key` from `store` ("" = the default store); `None` when missing.
    pub async fn get(&self, store: &str, key: &str) -> Result<Option<StateEntry>, Error> {
        let req = GetRequest {
            store: store.into(),
            key: key.into(),
        };
        match self.call(&req).await {
            Ok(entry) => Ok(Some(entry)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `key`; returns the new ETag.
    pub async fn set(
        &self,
        store: &str,
        key: &str,
        value: impl Into<Vec<u8>>,
        options: SetOptions,
    ) -> Result<String, Error> {
        let req = SetRequest {
            store: store.into(),
            item: SetItem {
                key: key.into(),
                value: value.into(),
                etag: options.etag,
                ttl_ms: options
                    .ttl
                    .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            },
        };
        let reply = self.call(&req).await?;
        Ok(reply.etag)
    }

    /// Deletes `key`; returns whether it existed.
    pub async fn delete(
        &self,
        store: &str,
        key: &str,
        etag: Option<String>,
    ) -> Result<bool, Error> {
        let req = DeleteRequest {
            store: store.into(),
            item: DeleteItem {
                key: key.into(),
                etag,
            },
        };
        let reply = self.call(&req).await?;
        Ok(reply.existed)
    }

    /// Reads many keys (at most 1024 distinct); one item per distinct key,
    /// in order (a repeated key is answered once).
    pub async fn bulk_get(
        &self,
        store: &str,
        keys: Vec<String>,
    ) -> Result<Vec<BulkGetItem>, Error> {
        let req = BulkGetRequest {
            store: store.into(),
            keys,
        };
        let reply = self.call(&req).await?;
        Ok(reply.items)
    }

    /// Writes many keys atomically; returns their new ETags in order.
    pub async fn bulk_set(&self, store: &str, items: Vec<SetItem>) -> Result<Vec<String>, Error> {
        let req = BulkSetRequest {
            store: store.into(),
            items,
        };
        let reply = self.call(&req).await?;
        Ok(reply
            .etags
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect())
    }

    /// Applies set/delete operations atomically; per op, the new ETag of a set.
    pub async fn transact(
        &self,
        store: &str,
        ops: Vec<TxOp>,
    ) -> Result<Vec<Option<String>>, Error> {
        let req = TransactRequest {
            store: store.into(),
            ops,
        };
        let reply = self.call(&req).await?;
        Ok(reply.etags)
    }
}

impl crate::blocking::Client {
    blocking_calls! {
        /// Reads `key` from `store` ("" = default); `None` when missing.
        fn get(store: &str, key: &str) -> Option<StateEntry>;
        /// Writes `key`; returns the new ETag.
        fn set(store: &str, key: &str, value: Vec<u8>, options: SetOptions) -> String;
        /// Deletes `key`; returns whether it existed.
        fn delete(store: &str, key: &str, etag: Option<String>) -> bool;
        /// Reads many keys (at most 1024 distinct); one item per distinct
        /// key, in order.
        fn bulk_get(store: &str, keys: Vec<String>) -> Vec<BulkGetItem>;
        /// Writes many keys atomically; returns their new ETags.
        fn bulk_set(store: &str, items: Vec<SetItem>) -> Vec<String>;
        /// Applies set/delete operations atomically.
        fn transact(store: &str, ops: Vec<TxOp>) -> Vec<Option<String>>;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_item(etag: Option<&str>) -> SetItem {
        SetItem {
            key: "k".into(),
            value: b"v".to_vec(),
            etag: etag.map(Into::into),
            ttl_ms: None,
        }
    }

    fn delete_item(etag: Option<&str>) -> DeleteItem {
        DeleteItem {
            key: "k".into(),
            etag: etag.map(Into::into),
        }
    }

    #[test]
    fn reads_are_idempotent() {
        let get = GetRequest {
            store: String::new(),
            key: "k".into(),
        };
        assert!(get.is_idempotent());
        let bulk_get = BulkGetRequest {
            store: String::new(),
            keys: vec!["a".into(), "b".into()],
        };
        assert!(bulk_get.is_idempotent());
    }

    #[test]
    fn single_writes_are_idempotent_only_with_an_etag() {
        let set = |etag| SetRequest {
            store: String::new(),
            item: set_item(etag),
        };
        assert!(set(Some("3")).is_idempotent());
        assert!(!set(None).is_idempotent());
        let delete = |etag| DeleteRequest {
            store: String::new(),
            item: delete_item(etag),
        };
        assert!(delete(Some("3")).is_idempotent());
        assert!(!delete(None).is_idempotent());
    }

    #[test]
    fn batches_are_idempotent_only_when_every_item_has_an_etag() {
        let bulk = |items| BulkSetRequest {
            store: String::new(),
            items,
        };
        assert!(bulk(vec![]).is_idempotent());
        assert!(bulk(vec![set_item(Some("1")), set_item(Some("2"))]).is_idempotent());
        assert!(!bulk(vec![set_item(Some("1")), set_item(None)]).is_idempotent());

        let tx = |ops| TransactRequest {
            store: String::new(),
            ops,
        };
        assert!(tx(vec![]).is_idempotent());
        assert!(tx(vec![
            TxOp::Set(set_item(Some("1"))),
            TxOp::Delete(delete_item(Some("2")))
        ])
        .is_idempotent());
        assert!(!tx(vec![
            TxOp::Set(set_item(Some("1"))),
            TxOp::Delete(delete_item(None))
        ])
        .is_idempotent());
        assert!(!tx(vec![TxOp::Set(set_item(None))]).is_idempotent());
    }

    #[test]
    fn opcodes_match_the_spec() {
        assert_eq!(GetRequest::OPCODE, Opcode::STATE_GET);
        assert_eq!(SetRequest::OPCODE, Opcode::STATE_SET);
        assert_eq!(DeleteRequest::OPCODE, Opcode::STATE_DELETE);
        assert_eq!(BulkGetRequest::OPCODE, Opcode::STATE_BULK_GET);
        assert_eq!(BulkSetRequest::OPCODE, Opcode::STATE_BULK_SET);
        assert_eq!(TransactRequest::OPCODE, Opcode::STATE_TRANSACT);
    }
}
