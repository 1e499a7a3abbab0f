//! The broker: consumer groups, at-least-once delivery with acks, nacks and
//! ack deadlines, dead letters, per-key ordering and retention, on top of a
//! driver's log ([`PubsubLog`]). One broker serves one pubsub component.
//!
//! State of a topic lives in memory once the topic is first touched (loaded
//! from the driver), and every change that must survive a restart is
//! written through the driver before the request that caused it is
//! answered. Memory per consumer group is bounded by [`WINDOW`].
//!
//! By concern: `settings` (metadata), `log` (the driver trait the broker
//! stores through), `topic` and `group` (in-memory state and its
//! bookkeeping), `engine` (loading, appending under retention, group
//! creation, acks), `usage` (per-tenant ledgers for the topic and byte
//! quotas), `dead_letter`, `reaper` (ack deadlines) and `subscriber`
//! (hand-outs to one member).

mod dead_letter;
mod engine;
mod group;
pub mod log;
mod reaper;
pub mod settings;
mod subscriber;
mod topic;
mod usage;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use mecha_abi::msg::{AckReply, AckRequest, PublishReply, PublishRequest, SubscribeRequest};
use mecha_module::DriverError;

pub use self::dead_letter::DEAD_LETTER_METADATA;
use self::engine::Engine;
use self::group::SubscriberState;
pub use self::group::WINDOW;
pub use self::log::{GroupChange, GroupRecord, PubsubLog, TenantUsage, TopicRecord};
pub use self::settings::Settings;
pub use self::subscriber::Subscriber;
use crate::error::PubsubError;
use crate::message::envelope;
use crate::request::{self, check_name, DEFAULT_GROUP};

/// One pubsub component: a driver's log and the delivery state on top.
pub struct Broker {
    inner: Arc<Engine>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker over `log` with `settings`.
    pub fn new(settings: Settings, log: Box<dyn PubsubLog>) -> Self {
        Self {
            inner: Arc::new(Engine::new(settings, log)),
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

    /// The offset the next message published to `tenant`'s `topic` will
    /// take (1 for a topic that never had one), loading the topic as a
    /// publish would. An embedder that alone publishes to a topic can tell
    /// from it whether an append it started before a crash was stored: the
    /// bindings module's ledger does.
    pub async fn next_offset(&self, tenant: &str, topic: &str) -> Result<u64, PubsubError> {
        check_name("topic", topic)?;
        let topic = self.inner.topic(tenant, topic).await?;
        let next = topic.state.lock().reserved;
        Ok(next)
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
        let group = request::group_name(&req.group, DEFAULT_GROUP)?;
        let max_in_flight = request::max_in_flight(req.max_in_flight)?;
        let ack_deadline =
            request::ack_deadline(req.ack_deadline_ms, self.inner.settings.ack_deadline);
        self.inner.start_reaper();
        let topic = self.inner.topic(tenant, &req.topic).await?;
        self.inner.create_group(&topic, &group).await?;
        let id = self.inner.next_subscriber.fetch_add(1, Ordering::Relaxed);
        {
            let mut state = topic.state.lock();
            let Some(g) = state.groups.get_mut(&group) else {
                return Err(PubsubError::Driver(DriverError::Internal(format!(
                    "consumer group {group:?} vanished while joining it"
                ))));
            };
            g.subscribers.insert(
                id,
                SubscriberState {
                    in_flight: 0,
                    max_in_flight,
                },
            );
        }
        Ok(Subscriber::new(
            Arc::clone(&self.inner),
            topic,
            group,
            id,
            ack_deadline,
        ))
    }

    /// Acknowledges, or with `req.nack` rejects, deliveries of `tenant`'s
    /// topic to a group, from any connection of the tenant. Acks are stored
    /// (durably, for durable drivers) before this returns.
    pub async fn ack(&self, tenant: &str, req: &AckRequest) -> Result<AckReply, PubsubError> {
        check_name("topic", &req.topic)?;
        let group = request::group_name(&req.group, DEFAULT_GROUP)?;
        let topic = self.inner.topic(tenant, &req.topic).await?;
        let applied = self.inner.ack(&topic, &group, &req.items, req.nack).await?;
        Ok(AckReply { applied })
    }
}
