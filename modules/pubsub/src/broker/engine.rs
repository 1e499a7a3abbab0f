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

    /// Appends `message` to a topic, applying retention first.
    pub(super) async fn append(
        &self,
        tenant: &str,
        name: &str,
        message: Message,
    ) -> Result<u64, PubsubError> {
        let topic = self.topic(tenant, name).await?;
        let _turn = topic.publishing.lock().await;
        let (offset, trim_below) = {
            let state = topic.state.lock();
            let max = self.settings.max_messages;
            match state.slowest() {
                // Without groups nobody waits for old messages: keep the
                // newest `max` (this one included) for groups yet to come.
                None => {
                    let floor = (state.next + 1).saturating_sub(max).max(state.first);
                    (state.next, if floor > state.first { floor } else { 0 })
                }
                Some((group, committed)) => {
                    if state.next - committed.max(state.first) >= max {
                        return Err(PubsubError::Full {
                            topic: name.to_owned(),
                            retained: state.next - state.first,
                            group: group.to_owned(),
                        });
                    }
                    (state.next, 0)
                }
            }
        };
        self.log
            .append(tenant, name, offset, Arc::new(message), trim_below)
            .await?;
        {
            let mut state = topic.state.lock();
            state.next = offset + 1;
            state.first = state.first.max(trim_below);
        }
        topic.changed.notify_waiters();
        Ok(offset)
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
            state.first
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
