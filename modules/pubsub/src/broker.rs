//! The broker: consumer groups, at-least-once delivery with acks, nacks and
//! ack deadlines, dead letters, per-key ordering and retention, on top of a
//! driver's log ([`PubsubLog`]). One broker serves one pubsub component.
//!
//! State of a topic lives in memory once the topic is first touched (loaded
//! from the driver), and every change that must survive a restart is
//! written through the driver before the request that caused it is
//! answered. Memory per consumer group is bounded by [`WINDOW`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use mecha_abi::msg::{
    AckItem, AckReply, AckRequest, Delivery, PublishReply, PublishRequest, SubscribeRequest,
    PUBSUB_MAX_IN_FLIGHT,
};
use mecha_module::metadata::Metadata;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::drivers::{BoxFuture, GroupChange, Message, PubsubError, PubsubLog, TopicRecord};
use crate::envelope::{self, IdSource};

/// How far beyond its committed position (the oldest offset it has not
/// acknowledged) a consumer group hands out messages. Beyond it the group
/// pauses until the oldest is acknowledged. This bounds the per-offset
/// state a group keeps in memory (deliveries, out-of-order acks, messages
/// parked behind their partition key) to this many entries, whatever the
/// size of the log; it also bounds which offsets an ack may name.
pub const WINDOW: u64 = 16_384;

/// The deliveries a subscriber may hold unacknowledged when it names no limit.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 64;

/// The name of the group a subscriber joins when it names none.
pub const DEFAULT_GROUP: &str = "default";

/// The longest topic or group name, in bytes. Names are stored in every
/// key of the durable log, so they are kept short.
pub const MAX_NAME: usize = 1024;

/// The metadata names a dead-lettered message gets, saying where it came from.
pub const DEAD_LETTER_METADATA: [&str; 4] = [
    "deadletter.topic",
    "deadletter.group",
    "deadletter.offset",
    "deadletter.deliveries",
];

/// The longest the reaper sleeps without being told of a new deadline; a
/// safety net only, as every new earlier deadline wakes it.
const REAPER_IDLE: Duration = Duration::from_secs(1);

/// A component's delivery settings, from its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The component name.
    pub store: String,
    /// After this many deliveries of a message to a group have failed, it
    /// moves to the dead-letter topic; 0 never dead-letters.
    pub max_deliveries: u32,
    /// The dead-letter topic of every topic; `None` means `<topic>.dlq`.
    pub dead_letter_topic: Option<String>,
    /// The most messages a topic retains.
    pub max_messages: u64,
    /// The ack deadline of subscribers that name none.
    pub ack_deadline: Duration,
}

impl Settings {
    /// The metadata fields the broker understands, whatever the driver.
    pub const KNOWN_FIELDS: [&'static str; 4] = [
        "maxDeliveries",
        "deadLetterTopic",
        "maxMessages",
        "ackDeadlineMs",
    ];

    /// Reads the broker's fields from a component's metadata (which the
    /// driver has checked for unknown fields). `max_messages` is the
    /// driver's default retention.
    pub fn parse(metadata: &Metadata<'_>, max_messages: u64) -> Result<Settings, PubsubError> {
        let dead_letter_topic = match metadata.get("deadLetterTopic") {
            Some(topic) => {
                check_name("deadLetterTopic", topic).map_err(|e| metadata.error(e.to_string()))?;
                Some(topic.to_owned())
            }
            None => None,
        };
        let max_ack_deadline = u64::from(u32::MAX);
        Ok(Settings {
            store: metadata.component().to_owned(),
            max_deliveries: metadata
                .parsed(
                    "maxDeliveries",
                    &format!("a whole number from 0 to {}", u32::MAX),
                )?
                .unwrap_or(5),
            dead_letter_topic,
            max_messages: metadata
                .whole("maxMessages", 1..=u64::MAX)?
                .unwrap_or(max_messages),
            ack_deadline: metadata
                .whole("ackDeadlineMs", 1..=max_ack_deadline)?
                .map_or(Duration::from_secs(30), Duration::from_millis),
        })
    }

    /// Where failed messages of `topic` go, or `None` for the dead-letter
    /// topic itself: dead-lettering it into itself would only loop.
    fn dead_letter_topic_of(&self, topic: &str) -> Option<String> {
        let target = match &self.dead_letter_topic {
            Some(fixed) => fixed.clone(),
            None => format!("{topic}.dlq"),
        };
        (target != topic).then_some(target)
    }
}

/// Rejects an empty or over-long topic or group name.
fn check_name(what: &str, name: &str) -> Result<(), PubsubError> {
    if name.is_empty() {
        return Err(PubsubError::Invalid(format!("{what} must not be empty")));
    }
    if name.len() > MAX_NAME {
        return Err(PubsubError::Invalid(format!(
            "{what} is {} bytes long, more than the limit of {MAX_NAME}",
            name.len()
        )));
    }
    Ok(())
}

/// The group a request names: `default` for the empty name.
fn group_name(group: &str) -> Result<String, PubsubError> {
    if group.is_empty() {
        return Ok(DEFAULT_GROUP.to_owned());
    }
    check_name("group", group)?;
    Ok(group.to_owned())
}

/// One pubsub component: a driver's log and the delivery state on top.
pub struct Broker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

struct Inner {
    settings: Settings,
    log: Box<dyn PubsubLog>,
    /// Every topic touched since the broker started, by (tenant, topic).
    /// Entries are never removed: a topic's state is small once its groups
    /// have caught up, and dropping it would lose in-memory delivery state.
    topics: Mutex<HashMap<(String, String), Arc<TopicSlot>>>,
    /// Wakes the reaper when a deadline earlier than its planned wake-up
    /// appears. Shared with the reaper, which waits on it without keeping
    /// the broker alive.
    timer: Arc<Notify>,
    /// When the reaper plans to wake next.
    planned_wake: Mutex<Option<Instant>>,
    /// Whether the reaper task runs; it starts with the first subscriber,
    /// inside the runtime.
    reaper_started: AtomicBool,
    next_subscriber: AtomicU64,
    ids: IdSource,
}

/// A topic, loaded from the driver on first use.
#[derive(Default)]
struct TopicSlot {
    cell: tokio::sync::OnceCell<Arc<Topic>>,
}

struct Topic {
    tenant: String,
    name: String,
    state: Mutex<TopicState>,
    /// Serialises appends (so offsets become visible in order) and group
    /// creation (so a new group's start is not trimmed under it).
    publishing: tokio::sync::Mutex<()>,
    /// Signalled on every change a waiting subscriber may care about: a new
    /// message, an ack, a failed delivery, a subscriber leaving.
    changed: Notify,
}

struct TopicState {
    /// The lowest offset still stored.
    first: u64,
    /// The offset the next message takes.
    next: u64,
    groups: BTreeMap<String, Group>,
}

/// One consumer group's delivery state.
///
/// Invariant: every offset in `committed..cursor` is either acknowledged
/// (in `acked`) or `outstanding`, and `cursor <= committed + WINDOW`.
struct Group {
    /// Every offset below this one is acknowledged.
    committed: u64,
    /// The next offset never looked at by this group (since it was loaded).
    cursor: u64,
    /// Acknowledged offsets at or above `committed`.
    acked: BTreeSet<u64>,
    /// Unacknowledged offsets below `cursor`.
    outstanding: BTreeMap<u64, Entry>,
    /// The outstanding offsets that may be handed out (an index).
    ready: BTreeSet<u64>,
    /// Ack deadlines of deliveries in flight, earliest first (an index).
    deadlines: BTreeSet<(Instant, u64)>,
    /// Partition keys with a delivery in flight or being dead-lettered, and
    /// that offset; later messages of the key wait.
    busy: HashMap<Arc<str>, u64>,
    /// Failure counts loaded from the driver for offsets not yet reached by
    /// `cursor`.
    loaded_failures: HashMap<u64, u32>,
    /// The group's subscribers.
    subscribers: HashMap<u64, SubscriberState>,
    /// Serialises hand-outs, which read the log between looking at the state
    /// and changing it.
    dispatch: Arc<tokio::sync::Mutex<()>>,
}

struct Entry {
    key: Option<Arc<str>>,
    /// How many times the message has been handed to this group.
    deliveries: u32,
    state: EntryState,
}

enum EntryState {
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

struct SubscriberState {
    in_flight: u32,
    max_in_flight: u32,
}

/// Work that follows a state change and must be done outside its lock.
#[derive(Default)]
struct Followup {
    change: Option<GroupChange>,
    dead_letters: Vec<u64>,
}

impl Group {
    fn new(committed: u64) -> Self {
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
    fn loaded(committed: u64, acked: &[u64], failures: &[(u64, u32)]) -> Self {
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
    fn advance(&mut self) {
        while self.acked.remove(&self.committed) {
            self.committed += 1;
        }
        self.cursor = self.cursor.max(self.committed);
        // The map is tiny after a load, and only then holds entries below.
        let committed = self.committed;
        self.loaded_failures.retain(|&o, _| o >= committed);
    }

    fn key_is_free(&self, key: &Option<Arc<str>>) -> bool {
        // A match rather than `Option::is_none_or`, which is newer than the
        // workspace's rust-version (1.80).
        match key {
            None => true,
            Some(k) => !self.busy.contains_key(k),
        }
    }

    /// Takes away what an in-flight entry holds: its deadline, its
    /// subscriber's slot, its key.
    fn settle(&mut self, offset: u64) {
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
    fn hand_out(&mut self, offset: u64, subscriber: u64, deadline: Instant) -> u32 {
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
    fn fail(&mut self, offset: u64, max_deliveries: u32, dead_letter: bool, out: &mut Followup) {
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
    fn give_back(&mut self, offset: u64) {
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
    fn ack(&mut self, offset: u64) -> bool {
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
    fn earliest_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }
}

impl TopicState {
    fn from_record(record: TopicRecord) -> Self {
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
    fn slowest(&self) -> Option<(&str, u64)> {
        self.groups
            .iter()
            .map(|(name, g)| (name.as_str(), g.committed))
            .min_by_key(|&(_, committed)| committed)
    }

    /// Messages below the returned offset are acknowledged by every group and
    /// may be deleted; 0 when there is nothing new to delete.
    fn trim_point(&mut self) -> u64 {
        match self.slowest() {
            Some((_, committed)) if committed > self.first => {
                self.first = committed.min(self.next);
                self.first
            }
            _ => 0,
        }
    }
}

impl Broker {
    /// A broker over `log` with `settings`.
    pub fn new(settings: Settings, log: Box<dyn PubsubLog>) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                log,
                topics: Mutex::new(HashMap::new()),
                timer: Arc::new(Notify::new()),
                planned_wake: Mutex::new(None),
                reaper_started: AtomicBool::new(false),
                next_subscriber: AtomicU64::new(1),
                ids: IdSource::new(),
            }),
        }
    }

    /// The component's settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Publishes one message for `tenant`; answered once it is stored
    /// (durably, for durable drivers).
    pub async fn publish(
        &self,
        tenant: &str,
        req: &PublishRequest,
    ) -> Result<PublishReply, PubsubError> {
        check_name("topic", &req.topic)?;
        let id = self.inner.ids.next_id();
        let message = envelope::build(tenant, req, id.clone(), SystemTime::now());
        let offset = self.inner.append(tenant, &req.topic, message).await?;
        Ok(PublishReply { id, offset })
    }

    /// Joins `tenant`'s consumer group and returns the subscriber, whose
    /// [`Subscriber::next`] yields deliveries. A group that did not exist
    /// starts at the oldest message the topic retains.
    pub async fn subscribe(
        &self,
        tenant: &str,
        req: &SubscribeRequest,
    ) -> Result<Subscriber, PubsubError> {
        check_name("topic", &req.topic)?;
        let group = group_name(&req.group)?;
        let max_in_flight = match req.max_in_flight {
            0 => DEFAULT_MAX_IN_FLIGHT,
            n if n > PUBSUB_MAX_IN_FLIGHT => {
                return Err(PubsubError::Invalid(format!(
                    "max_in_flight {n} is above the limit of {PUBSUB_MAX_IN_FLIGHT}"
                )))
            }
            n => n,
        };
        let ack_deadline = match req.ack_deadline_ms {
            0 => self.inner.settings.ack_deadline,
            ms => Duration::from_millis(u64::from(ms)),
        };
        self.inner.start_reaper();
        let topic = self.inner.topic(tenant, &req.topic).await?;
        self.inner.create_group(&topic, &group).await?;
        let id = self.inner.next_subscriber.fetch_add(1, Ordering::Relaxed);
        {
            let mut state = topic.state.lock();
            let Some(g) = state.groups.get_mut(&group) else {
                return Err(PubsubError::Internal(format!(
                    "consumer group {group:?} vanished while joining it"
                )));
            };
            g.subscribers.insert(
                id,
                SubscriberState {
                    in_flight: 0,
                    max_in_flight,
                },
            );
        }
        Ok(Subscriber {
            inner: Arc::clone(&self.inner),
            topic,
            group,
            id,
            ack_deadline,
            quiet: AtomicBool::new(false),
        })
    }

    /// Acknowledges, or with `req.nack` rejects, deliveries of `tenant`'s
    /// topic to a group, from any connection of the tenant. Acks are stored
    /// (durably, for durable drivers) before this returns.
    pub async fn ack(&self, tenant: &str, req: &AckRequest) -> Result<AckReply, PubsubError> {
        check_name("topic", &req.topic)?;
        let group = group_name(&req.group)?;
        let topic = self.inner.topic(tenant, &req.topic).await?;
        let applied = self.inner.ack(&topic, &group, &req.items, req.nack).await?;
        Ok(AckReply { applied })
    }
}

impl Inner {
    /// The topic, loaded from the driver on first use.
    async fn topic(&self, tenant: &str, name: &str) -> Result<Arc<Topic>, PubsubError> {
        let slot = Arc::clone(
            self.topics
                .lock()
                .entry((tenant.to_owned(), name.to_owned()))
                .or_default(),
        );
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
    async fn append(&self, tenant: &str, name: &str, message: Message) -> Result<u64, PubsubError> {
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
    async fn create_group(&self, topic: &Topic, group: &str) -> Result<(), PubsubError> {
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

    async fn ack(
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
    async fn follow_up(
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

    /// Moves `offset` of `group` to the dead-letter topic, then acknowledges
    /// it. A crash in between leaves it unacknowledged, so it may reach the
    /// dead-letter topic twice, but is never lost.
    ///
    /// The future is boxed because the move ends in an ack, whose follow-up
    /// may start further moves: the compiler needs the cycle broken by a
    /// named `Send` type.
    fn dead_letter(
        self: Arc<Self>,
        topic: Arc<Topic>,
        group: String,
        offset: u64,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move { self.move_to_dead_letter(topic, group, offset).await })
    }

    async fn move_to_dead_letter(self: Arc<Self>, topic: Arc<Topic>, group: String, offset: u64) {
        let result = async {
            let Some(target) = self.settings.dead_letter_topic_of(&topic.name) else {
                return Ok(());
            };
            if let Some(message) = self.log.read(&topic.tenant, &topic.name, offset).await? {
                let deliveries = topic
                    .state
                    .lock()
                    .groups
                    .get(&group)
                    .and_then(|g| g.outstanding.get(&offset))
                    .map_or(0, |e| e.deliveries);
                let mut moved = (*message).clone();
                let origin = [
                    topic.name.clone(),
                    group.clone(),
                    offset.to_string(),
                    deliveries.to_string(),
                ];
                for (name, value) in DEAD_LETTER_METADATA.iter().zip(origin) {
                    moved.metadata.push(((*name).to_owned(), value));
                }
                self.append(&topic.tenant, &target, moved).await?;
            }
            let item = AckItem { offset, attempt: 0 };
            self.ack(&topic, &group, &[item], false).await.map(|_| ())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(
                store = %self.settings.store,
                topic = %topic.name,
                group = %group,
                offset,
                "moving a message to its dead-letter topic failed; it will be delivered again: {e}"
            );
            {
                let mut state = topic.state.lock();
                if let Some(g) = state.groups.get_mut(&group) {
                    if let Some(entry) = g.outstanding.get_mut(&offset) {
                        if matches!(entry.state, EntryState::DeadLettering) {
                            entry.state = EntryState::Ready;
                            g.ready.insert(offset);
                            g.settle(offset);
                        }
                    }
                }
            }
            topic.changed.notify_waiters();
        }
    }

    /// Starts the task that redelivers messages whose ack deadline passed.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(reap(weak, Arc::clone(&self.timer)));
    }

    /// Makes sure the reaper wakes by `deadline`.
    fn deadline_added(&self, deadline: Instant) {
        let mut planned = self.planned_wake.lock();
        let earlier = match *planned {
            None => true,
            Some(p) => deadline < p,
        };
        if earlier {
            *planned = Some(deadline);
            self.timer.notify_one();
        }
    }

    /// Fails every delivery whose deadline has passed; returns the earliest
    /// deadline still ahead.
    async fn expire(self: &Arc<Self>) -> Option<Instant> {
        let topics: Vec<Arc<Topic>> = self
            .topics
            .lock()
            .values()
            .filter_map(|slot| slot.cell.get().cloned())
            .collect();
        let now = Instant::now();
        let mut earliest: Option<Instant> = None;
        for topic in topics {
            let mut work = Vec::new();
            {
                let mut state = topic.state.lock();
                let dead_letter = self.settings.dead_letter_topic_of(&topic.name).is_some();
                for (name, g) in &mut state.groups {
                    let mut out = Followup::default();
                    while let Some(&(at, offset)) = g.deadlines.first() {
                        if at > now {
                            break;
                        }
                        g.fail(offset, self.settings.max_deliveries, dead_letter, &mut out);
                    }
                    if let Some(at) = g.earliest_deadline() {
                        earliest = Some(earliest.map_or(at, |e| e.min(at)));
                    }
                    if out.change.is_some() || !out.dead_letters.is_empty() {
                        work.push((name.clone(), out));
                    }
                }
            }
            if work.is_empty() {
                continue;
            }
            topic.changed.notify_waiters();
            for (group, out) in work {
                if let Err(e) = self.follow_up(&topic, &group, out).await {
                    tracing::warn!(
                        store = %self.settings.store,
                        topic = %topic.name,
                        group = %group,
                        "storing expired deliveries failed: {e}"
                    );
                }
            }
        }
        earliest
    }
}

/// The reaper: fails deliveries whose ack deadline passed, so they are
/// delivered again. It runs while the broker exists, sleeping until the
/// earliest deadline (or until told of an earlier one).
async fn reap(weak: Weak<Inner>, timer: Arc<Notify>) {
    loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        // While expiring, every new deadline wakes the next round (see
        // `deadline_added`), so none added meanwhile is overslept.
        *inner.planned_wake.lock() = None;
        let earliest = inner.expire().await;
        let now = Instant::now();
        let wake = earliest.map_or(now + REAPER_IDLE, |at| at.min(now + REAPER_IDLE));
        *inner.planned_wake.lock() = Some(wake);
        drop(inner);
        // A deadline added since the round began left a permit, which this
        // consumes at once, so it is not overslept.
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = timer.notified() => {}
        }
    }
}

/// A member of a consumer group, receiving deliveries through [`next`].
/// Dropping it gives its unacknowledged deliveries back to the group, each
/// counted as a failed delivery.
///
/// [`next`]: Subscriber::next
pub struct Subscriber {
    inner: Arc<Inner>,
    topic: Arc<Topic>,
    group: String,
    id: u64,
    ack_deadline: Duration,
    /// Set by [`Subscriber::retire`]: leave without counting failures.
    quiet: AtomicBool,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("topic", &self.topic.name)
            .field("group", &self.group)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What a hand-out attempt found.
enum Pick {
    /// An outstanding offset ready to go (again).
    Ready(u64),
    /// The cursor, to be read to learn its key.
    Cursor(u64),
}

impl Subscriber {
    /// The subscriber's id, unique within this broker.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The consumer group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The next delivery for this subscriber. Waits while the subscriber
    /// holds `max_in_flight` unacknowledged deliveries (this is how a slow
    /// consumer is paused) and while no message is available to it.
    ///
    /// Cancel-safe: a delivery is handed out only in the step that returns
    /// it, so dropping the future loses nothing.
    pub async fn next(&self) -> Result<Delivery, PubsubError> {
        loop {
            let changed = self.topic.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            if let Some(delivery) = self.try_next().await? {
                return Ok(delivery);
            }
            changed.await;
        }
    }

    /// One hand-out attempt; `None` when nothing can be handed out now.
    async fn try_next(&self) -> Result<Option<Delivery>, PubsubError> {
        let Some(dispatch) = self.with_group(|_, g| Arc::clone(&g.dispatch)) else {
            return Ok(None);
        };
        let _turn = dispatch.lock().await;
        loop {
            let Some(pick) = self.with_group(|next, g| self.pick(next, g)).flatten() else {
                return Ok(None);
            };
            let offset = match pick {
                Pick::Ready(o) | Pick::Cursor(o) => o,
            };
            let topic = &self.topic;
            let message = self
                .inner
                .log
                .read(&topic.tenant, &topic.name, offset)
                .await?;
            let mut out = Followup::default();
            let handed = {
                let mut state = topic.state.lock();
                let next = state.next;
                let Some(g) = state.groups.get_mut(&self.group) else {
                    return Ok(None);
                };
                // The state may have changed while the log was read (an ack,
                // a nack, an expiry); the pick is re-checked, then applied.
                match (&pick, message) {
                    (_, None) => {
                        // Only retention deletes messages, and never those a
                        // group still needs; a missing one cannot be
                        // delivered, so it counts as acknowledged.
                        tracing::warn!(topic = %topic.name, offset, "message missing from the log; skipping it");
                        if offset < next && g.ack(offset) {
                            g.advance();
                        }
                        None
                    }
                    (Pick::Ready(_), Some(message)) => {
                        let still = self.pick(next, g);
                        if matches!(still, Some(Pick::Ready(o)) if o == offset) {
                            let deadline = Instant::now() + self.ack_deadline;
                            let attempt = g.hand_out(offset, self.id, deadline);
                            Some((message, attempt, deadline))
                        } else {
                            None
                        }
                    }
                    (Pick::Cursor(_), Some(message)) => {
                        if g.cursor != offset || g.acked.contains(&offset) {
                            None
                        } else {
                            g.cursor += 1;
                            let key: Option<Arc<str>> = message.partition_key().map(Arc::from);
                            let deliveries = g.loaded_failures.remove(&offset).unwrap_or(0);
                            let max = self.inner.settings.max_deliveries;
                            let dead_letter = self
                                .inner
                                .settings
                                .dead_letter_topic_of(&topic.name)
                                .is_some();
                            g.outstanding.insert(
                                offset,
                                Entry {
                                    key: key.clone(),
                                    deliveries,
                                    state: EntryState::Ready,
                                },
                            );
                            let free = g.key_is_free(&key);
                            let room = g
                                .subscribers
                                .get(&self.id)
                                .is_some_and(|s| s.in_flight < s.max_in_flight);
                            if dead_letter && max > 0 && deliveries >= max {
                                // Failed often enough before a restart: it
                                // goes straight to the dead-letter topic,
                                // once its key's predecessors are done.
                                if free {
                                    if let Some(entry) = g.outstanding.get_mut(&offset) {
                                        entry.state = EntryState::DeadLettering;
                                    }
                                    if let Some(k) = key {
                                        g.busy.insert(k, offset);
                                    }
                                    out.dead_letters.push(offset);
                                } else {
                                    g.ready.insert(offset);
                                }
                                None
                            } else if free && room {
                                let deadline = Instant::now() + self.ack_deadline;
                                let attempt = g.hand_out(offset, self.id, deadline);
                                Some((message, attempt, deadline))
                            } else {
                                // Parked behind an earlier message of its key
                                // (or, had this member no room after all,
                                // left ready for any member).
                                g.ready.insert(offset);
                                None
                            }
                        }
                    }
                }
            };
            if !out.dead_letters.is_empty() {
                let group = self.group.clone();
                self.inner.follow_up(&self.topic, &group, out).await?;
            }
            if let Some((message, attempt, deadline)) = handed {
                self.inner.deadline_added(deadline);
                return Ok(Some(self.delivery(&message, offset, attempt)));
            }
        }
    }

    /// Runs `f` on the topic's next offset and this subscriber's group, if
    /// the group still exists.
    fn with_group<T>(&self, f: impl FnOnce(u64, &mut Group) -> T) -> Option<T> {
        let mut state = self.topic.state.lock();
        let next = state.next;
        state.groups.get_mut(&self.group).map(|g| f(next, g))
    }

    /// What this subscriber would be handed next, if anything, given the
    /// topic's next offset.
    fn pick(&self, next: u64, g: &mut Group) -> Option<Pick> {
        let me = g.subscribers.get(&self.id)?;
        if me.in_flight >= me.max_in_flight {
            return None;
        }
        // Ready offsets first, oldest first: redeliveries and parked messages
        // go before new ones, and the oldest waiting message of a key is the
        // first of that key found.
        let ready = g.ready.iter().copied().find(|o| {
            g.outstanding
                .get(o)
                .is_some_and(|e| matches!(e.state, EntryState::Ready) && g.key_is_free(&e.key))
        });
        if let Some(offset) = ready {
            return Some(Pick::Ready(offset));
        }
        while g.acked.contains(&g.cursor) {
            g.cursor += 1;
        }
        (g.cursor < next && g.cursor < g.committed.saturating_add(WINDOW))
            .then_some(Pick::Cursor(g.cursor))
    }

    fn delivery(&self, message: &Message, offset: u64, attempt: u32) -> Delivery {
        Delivery {
            store: self.inner.settings.store.clone(),
            topic: self.topic.name.clone(),
            group: self.group.clone(),
            offset,
            attempt,
            id: message.id.clone(),
            source: message.source.clone(),
            event_type: message.event_type.clone(),
            spec_version: message.spec_version.clone(),
            data_content_type: message.data_content_type.clone(),
            time: message.time.clone(),
            trace_parent: message.trace_parent.clone(),
            data: message.data.clone(),
            metadata: message.metadata.clone(),
            raw: message.raw,
        }
    }

    /// Leaves the group without counting the deliveries it holds as failed:
    /// for a module instance being retired, whose subscribers did nothing
    /// wrong. They become ready for other subscribers of this instance; the
    /// next instance delivers them anyway.
    pub fn retire(self) {
        self.quiet.store(true, Ordering::Relaxed);
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let quiet = self.quiet.load(Ordering::Relaxed);
        let mut out = Followup::default();
        {
            let mut state = self.topic.state.lock();
            let Some(g) = state.groups.get_mut(&self.group) else {
                return;
            };
            g.subscribers.remove(&self.id);
            let mine: Vec<u64> = g
                .outstanding
                .iter()
                .filter(|(_, e)| {
                    matches!(e.state, EntryState::InFlight { subscriber, .. } if subscriber == self.id)
                })
                .map(|(&o, _)| o)
                .collect();
            let dead_letter = self
                .inner
                .settings
                .dead_letter_topic_of(&self.topic.name)
                .is_some();
            for offset in mine {
                if quiet {
                    g.give_back(offset);
                } else {
                    g.fail(
                        offset,
                        self.inner.settings.max_deliveries,
                        dead_letter,
                        &mut out,
                    );
                }
            }
        }
        self.topic.changed.notify_waiters();
        if out.change.is_none() && out.dead_letters.is_empty() {
            return;
        }
        // Drop cannot wait: the failure counts are stored by a task. Without
        // a runtime (the process is ending) they stay counted in memory only.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let (inner, topic, group) = (
                Arc::clone(&self.inner),
                Arc::clone(&self.topic),
                self.group.clone(),
            );
            handle.spawn(async move {
                if let Err(e) = inner.follow_up(&topic, &group, out).await {
                    tracing::warn!(topic = %topic.name, group = %group, "storing released deliveries failed: {e}");
                }
            });
        }
    }
}
