//! The `sequencer.memory` driver: one counter per (tenant, key) behind a
//! mutex, fast and gone when the module exits.

use std::collections::HashMap;

use mecha_abi::msg::ComponentSpec;
use mecha_module::metadata::Metadata;
use parking_lot::Mutex;

use super::{
    last_id, max_sequences, too_many_sequences, BoxFuture, SeqError, Sequencer, MAX_SEQUENCES_FIELD,
};

/// An in-memory sequencer. Nothing survives the process, so sequences start
/// again at 1 after a restart: fine for tests and throwaway ids, wrong for ids
/// that are stored anywhere (use `sequencer.redb` for those).
#[derive(Debug)]
pub struct MemorySequencer {
    /// The component's name, for the quota's message.
    component: String,
    /// The most sequences one tenant keeps (`maxSequencesPerTenant`).
    max_sequences: u64,
    /// The last id handed out, by tenant, then key (absent = none yet).
    /// Nesting the maps lets a lookup borrow the caller's strings instead of
    /// building an owned (tenant, key) pair for every request.
    last: Mutex<HashMap<String, HashMap<String, u64>>>,
}

impl MemorySequencer {
    /// Creates an empty sequencer for `spec`, whose only metadata field is
    /// `maxSequencesPerTenant`: silently ignoring another (say a
    /// `segmentSize` copied from a redb component) would hide a mistake.
    pub fn open(spec: &ComponentSpec) -> Result<Self, SeqError> {
        let metadata = Metadata::parse(spec, &[MAX_SEQUENCES_FIELD])?;
        Ok(Self {
            component: spec.name.clone(),
            max_sequences: max_sequences(&metadata)?,
            last: Mutex::default(),
        })
    }

    /// Allocates `count` ids of `key`; the lock makes the read, check and
    /// update one step, so concurrent callers never share an id.
    fn allocate(&self, tenant: &str, key: &str, count: u32) -> Result<u64, SeqError> {
        let mut last = self.last.lock();
        let keys = last.get(tenant);
        let current = keys.and_then(|keys| keys.get(key)).copied();
        let sequences = keys.map_or(0, HashMap::len) as u64;
        if current.is_none() && sequences >= self.max_sequences {
            return Err(too_many_sequences(&self.component, key, self.max_sequences));
        }
        let current = current.unwrap_or(0);
        // `current` is at most MAX_ID, so adding 1 cannot overflow.
        let first = current + 1;
        let new_last = last_id(key, first, count)?;
        last.entry(tenant.to_owned())
            .or_default()
            .insert(key.to_owned(), new_last);
        Ok(first)
    }
}

// The future does its work when first polled, not when created, so a caller
// that builds a future and drops it unpolled has allocated nothing, as with
// any other driver.
impl Sequencer for MemorySequencer {
    fn next_ids<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        count: u32,
    ) -> BoxFuture<'a, Result<u64, SeqError>> {
        Box::pin(async move { self.allocate(tenant, key, count) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::MAX_ID;

    /// A sequence that reaches MAX_ID refuses further ids without changing,
    /// and the refusal does not touch other keys.
    #[test]
    fn an_exhausted_sequence_refuses_without_wrapping() {
        let spec = ComponentSpec {
            name: "seq".to_owned(),
            kind: "sequencer.memory".to_owned(),
            metadata: Vec::new(),
        };
        let seq = MemorySequencer::open(&spec).expect("open");
        seq.last
            .lock()
            .entry("t".to_owned())
            .or_default()
            .insert("k".to_owned(), MAX_ID - 3);
        assert_eq!(
            seq.allocate("t", "k", 4),
            Err(SeqError::Exhausted {
                key: "k".to_owned(),
                count: 4
            })
        );
        assert_eq!(seq.allocate("t", "k", 3), Ok(MAX_ID - 2));
        assert!(matches!(
            seq.allocate("t", "k", 1),
            Err(SeqError::Exhausted { .. })
        ));
        assert_eq!(seq.allocate("t", "other", 1), Ok(1));
    }
}
