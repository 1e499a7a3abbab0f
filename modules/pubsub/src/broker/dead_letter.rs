//! Dead letters: a message whose deliveries to a group failed
//! `maxDeliveries` times is appended to the dead-letter topic, with metadata
//! saying where it came from, and then acknowledged for the group.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use mecha_abi::msg::AckItem;

use super::engine::Engine;
use super::group::EntryState;
use super::topic::Topic;

/// The metadata names a dead-lettered message gets, saying where it came from.
pub const DEAD_LETTER_METADATA: [&str; 4] = [
    "deadletter.topic",
    "deadletter.group",
    "deadletter.offset",
    "deadletter.deliveries",
];

impl Engine {
    /// Moves `offset` of `group` to the dead-letter topic, then acknowledges
    /// it. A crash in between leaves it unacknowledged, so it may reach the
    /// dead-letter topic twice, but is never lost.
    ///
    /// The future is boxed because the move ends in an ack, whose follow-up
    /// may start further moves: the compiler needs the cycle broken by a
    /// named `Send` type.
    pub(super) fn dead_letter(
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
}
