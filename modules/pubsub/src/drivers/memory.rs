//! The `pubsub.memory` driver: topic logs in the module's memory. Fast and
//! without setup; everything is lost when the module restarts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

use futures_util::future::BoxFuture;

use crate::broker::log::{GroupChange, PubsubLog, TenantUsage, TopicRecord};
use crate::error::PubsubError;
use crate::message::Message;

/// One topic's log.
#[derive(Debug)]
struct Log {
    /// One past the highest offset appended.
    next: u64,
    /// The stored messages by offset. Bounded by the broker's retention
    /// (`maxMessages` per topic), which trims it through `append` and
    /// `save_group`, and by the tenant's `maxBytesPerTenant`.
    messages: BTreeMap<u64, Arc<Message>>,
}

impl Log {
    /// The bytes its messages count against the tenant's quota.
    fn bytes(&self) -> u64 {
        self.messages
            .values()
            .fold(0, |sum, m| sum.saturating_add(m.stored_len()))
    }
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

    /// Deletes the topic's messages below `below`; answers the bytes they
    /// took.
    fn trim(&self, tenant: &str, topic: &str, below: u64) -> u64 {
        if below == 0 {
            return 0;
        }
        let mut logs = self.logs.lock();
        let Some(log) = logs.get_mut(&(tenant.to_owned(), topic.to_owned())) else {
            return 0;
        };
        // `split_off` keeps the part at or above `below`, which is the part
        // to retain; what stays behind is deleted.
        let kept = log.messages.split_off(&below);
        let deleted = std::mem::replace(&mut log.messages, kept);
        deleted
            .values()
            .fold(0, |sum, m| sum.saturating_add(m.stored_len()))
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
                exists: true,
            },
            None => TopicRecord {
                first: 1,
                next: 1,
                groups: Vec::new(),
                exists: false,
            },
        };
        Box::pin(std::future::ready(Ok(record)))
    }

    /// Adds up the tenant's logs. The broker asks once per tenant, when the
    /// store is new and holds nothing of it, so the scan costs nothing.
    fn tenant_usage<'a>(
        &'a self,
        tenant: &'a str,
    ) -> BoxFuture<'a, Result<TenantUsage, PubsubError>> {
        let mut usage = TenantUsage::default();
        for ((owner, _), log) in self.logs.lock().iter() {
            if owner == tenant {
                usage.bytes = usage.bytes.saturating_add(log.bytes());
                usage.topics += 1;
            }
        }
        Box::pin(std::future::ready(Ok(usage)))
    }

    fn append<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        offset: u64,
        message: Arc<Message>,
        trim_below: u64,
    ) -> BoxFuture<'a, Result<u64, PubsubError>> {
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
        let freed = self.trim(tenant, topic, trim_below);
        Box::pin(std::future::ready(Ok(freed)))
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
    ) -> BoxFuture<'a, Result<u64, PubsubError>> {
        let freed = self.trim(tenant, topic, change.trim_below);
        Box::pin(std::future::ready(Ok(freed)))
    }
}
