//! What the typed calls send: each request type knows its opcode, its reply
//! type and whether sending it twice is safe, so one retry loop serves all.

use mecha_abi::msg::{
    DaemonUpgradeReply, DaemonUpgradeRequest, ModuleRestartReply, ModuleRestartRequest,
    ReloadReply, StatusReply,
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

impl Request for DaemonUpgradeRequest {
    const OPCODE: Opcode = Opcode::DAEMON_UPGRADE;
    type Reply = DaemonUpgradeReply;
    fn is_idempotent(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_calls_are_idempotent() {
        assert!(PingRequest.is_idempotent());
        assert!(StatusRequest.is_idempotent());
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
    }
}
