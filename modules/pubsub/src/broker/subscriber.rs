//! A member of a consumer group under the broker: picks what it is handed
//! next (redeliveries and parked messages first, then new ones, within its
//! in-flight limit and per-key order), and gives back what it holds when it
//! leaves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mecha_abi::msg::Delivery;
use tokio::time::Instant;

use super::engine::Engine;
use super::group::{Entry, EntryState, Followup, Group, WINDOW};
use super::topic::Topic;
use crate::error::PubsubError;
use crate::message::{DeliveryTo, Message};

/// A member of a consumer group, receiving deliveries through [`next`].
/// Dropping it gives its unacknowledged deliveries back to the group, each
/// counted as a failed delivery.
///
/// [`next`]: Subscriber::next
pub struct Subscriber {
    inner: Arc<Engine>,
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
    /// Member `id` of `group`, already registered in the group's state.
    pub(super) fn new(
        inner: Arc<Engine>,
        topic: Arc<Topic>,
        group: String,
        id: u64,
        ack_deadline: Duration,
    ) -> Self {
        Self {
            inner,
            topic,
            group,
            id,
            ack_deadline,
            quiet: AtomicBool::new(false),
        }
    }

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
        message.clone().into_delivery(DeliveryTo {
            store: &self.inner.settings.store,
            topic: &self.topic.name,
            group: &self.group,
            offset,
            attempt,
        })
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
