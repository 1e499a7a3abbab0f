//! The pubsub module: CloudEvents publish/subscribe with consumer groups,
//! at-least-once delivery with acks, redelivery and dead letters, served from
//! the configured stores: embedded (`pubsub.memory`, `pubsub.redb`) under the
//! module's own broker, or servers that deliver messages themselves
//! (`pubsub.redis`: Redis Streams; `pubsub.jetstream`: NATS JetStream).
//!
//! Each subscription is a server-push stream owned by one task: it takes the
//! next delivery from the broker and pushes it, until the application
//! cancels the stream or goes away (its unacknowledged deliveries then go
//! back to its group) or this instance is retired (the stream ends with
//! UNAVAILABLE so the client resubscribes to the next instance).

pub mod broker;
pub mod drivers;
pub mod error;
pub mod message;
pub mod pump;
pub mod request;
pub mod server_delivery;
pub mod store;

use std::path::Path;

use mecha_abi::msg::{AckRequest, PublishRequest, SubscribeReply, SubscribeRequest};
use mecha_module::{Components, Ctx, InitError, LinkHello, Module, Opcode, Reply, Status};

use error::PubsubError;
use store::Store;

/// The pubsub module: one or more named stores, the first being the default.
pub struct PubsubModule {
    stores: Components<Store>,
}

impl Module for PubsubModule {
    const NAME: &'static str = "pubsub";

    async fn init(hello: LinkHello) -> Result<Self, InitError> {
        let data_dir = Path::new(&hello.data_dir);
        let stores = Components::open_scoped(&hello.components, "pubsub store", |spec| {
            drivers::open(spec, data_dir)
        })?;
        Ok(Self { stores })
    }

    async fn handle(&self, ctx: Ctx, payload: &[u8]) -> Reply {
        let result = match ctx.opcode {
            Opcode::PUBSUB_PUBLISH => self.publish(&ctx.tenant, payload).await,
            Opcode::PUBSUB_SUBSCRIBE => self.subscribe(ctx, payload).await,
            Opcode::PUBSUB_ACK => self.ack(&ctx.tenant, payload).await,
            other => Err(Reply::error(
                Status::UnknownOpcode,
                format!("the pubsub module does not serve opcode {other}"),
            )),
        };
        result.unwrap_or_else(|reply| reply)
    }
}

/// Every handler yields the reply to send, success or failure.
type Handled = Result<Reply, Reply>;

impl PubsubModule {
    async fn publish(&self, tenant: &str, payload: &[u8]) -> Handled {
        let req: PublishRequest = Reply::decode(payload)?;
        let (store, tenant) = self.stores.scoped(&req.store, tenant)?;
        let reply = store.publish(&tenant, &req).await.map_err(error_reply)?;
        Ok(Reply::ok(&reply))
    }

    async fn subscribe(&self, ctx: Ctx, payload: &[u8]) -> Handled {
        let req: SubscribeRequest = Reply::decode(payload)?;
        let (store, tenant) = self.stores.scoped(&req.store, &ctx.tenant)?;
        let subscriber = store.subscribe(&tenant, &req).await.map_err(error_reply)?;
        // The daemon answers DEADLINE_EXCEEDED at the deadline and then
        // drops a late answer, so a stream opened now would reach nobody
        // while its subscriber took deliveries from the group; refuse
        // instead (dropping the subscriber, which holds nothing yet).
        if ctx
            .deadline
            .is_some_and(|deadline| std::time::Instant::now() >= deadline)
        {
            return Err(Reply::error(
                Status::DeadlineExceeded,
                format!(
                    "subscribing to {:?} took longer than the request's deadline",
                    req.topic
                ),
            ));
        }
        let reply = SubscribeReply {
            subscription_id: subscriber.id(),
            store: store.name().to_owned(),
            group: subscriber.group().to_owned(),
        };
        // The stream opens only once the subscriber exists, so an error
        // above is a plain error answer and no stream is left half-open.
        let stream = ctx.open_stream();
        tokio::spawn(pump::pump(
            ctx,
            stream,
            subscriber,
            "pubsub",
            |d| d,
            |e| (error_status(&e), e.to_string()),
        ));
        Ok(Reply::stream_ok(&reply))
    }

    async fn ack(&self, tenant: &str, payload: &[u8]) -> Handled {
        let req: AckRequest = Reply::decode(payload)?;
        let (store, tenant) = self.stores.scoped(&req.store, tenant)?;
        let reply = store.ack(&tenant, &req).await.map_err(error_reply)?;
        Ok(Reply::ok(&reply))
    }
}

/// The reply for a broker error.
fn error_reply(e: PubsubError) -> Reply {
    Reply::error(error_status(&e), e.to_string())
}

/// The status of a broker error: the module's own failures here, the shared
/// ones as the SDK maps them.
fn error_status(e: &PubsubError) -> Status {
    match e {
        PubsubError::Invalid(_) => Status::InvalidArgument,
        PubsubError::Full { .. } => Status::ResourceExhausted,
        PubsubError::Driver(driver) => driver.status(),
    }
}

#[cfg(test)]
mod tests {
    use mecha_abi::msg::{ComponentSpec, ErrorBody, PublishReply, SubscribeReply};

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn module(rt: &tokio::runtime::Runtime) -> PubsubModule {
        let hello = LinkHello {
            version: 1,
            module: "pubsub".into(),
            data_dir: std::env::temp_dir().to_string_lossy().into_owned(),
            components: vec![ComponentSpec {
                name: "events".into(),
                kind: "pubsub.memory".into(),
                metadata: Vec::new(),
            }],
        };
        rt.block_on(PubsubModule::init(hello)).expect("init")
    }

    fn call(
        rt: &tokio::runtime::Runtime,
        m: &PubsubModule,
        opcode: Opcode,
        payload: &[u8],
    ) -> Reply {
        rt.block_on(m.handle(Ctx::detached("t", opcode), payload))
    }

    fn error_of(reply: &Reply) -> (Status, String) {
        let body: ErrorBody = mecha_abi::decode(&reply.payload).expect("an error body");
        (reply.status, body.message)
    }

    fn publish(store: &str, topic: &str) -> Vec<u8> {
        mecha_abi::encode(&PublishRequest {
            store: store.into(),
            topic: topic.into(),
            data: b"x".to_vec(),
            content_type: String::new(),
            metadata: Vec::new(),
            raw: false,
        })
        .expect("encode")
    }

    fn subscribe(topic: &str, max_in_flight: u32) -> Vec<u8> {
        mecha_abi::encode(&SubscribeRequest {
            store: String::new(),
            topic: topic.into(),
            group: String::new(),
            max_in_flight,
            ack_deadline_ms: 0,
        })
        .expect("encode")
    }

    #[test]
    fn bad_requests_are_invalid_arguments() {
        let rt = runtime();
        let m = module(&rt);
        for (opcode, payload, needle) in [
            (Opcode::PUBSUB_PUBLISH, publish("", ""), "topic"),
            (Opcode::PUBSUB_PUBLISH, publish("nope", "t"), "\"nope\""),
            (Opcode::PUBSUB_PUBLISH, vec![1, 2, 3], ""),
            (Opcode::PUBSUB_SUBSCRIBE, subscribe("", 0), "topic"),
            (
                Opcode::PUBSUB_SUBSCRIBE,
                subscribe("t", 5000),
                "max_in_flight",
            ),
        ] {
            let (status, message) = error_of(&call(&rt, &m, opcode, &payload));
            assert_eq!(status, Status::InvalidArgument, "{message}");
            assert!(message.contains(needle), "{message:?} names {needle}");
        }
        let reply = call(&rt, &m, Opcode::STATE_GET, &[]);
        assert_eq!(reply.status, Status::UnknownOpcode);
    }

    #[test]
    fn publish_answers_the_id_and_offset_and_subscribe_opens_a_stream() {
        let rt = runtime();
        let m = module(&rt);
        let reply = call(&rt, &m, Opcode::PUBSUB_PUBLISH, &publish("events", "t"));
        let published: PublishReply = mecha_abi::decode(&reply.payload).expect("reply");
        assert_eq!(published.offset, 1);
        assert!(!published.id.is_empty());
        let reply = call(&rt, &m, Opcode::PUBSUB_SUBSCRIBE, &subscribe("t", 0));
        assert!(reply.opens_stream);
        let opened: SubscribeReply = mecha_abi::decode(&reply.payload).expect("reply");
        assert_eq!(opened.store, "events");
        assert_eq!(opened.group, "default");
    }
}
