//! The delivery machinery shared by drivers whose server delivers messages
//! itself (`pubsub.redis`, `pubsub.jetstream`): the server keeps the log,
//! the consumer groups and their positions; this module keeps, per consumer
//! group, the deliveries it has pushed and not yet seen acknowledged, so
//! that a member's `max_in_flight` and `ack_deadline_ms` hold, acks from
//! any connection find their delivery, and a member that leaves gives its
//! deliveries back at once.
//!
//! Unlike the embedded broker, nothing here must survive a restart: the
//! server redelivers whatever was not acknowledged (after Redis's
//! `processingTimeout`, or JetStream's `ackWait`).
//!
//! By concern: `backend` (what a driver provides), `state` (outstanding
//! deliveries per group), `member` (one subscriber), and here the store's
//! publish, subscribe and ack.

pub mod backend;
mod member;
mod state;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mecha_abi::msg::{AckReply, AckRequest, PublishReply, PublishRequest, SubscribeRequest};
use mecha_module::DriverError;
use parking_lot::Mutex;
use tokio::sync::Notify;

pub use self::backend::{Backend, BoxFetcher, Fetched, Fetcher, ServerSettings};
pub use self::member::Member;
use self::state::{Hub, StoreState};
use crate::error::PubsubError;
use crate::message::envelope;
use crate::message::id::IdSource;
use crate::request::{self, check_name};

/// A pubsub store served by a server that delivers messages itself.
pub struct ServerStore<B: Backend> {
    inner: Arc<StoreState<B>>,
}

impl<B: Backend> ServerStore<B> {
    /// A store over `backend`.
    pub fn new(settings: ServerSettings, backend: B) -> Self {
        Self {
            inner: Arc::new(StoreState {
                settings,
                backend,
                ids: IdSource::new(),
                next_member: AtomicU64::new(1),
                groups: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The store's settings.
    pub fn settings(&self) -> &ServerSettings {
        &self.inner.settings
    }

    /// PUBSUB_PUBLISH: wraps the data (unless raw) and stores it.
    pub async fn publish(
        &self,
        tenant: &str,
        req: &PublishRequest,
    ) -> Result<PublishReply, PubsubError> {
        check_name("topic", &req.topic)?;
        let message = envelope::build(
            tenant,
            req,
            self.inner.ids.next_id(),
            std::time::SystemTime::now(),
        );
        if message.partition_key().is_some() {
            // Delivering one message of a key at a time needs the broker's
            // per-key bookkeeping, which these servers do not offer; a
            // silently weaker ordering would be worse than a clear refusal.
            return Err(self.unsupported("per-key ordering (the partitionKey metadata entry)"));
        }
        let offset = self
            .inner
            .backend
            .publish(tenant, &req.topic, &message)
            .await?;
        Ok(PublishReply {
            id: message.id,
            offset,
        })
    }

    /// PUBSUB_SUBSCRIBE: joins the group and answers the new member.
    pub async fn subscribe(
        &self,
        tenant: &str,
        req: &SubscribeRequest,
    ) -> Result<Member<B>, PubsubError> {
        check_name("topic", &req.topic)?;
        let group = request::group_name(&req.group, &self.inner.settings.default_group)?;
        let max_in_flight = request::max_in_flight(req.max_in_flight)? as usize;
        let ack_deadline =
            request::ack_deadline(req.ack_deadline_ms, self.inner.settings.ack_deadline);
        if let Some(max) = self.inner.settings.max_ack_deadline {
            if ack_deadline > max {
                return Err(self.unsupported(&format!(
                    "an ack deadline of {ack_deadline:?}, longer than the server's own \
                     redelivery timeout of {max:?}"
                )));
            }
        }
        let fetcher = self.inner.backend.join(tenant, &req.topic, &group).await?;
        let key = (tenant.to_owned(), req.topic.clone(), group.clone());
        let hub = Arc::clone(
            self.inner
                .groups
                .lock()
                .entry(key.clone())
                .or_insert_with(|| {
                    Arc::new(Hub {
                        outstanding: Mutex::new(HashMap::new()),
                        freed: Notify::new(),
                    })
                }),
        );
        Ok(Member::new(
            self.inner.next_member.fetch_add(1, Ordering::Relaxed),
            key,
            Arc::clone(&self.inner),
            hub,
            fetcher,
            max_in_flight,
            ack_deadline,
        ))
    }

    /// PUBSUB_ACK: acks or nacks deliveries of one group.
    pub async fn ack(&self, tenant: &str, req: &AckRequest) -> Result<AckReply, PubsubError> {
        check_name("topic", &req.topic)?;
        let group = request::group_name(&req.group, &self.inner.settings.default_group)?;
        let key = (tenant.to_owned(), req.topic.clone(), group.clone());
        let hub = self.inner.groups.lock().get(&key).cloned();
        let mut applied = 0u32;
        for item in &req.items {
            let taken = hub.as_ref().and_then(|hub| {
                let mut outstanding = hub.outstanding.lock();
                match outstanding.get(&item.offset) {
                    // A nack names one delivery; a stale one does nothing.
                    Some(o) if req.nack && o.attempt != item.attempt => None,
                    Some(_) => outstanding.remove(&item.offset).map(|o| o.handle),
                    None => None,
                }
            });
            let done = match (req.nack, taken) {
                (false, handle) => {
                    self.inner
                        .backend
                        .ack(tenant, &req.topic, &group, item.offset, handle.as_deref())
                        .await?
                }
                (true, Some(handle)) => {
                    self.inner
                        .backend
                        .nack(tenant, &req.topic, &group, item.offset, &handle)
                        .await?;
                    true
                }
                (true, None) => false,
            };
            applied += u32::from(done);
        }
        if let Some(hub) = hub {
            hub.freed.notify_waiters();
        }
        Ok(AckReply { applied })
    }

    /// The error for a feature this store's server cannot provide.
    fn unsupported(&self, feature: &str) -> PubsubError {
        let s = &self.inner.settings;
        PubsubError::Driver(DriverError::Unsupported {
            component: s.store.clone(),
            kind: s.kind.clone(),
            feature: feature.to_owned(),
        })
    }
}
