//! A topic as the broker holds it in memory once first touched: its offsets,
//! its consumer groups, and the retention arithmetic over them.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::group::Group;
use super::log::TopicRecord;
use super::usage::Ledger;

/// One (tenant, topic) and its delivery state.
pub(super) struct Topic {
    pub(super) tenant: String,
    pub(super) name: String,
    pub(super) state: Mutex<TopicState>,
    /// Serialises the queueing of appends (so offsets are taken and queued
    /// in order) and group creation (so a new group's start is not trimmed
    /// under it). It is not held while an append waits for its disk sync.
    pub(super) publishing: tokio::sync::Mutex<()>,
    /// Signalled on every change a waiting subscriber may care about: a new
    /// message, an ack, a failed delivery, a subscriber leaving.
    pub(super) changed: Notify,
    /// Its tenant's ledger, which its appends and trims update.
    pub(super) ledger: Arc<Ledger>,
}

/// What changes of a topic, under one lock.
pub(super) struct TopicState {
    /// The lowest offset still stored.
    pub(super) first: u64,
    /// One past the last offset visible to subscribers: every offset below
    /// it is stored durably, or its append failed and it stays a gap.
    pub(super) next: u64,
    /// The offset the next message takes; above `next` while appends wait
    /// for their disk sync.
    pub(super) reserved: u64,
    /// Appends that ended at or above `next`, with the trim each applies:
    /// they become visible once every offset before them has ended too.
    pub(super) ended_ahead: BTreeMap<u64, u64>,
    /// The highest `trim_below` of any queued append, so that a group created
    /// meanwhile does not start at a message about to be deleted.
    pub(super) trimming: u64,
    /// Its consumer groups, by name.
    pub(super) groups: BTreeMap<String, Group>,
}

impl TopicState {
    /// The state of a topic as the driver stored it.
    pub(super) fn from_record(record: TopicRecord) -> Self {
        let groups = record
            .groups
            .iter()
            .map(|g| {
                let committed = g.committed.max(record.first);
                (
                    g.name.clone(),
                    Group::loaded(committed, &g.acked, &g.failures),
                )
            })
            .collect();
        Self {
            first: record.first,
            next: record.next,
            reserved: record.next,
            ended_ahead: BTreeMap::new(),
            trimming: 0,
            groups,
        }
    }

    /// Records that the append at `offset` ended (`trim_below` is the trim
    /// it applied, 0 if it failed) and makes every message whose earlier
    /// offsets have all ended visible, in offset order.
    pub(super) fn ended(&mut self, offset: u64, trim_below: u64) {
        self.ended_ahead.insert(offset, trim_below);
        while let Some(trim) = self.ended_ahead.remove(&self.next) {
            self.first = self.first.max(trim);
            self.next += 1;
        }
    }

    /// The lowest committed position of all groups, and that group.
    pub(super) fn slowest(&self) -> Option<(&str, u64)> {
        self.groups
            .iter()
            .map(|(name, g)| (name.as_str(), g.committed))
            .min_by_key(|&(_, committed)| committed)
    }

    /// Messages below the returned offset are acknowledged by every group and
    /// may be deleted; 0 when there is nothing new to delete.
    pub(super) fn trim_point(&mut self) -> u64 {
        match self.slowest() {
            Some((_, committed)) if committed > self.first => {
                self.first = committed.min(self.next);
                self.first
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> TopicState {
        TopicState::from_record(TopicRecord {
            first: 1,
            next: 1,
            groups: Vec::new(),
            exists: false,
        })
    }

    /// Appends that end out of order (a later batch's task woke first) or
    /// fail become visible in offset order, each once every earlier one has
    /// ended; a failed one leaves a gap and applies no trim.
    #[test]
    fn messages_become_visible_in_offset_order() {
        let mut state = fresh();
        state.reserved = 5;
        state.ended(2, 0);
        state.ended(3, 2);
        assert_eq!((state.next, state.first), (1, 1), "offset 1 has not ended");
        state.ended(1, 0);
        assert_eq!((state.next, state.first), (4, 2));
        // Offset 4 failed: it ends with no trim and stays a gap.
        state.ended(4, 0);
        assert_eq!((state.next, state.first), (5, 2));
        let mut state = fresh();
        state.reserved = 3;
        state.ended(2, 0);
        state.ended(1, 0);
        assert_eq!(state.next, 3);
        assert!(state.ended_ahead.is_empty());
    }
}
