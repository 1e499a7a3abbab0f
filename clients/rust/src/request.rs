//! What the typed calls send: each request type knows its opcode, its reply
//! type and whether sending it twice is safe, so one retry loop serves all.

use mecha_abi::msg::{
    BulkGetReply, BulkGetRequest, BulkSetRequest, DeleteReply, DeleteRequest, GetRequest,
    ModuleRestartReply, ModuleRestartRequest, ReloadReply, SetReply, SetRequest, StateEntry,
    StatusReply, TransactReply, TransactRequest, TxOp,
};
use mecha_abi::Opcode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A typed request of one opcode.
pub(crate) trait Request: Serialize {
    /// The opcode the request is sent with.
    const OPCODE: Opcode;
    /// The payload of an OK answer.
    type Reply: DeserializeOwned;

    /// True when applying the request twice has the same effect as once, so
    /// it may be retried without the caller opting in. A write qualifies only
    /// when every item carries an ETag: a conditional write cannot apply again
    /// once it changed the ETag, whereas an unconditional one would (and could
    /// overwrite somebody else's write made in between).
    fn is_idempotent(&self) -> bool;
}

/// PING's payload: empty (a unit struct encodes to zero bytes).
#[derive(Serialize)]
pub(crate) struct PingRequest;

/// PING's OK answer: empty.
#[derive(Deserialize)]
pub(crate) struct PingReply;

/// STATUS's payload: empty.
#[derive(Serialize)]
pub(crate) struct StatusRequest;

impl Request for PingRequest {
    const OPCODE: Opcode = Opcode::PING;
    type Reply = PingReply;
    fn is_idempotent(&self) -> bool {
        true
    }
}

impl Request for StatusRequest {
    const OPCODE: Opcode = Opcode::STATUS;
    type Reply = StatusReply;
    fn is_idempotent(&self) -> bool {
        true
    }
}

/// RELOAD's payload: empty.
#[derive(Serialize)]
pub(crate) struct ReloadRequest;

// Admin operations restart processes; repeating one restarts again, so they
// are retried only when the caller opts in.
impl Request for ReloadRequest {
    const OPCODE: Opcode = Opcode::RELOAD;
    type Reply = ReloadReply;
    fn is_idempotent(&self) -> bool {
        false
    }
}

impl Request for ModuleRestartRequest {
    const OPCODE: Opcode = Opcode::MODULE_RESTART;
    type Reply = ModuleRestartReply;
    fn is_idempotent(&self) -> bool {
        false
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use mecha_abi::msg::{DeleteItem, SetItem};

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
    fn reads_and_control_calls_are_idempotent() {
        assert!(PingRequest.is_idempotent());
        assert!(StatusRequest.is_idempotent());
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
    fn empty_payloads_encode_to_nothing() {
        // PING and STATUS carry an empty payload on the wire (SPEC §7.1).
        assert_eq!(mecha_abi::encode(&PingRequest).ok(), Some(Vec::new()));
        assert_eq!(mecha_abi::encode(&StatusRequest).ok(), Some(Vec::new()));
        assert!(mecha_abi::decode::<PingReply>(&[]).is_ok());
    }

    #[test]
    fn opcodes_match_the_spec() {
        assert_eq!(PingRequest::OPCODE, Opcode::PING);
        assert_eq!(StatusRequest::OPCODE, Opcode::STATUS);
        assert_eq!(GetRequest::OPCODE, Opcode::STATE_GET);
        assert_eq!(SetRequest::OPCODE, Opcode::STATE_SET);
        assert_eq!(DeleteRequest::OPCODE, Opcode::STATE_DELETE);
        assert_eq!(BulkGetRequest::OPCODE, Opcode::STATE_BULK_GET);
        assert_eq!(BulkSetRequest::OPCODE, Opcode::STATE_BULK_SET);
        assert_eq!(TransactRequest::OPCODE, Opcode::STATE_TRANSACT);
    }
}
