//! A topic as the broker holds it in memory once first touched: its offsets,
//! its consumer groups, and the retention arithmetic over them.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::group::Group;
use super::log::TopicRecord;

/// A topic, loaded from the driver on first use.
#[derive(Default)]
pub(super) struct TopicSlot {
    pub(super) cell: tokio::sync::OnceCell<Arc<Topic>>,
}

/// One (tenant, topic) and its delivery state.
pub(super) struct Topic {
    pub(super) tenant: String,
    pub(super) name: String,
    pub(super) state: Mutex<TopicState>,
    /// Serialises appends (so offsets become visible in order) and group
    /// creation (so a new group's start is not trimmed under it).
    pub(super) publishing: tokio::sync::Mutex<()>,
    /// Signalled on every change a waiting subscriber may care about: a new
    /// message, an ack, a failed delivery, a subscriber leaving.
    pub(super) changed: Notify,
}

/// What changes of a topic, under one lock.
pub(super) struct TopicState {
    /// The lowest offset still stored.
    pub(super) first: u64,
    /// The offset the next message takes.
    pub(super) next: u64,
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
            groups,
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
