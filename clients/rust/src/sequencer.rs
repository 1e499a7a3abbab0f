//! Sequencer calls of the Rust client (async and blocking): strictly
//! increasing ids per key.

use std::ops::Range;

use mecha_abi::msg::{NextIdReply, NextIdRequest};
use mecha_abi::Opcode;

use crate::request::Request;
use crate::Error;

// SEQ_NEXT is not idempotent: an attempt that was applied but whose answer
// was lost (UNAVAILABLE after a module crash, SPEC §6.8) consumed its ids,
// and resending it allocates new ones. It is still retried by default,
// because the only effect of the lost attempt is a gap in the sequence, and
// the sequencer contract allows gaps anyway (a restart skips the rest of a
// segment). A retry can never return an id twice or one below an id already
// handed out, which is all a caller of `next_id` relies on; refusing to retry
// would instead turn every module restart into an error the caller has to
// handle by calling again — with exactly the same effect.
impl Request for NextIdRequest {
    const OPCODE: Opcode = Opcode::SEQ_NEXT;
    type Reply = NextIdReply;
    fn is_idempotent(&self) -> bool {
        true
    }
}

impl crate::Client {
    /// The next id of the sequence `key` in `store` ("" = the default
    /// sequencer). Ids of a key start at 1 and only grow, also across daemon
    /// and module restarts; they may skip values.
    pub async fn next_id(&self, store: &str, key: &str) -> Result<u64, Error> {
        Ok(self.next_ids(store, key, 1).await?.start)
    }

    /// Allocates `count` consecutive ids of the sequence `key` in `store`
    /// ("" = the default sequencer), all above every id handed out before.
    /// `count` must be from 1 to [`SEQ_MAX_COUNT`](mecha_abi::msg::SEQ_MAX_COUNT);
    /// the daemon answers INVALID_ARGUMENT otherwise.
    pub async fn next_ids(&self, store: &str, key: &str, count: u32) -> Result<Range<u64>, Error> {
        let req = NextIdRequest {
            store: store.into(),
            key: key.into(),
            count,
        };
        let reply = self.call(&req).await?;
        id_range(&reply, count)
    }
}

/// The ids of an answer, checked against what was asked, so a broken answer
/// becomes an error rather than a wrong or overflowing range.
fn id_range(reply: &NextIdReply, asked: u32) -> Result<Range<u64>, Error> {
    let end = reply.first.checked_add(u64::from(reply.count));
    match end {
        Some(end) if reply.count == asked && reply.first > 0 => Ok(reply.first..end),
        _ => Err(Error::Protocol(format!(
            "SEQ_NEXT answered {} ids from {} for a request of {asked}",
            reply.count, reply.first
        ))),
    }
}

impl crate::blocking::Client {
    blocking_calls! {
        /// The next id of the sequence `key` in `store` ("" = default); ids
        /// only grow, also across restarts, and may skip values.
        fn next_id(store: &str, key: &str) -> u64;
        /// Allocates `count` consecutive ids of `key`, all above every id
        /// handed out before.
        fn next_ids(store: &str, key: &str, count: u32) -> Range<u64>;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_id_is_retried_by_default_and_uses_its_opcode() {
        let req = NextIdRequest {
            store: String::new(),
            key: "k".into(),
            count: 1,
        };
        assert!(req.is_idempotent());
        assert_eq!(NextIdRequest::OPCODE, Opcode::SEQ_NEXT);
    }

    #[test]
    fn replies_become_ranges_only_when_they_match_the_request() {
        let reply = |first, count| NextIdReply { first, count };
        assert_eq!(id_range(&reply(7, 3), 3).ok(), Some(7..10));
        assert!(id_range(&reply(7, 2), 3).is_err(), "short answer");
        assert!(id_range(&reply(0, 1), 1).is_err(), "ids start at 1");
        assert!(id_range(&reply(u64::MAX, 1), 1).is_err(), "overflow");
    }
}
