//! One configured pubsub store, whichever kind serves it: an embedded log
//! with the module's own broker (`pubsub.memory`, `pubsub.redb`), or a
//! server that delivers messages itself (`pubsub.redis`, `pubsub.jetstream`),
//! and one member of a consumer group of either kind.

use mecha_abi::msg::{
    AckReply, AckRequest, Delivery, PublishReply, PublishRequest, SubscribeRequest,
};

use crate::broker::{Broker, Subscriber};
use crate::drivers::jetstream::JetstreamBackend;
use crate::drivers::redis::RedisBackend;
use crate::error::PubsubError;
use crate::server_delivery::{Member, ServerStore};

/// A pubsub store.
pub enum Store {
    /// An embedded log under the module's broker.
    Embedded(Broker),
    /// Redis Streams.
    Redis(ServerStore<RedisBackend>),
    /// NATS JetStream.
    Jetstream(ServerStore<JetstreamBackend>),
}

/// A member of a consumer group: a subscription's source of deliveries.
pub enum Subscription {
    /// A subscriber of the embedded broker.
    Embedded(Subscriber),
    /// A member of a Redis consumer group.
    Redis(Member<RedisBackend>),
    /// A member of a JetStream durable consumer.
    Jetstream(Member<JetstreamBackend>),
}

impl Store {
    /// The component name.
    pub fn name(&self) -> &str {
        match self {
            Store::Embedded(b) => &b.settings().store,
            Store::Redis(s) => &s.settings().store,
            Store::Jetstream(s) => &s.settings().store,
        }
    }

    /// PUBSUB_PUBLISH.
    pub async fn publish(
        &self,
        tenant: &str,
        req: &PublishRequest,
    ) -> Result<PublishReply, PubsubError> {
        match self {
            Store::Embedded(b) => b.publish(tenant, req).await,
            Store::Redis(s) => s.publish(tenant, req).await,
            Store::Jetstream(s) => s.publish(tenant, req).await,
        }
    }

    /// PUBSUB_SUBSCRIBE: a new member of the request's group.
    pub async fn subscribe(
        &self,
        tenant: &str,
        req: &SubscribeRequest,
    ) -> Result<Subscription, PubsubError> {
        Ok(match self {
            Store::Embedded(b) => Subscription::Embedded(b.subscribe(tenant, req).await?),
            Store::Redis(s) => Subscription::Redis(s.subscribe(tenant, req).await?),
            Store::Jetstream(s) => Subscription::Jetstream(s.subscribe(tenant, req).await?),
        })
    }

    /// PUBSUB_ACK.
    pub async fn ack(&self, tenant: &str, req: &AckRequest) -> Result<AckReply, PubsubError> {
        match self {
            Store::Embedded(b) => b.ack(tenant, req).await,
            Store::Redis(s) => s.ack(tenant, req).await,
            Store::Jetstream(s) => s.ack(tenant, req).await,
        }
    }
}

impl Subscription {
    /// The member's id, unique within this module instance.
    pub fn id(&self) -> u64 {
        match self {
            Subscription::Embedded(s) => s.id(),
            Subscription::Redis(m) => m.id(),
            Subscription::Jetstream(m) => m.id(),
        }
    }

    /// The group it belongs to.
    pub fn group(&self) -> &str {
        match self {
            Subscription::Embedded(s) => s.group(),
            Subscription::Redis(m) => m.group(),
            Subscription::Jetstream(m) => m.group(),
        }
    }

    /// The next delivery, waiting for one.
    pub async fn next(&self) -> Result<Delivery, PubsubError> {
        match self {
            Subscription::Embedded(s) => s.next().await,
            Subscription::Redis(m) => m.next().await,
            Subscription::Jetstream(m) => m.next().await,
        }
    }

    /// Leaves the group because this module instance is retiring.
    pub fn retire(self) {
        match self {
            Subscription::Embedded(s) => s.retire(),
            Subscription::Redis(m) => m.retire(),
            Subscription::Jetstream(m) => m.retire(),
        }
    }
}
