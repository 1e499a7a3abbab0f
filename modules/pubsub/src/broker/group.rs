//! One consumer group's delivery state machine: which offsets are
//! outstanding, ready, in flight or being dead-lettered, which are
//! acknowledged, which partition keys are busy, and what each subscriber
//! holds. Pure bookkeeping: nothing here waits or touches the log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tokio::time::Instant;

use super::log::GroupChange;

/// How far beyond its committed position (the oldest offset it has not
/// acknowledged) a consumer group hands out messages. Beyond it the group
/// pauses until the oldest is acknowledged. This bounds the per-offset
/// state a group keeps in memory (deliveries, out-of-order acks, messages
/// parked behind their partition key) to this many entries, whatever the
/// size of the log; it also bounds which offsets an ack may name.
pub const WINDOW: u64 = 16_384;

/// One consumer group's delivery state.
///
/// Invariant: every offset in `committed..cursor` is either acknowledged
/// (in `acked`) or `outstanding`, and `cursor <= committed + WINDOW`.
pub(super) struct Group {
    /// Every offset below this one is acknowledged.
    pub(super) committed: u64,
    /// The next offset never looked at by this group (since it was loaded).
    pub(super) cursor: u64,
    /// Acknowledged offsets at or above `committed`.
    pub(super) acked: BTreeSet<u64>,
    /// Unacknowledged offsets below `cursor`.
    pub(super) outstanding: BTreeMap<u64, Entry>,
    /// The outstanding offsets that may be handed out (an index).
    pub(super) ready: BTreeSet<u64>,
    /// Ack deadlines of deliveries in flight, earliest first (an index).
    pub(super) deadlines: BTreeSet<(Instant, u64)>,
    /// Partition keys with a delivery in flight or being dead-lettered, and
    /// that offset; later messages of the key wait.
    pub(super) busy: HashMap<Arc<str>, u64>,
    /// Failure counts loaded from the driver for offsets not yet reached by
    /// `cursor`.
    pub(super) loaded_failures: HashMap<u64, u32>,
    /// The group's subscribers.
    pub(super) subscribers: HashMap<u64, SubscriberState>,
    /// Serialises hand-outs, which read the log between looking at the state
    /// and changing it.
    pub(super) dispatch: Arc<tokio::sync::Mutex<()>>,
}

pub(super) struct Entry {
    pub(super) key: Option<Arc<str>>,
    /// How many times the message has been handed to this group.
    pub(super) deliveries: u32,
    pub(super) state: EntryState,
}

pub(super) enum EntryState {
    /// Waiting to be handed out (first time, parked behind its key, or again).
    Ready,
    /// Handed to a subscriber, unacknowledged.
    InFlight {
        subscriber: u64,
        attempt: u32,
        deadline: Instant,
    },
    /// Being moved to the dead-letter topic.
    DeadLettering,
}

pub(super) struct SubscriberState {
    pub(super) in_flight: u32,
    pub(super) max_in_flight: u32,
}

/// Work that follows a state change and must be done outside its lock.
#[derive(Default)]
pub(super) struct Followup {
    pub(super) change: Option<GroupChange>,
    pub(super) dead_letters: Vec<u64>,
}

impl Group {
    pub(super) fn new(committed: u64) -> Self {
        Self {
            committed,
            cursor: committed,
            acked: BTreeSet::new(),
            outstanding: BTreeMap::new(),
            ready: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            busy: HashMap::new(),
            loaded_failures: HashMap::new(),
            subscribers: HashMap::new(),
            dispatch: Arc::default(),
        }
    }

    /// A group as the driver stored it.
    pub(super) fn loaded(committed: u64, acked: &[u64], failures: &[(u64, u32)]) -> Self {
        let mut group = Self::new(committed);
        group.acked = acked.iter().copied().filter(|&o| o >= committed).collect();
        group.loaded_failures = failures
            .iter()
            .copied()
            .filter(|&(o, _)| o >= committed)
            .collect();
        group.advance();
        group
    }

    /// Moves `committed` over acknowledged offsets, keeping the invariant.
    pub(super) fn advance(&mut self) {
        while self.acked.remove(&self.committed) {
            self.committed += 1;
        }
        self.cursor = self.cursor.max(self.committed);
        // The map is tiny after a load, and only then holds entries below.
        let committed = self.committed;
        self.loaded_failures.retain(|&o, _| o >= committed);
    }

    pub(super) fn key_is_free(&self, key: &Option<Arc<str>>) -> bool {
        // A match rather than `Option::is_none_or`, which is newer than the
        // workspace's rust-version (1.80).
        match key {
            None => true,
            Some(k) => !self.busy.contains_key(k),
        }
    }

    /// Takes away what an in-flight entry holds: its deadline, its
    /// subscriber's slot, its key.
    pub(super) fn settle(&mut self, offset: u64) {
        let Some(entry) = self.outstanding.get(&offset) else {
            return;
        };
        if let EntryState::InFlight {
            subscriber,
            deadline,
            ..
        } = entry.state
        {
            self.deadlines.remove(&(deadline, offset));
            if let Some(s) = self.subscribers.get_mut(&subscriber) {
                s.in_flight = s.in_flight.saturating_sub(1);
            }
        }
        if let Some(key) = &entry.key {
            if self.busy.get(key) == Some(&offset) {
                self.busy.remove(key);
            }
        }
    }

    /// Hands `offset` to `subscriber`; returns the attempt number.
    pub(super) fn hand_out(&mut self, offset: u64, subscriber: u64, deadline: Instant) -> u32 {
        let Some(entry) = self.outstanding.get_mut(&offset) else {
            return 0;
        };
        entry.deliveries = entry.deliveries.saturating_add(1);
        let attempt = entry.deliveries;
        entry.state = EntryState::InFlight {
            subscriber,
            attempt,
            deadline,
        };
        if let Some(key) = &entry.key {
            self.busy.insert(Arc::clone(key), offset);
        }
        self.ready.remove(&offset);
        self.deadlines.insert((deadline, offset));
        if let Some(s) = self.subscribers.get_mut(&subscriber) {
            s.in_flight += 1;
        }
        attempt
    }

    /// A delivery of `offset` failed (nack, deadline, subscriber gone): the
    /// message becomes ready again, or starts moving to the dead-letter topic
    /// once it has been delivered `max_deliveries` times.
    pub(super) fn fail(
        &mut self,
        offset: u64,
        max_deliveries: u32,
        dead_letter: bool,
        out: &mut Followup,
    ) {
        self.settle(offset);
        let Some(entry) = self.outstanding.get_mut(&offset) else {
            return;
        };
        let committed = self.committed;
        out.change
            .get_or_insert_with(|| GroupChange {
                committed,
                ..GroupChange::default()
            })
            .failures
            .push((offset, entry.deliveries));
        if dead_letter && max_deliveries > 0 && entry.deliveries >= max_deliveries {
            entry.state = EntryState::DeadLettering;
            // The key stays busy: later messages of the key wait until this
            // one has left the topic, so the order holds.
            if let Some(key) = &entry.key {
                self.busy.insert(Arc::clone(key), offset);
            }
            out.dead_letters.push(offset);
        } else {
            entry.state = EntryState::Ready;
            self.ready.insert(offset);
        }
    }

    /// Gives a delivery back without counting it as failed (the subscriber
    /// went away because this module instance is being retired).
    pub(super) fn give_back(&mut self, offset: u64) {
        self.settle(offset);
        if let Some(entry) = self.outstanding.get_mut(&offset) {
            entry.deliveries = entry.deliveries.saturating_sub(1);
            entry.state = EntryState::Ready;
            self.ready.insert(offset);
        }
    }

    /// Acknowledges `offset`, which the caller has checked lies in
    /// `committed..committed + WINDOW` and below the topic's next offset;
    /// false when it already was.
    pub(super) fn ack(&mut self, offset: u64) -> bool {
        if offset < self.committed || self.acked.contains(&offset) {
            return false;
        }
        if offset < self.cursor {
            self.settle(offset);
            if self.outstanding.remove(&offset).is_none() {
                return false;
            }
            self.ready.remove(&offset);
        }
        self.loaded_failures.remove(&offset);
        self.acked.insert(offset);
        true
    }

    /// The earliest ack deadline in flight.
    pub(super) fn earliest_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }
}
