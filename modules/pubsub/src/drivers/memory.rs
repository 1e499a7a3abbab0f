//! The `pubsub.memory` driver: topic logs in the module's memory. Fast and
//! without setup; everything is lost when the module restarts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

use futures_util::future::BoxFuture;

use crate::broker::log::{GroupChange, PubsubLog, TopicRecord};
use crate::error::PubsubError;
use crate::message::Message;

/// One topic's log.
#[derive(Debug)]
struct Log {
    /// One past the highest offset appended.
    next: u64,
    /// The stored messages by offset. Bounded by the broker's retention
    /// (`maxMessages` per topic), which trims it through `append` and
    /// `save_group`.
    messages: BTreeMap<u64, Arc<Message>>,
}

/// Topic logs in memory, by (tenant, topic).
///
/// Group progress is not kept here: the broker holds it in memory anyway,
/// and it dies with the module just like this store.
#[derive(Debug, Default)]
pub struct MemoryLog {
    logs: Mutex<HashMap<(String, String), Log>>,
}

impl MemoryLog {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn trim(&self, tenant: &str, topic: &str, below: u64) {
        if below == 0 {
            return;
        }
        let mut logs = self.logs.lock();
        if let Some(log) = logs.get_mut(&(tenant.to_owned(), topic.to_owned())) {
            // `split_off` keeps the part at or above `below`, which is the
            // part to retain.
            log.messages = log.messages.split_off(&below);
        }
    }
}

// Every operation completes without waiting, so the futures are ready at
// once; they are boxed only to fit the trait.
impl PubsubLog for MemoryLog {
    fn load_topic<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<TopicRecord, PubsubError>> {
        let logs = self.logs.lock();
        let record = match logs.get(&(tenant.to_owned(), topic.to_owned())) {
            Some(log) => TopicRecord {
                first: log.messages.keys().next().copied().unwrap_or(log.next),
                next: log.next,
                groups: Vec::new(),
            },
            None => TopicRecord {
                first: 1,
                next: 1,
                groups: Vec::new(),
            },
        };
        Box::pin(std::future::ready(Ok(record)))
    }

    fn append<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        offset: u64,
        message: Arc<Message>,
        trim_below: u64,
    ) -> BoxFuture<'a, Result<(), PubsubError>> {
        {
            let mut logs = self.logs.lock();
            let log = logs
                .entry((tenant.to_owned(), topic.to_owned()))
                .or_insert_with(|| Log {
                    next: 1,
                    messages: BTreeMap::new(),
                });
            log.messages.insert(offset, message);
            log.next = log.next.max(offset.saturating_add(1));
        }
        self.trim(tenant, topic, trim_below);
        Box::pin(std::future::ready(Ok(())))
    }

    fn read<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        offset: u64,
    ) -> BoxFuture<'a, Result<Option<Arc<Message>>, PubsubError>> {
        let found = self
            .logs
            .lock()
            .get(&(tenant.to_owned(), topic.to_owned()))
            .and_then(|log| log.messages.get(&offset).cloned());
        Box::pin(std::future::ready(Ok(found)))
    }

    fn save_group<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        _group: &'a str,
        change: &'a GroupChange,
    ) -> BoxFuture<'a, Result<(), PubsubError>> {
        self.trim(tenant, topic, change.trim_below);
        Box::pin(std::future::ready(Ok(())))
    }
}
