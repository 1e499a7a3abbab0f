//! One member of a consumer group of a server-delivered store: reads from
//! the server within its `max_in_flight` window, and gives back what passes
//! its ack deadline or what it holds when it leaves.

use std::sync::Arc;
use std::time::Duration;

use mecha_abi::msg::Delivery;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::backend::{Backend, BoxFetcher, Fetched};
use super::state::{GroupKey, Hub, Outstanding, StoreState};
use crate::error::PubsubError;
use crate::message::DeliveryTo;

/// How long a member waits before reading again after its server failed;
/// doubled per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One member of a consumer group: hands out deliveries within its
/// `max_in_flight` window, and gives back those that pass its ack deadline.
///
/// A member survives its server going away: reads fail, the member waits
/// (with backoff) and reads again once the server is back, so the stream
/// stays open and the client need not resubscribe.
pub struct Member<B: Backend> {
    id: u64,
    key: GroupKey,
    store: Arc<StoreState<B>>,
    hub: Arc<Hub<B::Handle>>,
    fetcher: tokio::sync::Mutex<BoxFetcher<B::Handle>>,
    /// Fetched deliveries not pushed yet, oldest last (they are already
    /// outstanding, so they count against the window).
    ready: Mutex<Vec<Delivery>>,
    max_in_flight: usize,
    ack_deadline: Duration,
}

impl<B: Backend> Member<B> {
    /// Member `id` of group `key`, reading through `fetcher`.
    pub(super) fn new(
        id: u64,
        key: GroupKey,
        store: Arc<StoreState<B>>,
        hub: Arc<Hub<B::Handle>>,
        fetcher: BoxFetcher<B::Handle>,
        max_in_flight: usize,
        ack_deadline: Duration,
    ) -> Self {
        Self {
            id,
            key,
            store,
            hub,
            fetcher: tokio::sync::Mutex::new(fetcher),
            ready: Mutex::new(Vec::new()),
            max_in_flight,
            ack_deadline,
        }
    }

    /// The member's id, unique within this module instance.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The group it belongs to.
    pub fn group(&self) -> &str {
        &self.key.2
    }

    /// The next delivery for this member, waiting for one.
    pub async fn next(&self) -> Result<Delivery, PubsubError> {
        let mut backoff = MIN_BACKOFF;
        loop {
            if let Some(delivery) = self.ready.lock().pop() {
                return Ok(delivery);
            }
            let (held, earliest) = self.expire().await;
            let room = self.max_in_flight.saturating_sub(held);
            if room == 0 {
                // The window is full: wait for an ack or nack, or for the
                // earliest deadline.
                let until = earliest.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
                tokio::select! {
                    () = self.hub.freed.notified() => {}
                    () = tokio::time::sleep_until(until) => {}
                }
                continue;
            }
            let fetched = self.fetcher.lock().await.fetch(room).await;
            match fetched {
                Ok(batch) => {
                    backoff = MIN_BACKOFF;
                    self.take(batch);
                }
                Err(e) => {
                    tracing::warn!(store = %self.store.settings.store, error = %e,
                        "reading a subscription failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Records a fetched batch as outstanding and queues it for pushing.
    fn take(&self, batch: Vec<Fetched<B::Handle>>) {
        let deadline = Instant::now() + self.ack_deadline;
        let mut outstanding = self.hub.outstanding.lock();
        let mut ready = self.ready.lock();
        for f in batch.into_iter().rev() {
            ready.push(f.message.into_delivery(DeliveryTo {
                store: &self.store.settings.store,
                topic: &self.key.1,
                group: &self.key.2,
                offset: f.offset,
                attempt: f.attempt,
            }));
            outstanding.insert(
                f.offset,
                Outstanding {
                    attempt: f.attempt,
                    member: self.id,
                    deadline,
                    handle: Arc::new(f.handle),
                },
            );
        }
    }

    /// Nacks this member's deliveries whose deadline passed; answers how
    /// many it still holds and the earliest deadline among them.
    async fn expire(&self) -> (usize, Option<Instant>) {
        let now = Instant::now();
        let (expired, held, earliest) = {
            let mut outstanding = self.hub.outstanding.lock();
            let mut expired = Vec::new();
            outstanding.retain(|offset, o| {
                if o.member == self.id && o.deadline <= now {
                    expired.push((*offset, Arc::clone(&o.handle)));
                    false
                } else {
                    true
                }
            });
            let mine = outstanding.values().filter(|o| o.member == self.id);
            let held = mine.clone().count();
            (expired, held, mine.map(|o| o.deadline).min())
        };
        for (offset, handle) in expired {
            let (tenant, topic, group) = &self.key;
            if let Err(e) = self
                .store
                .backend
                .nack(tenant, topic, group, offset, &handle)
                .await
            {
                // The server redelivers it after its own timeout anyway.
                tracing::warn!(store = %self.store.settings.store, error = %e,
                    "giving back a delivery past its deadline failed");
            }
        }
        (held, earliest)
    }

    /// Leaves the group because this module instance is retiring. The
    /// server cannot tell this from a failure, so it is the same as a drop.
    pub fn retire(self) {}
}

impl<B: Backend> Drop for Member<B> {
    fn drop(&mut self) {
        // The member's outstanding deliveries go back to the group at once,
        // so the other members need not wait for the server's timeout.
        let mine: Vec<(u64, Arc<B::Handle>)> = {
            let mut outstanding = self.hub.outstanding.lock();
            let mut mine = Vec::new();
            outstanding.retain(|offset, o| {
                if o.member == self.id {
                    mine.push((*offset, Arc::clone(&o.handle)));
                    false
                } else {
                    true
                }
            });
            mine
        };
        self.hub.freed.notify_waiters();
        if mine.is_empty() {
            return;
        }
        let (store, key) = (Arc::clone(&self.store), self.key.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let (tenant, topic, group) = &key;
                for (offset, handle) in mine {
                    let _ = store
                        .backend
                        .nack(tenant, topic, group, offset, &handle)
                        .await;
                }
            });
        }
    }
}
