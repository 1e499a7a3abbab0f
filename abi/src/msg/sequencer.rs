//! Payloads of the sequencer family (`0x04`).

use serde::{Deserialize, Serialize};

/// The most ids one SEQ_NEXT may allocate. Larger batches are INVALID_ARGUMENT:
/// the cap bounds the work (and, with segments, the id space) one request can
/// consume, and a client needing more simply asks again.
pub const SEQ_MAX_COUNT: u32 = 1_000_000;

/// SEQ_NEXT request: allocate `count` consecutive ids of the sequence `key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextIdRequest {
    /// Component name of a sequencer; empty for the default (the first one).
    pub store: String,
    /// The sequence's name, non-empty; sequences are scoped by tenant.
    pub key: String,
    /// How many ids to allocate, from 1 to [`SEQ_MAX_COUNT`].
    pub count: u32,
}

/// SEQ_NEXT response: the ids `first .. first + count` (end exclusive), all
/// greater than every id the sequence handed out before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextIdReply {
    /// The first allocated id; the first id of a new sequence is 1.
    pub first: u64,
    /// How many consecutive ids were allocated; equals the requested count.
    pub count: u32,
}
