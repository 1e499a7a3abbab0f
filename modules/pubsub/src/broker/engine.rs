//! The broker's shared state and the operations every other part builds
//! on: loading a topic, appending under retention, creating a group, and
//! applying acks and nacks, each stored through the driver's log.

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
use super::topic::{Topic, TopicSlot, TopicState};
use crate::error::PubsubError;
use crate::message::id::IdSource;
use crate::message::Message;

/// The topics a broker has touched, and how many each tenant has.
#[derive(Default)]
pub(super) struct Topics {
    /// By (tenant, topic).
    slots: HashMap<(String, String), Arc<TopicSlot>>,
    /// How many of `slots` each tenant has.
    per_tenant: HashMap<String, u64>,
}

impl Topics {
    /// The slot of `name`, created on first use unless the tenant already
    /// has its `settings.max_topics`.
    fn slot(
        &mut self,
        tenant: &str,
        name: &str,
        settings: &Settings,
    ) -> Result<Arc<TopicSlot>, PubsubError> {
        let key = (tenant.to_owned(), name.to_owned());
        if let Some(slot) = self.slots.get(&key) {
            return Ok(Arc::clone(slot));
        }
        let count = self.per_tenant.entry(key.0.clone()).or_default();
        if *count >= settings.max_topics {
            return Err(PubsubError::Driver(DriverError::Quota {
                component: settings.store.clone(),
                field: "maxTopicsPerTenant",
                limit: settings.max_topics,
                what: format!("a new topic {name:?}"),
            }));
        }
        *count += 1;
        Ok(Arc::clone(self.slots.entry(key).or_default()))
    }

    /// Every topic touched, for the reaper and the subscribers.
    pub(super) fn all(&self) -> impl Iterator<Item = &Arc<TopicSlot>> {
        self.slots.values()
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
            timer: Arc::new(Notify::new()),
            planned_wake: Mutex::new(None),
            reaper_started: AtomicBool::new(false),
            next_subscriber: AtomicU64::new(1),
            ids: IdSource::new(),
        }
    }

    /// The topic, loaded from the driver on first use.
    ///
    /// A tenant that has touched `maxTopicsPerTenant` topics is refused a
    /// new one, since touched topics stay in memory (see [`Engine::topics`]).
    pub(super) async fn topic(&self, tenant: &str, name: &str) -> Result<Arc<Topic>, PubsubError> {
        let slot = self.topics.lock().slot(tenant, name, &self.settings)?;
        let topic = slot
            .cell
            .get_or_try_init(|| async {
                let record = self.log.load_topic(tenant, name).await?;
                Ok::<_, PubsubError>(Arc::new(Topic {
                    tenant: tenant.to_owned(),
                    name: name.to_owned(),
                    state: Mutex::new(TopicState::from_record(record)),
                    publishing: tokio::sync::Mutex::new(()),
                    changed: Notify::new(),
                }))
            })
            .await?;
        Ok(Arc::clone(topic))
    }

    /// Appends `message` to a topic, applying retention first, and answers
    /// its offset once it is stored durably.
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
        let (answer, answered) = tokio::sync::oneshot::channel();
        {
            let _turn = topic.publishing.lock().await;
            let (offset, trim_below) = {
                let mut state = topic.state.lock();
                let max = self.settings.max_messages;
                let taken = match state.slowest() {
                    // Without groups nobody waits for old messages: keep the
                    // newest `max` (this one included) for groups yet to come.
                    None => {
                        let floor = (state.reserved + 1).saturating_sub(max).max(state.first);
                        (state.reserved, if floor > state.first { floor } else { 0 })
                    }
                    Some((group, committed)) => {
                        if state.reserved - committed.max(state.first) >= max {
                            return Err(PubsubError::Full {
                                topic: name.to_owned(),
                                retained: state.reserved.saturating_sub(state.first),
                                group: group.to_owned(),
                            });
                        }
                        (state.reserved, 0)
                    }
                };
                state.reserved = taken.0 + 1;
                state.trimming = state.trimming.max(taken.1);
                taken
            };
            // From here the offset is taken: however the append ends (even
            // if it is never queued, or its future is dropped), `Landing`
            // reports it, so later offsets become visible.
            let landing = Landing {
                topic: Arc::clone(&topic),
                offset,
                trim_below,
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

    /// Creates `group` if it does not exist, stored before it is used.
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
            // Queued appends may still delete messages below `trimming`.
            state.first.max(state.trimming)
        };
        let change = GroupChange {
            committed: first,
            ..GroupChange::default()
        };
        self.log
            .save_group(&topic.tenant, &topic.name, group, &change)
            .await?;
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
            self.log
                .save_group(&topic.tenant, &topic.name, group, &change)
                .await?;
        }
        Ok(())
    }
}

/// One append's offset, from the moment it is taken until its append ends:
/// it records the end in the topic (which makes the message, or the gap a
/// failed append leaves, visible in offset order), wakes the subscribers,
/// and answers the publisher. Dropped without [`Landing::land`] (the append
/// was never queued, or the writer went away), it records a failure, so a
/// lost append never holds up the topic's later messages.
struct Landing {
    topic: Arc<Topic>,
    offset: u64,
    trim_below: u64,
    /// Taken by the first end; `None` afterwards.
    answer: Option<tokio::sync::oneshot::Sender<Result<u64, PubsubError>>>,
}

impl Landing {
    /// The append ended with `outcome`.
    fn land(mut self, outcome: Result<(), PubsubError>) {
        self.end(outcome);
    }

    fn end(&mut self, outcome: Result<(), PubsubError>) {
        let Some(answer) = self.answer.take() else {
            return;
        };
        // A failed append trims nothing, and its offset stays a gap, which
        // subscribers skip as a missing message.
        let trim = if outcome.is_ok() { self.trim_below } else { 0 };
        self.topic.state.lock().ended(self.offset, trim);
        self.topic.changed.notify_waiters();
        // The publisher may have gone away; its answer then goes nowhere.
        let _ = answer.send(outcome.map(|()| self.offset));
    }
}

impl Drop for Landing {
    fn drop(&mut self) {
        self.end(Err(PubsubError::Driver(DriverError::Internal(
            "an append ended before it was stored".to_owned(),
        ))));
    }
}
