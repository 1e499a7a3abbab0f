//! `pubsub.jetstream` (also accepted as `pubsub.nats`): topics as subjects of
//! one NATS JetStream stream per component, consumer groups as durable pull
//! consumers with explicit acks, in the manner of Dapr's JetStream
//! component. A nack, or a delivery passing its member's ack deadline, is a
//! NAK, which JetStream redelivers at once; a delivery nobody answers is
//! redelivered by JetStream after `ackWait`.
//!
//! Subjects are `mecha.<stream>.<tenant>.<topic>`, each name escaped into
//! one subject token; the stream (created if missing) holds
//! `mecha.<stream>.>`. Offsets are the stream's sequence numbers: they
//! increase in publish order but, as the stream is shared by every topic of
//! the component, they are not consecutive within a topic.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, consumer, stream, AckKind, Context};
use bytes::Bytes;
use futures_util::StreamExt;
use mecha_abi::msg::ComponentSpec;
use mecha_module::metadata::Metadata;
use mecha_module::remote::Origin;

use futures_util::future::BoxFuture;

use crate::error::PubsubError;
use crate::message::Message;
use crate::request::DEFAULT_GROUP;
use crate::server_delivery::{Backend, BoxFetcher, Fetched, Fetcher, ServerSettings, ServerStore};

/// The metadata fields `pubsub.jetstream` understands (Dapr's names, plus
/// mecha's `ackDeadlineMs`).
pub const KNOWN_FIELDS: [&str; 9] = [
    "natsURL",
    "name",
    "streamName",
    "durableName",
    "queueGroupName",
    "ackWait",
    "maxDeliver",
    "deliverPolicy",
    "ackDeadlineMs",
];

/// How long a request waits for a connection that is being made.
const CONNECT_GRACE: Duration = Duration::from_secs(2);

/// How long one pull waits for messages; a member looks at its deadlines
/// and cancellation between two pulls.
const PULL_WAIT: Duration = Duration::from_millis(500);

/// Opens a `pubsub.jetstream` store. The connection is made in the
/// background and remade after the server goes away, so the module starts
/// while NATS is down.
pub fn open(spec: &ComponentSpec) -> Result<ServerStore<JetstreamBackend>, PubsubError> {
    let md = Metadata::parse(spec, &KNOWN_FIELDS)?;
    let url = md.required("natsURL")?;
    for server in url.split(',') {
        server
            .trim()
            .parse::<async_nats::ServerAddr>()
            .map_err(|e| {
                md.error(format!(
                    "metadata field \"natsURL\" must be a NATS URL such as nats://host:4222, \
                 not {url:?}: {e}"
                ))
            })?;
    }
    let stream_name = md.str("streamName")?.unwrap_or("mecha");
    let durable = md.str("durableName")?.unwrap_or("mecha");
    for (field, value) in [("streamName", stream_name), ("durableName", durable)] {
        if !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(md
                .error(format!(
                    "metadata field {field:?} may hold only ASCII letters, digits, '_' and '-', \
                     not {value:?}"
                ))
                .into());
        }
    }
    let ack_wait = md
        .duration("ackWait", Duration::from_millis(1))?
        .unwrap_or(Duration::from_secs(30));
    if ack_wait.is_zero() {
        return Err(md
            .error("metadata field \"ackWait\" must be above zero")
            .into());
    }
    let max_deliver = md
        .whole("maxDeliver", 1..=i64::MAX as u64)?
        .map_or(-1, |n| n as i64);
    let deliver_policy = match md.str("deliverPolicy")? {
        None | Some("all") => consumer::DeliverPolicy::All,
        Some("new") => consumer::DeliverPolicy::New,
        Some("last") => consumer::DeliverPolicy::Last,
        Some(other) => {
            return Err(md
                .error(format!(
                    "metadata field \"deliverPolicy\" must be all, new or last, not {other:?}"
                ))
                .into())
        }
    };
    let default_group = md
        .str("queueGroupName")?
        .unwrap_or(DEFAULT_GROUP)
        .to_owned();
    let options = async_nats::ConnectOptions::new()
        .name(md.str("name")?.unwrap_or("mecha-pubsub"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(5)));
    // With `retry_on_initial_connect` the client connects (and reconnects)
    // in the background; `connect` itself only sets it up, but is async, so
    // it runs in a task and the store reports UNAVAILABLE until it is done.
    let conn: Arc<OnceLock<Conn>> = Arc::default();
    let (cell, target, component) = (Arc::clone(&conn), url.to_owned(), spec.name.clone());
    tokio::spawn(async move {
        match options.connect(target).await {
            Ok(client) => {
                let js = jetstream::new(client.clone());
                let _ = cell.set(Conn { client, js });
            }
            Err(e) => tracing::error!(store = %component, error = %e, "setting up NATS failed"),
        }
    });
    let settings = ServerSettings::from_metadata(spec, &md, Some(ack_wait), default_group)?;
    let backend = JetstreamBackend {
        origin: Origin {
            component: spec.name.clone(),
            kind: spec.kind.clone(),
            server: url.to_owned(),
        },
        conn,
        stream: stream_name.to_owned(),
        durable: durable.to_owned(),
        ack_wait,
        max_deliver,
        deliver_policy,
    };
    Ok(ServerStore::new(settings, backend))
}

/// A connection to NATS and its JetStream context.
struct Conn {
    client: async_nats::Client,
    js: Context,
}

/// The NATS side of a `pubsub.jetstream` store.
pub struct JetstreamBackend {
    origin: Origin,
    conn: Arc<OnceLock<Conn>>,
    stream: String,
    durable: String,
    ack_wait: Duration,
    max_deliver: i64,
    deliver_policy: consumer::DeliverPolicy,
}

impl JetstreamBackend {
    fn error(&self, what: &str, e: impl std::fmt::Display) -> PubsubError {
        self.origin.unavailable(format_args!("{what}: {e}")).into()
    }

    /// The JetStream context once connected. While disconnected it waits a
    /// moment (the module may just have started, or the client be about to
    /// reconnect), then refuses instead of waiting for the request timeout.
    async fn connected(&self, what: &str) -> Result<&Context, PubsubError> {
        let deadline = tokio::time::Instant::now() + CONNECT_GRACE;
        loop {
            if let Some(conn) = self.conn.get() {
                if conn.client.connection_state() == State::Connected {
                    return Ok(&conn.js);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.error(what, "not connected; reconnecting in the background"));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn subject(&self, tenant: &str, topic: &str) -> String {
        format!("mecha.{}.{}.{}", self.stream, token(tenant), token(topic))
    }

    async fn ensure_stream(&self) -> Result<stream::Stream, PubsubError> {
        self.connected("creating the stream")
            .await?
            .get_or_create_stream(stream::Config {
                name: self.stream.clone(),
                subjects: vec![format!("mecha.{}.>", self.stream)],
                ..Default::default()
            })
            .await
            .map_err(|e| self.error("creating the stream", e))
    }

    async fn consumer(
        &self,
        tenant: &str,
        topic: &str,
        group: &str,
    ) -> Result<consumer::Consumer<consumer::pull::Config>, PubsubError> {
        let stream = self.ensure_stream().await?;
        let name = format!("{}-{:032x}", self.durable, fnv128(&[tenant, topic, group]));
        stream
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: self.subject(tenant, topic),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.ack_wait,
                    max_deliver: self.max_deliver,
                    deliver_policy: self.deliver_policy,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| self.error("creating the durable consumer", e))
    }
}

/// `name` as one subject token: ASCII letters, digits, `_` and `-` as they
/// are, every other byte as `~` and two hex digits (so `.` and wildcards
/// cannot split or widen a subject, and distinct names stay distinct).
fn token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("~{b:02x}"));
        }
    }
    out
}

/// FNV-1a, 128-bit, over the parts with a separator byte that cannot occur
/// in UTF-8: a stable name for a (tenant, topic, group) consumer, which
/// must not change between builds (std's hashers may).
fn fnv128(parts: &[&str]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut h = OFFSET;
    for part in parts {
        for &b in part.as_bytes().iter().chain([0xffu8].iter()) {
            h ^= u128::from(b);
            h = h.wrapping_mul(PRIME);
        }
    }
    h
}

impl Backend for JetstreamBackend {
    type Handle = jetstream::message::Acker;

    fn publish<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        message: &'a Message,
    ) -> BoxFuture<'a, Result<u64, PubsubError>> {
        Box::pin(async move {
            let js = self.connected("publishing").await?;
            let body = Bytes::from(message.encode()?);
            let subject = self.subject(tenant, topic);
            let mut created = false;
            loop {
                let sent = js.publish(subject.clone(), body.clone()).await;
                let acked = match sent {
                    Ok(pending) => pending.await,
                    Err(e) => return Err(self.error("publishing", e)),
                };
                match acked {
                    Ok(ack) => return Ok(ack.sequence),
                    // No stream holds the subject yet: create it once.
                    Err(e)
                        if !created
                            && e.kind() == jetstream::context::PublishErrorKind::StreamNotFound =>
                    {
                        self.ensure_stream().await?;
                        created = true;
                    }
                    Err(e) => return Err(self.error("publishing", e)),
                }
            }
        })
    }

    fn join<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<BoxFetcher<Self::Handle>, PubsubError>> {
        Box::pin(async move {
            self.connected("subscribing").await?;
            let consumer = self.consumer(tenant, topic, group).await?;
            let fetcher: Box<dyn Fetcher<Self::Handle>> = Box::new(JetstreamFetcher {
                backend: self.clone_parts(),
                key: (tenant.to_owned(), topic.to_owned(), group.to_owned()),
                consumer: Some(consumer),
            });
            Ok(fetcher)
        })
    }

    fn ack<'a>(
        &'a self,
        _tenant: &'a str,
        _topic: &'a str,
        _group: &'a str,
        _offset: u64,
        handle: Option<&'a Self::Handle>,
    ) -> BoxFuture<'a, Result<bool, PubsubError>> {
        Box::pin(async move {
            // Without the delivery's reply subject JetStream cannot be told
            // which delivery is meant; it redelivers after ackWait, and the
            // ack of that delivery then takes effect.
            let Some(handle) = handle else {
                return Ok(false);
            };
            handle
                .ack()
                .await
                .map_err(|e| self.error("acknowledging", e))?;
            Ok(true)
        })
    }

    fn nack<'a>(
        &'a self,
        _tenant: &'a str,
        _topic: &'a str,
        _group: &'a str,
        _offset: u64,
        handle: &'a Self::Handle,
    ) -> BoxFuture<'a, Result<(), PubsubError>> {
        Box::pin(async move {
            handle
                .ack_with(AckKind::Nak(None))
                .await
                .map_err(|e| self.error("giving back a delivery", e))
        })
    }
}

impl JetstreamBackend {
    /// What a member's reader needs of the backend: the same connection and
    /// settings, cheaply cloned.
    fn clone_parts(&self) -> JetstreamBackend {
        JetstreamBackend {
            origin: self.origin.clone(),
            conn: Arc::clone(&self.conn),
            stream: self.stream.clone(),
            durable: self.durable.clone(),
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            deliver_policy: self.deliver_policy,
        }
    }
}

/// One member's reader: pulls batches from the group's durable consumer,
/// and makes the consumer again after a failure (the server may have
/// restarted without its state).
struct JetstreamFetcher {
    backend: JetstreamBackend,
    key: (String, String, String),
    consumer: Option<consumer::Consumer<consumer::pull::Config>>,
}

type Handle = jetstream::message::Acker;

impl Fetcher<Handle> for JetstreamFetcher {
    fn fetch(&mut self, max: usize) -> BoxFuture<'_, Result<Vec<Fetched<Handle>>, PubsubError>> {
        Box::pin(async move {
            let b = &self.backend;
            b.connected("reading").await?;
            let consumer = match self.consumer.take() {
                Some(c) => c,
                None => b.consumer(&self.key.0, &self.key.1, &self.key.2).await?,
            };
            let mut batch = consumer
                .batch()
                .max_messages(max)
                .expires(PULL_WAIT)
                .messages()
                .await
                .map_err(|e| b.error("reading", e))?;
            let mut out = Vec::new();
            while let Some(next) = batch.next().await {
                let message = next.map_err(|e| b.error("reading", e))?;
                let Ok(info) = message.info() else { continue };
                let (offset, attempt) = (info.stream_sequence, info.delivered);
                let (message, acker) = message.split();
                match Message::decode(&message.payload) {
                    Ok(decoded) => out.push(Fetched {
                        offset,
                        attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                        message: decoded,
                        handle: acker,
                    }),
                    Err(e) => {
                        // An entry this module cannot read is ended for
                        // good rather than redelivered forever.
                        tracing::error!(store = %b.origin.component, error = %e,
                            "dropping an unreadable message");
                        let _ = acker.ack_with(AckKind::Term).await;
                    }
                }
            }
            self.consumer = Some(consumer);
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keep_names_distinct_and_subject_safe() {
        assert_eq!(token("orders_v2-x"), "orders_v2-x");
        assert_eq!(token("a.b *>"), "a~2eb~20~2a~3e");
        assert_ne!(token("a.b"), token("a~2eb"));
        assert_ne!(fnv128(&["a", "bc"]), fnv128(&["ab", "c"]));
    }
}
