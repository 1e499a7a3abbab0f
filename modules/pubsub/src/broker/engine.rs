//! The broker's shared state and the operations every other part builds
//! on: loading a topic, appending under retention and the tenant's byte
//! quota, creating a group, and applying acks and nacks, each stored
//! through the driver's log.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use mecha_abi::msg::AckItem;
use mecha_module::DriverError;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::group::{Entry, EntryState, Followup, Group, WINDOW};
use super::log::{GroupChange, PubsubLog};
use super::settings::Settings;
use super::topic::{Topic, TopicState};
use super::usage::{Ledgers, Reserved};
use crate::error::PubsubError;
use crate::message::id::IdSource;
use crate::message::Message;

/// The most messages a publish at its tenant's byte quota reads to learn
/// what its retention trim frees (see [`Engine::reserve`]).
const MAX_TRIM_READS: u64 = 16;

/// The topics a broker has touched, by (tenant, topic). How many each
/// tenant has is counted in its ledger (see [`Engine::topic`]).
#[derive(Default)]
pub(super) struct Topics {
    by_name: HashMap<(String, String), Arc<Topic>>,
}

impl Topics {
    fn get(&self, tenant: &str, name: &str) -> Option<Arc<Topic>> {
        self.by_name
            .get(&(tenant.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every topic touched, for the reaper.
    pub(super) fn all(&self) -> impl Iterator<Item = &Arc<Topic>> {
        self.by_name.values()
    }
}

/// What every part of one broker shares: its settings and log, the topics
/// it has touched, the reaper's timer, and the id sources.
pub(super) struct Engine {
    pub(super) settings: Settings,
    pub(super) log: Box<dyn PubsubLog>,
    /// Every topic touched since the broker started, by (tenant, topic).
    /// Entries are never removed: a topic's state is small once its groups
    /// have caught up, and dropping it would lose in-memory delivery state.
    pub(super) topics: Mutex<Topics>,
    /// What each tenant keeps, for its quotas.
    pub(super) ledgers: Ledgers,
    /// Wakes the reaper when a deadline earlier than its planned wake-up
    /// appears. Shared with the reaper, which waits on it without keeping
    /// the broker alive.
    pub(super) timer: Arc<Notify>,
    /// When the reaper plans to wake next.
    pub(super) planned_wake: Mutex<Option<Instant>>,
    /// Whether the reaper task runs; it starts with the first subscriber,
    /// inside the runtime.
    pub(super) reaper_started: AtomicBool,
    pub(super) next_subscriber: AtomicU64,
    pub(super) ids: IdSource,
}

impl Engine {
    /// The shared state of a broker over `log` with `settings`.
    pub(super) fn new(settings: Settings, log: Box<dyn PubsubLog>) -> Self {
        Self {
            settings,
            log,
            topics: Mutex::new(Topics::default()),
            ledgers: Ledgers::default(),
            timer: Arc::new(Notify::new()),
            planned_wake: Mutex::new(None),
            reaper_started: AtomicBool::new(false),
            next_subscriber: AtomicU64::new(1),
            ids: IdSource::new(),
        }
    }

    /// The topic, loaded from the driver on first use.
    ///
    /// A topic the store holds nothing of counts as a new one in its
    /// tenant's ledger, which refuses it once the tenant has
    /// `maxTopicsPerTenant`: the count starts from the topics the store
    /// holds (durable for `pubsub.redb`), and touched topics stay in memory
    /// (see [`Engine::topics`]), so both are bounded.
    pub(super) async fn topic(&self, tenant: &str, name: &str) -> Result<Arc<Topic>, PubsubError> {
        if let Some(topic) = self.topics.lock().get(tenant, name) {
            return Ok(topic);
        }
        // The ledger is loaded before the tenant's first topic, so every
        // write through this broker is counted on top of what it loaded.
        let ledger = self.ledgers.get(tenant, &*self.log).await?;
        // Nothing writes to a topic before it is in `topics`, so the record
        // is current when it goes in; a concurrent first use that got there
        // first wins, and this record is dropped.
        let record = self.log.load_topic(tenant, name).await?;
        let mut topics = self.topics.lock();
        if let Some(topic) = topics.get(tenant, name) {
            return Ok(topic);
        }
        if !record.exists {
            ledger.add_topic(name, &self.settings)?;
        }
        let topic = Arc::new(Topic {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            state: Mutex::new(TopicState::from_record(record)),
            publishing: tokio::sync::Mutex::new(()),
            changed: Notify::new(),
            ledger,
        });
        topics
            .by_name
            .insert((tenant.to_owned(), name.to_owned()), Arc::clone(&topic));
        Ok(topic)
    }

    /// Appends `message` to a topic, applying retention first, and answers
    /// its offset once it is stored durably.
    ///
    /// Its bytes are reserved in the tenant's ledger before its offset is
    /// taken, so a publish past `maxBytesPerTenant` is refused without
    /// taking an offset or writing anything.
    ///
    /// The publishing lock is held only while the offset is taken and the
    /// append is queued, not while it waits for its disk sync, so the next
    /// publish to the topic can join the same sync (group commit in the
    /// redb driver). Messages become visible to subscribers in offset order,
    /// once every earlier append has ended (see [`TopicState::ended`]).
    pub(super) async fn append(
        &self,
        tenant: &str,
        name: &str,
        message: Message,
    ) -> Result<u64, PubsubError> {
        let topic = self.topic(tenant, name).await?;
        let size = message.stored_len();
        let (answer, answered) = tokio::sync::oneshot::channel();
        {
            let _turn = topic.publishing.lock().await;
            // Only appends change `reserved`, and only groups (created under
            // this lock too) make a trim wait for acks, so what is read here
            // holds until the offset is taken below.
            let (offset, trim_below, kept_from) = {
                let state = topic.state.lock();
                let max = self.settings.max_messages;
                match state.slowest() {
                    // Without groups nobody waits for old messages: keep the
                    // newest `max` (this one included) for groups yet to come.
                    None => {
                        let floor = (state.reserved + 1).saturating_sub(max).max(state.first);
                        let trim = if floor > state.first { floor } else { 0 };
                        // Queued appends already delete what lies below
                        // `trimming`; this one deletes from there on.
                        (state.reserved, trim, state.first.max(state.trimming))
                    }
                    Some((group, committed)) => {
                        if state.reserved - committed.max(state.first) >= max {
                            return Err(PubsubError::Full {
                                topic: name.to_owned(),
                                retained: state.reserved.saturating_sub(state.first),
                                group: group.to_owned(),
                            });
                        }
                        (state.reserved, 0, 0)
                    }
                }
            };
            let reserved = self.reserve(&topic, size, trim_below, kept_from).await?;
            {
                let mut state = topic.state.lock();
                state.reserved = offset + 1;
                state.trimming = state.trimming.max(trim_below);
            }
            // From here the offset is taken: however the append ends (even
            // if it is never queued, or its future is dropped), `Landing`
            // reports it, so later offsets become visible.
            let landing = Landing {
                topic: Arc::clone(&topic),
                offset,
                trim_below,
                reserved: Some(reserved),
                answer: Some(answer),
            };
            self.log
                .queue_append(
                    tenant,
                    name,
                    offset,
                    Arc::new(message),
                    trim_below,
                    Box::new(move |outcome| landing.land(outcome)),
                )
                .await?;
        }
        answered.await.map_err(|_| {
            PubsubError::Driver(DriverError::Internal(
                "the outcome of an append was lost".to_owned(),
            ))
        })?
    }

    /// Reserves the bytes of a message about to be appended to `topic`,
    /// whose append deletes the messages in `kept_from..trim_below`.
    ///
    /// Most appends trim nothing and are checked on their own bytes. One
    /// that a tenant at its quota makes to a topic without groups (whose
    /// retention deletes the oldest message with each append) is checked on
    /// what it leaves, reading the sizes of the messages it deletes, so such
    /// a topic keeps rolling over instead of refusing every publish for
    /// good. A message not yet stored (its append still queued) counts as
    /// freeing nothing, which can only refuse early, never admit too much.
    async fn reserve(
        &self,
        topic: &Topic,
        size: u64,
        trim_below: u64,
        kept_from: u64,
    ) -> Result<Reserved, PubsubError> {
        let refused = match topic.ledger.reserve(size, 0, &self.settings) {
            Ok(reserved) => return Ok(reserved),
            Err(refused) => refused,
        };
        // A lowered `maxMessages` can make one append delete many messages;
        // reading them all is not worth it to admit one publish.
        if trim_below <= kept_from || trim_below - kept_from > MAX_TRIM_READS {
            return Err(refused);
        }
        let mut trimmed = 0_u64;
        for offset in kept_from..trim_below {
            if let Some(message) = self.log.read(&topic.tenant, &topic.name, offset).await? {
                trimmed = trimmed.saturating_add(message.stored_len());
            }
        }
        topic.ledger.reserve(size, trimmed, &self.settings)
    }

    /// Creates `group` if it does not exist, stored before it is used,
    /// unless the topic already has `maxGroupsPerTopic` groups.
    pub(super) async fn create_group(&self, topic: &Topic, group: &str) -> Result<(), PubsubError> {
        if topic.state.lock().groups.contains_key(group) {
            return Ok(());
        }
        // Under the publishing lock no append can trim the messages the new
        // group starts at between reading `first` and storing the group.
        let _turn = topic.publishing.lock().await;
        let first = {
            let state = topic.state.lock();
            if state.groups.contains_key(group) {
                return Ok(());
            }
            // Groups are only ever added, so counting them here, under the
            // publishing lock, bounds them exactly; the count includes
            // those loaded from the store.
            if state.groups.len() as u64 >= self.settings.max_groups {
                return Err(PubsubError::Driver(DriverError::Quota {
                    component: self.settings.store.clone(),
                    field: "maxGroupsPerTopic",
                    limit: self.settings.max_groups,
                    what: format!("a new consumer group {group:?} of topic {:?}", topic.name),
                }));
            }
            // Queued appends may still delete messages below `trimming`.
            state.first.max(state.trimming)
        };
        let change = GroupChange {
            committed: first,
            ..GroupChange::default()
        };
        let freed = self
            .log
            .save_group(&topic.tenant, &topic.name, group, &change)
            .await?;
        topic.ledger.release(freed);
        topic
            .state
            .lock()
            .groups
            .entry(group.to_owned())
            .or_insert_with(|| Group::new(first));
        Ok(())
    }

    pub(super) async fn ack(
        self: &Arc<Self>,
        topic: &Arc<Topic>,
        group: &str,
        items: &[AckItem],
        nack: bool,
    ) -> Result<u32, PubsubError> {
        let mut applied = 0;
        let mut out = Followup::default();
        {
            let mut state = topic.state.lock();
            let next = state.next;
            let Some(g) = state.groups.get_mut(group) else {
                // A group nobody ever joined has received nothing to ack.
                return Ok(0);
            };
            for item in items {
                if nack {
                    let outstanding = matches!(
                        g.outstanding.get(&item.offset),
                        Some(Entry { state: EntryState::InFlight { attempt, .. }, .. })
                            if *attempt == item.attempt
                    );
                    if outstanding {
                        let dead_letter = self.settings.dead_letter_topic_of(&topic.name).is_some();
                        g.fail(
                            item.offset,
                            self.settings.max_deliveries,
                            dead_letter,
                            &mut out,
                        );
                        applied += 1;
                    }
                } else {
                    let in_window =
                        item.offset < next && item.offset < g.committed.saturating_add(WINDOW);
                    if in_window && g.ack(item.offset) {
                        applied += 1;
                        out.change
                            .get_or_insert_with(GroupChange::default)
                            .acked
                            .push(item.offset);
                    }
                }
            }
            if out.change.is_some() {
                g.advance();
                let committed = g.committed;
                let trim_below = state.trim_point();
                if let Some(change) = &mut out.change {
                    change.committed = committed;
                    change.acked.retain(|&o| o >= committed);
                    change.trim_below = trim_below;
                }
            }
        }
        if applied > 0 {
            topic.changed.notify_waiters();
        }
        self.follow_up(topic, group, out).await?;
        Ok(applied)
    }

    /// Stores a change and starts dead-letter moves, after a state change.
    pub(super) async fn follow_up(
        self: &Arc<Self>,
        topic: &Arc<Topic>,
        group: &str,
        out: Followup,
    ) -> Result<(), PubsubError> {
        for offset in out.dead_letters {
            let inner = Arc::clone(self);
            let (topic, group) = (Arc::clone(topic), group.to_owned());
            tokio::spawn(async move { inner.dead_letter(topic, group, offset).await });
        }
        if let Some(change) = out.change {
            let freed = self
                .log
                .save_group(&topic.tenant, &topic.name, group, &change)
                .await?;
            topic.ledger.release(freed);
        }
        Ok(())
    }
}

/// One append's offset, from the moment it is taken until its append ends:
/// it records the end in the topic (which makes the message, or the gap a
/// failed append leaves, visible in offset order), settles its bytes in
/// the tenant's ledger, wakes the subscribers, and answers the publisher.
/// Dropped without [`Landing::land`] (the append was never queued, or the
/// writer went away), it records a failure, so a lost append never holds up
/// the topic's later messages.
struct Landing {
    topic: Arc<Topic>,
    offset: u64,
    trim_below: u64,
    /// The message's bytes in the ledger; taken by the first end.
    reserved: Option<Reserved>,
    /// Taken by the first end; `None` afterwards.
    answer: Option<tokio::sync::oneshot::Sender<Result<u64, PubsubError>>>,
}

impl Landing {
    /// The append ended with `outcome`: the bytes its trim deleted, or why
    /// it failed.
    fn land(mut self, outcome: Result<u64, PubsubError>) {
        self.end(outcome);
    }

    fn end(&mut self, outcome: Result<u64, PubsubError>) {
        let Some(answer) = self.answer.take() else {
            return;
        };
        // A stored message keeps its bytes and gives back what its trim
        // deleted; a failed one (dropped unsettled) gives back its own.
        let reserved = self.reserved.take();
        if let (Some(reserved), Ok(freed)) = (reserved, &outcome) {
            reserved.settle(*freed);
        }
        // A failed append trims nothing, and its offset stays a gap, which
        // subscribers skip as a missing message.
        let trim = if outcome.is_ok() { self.trim_below } else { 0 };
        self.topic.state.lock().ended(self.offset, trim);
        self.topic.changed.notify_waiters();
        // The publisher may have gone away; its answer then goes nowhere.
        let _ = answer.send(outcome.map(|_| self.offset));
    }
}

impl Drop for Landing {
    fn drop(&mut self) {
        self.end(Err(PubsubError::Driver(DriverError::Internal(
            "an append ended before it was stored".to_owned(),
        ))));
    }
}
